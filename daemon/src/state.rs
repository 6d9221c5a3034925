//! The daemon's registry of endpoints and how it is kept equal to the
//! endpoint records on disk and to the kernel.
//!
//! Every mutation goes through [`State`] under one lock, on a blocking
//! thread (they are syscalls: netlink, bpf, setns on the netns thread).

use crate::config::Config;
use crate::datapath::{Datapath, DatapathError, TcLink};
use crate::netns::{CookieError, CookieReader};
use crate::views::{EndpointView, ReconcileReport};
use sluice_common::endpoint::EndpointRecord;
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
    /// `None` until the tc program is on the host-side veth (see
    /// [`State::attach_pending`]).
    pub tc: Option<TcLink>,
}

impl Registered {
    fn addrs(&self) -> Vec<IpAddr> {
        addrs(&self.record)
    }
}

fn addrs(rec: &EndpointRecord) -> Vec<IpAddr> {
    rec.addresses.iter().map(|n| n.ip()).collect()
}

/// The endpoint map entry of a record: the pod's host veth and addresses,
/// and `EP_F_NO_SOCK_LB` when the pod opted out of the socket-level
/// service load balancing (`sluice.dev/socket-lb: "false"`).
pub fn endpoint_entry(rec: &EndpointRecord) -> Endpoint {
    let mut e = Endpoint::pod(rec.host_ifindex, addrs(rec));
    if rec.socket_lb_opt_out() {
        e.flags |= EP_F_NO_SOCK_LB;
    }
    e
}

/// Whether an endpoint map entry leaves the socket-level LB on.
pub fn socket_lb_of(e: &Endpoint) -> bool {
    e.flags & EP_F_NO_SOCK_LB == 0
}

type Key = (String, String);

#[derive(Debug)]
pub struct State {
    pub cfg: Config,
    pub dp: Datapath,
    cookies: CookieReader,
    pub host_cookie: u64,
    pub endpoints: BTreeMap<Key, Registered>,
    attaching: HashSet<Key>,
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
            attaching: HashSet::new(),
        })
    }

    /// The node's own netns gets the socket programs too.
    pub fn put_host_entry(&mut self) -> Result<(), DatapathError> {
        self.dp.put_endpoint(self.host_cookie, &Endpoint::host())
    }

    /// Makes the datapath carry one record: sources, endpoint entry, tc
    /// program, in that order (so the program never drops the pod's own
    /// traffic for want of its source entries).
    ///
    /// With `attach_now` false the tc program is left for
    /// [`State::attach_pending`]: a tcx attach waits for an RCU grace period
    /// in the kernel (about 9 ms here), which must not sit on ADD's path.
    /// The runtime starts the pod's containers only after ADD returns, so
    /// the check is in place before the pod can send.
    fn realize(
        &mut self,
        rec: &EndpointRecord,
        fresh: bool,
        attach_now: bool,
    ) -> Result<Registered, RegisterError> {
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
        let t0 = std::time::Instant::now();
        let cookie = self.cookies.cookie(Path::new(&rec.netns))?;
        let t_cookie = t0.elapsed();
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
        let key = (rec.container_id.clone(), rec.ifname.clone());
        let mut kept_tc = None;
        if let Some(old) = self.endpoints.get(&key).cloned() {
            if old.record.host_ifindex != rec.host_ifindex || old.cookie != cookie {
                self.forget(&old);
            } else {
                kept_tc = old.tc;
            }
        } else if fresh {
            // A new interface on this ifindex starts with clean counters;
            // a restore keeps what the datapath counted meanwhile.
            self.dp.reset_counters(rec.host_ifindex);
        }
        self.dp.put_sources(rec.host_ifindex, &addrs(rec))?;
        self.dp.put_endpoint(cookie, &endpoint_entry(rec))?;
        let tc = match (kept_tc, attach_now) {
            (Some(tc), _) => Some(tc),
            (None, true) => Some(self.dp.attach_tc(&rec.host_ifname, rec.host_ifindex)?),
            (None, false) => None,
        };
        tracing::debug!(container_id = %rec.container_id, cookie_us = t_cookie.as_micros() as u64,
                        total_us = t0.elapsed().as_micros() as u64, "realized");
        let r = Registered {
            record: rec.clone(),
            cookie,
            tc,
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
        let r = self.realize(&disk, true, false)?;
        info!(container_id = %disk.container_id, ifname = %disk.ifname, cookie = r.cookie,
              host = %disk.host_ifname, "endpoint registered");
        Ok(r)
    }

    /// Endpoints still waiting for their tc program, marked as in flight
    /// so concurrent callers do not attach the same one twice.
    fn take_pending(&mut self) -> Vec<(Key, String, u32)> {
        let pending: Vec<(Key, String, u32)> = self
            .endpoints
            .iter()
            .filter(|(k, r)| r.tc.is_none() && !self.attaching.contains(*k))
            .map(|(k, r)| {
                (
                    k.clone(),
                    r.record.host_ifname.clone(),
                    r.record.host_ifindex,
                )
            })
            .collect();
        self.attaching.extend(pending.iter().map(|p| p.0.clone()));
        pending
    }

    /// Records an attach done outside the lock. If the endpoint went away
    /// (or moved) meanwhile, the attachment is taken down again.
    fn finish_attach(
        &mut self,
        key: &Key,
        ifindex: u32,
        res: Result<TcLink, DatapathError>,
    ) -> bool {
        self.attaching.remove(key);
        match (self.endpoints.get_mut(key), res) {
            (Some(r), Ok(tc)) if r.record.host_ifindex == ifindex => {
                r.tc = Some(tc);
                true
            }
            (_, Ok(_)) => {
                if !self
                    .endpoints
                    .values()
                    .any(|r| r.record.host_ifindex == ifindex)
                {
                    self.dp.detach_tc(ifindex);
                }
                false
            }
            (_, Err(e)) => {
                warn!(container_id = %key.0, ifname = %key.1, "tc attach failed (the periodic reconcile retries): {e}");
                false
            }
        }
    }

    /// Attaches pending tc programs while holding the state (restore and
    /// the periodic pass, where nothing waits on it).
    fn attach_pending_locked(&mut self) -> usize {
        let mut n = 0;
        for (key, ifname, ifindex) in self.take_pending() {
            let res = self.dp.attach_tc(&ifname, ifindex);
            n += usize::from(self.finish_attach(&key, ifindex, res));
        }
        n
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
        let mut rep = ReconcileReport::default();
        // Host ifindexes of records that could not be applied: their pods
        // may well be alive, so the sweep leaves their entries alone.
        let mut keep = HashSet::new();
        let (records, bad) = EndpointRecord::list(&self.cfg.state_dir);
        for e in bad {
            warn!("skipping an endpoint record: {e}");
            rep.invalid_records += 1;
        }
        let on_disk: HashSet<Key> = records
            .iter()
            .map(|r| (r.container_id.clone(), r.ifname.clone()))
            .collect();
        // Registered but the record is gone: a DEL whose unregister was lost.
        let lost: Vec<Key> = self
            .endpoints
            .keys()
            .filter(|k| !on_disk.contains(*k))
            .cloned()
            .collect();
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
                    if k.record == *rec && Path::new(&rec.netns).exists() {
                        continue;
                    }
                }
            }
            match self.realize(rec, false, true) {
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
        self.attach_pending_locked();
        if full {
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
                    tc_mode: r.tc.as_ref().map(|t| t.mode),
                    tc_link_id: r.tc.as_ref().and_then(|t| t.id),
                    in_endpoint_map: entry.is_some(),
                    // What the datapath does; the record's wish while the
                    // entry is missing.
                    socket_lb: entry
                        .as_ref()
                        .map_or(!r.record.socket_lb_opt_out(), socket_lb_of),
                    spoof_drops: c.spoof_drops,
                    spoof_bytes: c.spoof_bytes,
                }
            })
            .collect()
    }
}

/// Attaches the tc programs registrations left pending, holding the state
/// lock only to pick them up and to record the result: the attach itself
/// (an RCU grace period for tcx) runs under the attacher's own lock, so
/// registrations and API reads go on meanwhile. Returns how many attached.
pub fn attach_pending(state: &std::sync::Mutex<State>) -> usize {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let (pending, attacher) = {
        let mut st = lock();
        (st.take_pending(), st.dp.tc.clone())
    };
    let mut n = 0;
    for (key, ifname, ifindex) in pending {
        let res = attacher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attach(&ifname, ifindex);
        n += usize::from(lock().finish_attach(&key, ifindex, res));
    }
    n
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
    use sluice_dataplane::maps::{EP_F_HOST, EP_F_IPV4, EP_F_IPV6};

    fn record(annotations: serde_json::Value) -> EndpointRecord {
        serde_json::from_value(serde_json::json!({
            "version": 1, "network": "n", "container_id": "c", "ifname": "eth0",
            "netns": "/var/run/netns/p", "pod": {},
            "addresses": ["10.0.0.2/32", "fd00::2/128"], "gateways": [],
            "host_ifname": "sl0", "host_ifindex": 9,
            "host_mac": "02:00:00:00:00:01", "pod_mac": "02:00:00:00:00:02",
            "mtu": 1500, "created_unix": 1, "annotations": annotations
        }))
        .unwrap()
    }

    #[test]
    fn the_entry_carries_the_socket_lb_opt_out() {
        let plain = endpoint_entry(&record(serde_json::json!({})));
        assert_eq!(plain.host_ifindex, 9);
        assert_eq!(plain.flags, EP_F_IPV4 | EP_F_IPV6);
        assert!(socket_lb_of(&plain));
        let kept = endpoint_entry(&record(serde_json::json!({"sluice.dev/socket-lb": "true"})));
        assert_eq!(kept, plain);
        let out = endpoint_entry(&record(
            serde_json::json!({"sluice.dev/socket-lb": "false"}),
        ));
        assert_eq!(out.flags, EP_F_IPV4 | EP_F_IPV6 | EP_F_NO_SOCK_LB);
        assert_eq!(out.flags & EP_F_HOST, 0);
        assert_eq!((out.ipv4, out.ipv6), (plain.ipv4, plain.ipv6));
        assert!(!socket_lb_of(&out));
    }

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
}
