/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Guards of the same-node TCP acceleration, as BPF LSM programs: the
 * calls a redirected message cannot honour, seen on an accelerated
 * socket before the kernel acts on them. A redirected message waits in
 * the receiving socket's own queue (psock->ingress_msg), which only
 * recvmsg/read drain: splice, sendfile and io_uring reads see the TCP
 * queue only; MSG_WAITALL, SO_RCVLOWAT and MSG_OOB are not honoured for
 * it. Such a call marks the socket's reader as needing TCP
 * (SLUICE_SKP_F_TCP_READER): its peer stops redirecting at its next
 * message and sends through TCP for good. A splice-like read (or a
 * recv(MSG_OOB)) that redirected data could still overtake is refused
 * with EINVAL, the error of a socket that does not support splicing, on
 * which Go and HAProxy fall back to read(); after that the connection is
 * plain TCP. A sender's urgent data moves it to TCP first. */
#ifndef SLUICE_ACCEL_GUARD_H
#define SLUICE_ACCEL_GUARD_H

#include "accel.h"

#define SLUICE_EINVAL 22
#define SLUICE_MAY_READ 4
#define SLUICE_MSG_OOB 0x1
#define SLUICE_MSG_WAITALL 0x100
#define SLUICE_SOL_SOCKET 1
#define SLUICE_SO_RCVLOWAT 18

/* x86-64 syscalls that read a socket through recvmsg (read, pread64,
 * readv, preadv, preadv2): everything else that asks to read one
 * (splice, sendfile, copy_file_range, io_uring) does not. */
static __always_inline int guard_read_syscall(unsigned long nr)
{
	return nr == 0 || nr == 17 || nr == 19 || nr == 295 || nr == 327;
}

/* The acceleration state of `sk` while it is in the map: a socket that
 * left it (evicted, drained) is a plain TCP socket again, for the guards
 * too. */
static __always_inline struct sk_accel *guard_accel(struct sock *sk)
{
	if (!sk || !accel_psock(sk))
		return 0;
	return bpf_sk_storage_get(&sluice_sk_accel, sk, 0, 0);
}

/* Marks the reader of `a` as needing TCP; counts the first mark. */
static __always_inline void guard_mark_reader(struct sk_accel *a, __u32 why)
{
	struct sk_peer *me = bpf_map_lookup_elem(&sluice_sk_peer, &a->self);

	if (me && !(me->flags & SLUICE_SKP_F_TCP_READER)) {
		__sync_fetch_and_or(&me->flags, SLUICE_SKP_F_TCP_READER);
		accel_count(why, 1);
	}
}

/* Whether redirected data may still reach `sk`'s reader: messages queued,
 * or a peer that is in the map and has not moved to TCP yet (its next
 * message could be on its way into the queue). */
static __always_inline int guard_redirect_pending(struct sock *sk, struct sk_accel *a)
{
	struct sk_psock *psock = accel_psock(sk);

	if (psock && accel_queued(psock))
		return 1;
	struct sk_pair_key peer_key = {.snd = a->self.rcv, .rcv = a->self.snd};
	struct sk_peer *peer = bpf_map_lookup_elem(&sluice_sk_peer, &peer_key);

	return peer && !(peer->flags & SLUICE_SKP_F_SENDS_TCP);
}

/* lsm/file_permission: a read of a socket file that is not read(2). */
static __always_inline int guard_file(struct file *file, int mask)
{
	if (!(mask & SLUICE_MAY_READ))
		return 0;
	struct socket *sock = bpf_sock_from_file(file);

	if (!sock)
		return 0;
	struct sock *sk = sock->sk;
	struct sk_accel *a = guard_accel(sk);

	if (!a)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	if (!regs || guard_read_syscall(regs->orig_ax))
		return 0;
	guard_mark_reader(a, ACCEL_STAT_GUARD_SPLICE);
	if (guard_redirect_pending(sk, a)) {
		accel_count(ACCEL_STAT_GUARD_REFUSED, 1);
		return -SLUICE_EINVAL;
	}
	return 0;
}

/* lsm/socket_recvmsg */
static __always_inline int guard_recvmsg(struct socket *sock, int flags)
{
	if (!(flags & (SLUICE_MSG_WAITALL | SLUICE_MSG_OOB)))
		return 0;
	struct sock *sk = sock->sk;
	struct sk_accel *a = guard_accel(sk);

	if (!a)
		return 0;
	if (flags & SLUICE_MSG_OOB) {
		guard_mark_reader(a, ACCEL_STAT_GUARD_OOB);
		if (guard_redirect_pending(sk, a)) {
			accel_count(ACCEL_STAT_GUARD_REFUSED, 1);
			return -SLUICE_EINVAL;
		}
		return 0;
	}
	guard_mark_reader(a, ACCEL_STAT_GUARD_WAITALL);
	return 0;
}

/* lsm/socket_setsockopt */
static __always_inline int guard_setsockopt(struct socket *sock, int level, int optname)
{
	if (level != SLUICE_SOL_SOCKET || optname != SLUICE_SO_RCVLOWAT)
		return 0;
	struct sk_accel *a = guard_accel(sock->sk);

	if (a)
		guard_mark_reader(a, ACCEL_STAT_GUARD_RCVLOWAT);
	return 0;
}

/* lsm/socket_sendmsg: urgent data goes through TCP, and so does all
 * that follows it. */
static __always_inline int guard_sendmsg(struct socket *sock, struct msghdr *msg)
{
	if (!(msg->msg_flags & SLUICE_MSG_OOB))
		return 0;
	struct sk_accel *a = guard_accel(sock->sk);

	if (a && a->mode == SK_ACCEL_REDIRECT)
		accel_fall_back(a, bpf_map_lookup_elem(&sluice_sk_peer, &a->self),
				ACCEL_STAT_FB_OOB);
	return 0;
}

#endif
