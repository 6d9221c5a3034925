//! Many plugin processes at once, and plugin processes killed mid-ADD.

use sluice_tests::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[test]
fn hundred_parallel_adds_then_dels() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.206.0.0/16"}],[{"subnet":"fd00:206::/64"}]]"#,
    );
    let pods: Vec<(Ns, String)> = (0..100).map(|_| (Ns::new("p"), unique("c"))).collect();
    let mut seen = HashSet::new();
    for out in run_all(&node, "ADD", &pods, &conf) {
        for ip in out.ok().json()["ips"].as_array().unwrap() {
            let a = ip["address"].as_str().unwrap().to_string();
            assert!(seen.insert(a.clone()), "address {a} handed out twice");
        }
    }
    assert_eq!(seen.len(), 200, "100 pods x (v4 + v6)");
    assert_eq!(node.pod_links().len(), 100);
    assert_eq!(node.records().len(), 100);
    // Spot-check traffic between the first and the last pod.
    let last: Vec<String> = pods[99].0.addresses("eth0");
    for ip in &last {
        assert!(pods[0].0.ping(ip), "pod 0 cannot reach pod 99 at {ip}");
    }
    for out in run_all(&node, "DEL", &pods, &conf) {
        out.ok();
    }
    node.assert_clean();
}

/// Starts `cmd` for every pod at once, then waits for all of them.
fn run_all(node: &Node, cmd: &str, pods: &[(Ns, String)], conf: &str) -> Vec<Cni> {
    node.run_all(
        cmd,
        pods.iter().map(|(ns, cid)| (ns.path(), cid.as_str())),
        conf,
    )
}

/// Kills ADDs with SIGKILL at random moments. Whatever instant the kill
/// lands on, no address may be configured in two pods or reserved twice,
/// and DEL or GC must leave nothing behind.
#[test]
fn adds_killed_at_random_moments_never_duplicate_and_clean_up() {
    if !require_root() {
        return;
    }
    const TRIALS: usize = 60;
    let node = Node::new();
    let conf = node.conf(
        "1.1.0",
        r#"[[{"subnet":"10.207.0.0/24"}],[{"subnet":"fd00:207::/64"}]]"#,
    );
    let sluice = bin("sluice");
    let mut pods: Vec<(Ns, String)> = Vec::new();
    let mut killed = 0;
    for i in 0..TRIALS {
        let ns = Ns::new("k");
        let cid = unique("k");
        let mut child = spawn_cni(
            &node.ns,
            &sluice,
            "ADD",
            &cid,
            Some(&ns.path()),
            "eth0",
            &conf,
            &[],
        );
        // Spread kills over the whole ADD (a few ms in a release build, more
        // in debug); some trials finish before the kill.
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..8_000)));
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            killed += 1;
        }
        let _ = child.wait();
        pods.push((ns, cid));
        // Every few trials, also kill two racing ADDs at once.
        if i % 10 == 9 {
            check_no_duplicates(&node, &pods);
        }
    }
    eprintln!("{killed} of {TRIALS} ADDs were killed mid-flight");
    assert!(
        killed >= TRIALS / 4,
        "too few kills landed ({killed}); the test would prove nothing"
    );
    check_no_duplicates(&node, &pods);

    // A fresh ADD after all that still gets a unique, working address.
    let witness = Pod::add(&node, &conf);
    check_no_duplicates(&node, &pods);
    for ip in witness.ips() {
        assert!(node.ns.ping(&ip), "witness pod unreachable at {ip}");
    }
    drop(witness);

    // DEL half of them, GC the rest (no valid attachments): nothing left.
    let (del, gc) = pods.split_at(TRIALS / 2);
    for (ns, cid) in del {
        node.cni("DEL", cid, Some(&ns.path()), "eth0", &conf).ok();
    }
    let mut g: serde_json::Value = serde_json::from_str(&conf).unwrap();
    g["cni.dev/valid-attachments"] = serde_json::json!([]);
    node.cni("GC", "", None, "", &g.to_string()).ok();
    node.assert_clean();
    for (ns, _) in gc {
        assert!(
            !ns.links().iter().any(|l| l == "eth0"),
            "GC left a pod interface"
        );
    }
}

/// No address is configured in two pods, and each configured address is
/// reserved in IPAM for exactly that pod.
fn check_no_duplicates(node: &Node, pods: &[(Ns, String)]) {
    let mut configured: HashMap<String, String> = HashMap::new();
    for (ns, cid) in pods {
        if !ns.links().iter().any(|l| l == "eth0") {
            continue;
        }
        for a in ns.addresses("eth0") {
            if let Some(other) = configured.insert(a.clone(), cid.clone()) {
                panic!("address {a} is configured in both {other} and {cid}");
            }
        }
    }
    let dir = node.data_dir().join(&node.network);
    for (addr, cid) in &configured {
        let owner = std::fs::read_to_string(dir.join(addr))
            .unwrap_or_else(|_| panic!("{addr} is configured in {cid} but not reserved"));
        assert!(
            owner.starts_with(cid.as_str()),
            "{addr} in {cid} is reserved for {owner:?}"
        );
    }
}
