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

/* Per-endpoint counters, keyed by host-side ifindex. */
struct ep_counters {
	__u64 spoof_drops;
	__u64 spoof_bytes;
};
_Static_assert(sizeof(struct ep_counters) == 16, "ep_counters layout");

#endif
