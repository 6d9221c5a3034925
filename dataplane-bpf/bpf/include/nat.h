/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-packet service translation on a pod's host veth, for pods that
 * opted out of socket-level load balancing (their sources carry
 * SLUICE_SRC_F_SVC_NAT): what the pod's own stack and netfilter see is
 * the service address, as under kube-proxy.
 *
 * - nat_fwd() at tc ingress (pod -> node), after the edge check passed:
 *   a packet to a service frontend is DNATed to a backend chosen once per
 *   flow by the same lb_select() the socket programs use (random or
 *   Maglev, session affinity per pod), and the flow is tracked;
 * - nat_reply() at tc egress (node -> pod): a reply of a tracked flow gets
 *   the service address back as its source.
 *
 * Connection tracking (sluice_ct, pinned, LRU so it is bounded) keeps two
 * entries per flow; entries expire after an idle time that depends on the
 * protocol and on whether a FIN or RST went by, and an expired, closed or
 * (for UDP) stale flow chooses again. The client address is never
 * rewritten: the backend sees the pod. Not translated: IPv4 fragments,
 * IPv6 packets with extension headers, ICMP errors about translated
 * flows, and a pod reaching itself through a service (hairpin). */
#ifndef SLUICE_NAT_H
#define SLUICE_NAT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sluice_maps.h"
#include "stat.h"
#include "lb.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ctstat SEC(".maps");

#define NAT_SEC 1000000000ULL
/* Idle timeouts: an open TCP connection as kube-proxy sets conntrack
 * (nf_conntrack_tcp_timeout_established, 24 h), one that saw a FIN as
 * Linux's FIN_WAIT (120 s), one that saw a RST as TIME_WAIT's order of
 * magnitude; UDP as Linux's assured UDP stream (120 s). Every packet of a
 * flow renews it (at most once a second). */
#define NAT_TCP_TIMEOUT (86400ULL * NAT_SEC)
#define NAT_TCP_FIN_TIMEOUT (120ULL * NAT_SEC)
#define NAT_TCP_RST_TIMEOUT (10ULL * NAT_SEC)
#define NAT_UDP_TIMEOUT (120ULL * NAT_SEC)
#define NAT_RENEW (1ULL * NAT_SEC)

/* The session-affinity identity of a pod on the per-packet path: its host
 * ifindex with the top bit set, apart from every netns cookie (the
 * socket path's identity), so the daemon can tell whose entry it is. */
#define NAT_AFF_ID(ifindex) ((1ULL << 63) | (__u64)(ifindex))

#define NAT_TCP_FIN 0x01
#define NAT_TCP_SYN 0x02
#define NAT_TCP_RST 0x04
#define NAT_TCP_ACK 0x10

/* The headers of one TCP or UDP packet, as the translation needs them. */
struct nat_pkt {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u8 tcp_flags;
	__u8 pad;
	__u32 l4_off;
};

/* Reads the packet behind the Ethernet header; 0 if it is TCP or UDP that
 * can be translated, -1 otherwise. */
static __always_inline int nat_parse(struct __sk_buff *skb, struct nat_pkt *p)
{
	__u32 l3 = sizeof(struct ethhdr);
	__u16 ports[2];

	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)))
			return -1;
		if (ip.ihl < 5 || (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
		p->family = SLUICE_AF_INET;
		p->proto = ip.protocol;
		__builtin_memcpy(p->src, &ip.saddr, 4);
		__builtin_memcpy(p->dst, &ip.daddr, 4);
		p->l4_off = l3 + (__u32)ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)))
			return -1;
		p->family = SLUICE_AF_INET6;
		p->proto = ip6.nexthdr;
		__builtin_memcpy(p->src, &ip6.saddr, 16);
		__builtin_memcpy(p->dst, &ip6.daddr, 16);
		p->l4_off = l3 + sizeof(ip6);
	} else {
		return -1;
	}
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
		return -1;
	p->sport = ports[0];
	p->dport = ports[1];
	if (p->proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4_off + 13, &p->tcp_flags, 1))
		return -1;
	return 0;
}

static __always_inline __u8 nat_ct_flags(const struct nat_pkt *p)
{
	if (p->proto != IPPROTO_TCP)
		return 0;
	return (p->tcp_flags & NAT_TCP_RST ? SLUICE_CT_F_RST : 0) |
	       (p->tcp_flags & NAT_TCP_FIN ? SLUICE_CT_F_FIN : 0);
}

static __always_inline int nat_ct_live(const struct ct_entry *e, __u8 proto, __u64 now)
{
	__u64 t = NAT_UDP_TIMEOUT;

	if (proto == IPPROTO_TCP)
		t = e->flags & SLUICE_CT_F_RST ? NAT_TCP_RST_TIMEOUT :
		    e->flags & SLUICE_CT_F_FIN ? NAT_TCP_FIN_TIMEOUT :
						 NAT_TCP_TIMEOUT;
	return e->last_seen_ns + t > now;
}

/* Renews entry e with the packet's flags, and its pair (the other
 * direction's entry, under pair_key) with it, at most once a second
 * unless a FIN or RST is new. */
static __always_inline void nat_ct_touch(struct ct_entry *e, struct ct_key *pair_key, __u8 flags,
					 __u64 now)
{
	struct ct_entry *pe;

	if ((e->flags | flags) == e->flags && e->last_seen_ns + NAT_RENEW > now)
		return;
	e->flags |= flags;
	e->last_seen_ns = now;
	pe = bpf_map_lookup_elem(&sluice_ct, pair_key);
	if (pe) {
		pe->flags |= flags;
		pe->last_seen_ns = now;
	}
}

/* Offset of the L4 checksum, and the flags its updates take (an IPv4 UDP
 * checksum of 0 means none, and stays 0). */
static __always_inline __u32 nat_csum_off(const struct nat_pkt *p)
{
	if (p->proto == IPPROTO_TCP)
		return p->l4_off + 16;
	if (p->proto == IPPROTO_UDP)
		return p->l4_off + 6;
	return p->l4_off + 2; /* ICMP, ICMPv6 (echo, by masquerade) */
}

/* An ICMP or ICMPv6 echo: its identifier stands for both ports. */
static __always_inline int nat_is_icmp(const struct nat_pkt *p)
{
	return p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6;
}

static __always_inline __u64 nat_csum_flags(const struct nat_pkt *p)
{
	/* IPv4: 0 means no checksum and stays 0; IPv6: a result of 0 is
	 * written as 0xffff (0 is not a valid UDP checksum there). */
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrites the packet's destination (dst=1) or source (dst=0) address and
 * port, with the IPv4 header checksum and the L4 checksum (its pseudo
 * header) kept right. 0 on success. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct nat_pkt *p, int dst,
				       const __u8 addr[16], __u16 port)
{
	__u32 l3 = sizeof(struct ethhdr);
	__u32 csum = nat_csum_off(p);
	__u64 mangled = nat_csum_flags(p);
	__u16 old_port = dst ? p->dport : p->sport;

	if (p->family == SLUICE_AF_INET) {
		__u32 old_ip, new_ip;
		__u32 off = l3 + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

		__builtin_memcpy(&old_ip, dst ? p->dst : p->src, 4);
		__builtin_memcpy(&new_ip, addr, 4);
		/* ICMPv4's checksum has no pseudo header. */
		if (p->proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(skb, csum, old_ip, new_ip, BPF_F_PSEUDO_HDR | 4 | mangled))
			return -1;
		if (bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), old_ip, new_ip, 4))
			return -1;
		if (bpf_skb_store_bytes(skb, off, &new_ip, 4, 0))
			return -1;
	} else {
		__u32 old_ip[4], new_ip[4];
		__u32 off = l3 + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		__s64 diff;

		__builtin_memcpy(old_ip, dst ? p->dst : p->src, 16);
		__builtin_memcpy(new_ip, addr, 16);
		diff = bpf_csum_diff(old_ip, 16, new_ip, 16, 0);
		if (diff < 0)
			return -1;
		/* `mangled` here too: a UDP checksum this update brings to 0
		 * must go out as 0xffff, or the receiver drops the datagram
		 * (and the port's update after it would take the 0 for "no
		 * checksum" and leave it). */
		if (bpf_l4_csum_replace(skb, csum, 0, (__u32)diff, BPF_F_PSEUDO_HDR | mangled))
			return -1;
		if (bpf_skb_store_bytes(skb, off, new_ip, 16, 0))
			return -1;
	}
	if (old_port != port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, port, 2 | mangled))
			return -1;
		if (bpf_skb_store_bytes(skb, p->l4_off + (nat_is_icmp(p) ? 4 : dst ? 2 : 0), &port,
					2, 0))
			return -1;
	}
	return 0;
}

static __always_inline void nat_key(struct ct_key *k, const __u8 src[16], const __u8 dst[16],
				    __u16 sport, __u16 dport, const struct nat_pkt *p, __u8 dir)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->src, src, 16);
	__builtin_memcpy(k->dst, dst, 16);
	k->sport = sport;
	k->dport = dport;
	k->proto = p->proto;
	k->family = p->family;
	k->dir = dir;
}

/* The 5-tuple of a flow as Maglev's hash: every node (and every packet)
 * picks the same table slot for it. */
static __always_inline __u32 nat_flow_hash(const struct nat_pkt *p)
{
	__u64 a[2], b[2];

	__builtin_memcpy(a, p->src, 16);
	__builtin_memcpy(b, p->dst, 16);
	return lb_mix32(a[0] ^ (a[1] * 31) ^ (b[0] * 17) ^ (b[1] * 13) ^
			((__u64)p->sport << 32 | (__u64)p->dport << 16 | p->proto));
}

/* A packet from the pod behind ifindex (its source already checked).
 * Returns TC_ACT_UNSPEC to carry on, TC_ACT_SHOT to drop. */
static __always_inline int nat_fwd(struct __sk_buff *skb, __u32 ifindex)
{
	struct nat_pkt p;
	struct ct_key k, rk;
	struct ct_entry *e, ne = {};
	struct lb_req r = {};
	__u64 now;
	__u8 flags;
	int syn;

	if (nat_parse(skb, &p))
		return TC_ACT_UNSPEC;
	now = bpf_ktime_get_ns();
	flags = nat_ct_flags(&p);
	syn = p.proto == IPPROTO_TCP && (p.tcp_flags & (NAT_TCP_SYN | NAT_TCP_ACK)) == NAT_TCP_SYN;
	nat_key(&k, p.src, p.dst, p.sport, p.dport, &p, SLUICE_CT_DIR_FWD);
	e = bpf_map_lookup_elem(&sluice_ct, &k);
	if (e && nat_ct_live(e, p.proto, now) &&
	    !(syn && (e->flags & (SLUICE_CT_F_FIN | SLUICE_CT_F_RST)))) {
		struct svc_backend_key mk = { .svc_id = e->svc_id, .backend_id = e->backend_id };

		/* A TCP connection keeps its backend while it lives (as under
		 * kube-proxy, a terminating backend finishes its own); a UDP
		 * flow whose backend left chooses again, as kube-proxy
		 * flushes the conntrack entries of stale UDP endpoints. */
		if (p.proto == IPPROTO_TCP || bpf_map_lookup_elem(&sluice_svc_bes, &mk)) {
			__u8 be[16];
			__u16 be_port = e->port;

			__builtin_memcpy(be, e->addr, 16);
			nat_key(&rk, be, p.src, be_port, p.sport, &p, SLUICE_CT_DIR_REPLY);
			nat_ct_touch(e, &rk, flags, now);
			if (nat_rewrite(skb, &p, 1, be, be_port))
				return TC_ACT_SHOT;
			stat_inc(&sluice_ctstat, CT_STAT_FWD);
			return TC_ACT_UNSPEC;
		}
	}

	__builtin_memcpy(r.addr, p.dst, 16);
	r.port = p.dport;
	r.proto = p.proto;
	r.family = p.family;
	r.rnd = bpf_get_prandom_u32();
	r.hash = nat_flow_hash(&p);
	r.netns_cookie = NAT_AFF_ID(ifindex);
	r.now_ns = now;
	if (e) {
		/* The old flow's reply entry goes with it. */
		__u8 old[16];

		__builtin_memcpy(old, e->addr, 16);
		nat_key(&rk, old, p.src, e->port, p.sport, &p, SLUICE_CT_DIR_REPLY);
		bpf_map_delete_elem(&sluice_ct, &rk);
	}
	switch (lb_select(&r)) {
	case LB_PASS:
		if (e)
			bpf_map_delete_elem(&sluice_ct, &k);
		return TC_ACT_UNSPEC;
	case LB_REFUSE:
		/* A service with no backend: nothing to send it to. */
		stat_inc(&sluice_ctstat, CT_STAT_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	stat_inc(&sluice_ctstat, e ? CT_STAT_RESELECT : CT_STAT_NEW);
	__builtin_memcpy(ne.addr, r.be.addr, 16);
	ne.port = r.be.port;
	ne.flags = flags;
	ne.svc_id = r.svc_id;
	ne.backend_id = r.backend_id;
	ne.last_seen_ns = now;
	/* The reply entry first: a reply can never arrive before it. */
	nat_key(&rk, r.be.addr, p.src, r.be.port, p.sport, &p, SLUICE_CT_DIR_REPLY);
	{
		struct ct_entry re = ne;

		__builtin_memcpy(re.addr, p.dst, 16);
		re.port = p.dport;
		if (bpf_map_update_elem(&sluice_ct, &rk, &re, BPF_ANY))
			return TC_ACT_SHOT;
	}
	if (bpf_map_update_elem(&sluice_ct, &k, &ne, BPF_ANY))
		return TC_ACT_SHOT;
	if (nat_rewrite(skb, &p, 1, r.be.addr, r.be.port))
		return TC_ACT_SHOT;
	stat_inc(&sluice_ctstat, CT_STAT_FWD);
	return TC_ACT_UNSPEC;
}

/* A packet on its way to the pod: the reply of a translated flow shows the
 * service as its source. Drops only a reply it could not rewrite. */
static __always_inline int nat_reply(struct __sk_buff *skb)
{
	struct nat_pkt p;
	struct ct_key k, fk;
	struct ct_entry *e;
	__u8 svc[16];
	__u16 svc_port;
	__u64 now;

	if (nat_parse(skb, &p))
		return TC_ACT_UNSPEC;
	nat_key(&k, p.src, p.dst, p.sport, p.dport, &p, SLUICE_CT_DIR_REPLY);
	e = bpf_map_lookup_elem(&sluice_ct, &k);
	if (!e)
		return TC_ACT_UNSPEC;
	now = bpf_ktime_get_ns();
	if (!nat_ct_live(e, p.proto, now))
		return TC_ACT_UNSPEC;
	__builtin_memcpy(svc, e->addr, 16);
	svc_port = e->port;
	nat_key(&fk, p.dst, svc, p.dport, svc_port, &p, SLUICE_CT_DIR_FWD);
	nat_ct_touch(e, &fk, nat_ct_flags(&p), now);
	if (nat_rewrite(skb, &p, 0, svc, svc_port))
		return TC_ACT_SHOT;
	stat_inc(&sluice_ctstat, CT_STAT_REPLY);
	return TC_ACT_UNSPEC;
}

#endif
