//! The Kubernetes API source end to end: sluiced against the test API
//! server (`sluice_tests::kubeapi`: list/watch over HTTPS, objects in their
//! real JSON form), in a node netns of its own.

use serde_json::{json, Value};
use sluice_common::api::Request;
use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::kubeapi::{Kind, KubeApi, Logged};
use sluice_tests::{require_root, Node, Pod};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CORPUS: &str = include_str!("../data/translation-corpus.yaml");
const CONTEXT: &str =
    "node_name = \"node-a\"\nexternal_ip_cidrs = [\"192.0.2.0/24\"]\nrouting = \"off\"\n";

/// A daemon on `node` reading `api` (listening in the node's netns).
fn start<'a>(node: &'a Node, api: &KubeApi, extra: &str) -> Daemon<'a> {
    let url = api.listen_in(&node.ns);
    let kc = api.kubeconfig(&url);
    Daemon::start_with(
        node,
        &format!(
            "kubernetes = true\nkubeconfig = \"{}\"\n{extra}",
            kc.display()
        ),
    )
}

fn services(d: &Daemon<'_>) -> Value {
    d.call(Request::ListServices).expect("list_services").data
}

fn source(d: &Daemon<'_>) -> Value {
    d.call(Request::ServiceSource).expect("service_source").data["source"]["source"].clone()
}

/// Frontend → its backends with their state, as programmed.
fn programmed(d: &Daemon<'_>) -> BTreeMap<String, Vec<String>> {
    services(d)["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let mut b: Vec<String> = v["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| format!("{} {}", b["addr"], b["state"]))
                .collect();
            b.sort();
            (
                format!("{} {}", v["service"].as_str().unwrap(), v["frontend"]),
                b,
            )
        })
        .collect()
}

fn wait_synced(d: &Daemon<'_>, secs: u64) -> Value {
    let mut last = Value::Null;
    let ok = eventually(secs, || {
        last = source(d);
        last["synced"] == true
    });
    assert!(ok, "source not synced: {last:#}\n{}", d.log_text());
    last
}

fn wait_for(d: &Daemon<'_>, what: &str, f: impl Fn(&BTreeMap<String, Vec<String>>) -> bool) {
    let mut last = BTreeMap::new();
    let ok = eventually(10, || {
        last = programmed(d);
        f(&last)
    });
    assert!(ok, "{what}: {last:#?}\n{:#}", source(d));
}

fn has_backend(p: &BTreeMap<String, Vec<String>>, frontend: &str, addr: &str) -> bool {
    p.iter()
        .any(|(k, v)| k.contains(frontend) && v.iter().any(|b| b.contains(addr)))
}

/// One kind's state in the source's status.
fn kind_status(st: &Value, kind: &str) -> Value {
    st["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Runs `check` on what is programmed for as long as some kind is not
/// listed yet (the list state read after the datapath: a kind unlisted then
/// was unlisted when the datapath was read); returns how many times.
fn while_unlisted(d: &Daemon<'_>, mut check: impl FnMut(&BTreeMap<String, Vec<String>>)) -> usize {
    let t0 = Instant::now();
    let mut seen = 0;
    loop {
        let p = programmed(d);
        let st = source(d);
        if st["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["synced"] == true)
        {
            return seen;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "never synced");
        check(&p);
        seen += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests of `kind` the test server logged that `f` picks.
fn requests(api: &KubeApi, kind: Kind, f: impl Fn(&Logged) -> bool) -> usize {
    api.log()
        .iter()
        .filter(|l| l.kind == Some(kind) && f(l))
        .count()
}

fn web_slice(extra_endpoint: Option<&str>) -> Value {
    let mut eps = vec![
        json!({"addresses": ["10.244.0.5"], "conditions": {"ready": true}, "nodeName": "node-a"}),
    ];
    if let Some(a) = extra_endpoint {
        eps.push(json!({"addresses": [a], "conditions": {"ready": true}, "nodeName": "node-b"}));
    }
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-v4", "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                     {"name": "dns", "port": 5353, "protocol": "UDP"}],
           "endpoints": eps})
}

fn node_object(name: &str, ip: &str, cidrs: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name},
           "spec": {"podCIDRs": cidrs, "podCIDR": cidrs[0]},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

/// The same objects through the API (paginated: three per page) and
/// through a manifests directory program the same datapath, bad objects
/// rejected one by one in both.
#[test]
fn the_api_source_programs_what_the_manifests_source_does() {
    if !require_root() {
        return;
    }
    let api = KubeApi::new();
    api.apply_yaml(CORPUS);
    let a = Node::new();
    let da = start(&a, &api, &format!("{CONTEXT}api_page_size = 3\n"));
    let b = Node::new();
    let dir = b.dir.path().join("services");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("corpus.yaml"), CORPUS).unwrap();
    let db = Daemon::start_with(
        &b,
        &format!("{CONTEXT}services_dir = \"{}\"\n", dir.display()),
    );
    let st = wait_synced(&da, 10);
    assert!(
        eventually(10, || source(&da)["reachable"] == true),
        "{st:#}"
    );
    let from_files = programmed(&db);
    assert!(from_files.len() >= 10, "{from_files:#?}");
    let mut from_api = BTreeMap::new();
    let same = eventually(10, || {
        from_api = programmed(&da);
        from_api == from_files
    });
    assert!(
        same,
        "API and manifests differ:\n{from_api:#?}\n{from_files:#?}"
    );
    let (ra, rb) = (services(&da), services(&db));
    let count = |v: &Value| v["source"]["rejected"].as_array().unwrap().len();
    assert_eq!(
        count(&ra),
        count(&rb),
        "{:#}\n{:#}",
        ra["source"],
        rb["source"]
    );
    assert!(
        ra["source"]["rejected"]
            .to_string()
            .contains("Service default/typed-wrong"),
        "the object that is not a Service is rejected alone: {:#}",
        ra["source"]["rejected"]
    );
    // Pages were asked for with continue tokens.
    assert!(api.log().iter().any(|l| l.continued), "no paginated list");
    // sluicectl source says so.
    let out = da.ctl(&["source"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("synced       yes"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("Service ") && l.split_whitespace().nth(1) == Some("yes")),
        "{text}"
    );
}

/// A slow API: nothing is programmed until every kind is listed. A
/// restart while the API is slow keeps every programmed frontend (even one
/// whose service went away meanwhile) until the list is whole, then
/// applies the difference.
#[test]
fn nothing_is_programmed_from_a_half_listed_view() {
    if !require_root() {
        return;
    }
    let api = KubeApi::new();
    api.apply_yaml(CORPUS);
    api.set_delay(Duration::from_millis(250));
    let node = Node::new();
    let mut d = start(&node, &api, &format!("{CONTEXT}api_page_size = 2\n"));
    let seen_unsynced = while_unlisted(&d, |p| {
        assert!(p.is_empty(), "programmed before every kind was listed")
    });
    assert!(seen_unsynced > 5, "the slow list was not seen");
    wait_for(&d, "programmed once synced", |p| p.len() >= 10);
    let before = programmed(&d);

    // Frontend addresses only: a restarted daemon shows what it adopted
    // from the pins without the service names until its first pass.
    let frontends = |p: &BTreeMap<String, Vec<String>>| -> Vec<String> {
        p.keys()
            .map(|k| k.rsplit(' ').next().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };

    d.kill9();
    assert!(api.delete(Kind::Service, "shop/sticky"));
    d.spawn();
    let seen_unsynced = while_unlisted(&d, |p| {
        assert_eq!(
            frontends(p),
            frontends(&before),
            "changed before the list was whole"
        )
    });
    assert!(seen_unsynced > 5, "the slow relist was not seen");
    wait_for(&d, "the deleted service removed", |p| {
        !p.keys().any(|k| k.contains("10.96.0.11:443"))
    });
    assert_eq!(programmed(&d).len(), before.len() - 1);
}

/// Watches resume where they were (bookmarks keep a quiet kind's place),
/// an expired version is relisted (and what was missed meanwhile, a
/// delete, is applied), and while the API is down nothing changes.
#[test]
fn watches_resume_relist_on_410_and_ride_out_an_outage() {
    if !require_root() {
        return;
    }
    let api = KubeApi::new();
    api.apply_yaml(CORPUS);
    api.apply(node_object("node-a", "192.168.99.1", &["10.214.0.0/24"]));
    api.set_bookmarks(Some(Duration::from_millis(100)));
    let node = Node::new();
    let port = fastrand::u16(20000..60000);
    let d = start(
        &node,
        &api,
        &format!("{CONTEXT}metrics_address = \"127.0.0.1:{port}\"\n"),
    );
    let metrics = || -> String {
        let out = node.ns.exec(&[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_synced(&d, 10);
    let m = metrics();
    for line in [
        "sluice_source_synced 1",
        "sluice_source_reachable 1",
        "sluice_source_objects{kind=\"Service\"} 11",
        "sluice_source_rejected_objects{kind=\"Service\"} 1",
        "sluice_source_lists_total{kind=\"Node\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} not in:\n{m}");
    }
    // Routing is off here: the node file still gets this node's range.
    let node_file = node.state_dir().join("node.json");
    assert!(
        eventually(5, || std::fs::read_to_string(&node_file)
            .is_ok_and(|t| t.contains("10.214.0.0/24"))),
        "no node.json with routing off"
    );
    let lists = |k: Kind| requests(&api, k, |l| !l.watch && !l.continued && l.status == 200);
    assert_eq!((lists(Kind::Service), lists(Kind::Node)), (1, 1));

    // An update reaches the datapath.
    api.apply(web_slice(Some("10.244.1.100")));
    wait_for(&d, "new backend", |p| {
        has_backend(p, "10.96.0.10:80", "10.244.1.100")
    });

    // A dropped watch resumes from its last version: no new list.
    api.drop_watches();
    api.apply(web_slice(Some("10.244.1.101")));
    wait_for(&d, "backend after a dropped watch", |p| {
        has_backend(p, "10.96.0.10:80", "10.244.1.101")
    });
    assert_eq!(lists(Kind::Service), 1, "resumed, not relisted");
    assert!(
        requests(&api, Kind::Service, |l| l.watch
            && !l.resource_version.is_empty())
            > 0
    );

    // Bookmarks: the Node watch saw no event, but its place moved on with
    // them, so a compaction does not send it back to a full list.
    std::thread::sleep(Duration::from_millis(400));
    api.compact();
    api.drop_watches();
    let resumed = |k: Kind| requests(&api, k, |l| l.watch && l.status == 200);
    let before_resume = resumed(Kind::Node);
    assert!(
        eventually(10, || resumed(Kind::Node) > before_resume),
        "the Node watch did not resume"
    );
    let expired = |k: Kind| requests(&api, k, |l| l.watch && l.status == 410);
    assert_eq!(expired(Kind::Node), 0, "a bookmarked watch got 410");
    assert_eq!(lists(Kind::Node), 1, "a bookmarked watch relisted");

    // The API goes down; meanwhile a service is deleted and the history
    // compacted (the delete event is lost to the watch): nothing changes
    // while it is down, and the 410 on its return relists.
    api.set_bookmarks(None);
    let before = programmed(&d);
    api.set_down(true);
    assert!(api.delete(Kind::Service, "default/empty"));
    api.apply(node_object("node-z", "192.168.99.9", &["10.219.0.0/24"]));
    api.compact();
    let ok = eventually(10, || source(&d)["reachable"] == false);
    assert!(ok, "outage not seen: {:#}", source(&d));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(programmed(&d), before, "changed while the API was down");
    let m = metrics();
    assert!(m.lines().any(|l| l == "sluice_source_reachable 0"), "{m}");
    api.set_down(false);
    let mut last = BTreeMap::new();
    let ok = eventually(30, || {
        last = programmed(&d);
        !last.keys().any(|k| k.starts_with("default/empty"))
    });
    assert!(ok, "missed delete not applied after the relist: {last:#?}");
    assert!(expired(Kind::Service) >= 1, "no 410 for the Service watch");
    assert!(lists(Kind::Service) >= 2, "410 did not relist");
    let ok = eventually(20, || source(&d)["reachable"] == true);
    assert!(ok, "{:#}", source(&d));
    let mut st = Value::Null;
    let ok = eventually(10, || {
        st = source(&d);
        kind_status(&st, "Node")["objects"] == 2
    });
    assert!(ok, "the Node added during the outage: {st:#}");
    assert!(d.log_text().contains("retrying with backoff"));
}

/// A burst of changes to one service is applied as a few passes, not one
/// each; an update that changes nothing the datapath holds is not applied.
#[test]
fn bursts_are_coalesced_and_no_op_updates_skipped() {
    if !require_root() {
        return;
    }
    let api = KubeApi::new();
    api.apply_yaml(CORPUS);
    let node = Node::new();
    // api_server wins over the kubeconfig's server (which answers nothing
    // here), as on a kube-proxy-free cluster where the kubeconfig or the
    // environment name the `kubernetes` Service.
    let url = api.listen_in(&node.ns);
    let kc = api.kubeconfig("https://127.0.0.1:1");
    let d = Daemon::start_with(
        &node,
        &format!(
            "kubernetes = true\nkubeconfig = \"{}\"\napi_server = \"{url}\"\n{CONTEXT}",
            kc.display()
        ),
    );
    wait_synced(&d, 10);
    assert_eq!(source(&d)["server"], format!("{url}/"));
    let passes = || services(&d)["source"]["passes"].as_u64().unwrap();
    let slice_events = || {
        kind_status(&source(&d), "EndpointSlice")["events"]
            .as_u64()
            .unwrap()
    };
    api.apply(web_slice(None));
    wait_for(&d, "the slice replaced", |p| {
        has_backend(p, "10.96.0.10:80", "10.244.0.5")
            && !has_backend(p, "10.96.0.10:80", "10.244.1.6")
    });
    std::thread::sleep(Duration::from_millis(300));
    let p0 = passes();
    let e0 = slice_events();
    // Only the resourceVersion and an annotation change.
    for i in 0..20 {
        let mut s = web_slice(None);
        s["metadata"]["annotations"] = json!({"touched": i.to_string()});
        api.apply(s);
    }
    assert!(
        eventually(10, || slice_events() >= e0 + 20),
        "the 20 updates did not arrive"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(passes(), p0, "no-op updates were applied");
    // 200 real changes to one service in a burst.
    for i in 0..200 {
        api.apply(web_slice(Some(&format!("10.244.2.{}", i % 250 + 1))));
    }
    wait_for(&d, "last of the burst", |p| {
        has_backend(p, "10.96.0.10:80", "10.244.2.200")
    });
    std::thread::sleep(Duration::from_millis(200));
    let n = passes() - p0;
    assert!(n < 50, "{n} passes for a burst of 200 changes");
}

/// The node's pod range comes from its Node object; when it changes, new
/// pods get the new range, no address in use is given again, and pods on
/// the old range keep working until they go.
#[test]
fn a_pod_range_change_never_reassigns_an_address_in_use() {
    if !require_root() {
        return;
    }
    let api = KubeApi::new();
    api.apply(node_object("node-a", "192.168.99.1", &["10.213.0.0/24"]));
    let node = Node::new();
    // The node's own address, on a link of its own.
    node.ns
        .ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    node.ns.ip(&["addr", "add", "192.168.99.1/24", "dev", "d0"]);
    node.ns.ip(&["link", "set", "d0", "up"]);
    node.ns.ip(&["link", "set", "d1", "up"]);
    let d = start(
        &node,
        &api,
        "node_name = \"node-a\"\nrouting = \"direct\"\n",
    );
    wait_synced(&d, 10);
    let node_file = node.state_dir().join("node.json");
    let cidrs = || -> Value {
        std::fs::read_to_string(&node_file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| v["podCIDRs"].clone())
            .unwrap_or(Value::Null)
    };
    assert!(
        eventually(10, || cidrs() == json!(["10.213.0.0/24"])),
        "{}",
        cidrs()
    );
    // The conflist names no ranges: the node file's are used.
    let mut conf: Value =
        serde_json::from_str(&node.conf("1.0.0", sluice_tests::ranges("v4"))).unwrap();
    conf["ipam"].as_object_mut().unwrap().remove("ranges");
    let conf = conf.to_string();
    let old = Pod::add(&node, &conf);
    let old_ip = old.ip(false).to_string();
    assert!(old_ip.starts_with("10.213.0."), "{old_ip}");

    // Grown to a /23 that holds the old range: the old address is not
    // handed out again.
    api.apply(node_object("node-a", "192.168.99.1", &["10.213.0.0/23"]));
    assert!(
        eventually(10, || cidrs() == json!(["10.213.0.0/23"])),
        "{}",
        cidrs()
    );
    let grown: Vec<Pod<'_>> = (0..3).map(|_| Pod::add(&node, &conf)).collect();
    let mut all: Vec<String> = grown.iter().map(|p| p.ip(false).to_string()).collect();
    all.push(old_ip.clone());
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "an address in use was given again: {all:?}");

    // Moved to a range that does not hold the old one.
    api.apply(node_object("node-a", "192.168.99.1", &["10.213.8.0/24"]));
    assert!(
        eventually(10, || cidrs() == json!(["10.213.8.0/24"])),
        "{}",
        cidrs()
    );
    let new = Pod::add(&node, &conf);
    let new_ip = new.ip(false).to_string();
    assert!(new_ip.starts_with("10.213.8."), "{new_ip}");
    assert_eq!(old.ip(false).to_string(), old_ip);
    // The old pod still reaches the node and the new pod, and back.
    assert!(old.ns.ping(&new_ip), "old → new");
    assert!(new.ns.ping(&old_ip), "new → old");
    assert!(node.ns.ping(&old_ip), "node → old");
    old.del().ok();
    drop(grown);
}

/// The API sending 1,000 EndpointSlice changes a second for 10 s (100
/// Services, each change a new endpoint count for one of them): the daemon
/// coalesces (far fewer passes than changes), keeps up (every Service as
/// last written within 2 s of the last write) and its memory stays bounded
/// (RSS at the end within 10 % + 4 MiB of RSS a third of the way in).
#[test]
fn a_thousand_api_changes_a_second_are_coalesced_in_bounded_memory() {
    if !require_root() {
        return;
    }
    use sluice_tests::kubeapi::yaml_objects;
    use sluice_tests::manifests::{cluster_ip, endpoints, service};
    const SERVICES: usize = 100;
    let text = |i: usize, n: usize| {
        service(
            "storm",
            i,
            cluster_ip(i, 98),
            80,
            &endpoints(i, 10)[..n],
            8080,
        )
    };
    let api = KubeApi::new();
    for i in 0..SERVICES {
        api.apply_yaml(&text(i, 10));
    }
    let node = Node::new();
    let d = start(&node, &api, "routing = \"off\"\n");
    wait_synced(&d, 20);
    let change = |i: usize, n: usize| {
        let slice = yaml_objects(&text(i, n))
            .into_iter()
            .find(|o| o["kind"] == "EndpointSlice")
            .unwrap();
        api.apply(slice);
    };
    sluice_tests::soak::storm(&d, SERVICES, 98, Duration::from_secs(10), change).assert_kept_up();
}
