/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Same-node TCP acceleration: sockops adds an established socket of a
 * known pod to a SOCKHASH, keyed by its sequence numbers (struct
 * sk_pair_key); sk_msg, run on every send of such a socket, hands the
 * message straight to the peer socket's receive queue when the peer is in
 * the map too, and otherwise lets it go through TCP. Nothing is ever
 * dropped here: every path that does not redirect returns SK_PASS.
 *
 * The kernel's redirect has no flow control of its own (it charges the
 * receiver's memory but never checks its buffer), so the sender checks
 * the peer's queued memory first and falls back to TCP, which blocks the
 * writer where TCP would, when a redirect would take the peer past its
 * receive buffer. A socket that has sent through TCP never redirects
 * again (struct sk_accel). */
#ifndef SLUICE_ACCEL_H
#define SLUICE_ACCEL_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_maps.h"
#include "endpoints.h"
#include "kern.h"

/* Sized like the endpoint map's pods' connections: a full map leaves new
 * sockets on the TCP path (counted). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 131072);
	__type(key, struct sk_pair_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sk_pair_key);
	__type(value, struct sk_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sk_accel);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_accel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct accel_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_acc_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ACCEL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_accstat SEC(".maps");

static __always_inline void accel_count(__u32 i, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&sluice_accstat, &i);

	if (v)
		*v += n;
}

static __always_inline const struct accel_cfg *accel_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sluice_acc_cfg, &zero);
}

/* Whether the reader of socket `sk` needs the TCP path: SO_RCVLOWAT
 * above one byte is not honoured for redirected data. */
static __always_inline __u32 accel_reader_flags(struct bpf_sock *sk)
{
	struct sock *s = (struct sock *)bpf_skc_to_tcp_sock(sk);

	return s && s->sk_rcvlowat > 1 ? SLUICE_SKP_F_TCP_READER : 0;
}

/* sockops, ESTABLISHED (either side): add the socket if it is a pod's
 * (known netns, not opted out) and no data went through TCP yet. */
static __always_inline void accel_established(struct bpf_sock_ops *o)
{
	const struct accel_cfg *cfg = accel_config();

	if (!cfg || !cfg->enabled)
		return;
	__u64 netns = bpf_get_netns_cookie(o);
	const struct endpoint *ep = bpf_map_lookup_elem(&sluice_eps, &netns);

	if (!ep)
		return;
	/* The node's own sockets, and pods that chose packet-level handling
	 * or no acceleration, stay on TCP; so does a connection whose SYN
	 * carried data (TCP Fast Open): those bytes went through TCP. */
	if (ep->flags & (SLUICE_EP_F_HOST | SLUICE_EP_F_NO_SOCK_LB | SLUICE_EP_F_NO_ACCEL) ||
	    o->bytes_received) {
		accel_count(ACCEL_STAT_SKIPPED, 1);
		return;
	}
	struct bpf_sock *sk = o->sk;

	if (!sk)
		return;
	struct sk_accel *a = bpf_sk_storage_get(&sluice_sk_accel, sk, 0,
						BPF_SK_STORAGE_GET_F_CREATE);
	if (!a) {
		accel_count(ACCEL_STAT_ADD_FAILED, 1);
		return;
	}
	struct sk_pair_key self = {.snd = o->snd_una, .rcv = o->rcv_nxt};
	struct sk_peer p = {
		.sk = (__u64)(unsigned long)sk,
		.cookie = bpf_get_socket_cookie(o),
		.netns_cookie = netns,
		.flags = accel_reader_flags(sk),
	};

	a->self = self;
	a->mode = SK_ACCEL_TCP;
	a->reason = ACCEL_STAT_ADD_FAILED;
	a->msgs = 0;
	if (bpf_map_update_elem(&sluice_sk_peer, &self, &p, BPF_ANY)) {
		accel_count(ACCEL_STAT_ADD_FAILED, 1);
		return;
	}
	if (bpf_sock_hash_update(o, &sluice_sockhash, &self, BPF_NOEXIST)) {
		bpf_map_delete_elem(&sluice_sk_peer, &self);
		accel_count(ACCEL_STAT_ADD_FAILED, 1);
		return;
	}
	a->mode = SK_ACCEL_REDIRECT;
	a->reason = 0;
	/* to forget the peer entry when the socket closes */
	bpf_sock_ops_cb_flags_set(o, o->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	accel_count(ACCEL_STAT_ADDED, 1);
}

static __always_inline void accel_closed(struct bpf_sock_ops *o)
{
	struct bpf_sock *sk = o->sk;

	if (!sk)
		return;
	struct sk_accel *a = bpf_sk_storage_get(&sluice_sk_accel, sk, 0, 0);

	if (a)
		bpf_map_delete_elem(&sluice_sk_peer, &a->self);
}

static __always_inline int accel_sockops(struct bpf_sock_ops *o)
{
	switch (o->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		accel_established(o);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (o->args[1] == BPF_TCP_CLOSE)
			accel_closed(o);
		break;
	}
	return 1;
}

/* Why a message of `a` may not be redirected to `peer` now (an
 * enum accel_stat fallback reason), or 0. */
static __always_inline __u32 accel_refusal(const struct accel_cfg *cfg, struct sk_accel *a,
					   const struct sk_peer *peer, __u32 size)
{
	if (!cfg || !cfg->enabled)
		return ACCEL_STAT_FB_OFF;
	if (!peer)
		return ACCEL_STAT_FB_NO_PEER;
	if (peer->flags & SLUICE_SKP_F_TCP_READER)
		return ACCEL_STAT_FB_TCP_READER;
	struct sock *sk = (struct sock *)peer->sk;

	/* The address is the peer's only while its cookie is there. */
	if (BPF_CORE_READ(sk, __sk_common.skc_cookie.counter) != (__s64)peer->cookie)
		return ACCEL_STAT_FB_NO_PEER;
	unsigned long *mp = BPF_CORE_READ(sk, __sk_common.skc_prot, memory_pressure);
	unsigned long pressure = 0;

	if (mp)
		bpf_probe_read_kernel(&pressure, sizeof(pressure), mp);
	if (pressure)
		return ACCEL_STAT_FB_MEM_PRESSURE;
	/* What TCP would let the peer hold: its buffer as set with
	 * SO_RCVBUF, or as far as autotuning may grow it. */
	__u32 limit = BPF_CORE_READ(sk, sk_rcvbuf);
	__u8 locks = BPF_CORE_READ(sk, sk_userlocks);

	if (!(locks & SLUICE_SOCK_RCVBUF_LOCK) && cfg->rmem_max > limit)
		limit = cfg->rmem_max;
	/* Redirected data is charged to the peer's receive memory (Linux
	 * 6.13+), but not the message each redirect queues: count those
	 * while any are queued. */
	int queued = BPF_CORE_READ(sk, sk_backlog.rmem_alloc.counter);

	if (queued <= 0) {
		queued = 0;
		a->msgs = 0;
	}
	__u64 cost = (__u64)queued + (__u64)(a->msgs + 1) * cfg->msg_cost + size;

	if (cost > limit)
		return ACCEL_STAT_FB_BACKPRESSURE;
	return 0;
}

static __always_inline int accel_msg(struct sk_msg_md *m)
{
	struct bpf_sock *sk = m->sk;
	__u32 size = m->size;

	if (!sk)
		return SK_PASS;
	struct sk_accel *a = bpf_sk_storage_get(&sluice_sk_accel, sk, 0, 0);

	if (!a || a->mode != SK_ACCEL_REDIRECT)
		goto pass;
	struct sk_pair_key peer_key = {.snd = a->self.rcv, .rcv = a->self.snd};
	const struct sk_peer *peer = bpf_map_lookup_elem(&sluice_sk_peer, &peer_key);
	__u32 why = accel_refusal(accel_config(), a, peer, size);

	if (!why && bpf_msg_redirect_hash(m, &sluice_sockhash, &peer_key, BPF_F_INGRESS) != SK_PASS)
		why = ACCEL_STAT_FB_REDIRECT;
	if (why) {
		a->mode = SK_ACCEL_TCP;
		a->reason = why;
		accel_count(why, 1);
		goto pass;
	}
	a->msgs++;
	accel_count(ACCEL_STAT_REDIR_MSGS, 1);
	accel_count(ACCEL_STAT_REDIR_BYTES, size);
	return SK_PASS;
pass:
	accel_count(ACCEL_STAT_PASS_MSGS, 1);
	accel_count(ACCEL_STAT_PASS_BYTES, size);
	return SK_PASS;
}

#endif
