/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counters in per-CPU arrays: no atomics, summed by userspace. */
#ifndef SLUICE_STAT_H
#define SLUICE_STAT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Adds one to slot `i` of the per-CPU array `map` (of __u64). */
static __always_inline void stat_inc(void *map, __u32 i)
{
	__u64 *n = bpf_map_lookup_elem(map, &i);

	if (n)
		*n += 1;
}

#endif
