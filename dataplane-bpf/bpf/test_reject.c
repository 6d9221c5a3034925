// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Not part of the datapath: a program the verifier must refuse (it reads
 * the packet without a bounds check), so a test can show that a rejection
 * reaches the operator with the verifier's log. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int sluice_test_reject(struct __sk_buff *skb)
{
	__u8 *data = (void *)(long)skb->data;

	return data[0];
}

char _license[] SEC("license") = "Dual BSD/GPL";
