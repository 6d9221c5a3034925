//! The node's side of the security boundary: what a pod, or any process
//! that is not root on the node, can reach of the daemon. Records, IPAM
//! reservations and pins are private to root; the metrics endpoint listens
//! on the node's loopback only; the daemon keeps three capabilities.
//! (Spoofed sources are edge.rs's; binds to service addresses services.rs's
//! and nodeport.rs's; the API socket's peer check daemon_api.rs's.)

use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::{ranges, require_root, Node, Pod};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `cat` (files) or `ls` (directories) run as nobody: what it printed on
/// failure, or None if it could read.
fn as_nobody(p: &Path) -> Option<String> {
    let tool = if p.is_dir() { "ls" } else { "cat" };
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", tool])
        .arg(p)
        .output()
        .unwrap();
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_private(p: &Path) {
    let m = mode(p);
    assert_eq!(
        m & 0o077,
        0,
        "{} is {m:o}: group or others may read it",
        p.display()
    );
    let err = as_nobody(p).unwrap_or_else(|| panic!("nobody read {}", p.display()));
    assert!(err.contains("Permission denied"), "{}: {err}", p.display());
}

/// Every file and directory below `dir`, depth first.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

/// The capability sets of process `pid` from /proc: (name, hex mask).
fn cap_sets(pid: u32) -> Vec<(String, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim();
            match k {
                "CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb" => {
                    Some((k.to_string(), u64::from_str_radix(v, 16).ok()?))
                }
                "NoNewPrivs" => Some((k.to_string(), v.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn records_reservations_and_pins_are_private_and_the_daemon_keeps_three_capabilities() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let conf = node.conf("1.0.0", ranges("dual"));
    let pod = Pod::add(&node, &conf);
    d.wait_edge(&pod.cid);

    // Records, the state dir and the IPAM store: root's alone.
    assert_private(&node.state_dir());
    assert_private(&node.state_dir().join("endpoints"));
    for r in node.records() {
        assert_private(&r);
    }
    let reservations = node.reservations();
    assert!(!reservations.is_empty());
    for r in &reservations {
        assert_eq!(mode(r) & 0o077, 0, "{} is {:o}", r.display(), mode(r));
    }
    // The pins: every directory 0700, every pinned object 0600.
    let mut pins = Vec::new();
    walk(&node.pin_path, &mut pins);
    assert!(pins.len() > 10, "pins found: {pins:?}");
    for p in &pins {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(p), want, "{}", p.display());
    }
    assert_private(&pins[0]);

    // The daemon's capabilities: CAP_NET_ADMIN (12), CAP_SYS_ADMIN (21),
    // CAP_BPF (39), in every set that grants any; none inheritable or
    // ambient; no_new_privs set.
    let want: u64 = (1 << 12) | (1 << 21) | (1 << 39);
    let sets = cap_sets(d.pid().unwrap());
    for (k, v) in &sets {
        let expect = match k.as_str() {
            "CapPrm" | "CapEff" | "CapBnd" => want,
            "NoNewPrivs" => 1,
            _ => 0,
        };
        assert_eq!(*v, expect, "{k} of the daemon: {v:#x} ({sets:?})");
    }
    assert_eq!(sets.len(), 6, "{sets:?}");
    assert!(
        d.log_text().contains("capabilities"),
        "start-up says what it kept"
    );

    // A record an older build left world-readable is made private at the
    // next start.
    d.stop();
    let rec = node.records()[0].clone();
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(
        node.state_dir().join("endpoints"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    d.spawn();
    assert_private(&rec);
    assert_private(&node.state_dir().join("endpoints"));
    assert!(d.log_text().contains("made 1 endpoint records"));
}

/// The metrics endpoint listens on the node's loopback (the default): the
/// node reaches it, a pod reaches it at none of the node's addresses.
#[test]
fn a_pod_cannot_reach_the_metrics_endpoint() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    // No metrics_address line: the default (127.0.0.1:9963).
    let _d = Daemon::start_with(&node, "# metrics_address: the default\n");
    let pod = Pod::add(&node, &node.conf("1.0.0", ranges("dual")));
    // Whether a TCP connection to ip port 9963 opens from `ns`.
    let opens = |ns: &sluice_tests::Ns, ip: &str| {
        ns.exec(&[
            "timeout",
            "3",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{ip}/9963"),
        ])
        .status
        .success()
    };
    assert!(
        eventually(5, || opens(&node.ns, "127.0.0.1")),
        "the node reaches its metrics"
    );
    let addrs = node.ns.ip_json(&["addr", "show"]);
    let mut tried = vec!["127.0.0.1".to_string(), "::1".to_string()];
    for l in addrs.as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            let ip = a["local"].as_str().unwrap();
            tried.push(ip.to_string());
        }
    }
    assert!(tried.len() > 2, "node addresses: {tried:?}");
    for a in tried.iter().filter(|a| !a.starts_with("fe80")) {
        assert!(!opens(&pod.ns, a), "a pod reached the metrics at {a}");
    }
}
