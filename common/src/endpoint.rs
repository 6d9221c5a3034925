//! The endpoint record: one JSON file per pod interface under
//! `<stateDir>/endpoints/`, written by the plugin (temp-then-rename) before it
//! tells the daemon. The daemon treats these files as the truth about which
//! pods exist on the node.

use crate::fsutil;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Bumped when a field changes meaning; readers reject newer records.
/// Adding an optional field does not bump it: older readers ignore it.
pub const RECORD_VERSION: u32 = 1;

/// The key under which CRI runtimes (containerd, CRI-O) pass the pod's
/// annotations in `runtimeConfig`, to plugins whose conflist entry declares
/// the capability of the same name.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// The pod annotation that opts a pod out of the socket-level service load
/// balancing: exactly `"false"` opts out; any other value, or none, keeps it.
pub const SOCKET_LB_ANNOTATION: &str = "sluice.dev/socket-lb";
/// `"false"` keeps the pod's TCP connections off the same-node shortcut
/// (sockmap): every byte goes through the TCP stack. `"true"` opts the pod
/// in where the node accelerates only pods that opted in (a kernel without
/// the acceleration's guards, docs/sockmap.md).
pub const ACCEL_ANNOTATION: &str = "sluice.dev/accel";

/// The pod's Kubernetes identity, from `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_container_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub version: u32,
    /// The CNI network name.
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// Path of the pod's network namespace as the runtime gave it.
    pub netns: String,
    pub pod: PodIdentity,
    /// The pod's addresses, as host routes (/32, /128).
    pub addresses: Vec<IpNetwork>,
    pub gateways: Vec<IpAddr>,
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    pub pod_mac: String,
    pub mtu: u32,
    /// `runtimeConfig` as the runtime sent it (port mappings, bandwidth, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<serde_json::Value>,
    /// `CNI_ARGS` keys we do not interpret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<(String, String)>,
    /// The pod's annotations, from `runtimeConfig`'s
    /// [`POD_ANNOTATIONS_CAPABILITY`] (string values only). Empty when the
    /// runtime sent none; absent in records written before this field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Seconds since the epoch when ADD wrote the record.
    pub created_unix: u64,
    /// The pod's netns cookie as ADD read it (the key of its endpoint map
    /// entry). Absent in records written before the plugin wrote the
    /// entry itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// How ADD protected the pod's edge before it returned. Absent in
    /// records written before the plugin attached the check itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeRecord>,
}

/// How the edge program sits on a pod's host-side veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeMode {
    /// A cls_bpf filter on the device's clsact (or ingress) qdisc.
    Clsact,
    /// A tcx link (Linux 6.6+), first on the device's ingress hook.
    Tcx,
}

impl std::fmt::Display for EdgeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EdgeMode::Clsact => "clsact",
            EdgeMode::Tcx => "tcx",
        })
    }
}

/// Which program guards the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeProgram {
    /// The daemon's pinned check: the pod's own traffic passes.
    Check,
    /// Drops everything the pod sends: no check was pinned yet (the daemon
    /// has never run on this node); the daemon replaces it when it starts.
    Isolate,
}

impl std::fmt::Display for EdgeProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EdgeProgram::Check => "check",
            EdgeProgram::Isolate => "isolate",
        })
    }
}

/// What ADD attached to the pod's host-side veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub mode: EdgeMode,
    pub program: EdgeProgram,
    /// The kernel's ID of the attached program.
    pub prog_id: u32,
    /// Milliseconds since the epoch when it was attached.
    pub since_unix_ms: u64,
}

/// Where records live under a state dir.
pub fn endpoints_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("endpoints")
}

/// Serialises the plugin's datapath writes against the daemon's sweep of
/// entries no record explains. ADD writes a pod's map entries before its
/// record, holding this lock shared from the first entry until the record
/// is on disk; the daemon holds it exclusively while it lists the records
/// and sweeps, so it never takes a new pod's entries for leftovers.
pub fn lock_datapath(state_dir: &Path, exclusive: bool) -> io::Result<std::fs::File> {
    crate::fsutil::private_dir(state_dir)?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    flock_datapath(state_dir, op)
}

/// [`lock_datapath`] exclusive without waiting: `None` while any ADD holds
/// it (the daemon's periodic sweep then waits for its next round rather
/// than hold up the ADDs queued behind it).
pub fn try_lock_datapath(state_dir: &Path) -> io::Result<Option<std::fs::File>> {
    match flock_datapath(state_dir, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens (creating) `<state_dir>/datapath.lock` and takes `op` on it.
fn flock_datapath(state_dir: &Path, op: libc::c_int) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(state_dir.join("datapath.lock"))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// `<container ID>:<ifname>.json`: neither part can contain ':', so the name
/// is unambiguous.
pub fn record_path(state_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    endpoints_dir(state_dir).join(format!("{container_id}:{ifname}.json"))
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot {op} endpoint record {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("endpoint record {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl RecordError {
    /// The record file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            RecordError::Io { path, .. } | RecordError::Invalid { path, .. } => path,
        }
    }
}

/// The pod annotations out of a `runtimeConfig`: the string values of its
/// [`POD_ANNOTATIONS_CAPABILITY`] object; anything else is ignored.
pub fn annotations_from_runtime_config(
    runtime_config: Option<&serde_json::Value>,
) -> BTreeMap<String, String> {
    runtime_config
        .and_then(|rc| rc.get(POD_ANNOTATIONS_CAPABILITY))
        .and_then(|a| a.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl EndpointRecord {
    /// True when the pod asked, with `sluice.dev/socket-lb: "false"`, that
    /// its connects to service addresses go out untranslated (a sidecar
    /// proxy in the pod then sees the service address).
    pub fn socket_lb_opt_out(&self) -> bool {
        self.annotations
            .get(SOCKET_LB_ANNOTATION)
            .is_some_and(|v| v == "false")
    }

    /// True when the pod asked, with `sluice.dev/accel: "false"`, that its
    /// TCP connections stay on the TCP stack.
    pub fn accel_opt_out(&self) -> bool {
        self.annotations
            .get(ACCEL_ANNOTATION)
            .is_some_and(|v| v == "false")
    }

    /// True when the pod vouched, with `sluice.dev/accel: "true"`, that
    /// its readers use recv/read only (no splice, MSG_WAITALL, SO_RCVLOWAT
    /// or urgent data): what a node without the guards requires.
    pub fn accel_opt_in(&self) -> bool {
        self.annotations
            .get(ACCEL_ANNOTATION)
            .is_some_and(|v| v == "true")
    }

    pub fn path(&self, state_dir: &Path) -> PathBuf {
        record_path(state_dir, &self.container_id, &self.ifname)
    }

    pub fn write(&self, state_dir: &Path) -> Result<PathBuf, RecordError> {
        let dir = endpoints_dir(state_dir);
        let path = self.path(state_dir);
        let io_err = |op, source| RecordError::Io {
            op,
            path: path.clone(),
            source,
        };
        fsutil::private_dir(&dir).map_err(|e| io_err("create the directory of", e))?;
        let data = serde_json::to_vec_pretty(self).expect("a record always serializes");
        fsutil::write_atomic(&path, &data).map_err(|e| io_err("write", e))?;
        Ok(path)
    }

    pub fn read(path: &Path) -> Result<Self, RecordError> {
        let data = std::fs::read(path).map_err(|source| RecordError::Io {
            op: "read",
            path: path.into(),
            source,
        })?;
        Self::from_bytes(&data, path)
    }

    /// A record from its file's bytes (`path` for the errors).
    pub fn from_bytes(data: &[u8], path: &Path) -> Result<Self, RecordError> {
        let rec: EndpointRecord =
            serde_json::from_slice(data).map_err(|e| RecordError::Invalid {
                path: path.into(),
                reason: e.to_string(),
            })?;
        if rec.version > RECORD_VERSION {
            return Err(RecordError::Invalid {
                path: path.into(),
                reason: format!(
                    "record version {} is newer than this binary's {RECORD_VERSION}",
                    rec.version
                ),
            });
        }
        Ok(rec)
    }

    /// Reads the record of one attachment, `None` if there is none.
    pub fn load(
        state_dir: &Path,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Self>, RecordError> {
        let path = record_path(state_dir, container_id, ifname);
        match Self::read(&path) {
            Ok(r) => Ok(Some(r)),
            Err(RecordError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes one attachment's record; a missing record is not an error.
    pub fn remove(state_dir: &Path, container_id: &str, ifname: &str) -> Result<bool, RecordError> {
        let path = record_path(state_dir, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            // A read-only filesystem refuses even to unlink what is not
            // there: a record that does not exist is removed already (a DEL
            // after a failed ADD succeeds).
            Err(e)
                if e.raw_os_error() == Some(libc::EROFS)
                    && matches!(path.try_exists(), Ok(false)) =>
            {
                Ok(false)
            }
            Err(source) => Err(RecordError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Every record under the state dir; unreadable ones are returned as
    /// errors beside the good ones so one bad file never hides the rest.
    pub fn list(state_dir: &Path) -> (Vec<Self>, Vec<RecordError>) {
        let dir = endpoints_dir(state_dir);
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (good, bad),
            Err(source) => {
                bad.push(RecordError::Io {
                    op: "list",
                    path: dir,
                    source,
                });
                return (good, bad);
            }
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if fsutil::is_temp_name(&name) || !name.ends_with(".json") {
                continue;
            }
            match Self::read(&e.path()) {
                Ok(r) => good.push(r),
                Err(err) => bad.push(err),
            }
        }
        good.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        (good, bad)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(cid: &str) -> EndpointRecord {
        EndpointRecord {
            version: RECORD_VERSION,
            network: "k8s-pod-network".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p".into(),
            pod: PodIdentity {
                namespace: Some("default".into()),
                name: Some("web".into()),
                uid: None,
                infra_container_id: None,
            },
            addresses: vec!["10.244.0.5/32".parse().unwrap()],
            gateways: vec!["10.244.0.1".parse().unwrap()],
            host_ifname: "sl0123456789a".into(),
            host_ifindex: 7,
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            mtu: 1500,
            runtime_config: None,
            extra_args: vec![],
            annotations: BTreeMap::new(),
            created_unix: 1,
            netns_cookie: Some(4096),
            edge: Some(EdgeRecord {
                mode: EdgeMode::Clsact,
                program: EdgeProgram::Check,
                prog_id: 42,
                since_unix_ms: 1_700_000_000_000,
            }),
        }
    }

    #[test]
    fn a_record_without_edge_or_cookie_still_reads() {
        let mut v = serde_json::to_value(sample("old")).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("edge");
        o.remove("netns_cookie");
        let r: EndpointRecord = serde_json::from_value(v).unwrap();
        assert_eq!(r.edge, None);
        assert_eq!(r.netns_cookie, None);
        let edge = serde_json::to_value(sample("new").edge).unwrap();
        assert_eq!(
            edge,
            serde_json::json!({"mode": "clsact", "program": "check", "prog_id": 42,
                               "since_unix_ms": 1_700_000_000_000u64})
        );
    }

    #[test]
    fn write_read_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let r = sample("abc");
        r.write(d.path()).unwrap();
        sample("abd").write(d.path()).unwrap();
        assert_eq!(
            EndpointRecord::load(d.path(), "abc", "eth0").unwrap(),
            Some(r)
        );
        std::fs::write(endpoints_dir(d.path()).join("broken.json"), b"{").unwrap();
        let (good, bad) = EndpointRecord::list(d.path());
        assert_eq!(good.len(), 2);
        assert_eq!(bad.len(), 1);
        assert!(EndpointRecord::remove(d.path(), "abc", "eth0").unwrap());
        assert!(!EndpointRecord::remove(d.path(), "abc", "eth0").unwrap());
        assert_eq!(EndpointRecord::load(d.path(), "abc", "eth0").unwrap(), None);
    }

    #[test]
    fn newer_records_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut r = sample("abc");
        r.version = RECORD_VERSION + 1;
        let p = r.write(d.path()).unwrap();
        assert!(matches!(
            EndpointRecord::read(&p),
            Err(RecordError::Invalid { .. })
        ));
    }

    #[test]
    fn a_record_without_annotations_reads_and_writes_none() {
        let mut v = serde_json::to_value(sample("abc")).unwrap();
        assert!(v.get("annotations").is_none(), "empty: not written");
        v.as_object_mut().unwrap().remove("annotations");
        let r: EndpointRecord = serde_json::from_value(v).unwrap();
        assert!(r.annotations.is_empty());
        assert!(!r.socket_lb_opt_out());
        // A version-1 record as written before the field existed.
        let old = r#"{"version":1,"network":"n","container_id":"c","ifname":"eth0",
            "netns":"/var/run/netns/p","pod":{},"addresses":["10.0.0.2/32"],
            "gateways":["10.0.0.1"],"host_ifname":"sl0","host_ifindex":3,
            "host_mac":"02:00:00:00:00:01","pod_mac":"02:00:00:00:00:02","mtu":1500,
            "created_unix":1}"#;
        let r: EndpointRecord = serde_json::from_str(old).unwrap();
        assert!(r.annotations.is_empty());
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(endpoints_dir(d.path())).unwrap();
        let p = r.path(d.path());
        std::fs::write(&p, old).unwrap();
        assert_eq!(EndpointRecord::read(&p).unwrap(), r);
    }

    #[test]
    fn annotations_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut r = sample("abc");
        r.annotations
            .insert(SOCKET_LB_ANNOTATION.into(), "false".into());
        let p = r.write(d.path()).unwrap();
        assert_eq!(EndpointRecord::read(&p).unwrap(), r);
    }

    #[test]
    fn socket_lb_opt_out_truth_table() {
        let with = |v: Option<&str>| {
            let mut r = sample("abc");
            r.annotations.insert("other".into(), "false".into());
            if let Some(v) = v {
                r.annotations.insert(SOCKET_LB_ANNOTATION.into(), v.into());
            }
            r.socket_lb_opt_out()
        };
        assert!(with(Some("false")));
        for v in [
            None,
            Some("true"),
            Some(""),
            Some("False"),
            Some("no"),
            Some("0"),
            Some(" false"),
        ] {
            assert!(!with(v), "{v:?} keeps the socket LB");
        }
    }

    #[test]
    fn annotations_from_runtime_config_keeps_string_values_only() {
        let rc = serde_json::json!({
            "portMappings": [],
            "io.kubernetes.cri.pod-annotations": {
                "sluice.dev/socket-lb": "false",
                "a": "b",
                "n": 1,
                "o": {"x": "y"},
                "z": null
            }
        });
        let a = annotations_from_runtime_config(Some(&rc));
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            vec![
                ("a".to_string(), "b".to_string()),
                ("sluice.dev/socket-lb".to_string(), "false".to_string())
            ]
        );
        assert!(annotations_from_runtime_config(None).is_empty());
        assert!(annotations_from_runtime_config(Some(&serde_json::json!({}))).is_empty());
        assert!(annotations_from_runtime_config(Some(&serde_json::json!({
            "io.kubernetes.cri.pod-annotations": ["sluice.dev/socket-lb"]
        })))
        .is_empty());
        assert!(annotations_from_runtime_config(Some(&serde_json::json!("x"))).is_empty());
    }
}
