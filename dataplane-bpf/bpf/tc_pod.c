// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc program on a pod's host-side veth (clsact filter or tcx link). Entry
 * points stay one-liners; the logic is in include/edge.h.
 *
 * A frame that passes returns TC_ACT_UNSPEC: tcx runs the next program
 * (TCX_NEXT) and then the device's qdisc filters, cls_bpf the next filter,
 * so a chained plugin's filters (bandwidth's redirect to its ifb) still
 * run after the check. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include "edge.h"
/* The endpoint map is the socket programs', but the pod edge's object
 * creates (and pins) it too: a kernel without what socket load balancing
 * needs still gets the endpoint map the plugin writes. */
#include "endpoints.h"

SEC("classifier")
int sluice_pod_ingress(struct __sk_buff *skb)
{
	return edge_skb(skb) == EDGE_PASS ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

char _license[] SEC("license") = "Dual BSD/GPL";
