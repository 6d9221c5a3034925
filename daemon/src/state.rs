//! The daemon's registry of endpoints and how it is kept equal to the
//! endpoint records on disk and to the kernel.
//!
//! Every mutation goes through [`State`] under one lock, on a blocking
//! thread (they are syscalls: netlink, bpf, setns on the netns thread).

use crate::config::Config;
use crate::datapath::{Datapath, DatapathError};
use crate::edge::{EdgeState, Outcome};
use crate::netns::{CookieError, CookieReader};
use crate::views::{EdgeView, EndpointView, ReconcileReport};
use sluice_cni::edge::{endpoint_entry, source_flags};
use sluice_common::endpoint::{record_path, EdgeMode, EndpointRecord};
use sluice_dataplane::maps::{Endpoint, EP_F_NO_SOCK_LB};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("no endpoint record for {container_id}/{ifname} under {dir}: the plugin writes it before it registers")]
    NoRecord {
        container_id: String,
        ifname: String,
        dir: String,
    },
    #[error("endpoint record of {container_id}/{ifname}: {reason}")]
    BadRecord {
        container_id: String,
        ifname: String,
        reason: String,
    },
    #[error(transparent)]
    Netns(#[from] CookieError),
    #[error(
        "host-side interface {name} (ifindex {index}) of {container_id}/{ifname} does not exist"
    )]
    HostLinkGone {
        container_id: String,
        ifname: String,
        name: String,
        index: u32,
    },
    #[error("host-side interface {name} (ifindex {index}) of {container_id}/{ifname} {problem}")]
    HostLink {
        container_id: String,
        ifname: String,
        name: String,
        index: u32,
        problem: String,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

impl RegisterError {
    /// The pod is gone: its netns or its host-side veth no longer exists.
    pub fn pod_gone(&self) -> bool {
        match self {
            RegisterError::Netns(e) => e.is_gone(),
            RegisterError::HostLinkGone { .. } => true,
            _ => false,
        }
    }
}

/// One registered pod interface.
#[derive(Debug, Clone)]
pub struct Registered {
    pub record: EndpointRecord,
    pub cookie: u64,
    /// What protects its edge: what the plugin attached until an edge pass
    /// has checked it (see [`edge_pass`]); `None` for a record of an older
    /// plugin until the first pass attaches one.
    pub edge: Option<EdgeState>,
}

impl Registered {
    fn addrs(&self) -> Vec<IpAddr> {
        addrs(&self.record)
    }
}

fn addrs(rec: &EndpointRecord) -> Vec<IpAddr> {
    rec.addresses.iter().map(|n| n.ip()).collect()
}

/// Whether an endpoint map entry leaves the socket-level LB on.
pub fn socket_lb_of(e: &Endpoint) -> bool {
    e.flags & EP_F_NO_SOCK_LB == 0
}

type Key = (String, String);

/// Registrations whose record is gone: a DEL whose unregister was lost.
/// `on_disk` is a listing taken before the state lock (a register never
/// waits on a directory of a thousand files), so a pod whose ADD wrote its
/// record and registered after the listing is missing from it; only a
/// record that is not there now (`exists`) makes a registration lost.
/// Before, such a pod was unregistered and its map entries removed, and
/// the pod had no traffic until the next pass put them back (found by the
/// soak: a live pod without its source entries).
fn lost_registrations<'a>(
    registered: impl Iterator<Item = &'a Key>,
    on_disk: &HashSet<Key>,
    exists: impl Fn(&Key) -> bool,
) -> Vec<Key> {
    registered
        .filter(|k| !on_disk.contains(*k) && !exists(k))
        .cloned()
        .collect()
}

#[derive(Debug)]
pub struct State {
    pub cfg: Config,
    pub dp: Datapath,
    cookies: CookieReader,
    pub host_cookie: u64,
    pub endpoints: BTreeMap<Key, Registered>,
}

impl State {
    pub fn new(cfg: Config, dp: Datapath, cookies: CookieReader) -> Result<Self, anyhow::Error> {
        let host_cookie = crate::netns::current_cookie().map_err(|e| {
            anyhow::anyhow!("reading the node netns cookie (SO_NETNS_COOKIE needs Linux 5.14): {e}")
        })?;
        Ok(State {
            cfg,
            dp,
            cookies,
            host_cookie,
            endpoints: BTreeMap::new(),
        })
    }

    /// The node's own netns gets the socket programs too.
    pub fn put_host_entry(&mut self) -> Result<(), DatapathError> {
        self.dp.put_endpoint(self.host_cookie, &Endpoint::host())
    }

    /// Makes the datapath carry one record: its sources and its endpoint
    /// entry (the plugin wrote both during ADD; writing them again is
    /// idempotent and repairs a restart after a crash). The edge program
    /// is the plugin's to attach and [`edge_pass`]'s to keep.
    fn realize(&mut self, rec: &EndpointRecord, fresh: bool) -> Result<Registered, RegisterError> {
        let host_err = |problem: String| RegisterError::HostLink {
            container_id: rec.container_id.clone(),
            ifname: rec.ifname.clone(),
            name: rec.host_ifname.clone(),
            index: rec.host_ifindex,
            problem,
        };
        if rec.addresses.is_empty() {
            return Err(RegisterError::BadRecord {
                container_id: rec.container_id.clone(),
                ifname: rec.ifname.clone(),
                reason: "it has no addresses".into(),
            });
        }
        // A register (fresh) takes the cookie the plugin read from the
        // kernel at ADD and already keyed the endpoint map with, once the
        // path is checked to be a netns: no pod waits on another thread
        // entering its netns. Restores and reconciles read it from the
        // netns itself.
        let cookie = match rec.netns_cookie {
            Some(c) if fresh => {
                // Still a network namespace (one open and fstatfs, on
                // this thread).
                sluice_cni::netns::Netns::open(Path::new(&rec.netns))
                    .map_err(crate::netns::CookieError::from)?;
                c
            }
            _ => self.cookies.cookie(Path::new(&rec.netns))?,
        };
        // SIOCGIFNAME, not RTM_GETLINK: it does not take the RTNL lock,
        // which a tcx attach holds for an RCU grace period.
        match ifname_of(rec.host_ifindex) {
            Ok(Some(name)) if name == rec.host_ifname => {}
            Ok(Some(name)) => return Err(host_err(format!("is now named {name}"))),
            Ok(None) => {
                return Err(RegisterError::HostLinkGone {
                    container_id: rec.container_id.clone(),
                    ifname: rec.ifname.clone(),
                    name: rec.host_ifname.clone(),
                    index: rec.host_ifindex,
                })
            }
            Err(e) => return Err(host_err(format!("cannot be read: {e}"))),
        }
        if rec.netns_cookie.is_some_and(|c| c != cookie) {
            warn!(container_id = %rec.container_id, recorded = ?rec.netns_cookie, cookie,
                  "the record's netns cookie is not the netns's; using the netns's");
        }
        let key = (rec.container_id.clone(), rec.ifname.clone());
        let mut edge = rec.edge.as_ref().map(EdgeState::from_record);
        if let Some(old) = self.endpoints.get(&key).cloned() {
            if old.record.host_ifindex != rec.host_ifindex || old.cookie != cookie {
                self.forget(&old);
            } else if old.edge.is_some() {
                edge = old.edge;
            }
        } else if fresh && rec.edge.is_none() {
            // An older plugin's ADD: it did not reset the counters.
            self.dp.reset_counters(rec.host_ifindex);
        }
        self.dp
            .put_sources(rec.host_ifindex, &addrs(rec), source_flags(rec))?;
        self.dp.put_endpoint(cookie, &endpoint_entry(rec))?;
        let r = Registered {
            record: rec.clone(),
            cookie,
            edge,
        };
        self.endpoints.insert(key, r.clone());
        Ok(r)
    }

    /// Removes one endpoint's entries from the datapath (not the record).
    fn forget(&mut self, r: &Registered) {
        self.dp.remove_sources(r.record.host_ifindex, &r.addrs());
        self.dp.detach_tc(r.record.host_ifindex);
        self.dp.reset_counters(r.record.host_ifindex);
        // Another interface of the same pod keeps the netns entry.
        let shared = self.endpoints.values().find(|o| {
            o.cookie == r.cookie
                && (&o.record.container_id, &o.record.ifname)
                    != (&r.record.container_id, &r.record.ifname)
        });
        match shared {
            Some(o) => {
                if let Err(e) = self.dp.put_endpoint(o.cookie, &endpoint_entry(&o.record)) {
                    warn!("cannot restore the endpoint entry of a sibling interface: {e}");
                }
            }
            None => self.dp.remove_endpoint(r.cookie),
        }
    }

    /// `register`: the record on disk is the truth; the request's copy only
    /// names it.
    pub fn register(&mut self, req: &EndpointRecord) -> Result<Registered, RegisterError> {
        let disk = EndpointRecord::load(&self.cfg.state_dir, &req.container_id, &req.ifname)
            .map_err(|e| RegisterError::BadRecord {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| RegisterError::NoRecord {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
                dir: sluice_common::endpoint::endpoints_dir(&self.cfg.state_dir)
                    .display()
                    .to_string(),
            })?;
        if &disk != req {
            warn!(container_id = %req.container_id, "register differs from the record on disk; using the record");
        }
        let r = self.realize(&disk, true)?;
        info!(container_id = %disk.container_id, ifname = %disk.ifname, cookie = r.cookie,
              host = %disk.host_ifname, "endpoint registered");
        Ok(r)
    }

    /// `unregister`: idempotent; returns whether it was known.
    pub fn unregister(&mut self, container_id: &str, ifname: &str) -> bool {
        let key = (container_id.to_string(), ifname.to_string());
        match self.endpoints.remove(&key) {
            Some(r) => {
                self.forget(&r);
                info!(%container_id, %ifname, "endpoint unregistered");
                true
            }
            None => false,
        }
    }

    /// Brings the datapath in line with the records. `full` (at start) also
    /// sweeps map entries and pins that no record explains; the periodic
    /// pass only picks up and drops endpoints.
    pub fn reconcile(&mut self, full: bool) -> ReconcileReport {
        let listed = Listed::read(&self.cfg.state_dir);
        self.reconcile_listed(listed, full)
    }

    /// [`State::reconcile`] for a state shared with the API: the records
    /// are read and their netns looked at before the lock is taken, so a
    /// register never waits on a directory of a thousand files.
    pub fn reconcile_shared(state: &std::sync::Mutex<State>, full: bool) -> ReconcileReport {
        let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
        let dir = lock().cfg.state_dir.clone();
        let listed = Listed::read(&dir);
        lock().reconcile_listed(listed, full)
    }

    fn reconcile_listed(&mut self, listed: Listed, full: bool) -> ReconcileReport {
        let mut rep = ReconcileReport::default();
        // Host ifindexes of records that could not be applied: their pods
        // may well be alive, so the sweep leaves their entries alone.
        let mut keep = HashSet::new();
        let Listed {
            records,
            bad,
            netns_alive,
        } = listed;
        for e in bad {
            rep.invalid_records += 1;
            // Its pod may well be alive: keep what its host veth holds (the
            // veth's name follows from the record's file name).
            match unreadable_record_ifindex(e.path()) {
                Some(i) => {
                    warn!(
                        "skipping an endpoint record: {e}; the datapath of its pod's veth (#{i}) is \
                         kept as it is until the record is fixed or the pod is deleted"
                    );
                    keep.insert(i);
                }
                None => warn!(
                    "skipping an endpoint record: {e}; no veth of that name here (its pod is gone)"
                ),
            }
        }
        let on_disk: HashSet<Key> = records
            .iter()
            .map(|r| (r.container_id.clone(), r.ifname.clone()))
            .collect();
        // Registered but the record is gone: a DEL whose unregister was lost.
        let state_dir = self.cfg.state_dir.clone();
        let lost = lost_registrations(self.endpoints.keys(), &on_disk, |(cid, ifname)| {
            record_path(&state_dir, cid, ifname).exists()
        });
        for (cid, ifname) in lost {
            self.unregister(&cid, &ifname);
            rep.removed += 1;
        }
        for rec in &records {
            let key = (rec.container_id.clone(), rec.ifname.clone());
            let known = self.endpoints.get(&key).cloned();
            if !full {
                if let Some(k) = &known {
                    // Cheap check: both ends still there and unchanged.
                    if k.record == *rec && netns_alive.contains(&rec.netns) {
                        continue;
                    }
                }
            }
            // The listing was taken before the lock: a pod DEL'd since is
            // not put back.
            if !record_path(&self.cfg.state_dir, &rec.container_id, &rec.ifname).exists() {
                continue;
            }
            match self.realize(rec, false) {
                Ok(_) if known.is_none() || full => rep.restored += 1,
                Ok(_) => {}
                Err(e) if e.pod_gone() => {
                    info!(container_id = %rec.container_id, ifname = %rec.ifname,
                          "pod is gone ({e}); removing its endpoint and record");
                    self.unregister(&rec.container_id, &rec.ifname);
                    if let Err(e) =
                        EndpointRecord::remove(&self.cfg.state_dir, &rec.container_id, &rec.ifname)
                    {
                        warn!("{e}");
                    }
                    rep.cleaned += 1;
                }
                Err(e) => {
                    warn!(container_id = %rec.container_id, ifname = %rec.ifname, "cannot restore endpoint: {e}");
                    keep.insert(rec.host_ifindex);
                    rep.failed += 1;
                }
            }
        }
        // The sweep of entries no record explains: at start (pods deleted
        // while the daemon was down), and on every periodic pass too (an
        // ADD killed after its entries and before its record, whose DEL
        // found no veth to name them by; anything else left by a plugin
        // killed half-way), so leftovers live one interval at most.
        // Records are listed again under the datapath lock: a pod whose ADD
        // wrote its entries after the first listing has its record on disk
        // by the time the lock is ours. At start the daemon waits for the
        // lock; a periodic pass does not hold up ADDs: it sweeps next time.
        let lock = if full {
            sluice_common::endpoint::lock_datapath(&self.cfg.state_dir, true)
                .map_err(|e| warn!("cannot take the datapath lock for the sweep: {e}"))
                .ok()
        } else {
            sluice_common::endpoint::try_lock_datapath(&self.cfg.state_dir)
                .map_err(|e| warn!("cannot take the datapath lock for the sweep: {e}"))
                .ok()
                .flatten()
        };
        if full || lock.is_some() {
            let (records, _) = EndpointRecord::list(&self.cfg.state_dir);
            for rec in records {
                let key = (rec.container_id.clone(), rec.ifname.clone());
                if !self.endpoints.contains_key(&key) {
                    keep.insert(rec.host_ifindex);
                }
            }
            rep.stale_entries = self.sweep(&keep);
        }
        rep
    }

    /// Removes map entries and tc pins that no registered endpoint explains
    /// (pods deleted while the daemon was down), except those of the host
    /// ifindexes in `keep` (records that failed to apply: their pods may be
    /// alive, and half a datapath would drop their traffic). Only this
    /// daemon's pins are ever looked at.
    fn sweep(&mut self, keep: &HashSet<u32>) -> usize {
        let mut n = 0;
        let cookies: HashSet<u64> = self
            .endpoints
            .values()
            .map(|r| r.cookie)
            .chain([self.host_cookie])
            .collect();
        for c in self.dp.endpoint_cookies() {
            let kept = self
                .dp
                .get_endpoint(c)
                .is_some_and(|e| keep.contains(&e.host_ifindex));
            if !cookies.contains(&c) && !kept {
                self.dp.remove_endpoint(c);
                n += 1;
            }
        }
        let want = crate::datapath::source_set(self.endpoints.values().flat_map(|r| {
            r.addrs()
                .into_iter()
                .map(move |a| (r.record.host_ifindex, a))
        }));
        for k in self.dp.source_keys() {
            if !want.contains(&k) && !keep.contains(&k.ifindex) {
                self.dp.remove_source_key(&k);
                n += 1;
            }
        }
        let ifindexes: HashSet<u32> = self
            .endpoints
            .values()
            .map(|r| r.record.host_ifindex)
            .chain(keep.iter().copied())
            .collect();
        for i in self.dp.counter_keys() {
            if !ifindexes.contains(&i) {
                self.dp.reset_counters(i);
                n += 1;
            }
        }
        for i in self.dp.tc_pins() {
            if !ifindexes.contains(&i) {
                self.dp.detach_tc(i);
                n += 1;
            }
        }
        n
    }

    pub fn views(&self) -> Vec<EndpointView> {
        self.endpoints
            .values()
            .map(|r| {
                let c = self.dp.counters(r.record.host_ifindex);
                let entry = self.dp.get_endpoint(r.cookie);
                EndpointView {
                    container_id: r.record.container_id.clone(),
                    ifname: r.record.ifname.clone(),
                    namespace: r.record.pod.namespace.clone(),
                    pod: r.record.pod.name.clone(),
                    netns: r.record.netns.clone(),
                    cookie: r.cookie,
                    addresses: r.addrs(),
                    host_ifname: r.record.host_ifname.clone(),
                    host_ifindex: r.record.host_ifindex,
                    edge: r.edge.as_ref().map(|e| EdgeView::of(e, &c)),
                    in_endpoint_map: entry.is_some(),
                    // What the datapath does; the record's wish while the
                    // entry is missing.
                    socket_lb: entry
                        .as_ref()
                        .map_or(!r.record.socket_lb_opt_out(), socket_lb_of),
                    spoof_drops: c.spoofed(),
                    spoof_bytes: c.drop_bytes,
                }
            })
            .collect()
    }
}

/// What one edge pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgePassReport {
    pub checked: usize,
    pub repaired: usize,
    pub failed: usize,
}

/// Checks the edge of every endpoint (or of `only`), repairing what is
/// missing or older (see [`crate::edge::ensure`]). The state lock is held
/// only to pick the endpoints up and to record the results.
pub fn edge_pass(
    state: &std::sync::Mutex<State>,
    nl: &mut sluice_cni::netlink::Netlink,
    only: Option<&HashSet<Key>>,
) -> EdgePassReport {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let (work, pins, prog, reply_prog, default_mode) = {
        let st = lock();
        let work: Vec<(Key, u32, String, bool, bool, Option<EdgeState>)> = st
            .endpoints
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o.contains(*k)))
            .map(|(k, r)| {
                (
                    k.clone(),
                    r.record.host_ifindex,
                    r.record.host_ifname.clone(),
                    r.record.addresses.iter().any(|a| a.is_ipv6()),
                    r.record.socket_lb_opt_out(),
                    r.edge.clone(),
                )
            })
            .collect();
        (
            work,
            st.dp.pins.clone(),
            st.dp.edge_prog.clone(),
            st.dp.reply_prog.clone(),
            st.dp.edge_mode,
        )
    };
    let mut rep = EdgePassReport::default();
    for (key, ifindex, ifname, ipv6, per_packet, known) in work {
        let mode: EdgeMode = known.as_ref().map_or(default_mode, |k| k.mode);
        let veth = crate::edge::Veth {
            ifindex,
            ifname: &ifname,
            ipv6,
            reply: reply_prog.as_deref().filter(|_| per_packet),
        };
        let res = crate::edge::ensure(nl, &pins, &prog, veth, mode, known.as_ref());
        rep.checked += 1;
        let mut st = lock();
        let Some(r) = st.endpoints.get_mut(&key) else {
            continue;
        };
        if r.record.host_ifindex != ifindex {
            continue;
        }
        match res {
            Ok((edge, Outcome::Kept)) => r.edge = Some(edge),
            Ok((edge, Outcome::Repaired(why))) => {
                let first = known.as_ref().is_none_or(|k| k.verified_unix_ms == 0);
                if first && edge.repairs == known.as_ref().map_or(0, |k| k.repairs) {
                    info!(container_id = %key.0, ifname = %key.1, mode = %edge.mode,
                          "edge check attached by the daemon ({why})");
                } else {
                    warn!(container_id = %key.0, ifname = %key.1, mode = %edge.mode,
                          "edge check repaired: {why}");
                    rep.repaired += 1;
                }
                r.edge = Some(edge);
            }
            Err(e) => {
                rep.failed += 1;
                warn!(container_id = %key.0, ifname = %key.1, "cannot check or repair the edge: {e}");
                if let Some(edge) = r.edge.as_mut() {
                    edge.last_problem = Some(e.to_string());
                }
            }
        }
    }
    rep
}

/// The host veth's ifindex of an unreadable record, from the record's file
/// name (`<container id>:<ifname>.json`), if that veth exists.
fn unreadable_record_ifindex(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?.strip_suffix(".json")?;
    let (cid, ifname) = name.rsplit_once(':')?;
    let host = sluice_cni::naming::host_ifname(cid, ifname);
    nix::net::if_::if_nametoindex(host.as_str()).ok()
}

/// The endpoint records as read from disk, and which of their netns paths
/// exist: what a reconcile needs before it takes the state lock.
struct Listed {
    records: Vec<EndpointRecord>,
    bad: Vec<sluice_common::endpoint::RecordError>,
    netns_alive: HashSet<String>,
}

impl Listed {
    fn read(state_dir: &Path) -> Self {
        let (records, bad) = EndpointRecord::list(state_dir);
        let netns_alive = records
            .iter()
            .filter(|r| Path::new(&r.netns).exists())
            .map(|r| r.netns.clone())
            .collect();
        Listed {
            records,
            bad,
            netns_alive,
        }
    }
}

/// The name of a link of the daemon's netns by index (`if_indextoname`),
/// `None` if there is none.
fn ifname_of(index: u32) -> std::io::Result<Option<String>> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) | Some(libc::ENODEV) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(Some(name.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_without_socket_lb_reads_as_on() {
        let v = serde_json::json!({
            "container_id": "c", "ifname": "eth0", "netns": "/p", "cookie": 1,
            "addresses": [], "host_ifname": "sl0", "host_ifindex": 9,
            "in_endpoint_map": true, "spoof_drops": 0, "spoof_bytes": 0
        });
        let e: EndpointView = serde_json::from_value(v).unwrap();
        assert!(e.socket_lb);
    }

    /// The race the soak found: the periodic pass lists the records, a
    /// pod's ADD writes its record and registers, then the pass takes the
    /// lock. That pod is not in the listing but its record is on disk: it
    /// is not lost. A registration whose record is really gone is.
    #[test]
    fn a_registration_newer_than_the_listing_is_not_lost() {
        let key = |c: &str| (c.to_string(), "eth0".to_string());
        let registered = [key("listed"), key("added-after-listing"), key("deleted")];
        let on_disk: HashSet<Key> = [key("listed")].into_iter().collect();
        let now_on_disk = [key("listed"), key("added-after-listing")];
        let lost = lost_registrations(registered.iter(), &on_disk, |k| now_on_disk.contains(k));
        assert_eq!(lost, vec![key("deleted")]);
    }
}
