//! One request line on the daemon's API socket.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_daemon::server::decode(data);
});
