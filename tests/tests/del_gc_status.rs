//! DEL in the forms runtimes send it, GC, STATUS, and `sluice-ipam` chained
//! under the reference `bridge` plugin.

use sluice_tests::*;

#[test]
fn del_with_empty_netns_releases_everything() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0", ranges("dual"));
    let a = Pod::add(&node, &conf);
    // containerd's second DEL, after the sandbox is gone, has no CNI_NETNS.
    node.cni("DEL", &a.cid, None, "eth0", &conf).ok();
    node.assert_clean();
    node.cni("DEL", &a.cid, None, "eth0", &conf).ok();
}

#[test]
fn del_after_the_netns_is_gone() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf("0.4.0", ranges("v4"));
    let mut a = Pod::add(&node, &conf);
    let path = a.ns.path();
    a.ns.delete();
    node.cni("DEL", &a.cid, Some(&path), "eth0", &conf).ok();
    node.assert_clean();
}

#[test]
fn del_of_an_unknown_container_is_success() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.1.0", ranges("v4"));
    node.cni("DEL", "never-added", None, "eth0", &conf).ok();
}

#[test]
fn gc_releases_only_what_is_not_valid() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.1.0", ranges("dual"));
    let keep = Pod::add(&node, &conf);
    let gone1 = Pod::add(&node, &conf);
    let gone2 = Pod::add(&node, &conf);
    assert_eq!(node.pod_links().len(), 3);
    let mut gc: serde_json::Value = serde_json::from_str(&conf).unwrap();
    gc["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": keep.cid, "ifname": "eth0"}]);
    // libcni sends GC with no container and no netns.
    node.cni("GC", "", None, "", &gc.to_string()).ok();
    assert_eq!(
        node.pod_links().len(),
        1,
        "GC must remove the two stale pods"
    );
    assert_eq!(node.records().len(), 1);
    // keep: 2 address files + 1 owner index.
    assert_eq!(node.reservations().len(), 3, "{:?}", node.reservations());
    // The kept pod still works.
    for ip in keep.ips() {
        assert!(node.ns.ping(&ip), "kept pod unreachable at {ip}");
    }
    assert!(gone1.ns.links().iter().all(|l| l != "eth0"));
    assert!(gone2.ns.links().iter().all(|l| l != "eth0"));
    // GC before 1.1.0 is not defined.
    let old = node.conf("1.0.0", ranges("dual"));
    node.cni("GC", "", None, "", &old).err(1);
    keep.del().ok();
    node.assert_clean();
}

#[test]
fn gc_without_valid_attachments_touches_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.1.0", ranges("v4"));
    let _a = Pod::add(&node, &conf);
    node.cni("GC", "", None, "", &conf).ok();
    assert_eq!(node.pod_links().len(), 1);
}

#[test]
fn status_reports_exhaustion_and_unwritable_state() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    // A /30 holds two addresses; .1 is the gateway, so one pod fills it.
    let tiny = r#"[[{"subnet":"10.203.0.0/30"}]]"#;
    let conf = node.conf("1.1.0", tiny);
    node.cni("STATUS", "", None, "", &conf).ok();
    let a = Pod::add(&node, &conf);
    let e = node.cni("STATUS", "", None, "", &conf).err(50);
    assert!(e["msg"].as_str().unwrap().contains("exhausted"), "{e}");
    a.del().ok();
    node.cni("STATUS", "", None, "", &conf).ok();
    // STATUS is 1.1.0 only.
    node.cni("STATUS", "", None, "", &node.conf("1.0.0", tiny))
        .err(1);
    // A state dir that cannot be written.
    let file = node.dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let bad = conf.replace(
        &node.state_dir().display().to_string(),
        &file.join("state").display().to_string(),
    );
    node.cni("STATUS", "", None, "", &bad).err(50);
}

#[test]
fn sluice_ipam_chains_under_the_reference_bridge() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let br = unique("b");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"{net}","type":"bridge","bridge":"{br}",
            "isGateway":true,"ipMasq":false,
            "ipam":{{"type":"sluice-ipam","dataDir":"{data}",
                     "ranges":[[{{"subnet":"10.204.0.0/24","gateway":"10.204.0.1"}}]]}}}}"#,
        net = node.network,
        data = node.data_dir().display()
    );
    let bridge = std::path::Path::new("/usr/lib/cni/bridge");
    assert!(
        bridge.is_file(),
        "the reference plugins are missing: apt-get install containernetworking-plugins"
    );
    let a = Ns::new("p");
    let b = Ns::new("p");
    let ra = cni_in(
        &node.ns,
        bridge,
        "ADD",
        "ca",
        Some(&a.path()),
        "eth0",
        &conf,
        &[],
    )
    .ok()
    .json();
    let rb = cni_in(
        &node.ns,
        bridge,
        "ADD",
        "cb",
        Some(&b.path()),
        "eth0",
        &conf,
        &[],
    )
    .ok()
    .json();
    let ip_a = ra["ips"][0]["address"].as_str().unwrap().to_string();
    let ip_b = rb["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        ip_a.ends_with("/24") && ip_b.ends_with("/24"),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);
    assert!(
        a.ping(ip_b.split('/').next().unwrap()),
        "bridge pods cannot talk"
    );
    // sluice-ipam is asked for the reservation in CHECK too.
    assert_eq!(node.reservations().len(), 4);
    for (cid, ns) in [("ca", &a), ("cb", &b)] {
        cni_in(
            &node.ns,
            bridge,
            "DEL",
            cid,
            Some(&ns.path()),
            "eth0",
            &conf,
            &[],
        )
        .ok();
    }
    assert_eq!(node.reservations().len(), 0);
}

#[test]
fn a_delegated_ipam_is_executed() {
    if !require_root() {
        return;
    }
    // sluice with the reference host-local as its IPAM, by exec.
    let node = Node::new();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"{net}","type":"sluice","stateDir":"{state}",
            "pinPath":"{pins}",
            "ipam":{{"type":"host-local","dataDir":"{data}",
                     "ranges":[[{{"subnet":"10.205.0.0/24"}}]]}}}}"#,
        net = node.network,
        state = node.state_dir().display(),
        data = node.data_dir().display(),
        pins = node.pin_path.display()
    );
    let a = Pod::add(&node, &conf);
    let b = Pod::add(&node, &conf);
    assert!(a.ns.ping(&b.ips()[0]));
    a.del().ok();
    b.del().ok();
    assert!(node.settled_pod_links().is_empty());
    let left = list_files(&node.data_dir().join(&node.network));
    assert!(
        left.iter()
            .all(|p| !p.file_name().unwrap().to_string_lossy().starts_with("10.")),
        "host-local kept reservations: {left:?}"
    );
}

#[test]
fn add_right_after_del_of_the_same_attachment_works() {
    if !require_root() {
        return;
    }
    // DEL retires the node-side link and deletes it in the background; an
    // immediate ADD of the same (container, ifname) must not collide with it.
    let node = Node::new();
    let conf = node.conf("1.0.0", ranges("dual"));
    let pod = Ns::new("p");
    for _ in 0..5 {
        let r = node
            .cni("ADD", "again", Some(&pod.path()), "eth0", &conf)
            .ok()
            .json();
        for ip in r["ips"].as_array().unwrap() {
            let a = ip["address"].as_str().unwrap().split('/').next().unwrap();
            assert!(node.ns.ping(a), "re-added pod unreachable at {a}");
        }
        node.cni("DEL", "again", Some(&pod.path()), "eth0", &conf)
            .ok();
    }
    node.assert_clean();
    assert_eq!(
        pod.links(),
        vec!["lo".to_string()],
        "the pod's eth0 must be gone"
    );
}
