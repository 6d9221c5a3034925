//! Same-node TCP acceleration (sockmap; docs/sockmap.md): the sockops
//! program on the cgroup v2 root through a pinned link, the sk_msg program
//! attached to the pinned SOCKHASH, the node's switch and limits in
//! `sluice_acc_cfg`, and the counters.
//!
//! Everything lives in pins: a restarted daemon finds the link and the map
//! (with its sockets and its program) as it left them, so open connections
//! keep their acceleration across a restart. Turning the switch off stops
//! every redirect at the next message and adds no new socket; no socket is
//! ever removed from the map by the daemon, because the kernel frees a
//! removed socket's unread redirected data.

use crate::datapath::{error_chain, keep_or_attach, DatapathError, LinkState};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{SkMsg, SockOps};
use aya::Ebpf;
use sluice_dataplane::load::{self, LoadError};
use sluice_dataplane::maps::{self, AccelCfg};
use sluice_dataplane::sys;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use tracing::info;

/// What each redirected message costs the receiver beyond its bytes (the
/// `struct sk_msg` the kernel queues, from a 1 KiB slab), counted against
/// the receiver's buffer while any are queued.
pub const MSG_COST: u32 = 1024;

/// `net.ipv4.tcp_rmem`'s default maximum, if the sysctl cannot be read.
const DEFAULT_RMEM_MAX: u32 = 6 * 1024 * 1024;

pub struct Accel {
    cfg: Array<MapData, AccelCfg>,
    stats: PerCpuArray<MapData, u64>,
    sockhash: OwnedFd,
    pub link: LinkState,
}

impl std::fmt::Debug for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accel").field("link", &self.link).finish()
    }
}

/// How far TCP autotuning may grow a socket's receive buffer: the third
/// field of `net.ipv4.tcp_rmem` (pods' namespaces start with the node's).
pub fn rmem_max() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(DEFAULT_RMEM_MAX)
}

impl Accel {
    /// Loads both programs of the `accel` object, keeps or creates the
    /// pinned sockops link on `cgroup`, attaches sk_msg to the sockhash and
    /// writes the switch.
    pub fn open(
        obj: &mut Ebpf,
        cgroup: &std::fs::File,
        cgroup_id: u64,
        links_dir: &Path,
        enabled: bool,
    ) -> Result<Self, DatapathError> {
        let attach_err = |name: &str, detail: String| DatapathError::Attach {
            program: name.into(),
            target: "the cgroup v2 root".into(),
            detail,
        };
        let name = sluice_dataplane::ACCEL_SOCKOPS;
        let pin = links_dir.join(name);
        let sockops = load::load_program::<SockOps>(obj, "accel", name)?;
        let own = sockops.fd().map_err(|e| error_chain(&e)).and_then(|f| {
            f.as_fd()
                .try_clone_to_owned()
                .map_err(|e| format!("duplicating a program fd: {e}"))
        });
        let link = keep_or_attach(
            name,
            &pin,
            cgroup_id,
            own.as_ref().map(|f| f.as_fd()).map_err(String::clone),
            || {
                let prog = own.as_ref().map_err(String::clone)?;
                let fd =
                    sys::cgroup_link_create(prog.as_fd(), cgroup.as_fd(), sys::BPF_CGROUP_SOCK_OPS)
                        .map_err(|e| format!("BPF_LINK_CREATE: {e}"))?;
                sys::obj_pin(fd.as_fd(), &pin)
                    .map_err(|e| format!("pinning {}: {e}", pin.display()))?;
                sys::pinned_link_info(&pin).map_err(|e| format!("reading {}: {e}", pin.display()))
            },
        )
        .map_err(|e| attach_err(name, e))?;

        let sockhash = match obj.map(maps::SOCKHASH.name) {
            Some(aya::maps::Map::SockHash(m)) => {
                m.fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| DatapathError::Io {
                        what: "duplicate the sockhash fd of",
                        path: links_dir.into(),
                        source,
                    })?
            }
            _ => {
                return Err(LoadError::NoProgram {
                    object: "accel",
                    program: maps::SOCKHASH.name,
                }
                .into())
            }
        };
        let msg = load::load_program::<SkMsg>(obj, "accel", sluice_dataplane::ACCEL_SK_MSG)?;
        let msg_fd = msg
            .fd()
            .map_err(|e| attach_err(sluice_dataplane::ACCEL_SK_MSG, error_chain(&e)))?;
        // Attaching again (a restart) replaces the map's program in place;
        // sockets already in the map keep the program they were added with.
        sys::prog_attach(msg_fd.as_fd(), sockhash.as_fd(), sys::BPF_SK_MSG_VERDICT).map_err(
            |e| {
                attach_err(
                    sluice_dataplane::ACCEL_SK_MSG,
                    format!("BPF_PROG_ATTACH to {}: {e}", maps::SOCKHASH.name),
                )
            },
        )?;

        let take = |obj: &mut Ebpf, name: &'static str| {
            obj.take_map(name).ok_or(LoadError::NoProgram {
                object: "map",
                program: name,
            })
        };
        let cfg = Array::try_from(take(obj, maps::ACCEL_CFG.name)?)
            .map_err(crate::datapath::map_err(maps::ACCEL_CFG.name, "open"))?;
        let stats = PerCpuArray::try_from(take(obj, maps::ACCELSTAT.name)?)
            .map_err(crate::datapath::map_err(maps::ACCELSTAT.name, "open"))?;
        let mut a = Accel {
            cfg,
            stats,
            sockhash,
            link,
        };
        a.set_enabled(enabled)?;
        info!(
            enabled,
            rmem_max = rmem_max(),
            "same-node TCP acceleration ready"
        );
        Ok(a)
    }

    /// Turns acceleration on or off for the whole node: off, every send
    /// goes through TCP from its next message on and no socket is added.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), DatapathError> {
        let v = AccelCfg {
            enabled: u32::from(enabled),
            rmem_max: rmem_max(),
            msg_cost: MSG_COST,
            pad: 0,
        };
        self.cfg
            .set(0, v, 0)
            .map_err(crate::datapath::map_err(maps::ACCEL_CFG.name, "write"))
    }

    pub fn enabled(&self) -> bool {
        self.cfg.get(&0, 0).map(|c| c.enabled != 0).unwrap_or(false)
    }

    /// Sockets in the map now.
    pub fn sockets(&self) -> usize {
        sys::count_keys(self.sockhash.as_fd(), size_of::<maps::SkPairKey>()).unwrap_or(0)
    }

    /// The counters, summed over CPUs, by name (`maps::ACCEL_STATS`).
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        crate::datapath::per_cpu_counts(Some(&self.stats), &maps::ACCEL_STATS)
    }
}
