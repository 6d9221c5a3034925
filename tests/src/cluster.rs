//! Several nodes on one machine (docs: DESIGN.md, "Multi-node, on one
//! machine"): a "fabric" netns holding a bridge, one netns per node joined
//! to it by a veth (`fab0` in the node), and an "outside client" netns on
//! the same bridge. Each node has its own state dir, IPAM dir and pin path
//! ([`Node`]), its own pod range, and a daemon started by
//! [`Cluster::start_daemons`] with the shared manifests directory as its
//! service source, where every node's Node object is written. Everything
//! lives in namespaces the cluster made; nothing is routed to the
//! machine's own network. Dropping the cluster removes them all.
//!
//! [`Cluster::with_api`] makes the test API server ([`crate::kubeapi`])
//! the source instead: every object goes there, and each daemon lists and
//! watches it over HTTPS (a listener in each node's netns), as the
//! DaemonSet's daemons do.

use crate::daemon::eventually;
use crate::daemon::Daemon;
use crate::{Node, Ns};
use serde_json::Value;
use sluice_common::api::Request;
use std::path::PathBuf;

/// The fabric's subnets: node `i` is `.i+1` / `::i+1`, the client `.200`.
pub const FABRIC_V4: &str = "192.168.77";
pub const FABRIC_V6: &str = "fd00:77::";

/// One node of a [`Cluster`].
#[derive(Debug)]
pub struct ClusterNode {
    pub name: String,
    pub node: Node,
    pub index: usize,
    v4: String,
    v6: String,
}

impl ClusterNode {
    /// Its address on the fabric.
    pub fn address(&self, v6: bool) -> String {
        if v6 {
            self.v6.clone()
        } else {
            self.v4.clone()
        }
    }

    /// Its pod ranges.
    pub fn pod_cidrs(&self) -> [String; 2] {
        [
            format!("10.210.{}.0/24", self.index),
            format!("fd00:210:{:x}::/64", self.index),
        ]
    }

    /// A network config for pods on this node (dual-stack, its ranges).
    pub fn conf(&self) -> String {
        let [v4, v6] = self.pod_cidrs();
        self.node.conf(
            "1.0.0",
            &format!(r#"[[{{"subnet":"{v4}"}}],[{{"subnet":"{v6}"}}]]"#),
        )
    }

    /// Its Node object.
    pub fn manifest(&self) -> String {
        let [v4, v6] = self.pod_cidrs();
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{podCIDRs: [{v4}, '{v6}']}}\n\
             status: {{addresses: [{{type: InternalIP, address: {}}}, {{type: InternalIP, address: '{}'}}, \
             {{type: Hostname, address: {}}}]}}\n",
            self.name,
            self.address(false),
            self.address(true),
            self.name
        )
    }
}

/// N nodes and an outside client on one bridge.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub client: Ns,
    pub fabric: Ns,
    /// A router between the fabric and a second subnet, once
    /// [`Cluster::add_routed_node`] made one.
    pub router: Option<Ns>,
    /// The service source every daemon reads (Node objects are
    /// `node-<name>.yaml` in it).
    pub manifests: tempfile::TempDir,
    /// The Kubernetes API the daemons read instead, if set.
    pub api: Option<crate::kubeapi::KubeApi>,
}

/// Moves the fabric end of a new veth into the fabric's bridge and
/// addresses the other end (`dev`, in `ns`) with `v4`/`v6`.
fn join(fabric: &Ns, ns: &Ns, port: &str, dev: &str, v4: &str, v6: &str) {
    join_bridge(fabric, "br0", ns, port, dev, v4, v6);
}

fn join_bridge(fabric: &Ns, bridge: &str, ns: &Ns, port: &str, dev: &str, v4: &str, v6: &str) {
    fabric.ip(&[
        "link", "add", port, "type", "veth", "peer", "name", dev, "netns", &ns.name,
    ]);
    fabric.ip(&["link", "set", port, "master", bridge, "up"]);
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
    ns.ip(&["link", "set", dev, "up"]);
}

impl Cluster {
    /// `n` nodes (`node0`…), their Node objects written, no daemon yet.
    pub fn new(n: usize) -> Self {
        let fabric = Ns::new("f");
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        let manifests = tempfile::Builder::new()
            .prefix("sluice-test-")
            .tempdir()
            .expect("temp dir");
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = Node::new();
            let c = ClusterNode {
                name: format!("node{i}"),
                node,
                index: i,
                v4: format!("{FABRIC_V4}.{}", i + 1),
                v6: format!("{FABRIC_V6}{:x}", i + 1),
            };
            join(
                &fabric,
                &c.node.ns,
                &format!("n{i}"),
                "fab0",
                &c.address(false),
                &c.address(true),
            );
            for s in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
                let out = c.node.ns.exec(&["sysctl", "-qw", s]);
                assert!(out.status.success(), "sysctl {s}");
            }
            nodes.push(c);
        }
        let client = Ns::new("o");
        join(
            &fabric,
            &client,
            "client",
            "eth0",
            &format!("{FABRIC_V4}.200"),
            &format!("{FABRIC_V6}c8"),
        );
        let c = Cluster {
            nodes,
            client,
            fabric,
            router: None,
            manifests,
            api: None,
        };
        for n in &c.nodes {
            c.write_node(n);
        }
        c
    }

    /// Adds a node on another subnet (192.168.78.0/24, fd00:78::/64, its
    /// own bridge) behind a router on the fabric: not on the other nodes'
    /// link, so they reach it through the router. Its Node object is
    /// written too.
    pub fn add_routed_node(&mut self) {
        let router = self.router.get_or_insert_with(|| {
            let r = Ns::new("r");
            self.fabric.ip(&["link", "add", "br1", "type", "bridge"]);
            self.fabric.ip(&["link", "set", "br1", "up"]);
            join(
                &self.fabric,
                &r,
                "rt0",
                "up0",
                &format!("{FABRIC_V4}.254"),
                &format!("{FABRIC_V6}fe"),
            );
            join_bridge(
                &self.fabric,
                "br1",
                &r,
                "rt1",
                "down0",
                "192.168.78.254",
                "fd00:78::fe",
            );
            for s in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
                assert!(r.exec(&["sysctl", "-qw", s]).status.success(), "sysctl {s}");
            }
            r
        });
        let _ = router;
        let i = self.nodes.len();
        let k = self
            .nodes
            .iter()
            .filter(|n| n.v4.starts_with("192.168.78."))
            .count()
            + 1;
        let c = ClusterNode {
            name: format!("node{i}"),
            node: Node::new(),
            index: i,
            v4: format!("192.168.78.{k}"),
            v6: format!("fd00:78::{k:x}"),
        };
        join_bridge(
            &self.fabric,
            "br1",
            &c.node.ns,
            &format!("n{i}"),
            "fab0",
            &c.v4,
            &c.v6,
        );
        for s in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            assert!(
                c.node.ns.exec(&["sysctl", "-qw", s]).status.success(),
                "sysctl {s}"
            );
        }
        c.node
            .ns
            .ip(&["route", "add", "default", "via", "192.168.78.254"]);
        c.node
            .ns
            .ip(&["-6", "route", "add", "default", "via", "fd00:78::fe"]);
        for n in self.nodes.iter().filter(|n| n.v4.starts_with(FABRIC_V4)) {
            n.node.ns.ip(&[
                "route",
                "replace",
                "192.168.78.0/24",
                "via",
                &format!("{FABRIC_V4}.254"),
            ]);
            n.node.ns.ip(&[
                "-6",
                "route",
                "replace",
                "fd00:78::/64",
                "via",
                &format!("{FABRIC_V6}fe"),
            ]);
        }
        self.write_node(&c);
        self.nodes.push(c);
    }

    fn node_file(&self, name: &str) -> PathBuf {
        self.manifests.path().join(format!("node-{name}.yaml"))
    }

    /// Like [`Cluster::new`], with the test API server as the source.
    pub fn with_api(n: usize) -> Self {
        let mut c = Self::new(n);
        let api = crate::kubeapi::KubeApi::new();
        for n in &c.nodes {
            api.apply_yaml(&n.manifest());
        }
        c.api = Some(api);
        c
    }

    /// Writes (or rewrites) a node's Node object into the source.
    pub fn write_node(&self, n: &ClusterNode) {
        self.write_manifest(&format!("node-{}.yaml", n.name), &n.manifest());
    }

    /// Removes a node's Node object (the node left the cluster).
    pub fn remove_node(&self, name: &str) {
        match &self.api {
            Some(api) => assert!(
                api.delete(crate::kubeapi::Kind::Node, name),
                "no Node {name}"
            ),
            None => std::fs::remove_file(self.node_file(name)).expect("remove the Node object"),
        }
    }

    /// Writes a manifest file atomically (temp file, rename); with the API
    /// as the source, adds or replaces each of its objects there instead.
    pub fn write_manifest(&self, file: &str, text: &str) {
        if let Some(api) = &self.api {
            api.apply_yaml(text);
            return;
        }
        let tmp = self.manifests.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.path().join(file)).expect("rename manifest");
    }

    /// Starts every node's daemon with the manifests directory (or the
    /// API) as its source, `node_name` its node's name, and `extra` config
    /// lines.
    pub fn start_daemons(&self, extra: &str) -> Vec<Daemon<'_>> {
        self.nodes
            .iter()
            .map(|n| {
                let source = match &self.api {
                    Some(api) => format!(
                        "kubernetes = true\nkubeconfig = \"{}\"\n",
                        api.kubeconfig(&api.listen_in(&n.node.ns)).display()
                    ),
                    None => format!("services_dir = \"{}\"\n", self.manifests.path().display()),
                };
                Daemon::start_with(
                    &n.node,
                    &format!("{source}node_name = \"{}\"\n{extra}", n.name),
                )
            })
            .collect()
    }
}

/// A daemon's node routing state (`sluicectl nodes`).
pub fn routing(d: &Daemon<'_>) -> Value {
    d.call(Request::Nodes).expect("nodes request").data
}

/// Waits (up to 10 s) until `d` routes to exactly `peers` (name, via).
pub fn wait_peers(d: &Daemon<'_>, peers: &[(&str, &str)]) -> Value {
    let mut last = Value::Null;
    let ok = eventually(10, || {
        last = routing(d);
        let have: Vec<(String, String)> = last["peers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or("").to_string(),
                            p["via"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        have == peers
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    });
    assert!(
        ok,
        "peers {peers:?} not reached: {last:#}\n{}",
        d.log_text()
    );
    last
}

/// The node routes (protocol 0x5d) in `ns`, as `ip route` prints them.
pub fn node_routes(ns: &Ns) -> String {
    let mut out = ns.ip(&["route", "show", "proto", "0x5d"]);
    out.push_str(&ns.ip(&["-6", "route", "show", "proto", "0x5d"]));
    out
}
