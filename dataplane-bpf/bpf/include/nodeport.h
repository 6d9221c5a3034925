/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* External traffic to services, on the node's external devices (and the
 * overlay device): NodePorts on this node's addresses, ExternalIPs and
 * LoadBalancer ingress addresses; TCP and UDP, IPv4 and IPv6.
 *
 * ext_ingress() (tc ingress), for a packet from a client to a frontend:
 * the backend is chosen once per flow by lb_select(), Maglev hashing the
 * client's 5-tuple with the frontend's key (not this node's address), so
 * every node picks the same backend for the same flow. Then:
 * - a backend on this node: DNAT; the reply gets the frontend back as its
 *   source in ext_egress() on its way out;
 * - a remote backend, SNAT: DNAT and SNAT to this node's address and a
 *   port of the SNAT range, sent straight to the route's device (a packet
 *   whose source is a local address would be dropped as martian by the
 *   input path); the reply comes back here, is translated back, and is
 *   sent on to the client the same way;
 * - a remote backend, DSR: DNAT, and the frontend (address, port) carried
 *   to the backend's node in an IPv4 option or an IPv6 Destination
 *   Options header, on a TCP flow's SYN and on every UDP datagram; the
 *   backend's node takes it out (ext_dsr_take()) and its reply leaves
 *   there with the frontend as source, straight to the client.
 * externalTrafficPolicy Local frontends hold only this node's backends and
 * are never SNATed. Flows are tracked in sluice_ext_ct (pinned, LRU, so
 * bounded and kept across a daemon restart), with the per-packet path's
 * timeouts. Not translated: IPv4 fragments, IPv6 packets with extension
 * headers (other than the DSR one), ICMP errors. */
#ifndef SLUICE_NODEPORT_H
#define SLUICE_NODEPORT_H

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
#include "nat.h"
#include "nodeaddr.h"

/* The heavier steps are functions of their own (BPF-to-BPF calls): each
 * has its own stack frame, which one inlined program would exceed. */
#ifndef __noinline
#define __noinline __attribute__((noinline))
#endif

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct pod_node_key);
	__type(value, struct pod_node);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_podnodes SEC(".maps");

/* Destinations pods reach with their own address (every node's pod
 * ranges, the service ranges, the operator's non-masquerade ranges); same
 * keys as sluice_podnodes. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct pod_node_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_nomasq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ext_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ext_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ext_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_ext_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EXT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_extstat SEC(".maps");

/* A new flow's working set, off the stack (the verifier allows 512 bytes
 * for a whole call chain, lb_select() included). */
struct ext_scratch {
	struct lb_req r;
	struct ext_ct ne;
	struct ext_ct re;
	struct ct_key rk;
	/* ext_ingress()'s packet, its reply key and frontend. */
	struct nat_pkt p;
	struct ct_key k;
	__u8 front[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ext_scratch);
} sluice_ext_scr SEC(".maps");

/* Session affinity of an external client: by its address (hashed), tagged
 * apart from pods' netns cookies and the per-packet path's ifindexes. */
#define EXT_AFF_ID(h) ((3ULL << 62) | (__u64)(h))

/* SNAT ports tried for a new flow before it is dropped. */
#define EXT_SNAT_TRIES 32

static __always_inline void ext_stat(__u32 what)
{
	stat_inc(&sluice_extstat, what);
}

static __always_inline __u32 ext_addr_hash(const __u8 a[16])
{
	__u64 x[2];

	__builtin_memcpy(x, a, 16);
	return lb_mix32(x[0] ^ (x[1] * 31));
}

/* Maglev's hash of a flow to a frontend: the client's address and port,
 * the frontend's key address (0 for a NodePort, whatever node it reached)
 * and port, the protocol. */
static __always_inline __u32 ext_flow_hash(const struct nat_pkt *p, const __u8 front[16])
{
	__u64 a[2], b[2];

	__builtin_memcpy(a, p->src, 16);
	__builtin_memcpy(b, front, 16);
	return lb_mix32(a[0] ^ (a[1] * 31) ^ (b[0] * 17) ^ (b[1] * 13) ^
			((__u64)p->sport << 32 | (__u64)p->dport << 16 | p->proto));
}

static __always_inline void ext_lpm_key(struct pod_node_key *k, const __u8 addr[16], __u8 family)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->prefixlen = 128;
	if (family == SLUICE_AF_INET) {
		k->addr[10] = 0xff;
		k->addr[11] = 0xff;
		__builtin_memcpy(&k->addr[12], addr, 4);
	} else {
		__builtin_memcpy(k->addr, addr, 16);
	}
}

/* The node a pod address lives on, or NULL when it is in no pod range. */
static __always_inline struct pod_node *ext_pod_node(const __u8 addr[16], __u8 family)
{
	struct pod_node_key k;

	ext_lpm_key(&k, addr, family);
	return bpf_map_lookup_elem(&sluice_podnodes, &k);
}

/* The frontend a packet from outside is for: its flags, and its key
 * address in front; -1 when it is for none (a ClusterIP is not served
 * from outside). */
static __always_inline long ext_frontend(const __u8 dst[16], __u16 dport, __u8 proto, __u8 family,
					 __u32 want_addr_flags, __u8 front[16])
{
	struct svc_key k = {};
	struct svc_value *v;

	__builtin_memcpy(k.addr, dst, 16);
	k.port = dport;
	k.proto = proto;
	k.family = family;
	v = bpf_map_lookup_elem(&sluice_svc, &k);
	if (v && (v->flags & SLUICE_SVC_F_EXTERNAL)) {
		__builtin_memcpy(front, dst, 16);
		return v->flags;
	}
	/* want_addr_flags 0: a NodePort whatever the address. */
	if (want_addr_flags && !(ext_node_addr(dst, family) & want_addr_flags))
		return -1;
	__builtin_memset(k.addr, 0, 16);
	v = bpf_map_lookup_elem(&sluice_svc, &k);
	if (v && (v->flags & SLUICE_SVC_F_NODEPORT)) {
		__builtin_memset(front, 0, 16);
		return v->flags;
	}
	return -1;
}

/* Sends a translated packet to dst straight out of the device its route
 * names, neighbour resolved: no second trip through the stack's
 * forwarding. `may_pass`: the packet's source is not this node's, so the
 * stack may forward it instead where this cannot. */
static __noinline int ext_redirect(struct __sk_buff *skb, __u8 family, const __u8 src[16],
				   const __u8 dst[16], int may_pass)
{
	struct bpf_fib_lookup f = {};
	long rc;

	f.family = family == SLUICE_AF_INET ? AF_INET : AF_INET6;
	f.ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	/* With the length, the lookup says when the route's MTU is smaller
	 * (not for a GSO packet: it is cut to size on the way out). */
	if (!skb->gso_size && skb->len > sizeof(struct ethhdr))
		f.tot_len = skb->len - sizeof(struct ethhdr);
	if (family == SLUICE_AF_INET) {
		__builtin_memcpy(&f.ipv4_src, src, 4);
		__builtin_memcpy(&f.ipv4_dst, dst, 4);
	} else {
		__builtin_memcpy(f.ipv6_src, src, 16);
		__builtin_memcpy(f.ipv6_dst, dst, 16);
	}
	rc = bpf_fib_lookup(skb, &f, sizeof(f), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, f.dmac, ETH_ALEN, 0) ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, f.smac, ETH_ALEN, 0))
			return TC_ACT_SHOT;
		return bpf_redirect(f.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {};

		nh.nh_family = f.family;
		if (family == SLUICE_AF_INET)
			nh.ipv4_nh = f.ipv4_dst;
		else
			__builtin_memcpy(nh.ipv6_nh, f.ipv6_dst, 16);
		return bpf_redirect_neigh(f.ifindex, &nh, sizeof(nh), 0);
	}
	/* Too big for the route (or no route): where the source is not this
	 * node's, the stack forwards it, fragmenting or answering
	 * "fragmentation needed" / "packet too big" as it must. */
	if (may_pass)
		return TC_ACT_UNSPEC;
	ext_stat(EXT_STAT_FIB_FAIL);
	return TC_ACT_SHOT;
}

/* The IPv4 header's checksum after its first word went from w_old to
 * w_new and `opt` (len bytes) was inserted (ins) or removed. */
static __always_inline int ext_ip4_fix(struct __sk_buff *skb, __be32 w_old, __be32 w_new,
				       __u8 *opt, __u32 len, int ins)
{
	__s64 d;

	d = ins ? bpf_csum_diff(NULL, 0, (__be32 *)opt, len, 0) :
		  bpf_csum_diff((__be32 *)opt, len, NULL, 0, 0);
	if (d < 0)
		return -1;
	d = bpf_csum_diff(&w_old, 4, &w_new, 4, (__wsum)d);
	if (d < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &w_new, 4, 0))
		return -1;
	return bpf_l3_csum_replace(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, check), 0,
				   (__u32)d, 0) ? -1 : 0;
}

/* Inserts the DSR option carrying the frontend (p's original destination)
 * right after the base IP header. 0 on success. */
static __noinline int ext_dsr_put(struct __sk_buff *skb, const struct nat_pkt *p)
{
	__u32 l3 = sizeof(struct ethhdr);

	if (p->family == SLUICE_AF_INET) {
		__u8 opt[SLUICE_DSR_OPT4_LEN] = { SLUICE_DSR_OPT4, SLUICE_DSR_OPT4_LEN };
		struct iphdr ip;
		__be32 w_old, w_new;

		__builtin_memcpy(&opt[2], &p->dport, 2);
		__builtin_memcpy(&opt[4], p->dst, 4);
		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)))
			return -1;
		__builtin_memcpy(&w_old, &ip, 4);
		ip.ihl += SLUICE_DSR_OPT4_LEN / 4;
		ip.tot_len = bpf_htons(bpf_ntohs(ip.tot_len) + SLUICE_DSR_OPT4_LEN);
		__builtin_memcpy(&w_new, &ip, 4);
		if (bpf_skb_adjust_room(skb, SLUICE_DSR_OPT4_LEN, BPF_ADJ_ROOM_NET, 0))
			return -1;
		if (bpf_skb_store_bytes(skb, l3 + sizeof(ip), opt, sizeof(opt), 0))
			return -1;
		return ext_ip4_fix(skb, w_old, w_new, opt, sizeof(opt), 1);
	} else {
		__u8 doh[SLUICE_DSR_OPT6_LEN] = {};
		struct ipv6hdr ip6;

		doh[0] = p->proto;
		doh[1] = SLUICE_DSR_OPT6_LEN / 8 - 1;
		doh[2] = SLUICE_DSR_OPT6;
		doh[3] = 18;
		__builtin_memcpy(&doh[4], &p->dport, 2);
		__builtin_memcpy(&doh[6], p->dst, 16);
		/* doh[22], doh[23]: two Pad1 options. */
		if (bpf_skb_adjust_room(skb, SLUICE_DSR_OPT6_LEN, BPF_ADJ_ROOM_NET, 0))
			return -1;
		if (bpf_skb_store_bytes(skb, l3 + sizeof(ip6), doh, sizeof(doh), 0))
			return -1;
		if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)))
			return -1;
		ip6.nexthdr = IPPROTO_DSTOPTS;
		ip6.payload_len = bpf_htons(bpf_ntohs(ip6.payload_len) + SLUICE_DSR_OPT6_LEN);
		return bpf_skb_store_bytes(skb, l3, &ip6, sizeof(ip6), 0) ? -1 : 0;
	}
}

/* At a backend's node: a packet that carries the DSR option has it taken
 * out, and (when it names a known frontend and the backend is a pod of
 * this node) the flow's reply rewrite recorded. Returns -1 when the packet
 * has no DSR option, else the tc verdict. */
static __noinline int ext_dsr_take(struct __sk_buff *skb)
{
	__u32 l3 = sizeof(struct ethhdr);
	struct ext_scratch *sc;
	struct pod_node *pn;
	__u8 front[16] = {}, key_addr[16];
	__u16 fport, ports[2];
	__u8 proto, family;
	__u32 zero = 0;
	int strip, local_pod;

	sc = bpf_map_lookup_elem(&sluice_ext_scr, &zero);
	if (!sc)
		return -1;
	__builtin_memset(&sc->rk, 0, sizeof(sc->rk));
	__builtin_memset(&sc->re, 0, sizeof(sc->re));

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u8 opt[SLUICE_DSR_OPT4_LEN];

		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)))
			return -1;
		if (ip.ihl < 7 || (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
		if (bpf_skb_load_bytes(skb, l3 + sizeof(ip), opt, sizeof(opt)))
			return -1;
		if (opt[0] != SLUICE_DSR_OPT4 || opt[1] != SLUICE_DSR_OPT4_LEN)
			return -1;
		proto = ip.protocol;
		family = SLUICE_AF_INET;
		__builtin_memcpy(&fport, &opt[2], 2);
		__builtin_memcpy(front, &opt[4], 4);
		__builtin_memcpy(sc->rk.src, &ip.daddr, 4);
		__builtin_memcpy(sc->rk.dst, &ip.saddr, 4);
		if (bpf_skb_load_bytes(skb, l3 + (__u32)ip.ihl * 4, ports, sizeof(ports)))
			return -1;
		strip = SLUICE_DSR_OPT4_LEN;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u8 doh[SLUICE_DSR_OPT6_LEN];

		if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)))
			return -1;
		if (ip6.nexthdr != IPPROTO_DSTOPTS)
			return -1;
		if (bpf_skb_load_bytes(skb, l3 + sizeof(ip6), doh, sizeof(doh)))
			return -1;
		if (doh[1] != SLUICE_DSR_OPT6_LEN / 8 - 1 || doh[2] != SLUICE_DSR_OPT6 || doh[3] != 18)
			return -1;
		proto = doh[0];
		family = SLUICE_AF_INET6;
		__builtin_memcpy(&fport, &doh[4], 2);
		__builtin_memcpy(front, &doh[6], 16);
		__builtin_memcpy(sc->rk.src, &ip6.daddr, 16);
		__builtin_memcpy(sc->rk.dst, &ip6.saddr, 16);
		if (bpf_skb_load_bytes(skb, l3 + sizeof(ip6) + SLUICE_DSR_OPT6_LEN, ports,
				       sizeof(ports)))
			return -1;
		strip = SLUICE_DSR_OPT6_LEN;
	} else {
		return -1;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return -1;
	/* Only for a pod of this node and a frontend that exists: anything
	 * else has the option taken out and nothing recorded. */
	pn = ext_pod_node(sc->rk.src, family);
	local_pod = pn && (pn->flags & SLUICE_POD_NODE_F_LOCAL);
	/* The frontend: an external one by its address, or a NodePort by its
	 * port alone (whichever address of its node the client used). */
	if (local_pod && ext_frontend(front, fport, proto, family, 0, key_addr) >= 0) {
		sc->rk.sport = ports[1];
		sc->rk.dport = ports[0];
		sc->rk.proto = proto;
		sc->rk.family = family;
		sc->rk.dir = SLUICE_EXT_DIR_REPLY;
		__builtin_memcpy(sc->re.a, front, 16);
		sc->re.a_port = fport;
		sc->re.mode = SLUICE_EXT_MODE_DSR_BE;
		sc->re.last_seen_ns = bpf_ktime_get_ns();
		bpf_map_update_elem(&sluice_ext_ct, &sc->rk, &sc->re, BPF_ANY);
		ext_stat(EXT_STAT_DSR_IN);
	} else {
		ext_stat(EXT_STAT_BAD_DSR);
		/* Delivered unrecorded, its answers would leave with the pod's
		 * own address: a pod of ours gets no such packet. */
		if (local_pod)
			return TC_ACT_SHOT;
	}
	if (family == SLUICE_AF_INET) {
		struct iphdr ip;
		__u8 opt[SLUICE_DSR_OPT4_LEN];
		__be32 w_old, w_new;

		if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) ||
		    bpf_skb_load_bytes(skb, l3 + sizeof(ip), opt, sizeof(opt)))
			return TC_ACT_SHOT;
		__builtin_memcpy(&w_old, &ip, 4);
		ip.ihl -= SLUICE_DSR_OPT4_LEN / 4;
		ip.tot_len = bpf_htons(bpf_ntohs(ip.tot_len) - SLUICE_DSR_OPT4_LEN);
		__builtin_memcpy(&w_new, &ip, 4);
		if (bpf_skb_adjust_room(skb, -strip, BPF_ADJ_ROOM_NET, 0) ||
		    ext_ip4_fix(skb, w_old, w_new, opt, sizeof(opt), 0))
			return TC_ACT_SHOT;
	} else {
		struct ipv6hdr ip6;

		if (bpf_skb_adjust_room(skb, -strip, BPF_ADJ_ROOM_NET, 0))
			return TC_ACT_SHOT;
		if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)))
			return TC_ACT_SHOT;
		ip6.nexthdr = proto;
		ip6.payload_len = bpf_htons(bpf_ntohs(ip6.payload_len) - SLUICE_DSR_OPT6_LEN);
		if (bpf_skb_store_bytes(skb, l3, &ip6, sizeof(ip6), BPF_F_RECOMPUTE_CSUM))
			return TC_ACT_SHOT;
	}
	return TC_ACT_UNSPEC;
}

#define EXT_ICMP_ECHO_REQUEST 8
#define EXT_ICMP_ECHO_REPLY 0
#define EXT_ICMP6_ECHO_REQUEST 128
#define EXT_ICMP6_ECHO_REPLY 129

/* After nat_parse() refused a packet: an ICMP/ICMPv6 echo request
 * (reply = 0) or echo reply (reply = 1) gets its identifier as its
 * source (request) or destination (reply) port, the other port 0, so the
 * two directions' keys mirror each other as TCP's and UDP's do. 0 if it
 * is one. */
static __always_inline int ext_parse_echo(struct __sk_buff *skb, struct nat_pkt *p, int reply)
{
	__u8 hdr[2];
	__u16 id;
	__u8 want;

	if (p->family == SLUICE_AF_INET && p->proto == IPPROTO_ICMP)
		want = reply ? EXT_ICMP_ECHO_REPLY : EXT_ICMP_ECHO_REQUEST;
	else if (p->family == SLUICE_AF_INET6 && p->proto == IPPROTO_ICMPV6)
		want = reply ? EXT_ICMP6_ECHO_REPLY : EXT_ICMP6_ECHO_REQUEST;
	else
		return -1;
	if (!p->l4_off || bpf_skb_load_bytes(skb, p->l4_off, hdr, 2) ||
	    bpf_skb_load_bytes(skb, p->l4_off + 4, &id, 2))
		return -1;
	if (hdr[0] != want || hdr[1] != 0)
		return -1;
	p->sport = reply ? 0 : id;
	p->dport = reply ? id : 0;
	return 0;
}

/* Renews a flow's entry and its pair's (see nat_ct_touch). */
static __always_inline void ext_touch(struct ext_ct *e, struct ct_key *pair, __u8 flags, __u64 now)
{
	struct ext_ct *pe;

	if ((e->flags | flags) == e->flags && e->last_seen_ns + NAT_RENEW > now)
		return;
	e->flags |= flags;
	e->last_seen_ns = now;
	pe = bpf_map_lookup_elem(&sluice_ext_ct, pair);
	if (pe) {
		pe->flags |= flags;
		pe->last_seen_ns = now;
	}
}

/* The flags a packet adds to its flow's entries: FIN and RST, and which
 * side sent the FIN. */
static __always_inline __u8 ext_flags(const struct nat_pkt *p, int reply)
{
	__u8 f = nat_ct_flags(p);

	if (f & SLUICE_CT_F_FIN)
		f |= reply ? SLUICE_EXT_F_FIN_REPLY : SLUICE_EXT_F_FIN_FWD;
	return f;
}

/* Closed: reset, or a FIN from each side. */
static __always_inline int ext_closed(const struct ext_ct *e)
{
	return (e->flags & SLUICE_CT_F_RST) ||
	       (e->flags & (SLUICE_EXT_F_FIN_FWD | SLUICE_EXT_F_FIN_REPLY)) ==
		       (SLUICE_EXT_F_FIN_FWD | SLUICE_EXT_F_FIN_REPLY);
}

static __always_inline int ext_live(const struct ext_ct *e, __u8 proto, __u64 now)
{
	__u64 t = NAT_UDP_TIMEOUT;

	if (proto == IPPROTO_TCP)
		t = ext_closed(e) ? NAT_TCP_RST_TIMEOUT :
		    e->flags & SLUICE_CT_F_FIN ? NAT_TCP_FIN_TIMEOUT :
						 NAT_TCP_TIMEOUT;
	return e->last_seen_ns + t > now;
}

/* The key of a flow's reply entry, from its forward entry e and the
 * client's packet p. */
static __always_inline void ext_reply_key(struct ct_key *rk, const struct ext_ct *e,
					  const struct nat_pkt *p)
{
	if (e->mode == SLUICE_EXT_MODE_SNAT)
		nat_key(rk, e->a, e->b, e->a_port, e->b_port, p, SLUICE_EXT_DIR_REPLY);
	else
		nat_key(rk, e->a, p->src, e->a_port, p->sport, p, SLUICE_EXT_DIR_REPLY);
}

static __always_inline int ext_same16(const __u8 a[16], const __u8 b[16])
{
	__u64 x[2], y[2];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1];
}

/* Whether a flow's reply entry (under its key) is still that flow's: an
 * SNAT port is reused once its flow expired or closed, so the key may
 * belong to another flow now. A DSR flow keeps no reply entry here. */
static __always_inline int ext_reply_ours(const struct ext_ct *e, const struct nat_pkt *p,
					  const struct ct_key *rk)
{
	struct ext_ct *re;

	if (e->mode == SLUICE_EXT_MODE_DSR)
		return 1;
	re = bpf_map_lookup_elem(&sluice_ext_ct, rk);
	if (!re || re->mode != e->mode)
		return 0;
	if (e->mode == SLUICE_EXT_MODE_SNAT)
		return ext_same16(re->a, p->src) && re->a_port == p->sport &&
		       ext_same16(re->b, p->dst) && re->b_port == p->dport;
	return ext_same16(re->a, p->dst) && re->a_port == p->dport;
}

/* Translates a client's packet by its flow's entry. */
static __noinline int ext_apply(struct __sk_buff *skb, const struct nat_pkt *p,
				     const struct ext_ct *e, int syn)
{
	__u8 a[16], b[16];

	__builtin_memcpy(a, e->a, 16);
	__builtin_memcpy(b, e->b, 16);
	if (nat_rewrite(skb, p, 1, a, e->a_port))
		return TC_ACT_SHOT;
	ext_stat(EXT_STAT_FWD);
	if (e->mode == SLUICE_EXT_MODE_SNAT) {
		if (nat_rewrite(skb, p, 0, b, e->b_port))
			return TC_ACT_SHOT;
		return ext_redirect(skb, p->family, b, a, 0);
	}
	if (e->mode == SLUICE_EXT_MODE_LOCAL)
		/* To a pod of this node through the stack: the host's own
		 * netfilter sees the flow from its first packet. */
		return TC_ACT_UNSPEC;
	if ((p->proto == IPPROTO_UDP || syn) && ext_dsr_put(skb, p))
		return TC_ACT_SHOT;
	return ext_redirect(skb, p->family, p->src, a, 1);
}

/* A reply of an SNAT flow, back at the node that translated it: to the
 * client, from the frontend. */
static __noinline int ext_snat_reply(struct __sk_buff *skb, const struct nat_pkt *p,
					  struct ext_ct *e, __u64 now)
{
	struct ct_key fk;
	__u8 client[16], front[16];
	__u16 cport = e->a_port, fport = e->b_port;

	if (!ext_live(e, p->proto, now))
		return TC_ACT_UNSPEC;
	__builtin_memcpy(client, e->a, 16);
	__builtin_memcpy(front, e->b, 16);
	nat_key(&fk, client, front, cport, fport, p, SLUICE_EXT_DIR_FWD);
	ext_touch(e, &fk, ext_flags(p, 1), now);
	if (nat_rewrite(skb, p, 1, client, cport) || nat_rewrite(skb, p, 0, front, fport))
		return TC_ACT_SHOT;
	ext_stat(EXT_STAT_REPLY_SNAT);
	return ext_redirect(skb, p->family, front, client, 0);
}

/* Picks a free SNAT port for a new flow to backend be and records its
 * reply entry re there. 0 on success. */
static __noinline int ext_snat_port(const struct nat_pkt *p, const struct backend *be,
				    struct ext_ct *ne, struct ext_ct *re, __u32 hash)
{
	/* be: the far end the flow goes to (a backend, or for masquerade the
	 * destination outside); the reply entry is keyed by it. */
	__u64 now = re->last_seen_ns;
	struct ext_cfg *cfg;
	__u32 zero = 0, span, i;
	struct ct_key rk;

	cfg = bpf_map_lookup_elem(&sluice_ext_cfg, &zero);
	if (!cfg || cfg->snat_max < cfg->snat_min)
		return -1;
	__builtin_memset(ne->b, 0, 16);
	if (p->family == SLUICE_AF_INET)
		__builtin_memcpy(ne->b, cfg->addr4, 4);
	else
		__builtin_memcpy(ne->b, cfg->addr6, 16);
	{
		__u8 none[16] = {};

		/* No address of the family (the Node object has none): no SNAT. */
		if (ext_same16(ne->b, none))
			return -1;
	}
	span = (__u32)(cfg->snat_max - cfg->snat_min) + 1;
	for (i = 0; i < EXT_SNAT_TRIES; i++) {
		struct ext_ct *old;

		ne->b_port = bpf_htons((__u16)(cfg->snat_min + (hash + i * 7919) % span));
		nat_key(&rk, be->addr, ne->b, be->port, ne->b_port, p, SLUICE_EXT_DIR_REPLY);
		if (!bpf_map_update_elem(&sluice_ext_ct, &rk, re, BPF_NOEXIST))
			return 0;
		/* Taken; reused once its flow has expired or closed, and that
		 * flow's forward entry goes (it would lead into this port). */
		old = bpf_map_lookup_elem(&sluice_ext_ct, &rk);
		if (old && (!ext_live(old, p->proto, now) || ext_closed(old))) {
			struct ct_key ofk;
			__u64 seen = old->last_seen_ns;

			if (old->mode == SLUICE_EXT_MODE_MASQ)
				nat_key(&ofk, old->a, be->addr, old->a_port, be->port, p,
					SLUICE_EXT_DIR_MASQ);
			else
				nat_key(&ofk, old->a, old->b, old->a_port, old->b_port, p,
					SLUICE_EXT_DIR_FWD);
			/* Claimed by one CPU only: another that saw the same
			 * expired entry finds its time changed and moves on. */
			if (__sync_val_compare_and_swap(&old->last_seen_ns, seen, now) != seen)
				continue;
			if (!bpf_map_update_elem(&sluice_ext_ct, &rk, re, BPF_EXIST)) {
				bpf_map_delete_elem(&sluice_ext_ct, &ofk);
				return 0;
			}
		}
	}
	return -1;
}

/* lb_select() in a frame of its own. */
static __noinline int ext_select(struct lb_req *r)
{
	return lb_select(r);
}

/* A packet from a client to frontend front (key address) with flags. */
static __noinline int ext_forward(struct __sk_buff *skb, const struct nat_pkt *p,
				  const __u8 front[16], __u32 svc_flags, __u64 now)
{
	struct ct_key k;
	struct ext_ct *e;
	struct ext_scratch *sc;
	struct pod_node *pn;
	__u32 zero = 0;
	__u8 flags = ext_flags(p, 0);
	int syn = p->proto == IPPROTO_TCP &&
		  (p->tcp_flags & (NAT_TCP_SYN | NAT_TCP_ACK)) == NAT_TCP_SYN;
	__u32 dsr = p->proto == IPPROTO_TCP ? SLUICE_SVC_F_DSR_TCP : SLUICE_SVC_F_DSR_UDP;

	sc = bpf_map_lookup_elem(&sluice_ext_scr, &zero);
	if (!sc)
		return TC_ACT_SHOT;
	nat_key(&k, p->src, p->dst, p->sport, p->dport, p, SLUICE_EXT_DIR_FWD);
	e = bpf_map_lookup_elem(&sluice_ext_ct, &k);
	if (e && ext_live(e, p->proto, now) &&
	    !(syn && (e->flags & (SLUICE_CT_F_FIN | SLUICE_CT_F_RST)))) {
		struct svc_backend_key mk = { .svc_id = e->svc_id, .backend_id = e->backend_id };

		/* As on the per-packet path: TCP keeps its backend while it
		 * lives; UDP whose backend left chooses again. */
		ext_reply_key(&sc->rk, e, p);
		/* A flow whose way back is gone (evicted, or its port taken
		 * after it idled out) chooses again rather than sending what
		 * could never be answered. */
		if ((p->proto == IPPROTO_TCP || bpf_map_lookup_elem(&sluice_svc_bes, &mk)) &&
		    ext_reply_ours(e, p, &sc->rk)) {
			ext_touch(e, &sc->rk, flags, now);
			return ext_apply(skb, p, e, syn);
		}
	}
	/* A new flow starts with a SYN. A TCP segment without a live entry
	 * answers one of the node's own connections (its port may be a
	 * NodePort's) or belongs to a flow this node no longer tracks: the
	 * stack decides. */
	if (p->proto == IPPROTO_TCP && !syn)
		return TC_ACT_UNSPEC;
	__builtin_memset(&sc->r, 0, sizeof(sc->r));
	__builtin_memcpy(sc->r.addr, front, 16);
	sc->r.port = p->dport;
	sc->r.proto = p->proto;
	sc->r.family = p->family;
	sc->r.rnd = bpf_get_prandom_u32();
	sc->r.hash = ext_flow_hash(p, front);
	sc->r.netns_cookie = EXT_AFF_ID(ext_addr_hash(p->src));
	sc->r.now_ns = now;
	if (e) {
		/* The old flow's reply entry goes with it, if it is still its. */
		ext_reply_key(&sc->rk, e, p);
		if (e->mode != SLUICE_EXT_MODE_DSR && ext_reply_ours(e, p, &sc->rk))
			bpf_map_delete_elem(&sluice_ext_ct, &sc->rk);
	}
	switch (ext_select(&sc->r)) {
	case LB_PASS:
		if (e)
			bpf_map_delete_elem(&sluice_ext_ct, &k);
		return TC_ACT_UNSPEC;
	case LB_REFUSE:
		ext_stat(EXT_STAT_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	__builtin_memset(&sc->ne, 0, sizeof(sc->ne));
	__builtin_memcpy(sc->ne.a, sc->r.be.addr, 16);
	sc->ne.a_port = sc->r.be.port;
	sc->ne.flags = flags;
	sc->ne.svc_id = sc->r.svc_id;
	sc->ne.backend_id = sc->r.backend_id;
	sc->ne.last_seen_ns = now;
	pn = ext_pod_node(sc->r.be.addr, p->family);
	if (svc_flags & SLUICE_SVC_F_ETP_LOCAL)
		sc->ne.mode = SLUICE_EXT_MODE_LOCAL;
	else if (pn ? (pn->flags & SLUICE_POD_NODE_F_LOCAL) :
		      (ext_node_addr(sc->r.be.addr, p->family) & SLUICE_NODE_ADDR_F_LOCAL))
		sc->ne.mode = SLUICE_EXT_MODE_LOCAL;
	/* DSR needs the backend's node to take the option out: a pod's. An
	 * IPv4 packet that has options already is SNATed instead. */
	else if ((svc_flags & dsr) && pn &&
		 (p->family == SLUICE_AF_INET6 || p->l4_off == sizeof(struct ethhdr) + 20))
		sc->ne.mode = SLUICE_EXT_MODE_DSR;
	else
		sc->ne.mode = SLUICE_EXT_MODE_SNAT;
	sc->re = sc->ne;
	if (sc->ne.mode == SLUICE_EXT_MODE_SNAT) {
		/* The reply entry holds the client and the frontend as seen. */
		__builtin_memcpy(sc->re.a, p->src, 16);
		sc->re.a_port = p->sport;
		__builtin_memcpy(sc->re.b, p->dst, 16);
		sc->re.b_port = p->dport;
		if (ext_snat_port(p, &sc->r.be, &sc->ne, &sc->re, sc->r.hash)) {
			ext_stat(EXT_STAT_NO_PORT);
			return TC_ACT_SHOT;
		}
		ext_stat(EXT_STAT_NEW_SNAT);
	} else if (sc->ne.mode == SLUICE_EXT_MODE_LOCAL) {
		/* The reply leaves from this node: it shows the frontend. */
		__builtin_memcpy(sc->re.a, p->dst, 16);
		sc->re.a_port = p->dport;
		nat_key(&sc->rk, sc->r.be.addr, p->src, sc->r.be.port, p->sport, p,
			SLUICE_EXT_DIR_REPLY);
		if (bpf_map_update_elem(&sluice_ext_ct, &sc->rk, &sc->re, BPF_ANY))
			return TC_ACT_SHOT;
		ext_stat(EXT_STAT_NEW_LOCAL);
	} else {
		ext_stat(EXT_STAT_NEW_DSR);
	}
	if (bpf_map_update_elem(&sluice_ext_ct, &k, &sc->ne, BPF_ANY))
		return TC_ACT_SHOT;
	return ext_apply(skb, p, &sc->ne, syn);
}

/* A reply to a masqueraded flow: back to the pod, which the stack
 * routes (its source is not ours). */
static __noinline int ext_masq_reply(struct __sk_buff *skb, const struct nat_pkt *p,
				     struct ext_ct *e, __u64 now)
{
	struct ct_key fk;
	__u8 pod[16];
	__u16 pport = e->a_port;

	if (!ext_live(e, p->proto, now))
		return TC_ACT_UNSPEC;
	__builtin_memcpy(pod, e->a, 16);
	nat_key(&fk, pod, p->src, pport, p->sport, p, SLUICE_EXT_DIR_MASQ);
	ext_touch(e, &fk, ext_flags(p, 1), now);
	if (nat_rewrite(skb, p, 1, pod, pport))
		return TC_ACT_SHOT;
	ext_stat(EXT_STAT_MASQ);
	return TC_ACT_UNSPEC;
}

/* A packet of a pod of this node leaving the cluster through an external
 * device: from the node's address and a port of the SNAT range. What is
 * not TCP or UDP cannot be tracked: dropped (and counted), never sent out
 * with the pod's address, which nothing outside could answer. */
static __noinline int ext_masq(struct __sk_buff *skb)
{
	struct ext_scratch *sc;
	struct ext_cfg *cfg;
	struct pod_node *pn;
	struct pod_node_key lk;
	struct ext_ct *e;
	__u32 zero = 0;
	__u64 now;
	__u8 src[16], family;

	cfg = bpf_map_lookup_elem(&sluice_ext_cfg, &zero);
	if (!cfg || !(cfg->flags & SLUICE_EXT_CFG_F_MASQ))
		return TC_ACT_UNSPEC;
	__builtin_memset(src, 0, 16);
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u32 s4, d4;

		if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, saddr), &s4, 4) ||
		    bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, daddr), &d4, 4))
			return TC_ACT_UNSPEC;
		family = SLUICE_AF_INET;
		__builtin_memcpy(src, &s4, 4);
		pn = ext_pod_node(src, family);
		if (!pn || !(pn->flags & SLUICE_POD_NODE_F_LOCAL))
			return TC_ACT_UNSPEC;
		__builtin_memset(src, 0, 16);
		__builtin_memcpy(src, &d4, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + offsetof(struct ipv6hdr, saddr), src, 16))
			return TC_ACT_UNSPEC;
		family = SLUICE_AF_INET6;
		pn = ext_pod_node(src, family);
		if (!pn || !(pn->flags & SLUICE_POD_NODE_F_LOCAL))
			return TC_ACT_UNSPEC;
		if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + offsetof(struct ipv6hdr, daddr), src, 16))
			return TC_ACT_UNSPEC;
	} else {
		return TC_ACT_UNSPEC;
	}
	/* src now holds the destination: inside the cluster (a pod range, a
	 * node, an exempt range), no masquerade. */
	ext_lpm_key(&lk, src, family);
	if (bpf_map_lookup_elem(&sluice_nomasq, &lk) || ext_pod_node(src, family) ||
	    ext_node_addr(src, family))
		return TC_ACT_UNSPEC;
	sc = bpf_map_lookup_elem(&sluice_ext_scr, &zero);
	if (!sc)
		return TC_ACT_SHOT;
	if (nat_parse(skb, &sc->p) && ext_parse_echo(skb, &sc->p, 0)) {
		ext_stat(EXT_STAT_MASQ_DROP);
		return TC_ACT_SHOT;
	}
	now = bpf_ktime_get_ns();
	nat_key(&sc->k, sc->p.src, sc->p.dst, sc->p.sport, sc->p.dport, &sc->p, SLUICE_EXT_DIR_MASQ);
	e = bpf_map_lookup_elem(&sluice_ext_ct, &sc->k);
	if (!e || !ext_live(e, sc->p.proto, now)) {
		/* Only a pod's own new connection is masqueraded: a TCP segment
		 * that is not an opening SYN answers a connection made to the
		 * pod (or one whose entry expired) and leaves as it is. */
		if (sc->p.proto == IPPROTO_TCP &&
		    (sc->p.tcp_flags & (NAT_TCP_SYN | NAT_TCP_ACK)) != NAT_TCP_SYN) {
			/* Not a connection of its own that we track (a reset, a
			 * flow whose entry expired or was evicted): it would leave
			 * with the pod's address, which nothing outside can
			 * answer. */
			ext_stat(EXT_STAT_MASQ_DROP);
			return TC_ACT_SHOT;
		}
		__builtin_memset(&sc->ne, 0, sizeof(sc->ne));
		__builtin_memset(&sc->re, 0, sizeof(sc->re));
		__builtin_memset(&sc->r, 0, sizeof(sc->r));
		__builtin_memcpy(sc->r.be.addr, sc->p.dst, 16);
		sc->r.be.port = sc->p.dport;
		sc->ne.mode = SLUICE_EXT_MODE_MASQ;
		sc->ne.last_seen_ns = now;
		sc->ne.flags = ext_flags(&sc->p, 0);
		sc->re = sc->ne;
		__builtin_memcpy(sc->re.a, sc->p.src, 16);
		sc->re.a_port = sc->p.sport;
		if (ext_snat_port(&sc->p, &sc->r.be, &sc->ne, &sc->re,
				  ext_flow_hash(&sc->p, sc->p.dst))) {
			ext_stat(EXT_STAT_NO_PORT);
			return TC_ACT_SHOT;
		}
		if (bpf_map_update_elem(&sluice_ext_ct, &sc->k, &sc->ne, BPF_ANY))
			return TC_ACT_SHOT;
		ext_stat(EXT_STAT_MASQ_NEW);
		e = &sc->ne;
	} else {
		nat_key(&sc->rk, sc->p.dst, e->b, sc->p.dport, e->b_port, &sc->p,
			SLUICE_EXT_DIR_REPLY);
		ext_touch(e, &sc->rk, ext_flags(&sc->p, 0), now);
	}
	__builtin_memcpy(src, e->b, 16);
	if (nat_rewrite(skb, &sc->p, 0, src, e->b_port))
		return TC_ACT_SHOT;
	ext_stat(EXT_STAT_MASQ);
	return TC_ACT_UNSPEC;
}

#define EXT_PASS (-1)
#define EXT_SNAT_REPLY (-2)

/* What a packet arriving from outside is: a reply of an SNAT flow (its
 * key in sc->k), a packet for a frontend (its flags; the key address in
 * sc->front), or neither. The packet is parsed into sc->p. */
static __noinline long ext_classify(struct __sk_buff *skb, struct ext_scratch *sc)
{
	struct ext_ct *e;

	if (nat_parse(skb, &sc->p)) {
		/* The answer to a masqueraded ping. */
		if (ext_parse_echo(skb, &sc->p, 1))
			return EXT_PASS;
		nat_key(&sc->k, sc->p.src, sc->p.dst, sc->p.sport, sc->p.dport, &sc->p,
			SLUICE_EXT_DIR_REPLY);
		e = bpf_map_lookup_elem(&sluice_ext_ct, &sc->k);
		return e && e->mode == SLUICE_EXT_MODE_MASQ ? EXT_SNAT_REPLY : EXT_PASS;
	}
	nat_key(&sc->k, sc->p.src, sc->p.dst, sc->p.sport, sc->p.dport, &sc->p,
		SLUICE_EXT_DIR_REPLY);
	e = bpf_map_lookup_elem(&sluice_ext_ct, &sc->k);
	if (e && (e->mode == SLUICE_EXT_MODE_SNAT || e->mode == SLUICE_EXT_MODE_MASQ))
		return EXT_SNAT_REPLY;
	return ext_frontend(sc->p.dst, sc->p.dport, sc->p.proto, sc->p.family,
			    SLUICE_NODE_ADDR_F_LOCAL, sc->front);
}

/* tc ingress of an external (or the overlay) device. */
static __always_inline int ext_ingress(struct __sk_buff *skb)
{
	struct ext_scratch *sc;
	struct ext_ct *e;
	__u32 zero = 0;
	long flags;
	int v;

	v = ext_dsr_take(skb);
	if (v >= 0)
		return v;
	sc = bpf_map_lookup_elem(&sluice_ext_scr, &zero);
	if (!sc)
		return TC_ACT_UNSPEC;
	flags = ext_classify(skb, sc);
	if (flags == EXT_SNAT_REPLY) {
		e = bpf_map_lookup_elem(&sluice_ext_ct, &sc->k);
		if (e && e->mode == SLUICE_EXT_MODE_MASQ)
			return ext_masq_reply(skb, &sc->p, e, bpf_ktime_get_ns());
		return e ? ext_snat_reply(skb, &sc->p, e, bpf_ktime_get_ns()) : TC_ACT_UNSPEC;
	}
	if (flags < 0)
		return TC_ACT_UNSPEC;
	return ext_forward(skb, &sc->p, sc->front, (__u32)flags, bpf_ktime_get_ns());
}

/* On the way out: the reply of a flow to a local backend, or of a DSR
 * flow at its backend's node, shows the frontend. -1 when the packet is
 * no such reply. */
static __noinline int ext_reply_out(struct __sk_buff *skb)
{
	struct nat_pkt p;
	struct ct_key k, fk;
	struct ext_ct *e;
	__u8 front[16];
	__u16 fport;
	__u64 now;

	if (nat_parse(skb, &p))
		return -1;
	nat_key(&k, p.src, p.dst, p.sport, p.dport, &p, SLUICE_EXT_DIR_REPLY);
	e = bpf_map_lookup_elem(&sluice_ext_ct, &k);
	if (!e || (e->mode != SLUICE_EXT_MODE_LOCAL && e->mode != SLUICE_EXT_MODE_DSR_BE))
		return -1;
	now = bpf_ktime_get_ns();
	if (!ext_live(e, p.proto, now))
		return -1;
	__builtin_memcpy(front, e->a, 16);
	fport = e->a_port;
	nat_key(&fk, p.dst, front, p.dport, fport, &p, SLUICE_EXT_DIR_FWD);
	ext_touch(e, &fk, ext_flags(&p, 1), now);
	if (nat_rewrite(skb, &p, 0, front, fport))
		return TC_ACT_SHOT;
	ext_stat(EXT_STAT_REPLY_DIRECT);
	return TC_ACT_UNSPEC;
}

/* tc egress of an external device: replies shown from their frontend,
 * then pods' traffic leaving the cluster masqueraded. */
static __always_inline int ext_egress(struct __sk_buff *skb)
{
	int v = ext_reply_out(skb);

	return v >= 0 ? v : ext_masq(skb);
}

#endif
