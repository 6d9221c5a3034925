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

/* The value of a src_key: what the pod behind the interface gets. */
#define SLUICE_SRC_F_ALLOWED (1U << 0) /* may send from the address */
#define SLUICE_SRC_F_SVC_NAT (1U << 1) /* services translated per packet */

/* A pod (or the node itself) known to this daemon, keyed by the
 * netns cookie of its network namespace (bpf_get_netns_cookie). Socket
 * programs act only on sockets whose netns has an entry. */
#define SLUICE_EP_F_HOST (1U << 0) /* the node's own netns */
#define SLUICE_EP_F_IPV4 (1U << 1) /* ipv4 is set */
#define SLUICE_EP_F_IPV6 (1U << 2) /* ipv6 is set */
#define SLUICE_EP_F_NO_SOCK_LB (1U << 3) /* pod opted out of socket LB */
#define SLUICE_EP_F_NO_ACCEL (1U << 4) /* pod opted out of TCP acceleration */
#define SLUICE_EP_F_ACCEL (1U << 5)	  /* pod opted in to TCP acceleration */

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

/* Why the pod edge dropped a frame (index into edge_stats.drops). */
enum edge_reason {
	EDGE_PASS = 0,		/* not a drop; its slot stays 0 */
	EDGE_DROP_SPOOFED,	/* IPv4/IPv6 source not one of the pod's */
	EDGE_DROP_VLAN,		/* a VLAN tag, in the data or already untagged */
	EDGE_DROP_PROTOCOL,	/* an L3 protocol a pod has no business sending */
	EDGE_DROP_ARP,		/* ARP with another sender, or not Ethernet/IPv4 */
	EDGE_DROP_ROUTER,	/* router advertisement, redirect, renumbering */
	EDGE_DROP_LINK_LOCAL,	/* link-local/unspecified source, not ND or MLD */
	EDGE_DROP_MALFORMED,	/* truncated or inconsistent headers */
	EDGE_REASON_MAX,
};

/* Edge drops of one pod interface, keyed by its host-side ifindex. */
struct edge_stats {
	__u64 drops[EDGE_REASON_MAX];
	__u64 drop_bytes;
};
_Static_assert(sizeof(struct edge_stats) == 72, "edge_stats layout");

/* A service frontend: cluster IP, port, protocol. */
struct svc_key {
	__u8 addr[16]; /* IPv4 in the first 4 bytes, network order */
	__u16 port;    /* network order */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;   /* SLUICE_AF_INET or SLUICE_AF_INET6 */
};
_Static_assert(sizeof(struct svc_key) == 20, "svc_key layout");

#define SLUICE_SVC_F_MAGLEV (1U << 0) /* select through the Maglev table */
/* Frontends reached from outside the cluster (include/nodeport.h): */
#define SLUICE_SVC_F_NODEPORT (1U << 1) /* key address is 0 (::): a NodePort on every node address */
#define SLUICE_SVC_F_EXTERNAL (1U << 2) /* an ExternalIP or LoadBalancer ingress address */
#define SLUICE_SVC_F_ETP_LOCAL (1U << 3) /* externalTrafficPolicy Local: local backends, client kept */
#define SLUICE_SVC_F_DSR_TCP (1U << 4) /* remote backends answer TCP clients directly */
#define SLUICE_SVC_F_DSR_UDP (1U << 5) /* ... and UDP ones (else: SNAT) */

struct svc_value {
	__u32 svc_id;		/* key of its slots, table and affinity */
	__u32 affinity_timeout; /* seconds; 0: no session affinity */
	__u32 flags;		/* SLUICE_SVC_F_* */
	__u16 count;		/* random selection: slots 0..count-1 of gen */
	__u16 gen;		/* which generation of slots is current */
};
_Static_assert(sizeof(struct svc_value) == 16, "svc_value layout");

/* A backend a frontend translates to, keyed by backend id. */
struct backend {
	__u8 addr[16];
	__u16 port; /* network order */
	__u8 proto;
	__u8 family;
	__u32 pad;
};
_Static_assert(sizeof(struct backend) == 24, "backend layout");

/* Random selection: the backend ids of a service as slots of one
 * generation. An update writes the next generation's slots, then switches
 * svc_value (count, gen) in one element update, then (later) deletes the
 * old slots: a connect sees one whole generation, never a mix, and no
 * update waits for an RCU grace period. */
struct lb_slot_key {
	__u32 svc_id;
	__u16 gen;
	__u16 slot;
};
_Static_assert(sizeof(struct lb_slot_key) == 8, "lb_slot_key layout");

/* Maglev selection: a table per service (an inner array map per svc_id):
 * slot 0 holds n (the table size), slots 1..n the backend ids. A table is
 * swapped whole with one update of the outer map. */
#define SLUICE_LB_TABLE_HEADER 1

/* Which backends are members of a service's table now: checked before an
 * affinity entry is honoured, so affinity never sticks to a backend that
 * left. */
struct svc_backend_key {
	__u32 svc_id;
	__u32 backend_id;
};
_Static_assert(sizeof(struct svc_backend_key) == 8, "svc_backend_key layout");

/* Reverse translation for recvmsg/getpeername, kept in the socket itself
 * (socket-local storage, freed with the socket): which service address
 * each backend peer the socket was sent to stands for. A connected socket
 * uses one slot; an unconnected UDP socket one per backend it sent to, the
 * oldest reused after SLUICE_SOCK_NAT_SLOTS. Nothing one socket does can
 * evict another socket's entries. */
#define SLUICE_SOCK_NAT_SLOTS 8

struct sock_nat_slot {
	__u8 backend[16];
	__u8 service[16];
	__u16 backend_port; /* network order */
	__u16 service_port; /* network order */
	__u8 family;	    /* of both; 0: slot unused */
	__u8 proto;
	__u16 pad;
	__u32 svc_id;
	__u32 backend_id;
};
_Static_assert(sizeof(struct sock_nat_slot) == 48, "sock_nat_slot layout");

struct sock_nat {
	struct sock_nat_slot slot[SLUICE_SOCK_NAT_SLOTS];
	__u32 next; /* the slot a new backend takes (mod SLUICE_SOCK_NAT_SLOTS) */
	__u32 pad;
};
_Static_assert(sizeof(struct sock_nat) == 392, "sock_nat layout");

/* A connected UDP socket translated to a backend, keyed by its socket
 * cookie: which backend of which frontend, and in which netns, so the
 * daemon can end the socket when that backend leaves (a connected UDP
 * socket keeps sending wherever it was translated to). Removed when the
 * socket closes (cgroup/sock_release). */
struct udp_conn {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 backend_id;
};
_Static_assert(sizeof(struct udp_conn) == 16, "udp_conn layout");

/* Session affinity, per pod (netns cookie) and service. */
struct affinity_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};
_Static_assert(sizeof(struct affinity_key) == 16, "affinity_key layout");

/* The backend and when it was last used, in one 64-bit word, so that the
 * first choice and every refresh are single atomic updates (insert if
 * absent, compare and swap): the backend id in the top
 * SLUICE_AFF_BACKEND_BITS bits, the time of last use (ms since boot,
 * bpf_ktime_get_ns() / 10^6) in the rest. Backend ids stay below
 * 2^SLUICE_AFF_BACKEND_BITS; the time wraps after 34 years of uptime.
 * (sluice_aff_v2; v1, sluice_affinity, held the time in ns and the id
 * apart.) */
#define SLUICE_AFF_BACKEND_BITS 24
#define SLUICE_AFF_TIME_BITS 40
struct affinity_value {
	__u64 word;
};
_Static_assert(sizeof(struct affinity_value) == 8, "affinity_value layout");

/* Per-CPU counters of service translations (sluice_lbstat), by outcome:
 * an inconsistent refusal (slot or backend missing) should stay at 0; if
 * it moves, the maps disagree with each other. */
enum lb_stat {
	LB_STAT_XLATE = 0,	/* translated to a backend */
	LB_STAT_NO_BACKEND,	/* refused: the service has no backend */
	LB_STAT_INCONSISTENT,	/* refused: a slot, table or backend missing */
	LB_STAT_MAX,
};

/* One translation, in and out: what the connect/sendmsg logic reads and
 * decides. A struct of its own so BPF_PROG_TEST_RUN tests can feed it
 * through a test program and read the answer back. */
enum lb_verdict {
	LB_PASS = 0,   /* not a service: leave the address alone */
	LB_XLATE = 1,  /* be holds the backend */
	LB_REFUSE = 2, /* a service with no backend: fail at once */
};

struct lb_req {
	/* in */
	__u8 addr[16];
	__u16 port; /* network order */
	__u8 proto;
	__u8 family;
	__u32 rnd;  /* random, for random selection */
	__u32 hash; /* flow hash, for Maglev */
	__u32 pad;
	__u64 netns_cookie;
	__u64 now_ns;
	/* out */
	__u32 verdict; /* enum lb_verdict */
	__u32 svc_id;
	__u32 backend_id;
	__u32 pad2;
	struct backend be;
};
_Static_assert(sizeof(struct lb_req) == 88, "lb_req layout");

/* Per-packet service translation (pods that opted out of socket load
 * balancing): connection tracking in one LRU map, two entries per flow.
 * The forward entry is keyed by what the pod sent (pod -> service) and
 * holds the backend; the reply entry is keyed by what the backend sends
 * back (backend -> pod) and holds the service address to show the pod. */
#define SLUICE_CT_DIR_FWD 0
#define SLUICE_CT_DIR_REPLY 1

struct ct_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u8 proto;
	__u8 family;
	__u8 dir; /* SLUICE_CT_DIR_* */
	__u8 pad;
};
_Static_assert(sizeof(struct ct_key) == 40, "ct_key layout");

#define SLUICE_CT_F_FIN (1U << 0) /* a FIN went by: short timeout */
#define SLUICE_CT_F_RST (1U << 1) /* a RST went by: shorter still */

struct ct_entry {
	__u8 addr[16]; /* forward: the backend; reply: the service */
	__u16 port;    /* network order */
	__u8 flags;    /* SLUICE_CT_F_* */
	__u8 pad;
	__u32 svc_id;
	__u32 backend_id;
	__u32 pad2;
	__u64 last_seen_ns; /* bpf_ktime_get_ns() of the last packet */
};
_Static_assert(sizeof(struct ct_entry) == 40, "ct_entry layout");

/* Why the per-packet path did what it did (index into sluice_ctstat). */
enum ct_stat {
	CT_STAT_NEW = 0,	/* a flow to a service, new entries */
	CT_STAT_FWD,		/* a packet to a service translated */
	CT_STAT_REPLY,		/* a reply translated back */
	CT_STAT_NO_BACKEND,	/* dropped: the service has no backend */
	CT_STAT_RESELECT,	/* an expired or stale flow chose again */
	CT_STAT_MAX,
};

/* Same-node TCP acceleration (sockops + sk_msg, include/accel.h). The two
 * sockets of one connection are paired by their sequence numbers, which
 * no address or port translation changes (socket LB, iptables REDIRECT to
 * a proxy in the pod): each socket is keyed by (snd, rcv) = (ISN+1, IRS+1)
 * as sockops sees them at ESTABLISHED, and its peer is the socket keyed
 * (rcv, snd). */
struct sk_pair_key {
	__u32 snd;
	__u32 rcv;
};
_Static_assert(sizeof(struct sk_pair_key) == 8, "sk_pair_key layout");

/* sluice_sk_peer: what a sender needs to know of its peer before it
 * redirects to it, keyed by the peer's sk_pair_key. `sk` is the kernel
 * address of the peer's struct sock, read (never written) with
 * bpf_probe_read_kernel and trusted only while the socket cookie found
 * there is `cookie`. Removed when the socket closes. */
#define SLUICE_SKP_F_TCP_READER (1U << 0) /* its reader needs the TCP path */
#define SLUICE_SKP_F_SENDS_TCP (1U << 1)  /* it sends through TCP now */
#define SLUICE_SKP_F_REDIRECTED (1U << 2) /* a peer has redirected to it */
#define SLUICE_SKP_F_EVICTING (1U << 3)	  /* leaving the map: never redirect to it */
/* Its connection sends through TCP for good and both sockets leave the
 * map once nothing redirected can reach them (accel.h, accel_drain). */
#define SLUICE_SKP_F_DRAINING (1U << 4)
/* Queued for the daemon to take out of the map (sluice_sk_evict): set
 * before the push, so a reader that sees it unset after reading the
 * socket's psock knows the socket was in the map when it read it. */
#define SLUICE_SKP_F_QUEUED (1U << 5)

struct sk_peer {
	__u64 sk;
	__u64 cookie; /* bpf_get_socket_cookie */
	__u64 netns_cookie;
	__u32 flags; /* SLUICE_SKP_F_* */
	__u32 pad;
};
_Static_assert(sizeof(struct sk_peer) == 32, "sk_peer layout");

/* In each accelerated socket (socket-local storage): its own key and
 * whether its sends are redirected now. A socket that has sent bytes
 * through TCP redirects again only once its peer has read every one of
 * them: redirected bytes must never overtake TCP bytes. */
enum sk_accel_mode {
	SK_ACCEL_REDIRECT = 0,
	SK_ACCEL_TCP = 1,
};

struct sk_accel {
	struct sk_pair_key self;
	__u32 mode;   /* enum sk_accel_mode */
	__u32 reason; /* enum accel_stat of the fallback, in SK_ACCEL_TCP */
	__u32 msgs;   /* messages redirected since the peer last had none queued */
	__u32 flags;  /* SLUICE_SKA_F_* */
};
_Static_assert(sizeof(struct sk_accel) == 24, "sk_accel layout");
/* Seen once, not looked at again (a reader that turns blocking after it
 * read in non-blocking mode is not followed; docs/sockmap.md). */
#define SLUICE_SKA_F_SELF_NONBLOCK (1U << 0) /* its own reader is non-blocking */
#define SLUICE_SKA_F_PEER_NONBLOCK (1U << 1) /* its peer's reader is non-blocking */
/* It once redirected a long phase (accel.h, ACCEL_SHORT_PHASE): its reader
 * can keep up with it, and a stall of that reader in another netns gets a
 * longer grace before the socket leaves the shortcut (accel_tcp_stretch). */
#define SLUICE_SKA_F_KEPT_UP (1U << 2)
/* Counters in flags (accel.h, accel_tcp_stretch), each saturating at
 * 255: bits 8-15, messages redirected since the socket last started
 * redirecting (its peer in one netns: since its last stretch ended);
 * bits 16-23, strikes: stretches of 255 messages sent through TCP since
 * its last long redirecting phase (in one netns: since its last stretch
 * with as many redirected); bits 24-31, messages sent through TCP in the
 * current stretch. */
#define SLUICE_SKA_PHASE_SHIFT 8
#define SLUICE_SKA_STRIKE_SHIFT 16
#define SLUICE_SKA_TCP_SHIFT 24
#define SLUICE_SKA_COUNT_MASK 0xffU

/* A listening socket of a known pod (sluice_sk_lsn), by netns and
 * port: where an accepted socket's ESTABLISHED finds whether its
 * application accepts in non-blocking mode (the accepted socket has no
 * file yet). */
struct sk_listen_key {
	__u64 netns_cookie;
	__u16 port; /* host order */
	__u16 pad;
	__u32 pad2;
};
_Static_assert(sizeof(struct sk_listen_key) == 16, "sk_listen_key layout");

/* The node's switch and limits (sluice_acc_cfg, one entry). */
struct accel_cfg {
	__u32 enabled;	   /* 0: no new socket is added, every send passes */
	__u32 rmem_max;	   /* bytes a peer may have queued: tcp_rmem[2], at most accel_max_queue */
	__u32 msg_cost;	   /* bytes of kernel memory each queued message costs */
	__u32 flags;	   /* SLUICE_ACC_F_* */
};
/* No guards on this kernel: only pods that opted in are accelerated. */
#define SLUICE_ACC_F_OPT_IN_ONLY (1U << 0)
/* The node's own accepted sockets may join, paired with a pod's. */
#define SLUICE_ACC_F_NODE (1U << 1)
_Static_assert(sizeof(struct accel_cfg) == 16, "accel_cfg layout");

/* Per-CPU counters (sluice_accstat). */
enum accel_stat {
	ACCEL_STAT_ADDED = 0,	   /* sockets added to the map */
	ACCEL_STAT_ADD_FAILED,	   /* sockets the map refused (full) */
	ACCEL_STAT_SKIPPED,	   /* established sockets of known pods not added */
	ACCEL_STAT_SKIPPED_BLOCKING, /* ...because the connecting socket blocks */
	ACCEL_STAT_SKIPPED_UNPAIRED, /* ...because its peer was not added */
	ACCEL_STAT_SKIPPED_LISTENER, /* ...because its listener blocks */
	ACCEL_STAT_REDIR_MSGS,	   /* messages redirected to the peer */
	ACCEL_STAT_REDIR_BYTES,
	ACCEL_STAT_PASS_MSGS,	   /* messages passed to TCP */
	ACCEL_STAT_PASS_BYTES,
	/* fallbacks, one per socket, by reason: */
	ACCEL_STAT_FB_NO_PEER,	   /* the peer is not (or no longer) in the map */
	ACCEL_STAT_FB_OFF,	   /* the node switch was turned off */
	ACCEL_STAT_FB_TCP_READER,  /* the peer's reader needs the TCP path */
	ACCEL_STAT_FB_BACKPRESSURE, /* the peer's reader fell behind */
	ACCEL_STAT_FB_MEM_PRESSURE, /* TCP memory pressure on the node */
	ACCEL_STAT_FB_REDIRECT,	   /* the kernel refused the redirect */
	ACCEL_STAT_FB_OOB,	   /* the application sent urgent data */
	ACCEL_STAT_FB_BLOCKING,	   /* the peer reads in blocking mode (or is not accepted yet) */
	ACCEL_STAT_RESUMED,	   /* back to redirecting: the peer read every TCP byte */
	ACCEL_STAT_EVICTED,	   /* accepted sockets with a blocking reader sent out of the map */
	/* calls the redirected path cannot honour, seen on accelerated
	 * sockets (the socket's reader moves to TCP): */
	ACCEL_STAT_GUARD_SPLICE,   /* splice/sendfile/io_uring read from it */
	ACCEL_STAT_GUARD_WAITALL,  /* recv with MSG_WAITALL */
	ACCEL_STAT_GUARD_RCVLOWAT, /* setsockopt SO_RCVLOWAT */
	ACCEL_STAT_GUARD_OOB,	   /* recv with MSG_OOB */
	ACCEL_STAT_GUARD_REFUSED,  /* such a call refused with EINVAL: redirected data still queued */
	ACCEL_STAT_DRAINING,	   /* connections sent to TCP for good, to leave the map
				    * (readers kept behind, or the switch turned off) */
	ACCEL_STAT_DRAINED,	   /* ...sockets of them that left, their queue read */
	ACCEL_STAT_MAX,
};

/* External traffic (include/nodeport.h). */

/* An address of a node (sluice_nodeaddr): this node's are where its
 * NodePorts are served; every node's let a pod or the node itself reach a
 * NodePort on any node through socket load balancing. */
#define SLUICE_NODE_ADDR_F_LOCAL (1U << 0) /* this node's own */
#define SLUICE_NODE_ADDR_F_REMOTE (1U << 1) /* another node's */

struct node_addr_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};
_Static_assert(sizeof(struct node_addr_key) == 20, "node_addr_key layout");

/* Which node a pod address lives on (sluice_podnodes, an LPM trie of
 * every node's pod ranges; IPv4 as v4-mapped IPv6, prefix + 96). */
struct pod_node_key {
	__u32 prefixlen;
	__u8 addr[16];
};
_Static_assert(sizeof(struct pod_node_key) == 20, "pod_node_key layout");

#define SLUICE_POD_NODE_F_LOCAL (1U << 0) /* the range is this node's */

struct pod_node {
	__u8 addr4[4];	/* the node's IPv4 address (0: none) */
	__u32 flags;	/* SLUICE_POD_NODE_F_* */
	__u8 addr6[16]; /* its IPv6 address (0: none) */
};
_Static_assert(sizeof(struct pod_node) == 24, "pod_node layout");

/* The node's settings for external traffic (sluice_ext_cfg, one entry). */
struct ext_cfg {
	__u8 addr4[4];	 /* SNAT source for IPv4 (0: no IPv4 SNAT) */
	__u16 snat_min;	 /* SNAT source ports, host order */
	__u16 snat_max;
	__u8 addr6[16];	 /* SNAT source for IPv6 */
	__u16 np_min;	 /* NodePort range, host order */
	__u16 np_max;
	__u32 flags;	 /* SLUICE_EXT_CFG_F_* */
};
_Static_assert(sizeof(struct ext_cfg) == 32, "ext_cfg layout");

#define SLUICE_EXT_CFG_F_MASQ (1U << 0) /* masquerade pods' traffic leaving the cluster */

/* Connection tracking of external flows (sluice_ext_ct, LRU), keyed by a
 * ct_key with dir SLUICE_EXT_DIR_*:
 * - FWD, what the client sent (client -> frontend): the backend (a), and
 *   for SNAT the node address and port the flow leaves from (b);
 * - REPLY, what comes back: for SNAT keyed backend -> node:snat port, it
 *   holds the client (a) and the frontend (b); for a local backend and
 *   at a DSR flow's backend node, keyed backend -> client, it holds the
 *   frontend (a) the reply must show. */
#define SLUICE_EXT_DIR_FWD 2
#define SLUICE_EXT_DIR_REPLY 3
#define SLUICE_EXT_DIR_MASQ 4 /* a pod's flow out of the cluster, as the pod sent it */

#define SLUICE_EXT_MODE_LOCAL 1	  /* backend on this node: DNAT */
#define SLUICE_EXT_MODE_SNAT 2	  /* DNAT and SNAT: replies come back here */
#define SLUICE_EXT_MODE_DSR 3	  /* DNAT, the frontend carried along: replies go direct */
#define SLUICE_EXT_MODE_DSR_BE 4  /* at the backend's node: a DSR flow's reply rewrite */
#define SLUICE_EXT_MODE_MASQ 5	  /* a pod's flow leaving the cluster, from the node's address */

/* ext_ct flags besides SLUICE_CT_F_*: a FIN seen from each side; both
 * mean the connection is closed (TIME_WAIT's short timeout, its SNAT port
 * free for a new flow, as Linux lets a SYN reopen a TIME_WAIT entry). */
#define SLUICE_EXT_F_FIN_FWD (1U << 2)	 /* from the client (or the pod, masquerade) */
#define SLUICE_EXT_F_FIN_REPLY (1U << 3) /* from the backend (or the outside) */

struct ext_ct {
	__u8 a[16];
	__u8 b[16];
	__u16 a_port; /* network order */
	__u16 b_port; /* network order */
	__u8 mode;    /* SLUICE_EXT_MODE_* */
	__u8 flags;   /* SLUICE_CT_F_* */
	__u16 pad;
	__u32 svc_id;
	__u32 backend_id;
	__u64 last_seen_ns;
};
_Static_assert(sizeof(struct ext_ct) == 56, "ext_ct layout");

/* Per-CPU counters of external traffic (sluice_extstat). */
enum ext_stat {
	EXT_STAT_NEW_LOCAL = 0, /* new flows to a backend on this node */
	EXT_STAT_NEW_SNAT,	/* new flows to a remote backend, SNAT */
	EXT_STAT_NEW_DSR,	/* new flows to a remote backend, DSR */
	EXT_STAT_FWD,		/* packets from clients translated */
	EXT_STAT_REPLY_SNAT,	/* SNAT replies translated back (here) */
	EXT_STAT_REPLY_DIRECT,	/* replies of local and DSR flows translated on the way out */
	EXT_STAT_DSR_IN,	/* DSR flows taken in at the backend's node */
	EXT_STAT_NO_BACKEND,	/* dropped: the frontend has no backend (here) */
	EXT_STAT_NO_PORT,	/* dropped: no SNAT port free */
	EXT_STAT_FIB_FAIL,	/* dropped: no route for a translated packet */
	EXT_STAT_BAD_DSR,	/* a DSR option for no known frontend: stripped, not used */
	EXT_STAT_MASQ_NEW,	/* pods' flows out of the cluster masqueraded, new */
	EXT_STAT_MASQ,		/* their packets (both ways) translated */
	EXT_STAT_MASQ_DROP,	/* dropped: a pod's packet out of the cluster that cannot be masqueraded */
	EXT_STAT_MAX,
};

/* The DSR option: IPv4 option 0x9e (copied; an RFC 4727 experiment
 * number), 8 bytes: type, length, port, IPv4 address. IPv6: a
 * Destination Options header of 24 bytes holding option 0x1e (skipped
 * by a node that does not know it) with port and address. */
#define SLUICE_DSR_OPT4 0x9e
#define SLUICE_DSR_OPT4_LEN 8
#define SLUICE_DSR_OPT6 0x1e
#define SLUICE_DSR_OPT6_LEN 24

#endif
