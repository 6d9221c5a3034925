/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The pod edge: what a pod may send into the node, decided at tc ingress
 * of its host-side veth. Default deny, on the packet's real protocol:
 * - a frame that carries a VLAN tag (in skb->vlan_tci after the kernel's
 *   untagging, or still in the data) is dropped: the kernel strips VID 0
 *   tags after tc and would route what is inside;
 * - IPv4 and IPv6 pass only from the pod's own addresses (sluice_src);
 * - IPv6 from a link-local or unspecified source passes only as neighbour
 *   discovery (RS, NS, NA) or MLD, unfragmented;
 * - router advertisements, redirects and router renumbering are dropped
 *   whatever their source;
 * - ARP passes only for Ethernet/IPv4 with the pod's own sender address;
 * - every other L3 protocol is dropped.
 * The logic is an inline helper over a packet pointer range, so
 * BPF_PROG_TEST_RUN tests drive it with crafted frames. */
#ifndef SLUICE_EDGE_H
#define SLUICE_EDGE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sluice_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct src_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct edge_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_edgestat SEC(".maps");

/* Headers a pod's frames are decided on must be in the linear part. */
#define EDGE_PULL_LEN 128

static __always_inline void edge_count(__u32 ifindex, __u32 reason, __u32 len)
{
	struct edge_stats *s;

	if (reason == EDGE_PASS || reason >= EDGE_REASON_MAX)
		return;
	s = bpf_map_lookup_elem(&sluice_edgestat, &ifindex);
	if (s) {
		__sync_fetch_and_add(&s->drops[reason], 1);
		__sync_fetch_and_add(&s->drop_bytes, len);
	} else {
		struct edge_stats init = { .drop_bytes = len };

		init.drops[reason] = 1;
		/* A racing first drop on another CPU may win; one count lost. */
		bpf_map_update_elem(&sluice_edgestat, &ifindex, &init, BPF_NOEXIST);
	}
}

/* The flags (SLUICE_SRC_F_*) of the pod's own address `addr`, 0 when it
 * is not one of the addresses of the pod behind ifindex. */
static __always_inline __u8 edge_own(__u32 ifindex, __u8 family, const void *addr)
{
	struct src_key key = { .ifindex = ifindex, .family = family };
	__u8 *v;

	if (family == SLUICE_AF_INET)
		__builtin_memcpy(key.addr, addr, 4);
	else
		__builtin_memcpy(key.addr, addr, 16);
	v = bpf_map_lookup_elem(&sluice_src, &key);
	/* An entry of an older build holds 1: allowed, no flags. */
	return v ? (*v | SLUICE_SRC_F_ALLOWED) : 0;
}

static __always_inline __u32 edge_ipv4(void *l3, void *data_end, __u32 ifindex, __u8 *flags)
{
	struct iphdr *ip = l3;

	if ((void *)(ip + 1) > data_end)
		return EDGE_DROP_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return EDGE_DROP_MALFORMED;
	*flags = edge_own(ifindex, SLUICE_AF_INET, &ip->saddr);
	return *flags ? EDGE_PASS : EDGE_DROP_SPOOFED;
}

/* ICMPv6 types a link-local or unspecified source may send: router
 * solicitation, neighbour solicitation and advertisement, MLD. */
static __always_inline int edge_nd_or_mld(__u8 type)
{
	return type == 133 || type == 135 || type == 136 || type == 130 || type == 131 ||
	       type == 132 || type == 143;
}

/* Router advertisement, redirect, router renumbering: never from a pod. */
static __always_inline int edge_router_msg(__u8 type)
{
	return type == 134 || type == 137 || type == 138;
}

struct edge_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

#define EDGE_IPV6_MAX_EXT 4

static __always_inline __u32 edge_ipv6(void *l3, void *data_end, __u32 ifindex, __u8 *flags)
{
	struct ipv6hdr *ip6 = l3;
	void *p = ip6 + 1;
	__u8 nexthdr, type = 0;
	int fragment = 0, later_fragment = 0, icmp = 0;

	if ((void *)(ip6 + 1) > data_end)
		return EDGE_DROP_MALFORMED;
	if (ip6->version != 6)
		return EDGE_DROP_MALFORMED;
	nexthdr = ip6->nexthdr;
#pragma unroll
	for (int i = 0; i < EDGE_IPV6_MAX_EXT; i++) {
		if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
		    nexthdr == IPPROTO_DSTOPTS) {
			struct ipv6_opt_hdr *h = p;

			if ((void *)(h + 1) > data_end)
				return EDGE_DROP_MALFORMED;
			nexthdr = h->nexthdr;
			p += ((__u32)h->hdrlen + 1) * 8;
		} else if (nexthdr == IPPROTO_FRAGMENT) {
			struct edge_frag_hdr *f = p;

			if ((void *)(f + 1) > data_end)
				return EDGE_DROP_MALFORMED;
			fragment = 1;
			if (f->frag_off & bpf_htons(0xfff8)) {
				later_fragment = 1;
				break;
			}
			nexthdr = f->nexthdr;
			p += sizeof(*f);
		} else {
			break;
		}
	}
	if (nexthdr == IPPROTO_ICMPV6 && !later_fragment) {
		__u8 *t = p;

		if ((void *)(t + 1) > data_end)
			return EDGE_DROP_MALFORMED;
		icmp = 1;
		type = *t;
	}
	if (icmp && edge_router_msg(type))
		return EDGE_DROP_ROUTER;

	__u8 *s = ip6->saddr.in6_u.u6_addr8;
	__u32 *w = ip6->saddr.in6_u.u6_addr32;
	int link_local = s[0] == 0xfe && (s[1] & 0xc0) == 0x80;
	int unspecified = (w[0] | w[1] | w[2] | w[3]) == 0;

	if (link_local || unspecified)
		return icmp && !fragment && edge_nd_or_mld(type) ? EDGE_PASS : EDGE_DROP_LINK_LOCAL;
	*flags = edge_own(ifindex, SLUICE_AF_INET6, s);
	return *flags ? EDGE_PASS : EDGE_DROP_SPOOFED;
}

/* An ARP packet for Ethernet and IPv4. */
struct edge_arp_hdr {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline __u32 edge_arp(void *l3, void *data_end, __u32 ifindex)
{
	struct edge_arp_hdr *a = l3;

	if ((void *)(a + 1) > data_end)
		return EDGE_DROP_ARP;
	if (a->hrd != bpf_htons(1) || a->pro != bpf_htons(ETH_P_IP) || a->hln != ETH_ALEN ||
	    a->pln != 4)
		return EDGE_DROP_ARP;
	if (a->op != bpf_htons(1) && a->op != bpf_htons(2))
		return EDGE_DROP_ARP;
	return edge_own(ifindex, SLUICE_AF_INET, a->spa) ? EDGE_PASS : EDGE_DROP_ARP;
}

/* Decides one frame [data, data_end) arriving from the pod behind ifindex.
 * `protocol` is skb->protocol (network order) and `vlan_present` whether
 * the kernel already moved a VLAN tag out of the data. Returns EDGE_PASS
 * or the reason to drop; for IPv4 and IPv6 from the pod's own address,
 * `flags` gets that address's SLUICE_SRC_F_* (0 otherwise). */
static __always_inline __u32 edge_check(void *data, void *data_end, __u32 ifindex,
					__u16 protocol, __u32 vlan_present, __u8 *flags)
{
	struct ethhdr *eth = data;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return EDGE_DROP_MALFORMED;
	*flags = 0;
	proto = eth->h_proto;
	if (vlan_present || proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD))
		return EDGE_DROP_VLAN;
	if (proto == bpf_htons(ETH_P_IP) && protocol == proto)
		return edge_ipv4(eth + 1, data_end, ifindex, flags);
	if (proto == bpf_htons(ETH_P_IPV6) && protocol == proto)
		return edge_ipv6(eth + 1, data_end, ifindex, flags);
	if (proto == bpf_htons(ETH_P_ARP) && protocol == proto)
		return edge_arp(eth + 1, data_end, ifindex);
	return EDGE_DROP_PROTOCOL;
}

/* The whole verdict for one skb: pulls the headers into the linear part,
 * decides, counts a drop. Returns EDGE_PASS (with the source's flags in
 * `flags`) or the drop reason. */
static __always_inline __u32 edge_skb(struct __sk_buff *skb, __u8 *flags)
{
	__u32 len = skb->len;
	__u32 want = len < EDGE_PULL_LEN ? len : EDGE_PULL_LEN;
	__u32 reason;

	if ((long)skb->data_end - (long)skb->data < (long)want)
		bpf_skb_pull_data(skb, want);
	reason = edge_check((void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex,
			    (__u16)skb->protocol, skb->vlan_present, flags);
	edge_count(skb->ifindex, reason, len);
	return reason;
}

#endif
