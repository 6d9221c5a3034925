//! Node routing: this node's routes to the other nodes' pod ranges, kept
//! equal to the node list the service source reads.
//!
//! - **direct**: a route `<their pod range> via <their address>` where
//!   their address is on one of this node's links (same L2);
//! - **vxlan**: an overlay device (`sluice.vxlan`, learning off) with, per
//!   other node, a route `<their pod range> via <their tunnel address>
//!   onlink`, a permanent neighbour entry for that tunnel address (their
//!   device's MAC) and a forwarding entry sending that MAC to their
//!   underlay address. A node's tunnel address is its pod range's network
//!   address; its device MAC is derived from its underlay address, so every
//!   node computes the same entries without talking to the others;
//! - **auto**: direct to the nodes on a shared link, VXLAN to the rest.
//!
//! Routes carry protocol 0x5d; only those, and only entries on our own
//! VXLAN device, are ever removed. A list that does not contain this node
//! is not trusted: nothing programmed changes until it does. What is
//! programmed stays across a daemon restart (pods keep their traffic) and
//! is compared with the kernel again every reconcile interval, so a route
//! deleted by hand comes back.
//!
//! The pod MTU follows: the underlay's, less the encapsulation (50 bytes
//! over IPv4, 70 over IPv6) while VXLAN is in use; it is written to
//! `<state_dir>/node.json`, where the plugin reads it for pods whose
//! network config sets no `mtu`.

use crate::config::{Config, RoutingMode};
use crate::nodes::{self, ClusterNode};
use crate::services::model::Rejection;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use sluice_cni::netlink::{self, Netlink};
use sluice_cni::netlink_node::{
    delete_node_route_op, fdb_op, node_route_op, tunnel_neighbour_op, NeighbourEntry, NodeRoute,
    VxlanSpec,
};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The overlay device's name.
pub const VXLAN_DEVICE: &str = "sluice.vxlan";

/// VXLAN's encapsulation: outer IPv4 (20) or IPv6 (40), UDP (8), VXLAN
/// (8) and the inner Ethernet header (14).
pub fn vxlan_overhead(underlay_v6: bool) -> u32 {
    if underlay_v6 {
        70
    } else {
        50
    }
}

/// The MAC of a node's VXLAN device: locally administered, unicast, from
/// its underlay address (FNV-1a), the same on every node.
pub fn vxlan_mac(underlay: IpAddr) -> [u8; 6] {
    let bytes = match underlay {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x0a, b[0], b[1], b[2], b[3], b[4]]
}

/// How one other node is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    /// "direct" or "vxlan".
    pub via: String,
    /// `<pod range> via <next hop>`.
    pub routes: Vec<String>,
}

/// What node routing did last, for the API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoutingStatus {
    pub mode: String,
    pub node_name: String,
    /// This node's pod ranges, from its Node object.
    pub pod_cidrs: Vec<String>,
    /// The MTU pods get (written to node.json).
    pub pod_mtu: Option<u32>,
    pub underlay_device: Option<String>,
    pub peers: Vec<PeerView>,
    pub rejected: Vec<Rejection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub passes: u64,
    /// NodePorts and external addresses: where they are served, counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<crate::external::ExternalView>,
}

/// Node routing's handle: node lists go in, status comes out.
#[derive(Debug)]
pub struct Routing {
    tx: Mutex<mpsc::Sender<Vec<ClusterNode>>>,
    status: Arc<Mutex<RoutingStatus>>,
    /// External traffic's counters, read at each request.
    ext_stats: Option<crate::external::Counters>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Routing {
    /// Starts the routing thread (in the daemon's netns); `None` when
    /// `routing = "off"`.
    pub fn start(cfg: &Config) -> anyhow::Result<Option<Arc<Self>>> {
        if cfg.routing == RoutingMode::Off {
            return Ok(None);
        }
        let (node_name, _) = cfg.resolved_node_name();
        let node_name = node_name.unwrap_or_default();
        let status = Arc::new(Mutex::new(RoutingStatus {
            mode: cfg.routing.as_str().into(),
            node_name: node_name.clone(),
            ..Default::default()
        }));
        let (tx, rx) = mpsc::channel();
        let mut w = Worker {
            nl: Netlink::open()?,
            mode: cfg.routing,
            vni: cfg.vxlan_vni,
            port: cfg.vxlan_port,
            node_name,
            service_cidrs: cfg.service_cidrs.clone(),
            node_file: cfg.state_dir.join("node.json"),
            status: status.clone(),
            ext: match crate::external::External::open(cfg) {
                Ok(e) => Some(e),
                Err(e) => {
                    warn!(
                        "NodePorts and external addresses are not served on this node: {}",
                        crate::datapath::error_chain(e.as_ref())
                    );
                    None
                }
            },
        };
        let ext_stats = w
            .ext
            .as_ref()
            .and_then(|_| crate::external::Counters::open(cfg).ok());
        let every = cfg.reconcile_interval;
        std::thread::Builder::new()
            .name("sluiced-routing".into())
            .spawn(move || w.run(rx, every))?;
        Ok(Some(Arc::new(Routing {
            tx: Mutex::new(tx),
            status,
            ext_stats,
        })))
    }

    /// A new node list (every Node object the source holds).
    pub fn update(&self, nodes: Vec<ClusterNode>) {
        let _ = lock(&self.tx).send(nodes);
    }

    pub fn status(&self) -> RoutingStatus {
        let mut st = lock(&self.status).clone();
        if let (Some(x), Some(c)) = (st.external.as_mut(), &self.ext_stats) {
            x.counters = c.read();
        }
        st
    }
}

struct Worker {
    nl: Netlink,
    mode: RoutingMode,
    vni: u32,
    port: u16,
    node_name: String,
    service_cidrs: Vec<IpNetwork>,
    node_file: PathBuf,
    status: Arc<Mutex<RoutingStatus>>,
    /// External traffic's datapath (`None` when it could not load).
    ext: Option<crate::external::External>,
}

/// What the kernel should hold.
#[derive(Debug, Default)]
struct Desired {
    routes: Vec<NodeRoute>,
    /// The overlay device, when any node is reached through it.
    vxlan: Option<VxlanSpec>,
    /// This node's tunnel addresses (on the overlay device).
    tunnel_addrs: Vec<IpNetwork>,
    neighbours: Vec<NeighbourEntry>,
    fdb: Vec<NeighbourEntry>,
    pod_mtu: Option<u32>,
    pod_cidrs: Vec<IpNetwork>,
    peers: Vec<PeerView>,
    rejected: Vec<Rejection>,
    underlay_device: Option<String>,
    underlay_index: Option<u32>,
}

fn host_net(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix is valid")
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<Vec<ClusterNode>>, every: Duration) {
        crate::housekeeping_priority();
        let mut last: Option<Vec<ClusterNode>> = None;
        let mut next = Instant::now() + every;
        loop {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(mut nodes) => {
                    while let Ok(n) = rx.try_recv() {
                        nodes = n;
                    }
                    last = Some(nodes);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => next = Instant::now() + every,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if let Some(nodes) = &last {
                self.pass(nodes);
            }
        }
    }

    /// One comparison of the plan with the kernel, and its repair.
    fn pass(&mut self, nodes: &[ClusterNode]) {
        let plan = nodes::plan(&self.node_name, nodes, &self.service_cidrs);
        let mut warnings = Vec::new();
        let result = match &plan.own {
            // A source without Node objects (a single node, or services
            // only): nothing to route, nothing to say.
            None if nodes.is_empty() => Ok(None),
            None => {
                warnings.push(format!(
                    "node {:?} is not in the node list ({} nodes): node routes are kept as they are \
                     until it is (set node_name to this node's Kubernetes name)",
                    self.node_name,
                    nodes.len()
                ));
                Ok(None)
            }
            Some(own) => self.desired(own, &plan.peers).and_then(|d| {
                let overlay = self.apply(&d)?;
                let ext = match self.ext.as_mut() {
                    Some(x) => {
                        Some(x.sync(&mut self.nl, own, &plan.peers, d.underlay_index, overlay)?)
                    }
                    None => None,
                };
                Ok(Some((d, ext)))
            }),
        };
        let mut st = lock(&self.status);
        st.passes += 1;
        let mut rejected = plan.rejected;
        match result {
            Ok(Some((d, ext))) => {
                st.external = ext;
                rejected.extend(d.rejected);
                st.pod_cidrs = d.pod_cidrs.iter().map(ToString::to_string).collect();
                if st.peers != d.peers {
                    info!(
                        peers = d.peers.len(),
                        vxlan = d.vxlan.is_some(),
                        pod_mtu = d.pod_mtu,
                        "node routes programmed"
                    );
                }
                st.peers = d.peers;
                st.pod_mtu = d.pod_mtu;
                st.underlay_device = d.underlay_device;
                st.last_error = None;
            }
            Ok(None) => {}
            Err(e) => {
                if st.last_error.as_deref() != Some(e.as_str()) {
                    warn!("node routing: {e}; retried every reconcile interval");
                }
                st.last_error = Some(e);
            }
        }
        rejected.sort();
        for r in rejected.iter().filter(|r| !st.rejected.contains(r)) {
            warn!(object = %r.object, "node rejected: {}", r.reason);
        }
        for w in warnings.iter().filter(|w| !st.warnings.contains(w)) {
            warn!("{w}");
        }
        st.rejected = rejected;
        st.warnings = warnings;
    }

    fn desired(&mut self, own: &ClusterNode, peers: &[ClusterNode]) -> Result<Desired, String> {
        let nl_err = |e: netlink::NlError| e.to_string();
        let underlay = own
            .address(false)
            .or(own.address(true))
            .ok_or_else(|| format!("this node's Node object ({}) has no address", own.name))?;
        let dev = self
            .nl
            .device_with_address(underlay)
            .map_err(nl_err)?
            .ok_or_else(|| {
                format!(
                    "this node's address {underlay} (from its Node object) is on none of its \
                     links: check node_name and the Node's status.addresses"
                )
            })?;
        let link = self
            .nl
            .link_by_index(dev)
            .map_err(nl_err)?
            .ok_or_else(|| format!("link #{dev} went away"))?;
        let underlay_mtu = link.mtu.unwrap_or(1500);
        let mut d = Desired {
            underlay_device: Some(link.name.clone()),
            underlay_index: Some(dev),
            pod_cidrs: own.pod_cidrs.clone(),
            ..Default::default()
        };
        let mut overlay_peers: Vec<(&ClusterNode, IpAddr)> = Vec::new();
        for p in peers {
            let reject = |d: &mut Desired, reason: String| {
                d.rejected.push(Rejection {
                    object: format!("Node {}", p.name),
                    reason,
                    service: None,
                })
            };
            let mut direct = Vec::new();
            let mut overlay = self.mode == RoutingMode::Vxlan;
            if !overlay {
                for c in &p.pod_cidrs {
                    let gw = p.address(c.is_ipv6());
                    let route = match gw {
                        Some(gw) => self.nl.route_to(gw).map_err(nl_err)?,
                        None => None,
                    };
                    match (gw, route) {
                        (Some(gw), Some((oif, None))) => direct.push(NodeRoute {
                            dst: *c,
                            gateway: gw,
                            oif,
                            onlink: false,
                            mtu: None,
                        }),
                        _ if self.mode == RoutingMode::Auto => overlay = true,
                        (None, _) => reject(
                            &mut d,
                            format!(
                                "its pod range {c} has no {} address to route through; \
                                 routing = \"direct\" needs one (or use \"auto\" or \"vxlan\")",
                                crate::services::model::family_of(c.ip())
                            ),
                        ),
                        (Some(gw), r) => reject(
                            &mut d,
                            format!(
                                "its address {gw} is not on a link of this node ({}); routing = \
                                 \"direct\" needs the nodes on one L2 (use \"auto\" or \"vxlan\")",
                                match r {
                                    Some((_, Some(via))) => format!("reached via {via}"),
                                    _ => "no route to it".into(),
                                }
                            ),
                        ),
                    }
                }
            }
            if overlay {
                match p.address(underlay.is_ipv6()) {
                    Some(u) => overlay_peers.push((p, u)),
                    None => reject(
                        &mut d,
                        format!(
                            "it has no {} address for the VXLAN underlay",
                            crate::services::model::family_of(underlay)
                        ),
                    ),
                }
            } else if !direct.is_empty() {
                d.peers.push(PeerView {
                    name: p.name.clone(),
                    via: "direct".into(),
                    routes: direct
                        .iter()
                        .map(|r| format!("{} via {}", r.dst, r.gateway))
                        .collect(),
                });
                d.routes.extend(direct);
            }
        }
        let overhead = vxlan_overhead(underlay.is_ipv6());
        d.pod_mtu = Some(underlay_mtu);
        if !overlay_peers.is_empty() || self.mode == RoutingMode::Vxlan {
            let mtu = underlay_mtu.saturating_sub(overhead);
            d.pod_mtu = Some(mtu);
            d.vxlan = Some(VxlanSpec {
                name: VXLAN_DEVICE.into(),
                vni: self.vni,
                port: self.port,
                local: underlay,
                link: dev,
                mac: vxlan_mac(underlay),
                mtu,
            });
            d.tunnel_addrs = own
                .pod_cidrs
                .iter()
                .map(|c| host_net(c.network()))
                .collect();
            for (p, u) in overlay_peers {
                let mac = vxlan_mac(u);
                d.fdb.push(NeighbourEntry { ip: u, mac });
                let mut routes = Vec::new();
                for c in &p.pod_cidrs {
                    d.neighbours.push(NeighbourEntry {
                        ip: c.network(),
                        mac,
                    });
                    routes.push(NodeRoute {
                        dst: *c,
                        gateway: c.network(),
                        oif: 0, // the overlay device's, filled in by apply
                        onlink: true,
                        mtu: None,
                    });
                }
                d.peers.push(PeerView {
                    name: p.name.clone(),
                    via: "vxlan".into(),
                    routes: routes
                        .iter()
                        .map(|r| format!("{} via {} (VXLAN to {u})", r.dst, r.gateway))
                        .collect(),
                });
                d.routes.extend(routes);
            }
        }
        d.neighbours.sort();
        d.fdb.sort();
        Ok(d)
    }

    /// Makes the kernel hold `d`: the overlay device first (routes need
    /// it), then every route, neighbour and forwarding entry, then what is
    /// ours and no longer wanted goes.
    /// Returns the overlay device's ifindex when there is one.
    fn apply(&mut self, d: &Desired) -> Result<Option<u32>, String> {
        let nl_err = |e: netlink::NlError| e.to_string();
        let mut routes = d.routes.clone();
        let vx = match &d.vxlan {
            Some(spec) => Some(self.ensure_vxlan(spec, &d.tunnel_addrs)?),
            None => {
                if self.nl.delete_link(VXLAN_DEVICE).map_err(nl_err)? {
                    info!("{VXLAN_DEVICE} removed: no node is reached through the overlay now");
                }
                None
            }
        };
        for r in routes.iter_mut().filter(|r| r.onlink) {
            r.oif = vx.unwrap_or(0);
        }
        routes.sort();
        let current = self.nl.node_routes().map_err(nl_err)?;
        let mut ops = Vec::new();
        for r in &routes {
            if !current.contains(r) {
                ops.push(node_route_op(r));
            }
        }
        for r in &current {
            if !routes.iter().any(|w| w.dst == r.dst) {
                ops.push(delete_node_route_op(r.dst));
            }
        }
        if let Some(vx) = vx {
            let have = self.nl.neighbours(vx, false).map_err(nl_err)?;
            for n in &d.neighbours {
                if !have.contains(n) {
                    ops.push(tunnel_neighbour_op(vx, n, false));
                }
            }
            for n in have.iter().filter(|n| !d.neighbours.contains(n)) {
                ops.push(tunnel_neighbour_op(vx, n, true));
            }
            let have = self.nl.neighbours(vx, true).map_err(nl_err)?;
            for n in &d.fdb {
                if !have.contains(n) {
                    ops.push(fdb_op(vx, n, false));
                }
            }
            for n in have.iter().filter(|n| !d.fdb.contains(n)) {
                ops.push(fdb_op(vx, n, true));
            }
        }
        // Routes and entries go in before stale ones leave, in one batch;
        // the first failure is reported and the next pass tries again.
        self.nl.batch(ops).map_err(nl_err)?;
        if let Some(mtu) = d.pod_mtu {
            self.write_node_file(mtu, &d.pod_cidrs)
                .map_err(|e| format!("writing {}: {e}", self.node_file.display()))?;
        }
        Ok(vx)
    }

    /// The overlay device as `spec` says, with this node's tunnel
    /// addresses on it and up; returns its ifindex.
    fn ensure_vxlan(&mut self, spec: &VxlanSpec, addrs: &[IpNetwork]) -> Result<u32, String> {
        let nl_err = |e: netlink::NlError| e.to_string();
        let index = match self.nl.vxlan(&spec.name).map_err(nl_err)? {
            Some(x) if x.matches(spec) => {
                if x.mtu != Some(spec.mtu) || x.mac != Some(spec.mac) {
                    self.nl
                        .set_mtu_mac(x.index, spec.mtu, spec.mac)
                        .map_err(nl_err)?;
                }
                x.index
            }
            existing => {
                if existing.is_some() {
                    info!(
                        device = spec.name,
                        "replacing the overlay device (its VNI, port or underlay changed)"
                    );
                    self.nl.delete_link(&spec.name).map_err(nl_err)?;
                }
                let i = self.nl.create_vxlan(spec).map_err(nl_err)?;
                info!(
                    device = spec.name,
                    vni = spec.vni,
                    port = spec.port,
                    local = %spec.local,
                    mtu = spec.mtu,
                    "overlay device created"
                );
                i
            }
        };
        let have = self.nl.addresses(index).map_err(nl_err)?;
        // A tunnel address no longer ours (the pod range changed) goes.
        let link_local = |a: &IpNetwork| match a.ip() {
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
            IpAddr::V4(v4) => v4.is_link_local(),
        };
        for a in have.iter().filter(|a| !addrs.contains(a) && !link_local(a)) {
            self.nl.delete_address(index, *a).map_err(nl_err)?;
        }
        let mut ops: Vec<_> = addrs
            .iter()
            .filter(|a| !have.contains(a))
            .map(|a| netlink::address_op(index, *a))
            .collect();
        ops.push(netlink::set_up_op(index, None));
        self.nl.batch(ops).map_err(nl_err)?;
        Ok(index)
    }

    /// `node.json`: what the plugin reads of this node (its pod MTU),
    /// replaced atomically and only when it changes.
    fn write_node_file(&self, mtu: u32, pod_cidrs: &[IpNetwork]) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "nodeName": self.node_name,
            "podCIDRs": pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "podMTU": mtu,
        }))
        .expect("JSON of plain values");
        if std::fs::read_to_string(&self.node_file).is_ok_and(|t| t == text) {
            return Ok(());
        }
        sluice_common::fsutil::write_atomic(&self.node_file, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_macs_are_unicast_local_and_differ() {
        let a = vxlan_mac("192.168.0.1".parse().unwrap());
        let b = vxlan_mac("192.168.0.2".parse().unwrap());
        assert_ne!(a, b);
        for m in [a, b] {
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(a, vxlan_mac("192.168.0.1".parse().unwrap()), "stable");
    }
}
