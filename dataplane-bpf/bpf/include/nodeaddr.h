/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The nodes' addresses (sluice_nodeaddr): where this node serves its
 * NodePorts (tc, include/nodeport.h), and which addresses a pod or the node
 * itself reaches a NodePort at through socket load balancing (every node's,
 * include/sock.h). */
#ifndef SLUICE_NODEADDR_H
#define SLUICE_NODEADDR_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct node_addr_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_nodeaddr SEC(".maps");

/* SLUICE_NODE_ADDR_F_* of an address; 0 for one no node has. */
static __always_inline __u32 ext_node_addr(const __u8 addr[16], __u8 family)
{
	struct node_addr_key k = {};
	__u32 *f;

	__builtin_memcpy(k.addr, addr, 16);
	k.family = family;
	f = bpf_map_lookup_elem(&sluice_nodeaddr, &k);
	return f ? *f : 0;
}

#endif
