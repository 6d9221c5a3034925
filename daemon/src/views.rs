//! What the API answers with (and `sluicectl` reads back).

use crate::datapath::{LinkOutcome, LinkState, MapSummary};
use crate::edge::{AttachedBy, EdgeState};
use serde::{Deserialize, Serialize};
use sluice_common::endpoint::{EdgeMode, EdgeProgram};
use sluice_dataplane::maps::EdgeStats;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub netns: String,
    pub cookie: u64,
    pub addresses: Vec<IpAddr>,
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// What guards the pod's edge; absent while a record of an older
    /// plugin waits for its first edge pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeView>,
    pub in_endpoint_map: bool,
    /// False when the pod opted out of the socket-level service load
    /// balancing (`sluice.dev/socket-lb: "false"`): its connects to service
    /// addresses go out untranslated. Absent (older daemons): true.
    #[serde(default = "yes")]
    pub socket_lb: bool,
    pub spoof_drops: u64,
    pub spoof_bytes: u64,
}

fn yes() -> bool {
    true
}

/// One pod's edge, as `sluicectl endpoints` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    /// `clsact` (a filter) or `tcx` (a link).
    pub mode: EdgeMode,
    /// `check`, or `isolate` while no check was pinned at ADD.
    pub program: EdgeProgram,
    pub prog_id: u32,
    /// When the attachment in place was made (ms since the epoch).
    pub since_unix_ms: u64,
    pub by: AttachedBy,
    /// The check is attached, was found in place by a pass, and passes the
    /// pod's own traffic.
    pub protecting: bool,
    /// When a pass last found it in place (0: not yet).
    pub verified_unix_ms: u64,
    pub repairs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
    /// Frames dropped at the edge, by reason (reasons with none left out).
    pub drops: Vec<(String, u64)>,
}

impl EdgeView {
    pub fn of(e: &EdgeState, stats: &EdgeStats) -> Self {
        EdgeView {
            mode: e.mode,
            program: e.program,
            prog_id: e.prog_id,
            since_unix_ms: e.since_unix_ms,
            by: e.by,
            protecting: e.protecting(),
            verified_unix_ms: e.verified_unix_ms,
            repairs: e.repairs,
            last_problem: e.last_problem.clone(),
            drops: stats
                .by_reason()
                .into_iter()
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
        }
    }
}

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Records made (or confirmed) live in the datapath.
    pub restored: usize,
    /// Records whose pod is gone, removed with their entries.
    pub cleaned: usize,
    /// Registered endpoints whose record disappeared.
    pub removed: usize,
    /// Records that could not be applied (logged with the reason).
    pub failed: usize,
    pub invalid_records: usize,
    /// Map entries and pins no record explains, removed at start.
    pub stale_entries: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreView {
    pub duration_ms: f64,
    pub report: ReconcileReport,
    pub maps_reused: Vec<String>,
    /// Older builds' maps carried over at start (a new size, flags or
    /// inner template; or a renamed layout converted into its successor).
    #[serde(default)]
    pub maps_carried: Vec<CarriedView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CarriedView {
    pub map: String,
    pub into: String,
    pub why: String,
    pub copied: usize,
    pub dropped: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub api_version: u32,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub cgroup_root: PathBuf,
    /// How this daemon attaches an edge itself (`tc_attach`).
    pub edge_mode: EdgeMode,
    /// The pinned edge program and what happened to it at start.
    pub edge_program_id: u32,
    pub edge_program: LinkOutcome,
    /// What this kernel has, and which features it allows.
    #[serde(default)]
    pub kernel: Option<crate::kernel::Kernel>,
    pub host_cookie: u64,
    pub endpoints: usize,
    pub restore: RestoreView,
    pub socket_links: Vec<LinkState>,
    pub sock_ops: Vec<(String, u64)>,
    /// Service translations by outcome.
    #[serde(default)]
    pub lb_stats: Vec<(String, u64)>,
    /// The per-packet service translation of opted-out pods, by outcome.
    #[serde(default)]
    pub per_packet: std::collections::BTreeMap<String, u64>,
    /// The same-node TCP acceleration (absent where the kernel lacks it).
    #[serde(default)]
    pub accel: Option<AccelView>,
    pub maps: Vec<MapSummary>,
}

/// The same-node TCP acceleration of this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccelView {
    /// The node switch (config `accel`, or `sluicectl accel on|off`).
    pub enabled: bool,
    /// Sockets in the map now (both ends of each accelerated connection).
    pub sockets: usize,
    /// Redirected bytes a reader may have waiting before its writer falls
    /// back to TCP.
    #[serde(default)]
    pub max_queue_bytes: u32,
    /// The sockops link on the cgroup root.
    pub link: LinkState,
    /// The guards' LSM links; empty where they cannot run, and then
    /// `unguarded` says why and only pods annotated
    /// `sluice.dev/accel: "true"` are accelerated.
    #[serde(default)]
    pub guards: Vec<LinkState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unguarded: Option<String>,
    /// Whether the node's own servers take part: a pod's connection to a
    /// socket in the node's netns is accelerated (`accel_node`).
    #[serde(default)]
    pub node: bool,
    /// Sockets added, messages and bytes redirected and passed, fallbacks
    /// by reason (`sluice_dataplane::maps::ACCEL_STATS`).
    pub counters: std::collections::BTreeMap<String, u64>,
}

impl AccelView {
    /// The view, its sockets still to be counted (`count`), and the
    /// sockhash to count them in: a walk of the map, for the caller to do
    /// once it has let go of the state lock, which registers need.
    pub fn of(a: &crate::accel::Accel) -> (Self, Option<std::os::fd::OwnedFd>) {
        (Self::uncounted(a), a.sockhash().ok())
    }

    /// Counts the sockets in `sockhash` (from [`AccelView::of`]).
    pub fn count(mut self, sockhash: Option<std::os::fd::OwnedFd>) -> Self {
        self.sockets = sockhash.map_or(0, |fd| {
            crate::accel::count_sockets(std::os::fd::AsFd::as_fd(&fd))
        });
        self
    }

    fn uncounted(a: &crate::accel::Accel) -> Self {
        AccelView {
            enabled: a.enabled(),
            sockets: 0,
            max_queue_bytes: a.max_queue,
            link: a.link.clone(),
            guards: a.guards.clone().unwrap_or_default(),
            unguarded: a.guards.as_ref().err().cloned(),
            node: a.node,
            counters: a
                .stats()
                .into_iter()
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
        }
    }
}
