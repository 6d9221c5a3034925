//! Bad input: every case gets the spec's error JSON with the right code and
//! a message an operator can act on, exits non-zero, and leaves nothing.

use sluice_tests::*;
use std::path::PathBuf;

struct Case {
    name: &'static str,
    cmd: &'static str,
    cid: &'static str,
    netns: Netns,
    ifname: &'static str,
    conf: String,
    code: u64,
    /// A word the message or details must contain.
    hint: &'static str,
}

enum Netns {
    Pod,
    None,
    Path(PathBuf),
}

#[test]
fn bad_input_gets_the_right_error_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = Ns::new("p");
    let good = node.conf("1.0.0", ranges("dual"));
    let with = |from: &str, to: &str| {
        let c = good.replacen(from, to, 1);
        assert_ne!(c, good, "replacement {from:?} did not apply");
        c
    };
    let v4 = r#"[[{"subnet":"10.201.0.0/24"}]]"#;
    let plain_file = node.dir.path().join("a-file");
    std::fs::write(&plain_file, b"").unwrap();
    let exhausted = node.conf("1.0.0", r#"[[{"subnet":"10.209.0.0/30"}]]"#);
    // Fill the /30 (one allocatable address) with a real pod first.
    let filler = Pod::add(&node, &exhausted);

    let cases = vec![
        Case { name: "malformed JSON", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: "{\"cniVersion\":".into(), code: 6, hint: "JSON" },
        Case { name: "empty stdin", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: String::new(), code: 6, hint: "JSON" },
        Case { name: "JSON array", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: "[1]".into(), code: 6, hint: "object" },
        Case { name: "cniVersion of wrong type", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: with("\"cniVersion\":\"1.0.0\"", "\"cniVersion\":1"), code: 6, hint: "type" },
        Case { name: "unknown cniVersion", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: with("\"1.0.0\"", "\"9.9.9\""), code: 1, hint: "9.9.9" },
        Case { name: "old 0.2.0 cniVersion", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: with("\"1.0.0\"", "\"0.2.0\""), code: 1, hint: "0.2.0" },
        Case { name: "missing cniVersion", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: with("\"cniVersion\":\"1.0.0\",", ""), code: 1, hint: "cniVersion" },
        Case { name: "missing name", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: with("\"name\":\"testnet\",", ""), code: 7, hint: "name" },
        Case { name: "name with a slash", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: with("\"name\":\"testnet\"", "\"name\":\"../etc\""), code: 7, hint: "name" },
        Case { name: "unknown CNI_COMMAND", cmd: "FROB", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: good.clone(), code: 4, hint: "CNI_COMMAND" },
        Case { name: "empty CNI_COMMAND", cmd: "", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: good.clone(), code: 4, hint: "CNI_COMMAND" },
        Case { name: "missing CNI_CONTAINERID", cmd: "ADD", cid: "", netns: Netns::Pod, ifname: "eth0", conf: good.clone(), code: 4, hint: "CNI_CONTAINERID" },
        Case { name: "container ID with a space", cmd: "ADD", cid: "bad id", netns: Netns::Pod, ifname: "eth0", conf: good.clone(), code: 4, hint: "CNI_CONTAINERID" },
        Case { name: "missing CNI_NETNS on ADD", cmd: "ADD", cid: "c1", netns: Netns::None, ifname: "eth0", conf: good.clone(), code: 4, hint: "CNI_NETNS" },
        Case { name: "relative CNI_NETNS", cmd: "ADD", cid: "c1", netns: Netns::Path("var/run/netns/x".into()), ifname: "eth0", conf: good.clone(), code: 4, hint: "absolute" },
        Case { name: "netns that does not exist", cmd: "ADD", cid: "c1", netns: Netns::Path("/var/run/netns/sluice-no-such-ns".into()), ifname: "eth0", conf: good.clone(), code: 3, hint: "does not exist" },
        Case { name: "netns path that is a plain file", cmd: "ADD", cid: "c1", netns: Netns::Path(plain_file.clone()), ifname: "eth0", conf: good.clone(), code: 4, hint: "not a network namespace" },
        Case { name: "netns path that is another namespace type", cmd: "ADD", cid: "c1", netns: Netns::Path("/proc/self/ns/uts".into()), ifname: "eth0", conf: good.clone(), code: 4, hint: "another type" },
        Case { name: "the node's own netns", cmd: "ADD", cid: "c1", netns: Netns::Path(node.ns.path()), ifname: "eth0", conf: good.clone(), code: 4, hint: "node" },
        Case { name: "missing CNI_IFNAME", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "", conf: good.clone(), code: 4, hint: "CNI_IFNAME" },
        Case { name: "ifname too long", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0-far-too-long", conf: good.clone(), code: 4, hint: "15" },
        Case { name: "ifname with a slash", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "et/h0", conf: good.clone(), code: 4, hint: "CNI_IFNAME" },
        Case { name: "no ipam section", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: format!(r#"{{"cniVersion":"1.0.0","name":"testnet","type":"sluice","stateDir":"{}"}}"#, node.state_dir().display()), code: 7, hint: "ipam" },
        Case { name: "invalid subnet", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", r#"[[{"subnet":"10.300.0.0/24"}]]"#), code: 7, hint: "10.300.0.0" },
        Case { name: "subnet with host bits", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", r#"[[{"subnet":"10.201.0.5/24"}]]"#), code: 7, hint: "10.201.0.0" },
        Case { name: "overlapping ranges", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", r#"[[{"subnet":"10.201.0.0/24"}],[{"subnet":"10.201.0.0/16"}]]"#), code: 7, hint: "overlap" },
        Case { name: "rangeStart after rangeEnd", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", r#"[[{"subnet":"10.201.0.0/24","rangeStart":"10.201.0.200","rangeEnd":"10.201.0.10"}]]"#), code: 7, hint: "rangeStart" },
        Case { name: "gateway outside the subnet", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", r#"[[{"subnet":"10.201.0.0/24","gateway":"10.9.9.9"}]]"#), code: 7, hint: "10.9.9.9" },
        Case { name: "a set mixing v4 and v6", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", r#"[[{"subnet":"10.201.0.0/24"},{"subnet":"fd00:209::/64"}]]"#), code: 7, hint: "v6" },
        Case { name: "no ranges", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", "[]"), code: 7, hint: "ranges" },
        Case { name: "mtu out of range", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: node.conf("1.0.0", v4).replacen("\"type\":\"sluice\",", "\"type\":\"sluice\",\"mtu\":100,", 1), code: 7, hint: "mtu" },
        Case { name: "unknown delegated IPAM", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: good.replacen("\"type\":\"sluice-ipam\"", "\"type\":\"no-such-ipam\"", 1), code: 7, hint: "CNI_PATH" },
        Case { name: "exhausted pool", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: exhausted.clone(), code: 100, hint: "exhausted" },
        Case { name: "unwritable dataDir", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: good.replacen(&node.data_dir().display().to_string(), &plain_file.join("ipam").display().to_string(), 1), code: 5, hint: "dataDir" },
        Case { name: "unwritable stateDir", cmd: "ADD", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: good.replacen(&node.state_dir().display().to_string(), &plain_file.join("state").display().to_string(), 1), code: 5, hint: "stateDir" },
        Case { name: "CHECK without prevResult", cmd: "CHECK", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: good.clone(), code: 7, hint: "prevResult" },
        Case { name: "CHECK with a bad prevResult", cmd: "CHECK", cid: "c1", netns: Netns::Pod, ifname: "eth0", conf: good.replacen("\"type\":\"sluice\",", "\"type\":\"sluice\",\"prevResult\":{\"ips\":[{\"address\":\"nope\"}]},", 1), code: 6, hint: "prevResult" },
        Case { name: "GC with malformed valid-attachments", cmd: "GC", cid: "", netns: Netns::None, ifname: "", conf: node.conf("1.1.0", v4).replacen("\"type\":\"sluice\",", "\"type\":\"sluice\",\"cni.dev/valid-attachments\":[1,2],", 1), code: 6, hint: "valid-attachments" },
    ];
    assert!(cases.len() >= 25);
    let records_before = node.records().len();
    let reservations_before = node.reservations().len();
    let links_before = node.pod_links();
    for c in &cases {
        let netns = match &c.netns {
            Netns::Pod => Some(pod.path()),
            Netns::None => None,
            Netns::Path(p) => Some(p.clone()),
        };
        let out = node.cni(c.cmd, c.cid, netns.as_deref(), c.ifname, &c.conf);
        assert_ne!(
            out.code,
            Some(0),
            "{}: expected failure: {}",
            c.name,
            out.stdout
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: stdout is not the error JSON ({e}): {:?}",
                c.name, out.stdout
            )
        });
        assert_eq!(v["code"], c.code, "{}: {v}", c.name);
        assert!(v["cniVersion"].is_string(), "{}: {v}", c.name);
        let text = format!("{} {}", v["msg"], v["details"]).to_lowercase();
        assert!(
            text.contains(&c.hint.to_lowercase()),
            "{}: message should mention {:?}: {v}",
            c.name,
            c.hint
        );
        // Nothing left behind: no link, no record, no reservation, and the
        // pod's netns has no interface but lo.
        assert_eq!(node.pod_links(), links_before, "{}: link left", c.name);
        assert_eq!(
            node.records().len(),
            records_before,
            "{}: record left",
            c.name
        );
        assert_eq!(
            node.reservations().len(),
            reservations_before,
            "{}: reservation left",
            c.name
        );
        assert_eq!(
            pod.links(),
            vec!["lo".to_string()],
            "{}: pod interface left",
            c.name
        );
    }
    drop(filler);
}

#[test]
fn add_twice_for_the_same_attachment_is_refused_and_keeps_the_first() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0", ranges("v4"));
    let a = Pod::add(&node, &conf);
    // The IPAM refuses it before anything is created: the attachment
    // already holds its reservation.
    let e = node
        .cni("ADD", &a.cid, Some(&a.ns.path()), "eth0", &conf)
        .err(101);
    assert!(e["details"].as_str().unwrap().contains("DEL"), "{e}");
    // The first attachment is untouched.
    assert!(node.ns.ping(&a.ips()[0]));
    assert_eq!(node.reservations().len(), 2);
}

#[test]
fn a_failure_after_allocation_rolls_everything_back() {
    if !require_root() {
        return;
    }
    // The pod already has an eth0 of its own: veth creation fails after the
    // address was reserved; the reservation must be released.
    let node = Node::new();
    let conf = node.conf("1.0.0", ranges("dual"));
    let pod = Ns::new("p");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let e = node
        .cni("ADD", "rollback", Some(&pod.path()), "eth0", &conf)
        .err(103);
    assert!(e["msg"].as_str().unwrap().contains("eth0"), "{e}");
    node.assert_clean();
}
