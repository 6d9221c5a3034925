// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Not part of the datapath: stands in for the pod program of an older
 * sluiced (it passes everything), so tests can check that a daemon
 * replaces it on every pod in both attach modes. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int sluice_pod_ingress(struct __sk_buff *skb)
{
	(void)skb;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
