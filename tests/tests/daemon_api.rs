//! Bad input on the daemon's API: each gets a clear error, the daemon keeps
//! serving, and what it already holds stays.

use sluice_common::api::Request;
use sluice_common::endpoint::EndpointRecord;
use sluice_tests::daemon::Daemon;
use sluice_tests::{ranges, require_root, Node, Pod};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

/// Sends raw bytes, returns the first response line parsed.
fn raw(d: &Daemon, bytes: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(d.socket()).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // A daemon that closes early (oversized input) may reset the write.
    let _ = s.write_all(bytes);
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .expect("a response line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("response {line:?} is not JSON: {e}"))
}

fn refused(v: &serde_json::Value, needle: &str) {
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["version"], 1, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
}

#[test]
fn bad_requests_get_clear_errors_and_nothing_is_lost() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let conf = node.conf("1.0.0", ranges("v4"));
    let p = Pod::add(&node, &conf);
    let before = d.pinned_endpoints();

    refused(&raw(&d, b"{not json\n"), "not JSON");
    refused(&raw(&d, b"[1,2,3]\n"), "version");
    refused(&raw(&d, b"{\"op\":\"status\"}\n"), "no numeric \"version\"");
    refused(
        &raw(&d, b"{\"version\":2,\"op\":\"status\"}\n"),
        "unsupported API version 2",
    );
    refused(
        &raw(&d, b"{\"version\":1,\"op\":\"explode\"}\n"),
        "unknown variant",
    );
    refused(
        &raw(&d, b"{\"version\":1,\"op\":\"register\"}\n"),
        "missing field",
    );
    refused(
        &raw(
            &d,
            b"{\"version\":1,\"op\":\"unregister\",\"container_id\":7}\n",
        ),
        "invalid type",
    );
    // Larger than the 1 MiB limit, without a newline in sight.
    let mut big = b"{\"version\":1,\"op\":\"status\",\"pad\":\"".to_vec();
    big.resize(2 << 20, b'a');
    refused(&raw(&d, &big), "larger than");

    // Register for a record that is not on disk.
    let mut rec = EndpointRecord::load(&node.state_dir(), &p.cid, "eth0")
        .unwrap()
        .unwrap();
    rec.container_id = "never-added".into();
    let e = d
        .call(Request::Register {
            endpoint: Box::new(rec.clone()),
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("no endpoint record"), "{e}");

    // A record whose netns path is a plain file.
    let not_ns = node.dir.path().join("not-a-netns");
    std::fs::write(&not_ns, b"").unwrap();
    rec.container_id = "bogus-netns".into();
    rec.netns = not_ns.display().to_string();
    rec.write(&node.state_dir()).unwrap();
    let e = d
        .call(Request::Register {
            endpoint: Box::new(rec.clone()),
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a network namespace"), "{e}");
    EndpointRecord::remove(&node.state_dir(), "bogus-netns", "eth0").unwrap();

    // Several requests on one connection still work after all that.
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"{\"version\":1,\"op\":\"status\"}\n{\"version\":1,\"op\":\"list_endpoints\"}\n")
        .unwrap();
    let mut r = BufReader::new(&s);
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":true"), "{line}");
    }

    assert_eq!(d.endpoints().len(), 1, "the real pod is still registered");
    assert_eq!(
        d.pinned_endpoints(),
        before,
        "the endpoint map is unchanged"
    );
    assert!(p.ns.ping(p.result["ips"][0]["gateway"].as_str().unwrap()));
}

#[test]
fn socket_is_private_and_non_root_peers_are_refused() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let d = Daemon::start(&node);
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "API socket mode");

    // Even if someone loosens the permissions, SO_PEERCRED stops a
    // non-root peer.
    for dir in [node.dir.path().to_path_buf(), node.state_dir()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    use std::os::unix::process::CommandExt;
    let out = Command::new("socat")
        .args([
            "-t",
            "2",
            "-",
            &format!("UNIX-CONNECT:{}", d.socket().display()),
        ])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"{\"version\":1,\"op\":\"status\"}\n")?;
            c.wait_with_output()
        })
        .expect("run socat as nobody (installed by .ci/setup)");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("\"ok\":false"),
        "{reply} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(reply.contains("peer uid 65534"), "{reply}");
    // Root still gets served.
    assert_eq!(d.status()["ready"], true);
}
