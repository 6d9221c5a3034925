// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Same-node TCP acceleration: sockops at the cgroup v2 root (a pinned
 * link) and sk_msg on the SOCKHASH (held by the pinned map). The logic is
 * in include/accel.h. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "accel.h"

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *o) { return accel_sockops(o); }

SEC("sk_msg")
int sluice_sk_msg(struct sk_msg_md *m) { return accel_msg(m); }

char _license[] SEC("license") = "Dual BSD/GPL";
