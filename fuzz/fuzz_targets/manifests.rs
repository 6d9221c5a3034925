//! A manifest file of the services directory: parsed, Node objects read,
//! and the whole translated (with the ranges a cluster uses).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_daemon::services::translate::{translate, Context};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(o) = sluice_daemon::services::manifest::parse("fuzz.yaml", text) else {
        return;
    };
    for n in &o.nodes {
        let _ = sluice_daemon::nodes::parse(n);
    }
    let ctx = Context {
        node_name: Some("node-a".into()),
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap(),
        ],
        nodeport_range: Some((30000, 32767)),
        external_ip_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
        ..Default::default()
    };
    let t = translate(&o.services, &o.slices, &ctx);
    for f in t.frontends.values() {
        let _ = f.eligible();
    }
});
