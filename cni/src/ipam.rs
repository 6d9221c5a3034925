//! Address management for the plugin: `sluice-ipam` in-process (no exec on
//! the pod start path), any other `ipam.type` delegated as the spec says.

use crate::delegate;
use crate::plugin::Invocation;
use ipnetwork::IpNetwork;
use sluice_common::cni::{codes, CniError, Command, Dns, Env, Route};
use sluice_ipam::{Allocator, DiskStore, IpamConfig};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

pub const IN_PROCESS_TYPE: &str = "sluice-ipam";

/// One address for the pod, with its subnet's prefix as IPAM gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

/// `sluice-ipam` run in-process. The ranges are parsed only for ADD and
/// STATUS, so a pod stays deletable after its network's ranges were edited
/// into something invalid.
#[derive(Debug)]
pub struct Local {
    network: String,
    ipam: serde_json::Value,
    data_dir: PathBuf,
}

impl Local {
    /// The network's store, created if needed (ADD, STATUS).
    fn create_store(&self) -> Result<DiskStore, CniError> {
        DiskStore::open(&self.data_dir, &self.network).map_err(ipam_err)
    }

    /// The network's store if it exists; DEL, CHECK and GC create nothing.
    fn existing_store(&self) -> Result<Option<DiskStore>, CniError> {
        DiskStore::open_existing(&self.data_dir, &self.network).map_err(ipam_err)
    }
}

#[derive(Debug)]
pub enum Ipam {
    InProcess(Local),
    Delegated { plugin_type: String, stdin: Vec<u8> },
}

/// The node's pod ranges, one range set per family, from the
/// `<stateDir>/node.json` sluiced writes from this node's Node object
/// (`spec.podCIDRs`): what a conflist without ranges allocates from, so
/// one conflist serves every node. A range that changes is only used for
/// new pods: addresses already reserved stay with their pods until DEL.
fn node_ranges(state_dir: &std::path::Path) -> Result<serde_json::Value, CniError> {
    let path = state_dir.join("node.json");
    let retry = |why: String| {
        CniError::new(
            codes::TRY_AGAIN_LATER,
            format!("ipam has no ranges and this node's pod range is not known yet: {why}"),
            "sluiced writes it from the node's Node object (spec.podCIDRs); wait for it, or set \
             ipam.ranges in the network config",
        )
    };
    let text = std::fs::read(&path).map_err(|e| retry(format!("{}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| retry(format!("{} is not JSON: {e}", path.display())))?;
    let sets: Vec<serde_json::Value> = v["podCIDRs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str())
                .map(|c| serde_json::json!([{ "subnet": c }]))
                .collect()
        })
        .unwrap_or_default();
    if sets.is_empty() {
        return Err(retry(format!("{} lists no podCIDRs", path.display())));
    }
    Ok(serde_json::Value::Array(sets))
}

fn ipam_err(e: sluice_ipam::IpamError) -> CniError {
    e.to_cni()
}

impl Ipam {
    pub fn from_netconf(inv: &Invocation) -> Result<Self, CniError> {
        let ipam = sluice_ipam::config::ipam_object(&inv.conf)?;
        let plugin_type = ipam.get("type").and_then(|t| t.as_str()).unwrap_or("");
        if plugin_type == IN_PROCESS_TYPE {
            let mut ipam = ipam.clone();
            if ipam.get("ranges").is_none() && ipam.get("subnet").is_none() {
                ipam["ranges"] = node_ranges(&inv.plugin.state_dir)?;
            }
            Ok(Ipam::InProcess(Local {
                network: inv.conf.name.clone(),
                data_dir: IpamConfig::data_dir_of(&ipam)?,
                ipam,
            }))
        } else if plugin_type.is_empty() {
            Err(CniError::config(
                "ipam has no \"type\"",
                "set ipam.type to sluice-ipam, or to another IPAM plugin in CNI_PATH",
            ))
        } else {
            Ok(Ipam::Delegated {
                plugin_type: plugin_type.to_string(),
                stdin: inv.stdin.clone(),
            })
        }
    }

    /// Reserves the pod's addresses; returns them with the IPAM's extra
    /// routes and DNS settings.
    pub fn add(&mut self, env: &Env) -> Result<(Vec<Lease>, Vec<Route>, Dns), CniError> {
        match self {
            Ipam::InProcess(local) => {
                let config = IpamConfig::parse(&local.ipam)?;
                let store = local.create_store()?;
                let mut alloc = Allocator::new(&config, store);
                let got = alloc
                    .allocate(&env.container_id, &env.ifname)
                    .map_err(ipam_err)?;
                let leases = got
                    .into_iter()
                    .map(|a| Lease {
                        address: a.address,
                        gateway: Some(a.gateway),
                    })
                    .collect();
                Ok((leases, config.routes.clone(), Dns::default()))
            }
            Ipam::Delegated { plugin_type, stdin } => {
                let res = delegate::run(env, plugin_type, Command::Add, stdin)?
                    .expect("ADD always returns a result");
                if res.ips.is_empty() {
                    // Nothing was reserved that we could use; give back what
                    // the delegate may hold.
                    let _ = delegate::run(env, plugin_type, Command::Del, stdin);
                    return Err(CniError::new(
                        codes::DELEGATE_FAILED,
                        format!("IPAM plugin {plugin_type} returned no address"),
                        "check its ranges",
                    ));
                }
                let leases = res
                    .ips
                    .iter()
                    .map(|ip| Lease {
                        address: ip.address,
                        gateway: ip.gateway,
                    })
                    .collect();
                Ok((leases, res.routes, res.dns))
            }
        }
    }

    /// Releases the pod's addresses; idempotent.
    pub fn del(&mut self, env: &Env) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(local) => {
                let Some(store) = local.existing_store()? else {
                    return Ok(());
                };
                Allocator::without_ranges(store)
                    .release(&env.container_id, &env.ifname)
                    .map(drop)
                    .map_err(ipam_err)
            }
            Ipam::Delegated { plugin_type, stdin } => {
                delegate::run(env, plugin_type, Command::Del, stdin).map(drop)
            }
        }
    }

    /// Checks that the attachment still holds exactly `ips`.
    pub fn check(&mut self, env: &Env, ips: &[IpAddr]) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(local) => {
                let held = match local.existing_store()? {
                    Some(store) => Allocator::without_ranges(store)
                        .get(&env.container_id, &env.ifname)
                        .map_err(ipam_err)?,
                    None => Vec::new(),
                };
                let missing: Vec<String> = ips
                    .iter()
                    .filter(|ip| !held.contains(ip))
                    .map(|ip| ip.to_string())
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(CniError::new(
                        codes::CHECK_FAILED,
                        format!("IPAM holds no reservation of {}", missing.join(", ")),
                        "",
                    ))
                }
            }
            Ipam::Delegated { plugin_type, stdin } => {
                delegate::run(env, plugin_type, Command::Check, stdin).map(drop)
            }
        }
    }

    /// Code 50 when no ADD could succeed now (a range set full, the store
    /// not writable).
    pub fn status(&mut self, env: &Env) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(local) => {
                let config = IpamConfig::parse(&local.ipam)?;
                let store = local
                    .create_store()
                    .map_err(|e| CniError::new(codes::PLUGIN_NOT_AVAILABLE, e.msg, e.details))?;
                let status = Allocator::new(&config, store).status().map_err(ipam_err)?;
                if let Err(e) = status.writable {
                    let e = e.to_cni();
                    return Err(CniError::new(codes::PLUGIN_NOT_AVAILABLE, e.msg, e.details));
                }
                if let Some(full) = status.sets.iter().find(|s| s.exhausted()) {
                    return Err(CniError::new(
                        codes::PLUGIN_NOT_AVAILABLE,
                        format!(
                            "IPAM range set {} ({}) is exhausted: {} of {} addresses in use",
                            full.label, full.ranges, full.used, full.capacity
                        ),
                        "delete pods, or widen the range in the network config",
                    ));
                }
                Ok(())
            }
            Ipam::Delegated { plugin_type, stdin } => {
                delegate::run(env, plugin_type, Command::Status, stdin).map(drop)
            }
        }
    }

    pub fn gc(&mut self, env: &Env, valid: &HashSet<(String, String)>) -> Result<(), CniError> {
        match self {
            Ipam::InProcess(local) => {
                let Some(store) = local.existing_store()? else {
                    return Ok(());
                };
                Allocator::without_ranges(store)
                    .gc(valid)
                    .map(drop)
                    .map_err(ipam_err)
            }
            Ipam::Delegated { plugin_type, stdin } => {
                delegate::run(env, plugin_type, Command::Gc, stdin).map(drop)
            }
        }
    }
}
