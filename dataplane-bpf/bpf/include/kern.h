/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The few kernel-internal fields the acceleration reads of a peer socket,
 * as CO-RE mirrors: only the members named here exist for the compiler,
 * and the loader relocates every offset against the running kernel's BTF
 * (/sys/kernel/btf/vmlinux), so no kernel layout is compiled in. They are
 * read with bpf_probe_read_kernel (BPF_CORE_READ), never written. */
#ifndef SLUICE_KERN_H
#define SLUICE_KERN_H

#include <linux/types.h>
#include <bpf/bpf_core_read.h>

struct proto {
	unsigned long *memory_pressure;
} __attribute__((preserve_access_index));

typedef struct {
	int counter;
} atomic_t;

typedef struct {
	__s64 counter;
} atomic64_t;

struct sock_common {
	struct proto *skc_prot;
	atomic64_t skc_cookie;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct {
		atomic_t rmem_alloc;
	} sk_backlog;
	int sk_rcvbuf;
	int sk_rcvlowat;
	void *sk_user_data;
	struct socket *sk_socket;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 copied_seq; /* what the application has read */
	__u32 write_seq;  /* what the application has written to TCP */
} __attribute__((preserve_access_index));

struct list_head {
	struct list_head *next;
	struct list_head *prev;
} __attribute__((preserve_access_index));

typedef struct refcount_struct {
	atomic_t refs;
} refcount_t;

/* The sockmap state of a socket in a map (its sk_user_data, low bits
 * flags): redirected messages wait on ingress_msg. refcnt counts the maps
 * that hold the socket and every call in progress that uses the psock:
 * each send (tcp_bpf_sendmsg holds it from before its verdict until its
 * redirect is queued), read and poll. */
struct sk_psock {
	struct list_head ingress_msg;
	refcount_t refcnt;
} __attribute__((preserve_access_index));

/* include/linux/sock.h SK_USER_DATA_PTRMASK: the flag bits below it;
 * SK_USER_DATA_PSOCK: sk_user_data is a psock. */
#define SLUICE_SK_USER_DATA_FLAGS 7UL
#define SLUICE_SK_USER_DATA_PSOCK 4UL

struct file {
	unsigned int f_flags;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
	struct file *file;
} __attribute__((preserve_access_index));

/* O_NONBLOCK (x86-64, arm64) */
#define SLUICE_O_NONBLOCK 04000

struct msghdr {
	unsigned int msg_flags;
} __attribute__((preserve_access_index));

struct task_struct;

/* x86-64: the syscall a task is in */
struct pt_regs {
	unsigned long orig_ax;
} __attribute__((preserve_access_index));


#endif
