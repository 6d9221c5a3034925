//! The loaded, attached and pinned datapath of one daemon.
//!
//! Maps are pinned by name under `<pin_path>/maps`, links under
//! `<pin_path>/links/{cgroup,tc}`. Opening reuses whatever is pinned: a link
//! already attached stays attached (same link ID) and only has its program
//! swapped in place if this build's program differs; nothing is detached or
//! flushed to start clean.

use crate::config::{Config, TcAttach};
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::links::{CgroupAttachMode, FdLink};
use aya::programs::{CgroupSock, CgroupSockAddr, SchedClassifier};
use aya::Ebpf;
use serde::Serialize;
use sluice_cni::edge::EdgeProg;
use sluice_common::endpoint::{EdgeMode, EdgeProgram};
use sluice_dataplane::load::{self, LoadError};
use sluice_dataplane::maps::{self, EdgeStats, Endpoint, SrcKey};
use sluice_dataplane::pins::Pins;
use sluice_dataplane::sys;
use std::collections::HashSet;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot mount a bpf filesystem at {path}: {source}; mount one (mount -t bpf bpffs {path}) or set bpffs")]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("{path} is not on a bpf filesystem; pin_path must be below a bpffs mount")]
    NotBpffs { path: PathBuf },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "cgroup_root {path} is neither a cgroup v2 mount nor an empty directory to mount one on; \
         set cgroup_root to the node's cgroup v2 mount or to an empty directory"
    )]
    NotCgroup2 { path: PathBuf },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot attach {program} {target}: {detail}")]
    Attach {
        program: String,
        target: String,
        detail: String,
    },
    #[error("map {map}: cannot {op}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        source: aya::maps::MapError,
    },
    #[error("tc_attach = \"tcx\" needs Linux 6.6 or newer; this kernel is older. Use \"clsact\" or \"auto\"")]
    NoTcx,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io {
        what,
        path: path.into(),
        source,
    }
}

pub(crate) fn map_err(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op, source }
}

/// What happened to a link when the daemon (re)started or attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkOutcome {
    /// Already pinned and attached with this program: left alone.
    Reused,
    /// Already pinned and attached; its program was swapped in place.
    Updated,
    /// Attached and pinned now.
    Created,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LinkState {
    pub program: String,
    pub id: u32,
    pub prog_id: u32,
    pub pin: PathBuf,
    pub outcome: LinkOutcome,
}

pub struct Datapath {
    pub pins: Pins,
    maps_dir: PathBuf,
    tc_links_dir: PathBuf,
    /// The pod edge check, pinned under `progs/` for the plugin, which
    /// attaches it during ADD; this daemon puts it back where it is missing
    /// or older.
    pub edge_prog: Arc<EdgeProg>,
    /// What happened to the pinned edge program at start.
    pub edge_prog_outcome: LinkOutcome,
    /// The reverse translation of opted-out pods' replies (tcx egress);
    /// `None` without tcx.
    pub reply_prog: Option<Arc<EdgeProg>>,
    /// How this daemon attaches an edge itself (pods whose record names no
    /// attachment): `tc_attach`, where auto means clsact.
    pub edge_mode: EdgeMode,
    pub cgroup_root: PathBuf,
    pub cgroup_links: Vec<LinkState>,
    /// Maps that were already pinned when this daemon started.
    pub maps_reused: Vec<&'static str>,
    /// Maps of older builds carried over at start: reshaped, or folded
    /// into their successors.
    pub maps_migrated: Vec<load::Carried>,
    eps: HashMap<MapData, u64, Endpoint>,
    src: HashMap<MapData, SrcKey, u8>,
    drops: HashMap<MapData, u32, EdgeStats>,
    /// The socket programs' counters (none where they do not run).
    sockstat: Option<PerCpuArray<MapData, u64>>,
    lbstat: Option<PerCpuArray<MapData, u64>>,
    ctstat: PerCpuArray<MapData, u64>,
    /// The same-node TCP acceleration, where the kernel can give it.
    pub accel: Option<crate::accel::Accel>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("maps_dir", &self.maps_dir)
            .field("edge_mode", &self.edge_mode)
            .field("cgroup_root", &self.cgroup_root)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Opens the datapath; the socket programs are attached only if
    /// `socket_lb`, the replies' reverse translation is pinned for
    /// opted-out pods only if `per_packet`, and the same-node TCP
    /// acceleration loaded only if `accel` (the kernel has what each needs,
    /// see [`crate::kernel`]; the config's `accel` is the switch's
    /// position).
    pub fn open(
        cfg: &Config,
        socket_lb: bool,
        per_packet: bool,
        accel: bool,
    ) -> Result<Self, DatapathError> {
        match load::ensure_bpffs(&cfg.bpffs) {
            Ok(true) => info!(path = %cfg.bpffs.display(), "mounted a bpf filesystem"),
            Ok(false) => {}
            Err(source) => {
                return Err(DatapathError::Bpffs {
                    path: cfg.bpffs.clone(),
                    source,
                })
            }
        }
        let maps_dir = cfg.maps_dir();
        for d in [&maps_dir, &cfg.cgroup_links_dir(), &cfg.tc_links_dir()] {
            sluice_common::fsutil::private_dir(d).map_err(io_err("create pin directory", d))?;
        }
        if !load::is_bpffs(&maps_dir) {
            return Err(DatapathError::NotBpffs { path: maps_dir });
        }
        let specs = cfg.map_specs();
        let maps_reused = specs
            .iter()
            .filter(|m| maps_dir.join(m.name).exists())
            .map(|m| m.name)
            .collect();

        let (mut tc_obj, mut carried) =
            load::load_object_carrying("tc_pod", sluice_dataplane::TC_POD, &maps_dir, &specs)?;
        // The socket programs' object only where the kernel can run them
        // (its maps need what the programs need).
        let mut sock_obj = if socket_lb {
            let (obj, more) =
                load::load_object_carrying("sock", sluice_dataplane::SOCK, &maps_dir, &specs)?;
            carried.extend(more);
            Some(obj)
        } else {
            None
        };
        // The acceleration is an optimisation: a kernel that refuses any
        // part of it leaves the node on plain TCP, never without a daemon.
        let mut accel_obj = if accel {
            match load::load_object_carrying("accel", sluice_dataplane::ACCEL, &maps_dir, &specs) {
                Ok((obj, more)) => {
                    carried.extend(more);
                    Some(obj)
                }
                Err(e) => {
                    warn!("same-node TCP acceleration is off: {}", error_chain(&e));
                    None
                }
            }
        } else {
            None
        };
        carried.extend(load::migrate_obsolete(&maps_dir, &maps::OBSOLETE, &specs)?);
        for c in &carried {
            info!(
                map = c.name,
                into = c.into,
                copied = c.copied,
                dropped = c.dropped,
                "carried an older build's map over: {}",
                c.why
            );
        }

        let eps = HashMap::try_from(take_map(&mut tc_obj, maps::ENDPOINTS.name)?)
            .map_err(map_err(maps::ENDPOINTS.name, "open"))?;
        let (sockstat, lbstat) = match sock_obj.as_mut() {
            Some(obj) => (
                Some(
                    PerCpuArray::try_from(take_map(obj, maps::SOCKSTAT.name)?)
                        .map_err(map_err(maps::SOCKSTAT.name, "open"))?,
                ),
                Some(
                    PerCpuArray::try_from(take_map(obj, maps::LBSTAT.name)?)
                        .map_err(map_err(maps::LBSTAT.name, "open"))?,
                ),
            ),
            None => (None, None),
        };
        let src = HashMap::try_from(take_map(&mut tc_obj, maps::SRC.name)?)
            .map_err(map_err(maps::SRC.name, "open"))?;
        let drops = HashMap::try_from(take_map(&mut tc_obj, maps::EDGE_STATS.name)?)
            .map_err(map_err(maps::EDGE_STATS.name, "open"))?;
        let ctstat = PerCpuArray::try_from(take_map(&mut tc_obj, maps::CTSTAT.name)?)
            .map_err(map_err(maps::CTSTAT.name, "open"))?;
        let pins = Pins::new(&cfg.pin_path);
        let (edge_prog, edge_prog_outcome) = pin_tc_program(
            &mut tc_obj,
            &pins,
            sluice_dataplane::TC_POD_INGRESS,
            pins.pod_program(),
        )?;
        // The replies' reverse translation goes on a tcx egress link of
        // each opted-out pod: without it (no tcx; start-up said so), those
        // pods keep what they had (their own traffic, no service
        // translation).
        let reply_prog = if per_packet {
            let (p, _) = pin_tc_program(
                &mut tc_obj,
                &pins,
                sluice_dataplane::TC_POD_EGRESS,
                pins.pod_egress_program(),
            )?;
            Some(Arc::new(p))
        } else {
            None
        };

        let cgroup = CgroupRoot::open(cgroup_root(cfg)?)?;
        let cgroup_links = match sock_obj.as_mut() {
            Some(obj) => attach_socket_programs(obj, &cgroup, &cfg.cgroup_links_dir())?,
            None => Vec::new(),
        };
        let accel = match accel_obj.as_mut() {
            Some(obj) => {
                match crate::accel::Accel::open(
                    obj,
                    &cgroup,
                    &cfg.cgroup_links_dir(),
                    cfg.accel,
                    cfg.accel_max_queue_bytes,
                    cfg.accel_node,
                ) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        warn!("same-node TCP acceleration is off: {}", error_chain(&e));
                        None
                    }
                }
            }
            None => None,
        };

        let edge_mode = match cfg.tc_attach {
            TcAttach::Tcx if !sluice_cni::edge::tcx_supported() => {
                return Err(DatapathError::NoTcx)
            }
            TcAttach::Tcx => EdgeMode::Tcx,
            // A clsact filter attaches in tens of microseconds, a tcx link
            // waits for an RCU grace period (docs/decisions.md).
            TcAttach::Clsact | TcAttach::Auto => EdgeMode::Clsact,
        };
        Ok(Datapath {
            pins,
            maps_dir,
            tc_links_dir: cfg.tc_links_dir(),
            edge_prog: Arc::new(edge_prog),
            edge_prog_outcome,
            reply_prog,
            edge_mode,
            cgroup_root: cgroup.path,
            cgroup_links,
            maps_reused,
            maps_migrated: carried,
            eps,
            src,
            drops,
            sockstat,
            lbstat,
            ctstat,
            accel,
        })
    }

    pub fn maps_dir(&self) -> &Path {
        &self.maps_dir
    }

    /// Removes a pod's tcx link pin (the link detaches with it); a clsact
    /// filter goes away with its device.
    pub fn detach_tc(&mut self, ifindex: u32) {
        if let Err(e) = sluice_cni::edge::unpin_tc_link(&self.pins, ifindex) {
            warn!(ifindex, "cannot remove tc link pin: {e}");
        }
    }

    /// ifindexes that have a pinned tc link (ingress or egress).
    pub fn tc_pins(&self) -> Vec<u32> {
        std::fs::read_dir(&self.tc_links_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| sluice_dataplane::pins::tc_pin_ifindex(e.file_name().to_str()?))
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect()
    }

    pub fn put_endpoint(&mut self, cookie: u64, ep: &Endpoint) -> Result<(), DatapathError> {
        self.eps
            .insert(cookie, ep, 0)
            .map_err(map_err(maps::ENDPOINTS.name, "insert"))
    }

    pub fn get_endpoint(&self, cookie: u64) -> Option<Endpoint> {
        self.eps.get(&cookie, 0).ok()
    }

    pub fn remove_endpoint(&mut self, cookie: u64) {
        let _ = self.eps.remove(&cookie);
    }

    pub fn endpoint_cookies(&self) -> Vec<u64> {
        self.eps.keys().filter_map(Result::ok).collect()
    }

    pub fn put_sources(
        &mut self,
        ifindex: u32,
        addrs: &[std::net::IpAddr],
        flags: u8,
    ) -> Result<(), DatapathError> {
        for a in addrs {
            self.src
                .insert(SrcKey::new(ifindex, *a), flags, 0)
                .map_err(map_err(maps::SRC.name, "insert"))?;
        }
        Ok(())
    }

    pub fn remove_sources(&mut self, ifindex: u32, addrs: &[std::net::IpAddr]) {
        for a in addrs {
            let _ = self.src.remove(&SrcKey::new(ifindex, *a));
        }
    }

    pub fn source_keys(&self) -> Vec<SrcKey> {
        self.src.keys().filter_map(Result::ok).collect()
    }

    pub fn remove_source_key(&mut self, key: &SrcKey) {
        let _ = self.src.remove(key);
    }

    pub fn counters(&self, ifindex: u32) -> EdgeStats {
        self.drops.get(&ifindex, 0).unwrap_or_default()
    }

    pub fn reset_counters(&mut self, ifindex: u32) {
        let _ = self.drops.remove(&ifindex);
    }

    pub fn counter_keys(&self) -> Vec<u32> {
        self.drops.keys().filter_map(Result::ok).collect()
    }

    /// Socket operations of known endpoints per hook, summed over CPUs.
    pub fn sock_stats(&self) -> Vec<(&'static str, u64)> {
        per_cpu_counts(self.sockstat.as_ref(), &maps::SOCK_HOOKS)
    }

    /// Service translations by outcome, summed over CPUs.
    pub fn lb_stats(&self) -> Vec<(&'static str, u64)> {
        per_cpu_counts(self.lbstat.as_ref(), &maps::LB_STATS)
    }

    /// The per-packet service translation by outcome, summed over CPUs.
    pub fn ct_stats(&self) -> Vec<(&'static str, u64)> {
        per_cpu_counts(Some(&self.ctstat), &maps::CT_STATS)
    }

    /// Each pinned map with its entry count.
    pub fn map_summary(&self) -> Vec<MapSummary> {
        map_summary(&self.maps_dir)
    }
}

/// Each slot of a per-CPU counter array, summed over CPUs, by name.
pub(crate) fn per_cpu_counts(
    map: Option<&PerCpuArray<MapData, u64>>,
    names: &[&'static str],
) -> Vec<(&'static str, u64)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = map
                .and_then(|m| m.get(&(i as u32), 0).ok())
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            (*name, n)
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MapSummary {
    pub name: String,
    pub what: String,
    pub pin: PathBuf,
    pub id: Option<u32>,
    pub entries: Option<usize>,
    pub max_entries: u32,
}

/// The map summary `status` shows, computed on a thread of its own at
/// housekeeping priority and kept for a second: counting entries walks
/// every map (hundreds of thousands of entries at 10,000 services), and
/// however often `status` is asked, that walk runs at most once a second
/// and never ahead of a pod's register.
#[derive(Debug)]
pub struct MapStats {
    cache: std::sync::Mutex<Option<(std::time::Instant, Vec<MapSummary>)>>,
    tx: std::sync::Mutex<std::sync::mpsc::Sender<std::sync::mpsc::Sender<Vec<MapSummary>>>>,
}

/// How long a map summary is shown before it is counted again.
const MAP_STATS_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl MapStats {
    pub fn start(maps_dir: PathBuf) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<Vec<MapSummary>>>();
        std::thread::Builder::new()
            .name("sluiced-mapstats".into())
            .spawn(move || {
                crate::housekeeping_priority();
                for reply in rx {
                    let _ = reply.send(map_summary(&maps_dir));
                }
            })?;
        Ok(MapStats {
            cache: Default::default(),
            tx: std::sync::Mutex::new(tx),
        })
    }

    /// The summary, at most a second old.
    pub fn get(&self) -> Vec<MapSummary> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, maps)) = cache.as_ref() {
            if at.elapsed() < MAP_STATS_FRESH {
                return maps.clone();
            }
        }
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(reply)
            .is_ok();
        let maps = match answer.recv() {
            Ok(m) if sent => m,
            _ => return Vec::new(),
        };
        *cache = Some((std::time::Instant::now(), maps.clone()));
        maps
    }
}

/// Reads every pinned map of a pin directory (also with the daemon down).
pub fn map_summary(maps_dir: &Path) -> Vec<MapSummary> {
    maps::ALL
        .iter()
        .map(|spec| {
            let pin = maps_dir.join(spec.name);
            // The pinned map's own size: the service maps are sized by the
            // daemon's configuration.
            let info = sys::obj_get(&pin)
                .ok()
                .and_then(|fd| sys::map_info(fd.as_fd()).ok());
            let spec = maps::MapSpec {
                max_entries: info.map_or(spec.max_entries, |i| i.max_entries),
                ..*spec
            };
            let entries = load::check_pinned_maps(maps_dir, std::slice::from_ref(&spec))
                .ok()
                .filter(|_| info.is_some())
                .and_then(|_| count_entries(&spec, &pin));
            MapSummary {
                name: spec.name.into(),
                what: spec.what.into(),
                pin,
                id: info.map(|i| i.id),
                entries,
                max_entries: spec.max_entries,
            }
        })
        .collect()
}

/// Entries in a pinned map: arrays always hold `max_entries`; hash maps
/// are counted in batches; socket storage cannot be listed.
fn count_entries(spec: &maps::MapSpec, pin: &Path) -> Option<usize> {
    const ARRAY: u32 = 2;
    const PERCPU_ARRAY: u32 = 6;
    match spec.map_type {
        ARRAY | PERCPU_ARRAY => Some(spec.max_entries as usize),
        maps::BPF_MAP_TYPE_SK_STORAGE => None,
        _ => sys::count_entries(sys::obj_get(pin).ok()?.as_fd()).ok(),
    }
}

/// Loads the edge program and makes it the pinned one the plugin finds.
/// A pinned program with the same instructions (a restart) is kept, so the
/// pods' filters and links keep matching its ID; a different one (an
/// upgrade) is replaced in one rename, and the pods' attachments follow in
/// the edge pass.
/// Loads tc program `name` and pins it at `path`, or takes the program
/// already pinned there when it is the same (same tag): links and filters
/// that run it stay as they are.
fn pin_tc_program(
    obj: &mut Ebpf,
    pins: &Pins,
    name: &'static str,
    path: PathBuf,
) -> Result<(EdgeProg, LinkOutcome), DatapathError> {
    let prog = load::load_program::<SchedClassifier>(obj, "tc_pod", name)?;
    let ours = owned_fd(prog.fd()).map_err(|detail| DatapathError::Attach {
        program: name.into(),
        target: "to its pin".into(),
        detail,
    })?;
    let pin_err = |source| DatapathError::Io {
        what: "pin a tc program at",
        path: path.clone(),
        source,
    };
    sluice_common::fsutil::private_dir(&pins.progs())
        .map_err(io_err("create pin directory", &pins.progs()))?;
    let to_prog = |fd| {
        EdgeProg::from_fd(fd, EdgeProgram::Check).map_err(|e| DatapathError::Attach {
            program: name.into(),
            target: "to its pin".into(),
            detail: e.to_string(),
        })
    };
    match sys::obj_get(&path) {
        Ok(pinned) if sys::same_program(pinned.as_fd(), ours.as_fd()).map_err(pin_err)? => {
            Ok((to_prog(pinned)?, LinkOutcome::Reused))
        }
        Ok(_) => {
            sys::obj_pin_replace(ours.as_fd(), &path).map_err(pin_err)?;
            info!(pin = %path.display(), "pinned a newer tc program; pods move to it in the edge pass");
            Ok((to_prog(ours)?, LinkOutcome::Updated))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            sys::obj_pin_replace(ours.as_fd(), &path).map_err(pin_err)?;
            Ok((to_prog(ours)?, LinkOutcome::Created))
        }
        Err(e) => Err(pin_err(e)),
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x63677270;

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Where the daemon mounts a cgroup v2 hierarchy of its own when the node
/// has none mounted (as Cilium mounts /run/cilium/cgroupv2).
pub const OWN_CGROUP2: &str = "/run/sluice/cgroupv2";

/// The configured cgroup v2 root, or the unified (`/sys/fs/cgroup`) or
/// hybrid (`/sys/fs/cgroup/unified`) one. A configured root that is
/// missing (not mounted, or the directory absent), or no cgroup v2 mount
/// at all, is repaired: cgroup2 is mounted there (at [`OWN_CGROUP2`] when
/// none is configured). cgroup v2 is one hierarchy, so the new mount's
/// root is the root every socket program was attached to before.
pub fn cgroup_root(cfg: &Config) -> Result<PathBuf, DatapathError> {
    if let Some(p) = &cfg.cgroup_root {
        if !is_cgroup2(p) {
            mount_cgroup2(p)?;
        }
        return Ok(p.clone());
    }
    if let Some(p) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
    {
        return Ok(p);
    }
    let own = PathBuf::from(OWN_CGROUP2);
    if !is_cgroup2(&own) {
        mount_cgroup2(&own)?;
    }
    Ok(own)
}

/// Mounts cgroup2 at `path` (created if absent), refusing a directory that
/// holds anything: that is someone else's, not a missing mount.
fn mount_cgroup2(path: &Path) -> Result<(), DatapathError> {
    std::fs::create_dir_all(path).map_err(io_err("create the cgroup v2 mount point", path))?;
    let empty = std::fs::read_dir(path)
        .map_err(io_err("list the cgroup v2 mount point", path))?
        .next()
        .is_none();
    if !empty {
        return Err(DatapathError::NotCgroup2 { path: path.into() });
    }
    nix::mount::mount(
        Some("cgroup2"),
        path,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| DatapathError::Io {
        what: "mount cgroup2 at",
        path: path.into(),
        source: e.into(),
    })?;
    warn!(
        path = %path.display(),
        "no cgroup v2 hierarchy was mounted there: mounted one (the socket programs attach to its root)"
    );
    Ok(())
}

/// The cgroup v2 root the socket programs attach to, opened once.
#[derive(Debug)]
pub struct CgroupRoot {
    pub path: PathBuf,
    pub file: std::fs::File,
    /// Its inode number: the cgroup id a cgroup link reports.
    pub id: u64,
}

impl CgroupRoot {
    fn open(path: PathBuf) -> Result<Self, DatapathError> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(&path).map_err(io_err("open cgroup", &path))?;
        let id = file.metadata().map_err(io_err("stat cgroup", &path))?.ino();
        Ok(CgroupRoot { path, file, id })
    }
}

/// Takes map `name` out of `obj`, or says the object lacks it.
pub(crate) fn take_map(obj: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    obj.take_map(name).ok_or(LoadError::NoProgram {
        object: "map",
        program: name,
    })
}

fn attach_socket_programs(
    obj: &mut Ebpf,
    cgroup_root: &CgroupRoot,
    links_dir: &Path,
) -> Result<Vec<LinkState>, DatapathError> {
    let (cgroup, cgroup_id) = (&cgroup_root.file, cgroup_root.id);
    let attach_err = |name: &str, detail: String| DatapathError::Attach {
        program: name.into(),
        target: format!("to cgroup {}", cgroup_root.path.display()),
        detail,
    };
    // Both program types attach the same way but are different types; a
    // bpf_link is multi-attach by nature and BPF_F_ALLOW_MULTI on link
    // create is EINVAL, so Single it is.
    macro_rules! keep_or_attach_as {
        ($ty:ty, $name:expr) => {{
            let name = $name;
            let pin = links_dir.join(name);
            let prog = load::load_program::<$ty>(obj, "sock", name)?;
            let own = owned_fd(prog.fd());
            keep_or_attach(
                name,
                &pin,
                cgroup_id,
                own.as_ref().map(|f| f.as_fd()).map_err(String::clone),
                || {
                    let id = prog
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(|e| error_chain(&e))?;
                    let link = prog.take_link(id).map_err(|e| error_chain(&e))?;
                    pin_link(link, &pin)
                },
            )
            .map_err(|e| attach_err(name, e))?
        }};
    }
    let mut out = Vec::new();
    for name in sluice_dataplane::SOCK_PROGRAMS
        .iter()
        .chain(&sluice_dataplane::SOCK_BIND_PROGRAMS)
    {
        out.push(keep_or_attach_as!(CgroupSockAddr, name));
    }
    out.push(keep_or_attach_as!(
        CgroupSock,
        sluice_dataplane::SOCK_RELEASE
    ));
    Ok(out)
}

/// A program's fd of our own, so the program can be attached (a mutable
/// borrow) while its fd is compared with a pinned link's program.
pub(crate) fn owned_fd(
    fd: Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
) -> Result<std::os::fd::OwnedFd, String> {
    fd.map_err(|e| error_chain(&e))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating a program fd: {e}"))
}

/// Keeps the cgroup link pinned at `pin` if it is on this cgroup (swapping
/// in `prog` when its instructions differ); otherwise replaces the pin with
/// a fresh attachment made by `attach`.
pub(crate) fn keep_or_attach(
    name: &str,
    pin: &Path,
    cgroup_id: u64,
    prog: Result<std::os::fd::BorrowedFd<'_>, String>,
    attach: impl FnOnce() -> Result<sys::LinkInfo, String>,
) -> Result<LinkState, String> {
    if pin.exists() {
        match sys::pinned_link_info(pin) {
            Ok(info) if info.link_type == sys::LINK_TYPE_CGROUP && info.cgroup_id == cgroup_id => {
                let outcome = refresh_program(pin, info.prog_id, prog)?;
                return Ok(LinkState {
                    program: name.into(),
                    id: info.id,
                    prog_id: sys::pinned_link_info(pin)
                        .map(|i| i.prog_id)
                        .unwrap_or(info.prog_id),
                    pin: pin.into(),
                    outcome,
                });
            }
            Ok(info) => {
                warn!(pin = %pin.display(), cgroup_id = info.cgroup_id, "pinned link is on another cgroup; replacing it");
                std::fs::remove_file(pin)
                    .map_err(|e| format!("removing stale pin {}: {e}", pin.display()))?;
            }
            Err(e) => {
                warn!(pin = %pin.display(), "pinned link unreadable ({e}); replacing it");
                std::fs::remove_file(pin)
                    .map_err(|e| format!("removing stale pin {}: {e}", pin.display()))?;
            }
        }
    }
    let info = attach()?;
    Ok(LinkState {
        program: name.into(),
        id: info.id,
        prog_id: info.prog_id,
        pin: pin.into(),
        outcome: LinkOutcome::Created,
    })
}

/// Pins a freshly attached link and returns what the kernel says about it.
/// Our fd is closed on return: from then on the pin alone keeps the link
/// attached, so removing the pin detaches it.
fn pin_link<L>(link: L, pin: &Path) -> Result<sys::LinkInfo, String>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let fd = FdLink::try_from(link).map_err(|e| error_chain(&e))?;
    drop(fd.pin(pin).map_err(|e| error_chain(&e))?);
    sys::pinned_link_info(pin).map_err(|e| format!("reading {}: {e}", pin.display()))
}

/// Swaps a pinned link's program for `new` if their instructions or maps
/// differ (an upgraded daemon, a map carried into a new one); otherwise
/// leaves it.
fn refresh_program(
    pin: &Path,
    old_prog_id: u32,
    new: Result<std::os::fd::BorrowedFd<'_>, String>,
) -> Result<LinkOutcome, String> {
    let new = new?;
    let old =
        sys::prog_fd_by_id(old_prog_id).map_err(|e| format!("open program {old_prog_id}: {e}"))?;
    if sys::same_program(old.as_fd(), new).map_err(|e| format!("compare programs: {e}"))? {
        return Ok(LinkOutcome::Reused);
    }
    let link = sys::obj_get(pin).map_err(|e| format!("open {}: {e}", pin.display()))?;
    sys::link_update(link.as_fd(), new, old.as_fd())
        .map_err(|e| format!("BPF_LINK_UPDATE on {}: {e}", pin.display()))?;
    info!(pin = %pin.display(), "replaced the program of a pinned link in place");
    Ok(LinkOutcome::Updated)
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Every (ifindex, address) key a set of endpoints should have.
pub fn source_set(eps: impl IntoIterator<Item = (u32, std::net::IpAddr)>) -> HashSet<SrcKey> {
    eps.into_iter().map(|(i, a)| SrcKey::new(i, a)).collect()
}
