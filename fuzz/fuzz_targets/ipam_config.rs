//! The `ipam` object of a network config (ranges, routes, data dir).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(c) = sluice_ipam::IpamConfig::parse(&v) {
        for set in &c.range_sets {
            let _ = set.describe();
        }
    }
    let _ = sluice_ipam::IpamConfig::data_dir_of(&v);
});
