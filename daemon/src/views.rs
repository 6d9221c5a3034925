//! What the API answers with (and `sluicectl` reads back).

use crate::datapath::{LinkState, MapSummary, TcMode};
use serde::{Deserialize, Serialize};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tc_mode: Option<TcMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tc_link_id: Option<u32>,
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
    pub tc_mode: TcMode,
    pub host_cookie: u64,
    pub endpoints: usize,
    pub restore: RestoreView,
    pub socket_links: Vec<LinkState>,
    pub sock_ops: Vec<(String, u64)>,
    /// Service translations by outcome.
    #[serde(default)]
    pub lb_stats: Vec<(String, u64)>,
    pub maps: Vec<MapSummary>,
}
