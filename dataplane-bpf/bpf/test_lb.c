// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Not part of the datapath: runs lb_select() on a struct lb_req carried as
 * the packet of an XDP test run, and writes the answer back into it, since
 * BPF_PROG_TEST_RUN cannot run cgroup sock_addr programs. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lb.h"

SEC("xdp")
int sluice_test_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_req r;

	if (data + sizeof(r) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(&r, data, sizeof(r));
	lb_select(&r);
	__builtin_memcpy(data, &r, sizeof(r));
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
