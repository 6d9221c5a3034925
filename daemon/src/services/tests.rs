//! The translation, fed synthetic manifests.

use super::manifest;
use super::*;
use std::net::SocketAddr;

fn objects(yaml: &str) -> manifest::Objects {
    manifest::parse("test.yaml", yaml).expect("valid YAML")
}

fn ctx() -> Context {
    Context {
        node_name: Some("node-a".into()),
        service_cidrs: crate::config::Config::default().service_cidrs,
        ..Default::default()
    }
}

fn run(yaml: &str) -> Translation {
    run_after(yaml, &Translation::default())
}

/// Translates `yaml` with `previous` as what is programmed now.
fn run_after(yaml: &str, previous: &Translation) -> Translation {
    let o = objects(yaml);
    assert!(o.rejected.is_empty(), "{:?}", o.rejected);
    let mut c = ctx();
    c.previous_owners = std::sync::Arc::new(
        previous
            .frontends
            .iter()
            .map(|(k, f)| (*k, f.service.clone()))
            .collect(),
    );
    translate(&o.services, &o.slices, &c)
}

fn key(s: &str, p: Protocol) -> FrontendKey {
    FrontendKey {
        addr: s.parse().unwrap(),
        protocol: p,
    }
}

fn addrs(f: &Frontend) -> Vec<SocketAddr> {
    f.eligible()
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:10:96::10"]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {name: http, port: 80, targetPort: web-http}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v4
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.0.5]
  conditions: {ready: true}
  nodeName: node-a
- addresses: [10.244.1.6]
  conditions: {ready: true}
  nodeName: node-b
- addresses: [10.244.1.7]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-b
- addresses: [10.244.1.8]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports:
- {name: http, port: 8080}
endpoints:
- addresses: ["fd00:244::5"]
"#;

#[test]
fn dual_stack_service_with_named_ports() {
    let t = run(WEB);
    assert_eq!(t.frontends.len(), 4, "{:?}", t.frontends.keys());
    let http4 = &t.frontends[&key("10.96.0.10:80", Protocol::Tcp)];
    assert_eq!(http4.service.to_string(), "shop/web");
    assert_eq!(http4.port_name, "http");
    // The named targetPort resolves to the slice's port 8080.
    assert_eq!(
        addrs(http4),
        vec![
            "10.244.0.5:8080".parse().unwrap(),
            "10.244.1.6:8080".parse().unwrap()
        ]
    );
    assert_eq!(
        http4.backends.len(),
        4,
        "all backends listed with their state"
    );
    let state = |a: &str| {
        http4
            .backends
            .iter()
            .find(|b| b.addr == a.parse().unwrap())
            .unwrap()
            .state
    };
    assert_eq!(state("10.244.1.7:8080"), BackendState::ServingTerminating);
    assert_eq!(state("10.244.1.8:8080"), BackendState::NotReady);
    assert!(http4.backends[0].local && !http4.backends[1].local);

    let dns = &t.frontends[&key("10.96.0.10:53", Protocol::Udp)];
    assert_eq!(addrs(dns).len(), 2);
    assert!(addrs(dns).iter().all(|a| a.port() == 5353));

    let http6 = &t.frontends[&key("[fd00:10:96::10]:80", Protocol::Tcp)];
    assert_eq!(addrs(http6), vec!["[fd00:244::5]:8080".parse().unwrap()]);
    assert!(
        !t.frontends
            .contains_key(&key("[fd00:10:96::10]:53", Protocol::Tcp)),
        "53 is UDP only"
    );
    // A v6 frontend with no v6 backend for that port exists, and refuses.
    assert!(addrs(&t.frontends[&key("[fd00:10:96::10]:53", Protocol::Udp)]).is_empty());
}

#[test]
fn terminating_backends_only_when_nothing_is_ready() {
    let yaml = WEB
        .replace(
            "conditions: {ready: true}\n  nodeName: node-a",
            "conditions: {ready: false}\n  nodeName: node-a",
        )
        .replace(
            "conditions: {ready: true}\n  nodeName: node-b",
            "conditions: {ready: false, serving: false, terminating: true}\n  nodeName: node-b",
        );
    let t = run(&yaml);
    let f = &t.frontends[&key("10.96.0.10:80", Protocol::Tcp)];
    assert_eq!(
        addrs(f),
        vec!["10.244.1.7:8080".parse().unwrap()],
        "the serving-terminating fallback"
    );
}

#[test]
fn affinity_policy_and_selection() {
    let yaml = WEB.replace(
        "spec:\n  clusterIP: 10.96.0.10",
        "spec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 30}}\n  internalTrafficPolicy: Local\n  clusterIP: 10.96.0.10",
    )
    .replace("metadata: {name: web, namespace: shop}", "metadata: {name: web, namespace: shop, annotations: {sluice.dev/load-balancing: maglev}}");
    let t = run(&yaml);
    let f = &t.frontends[&key("10.96.0.10:80", Protocol::Tcp)];
    assert_eq!(f.affinity_timeout, Some(30));
    assert!(f.internal_local);
    assert_eq!(f.selection, Selection::Maglev);
    assert_eq!(
        addrs(f),
        vec!["10.244.0.5:8080".parse().unwrap()],
        "only this node's backend"
    );

    let plain = run(WEB);
    let f = &plain.frontends[&key("10.96.0.10:80", Protocol::Tcp)];
    assert_eq!((f.affinity_timeout, f.selection), (None, Selection::Random));
    let default_timeout = WEB.replace(
        "spec:\n  clusterIP",
        "spec:\n  sessionAffinity: ClientIP\n  clusterIP",
    );
    let t = run(&default_timeout);
    assert_eq!(
        t.frontends[&key("10.96.0.10:80", Protocol::Tcp)].affinity_timeout,
        Some(10800)
    );
}

#[test]
fn a_service_with_no_slices_has_frontends_that_refuse() {
    let only_service = WEB.split("---").next().unwrap();
    let t = run(only_service);
    assert_eq!(t.frontends.len(), 4);
    assert!(t.frontends.values().all(|f| f.eligible().is_empty()));
}

#[test]
fn headless_and_external_name_are_not_frontends() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: headless-1, labels: {kubernetes.io/service-name: headless}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}]
"#);
    assert!(t.frontends.is_empty());
    assert!(t.rejected.is_empty(), "{:?}", t.rejected);
}

/// Each bad object is rejected with its reason; the good ones around it
/// are still translated.
#[test]
fn bad_objects_are_rejected_one_by_one() {
    let good = WEB;
    let cases: &[(&str, &str)] = &[
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}", "not an IP address"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 0}]}", "out of range"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 70000}]}", "out of range"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 80, protocol: ICMP}]}", "unknown protocol"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 80, protocol: SCTP}]}", "SCTP"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, ports: [{name: x, port: 80}, {name: y, port: 80}]}", "listed twice"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 80}, {port: 81}]}", "must be named"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}", "out of range 1-86400"),
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.1.1, internalTrafficPolicy: Nearby, ports: [{port: 80}]}", "internalTrafficPolicy"),
        ("metadata: {name: a, annotations: {sluice.dev/load-balancing: roundrobin}}\nspec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}", "not random or maglev"),
        // Programmed first, so it keeps the frontend though "default/a"
        // sorts before "shop/web".
        ("metadata: {name: a}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}", "already belongs to service shop/web"),
        ("metadata: {name: a}\nspec: {ports: [{port: 80}]}", "no clusterIP"),
    ];
    let programmed = run(good);
    for (svc, needle) in cases {
        let yaml = format!("{good}\n---\napiVersion: v1\nkind: Service\n{svc}\n");
        let t = run_after(&yaml, &programmed);
        assert_eq!(t.rejected.len(), 1, "{svc}: {:?}", t.rejected);
        assert!(
            t.rejected[0].reason.contains(needle),
            "{svc}: {}",
            t.rejected[0]
        );
        assert!(
            t.rejected[0].object.starts_with("Service default/a"),
            "{}",
            t.rejected[0]
        );
        assert_eq!(t.frontends.len(), 4, "the good service is untouched");
    }
    let slices: &[(&str, &str)] = &[
        ("metadata: {name: s, labels: {kubernetes.io/service-name: nope}}\naddressType: IPv4\nendpoints: []", "does not exist"),
        ("metadata: {name: s}\naddressType: IPv4\nendpoints: []", "label kubernetes.io/service-name"),
        ("metadata: {name: s, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.999]}]", "not an IP address"),
        ("metadata: {name: s, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [\"fd00::1\"]}]", "not of addressType"),
        ("metadata: {name: s, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 0}]\nendpoints: []", "out of range"),
    ];
    for (sl, needle) in slices {
        let yaml =
            format!("{good}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n{sl}\n");
        let t = run(&yaml);
        assert_eq!(t.rejected.len(), 1, "{sl}: {:?}", t.rejected);
        assert!(
            t.rejected[0].reason.contains(needle),
            "{sl}: {}",
            t.rejected[0]
        );
        assert_eq!(
            addrs(&t.frontends[&key("10.96.0.10:80", Protocol::Tcp)]).len(),
            2,
            "the good slice still counts"
        );
    }
}

#[test]
fn manifests_reject_malformed_documents_and_whole_broken_files() {
    // A document of the right kind whose fields have the wrong type.
    let o = manifest::parse(
        "f.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: eighty}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    )
    .unwrap();
    assert_eq!(o.rejected.len(), 1);
    assert!(
        o.rejected[0].object.contains("document 1 (Service x)"),
        "{}",
        o.rejected[0]
    );
    assert!(o.services.is_empty() && o.slices.is_empty());
    // A half-written file is not YAML at all: the file is refused whole.
    let e = manifest::parse(
        "g.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
    )
    .unwrap_err();
    assert!(e.contains("g.yaml"), "{e}");
    // Lists are unpacked; the wrong apiVersion is named.
    let o = manifest::parse(
        "h.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 10.96.9.9, ports: [{port: 1}]}}\n- {apiVersion: discovery.k8s.io/v1beta1, kind: EndpointSlice, metadata: {name: b}, addressType: IPv4, endpoints: []}\n",
    )
    .unwrap();
    assert_eq!(o.services.len(), 1);
    assert_eq!(o.rejected.len(), 1);
    assert!(
        o.rejected[0].reason.contains("discovery.k8s.io/v1"),
        "{}",
        o.rejected[0]
    );
}

#[test]
fn same_objects_in_any_order_give_the_same_translation() {
    let o = objects(WEB);
    let a = translate(&o.services, &o.slices, &ctx());
    let mut slices = o.slices.clone();
    slices.reverse();
    let b = translate(&o.services, &slices, &ctx());
    assert_eq!(a.frontends.len(), 4);
    assert_eq!(a, b);
}

#[test]
fn the_same_address_in_two_slices_keeps_its_best_state() {
    let yaml = format!(
        "{WEB}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-v4-new, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [10.244.1.8], conditions: {{ready: true}}}}]\n"
    );
    let t = run(&yaml);
    let f = &t.frontends[&key("10.96.0.10:80", Protocol::Tcp)];
    assert!(addrs(f).contains(&"10.244.1.8:8080".parse().unwrap()));
    assert_eq!(f.backends.len(), 4);
}

/// A ClusterIP outside the service ranges would capture traffic that is
/// not a service's (the metadata server, the node's resolver, the API
/// server): refused, with the ranges named.
#[test]
fn frontends_only_from_the_service_ranges() {
    for ip in [
        "169.254.169.254",
        "127.0.0.53",
        "10.0.0.1",
        "192.168.1.10",
        "fd00:96::10",
    ] {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {{clusterIP: \"{ip}\", ports: [{{port: 53, protocol: UDP}}]}}\n"
        );
        let t = run(&yaml);
        assert!(t.frontends.is_empty(), "{ip}");
        assert_eq!(t.rejected.len(), 1, "{ip}");
        let r = &t.rejected[0].reason;
        assert!(
            r.contains("outside the service ranges (10.96.0.0/12, fd00:10:96::/112)"),
            "{ip}: {r}"
        );
    }
    // The edges of the default ranges are in.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIPs: [10.111.255.254, \"fd00:10:96::ffff\"], ports: [{port: 80}]}\n";
    assert_eq!(run(yaml).frontends.len(), 2);
    // No ranges configured: no frontend at all.
    let o = objects(WEB);
    let t = translate(&o.services, &o.slices, &Context::default());
    assert!(t.frontends.is_empty());
    assert_eq!(t.rejected.len(), 1, "{:?}", t.rejected);
    assert!(
        t.rejected[0].reason.contains("none configured"),
        "{:?}",
        t.rejected
    );
}

/// Backends the API server would refuse (loopback, link-local, a service
/// address) are left out one by one, each with its reason; the slice's
/// other endpoints are used.
#[test]
fn backends_on_loopback_link_local_or_service_addresses_are_left_out() {
    let bad = [
        "127.0.0.1",
        "169.254.169.254",
        "10.96.0.99",
        "0.0.0.0",
        "224.0.0.5",
    ];
    let endpoints: String = bad
        .iter()
        .map(|a| format!("- addresses: [{a}]\n"))
        .collect();
    let yaml = format!(
        "{WEB}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-bad, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}- addresses: [10.244.2.2]\n"
    );
    let t = run(&yaml);
    let f = &t.frontends[&key("10.96.0.10:80", Protocol::Tcp)];
    assert!(addrs(f).contains(&"10.244.2.2:8080".parse().unwrap()));
    for a in bad {
        assert!(
            !f.backends.iter().any(|b| b.addr.ip().to_string() == a),
            "{a} is not a backend"
        );
    }
    let reasons: Vec<&str> = t.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons.len(), bad.len(), "{reasons:?}");
    for (needle, a) in [
        ("is loopback", "127.0.0.1"),
        ("is link-local", "169.254.169.254"),
        ("in the service range 10.96.0.0/12", "10.96.0.99"),
        ("is unspecified", "0.0.0.0"),
        ("is multicast", "224.0.0.5"),
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(a) && r.contains(needle)),
            "{a} {needle}: {reasons:?}"
        );
    }
    let v6 = format!(
        "{WEB}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-bad6, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv6\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [\"::1\", \"fe80::1\", \"fd00:10:96::7\", \"::ffff:10.244.0.9\"]\n"
    );
    let t = run(&v6);
    let f = &t.frontends[&key("[fd00:10:96::10]:80", Protocol::Tcp)];
    assert_eq!(addrs(f), vec!["[fd00:244::5]:8080".parse().unwrap()]);
    assert_eq!(t.rejected.len(), 4, "{:?}", t.rejected);
}

/// An unset `serving` reads as true, as kube-proxy reads it: a
/// terminating endpoint that does not say it stopped serving is the
/// terminating fallback when nothing is ready.
#[test]
fn unset_serving_is_serving() {
    let yaml = WEB
        .replace(
            "conditions: {ready: true}\n  nodeName: node-a",
            "conditions: {ready: false}\n  nodeName: node-a",
        )
        .replace(
            "conditions: {ready: true}\n  nodeName: node-b",
            "conditions: {ready: false, terminating: true}\n  nodeName: node-b",
        );
    let t = run(&yaml);
    let f = &t.frontends[&key("10.96.0.10:80", Protocol::Tcp)];
    let b = f
        .backends
        .iter()
        .find(|b| b.addr == "10.244.1.6:8080".parse().unwrap())
        .unwrap();
    assert_eq!(b.state, BackendState::ServingTerminating);
    assert!(addrs(f).contains(&"10.244.1.6:8080".parse().unwrap()));
}

/// An SCTP port is left out on its own; the service's TCP and UDP ports
/// are programmed. A slice's SCTP port is passed over, not the slice.
#[test]
fn an_sctp_port_is_refused_alone() {
    let yaml = WEB
        .replace(
            "  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}",
            "  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n  - {name: sig, port: 3868, protocol: SCTP}",
        )
        .replace(
            "- {name: dns, port: 5353, protocol: UDP}\nendpoints:",
            "- {name: dns, port: 5353, protocol: UDP}\n- {name: sig, port: 3868, protocol: SCTP}\nendpoints:",
        );
    let t = run(&yaml);
    assert_eq!(t.frontends.len(), 4, "{:?}", t.frontends.keys());
    assert_eq!(
        addrs(&t.frontends[&key("10.96.0.10:80", Protocol::Tcp)]).len(),
        2
    );
    assert_eq!(t.rejected.len(), 1, "{:?}", t.rejected);
    assert!(t.rejected[0].reason.contains("port 3868/SCTP left out"));
}

/// The node names endpoints carry are collected, so a daemon whose name
/// matches none of them can say so.
#[test]
fn node_names_and_local_services_are_counted() {
    let t = run(WEB);
    assert_eq!(
        t.node_names.iter().map(String::as_str).collect::<Vec<_>>(),
        ["node-a", "node-b"]
    );
    assert_eq!(t.local_policy_services, 0);
    let local = WEB.replace(
        "spec:\n  clusterIP: 10.96.0.10",
        "spec:\n  internalTrafficPolicy: Local\n  clusterIP: 10.96.0.10",
    );
    assert_eq!(run(&local).local_policy_services, 1);
}
