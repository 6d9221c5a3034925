//! An object from the Kubernetes API as the API source reads it (any JSON
//! the server sends for a Service, an EndpointSlice or a Node).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_daemon::services::api::{item, Kind};
use sluice_daemon::services::translate::Context;

fuzz_target!(|data: &[u8]| {
    let Ok(o) = serde_json::from_slice::<kube::api::DynamicObject>(data) else {
        return;
    };
    let ctx = Context {
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..Default::default()
    };
    for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
        let _ = item(kind, o.clone(), &ctx);
    }
});
