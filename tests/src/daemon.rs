//! A `sluiced` per test node: started inside the node's netns (by setns
//! before exec, so it shares the host's mount namespace and therefore its
//! bpffs and cgroup2 mounts, exactly as a hostNetwork DaemonSet pod would),
//! with a private pin path, state dir and socket. Dropping the guard kills
//! the daemon and removes its pins, which detaches everything it attached.

use crate::{bin, Node};
use aya::maps::HashMap;
use serde_json::Value;
use sluice_common::api::{self, ClientError, Request, ResponseEnvelope};
use sluice_dataplane::load::open_pinned;
use sluice_dataplane::maps::{self, EdgeStats, Endpoint, SrcKey};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Daemon<'a> {
    pub node: &'a Node,
    pub pin_path: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl<'a> Daemon<'a> {
    /// Starts a daemon for `node` and waits until it answers.
    pub fn start(node: &'a Node) -> Self {
        Self::start_with(node, "")
    }

    /// Like [`Daemon::start`], with extra config lines.
    pub fn start_with(node: &'a Node, extra: &str) -> Self {
        let d = Self::configure(node, extra);
        let mut d = d;
        d.spawn();
        d
    }

    /// Writes the config without starting the daemon.
    pub fn configure(node: &'a Node, extra: &str) -> Self {
        let pin_path = node.pin_path.clone();
        let config = node.dir.path().join("sluiced.toml");
        let mut text = format!(
            "state_dir = \"{}\"\npin_path = \"{}\"\n",
            node.state_dir().display(),
            pin_path.display()
        );
        if !extra.contains("metrics_address") {
            text.push_str("metrics_address = \"\"\n");
        }
        text.push_str(extra);
        std::fs::write(&config, text).expect("write daemon config");
        Daemon {
            node,
            log: node.dir.path().join("sluiced.log"),
            pin_path,
            config,
            child: None,
            starts: 0,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.node.state_dir().join("sluiced.sock")
    }

    /// Starts the daemon process (again) and waits until it is ready.
    pub fn spawn(&mut self) -> Duration {
        assert!(self.child.is_none(), "daemon already running");
        let t = Instant::now();
        let ns = File::open(self.node.ns.path()).expect("open node netns");
        let fd = ns.as_raw_fd();
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let mut c = Command::new(bin("sluiced"));
        c.arg("--config")
            .arg(&self.config)
            .env("SLUICE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = c.spawn().expect("spawn sluiced");
        crate::observe(crate::Event::ProcessStarted(child.id()));
        self.child = Some(child);
        drop(ns);
        self.wait_ready();
        t.elapsed()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.call(Request::Status) {
                if r.data["ready"] == true {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sluiced exited with {st} before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sluiced not ready after 20 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crashing or OOM-killed daemon.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            crate::observe(crate::Event::ProcessEnded(c.id()));
        }
    }

    /// SIGTERM and wait, as a DaemonSet rollout.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
            crate::observe(crate::Event::ProcessEnded(c.id()));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn call(&self, req: Request) -> Result<ResponseEnvelope, ClientError> {
        api::call(&self.socket(), req, Duration::from_secs(5))
    }

    pub fn status(&self) -> Value {
        self.call(Request::Status).expect("status").data
    }

    /// The API's endpoint list, by container ID.
    pub fn endpoints(&self) -> BTreeMap<String, Value> {
        self.call(Request::ListEndpoints)
            .expect("list_endpoints")
            .data
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["container_id"].as_str().unwrap().to_string(), e.clone()))
            .collect()
    }

    /// Waits (up to 5 s) until the daemon has registered `cid` (the plugin
    /// tells it without waiting for the answer) and checked its edge: the
    /// plugin attached the check during ADD; the daemon's edge pass
    /// confirms it is in place.
    pub fn wait_edge(&self, cid: &str) -> Value {
        let mut last = Value::Null;
        let ok = eventually(5, || {
            last = self.endpoints().get(cid).cloned().unwrap_or(Value::Null);
            last["edge"]["protecting"] == true
        });
        assert!(
            ok,
            "edge of {cid} not confirmed: {last}\n{}",
            self.log_text()
        );
        last
    }

    /// Waits (up to 5 s) until the daemon lists exactly `n` endpoints.
    pub fn wait_endpoints(&self, n: usize) -> BTreeMap<String, Value> {
        let mut last = BTreeMap::new();
        let ok = eventually(5, || {
            last = self.endpoints();
            last.len() == n
        });
        assert!(ok, "{} endpoints, expected {n}: {last:?}", last.len());
        last
    }

    fn maps_dir(&self) -> PathBuf {
        self.pin_path.join("maps")
    }

    /// The pinned endpoint map, opened for lookups.
    pub fn endpoint_map(&self) -> HashMap<aya::maps::MapData, u64, Endpoint> {
        HashMap::try_from(open_pinned(&self.maps_dir(), &maps::ENDPOINTS).unwrap()).unwrap()
    }

    /// The pinned endpoint map's entries, read directly.
    pub fn pinned_endpoints(&self) -> BTreeMap<u64, Endpoint> {
        self.endpoint_map().iter().map(Result::unwrap).collect()
    }

    pub fn pinned_sources(&self) -> Vec<SrcKey> {
        let m: HashMap<_, SrcKey, u8> =
            HashMap::try_from(open_pinned(&self.maps_dir(), &maps::SRC).unwrap()).unwrap();
        m.keys().map(Result::unwrap).collect()
    }

    /// The per-packet translation's connection tracking entries.
    pub fn pinned_ct(&self) -> Vec<(maps::CtKey, maps::CtEntry)> {
        let m: HashMap<_, maps::CtKey, maps::CtEntry> =
            HashMap::try_from(open_pinned(&self.maps_dir(), &maps::CT).unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    /// Whether the tcx egress link that translates a per-packet pod's
    /// replies is pinned and on `ifindex`.
    pub fn reply_link_on(&self, ifindex: u32) -> bool {
        let pin = self.pin_path.join("links/tc").join(format!(
            "{ifindex}{}",
            sluice_dataplane::pins::EGRESS_SUFFIX
        ));
        sluice_dataplane::sys::pinned_link_info(&pin).is_ok_and(|i| i.tcx_ifindex == ifindex)
    }

    pub fn pinned_counters(&self, ifindex: u32) -> EdgeStats {
        pinned_edge_stats(&self.pin_path, ifindex)
    }

    /// Every pinned link (cgroup and tc) by pin name, with its link ID.
    pub fn link_ids(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for kind in ["cgroup", "tc"] {
            let dir = self.pin_path.join("links").join(kind);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let info = sluice_dataplane::sys::pinned_link_info(&e.path()).unwrap();
                out.insert(
                    format!("{kind}/{}", e.file_name().to_string_lossy()),
                    info.id,
                );
            }
        }
        out
    }

    /// Every pinned map by name, with its map ID.
    pub fn map_ids(&self) -> BTreeMap<String, u32> {
        maps::ALL
            .iter()
            .map(|m| {
                let info = aya::maps::MapInfo::from_pin(self.maps_dir().join(m.name)).unwrap();
                (m.name.to_string(), info.id())
            })
            .collect()
    }

    /// Socket operations of known endpoints per hook, from `status`.
    pub fn sock_ops(&self, hook: &str) -> u64 {
        self.status()["sock_ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == hook)
            .map(|h| h[1].as_u64().unwrap())
            .unwrap()
    }

    /// Runs `sluicectl` against this daemon, in the node's netns (as an
    /// operator on the node would: with the daemon down it looks at the
    /// node's devices itself).
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let ns = File::open(self.node.ns.path()).expect("open node netns");
        let fd = ns.as_raw_fd();
        let mut c = Command::new(bin("sluicectl"));
        c.arg("--config").arg(&self.config).args(args);
        // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c.output().expect("run sluicectl")
    }
}

/// The edge drop counters of one pod interface, from the pinned map.
pub fn pinned_edge_stats(pin_path: &Path, ifindex: u32) -> EdgeStats {
    let m: HashMap<_, u32, EdgeStats> =
        HashMap::try_from(open_pinned(&pin_path.join("maps"), &maps::EDGE_STATS).unwrap()).unwrap();
    m.get(&ifindex, 0).unwrap_or_default()
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- sluiced log ---\n{}", self.log_text());
        }
    }
}

/// The netns cookie of `path`, read the way the daemon reads it but on a
/// fresh thread of the test (SO_NETNS_COOKIE from a socket made inside).
pub fn netns_cookie(path: &Path) -> u64 {
    let f = File::open(path).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this short-lived thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            // SAFETY: plain socket/getsockopt with valid buffers.
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
                assert!(fd >= 0);
                let mut c: u64 = 0;
                let mut len = 8 as libc::socklen_t;
                let rc = libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    71,
                    (&mut c as *mut u64).cast(),
                    &mut len,
                );
                libc::close(fd);
                assert_eq!(rc, 0, "SO_NETNS_COOKIE");
                c
            }
        })
        .join()
        .unwrap()
    })
}

/// Polls `f` every 5 ms for up to `secs`; true once it holds.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
