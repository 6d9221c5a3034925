// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Not part of the datapath: runs edge_check() on a frame carried as the
 * packet of an XDP test run, after a header that stands in for what only
 * a real skb has (skb->protocol, skb->vlan_present), since
 * BPF_PROG_TEST_RUN cannot set those. The reason comes back in the header. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "edge.h"

struct edge_test_hdr {
	__u32 ifindex;
	__u16 protocol; /* network order, as skb->protocol */
	__u16 vlan_present;
	__u32 reason; /* out */
	__u32 pad;
};

SEC("xdp")
int sluice_test_edge(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct edge_test_hdr *h = data;
	__u8 flags;

	if ((void *)(h + 1) > data_end)
		return XDP_ABORTED;
	h->reason = edge_check(h + 1, data_end, h->ifindex, h->protocol, h->vlan_present,
			       &flags);
	edge_count(h->ifindex, h->reason, (__u32)((long)data_end - (long)(h + 1)));
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
