// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Not part of the datapath: stands in for the connect4 program of an older
 * sluiced, so a test can check that a restart swaps a pinned link's program
 * in place (same link ID) instead of detaching it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	(void)ctx;
	return 1;
}

char _license[] SEC("license") = "Dual BSD/GPL";
