//! Same-node TCP acceleration (sockmap; docs/sockmap.md): the sockops
//! program on the cgroup v2 root through a pinned link, the sk_msg program
//! attached to the pinned SOCKHASH, the node's switch and limits in
//! `sluice_acc_cfg`, and the counters.
//!
//! Everything lives in pins: a restarted daemon finds the link and the map
//! (with its sockets and its program) as it left them, so open connections
//! keep their acceleration across a restart. Turning the switch off stops
//! every redirect at the next message, adds no new socket, and drains open
//! connections out of the map. The daemon removes a socket from the map
//! only when sk_msg queued it (`sluice_sk_evict`): nothing was ever
//! redirected to it, or nothing redirected can reach it any more and its
//! queue is read, because the kernel frees a removed socket's unread
//! redirected data.

use crate::datapath::{
    error_chain, keep_or_attach, owned_fd, take_map, CgroupRoot, DatapathError, LinkState,
};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{Lsm, SkMsg, SockOps};
use aya::Ebpf;
use sluice_dataplane::load::{self, LoadError};
use sluice_dataplane::maps::{self, AccelCfg};
use sluice_dataplane::sys;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use tracing::{info, warn};

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
    /// The guards' links, or why they cannot be attached on this kernel
    /// (then only pods that opted in are accelerated).
    pub guards: Result<Vec<LinkState>, String>,
    /// Redirected bytes a reader may have waiting (see
    /// `Config::accel_max_queue_bytes`).
    pub max_queue: u32,
    /// Whether the node's own accepted sockets may join, paired with a
    /// pod's (`Config::accel_node`, else where the guards run).
    pub node: bool,
}

impl std::fmt::Debug for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accel").field("link", &self.link).finish()
    }
}

/// Sockets in the sockhash `fd` now (a walk of its keys).
pub fn count_sockets(fd: std::os::fd::BorrowedFd<'_>) -> usize {
    sys::count_keys(fd, size_of::<maps::SkPairKey>()).unwrap_or(0)
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
        cgroup: &CgroupRoot,
        links_dir: &Path,
        enabled: bool,
        max_queue: Option<u32>,
        node: Option<bool>,
    ) -> Result<Self, DatapathError> {
        let attach_err = |name: &str, detail: String| DatapathError::Attach {
            program: name.into(),
            target: "the cgroup v2 root".into(),
            detail,
        };
        let name = sluice_dataplane::ACCEL_SOCKOPS;
        let pin = links_dir.join(name);
        let sockops = load::load_program::<SockOps>(obj, "accel", name)?;
        let own = owned_fd(sockops.fd());
        let link = keep_or_attach(
            name,
            &pin,
            cgroup.id,
            own.as_ref().map(|f| f.as_fd()).map_err(String::clone),
            || {
                let prog = own.as_ref().map_err(String::clone)?;
                let fd = sys::cgroup_link_create(
                    prog.as_fd(),
                    cgroup.file.as_fd(),
                    sys::BPF_CGROUP_SOCK_OPS,
                )
                .map_err(|e| format!("BPF_LINK_CREATE: {e}"))?;
                sys::obj_pin(fd.as_fd(), &pin)
                    .map_err(|e| format!("pinning {}: {e}", pin.display()))?;
                sys::pinned_link_info(&pin).map_err(|e| format!("reading {}: {e}", pin.display()))
            },
        )
        .map_err(|e| attach_err(name, e))?;

        let sockhash = map_fd(obj, maps::SOCKHASH.name, links_dir)?;
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

        let cfg = Array::try_from(take_map(obj, maps::ACCEL_CFG.name)?)
            .map_err(crate::datapath::map_err(maps::ACCEL_CFG.name, "open"))?;
        let stats = PerCpuArray::try_from(take_map(obj, maps::ACCELSTAT.name)?)
            .map_err(crate::datapath::map_err(maps::ACCELSTAT.name, "open"))?;
        start_evictor(obj, links_dir)?;
        let guards = attach_guards(obj, links_dir);
        if let Err(why) = &guards {
            warn!(
                "the acceleration's guards cannot run here ({why}): only pods annotated \
                 sluice.dev/accel: \"true\" are accelerated (docs/sockmap.md)"
            );
        }
        let node = node.unwrap_or(guards.is_ok());
        let mut a = Accel {
            cfg,
            stats,
            sockhash,
            link,
            node,
            guards,
            max_queue: {
                let cap = rmem_max();
                max_queue.map_or(cap, |q| q.min(cap))
            },
        };
        a.set_enabled(enabled)?;
        info!(
            enabled,
            guarded = a.guards.is_ok(),
            node = a.node,
            max_queue = a.max_queue,
            "same-node TCP acceleration ready"
        );
        Ok(a)
    }

    /// Turns acceleration on or off for the whole node: off, every send
    /// goes through TCP from its next message on, no socket is added, and
    /// each open connection drains out of the map (accel.h, accel_drain);
    /// on, new connections are accelerated.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), DatapathError> {
        let v = AccelCfg {
            enabled: u32::from(enabled),
            rmem_max: self.max_queue,
            msg_cost: MSG_COST,
            flags: if self.guards.is_err() {
                maps::ACC_F_OPT_IN_ONLY
            } else {
                0
            } | if self.node { maps::ACC_F_NODE } else { 0 },
        };
        self.cfg
            .set(0, v, 0)
            .map_err(crate::datapath::map_err(maps::ACCEL_CFG.name, "write"))
    }

    pub fn enabled(&self) -> bool {
        self.cfg.get(&0, 0).map(|c| c.enabled != 0).unwrap_or(false)
    }

    /// A descriptor of the sockhash of our own, to count its sockets
    /// (`count_sockets`) without holding whatever holds `self`.
    pub fn sockhash(&self) -> std::io::Result<OwnedFd> {
        self.sockhash.try_clone()
    }

    /// The counters, summed over CPUs, by name (`maps::ACCEL_STATS`).
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        crate::datapath::per_cpu_counts(Some(&self.stats), &maps::ACCEL_STATS)
    }
}

/// Whether the bpf LSM is active: listed in `/sys/kernel/security/lsm`
/// (securityfs mounted there first if it is not).
fn bpf_lsm_active() -> Result<(), String> {
    let list = Path::new("/sys/kernel/security/lsm");
    if !list.exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let active = std::fs::read_to_string(list)
        .map_err(|e| format!("cannot read {}: {e}", list.display()))?;
    if active.trim().split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "the bpf LSM is not active (active: {}; boot with lsm=...,bpf)",
            active.trim()
        ))
    }
}

/// Loads and attaches every guard, each through a pinned link under
/// `links_dir` (kept when a restart finds the same program there); all or
/// none: a partly guarded node would not be guarded.
fn attach_guards(obj: &mut Ebpf, links_dir: &Path) -> Result<Vec<LinkState>, String> {
    bpf_lsm_active()?;
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {}", error_chain(&e)))?;
    let mut out = Vec::new();
    let mut made = Vec::new();
    let result = (|| {
        for (name, hook) in sluice_dataplane::ACCEL_GUARDS {
            let pin = links_dir.join(name);
            let prog: &mut Lsm = obj
                .program_mut(name)
                .ok_or_else(|| format!("no program {name}"))?
                .try_into()
                .map_err(|e| error_chain(&e))?;
            prog.load(hook, &btf)
                .map_err(|e| format!("loading {name} (lsm/{hook}): {}", error_chain(&e)))?;
            let fd = prog.fd().map_err(|e| error_chain(&e))?;
            if let Ok(info) = sys::pinned_link_info(&pin) {
                let same = info.link_type == sys::LINK_TYPE_TRACING
                    && sys::prog_fd_by_id(info.prog_id)
                        .and_then(|f| sys::same_program(f.as_fd(), fd.as_fd()))
                        .unwrap_or(false);
                if same {
                    out.push(LinkState {
                        program: name.into(),
                        id: info.id,
                        prog_id: info.prog_id,
                        pin: pin.clone(),
                        outcome: crate::datapath::LinkOutcome::Reused,
                    });
                    continue;
                }
            }
            let id = prog
                .attach()
                .map_err(|e| format!("attaching {name} (lsm/{hook}): {}", error_chain(&e)))?;
            let link = aya::programs::links::FdLink::from(
                prog.take_link(id).map_err(|e| error_chain(&e))?,
            );
            // Pinned aside, then renamed over an older build's guard: the
            // old link goes with its pin.
            let aside = pin.with_extension("new");
            let _ = std::fs::remove_file(&aside);
            drop(
                link.pin(&aside)
                    .map_err(|e| format!("pinning {}: {}", aside.display(), error_chain(&e)))?,
            );
            std::fs::rename(&aside, &pin)
                .map_err(|e| format!("renaming {} to {}: {e}", aside.display(), pin.display()))?;
            made.push(pin.clone());
            let info = sys::pinned_link_info(&pin).map_err(|e| e.to_string())?;
            out.push(LinkState {
                program: name.into(),
                id: info.id,
                prog_id: info.prog_id,
                pin,
                outcome: crate::datapath::LinkOutcome::Created,
            });
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            for p in made {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// A descriptor of our own for map `name` of `obj`, which keeps it.
fn map_fd(obj: &Ebpf, name: &'static str, links_dir: &Path) -> Result<OwnedFd, DatapathError> {
    let map = obj.map(name).ok_or(LoadError::NoProgram {
        object: "accel",
        program: name,
    })?;
    let data: &aya::maps::MapData = match map {
        aya::maps::Map::Queue(m) | aya::maps::Map::HashMap(m) | aya::maps::Map::SockHash(m) => m,
        _ => {
            return Err(LoadError::NoProgram {
                object: "accel",
                program: name,
            }
            .into())
        }
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DatapathError::Io {
            what: "duplicate a map fd of the acceleration under",
            path: links_dir.into(),
            source,
        })
}

/// Whether the entry of socket `key` in `sluice_sk_peer` is a draining
/// connection's (`maps::SKP_F_DRAINING`).
fn draining(peers: BorrowedFd<'_>, key: &[u8]) -> bool {
    let mut v = maps::SkPeer::default();
    matches!(
        sys::map_lookup(peers, key, maps::bytes_of_mut(&mut v)),
        Ok(true)
    ) && v.flags & maps::SKP_F_DRAINING != 0
}

/// Takes sockets out of the map as sk_msg queues them (`sluice_sk_evict`;
/// sk_msg may not delete from a sockhash, userspace may): accepted sockets
/// whose reader turned out to block, and sockets whose peer is not in the
/// map (a server on another node, in the node's netns, outside the
/// cluster) or is leaving it. Nothing was ever redirected to such a socket
/// (sk_msg claims it first), or nothing redirected can reach it any more
/// and its queue is read (a draining connection's: accel.h, accel_drain),
/// so leaving frees no data; from then on it
/// sends and reads through plain TCP. Polls every few milliseconds, for as
/// long as the daemon runs; the pinned queue keeps what arrives while it
/// does not.
fn start_evictor(obj: &Ebpf, links_dir: &Path) -> Result<(), DatapathError> {
    let (queue, sockhash, peers) = (
        map_fd(obj, maps::SK_EVICT.name, links_dir)?,
        map_fd(obj, maps::SOCKHASH.name, links_dir)?,
        map_fd(obj, maps::SK_PEER.name, links_dir)?,
    );
    std::thread::Builder::new()
        .name("accel-evict".into())
        .spawn(move || loop {
            let mut key = [0u8; size_of::<maps::SkPairKey>()];
            match sys::map_pop(queue.as_fd(), &mut key) {
                Ok(true) => {
                    // Gone already (closed) is as good as taken out. A
                    // drained socket's entry stays until it closes: its
                    // peer, still in the map, finds the socket's psock
                    // through it before leaving too.
                    let _ = sys::map_delete(sockhash.as_fd(), &key);
                    if !draining(peers.as_fd(), &key) {
                        let _ = sys::map_delete(peers.as_fd(), &key);
                    }
                }
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => {
                    warn!("reading the acceleration's eviction queue: {e}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        })
        .map_err(|source| DatapathError::Io {
            what: "start the acceleration's eviction thread for",
            path: links_dir.into(),
            source,
        })?;
    Ok(())
}
