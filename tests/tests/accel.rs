//! Same-node TCP acceleration (sockmap) through the real daemon and
//! plugin: two pods on one node, TCP between them from sockets made in
//! their namespaces, every stream pattern checked byte for byte against
//! what was sent, with the sockets verified to be in the map.

use serde_json::Value;
use sluice_common::api::Request;
use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::{require_root, Node, NsRunner, Pod};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const RANGES: &str = r#"[[{"subnet":"10.231.0.0/24","gateway":"10.231.0.1"}],[{"subnet":"fd00:231::/64","gateway":"fd00:231::1"}]]"#;

/// A node with a daemon and two pods, and a thread in each pod's netns to
/// make sockets there.
struct Two<'a> {
    d: Daemon<'a>,
    _a: Pod<'a>,
    b: Pod<'a>,
    ra: NsRunner,
    rb: NsRunner,
}

impl<'a> Two<'a> {
    fn new(node: &'a Node) -> Self {
        let d = Daemon::start(node);
        let conf = node.conf("1.0.0", RANGES);
        let a = Pod::add(node, &conf);
        let b = Pod::add(node, &conf);
        d.wait_edge(&a.cid);
        d.wait_edge(&b.cid);
        let (ra, rb) = (NsRunner::new(&a.ns), NsRunner::new(&b.ns));
        Two {
            d,
            _a: a,
            b,
            ra,
            rb,
        }
    }

    fn ip(p: &Pod<'_>, v6: bool) -> std::net::IpAddr {
        p.ips()
            .into_iter()
            .find(|i| i.contains(':') == v6)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A connection from pod a to pod b: (client in a, server in b).
    fn pair(&self, v6: bool) -> (TcpStream, TcpStream) {
        let bind: SocketAddr = (Self::ip(&self.b, v6), 0).into();
        let l = self.rb.run(move || TcpListener::bind(bind).unwrap());
        let addr = l.local_addr().unwrap();
        let c = self.ra.run(move || TcpStream::connect(addr).unwrap());
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn accel(&self) -> Value {
        self.d
            .call(Request::Accel { enabled: None })
            .expect("accel")
            .data
    }

    fn counter(&self, k: &str) -> u64 {
        self.accel()["counters"][k].as_u64().unwrap_or(0)
    }
}

fn sha(data: &[u8]) -> u64 {
    // FNV-1a: a checksum, not a defence.
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn pod_to_pod_tcp_is_redirected_byte_exact() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    let before = t.counter("redirected_bytes");
    let (mut c, mut s) = t.pair(false);
    assert!(
        eventually(2, || t.accel()["sockets"].as_u64() >= Some(2)),
        "{}",
        t.accel()
    );
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let d2 = data.clone();
    let w = std::thread::spawn(move || {
        c.write_all(&d2).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        c
    });
    let mut got = Vec::new();
    let t0 = Instant::now();
    s.read_to_end(&mut got).unwrap();
    let _c = w.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(sha(&got), sha(&data));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let redirected = t.counter("redirected_bytes") - before;
    assert!(redirected >= data.len() as u64 / 2, "{}", t.accel());
}
