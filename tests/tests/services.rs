//! Services through the real daemon and plugin: a manifest directory, pods
//! running a probe server, and clients in a pod, the node, and namespaces
//! the daemon does not know.

use serde_json::Value;
use sluice_dataplane::maps::{AffinityKey, AffinityValue, AFFINITY};
use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::{bin, require_root, with_pod_annotations, Node, Ns, Pod, Server};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the probe client in `ns`; its JSON line.
fn probe(ns: &Ns, args: &[&str]) -> Value {
    sluice_tests::probe(ns, args).unwrap_or_else(|e| panic!("probe {args:?}: {e}"))
}

/// Connects until the server answers (servers take a moment to bind).
fn probe_ok(ns: &Ns, args: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = probe(ns, args);
        if v["error"].is_null() || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connected UDP socket held open in a pod by `sluice-probe
/// udp-connected-wait`: one round trip at start, another on [`again`].
///
/// [`again`]: HeldUdp::again
struct HeldUdp {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl HeldUdp {
    /// Connects to `dst` from `ns`; the first round trip's JSON line.
    fn start(ns: &Ns, dst: &str) -> (Self, Value) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin("sluice-probe"))
            .args(["udp-connected-wait", dst])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut held = HeldUdp { child, out };
        let first = held.line();
        (held, first)
    }

    fn line(&mut self) -> Value {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Another round trip on the same socket; the probe then exits.
    fn again(mut self) -> Value {
        use std::io::Write;
        self.child
            .stdin
            .take()
            .unwrap()
            .write_all(b"again\n")
            .unwrap();
        let v = self.line();
        let _ = self.child.wait();
        v
    }
}

const RANGES: &str = r#"[[{"subnet":"10.230.0.0/24","gateway":"10.230.0.1"}],[{"subnet":"fd00:230::/64","gateway":"fd00:230::1"}]]"#;

struct Cluster<'a> {
    node: &'a Node,
    d: Daemon<'a>,
    web: Vec<Pod<'a>>,
    client: Pod<'a>,
    _servers: Vec<Server>,
    dir: std::path::PathBuf,
}

fn ip_of(p: &Pod<'_>, v6: bool) -> String {
    p.ip(v6).to_string()
}

/// The manifests for service `web` over the given backends; each backend
/// is (pod, ready, serving, terminating).
fn manifests(backends: &[(&Pod<'_>, bool, bool, bool)], extra_spec: &str) -> String {
    let eps = |v6: bool| -> String {
        backends
            .iter()
            .map(|(p, r, s, t)| {
                format!(
                    "- addresses: [\"{}\"]\n  conditions: {{ready: {r}, serving: {s}, terminating: {t}}}\n  nodeName: node-a\n",
                    ip_of(p, v6)
                )
            })
            .collect()
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  clusterIPs: [10.96.10.10, "fd00:10:96::10"]
  {extra_spec}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: demo}}
spec:
  clusterIP: 10.96.10.20
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-4, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
{}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-6, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv6
ports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]
endpoints:
{}"#,
        eps(false),
        eps(true)
    )
}

impl<'a> Cluster<'a> {
    fn new(node: &'a Node, extra_spec: &str) -> Self {
        let dir = node.dir.path().join("services");
        std::fs::create_dir_all(&dir).unwrap();
        let conf = node.conf("1.0.0", RANGES);
        // The daemon starts first, so the pods register; the manifest
        // comes once the pods have addresses.
        let d = Daemon::start_with(
            node,
            &format!(
                "services_dir = \"{}\"\nnode_name = \"node-a\"\n",
                dir.display()
            ),
        );
        let web: Vec<Pod<'a>> = (0..2).map(|_| Pod::add(node, &conf)).collect();
        let client = Pod::add(node, &conf);
        let mut servers = Vec::new();
        for (i, p) in web.iter().enumerate() {
            servers.push(Server::start(&p.ns, "tcp", 8080, &format!("web-{i}")));
            servers.push(Server::start(&p.ns, "udp", 5353, &format!("web-{i}")));
        }
        let c = Cluster {
            node,
            d,
            web,
            client,
            _servers: servers,
            dir,
        };
        let all: Vec<_> = c.web.iter().map(|p| (p, true, true, false)).collect();
        c.write(&manifests(&all, extra_spec));
        c.wait_programmed(|v| v["services"].as_array().unwrap().len() == 5);
        c
    }

    /// Replaces the manifest file the way an editor saves: temp, then rename.
    fn write(&self, text: &str) {
        let tmp = self.dir.join(".web.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("web.yaml")).unwrap();
    }

    fn services(&self) -> Value {
        self.d
            .call(sluice_common::api::Request::ListServices)
            .expect("list_services")
            .data
    }

    fn wait_programmed(&self, f: impl Fn(&Value) -> bool) {
        let mut last = Value::Null;
        let ok = eventually(10, || {
            last = self.services();
            f(&last)
        });
        assert!(ok, "services not programmed as expected: {last:#}");
    }

    fn frontend(&self, v: &Value, fe: &str) -> Value {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frontend"] == fe)
            .cloned()
            .unwrap_or_else(|| panic!("no frontend {fe}: {v:#}"))
    }

    /// Rewrites web's slices without the backend named `gone` (`web-N`),
    /// and waits until its UDP frontend has the one backend left.
    fn drop_backend(&self, gone: &str) {
        let left: Vec<_> = self
            .web
            .iter()
            .enumerate()
            .filter(|(i, _)| format!("web-{i}") != gone)
            .map(|(_, p)| (p, true, true, false))
            .collect();
        self.write(&manifests(&left, ""));
        self.wait_programmed(|v| {
            self.frontend(v, "10.96.10.10:53/Udp")["backends"]
                .as_array()
                .unwrap()
                .len()
                == 1
        });
    }

    fn in_table(&self, fe: &str) -> Vec<String> {
        let v = self.services();
        self.frontend(&v, fe)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["in_table"] == true)
            .map(|b| b["addr"].as_str().unwrap().to_string())
            .collect()
    }
}

#[test]
fn tcp_and_udp_to_a_cluster_ip_from_a_pod_and_from_the_node() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
        assert_eq!(
            v["peer"], "10.96.10.10:80",
            "getpeername shows the service: {v}"
        );
        seen.insert(v["reply"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both backends get connections: {seen:?}");

    let v = probe_ok(&c.client.ns, &["udp", "10.96.10.10:53"]);
    assert_eq!(
        v["from"], "10.96.10.10:53",
        "an unconnected reply comes from the service: {v}"
    );
    assert!(v["reply"].as_str().unwrap().starts_with("web-"));
    let v = probe_ok(&c.client.ns, &["udp-connected", "10.96.10.10:53"]);
    assert_eq!(v["peer"], "10.96.10.10:53", "{v}");
    assert_eq!(v["from"], "10.96.10.10:53", "{v}");

    // A dual-stack socket connecting to the v4-mapped cluster IP reaches
    // the IPv4 service and sees that address as its peer.
    let v = probe_ok(&c.client.ns, &["tcp", "[::ffff:10.96.10.10]:80"]);
    assert_eq!(v["peer"], "[::ffff:10.96.10.10]:80", "{v}");
    assert!(v["reply"].as_str().unwrap().starts_with("web-"), "{v}");
    let v = probe_ok(&c.client.ns, &["udp", "[::ffff:10.96.10.10]:53"]);
    assert_eq!(v["from"], "[::ffff:10.96.10.10]:53", "{v}");

    // The node's own netns is translated too.
    let v = probe_ok(&c.node.ns, &["tcp", "10.96.10.10:80"]);
    assert_eq!(v["peer"], "10.96.10.10:80", "{v}");
    assert!(v["reply"].as_str().unwrap().starts_with("web-"));

    // v6 frontend of the dual-stack service.
    let v = probe_ok(&c.client.ns, &["tcp", "[fd00:10:96::10]:80"]);
    assert_eq!(v["peer"], "[fd00:10:96::10]:80", "{v}");
    let v = probe_ok(&c.client.ns, &["udp", "[fd00:10:96::10]:53"]);
    assert_eq!(v["from"], "[fd00:10:96::10]:53", "{v}");

    // The datapath counted the connections per backend.
    let s = c.services();
    let total: u64 = c.frontend(&s, "10.96.10.10:80/Tcp")["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["connections"].as_u64().unwrap())
        .sum();
    assert!(total >= 31, "connections counted: {total}");
    let out = c.d.ctl(&["services"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("demo/web") && table.contains("10.96.10.10:80/Tcp"),
        "{table}"
    );
    // `bpf maps` counts the service maps' entries from the pins.
    let out = c.d.ctl(&["bpf", "maps", "-o", "json"]);
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = |name: &str| {
        m["maps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["entries"]
            .clone()
    };
    assert_eq!(
        entries("sluice_svc"),
        5,
        "4 frontends of web, 1 of empty: {m}"
    );
    // Every translation accounted for, none refused for an inconsistency.
    let st = c.d.status();
    let stat = |k: &str| {
        st["lb_stats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x[0] == k)
            .unwrap()[1]
            .as_u64()
            .unwrap()
    };
    assert!(stat("translated") >= 35, "{st}");
    assert_eq!(stat("inconsistent"), 0, "{st}");
    assert_eq!(
        entries("sluice_backends"),
        8,
        "2 pods x TCP/UDP x v4/v6: {m}"
    );
}

#[test]
fn a_service_with_no_backend_refuses_at_once() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let v = probe(&c.client.ns, &["tcp", "10.96.10.20:80"]);
    assert_eq!(v["errno"], 111, "ECONNREFUSED: {v}");
    // Timed inside the probe around connect(2) alone: the refusal comes
    // from the hook, not from a timeout or a reset.
    let ms = v["connect_ms"].as_f64().unwrap();
    assert!(ms < 100.0, "refused at once, not after a timeout: {ms} ms");
    let st = c.d.status();
    let no_backend = st["lb_stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x[0] == "no_backend")
        .unwrap()[1]
        .clone();
    assert_eq!(
        no_backend, 1,
        "counted as a refusal for want of a backend: {st}"
    );
}

#[test]
fn namespaces_the_daemon_does_not_know_are_not_translated() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    // A namespace of no daemon that happens to serve the cluster IP itself:
    // untranslated, its connect reaches its own server.
    let stranger = Ns::new("x");
    stranger.ip(&["addr", "add", "10.96.10.10/32", "dev", "lo"]);
    let _s = Server::start(&stranger, "tcp", 80, "stranger");
    let v = probe_ok(&stranger, &["tcp", "10.96.10.10:80"]);
    assert_eq!(v["reply"], "stranger", "{v}");
    // The same from a pod of another node (another daemon, no services).
    let node2 = Node::new();
    let _d2 = Daemon::start(&node2);
    let p2 = Pod::add(
        &node2,
        &node2.conf(
            "1.0.0",
            r#"[[{"subnet":"10.231.0.0/24","gateway":"10.231.0.1"}]]"#,
        ),
    );
    p2.ns.ip(&["addr", "add", "10.96.10.10/32", "dev", "lo"]);
    let _s2 = Server::start(&p2.ns, "tcp", 80, "node2-pod");
    let v = probe_ok(&p2.ns, &["tcp", "10.96.10.10:80"]);
    assert_eq!(v["reply"], "node2-pod", "{v}");
    // And the known pod still is translated.
    let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
    assert!(v["reply"].as_str().unwrap().starts_with("web-"), "{v}");
}

#[test]
fn a_removed_backend_gets_no_new_connections_and_a_terminating_one_keeps_its_own() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let web1 = format!("{}:8080", ip_of(&c.web[1], false));
    let web1_conns = || {
        let s = c.services();
        c.frontend(&s, "10.96.10.10:80/Tcp")["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == web1.as_str())
            .map(|b| b["connections"].as_u64().unwrap())
            .unwrap_or(0)
    };
    // Hold a connection that landed on web-1: start one, and keep it only
    // if web-1's counter moved.
    let hold = loop {
        let before = web1_conns();
        let child = Command::new("ip")
            .args(["netns", "exec", &c.client.ns.name])
            .arg(bin("sluice-probe"))
            .args(["tcp-hold", "10.96.10.10:80", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        if web1_conns() > before {
            break child;
        }
        let _ = child.wait_with_output();
    };
    // web-1 starts terminating: it leaves the table for new connections.
    c.write(&manifests(
        &[
            (&c.web[0], true, true, false),
            (&c.web[1], false, false, true),
        ],
        "",
    ));
    c.wait_programmed(|_| c.in_table("10.96.10.10:80/Tcp").len() == 1);
    for _ in 0..20 {
        let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
        assert_eq!(
            v["reply"], "web-0",
            "no new connection to a terminating backend: {v}"
        );
    }
    let out = hold.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reply"], "web-1", "{v}");
    assert_eq!(
        v["echo"], "still-there",
        "the established connection lives on: {v}"
    );
    // Removed entirely: same for new connections.
    c.write(&manifests(&[(&c.web[0], true, true, false)], ""));
    c.wait_programmed(|_| {
        c.in_table("10.96.10.10:80/Tcp") == vec![format!("{}:8080", ip_of(&c.web[0], false))]
    });
    let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
    assert_eq!(v["reply"], "web-0");
}

#[test]
fn client_ip_affinity_holds_then_expires() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(
        &node,
        "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}",
    );
    let first = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"])["reply"].clone();
    for _ in 0..15 {
        let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
        assert_eq!(v["reply"], first, "affinity holds within the timeout");
    }
    std::thread::sleep(Duration::from_millis(2500));
    // After expiry the choice is random again: the other backend shows up.
    let other = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(2100));
        probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"])["reply"] != first
    });
    assert!(other, "affinity expired");
}

/// Connects racing from a pod with no affinity entry yet all land on one
/// backend: the first choice is made once (insert-if-absent, then what the
/// map holds), and a refresh racing a lookup never makes the entry look
/// expired. Before: 8 threads released together split across backends.
#[test]
fn affinity_holds_for_parallel_connects_from_a_fresh_pod() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "sessionAffinity: ClientIP");
    let conf = node.conf("1.0.0", RANGES);
    let mut pods = Vec::new();
    for round in 0..10 {
        // A fresh pod: a new netns cookie, so no affinity entry yet.
        let p = Pod::add(&node, &conf);
        let v6 = round % 2 == 1;
        let dst = if v6 {
            "[fd00:10:96::10]:80"
        } else {
            "10.96.10.10:80"
        };
        let v = probe(&p.ns, &["burst", dst, "8", "25"]);
        let replies = v["replies"].as_object().unwrap();
        assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
        assert_eq!(
            replies.len(),
            1,
            "round {round} ({dst}): 200 connects from one pod split across backends: {v}"
        );
        assert_eq!(replies.values().next().unwrap(), 200, "{v}");
        pods.push(p);
    }
    // The pods go: their affinity entries go with them (the daemon
    // sweeps entries whose netns is no longer an endpoint).
    let cookies: Vec<u64> = pods
        .iter()
        .map(|p| c.d.endpoints()[&p.cid]["cookie"].as_u64().unwrap())
        .collect();
    let pins = sluice_dataplane::pins::Pins::new(&node.pin_path);
    let aff: aya::maps::HashMap<_, AffinityKey, AffinityValue> = aya::maps::HashMap::try_from(
        sluice_dataplane::load::open_pinned(&pins.maps(), &AFFINITY).unwrap(),
    )
    .unwrap();
    let held = |aff: &aya::maps::HashMap<_, AffinityKey, AffinityValue>| {
        aff.keys()
            .filter_map(Result::ok)
            .filter(|k| cookies.contains(&k.netns_cookie))
            .count()
    };
    assert_eq!(held(&aff), 10, "one entry per pod");
    drop(pods);
    assert!(
        eventually(12, || held(&aff) == 0),
        "affinity entries of deleted pods removed: {} left",
        held(&aff)
    );
    assert!(c.services()["source"]["affinity_swept"].as_u64().unwrap() >= 10);
}

/// Reverse translation lives in each socket: one pod looping socket /
/// sendto(ClusterIP) / recvfrom / close 800,000 times, three times what
/// the node-wide LRU held before (262,144 entries, and with it the other
/// pod's peer showed the backend's address), takes nothing from another
/// pod's connected socket, whose peer and replies still show the service
/// address.
#[test]
fn no_pod_can_flush_another_pods_reverse_translation() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let conf = node.conf("1.0.0", RANGES);
    let flooder = Pod::add(&node, &conf);
    let (held, first) = HeldUdp::start(&c.client.ns, "10.96.10.10:53");
    assert_eq!(first["peer"], "10.96.10.10:53", "{first}");
    assert_eq!(first["from"], "10.96.10.10:53", "{first}");

    let flood = probe(&flooder.ns, &["flood", "10.96.10.10:53", "800000"]);
    assert_eq!(flood["count"], 800000, "{flood}");

    let second = held.again();
    assert_eq!(
        second["peer"], "10.96.10.10:53",
        "getpeername after the flood: {second}"
    );
    assert_eq!(
        second["from"], "10.96.10.10:53",
        "reply source after the flood: {second}"
    );
    assert!(second["reply"].as_str().unwrap().starts_with("web-"));
}

/// A connected UDP socket follows its backend out: when the backend
/// leaves the EndpointSlice, every connected UDP socket of the pods and of
/// the node translated to it is ended (the application gets an error and
/// connects again, to a live backend); a socket to a backend that stays is
/// untouched. Before, it kept sending to the address that left.
#[test]
fn a_connected_udp_socket_follows_its_backend_out() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let web1 = ip_of(&c.web[1], false);
    std::fs::write(
        c.dir.join("stay.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: stay, namespace: demo}}\nspec: {{clusterIP: 10.96.10.60, ports: [{{port: 53, protocol: UDP}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: stay-1, namespace: demo, labels: {{kubernetes.io/service-name: stay}}}}\naddressType: IPv4\nports: [{{port: 5353, protocol: UDP}}]\nendpoints: [{{addresses: [\"{web1}\"]}}]\n"
        ),
    )
    .unwrap();
    c.wait_programmed(|v| v["services"].as_array().unwrap().len() == 6);
    assert_eq!(
        c.services()["source"]["udp_socket_termination"],
        "on",
        "this kernel can end sockets"
    );
    // Connected sockets held open: pod and node to web, pod to stay.
    let hold = |ns: &Ns, dst: &str| {
        let (held, first) = HeldUdp::start(ns, dst);
        assert_eq!(first["from"], dst, "{first}");
        (held, first["reply"].as_str().unwrap().to_string())
    };
    let (pod, pod_on) = hold(&c.client.ns, "10.96.10.10:53");
    let (from_node, node_on) = hold(&node.ns, "10.96.10.10:53");
    let (kept, kept_on) = hold(&c.client.ns, "10.96.10.60:53");
    assert_eq!(kept_on, "web-1");
    // The pod's socket's backend leaves web's slices.
    let gone = pod_on;
    c.drop_backend(&gone);
    let node_was_on_gone = node_on == gone;
    assert!(
        eventually(5, || c.services()["source"]["udp_sockets_ended"]
            .as_u64()
            .unwrap()
            > u64::from(node_was_on_gone)),
        "{:#}",
        c.services()["source"]
    );
    let p = pod.again();
    assert!(
        p["error"].is_string(),
        "the pod's socket to {gone} was ended: {p}"
    );
    let n = from_node.again();
    if node_was_on_gone {
        assert!(n["error"].is_string(), "the node's socket was ended: {n}");
    } else {
        assert_eq!(n["from"], "10.96.10.10:53", "{n}");
    }
    let k = kept.again();
    assert_eq!(
        k["reply"], "web-1",
        "a socket whose backend stays is untouched: {k}"
    );
    // Connecting again reaches the live backend.
    let v = probe_ok(&c.client.ns, &["udp-connected", "10.96.10.10:53"]);
    assert_ne!(v["reply"], gone.as_str(), "{v}");
}

/// Connections are counted per frontend and backend: a backend address
/// two services share shows, under each, only the connections made
/// through it (before, a new service showed the other's count).
#[test]
fn a_shared_backend_is_counted_per_frontend() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let web0 = ip_of(&c.web[0], false);
    std::fs::write(
        c.dir.join("alias.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: alias, namespace: demo}}\nspec: {{clusterIP: 10.96.10.50, ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: alias-1, namespace: demo, labels: {{kubernetes.io/service-name: alias}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [\"{web0}\"]}}]\n"
        ),
    )
    .unwrap();
    c.wait_programmed(|v| v["services"].as_array().unwrap().len() == 6);
    for _ in 0..5 {
        assert_eq!(
            probe_ok(&c.client.ns, &["tcp", "10.96.10.50:80"])["reply"],
            "web-0"
        );
    }
    let count = |fe: &str| -> u64 {
        let v = c.services();
        c.frontend(&v, fe)["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == format!("{web0}:8080"))
            .unwrap()["connections"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("10.96.10.50:80/Tcp"), 5);
    assert_eq!(count("10.96.10.10:80/Tcp"), 0, "web's own count");
}

/// A ClusterIP outside the service ranges captures nothing: a connect to
/// 127.0.0.53 stays the pod's own (before: a manifest could take the
/// node's resolver, the metadata server, the API server). A backend on
/// loopback is left out.
#[test]
fn a_cluster_ip_outside_the_service_ranges_captures_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    c.client.ns.ip(&["link", "set", "lo", "up"]);
    let _local = Server::start(&c.client.ns, "tcp", 9053, "local");
    let web0 = ip_of(&c.web[0], false);
    std::fs::write(
        c.dir.join("capture.yaml"),
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: resolver, namespace: evil}}
spec: {{clusterIP: 127.0.0.53, ports: [{{port: 9053}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: metadata, namespace: evil}}
spec: {{clusterIP: 169.254.169.254, ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: resolver-1, namespace: evil, labels: {{kubernetes.io/service-name: resolver}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints: [{{addresses: ["{web0}"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: loop, namespace: demo}}
spec: {{clusterIP: 10.96.10.40, ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: loop-1, namespace: demo, labels: {{kubernetes.io/service-name: loop}}}}
addressType: IPv4
ports: [{{port: 8080}}]
endpoints: [{{addresses: ["127.0.0.1", "{web0}"]}}]
"#
        ),
    )
    .unwrap();
    c.wait_programmed(|v| {
        let rejected = v["source"]["rejected"].to_string();
        rejected.contains("clusterIP 127.0.0.53 is outside the service ranges")
            && rejected.contains("clusterIP 169.254.169.254 is outside the service ranges")
            && rejected.contains("endpoint address 127.0.0.1 is loopback")
            && v["services"].as_array().unwrap().len() == 6
    });
    let v = probe_ok(&c.client.ns, &["tcp", "127.0.0.53:9053"]);
    assert_eq!(v["reply"], "local", "the pod's own 127.0.0.53 answers: {v}");
    let fe = c.frontend(&c.services(), "10.96.10.40:80/Tcp");
    let addrs: Vec<&str> = fe["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap())
        .collect();
    assert_eq!(addrs, [format!("{web0}:8080")], "{fe}");
    for _ in 0..10 {
        assert_eq!(
            probe_ok(&c.client.ns, &["tcp", "10.96.10.40:80"])["reply"],
            "web-0"
        );
    }
}

/// A services directory that is missing at start (not mounted yet), or
/// that comes back empty, deletes nothing programmed: the daemon says so,
/// connects keep being translated, and only the operator's allow-removal
/// lets the removal through.
#[test]
fn a_source_that_looks_empty_deletes_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut c = Cluster::new(&node, "");
    let served = |c: &Cluster<'_>| {
        probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"])["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("web-")
    };
    assert!(served(&c));
    c.d.kill9();
    let away = node.dir.path().join("services-unmounted");
    std::fs::rename(&c.dir, &away).unwrap();
    c.d.spawn();
    let v = c.services();
    assert_eq!(v["services"].as_array().unwrap().len(), 5, "{v:#}");
    assert!(
        v["source"]["warnings"]
            .to_string()
            .contains("does not exist"),
        "{v:#}"
    );
    assert!(served(&c), "translated while the directory is missing");

    // The directory appears, empty (a mount not populated yet).
    std::fs::create_dir(&c.dir).unwrap();
    c.wait_programmed(|v| v["source"]["held_removals"] == 5);
    assert_eq!(c.services()["services"].as_array().unwrap().len(), 5);
    assert!(served(&c), "translated while the removal is held");
    let out = c.d.ctl(&["services"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sluicectl services allow-removal"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The operator lets it through.
    let out = c.d.ctl(&["services", "allow-removal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_programmed(|v| {
        v["services"].as_array().unwrap().is_empty() && v["source"]["held_removals"] == 0
    });

    // And back: the manifests return, the services with them.
    std::fs::rename(away.join("web.yaml"), c.dir.join("web.yaml")).unwrap();
    c.wait_programmed(|v| v["services"].as_array().unwrap().len() == 5);
    assert!(served(&c));
}

#[test]
fn a_pod_annotated_socket_lb_false_connects_to_the_service_address_untranslated() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut c = Cluster::new(&node, "");
    let conf = with_pod_annotations(
        &node.conf("1.0.0", RANGES),
        &[("sluice.dev/socket-lb", "false"), ("team", "mesh")],
    );
    let opted = Pod::add(&node, &conf);
    // Both the opted-out pod and the ordinary client serve the cluster IP
    // themselves: only a connect that is not translated reaches that server.
    let mut servers = Vec::new();
    for (p, name) in [(&opted, "opted-out"), (&c.client, "client-local")] {
        p.ns.ip(&["addr", "add", "10.96.10.10/32", "dev", "lo"]);
        p.ns.ip(&["addr", "add", "fd00:10:96::10/128", "dev", "lo", "nodad"]);
        servers.push(Server::start(&p.ns, "tcp", 80, name));
        servers.push(Server::start(&p.ns, "udp", 53, name));
    }
    let check = |c: &Cluster<'_>| {
        for dst in ["10.96.10.10:80", "[fd00:10:96::10]:80"] {
            let v = probe_ok(&opted.ns, &["tcp", dst]);
            assert_eq!(v["reply"], "opted-out", "untranslated: {v}");
            assert_eq!(v["peer"], dst, "{v}");
            let v = probe_ok(&c.client.ns, &["tcp", dst]);
            assert!(
                v["reply"].as_str().unwrap().starts_with("web-"),
                "an ordinary pod is still translated: {v}"
            );
        }
        let v = probe_ok(&opted.ns, &["udp", "10.96.10.10:53"]);
        assert_eq!(v["reply"], "opted-out", "untranslated sendmsg: {v}");
        let v = probe_ok(&c.client.ns, &["udp", "10.96.10.10:53"]);
        assert!(v["reply"].as_str().unwrap().starts_with("web-"), "{v}");
    };
    check(&c);

    // The record keeps the annotations; the API and sluicectl show the
    // opt-out.
    let rec = sluice_common::endpoint::EndpointRecord::load(&node.state_dir(), &opted.cid, "eth0")
        .unwrap()
        .unwrap();
    assert!(rec.socket_lb_opt_out());
    assert_eq!(
        rec.annotations.get("team").map(String::as_str),
        Some("mesh")
    );
    let eps = c.d.endpoints();
    assert_eq!(eps[&opted.cid]["socket_lb"], false, "{:#}", eps[&opted.cid]);
    assert_eq!(eps[&c.client.cid]["socket_lb"], true);
    let opted_row = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let head = text.lines().next().unwrap_or("").to_string();
        let col = head.find("SOCKET LB").unwrap_or_else(|| panic!("{text}"));
        let row = text
            .lines()
            .find(|l| l.contains(&opted.cid[..opted.cid.len().min(12)]))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string();
        (
            row[col..].split_whitespace().next().unwrap().to_string(),
            text,
        )
    };
    let (cell, text) = opted_row(&c.d.ctl(&["endpoints"]));
    assert_eq!(cell, "no", "{text}");

    // With the daemon down, sluicectl reads it from the pinned entry; a
    // restarted daemon rebuilds the entry from the record with the flag.
    c.d.kill9();
    let (cell, text) = opted_row(&c.d.ctl(&["endpoints"]));
    assert_eq!(cell, "no", "{text}");
    check(&c);
    c.d.spawn();
    assert_eq!(c.d.endpoints()[&opted.cid]["socket_lb"], false);
    check(&c);
}

/// A Maglev service, a broken save, and a daemon restart: connects keep
/// working throughout, nothing programmed is lost, and the restarted daemon
/// adopts the same frontends.
#[test]
fn maglev_broken_manifests_and_restart_lose_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut c = Cluster::new(&node, "");
    // Switch web to Maglev.
    let all: Vec<_> = c.web.iter().map(|p| (p, true, true, false)).collect();
    let maglev = manifests(&all, "").replace(
        "metadata: {name: web, namespace: demo}",
        "metadata: {name: web, namespace: demo, annotations: {sluice.dev/load-balancing: maglev}}",
    );
    c.write(&maglev);
    c.wait_programmed(|v| c.frontend(v, "10.96.10.10:80/Tcp")["selection"] == "maglev");
    let fe = c.frontend(&c.services(), "10.96.10.10:80/Tcp");
    assert_eq!(fe["table_size"], 16381, "{fe}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
        assert_eq!(v["peer"], "10.96.10.10:80");
        seen.insert(v["reply"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "Maglev spreads new connections too: {seen:?}"
    );

    // A half-written save (cut inside a flow mapping, so not YAML):
    // rejected with its reason, the service stays.
    let cut = maglev.find("labels: {kube").unwrap() + "labels: {kube".len();
    std::fs::write(c.dir.join("web.yaml"), &maglev[..cut]).unwrap();
    let mut last = Value::Null;
    assert!(
        eventually(5, || {
            last = c.services();
            last["source"]["rejected"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| {
                    r["reason"]
                        .as_str()
                        .unwrap()
                        .contains("keeping what the file held before")
                })
        }),
        "the broken file is reported: {last:#}"
    );
    assert_eq!(
        c.in_table("10.96.10.10:80/Tcp").len(),
        2,
        "nothing programmed was lost"
    );
    assert!(probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"])["reply"]
        .as_str()
        .unwrap()
        .starts_with("web-"));
    c.write(&maglev);

    // kill -9: connects keep being translated; the restart adopts the
    // same frontends (same svc_id) and backends.
    let ids = |v: &Value| -> Vec<(String, u64)> {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["frontend"].as_str().unwrap().to_string(),
                    s["svc_id"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    c.wait_programmed(|v| v["source"]["rejected"].as_array().unwrap().is_empty());
    let before = ids(&c.services());
    c.d.kill9();
    let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
    assert!(
        v["reply"].as_str().unwrap().starts_with("web-"),
        "served with the daemon down: {v}"
    );
    c.d.spawn();
    assert_eq!(
        ids(&c.services()),
        before,
        "frontends adopted with their ids"
    );
    let v = probe_ok(&c.client.ns, &["udp", "10.96.10.10:53"]);
    assert_eq!(v["from"], "10.96.10.10:53", "{v}");
}

/// Incremental passes keep services whole: an affinity-only change keeps
/// the live slots; a service renamed with its cluster IP in one save moves
/// over; a conflict's loser takes the frontend once its holder goes.
#[test]
fn incremental_changes_keep_services_whole() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let all: Vec<_> = c.web.iter().map(|p| (p, true, true, false)).collect();
    let connect_ok = |what: &str| {
        let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.10:80"]);
        assert!(
            v["reply"].as_str().unwrap_or("").starts_with("web-"),
            "{what}: {v}"
        );
    };

    // Affinity only: same table, new frontend value.
    c.write(&manifests(&all, "sessionAffinity: ClientIP"));
    c.wait_programmed(|v| c.frontend(v, "10.96.10.10:80/Tcp")["affinity_timeout"] == 10800);
    std::thread::sleep(Duration::from_millis(1500));
    // Another change makes the programmer collect what it retired.
    std::fs::write(c.dir.join("other.yaml"), "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: demo}\nspec: {clusterIP: 10.96.10.30, ports: [{port: 80}]}\n").unwrap();
    c.wait_programmed(|v| v["services"].as_array().unwrap().len() == 6);
    for _ in 0..5 {
        connect_ok("after an affinity-only change");
    }

    // Renamed in one save, same cluster IPs.
    let renamed = manifests(&all, "")
        .replace(
            "metadata: {name: web, namespace: demo}",
            "metadata: {name: web2, namespace: demo}",
        )
        .replace(
            "kubernetes.io/service-name: web}",
            "kubernetes.io/service-name: web2}",
        );
    c.write(&renamed);
    c.wait_programmed(|v| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["frontend"] == "10.96.10.10:80/Tcp" && s["service"] == "demo/web2")
    });
    connect_ok("after the rename");

    // demo/dup claims empty's frontend and loses; when empty goes, dup
    // gets it without a restart.
    std::fs::write(
        c.dir.join("dup.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: dup, namespace: demo}}\nspec: {{clusterIP: 10.96.10.20, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dup-1, namespace: demo, labels: {{kubernetes.io/service-name: dup}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
            ip_of(&c.web[0], false)
        ),
    )
    .unwrap();
    c.wait_programmed(|v| {
        v["source"]["rejected"].as_array().unwrap().iter().any(|r| {
            r["reason"]
                .as_str()
                .unwrap()
                .contains("already belongs to service demo/empty")
        })
    });
    let without_empty = renamed[..renamed
        .find("---\napiVersion: v1\nkind: Service\nmetadata: {name: empty")
        .unwrap()]
        .to_string()
        + &renamed[renamed
            .find("---\napiVersion: discovery.k8s.io/v1")
            .unwrap()..];
    c.write(&without_empty);
    c.wait_programmed(|v| {
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["frontend"] == "10.96.10.20:80/Tcp" && s["service"] == "demo/dup")
    });
    let v = probe_ok(&c.client.ns, &["tcp", "10.96.10.20:80"]);
    assert_eq!(v["reply"], "web-0", "the loser now serves: {v}");

    // Nothing leaks: once replaced state has been collected (a second, then
    // any change), the slots map holds exactly the live tables.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::remove_file(c.dir.join("other.yaml")).unwrap();
    c.wait_programmed(|v| {
        !v["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["frontend"] == "10.96.10.30:80/Tcp")
    });
    let live: u64 = c.services()["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["table_size"].as_u64().unwrap())
        .sum();
    let out = c.d.ctl(&["bpf", "maps", "-o", "json"]);
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let slots = m["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "sluice_lb_slots")
        .unwrap()["entries"]
        .as_u64()
        .unwrap();
    assert_eq!(
        slots, live,
        "slots of replaced and removed tables are gone: {m}"
    );
}

/// A pod that opted out of socket load balancing reaches services through
/// the per-packet path on its host veth: TCP and UDP, IPv4 and IPv6, the
/// pod seeing the service address as its peer and the backend seeing the
/// pod's own address; flows are tracked in a pinned map, so a connection
/// outlives a `kill -9` of the daemon; a removed reply link is put back; a
/// UDP flow whose backend left chooses again.
#[test]
fn an_opted_out_pod_reaches_services_per_packet() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut c = Cluster::new(&node, "");
    let conf = with_pod_annotations(
        &node.conf("1.0.0", RANGES),
        &[("sluice.dev/socket-lb", "false")],
    );
    let opted = Pod::add(&node, &conf);
    let rec = sluice_common::endpoint::EndpointRecord::load(&node.state_dir(), &opted.cid, "eth0")
        .unwrap()
        .unwrap();
    let client_rec =
        sluice_common::endpoint::EndpointRecord::load(&node.state_dir(), &c.client.cid, "eth0")
            .unwrap()
            .unwrap();
    assert!(
        eventually(5, || c.d.reply_link_on(rec.host_ifindex)),
        "the reply translation is attached to the opted-out pod's veth"
    );
    assert!(
        !c.d.reply_link_on(client_rec.host_ifindex),
        "an ordinary pod has none"
    );

    let check = || {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            for dst in ["10.96.10.10:80", "[fd00:10:96::10]:80"] {
                let v = probe_ok(&opted.ns, &["tcp", dst]);
                let reply = v["reply"].as_str().unwrap_or_else(|| panic!("{v}"));
                assert!(reply.starts_with("web-"), "{dst}: {v}");
                assert_eq!(v["peer"], dst, "the pod sees the service: {v}");
                seen.insert(reply.to_string());
            }
            for dst in ["10.96.10.10:53", "[fd00:10:96::10]:53"] {
                let v = probe_ok(&opted.ns, &["udp", dst]);
                assert!(v["reply"].as_str().unwrap().starts_with("web-"), "{v}");
                assert_eq!(v["from"], dst, "the reply comes from the service: {v}");
                let v = probe_ok(&opted.ns, &["udp-connected", dst]);
                assert!(v["reply"].as_str().unwrap().starts_with("web-"), "{v}");
                assert_eq!(v["from"], dst, "{v}");
            }
        }
        assert_eq!(seen.len(), 2, "both backends get flows: {seen:?}");
    };
    check();
    // The flows are tracked, both directions, with the pod's own address.
    let pod4: std::net::Ipv4Addr = ip_of(&opted, false).parse().unwrap();
    let ct = c.d.pinned_ct();
    let fwd = ct
        .iter()
        .filter(|(k, _)| k.dir == sluice_dataplane::maps::CT_DIR_FWD && k.src[..4] == pod4.octets())
        .count();
    let reply = ct
        .iter()
        .filter(|(k, _)| {
            k.dir == sluice_dataplane::maps::CT_DIR_REPLY && k.dst[..4] == pod4.octets()
        })
        .count();
    assert!(
        fwd >= 24 && reply >= 24,
        "{fwd} forward, {reply} reply entries"
    );
    assert!(
        c.d.status()["per_packet"]["translated"].as_u64().unwrap() > 0,
        "{:#}",
        c.d.status()["per_packet"]
    );

    // The backend sees the pod's address: no source NAT.
    let hold = Command::new("ip")
        .args(["netns", "exec", &opted.ns.name])
        .arg(bin("sluice-probe"))
        .args(["tcp-hold", "10.96.10.10:80", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pod4s = pod4.to_string();
    assert!(
        eventually(5, || c.web.iter().any(|w| {
            let out = w.ns.exec(&["ss", "-tnH", "state", "established"]);
            // The server listens on [::]: IPv4 peers show v4-mapped.
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains(&format!("{pod4s}:")) || text.contains(&format!("{pod4s}]:"))
        })),
        "a backend sees the connection from {pod4s}"
    );
    // A connection outlives the daemon: programs and tracking are pinned.
    c.d.kill9();
    let out = hold.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["echo"], "still-there", "{v}");
    check();
    // A reply link removed by hand (here while the daemon is down) is put
    // back.
    let pin = node
        .pin_path
        .join("links/tc")
        .join(format!("{}-egress", rec.host_ifindex));
    std::fs::remove_file(&pin).unwrap();
    assert!(!c.d.reply_link_on(rec.host_ifindex));
    c.d.spawn();
    assert!(
        eventually(10, || c.d.reply_link_on(rec.host_ifindex)),
        "the reply link is put back"
    );
    check();

    // A UDP flow whose backend left chooses again; its socket, connected to
    // the service, keeps working.
    let (held, first) = HeldUdp::start(&opted.ns, "10.96.10.10:53");
    let gone = first["reply"].as_str().unwrap().to_string();
    c.drop_backend(&gone);
    let second = held.again();
    assert_ne!(second["reply"], gone.as_str(), "{first} then {second}");
    assert_eq!(second["from"], "10.96.10.10:53", "{second}");
}

/// A pod cannot take a service's address for itself: bind(2) to a
/// ClusterIP and port a Service serves is refused (EADDRINUSE, as if the
/// service held it: the hook sets that errno), even with
/// IP_FREEBIND, which lets any unprivileged process bind any address. The
/// same address on a port no Service serves, and the pod's own address,
/// stay free to bind.
#[test]
fn a_pod_cannot_bind_a_service_address() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let c = Cluster::new(&node, "");
    let bind = |proto: &str, a: &str| probe(&c.client.ns, &["bind", proto, a]);
    for (proto, a) in [
        ("tcp", "10.96.10.10:80"),
        ("udp", "10.96.10.10:53"),
        ("tcp", "[fd00:10:96::10]:80"),
        ("udp", "[fd00:10:96::10]:53"),
        // A v4-mapped v6 socket is the v4 service.
        ("tcp", "[::ffff:10.96.10.10]:80"),
    ] {
        let v = bind(proto, a);
        assert_eq!(v["errno"], 98, "{proto} bind to service {a} refused: {v}");
    }
    let own = format!("{}:80", ip_of(&c.client, false));
    for (proto, a) in [
        ("tcp", "10.96.10.10:81"),
        ("udp", "10.96.10.10:80"),
        ("tcp", own.as_str()),
    ] {
        let v = bind(proto, a);
        assert_eq!(v["bound"], true, "{proto} bind to {a} is free: {v}");
    }
}
