//! Rust mirrors of `bpf/include/sluice_maps.h` and the maps that hold them.
//! Each mirror is `#[repr(C)]` with the same explicit padding; the tests
//! assert sizes and offsets match the C `_Static_assert`s, so a change on one
//! side fails the tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `SLUICE_AF_INET` / `SLUICE_AF_INET6` in `src_key.family`.
pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// A map the datapath pins by name, and the layout a pinned copy must have
/// to be reused.
///
/// The name carries the layout's version: a change of key or value layout
/// (or of map type) gets a new name (`_v2`, as Cilium does) and the old
/// map an entry in [`OBSOLETE`] saying how its entries carry over. A change
/// of flags, size or inner-map template under the same name is carried
/// over by the loader (`load::prepare_pins`): the old map is set aside,
/// the new one created, and every entry that still fits copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    /// `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `map_flags` at creation (`BPF_F_NO_PREALLOC`, ...).
    pub flags: u32,
    /// For a map of maps: the template every inner map must match.
    pub inner: Option<InnerSpec>,
    pub what: &'static str,
}

/// The template of a map of maps' inner maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerSpec {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_HASH_OF_MAPS: u32 = 13;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// `BPF_MAP_TYPE_SK_STORAGE`: a value per socket, freed with it.
pub const BPF_MAP_TYPE_SK_STORAGE: u32 = 24;
pub const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
pub const BPF_MAP_TYPE_QUEUE: u32 = 22;

/// `BPF_F_NO_PREALLOC`: entries allocated as used (and a replaced element
/// freed after an RCU grace period, not recycled at once).
pub const BPF_F_NO_PREALLOC: u32 = 1 << 0;

/// What the service maps are sized for (`max_frontends`,
/// `max_endpoints_per_frontend` in sluiced.toml). The maps are allocated as
/// used (`BPF_F_NO_PREALLOC`); only their hash buckets are reserved up
/// front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Frontends (a dual-stack service with one port is two).
    pub frontends: u32,
    /// Endpoints per frontend, on average.
    pub endpoints_per_frontend: u32,
}

impl Capacity {
    /// 10,000 dual-stack services with 30 endpoints each.
    pub const DEFAULT: Capacity = Capacity {
        frontends: 20_000,
        endpoints_per_frontend: 30,
    };

    /// (frontend, backend) pairs.
    pub const fn pairs(&self) -> u32 {
        self.frontends * self.endpoints_per_frontend
    }

    /// Table memberships: every pair, and a quarter more while tables
    /// change (old and new members side by side).
    pub const fn members(&self) -> u32 {
        self.pairs() / 4 * 5
    }

    /// Distinct backends: at most one per pair.
    pub const fn backends(&self) -> u32 {
        self.members()
    }

    /// Random-selection slots: every pair twice (a new generation is
    /// written before the old one goes).
    pub const fn slots(&self) -> u32 {
        self.pairs() * 2
    }
}

/// Every pinned map, the service maps sized for `cap`.
pub fn sized(cap: &Capacity) -> Vec<MapSpec> {
    ALL.iter()
        .map(|m| {
            let max_entries = match m.name {
                n if n == SVC.name || n == LB_TABLES.name => cap.frontends,
                n if n == SVC_BES.name || n == CONNS.name => cap.members(),
                n if n == BACKENDS.name => cap.backends(),
                n if n == LB_SLOTS.name => cap.slots(),
                _ => m.max_entries,
            };
            MapSpec { max_entries, ..*m }
        })
        .collect()
}

/// `BPF_F_INNER_MAP`: inner maps of one outer map may differ in size.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// What a selection table (inner map of [`LB_TABLES`]) is created as.
pub const LB_TABLE_TYPE: u32 = BPF_MAP_TYPE_ARRAY;

/// netns cookie → [`Endpoint`].
pub const ENDPOINTS: MapSpec = MapSpec {
    name: "sluice_eps",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: 8,
    value_size: size_of::<Endpoint>() as u32,
    max_entries: 65536,
    flags: 0,
    inner: None,
    what: "endpoints by netns cookie",
};

/// `SLUICE_SRC_F_*`, the value of a [`SrcKey`]: the pod may send from
/// the address; its packets to services are translated per packet (it
/// opted out of socket load balancing).
pub const SRC_F_ALLOWED: u8 = 1 << 0;
pub const SRC_F_SVC_NAT: u8 = 1 << 1;

/// [`SrcKey`] → `SRC_F_*`: addresses each pod may send from.
pub const SRC: MapSpec = MapSpec {
    name: "sluice_src",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<SrcKey>() as u32,
    value_size: 1,
    max_entries: 65536,
    flags: 0,
    inner: None,
    what: "allowed pod source addresses",
};

/// host ifindex → [`EdgeStats`].
pub const EDGE_STATS: MapSpec = MapSpec {
    name: "sluice_edgestat",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: 4,
    value_size: size_of::<EdgeStats>() as u32,
    max_entries: 65536,
    flags: 0,
    inner: None,
    what: "pod edge drops per endpoint, by reason",
};

/// Converts one old entry (key, value) into the successor's, or `None` to
/// drop it.
pub type ConvertEntry = fn(&[u8], &[u8]) -> Option<(Vec<u8>, Vec<u8>)>;
/// Folds a converted value into the one the successor already holds.
pub type MergeValue = fn(&mut [u8], &[u8]);

/// What an older build pinned under a name this build no longer uses, and
/// how its entries carry over: each is read once, converted into its
/// successor, then unpinned (programs still holding it keep it alive until
/// they are replaced).
#[derive(Debug, Clone, Copy)]
pub struct ObsoleteMap {
    pub spec: MapSpec,
    pub successor: &'static str,
    /// One old entry (key, value) as the successor's, or `None` to drop it.
    pub convert: ConvertEntry,
    /// Folds a converted value into one the successor already holds
    /// (`None`: the successor's entry wins).
    pub merge: Option<MergeValue>,
}

/// `sluice_src_drop` (host ifindex → spoofed drops, bytes), succeeded by
/// [`EDGE_STATS`]: its counts become the spoofed-source reason.
pub const OBSOLETE_SRC_DROP: ObsoleteMap = ObsoleteMap {
    spec: MapSpec {
        name: "sluice_src_drop",
        map_type: BPF_MAP_TYPE_HASH,
        key_size: 4,
        value_size: 16,
        max_entries: 65536,
        flags: 0,
        inner: None,
        what: "spoofed-source drops per endpoint (before the edge stats)",
    },
    successor: "sluice_edgestat",
    convert: |k, v| {
        let mut s = EdgeStats::default();
        s.drops[EDGE_DROP_SPOOFED] = u64::from_ne_bytes(v.get(..8)?.try_into().ok()?);
        s.drop_bytes = u64::from_ne_bytes(v.get(8..16)?.try_into().ok()?);
        Some((k.to_vec(), bytes_of(&s).to_vec()))
    },
    merge: Some(|into, add| {
        let mut a = EdgeStats::default();
        let mut b = EdgeStats::default();
        bytes_of_mut(&mut a).copy_from_slice(into);
        bytes_of_mut(&mut b).copy_from_slice(add);
        for (x, y) in a.drops.iter_mut().zip(b.drops) {
            *x += y;
        }
        a.drop_bytes += b.drop_bytes;
        into.copy_from_slice(bytes_of(&a));
    }),
};

/// `sluice_affinity` (v1: time of last use in ns, backend id apart),
/// succeeded by [`AFFINITY`], which packs both in one word.
pub const OBSOLETE_AFFINITY_V1: ObsoleteMap = ObsoleteMap {
    spec: MapSpec {
        name: "sluice_affinity",
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: 16,
        value_size: 16,
        max_entries: 65536,
        flags: 0,
        inner: None,
        what: "ClientIP session affinity (v1)",
    },
    successor: "sluice_aff_v2",
    convert: |k, v| {
        let ns = u64::from_ne_bytes(v.get(..8)?.try_into().ok()?);
        let backend = u32::from_ne_bytes(v.get(8..12)?.try_into().ok()?);
        let w = AffinityValue::new(backend, ns / 1_000_000)?;
        Some((k.to_vec(), bytes_of(&w).to_vec()))
    },
    merge: None,
};

/// `sluice_revnat` ((socket cookie, backend) → service, one LRU for the
/// whole node, so one pod could evict every other's entries), succeeded by
/// [`SK_NAT`], storage in each socket. Its entries cannot move into the
/// sockets: a socket translated before the upgrade shows its backend's
/// address to recvmsg and getpeername until it is closed.
pub const OBSOLETE_REVNAT: ObsoleteMap = ObsoleteMap {
    spec: MapSpec {
        name: "sluice_revnat",
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: 32,
        value_size: 24,
        max_entries: 262144,
        flags: 0,
        inner: None,
        what: "reverse translation per socket and backend (one LRU for the node)",
    },
    successor: "sluice_sk_nat",
    convert: |_, _| None,
    merge: None,
};

/// `sluice_be_conns` (backend id → new connections), succeeded by
/// [`CONNS`], per frontend and backend: the old counts cannot be split by
/// frontend and start again from zero.
pub const OBSOLETE_BE_CONNS: ObsoleteMap = ObsoleteMap {
    spec: MapSpec {
        name: "sluice_be_conns",
        map_type: BPF_MAP_TYPE_PERCPU_HASH,
        key_size: 4,
        value_size: 8,
        max_entries: 262144,
        flags: BPF_F_NO_PREALLOC,
        inner: None,
        what: "new connections per backend (not per frontend)",
    },
    successor: "sluice_conns_v2",
    convert: |_, _| None,
    merge: None,
};

/// Maps of older builds that a daemon migrates and unpins at start.
pub const OBSOLETE: [ObsoleteMap; 4] = [
    OBSOLETE_SRC_DROP,
    OBSOLETE_AFFINITY_V1,
    OBSOLETE_REVNAT,
    OBSOLETE_BE_CONNS,
];

/// `enum sock_hook` → u64 per CPU.
pub const SOCKSTAT: MapSpec = MapSpec {
    name: "sluice_sockstat",
    map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
    key_size: 4,
    value_size: 8,
    max_entries: SOCK_HOOKS.len() as u32,
    flags: 0,
    inner: None,
    what: "socket operations of known endpoints, per hook",
};

/// [`SvcKey`] → [`SvcValue`]: service frontends.
pub const SVC: MapSpec = MapSpec {
    name: "sluice_svc",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<SvcKey>() as u32,
    value_size: size_of::<SvcValue>() as u32,
    max_entries: Capacity::DEFAULT.frontends,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "service frontends",
};

/// backend id → [`Backend`].
pub const BACKENDS: MapSpec = MapSpec {
    name: "sluice_backends",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: 4,
    value_size: size_of::<Backend>() as u32,
    max_entries: Capacity::DEFAULT.backends(),
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "service backends by id",
};

/// [`LbSlotKey`] → backend id: random selection's slots.
pub const LB_SLOTS: MapSpec = MapSpec {
    name: "sluice_lb_slots",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<LbSlotKey>() as u32,
    value_size: 4,
    max_entries: Capacity::DEFAULT.slots(),
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "random-selection slots per service generation",
};

/// svc_id → Maglev table (an inner array: slot 0 the length, then
/// backend ids).
pub const LB_TABLES: MapSpec = MapSpec {
    name: "sluice_lbtables",
    map_type: BPF_MAP_TYPE_HASH_OF_MAPS,
    key_size: 4,
    value_size: 4,
    max_entries: Capacity::DEFAULT.frontends,
    flags: 0,
    inner: Some(InnerSpec {
        map_type: LB_TABLE_TYPE,
        key_size: 4,
        value_size: 4,
        flags: BPF_F_INNER_MAP,
    }),
    what: "Maglev table per service",
};

/// [`SvcBackendKey`] → 1 while the backend is in the service's table.
pub const SVC_BES: MapSpec = MapSpec {
    name: "sluice_svc_bes",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<SvcBackendKey>() as u32,
    value_size: 1,
    max_entries: Capacity::DEFAULT.members(),
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "backends in each service's table",
};

/// [`AffinityKey`] → [`AffinityValue`].
pub const AFFINITY: MapSpec = MapSpec {
    name: "sluice_aff_v2",
    map_type: BPF_MAP_TYPE_LRU_HASH,
    key_size: size_of::<AffinityKey>() as u32,
    value_size: size_of::<AffinityValue>() as u32,
    max_entries: 65536,
    flags: 0,
    inner: None,
    what: "ClientIP session affinity per pod and service",
};

/// [`SvcBackendKey`] → new connections, per CPU: counted per frontend and
/// backend, so a backend address two services share is counted apart.
pub const CONNS: MapSpec = MapSpec {
    name: "sluice_conns_v2",
    map_type: BPF_MAP_TYPE_PERCPU_HASH,
    key_size: size_of::<SvcBackendKey>() as u32,
    value_size: 8,
    max_entries: Capacity::DEFAULT.members(),
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "new connections per frontend and backend",
};

/// Socket → [`SockNat`]: the service each backend peer of the socket
/// stands for (reverse translation), freed with the socket.
pub const SK_NAT: MapSpec = MapSpec {
    name: "sluice_sk_nat",
    map_type: BPF_MAP_TYPE_SK_STORAGE,
    key_size: 4,
    value_size: size_of::<SockNat>() as u32,
    max_entries: 0,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "reverse translation, in each socket",
};

/// socket cookie → [`UdpConn`]: connected UDP sockets translated to a
/// backend, so the daemon can end them when it leaves.
pub const UDP_CONN: MapSpec = MapSpec {
    name: "sluice_udp_conn",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: 8,
    value_size: size_of::<UdpConn>() as u32,
    max_entries: 65536,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "connected UDP sockets by the backend they were translated to",
};

/// `enum lb_stat`, in order: service translations by outcome.
pub const LB_STATS: [&str; 3] = ["translated", "no_backend", "inconsistent"];

/// `enum lb_stat` → u64 per CPU.
pub const LBSTAT: MapSpec = MapSpec {
    name: "sluice_lbstat",
    map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
    key_size: 4,
    value_size: 8,
    max_entries: LB_STATS.len() as u32,
    flags: 0,
    inner: None,
    what: "service translations by outcome",
};

/// [`CtKey`] → [`CtEntry`]: connection tracking of the per-packet service
/// translation, two entries per flow; LRU, so it is bounded, and
/// preallocated (an LRU map always is).
pub const CT: MapSpec = MapSpec {
    name: "sluice_ct",
    map_type: BPF_MAP_TYPE_LRU_HASH,
    key_size: size_of::<CtKey>() as u32,
    value_size: size_of::<CtEntry>() as u32,
    max_entries: 131072,
    flags: 0,
    inner: None,
    what: "connection tracking of per-packet service translation",
};

/// `enum ct_stat`, in order.
pub const CT_STATS: [&str; 5] = ["new", "translated", "replies", "no_backend", "reselected"];

/// `enum ct_stat` → u64 per CPU.
pub const CTSTAT: MapSpec = MapSpec {
    name: "sluice_ctstat",
    map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
    key_size: 4,
    value_size: 8,
    max_entries: CT_STATS.len() as u32,
    flags: 0,
    inner: None,
    what: "per-packet service translation by outcome",
};

/// [`SkPairKey`] → socket: the accelerated sockets of this node's pods;
/// the sk_msg program is attached to it (the pinned map holds it).
pub const SOCKHASH: MapSpec = MapSpec {
    name: "sluice_sockhash",
    map_type: BPF_MAP_TYPE_SOCKHASH,
    key_size: size_of::<SkPairKey>() as u32,
    value_size: 8,
    max_entries: 131072,
    flags: 0,
    inner: None,
    what: "accelerated TCP sockets",
};

/// [`SkPairKey`] → [`SkPeer`]: what a sender checks of its peer before it
/// redirects to it.
pub const SK_PEER: MapSpec = MapSpec {
    name: "sluice_sk_peer",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<SkPairKey>() as u32,
    value_size: size_of::<SkPeer>() as u32,
    max_entries: 131072,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "accelerated sockets' peer state",
};

/// Socket → [`SkAccel`]: each accelerated socket's key and mode.
pub const SK_ACCEL: MapSpec = MapSpec {
    name: "sluice_sk_accel",
    map_type: BPF_MAP_TYPE_SK_STORAGE,
    key_size: 4,
    value_size: size_of::<SkAccel>() as u32,
    max_entries: 0,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "acceleration mode, in each socket",
};

/// [`SkListenKey`] → [`SkPeer`] (its `sk` and `cookie`): the listening
/// sockets of known pods, whose file says whether what they accept reads
/// in non-blocking mode.
pub const SK_LISTEN: MapSpec = MapSpec {
    name: "sluice_sk_lsn",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<SkListenKey>() as u32,
    value_size: size_of::<SkPeer>() as u32,
    max_entries: 65536,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "pods' listening sockets",
};

/// [`SkPairKey`]s of accepted sockets whose reader blocks, queued by
/// sk_msg for the daemon to take out of [`SOCKHASH`].
pub const SK_EVICT: MapSpec = MapSpec {
    name: "sluice_sk_evict",
    map_type: BPF_MAP_TYPE_QUEUE,
    key_size: 0,
    value_size: size_of::<SkPairKey>() as u32,
    max_entries: 4096,
    flags: 0,
    inner: None,
    what: "blocking sockets to take out of the acceleration",
};

/// One [`AccelCfg`]: the node's switch and limits.
pub const ACCEL_CFG: MapSpec = MapSpec {
    name: "sluice_acc_cfg",
    map_type: BPF_MAP_TYPE_ARRAY,
    key_size: 4,
    value_size: size_of::<AccelCfg>() as u32,
    max_entries: 1,
    flags: 0,
    inner: None,
    what: "TCP acceleration switch and limits",
};

/// `enum accel_stat`, in order, named as in C without the prefix: sockets
/// added or not, messages and bytes redirected or passed, fallbacks to TCP
/// (`fb_*`) and returns from it, evictions, what the guards saw, and
/// connections drained out of the map with their sockets.
pub const ACCEL_STATS: [&str; 27] = [
    "added",
    "add_failed",
    "skipped",
    "skipped_blocking",
    "skipped_unpaired",
    "skipped_listener",
    "redir_msgs",
    "redir_bytes",
    "pass_msgs",
    "pass_bytes",
    "fb_no_peer",
    "fb_off",
    "fb_tcp_reader",
    "fb_backpressure",
    "fb_mem_pressure",
    "fb_redirect",
    "fb_oob",
    "fb_blocking",
    "resumed",
    "evicted",
    "guard_splice",
    "guard_waitall",
    "guard_rcvlowat",
    "guard_oob",
    "guard_refused",
    "draining",
    "drained",
];

/// `enum accel_stat` → u64 per CPU.
pub const ACCELSTAT: MapSpec = MapSpec {
    name: "sluice_accstat",
    map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
    key_size: 4,
    value_size: 8,
    max_entries: ACCEL_STATS.len() as u32,
    flags: 0,
    inner: None,
    what: "TCP acceleration by outcome",
};

/// [`NodeAddrKey`] → `SLUICE_NODE_ADDR_F_*`: the nodes' addresses.
pub const NODE_ADDRS: MapSpec = MapSpec {
    name: "sluice_nodeaddr",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<NodeAddrKey>() as u32,
    value_size: 4,
    max_entries: 4096,
    flags: 0,
    inner: None,
    what: "node addresses (NodePorts are served on this node's)",
};

/// [`PodNodeKey`] → [`PodNode`]: which node each pod range is on.
pub const POD_NODES: MapSpec = MapSpec {
    name: "sluice_podnodes",
    map_type: BPF_MAP_TYPE_LPM_TRIE,
    key_size: size_of::<PodNodeKey>() as u32,
    value_size: size_of::<PodNode>() as u32,
    max_entries: 16384,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "the nodes' pod ranges",
};

/// [`PodNodeKey`] → u32: destinations pods reach with their own address
/// (not masqueraded).
pub const NOMASQ: MapSpec = MapSpec {
    name: "sluice_nomasq",
    map_type: BPF_MAP_TYPE_LPM_TRIE,
    key_size: size_of::<PodNodeKey>() as u32,
    value_size: 4,
    max_entries: 4096,
    flags: BPF_F_NO_PREALLOC,
    inner: None,
    what: "destinations pods reach unmasqueraded",
};

/// One [`ExtCfg`]: the SNAT source and ranges.
pub const EXT_CFG: MapSpec = MapSpec {
    name: "sluice_ext_cfg",
    map_type: BPF_MAP_TYPE_ARRAY,
    key_size: 4,
    value_size: size_of::<ExtCfg>() as u32,
    max_entries: 1,
    flags: 0,
    inner: None,
    what: "external traffic settings",
};

/// [`CtKey`] → [`ExtCt`]: connection tracking of external flows (LRU).
pub const EXT_CT: MapSpec = MapSpec {
    name: "sluice_ext_ct",
    map_type: BPF_MAP_TYPE_LRU_HASH,
    key_size: size_of::<CtKey>() as u32,
    value_size: size_of::<ExtCt>() as u32,
    max_entries: 262144,
    flags: 0,
    inner: None,
    what: "connection tracking of external service traffic",
};

/// `enum ext_stat`, in order.
pub const EXT_STATS: [&str; 14] = [
    "new_local",
    "new_snat",
    "new_dsr",
    "translated",
    "replies_snat",
    "replies_direct",
    "dsr_taken_in",
    "no_backend",
    "no_snat_port",
    "no_route",
    "bad_dsr_option",
    "masq_new",
    "masq_translated",
    "masq_dropped",
];

/// `enum ext_stat` → u64 per CPU.
pub const EXTSTAT: MapSpec = MapSpec {
    name: "sluice_extstat",
    map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
    key_size: 4,
    value_size: 8,
    max_entries: EXT_STATS.len() as u32,
    flags: 0,
    inner: None,
    what: "external service traffic by outcome",
};

/// Every pinned map.
pub const ALL: [MapSpec; 29] = [
    ENDPOINTS, SRC, EDGE_STATS, SOCKSTAT, SVC, BACKENDS, LB_SLOTS, LB_TABLES, SVC_BES, AFFINITY,
    CONNS, SK_NAT, UDP_CONN, LBSTAT, CT, CTSTAT, SOCKHASH, SK_PEER, SK_ACCEL, ACCEL_CFG, ACCELSTAT,
    SK_EVICT, SK_LISTEN, NODE_ADDRS, POD_NODES, EXT_CFG, EXT_CT, EXTSTAT, NOMASQ,
];

/// `SLUICE_NODE_ADDR_F_LOCAL`, `SLUICE_NODE_ADDR_F_REMOTE`.
pub const NODE_ADDR_F_LOCAL: u32 = 1 << 0;
pub const NODE_ADDR_F_REMOTE: u32 = 1 << 1;
/// `SLUICE_POD_NODE_F_LOCAL`.
pub const POD_NODE_F_LOCAL: u32 = 1 << 0;

/// `struct node_addr_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct NodeAddrKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub pad: [u8; 3],
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for NodeAddrKey {}

impl NodeAddrKey {
    pub fn new(ip: IpAddr) -> Self {
        let (addr, family) = addr_bytes(ip);
        NodeAddrKey {
            addr,
            family,
            pad: [0; 3],
        }
    }
}

/// `struct pod_node_key`: an LPM key (prefix length first), IPv4 as
/// v4-mapped IPv6.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PodNodeKey {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for PodNodeKey {}

impl PodNodeKey {
    pub fn new(net: ipnetwork::IpNetwork) -> Self {
        match net.network() {
            IpAddr::V4(v4) => PodNodeKey {
                prefixlen: 96 + u32::from(net.prefix()),
                addr: v4.to_ipv6_mapped().octets(),
            },
            IpAddr::V6(v6) => PodNodeKey {
                prefixlen: u32::from(net.prefix()),
                addr: v6.octets(),
            },
        }
    }
}

/// `struct pod_node`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodNode {
    pub addr4: [u8; 4],
    pub flags: u32,
    pub addr6: [u8; 16],
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for PodNode {}

/// `struct ext_cfg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtCfg {
    pub addr4: [u8; 4],
    /// Host order.
    pub snat_min: u16,
    pub snat_max: u16,
    pub addr6: [u8; 16],
    pub np_min: u16,
    pub np_max: u16,
    /// `SLUICE_EXT_CFG_F_*`.
    pub flags: u32,
}

/// `SLUICE_EXT_CFG_F_MASQ`.
pub const EXT_CFG_F_MASQ: u32 = 1 << 0;
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for ExtCfg {}

/// `SLUICE_EXT_DIR_*` and `SLUICE_EXT_MODE_*`.
pub const EXT_DIR_FWD: u8 = 2;
pub const EXT_DIR_REPLY: u8 = 3;
pub const EXT_MODE_LOCAL: u8 = 1;
pub const EXT_MODE_SNAT: u8 = 2;
pub const EXT_MODE_DSR: u8 = 3;
pub const EXT_MODE_DSR_BE: u8 = 4;
pub const EXT_MODE_MASQ: u8 = 5;
pub const EXT_DIR_MASQ: u8 = 4;

/// `struct ext_ct`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtCt {
    pub a: [u8; 16],
    pub b: [u8; 16],
    pub a_port: u16,
    pub b_port: u16,
    pub mode: u8,
    pub flags: u8,
    pub pad: u16,
    pub svc_id: u32,
    pub backend_id: u32,
    pub last_seen_ns: u64,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for ExtCt {}

/// `struct sk_pair_key`: a socket of an accelerated connection by its
/// sequence numbers at ESTABLISHED (ISN+1, IRS+1); its peer's key is the
/// same two swapped.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SkPairKey {
    pub snd: u32,
    pub rcv: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SkPairKey {}

/// `struct sk_listen_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkListenKey {
    pub netns_cookie: u64,
    pub port: u16,
    pub pad: u16,
    pub pad2: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SkListenKey {}

/// `SLUICE_SKP_F_TCP_READER`: the socket's reader needs the TCP path.
pub const SKP_F_TCP_READER: u32 = 1 << 0;
/// `SLUICE_SKP_F_DRAINING`: the socket's connection sends through TCP for
/// good and leaves the map; its entry stays until it closes (its peer
/// reads the socket's psock through it before leaving too).
pub const SKP_F_DRAINING: u32 = 1 << 4;

/// `struct sk_peer`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkPeer {
    pub sk: u64,
    pub cookie: u64,
    pub netns_cookie: u64,
    pub flags: u32,
    pub pad: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SkPeer {}

/// `struct sk_accel`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkAccel {
    pub self_key: SkPairKey,
    pub mode: u32,
    pub reason: u32,
    pub msgs: u32,
    pub flags: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SkAccel {}

/// `struct accel_cfg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccelCfg {
    pub enabled: u32,
    pub rmem_max: u32,
    pub msg_cost: u32,
    /// `ACC_F_*`.
    pub flags: u32,
}

/// `SLUICE_ACC_F_*`: no guards, only pods that opted in are accelerated.
pub const ACC_F_OPT_IN_ONLY: u32 = 1 << 0;
/// `SLUICE_ACC_F_*`: the node's own accepted sockets may join.
pub const ACC_F_NODE: u32 = 1 << 1;
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for AccelCfg {}

/// `enum sock_hook`, in order.
pub const SOCK_HOOKS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// `SLUICE_EP_F_*`.
pub const EP_F_HOST: u32 = 1 << 0;
pub const EP_F_IPV4: u32 = 1 << 1;
pub const EP_F_IPV6: u32 = 1 << 2;
pub const EP_F_NO_SOCK_LB: u32 = 1 << 3;
pub const EP_F_NO_ACCEL: u32 = 1 << 4;
pub const EP_F_ACCEL: u32 = 1 << 5;

/// `struct endpoint`, keyed by netns cookie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub host_ifindex: u32,
    pub flags: u32,
    pub ipv4: [u8; 4],
    pub pad: [u8; 4],
    pub ipv6: [u8; 16],
}

// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for Endpoint {}

impl Endpoint {
    /// A pod behind `host_ifindex` with (at most) one address per family;
    /// further addresses of a family are only in the source map.
    pub fn pod(host_ifindex: u32, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut e = Endpoint {
            host_ifindex,
            ..Default::default()
        };
        for a in addrs {
            match a {
                IpAddr::V4(v4) if e.flags & EP_F_IPV4 == 0 => {
                    e.flags |= EP_F_IPV4;
                    e.ipv4 = v4.octets();
                }
                IpAddr::V6(v6) if e.flags & EP_F_IPV6 == 0 => {
                    e.flags |= EP_F_IPV6;
                    e.ipv6 = v6.octets();
                }
                _ => {}
            }
        }
        e
    }

    /// The node's own netns.
    pub fn host() -> Self {
        Endpoint {
            flags: EP_F_HOST,
            ..Default::default()
        }
    }

    pub fn is_host(&self) -> bool {
        self.flags & EP_F_HOST != 0
    }

    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        (self.flags & EP_F_IPV4 != 0).then(|| Ipv4Addr::from(self.ipv4))
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        (self.flags & EP_F_IPV6 != 0).then(|| Ipv6Addr::from(self.ipv6))
    }
}

/// `struct src_key`: an address the pod behind `ifindex` may send from.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SrcKey {
    pub ifindex: u32,
    pub family: u8,
    pub pad: [u8; 3],
    /// IPv4 in the first 4 bytes, network order.
    pub addr: [u8; 16],
}

// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SrcKey {}

impl SrcKey {
    pub fn new(ifindex: u32, ip: IpAddr) -> Self {
        let mut k = SrcKey {
            ifindex,
            ..Default::default()
        };
        match ip {
            IpAddr::V4(v4) => {
                k.family = AF_INET;
                k.addr[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                k.family = AF_INET6;
                k.addr = v6.octets();
            }
        }
        k
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(self.addr))),
            _ => None,
        }
    }
}

/// `enum edge_reason`, in order; slot 0 (`EDGE_PASS`) is never counted.
pub const EDGE_REASONS: [&str; 8] = [
    "pass",
    "spoofed_source",
    "vlan",
    "protocol",
    "arp",
    "router",
    "link_local",
    "malformed",
];

/// `EDGE_DROP_SPOOFED`.
pub const EDGE_DROP_SPOOFED: usize = 1;

/// `struct edge_stats`, keyed by host-side ifindex.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeStats {
    pub drops: [u64; 8],
    pub drop_bytes: u64,
}

// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for EdgeStats {}

impl EdgeStats {
    /// Every drop, whatever its reason.
    pub fn total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Drops by reason name, reasons with none left out.
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        EDGE_REASONS
            .iter()
            .zip(self.drops)
            .skip(1)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (*r, n))
            .collect()
    }

    pub fn spoofed(&self) -> u64 {
        self.drops[EDGE_DROP_SPOOFED]
    }
}

/// The bytes of a map key or value, as the kernel reads them.
pub fn bytes_of<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: T is plain old data without padding (aya::Pod), so every
    // byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
}

/// The bytes of a map value for the kernel to write into.
pub fn bytes_of_mut<T: aya::Pod>(v: &mut T) -> &mut [u8] {
    // SAFETY: as above, and any byte pattern is a valid T.
    unsafe { std::slice::from_raw_parts_mut((v as *mut T).cast(), size_of::<T>()) }
}

/// Writes an address as the datapath keys it: IPv4 in the first 4 bytes.
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            (a, AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6),
    }
}

/// The inverse of [`addr_bytes`].
pub fn addr_from(addr: [u8; 16], family: u8) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(addr))),
        _ => None,
    }
}

/// `SLUICE_SVC_F_MAGLEV`.
pub const SVC_F_MAGLEV: u32 = 1 << 0;
/// `SLUICE_SVC_F_NODEPORT` … `SLUICE_SVC_F_DSR_UDP`: frontends reached from
/// outside the cluster.
pub const SVC_F_NODEPORT: u32 = 1 << 1;
pub const SVC_F_EXTERNAL: u32 = 1 << 2;
pub const SVC_F_ETP_LOCAL: u32 = 1 << 3;
pub const SVC_F_DSR_TCP: u32 = 1 << 4;
pub const SVC_F_DSR_UDP: u32 = 1 << 5;
/// `SLUICE_LB_TABLE_HEADER`: slots before the backend ids in a table.
pub const LB_TABLE_HEADER: u32 = 1;

/// `struct svc_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SvcKey {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SvcKey {}

impl SvcKey {
    pub fn new(addr: std::net::SocketAddr, proto: u8) -> Self {
        let (a, family) = addr_bytes(addr.ip());
        SvcKey {
            addr: a,
            port: addr.port().to_be(),
            proto,
            family,
        }
    }
}

/// `struct svc_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvcValue {
    pub svc_id: u32,
    pub affinity_timeout: u32,
    pub flags: u32,
    /// Random selection: slots `0..count` of generation `gen`.
    pub count: u16,
    pub gen: u16,
}

/// `struct lb_slot_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct LbSlotKey {
    pub svc_id: u32,
    pub gen: u16,
    pub slot: u16,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for LbSlotKey {}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SvcValue {}

/// `struct backend`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for Backend {}

impl Backend {
    pub fn new(addr: std::net::SocketAddr, proto: u8) -> Self {
        let (a, family) = addr_bytes(addr.ip());
        Backend {
            addr: a,
            port: addr.port().to_be(),
            proto,
            family,
            pad: 0,
        }
    }

    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        Some(std::net::SocketAddr::new(
            addr_from(self.addr, self.family)?,
            u16::from_be(self.port),
        ))
    }
}

/// `struct svc_backend_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SvcBackendKey {
    pub svc_id: u32,
    pub backend_id: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SvcBackendKey {}

/// `SLUICE_SOCK_NAT_SLOTS`.
pub const SOCK_NAT_SLOTS: usize = 8;

/// `struct sock_nat_slot`: one backend a socket was sent to, and the
/// service it stands for.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockNatSlot {
    pub backend: [u8; 16],
    pub service: [u8; 16],
    pub backend_port: u16,
    pub service_port: u16,
    /// 0: unused.
    pub family: u8,
    pub proto: u8,
    pub pad: u16,
    pub svc_id: u32,
    pub backend_id: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SockNatSlot {}

/// `struct sock_nat`: a socket's reverse translation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SockNat {
    pub slot: [SockNatSlot; SOCK_NAT_SLOTS],
    pub next: u32,
    pub pad: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SockNat {}

/// `struct udp_conn`: a connected UDP socket's translation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UdpConn {
    pub netns_cookie: u64,
    pub svc_id: u32,
    pub backend_id: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for UdpConn {}

/// `struct affinity_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub svc_id: u32,
    pub pad: u32,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for AffinityKey {}

/// `SLUICE_AFF_BACKEND_BITS`: backend ids stay below 2^this.
pub const AFF_BACKEND_BITS: u32 = 24;
/// `SLUICE_AFF_TIME_BITS`.
pub const AFF_TIME_BITS: u32 = 40;
/// The largest backend id the datapath can hold.
pub const MAX_BACKEND_ID: u32 = (1 << AFF_BACKEND_BITS) - 1;

/// `struct affinity_value`: backend id and time of last use (ms since
/// boot) in one word.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub word: u64,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for AffinityValue {}

impl AffinityValue {
    /// `None` for an id the word cannot hold.
    pub fn new(backend_id: u32, last_used_ms: u64) -> Option<Self> {
        (backend_id <= MAX_BACKEND_ID).then(|| AffinityValue {
            word: (u64::from(backend_id) << AFF_TIME_BITS)
                | (last_used_ms & ((1 << AFF_TIME_BITS) - 1)),
        })
    }

    pub fn backend_id(&self) -> u32 {
        (self.word >> AFF_TIME_BITS) as u32
    }

    pub fn last_used_ms(&self) -> u64 {
        self.word & ((1 << AFF_TIME_BITS) - 1)
    }
}

/// `SLUICE_CT_DIR_*`.
pub const CT_DIR_FWD: u8 = 0;
pub const CT_DIR_REPLY: u8 = 1;
/// `SLUICE_CT_F_*`.
pub const CT_F_FIN: u8 = 1 << 0;
pub const CT_F_RST: u8 = 1 << 1;

/// `struct ct_key`: one direction of a translated flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CtKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub dir: u8,
    pub pad: u8,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for CtKey {}

/// `struct ct_entry`: where a direction of a flow is translated to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtEntry {
    pub addr: [u8; 16],
    pub port: u16,
    pub flags: u8,
    pub pad: u8,
    pub svc_id: u32,
    pub backend_id: u32,
    pub pad2: u32,
    pub last_seen_ns: u64,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for CtEntry {}

/// The session-affinity identity the per-packet path gives a pod
/// (`NAT_AFF_ID`): its host ifindex with the top bit set, where the socket
/// path uses the netns cookie.
pub const AFF_ID_IFINDEX: u64 = 1 << 63;
/// `EXT_AFF_ID`: the affinity identity of an external client (its
/// address hashed), bits 63 and 62 set; expires with its timeout only.
pub const AFF_ID_EXTERNAL: u64 = 3 << 62;

/// `enum lb_verdict`.
pub const LB_PASS: u32 = 0;
pub const LB_XLATE: u32 = 1;
pub const LB_REFUSE: u32 = 2;

/// `struct lb_req`: one translation's input and output.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbReq {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub rnd: u32,
    pub hash: u32,
    pub pad: u32,
    pub netns_cookie: u64,
    pub now_ns: u64,
    pub verdict: u32,
    pub svc_id: u32,
    pub backend_id: u32,
    pub pad2: u32,
    pub be: Backend,
}
// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for LbReq {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn accel_layout_matches_c() {
        assert_eq!(size_of::<SkPairKey>(), 8);
        assert_eq!(offset_of!(SkPairKey, rcv), 4);
        assert_eq!(size_of::<SkPeer>(), 32);
        assert_eq!(size_of::<SkListenKey>(), 16);
        assert_eq!(offset_of!(SkListenKey, port), 8);
        assert_eq!(offset_of!(SkPeer, cookie), 8);
        assert_eq!(offset_of!(SkPeer, netns_cookie), 16);
        assert_eq!(offset_of!(SkPeer, flags), 24);
        assert_eq!(size_of::<SkAccel>(), 24);
        assert_eq!(offset_of!(SkAccel, mode), 8);
        assert_eq!(offset_of!(SkAccel, reason), 12);
        assert_eq!(offset_of!(SkAccel, msgs), 16);
        assert_eq!(size_of::<AccelCfg>(), 16);
        assert_eq!(offset_of!(AccelCfg, rmem_max), 4);
        assert_eq!(offset_of!(AccelCfg, msg_cost), 8);
        assert_eq!(offset_of!(AccelCfg, flags), 12);
    }

    #[test]
    fn ct_layout_matches_c() {
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(size_of::<NodeAddrKey>(), 20);
        assert_eq!(size_of::<PodNodeKey>(), 20);
        assert_eq!(size_of::<PodNode>(), 24);
        assert_eq!(size_of::<ExtCfg>(), 32);
        assert_eq!(size_of::<ExtCt>(), 56);
        assert_eq!(offset_of!(CtKey, sport), 32);
        assert_eq!(offset_of!(CtKey, dport), 34);
        assert_eq!(offset_of!(CtKey, proto), 36);
        assert_eq!(offset_of!(CtKey, family), 37);
        assert_eq!(offset_of!(CtKey, dir), 38);
        assert_eq!(size_of::<CtEntry>(), 40);
        assert_eq!(offset_of!(CtEntry, port), 16);
        assert_eq!(offset_of!(CtEntry, flags), 18);
        assert_eq!(offset_of!(CtEntry, svc_id), 20);
        assert_eq!(offset_of!(CtEntry, backend_id), 24);
        assert_eq!(offset_of!(CtEntry, last_seen_ns), 32);
    }

    #[test]
    fn endpoint_matches_c() {
        assert_eq!(size_of::<Endpoint>(), 32);
        assert_eq!(offset_of!(Endpoint, host_ifindex), 0);
        assert_eq!(offset_of!(Endpoint, flags), 4);
        assert_eq!(offset_of!(Endpoint, ipv4), 8);
        assert_eq!(offset_of!(Endpoint, pad), 12);
        assert_eq!(offset_of!(Endpoint, ipv6), 16);
    }

    #[test]
    fn service_types_match_c() {
        assert_eq!(size_of::<SvcKey>(), 20);
        assert_eq!(
            (
                offset_of!(SvcKey, port),
                offset_of!(SvcKey, proto),
                offset_of!(SvcKey, family)
            ),
            (16, 18, 19)
        );
        assert_eq!(size_of::<SvcValue>(), 16);
        assert_eq!(
            (
                offset_of!(SvcValue, svc_id),
                offset_of!(SvcValue, affinity_timeout),
                offset_of!(SvcValue, flags),
                offset_of!(SvcValue, count),
                offset_of!(SvcValue, gen)
            ),
            (0, 4, 8, 12, 14)
        );
        assert_eq!(size_of::<LbSlotKey>(), 8);
        assert_eq!(
            (offset_of!(LbSlotKey, gen), offset_of!(LbSlotKey, slot)),
            (4, 6)
        );
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(
            (
                offset_of!(Backend, port),
                offset_of!(Backend, proto),
                offset_of!(Backend, family),
                offset_of!(Backend, pad)
            ),
            (16, 18, 19, 20)
        );
        assert_eq!(size_of::<SvcBackendKey>(), 8);
        assert_eq!(offset_of!(SvcBackendKey, backend_id), 4);
        assert_eq!(size_of::<SockNatSlot>(), 48);
        assert_eq!(
            (
                offset_of!(SockNatSlot, service),
                offset_of!(SockNatSlot, backend_port),
                offset_of!(SockNatSlot, service_port),
                offset_of!(SockNatSlot, family),
                offset_of!(SockNatSlot, proto),
                offset_of!(SockNatSlot, svc_id),
                offset_of!(SockNatSlot, backend_id)
            ),
            (16, 32, 34, 36, 37, 40, 44)
        );
        assert_eq!(size_of::<SockNat>(), 392);
        assert_eq!(size_of::<UdpConn>(), 16);
        assert_eq!(offset_of!(UdpConn, backend_id), 12);
        assert_eq!(offset_of!(SockNat, next), 384);
        assert_eq!(size_of::<AffinityKey>(), 16);
        assert_eq!(
            (
                offset_of!(AffinityKey, svc_id),
                offset_of!(AffinityKey, pad)
            ),
            (8, 12)
        );
        assert_eq!(size_of::<AffinityValue>(), 8);
        let v = AffinityValue::new(MAX_BACKEND_ID, 123_456).unwrap();
        assert_eq!(
            (v.backend_id(), v.last_used_ms()),
            (MAX_BACKEND_ID, 123_456)
        );
        assert!(AffinityValue::new(MAX_BACKEND_ID + 1, 0).is_none());
        assert_eq!(size_of::<LbReq>(), 88);
        assert_eq!(
            [
                offset_of!(LbReq, port),
                offset_of!(LbReq, proto),
                offset_of!(LbReq, family),
                offset_of!(LbReq, rnd),
                offset_of!(LbReq, hash),
                offset_of!(LbReq, pad),
                offset_of!(LbReq, netns_cookie),
                offset_of!(LbReq, now_ns),
                offset_of!(LbReq, verdict),
                offset_of!(LbReq, svc_id),
                offset_of!(LbReq, backend_id),
                offset_of!(LbReq, pad2),
                offset_of!(LbReq, be)
            ],
            [16, 18, 19, 20, 24, 28, 32, 40, 48, 52, 56, 60, 64]
        );
    }

    #[test]
    fn src_key_matches_c() {
        assert_eq!(size_of::<SrcKey>(), 24);
        assert_eq!(offset_of!(SrcKey, ifindex), 0);
        assert_eq!(offset_of!(SrcKey, family), 4);
        assert_eq!(offset_of!(SrcKey, pad), 5);
        assert_eq!(offset_of!(SrcKey, addr), 8);
    }

    #[test]
    fn edge_stats_match_c() {
        assert_eq!(size_of::<EdgeStats>(), 72);
        assert_eq!(offset_of!(EdgeStats, drops), 0);
        assert_eq!(offset_of!(EdgeStats, drop_bytes), 64);
        let h = include_str!("../bpf/include/sluice_maps.h");
        let reasons: Vec<String> = h
            .lines()
            .filter_map(|l| l.trim().strip_prefix("EDGE_"))
            .map(|l| l.split([',', ' ', '\t']).next().unwrap().to_lowercase())
            .filter(|n| n != "reason_max")
            .collect();
        let want: Vec<String> = EDGE_REASONS
            .iter()
            .map(|r| match *r {
                "pass" => "pass".to_string(),
                "spoofed_source" => "drop_spoofed".to_string(),
                other => format!("drop_{other}"),
            })
            .collect();
        assert_eq!(reasons, want, "EDGE_REASONS follows enum edge_reason");
        assert_eq!(EDGE_REASONS.len(), EdgeStats::default().drops.len());
    }

    /// The C header is the one definition: check the constants Rust
    /// repeats (flags, hook order, map names) against its text.
    #[test]
    fn constants_match_the_c_header() {
        let h = include_str!("../bpf/include/sluice_maps.h");
        assert!(h.contains("#define SLUICE_EP_F_HOST (1U << 0)"));
        assert!(h.contains("#define SLUICE_EP_F_IPV4 (1U << 1)"));
        assert!(h.contains("#define SLUICE_EP_F_IPV6 (1U << 2)"));
        assert!(h.contains("#define SLUICE_EP_F_NO_SOCK_LB (1U << 3)"));
        assert!(h.contains("#define SLUICE_EP_F_NO_ACCEL (1U << 4)"));
        assert!(h.contains("#define SLUICE_EP_F_ACCEL (1U << 5)"));
        assert!(h.contains("#define SLUICE_ACC_F_OPT_IN_ONLY (1U << 0)"));
        assert!(h.contains("#define SLUICE_ACC_F_NODE (1U << 1)"));
        assert!(h.contains("#define SLUICE_SKP_F_SENDS_TCP (1U << 1)"));
        assert!(h.contains("#define SLUICE_SKP_F_TCP_READER (1U << 0)"));
        assert!(h.contains("#define SLUICE_SKP_F_DRAINING (1U << 4)"));
        let accel_stats: Vec<String> = h
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ACCEL_STAT_"))
            .map(|l| l.split([',', ' ']).next().unwrap().to_lowercase())
            .filter(|n| n != "max")
            .collect();
        assert_eq!(accel_stats, ACCEL_STATS);
        assert!(h.contains("#define SLUICE_SVC_F_MAGLEV (1U << 0)"));
        assert!(h.contains("#define SLUICE_LB_TABLE_HEADER 1"));
        assert!(
            h.contains("LB_PASS = 0,")
                && h.contains("LB_XLATE = 1,")
                && h.contains("LB_REFUSE = 2,")
        );
        assert!(h.contains("#define SLUICE_AF_INET 4"));
        assert!(h.contains(&format!(
            "#define SLUICE_AFF_BACKEND_BITS {AFF_BACKEND_BITS}"
        )));
        assert!(h.contains(&format!("#define SLUICE_AFF_TIME_BITS {AFF_TIME_BITS}")));
        assert!(h.contains(&format!("#define SLUICE_SOCK_NAT_SLOTS {SOCK_NAT_SLOTS}")));
        assert_eq!(AFF_BACKEND_BITS + AFF_TIME_BITS, 64);
        assert!(h.contains("#define SLUICE_AF_INET6 6"));
        let hooks: Vec<String> = h
            .lines()
            .filter_map(|l| l.trim().strip_prefix("SOCK_HOOK_"))
            .map(|l| l.split([',', ' ']).next().unwrap().to_lowercase())
            .filter(|n| n != "max")
            .collect();
        assert_eq!(hooks, SOCK_HOOKS);
        let sock = include_str!("../bpf/sock.c");
        for (prog, hook) in crate::SOCK_PROGRAMS.iter().zip(SOCK_HOOKS) {
            assert!(sock.contains(&format!("SEC(\"cgroup/{hook}\")\nint {prog}(")));
        }
        let all_c = [
            include_str!("../bpf/include/endpoints.h"),
            include_str!("../bpf/include/edge.h"),
            include_str!("../bpf/include/sock.h"),
            include_str!("../bpf/include/lb.h"),
            include_str!("../bpf/include/nat.h"),
            include_str!("../bpf/include/accel.h"),
            include_str!("../bpf/include/accel_guard.h"),
            include_str!("../bpf/include/nodeport.h"),
            include_str!("../bpf/include/nodeaddr.h"),
        ]
        .concat();
        let ext_stats = h
            .lines()
            .filter(|l| l.trim().starts_with("EXT_STAT_") && !l.contains("EXT_STAT_MAX"))
            .count();
        assert_eq!(ext_stats, EXT_STATS.len());
        for (c, v) in [
            ("SLUICE_SVC_F_NODEPORT (1U << 1)", SVC_F_NODEPORT),
            ("SLUICE_SVC_F_EXTERNAL (1U << 2)", SVC_F_EXTERNAL),
            ("SLUICE_SVC_F_ETP_LOCAL (1U << 3)", SVC_F_ETP_LOCAL),
            ("SLUICE_SVC_F_DSR_TCP (1U << 4)", SVC_F_DSR_TCP),
            ("SLUICE_SVC_F_DSR_UDP (1U << 5)", SVC_F_DSR_UDP),
            ("SLUICE_NODE_ADDR_F_LOCAL (1U << 0)", NODE_ADDR_F_LOCAL),
            ("SLUICE_NODE_ADDR_F_REMOTE (1U << 1)", NODE_ADDR_F_REMOTE),
            ("SLUICE_POD_NODE_F_LOCAL (1U << 0)", POD_NODE_F_LOCAL),
            ("SLUICE_EXT_CFG_F_MASQ (1U << 0)", EXT_CFG_F_MASQ),
        ] {
            assert!(h.contains(&format!("#define {c}")), "{c}");
            let shift: u32 = c
                .split("<< ")
                .nth(1)
                .unwrap()
                .trim_end_matches(')')
                .parse()
                .unwrap();
            assert_eq!(v, 1 << shift, "{c}");
        }
        for (c, v) in [
            ("SLUICE_EXT_DIR_FWD 2", EXT_DIR_FWD),
            ("SLUICE_EXT_DIR_REPLY 3", EXT_DIR_REPLY),
            ("SLUICE_EXT_MODE_LOCAL 1", EXT_MODE_LOCAL),
            ("SLUICE_EXT_MODE_SNAT 2", EXT_MODE_SNAT),
            ("SLUICE_EXT_MODE_DSR 3", EXT_MODE_DSR),
            ("SLUICE_EXT_MODE_DSR_BE 4", EXT_MODE_DSR_BE),
            ("SLUICE_EXT_MODE_MASQ 5", EXT_MODE_MASQ),
            ("SLUICE_EXT_DIR_MASQ 4", EXT_DIR_MASQ),
        ] {
            assert!(h.contains(&format!("#define {c}")), "{c}");
            assert_eq!(v.to_string(), c.rsplit(' ').next().unwrap(), "{c}");
        }
        let ct_stats = h
            .lines()
            .filter(|l| l.trim().starts_with("CT_STAT_") && !l.contains("CT_STAT_MAX"))
            .count();
        assert_eq!(ct_stats, CT_STATS.len());
        for m in ALL {
            assert!(
                all_c.contains(&format!("}} {} SEC(\".maps\")", m.name)),
                "{}",
                m.name
            );
            assert!(
                m.name.len() < 16,
                "{} is longer than BPF_OBJ_NAME_LEN",
                m.name
            );
        }
    }

    /// Every pinned map's type and key/value layout as it was released
    /// under its name. A pinned map is reused across upgrades, so changing
    /// a layout under the same name would make the new programs misread
    /// the old entries: give the map a new name (`_v2`), add the old one to
    /// [`OBSOLETE`] with its conversion, and add a line here.
    #[test]
    fn layouts_change_only_under_a_new_name() {
        let released: [(&str, u32, u32, u32); 29] = [
            ("sluice_eps", 1, 8, 32),
            ("sluice_src", 1, 24, 1),
            ("sluice_edgestat", 1, 4, 72),
            ("sluice_sockstat", 6, 4, 8),
            ("sluice_svc", 1, 20, 16),
            ("sluice_backends", 1, 4, 24),
            ("sluice_lb_slots", 1, 8, 4),
            ("sluice_lbtables", 13, 4, 4),
            ("sluice_svc_bes", 1, 8, 1),
            ("sluice_aff_v2", 9, 16, 8),
            ("sluice_conns_v2", 5, 8, 8),
            ("sluice_sk_nat", 24, 4, 392),
            ("sluice_udp_conn", 1, 8, 16),
            ("sluice_lbstat", 6, 4, 8),
            ("sluice_ct", 9, 40, 40),
            ("sluice_ctstat", 6, 4, 8),
            ("sluice_sockhash", 18, 8, 8),
            ("sluice_sk_peer", 1, 8, 32),
            ("sluice_sk_accel", 24, 4, 24),
            ("sluice_acc_cfg", 2, 4, 16),
            ("sluice_accstat", 6, 4, 8),
            ("sluice_sk_evict", 22, 0, 8),
            ("sluice_sk_lsn", 1, 16, 32),
            ("sluice_nodeaddr", 1, 20, 4),
            ("sluice_podnodes", 11, 20, 24),
            ("sluice_ext_cfg", 2, 4, 32),
            ("sluice_ext_ct", 9, 40, 56),
            ("sluice_extstat", 6, 4, 8),
            ("sluice_nomasq", 11, 20, 4),
        ];
        for m in ALL {
            let r = released
                .iter()
                .find(|r| r.0 == m.name)
                .unwrap_or_else(|| panic!("{} is not in the released list", m.name));
            assert_eq!(
                (r.1, r.2, r.3),
                (m.map_type, m.key_size, m.value_size),
                "{} changed layout under its released name",
                m.name
            );
        }
        for old in OBSOLETE {
            assert!(
                ALL.iter().any(|m| m.name == old.successor),
                "{} has no successor",
                old.spec.name
            );
            assert!(ALL.iter().all(|m| m.name != old.spec.name));
        }
    }

    #[test]
    fn keys_carry_addresses_in_network_order() {
        let k = SrcKey::new(7, "10.244.0.5".parse().unwrap());
        assert_eq!(k.family, AF_INET);
        assert_eq!(&k.addr[..4], &[10, 244, 0, 5]);
        assert_eq!(&k.addr[4..], &[0; 12]);
        assert_eq!(k.ip(), Some("10.244.0.5".parse().unwrap()));
        let k = SrcKey::new(7, "fd00::5".parse().unwrap());
        assert_eq!(k.family, AF_INET6);
        assert_eq!(k.addr[0], 0xfd);
        assert_eq!(k.addr[15], 5);
        assert_eq!(k.ip(), Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn endpoint_keeps_first_address_per_family() {
        let e = Endpoint::pod(
            9,
            [
                "10.0.0.1".parse().unwrap(),
                "fd00::1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ],
        );
        assert_eq!(e.ipv4(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(e.ipv6(), Some("fd00::1".parse().unwrap()));
        assert!(!e.is_host());
        assert!(Endpoint::host().is_host());
        assert_eq!(Endpoint::host().ipv4(), None);
    }
}
