//! sluiced with the real plugin, in namespaces the tests make: registration
//! by netns cookie, the source check, restarts that never disturb traffic,
//! pods that come and go while the daemon is down, and two daemons on one
//! kernel.

use sluice_dataplane::maps::SrcKey;
use sluice_tests::daemon::{eventually, netns_cookie, Daemon};
use sluice_tests::{ranges, require_root, Node, Pod};
use std::net::IpAddr;
use std::process::Command;

fn host_ifindex(ep: &serde_json::Value) -> u32 {
    ep["host_ifindex"].as_u64().unwrap() as u32
}

#[test]
fn endpoints_appear_with_their_cookie_and_vanish_on_del() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let conf = node.conf("1.0.0", ranges("dual"));
    let a = Pod::add(&node, &conf);
    let b = Pod::add(&node, &conf);

    // ADD writes the pod's entries and attaches its edge itself, then tells
    // the daemon, which registers the pod and confirms the edge.
    d.wait_endpoints(2);
    d.wait_edge(&a.cid);
    d.wait_edge(&b.cid);
    let eps = d.endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    let pinned = d.pinned_endpoints();
    for p in [&a, &b] {
        let e = &eps[&p.cid];
        let cookie = netns_cookie(&p.ns.path());
        assert_eq!(e["cookie"].as_u64().unwrap(), cookie, "cookie of {}", p.cid);
        assert_eq!(e["in_endpoint_map"], true);
        let entry = pinned.get(&cookie).expect("endpoint map entry by cookie");
        assert_eq!(entry.host_ifindex, host_ifindex(e));
        let ips = p.ips();
        assert_eq!(
            entry.ipv4().map(|a| a.to_string()).as_deref(),
            Some(ips[0].as_str())
        );
        assert_eq!(
            entry.ipv6().map(|a| a.to_string()).as_deref(),
            Some(ips[1].as_str())
        );
        assert_eq!(e["edge"]["mode"], "clsact", "{e}");
        assert_eq!(e["edge"]["program"], "check", "{e}");
        assert_eq!(e["edge"]["by"], "plugin", "{e}");
        for ip in &ips {
            let k = SrcKey::new(entry.host_ifindex, ip.parse::<IpAddr>().unwrap());
            assert!(d.pinned_sources().contains(&k), "source entry for {ip}");
        }
    }
    // The node's own netns is in the map too (socket LB applies to it).
    let host = netns_cookie(&node.ns.path());
    assert!(d.pinned_endpoints()[&host].is_host());
    assert_eq!(d.status()["host_cookie"].as_u64(), Some(host));

    // sluicectl shows the same, as JSON and as a table.
    let out = d.ctl(&["endpoints", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let table = String::from_utf8(d.ctl(&["endpoints"]).stdout).unwrap();
    assert!(
        table.contains("COOKIE") && table.contains(&a.ips()[0]),
        "{table}"
    );

    let a_cookie = netns_cookie(&a.ns.path());
    let a_ifindex = host_ifindex(&eps[&a.cid]);
    a.del().ok();
    let eps = d.endpoints();
    assert!(!eps.contains_key(&a.cid), "unregistered on DEL");
    assert!(eps.contains_key(&b.cid));
    assert!(
        !d.pinned_endpoints().contains_key(&a_cookie),
        "map entry gone"
    );
    assert!(
        d.pinned_sources().iter().all(|k| k.ifindex != a_ifindex),
        "source entries gone"
    );
    assert!(
        d.link_ids().keys().all(|k| !k.starts_with("tc/")),
        "no tc link pins in clsact mode"
    );
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let conf = node.conf("1.0.0", r#"[[{"subnet":"10.203.0.0/24","gateway":"10.203.0.1"}],[{"subnet":"fd00:203::/64","gateway":"fd00:203::1"}]]"#);
    let p = Pod::add(&node, &conf);
    d.wait_edge(&p.cid);
    assert!(p.ns.ping("10.203.0.1"), "own v4 source passes");
    assert!(p.ns.ping("fd00:203::1"), "own v6 source passes");
    let ifindex = host_ifindex(&d.endpoints()[&p.cid]);
    assert_eq!(d.pinned_counters(ifindex).total(), 0);

    // The pod takes addresses that are not its own and sends from them.
    p.ns.ip(&["addr", "add", "10.203.0.200/32", "dev", "eth0"]);
    p.ns.ip(&["addr", "add", "fd00:203::200/128", "dev", "eth0", "nodad"]);
    let spoof = |src: &str, dst: &str| {
        p.ns.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", src, dst])
            .status
            .success()
    };
    assert!(
        !spoof("10.203.0.200", "10.203.0.1"),
        "spoofed v4 must not get through"
    );
    assert!(
        !spoof("fd00:203::200", "fd00:203::1"),
        "spoofed v6 must not get through"
    );
    let c = d.pinned_counters(ifindex);
    assert!(c.spoofed() >= 4, "drops counted per endpoint: {c:?}");
    assert!(c.drop_bytes > 0);
    let e = &d.endpoints()[&p.cid];
    assert_eq!(e["spoof_drops"].as_u64(), Some(c.spoofed()));
    assert_eq!(
        e["edge"]["drops"],
        serde_json::json!([["spoofed_source", c.spoofed()]])
    );
    // The pod's own traffic is unaffected.
    assert!(p.ns.ping("10.203.0.1"));
}

/// Counts received replies of a ping run in a netns.
fn ping_flow(ns: &sluice_tests::Ns, dst: &str, count: u32, interval: &str) -> std::process::Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
            dst,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ping")
}

fn received(out: &std::process::Output) -> (u32, u32) {
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping summary missing: {s}"));
    let n: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|x| !x.is_empty())
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    (n[0], n[1])
}

#[test]
fn kill9_and_restart_keep_the_flow_the_links_and_the_endpoints() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.204.0.0/24","gateway":"10.204.0.1"}]]"#,
    );
    let a = Pod::add(&node, &conf);
    let b = Pod::add(&node, &conf);
    let gone = Pod::add(&node, &conf);
    for p in [&a, &b, &gone] {
        d.wait_edge(&p.cid);
    }
    let b_ip = b.ips()[0].clone();
    let links = d.link_ids();
    let maps = d.map_ids();
    // 8 sock_addr hooks, 2 bind guards, sock_release, sockops, and the
    // acceleration's LSM guards where the kernel runs them; filters need
    // none.
    let guards = d.status()["accel"]["guards"]
        .as_array()
        .map_or(0, |g| g.len());
    assert_eq!(
        links.len(),
        12 + guards,
        "socket links and guards: {links:?}"
    );
    let a_if = host_ifindex(&d.endpoints()[&a.cid]);
    let gone_cookie = netns_cookie(&gone.ns.path());

    // 300 pings at 10 ms from pod a to pod b, across the daemon's death.
    let flow = ping_flow(&a.ns, &b_ip, 300, "0.01");
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.kill9();
    // sluicectl still shows what the kernel holds, from pins and records.
    let st = d.ctl(&["status"]);
    assert_eq!(st.status.code(), Some(1), "status reports the daemon down");
    assert!(String::from_utf8_lossy(&st.stdout).contains("down"));
    let out = d.ctl(&["endpoints", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .iter()
            .all(|e| e["in_endpoint_map"] == true && e["edge"]["protecting"] == true),
        "{listed:?}"
    );
    let out = d.ctl(&["bpf", "maps", "-o", "json"]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let eps = m["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "sluice_eps")
        .unwrap();
    assert_eq!(eps["entries"], 4, "3 pods and the node: {m}");
    // While the daemon is down: a pod arrives, a pod leaves, and pod a
    // tries to spoof; the datapath keeps enforcing without the daemon.
    let late = Pod::add(&node, &conf);
    gone.del().ok();
    a.ns.ip(&["addr", "add", "10.204.0.250/32", "dev", "eth0"]);
    let drops_before = d.pinned_counters(a_if).spoofed();
    assert!(!a
        .ns
        .exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            "10.204.0.250",
            "10.204.0.1"
        ])
        .status
        .success());
    assert!(
        d.pinned_counters(a_if).spoofed() > drops_before,
        "still dropping with the daemon dead"
    );

    d.spawn();
    let out = flow.wait_with_output().unwrap();
    let (sent, got) = received(&out);
    assert_eq!(
        (sent, got),
        (300, 300),
        "no packet lost across kill -9 and restart"
    );

    // Nothing re-created: same links, same maps.
    let after = d.link_ids();
    for (k, id) in &links {
        if k.starts_with("tc/") && !after.contains_key(k) {
            continue; // the pod deleted while down
        }
        assert_eq!(after.get(k), Some(id), "link {k} re-created");
    }
    assert_eq!(d.map_ids(), maps, "maps re-created");
    let st = d.status();
    assert_eq!(
        st["restore"]["maps_reused"].as_array().unwrap().len(),
        sluice_dataplane::maps::ALL.len()
    );
    assert!(
        st["socket_links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["outcome"] == "reused"),
        "{st}"
    );

    // Restored: a and b; picked up: late; swept: gone.
    let eps = d.endpoints();
    assert!(eps.contains_key(&a.cid) && eps.contains_key(&b.cid));
    let late_ep = eps
        .get(&late.cid)
        .expect("pod added while down is registered at start");
    assert_eq!(
        late_ep["cookie"].as_u64(),
        Some(netns_cookie(&late.ns.path()))
    );
    assert_eq!(late_ep["edge"]["protecting"], true, "{late_ep}");
    assert!(!eps.contains_key(&gone.cid));
    assert!(
        !d.pinned_endpoints().contains_key(&gone_cookie),
        "stale entry swept"
    );
    assert_eq!(eps.len(), 3);
    assert!(late.ns.ping("10.204.0.1"));
}

#[test]
fn a_record_whose_netns_is_gone_is_cleaned_up_at_start() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let conf = node.conf("1.0.0", ranges("v4"));
    let mut p = Pod::add(&node, &conf);
    let cookie = netns_cookie(&p.ns.path());
    d.stop();
    // The sandbox dies without a DEL: its netns (and so its veth) goes.
    p.ns.delete();
    d.spawn();
    assert!(d.endpoints().is_empty());
    assert!(
        node.records().is_empty(),
        "record of a vanished pod removed"
    );
    assert!(!d.pinned_endpoints().contains_key(&cookie));
    assert_eq!(d.status()["restore"]["report"]["cleaned"], 1);
}

#[test]
fn two_daemons_on_one_kernel_never_touch_each_others_pods() {
    if !require_root() {
        return;
    }
    let n1 = Node::new();
    let n2 = Node::new();
    let d1 = Daemon::start(&n1);
    let mut d2 = Daemon::start(&n2);
    let c1 = n1.conf(
        "1.0.0",
        r#"[[{"subnet":"10.205.0.0/24","gateway":"10.205.0.1"}]]"#,
    );
    let c2 = n2.conf(
        "1.0.0",
        r#"[[{"subnet":"10.206.0.0/24","gateway":"10.206.0.1"}]]"#,
    );
    let p1 = Pod::add(&n1, &c1);
    let p2 = Pod::add(&n2, &c2);
    let k1 = netns_cookie(&p1.ns.path());
    let k2 = netns_cookie(&p2.ns.path());
    assert_eq!(
        d1.wait_endpoints(1).keys().collect::<Vec<_>>(),
        vec![&p1.cid]
    );
    assert_eq!(
        d2.wait_endpoints(1).keys().collect::<Vec<_>>(),
        vec![&p2.cid]
    );
    assert!(d1.pinned_endpoints().contains_key(&k1) && !d1.pinned_endpoints().contains_key(&k2));
    assert!(d2.pinned_endpoints().contains_key(&k2) && !d2.pinned_endpoints().contains_key(&k1));

    // Socket hooks act only for their own daemon's pods; an unregistered
    // netns is left alone by both.
    let (a1, a2) = (d1.sock_ops("connect4"), d2.sock_ops("connect4"));
    assert!(p1.ns.ping("10.205.0.1"));
    assert!(d1.sock_ops("connect4") > a1, "d1 sees its pod's connect");
    assert_eq!(d2.sock_ops("connect4"), a2, "d2 does not see d1's pod");
    let stranger = sluice_tests::Ns::new("x");
    let (b1, b2) = (d1.sock_ops("connect4"), d2.sock_ops("connect4"));
    assert!(stranger.ping("127.0.0.1"));
    assert_eq!(
        (d1.sock_ops("connect4"), d2.sock_ops("connect4")),
        (b1, b2),
        "unknown netns untouched"
    );

    // Restarting one daemon leaves the other's links and pods alone.
    let l1 = d1.link_ids();
    d2.kill9();
    d2.spawn();
    assert_eq!(d1.link_ids(), l1);
    assert_eq!(d1.endpoints().len(), 1);
    assert_eq!(d2.endpoints().len(), 1);
    assert!(p1.ns.ping("10.205.0.1") && p2.ns.ping("10.206.0.1"));
}

/// Both attach modes: the check the plugin attached drops spoofs, and a
/// restart adopts it as it is (no second filter, the same tcx link).
fn edge_mode_drops_spoofs_and_survives_restart(mode: &str, subnet: &str) {
    let node = Node::new();
    let mut d = Daemon::start_with(&node, &format!("tc_attach = \"{mode}\"\n"));
    let conf = node
        .conf(
            "1.0.0",
            &format!(r#"[[{{"subnet":"{subnet}.0/24","gateway":"{subnet}.1"}}]]"#),
        )
        .replace(
            "\"pinPath\"",
            &format!("\"tcAttach\":\"{mode}\",\"pinPath\""),
        );
    let p = Pod::add(&node, &conf);
    let ep = d.wait_edge(&p.cid);
    assert_eq!(ep["edge"]["mode"], mode);
    let host = ep["host_ifname"].as_str().unwrap().to_string();
    let ifindex = host_ifindex(&ep);
    let attachments = |d: &Daemon| {
        let filters = node
            .ns
            .edge_filters(&host)
            .matches("sluice_pod_ingress")
            .count();
        (filters, d.link_ids().get(&format!("tc/{ifindex}")).copied())
    };
    let before = attachments(&d);
    match mode {
        "clsact" => assert_eq!(before, (1, None)),
        _ => assert!(before.0 == 0 && before.1.is_some(), "{before:?}"),
    }
    p.ns.ip(&["addr", "add", &format!("{subnet}.250/32"), "dev", "eth0"]);
    let spoof = &format!("{subnet}.250");
    let gw = &format!("{subnet}.1");
    assert!(!p
        .ns
        .exec(&["ping", "-c", "1", "-W", "1", "-I", spoof, gw])
        .status
        .success());
    assert!(d.pinned_counters(ifindex).spoofed() >= 1);
    d.kill9();
    d.spawn();
    assert_eq!(attachments(&d), before, "restart adopts the edge as it is");
    assert_eq!(d.wait_edge(&p.cid)["edge"]["repairs"], 0);
    assert!(p.ns.ping(gw));
}

#[test]
fn clsact_mode_drops_spoofs_and_survives_restart_without_duplicates() {
    if !require_root() {
        return;
    }
    edge_mode_drops_spoofs_and_survives_restart("clsact", "10.207.0");
}

#[test]
fn tcx_mode_drops_spoofs_and_survives_restart_with_the_same_link() {
    if !require_root() || !sluice_cni::edge::tcx_supported() {
        return;
    }
    edge_mode_drops_spoofs_and_survives_restart("tcx", "10.207.1");
}

#[test]
fn metrics_and_healthz() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let port = fastrand::u16(20000..60000);
    let d = Daemon::start_with(&node, &format!("metrics_address = \"127.0.0.1:{port}\"\n"));
    let conf = node.conf("1.0.0", ranges("v4"));
    let p = Pod::add(&node, &conf);
    d.wait_edge(&p.cid);
    let get = |path: &str| -> String {
        let out = node.ns.exec(&[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET {path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let h = get("/healthz");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let m = get("/metrics");
    // Whole lines: a doubled prefix or a renamed metric must fail here.
    let has = |prefix: &str| m.lines().any(|l| l.starts_with(prefix));
    assert!(has("sluice_endpoints 1"), "{m}");
    assert!(
        has("sluice_api_requests_total{op=\"register\",result=\"ok\"} 1"),
        "{m}"
    );
    assert!(has("sluice_spoof_drops_total{"), "{m}");
    assert!(has("sluice_edges_protecting 1"), "{m}");
    assert!(has("sluice_edge_checks_total "), "{m}");
    assert!(has("sluice_edge_repairs_total 0"), "{m}");
    assert!(has("sluice_sock_ops_total{hook=\"connect4\"}"), "{m}");
    assert!(has("sluice_register_duration_seconds_count 1"), "{m}");
    assert!(has("sluice_restore_duration_seconds "), "{m}");
    assert!(!m.contains("sluice_sluice"), "{m}");
    drop(d);
}

#[test]
fn a_hung_daemon_never_fails_add_or_del() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let conf = node
        .conf("1.0.0", ranges("v4"))
        .replace("\"daemonTimeoutMs\":2000", "\"daemonTimeoutMs\":200");
    let pid = d.pid().unwrap() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t = std::time::Instant::now();
    let p = Pod::add(&node, &conf);
    assert!(p.ns.ping(p.result["ips"][0]["gateway"].as_str().unwrap()));
    p.del().ok();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "bounded by daemonTimeoutMs"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The late register finds no record (DEL removed it) and the late
    // unregister is a no-op: nothing is left registered.
    assert!(eventually(5, || d.endpoints().is_empty()));
    assert!(d.pinned_endpoints().values().all(|e| e.is_host()));
}

/// An upgraded daemon finds links running an older program: it swaps the
/// program in place (BPF_LINK_UPDATE), so the link and its ID stay and no
/// socket ever passes the hook without a program.
#[test]
fn a_restart_updates_an_older_program_in_place() {
    if !require_root() {
        return;
    }
    use aya::programs::CgroupSockAddr;
    use std::os::fd::AsFd;
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let pin = d.pin_path.join("links/cgroup/sluice_connect4");
    let before = sluice_dataplane::sys::pinned_link_info(&pin).unwrap();
    d.stop();

    // Put an "older build's" connect4 into the pinned link.
    let bpffs_dir = std::path::PathBuf::from(format!("{}-old", d.pin_path.display()));
    let mut old = sluice_dataplane::load::load_object(
        "test_connect4_old",
        sluice_dataplane::TEST_CONNECT4_OLD,
        &bpffs_dir,
        &[],
    )
    .unwrap();
    let prog: &mut CgroupSockAddr =
        sluice_dataplane::load::load_program(&mut old, "test_connect4_old", "sluice_connect4")
            .unwrap();
    let link = sluice_dataplane::sys::obj_get(&pin).unwrap();
    let cur = sluice_dataplane::sys::prog_fd_by_id(before.prog_id).unwrap();
    sluice_dataplane::sys::link_update(link.as_fd(), prog.fd().unwrap().as_fd(), cur.as_fd())
        .unwrap();
    let swapped = sluice_dataplane::sys::pinned_link_info(&pin).unwrap();
    assert_ne!(swapped.prog_id, before.prog_id);
    drop(old);
    let _ = std::fs::remove_dir_all(&bpffs_dir);

    d.spawn();
    let after = sluice_dataplane::sys::pinned_link_info(&pin).unwrap();
    assert_eq!(after.id, before.id, "same link");
    assert_ne!(
        after.prog_id, swapped.prog_id,
        "the older program was replaced"
    );
    let tag = |id| {
        sluice_dataplane::sys::prog_tag(sluice_dataplane::sys::prog_fd_by_id(id).unwrap().as_fd())
            .unwrap()
    };
    assert_eq!(
        tag(after.prog_id),
        tag(before.prog_id),
        "this build's program again"
    );
    let st = d.status();
    let outcome = |name: &str| {
        st["socket_links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["program"] == name)
            .unwrap()["outcome"]
            .clone()
    };
    assert_eq!(outcome("sluice_connect4"), "updated");
    assert_eq!(outcome("sluice_connect6"), "reused");
}

/// A record the daemon cannot apply at start (here: its host veth is not
/// under the recorded name) is reported as failed, and the sweep leaves
/// that pod's entries and tc program alone instead of half-removing them.
#[test]
fn a_record_that_fails_at_start_keeps_its_datapath() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut d = Daemon::start(&node);
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.208.0.0/24","gateway":"10.208.0.1"}]]"#,
    );
    let p = Pod::add(&node, &conf);
    let ep = d.wait_edge(&p.cid);
    let ifindex = host_ifindex(&ep);
    let cookie = netns_cookie(&p.ns.path());
    d.stop();
    let mut rec = sluice_common::endpoint::EndpointRecord::load(&node.state_dir(), &p.cid, "eth0")
        .unwrap()
        .unwrap();
    rec.host_ifname = "slnotthisname".into();
    rec.write(&node.state_dir()).unwrap();
    d.spawn();
    let st = d.status();
    assert_eq!(st["restore"]["report"]["failed"], 1, "{st}");
    assert!(
        d.log_text().contains("is now named"),
        "the reason is logged"
    );
    assert!(
        d.pinned_endpoints().contains_key(&cookie),
        "endpoint entry kept"
    );
    assert!(
        d.pinned_sources().iter().any(|k| k.ifindex == ifindex),
        "sources kept"
    );
    let filters = node.ns.edge_filters(ep["host_ifname"].as_str().unwrap());
    assert!(filters.contains("sluice_pod_ingress"), "edge filter kept");
    assert!(p.ns.ping("10.208.0.1"), "the pod's traffic still flows");
}

/// The daemon probes its kernel at start and says what it has:
/// `status` lists every probe and feature, `sluicectl status` the
/// features, and on this kernel every feature is on.
#[test]
fn status_names_the_kernel_and_its_features() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let s = d.status();
    let k = &s["kernel"];
    assert!(!k["release"].as_str().unwrap().is_empty(), "{k}");
    let probes = k["probes"].as_array().unwrap();
    assert!(probes.len() >= 10, "{k}");
    for p in probes {
        assert!(p["missing"].is_null(), "{p}");
    }
    for f in k["features"].as_array().unwrap() {
        assert_eq!(f["on"], true, "{f}");
    }
    let out = d.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("socket load balancing (Services)") && !text.contains("OFF"),
        "{text}"
    );
}

/// glibc's malloc arenas in `pid` besides the main one: each is a
/// 64 MiB-aligned reservation, its used head read-write and the rest
/// `---p`, both anonymous.
fn malloc_arenas(pid: u32) -> usize {
    const HEAP_MAX: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let regions: Vec<(u64, u64, String, bool)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let anon = f.nth(2).is_some_and(|inode| inode == "0") && f.next().is_none();
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                perms,
                anon,
            ))
        })
        .collect();
    regions
        .windows(2)
        .filter(|w| {
            let ((s0, e0, p0, a0), (s1, e1, p1, a1)) = (&w[0], &w[1]);
            *a0 && *a1
                && p0 == "rw-p"
                && p1 == "---p"
                && s0 % HEAP_MAX == 0
                && e0 == s1
                && *e1 == s0 + HEAP_MAX
        })
        .count()
}

/// The daemon's threads come and go (registrations, periodic passes); with
/// glibc's default of an arena per thread, up to eight per CPU, each arena
/// grew to its own high-water mark and kept it: RSS rose 10 % over a
/// 15-minute soak while nothing the daemon holds grew. The daemon allows
/// two arenas (the main one and one more) and trims after every pass.
#[test]
fn the_daemon_keeps_to_two_malloc_arenas_through_parallel_registers() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let conf = node.conf("1.0.0", r#"[[{"subnet":"10.223.0.0/24"}]]"#);
    for _ in 0..3 {
        let pods: Vec<(sluice_tests::Ns, String)> = (0..40)
            .map(|_| (sluice_tests::Ns::new("ar"), sluice_tests::unique("ar")))
            .collect();
        let each = || pods.iter().map(|(ns, cid)| (ns.path(), cid.as_str()));
        for out in node.run_all("ADD", each(), &conf) {
            out.ok();
        }
        d.wait_endpoints(40);
        for out in node.run_all("DEL", each(), &conf) {
            out.ok();
        }
        d.wait_endpoints(0);
    }
    let arenas = malloc_arenas(d.pid().unwrap());
    assert!(
        arenas <= 1,
        "the daemon has {arenas} malloc arenas besides the main one (at most 1)"
    );
}
