/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level hooks attached at the cgroup v2 root. Every hook first finds
 * the socket's endpoint by netns cookie; a socket of a netns this daemon
 * does not know is returned untouched. What a hook does for a known
 * endpoint lives in sock_xlate_*() (service translation comes with the
 * services issue); today it counts, so operators and tests can see which
 * sockets the datapath scopes in. */
#ifndef SLUICE_SOCK_H
#define SLUICE_SOCK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_maps.h"
#include "endpoints.h"

/* cgroup sock_addr programs: 1 lets the operation proceed. */
#define SOCK_ALLOW 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOCK_HOOK_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sockstat SEC(".maps");

static __always_inline void sock_count(__u32 hook)
{
	__u64 *n = bpf_map_lookup_elem(&sluice_sockstat, &hook);

	if (n)
		*n += 1;
}

/* Forward translation (connect, sendmsg) for a known endpoint. */
static __always_inline int sock_xlate_fwd(struct bpf_sock_addr *ctx,
					  const struct endpoint *ep)
{
	(void)ctx;
	(void)ep;
	return SOCK_ALLOW;
}

/* Reverse translation (recvmsg, getpeername) for a known endpoint. */
static __always_inline int sock_xlate_rev(struct bpf_sock_addr *ctx,
					  const struct endpoint *ep)
{
	(void)ctx;
	(void)ep;
	return SOCK_ALLOW;
}

static __always_inline int sock_fwd(struct bpf_sock_addr *ctx, __u32 hook)
{
	const struct endpoint *ep = endpoint_of_netns(ctx);

	if (!ep)
		return SOCK_ALLOW;
	sock_count(hook);
	return sock_xlate_fwd(ctx, ep);
}

static __always_inline int sock_rev(struct bpf_sock_addr *ctx, __u32 hook)
{
	const struct endpoint *ep = endpoint_of_netns(ctx);

	if (!ep)
		return SOCK_ALLOW;
	sock_count(hook);
	return sock_xlate_rev(ctx, ep);
}

#endif
