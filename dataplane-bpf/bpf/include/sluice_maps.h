/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The one definition of every map key and value shared with userspace.
 * Padding is explicit and sizes are asserted here and in the Rust mirrors
 * (src/maps.rs), so the two can never disagree silently. */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include <linux/types.h>

#define SLUICE_AF_INET 4
#define SLUICE_AF_INET6 6

/* An address a pod behind host-side ifindex may send from. */
struct src_key {
	__u32 ifindex;
	__u8 family; /* SLUICE_AF_INET or SLUICE_AF_INET6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes, network order */
};
_Static_assert(sizeof(struct src_key) == 24, "src_key layout");

/* A pod (or the node itself) known to this daemon, keyed by the
 * netns cookie of its network namespace (bpf_get_netns_cookie). Socket
 * programs act only on sockets whose netns has an entry. */
#define SLUICE_EP_F_HOST (1U << 0) /* the node's own netns */
#define SLUICE_EP_F_IPV4 (1U << 1) /* ipv4 is set */
#define SLUICE_EP_F_IPV6 (1U << 2) /* ipv6 is set */

struct endpoint {
	__u32 host_ifindex; /* 0 for the node's own entry */
	__u32 flags;	    /* SLUICE_EP_F_* */
	__u8 ipv4[4];	    /* network order */
	__u8 pad[4];
	__u8 ipv6[16];
};
_Static_assert(sizeof(struct endpoint) == 32, "endpoint layout");

/* Index into the per-CPU socket hook counters (sluice_sockstat): how many
 * socket operations of known endpoints each hook saw. */
enum sock_hook {
	SOCK_HOOK_CONNECT4 = 0,
	SOCK_HOOK_CONNECT6,
	SOCK_HOOK_SENDMSG4,
	SOCK_HOOK_SENDMSG6,
	SOCK_HOOK_RECVMSG4,
	SOCK_HOOK_RECVMSG6,
	SOCK_HOOK_GETPEERNAME4,
	SOCK_HOOK_GETPEERNAME6,
	SOCK_HOOK_MAX,
};

/* Per-endpoint counters, keyed by host-side ifindex. */
struct ep_counters {
	__u64 spoof_drops;
	__u64 spoof_bytes;
};
_Static_assert(sizeof(struct ep_counters) == 16, "ep_counters layout");

#endif
