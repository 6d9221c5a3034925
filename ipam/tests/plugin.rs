//! The `sluice-ipam` binary as a runtime drives it: CNI_* variables, the
//! config on stdin, the answer on stdout and the exit code.

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

struct Reply {
    code: i32,
    stdout: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts the spec's error object with `code` and a non-zero exit.
    fn error(&self, code: u32) -> Value {
        assert_ne!(self.code, 0, "expected failure, got {:?}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
        v
    }

    fn silent(&self) {
        assert_eq!(self.code, 0, "{:?}", self.stdout);
        assert!(self.stdout.trim().is_empty(), "{:?}", self.stdout);
    }
}

fn plugin(vars: &[(&str, &str)], stdin: &[u8]) -> Reply {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-ipam"));
    cmd.env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Reply {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
    }
}

fn cni(command: &str, cid: &str, stdin: &[u8]) -> Reply {
    plugin(
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_NETNS", "/var/run/netns/test"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        stdin,
    )
}

fn conf(data_dir: &Path, version: &str, extra: Value) -> Vec<u8> {
    let mut c = json!({
        "cniVersion": version,
        "name": "itest",
        "type": "bridge",
        "ipam": {
            "type": "sluice-ipam",
            "ranges": [[{"subnet": "10.250.0.0/30"}], [{"subnet": "fd00:250::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir,
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

#[test]
fn add_check_status_gc_del() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), "1.1.0", json!({}));

    let add = cni("ADD", "pod1", &c);
    assert_eq!(add.code, 0, "{}", add.stdout);
    let res = add.json();
    assert_eq!(res["cniVersion"], "1.1.0");
    assert_eq!(res["ips"][0]["address"], "10.250.0.2/30");
    assert_eq!(res["ips"][0]["gateway"], "10.250.0.1");
    assert_eq!(res["ips"][1]["address"], "fd00:250::2/64");
    assert_eq!(res["routes"][0]["dst"], "0.0.0.0/0");
    assert!(d.path().join("itest/10.250.0.2").exists());

    cni(
        "CHECK",
        "pod1",
        &conf(d.path(), "1.1.0", json!({"prevResult": res})),
    )
    .silent();
    cni("ADD", "pod1", &c).error(101);

    // The /30 has one address besides its gateway: now full.
    cni("ADD", "pod2", &c).error(100);
    let status = cni("STATUS", "", &c).error(50);
    assert!(
        status["msg"].as_str().unwrap().contains("exhausted"),
        "{status}"
    );

    // GC without the list does nothing; with it, releases pod1.
    cni("GC", "", &c).silent();
    cni("STATUS", "", &c).error(50);
    let gc = conf(d.path(), "1.1.0", json!({"cni.dev/valid-attachments": []}));
    cni("GC", "", &gc).silent();
    cni("STATUS", "", &c).silent();
    cni("CHECK", "pod1", &c).error(104);

    let add = cni("ADD", "pod2", &c);
    assert_eq!(add.code, 0, "{}", add.stdout);
    cni("DEL", "pod2", &c).silent();
    cni("DEL", "pod2", &c).silent();
    assert!(!d.path().join("itest/10.250.0.2").exists());
}

#[test]
fn version_with_and_without_config() {
    let r = plugin(&[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!(r.code, 0);
    let v = r.json();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let r = plugin(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(r.json()["cniVersion"], "0.4.0");
}

#[test]
fn old_versions_reject_new_commands() {
    let d = tempfile::tempdir().unwrap();
    cni("CHECK", "pod1", &conf(d.path(), "0.3.1", json!({}))).error(1);
    let v = cni("STATUS", "", &conf(d.path(), "1.0.0", json!({}))).error(1);
    assert_eq!(
        v["cniVersion"], "1.0.0",
        "errors speak the config's version"
    );
    cni("GC", "", &conf(d.path(), "1.0.0", json!({}))).error(1);
    // A pre-1.0 ADD result carries IP versions.
    let add = cni("ADD", "pod1", &conf(d.path(), "0.3.1", json!({})));
    assert_eq!(add.json()["ips"][0]["version"], "4");
}

#[test]
fn bad_input_is_an_error_object_on_stdout() {
    let d = tempfile::tempdir().unwrap();
    let v = cni("ADD", "pod1", b"{not json").error(6);
    assert_eq!(v["cniVersion"], "1.1.0");
    plugin(&[], &conf(d.path(), "1.1.0", json!({}))).error(4);
    plugin(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ],
        &conf(d.path(), "1.1.0", json!({})),
    )
    .error(4);
    let mut bad: Value = serde_json::from_slice(&conf(d.path(), "1.0.0", json!({}))).unwrap();
    bad["ipam"]["ranges"] = json!([[{"subnet": "10.250.0.5/24"}]]);
    let v = cni("ADD", "pod1", &serde_json::to_vec(&bad).unwrap()).error(7);
    assert!(v["msg"].as_str().unwrap().contains("10.250.0.5/24"), "{v}");
    assert!(v["details"].as_str().unwrap().contains("10.250.0.0"), "{v}");
    assert_eq!(v["cniVersion"], "1.0.0");
    cni(
        "ADD",
        "pod1",
        br#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#,
    )
    .error(1);
}

#[test]
fn unwritable_data_dir_is_code_5() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let v = cni("ADD", "pod1", &conf(&file, "1.1.0", json!({}))).error(5);
    assert!(
        v["msg"].as_str().unwrap().contains("not-a-dir/itest"),
        "{v}"
    );
    assert!(v["details"].as_str().unwrap().contains("dataDir"), "{v}");
}
