//! The network config on the plugin's stdin: parsed, then read as the
//! plugin's own settings and as sluice-ipam's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_common::cni::NetConf;

fuzz_target!(|data: &[u8]| {
    if let Ok((conf, _version)) = NetConf::parse(data) {
        let _ = sluice_cni::config::PluginConf::from_netconf(&conf);
        let _ = sluice_ipam::IpamConfig::from_netconf(&conf);
    }
});
