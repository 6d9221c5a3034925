/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Source-address check for packets a pod sends (tc ingress of its host-side
 * veth). The logic is an inline helper over a packet pointer range, so
 * BPF_PROG_TEST_RUN tests drive it with crafted frames. */
#ifndef SLUICE_SRC_CHECK_H
#define SLUICE_SRC_CHECK_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sluice_maps.h"

enum src_verdict {
	SRC_PASS = 0,
	SRC_DROP = 1,
};

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
	__type(value, struct ep_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_src_drop SEC(".maps");

static __always_inline void src_count_drop(__u32 ifindex, __u32 len)
{
	struct ep_counters *c = bpf_map_lookup_elem(&sluice_src_drop, &ifindex);

	if (c) {
		__sync_fetch_and_add(&c->spoof_drops, 1);
		__sync_fetch_and_add(&c->spoof_bytes, len);
	} else {
		struct ep_counters init = { .spoof_drops = 1, .spoof_bytes = len };

		bpf_map_update_elem(&sluice_src_drop, &ifindex, &init, BPF_NOEXIST);
	}
}

/* Decides for one frame [data, data_end) arriving from the pod behind
 * ifindex. Non-IP frames (ARP) pass: they cannot carry a spoofed IP source
 * into the node's routing. IPv6 link-local and unspecified sources pass:
 * neighbour discovery needs them and they are not routed. */
static __always_inline enum src_verdict src_check(void *data, void *data_end,
						   __u32 ifindex)
{
	struct ethhdr *eth = data;
	struct src_key key = { .ifindex = ifindex };

	if ((void *)(eth + 1) > data_end)
		return SRC_DROP;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return SRC_DROP;
		key.family = SLUICE_AF_INET;
		__builtin_memcpy(key.addr, &ip->saddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return SRC_DROP;
		__u8 *s = ip6->saddr.in6_u.u6_addr8;
		/* fe80::/10 */
		if (s[0] == 0xfe && (s[1] & 0xc0) == 0x80)
			return SRC_PASS;
		/* :: (DAD probes) */
		if (ip6->saddr.in6_u.u6_addr32[0] == 0 && ip6->saddr.in6_u.u6_addr32[1] == 0 &&
		    ip6->saddr.in6_u.u6_addr32[2] == 0 && ip6->saddr.in6_u.u6_addr32[3] == 0)
			return SRC_PASS;
		key.family = SLUICE_AF_INET6;
		__builtin_memcpy(key.addr, s, 16);
	} else {
		return SRC_PASS;
	}

	if (bpf_map_lookup_elem(&sluice_src, &key))
		return SRC_PASS;
	src_count_drop(ifindex, (__u32)((long)data_end - (long)data));
	return SRC_DROP;
}

#endif
