// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* cgroup sock_addr programs, attached once at the cgroup v2 root. Entry
 * points stay one-liners; the logic is in include/sock.h. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sock.h"

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx) { return sock_fwd(ctx, SOCK_HOOK_CONNECT4, 0, 1); }

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx) { return sock_fwd(ctx, SOCK_HOOK_CONNECT6, 1, 1); }

SEC("cgroup/sendmsg4")
int sluice_sendmsg4(struct bpf_sock_addr *ctx) { return sock_fwd(ctx, SOCK_HOOK_SENDMSG4, 0, 0); }

SEC("cgroup/sendmsg6")
int sluice_sendmsg6(struct bpf_sock_addr *ctx) { return sock_fwd(ctx, SOCK_HOOK_SENDMSG6, 1, 0); }

SEC("cgroup/recvmsg4")
int sluice_recvmsg4(struct bpf_sock_addr *ctx) { return sock_rev(ctx, SOCK_HOOK_RECVMSG4, 0); }

SEC("cgroup/recvmsg6")
int sluice_recvmsg6(struct bpf_sock_addr *ctx) { return sock_rev(ctx, SOCK_HOOK_RECVMSG6, 1); }

SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx) { return sock_rev(ctx, SOCK_HOOK_GETPEERNAME4, 0); }

SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx) { return sock_rev(ctx, SOCK_HOOK_GETPEERNAME6, 1); }

SEC("cgroup/bind4")
int sluice_bind4(struct bpf_sock_addr *ctx) { return sock_bind(ctx, 0); }

SEC("cgroup/bind6")
int sluice_bind6(struct bpf_sock_addr *ctx) { return sock_bind(ctx, 1); }

SEC("cgroup/sock_release")
int sluice_sock_release(struct bpf_sock *sk) { return sock_release(sk); }

char _license[] SEC("license") = "Dual BSD/GPL";
