/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level hooks attached at the cgroup v2 root. Every hook first finds
 * the socket's endpoint by netns cookie; a socket of a netns this daemon
 * does not know is returned untouched. For a known endpoint (a pod, or the
 * node itself) the hook counts the operation and translates service
 * addresses: sock_xlate_fwd() on the way out (remembering in the socket
 * which service each backend stands for), sock_xlate_rev() on the way
 * back. */
#ifndef SLUICE_SOCK_H
#define SLUICE_SOCK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sluice_maps.h"
#include "stat.h"
#include "endpoints.h"
#include "lb.h"
#include "nodeaddr.h"

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
	stat_inc(&sluice_sockstat, hook);
}

/* connect/sendmsg to a service with no backend fail with this at once. */
#define SLUICE_ECONNREFUSED 111

/* Reverse translation, in each socket (see struct sock_nat). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_nat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_sk_nat SEC(".maps");

/* socket cookie -> the backend a connected UDP socket was translated to */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct udp_conn);
	/* Allocated as used; a full map leaves new sockets untracked (still
	 * translated, just not ended when their backend leaves). */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_udp_conn SEC(".maps");

static __always_inline int sock_same_addr(const __u8 a[16], const __u8 b[16])
{
	__u64 x[2], y[2];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1];
}

/* The slot of `sn` that holds backend (addr, port, family), or -1. */
static __always_inline int sock_nat_find(const struct sock_nat *sn, const __u8 addr[16], __u16 port,
					 __u8 family)
{
#pragma unroll
	for (int i = 0; i < SLUICE_SOCK_NAT_SLOTS; i++) {
		const struct sock_nat_slot *s = &sn->slot[i];

		if (s->family == family && s->backend_port == port &&
		    sock_same_addr(s->backend, addr))
			return i;
	}
	return -1;
}

/* Remembers in the socket that backend r->be stands for service r. */
static __always_inline void sock_nat_remember(struct bpf_sock_addr *ctx, const struct lb_req *r)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_nat *sn;
	int i;

	if (!sk)
		return;
	sn = bpf_sk_storage_get(&sluice_sk_nat, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!sn)
		return;
	i = sock_nat_find(sn, r->be.addr, r->be.port, r->family);
	if (i < 0)
		i = sn->next++ % SLUICE_SOCK_NAT_SLOTS;
	if (i < 0 || i >= SLUICE_SOCK_NAT_SLOTS)
		return;
	__builtin_memcpy(sn->slot[i].backend, r->be.addr, 16);
	__builtin_memcpy(sn->slot[i].service, r->addr, 16);
	sn->slot[i].backend_port = r->be.port;
	sn->slot[i].service_port = r->port;
	sn->slot[i].family = r->family;
	sn->slot[i].proto = r->proto;
	sn->slot[i].svc_id = r->svc_id;
	sn->slot[i].backend_id = r->backend_id;
}

/* The address a sock_addr hook sees, in the datapath's form. */
static __always_inline void sock_read_addr(struct bpf_sock_addr *ctx, int v6, __u8 addr[16])
{
	if (v6) {
		__u32 a[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };

		__builtin_memcpy(addr, a, 16);
	} else {
		__u32 a = ctx->user_ip4;

		__builtin_memset(addr, 0, 16);
		__builtin_memcpy(addr, &a, 4);
	}
}

static __always_inline void sock_write_addr(struct bpf_sock_addr *ctx, int v6, const __u8 addr[16],
					    __u16 port)
{
	if (v6) {
		__u32 a[4];

		__builtin_memcpy(a, addr, 16);
		ctx->user_ip6[0] = a[0];
		ctx->user_ip6[1] = a[1];
		ctx->user_ip6[2] = a[2];
		ctx->user_ip6[3] = a[3];
	} else {
		__u32 a;

		__builtin_memcpy(&a, addr, 4);
		ctx->user_ip4 = a;
	}
	ctx->user_port = port;
}

/* ::ffff:a.b.c.d, an IPv4 address on an AF_INET6 socket. */
static __always_inline int sock_v4mapped(const __u8 a[16])
{
	__u32 w[4];

	__builtin_memcpy(w, a, 16);
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

/* A v4-mapped address in the datapath's IPv4 form, in place. */
static __always_inline void sock_unmap(__u8 a[16])
{
	__u32 w[4];

	__builtin_memcpy(w, a, 16);
	w[0] = w[3];
	w[1] = 0;
	w[2] = 0;
	w[3] = 0;
	__builtin_memcpy(a, w, 16);
}

/* An IPv4 address in v4-mapped form, in place. */
static __always_inline void sock_map4(__u8 a[16])
{
	__u32 w[4];

	__builtin_memcpy(w, a, 16);
	w[3] = w[0];
	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	__builtin_memcpy(a, w, 16);
}

/* Forward translation (connect, sendmsg): a service address becomes one of
 * its backends, chosen once per connection (per datagram for unconnected
 * UDP), and the socket remembers which service it stands for. */
static __always_inline int sock_xlate_fwd(struct bpf_sock_addr *ctx, const struct endpoint *ep,
					  __u64 netns_cookie, int v6, int connecting)
{
	struct lb_req r = {};
	__u64 sock_cookie;
	int mapped;

	if (ep->flags & SLUICE_EP_F_NO_SOCK_LB)
		return SOCK_ALLOW;
	sock_read_addr(ctx, v6, r.addr);
	r.port = (__u16)ctx->user_port;
	r.proto = (__u8)ctx->protocol;
	r.family = v6 ? SLUICE_AF_INET6 : SLUICE_AF_INET;
	/* A dual-stack socket connecting to ::ffff:<ClusterIP> means the
	 * IPv4 service. */
	mapped = v6 && sock_v4mapped(r.addr);
	if (mapped) {
		sock_unmap(r.addr);
		r.family = SLUICE_AF_INET;
	}
	sock_cookie = bpf_get_socket_cookie(ctx);
	r.rnd = bpf_get_prandom_u32();
	r.hash = lb_mix32(sock_cookie ^ netns_cookie);
	r.netns_cookie = netns_cookie;
	r.now_ns = bpf_ktime_get_ns();
	if (lb_select(&r) == LB_PASS && ext_node_addr(r.addr, r.family)) {
		/* A NodePort on any node's address: its frontend's key has the
		 * address unspecified; the socket remembers the address the
		 * application dialled. */
		__u8 dialled[16];

		__builtin_memcpy(dialled, r.addr, 16);
		__builtin_memset(r.addr, 0, 16);
		lb_select(&r);
		__builtin_memcpy(r.addr, dialled, 16);
	}
	switch (r.verdict) {
	case LB_PASS:
		return SOCK_ALLOW;
	case LB_REFUSE:
		bpf_set_retval(-SLUICE_ECONNREFUSED);
		return 0;
	}
	sock_nat_remember(ctx, &r);
	if (connecting && r.proto == 17 /* IPPROTO_UDP */) {
		struct udp_conn uc = {
			.netns_cookie = netns_cookie,
			.svc_id = r.svc_id,
			.backend_id = r.backend_id,
		};

		bpf_map_update_elem(&sluice_udp_conn, &sock_cookie, &uc, BPF_ANY);
	}
	if (mapped)
		sock_map4(r.be.addr);
	sock_write_addr(ctx, v6, r.be.addr, r.be.port);
	return SOCK_ALLOW;
}

/* Reverse translation (recvmsg, getpeername): a backend peer is shown as
 * the service address the application asked for. */
static __always_inline int sock_xlate_rev(struct bpf_sock_addr *ctx, const struct endpoint *ep,
					  int v6)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_nat *sn;
	__u8 addr[16];
	__u8 family;
	__u16 port;
	int mapped, i;

	if (ep->flags & SLUICE_EP_F_NO_SOCK_LB || !sk)
		return SOCK_ALLOW;
	sn = bpf_sk_storage_get(&sluice_sk_nat, sk, 0, 0);
	if (!sn)
		return SOCK_ALLOW;
	sock_read_addr(ctx, v6, addr);
	port = (__u16)ctx->user_port;
	family = v6 ? SLUICE_AF_INET6 : SLUICE_AF_INET;
	mapped = v6 && sock_v4mapped(addr);
	if (mapped) {
		sock_unmap(addr);
		family = SLUICE_AF_INET;
	}
	i = sock_nat_find(sn, addr, port, family);
	if (i >= 0 && i < SLUICE_SOCK_NAT_SLOTS) {
		__u8 svc[16];

		__builtin_memcpy(svc, sn->slot[i].service, 16);
		if (mapped)
			sock_map4(svc);
		sock_write_addr(ctx, v6, svc, sn->slot[i].service_port);
	}
	return SOCK_ALLOW;
}

static __always_inline int sock_fwd(struct bpf_sock_addr *ctx, __u32 hook, int v6, int connecting)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	const struct endpoint *ep = bpf_map_lookup_elem(&sluice_eps, &cookie);

	if (!ep)
		return SOCK_ALLOW;
	sock_count(hook);
	return sock_xlate_fwd(ctx, ep, cookie, v6, connecting);
}

static __always_inline int sock_rev(struct bpf_sock_addr *ctx, __u32 hook, int v6)
{
	const struct endpoint *ep = endpoint_of_netns(ctx);

	if (!ep)
		return SOCK_ALLOW;
	sock_count(hook);
	return sock_xlate_rev(ctx, ep, v6);
}

#define SLUICE_EADDRINUSE 98

/* bind() where the datapath answers is refused with EADDRINUSE, so nothing
 * listens there in its place: a service's address and port (a ClusterIP,
 * an ExternalIP, a LoadBalancer address), from any known netns; and, in
 * the node's own netns (host-network pods too), a NodePort on any of the
 * node's addresses or the wildcard. */
static __always_inline int sock_bind(struct bpf_sock_addr *ctx, int v6)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	const struct endpoint *ep = bpf_map_lookup_elem(&sluice_eps, &cookie);
	struct svc_key k = {};
	struct svc_value *v;
	const __u8 zero[16] = {};
	int wildcard;

	if (!ep)
		return SOCK_ALLOW;
	sock_read_addr(ctx, v6, k.addr);
	k.port = (__u16)ctx->user_port;
	k.proto = (__u8)ctx->protocol;
	k.family = v6 ? SLUICE_AF_INET6 : SLUICE_AF_INET;
	if (v6 && sock_v4mapped(k.addr)) {
		sock_unmap(k.addr);
		k.family = SLUICE_AF_INET;
	}
	if (!k.port)
		return SOCK_ALLOW;
	v = bpf_map_lookup_elem(&sluice_svc, &k);
	if (v && !(v->flags & SLUICE_SVC_F_NODEPORT))
		goto refuse;
	if (!(ep->flags & SLUICE_EP_F_HOST))
		return SOCK_ALLOW;
	wildcard = sock_same_addr(k.addr, zero);
	if (!wildcard && !(ext_node_addr(k.addr, k.family) & SLUICE_NODE_ADDR_F_LOCAL))
		return SOCK_ALLOW;
	__builtin_memset(k.addr, 0, 16);
	v = bpf_map_lookup_elem(&sluice_svc, &k);
	if (v && (v->flags & SLUICE_SVC_F_NODEPORT))
		goto refuse;
	/* [::] takes IPv4 too (unless IPV6_V6ONLY, which a bind hook cannot
	 * see): an IPv4 NodePort refuses it as well. */
	if (wildcard && k.family == SLUICE_AF_INET6) {
		k.family = SLUICE_AF_INET;
		v = bpf_map_lookup_elem(&sluice_svc, &k);
		if (v && (v->flags & SLUICE_SVC_F_NODEPORT))
			goto refuse;
	}
	return SOCK_ALLOW;
refuse:
	bpf_set_retval(-SLUICE_EADDRINUSE);
	return 0;
}

/* A closing socket's connected-UDP record goes with it. */
static __always_inline int sock_release(struct bpf_sock *sk)
{
	__u64 cookie;

	if (sk->protocol != 17 /* IPPROTO_UDP */)
		return 1;
	cookie = bpf_get_socket_cookie(sk);
	bpf_map_delete_elem(&sluice_udp_conn, &cookie);
	return 1;
}

#endif
