//! The plugin's environment (`CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`), one `KEY=value` per
//! line, and `CNI_ARGS` on its own.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::cni::{CniArgs, Env};
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let _ = Env::from_lookup(|k| vars.get(k).map(|v| v.to_string()));
    let _ = CniArgs::parse(text);
});
