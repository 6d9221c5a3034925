// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc programs on a pod's host-side veth. Entry points stay one-liners. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include "src_check.h"

SEC("classifier")
int sluice_pod_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	return src_check(data, data_end, skb->ifindex) == SRC_PASS ? TC_ACT_OK : TC_ACT_SHOT;
}

char _license[] SEC("license") = "Dual BSD/GPL";
