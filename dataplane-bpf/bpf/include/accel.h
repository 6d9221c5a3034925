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
 * receive buffer. A socket that has sent through TCP redirects again only
 * once its peer has read every TCP byte (struct sk_accel); one whose
 * reader keeps falling behind, or whose connection the node switch
 * turned off, leaves the map without losing a byte (accel_evict,
 * accel_drain). */
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sk_listen_key);
	__type(value, struct sk_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_lsn SEC(".maps");

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

/* The kernel address of the socket keyed `key` in sluice_sk_peer, as a
 * number (BPF_CORE_READ's source), or 0. */
static __always_inline struct sock *accel_addr(const struct sk_peer *p)
{
	return p ? (struct sock *)p->sk : 0;
}

/* The socket of entry `p`, or 0 if that address no longer holds it (its
 * cookie is gone: the socket was freed, the memory reused). */
static __always_inline struct sock *accel_live(const struct sk_peer *p)
{
	struct sock *sk = accel_addr(p);

	if (BPF_CORE_READ(sk, __sk_common.skc_cookie.counter) != (__s64)p->cookie)
		return 0;
	return sk;
}

/* Reads the sockmap state of socket `sk` (its psock) into `*ps`, 0 if it
 * has none: not in a map, or left it (the kernel clears it once the last
 * call using the psock has returned). Nonzero if the read failed. */
static __always_inline int accel_read_psock(struct sock *sk, struct sk_psock **ps)
{
	unsigned long ud;

	*ps = 0;
	if (bpf_core_read(&ud, sizeof(ud), &sk->sk_user_data))
		return -1;
	if (ud & SLUICE_SK_USER_DATA_PSOCK)
		*ps = (struct sk_psock *)(ud & ~SLUICE_SK_USER_DATA_FLAGS);
	return 0;
}

/* The psock of socket `sk`, or 0 (none, or the read failed). */
static __always_inline struct sk_psock *accel_psock(struct sock *sk)
{
	struct sk_psock *ps;

	accel_read_psock(sk, &ps);
	return ps;
}

/* Whether redirected messages wait in `psock`'s queue. */
static __always_inline int accel_queued(struct sk_psock *psock)
{
	unsigned long head = (unsigned long)psock + bpf_core_field_offset(struct sk_psock, ingress_msg);

	return (unsigned long)BPF_CORE_READ(psock, ingress_msg.next) != head;
}

/* Whether socket `sk` reads in non-blocking mode. The kernel's receive
 * path for redirected data returns EAGAIN from a blocking read that is
 * woken without data (a reset, a signal, its own writer waiting for
 * buffer space: tcp_bpf_recvmsg, Linux 6.18), which TCP never does; a
 * non-blocking reader expects EAGAIN. A socket without a file (not
 * accepted yet) has no reader yet. */
static __always_inline int accel_nonblocking(struct sock *sk)
{
	struct file *f = BPF_CORE_READ(sk, sk_socket, file);

	if (!f)
		return 0;
	return (BPF_CORE_READ(f, f_flags) & SLUICE_O_NONBLOCK) != 0;
}

/* Whether the reader of socket `sk` needs the TCP path: SO_RCVLOWAT
 * above one byte is not honoured for redirected data. */
static __always_inline __u32 accel_reader_flags(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_rcvlowat) > 1 ? SLUICE_SKP_F_TCP_READER : 0;
}

/* sockops, listen(2) by a known pod: remember the listener, so that the
 * sockets it accepts can look at its file (accel_established). */
static __always_inline void accel_listening(struct bpf_sock_ops *o)
{
	__u64 netns = bpf_get_netns_cookie(o);

	if (!bpf_map_lookup_elem(&sluice_eps, &netns) || !o->sk)
		return;
	struct sk_listen_key k = {.netns_cookie = netns, .port = o->local_port};
	struct sk_peer p = {
		.sk = (__u64)(unsigned long)o->sk,
		.cookie = bpf_get_socket_cookie(o),
		.netns_cookie = netns,
	};

	if (!bpf_map_update_elem(&sluice_sk_lsn, &k, &p, BPF_ANY))
		bpf_sock_ops_cb_flags_set(o, o->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Whether the listener that accepted a socket on `port` of netns `netns`
 * accepts in non-blocking mode (so will, almost always, its sockets);
 * unknown listeners count as non-blocking and the accepted socket's own
 * file decides later (accel_evict). */
static __always_inline int accel_listener_nonblocking(__u64 netns, __u32 port)
{
	struct sk_listen_key k = {.netns_cookie = netns, .port = port};
	struct sk_peer *l = bpf_map_lookup_elem(&sluice_sk_lsn, &k);

	struct sock *sk = l ? accel_live(l) : 0;

	return sk ? accel_nonblocking(sk) : 1;
}

/* sockops, ESTABLISHED (either side): add the socket if it is a pod's
 * (known netns, not opted out) and no data went through TCP yet. The
 * connecting side is added only if it reads in non-blocking mode; the
 * accepting side (whose ESTABLISHED comes second) only if its peer was
 * added, else the connecting side leaves too: a socket in the map reads
 * through the redirected path, so none stays there without a peer. An
 * accepted socket gets its file later: it is never redirected to before
 * it shows a non-blocking reader, and one that shows a blocking reader
 * is taken out (accel_evict). */
static __always_inline void accel_established(struct bpf_sock_ops *o, int passive)
{
	const struct accel_cfg *cfg = accel_config();

	if (!cfg || !cfg->enabled)
		return;
	__u64 netns = bpf_get_netns_cookie(o);
	const struct endpoint *ep = bpf_map_lookup_elem(&sluice_eps, &netns);

	if (!ep)
		return;
	int host = ep->flags & SLUICE_EP_F_HOST;
	struct sk_pair_key self = {.snd = o->snd_una, .rcv = o->rcv_nxt};
	struct sk_pair_key peer_key = {.snd = self.rcv, .rcv = self.snd};

	/* The node's own sockets join only where its readers are vouched
	 * for (SLUICE_ACC_F_NODE: guards run, or the operator said so), and
	 * only accepted ones: a server of the node's that a pod's socket,
	 * already in the map, connected to (checked here, before anything
	 * is written, so the node's other connections cost one lookup and
	 * are not counted). */
	if (host && (!(cfg->flags & SLUICE_ACC_F_NODE) || !passive || o->bytes_received ||
		     !bpf_map_lookup_elem(&sluice_sk_peer, &peer_key)))
		return;
	/* Pods that chose packet-level handling or no acceleration stay on
	 * TCP; without the guards (SLUICE_ACC_F_OPT_IN_ONLY) so does every
	 * pod that did not opt in; and so does a connection whose SYN
	 * carried data (TCP Fast Open): those bytes went through TCP. */
	if (ep->flags & (SLUICE_EP_F_NO_SOCK_LB | SLUICE_EP_F_NO_ACCEL) ||
	    (!host && cfg->flags & SLUICE_ACC_F_OPT_IN_ONLY && !(ep->flags & SLUICE_EP_F_ACCEL)) ||
	    o->bytes_received) {
		accel_count(ACCEL_STAT_SKIPPED, 1);
		return;
	}
	struct bpf_sock *sk = o->sk;

	if (!sk)
		return;
	struct sk_peer p = {
		.sk = (__u64)(unsigned long)sk,
		.cookie = bpf_get_socket_cookie(o),
		.netns_cookie = netns,
	};

	if (bpf_map_update_elem(&sluice_sk_peer, &self, &p, BPF_ANY)) {
		accel_count(ACCEL_STAT_ADD_FAILED, 1);
		return;
	}
	/* The entry holds the address as a number the CO-RE reads take. */
	struct sk_peer *me = bpf_map_lookup_elem(&sluice_sk_peer, &self);

	if (!me)
		return;
	struct sock *addr = accel_addr(me);

	if (!passive && !accel_nonblocking(addr)) {
		bpf_map_delete_elem(&sluice_sk_peer, &self);
		accel_count(ACCEL_STAT_SKIPPED_BLOCKING, 1);
		return;
	}
	if (passive && !bpf_map_lookup_elem(&sluice_sk_peer, &peer_key)) {
		bpf_map_delete_elem(&sluice_sk_peer, &self);
		accel_count(ACCEL_STAT_SKIPPED_UNPAIRED, 1);
		return;
	}
	if (passive && !accel_listener_nonblocking(netns, o->local_port)) {
		bpf_map_delete_elem(&sluice_sk_peer, &self);
		accel_count(ACCEL_STAT_SKIPPED_LISTENER, 1);
		goto drop_peer;
	}
	me->flags = accel_reader_flags(addr);
	struct sk_accel *a = bpf_sk_storage_get(&sluice_sk_accel, sk, 0,
						BPF_SK_STORAGE_GET_F_CREATE);
	if (!a || bpf_sock_hash_update(o, &sluice_sockhash, &self, BPF_NOEXIST)) {
		bpf_map_delete_elem(&sluice_sk_peer, &self);
		accel_count(ACCEL_STAT_ADD_FAILED, 1);
		goto drop_peer;
	}
	a->self = self;
	a->mode = SK_ACCEL_REDIRECT;
	a->reason = 0;
	a->msgs = 0;
	a->flags = passive ? 0 : SLUICE_SKA_F_SELF_NONBLOCK;
	/* to forget the peer entry when the socket closes */
	bpf_sock_ops_cb_flags_set(o, o->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	accel_count(ACCEL_STAT_ADDED, 1);
	return;
drop_peer:
	/* The connecting side, added at its ESTABLISHED, has nobody to
	 * redirect to and nobody redirects to it: it leaves (sockops may
	 * delete from a sockhash). */
	if (passive) {
		bpf_map_delete_elem(&sluice_sockhash, &peer_key);
		bpf_map_delete_elem(&sluice_sk_peer, &peer_key);
	}
}

static __always_inline void accel_closed(struct bpf_sock_ops *o)
{
	struct bpf_sock *sk = o->sk;

	if (!sk)
		return;
	if (o->args[0] == BPF_TCP_LISTEN) {
		struct sk_listen_key k = {.netns_cookie = bpf_get_netns_cookie(o),
					  .port = o->local_port};
		struct sk_peer *l = bpf_map_lookup_elem(&sluice_sk_lsn, &k);

		if (l && l->cookie == bpf_get_socket_cookie(o))
			bpf_map_delete_elem(&sluice_sk_lsn, &k);
		return;
	}
	struct sk_accel *a = bpf_sk_storage_get(&sluice_sk_accel, sk, 0, 0);

	if (a)
		bpf_map_delete_elem(&sluice_sk_peer, &a->self);
}

static __always_inline int accel_sockops(struct bpf_sock_ops *o)
{
	switch (o->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		accel_established(o, 0);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		accel_established(o, 1);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		accel_listening(o);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (o->args[1] == BPF_TCP_CLOSE)
			accel_closed(o);
		break;
	}
	return 1;
}

/* Sockets whose reader turned out to block, that have no peer, that write
 * to a reader they keep behind, or of a drained connection, for the
 * daemon to take out of the map (userspace may delete from a sockhash;
 * sk_msg may not). */
struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 4096);
	__type(value, struct sk_pair_key);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_evict SEC(".maps");

/* Queues socket `key` (entry `e`) for the daemon to take out of the map,
 * once: SLUICE_SKP_F_QUEUED is set first (accel_drain reads it after a
 * peer's psock count) and cleared again if the queue is full, so that a
 * later message tries again. Counts `stat` when queued. */
static __always_inline void accel_push_evict(struct sk_pair_key *key, struct sk_peer *e, __u32 stat)
{
	if (__sync_fetch_and_or(&e->flags, SLUICE_SKP_F_QUEUED) & SLUICE_SKP_F_QUEUED)
		return;
	if (bpf_map_push_elem(&sluice_sk_evict, key, 0)) {
		__sync_fetch_and_and(&e->flags, ~SLUICE_SKP_F_QUEUED);
		return;
	}
	accel_count(stat, 1);
}

/* Asks for socket `key` (entry `e`) to leave the map: its reader blocks,
 * or it has no peer to be paired with. Only if nothing was ever
 * redirected to it (leaving frees its queue); from then on nothing is
 * (SLUICE_SKP_F_EVICTING). */
static __always_inline void accel_evict(struct sk_pair_key *key, struct sk_peer *e)
{
	if (e->flags & SLUICE_SKP_F_EVICTING)
		return;
	__u32 old = __sync_fetch_and_or(&e->flags, SLUICE_SKP_F_EVICTING);

	if (old & (SLUICE_SKP_F_REDIRECTED | SLUICE_SKP_F_EVICTING))
		return;
	accel_push_evict(key, e, ACCEL_STAT_EVICTED);
}

/* Why a message of `a` may not be redirected to `peer` now (an
 * enum accel_stat fallback reason), or 0. */
static __always_inline __u32 accel_refusal(const struct accel_cfg *cfg, struct sk_accel *a,
					   struct sk_pair_key peer_key, struct sk_peer *peer,
					   __u32 size)
{
	if (!cfg || !cfg->enabled)
		return ACCEL_STAT_FB_OFF;
	if (!peer || peer->flags & SLUICE_SKP_F_EVICTING)
		return ACCEL_STAT_FB_NO_PEER;
	if (peer->flags & SLUICE_SKP_F_TCP_READER)
		return ACCEL_STAT_FB_TCP_READER;
	struct sock *sk = accel_live(peer);

	if (!sk)
		return ACCEL_STAT_FB_NO_PEER;
	if (!(a->flags & SLUICE_SKA_F_PEER_NONBLOCK)) {
		if (!accel_nonblocking(sk)) {
			/* an accepted peer whose reader blocks leaves the map */
			if (BPF_CORE_READ(sk, sk_socket, file))
				accel_evict(&peer_key, (struct sk_peer *)peer);
			return ACCEL_STAT_FB_BLOCKING;
		}
		a->flags |= SLUICE_SKA_F_PEER_NONBLOCK;
	}
	unsigned long *mp = BPF_CORE_READ(sk, __sk_common.skc_prot, memory_pressure);
	unsigned long pressure = 0;

	if (mp)
		bpf_probe_read_kernel(&pressure, sizeof(pressure), mp);
	if (pressure)
		return ACCEL_STAT_FB_MEM_PRESSURE;
	/* Half the peer's receive buffer as it stands (SO_RCVBUF, or as
	 * TCP autotuning has grown it), at most the configured budget.
	 * Redirected bytes are charged to the peer's receive memory (6.13+),
	 * which TCP's advertised window is computed from; reading them does
	 * not send a window update. Past half the buffer, a fallback's first
	 * segment could meet a closed window and wait for the persist timer
	 * (hundreds of ms, measured: the CPU idle 40% of a bulk transfer).
	 * Below it the window stays open, TCP carries the fallback at once,
	 * and its reads grow the buffer, and with it this budget, as they
	 * would for TCP. */
	__u32 limit = (__u32)BPF_CORE_READ(sk, sk_rcvbuf) / 2;

	if (limit > cfg->rmem_max)
		limit = cfg->rmem_max;
	/* Each queued message also costs its struct sk_msg, which no
	 * counter shows: count those redirected while any are queued. A
	 * message that fits the budget alone goes when nothing is queued
	 * (TCP takes one write of half the buffer into an idle connection
	 * without blocking): a fresh connection's 64 KiB write to a default
	 * 128 KiB buffer is redirected, not sent through TCP. */
	__s64 queued = BPF_CORE_READ(sk, sk_backlog.rmem_alloc.counter);

	if (queued <= 0) {
		queued = 0;
		a->msgs = 0;
	}
	__u64 cost = (__u64)queued + (__u64)a->msgs * cfg->msg_cost + size;

	if (cost > limit)
		return ACCEL_STAT_FB_BACKPRESSURE;
	return 0;
}

/* Socket `a` (entry `me`) sends through TCP from now on, for `why`; its
 * peer's guards learn it from its entry (SLUICE_SKP_F_SENDS_TCP). */
static __always_inline void accel_send_tcp(struct sk_accel *a, struct sk_peer *me, __u32 why)
{
	a->mode = SK_ACCEL_TCP;
	a->reason = why;
	if (me)
		__sync_fetch_and_or(&me->flags, SLUICE_SKP_F_SENDS_TCP);
}

/* The same, counted as a fallback for `why`. */
static __always_inline void accel_fall_back(struct sk_accel *a, struct sk_peer *me, __u32 why)
{
	accel_send_tcp(a, me, why);
	accel_count(why, 1);
}

/* Whether every byte socket `me` wrote to TCP has been read by `peer`'s
 * application: only then may a redirected byte follow them. */
static __always_inline int accel_tcp_drained(const struct sk_peer *me, const struct sk_peer *peer)
{
	if (!me)
		return 0;
	__u32 written = BPF_CORE_READ((struct tcp_sock *)accel_addr(me), write_seq);
	__u32 read = BPF_CORE_READ((struct tcp_sock *)accel_addr(peer), copied_seq);

	return written == read;
}

/* A writer its reader keeps behind: after a backpressure fallback it
 * returns to redirecting only once its reader has read every byte it
 * sent through TCP. Between netns every ACCEL_TCP_STRETCH messages it
 * sends through TCP without that is a strike, and a redirecting phase of
 * at least ACCEL_SHORT_PHASE messages clears them; a writer of a
 * connection busy both ways inside one netns is judged by its share of
 * redirected messages instead (accel_by_share).
 * (accel_tcp_stretch, accel_backpressured.) */
#define ACCEL_SHORT_PHASE 16
#define ACCEL_TCP_STRETCH SLUICE_SKA_COUNT_MASK
/* Strikes before the writer leaves while it has never redirected a long
 * phase: its reader has never kept up (one CPU, loopback: phases of 1 to
 * 8 messages between stalls of 1 to 5 stretches, measured). */
#define ACCEL_STRIKES 4
/* Strikes before it leaves once it has (SLUICE_SKA_F_KEPT_UP), its peer
 * in another netns: between pods on one CPU such a reader now and then
 * falls behind for thousands of messages and catches up again (measured
 * with 64 KiB writes: stalls of up to 17 stretches, 170 ms, often right
 * after the connection's first phases, some broken by a short phase,
 * then phases of ~500 messages again), while leaving is for good; and
 * there the psock's path into TCP runs at TCP's own speed (measured: 255
 * messages of 64 KiB in ~9.5 ms, 14 Gbit/s, plain TCP over the veth
 * 13.5). A reader that never catches up again (two threads writing to
 * one socket: it never has every TCP byte when either sends) costs a
 * writer between netns ~12,000 messages at TCP's speed. */
#define ACCEL_STRIKES_KEPT_UP 48
/* Strikes before its connection drains, judged by share
 * (accel_by_share): stretches with fewer redirected messages than TCP
 * ones, less those with more. */
#define ACCEL_STRIKES_BY_SHARE 6

/* Whether socket `me` and its peer are in one netns (both entries there). */
static __always_inline int accel_same_netns(const struct sk_peer *me, const struct sk_peer *peer)
{
	return me->netns_cookie == peer->netns_cookie;
}

/* Whether writer `me` is judged by the share of its messages it
 * redirects: its peer shares its netns (an app and its proxy over
 * loopback), and the peer has redirected to it (both directions carry
 * data; at its limit the connection drains rather than the writer
 * leaving). There plain TCP is faster than the psock's path into TCP
 * (24 Gbit/s on one CPU), and a connection whose writers mix redirects
 * with that path is slower than plain TCP once about half their messages
 * go through TCP (measured, bidirectional 64 KiB on two CPUs, 10 rounds:
 * 11% to 34% of the messages redirected gave 0.60x to 0.71x of TCP, 48%
 * to 53% 0.87x to 0.97x, 76% 1.5x, 95% and more 2.0x to 2.3x), however
 * long its redirecting phases (the slow rounds' averaged ~50 messages,
 * and each of their TCP excursions was shorter than a stretch, so the
 * rule between netns kept them on that mix for good). So here the window
 * runs across fallbacks: its TCP messages are counted from one stretch's
 * end to the next, its redirected ones in the phase counter over the
 * same span (not reset when it resumes). A stretch with fewer redirected
 * than ACCEL_TCP_STRETCH is a strike, one with as many takes one back
 * (windows of 255 TCP messages are short, ~5 ms at 64 KiB, and the share
 * swings from one to the next while the connection's buffers grow), and
 * the connection drains at ACCEL_STRIKES_BY_SHARE (one CPU: phases of 1
 * to 8 messages, every stretch a strike). A one-way writer keeps the rule
 * between netns: there the same mix cost nothing measurable (two CPUs,
 * 26% redirected: 1.06x of TCP), while judging it by share took young
 * connections' writers out before their readers' buffers had grown (one
 * way on two CPUs, 6 of 10 rounds at 1.0x where those that stayed made
 * ~2x; in a full run 9 of 10). */
static __always_inline int accel_by_share(const struct sk_peer *me, const struct sk_peer *peer)
{
	return me && peer && accel_same_netns(me, peer) && me->flags & SLUICE_SKP_F_REDIRECTED;
}

static __always_inline __u32 accel_field(__u32 flags, __u32 shift)
{
	return (flags >> shift) & SLUICE_SKA_COUNT_MASK;
}

static __always_inline __u32 accel_set_field(__u32 flags, __u32 shift, __u32 v)
{
	if (v > SLUICE_SKA_COUNT_MASK)
		v = SLUICE_SKA_COUNT_MASK;
	return (flags & ~(SLUICE_SKA_COUNT_MASK << shift)) | (v << shift);
}

/* Connection of `me` and `peer` sends through TCP for good, both
 * directions, and its sockets leave the map once nothing redirected can
 * reach them (accel_drain). Both entries carry the flag: each sender's
 * verdict sees it in either. */
static __always_inline void accel_start_drain(const struct sk_pair_key *self, struct sk_peer *me,
					      struct sk_peer *peer)
{
	if (!peer)
		return;
	/* Both ends may start it at once: each sets the entry of the lower
	 * key first and counts by what that entry held, so one of them
	 * counts the connection. */
	int me_first = self->snd < self->rcv;
	struct sk_peer *first = me_first ? me : peer, *second = me_first ? peer : me;
	__u32 old = __sync_fetch_and_or(&first->flags, SLUICE_SKP_F_DRAINING);

	__sync_fetch_and_or(&second->flags, SLUICE_SKP_F_DRAINING);
	if (!(old & SLUICE_SKP_F_DRAINING))
		accel_count(ACCEL_STAT_DRAINING, 1);
}

/* Socket `a` (entry `me`) of a draining connection (accel_start_drain)
 * sends one more message, through TCP: it asks to leave the map (the
 * daemon takes it out, sluice_sk_evict) once leaving can lose nothing.
 * Leaving frees the socket's queue of redirected messages, and a message
 * redirected to it after it left would be lost, so both must be proven:
 *
 * 1. no message of the peer's can still be on its way to the queue. A
 *    redirect is chosen by the peer's verdict under the peer's lock, but
 *    queued after the peer released it (tcp_bpf_send_verdict); the whole
 *    send holds a reference on the peer's psock, taken before its verdict
 *    ran and dropped after the message was queued (tcp_bpf_sendmsg). So
 *    once the flag is set, a peer psock with no reference but its map's
 *    (the peer still in the map: not queued to leave, checked after the
 *    count), or none at all (it left), means every send that could have
 *    seen the flag unset has queued its message, and every later one
 *    passes. The flag was set by a locked read-modify-write and the
 *    reference taken by one, which x86-64 orders. Any other use of the
 *    peer's psock (its reads, polls) counts too: the socket waits for a
 *    later message. The verdict reads the flag before it would call
 *    bpf_msg_redirect_hash (after that call even SK_PASS redirects).
 * 2. then, the queue is empty: its reader read every redirected byte.
 *
 * A socket that sends no more, or whose peer is gone from the map, stays
 * (its reads go through the psock's path into TCP's queue). */
static __always_inline void accel_drain(struct sk_accel *a, struct sk_peer *me,
					const struct sk_peer *peer)
{
	if (!me || !peer || me->flags & SLUICE_SKP_F_QUEUED)
		return;
	struct sock *other = accel_live(peer);

	if (!other)
		return;
	/* A read that fails proves nothing: stay (BPF_CORE_READ would give 0,
	 * "no psock", the unsafe answer). */
	struct sk_psock *ps;
	int users = 0;

	if (accel_read_psock(other, &ps) ||
	    (ps && bpf_core_read(&users, sizeof(users), &ps->refcnt.refs.counter)))
		return;
	/* Read after the count: whether the peer could have left the map
	 * before it. If so, its map's reference may be gone and a send in
	 * flight may hold the one left; only no psock at all then proves
	 * that nothing is on its way. A peer that leaves without being
	 * queued: one whose connection sockops saw close, where the entry
	 * goes first (gone: stay), and one closed by its application, whose
	 * last close runs when no send holds its file any more. */
	struct sk_pair_key peer_key = {.snd = a->self.rcv, .rcv = a->self.snd};
	const struct sk_peer *now = bpf_map_lookup_elem(&sluice_sk_peer, &peer_key);

	if (!now || users > (now->flags & SLUICE_SKP_F_QUEUED ? 0 : 1))
		return;
	if (accel_read_psock(accel_addr(me), &ps) || (ps && accel_queued(ps)))
		return;
	__sync_fetch_and_or(&me->flags, SLUICE_SKP_F_EVICTING);
	accel_push_evict(&a->self, me, ACCEL_STAT_DRAINED);
}

/* Socket `a` fell back because its peer's reader is behind: a long
 * redirecting phase before it clears the strikes (and shows the reader
 * can keep up); a TCP stretch starts. Judged by share, the window goes on
 * (accel_by_share). */
static __always_inline void accel_backpressured(struct sk_accel *a, int by_share)
{
	if (by_share)
		return;
	if (accel_field(a->flags, SLUICE_SKA_PHASE_SHIFT) >= ACCEL_SHORT_PHASE) {
		a->flags = accel_set_field(a->flags, SLUICE_SKA_STRIKE_SHIFT, 0);
		a->flags |= SLUICE_SKA_F_KEPT_UP;
	}
	a->flags = accel_set_field(a->flags, SLUICE_SKA_TCP_SHIFT, 0);
}

/* Socket `a` (entry `me`), fallen back for backpressure, sends one more
 * message through TCP. Where its reader seldom or never catches up (one
 * CPU, loopback: measured ~8 messages redirected per fallback against
 * ~1,300 through TCP; between pods ~500 against ~100), the writer spends
 * its life on the psock's send path into TCP, slower than TCP alone
 * (one-way 0.61x inside a pod). At ACCEL_STRIKES strikes
 * (ACCEL_STRIKES_KEPT_UP once it redirected a long phase to a peer in
 * another netns, ACCEL_STRIKES_BY_SHARE counted by share, accel_by_share),
 * a sender to which nothing was ever redirected (one-way: an upload, a
 * stream)
 * leaves the map and sends through plain TCP; its reader keeps what it
 * was sent. A sender something was redirected to (both directions busy:
 * bidirectional bulk) sends its connection to TCP for good instead, and
 * both sockets leave once nothing redirected can reach them
 * (accel_drain). */
static __always_inline void accel_tcp_stretch(struct sk_accel *a, struct sk_peer *me,
					      struct sk_peer *peer, int by_share)
{
	__u32 n = accel_field(a->flags, SLUICE_SKA_TCP_SHIFT) + 1;

	if (n >= ACCEL_TCP_STRETCH) {
		__u32 strikes = accel_field(a->flags, SLUICE_SKA_STRIKE_SHIFT) + 1;
		__u32 limit = ACCEL_STRIKES;

		if (by_share) {
			/* As many redirected as sent through TCP since the
			 * last stretch's end: no strike, one taken back. */
			if (accel_field(a->flags, SLUICE_SKA_PHASE_SHIFT) >= ACCEL_TCP_STRETCH)
				strikes = strikes >= 2 ? strikes - 2 : 0;
			limit = ACCEL_STRIKES_BY_SHARE;
			a->flags = accel_set_field(a->flags, SLUICE_SKA_PHASE_SHIFT, 0);
		} else if (a->flags & SLUICE_SKA_F_KEPT_UP && me && peer &&
			   !accel_same_netns(me, peer)) {
			limit = ACCEL_STRIKES_KEPT_UP;
		}
		n = 0;
		a->flags = accel_set_field(a->flags, SLUICE_SKA_STRIKE_SHIFT, strikes);
		if (strikes >= limit && me) {
			if (!(me->flags & SLUICE_SKP_F_REDIRECTED))
				accel_evict(&a->self, me);
			else
				accel_start_drain(&a->self, me, peer);
		}
	}
	a->flags = accel_set_field(a->flags, SLUICE_SKA_TCP_SHIFT, n);
}

static __always_inline int accel_msg(struct sk_msg_md *m)
{
	struct bpf_sock *sk = m->sk;
	__u32 size = m->size;

	if (!sk)
		return SK_PASS;
	struct sk_accel *a = bpf_sk_storage_get(&sluice_sk_accel, sk, 0, 0);

	if (!a)
		goto pass;
	struct sk_peer *me = bpf_map_lookup_elem(&sluice_sk_peer, &a->self);

	/* An accepted socket that sends shows its own reader's mode. */
	if (me && !(a->flags & SLUICE_SKA_F_SELF_NONBLOCK) &&
	    BPF_CORE_READ(accel_addr(me), sk_socket, file)) {
		if (accel_nonblocking(accel_addr(me)))
			a->flags |= SLUICE_SKA_F_SELF_NONBLOCK;
		else
			accel_evict(&a->self, me);
	}
	struct sk_pair_key peer_key = {.snd = a->self.rcv, .rcv = a->self.snd};
	struct sk_peer *peer = bpf_map_lookup_elem(&sluice_sk_peer, &peer_key);
	__u32 why = accel_refusal(accel_config(), a, peer_key, peer, size);

	/* No peer in the map (a server on another node, in the node's own
	 * netns, outside the cluster), or one that is leaving: nothing will
	 * ever be redirected between the two, so this socket leaves the map
	 * too (if nothing was redirected to it, accel_evict) instead of
	 * sending and reading through the redirect path for its whole life
	 * (measured: a pod's bulk transfer to the node's netns at 0.56x of
	 * TCP on two CPUs while its socket stayed). */
	if (why == ACCEL_STAT_FB_NO_PEER && me)
		accel_evict(&a->self, me);

	/* The node switch turned off: the connection leaves the shortcut for
	 * good, as a draining one (detaching the programs would not stop
	 * open sockets' redirects; only taking them out of the map does). */
	if (why == ACCEL_STAT_FB_OFF && me) {
		if (peer)
			accel_start_drain(&a->self, me, peer);
		else
			accel_evict(&a->self, me);
	}

	if ((me && me->flags & SLUICE_SKP_F_DRAINING) ||
	    (peer && peer->flags & SLUICE_SKP_F_DRAINING)) {
		if (a->mode == SK_ACCEL_REDIRECT) {
			if (why)
				accel_count(why, 1);
			accel_send_tcp(a, me, ACCEL_STAT_DRAINING);
		}
		accel_drain(a, me, peer);
		goto pass;
	}

	/* Read once: the resume below and a fallback after it judge alike. */
	int by_share = accel_by_share(me, peer);

	if (a->mode != SK_ACCEL_REDIRECT) {
		/* Urgent data keeps the connection on TCP for good. */
		if (why || a->reason == ACCEL_STAT_FB_OOB || !accel_tcp_drained(me, peer)) {
			if (a->reason == ACCEL_STAT_FB_BACKPRESSURE)
				accel_tcp_stretch(a, me, peer, by_share);
			goto pass;
		}
		if (me)
			__sync_fetch_and_and(&me->flags, ~SLUICE_SKP_F_SENDS_TCP);
		a->mode = SK_ACCEL_REDIRECT;
		a->reason = 0;
		if (!by_share)
			a->flags = accel_set_field(a->flags, SLUICE_SKA_PHASE_SHIFT, 0);
		accel_count(ACCEL_STAT_RESUMED, 1);
	}
	/* Claim the peer against its eviction (accel_evict), once. */
	if (!why && peer && !(peer->flags & SLUICE_SKP_F_REDIRECTED) &&
	    __sync_fetch_and_or(&peer->flags, SLUICE_SKP_F_REDIRECTED) & SLUICE_SKP_F_EVICTING)
		why = ACCEL_STAT_FB_NO_PEER;
	if (!why && bpf_msg_redirect_hash(m, &sluice_sockhash, &peer_key, BPF_F_INGRESS) != SK_PASS)
		why = ACCEL_STAT_FB_REDIRECT;
	if (why) {
		accel_fall_back(a, me, why);
		if (why == ACCEL_STAT_FB_BACKPRESSURE)
			accel_backpressured(a, by_share);
		goto pass;
	}
	a->msgs++;
	a->flags = accel_set_field(a->flags, SLUICE_SKA_PHASE_SHIFT,
				   accel_field(a->flags, SLUICE_SKA_PHASE_SHIFT) + 1);
	accel_count(ACCEL_STAT_REDIR_MSGS, 1);
	accel_count(ACCEL_STAT_REDIR_BYTES, size);
	return SK_PASS;
pass:
	accel_count(ACCEL_STAT_PASS_MSGS, 1);
	accel_count(ACCEL_STAT_PASS_BYTES, size);
	return SK_PASS;
}

#endif
