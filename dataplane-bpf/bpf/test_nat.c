// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Not part of the datapath: runs nat_rewrite() (include/nat.h), which
 * service NAT and NodePort use for every translated packet, on a frame
 * given to BPF_PROG_TEST_RUN, with the new address and port taken from
 * the one entry of sluice_test_natto. The rewritten frame comes back as
 * the test run's output, its checksums to be verified by the test. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "nat.h"

struct nat_test_to {
	__u8 addr[16];
	__be16 port;
	__u8 dst; /* 1: rewrite the destination, 0: the source */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_test_to);
} sluice_test_natto SEC(".maps");

SEC("classifier")
int sluice_test_nat(struct __sk_buff *skb)
{
	struct nat_pkt p;
	struct nat_test_to *to;
	__u32 zero = 0;

	to = bpf_map_lookup_elem(&sluice_test_natto, &zero);
	if (!to || nat_parse(skb, &p))
		return TC_ACT_SHOT;
	return nat_rewrite(skb, &p, to->dst, to->addr, to->port) ? TC_ACT_SHOT : TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
