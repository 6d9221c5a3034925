//! External traffic's datapath on this node (the programs are in
//! `dataplane-bpf/bpf/include/nodeport.h`): the tc programs on the node's
//! external devices and the overlay device, through tcx links pinned at
//! `links/tc/ext-<ifindex>-{ingress,egress}`, and the maps they read: the
//! nodes' addresses, which node each pod range is on, and the SNAT source.
//!
//! Kept equal to the node list by node routing, on every change and every
//! reconcile interval: a link detached or replaced by hand comes back, a
//! device that went away loses its pins, an upgraded program replaces the
//! old one in place (same link).

use crate::config::Config;
use crate::nodes::ClusterNode;
use aya::programs::SchedClassifier;
use serde::{Deserialize, Serialize};
use sluice_cni::netlink::Netlink;
use sluice_dataplane::maps::{
    self, bytes_of, ExtCfg, NodeAddrKey, PodNode, PodNodeKey, NODE_ADDR_F_LOCAL,
    NODE_ADDR_F_REMOTE, POD_NODE_F_LOCAL,
};
use sluice_dataplane::sys::{self, TcxHook};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use tracing::info;

/// What external traffic's datapath holds, for the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalView {
    /// Devices the programs are attached to.
    pub devices: Vec<String>,
    /// This node's addresses NodePorts are served on.
    pub node_addresses: Vec<String>,
    pub counters: BTreeMap<String, u64>,
}

/// A read handle on the pinned counters.
pub struct Counters(aya::maps::PerCpuArray<aya::maps::MapData, u64>);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counters")
    }
}

impl Counters {
    pub fn open(cfg: &Config) -> anyhow::Result<Self> {
        let m = sluice_dataplane::load::open_pinned(&cfg.maps_dir(), &maps::EXTSTAT)?;
        Ok(Counters(aya::maps::PerCpuArray::try_from(m)?))
    }

    pub fn read(&self) -> BTreeMap<String, u64> {
        crate::datapath::per_cpu_counts(Some(&self.0), &maps::EXT_STATS)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }
}

struct Prog {
    fd: OwnedFd,
    id: u32,
}

pub struct External {
    ingress: Prog,
    egress: Prog,
    node_addrs: OwnedFd,
    pod_nodes: OwnedFd,
    nomasq: OwnedFd,
    masquerade: bool,
    /// Reached unmasqueraded besides every node's pod ranges.
    no_masq_ranges: Vec<ipnetwork::IpNetwork>,
    cfg_map: OwnedFd,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    links_dir: PathBuf,
    devices: Option<Vec<String>>,
    snat_range: (u16, u16),
    nodeport_range: (u16, u16),
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("External")
            .field("ingress", &self.ingress.id)
            .field("egress", &self.egress.id)
            .finish_non_exhaustive()
    }
}

fn load_prog(obj: &mut aya::Ebpf, name: &'static str) -> anyhow::Result<Prog> {
    let p: &mut SchedClassifier = sluice_dataplane::load::load_program(obj, "tc_ext", name)?;
    let fd = crate::datapath::owned_fd(p.fd()).map_err(anyhow::Error::msg)?;
    let id = sys::prog_info(fd.as_fd())?.id;
    Ok(Prog { fd, id })
}

fn pinned(cfg: &Config, spec: &maps::MapSpec) -> anyhow::Result<OwnedFd> {
    let p = cfg.maps_dir().join(spec.name);
    sys::obj_get(&p).map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))
}

/// Makes `map` hold exactly `want` (keys and values as bytes).
fn sync_map(
    map: &OwnedFd,
    key_size: usize,
    want: &BTreeMap<Vec<u8>, Vec<u8>>,
    what: &str,
) -> Result<(), String> {
    let have = sys::map_keys(map.as_fd(), key_size).map_err(|e| format!("listing {what}: {e}"))?;
    for (k, v) in want {
        sys::map_update(map.as_fd(), k, v, 0).map_err(|e| format!("writing {what}: {e}"))?;
    }
    for k in have.iter().filter(|k| !want.contains_key(*k)) {
        match sys::map_delete(map.as_fd(), k) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                return Err(format!("removing from {what}: {e}"))
            }
            _ => {}
        }
    }
    Ok(())
}

impl External {
    /// Loads the programs (their maps pinned beside the rest).
    pub fn open(cfg: &Config) -> anyhow::Result<Self> {
        let (mut obj, _) = sluice_dataplane::load::load_object_carrying(
            "tc_ext",
            sluice_dataplane::TC_EXT,
            &cfg.maps_dir(),
            &cfg.map_specs(),
        )?;
        let ingress = load_prog(&mut obj, sluice_dataplane::TC_EXT_INGRESS)?;
        let egress = load_prog(&mut obj, sluice_dataplane::TC_EXT_EGRESS)?;
        let stats = aya::maps::PerCpuArray::try_from(crate::datapath::take_map(
            &mut obj,
            maps::EXTSTAT.name,
        )?)?;
        Ok(External {
            ingress,
            egress,
            node_addrs: pinned(cfg, &maps::NODE_ADDRS)?,
            pod_nodes: pinned(cfg, &maps::POD_NODES)?,
            nomasq: pinned(cfg, &maps::NOMASQ)?,
            masquerade: cfg.masquerade,
            no_masq_ranges: cfg
                .service_cidrs
                .iter()
                .chain(&cfg.non_masquerade_cidrs)
                .copied()
                .collect(),
            cfg_map: pinned(cfg, &maps::EXT_CFG)?,
            stats,
            links_dir: cfg.tc_links_dir(),
            devices: cfg.nodeport_devices.clone(),
            snat_range: cfg.snat_port_range,
            nodeport_range: cfg.nodeport_range,
        })
    }

    /// Programs the maps for `own` and `peers` and attaches to this node's
    /// external devices (the configured ones, else `underlay`) and the
    /// overlay device.
    pub fn sync(
        &mut self,
        nl: &mut Netlink,
        own: &ClusterNode,
        peers: &[ClusterNode],
        underlay: Option<u32>,
        overlay: Option<u32>,
    ) -> Result<ExternalView, String> {
        let nl_err = |e: sluice_cni::netlink::NlError| e.to_string();
        let mut devices: Vec<(u32, String)> = Vec::new();
        match &self.devices {
            Some(names) => {
                for n in names {
                    match nl.link_by_name(n).map_err(nl_err)? {
                        Some(l) => devices.push((l.index, l.name)),
                        None => {
                            return Err(format!(
                                "nodeport_devices: device {n} does not exist on this node"
                            ))
                        }
                    }
                }
            }
            None => {
                if let Some(i) = underlay {
                    if let Some(l) = nl.link_by_index(i).map_err(nl_err)? {
                        devices.push((l.index, l.name));
                    }
                }
            }
        }
        let mut attach_to = devices.clone();
        if let Some(i) = overlay {
            attach_to.push((i, crate::routing::VXLAN_DEVICE.into()));
        }

        // This node's addresses: its Node object's and its external
        // devices' global ones.
        let mut local: Vec<IpAddr> = own.addresses.clone();
        for (i, _) in &devices {
            for a in nl.addresses(*i).map_err(nl_err)? {
                let ip = a.ip();
                let global = match ip {
                    IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                    IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
                };
                if global && !local.contains(&ip) {
                    local.push(ip);
                }
            }
        }
        let mut addrs = BTreeMap::new();
        for p in peers {
            for a in &p.addresses {
                addrs.insert(
                    bytes_of(&NodeAddrKey::new(*a)).to_vec(),
                    NODE_ADDR_F_REMOTE.to_ne_bytes().to_vec(),
                );
            }
        }
        for a in &local {
            addrs.insert(
                bytes_of(&NodeAddrKey::new(*a)).to_vec(),
                NODE_ADDR_F_LOCAL.to_ne_bytes().to_vec(),
            );
        }
        sync_map(
            &self.node_addrs,
            std::mem::size_of::<NodeAddrKey>(),
            &addrs,
            maps::NODE_ADDRS.name,
        )?;
        let mut ranges = BTreeMap::new();
        for (n, flags) in peers
            .iter()
            .map(|p| (p, 0))
            .chain(std::iter::once((own, POD_NODE_F_LOCAL)))
        {
            let mut v = PodNode {
                flags,
                ..Default::default()
            };
            if let Some(IpAddr::V4(a)) = n.address(false) {
                v.addr4 = a.octets();
            }
            if let Some(IpAddr::V6(a)) = n.address(true) {
                v.addr6 = a.octets();
            }
            for c in &n.pod_cidrs {
                ranges.insert(
                    bytes_of(&PodNodeKey::new(*c)).to_vec(),
                    bytes_of(&v).to_vec(),
                );
            }
        }
        sync_map(
            &self.pod_nodes,
            std::mem::size_of::<PodNodeKey>(),
            &ranges,
            maps::POD_NODES.name,
        )?;
        let mut nomasq = BTreeMap::new();
        for r in peers
            .iter()
            .chain(std::iter::once(own))
            .flat_map(|n| &n.pod_cidrs)
            .chain(&self.no_masq_ranges)
        {
            nomasq.insert(
                bytes_of(&PodNodeKey::new(*r)).to_vec(),
                1u32.to_ne_bytes().to_vec(),
            );
        }
        sync_map(
            &self.nomasq,
            std::mem::size_of::<PodNodeKey>(),
            &nomasq,
            maps::NOMASQ.name,
        )?;
        let mut c = ExtCfg {
            flags: if self.masquerade {
                maps::EXT_CFG_F_MASQ
            } else {
                0
            },
            snat_min: self.snat_range.0,
            snat_max: self.snat_range.1,
            np_min: self.nodeport_range.0,
            np_max: self.nodeport_range.1,
            ..Default::default()
        };
        if let Some(IpAddr::V4(a)) = own.address(false) {
            c.addr4 = a.octets();
        }
        if let Some(IpAddr::V6(a)) = own.address(true) {
            c.addr6 = a.octets();
        }
        sys::map_update(self.cfg_map.as_fd(), &0u32.to_ne_bytes(), bytes_of(&c), 0)
            .map_err(|e| format!("writing {}: {e}", maps::EXT_CFG.name))?;

        self.attach(&attach_to)?;
        Ok(ExternalView {
            devices: attach_to.iter().map(|(_, n)| n.clone()).collect(),
            node_addresses: local.iter().map(ToString::to_string).collect(),
            counters: self.counters(),
        })
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        crate::datapath::per_cpu_counts(Some(&self.stats), &maps::EXT_STATS)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn link_path(&self, ifindex: u32, hook: TcxHook) -> PathBuf {
        let h = match hook {
            TcxHook::Ingress => "ingress",
            TcxHook::Egress => "egress",
        };
        self.links_dir.join(format!("ext-{ifindex}-{h}"))
    }

    /// Our links on each device's tcx ingress and egress, running the
    /// current programs; pins of devices no longer wanted go.
    fn attach(&self, devices: &[(u32, String)]) -> Result<(), String> {
        for (ifindex, name) in devices {
            for (hook, prog) in [
                (TcxHook::Ingress, &self.ingress),
                (TcxHook::Egress, &self.egress),
            ] {
                let path = self.link_path(*ifindex, hook);
                match sys::pinned_link_info(&path) {
                    Ok(i) if i.tcx_ifindex == *ifindex && i.prog_id == prog.id => continue,
                    Ok(i) if i.tcx_ifindex == *ifindex => {
                        let link = sys::obj_get(&path).map_err(|e| e.to_string())?;
                        let old = sys::prog_fd_by_id(i.prog_id).map_err(|e| e.to_string())?;
                        sys::link_update(link.as_fd(), prog.fd.as_fd(), old.as_fd())
                            .map_err(|e| format!("updating the program on {name}: {e}"))?;
                        info!(device = %name, "external traffic program updated in place");
                        continue;
                    }
                    _ => {}
                }
                let _ = std::fs::remove_file(&path);
                let link = sys::tcx_link_create_at(prog.fd.as_fd(), *ifindex, hook)
                    .map_err(|e| format!("attaching to {name}'s tcx {hook:?}: {e}"))?;
                sys::obj_pin(link.as_fd(), &path)
                    .map_err(|e| format!("pinning {}: {e}", path.display()))?;
                info!(device = %name, hook = ?hook, "external traffic program attached");
            }
        }
        let keep: Vec<PathBuf> = devices
            .iter()
            .flat_map(|(i, _)| {
                [
                    self.link_path(*i, TcxHook::Ingress),
                    self.link_path(*i, TcxHook::Egress),
                ]
            })
            .collect();
        for e in std::fs::read_dir(&self.links_dir)
            .map_err(|e| format!("reading {}: {e}", self.links_dir.display()))?
            .flatten()
        {
            let p = e.path();
            let is_ext = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ext-"));
            if is_ext && !keep.contains(&p) {
                let _ = std::fs::remove_file(&p);
                info!(pin = %p.display(), "external traffic link removed (device no longer served)");
            }
        }
        Ok(())
    }
}

/// Ports sockets of this netns hold: TCP listeners and bound UDP sockets,
/// by protocol (from `/proc/net/{tcp,tcp6,udp,udp6}`).
pub fn ports_in_use() -> std::collections::BTreeSet<(crate::services::model::Protocol, u16)> {
    use crate::services::model::Protocol;
    let mut out = std::collections::BTreeSet::new();
    for (file, proto, listen_only) in [
        ("/proc/net/tcp", Protocol::Tcp, true),
        ("/proc/net/tcp6", Protocol::Tcp, true),
        ("/proc/net/udp", Protocol::Udp, false),
        ("/proc/net/udp6", Protocol::Udp, false),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
                continue;
            };
            // 0A: TCP_LISTEN.
            if listen_only && *state != "0A" {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                out.insert((proto, port));
            }
        }
    }
    out
}
