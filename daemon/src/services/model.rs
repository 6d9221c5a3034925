//! What the datapath is programmed with: one [`Frontend`] per (cluster IP,
//! port, protocol), carrying the service's behaviour and its backends.
//! Built by [`super::translate`] from Kubernetes objects, whatever source
//! they came from.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Kubernetes' spelling; `None` means the default, TCP.
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => {
                Err("protocol SCTP is not supported by Sluice's socket load balancing".into())
            }
            other => Err(format!("unknown protocol {other:?} (TCP or UDP)")),
        }
    }

    /// IPPROTO_* number, as the datapath keys it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The datapath's key for a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrontendKey {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

impl std::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:?}", self.addr, self.protocol)
    }
}

/// A backend's part in new connections, from its EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// ready: gets new connections.
    Ready,
    /// serving but terminating: gets new connections only while the
    /// frontend has no ready backend (kube-proxy's terminating fallback).
    ServingTerminating,
    /// terminating and no longer serving: established connections only.
    Terminating,
    /// not ready and not terminating: no new connections.
    NotReady,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    Random,
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub addr: SocketAddr,
    pub state: BackendState,
    /// On this node (its `nodeName` is ours).
    pub local: bool,
    /// Excluded by `internalTrafficPolicy: Local` (a backend of another node).
    pub excluded_by_policy: bool,
}

/// Where a frontend is reached from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    /// A cluster IP: pods and nodes, at the socket layer.
    #[default]
    ClusterIp,
    /// A NodePort: its key address is unspecified (`0.0.0.0` / `::`), the
    /// port is served on every address of every node.
    NodePort,
    /// An ExternalIP or a LoadBalancer ingress address.
    External,
}

/// How external traffic reaches a backend on another node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ExternalMode {
    /// The receiving node translates both addresses; replies come back
    /// through it.
    #[default]
    Snat,
    /// The backend's node answers the client directly.
    Dsr,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

impl ExternalMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "snat" => Ok(ExternalMode::Snat),
            "dsr" => Ok(ExternalMode::Dsr),
            "hybrid" => Ok(ExternalMode::Hybrid),
            other => Err(format!("{other:?} is not snat, dsr or hybrid")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub key: FrontendKey,
    pub service: ServiceRef,
    /// The ServicePort's name ("" when the service has one unnamed port).
    pub port_name: String,
    /// `sessionAffinity: ClientIP` timeout, in seconds.
    pub affinity_timeout: Option<u32>,
    pub internal_local: bool,
    pub selection: Selection,
    /// Every backend the slices list for this port and family, sorted.
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub kind: FrontendKind,
    /// `externalTrafficPolicy: Local` (NodePort and external frontends):
    /// only this node's backends, the client's address kept.
    #[serde(default)]
    pub external_local: bool,
    #[serde(default)]
    pub external_mode: ExternalMode,
    /// `healthCheckNodePort` (type LoadBalancer with
    /// `externalTrafficPolicy: Local`): where load balancers ask whether
    /// this node has local backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
}

impl Frontend {
    /// The datapath's `SLUICE_SVC_F_*` bits for where the frontend is
    /// reached from and how (selection apart).
    pub fn reach_flags(&self) -> u32 {
        use sluice_dataplane::maps as m;
        let mut f = match self.kind {
            FrontendKind::ClusterIp => return 0,
            FrontendKind::NodePort => m::SVC_F_NODEPORT,
            FrontendKind::External => m::SVC_F_EXTERNAL,
        };
        if self.external_local {
            f |= m::SVC_F_ETP_LOCAL;
        }
        f |= match self.external_mode {
            ExternalMode::Snat => 0,
            ExternalMode::Dsr => m::SVC_F_DSR_TCP | m::SVC_F_DSR_UDP,
            ExternalMode::Hybrid => m::SVC_F_DSR_TCP,
        };
        f
    }

    /// The backends new connections may go to: the ready ones; if there
    /// are none, the serving-terminating ones (as kube-proxy does); never
    /// one the traffic policy excludes. Empty means connect is refused.
    pub fn eligible(&self) -> Vec<SocketAddr> {
        let pick = |s: BackendState| -> Vec<SocketAddr> {
            self.backends
                .iter()
                .filter(|b| b.state == s && !b.excluded_by_policy)
                .map(|b| b.addr)
                .collect()
        };
        let ready = pick(BackendState::Ready);
        if ready.is_empty() {
            pick(BackendState::ServingTerminating)
        } else {
            ready
        }
    }
}

/// An object that could not be used, and why. Everything else still is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rejection {
    /// `Service ns/name`, `EndpointSlice ns/name`, or a file.
    pub object: String,
    pub reason: String,
    /// The service the object belongs to, when known (so an incremental
    /// pass can replace just that service's rejections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

pub fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}
