//! A result (a delegated IPAM plugin's, or a previous plugin's `prevResult`):
//! whatever reads as one encodes and reads back the same, in every version
//! that carries all its fields.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::cni::{CniResult, CniVersion};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(r) = CniResult::from_json(&v) else {
        return;
    };
    for version in ["1.0.0", "1.1.0"] {
        let version = CniVersion::parse(version).unwrap();
        let encoded = r.to_json(version);
        let back = CniResult::from_json(&encoded).expect("an encoded result reads back");
        assert_eq!(
            back.to_json(version),
            encoded,
            "round trip changed the result"
        );
    }
});
