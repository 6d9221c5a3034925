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
    // A periodic pass every second: it races the churn's ADDs and DELs
    // (its listing of the records is taken before its lock).
    let rig = ServiceRig::new(&node, "reconcile_interval_seconds = 1\n");
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
    // Kills land at random moments: an ADD is hit most rounds, a DEL
    // (a few ms) now and then; both are reported above.
    assert!(
        stats.adds_killed >= 5 && kills >= 3,
        "too few kills landed to prove anything: {stats:?}, {kills}"
    );
    assert_eq!(report.failed_requests, 0, "{report:?}");
    assert_eq!(report.failed_connects, 0, "{report:?}");
}

/// Unmounts a cgroup2 mount the daemon made for the test before the test's
/// directory is removed (never walk into a cgroup tree).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        while Command::new("umount")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
    }
}

fn is_cgroup2(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == 0x6367_7270)
}

/// The configured cgroup root is missing (never mounted; later unmounted
/// while the daemon was down): the daemon says so, mounts cgroup2 there,
/// keeps the socket programs' links (the one hierarchy's root is the same
/// cgroup) and the Service answers throughout, with no request or connect
/// lost.
#[test]
fn a_missing_cgroup_root_is_mounted_and_keeps_the_links() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let root = node.dir.path().join("cgroup");
    let _unmount = Unmount(root.clone());
    let rig = ServiceRig::new(&node, &format!("cgroup_root = \"{}\"\n", root.display()));
    assert!(
        is_cgroup2(&root),
        "cgroup2 was not mounted at {}",
        root.display()
    );
    let log = rig.daemon.lock().unwrap().log_text();
    assert!(log.contains("mounted one"), "{log}");
    let traffic = rig.traffic(4, Duration::from_secs(600));
    let links = {
        let mut d = rig.daemon.lock().unwrap();
        let links = d.link_ids();
        d.kill9();
        let out = Command::new("umount").arg(&root).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!is_cgroup2(&root));
        std::thread::sleep(Duration::from_secs(1));
        d.spawn();
        links
    };
    assert!(is_cgroup2(&root), "mounted again");
    std::thread::sleep(Duration::from_secs(1));
    let report = traffic.finish();
    let d = rig.daemon.lock().unwrap();
    let cgroup_links = |l: &std::collections::BTreeMap<String, u32>| {
        l.iter()
            .filter(|(k, _)| k.starts_with("cgroup/"))
            .map(|(k, v)| (k.clone(), *v))
            .collect::<Vec<_>>()
    };
    assert!(!cgroup_links(&links).is_empty());
    assert_eq!(
        cgroup_links(&d.link_ids()),
        cgroup_links(&links),
        "the socket programs' links were replaced"
    );
    assert_eq!(report.failed_requests, 0, "{report:?}");
    assert_eq!(report.failed_connects, 0, "{report:?}");
    assert!(report.requests > 0);
}

/// The daemon starts on pins an older build left: the frontend map made
/// without BPF_F_NO_PREALLOC (a size or flags change under the same name),
/// and the v1 affinity map a later build renamed. It says what it found,
/// carries the entries into maps made right, unpins the obsolete one, and
/// the programs use the new maps: a change to the Service after the start
/// takes effect. Service traffic flows throughout.
#[test]
fn stale_pins_of_an_older_layout_are_carried_over_and_traffic_flows() {
    if !require_root() {
        return;
    }
    use sluice_dataplane::maps::{AffinityKey, OBSOLETE_AFFINITY_V1, SVC};
    use sluice_dataplane::sys;
    use std::os::fd::AsFd;
    let node = Node::new();
    let dir = node.dir.path().join("services");
    let rig = ServiceRig::new(&node, "");
    let traffic = rig.traffic(4, Duration::from_secs(600));
    let maps = node.pin_path.join("maps");
    {
        let mut d = rig.daemon.lock().unwrap();
        d.kill9();
        // The frontend map as an older build made it: flags 0.
        let cur = sys::obj_get(&maps.join(SVC.name)).unwrap();
        let old = sys::map_create(
            SVC.map_type,
            SVC.key_size,
            SVC.value_size,
            SVC.max_entries,
            0,
            SVC.name,
        )
        .unwrap();
        let mut n = 0;
        for k in sys::map_keys(cur.as_fd(), SVC.key_size as usize).unwrap() {
            let mut v = vec![0u8; SVC.value_size as usize];
            if sys::map_lookup(cur.as_fd(), &k, &mut v).unwrap() {
                sys::map_update(old.as_fd(), &k, &v, 0).unwrap();
                n += 1;
            }
        }
        assert!(n > 0, "no frontend to carry");
        std::fs::remove_file(maps.join(SVC.name)).unwrap();
        sys::obj_pin(old.as_fd(), &maps.join(SVC.name)).unwrap();
        // The v1 affinity map, with one entry.
        let v1 = OBSOLETE_AFFINITY_V1.spec;
        let aff = sys::map_create(
            v1.map_type,
            v1.key_size,
            v1.value_size,
            v1.max_entries,
            0,
            v1.name,
        )
        .unwrap();
        let key = AffinityKey {
            netns_cookie: 4242,
            svc_id: 3,
            pad: 0,
        };
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&7_500_000_000u64.to_ne_bytes());
        value[8..12].copy_from_slice(&77u32.to_ne_bytes());
        sys::map_update(
            aff.as_fd(),
            sluice_dataplane::maps::bytes_of(&key),
            &value,
            0,
        )
        .unwrap();
        sys::obj_pin(aff.as_fd(), &maps.join(v1.name)).unwrap();
        d.spawn();
        let st = d.status();
        let carried = st["restore"]["maps_carried"].to_string();
        assert!(
            carried.contains(SVC.name) && carried.contains("sluice_aff_v2"),
            "the restore names what it carried: {st:#}"
        );
        let log = d.log_text();
        assert!(log.contains(SVC.name), "{log}");
    }
    assert!(!maps.join(OBSOLETE_AFFINITY_V1.spec.name).exists());
    let info = sys::map_info(sys::obj_get(&maps.join(SVC.name)).unwrap().as_fd()).unwrap();
    assert_eq!(info.map_flags, SVC.flags, "the frontend map is made right");
    std::thread::sleep(Duration::from_secs(1));
    let report = traffic.finish();
    assert_eq!(report.failed_requests, 0, "{report:?}");
    assert_eq!(report.failed_connects, 0, "{report:?}");

    // The Service now has only web-1: every new connection goes there,
    // which holds only if the programs read the map the daemon writes.
    let ip = match rig.backends[1].ip(false) {
        std::net::IpAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let (fe, port) = sluice_tests::soak::SERVICE.split_once(':').unwrap();
    sluice_tests::manifests::write_atomic(
        &dir,
        "web.yaml",
        &sluice_tests::manifests::service(
            "soak",
            0,
            fe.parse().unwrap(),
            port.parse().unwrap(),
            &[ip],
            8080,
        ),
    );
    let only_web1 = sluice_tests::daemon::eventually(10, || {
        (0..10).all(|_| {
            sluice_tests::probe(&rig.client.ns, &["tcp", sluice_tests::soak::SERVICE])
                .is_ok_and(|v| v["reply"] == "web-1")
        })
    });
    assert!(
        only_web1,
        "a change after the carry-over did not take effect"
    );
    let problems = settle(&node, &rig.daemon, &rig.pods(), 10);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A manifests directory changing 1,000 times a second for 12 s (100
/// Services, one file each, each change a new endpoint count): the daemon
/// coalesces (far fewer passes than changes), keeps up (the last state is
/// programmed within 2 s of the last write, every Service exactly as last
/// written), and its memory stays bounded (RSS at the end within 10 % + 4
/// MiB of RSS a third of the way in).
#[test]
fn a_thousand_manifest_changes_a_second_are_coalesced_in_bounded_memory() {
    if !require_root() {
        return;
    }
    use sluice_tests::manifests::{cluster_ip, endpoints, service, write_atomic};
    const SERVICES: usize = 100;
    let node = Node::new();
    let dir = node.dir.path().join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |i: usize, n: usize| {
        let text = service(
            "storm",
            i,
            cluster_ip(i, 97),
            80,
            &endpoints(i, 10)[..n],
            8080,
        );
        write_atomic(&dir, &format!("svc-{i}.yaml"), &text);
    };
    for i in 0..SERVICES {
        write(i, 10);
    }
    let d = Daemon::start_with(&node, &format!("services_dir = \"{}\"\n", dir.display()));
    sluice_tests::soak::storm(&d, SERVICES, 97, Duration::from_secs(12), write).assert_kept_up();
}

/// An ADD killed after it wrote the pod's map entries and before its
/// record: the runtime's DEL finds no record. It still removes every entry
/// naming the pod's host veth, with the daemon down (so no sweep of the
/// daemon's is what removes them). Found by the soak: before, such entries
/// stayed until the daemon's next start.
#[test]
fn a_del_without_a_record_removes_what_an_interrupted_add_wrote() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let conf = node.conf("1.0.0", ranges("dual"));
    let pod = Pod::add(&node, &conf);
    d.wait_edge(&pod.cid);
    d.kill9();
    let cookie = sluice_tests::daemon::netns_cookie(&pod.ns.path());
    let ifindex = d.pinned_endpoints()[&cookie].host_ifindex;
    assert_eq!(
        d.pinned_sources()
            .iter()
            .filter(|k| k.ifindex == ifindex)
            .count(),
        2
    );
    std::fs::remove_file(sluice_common::endpoint::record_path(
        &node.state_dir(),
        &pod.cid,
        "eth0",
    ))
    .unwrap();
    pod.del().ok();
    assert!(
        !d.pinned_endpoints().contains_key(&cookie),
        "endpoint entry left"
    );
    assert!(
        !d.pinned_sources().iter().any(|k| k.ifindex == ifindex),
        "source entries left"
    );
    drop(pod);
    node.assert_clean();
}

/// Entries no record explains (a plugin killed half-way where DEL cannot
/// see them) are removed by the daemon's periodic pass, not only at its
/// next start; a live pod's entries stay.
#[test]
fn the_periodic_pass_sweeps_entries_no_record_explains() {
    if !require_root() {
        return;
    }
    use sluice_dataplane::maps::{self, Endpoint, SrcKey};
    let node = Node::new();
    let d = Daemon::start_with(&node, "reconcile_interval_seconds = 1\n");
    let conf = node.conf("1.0.0", ranges("v4"));
    let pod = Pod::add(&node, &conf);
    d.wait_edge(&pod.cid);
    let stray_if = 0x7fff_fff0;
    let stray_ip: std::net::IpAddr = "10.201.0.250".parse().unwrap();
    let mut eps = d.endpoint_map();
    eps.insert(4242, Endpoint::pod(stray_if, [stray_ip]), 0)
        .unwrap();
    let mut src: aya::maps::HashMap<_, SrcKey, u8> = aya::maps::HashMap::try_from(
        sluice_dataplane::load::open_pinned(&node.pin_path.join("maps"), &maps::SRC).unwrap(),
    )
    .unwrap();
    src.insert(SrcKey::new(stray_if, stray_ip), 1, 0).unwrap();
    let swept = sluice_tests::daemon::eventually(5, || {
        !d.pinned_endpoints().contains_key(&4242)
            && !d.pinned_sources().iter().any(|k| k.ifindex == stray_if)
    });
    assert!(swept, "stray entries still there after 5 periodic passes");
    let cookie = sluice_tests::daemon::netns_cookie(&pod.ns.path());
    assert!(
        d.pinned_endpoints().contains_key(&cookie),
        "the live pod's entry went"
    );
    assert!(
        node.ns.ping(&pod.ip(false).to_string()),
        "the live pod lost its traffic"
    );
}
