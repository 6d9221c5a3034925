//! The `sluice` plugin's own keys in the network configuration.

use serde::Deserialize;
use sluice_common::cni::{CniError, NetConf};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_STATE_DIR: &str = "/var/run/sluice";
pub const DEFAULT_DAEMON_TIMEOUT_MS: u64 = 250;
/// The smallest MTU IPv6 allows; below it a dual-stack pod cannot work.
pub const MIN_MTU: u32 = 1280;
pub const MAX_MTU: u32 = 65535;
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    mtu: Option<u32>,
    state_dir: Option<PathBuf>,
    daemon_socket: Option<PathBuf>,
    daemon_timeout_ms: Option<u64>,
}

/// Validated plugin configuration.
#[derive(Debug, Clone)]
pub struct PluginConf {
    /// `None`: the MTU of the node's default-route device, else 1500.
    pub mtu: Option<u32>,
    pub state_dir: PathBuf,
    pub daemon_socket: PathBuf,
    pub daemon_timeout: Duration,
}

impl PluginConf {
    pub fn from_netconf(conf: &NetConf) -> Result<Self, CniError> {
        let raw: Raw = conf.plugin_config()?;
        if let Some(mtu) = raw.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(CniError::config(
                    format!("network \"{}\": mtu {mtu} is out of range", conf.name),
                    format!(
                        "set \"mtu\" between {MIN_MTU} and {MAX_MTU}, or leave it out to use \
                         the MTU of the node's default-route device"
                    ),
                ));
            }
        }
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(CniError::config(
                format!(
                    "network \"{}\": stateDir {:?} is not an absolute path",
                    conf.name, state_dir
                ),
                "set \"stateDir\" to an absolute path such as /var/run/sluice",
            ));
        }
        let daemon_socket = raw
            .daemon_socket
            .unwrap_or_else(|| state_dir.join("sluiced.sock"));
        let timeout = raw.daemon_timeout_ms.unwrap_or(DEFAULT_DAEMON_TIMEOUT_MS);
        if timeout > 10_000 {
            return Err(CniError::config(
                format!(
                    "network \"{}\": daemonTimeoutMs {timeout} is too long",
                    conf.name
                ),
                "the daemon is told of pods on a best-effort basis; keep daemonTimeoutMs \
                 at or below 10000 so a stuck daemon cannot stall pod start-up",
            ));
        }
        Ok(Self {
            mtu: raw.mtu,
            state_dir,
            daemon_socket,
            daemon_timeout: Duration::from_millis(timeout),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::cni::codes;

    fn conf(json: &str) -> Result<PluginConf, CniError> {
        let (c, _) = NetConf::parse(json.as_bytes()).unwrap();
        PluginConf::from_netconf(&c)
    }

    #[test]
    fn defaults() {
        let c = conf(r#"{"cniVersion":"1.0.0","name":"n","type":"sluice"}"#).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/run/sluice"));
        assert_eq!(
            c.daemon_socket,
            PathBuf::from("/var/run/sluice/sluiced.sock")
        );
        assert_eq!(c.mtu, None);
        assert_eq!(c.daemon_timeout, Duration::from_millis(250));
    }

    #[test]
    fn rejects_bad_values_with_code_7() {
        for bad in [
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","mtu":100}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","mtu":70000}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","mtu":"big"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","stateDir":"rel/dir"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","daemonTimeoutMs":999999}"#,
        ] {
            assert_eq!(conf(bad).unwrap_err().code, codes::INVALID_CONFIG, "{bad}");
        }
    }
}

#[cfg(test)]
mod shipped_conflist {
    use super::*;
    use sluice_common::cni::{CniVersion, NetConf};

    /// The conflist operators install must parse as libcni hands it over:
    /// each plugin entry with the list's cniVersion and name copied in.
    #[test]
    fn conf_conflist_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/10-sluice.conflist");
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["cniVersions"], serde_json::json!(["1.0.0", "1.1.0"]));
        for v in ["1.0.0", "1.1.0"] {
            let mut plugin = list["plugins"][0].clone();
            plugin["cniVersion"] = v.into();
            plugin["name"] = list["name"].clone();
            let (conf, version) = NetConf::parse(plugin.to_string().as_bytes()).unwrap();
            assert_eq!(version, CniVersion::parse(v).unwrap());
            assert_eq!(conf.plugin_type, "sluice");
            let pc = PluginConf::from_netconf(&conf).unwrap();
            assert_eq!(pc.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
            let ipam = sluice_ipam::IpamConfig::from_netconf(&conf).unwrap();
            assert_eq!(ipam.range_sets.len(), 2, "dual-stack by default");
        }
    }

    /// The entry asks CRI runtimes for the pod's annotations, and the config
    /// libcni then sends parses: libcni keeps `capabilities` in the entry
    /// as written and adds `runtimeConfig` with each declared capability
    /// the runtime supplied.
    #[test]
    fn conf_conflist_asks_for_pod_annotations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/10-sluice.conflist");
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut plugin = list["plugins"][0].clone();
        assert_eq!(
            plugin["capabilities"][sluice_common::endpoint::POD_ANNOTATIONS_CAPABILITY],
            true
        );
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        plugin["runtimeConfig"] = serde_json::json!({
            "io.kubernetes.cri.pod-annotations": {"sluice.dev/socket-lb": "false"}
        });
        let (conf, _) = NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        PluginConf::from_netconf(&conf).unwrap();
        let a =
            sluice_common::endpoint::annotations_from_runtime_config(conf.runtime_config.as_ref());
        assert_eq!(
            a.get("sluice.dev/socket-lb").map(String::as_str),
            Some("false")
        );
    }
}
