//! `sluiced --config <file>`: a TOML file, every key optional. Every path is
//! configurable so several daemons (one per test "node") can share a kernel.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the packaged config lives; `sluicectl` reads it too.
pub const DEFAULT_CONFIG: &str = "/etc/sluice/sluiced.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// clsact filters (a tcx attach waits for an RCU grace period; see
    /// docs/decisions.md).
    Auto,
    Tcx,
    Clsact,
}

/// How this node reaches the other nodes' pods (see `routing.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Direct routes to the nodes on a shared link, VXLAN to the rest.
    Auto,
    /// Direct routes only (every node on one L2).
    Direct,
    /// VXLAN to every node.
    Vxlan,
    /// No node routes (another component routes pod ranges, e.g. BGP).
    Off,
}

impl RoutingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Auto => "auto",
            RoutingMode::Direct => "direct",
            RoutingMode::Vxlan => "vxlan",
            RoutingMode::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    bpffs: Option<PathBuf>,
    pin_path: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    metrics_address: Option<String>,
    api_allowed_uids: Option<Vec<u32>>,
    tc_attach: Option<TcAttach>,
    reconcile_interval_seconds: Option<u64>,
    edge_check_interval_seconds: Option<u64>,
    services_dir: Option<PathBuf>,
    node_name: Option<String>,
    maglev_table_size: Option<u32>,
    maglev_seed: Option<u64>,
    service_cidrs: Option<Vec<String>>,
    max_removal_percent: Option<u8>,
    max_frontends: Option<u32>,
    max_endpoints_per_frontend: Option<u32>,
    accel: Option<bool>,
    accel_max_queue_bytes: Option<u32>,
    accel_node: Option<bool>,
    routing: Option<RoutingMode>,
    vxlan_vni: Option<u32>,
    vxlan_port: Option<u16>,
    nodeport_range: Option<String>,
    snat_port_range: Option<String>,
    external_mode: Option<String>,
    external_ip_cidrs: Option<Vec<String>>,
    nodeport_devices: Option<Vec<String>>,
    masquerade: Option<bool>,
    non_masquerade_cidrs: Option<Vec<String>>,
    kubernetes: Option<bool>,
    kubeconfig: Option<PathBuf>,
    api_server: Option<String>,
    api_page_size: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The plugin's `stateDir`: endpoint records live in `<state_dir>/endpoints`.
    pub state_dir: PathBuf,
    /// The API socket (the plugin's `daemonSocket`).
    pub socket: PathBuf,
    /// Where a bpf filesystem is (mounted there if it is not).
    pub bpffs: PathBuf,
    /// This daemon's pins: `maps/` and `links/` below it.
    pub pin_path: PathBuf,
    /// cgroup v2 root for the socket programs; `None` detects it.
    pub cgroup_root: Option<PathBuf>,
    /// `/metrics` and `/healthz`; `None` turns the listener off.
    pub metrics_address: Option<SocketAddr>,
    /// Peers (by `SO_PEERCRED` uid) allowed on the API.
    pub api_allowed_uids: Vec<u32>,
    pub tc_attach: TcAttach,
    /// How often records and the kernel are compared again after start.
    pub reconcile_interval: Duration,
    /// How often every pod's edge is checked (and repaired).
    pub edge_check_interval: Duration,
    /// Standalone service source: a directory of Service and EndpointSlice
    /// manifests, watched. `None`: service maps are left alone.
    pub services_dir: Option<PathBuf>,
    /// This node's name (for `internalTrafficPolicy: Local`); default the
    /// hostname.
    pub node_name: Option<String>,
    /// Maglev table size (a prime) and seed: the same on every node.
    pub maglev_table_size: u32,
    pub maglev_seed: u64,
    /// The cluster's service ranges: frontends only from these, backends
    /// never in them.
    pub service_cidrs: Vec<ipnetwork::IpNetwork>,
    /// A pass that would remove more than this share of the programmed
    /// frontends at once is held back (100: never).
    pub max_removal_percent: u8,
    /// What the service maps are sized for.
    pub capacity: sluice_dataplane::maps::Capacity,
    /// Same-node TCP acceleration (sockmap) at start; `sluicectl accel
    /// on|off` switches it at runtime.
    pub accel: bool,
    /// The most a reader may have queued of redirected data before its
    /// writer falls back to TCP (and blocks where TCP would): the budget is
    /// half the reader's receive buffer as it stands, at most this; `None`:
    /// `net.ipv4.tcp_rmem`'s maximum.
    pub accel_max_queue_bytes: Option<u32>,
    /// Whether the node's own servers take part in the acceleration (a
    /// pod's connection to a socket in the node's netns): `None` where the
    /// guards run, `Some(true)` also without them (the operator vouches
    /// that the node's servers read with read/recv only), `Some(false)`
    /// never.
    pub accel_node: Option<bool>,
    /// How the other nodes' pod ranges are routed (from the Node objects of
    /// the service source).
    pub routing: RoutingMode,
    /// The overlay's VXLAN network identifier and UDP port: the same on
    /// every node.
    pub vxlan_vni: u32,
    pub vxlan_port: u16,
    /// NodePorts are served only in this range (kube-apiserver's
    /// `--service-node-port-range`).
    pub nodeport_range: (u16, u16),
    /// Source ports SNATed external flows leave from: outside the kernel's
    /// default ephemeral range (32768-60999), so they never meet a local
    /// socket's.
    pub snat_port_range: (u16, u16),
    /// How external traffic reaches remote backends, for services without
    /// the `sluice.dev/external-mode` annotation.
    pub external_mode: crate::services::model::ExternalMode,
    /// The ranges a Service's `externalIPs` may be in (default none: every
    /// ExternalIP is ignored, the CVE-2020-8554 mitigation).
    pub external_ip_cidrs: Vec<ipnetwork::IpNetwork>,
    /// The devices NodePorts and external addresses are served on; `None`:
    /// the device holding the node's address (from its Node object).
    pub nodeport_devices: Option<Vec<String>>,
    /// Pods' traffic to destinations outside the cluster leaves from the
    /// node's address (on the external devices).
    pub masquerade: bool,
    /// Destinations reached with the pod's own address besides the
    /// cluster's pod and service ranges (a VPC's, a peered network's).
    pub non_masquerade_cidrs: Vec<ipnetwork::IpNetwork>,
    /// The Kubernetes API as the service source (Services, EndpointSlices,
    /// Nodes); `None`: not used. Exclusive with `services_dir`.
    pub kubernetes: Option<crate::services::api::ApiSettings>,
}

/// `lo-hi`, both ports, lo <= hi.
fn parse_port_range(key: &str, s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{key} {s:?} is not a port range like 30000-32767");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// kubeadm's and kind's default service ranges.
pub const DEFAULT_SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/12", "fd00:10:96::/112"];

impl Default for Config {
    fn default() -> Self {
        let state_dir = PathBuf::from("/var/run/sluice");
        Config {
            socket: state_dir.join("sluiced.sock"),
            state_dir,
            bpffs: "/sys/fs/bpf".into(),
            pin_path: "/sys/fs/bpf/sluice".into(),
            cgroup_root: None,
            metrics_address: Some(([127, 0, 0, 1], 9963).into()),
            api_allowed_uids: vec![0],
            tc_attach: TcAttach::Auto,
            reconcile_interval: Duration::from_secs(30),
            edge_check_interval: Duration::from_secs(5),
            services_dir: None,
            node_name: None,
            maglev_table_size: crate::maglev::DEFAULT_TABLE_SIZE,
            maglev_seed: crate::maglev::DEFAULT_SEED,
            service_cidrs: DEFAULT_SERVICE_CIDRS
                .iter()
                .map(|c| c.parse().expect("a valid default CIDR"))
                .collect(),
            max_removal_percent: 50,
            capacity: sluice_dataplane::maps::Capacity::DEFAULT,
            accel: true,
            accel_max_queue_bytes: None,
            accel_node: None,
            routing: RoutingMode::Auto,
            vxlan_vni: 1,
            vxlan_port: 8472,
            nodeport_range: crate::services::translate::DEFAULT_NODEPORT_RANGE,
            snat_port_range: (61000, 65535),
            external_mode: Default::default(),
            external_ip_cidrs: Vec::new(),
            nodeport_devices: None,
            masquerade: true,
            non_masquerade_cidrs: Vec::new(),
            kubernetes: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ConfigError::Invalid {
            path: path.into(),
            reason,
        })
    }

    /// Like [`Config::load`], but a missing file means the defaults (for
    /// `sluicectl` on a node that runs the daemon with the defaults).
    pub fn load_or_default(path: &Path) -> Result<Self, ConfigError> {
        match Self::load(path) {
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Config::default())
            }
            r => r,
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let d = Config::default();
        let state_dir = raw.state_dir.unwrap_or(d.state_dir);
        let socket = raw.socket.unwrap_or_else(|| state_dir.join("sluiced.sock"));
        let metrics_address = match raw.metrics_address.as_deref() {
            None => d.metrics_address,
            Some("") | Some("off") => None,
            Some(a) => Some(a.parse().map_err(|e| {
                format!("metrics_address {a:?} is not host:port ({e}); use \"\" to turn it off")
            })?),
        };
        let c = Config {
            state_dir,
            socket,
            bpffs: raw.bpffs.unwrap_or(d.bpffs),
            pin_path: raw.pin_path.unwrap_or(d.pin_path),
            cgroup_root: raw.cgroup_root,
            metrics_address,
            api_allowed_uids: raw.api_allowed_uids.unwrap_or(d.api_allowed_uids),
            tc_attach: raw.tc_attach.unwrap_or(d.tc_attach),
            reconcile_interval: Duration::from_secs(
                raw.reconcile_interval_seconds
                    .unwrap_or(d.reconcile_interval.as_secs()),
            ),
            edge_check_interval: Duration::from_secs(
                raw.edge_check_interval_seconds
                    .unwrap_or(d.edge_check_interval.as_secs()),
            ),
            services_dir: raw.services_dir,
            node_name: raw.node_name,
            maglev_table_size: raw.maglev_table_size.unwrap_or(d.maglev_table_size),
            maglev_seed: raw.maglev_seed.unwrap_or(d.maglev_seed),
            service_cidrs: match raw.service_cidrs {
                None => d.service_cidrs,
                Some(list) => list
                    .iter()
                    .map(|c| parse_cidr(c))
                    .collect::<Result<_, _>>()?,
            },
            max_removal_percent: raw.max_removal_percent.unwrap_or(d.max_removal_percent),
            capacity: sluice_dataplane::maps::Capacity {
                frontends: raw.max_frontends.unwrap_or(d.capacity.frontends),
                endpoints_per_frontend: raw
                    .max_endpoints_per_frontend
                    .unwrap_or(d.capacity.endpoints_per_frontend),
            },
            accel: raw.accel.unwrap_or(d.accel),
            accel_max_queue_bytes: raw.accel_max_queue_bytes,
            accel_node: raw.accel_node,
            routing: raw.routing.unwrap_or(d.routing),
            vxlan_vni: raw.vxlan_vni.unwrap_or(d.vxlan_vni),
            vxlan_port: raw.vxlan_port.unwrap_or(d.vxlan_port),
            nodeport_range: match &raw.nodeport_range {
                Some(r) => parse_port_range("nodeport_range", r)?,
                None => d.nodeport_range,
            },
            snat_port_range: match &raw.snat_port_range {
                Some(r) => parse_port_range("snat_port_range", r)?,
                None => d.snat_port_range,
            },
            external_mode: match &raw.external_mode {
                Some(m) => crate::services::model::ExternalMode::parse(m)
                    .map_err(|e| format!("external_mode: {e}"))?,
                None => d.external_mode,
            },
            external_ip_cidrs: match raw.external_ip_cidrs {
                None => d.external_ip_cidrs,
                Some(list) => list
                    .iter()
                    .map(|c| parse_cidr(c))
                    .collect::<Result<_, _>>()?,
            },
            nodeport_devices: raw.nodeport_devices,
            masquerade: raw.masquerade.unwrap_or(d.masquerade),
            non_masquerade_cidrs: match raw.non_masquerade_cidrs {
                None => d.non_masquerade_cidrs,
                Some(list) => list
                    .iter()
                    .map(|c| parse_cidr(c))
                    .collect::<Result<_, _>>()?,
            },
            kubernetes: match raw.kubernetes {
                Some(true) => Some(crate::services::api::ApiSettings {
                    kubeconfig: raw.kubeconfig,
                    api_server: raw.api_server,
                    page_size: raw.api_page_size.unwrap_or(500),
                }),
                _ if raw.kubeconfig.is_some()
                    || raw.api_server.is_some()
                    || raw.api_page_size.is_some() =>
                {
                    return Err(
                        "kubeconfig, api_server and api_page_size are settings of the Kubernetes \
                         API source: set kubernetes = true as well"
                            .into(),
                    )
                }
                _ => None,
            },
        };
        if let Some(k) = &c.kubernetes {
            if c.services_dir.is_some() {
                return Err(
                    "services_dir and kubernetes = true are two service sources: choose one".into(),
                );
            }
            if let Some(u) = &k.api_server {
                if !(u.starts_with("https://") || u.starts_with("http://"))
                    || u.parse::<http::Uri>().is_err()
                {
                    return Err(format!(
                        "api_server {u:?} is not a URL like https://192.168.1.10:6443"
                    ));
                }
            }
            if k.page_size == 0 {
                return Err("api_page_size must be at least 1".into());
            }
        }
        let (lo, hi) = c.nodeport_range;
        let (slo, shi) = c.snat_port_range;
        if slo <= hi && lo <= shi {
            return Err(format!(
                "snat_port_range {slo}-{shi} overlaps nodeport_range {lo}-{hi}"
            ));
        }
        if !(1..1 << 24).contains(&c.vxlan_vni) {
            return Err(format!(
                "vxlan_vni {} must be 1-16777215 (24 bits)",
                c.vxlan_vni
            ));
        }
        if c.vxlan_port == 0 {
            return Err("vxlan_port must not be 0 (Linux and Flannel use 8472, IANA 4789)".into());
        }
        let cap = c.capacity;
        if cap.frontends == 0 || cap.endpoints_per_frontend == 0 {
            return Err("max_frontends and max_endpoints_per_frontend must be at least 1".into());
        }
        if u64::from(cap.frontends) * u64::from(cap.endpoints_per_frontend) * 2 > 1 << 28 {
            return Err(format!(
                "max_frontends {} x max_endpoints_per_frontend {} is more than the service maps \
                 can hold (at most 134 million pairs)",
                cap.frontends, cap.endpoints_per_frontend
            ));
        }
        if !(1..=100).contains(&c.max_removal_percent) {
            return Err(format!(
                "max_removal_percent {} must be 1-100 (100: never hold a removal back)",
                c.max_removal_percent
            ));
        }
        if !crate::maglev::is_prime(c.maglev_table_size) || c.maglev_table_size < 101 {
            return Err(format!(
                "maglev_table_size {} must be a prime of at least 101 (default 16381; 65521 for services with several hundred backends)",
                c.maglev_table_size
            ));
        }
        for (key, p) in [
            ("state_dir", &c.state_dir),
            ("socket", &c.socket),
            ("bpffs", &c.bpffs),
            ("pin_path", &c.pin_path),
        ] {
            if !p.is_absolute() {
                return Err(format!(
                    "{key} must be an absolute path, not {}",
                    p.display()
                ));
            }
        }
        if !c.pin_path.starts_with(&c.bpffs) {
            return Err(format!(
                "pin_path {} is not below bpffs {}",
                c.pin_path.display(),
                c.bpffs.display()
            ));
        }
        if c.socket.as_os_str().len() > 107 {
            return Err(format!(
                "socket path {} is longer than a unix socket allows (107 bytes)",
                c.socket.display()
            ));
        }
        if c.reconcile_interval.is_zero() {
            return Err("reconcile_interval_seconds must be at least 1".into());
        }
        if let Some(q) = c.accel_max_queue_bytes.filter(|q| *q < 64 << 10) {
            return Err(format!(
                "accel_max_queue_bytes {q} is below 64 KiB: every bulk writer would fall back to TCP"
            ));
        }
        if c.edge_check_interval.is_zero() {
            return Err("edge_check_interval_seconds must be at least 1".into());
        }
        Ok(c)
    }

    /// This node's name and where it came from: `node_name`, else the
    /// `NODE_NAME` environment variable (the DaemonSet's downward API),
    /// else the hostname.
    pub fn resolved_node_name(&self) -> (Option<String>, &'static str) {
        if let Some(n) = &self.node_name {
            return (Some(n.clone()), "node_name in the config");
        }
        if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
            return (Some(n), "the NODE_NAME environment variable");
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok());
        (host, "the hostname")
    }

    pub fn pins(&self) -> sluice_dataplane::pins::Pins {
        sluice_dataplane::pins::Pins::new(&self.pin_path)
    }

    /// Every pinned map, the service maps sized for [`Config::capacity`].
    pub fn map_specs(&self) -> Vec<sluice_dataplane::maps::MapSpec> {
        sluice_dataplane::maps::sized(&self.capacity)
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.pins().maps()
    }

    pub fn cgroup_links_dir(&self) -> PathBuf {
        self.pins().cgroup_links()
    }

    pub fn tc_links_dir(&self) -> PathBuf {
        self.pins().tc_links()
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("sluiced.lock")
    }
}

/// A service range: a network address with its prefix, nothing else.
fn parse_cidr(c: &str) -> Result<ipnetwork::IpNetwork, String> {
    let n: ipnetwork::IpNetwork = c
        .parse()
        .map_err(|e| format!("service_cidrs: {c:?} is not a CIDR ({e})"))?;
    if !c.contains('/') || n.network() != n.ip() {
        return Err(format!(
            "service_cidrs: {c:?} must be a network address with its prefix, like 10.96.0.0/12"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn socket_follows_state_dir() {
        let c = Config::parse("state_dir = \"/tmp/x\"").unwrap();
        assert_eq!(c.socket, Path::new("/tmp/x/sluiced.sock"));
    }

    #[test]
    fn every_key_parses() {
        let c = Config::parse(
            r#"
            state_dir = "/run/a"
            socket = "/run/a/api.sock"
            bpffs = "/sys/fs/bpf"
            pin_path = "/sys/fs/bpf/node1"
            cgroup_root = "/sys/fs/cgroup/unified"
            metrics_address = "127.0.0.1:0"
            api_allowed_uids = [0, 1000]
            tc_attach = "clsact"
            reconcile_interval_seconds = 5
            edge_check_interval_seconds = 2
            "#,
        )
        .unwrap();
        assert_eq!(c.tc_attach, TcAttach::Clsact);
        assert_eq!(c.api_allowed_uids, vec![0, 1000]);
        assert_eq!(c.reconcile_interval, Duration::from_secs(5));
        assert_eq!(c.edge_check_interval, Duration::from_secs(2));
        assert_eq!(c.tc_links_dir(), Path::new("/sys/fs/bpf/node1/links/tc"));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("pin_path = \"/tmp/pins\"", "not below bpffs"),
            ("state_dir = \"rel\"", "absolute"),
            ("metrics_address = \"nope\"", "host:port"),
            ("tc_attach = \"xdp\"", "unknown variant"),
            ("typo = 1", "unknown field"),
            ("reconcile_interval_seconds = 0", "at least 1"),
            ("edge_check_interval_seconds = 0", "at least 1"),
            ("maglev_table_size = 16380", "must be a prime"),
            ("service_cidrs = [\"10.96.0.1/12\"]", "network address"),
            ("service_cidrs = [\"10.96.0.0\"]", "network address"),
            ("service_cidrs = [\"nope\"]", "not a CIDR"),
            ("max_removal_percent = 0", "1-100"),
            ("max_frontends = 0", "at least 1"),
            (
                "max_frontends = 4000000\nmax_endpoints_per_frontend = 100",
                "more than",
            ),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert_eq!(
            Config::parse("metrics_address = \"\"")
                .unwrap()
                .metrics_address,
            None
        );
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The packaged file parses and says exactly the defaults.
    #[test]
    fn conf_sluiced_toml_is_the_defaults() {
        let text = include_str!("../../conf/sluiced.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }
}
