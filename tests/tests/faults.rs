//! Faults, and nothing lost: the daemon SIGKILLed under service traffic;
//! pods churned with plugin runs and the daemon killed (a checker compares
//! kernel, maps, records and IPAM store with the pods that exist); the
//! IPAM store or the endpoint records full (a tiny tmpfs) or read-only;
//! the daemon started on records it cannot read. The machinery is
//! `sluice_tests::soak`, which `bench/run soak` runs for 30 minutes.

use sluice_tests::daemon::Daemon;
use sluice_tests::soak::{kill_loop, settle, Churn, ServiceRig};
use sluice_tests::{ranges, require_root, unique, Node, Ns, Pod};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A tiny tmpfs mounted at a directory; unmounted on drop.
struct Tiny(PathBuf);

impl Tiny {
    fn mount(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "sluice-test"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        Tiny(dir.into())
    }

    fn remount(&self, opt: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount {opt}: {out:?}");
    }

    /// Fills it to the last byte; returns the filler.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = [0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tiny {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An ADD that must fail: the error object, and nothing of it left.
fn add_fails(node: &Node, conf: &str, why: &str) -> u64 {
    let ns = Ns::new("p");
    let cid = unique("c");
    let before_links = node.settled_pod_links();
    let before_records = node.records();
    let r = node.cni("ADD", &cid, Some(&ns.path()), "eth0", conf);
    assert_ne!(r.code, Some(0), "{why}: ADD succeeded: {}", r.stdout);
    let v = r.json();
    let code = v["code"].as_u64().expect("an error code");
    assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{why}: {v}"
    );
    assert_eq!(node.settled_pod_links(), before_links, "{why}: a veth left");
    assert_eq!(node.records(), before_records, "{why}: a record left");
    assert!(
        !node
            .reservations()
            .iter()
            .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&cid))),
        "{why}: an address left reserved"
    );
    assert_eq!(
        ns.ip(&["-o", "link", "show"]).lines().count(),
        1,
        "{why}: something left in the pod's netns"
    );
    // DEL after a failed ADD, as a runtime does: it succeeds.
    node.cni("DEL", &cid, Some(&ns.path()), "eth0", conf).ok();
    code
}

#[test]
fn a_full_or_read_only_ipam_store_or_record_dir_fails_add_cleanly() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let ipam = Tiny::mount(&node.data_dir());
    let records = Tiny::mount(&node.state_dir().join("endpoints"));
    let _d = Daemon::start(&node);
    let conf = node.conf("1.0.0", ranges("v4"));
    let running = Pod::add(&node, &conf);
    let running_ip = running.ip(false).to_string();

    for (what, dir) in [("IPAM store", &ipam), ("record dir", &records)] {
        let filler = dir.fill();
        let code = add_fails(&node, &conf, &format!("{what} full"));
        assert!(
            node.ns.ping(&running_ip),
            "running pod touched ({what} full)"
        );
        std::fs::remove_file(filler).unwrap();
        let p = Pod::add(&node, &conf);
        assert!(
            node.ns.ping(&p.ip(false).to_string()),
            "ADD after space is back"
        );
        p.del().ok();
        drop(p);
        eprintln!("{what} full: code {code}");

        dir.remount("ro");
        let code = add_fails(&node, &conf, &format!("{what} read-only"));
        assert!(node.ns.ping(&running_ip), "running pod touched ({what} ro)");
        dir.remount("rw");
        let p = Pod::add(&node, &conf);
        assert!(node.ns.ping(&p.ip(false).to_string()), "ADD after rw");
        eprintln!("{what} read-only: code {code}");
    }
    running.del().ok();
    drop(running);
    node.assert_clean();
}

/// The daemon starts on records it cannot use: one truncated (half-written
/// by something else, or a disk error), one of a newer version (a
/// downgrade). It says what it found and leaves those pods' datapath as it
/// is: their traffic keeps flowing and their source check stays.
#[test]
fn records_the_daemon_cannot_read_at_start_keep_their_pods_traffic() {
    if !require_root() {
        return;
    }
    use sluice_common::endpoint::record_path;
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let conf = node.conf("1.0.0", ranges("v4"));
    let a = Pod::add(&node, &conf);
    let b = Pod::add(&node, &conf);
    let good = Pod::add(&node, &conf);
    for p in [&a, &b, &good] {
        d.wait_edge(&p.cid);
    }
    let cookies: Vec<u64> = [&a, &b]
        .iter()
        .map(|p| sluice_tests::daemon::netns_cookie(&p.ns.path()))
        .collect();
    d.stop();
    let pa = record_path(&node.state_dir(), &a.cid, "eth0");
    let text = std::fs::read_to_string(&pa).unwrap();
    std::fs::write(&pa, &text[..text.len() / 2]).unwrap();
    let pb = record_path(&node.state_dir(), &b.cid, "eth0");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pb).unwrap()).unwrap();
    v["version"] = 999.into();
    std::fs::write(&pb, v.to_string()).unwrap();
    d.spawn();
    // Let a reconcile or two and an edge check pass.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = d.log_text();
    assert!(
        log.contains(&a.cid) || log.contains(pa.file_name().unwrap().to_str().unwrap()),
        "the truncated record is named in the log:\n{log}"
    );
    assert!(log.contains("newer"), "the newer record is named:\n{log}");
    let good_ip = good.ip(false).to_string();
    for (p, cookie) in [(&a, cookies[0]), (&b, cookies[1])] {
        assert!(
            p.ns.ping(&good_ip),
            "a pod whose record cannot be read lost its traffic"
        );
        assert!(
            d.pinned_endpoints().contains_key(&cookie),
            "its endpoint entry was removed"
        );
    }
    // The files are left for the operator (or a newer daemon) as they are.
    assert_eq!(
        std::fs::read_to_string(&pa).unwrap(),
        text[..text.len() / 2]
    );
}

/// The daemon SIGKILLed every 1.5-3 s while a pod and the node keep
/// connections to a Service busy and open new ones: not one request on an
/// established connection fails, not one connect to the Service (whose
/// backends do not change) fails, and the node is whole afterwards.
#[test]
fn the_daemon_killed_every_few_seconds_loses_no_request_and_no_connect() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let rig = ServiceRig::new(&node, "");
    let stop = AtomicBool::new(false);
    let (report, kills) = std::thread::scope(|s| {
        let traffic = rig.traffic(4, Duration::from_secs(600));
        let killer = s.spawn(|| {
            kill_loop(
                &rig.daemon,
                Duration::from_millis(1500)..Duration::from_millis(3000),
                &stop,
            )
        });
        std::thread::sleep(Duration::from_secs(20));
        stop.store(true, Ordering::Relaxed);
        let kills = killer.join().unwrap();
        (traffic.finish(), kills)
    });
    eprintln!("{kills} kills: {report:?}");
    assert!(kills >= 5, "only {kills} kills landed");
    assert!(report.requests > 1000, "too little traffic: {report:?}");
    assert_eq!(report.failed_requests, 0, "{report:?}");
    assert_eq!(report.failed_connects, 0, "{report:?}");
    let problems = settle(&node, &rig.daemon, &rig.pods(), 10);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// 1,000 pods created and deleted in ten waves of 100, 16 plugin runs at
/// a time, 5 % of them SIGKILLed at a random moment (a killed ADD is
/// DELed, a killed DEL retried, as the runtime does), the daemon
/// SIGKILLed every 2-4 s, with service traffic throughout. After every
/// wave the checker finds nothing left of a pod that is gone and nothing
/// missing of one that exists; at the end, with every pod deleted, only
/// the rig's pods remain, and no request or connect failed.
#[test]
fn a_thousand_pods_churned_with_kills_leave_nothing_and_miss_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let rig = ServiceRig::new(&node, "");
    let mut churn = Churn::new(&node, &rig.conf);
    let stop = AtomicBool::new(false);
    let mut problems = Vec::new();
    let (report, kills) = std::thread::scope(|s| {
        let traffic = rig.traffic(2, Duration::from_secs(1800));
        let killer = s.spawn(|| {
            kill_loop(
                &rig.daemon,
                Duration::from_millis(2000)..Duration::from_millis(4000),
                &stop,
            )
        });
        for wave in 0..10 {
            churn.wave(100, 16, 0.05);
            let live: Vec<_> = rig.pods().into_iter().chain(churn.pods()).collect();
            for p in settle(&node, &rig.daemon, &live, 15) {
                problems.push(format!("after wave {wave}: {p}"));
            }
        }
        churn.delete_all(16);
        stop.store(true, Ordering::Relaxed);
        let kills = killer.join().unwrap();
        (traffic.finish(), kills)
    });
    let stats = churn.stats;
    eprintln!("{stats:?}, {kills} daemon kills, {report:?}");
    for p in settle(&node, &rig.daemon, &rig.pods(), 15) {
        problems.push(format!("at the end: {p}"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(churn.errors.is_empty(), "{:#?}", churn.errors);
    assert_eq!(stats.adds, 1000);
    assert!(
        stats.adds_killed > 0 && stats.dels_killed > 0 && kills >= 3,
        "too few kills landed to prove anything: {stats:?}, {kills}"
    );
    assert_eq!(report.failed_requests, 0, "{report:?}");
    assert_eq!(report.failed_connects, 0, "{report:?}");
}
