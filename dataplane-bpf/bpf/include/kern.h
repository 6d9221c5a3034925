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
	__u8 sk_userlocks;
} __attribute__((preserve_access_index));

/* include/net/sock.h */
#define SLUICE_SOCK_RCVBUF_LOCK 2

#endif
