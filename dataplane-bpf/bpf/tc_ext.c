// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc programs on the node's external devices (and the overlay device):
 * NodePorts, ExternalIPs and LoadBalancer addresses reached from outside
 * the cluster. The logic is in include/nodeport.h.
 *
 * A packet that is not for a frontend, and not a reply of a translated
 * flow, returns TC_ACT_UNSPEC: the next program or filter runs. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include "nodeport.h"

SEC("classifier")
int sluice_ext_ingress(struct __sk_buff *skb)
{
	return ext_ingress(skb);
}

SEC("classifier")
int sluice_ext_egress(struct __sk_buff *skb)
{
	return ext_egress(skb);
}

char _license[] SEC("license") = "Dual BSD/GPL";
