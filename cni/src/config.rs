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
/// Where sluiced pins the datapath (its `pin_path`); the plugin finds the
/// edge program and the maps it writes below it.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/sluice";

/// How the plugin attaches a pod's edge check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcAttach {
    /// A clsact filter (about 50 µs), except for a pod whose egress a
    /// chained `bandwidth` plugin will shape: it needs the device's
    /// ingress qdisc for itself, so that pod gets a tcx link (one RCU grace
    /// period, Linux 6.6+).
    Auto,
    Clsact,
    Tcx,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    mtu: Option<u32>,
    state_dir: Option<PathBuf>,
    daemon_socket: Option<PathBuf>,
    daemon_timeout_ms: Option<u64>,
    pin_path: Option<PathBuf>,
    tc_attach: Option<TcAttach>,
}

/// Validated plugin configuration.
#[derive(Debug, Clone)]
pub struct PluginConf {
    /// `None`: the MTU of the node's default-route device, else 1500.
    pub mtu: Option<u32>,
    pub state_dir: PathBuf,
    pub daemon_socket: PathBuf,
    pub daemon_timeout: Duration,
    pub pin_path: PathBuf,
    pub tc_attach: TcAttach,
}

impl PluginConf {
    /// The daemon's pinned objects, as this config names them.
    pub fn pins(&self) -> sluice_dataplane::pins::Pins {
        sluice_dataplane::pins::Pins::new(&self.pin_path)
    }

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
        let pin_path = raw
            .pin_path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH));
        if !pin_path.is_absolute() {
            return Err(CniError::config(
                format!(
                    "network \"{}\": pinPath {:?} is not an absolute path",
                    conf.name, pin_path
                ),
                "set \"pinPath\" to sluiced's pin_path, such as /sys/fs/bpf/sluice",
            ));
        }
        Ok(Self {
            mtu: raw.mtu,
            state_dir,
            daemon_socket,
            daemon_timeout: Duration::from_millis(timeout),
            pin_path,
            tc_attach: raw.tc_attach.unwrap_or(TcAttach::Auto),
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
        assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/sluice"));
        assert_eq!(c.tc_attach, TcAttach::Auto);
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","pinPath":"/sys/fs/bpf/x","tcAttach":"tcx"}"#,
        )
        .unwrap();
        assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(c.tc_attach, TcAttach::Tcx);
    }

    #[test]
    fn rejects_bad_values_with_code_7() {
        for bad in [
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","mtu":100}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","mtu":70000}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","mtu":"big"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","stateDir":"rel/dir"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","daemonTimeoutMs":999999}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","pinPath":"bpf/sluice"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","tcAttach":"xdp"}"#,
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
            // No ranges: every node allocates from its own Node object's
            // spec.podCIDRs (sluiced's node.json), so one conflist serves
            // the whole cluster.
            let ipam = sluice_ipam::config::ipam_object(&conf).unwrap();
            assert_eq!(ipam["type"], "sluice-ipam");
            assert!(ipam.get("ranges").is_none() && ipam.get("subnet").is_none());
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
