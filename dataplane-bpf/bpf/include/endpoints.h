/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The endpoint map: netns cookie -> endpoint. Filled by sluiced from pod
 * registrations (and one entry for the node's own netns); every socket
 * program starts by looking the socket's netns up here, which is what keeps
 * several daemons on one kernel out of each other's pods. */
#ifndef SLUICE_ENDPOINTS_H
#define SLUICE_ENDPOINTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_maps.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_eps SEC(".maps");

/* ctx is any program context bpf_get_netns_cookie accepts (sock_addr,
 * sock, sk_msg, sk_buff). */
static __always_inline const struct endpoint *endpoint_of_netns(void *ctx)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);

	return bpf_map_lookup_elem(&sluice_eps, &cookie);
}

#endif
