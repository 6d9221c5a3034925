//! The pod edge on the node's side of a pod's veth: the program that
//! decides what the pod may send (the daemon's pinned check, or a program
//! that drops everything while there is none), how it is attached (a clsact
//! filter or a tcx link), the map entries it reads, and the kernel's own
//! backstops on the device.
//!
//! The plugin attaches all of it during ADD, before the node's end of the
//! veth comes up, so a pod never sends a packet without a check, whatever
//! the daemon's state. The daemon inspects the same attachment later and
//! puts back whatever went missing or was replaced (see [`inspect`]).

use crate::netlink::{
    bpf_filter_op, clsact_op, BpfFilter, FilterList, IngressQdisc, Netlink, NlError, SharedBlocks,
};
use sluice_common::endpoint::{EdgeMode, EdgeProgram, EdgeRecord, EndpointRecord};
use sluice_dataplane::maps::{
    self, bytes_of, bytes_of_mut, EdgeStats, Endpoint, MapSpec, SrcKey, EP_F_NO_SOCK_LB,
};
use sluice_dataplane::pins::Pins;
use sluice_dataplane::sys;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Our filter's place on a device's ingress filter list: priority 1 runs
/// before any other filter (1 is the lowest a filter can have), so a
/// chained plugin's redirect (bandwidth's mirred to its ifb, which skips
/// classification when the packet comes back) never runs ahead of it.
pub const FILTER_PRIO: u16 = 1;
/// Our filter's handle at [`FILTER_PRIO`]: "5c", for sluice.
pub const FILTER_HANDLE: u32 = 0x5c;

/// The shared tc block every pod's clsact qdisc takes its ingress filters
/// from (per netns): the check is one filter for all pods. A qdisc bound
/// to an existing block costs the same at any number of pods, where a
/// block per device makes the kernel walk a list of every block on each
/// new one (indirect offload bookkeeping); an upgrade swaps one filter;
/// and a filter can only be removed from it by its block index, not by a
/// stray `tc filter del dev …`.
pub const SHARED_BLOCK: u32 = 0x5c_1ce;
/// The shared block of the pods' clsact egress lists. Sluice puts nothing
/// there; it is shared only so that a new qdisc does not register one more
/// block (see [`SHARED_BLOCK`]). A tool adds egress filters for all pods
/// with `tc filter add block 377295 …`.
pub const SHARED_EGRESS_BLOCK: u32 = SHARED_BLOCK + 1;
const SHARED_BLOCKS: SharedBlocks = SharedBlocks {
    ingress: SHARED_BLOCK,
    egress: SHARED_EGRESS_BLOCK,
};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot {what} {path}: {source}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "pinned map {path} has key/value size {found:?}, this plugin expects {want:?}: it was \
         pinned by another version of sluiced; run the sluiced that matches this plugin"
    )]
    MapLayout {
        path: PathBuf,
        found: (u32, u32),
        want: (u32, u32),
    },
    #[error("cannot {what}: {source}")]
    Bpf { what: String, source: io::Error },
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("cannot set {path} to {value}: {source}")]
    Sysctl {
        path: PathBuf,
        value: &'static str,
        source: io::Error,
    },
}

fn bpf_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EdgeError {
    let what = what.into();
    move |source| EdgeError::Bpf { what, source }
}

/// A program to put on a pod's edge.
#[derive(Debug)]
pub struct EdgeProg {
    pub fd: OwnedFd,
    pub id: u32,
    pub tag: [u8; 8],
    pub program: EdgeProgram,
}

impl EdgeProg {
    /// The check the daemon pinned; `None` when nothing is pinned (the
    /// daemon has never run on this node, or its pins were removed).
    pub fn pinned(pins: &Pins) -> Result<Option<EdgeProg>, EdgeError> {
        let path = pins.pod_program();
        let fd = match sys::obj_get(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(EdgeError::Pin {
                    what: "open the pinned edge program",
                    path,
                    source,
                })
            }
        };
        Self::from_fd(fd, EdgeProgram::Check).map(Some)
    }

    /// A program that drops every frame: a pod that gets it has no
    /// connectivity until the daemon replaces it with the check.
    pub fn isolate() -> Result<EdgeProg, EdgeError> {
        let fd = sys::load_isolate_program().map_err(bpf_err("load the isolating program"))?;
        Self::from_fd(fd, EdgeProgram::Isolate)
    }

    pub fn from_fd(fd: OwnedFd, program: EdgeProgram) -> Result<EdgeProg, EdgeError> {
        let info = sys::prog_info(fd.as_fd()).map_err(bpf_err("read a program's info"))?;
        Ok(EdgeProg {
            fd,
            id: info.id,
            tag: info.tag,
            program,
        })
    }
}

/// The edge maps the plugin writes: allowed sources, drop counters, and
/// the endpoint entry (socket-level service translation for the pod's
/// netns; the check works without it).
#[derive(Debug)]
pub struct EdgeMaps {
    src: OwnedFd,
    stats: OwnedFd,
    eps: Option<OwnedFd>,
}

fn open_map(pins: &Pins, spec: &MapSpec) -> Result<Option<OwnedFd>, EdgeError> {
    let path = pins.map(spec.name);
    let fd = match sys::obj_get(&path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EdgeError::Pin {
                what: "open pinned map",
                path,
                source,
            })
        }
    };
    let info = sys::map_info(fd.as_fd()).map_err(bpf_err(format!("read {}", path.display())))?;
    let (found, want) = (
        (info.key_size, info.value_size),
        (spec.key_size, spec.value_size),
    );
    if found != want {
        return Err(EdgeError::MapLayout { path, found, want });
    }
    Ok(Some(fd))
}

impl EdgeMaps {
    /// The daemon's pinned maps; `None` when the check's own are not
    /// pinned.
    pub fn open(pins: &Pins) -> Result<Option<EdgeMaps>, EdgeError> {
        let (Some(src), Some(stats)) = (
            open_map(pins, &maps::SRC)?,
            open_map(pins, &maps::EDGE_STATS)?,
        ) else {
            return Ok(None);
        };
        let eps = open_map(pins, &maps::ENDPOINTS)?;
        Ok(Some(EdgeMaps { src, stats, eps }))
    }

    /// What a new pod interface needs before its check runs: its sources,
    /// clean counters, and its netns's endpoint entry.
    pub fn put(
        &self,
        ifindex: u32,
        addrs: &[IpAddr],
        src_flags: u8,
        cookie: u64,
        entry: &Endpoint,
    ) -> Result<(), EdgeError> {
        for a in addrs {
            let k = SrcKey::new(ifindex, *a);
            sys::map_update(self.src.as_fd(), bytes_of(&k), &[src_flags], 0)
                .map_err(bpf_err(format!("allow source {a} on ifindex {ifindex}")))?;
        }
        sys::map_delete(self.stats.as_fd(), &ifindex.to_ne_bytes())
            .map_err(bpf_err(format!("reset the counters of ifindex {ifindex}")))?;
        match &self.eps {
            Some(eps) => sys::map_update(eps.as_fd(), &cookie.to_ne_bytes(), bytes_of(entry), 0)
                .map_err(bpf_err(format!(
                    "write the endpoint entry of netns {cookie}"
                ))),
            None => Ok(()),
        }
    }

    /// Removes what [`EdgeMaps::put`] wrote; the endpoint entry only while
    /// it still names `ifindex` (another interface of the pod may hold it).
    /// Missing entries are not errors.
    pub fn remove(
        &self,
        ifindex: u32,
        addrs: &[IpAddr],
        cookie: Option<u64>,
    ) -> Result<(), EdgeError> {
        for a in addrs {
            let k = SrcKey::new(ifindex, *a);
            sys::map_delete(self.src.as_fd(), bytes_of(&k))
                .map_err(bpf_err(format!("remove source {a} of ifindex {ifindex}")))?;
        }
        let _ = sys::map_delete(self.stats.as_fd(), &ifindex.to_ne_bytes());
        if let (Some(c), Some(eps)) = (cookie, &self.eps) {
            let mut v = Endpoint::default();
            let present = sys::map_lookup(eps.as_fd(), &c.to_ne_bytes(), bytes_of_mut(&mut v))
                .map_err(bpf_err(format!("read the endpoint entry of netns {c}")))?;
            if present && v.host_ifindex == ifindex {
                sys::map_delete(eps.as_fd(), &c.to_ne_bytes())
                    .map_err(bpf_err(format!("remove the endpoint entry of netns {c}")))?;
            }
        }
        Ok(())
    }

    /// Removes every entry that names host interface `ifindex`: its
    /// sources, counters and any endpoint entry behind it. For a DEL that
    /// has no record to say what ADD wrote (an ADD killed after its entries
    /// and before its record): the map walks cost what [`EdgeMaps::remove`]
    /// saves, so only that DEL pays them. Returns how many were removed.
    pub fn remove_all_of(&self, ifindex: u32) -> Result<usize, EdgeError> {
        let walk = |what: &str| bpf_err(format!("list the {what} of ifindex {ifindex}"));
        let mut n = 0;
        for k in sys::map_keys(self.src.as_fd(), size_of::<SrcKey>()).map_err(walk("sources"))? {
            if k[..4] == ifindex.to_ne_bytes() && sys::map_delete(self.src.as_fd(), &k).is_ok() {
                n += 1;
            }
        }
        let _ = sys::map_delete(self.stats.as_fd(), &ifindex.to_ne_bytes());
        if let Some(eps) = &self.eps {
            for k in sys::map_keys(eps.as_fd(), 8).map_err(walk("endpoint entries"))? {
                let mut v = Endpoint::default();
                if sys::map_lookup(eps.as_fd(), &k, bytes_of_mut(&mut v)).unwrap_or(false)
                    && v.host_ifindex == ifindex
                    && sys::map_delete(eps.as_fd(), &k).is_ok()
                {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// The drop counters of one interface.
    pub fn stats(&self, ifindex: u32) -> EdgeStats {
        let mut v = EdgeStats::default();
        match sys::map_lookup(
            self.stats.as_fd(),
            &ifindex.to_ne_bytes(),
            bytes_of_mut(&mut v),
        ) {
            Ok(true) => v,
            _ => EdgeStats::default(),
        }
    }
}

/// The endpoint map entry of a record: the pod's host veth and addresses,
/// `EP_F_NO_SOCK_LB` when the pod opted out of the socket-level service
/// load balancing (`sluice.dev/socket-lb: "false"`), `EP_F_NO_ACCEL` when
/// it opted out of the same-node TCP shortcut (`sluice.dev/accel:
/// "false"`), `EP_F_ACCEL` when it opted in (`"true"`).
pub fn endpoint_entry(rec: &EndpointRecord) -> Endpoint {
    let mut e = Endpoint::pod(rec.host_ifindex, rec.addresses.iter().map(|n| n.ip()));
    if rec.socket_lb_opt_out() {
        e.flags |= EP_F_NO_SOCK_LB;
    }
    if rec.accel_opt_out() {
        e.flags |= maps::EP_F_NO_ACCEL;
    }
    if rec.accel_opt_in() {
        e.flags |= maps::EP_F_ACCEL;
    }
    e
}

/// What the pod's source entries hold: allowed, and, for a pod that opted
/// out of socket load balancing, its packets to services translated per
/// packet on its host veth.
pub fn source_flags(rec: &EndpointRecord) -> u8 {
    if rec.socket_lb_opt_out() {
        maps::SRC_F_ALLOWED | maps::SRC_F_SVC_NAT
    } else {
        maps::SRC_F_ALLOWED
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether this kernel has tcx (Linux 6.6).
pub fn tcx_supported() -> bool {
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the zeroed struct.
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    // SAFETY: release is NUL-terminated by uname.
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 6)
}

/// Puts `prog` on the ingress of the pod veth `ifindex`.
///
/// clsact: a clsact qdisc bound to [`SHARED_BLOCK`], and our filter at
/// [`FILTER_PRIO`] in the block. `fresh` (ADD, a new device) keeps a
/// filter the block already has (the daemon keeps it current); otherwise
/// the block's filter is replaced in place. A device whose ingress qdisc
/// is not bound to the block (an older plugin's, or a chained plugin's
/// `ingress` qdisc) gets the filter on its own list instead. tcx: a new
/// link ahead of every other program, pinned at `links/tc/<ifindex>`
/// (replacing the pin of an older link, which then detaches).
pub fn attach(
    nl: &mut Netlink,
    pins: &Pins,
    ifindex: u32,
    mode: EdgeMode,
    prog: &EdgeProg,
    fresh: bool,
) -> Result<EdgeRecord, EdgeError> {
    match mode {
        EdgeMode::Clsact => {
            let list = if fresh {
                FilterList::Block(SHARED_BLOCK)
            } else {
                match nl.ingress_qdisc(ifindex)? {
                    Some(IngressQdisc {
                        block: Some(SHARED_BLOCK),
                        ..
                    })
                    | None => FilterList::Block(SHARED_BLOCK),
                    Some(_) => FilterList::Ingress(ifindex),
                }
            };
            let filter = bpf_filter_op(
                list,
                FILTER_PRIO,
                FILTER_HANDLE,
                prog.fd.as_fd(),
                program_name(prog.program),
                !fresh,
            );
            nl.batch(vec![
                clsact_op(ifindex, Some(SHARED_BLOCKS)),
                if fresh {
                    filter.ok_if(&[libc::EEXIST])
                } else {
                    filter
                },
            ])?;
        }
        EdgeMode::Tcx => {
            // A program is attached at most once per hook: a link of ours
            // still on the device (behind another tool's program) is
            // detached first, so the new one can go in front. The packets
            // in between meet the other program first, as they did before.
            if !fresh {
                if let Ok(old) = sys::obj_get(&pins.tc_link(ifindex)) {
                    if sys::link_info(old.as_fd()).is_ok_and(|i| i.tcx_ifindex == ifindex) {
                        sys::link_detach(old.as_fd()).map_err(bpf_err(format!(
                            "detach the tcx link of ifindex {ifindex} to put it first again"
                        )))?;
                    }
                }
            }
            let link = sys::tcx_link_create(prog.fd.as_fd(), ifindex)
                .map_err(bpf_err(format!("attach a tcx link to ifindex {ifindex}")))?;
            pin_tc_link(pins, ifindex, link.as_fd())?;
        }
    }
    Ok(EdgeRecord {
        mode,
        program: prog.program,
        prog_id: prog.id,
        since_unix_ms: now_ms(),
    })
}

fn pin_tc_link(pins: &Pins, ifindex: u32, link: BorrowedFd<'_>) -> Result<(), EdgeError> {
    pin_link_at(pins, pins.tc_link(ifindex), link)
}

/// Pins a tcx link at `path` under `links/tc/`, replacing what was pinned
/// there (an older link then detaches).
fn pin_link_at(pins: &Pins, path: PathBuf, link: BorrowedFd<'_>) -> Result<(), EdgeError> {
    let dir = pins.tc_links();
    sluice_common::fsutil::private_dir(&dir).map_err(|source| EdgeError::Pin {
        what: "create",
        path: dir.clone(),
        source,
    })?;
    sys::obj_pin_replace(link, &path).map_err(|source| EdgeError::Pin {
        what: "pin the tcx link at",
        path,
        source,
    })
}

/// Puts `prog` (the replies' reverse translation) on the tcx egress of the
/// pod veth `ifindex` through a new link, pinned at
/// `links/tc/<ifindex>-egress`.
pub fn attach_reply(pins: &Pins, ifindex: u32, prog: &EdgeProg) -> Result<(), EdgeError> {
    let link = sys::tcx_link_create_at(prog.fd.as_fd(), ifindex, sys::TcxHook::Egress).map_err(
        bpf_err(format!(
            "attach the reply translation to the tcx egress of ifindex {ifindex}"
        )),
    )?;
    pin_link_at(pins, pins.tc_egress_link(ifindex), link.as_fd())
}

/// The name a program is attached under (shown by `tc filter show`).
pub fn program_name(p: EdgeProgram) -> &'static str {
    match p {
        EdgeProgram::Check => sluice_dataplane::TC_POD_INGRESS,
        EdgeProgram::Isolate => sys::ISOLATE_PROG_NAME,
    }
}

/// Swaps the program of a pod's tcx link in place (same link, same place
/// in the order), if the pinned link is on `ifindex`.
pub fn update_tcx_program(
    pins: &Pins,
    ifindex: u32,
    old_prog_id: u32,
    prog: &EdgeProg,
) -> Result<(), EdgeError> {
    update_link_program(pins.tc_link(ifindex), old_prog_id, prog)
}

/// [`update_tcx_program`] for the link of a pod's reply translation.
pub fn update_reply_program(
    pins: &Pins,
    ifindex: u32,
    old_prog_id: u32,
    prog: &EdgeProg,
) -> Result<(), EdgeError> {
    update_link_program(pins.tc_egress_link(ifindex), old_prog_id, prog)
}

/// Swaps the program of the link pinned at `path` in place.
fn update_link_program(path: PathBuf, old_prog_id: u32, prog: &EdgeProg) -> Result<(), EdgeError> {
    let link = sys::obj_get(&path).map_err(|source| EdgeError::Pin {
        what: "open the tcx link pinned at",
        path: path.clone(),
        source,
    })?;
    let old =
        sys::prog_fd_by_id(old_prog_id).map_err(bpf_err(format!("open program {old_prog_id}")))?;
    sys::link_update(link.as_fd(), prog.fd.as_fd(), old.as_fd()).map_err(bpf_err(format!(
        "replace the program of {}",
        path.display()
    )))
}

/// What a pod's veth carries on its ingress, as the kernel says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The device's ingress qdisc, if any.
    pub qdisc: Option<IngressQdisc>,
    /// Our filter (at [`FILTER_PRIO`], [`FILTER_HANDLE`]) in the list the
    /// device's ingress uses (the shared block, or its own), if there.
    pub filter: Option<BpfFilter>,
    /// Every bpf filter of that list.
    pub filters: Vec<BpfFilter>,
    /// The tcx programs, first to run first.
    pub tcx: Vec<sys::TcxEntry>,
    /// Our pinned tcx link, if its pin exists: (link id, program id,
    /// ifindex it sits on; 0 once detached).
    pub pinned_link: Option<(u32, u32, u32)>,
}

impl Observed {
    /// The program that guards the edge in `mode`, if ours is in place and
    /// runs before anything else that could pass the packet on.
    pub fn guard(&self, mode: EdgeMode, ifindex: u32) -> Option<u32> {
        match mode {
            EdgeMode::Clsact => {
                // Any tcx program runs before every filter.
                if !self.tcx.is_empty() {
                    return None;
                }
                self.filter.as_ref().and_then(|f| f.prog_id)
            }
            EdgeMode::Tcx => {
                let (link_id, prog_id, on) = self.pinned_link?;
                let first = self.tcx.first()?;
                (on == ifindex && first.link_id == link_id).then_some(prog_id)
            }
        }
    }
}

/// Reads what sits on the ingress of `ifindex`: its qdisc, our filter and
/// the other bpf filters of the list it uses, the tcx programs in order,
/// and our pinned tcx link.
pub fn inspect(nl: &mut Netlink, pins: &Pins, ifindex: u32) -> Result<Observed, EdgeError> {
    let qdisc = nl.ingress_qdisc(ifindex)?;
    let filters = match &qdisc {
        None => Vec::new(),
        Some(IngressQdisc { block: Some(b), .. }) => nl.bpf_filters(FilterList::Block(*b))?,
        Some(_) => nl.bpf_filters(FilterList::Ingress(ifindex))?,
    };
    let filter = filters
        .iter()
        .find(|f| f.prio == FILTER_PRIO && f.handle == FILTER_HANDLE)
        .cloned();
    let tcx = if tcx_supported() {
        sys::tcx_query(ifindex).map_err(bpf_err(format!(
            "query the tcx programs of ifindex {ifindex}"
        )))?
    } else {
        Vec::new()
    };
    let pin = pins.tc_link(ifindex);
    let pinned_link = if pin.exists() {
        sys::pinned_link_info(&pin)
            .ok()
            .filter(|i| i.link_type == sys::LINK_TYPE_TCX)
            .map(|i| (i.id, i.prog_id, i.tcx_ifindex))
    } else {
        None
    };
    Ok(Observed {
        qdisc,
        filter,
        filters,
        tcx,
        pinned_link,
    })
}

/// Removes a pod's tcx link pins, ingress and egress (the links detach if
/// the device is still there); a pin that is not there is not an error.
pub fn unpin_tc_link(pins: &Pins, ifindex: u32) -> io::Result<()> {
    for p in [pins.tc_link(ifindex), pins.tc_egress_link(ifindex)] {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// What a pod's host-side veth is set to before it comes up. First the
/// kernel's own checks, so a pod is contained even if the program were
/// missing:
/// - strict reverse-path filtering (IPv4 only: the kernel has none for
///   IPv6);
/// - no router advertisements taken from the pod (a pod's RA could
///   otherwise install routes on a node with `accept_ra=2`);
/// - no ICMP redirects taken from it, none sent to it.
///
/// Then what the routing needs. The pods' gateways live on the node's
/// loopback, not on every veth, where each copy would make every later
/// pod's ADD slower. So the veth answers ARP for them by proxy, and ND
/// (for an IPv6 pod) without the random delay the kernel puts on proxied
/// answers.
///
/// Written through /proc/sys: netlink can set the IPv4 ones, but a link
/// change on a down device makes the kernel walk every IPv6 route.
pub const HOST_VETH_SETTINGS: [(&str, &str, &str); 8] = [
    ("ipv4/conf", "rp_filter", "1"),
    ("ipv4/conf", "accept_redirects", "0"),
    ("ipv4/conf", "send_redirects", "0"),
    ("ipv6/conf", "accept_ra", "0"),
    ("ipv6/conf", "accept_redirects", "0"),
    ("ipv4/conf", "proxy_arp", "1"),
    ("ipv6/conf", "proxy_ndp", "1"),
    ("ipv6/neigh", "proxy_delay", "0"),
];

/// How many of [`HOST_VETH_SETTINGS`], from the first, are security
/// backstops (the rest serve the routing).
pub const BACKSTOPS: usize = 5;

/// The veth of an IPv4-only pod has IPv6 turned off (`disable_ipv6`):
/// nothing of IPv6 crosses it (the kernel drops what the pod sends before
/// any routing), and it adds no IPv6 routes to the node. Even without a
/// link-local address, an IPv6-enabled device adds a multicast route
/// (`ff00::/8`) when it comes up, and the kernel walks every IPv6 route on
/// each later device change: each pod made every later ADD slower. An
/// IPv6 pod's veth keeps IPv6 and its link-local address, from which the
/// node answers the pod's neighbour solicitations.
const NO_IPV6: (&str, &str, &str) = ("ipv6/conf", "disable_ipv6", "1");

fn sysctl_dir(group: &str, ifname: &str) -> PathBuf {
    Path::new("/proc/sys/net").join(group).join(ifname)
}

/// The settings a veth gets: [`HOST_VETH_SETTINGS`], and for a pod with no
/// IPv6 address IPv6 turned off; grouped by directory (in their order
/// within a group), so each directory is opened once.
pub fn host_veth_settings(ipv6: bool) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = HOST_VETH_SETTINGS.to_vec();
    if !ipv6 {
        v.push(NO_IPV6);
    }
    v.sort_by_key(|(group, _, _)| *group);
    v
}

/// Sets [`host_veth_settings`] on `ifname`, one directory open per group.
/// A node with IPv6 disabled has no IPv6 settings for the device; those
/// are skipped.
pub fn set_backstops(ifname: &str, ipv6: bool) -> Result<(), EdgeError> {
    use std::os::unix::ffi::OsStrExt;
    let mut open: Option<(&str, std::fs::File)> = None;
    for (group, key, value) in host_veth_settings(ipv6) {
        if open.as_ref().is_none_or(|(g, _)| *g != group) {
            let dir = sysctl_dir(group, ifname);
            match std::fs::File::open(&dir) {
                Ok(f) => open = Some((group, f)),
                Err(e) if group.starts_with("ipv6") && e.kind() == io::ErrorKind::NotFound => {
                    open = None;
                    continue;
                }
                Err(source) => {
                    return Err(EdgeError::Sysctl {
                        path: dir,
                        value,
                        source,
                    })
                }
            }
        }
        let Some((_, dir)) = &open else { continue };
        let name = std::ffi::CString::new(Path::new(key).as_os_str().as_bytes()).expect("no NUL");
        let res = (|| {
            // SAFETY: a valid directory fd and C string; the fd is owned
            // right away.
            let fd = unsafe {
                libc::openat(
                    std::os::fd::AsRawFd::as_raw_fd(dir),
                    name.as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: we own the new descriptor.
            let f = unsafe { std::fs::File::from_raw_fd(fd) };
            std::io::Write::write_all(&mut &f, value.as_bytes())
        })();
        res.map_err(|source| EdgeError::Sysctl {
            path: sysctl_dir(group, ifname).join(key),
            value,
            source,
        })?;
    }
    Ok(())
}

/// The [`host_veth_settings`] `ifname` no longer has, as `group/key=found`.
pub fn backstop_drift(ifname: &str, ipv6: bool) -> Vec<String> {
    host_veth_settings(ipv6)
        .iter()
        .filter_map(|(group, key, want)| {
            let found = std::fs::read_to_string(sysctl_dir(group, ifname).join(key)).ok()?;
            (found.trim() != *want).then(|| format!("{group}/{key}={}", found.trim()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sysctl_directory_is_visited_once_and_every_setting_is_kept() {
        for ipv6 in [false, true] {
            let v = host_veth_settings(ipv6);
            let mut groups: Vec<&str> = v.iter().map(|(g, _, _)| *g).collect();
            groups.dedup();
            let mut distinct = groups.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(groups.len(), distinct.len(), "{groups:?}");
            assert_eq!(v.len(), HOST_VETH_SETTINGS.len() + usize::from(!ipv6));
            assert!(HOST_VETH_SETTINGS.iter().all(|s| v.contains(s)));
            assert_eq!(v.contains(&NO_IPV6), !ipv6);
        }
    }

    #[test]
    fn the_endpoint_entry_carries_the_socket_lb_opt_out() {
        let rec = |annotations: serde_json::Value| -> EndpointRecord {
            serde_json::from_value(serde_json::json!({
                "version": 1, "network": "n", "container_id": "c", "ifname": "eth0",
                "netns": "/var/run/netns/p", "pod": {},
                "addresses": ["10.0.0.2/32", "fd00::2/128"], "gateways": [],
                "host_ifname": "sl0", "host_ifindex": 9,
                "host_mac": "02:00:00:00:00:01", "pod_mac": "02:00:00:00:00:02",
                "mtu": 1500, "created_unix": 1, "annotations": annotations
            }))
            .unwrap()
        };
        use sluice_dataplane::maps::{EP_F_HOST, EP_F_IPV4, EP_F_IPV6};
        let plain = endpoint_entry(&rec(serde_json::json!({})));
        assert_eq!(plain.host_ifindex, 9);
        assert_eq!(plain.flags, EP_F_IPV4 | EP_F_IPV6);
        let kept = endpoint_entry(&rec(serde_json::json!({"sluice.dev/socket-lb": "true"})));
        assert_eq!(kept, plain);
        let out = endpoint_entry(&rec(serde_json::json!({"sluice.dev/socket-lb": "false"})));
        assert_eq!(out.flags, EP_F_IPV4 | EP_F_IPV6 | EP_F_NO_SOCK_LB);
        assert_eq!(out.flags & EP_F_HOST, 0);
    }

    #[test]
    fn the_guard_is_ours_only_when_nothing_runs_before_it() {
        let ours = BpfFilter {
            prio: FILTER_PRIO,
            handle: FILTER_HANDLE,
            prog_id: Some(7),
            name: Some("sluice_pod_ingress".into()),
        };
        let mut o = Observed {
            qdisc: Some(IngressQdisc {
                kind: "clsact".into(),
                block: Some(SHARED_BLOCK),
            }),
            filter: Some(ours.clone()),
            filters: vec![ours],
            ..Default::default()
        };
        assert_eq!(o.guard(EdgeMode::Clsact, 3), Some(7));
        // A foreign tcx program runs before every filter.
        o.tcx = vec![sys::TcxEntry {
            prog_id: 99,
            link_id: 5,
        }];
        assert_eq!(o.guard(EdgeMode::Clsact, 3), None);
        // tcx: our pinned link must be on the device and first.
        o.pinned_link = Some((6, 8, 3));
        assert_eq!(o.guard(EdgeMode::Tcx, 3), None, "a foreign link is first");
        o.tcx.insert(
            0,
            sys::TcxEntry {
                prog_id: 8,
                link_id: 6,
            },
        );
        assert_eq!(o.guard(EdgeMode::Tcx, 3), Some(8));
        o.pinned_link = Some((6, 8, 0));
        assert_eq!(o.guard(EdgeMode::Tcx, 3), None, "detached link");
    }
}
