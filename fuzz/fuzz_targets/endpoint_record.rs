//! An endpoint record file as the daemon reads it at start (a corrupted,
//! truncated or newer one is an error, never a crash).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::endpoint::EndpointRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = EndpointRecord::from_bytes(data, std::path::Path::new("fuzz.json")) {
        let _ = r.socket_lb_opt_out();
        let _ = r.accel_opt_out();
        let _ = r.accel_opt_in();
    }
});
