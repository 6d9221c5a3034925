//! The demo's multi-node part (run by demo/run): two nodes and an outside
//! client on one bridge (tests/src/cluster.rs), each node with its own
//! sluiced reading Services, EndpointSlices and Nodes from a Kubernetes
//! API server (the test one: list/watch over HTTPS); pods on both; a NodePort service with a backend on each node,
//! reached from the outside client in DSR and in SNAT mode; the bytes that
//! leave the receiving node for a 64 MiB download from the other node's
//! backend, which show where the replies went; a pod reaching the outside
//! from its node's address. Prints what it sees; exits non-zero if any
//! check fails. Everything is removed on exit.

use serde_json::Value;
use sluice_tests::cluster::{routing, wait_peers, Cluster};
use sluice_tests::daemon::eventually;
use sluice_tests::{require_root, Ns, Pod, Server};
use std::process::ExitCode;

const MIB: u64 = 1 << 20;

/// The probe client's JSON line in `ns` (null if it printed none).
fn probe(ns: &Ns, args: &[&str]) -> Value {
    sluice_tests::probe(ns, args).unwrap_or(Value::Null)
}

/// `web-dsr` / `web-snat` (port 80, backends b0 and b1) and `bulk-dsr` /
/// `bulk-snat` (port 81, only b1, on node1): NodePorts 30080, 30090,
/// 30081, 30091.
fn services(b0: &str, b1: &str) -> String {
    let mut s = String::new();
    for (name, mode, np, port, eps) in [
        (
            "web-dsr",
            "dsr",
            30080,
            8080,
            vec![(b0, "node0"), (b1, "node1")],
        ),
        (
            "web-snat",
            "snat",
            30090,
            8080,
            vec![(b0, "node0"), (b1, "node1")],
        ),
        ("bulk-dsr", "dsr", 30081, 8081, vec![(b1, "node1")]),
        ("bulk-snat", "snat", 30091, 8081, vec![(b1, "node1")]),
    ] {
        s.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo, annotations: {{sluice.dev/external-mode: {mode}}}}}\n\
             spec:\n  type: NodePort\n  clusterIP: 10.96.0.{}\n  ports: [{{name: p, port: 80, nodePort: {np}}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: p, port: {port}}}]\nendpoints:\n",
            np - 30000
        ));
        for (ip, node) in eps {
            s.push_str(&format!("- addresses: [\"{ip}\"]\n  nodeName: {node}\n"));
        }
        s.push_str("---\n");
    }
    s
}

fn bytes_out_of(c: &Cluster, i: usize) -> u64 {
    c.fabric.ip_json(&["-s", "link", "show", &format!("n{i}")])[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .unwrap_or(0)
}

fn check(ok: bool, what: &str, failed: &mut bool) {
    println!("  {}: {what}", if ok { "PASS" } else { "FAIL" });
    *failed |= !ok;
}

fn main() -> ExitCode {
    if !require_root() {
        return ExitCode::from(2);
    }
    let mut failed = false;
    println!("  two nodes (node0 192.168.77.1, node1 192.168.77.2) and an outside client (192.168.77.200) on one bridge");
    let c = Cluster::with_api(2);
    println!(
        "  the source: a Kubernetes API server (list/watch over HTTPS) with the two Node objects"
    );
    let d = c.start_daemons("routing = \"direct\"\n");
    for (i, d) in d.iter().enumerate() {
        wait_peers(d, &[(format!("node{}", 1 - i).as_str(), "direct")]);
    }
    let st = routing(&d[0]);
    println!("  $ sluicectl nodes   (on node0)");
    println!(
        "    node0 pod ranges {}, pod MTU {}, NodePorts served on {}",
        st["pod_cidrs"], st["pod_mtu"], st["external"]["devices"]
    );
    for p in st["peers"].as_array().into_iter().flatten() {
        println!("    {} via {}: {}", p["name"], p["via"], p["routes"]);
    }
    let b0 = Pod::add(&c.nodes[0].node, &c.nodes[0].conf());
    let b1 = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    println!(
        "  backends: b0 {} on node0, b1 {} on node1",
        b0.ip(false),
        b1.ip(false)
    );
    let _s: Vec<Server> = [(&b0, "b0"), (&b1, "b1")]
        .iter()
        .flat_map(|(p, n)| {
            [
                Server::spawn(&p.ns, &["serve", "tcp-peer", "8080", n]),
                Server::spawn(&p.ns, &["give", "8081", &(64 * MIB).to_string()]),
            ]
        })
        .collect();
    c.write_manifest(
        "web.yaml",
        &services(&b0.ip(false).to_string(), &b1.ip(false).to_string()),
    );
    let mut src = Value::Null;
    let synced = eventually(10, || {
        src = d[0]
            .call(sluice_common::api::Request::ServiceSource)
            .map(|r| r.data["source"]["source"].clone())
            .unwrap_or(Value::Null);
        src["synced"] == true && src["kinds"][0]["objects"] == 4 && src["kinds"][1]["objects"] == 4
    });
    println!("  $ sluicectl source   (on node0)");
    println!(
        "    {} {}: synced {}, API reachable {}",
        src["source"].as_str().unwrap_or("?"),
        src["server"].as_str().unwrap_or("?"),
        src["synced"],
        src["reachable"]
    );
    for k in src["kinds"].as_array().into_iter().flatten() {
        println!(
            "    {:<14} {} objects, {} events, {} lists",
            k["kind"].as_str().unwrap_or("?"),
            k["objects"],
            k["events"],
            k["lists"]
        );
    }
    check(
        synced,
        "node0 listed and watches the API: 4 Services, 4 EndpointSlices, 2 Nodes",
        &mut failed,
    );

    println!("\n  NodePort 30080 (DSR) at node0, 40 connections from the outside client:");
    let mut answers = Value::Null;
    let ok = eventually(15, || {
        answers = probe(&c.client, &["burst", "192.168.77.1:30080", "4", "10"]);
        answers["errors"] == serde_json::json!([])
            && answers["replies"].as_object().is_some_and(|r| r.len() == 2)
    });
    println!(
        "    answers (backend@source it saw): {}",
        answers["replies"]
    );
    check(
        ok,
        "both backends answered, each saw the client's own address",
        &mut failed,
    );
    println!("\n  64 MiB downloaded from b1 (on node1) through NodePorts at node0:");
    let mut out_of_node0 = Vec::new();
    for (name, np) in [("DSR", 30081), ("SNAT", 30091)] {
        let mut r = Value::Null;
        let before = bytes_out_of(&c, 0);
        let _ = eventually(15, || {
            r = probe(
                &c.client,
                &[
                    "take",
                    &format!("192.168.77.1:{np}"),
                    &(64 * MIB).to_string(),
                ],
            );
            r["intact"] == true
        });
        let out = bytes_out_of(&c, 0) - before;
        println!(
            "    {name}: {:.2} s, intact: {}; bytes that left node0: {out}",
            r["secs"].as_f64().unwrap_or(f64::NAN),
            r["intact"],
        );
        check(
            r["intact"] == true,
            &format!("{name} download intact"),
            &mut failed,
        );
        out_of_node0.push(out);
    }
    check(
        out_of_node0[0] < 4 * MIB && out_of_node0[1] > 64 * MIB,
        "DSR replies never crossed node0 (SNAT ones all did)",
        &mut failed,
    );
    let k0 = &routing(&d[0])["external"]["counters"];
    let k1 = &routing(&d[1])["external"]["counters"];
    println!(
        "    node0 counters: new_dsr {} new_snat {} new_local {} replies_snat {}",
        k0["new_dsr"], k0["new_snat"], k0["new_local"], k0["replies_snat"]
    );
    println!(
        "    node1 counters: dsr_taken_in {} replies_direct {}",
        k1["dsr_taken_in"], k1["replies_direct"]
    );
    check(
        k1["dsr_taken_in"].as_u64().unwrap_or(0) > 0
            && k1["replies_direct"].as_u64().unwrap_or(0) > 0,
        "DSR replies left node1 straight to the client",
        &mut failed,
    );

    println!("\n  A pod reaching the outside client (masqueraded to its node's address):");
    let _o = Server::spawn(&c.client, &["serve", "tcp-peer", "9000", "outside"]);
    let mut r = Value::Null;
    let ok = eventually(10, || {
        r = probe(&b1.ns, &["tcp", "192.168.77.200:9000"]);
        r["reply"].is_string()
    });
    println!("    outside saw: {}", r["reply"]);
    check(
        ok && r["reply"] == "outside@192.168.77.2",
        "the outside saw node1's address",
        &mut failed,
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
