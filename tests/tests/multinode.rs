//! Several nodes on one machine: pod to pod across nodes through direct
//! routes and through the VXLAN overlay (100 MiB intact, the MTU right),
//! routes following the node list, and bad Node objects rejected alone.

use serde_json::Value;
use sluice_tests::cluster::{node_routes, routing, wait_peers, Cluster};
use sluice_tests::daemon::eventually;
use sluice_tests::{require_root, Ns, Pod, Server};

const MIB: u64 = 1 << 20;

/// The probe client's JSON line in `ns` (null if it printed none).
fn probe(ns: &Ns, args: &[&str]) -> Value {
    sluice_tests::probe(ns, args).unwrap_or(Value::Null)
}

/// Sends `bytes` from `from` to `to`'s sink at `port` (started here) and
/// checks they all arrived, in order, unchanged.
fn transfer(from: &Pod<'_>, to: &Pod<'_>, v6: bool, bytes: u64) -> Value {
    let _sink = Server::spawn(&to.ns, &["sink", "5001"]);
    let dst = std::net::SocketAddr::new(to.ip(v6), 5001).to_string();
    let mut last = Value::Null;
    // The sink needs a moment to listen.
    let ok = eventually(5, || {
        last = probe(&from.ns, &["source", &dst, &bytes.to_string()]);
        last["errno"] != libc::ECONNREFUSED
    });
    assert!(ok, "sink at {dst} never listened: {last}");
    assert_eq!(last["bytes"], bytes, "{last}");
    assert_eq!(last["sink"]["bytes"], bytes, "bytes lost or added: {last}");
    assert_eq!(last["sink"]["hash"], last["hash"], "bytes changed: {last}");
    last
}

fn mtu(pod: &Pod<'_>) -> u64 {
    pod.ns.ip_json(&["link", "show", "eth0"])[0]["mtu"]
        .as_u64()
        .expect("eth0 has an MTU")
}

/// A link's transmitted bytes, in `ns` (packets would count GSO
/// super-packets).
fn tx_bytes(ns: &Ns, dev: &str) -> u64 {
    ns.ip_json(&["-s", "link", "show", dev])[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .expect("link stats")
}

#[test]
fn pods_on_two_nodes_talk_through_direct_routes() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\n");
    let r = wait_peers(&d[0], &[("node1", "direct")]);
    wait_peers(&d[1], &[("node0", "direct")]);
    assert_eq!(r["pod_mtu"], 1500, "{r:#}");
    let routes = node_routes(&c.nodes[0].node.ns);
    assert!(
        routes.contains("10.210.1.0/24 via 192.168.77.2 dev fab0")
            && routes.contains("fd00:210:1::/64 via fd00:77::2 dev fab0"),
        "{routes}"
    );
    assert!(
        !c.nodes[0]
            .node
            .ns
            .links()
            .iter()
            .any(|l| l.starts_with("sluice.vxlan")),
        "no overlay in direct mode"
    );
    let a = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    let b = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    assert_eq!(mtu(&a), 1500);
    // No NAT: the receiver sees the sender's pod address.
    let got = transfer(&a, &b, false, 100 * MIB);
    eprintln!("direct v4: 100 MiB in {} s", got["secs"]);
    transfer(&b, &a, true, 16 * MIB);
}

#[test]
fn pods_on_two_nodes_talk_through_vxlan_with_the_mtu_right() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"vxlan\"\n");
    let r = wait_peers(&d[0], &[("node1", "vxlan")]);
    wait_peers(&d[1], &[("node0", "vxlan")]);
    assert_eq!(r["pod_mtu"], 1450, "{r:#}");
    let n0 = &c.nodes[0].node.ns;
    let routes = node_routes(n0);
    assert!(
        routes.contains("10.210.1.0/24 via 10.210.1.0 dev sluice.vxlan")
            && routes.contains("fd00:210:1::/64 via fd00:210:1:: dev sluice.vxlan"),
        "{routes}"
    );
    let vx = n0.ip_json(&["-d", "link", "show", "sluice.vxlan"]);
    assert_eq!(vx[0]["mtu"], 1450, "{vx:#}");
    assert_eq!(vx[0]["linkinfo"]["info_data"]["id"], 1, "{vx:#}");
    // The plugin takes the overlay's MTU from node.json.
    let a = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    let b = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    assert_eq!(mtu(&a), 1450);
    assert_eq!(mtu(&b), 1450);
    let before = tx_bytes(n0, "sluice.vxlan");
    let got = transfer(&a, &b, false, 100 * MIB);
    eprintln!("vxlan v4: 100 MiB in {} s", got["secs"]);
    transfer(&b, &a, true, 16 * MIB);
    let sent = tx_bytes(n0, "sluice.vxlan") - before;
    assert!(
        sent > 100 * MIB,
        "the transfer did not go through the overlay ({sent} bytes)"
    );
    // Full-size datagrams with DF cross without fragmentation or loss.
    let out = a.ns.exec(&[
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "-M",
        "do",
        "-s",
        "1422",
        &b.ip(false).to_string(),
    ]);
    assert!(
        out.status.success(),
        "a 1450-byte packet did not cross: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
/// Through the Kubernetes API (the test API server): Node objects added,
/// changed and deleted there reach every node's routes.
fn routes_follow_the_node_list_and_bad_nodes_are_rejected_alone() {
    if !require_root() {
        return;
    }
    let c = Cluster::with_api(3);
    let d = c.start_daemons("routing = \"direct\"\nreconcile_interval_seconds = 1\n");
    wait_peers(&d[0], &[("node1", "direct"), ("node2", "direct")]);
    let n0 = &c.nodes[0].node.ns;

    // A node whose pod range overlaps node1's is rejected with its reason;
    // node1 keeps its route.
    c.write_manifest(
        "node-bad.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node9}\nspec: {podCIDRs: [10.210.1.128/25]}\n\
         status: {addresses: [{type: InternalIP, address: 192.168.77.9}]}\n",
    );
    let mut st = Value::Null;
    assert!(
        eventually(10, || {
            st = routing(&d[0]);
            st["rejected"].as_array().is_some_and(|r| {
                r.iter().any(|x| {
                    x["object"] == "Node node9"
                        && x["reason"]
                            .as_str()
                            .unwrap()
                            .contains("overlaps node node1's")
                })
            })
        }),
        "{st:#}"
    );
    assert!(
        d[0].log_text().contains("node rejected"),
        "the reason is logged"
    );
    wait_peers(&d[0], &[("node1", "direct"), ("node2", "direct")]);
    assert!(node_routes(n0).contains("10.210.1.0/24 via 192.168.77.2"));
    assert!(!node_routes(n0).contains("10.210.1.128"));

    // A route deleted by hand comes back within the reconcile interval.
    n0.ip(&["route", "del", "10.210.2.0/24"]);
    assert!(
        eventually(5, || node_routes(n0)
            .contains("10.210.2.0/24 via 192.168.77.3")),
        "{}",
        node_routes(n0)
    );

    // A list without this node is not trusted: nothing changes.
    c.remove_node("node0");
    assert!(eventually(10, || routing(&d[0])["warnings"]
        .as_array()
        .is_some_and(|w| !w.is_empty())));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(node_routes(n0).contains("10.210.2.0/24"), "routes kept");
    c.write_node(&c.nodes[0]);

    // A node that leaves takes its routes along, on every node.
    c.remove_node("node2");
    wait_peers(&d[0], &[("node1", "direct")]);
    wait_peers(&d[1], &[("node0", "direct")]);
    assert!(
        eventually(5, || !node_routes(n0).contains("10.210.2.0")),
        "{}",
        node_routes(n0)
    );
    assert!(node_routes(n0).contains("10.210.1.0/24"));

    // Routes stay while the daemon is down (pods keep their traffic).
    let mut d0 = d.into_iter().next().unwrap();
    d0.kill9();
    assert!(node_routes(n0).contains("10.210.1.0/24"));
    d0.spawn();
    wait_peers(&d0, &[("node1", "direct")]);
}

#[test]
fn pods_reach_the_outside_from_the_node_address_except_to_configured_ranges() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\n");
    wait_peers(&d[0], &[("node1", "direct")]);
    let _t = Server::spawn(&c.client, &["serve", "tcp-peer", "9000", "outside"]);
    let _u = Server::spawn(&c.client, &["serve", "udp-peer", "9000", "outside"]);
    let a = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    let b = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    // Out of the cluster: from node0's address, v4 and v6, TCP and UDP.
    for (dst, node) in [
        ("192.168.77.200:9000", "192.168.77.1"),
        ("[fd00:77::c8]:9000", "fd00:77::1"),
    ] {
        let mut r = Value::Null;
        assert!(
            eventually(10, || {
                r = probe(&a.ns, &["tcp", dst]);
                r["reply"].is_string()
            }),
            "{dst}: {r}\n{:#}",
            routing(&d[0])["external"]
        );
        assert_eq!(r["reply"], format!("outside@{node}"), "{r}");
        let u = probe(&a.ns, &["udp", dst]);
        assert_eq!(u["reply"], format!("outside@{node}"), "{u}");
        // A ping is masqueraded too (its echo identifier tracked).
        let host = dst
            .rsplit_once(':')
            .unwrap()
            .0
            .trim_matches(|c| c == '[' || c == ']');
        let out = a.ns.exec(&["ping", "-c", "2", "-W", "2", host]);
        assert!(
            out.status.success(),
            "ping {host}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Inside the cluster: the pod's own address.
    let _s = Server::spawn(&b.ns, &["serve", "tcp-peer", "9000", "b"]);
    let mut r = Value::Null;
    let to_b = std::net::SocketAddr::new(b.ip(false), 9000).to_string();
    assert!(eventually(5, || {
        r = probe(&a.ns, &["tcp", &to_b]);
        r["reply"].is_string()
    }));
    assert_eq!(r["reply"], format!("b@{}", a.ip(false)), "{r}");
    let st = routing(&d[0]);
    let k = &st["external"]["counters"];
    assert!(k["masq_new"].as_u64().unwrap() >= 4, "{k}");
    drop(d);

    // A range the operator exempts keeps the pod's address (the client
    // routes the pod range back through node0).
    let d = c.start_daemons("routing = \"direct\"\nnon_masquerade_cidrs = [\"192.168.77.0/24\"]\n");
    wait_peers(&d[0], &[("node1", "direct")]);
    c.client
        .ip(&["route", "add", "10.210.0.0/24", "via", "192.168.77.1"]);
    let mut r = Value::Null;
    assert!(
        eventually(10, || {
            r = probe(&a.ns, &["tcp", "192.168.77.200:9000"]);
            r["reply"] == format!("outside@{}", a.ip(false))
        }),
        "{r}"
    );
}

#[test]
fn auto_routes_directly_on_the_link_and_through_vxlan_across_a_router() {
    if !require_root() {
        return;
    }
    let mut c = Cluster::new(2);
    c.add_routed_node();
    let d = c.start_daemons("routing = \"auto\"\n");
    let r = wait_peers(&d[0], &[("node1", "direct"), ("node2", "vxlan")]);
    wait_peers(&d[2], &[("node0", "vxlan"), ("node1", "vxlan")]);
    // The overlay is in use: pods get room for it.
    assert_eq!(r["pod_mtu"], 1450, "{r:#}");
    let a = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    let b = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let z = Pod::add(&c.nodes[2].node, &c.nodes[2].conf());
    transfer(&a, &z, false, 32 * MIB);
    transfer(&z, &a, true, 8 * MIB);
    transfer(&b, &a, false, 8 * MIB);
}

#[test]
fn a_conflist_without_ranges_takes_the_pod_range_of_the_nodes_node_object() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let n0 = &c.nodes[0];
    let mut conf: Value = serde_json::from_str(&n0.conf()).unwrap();
    conf["ipam"].as_object_mut().unwrap().remove("ranges");
    let conf = conf.to_string();
    // Before the daemon has learnt the node's range: try again later.
    let early = n0
        .node
        .cni("ADD", "early", Some(&c.client.path()), "eth9", &conf);
    let err = early.err(11);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("pod range is not known yet"),
        "{err}"
    );
    let d = c.start_daemons("routing = \"direct\"\n");
    wait_peers(&d[0], &[("node1", "direct")]);
    let p = Pod::add(&n0.node, &conf);
    let [v4, v6] = n0.pod_cidrs();
    let v4: ipnetwork::IpNetwork = v4.parse().unwrap();
    let v6: ipnetwork::IpNetwork = v6.parse().unwrap();
    assert!(v4.contains(p.ip(false)), "{:?}", p.ips());
    assert!(v6.contains(p.ip(true)), "{:?}", p.ips());
}
