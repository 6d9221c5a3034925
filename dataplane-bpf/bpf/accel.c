// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Same-node TCP acceleration: sockops at the cgroup v2 root (a pinned
 * link), sk_msg on the SOCKHASH (held by the pinned map), and the LSM
 * guards (pinned links). The logic is in include/accel.h and
 * include/accel_guard.h. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "accel_guard.h"

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *o) { return accel_sockops(o); }

SEC("sk_msg")
int sluice_sk_msg(struct sk_msg_md *m) { return accel_msg(m); }

/* An LSM program sees the previous hooks' verdict last; a refusal stands. */
SEC("lsm/file_permission")
int BPF_PROG(sluice_file_perm, struct file *file, int mask, int ret)
{
	return ret ? ret : guard_file(file, mask);
}

SEC("lsm/socket_recvmsg")
int BPF_PROG(sluice_sock_recv, struct socket *sock, struct msghdr *msg, int size, int flags, int ret)
{
	return ret ? ret : guard_recvmsg(sock, flags);
}

SEC("lsm/socket_setsockopt")
int BPF_PROG(sluice_sock_setopt, struct socket *sock, int level, int optname, int ret)
{
	return ret ? ret : guard_setsockopt(sock, level, optname);
}

SEC("lsm/socket_sendmsg")
int BPF_PROG(sluice_sock_send, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	return ret ? ret : guard_sendmsg(sock, msg);
}

char _license[] SEC("license") = "Dual BSD/GPL";
