// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc programs on a pod's host-side veth. Entry points stay one-liners; the
 * logic is in include/edge.h and include/nat.h.
 *
 * sluice_pod_ingress (clsact filter or tcx link, every pod): the pod edge,
 * then, for a pod that opted out of socket load balancing, the per-packet
 * translation of its packets to services. sluice_pod_egress (tcx egress
 * link, only on such pods): the reverse translation of their replies.
 *
 * A frame that passes returns TC_ACT_UNSPEC: tcx runs the next program
 * (TCX_NEXT) and then the device's qdisc filters, cls_bpf the next filter,
 * so a chained plugin's filters (bandwidth's redirect to its ifb) still
 * run after the check. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include "edge.h"
#include "nat.h"
/* The endpoint map is the socket programs', but the pod edge's object
 * creates (and pins) it too: a kernel without what socket load balancing
 * needs still gets the endpoint map the plugin writes. */
#include "endpoints.h"

SEC("classifier")
int sluice_pod_ingress(struct __sk_buff *skb)
{
	__u8 flags;

	if (edge_skb(skb, &flags) != EDGE_PASS)
		return TC_ACT_SHOT;
	return flags & SLUICE_SRC_F_SVC_NAT ? nat_fwd(skb, skb->ifindex) : TC_ACT_UNSPEC;
}

SEC("classifier")
int sluice_pod_egress(struct __sk_buff *skb)
{
	return nat_reply(skb);
}

char _license[] SEC("license") = "Dual BSD/GPL";
