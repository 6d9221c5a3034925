//! External traffic on several nodes: NodePorts from the outside client to
//! each node with backends local and remote, in SNAT and DSR mode, the
//! client's address as each backend sees it, where the replies travel, and
//! large transfers intact.

use serde_json::Value;
use sluice_tests::cluster::{routing, wait_peers, Cluster};
use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::{bin, require_root, Ns, Pod, Server};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

const MIB: u64 = 1 << 20;
const NODE_PORT: u16 = 30080;

fn probe(ns: &Ns, args: &[&str]) -> Value {
    sluice_tests::probe(ns, args).unwrap_or_else(|e| panic!("probe {args:?}: {e}"))
}

/// A NodePort service `web` with one backend on each node (port 8080).
fn service(backends: &[(&Pod<'_>, &str)], annotations: &str, etp: &str) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default, annotations: {{{annotations}}}}}\n\
         spec:\n  type: NodePort\n  externalTrafficPolicy: {etp}\n  clusterIP: 10.96.0.50\n  \
         ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}, \
         {{name: bulk, port: 81, targetPort: 8081, nodePort: {}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default, \
         labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080}}, {{name: bulk, port: 8081}}]\nendpoints:\n",
        NODE_PORT + 1
    );
    for (pod, node) in backends {
        s.push_str(&format!(
            "- addresses: [\"{}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n",
            pod.ip(false)
        ));
    }
    s
}

fn ext_counters(d: &Daemon<'_>) -> BTreeMap<String, u64> {
    let r = routing(d);
    r["external"]["counters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes the fabric's port of node `i` received from that node.
fn from_node(c: &Cluster, i: usize) -> u64 {
    c.fabric.ip_json(&["-s", "link", "show", &format!("n{i}")])[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .expect("link stats")
}

/// Connects `n` times from the client to `addr` and counts the answers
/// (`name@source-the-backend-saw`); empty if any connect failed.
fn answers(c: &Cluster, addr: &str, n: usize) -> BTreeMap<String, u64> {
    let r = probe(&c.client, &["burst", addr, "4", &(n / 4).to_string()]);
    if r["errors"] != serde_json::json!([]) {
        eprintln!("{addr}: {}", r["errors"]);
        return BTreeMap::new();
    }
    r["replies"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

/// Waits until every daemon has programmed at least `n` frontends (a
/// manifest reaches each node on its own time).
fn wait_programmed(daemons: &[Daemon<'_>], n: u64) {
    for d in daemons {
        let mut last = Value::Null;
        assert!(
            eventually(10, || {
                last = d
                    .call(sluice_common::api::Request::ServiceSource)
                    .map(|r| r.data)
                    .unwrap_or(Value::Null);
                last["source"]["frontends"].as_u64().unwrap_or(0) >= n
            }),
            "{last:#}"
        );
    }
}

/// Waits until every node routes to the other and serves NodePorts on fab0.
fn wait_served(daemons: &[Daemon<'_>]) {
    for (i, d) in daemons.iter().enumerate() {
        let peer = format!("node{}", 1 - i);
        wait_peers(d, &[(peer.as_str(), "direct")]);
        let mut last = Value::Null;
        assert!(
            eventually(10, || {
                last = routing(d);
                last["external"]["devices"] == serde_json::json!(["fab0"])
            }),
            "{last:#}"
        );
    }
}

#[test]
fn nodeport_snat_reaches_local_and_remote_backends_from_every_node() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\nexternal_mode = \"snat\"\n");
    wait_served(&d);
    let b0 = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _s0 = Server::spawn(&b0.ns, &["serve", "tcp-peer", "8080", "b0"]);
    let _s1 = Server::spawn(&b1.ns, &["serve", "tcp-peer", "8080", "b1"]);
    c.write_manifest(
        "web.yaml",
        &service(&[(&b0, "node0"), (&b1, "node1")], "", "Cluster"),
    );
    let client = "192.168.77.200";
    for (i, node) in c.nodes.iter().enumerate() {
        let addr = format!("{}:{NODE_PORT}", node.address(false));
        let mut got = BTreeMap::new();
        assert!(
            eventually(10, || {
                got = answers(&c, &addr, 40);
                got.len() == 2
            }),
            "node{i}: {got:?}"
        );
        // The local backend sees the client; the remote one sees the
        // node that received the connection (SNAT).
        let local = format!("b{i}@{client}");
        let remote = format!("b{}@{}", 1 - i, node.address(false));
        assert!(
            got.contains_key(&local) && got.contains_key(&remote),
            "node{i}: {got:?}"
        );
        // The client talks to the address it dialled.
        let one = probe(&c.client, &["tcp", &addr]);
        assert_eq!(one["peer"], addr, "{one}");
    }
    let k = ext_counters(&d[0]);
    assert!(
        k["new_snat"] > 0 && k["replies_snat"] > 0 && k["new_local"] > 0,
        "{k:?}"
    );
    assert_eq!(k["no_route"], 0, "{k:?}");
    // A ClusterIP is not served from outside.
    let r = probe(&c.client, &["tcp", "192.168.77.1:80"]);
    assert!(r["error"].is_string(), "{r}");
}

#[test]
fn nodeport_dsr_replies_leave_from_the_backends_node() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\nexternal_mode = \"snat\"\n");
    wait_served(&d);
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _s1 = Server::spawn(&b1.ns, &["serve", "tcp-peer", "8080", "b1"]);
    let _g1 = Server::spawn(&b1.ns, &["give", "8081", &(100 * MIB).to_string()]);
    // DSR by the service's annotation (the node's default is SNAT).
    c.write_manifest(
        "web.yaml",
        &service(
            &[(&b1, "node1")],
            "sluice.dev/external-mode: dsr",
            "Cluster",
        ),
    );
    wait_programmed(&d, 4);
    let addr = format!("192.168.77.1:{NODE_PORT}");
    let mut got = BTreeMap::new();
    assert!(
        eventually(10, || {
            got = answers(&c, &addr, 20);
            !got.is_empty()
        }),
        "{got:?}"
    );
    // The backend sees the client itself.
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        vec!["b1@192.168.77.200"],
        "{got:?}"
    );

    // 100 MiB from the backend to the client through node0's NodePort:
    // intact, and the reply bytes never pass node0.
    let before = from_node(&c, 0);
    let r = probe(
        &c.client,
        &[
            "take",
            &format!("192.168.77.1:{}", NODE_PORT + 1),
            &(100 * MIB).to_string(),
        ],
    );
    assert_eq!(r["intact"], true, "{r}");
    assert_eq!(r["peer"], format!("192.168.77.1:{}", NODE_PORT + 1), "{r}");
    let through_node0 = from_node(&c, 0) - before;
    eprintln!(
        "dsr: 100 MiB in {} s, {through_node0} bytes out of node0",
        r["secs"]
    );
    assert!(
        through_node0 < 10 * MIB,
        "{through_node0} bytes left node0: the replies went through it"
    );
    let k0 = ext_counters(&d[0]);
    let k1 = ext_counters(&d[1]);
    assert!(k0["new_dsr"] > 0, "{k0:?}");
    assert_eq!(k0["replies_snat"], 0, "{k0:?}");
    assert!(k1["dsr_taken_in"] > 0 && k1["replies_direct"] > 0, "{k1:?}");
    assert_eq!(k1["bad_dsr_option"], 0, "{k1:?}");
}

#[test]
fn pods_and_nodes_reach_a_nodeport_on_any_node_at_the_socket() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\n");
    wait_served(&d);
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _s1 = Server::spawn(&b1.ns, &["serve", "tcp-peer", "8080", "b1"]);
    c.write_manifest("web.yaml", &service(&[(&b1, "node1")], "", "Cluster"));
    let a = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    for target in ["192.168.77.1", "192.168.77.2"] {
        let addr = format!("{target}:{NODE_PORT}");
        // From a pod: translated at connect, straight to the backend (it
        // sees the pod), and the socket shows the address dialled.
        let mut r = Value::Null;
        assert!(
            eventually(10, || {
                r = probe(&a.ns, &["tcp", &addr]);
                r["reply"].is_string()
            }),
            "{r}"
        );
        assert_eq!(r["reply"], format!("b1@{}", a.ip(false)), "{r}");
        assert_eq!(r["peer"], addr, "{r}");
        // From the node itself.
        let r = probe(&c.nodes[0].node.ns, &["tcp", &addr]);
        assert!(
            r["reply"].as_str().is_some_and(|x| x.starts_with("b1@")),
            "{r}"
        );
    }
    // Every connect was translated at the socket: none reached node1's
    // tc program.
    let k = ext_counters(&d[1]);
    assert_eq!(k["new_local"] + k["new_snat"] + k["new_dsr"], 0, "{k:?}");
}

/// A LoadBalancer service `lb` (ingress 192.168.77.100) with
/// `externalTrafficPolicy: Local` and a health-check node port, backed by
/// `backends`.
fn lb_local(backends: &[(&Pod<'_>, &str)]) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: default}}\n\
         spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30500\n  \
         clusterIP: 10.96.0.60\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {NODE_PORT}}}]\n\
         status: {{loadBalancer: {{ingress: [{{ip: 192.168.77.100}}]}}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: lb-1, namespace: default, \
         labels: {{kubernetes.io/service-name: lb}}}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for (pod, node) in backends {
        s.push_str(&format!(
            "- addresses: [\"{}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n",
            pod.ip(false)
        ));
    }
    s
}

#[test]
fn external_traffic_policy_local_keeps_the_client_and_the_health_check_tells_the_truth() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\n");
    wait_served(&d);
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _s1 = Server::spawn(&b1.ns, &["serve", "tcp-peer", "8080", "b1"]);
    c.write_manifest("lb.yaml", &lb_local(&[(&b1, "node1")]));
    // node1 has the backend: 200 and one local endpoint; node0 has none.
    let mut h1 = Value::Null;
    assert!(
        eventually(10, || {
            h1 = probe(&c.client, &["http", "192.168.77.2:30500"]);
            h1["status"] == 200
        }),
        "{h1}"
    );
    assert_eq!(h1["body"]["localEndpoints"], 1, "{h1}");
    assert_eq!(h1["body"]["service"]["name"], "lb", "{h1}");
    let mut h0 = Value::Null;
    assert!(
        eventually(10, || {
            h0 = probe(&c.client, &["http", "192.168.77.1:30500"]);
            h0["status"] == 503
        }),
        "{h0}"
    );
    assert_eq!(h0["body"]["localEndpoints"], 0, "{h0}");
    // Through node1 the backend sees the client itself, by the NodePort
    // and by the load balancer's address (routed to node1, as a cloud
    // load balancer that asked the health check would).
    c.client
        .ip(&["route", "add", "192.168.77.100/32", "via", "192.168.77.2"]);
    for addr in [
        format!("192.168.77.2:{NODE_PORT}"),
        "192.168.77.100:80".to_string(),
    ] {
        let r = probe(&c.client, &["tcp", &addr]);
        assert_eq!(r["reply"], "b1@192.168.77.200", "{addr}: {r}");
        assert_eq!(r["peer"], addr, "{r}");
    }
    // Through node0 nothing is forwarded: it has no local backend.
    let r = probe(&c.client, &["tcp", &format!("192.168.77.1:{NODE_PORT}")]);
    assert!(r["error"].is_string(), "{r}");
    assert!(ext_counters(&d[0])["no_backend"] > 0);
    // A backend appears on node0: its health check turns 200.
    let b0 = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    c.write_manifest("lb.yaml", &lb_local(&[(&b0, "node0"), (&b1, "node1")]));
    assert!(eventually(10, || {
        probe(&c.client, &["http", "192.168.77.1:30500"])["status"] == 200
    }));
}

#[test]
fn hybrid_mode_answers_tcp_directly_and_snats_udp() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\nexternal_mode = \"hybrid\"\n");
    wait_served(&d);
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _t = Server::spawn(&b1.ns, &["serve", "tcp-peer", "8080", "b1"]);
    let _u = Server::spawn(&b1.ns, &["serve", "udp-peer", "8080", "b1"]);
    let svc = service(&[(&b1, "node1")], "", "Cluster").replace(
        "{name: bulk, port: 81, targetPort: 8081",
        "{name: dns, protocol: UDP, port: 80, targetPort: 8080",
    );
    let svc = svc.replace(
        "{name: bulk, port: 8081}",
        "{name: dns, protocol: UDP, port: 8080}",
    );
    c.write_manifest("web.yaml", &svc);
    let tcp = format!("192.168.77.1:{NODE_PORT}");
    let udp = format!("192.168.77.1:{}", NODE_PORT + 1);
    let mut r = Value::Null;
    assert!(
        eventually(10, || {
            r = probe(&c.client, &["tcp", &tcp]);
            r["reply"].is_string()
        }),
        "{r}"
    );
    // TCP: DSR, the backend sees the client.
    assert_eq!(r["reply"], "b1@192.168.77.200", "{r}");
    // UDP: SNAT, the backend sees node0; the answer comes from the port
    // the client sent to.
    let u = probe(&c.client, &["udp", &udp]);
    assert_eq!(u["reply"], "b1@192.168.77.1", "{u}");
    assert_eq!(u["from"], udp, "{u}");
    let k = ext_counters(&d[0]);
    assert!(k["new_dsr"] > 0 && k["new_snat"] > 0, "{k:?}");
}

/// Service `web` as [`service`], dual-stack (cluster IPs of both
/// families, a slice of each), Maglev, in `mode`.
fn dual_stack(backends: &[(&Pod<'_>, &str)], mode: &str) -> String {
    let mut s = service(
        backends,
        &format!("sluice.dev/external-mode: {mode}, sluice.dev/load-balancing: maglev"),
        "Cluster",
    )
    .replace(
        "clusterIP: 10.96.0.50\n",
        "clusterIP: 10.96.0.50\n  clusterIPs: [10.96.0.50, 'fd00:10:96::50']\n  ipFamilies: [IPv4, IPv6]\n",
    );
    s.push_str(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-2, namespace: default, \
         labels: {kubernetes.io/service-name: web}}\naddressType: IPv6\n\
         ports: [{name: http, port: 8080}, {name: bulk, port: 8081}]\nendpoints:\n",
    );
    for (pod, node) in backends {
        s.push_str(&format!(
            "- addresses: [\"{}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n",
            pod.ip(true)
        ));
    }
    s
}

#[test]
fn nodeports_over_vxlan_in_both_families_and_both_modes_carry_100_mib_intact() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"vxlan\"\n");
    for (i, d) in d.iter().enumerate() {
        wait_peers(d, &[(format!("node{}", 1 - i).as_str(), "vxlan")]);
    }
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _g = Server::spawn(&b1.ns, &["give", "8081", &(100 * MIB).to_string()]);
    let _k = Server::spawn(&b1.ns, &["sink", "8080"]);
    for mode in ["snat", "dsr"] {
        c.write_manifest("web.yaml", &dual_stack(&[(&b1, "node1")], mode));
        for (node, port) in [
            ("192.168.77.1", NODE_PORT + 1),
            ("[fd00:77::1]", NODE_PORT + 1),
        ] {
            let addr = format!("{node}:{port}");
            let mut r = Value::Null;
            // Downloads: the backend's 100 MiB reach the client intact
            // (the pod MTU leaves room for the overlay and the option).
            assert!(
                eventually(10, || {
                    r = probe(&c.client, &["take", &addr, &(100 * MIB).to_string()]);
                    r["intact"] == true
                }),
                "{mode} {addr}: {r}"
            );
            eprintln!("{mode} {addr}: 100 MiB down in {} s", r["secs"]);
            // Uploads through the same node port's neighbour (port 80 of
            // the service: the sink).
            let up = format!("{node}:{NODE_PORT}");
            let u = probe(&c.client, &["source", &up, &(100 * MIB).to_string()]);
            assert_eq!(u["sink"]["bytes"], 100 * MIB, "{mode} {up}: {u}");
            assert_eq!(u["sink"]["hash"], u["hash"], "{mode} {up}: {u}");
        }
    }
    let k = ext_counters(&d[0]);
    assert!(k["new_snat"] > 0 && k["new_dsr"] > 0, "{k:?}");
    assert!(ext_counters(&d[1])["dsr_taken_in"] > 0);
}

#[test]
fn two_nodes_pick_the_same_backend_and_flows_survive_restarts_and_backend_removal() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let mut d = c.start_daemons("routing = \"direct\"\n");
    wait_served(&d);
    let b0 = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let b2 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _s: Vec<Server> = [(&b0, "b0"), (&b1, "b1"), (&b2, "b2")]
        .iter()
        .map(|(p, n)| Server::spawn(&p.ns, &["serve", "tcp", "8080", n]))
        .collect();
    c.write_manifest(
        "web.yaml",
        &dual_stack(&[(&b0, "node0"), (&b1, "node1"), (&b2, "node1")], "snat"),
    );
    // The same client flow (address and port) through either node reaches
    // the same backend: Maglev over the flow, not the node.
    let mut seen = std::collections::BTreeSet::new();
    for sport in 40000..40016u16 {
        let mut picks = Vec::new();
        for node in ["192.168.77.1", "192.168.77.2"] {
            let addr = format!("{node}:{NODE_PORT}");
            let mut r = Value::Null;
            assert!(
                eventually(10, || {
                    r = probe(&c.client, &["tcp-from", &addr, &sport.to_string()]);
                    r["reply"].is_string()
                }),
                "{r}"
            );
            picks.push(r["reply"].as_str().unwrap().to_string());
        }
        assert_eq!(picks[0], picks[1], "source port {sport}: {picks:?}");
        seen.insert(picks[0].clone());
    }
    assert!(seen.len() > 1, "every flow went to {seen:?}");

    // Established connections through node0 live through a SIGKILL and
    // restart of node0's daemon, and through their backend leaving the
    // service (a TCP connection keeps its backend, as under kube-proxy).
    let holds: Vec<Child> = (0..4)
        .map(|_| {
            Command::new("ip")
                .args(["netns", "exec", &c.client.name])
                .arg(bin("sluice-probe"))
                .args(["tcp-hold", &format!("192.168.77.1:{NODE_PORT}"), "4"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a held connection")
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    d[0].kill9();
    c.write_manifest("web.yaml", &dual_stack(&[(&b2, "node1")], "snat"));
    d[0].spawn();
    for h in holds {
        let out = h.wait_with_output().expect("held connection");
        let r: Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
        assert_eq!(r["echo"], "still-there", "{r}");
    }
    // New connections go to the backend that is left.
    let r = probe(&c.client, &["tcp", &format!("192.168.77.1:{NODE_PORT}")]);
    assert_eq!(r["reply"], "b2", "{r}");
}

#[test]
fn nodeports_in_use_or_out_of_range_are_rejected_alone_and_binds_are_guarded() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(2);
    let d = c.start_daemons("routing = \"direct\"\n");
    wait_served(&d);
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let _s = Server::spawn(&b1.ns, &["serve", "tcp-peer", "8080", "b1"]);
    // A process on node0 holds port 30090 before the service comes.
    let _holder = Server::start(&c.nodes[0].node.ns, "tcp", 30090, "holder");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let clash = service(&[(&b1, "node1")], "", "Cluster")
        .replace("name: web", "name: clash")
        .replace("web-1", "clash-1")
        .replace("service-name: web", "service-name: clash")
        .replace("10.96.0.50", "10.96.0.70")
        .replace(&format!("nodePort: {NODE_PORT}"), "nodePort: 30090")
        .replace(&format!("nodePort: {}", NODE_PORT + 1), "nodePort: 20000");
    c.write_manifest("clash.yaml", &clash);
    let mut st = Value::Null;
    assert!(
        eventually(10, || {
            st = d[0]
                .call(sluice_common::api::Request::ServiceSource)
                .unwrap()
                .data;
            let why = st["source"]["rejected"].to_string();
            why.contains("nodePort 30090/Tcp is held by a socket") && why.contains("nodePort 20000")
        }),
        "{st:#}"
    );
    // node0 does not take the port from its holder; node1 serves it.
    let r = probe(&c.client, &["tcp", "192.168.77.1:30090"]);
    assert_eq!(r["reply"], "holder", "{r}");
    let mut r = Value::Null;
    assert!(
        eventually(10, || {
            r = probe(&c.client, &["tcp", "192.168.77.2:30090"]);
            r["reply"] == "b1@192.168.77.200"
        }),
        "{r}"
    );
    // The out-of-range nodePort is served nowhere; the ClusterIP works.
    let r = probe(&c.client, &["tcp", "192.168.77.2:20000"]);
    assert!(r["error"].is_string(), "{r}");
    let r = probe(&c.nodes[0].node.ns, &["tcp", "10.96.0.70:80"]);
    assert_eq!(r["reply"], "b1@192.168.77.1", "{r}");

    // Nothing on the node binds a NodePort that is served; a pod binds
    // its own ports freely.
    c.write_manifest("web.yaml", &service(&[(&b1, "node1")], "", "Cluster"));
    wait_programmed(&d, 6);
    let bin_path = bin("sluice-probe");
    let try_bind = |ns: &Ns| {
        ns.exec(&[
            "timeout",
            "1",
            bin_path.to_str().unwrap(),
            "serve",
            "tcp",
            &NODE_PORT.to_string(),
            "x",
        ])
    };
    let out = try_bind(&c.nodes[0].node.ns);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("os error 98"),
        "the node bound a NodePort: {out:?}"
    );
    let out = try_bind(&b1.ns);
    assert_eq!(
        out.status.code(),
        Some(124),
        "a pod could not bind: {out:?}"
    );
}
