/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load balancing: frontend lookup, backend selection (random over
 * generation slots, or Maglev through a per-service table, with per-pod
 * session affinity), and the maps behind it. The
 * decision is lb_select() over a struct lb_req, with no program context,
 * so a test program can run it through BPF_PROG_TEST_RUN. */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "sluice_maps.h"
#include "stat.h"

/* frontend -> service */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	/* Not preallocated: a replaced element is freed after an RCU grace
	 * period, so a connect holding it never reads another frontend's
	 * value (a preallocated hash recycles it at once). */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_svc SEC(".maps");

/* backend id -> backend */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct backend);
	/* Sized for large clusters; allocated as used, not up front. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_backends SEC(".maps");

/* (svc_id, gen, slot) -> backend id, for random selection */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct lb_slot_key);
	__type(value, __u32);
	/* Sized for large clusters; allocated as used, not up front. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_lb_slots SEC(".maps");

/* The template of every Maglev table; BPF_F_INNER_MAP lets the real
 * ones differ in size (a random table holds the backends, a Maglev one
 * the table size). */
struct lb_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

/* svc_id -> its Maglev table */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct lb_table); /* must come last */
} sluice_lbtables SEC(".maps");

/* (svc_id, backend_id) present while the backend is in the table */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct svc_backend_key);
	__type(value, __u8);
	/* Sized for large clusters; allocated as used, not up front. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_svc_bes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_aff_v2 SEC(".maps");

#define AFF_TIME_MASK ((1ULL << SLUICE_AFF_TIME_BITS) - 1)

static __always_inline __u64 aff_pack(__u32 backend_id, __u64 now_ms)
{
	return ((__u64)backend_id << SLUICE_AFF_TIME_BITS) | (now_ms & AFF_TIME_MASK);
}

static __always_inline __u32 aff_backend(__u64 w)
{
	return (__u32)(w >> SLUICE_AFF_TIME_BITS);
}

/* Whether the choice in w holds at now_ms: used less than timeout_ms ago
 * (a refresh racing this connect may be newer than now_ms: that is live,
 * not expired), and its backend still in the service's table. */
static __always_inline int aff_live(__u64 w, __u32 svc_id, __u64 timeout_ms, __u64 now_ms)
{
	struct svc_backend_key mk = {
		.svc_id = svc_id,
		.backend_id = aff_backend(w),
	};

	if ((w & AFF_TIME_MASK) + timeout_ms <= now_ms)
		return 0;
	return bpf_map_lookup_elem(&sluice_svc_bes, &mk) != NULL;
}

static __always_inline __u64 aff_read(struct affinity_value *av)
{
	return *(volatile __u64 *)&av->word;
}

/* New connections (and unconnected datagrams) each frontend sent to each
 * of its backends: a backend address shared by two services is counted
 * under each apart. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct svc_backend_key);
	__type(value, __u64);
	/* Sized for large clusters; allocated as used, not up front. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_conns_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sluice_lbstat SEC(".maps");

static __always_inline void lb_stat(__u32 what)
{
	stat_inc(&sluice_lbstat, what);
}

static __always_inline void lb_count(__u32 svc_id, __u32 backend_id)
{
	struct svc_backend_key k = {
		.svc_id = svc_id,
		.backend_id = backend_id,
	};
	__u64 *n = bpf_map_lookup_elem(&sluice_conns_v2, &k);

	if (n) {
		*n += 1;
	} else {
		__u64 one = 1;

		bpf_map_update_elem(&sluice_conns_v2, &k, &one, BPF_NOEXIST);
	}
}

/* A 64-bit value mixed down to a 32-bit flow hash (the finaliser of
 * MurmurHash3), for Maglev's table index. */
static __always_inline __u32 lb_mix32(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return (__u32)x;
}

static __always_inline int lb_refuse(struct lb_req *r, __u32 why)
{
	lb_stat(why);
	r->verdict = LB_REFUSE;
	return LB_REFUSE;
}

/* Decides one translation. */
static __always_inline int lb_select(struct lb_req *r)
{
	struct svc_key k = {};
	struct svc_value *svp, svc, *sv = &svc;
	void *table;
	__u32 zero = 0, *n, slot, *id, backend_id = 0;
	struct backend *be;
	struct affinity_key ak = {};
	struct affinity_value *av = NULL;
	__u64 timeout_ms = 0, now_ms = 0, seen = 0;
	int sticky = 0;

	__builtin_memcpy(k.addr, r->addr, 16);
	k.port = r->port;
	k.proto = r->proto;
	k.family = r->family;
	svp = bpf_map_lookup_elem(&sluice_svc, &k);
	if (!svp) {
		r->verdict = LB_PASS;
		return LB_PASS;
	}
	/* One read of the frontend: count and gen come from one version. */
	__builtin_memcpy(&svc, svp, sizeof(svc));
	r->svc_id = sv->svc_id;
	if (sv->flags & SLUICE_SVC_F_MAGLEV) {
		table = bpf_map_lookup_elem(&sluice_lbtables, &sv->svc_id);
		if (!table)
			return lb_refuse(r, LB_STAT_NO_BACKEND);
		n = bpf_map_lookup_elem(table, &zero);
		if (!n || *n == 0)
			return lb_refuse(r, LB_STAT_NO_BACKEND);
	} else {
		if (sv->count == 0)
			return lb_refuse(r, LB_STAT_NO_BACKEND);
		table = NULL;
		n = NULL;
	}

	ak.netns_cookie = r->netns_cookie;
	ak.svc_id = sv->svc_id;
	if (sv->affinity_timeout) {
		timeout_ms = (__u64)sv->affinity_timeout * 1000;
		now_ms = r->now_ns / 1000000;
		av = bpf_map_lookup_elem(&sluice_aff_v2, &ak);
		if (av) {
			seen = aff_read(av);
			if (aff_live(seen, sv->svc_id, timeout_ms, now_ms)) {
				backend_id = aff_backend(seen);
				sticky = 1;
				/* Renewed forward only; losing the swap to another
				 * connect's renewal is as good. */
				if ((seen & AFF_TIME_MASK) < now_ms)
					__sync_val_compare_and_swap(&av->word, seen,
								    aff_pack(backend_id, now_ms));
			}
		}
	}
	if (!sticky) {
		if (table && n) {
			slot = SLUICE_LB_TABLE_HEADER + r->hash % *n;
			id = bpf_map_lookup_elem(table, &slot);
		} else {
			struct lb_slot_key sk = {
				.svc_id = sv->svc_id,
				.gen = sv->gen,
				.slot = (__u16)(r->rnd % sv->count),
			};

			id = bpf_map_lookup_elem(&sluice_lb_slots, &sk);
		}
		if (!id)
			return lb_refuse(r, LB_STAT_INCONSISTENT);
		backend_id = *id;
	}
	if (sv->affinity_timeout && !sticky) {
		/* The first choice for this pod is made once: whoever puts
		 * it in the map first decides, and a connect that loses the
		 * race takes the winner's choice. */
		__u64 mine = aff_pack(backend_id, now_ms), held;

		if (av) {
			held = __sync_val_compare_and_swap(&av->word, seen, mine);
			if (held != seen && aff_live(held, sv->svc_id, timeout_ms, now_ms))
				backend_id = aff_backend(held);
		} else {
			struct affinity_value nv = { .word = mine };

			if (bpf_map_update_elem(&sluice_aff_v2, &ak, &nv, BPF_NOEXIST)) {
				av = bpf_map_lookup_elem(&sluice_aff_v2, &ak);
				if (av) {
					held = aff_read(av);
					if (aff_live(held, sv->svc_id, timeout_ms, now_ms))
						backend_id = aff_backend(held);
				}
			}
		}
	}
	be = bpf_map_lookup_elem(&sluice_backends, &backend_id);
	if (!be)
		return lb_refuse(r, LB_STAT_INCONSISTENT);
	lb_count(sv->svc_id, backend_id);
	lb_stat(LB_STAT_XLATE);
	r->backend_id = backend_id;
	__builtin_memcpy(&r->be, be, sizeof(r->be));
	r->verdict = LB_XLATE;
	return LB_XLATE;
}

#endif
