//! Test harness: network namespaces with unique names that are removed when
//! their guard drops (pass or fail), and the built binaries run exactly as a
//! container runtime runs a CNI plugin: from the node's netns, with the
//! `CNI_*` environment and the network config on stdin.
//!
//! Privileged tests call [`require_root`] first and skip, saying why, when
//! not root. The binaries come from the same target dir as the test; build
//! them first (`cargo build --workspace --bins`, as `.ci/run` does).

pub mod cluster;
pub mod daemon;
pub mod frames;
pub mod kubeapi;
pub mod manifests;
pub mod nbsock;
pub mod soak;

use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every supported spec version, oldest first.
pub const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Returns false (and says why) when the test cannot run here.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for network namespaces (run as root, as .ci/run does)");
        return false;
    }
    true
}

/// The CNI plugins, built for the host's musl triple (`build_plugins` in
/// .ci/setup): a static glibc binary spends about 0.55 ms of every exec in
/// glibc's start-up, and a plugin is exec'd for every pod operation.
pub const PLUGINS: [&str; 2] = ["sluice", "sluice-ipam"];

/// A built binary of the workspace: next to the test executable's deps dir
/// (`target/<host triple>/<profile>`), or for [`PLUGINS`] in the same
/// profile of the host's musl triple.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let (dir, build) = if PLUGINS.contains(&name) {
        let plugins = plugin_dir(dir).unwrap_or_else(|| {
            panic!(
                "{} is not under target/<host triple>/<profile>; build with .cargo/config.toml's target",
                dir.display()
            )
        });
        (
            plugins,
            "`source .ci/setup && build_plugins` (add --release for release builds)",
        )
    } else {
        (dir.to_path_buf(), "`cargo build --workspace --bins` first")
    };
    let p = dir.join(name);
    assert!(p.is_file(), "{} is not built; run {build}", p.display());
    p
}

/// `target/<arch>-<vendor>-<os>-gnu<abi>/<profile>` to the same profile of
/// the musl triple, where the plugins are built.
pub fn plugin_dir(profile_dir: &Path) -> Option<PathBuf> {
    let profile = profile_dir.file_name()?;
    let triple = profile_dir.parent()?.file_name()?.to_str()?;
    let (base, abi) = triple.rsplit_once("-gnu")?;
    Some(
        profile_dir
            .parent()?
            .parent()?
            .join(format!("{base}-musl{abi}"))
            .join(profile),
    )
}

/// Waits for the tests of one binary that hold `turn` to finish, then holds
/// it: tests whose figures the others would disturb take turns. A test
/// that panicked while holding it passes it on.
pub fn take_turn(turn: &'static std::sync::Mutex<()>) -> std::sync::MutexGuard<'static, ()> {
    turn.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pins the calling thread to `cpu` (the benchmarks and tests that place
/// a writer and its reader on one CPU or two).
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread (0).
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB;
/// `None` when the process or the field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// [`proc_status_kib`] in MiB; NaN when the process or the field is gone.
pub fn proc_status_mib(pid: u32, field: &str) -> f64 {
    proc_status_kib(pid, field).map_or(f64::NAN, |kb| kb as f64 / 1024.0)
}

/// A short unique name: `<tag><pid><counter>`, well under IFNAMSIZ rules for
/// netns names and unique across parallel test processes.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "sl{tag}{:x}{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u16(..)
    )
}

/// What the harness creates and removes, for a watcher that must clean up
/// when the process cannot unwind (the benchmarks' release builds abort
/// on panic): see [`set_observer`].
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    NetnsAdded(&'a str),
    NetnsDeleted(&'a str),
    ProcessStarted(u32),
    ProcessEnded(u32),
}

static OBSERVER: std::sync::OnceLock<fn(Event<'_>)> = std::sync::OnceLock::new();

/// Registers the one function told of every [`Event`] (once per process).
pub fn set_observer(f: fn(Event<'_>)) {
    let _ = OBSERVER.set(f);
}

pub(crate) fn observe(e: Event<'_>) {
    if let Some(f) = OBSERVER.get() {
        f(e);
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
    deleted: bool,
}

impl Ns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        observe(Event::NetnsAdded(&name));
        let ns = Ns {
            name,
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs `ip` in this netns; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.name).args(args);
        String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
    }

    /// `ip -j` output, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).expect("ip -j prints JSON")
    }

    /// Runs a command in this netns (through `ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("run ip netns exec")
    }

    /// The tc filters on `dev`'s ingress: `tc` shows the node's shared
    /// block (where the plugin puts the check) when the device's qdisc is
    /// bound to it, the device's own list otherwise.
    pub fn edge_filters(&self, dev: &str) -> String {
        let out = self.exec(&["tc", "filter", "show", "dev", dev, "ingress"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deletes the check from `dev`'s ingress, wherever it is: `tc` sends
    /// a filter on a shared block to the block, never to the device.
    pub fn delete_edge_filter(&self, dev: &str) {
        let block = sluice_cni::edge::SHARED_BLOCK.to_string();
        let by_block = self.exec(&["tc", "filter", "del", "block", &block, "pref", "1"]);
        let by_dev = self.exec(&["tc", "filter", "del", "dev", dev, "ingress", "pref", "1"]);
        assert!(
            by_block.status.success() || by_dev.status.success(),
            "no check to delete on {dev}: {} {}",
            String::from_utf8_lossy(&by_block.stderr),
            String::from_utf8_lossy(&by_dev.stderr)
        );
    }

    /// Names of the links in this netns.
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// Global addresses on `dev` (without prefix).
    pub fn addresses(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        let mut out = Vec::new();
        for l in v.as_array().unwrap() {
            for a in l["addr_info"].as_array().unwrap() {
                if a["scope"] == "global" {
                    out.push(a["local"].as_str().unwrap().to_string());
                }
            }
        }
        out
    }

    /// Pings `addr` from this netns; true if a reply came back.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "2", addr])
            .status
            .success()
    }

    /// Waits (up to 5 s) until no link that sluice's DEL retired (`sx…`,
    /// deleted by a forked child) remains in this netns.
    pub fn wait_for_retired_links(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.links().iter().any(|l| l.starts_with("sx"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Deletes the netns now (as a runtime does when a pod's sandbox dies).
    pub fn delete(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
            observe(Event::NetnsDeleted(&self.name));
            self.deleted = true;
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        self.delete();
    }
}

pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A node: its netns plus a private state dir, IPAM data dir and bpffs
/// pin path (its daemon's, which the plugin finds through the config).
/// Dropping it removes the pins, which detaches whatever they hold.
#[derive(Debug)]
pub struct Node {
    pub ns: Ns,
    pub dir: tempfile::TempDir,
    pub network: String,
    pub pin_path: PathBuf,
    tmpfs: std::sync::atomic::AtomicBool,
}

impl Node {
    /// A node whose datapath sluiced has set up before (its edge program
    /// and maps are pinned), as every node is once the DaemonSet has run:
    /// pods added here get the full edge check, whether or not a daemon
    /// runs now.
    pub fn new() -> Self {
        let node = Self::bare();
        node.pin_edge_program();
        node
    }

    /// A node where sluiced has never run: nothing is pinned, so the
    /// plugin isolates every pod it adds until a daemon starts.
    pub fn bare() -> Self {
        let ns = Ns::new("n");
        sluice_dataplane::load::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("mount bpffs");
        Node {
            ns,
            dir: tempfile::Builder::new()
                .prefix("sluice-test-")
                .tempdir()
                .expect("temp dir"),
            network: "testnet".into(),
            pin_path: PathBuf::from(format!("/sys/fs/bpf/{}", unique("d"))),
            tmpfs: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Mounts a tmpfs over the node's dir (state and IPAM data), as
    /// `/var/run` is on a production node; unmounted on drop. Call before
    /// anything is written there.
    pub fn mount_tmpfs(&self) {
        let dir = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes())
            .expect("a path without NUL");
        // SAFETY: valid C strings; no data pointer beyond the options.
        let rc = unsafe {
            libc::mount(
                c"sluice-test".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"mode=0755".as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        self.tmpfs.store(true, Ordering::Relaxed);
    }

    /// Loads this build's edge program with its maps pinned under the
    /// node's pin path and pins it where the plugin looks (what sluiced
    /// does at start).
    pub fn pin_edge_program(&self) {
        self.pin_pod_program(sluice_dataplane::TC_POD, "tc_pod");
    }

    /// Pins `object`'s `sluice_pod_ingress` as the node's edge program
    /// (a test's stand-in for an older build's, for instance), with this
    /// build's maps pinned beside it.
    pub fn pin_pod_program(&self, object: &[u8], name: &'static str) {
        use std::os::fd::AsFd;
        let pins = sluice_dataplane::pins::Pins::new(&self.pin_path);
        sluice_dataplane::load::load_object(
            "tc_pod",
            sluice_dataplane::TC_POD,
            &pins.maps(),
            &sluice_dataplane::maps::ALL,
        )
        .expect("pin the edge maps");
        let mut obj = sluice_dataplane::load::load_object(
            name,
            object,
            &pins.maps(),
            &sluice_dataplane::maps::ALL,
        )
        .expect("load the edge object");
        let prog: &mut aya::programs::SchedClassifier =
            sluice_dataplane::load::load_program(&mut obj, name, sluice_dataplane::TC_POD_INGRESS)
                .expect("load the edge program");
        std::fs::create_dir_all(pins.progs()).expect("create progs pin dir");
        // The socket programs' maps (the endpoint map among them).
        sluice_dataplane::load::load_object(
            "sock",
            sluice_dataplane::SOCK,
            &pins.maps(),
            &sluice_dataplane::maps::ALL,
        )
        .expect("load the socket object");
        sluice_dataplane::sys::obj_pin_replace(prog.fd().unwrap().as_fd(), &pins.pod_program())
            .expect("pin the edge program");
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// A sluice network config with `ranges` (a JSON list of range sets).
    pub fn conf(&self, version: &str, ranges: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"{net}","type":"sluice",
                "stateDir":"{state}","daemonTimeoutMs":2000,"pinPath":"{pins}",
                "ipam":{{"type":"sluice-ipam","dataDir":"{data}","ranges":{ranges}}}}}"#,
            net = self.network,
            state = self.state_dir().display(),
            data = self.data_dir().display(),
            pins = self.pin_path.display(),
        )
    }

    /// Runs `sluice` in this node's netns as a runtime would.
    pub fn cni(&self, cmd: &str, cid: &str, netns: Option<&Path>, ifname: &str, conf: &str) -> Cni {
        cni_in(&self.ns, &bin("sluice"), cmd, cid, netns, ifname, conf, &[])
    }

    /// Starts `sluice` `cmd` for every (netns, container ID) at once, then
    /// waits for all of them.
    pub fn run_all<'p>(
        &self,
        cmd: &str,
        pods: impl IntoIterator<Item = (PathBuf, &'p str)>,
        conf: &str,
    ) -> Vec<Cni> {
        let sluice = bin("sluice");
        let children: Vec<_> = pods
            .into_iter()
            .map(|(netns, cid)| {
                spawn_cni(&self.ns, &sluice, cmd, cid, Some(&netns), "eth0", conf, &[])
            })
            .collect();
        children.into_iter().map(Cni::wait).collect()
    }

    /// Host-side links the plugin made: `sl…`, and `sx…` while DEL's
    /// background deletion of a retired link is under way.
    pub fn pod_links(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("sl") || l.starts_with("sx"))
            .collect()
    }

    /// The pod links left once DEL's background deletions have finished
    /// (waiting up to 5 s for them), without the `@peer` suffix.
    pub fn settled_pod_links(&self) -> Vec<String> {
        self.ns.wait_for_retired_links();
        self.pod_links()
            .into_iter()
            .map(|l| l.split('@').next().unwrap().to_string())
            .collect()
    }

    /// Endpoint records on disk.
    pub fn records(&self) -> Vec<PathBuf> {
        list_files(&self.state_dir().join("endpoints"))
    }

    /// IPAM reservation files (addresses and owner index).
    pub fn reservations(&self) -> Vec<PathBuf> {
        let net = self.data_dir().join(&self.network);
        let mut out: Vec<PathBuf> = list_files(&net)
            .into_iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.parse::<std::net::IpAddr>().is_ok()
            })
            .collect();
        out.extend(list_files(&net.join("by-id")));
        out
    }

    /// Panics unless the node holds no pod link, record or reservation.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.settled_pod_links(),
            Vec::<String>::new(),
            "pod links left"
        );
        assert_eq!(self.records(), Vec::<PathBuf>::new(), "records left");
        assert_eq!(
            self.reservations(),
            Vec::<PathBuf>::new(),
            "reservations left"
        );
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_path);
        if self.tmpfs.load(Ordering::Relaxed) {
            let dir = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes())
                .expect("a path without NUL");
            // SAFETY: a valid C string; MNT_DETACH so a busy mount still goes.
            unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A thread that lives in one netns and runs jobs there: commands started
/// from it are spawned with `posix_spawn` (a vfork), the way container
/// runtimes written in Go start CNI plugins, rather than with fork and a
/// `setns` in the child.
pub struct NsRunner {
    tx: Option<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for NsRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsRunner").finish_non_exhaustive()
    }
}

impl NsRunner {
    pub fn new(ns: &Ns) -> Self {
        let file = File::open(ns.path()).expect("open netns");
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is valid.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns: {}",
                std::io::Error::last_os_error()
            );
            drop(file);
            for job in rx {
                job();
            }
        });
        NsRunner {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the thread and returns what it returned.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .as_ref()
            .expect("runner alive")
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("runner thread alive");
        rx.recv().expect("job ran")
    }
}

impl Drop for NsRunner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The command a runtime runs for one CNI operation: `plugin` with the
/// `CNI_*` environment; the config goes on its stdin.
pub fn cni_command(
    plugin: &Path,
    cmd: &str,
    cid: &str,
    netns: Option<&Path>,
    ifname: &str,
) -> Command {
    let mut c = Command::new(plugin);
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env(
            "CNI_NETNS",
            netns.map(|p| p.display().to_string()).unwrap_or_default(),
        )
        .env("CNI_IFNAME", ifname)
        .env(
            "CNI_PATH",
            format!("{}:/usr/lib/cni", bin("sluice").parent().unwrap().display()),
        )
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
        );
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What a plugin run gave back.
#[derive(Debug)]
pub struct Cni {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Cni {
    /// Waits for a plugin run started with [`spawn_cni`].
    pub fn wait(child: std::process::Child) -> Self {
        let out = child.wait_with_output().expect("wait for plugin");
        Cni {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics unless the run succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "plugin failed: {} {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the run failed with the spec's error object and `code`.
    pub fn err(self, code: u64) -> Value {
        assert_ne!(self.code, Some(0), "expected failure, got {}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "wrong error code: {v}");
        let msg = v["msg"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "error without msg: {v}");
        assert!(v["cniVersion"].is_string(), "error without cniVersion: {v}");
        v
    }
}

/// Runs a CNI plugin binary inside `node`'s netns with the CNI environment.
#[allow(clippy::too_many_arguments)]
pub fn cni_in(
    node: &Ns,
    plugin: &Path,
    cmd: &str,
    cid: &str,
    netns: Option<&Path>,
    ifname: &str,
    conf: &str,
    extra_env: &[(&str, &str)],
) -> Cni {
    Cni::wait(spawn_cni(
        node, plugin, cmd, cid, netns, ifname, conf, extra_env,
    ))
}

/// Starts a plugin run without waiting (for the kill tests).
#[allow(clippy::too_many_arguments)]
pub fn spawn_cni(
    node: &Ns,
    plugin: &Path,
    cmd: &str,
    cid: &str,
    netns: Option<&Path>,
    ifname: &str,
    conf: &str,
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    let ns = File::open(node.path()).expect("open node netns");
    let fd = ns.as_raw_fd();
    let mut c = cni_command(plugin, cmd, cid, netns, ifname);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().expect("spawn plugin");
    drop(ns);
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(conf.as_bytes());
    }
    child
}

/// A pod namespace added to `node` with the real plugin; DEL'd and removed
/// when dropped.
#[derive(Debug)]
pub struct Pod<'a> {
    pub node: &'a Node,
    pub ns: Ns,
    pub cid: String,
    pub conf: String,
    pub result: Value,
}

impl<'a> Pod<'a> {
    pub fn add(node: &'a Node, conf: &str) -> Self {
        let ns = Ns::new("p");
        let cid = unique("c");
        let result = node
            .cni("ADD", &cid, Some(&ns.path()), "eth0", conf)
            .ok()
            .json();
        Pod {
            node,
            ns,
            cid,
            conf: conf.to_string(),
            result,
        }
    }

    /// The pod's addresses from its ADD result, without prefix.
    /// The gateway of the ADD result's first address: the node's address
    /// for this pod.
    pub fn gateway(&self) -> std::net::IpAddr {
        self.result["ips"][0]["gateway"]
            .as_str()
            .and_then(|g| g.parse().ok())
            .expect("the ADD result names a gateway")
    }

    pub fn ips(&self) -> Vec<String> {
        self.result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let a = i["address"].as_str().unwrap();
                a.split('/').next().unwrap().to_string()
            })
            .collect()
    }

    /// The pod's address of one family (its first).
    pub fn ip(&self, v6: bool) -> std::net::IpAddr {
        self.ips()
            .into_iter()
            .find(|i| i.contains(':') == v6)
            .expect("an address of that family")
            .parse()
            .expect("an address")
    }

    pub fn del(&self) -> Cni {
        self.node
            .cni("DEL", &self.cid, Some(&self.ns.path()), "eth0", &self.conf)
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let _ = self.del();
    }
}

/// `conf` as libcni hands it to a plugin whose conflist entry declares the
/// `io.kubernetes.cri.pod-annotations` capability, for a pod with
/// `annotations`: the entry keeps its `capabilities` and gains a
/// `runtimeConfig` carrying the pod's annotations (as containerd and CRI-O
/// send them).
pub fn with_pod_annotations(conf: &str, annotations: &[(&str, &str)]) -> String {
    let mut v: Value = serde_json::from_str(conf).expect("conf is JSON");
    let key = "io.kubernetes.cri.pod-annotations";
    v["capabilities"] = serde_json::json!({ key: true });
    let a: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    v["runtimeConfig"] = serde_json::json!({ key: a });
    v.to_string()
}

/// Range sets for a family name: "v4", "v6" or "dual".
pub fn ranges(family: &str) -> &'static str {
    match family {
        "v4" => r#"[[{"subnet":"10.201.0.0/24"}]]"#,
        "v6" => r#"[[{"subnet":"fd00:201::/64"}]]"#,
        "dual" => r#"[[{"subnet":"10.202.0.0/24"}],[{"subnet":"fd00:202::/64"}]]"#,
        other => panic!("unknown family {other}"),
    }
}

/// A `sluice-probe serve` in a netns (TCP or UDP on [::]:port, answering
/// with `name`), killed on drop.
#[derive(Debug)]
pub struct Server(pub std::process::Child);

impl Server {
    pub fn start(ns: &Ns, proto: &str, port: u16, name: &str) -> Self {
        Self::spawn(ns, &["serve", proto, &port.to_string(), name])
    }

    /// Any long-running `sluice-probe` mode in `ns` (`sink PORT`, `give
    /// PORT BYTES`, `serve tcp-peer PORT NAME`, ...).
    /// Returns once the server's socket is bound (a test's first connect
    /// must not race the server's start: on a loaded machine it lost,
    /// and was refused).
    pub fn spawn(ns: &Ns, args: &[&str]) -> Self {
        let c = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin("sluice-probe"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start probe server");
        let mut server = Server(c);
        if let Some((udp, port)) = Self::bound_port(args) {
            use std::os::unix::fs::MetadataExt;
            let ns_ino = std::fs::metadata(ns.path()).expect("netns file").ino();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !server.has_socket(ns_ino, udp, port) {
                if let Ok(Some(st)) = server.0.try_wait() {
                    panic!("sluice-probe {args:?} in {} exited: {st}", ns.name);
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "sluice-probe {args:?} in {} bound nothing in 10 s",
                    ns.name
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        server
    }

    /// The (UDP?, port) a server mode binds, for the modes that bind one.
    fn bound_port(args: &[&str]) -> Option<(bool, u16)> {
        match args {
            ["serve", proto, port, ..] => Some((proto.starts_with("udp"), port.parse().ok()?)),
            ["sink", port, ..] | ["give", port, ..] => Some((false, port.parse().ok()?)),
            _ => None,
        }
    }

    /// Whether the server, once in the netns of inode `ns_ino`, has a
    /// listening TCP (or bound UDP) socket on `port` there, from the
    /// kernel's socket tables as the server itself sees them.
    fn has_socket(&self, ns_ino: u64, udp: bool, port: u16) -> bool {
        // `ip netns exec` enters the netns and execs in the same process;
        // until it has entered, its tables are the caller's netns'.
        let pid = self.0.id();
        let entered = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == format!("net:[{ns_ino}]"));
        if !entered {
            return false;
        }
        let (files, state) = if udp {
            (["udp", "udp6"], "07")
        } else {
            (["tcp", "tcp6"], "0A")
        };
        let want = format!(":{port:04X}");
        files.iter().any(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
                .map(|t| {
                    t.lines().skip(1).any(|l| {
                        let cols: Vec<&str> = l.split_whitespace().collect();
                        cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == state
                    })
                })
                .unwrap_or(false)
        })
    }
}

/// Runs the `sluice-probe` client in `ns`: its JSON line, or what it
/// printed instead.
pub fn probe(ns: &Ns, args: &[&str]) -> Result<Value, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(bin("sluice-probe"))
        .args(args)
        .output()
        .expect("run probe");
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
