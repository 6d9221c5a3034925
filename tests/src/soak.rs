//! The fault suite's machinery, shared by `tests/tests/faults.rs` (a bounded
//! run in the test suite) and `bench/run soak` (30 minutes):
//! - [`ServiceRig`]: a node with its daemon, a Service over two backend
//!   pods, and a client pod;
//! - [`Steady`]: steady service traffic from the client pod and from the
//!   node (requests on established connections, and new connections);
//! - [`kill_loop`]: the daemon SIGKILLed and restarted at random intervals;
//! - [`Churn`]: pods created and deleted in waves by parallel plugin runs,
//!   some of them SIGKILLed, the way a runtime cleans up after them;
//! - [`storm`]: a source changing 1,000 times a second, and whether the
//!   daemon kept up, coalesced and stayed in bounded memory;
//! - [`check`]: the node compared with its live pods: kernel (veths,
//!   addresses, routes, tc attachment), pinned maps, endpoint records and
//!   the IPAM store. Anything left for a pod that is gone, or missing for
//!   one that exists, is a problem.

use crate::daemon::{netns_cookie, Daemon};
use crate::{bin, manifests, spawn_cni, Node, Ns, Pod, Server};
use serde_json::Value;
use sluice_common::endpoint::EndpointRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The pod ranges of the rig: one /20 per family, room for the churn.
pub const RANGES: &str = r#"[[{"subnet":"10.209.0.0/20"}],[{"subnet":"fd00:209::/64"}]]"#;
/// The Service every client talks to.
pub const SERVICE: &str = "10.96.209.10:80";

/// A node, its daemon (behind a lock: [`kill_loop`] restarts it), a Service
/// over two backend pods, and a client pod.
#[derive(Debug)]
pub struct ServiceRig<'a> {
    pub node: &'a Node,
    pub daemon: Mutex<Daemon<'a>>,
    pub conf: String,
    pub backends: Vec<Pod<'a>>,
    pub client: Pod<'a>,
    _servers: Vec<Server>,
}

impl<'a> ServiceRig<'a> {
    /// `extra`: more daemon config lines.
    pub fn new(node: &'a Node, extra: &str) -> Self {
        let dir = node.dir.path().join("services");
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = Daemon::start_with(
            node,
            &format!(
                "services_dir = \"{}\"\nnode_name = \"node-a\"\n{extra}",
                dir.display()
            ),
        );
        let conf = node.conf("1.0.0", RANGES);
        let backends: Vec<Pod<'a>> = (0..2).map(|_| Pod::add(node, &conf)).collect();
        let client = Pod::add(node, &conf);
        let servers = backends
            .iter()
            .enumerate()
            .map(|(i, p)| Server::start(&p.ns, "tcp", 8080, &format!("web-{i}")))
            .collect();
        let ips: Vec<_> = backends
            .iter()
            .map(|p| match p.ip(false) {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("ip(false) is v4"),
            })
            .collect();
        let (ip, port) = SERVICE.split_once(':').unwrap();
        manifests::write_atomic(
            &dir,
            "web.yaml",
            &manifests::service(
                "soak",
                0,
                ip.parse().unwrap(),
                port.parse().unwrap(),
                &ips,
                8080,
            ),
        );
        let rig = ServiceRig {
            node,
            daemon: Mutex::new(daemon),
            conf,
            backends,
            client,
            _servers: servers,
        };
        let answered = crate::daemon::eventually(10, || {
            crate::probe(&rig.client.ns, &["tcp", SERVICE])
                .is_ok_and(|v| v["reply"].as_str().is_some_and(|r| r.starts_with("web-")))
        });
        assert!(answered, "the service never answered");
        rig
    }

    /// The rig's own pods, as [`check`] takes them.
    pub fn pods(&self) -> Vec<(&Ns, &str)> {
        self.backends
            .iter()
            .chain([&self.client])
            .map(|p| (&p.ns, p.cid.as_str()))
            .collect()
    }

    /// Starts steady traffic to the service from the client pod and from
    /// the node, `conns` established connections each, until
    /// [`Steady::finish`] (or `max`).
    pub fn traffic(&self, conns: usize, max: Duration) -> Steady {
        let ms = max.as_millis().to_string();
        let c = conns.to_string();
        let spawn = |ns: &Ns| {
            Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .arg(bin("sluice-probe"))
                .args(["steady", SERVICE, &c, &ms])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start steady traffic")
        };
        Steady(vec![spawn(&self.client.ns), spawn(&self.node.ns)])
    }
}

/// What the steady clients counted, summed.
#[derive(Debug, Default, Clone)]
pub struct SteadyReport {
    pub requests: u64,
    pub failed_requests: u64,
    pub connects: u64,
    pub failed_connects: u64,
    pub errors: Vec<String>,
}

/// Running steady clients ([`ServiceRig::traffic`]).
#[derive(Debug)]
pub struct Steady(Vec<Child>);

impl Steady {
    /// Stops the clients; their counts summed.
    pub fn finish(mut self) -> SteadyReport {
        let mut r = SteadyReport::default();
        for c in &mut self.0 {
            drop(c.stdin.take());
        }
        for c in std::mem::take(&mut self.0) {
            let out = c.wait_with_output().expect("steady client");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "steady client: {e}: {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
            r.requests += n("requests");
            r.failed_requests += n("failed_requests");
            r.connects += n("connects");
            r.failed_connects += n("failed_connects");
            r.errors.extend(
                v["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str().map(String::from)),
            );
        }
        r
    }
}

impl Drop for Steady {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// SIGKILLs the daemon at random intervals in `every` and starts it again
/// at once, until `stop`; returns how many times. Runs on the calling
/// thread (meant for a scoped thread).
pub fn kill_loop(
    daemon: &Mutex<Daemon<'_>>,
    every: std::ops::Range<Duration>,
    stop: &AtomicBool,
) -> u32 {
    let mut kills = 0;
    loop {
        let wait = fastrand::u64(every.start.as_millis() as u64..every.end.as_millis() as u64);
        let until = Instant::now() + Duration::from_millis(wait);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if stop.load(Ordering::Relaxed) {
            return kills;
        }
        let mut d = daemon.lock().unwrap();
        d.kill9();
        d.spawn();
        kills += 1;
    }
}

/// A pod the churn created and has not deleted.
#[derive(Debug)]
pub struct LivePod {
    pub ns: Ns,
    pub cid: String,
}

/// What a churn did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChurnStats {
    pub waves: u32,
    pub adds: u32,
    pub dels: u32,
    pub adds_killed: u32,
    pub dels_killed: u32,
}

/// Pods created and deleted in waves, with plugin runs killed at random.
#[derive(Debug)]
pub struct Churn<'a> {
    node: &'a Node,
    conf: String,
    pub live: Vec<LivePod>,
    pub stats: ChurnStats,
    /// Plugin runs that failed without being killed: each is a bug.
    pub errors: Vec<String>,
}

/// A plugin run of a wave.
#[derive(Debug)]
struct Run {
    child: Child,
    /// When it is to be killed, if it is.
    kill_at: Option<Instant>,
}

impl<'a> Churn<'a> {
    pub fn new(node: &'a Node, conf: &str) -> Self {
        Churn {
            node,
            conf: conf.to_string(),
            live: Vec::new(),
            stats: ChurnStats::default(),
            errors: Vec::new(),
        }
    }

    /// Runs `cmd` for each pod, `parallel` at a time, SIGKILLing each run
    /// with probability `kill` at a random moment of its first 20 ms (4 ms
    /// for a DEL, which is over sooner).
    /// Returns, per pod, whether its run finished with success (a killed
    /// run that had already finished counts as finished).
    fn run(&mut self, cmd: &str, pods: &[(&Ns, &str)], parallel: usize, kill: f64) -> Vec<bool> {
        let sluice = bin("sluice");
        let mut ok = Vec::with_capacity(pods.len());
        // A DEL is over in a few ms (the veth is deleted in the
        // background), an ADD takes longer: each is hit somewhere along its
        // own run, counted from its own spawn. (Counted from the batch's
        // last spawn, as before, a loaded .ci/run hit 2 of the 1,000-pod
        // churn's ~50 chosen ADDs; counted from its own, 34-38.)
        let span = Duration::from_micros(if cmd == "ADD" { 20_000 } else { 4_000 });
        for batch in pods.chunks(parallel.max(1)) {
            let mut runs: Vec<Run> = batch
                .iter()
                .map(|(ns, cid)| {
                    let chosen = fastrand::f64() < kill;
                    let kill_at = chosen.then(|| Instant::now() + span.mul_f64(fastrand::f64()));
                    Run {
                        child: spawn_cni(
                            &self.node.ns,
                            &sluice,
                            cmd,
                            cid,
                            Some(&ns.path()),
                            "eth0",
                            &self.conf,
                            &[],
                        ),
                        kill_at,
                    }
                })
                .collect();
            // Every chosen run is killed at its moment, before any run is
            // waited for: killed in turn after waiting for the batch's
            // earlier runs, many had already finished (the 1,000-pod churn
            // hit 14 and 27 ADDs alone).
            let mut order: Vec<usize> = (0..runs.len())
                .filter(|&i| runs[i].kill_at.is_some())
                .collect();
            order.sort_by_key(|&i| runs[i].kill_at);
            let mut killed = vec![false; runs.len()];
            for i in order {
                let at = runs[i].kill_at.expect("chosen");
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let r = &mut runs[i];
                if r.child.try_wait().unwrap().is_none() {
                    let _ = r.child.kill();
                    killed[i] = true;
                }
            }
            for (mut r, killed) in runs.into_iter().zip(killed) {
                if killed {
                    let _ = r.child.wait();
                    if cmd == "ADD" {
                        self.stats.adds_killed += 1;
                    } else {
                        self.stats.dels_killed += 1;
                    }
                    ok.push(false);
                    continue;
                }
                let out = r.child.wait_with_output().unwrap();
                if !out.status.success() {
                    self.errors.push(format!(
                        "{cmd} failed: {}",
                        String::from_utf8_lossy(&out.stdout)
                    ));
                }
                ok.push(out.status.success());
            }
        }
        ok
    }

    /// One wave: `n` new pods added, then the pods of the wave before
    /// deleted, `parallel` plugin runs at a time, each killed with
    /// probability `kill`. A killed ADD is followed by a DEL and its pod is
    /// gone, a killed DEL is retried: what kubelet and the runtime do.
    pub fn wave(&mut self, n: usize, parallel: usize, kill: f64) {
        self.stats.waves += 1;
        let old: Vec<LivePod> = std::mem::take(&mut self.live);
        let new: Vec<LivePod> = (0..n)
            .map(|_| LivePod {
                ns: Ns::new("w"),
                cid: crate::unique("w"),
            })
            .collect();
        let pods: Vec<(&Ns, &str)> = new.iter().map(|p| (&p.ns, p.cid.as_str())).collect();
        let added = self.run("ADD", &pods, parallel, kill);
        self.stats.adds += n as u32;
        let (mut live, failed): (Vec<_>, Vec<_>) =
            new.into_iter().zip(added).partition(|(_, ok)| *ok);
        let failed: Vec<LivePod> = failed.into_iter().map(|(p, _)| p).collect();
        self.delete(&failed, parallel, 0.0);
        self.delete(&old, parallel, kill);
        self.live = live.drain(..).map(|(p, _)| p).collect();
    }

    /// DELs `pods` (retrying the killed runs without kills) and removes
    /// their netns.
    fn delete(&mut self, pods: &[LivePod], parallel: usize, kill: f64) {
        let all: Vec<(&Ns, &str)> = pods.iter().map(|p| (&p.ns, p.cid.as_str())).collect();
        let done = self.run("DEL", &all, parallel, kill);
        self.stats.dels += pods.len() as u32;
        let retry: Vec<(&Ns, &str)> = all
            .iter()
            .zip(&done)
            .filter(|(_, ok)| !**ok)
            .map(|(p, _)| *p)
            .collect();
        if !retry.is_empty() {
            self.run("DEL", &retry, parallel, 0.0);
        }
    }

    /// The live pods, as [`check`] takes them.
    pub fn pods(&self) -> Vec<(&Ns, &str)> {
        self.live.iter().map(|p| (&p.ns, p.cid.as_str())).collect()
    }

    /// Deletes every live pod.
    pub fn delete_all(&mut self, parallel: usize) {
        let live = std::mem::take(&mut self.live);
        self.delete(&live, parallel, 0.0);
    }
}

/// A record's addresses without their prefix length.
fn record_addrs(r: &EndpointRecord) -> Vec<IpAddr> {
    r.addresses.iter().map(|a| a.ip()).collect()
}

/// `ip -j route` (both families) in `ns`: (destination, device) of every
/// route over a pod's host veth.
fn pod_routes(ns: &Ns) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for fam in ["-4", "-6"] {
        for r in ns.ip_json(&[fam, "route", "show"]).as_array().unwrap() {
            let dev = r["dev"].as_str().unwrap_or("");
            let dst = r["dst"].as_str().unwrap_or("").to_string();
            // fe80::/64 is the kernel's own on every IPv6 link.
            if dev.starts_with("sl") && !dst.starts_with("fe80:") {
                out.insert((dst.split('/').next().unwrap().to_string(), dev.to_string()));
            }
        }
    }
    out
}

/// The devices of `ns` whose clsact ingress is bound to the shared block
/// that holds the source check.
fn checked_devices(ns: &Ns) -> BTreeSet<String> {
    let out = ns.exec(&["tc", "-j", "qdisc", "show"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|q| q["kind"] == "clsact" && q["ingress_block"] == sluice_cni::edge::SHARED_BLOCK)
        .filter_map(|q| q["dev"].as_str().map(String::from))
        .collect()
}

/// Compares the node with `live`: the problems found (empty when every
/// live pod has its veth, addresses, routes, tc attachment, map entries,
/// record and reservations, and nothing is left of any other pod).
/// `d` reads the pins; the daemon itself may be down.
pub fn check(node: &Node, d: &Daemon<'_>, live: &[(&Ns, &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    let diff = |problems: &mut Vec<String>,
                what: &str,
                want: &BTreeSet<String>,
                have: &BTreeSet<String>| {
        for x in have.difference(want) {
            problems.push(format!("{what} left for a pod that is gone: {x}"));
        }
        for x in want.difference(have) {
            problems.push(format!("{what} missing for a live pod: {x}"));
        }
    };
    // Records.
    let mut records: BTreeMap<String, EndpointRecord> = BTreeMap::new();
    for p in node.records() {
        match EndpointRecord::read(&p) {
            Ok(r) => {
                records.insert(r.container_id.clone(), r);
            }
            Err(e) => problems.push(format!("unreadable record: {e}")),
        }
    }
    let want: BTreeSet<String> = live.iter().map(|(_, c)| c.to_string()).collect();
    let have: BTreeSet<String> = records.keys().cloned().collect();
    diff(&mut problems, "record", &want, &have);
    let live_records: Vec<&EndpointRecord> =
        live.iter().filter_map(|(_, c)| records.get(*c)).collect();

    // IPAM: each reserved address is a live pod's, owned by it.
    let net = node.data_dir().join(&node.network);
    let mut reserved = BTreeSet::new();
    for p in node.reservations() {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.parse::<IpAddr>().is_ok() {
            let owner = std::fs::read_to_string(&p).unwrap_or_default();
            reserved.insert(format!("{name} by {}", owner.lines().next().unwrap_or("")));
        } else if p.parent() == Some(&net.join("by-id")) {
            reserved.insert(format!("index {name}"));
        }
    }
    let mut want = BTreeSet::new();
    for r in &live_records {
        for a in record_addrs(r) {
            want.insert(format!("{a} by {}", r.container_id));
        }
        want.insert(format!("index {}:{}", r.container_id, r.ifname));
    }
    diff(&mut problems, "IPAM reservation", &want, &reserved);

    // Kernel: host veths, their routes and tc attachment; the pod's side.
    let want: BTreeSet<String> = live_records.iter().map(|r| r.host_ifname.clone()).collect();
    let have: BTreeSet<String> = node.settled_pod_links().into_iter().collect();
    diff(&mut problems, "host veth", &want, &have);
    let checked = checked_devices(&node.ns);
    let have: BTreeSet<String> = have.intersection(&checked).cloned().collect();
    diff(&mut problems, "source check on a host veth", &want, &have);
    let want: BTreeSet<String> = live_records
        .iter()
        .flat_map(|r| {
            record_addrs(r)
                .into_iter()
                .map(|a| format!("{a} dev {}", r.host_ifname))
        })
        .collect();
    let have: BTreeSet<String> = pod_routes(&node.ns)
        .into_iter()
        .map(|(a, dev)| format!("{a} dev {dev}"))
        .collect();
    diff(&mut problems, "route", &want, &have);
    for (ns, cid) in live {
        let Some(r) = records.get(*cid) else { continue };
        let want: BTreeSet<String> = record_addrs(r).iter().map(|a| a.to_string()).collect();
        let have: BTreeSet<String> = if ns.links().iter().any(|l| l == "eth0") {
            ns.addresses("eth0").into_iter().collect()
        } else {
            BTreeSet::new()
        };
        if want != have {
            problems.push(format!("pod {cid} has {have:?}, its record {want:?}"));
        }
    }

    // Maps: an endpoint entry per live pod's netns, a source entry per
    // address on its veth.
    let node_cookie = netns_cookie(&node.ns.path());
    let want: BTreeSet<String> = live
        .iter()
        .filter_map(|(ns, c)| records.get(*c).map(|r| (netns_cookie(&ns.path()), r)))
        .map(|(c, r)| format!("netns {c} on {}", r.host_ifindex))
        .collect();
    let have: BTreeSet<String> = d
        .pinned_endpoints()
        .into_iter()
        .filter(|(c, _)| *c != node_cookie)
        .map(|(c, e)| format!("netns {c} on {}", e.host_ifindex))
        .collect();
    diff(&mut problems, "endpoint map entry", &want, &have);
    let want: BTreeSet<String> = live_records
        .iter()
        .flat_map(|r| {
            record_addrs(r)
                .into_iter()
                .map(|a| format!("{a} on {}", r.host_ifindex))
        })
        .collect();
    let have: BTreeSet<String> = d
        .pinned_sources()
        .into_iter()
        .map(|k| {
            let a: IpAddr = if k.family == sluice_dataplane::maps::AF_INET6 {
                std::net::Ipv6Addr::from(k.addr).into()
            } else {
                std::net::Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
            };
            format!("{a} on {}", k.ifindex)
        })
        .collect();
    diff(&mut problems, "source map entry", &want, &have);
    problems
}

/// [`check`] now and until it finds nothing (up to `secs`). What is
/// missing for a live pod counts at once: its ADD returned, so everything
/// it needs is due now (a pod without its source entries has no traffic,
/// however soon they come back). What is left of pods that are gone may
/// take a moment (a veth deleted in the background, the daemon's periodic
/// sweep): the last such problems if they outlast `secs`.
pub fn settle(node: &Node, d: &Mutex<Daemon<'_>>, live: &[(&Ns, &str)], secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut missing: Vec<String> = check(node, &d.lock().unwrap(), live)
        .into_iter()
        .filter(|p| !p.contains("left for a pod that is gone"))
        .collect();
    loop {
        let p = check(node, &d.lock().unwrap(), live);
        if p.is_empty() || Instant::now() > deadline {
            for x in p {
                if !missing.contains(&x) {
                    missing.push(x);
                }
            }
            return missing;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The resident set (KiB) and open file descriptors of process `pid`.
pub fn rss_and_fds(pid: u32) -> (u64, usize) {
    let rss = crate::proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// What a [`storm`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    pub changes: u64,
    pub per_sec: f64,
    /// Service passes the daemon made for them.
    pub passes: u64,
    /// From the last change to every Service programmed as last written.
    pub lag: Duration,
    pub caught_up: bool,
    /// Daemon RSS (KiB) a third of the way in, and at the end.
    pub rss_third: u64,
    pub rss_end: u64,
}

impl Storm {
    /// Panics unless the daemon kept up (within 2 s of the last change),
    /// coalesced (fewer than one pass per 5 changes) and its RSS at the
    /// end is within 10 % + 4 MiB of a third of the way in.
    pub fn assert_kept_up(&self) {
        eprintln!("{self:?}");
        assert!(
            self.caught_up,
            "the last state was never programmed: {self:?}"
        );
        assert!(
            self.lag < Duration::from_secs(2),
            "caught up only after {:?}",
            self.lag
        );
        assert!(self.per_sec > 900.0, "the test wrote too slowly: {self:?}");
        assert!(self.passes * 5 < self.changes, "not coalesced: {self:?}");
        assert!(
            self.rss_end <= self.rss_third + self.rss_third / 10 + 4096,
            "RSS grew: {self:?}"
        );
    }
}

/// Frontend → number of backends, as the daemon has programmed them.
fn backend_counts(d: &Daemon<'_>) -> (BTreeMap<String, usize>, u64) {
    let v = d
        .call(sluice_common::api::Request::ListServices)
        .expect("list_services")
        .data;
    let counts = v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["frontend"].as_str().unwrap_or("").to_string(),
                s["backends"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    (counts, v["source"]["passes"].as_u64().unwrap_or(0))
}

/// `services` synthetic Services (`manifests::service` at
/// `cluster_ip(i, base)`:80, up to 10 endpoints each), all with 10
/// endpoints when called: for `run`, `change(i, n)` is called 1,000 times a
/// second, each giving service `i` `n` endpoints (random), the way the
/// caller's source sends it; then waits for the daemon to program the
/// last of them.
pub fn storm(
    d: &Daemon<'_>,
    services: usize,
    base: u8,
    run: Duration,
    mut change: impl FnMut(usize, usize),
) -> Storm {
    let want = |last: &[usize]| -> BTreeMap<String, usize> {
        (0..services)
            .map(|i| {
                (
                    format!("{}:80/Tcp", manifests::cluster_ip(i, base)),
                    last[i],
                )
            })
            .collect()
    };
    let mut last = vec![10usize; services];
    assert!(
        crate::daemon::eventually(20, || backend_counts(d).0 == want(&last)),
        "the services were not programmed before the storm"
    );
    let passes0 = backend_counts(d).1;
    let pid = d.pid().expect("daemon running");
    let t0 = Instant::now();
    let (mut changes, mut rss_third) = (0u64, 0);
    while t0.elapsed() < run {
        // Paced at one change per millisecond of the run so far.
        let due = t0.elapsed().as_millis() as u64;
        while changes < due {
            let i = fastrand::usize(..services);
            let n = fastrand::usize(1..=10);
            change(i, n);
            last[i] = n;
            changes += 1;
        }
        if rss_third == 0 && t0.elapsed() > run / 3 {
            rss_third = rss_and_fds(pid).0;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let wrote = t0.elapsed();
    let rss_end = rss_and_fds(pid).0;
    let t_last = Instant::now();
    let caught_up = crate::daemon::eventually(10, || backend_counts(d).0 == want(&last));
    Storm {
        changes,
        per_sec: changes as f64 / wrote.as_secs_f64(),
        passes: backend_counts(d).1 - passes0,
        lag: t_last.elapsed(),
        caught_up,
        rss_third,
        rss_end,
    }
}
