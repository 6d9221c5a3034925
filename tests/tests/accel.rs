//! Same-node TCP acceleration (sockmap) through the real daemon and
//! plugin: pods on one node, TCP between them from sockets made in their
//! namespaces, every stream pattern an application uses checked byte for
//! byte against what was sent (a position-dependent pattern, so a
//! reordering shows), with the sockets verified to be in the map and the
//! counters showing the bytes went the redirected way.
//!
//! Where the kernel cannot run the acceleration's guards (BPF LSM; this
//! CI machine forbids it), only pods annotated `sluice.dev/accel: "true"`
//! are accelerated: the pods here opt in unless a test is about pods that
//! did not.

use serde_json::Value;
use sluice_common::api::Request;
use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::nbsock::{accept_nb, connect_nb, listen_nb, wait_fd, Nb};
use sluice_tests::{require_root, with_pod_annotations, Node, NsRunner, Pod};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RANGES: &str = r#"[[{"subnet":"10.231.0.0/24","gateway":"10.231.0.1"}],[{"subnet":"fd00:231::/64","gateway":"fd00:231::1"}]]"#;
const OPT_IN: &[(&str, &str)] = &[("sluice.dev/accel", "true")];

/// SO_RCVBUF of 4 MiB on each socket, as bulk-transfer applications set:
/// a writer may have half its reader's receive buffer redirected ahead,
/// so with the default buffer (128 KiB until TCP grows it) a 64 KiB
/// writer falls back to TCP at its second write, and these tests would
/// check the TCP path.
fn bulk_buffers(socks: &[&dyn AsRawFd]) {
    for s in socks {
        set_int_opt(*s, libc::SO_RCVBUF, 4 << 20);
    }
}

/// setsockopt(SOL_SOCKET, `opt`) with an int on a socket we own: its
/// return code.
fn set_int_opt(sock: &dyn AsRawFd, opt: libc::c_int, v: libc::c_int) -> libc::c_int {
    // SAFETY: setsockopt on a socket the caller owns, with an int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            &v as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        )
    }
}

/// What a bulk transfer must have redirected at least: a writer that
/// outruns its reader (two CPUs, tests in parallel) goes on through TCP
/// until the reader has read all of it; the bytes are exact either way.
const BULK_MIN: u64 = 1 << 20;

/// The echo test's messages up to 100,000 bytes, both ways: all of them
/// fit a fresh connection's budget, so they are redirected.
const SMALL_MESSAGES: u64 = 2 * (1 + 2 + 100 + 1460 + 4096);

/// A node with a daemon and two pods, and a thread in each pod's netns to
/// make sockets there.
struct Two<'a> {
    node: &'a Node,
    d: Daemon<'a>,
    a: Pod<'a>,
    b: Pod<'a>,
    ra: NsRunner,
    rb: NsRunner,
}

fn pod<'a>(node: &'a Node, ranges: &str, ann: &[(&str, &str)]) -> Pod<'a> {
    let conf = node.conf("1.0.0", ranges);
    let conf = if ann.is_empty() {
        conf
    } else {
        with_pod_annotations(&conf, ann)
    };
    Pod::add(node, &conf)
}

impl<'a> Two<'a> {
    fn new(node: &'a Node) -> Self {
        Self::with(node, OPT_IN, OPT_IN)
    }

    fn with_config(node: &'a Node, config: &str) -> Self {
        Self::build(node, OPT_IN, OPT_IN, config)
    }

    fn with(node: &'a Node, ann_a: &[(&str, &str)], ann_b: &[(&str, &str)]) -> Self {
        Self::build(node, ann_a, ann_b, "")
    }

    fn build(node: &'a Node, ann_a: &[(&str, &str)], ann_b: &[(&str, &str)], config: &str) -> Self {
        let d = Daemon::start_with(node, config);
        let a = pod(node, RANGES, ann_a);
        let b = pod(node, RANGES, ann_b);
        d.wait_edge(&a.cid);
        d.wait_edge(&b.cid);
        let (ra, rb) = (NsRunner::new(&a.ns), NsRunner::new(&b.ns));
        Two {
            node,
            d,
            a,
            b,
            ra,
            rb,
        }
    }

    /// A non-blocking listener in pod b on its address, as event-loop
    /// servers listen.
    fn listen(&self, v6: bool) -> TcpListener {
        let bind: SocketAddr = (self.b.ip(v6), 0).into();
        self.rb.run(move || listen_nb(bind))
    }

    /// A connection from pod a to pod b, non-blocking on both ends, with
    /// bulk-sized receive buffers (see [`bulk_buffers`]): (client in a,
    /// server in b).
    fn pair(&self, v6: bool) -> (Nb, Nb) {
        let (c, s) = self.pair_default_buffers(v6);
        bulk_buffers(&[&c, &s]);
        (c, s)
    }

    /// The same with the kernel's default receive buffers.
    fn pair_default_buffers(&self, v6: bool) -> (Nb, Nb) {
        let l = self.listen(v6);
        let addr = l.local_addr().unwrap();
        let c = self.ra.run(move || connect_nb(addr));
        (c, accept_nb(&l))
    }

    /// An app and its proxy inside pod a over 127.0.0.1, default buffers:
    /// (app, proxy).
    fn loopback_pair(&self) -> (Nb, Nb) {
        let l = self.ra.run(|| listen_nb("127.0.0.1:0".parse().unwrap()));
        let addr = l.local_addr().unwrap();
        let c = self.ra.run(move || connect_nb(addr));
        (c, accept_nb(&l))
    }

    /// Asserts that one connection started draining since the counters
    /// read `draining` and `drained`, and that both its sockets leave the
    /// map (the only ones in it).
    fn assert_drained(&self, draining: u64, drained: u64) {
        assert_eq!(
            self.counter("draining"),
            draining + 1,
            "the connection did not drain: {}",
            self.accel()
        );
        assert!(
            eventually(5, || self.counter("drained") == drained + 2
                && self.sockets() == 0),
            "both sockets should have left the map: {}",
            self.accel()
        );
    }

    /// The same with blocking sockets, as thread-per-connection programs
    /// use them.
    fn pair_blocking(&self) -> (TcpStream, TcpStream) {
        let bind: SocketAddr = (self.b.ip(false), 0).into();
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

    /// A connection from pod a to a non-blocking server in the node's
    /// netns (made with `rn`), on pod a's gateway: (client, server).
    fn pair_to_node(&self, rn: &NsRunner) -> (Nb, Nb) {
        let gw = self.a.gateway();
        let l = rn.run(move || listen_nb((gw, 0).into()));
        let addr = l.local_addr().unwrap();
        let c = self.ra.run(move || connect_nb(addr));
        (c, accept_nb(&l))
    }

    fn counter(&self, k: &str) -> u64 {
        self.accel()["counters"][k].as_u64().unwrap_or(0)
    }

    /// Asserts that at least `at_least` bytes were redirected since the
    /// counter read `before`.
    fn assert_redirected(&self, before: u64, at_least: u64) {
        let n = self.counter("redir_bytes") - before;
        assert!(
            n >= at_least,
            "{n} bytes redirected, expected at least {at_least}: {}",
            self.accel()
        );
    }

    fn sockets(&self) -> u64 {
        self.accel()["sockets"].as_u64().unwrap()
    }

    /// Waits until at least `n` sockets are in the map.
    fn wait_sockets(&self, n: u64) {
        assert!(
            eventually(5, || self.sockets() >= n),
            "{} sockets in the map, expected {n}: {}",
            self.sockets(),
            self.accel()
        );
    }

    fn switch(&self, on: bool) {
        self.d
            .call(Request::Accel { enabled: Some(on) })
            .expect("switch");
    }
}

/// `n` bytes of a pattern that depends on `seed` and the position.
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn read_exact_or_eof(s: &mut Nb, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// One-way: `data` written in `chunk`-sized writes, then closed; the
/// reader's bytes and the time from close to its EOF.
fn one_way(mut c: Nb, mut s: Nb, data: Arc<Vec<u8>>, chunk: usize) -> Duration {
    let d2 = data.clone();
    let closed = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let cl = closed.clone();
    let w = std::thread::spawn(move || {
        for part in d2.chunks(chunk) {
            c.write_all(part).unwrap();
        }
        *cl.lock().unwrap() = Some(Instant::now());
        drop(c);
    });
    let mut got = Vec::with_capacity(data.len());
    s.read_to_end(&mut got).unwrap();
    let eof = Instant::now();
    w.join().unwrap();
    assert_eq!(got.len(), data.len(), "bytes received");
    assert!(got == *data, "the bytes differ from what was sent");
    let at = closed.lock().unwrap().unwrap();
    eof.saturating_duration_since(at)
}

#[test]
fn messages_from_1_byte_to_16_mib_arrive_exact_both_ways() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    let (mut c, mut s) = t.pair(false);
    t.wait_sockets(2);
    let before = t.counter("redir_bytes");
    // The server echoes every message back.
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0; 1 << 20];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
                Err(e) => panic!("server read: {e}"),
            }
        }
    });
    for (i, n) in [
        1usize,
        2,
        100,
        1460,
        4096,
        65_536,
        100_000,
        1 << 20,
        16 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let msg = Arc::new(pattern(i as u64, n));
        let m2 = msg.clone();
        let mut wc = c.try_clone();
        let w = std::thread::spawn(move || wc.write_all(&m2).unwrap());
        let back = read_exact_or_eof(&mut c, n);
        w.join().unwrap();
        assert!(back == *msg, "message of {n} bytes came back different");
    }
    c.shutdown(Shutdown::Write);
    echo.join().unwrap();
    t.assert_redirected(before, SMALL_MESSAGES);
}

#[test]
fn request_response_and_one_way_bulk_are_exact_without_a_close_delay() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    // 5,000 request/response round trips of 1 B and of 1 KiB.
    for size in [1usize, 1024] {
        let (mut c, mut s) = t.pair(false);
        t.wait_sockets(2);
        let srv = std::thread::spawn(move || {
            let mut buf = vec![0; size];
            for i in 0..5000u64 {
                s.read_exact(&mut buf).unwrap();
                assert_eq!(buf, pattern(i, size), "request {i}");
                s.write_all(&pattern(i + 1_000_000, size)).unwrap();
            }
        });
        let mut buf = vec![0; size];
        for i in 0..5000u64 {
            c.write_all(&pattern(i, size)).unwrap();
            c.read_exact(&mut buf).unwrap();
            assert_eq!(buf, pattern(i + 1_000_000, size), "response {i}");
        }
        srv.join().unwrap();
    }
    // 64 MiB one way in 64 KiB writes; EOF follows the close at once.
    let before = t.counter("redir_bytes");
    let (c, s) = t.pair(false);
    t.wait_sockets(2);
    let data = Arc::new(pattern(7, 64 << 20));
    let delay = one_way(c, s, data, 64 << 10);
    assert!(
        delay < Duration::from_millis(200),
        "EOF {delay:?} after close"
    );
    t.assert_redirected(before, BULK_MIN);
}

/// A fresh connection with the default buffers (128 KiB until TCP grows
/// them): one 64 KiB write, half the reader's buffer, goes the redirected
/// way, as TCP takes such a write into an idle connection without
/// blocking; the bytes are exact and EOF follows the close.
#[test]
fn a_fresh_connections_one_write_of_half_the_default_buffer_is_redirected() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    let (c, s) = t.pair_default_buffers(false);
    t.wait_sockets(2);
    let before = t.counter("redir_bytes");
    let delay = one_way(c, s, Arc::new(pattern(11, 64 << 10)), 64 << 10);
    assert!(
        delay < Duration::from_millis(200),
        "EOF {delay:?} after close"
    );
    t.assert_redirected(before, 64 << 10);
}

/// Each end writes `n` bytes of its pattern (client 1, server 2) in 64 KiB
/// writes while reading the other's, then half-closes; what each read.
fn duplex<S: Read + Write + Send + 'static>(
    c: S,
    s: S,
    clone: fn(&S) -> S,
    shut: fn(&S),
    n: usize,
) -> (Vec<u8>, Vec<u8>) {
    let side = |mut sock: S, seed: u64| {
        let mut rd = clone(&sock);
        std::thread::spawn(move || {
            let r = std::thread::spawn(move || {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).map(|_| got)
            });
            for part in pattern(seed, n).chunks(64 << 10) {
                sock.write_all(part).unwrap();
            }
            shut(&sock);
            r.join().unwrap().unwrap()
        })
    };
    let (x, y) = (side(c, 1), side(s, 2));
    (x.join().unwrap(), y.join().unwrap())
}

#[test]
fn bidirectional_bulk_at_the_same_time_is_exact() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    let before = t.counter("redir_bytes");
    let (c, s) = t.pair(false);
    t.wait_sockets(2);
    let n = 48 << 20;
    let (got_c, got_s) = duplex(c, s, Nb::try_clone, |s| s.shutdown(Shutdown::Write), n);
    assert!(got_s == pattern(1, n), "server received different bytes");
    assert!(got_c == pattern(2, n), "client received different bytes");
    // Each writer may outrun its reader now and then (two CPUs, four
    // threads): what follows a fallback goes through TCP.
    t.assert_redirected(before, BULK_MIN);
}

#[test]
fn blocking_sockets_stay_on_tcp_and_behave_as_tcp() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    let c0 = |k| t.counter(k);
    let (blocking, unpaired, evicted) = (
        c0("skipped_blocking"),
        c0("skipped_unpaired"),
        c0("evicted"),
    );
    // A blocking reader woken without data gets EAGAIN from the kernel's
    // redirected receive path (docs/sockmap.md), so blocking sockets are
    // never accelerated: a connecting one is not added, nor is the socket
    // that accepts it (no socket stays in the map without its peer).
    let (c, s) = t.pair_blocking();
    assert_eq!(t.counter("skipped_blocking"), blocking + 1, "{}", t.accel());
    assert_eq!(t.counter("skipped_unpaired"), unpaired + 1, "{}", t.accel());
    assert_eq!(t.sockets(), 0, "{}", t.accel());
    let n = 24 << 20;
    let (got_c, got_s) = duplex(
        c,
        s,
        |s| s.try_clone().unwrap(),
        |s| s.shutdown(Shutdown::Write).unwrap(),
        n,
    );
    assert!(got_s == pattern(1, n) && got_c == pattern(2, n));

    // A non-blocking client of a server that accepts in blocking mode
    // (its listener blocks): neither is accelerated.
    let listener_blocks = t.counter("skipped_listener");
    let bind: SocketAddr = (t.b.ip(false), 0).into();
    let l = t.rb.run(move || TcpListener::bind(bind).unwrap());
    let addr = l.local_addr().unwrap();
    let c = t.ra.run(move || connect_nb(addr));
    let (s, _) = l.accept().unwrap();
    assert_eq!(
        t.counter("skipped_listener"),
        listener_blocks + 1,
        "{}",
        t.accel()
    );
    assert_eq!(t.sockets(), 0, "{}", t.accel());
    drop((c, s));

    // A non-blocking listener whose accepted socket reads in blocking
    // mode: the accepted socket leaves the map at the first message
    // either end sends, before anything is redirected to it.
    let l = t.listen(false);
    let addr = l.local_addr().unwrap();
    let mut c = t.ra.run(move || connect_nb(addr));
    wait_fd(l.as_raw_fd(), libc::POLLIN);
    let (mut s, _) = l.accept().unwrap();
    s.set_nonblocking(false).unwrap();
    t.wait_sockets(2);
    c.write_all(b"first").unwrap();
    let mut first = [0u8; 5];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first");
    assert_eq!(t.counter("evicted"), evicted + 1, "{}", t.accel());
    assert!(eventually(2, || t.sockets() == 1), "{}", t.accel());
    let (got_c, got_s) = duplex(
        Box::new(c) as Box<dyn RW>,
        Box::new(s) as Box<dyn RW>,
        |s| s.clone_box(),
        |s| s.shut(),
        n,
    );
    assert!(got_s == pattern(1, n) && got_c == pattern(2, n));

    // A reset reaches a blocked reader as ECONNRESET, as on TCP.
    let (mut c, s) = t.pair_blocking();
    let r = std::thread::spawn(move || {
        let mut b = [0u8; 16];
        c.read(&mut b).map_err(|e| e.kind())
    });
    std::thread::sleep(Duration::from_millis(100));
    reset(s.as_raw_fd());
    drop(s);
    assert_eq!(r.join().unwrap(), Err(ErrorKind::ConnectionReset));
}

/// A socket of either kind, for a duplex of a non-blocking and a blocking
/// end.
trait RW: Read + Write + Send {
    fn clone_box(&self) -> Box<dyn RW>;
    fn shut(&self);
}

impl RW for Nb {
    fn clone_box(&self) -> Box<dyn RW> {
        Box::new(self.try_clone())
    }
    fn shut(&self) {
        self.shutdown(Shutdown::Write)
    }
}

impl RW for TcpStream {
    fn clone_box(&self) -> Box<dyn RW> {
        Box::new(self.try_clone().unwrap())
    }
    fn shut(&self) {
        self.shutdown(Shutdown::Write).unwrap()
    }
}

/// Makes the next close of `fd` send a reset (SO_LINGER 0).
fn reset(fd: i32) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on the caller's fd with a linger struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            size_of::<libc::linger>() as u32,
        );
    }
}

#[test]
fn half_close_reset_and_peek_behave_as_tcp() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    // shutdown(SHUT_WR): the server reads to EOF, then answers; the client
    // reads the answer and EOF.
    let (mut c, mut s) = t.pair(false);
    t.wait_sockets(2);
    let before = t.counter("redir_bytes");
    c.write_all(&pattern(1, 300_000)).unwrap();
    c.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(got == pattern(1, 300_000));
    s.write_all(&pattern(2, 200_000)).unwrap();
    drop(s);
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert!(back == pattern(2, 200_000));
    t.assert_redirected(before, 400_000);

    // MSG_PEEK shows the bytes and leaves them for the next read.
    let (mut c, mut s) = t.pair(false);
    t.wait_sockets(2);
    c.write_all(b"hello, peek").unwrap();
    let mut buf = [0u8; 11];
    assert!(eventually(2, || s.0.peek(&mut buf).map_or(0, |n| n) == 11));
    assert_eq!(&buf, b"hello, peek");
    let mut buf2 = [0u8; 11];
    s.read_exact(&mut buf2).unwrap();
    assert_eq!(&buf2, b"hello, peek");

    // A reset (close with SO_LINGER 0) reaches a waiting reader as
    // ECONNRESET, as on TCP.
    let (mut c, s) = t.pair(false);
    t.wait_sockets(2);
    let r = std::thread::spawn(move || {
        let mut b = [0u8; 16];
        c.read(&mut b).map_err(|e| e.kind())
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    reset(s.fd());
    drop(s);
    let res = r.join().unwrap();
    assert_eq!(res, Err(ErrorKind::ConnectionReset), "reader saw {res:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));
}

/// recv with MSG_WAITALL on `fd` for `n` bytes.
fn recv_waitall(fd: i32, n: usize) -> isize {
    let mut buf = vec![0u8; n];
    // SAFETY: recv into our own buffer of n bytes.
    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), n, libc::MSG_WAITALL) }
}

#[test]
fn sendfile_nonblocking_epoll_and_a_rcvlowat_reader() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);

    // sendfile from a file into an accelerated socket.
    let (c, mut s) = t.pair(false);
    t.wait_sockets(2);
    let before = t.counter("redir_bytes");
    let path = t.node.dir.path().join("sendfile.bin");
    let data = pattern(9, 5 << 20);
    std::fs::write(&path, &data).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let w = std::thread::spawn(move || {
        let mut off: libc::off_t = 0;
        while (off as usize) < 5 << 20 {
            // SAFETY: sendfile between two fds we own.
            let n = unsafe {
                libc::sendfile(c.fd(), f.as_raw_fd(), &mut off, (5 << 20) - off as usize)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), ErrorKind::WouldBlock, "sendfile: {e}");
                wait_fd(c.fd(), libc::POLLOUT);
            }
        }
        drop(c);
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    assert!(got == data, "sendfile bytes differ");
    t.assert_redirected(before, BULK_MIN);

    // Both ends driven by one epoll loop, 16 MiB each way.
    let (c, s) = t.pair(false);
    t.wait_sockets(2);
    let (a, b) = epoll_exchange(c.0, s.0, 16 << 20);
    assert!(a == pattern(11, 16 << 20) && b == pattern(10, 16 << 20));

    // A listener with SO_RCVLOWAT: its accepted sockets are never a
    // redirect target (the lowat is not honoured for redirected data),
    // so the mark holds: 10 bytes do not make it readable, 2,000 do.
    let l = t.listen(false);
    set_int_opt(&l, libc::SO_RCVLOWAT, 1000);
    let addr = l.local_addr().unwrap();
    let before = t.counter("fb_tcp_reader");
    let mut c = t.ra.run(move || connect_nb(addr));
    let s = accept_nb(&l);
    t.wait_sockets(2);
    c.write_all(&[1; 10]).unwrap();
    let mut pfd = libc::pollfd {
        fd: s.fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one fd we own.
    assert_eq!(
        unsafe { libc::poll(&mut pfd, 1, 200) },
        0,
        "readable below lowat"
    );
    c.write_all(&[2; 2000]).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 2000) }, 1);
    assert_eq!(recv_waitall(s.fd(), 2010), 2010);
    assert_eq!(t.counter("fb_tcp_reader"), before + 1, "{}", t.accel());
}

/// Both ends non-blocking in one epoll loop: each sends `n` bytes of its
/// pattern (client 10, server 11) and reads the other's; returns (what
/// the client got, what the server got).
fn epoll_exchange(c: TcpStream, s: TcpStream, n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut socks = [c, s];
    let out = [pattern(10, n), pattern(11, n)];
    let mut sent = [0usize; 2];
    let mut got = [Vec::new(), Vec::new()];
    // SAFETY: a new epoll instance, closed below.
    let ep = unsafe { libc::epoll_create1(0) };
    for (i, s) in socks.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT) as u32,
            u64: i as u64,
        };
        // SAFETY: registering our own fd.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 256 << 10];
    while got[0].len() < n || got[1].len() < n {
        assert!(
            Instant::now() < deadline,
            "epoll exchange stalled: {} {}",
            got[0].len(),
            got[1].len()
        );
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: waiting on our epoll fd into our array.
        let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 1000) };
        for ev in &evs[..k.max(0) as usize] {
            let i = ev.u64 as usize;
            if sent[i] < n {
                match socks[i].write(&out[i][sent[i]..(sent[i] + (64 << 10)).min(n)]) {
                    Ok(w) => sent[i] += w,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            }
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(r) => got[i].extend_from_slice(&buf[..r]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
    // SAFETY: closing the epoll fd we created.
    unsafe { libc::close(ep) };
    let [a, b] = got;
    (a, b)
}

#[test]
fn a_thousand_concurrent_connections_and_churn_leave_nothing_behind() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    let l = t.listen(false);
    let addr = l.local_addr().unwrap();
    let base = t.sockets();
    let mut conns: Vec<(Nb, Nb)> = (0..1000)
        .map(|_| {
            let c = t.ra.run(move || connect_nb(addr));
            (c, accept_nb(&l))
        })
        .collect();
    t.wait_sockets(base + 2000);
    let before = t.counter("redir_bytes");
    for (i, (c, s)) in conns.iter_mut().enumerate() {
        c.write_all(&pattern(i as u64, 3000)).unwrap();
        let mut b = vec![0; 3000];
        s.read_exact(&mut b).unwrap();
        assert!(b == pattern(i as u64, 3000), "connection {i}");
        s.write_all(&b[..100]).unwrap();
        let mut back = [0u8; 100];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back[..], &b[..100]);
    }
    t.assert_redirected(before, 1000 * 3100);
    drop(conns);
    // Churn: 2,000 connections opened, used and closed one after another.
    for i in 0..2000u64 {
        let mut c = t.ra.run(move || connect_nb(addr));
        let mut s = accept_nb(&l);
        c.write_all(&pattern(i, 200)).unwrap();
        let mut b = [0u8; 200];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b.to_vec(), pattern(i, 200), "churn {i}");
    }
    // Every closed socket left the map and its peer entry went with it.
    assert!(
        eventually(5, || t.sockets() == base),
        "{} sockets left: {}",
        t.sockets(),
        t.accel()
    );
    let peers = sluice_dataplane::sys::obj_get(&t.d.pin_path.join("maps/sluice_sk_peer"))
        .and_then(|fd| sluice_dataplane::sys::count_keys(std::os::fd::AsFd::as_fd(&fd), 8))
        .unwrap();
    assert_eq!(peers as u64, base, "peer entries left behind");
}

#[test]
fn ipv6_and_v4_mapped_connections_are_accelerated() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    let before = t.counter("redir_bytes");
    let (c, s) = t.pair(true);
    t.wait_sockets(2);
    one_way(c, s, Arc::new(pattern(3, 8 << 20)), 64 << 10);
    // A dual-stack listener accepts the IPv4 client as a v4-mapped IPv6
    // socket: paired all the same.
    let l = t.rb.run(|| listen_nb("[::]:0".parse().unwrap()));
    let port = l.local_addr().unwrap().port();
    let to: SocketAddr = (t.b.ip(false), port).into();
    let c = t.ra.run(move || connect_nb(to));
    let s = accept_nb(&l);
    bulk_buffers(&[&c, &s]);
    let peer = s.0.peer_addr().unwrap();
    assert!(matches!(peer, SocketAddr::V6(p) if p.ip().to_ipv4_mapped().is_some()));
    t.wait_sockets(2);
    one_way(c, s, Arc::new(pattern(4, 8 << 20)), 64 << 10);
    t.assert_redirected(before, BULK_MIN);
}

/// A writer of `total` bytes as fast as it can against a reader of 64 KiB
/// every 2 ms (about 32 MB/s) for 1.5 s, then draining the rest; every
/// byte checked in order. Returns how far the writer got ahead of the
/// reader at most, and the most memory the connection held (`mem`: its
/// sockets' receive and send memory, in bytes), sampled now and then.
fn slow_reader<S: Read + Write + Send + 'static>(
    mut c: S,
    mut s: S,
    total: usize,
    conn_mem: &dyn Fn() -> u64,
) -> (u64, u64) {
    let written = Arc::new(AtomicU64::new(0));
    let w2 = written.clone();
    let w = std::thread::spawn(move || {
        let data = pattern(5, total);
        for part in data.chunks(64 << 10) {
            c.write_all(part).unwrap();
            w2.fetch_add(part.len() as u64, Ordering::Relaxed);
        }
    });
    let (mut read, mut lead, mut mem, mut samples) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 64 << 10];
    let mut check = pattern(5, total).into_iter();
    let t0 = Instant::now();
    let mut slow = true;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(
            buf[..n].iter().all(|b| Some(*b) == check.next()),
            "bytes differ"
        );
        read += n as u64;
        if slow {
            lead = lead.max(written.load(Ordering::Relaxed).saturating_sub(read));
            samples += 1;
            if samples % 25 == 0 {
                mem = mem.max(conn_mem());
            }
            std::thread::sleep(Duration::from_millis(2));
            slow = t0.elapsed() < Duration::from_millis(1500);
        }
    }
    w.join().unwrap();
    assert_eq!(read, total as u64);
    (lead, mem)
}

#[test]
fn a_slow_reader_blocks_a_fast_writer_and_memory_stays_bounded() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::with_config(&node, "accel_max_queue_bytes = 4194304\n");
    let total = 256usize << 20;
    // TCP (blocking sockets are not accelerated), then the same through
    // the acceleration.
    let (c, s) = t.pair_blocking();
    // The connection's memory: what `ss -m` shows of its sockets in both
    // pods (receive memory, which counts redirected messages too, and the
    // send queue).
    let pods = [t.a.ns.name.clone(), t.b.ns.name.clone()];
    let conn_mem = move || -> u64 {
        pods.iter()
            .map(|ns| {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "ss", "-tmnH", "state", "established"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .split("skmem:(")
                    .skip(1)
                    .map(|m| {
                        let field = |k: &str| -> u64 {
                            m.split([',', ')'])
                                .find_map(|f| f.strip_prefix(k)?.parse().ok())
                                .unwrap_or(0)
                        };
                        field("r") + field("w")
                    })
                    .sum::<u64>()
            })
            .sum()
    };
    let (tcp_lead, tcp_mem) = slow_reader(c, s, total, &conn_mem);
    let (c, s) = t.pair(false);
    t.wait_sockets(2);
    let (lead, mem) = slow_reader(c, s, total, &conn_mem);
    // The writer is held back where TCP would hold it, plus at most what
    // the reader may have queued of redirected data (half its receive
    // buffer, at most the configured budget); after the fallback that
    // queue drains while TCP fills the receive buffer (SO_RCVBUF 4 MiB,
    // doubled by the kernel), so the two may add up.
    let queue = t.accel()["max_queue_bytes"].as_u64().unwrap();
    let slack = 2 * (4 << 20);
    assert!(
        lead <= tcp_lead + queue + slack,
        "writer {lead} bytes ahead (TCP: {tcp_lead}, queue {queue}): {}",
        t.accel()
    );
    assert!(
        mem <= tcp_mem + queue + slack,
        "the connection held {mem} bytes (TCP alone: {tcp_mem}): {}",
        t.accel()
    );
    assert!(t.counter("fb_backpressure") >= 1, "{}", t.accel());
    assert!(t.counter("redir_bytes") > 0, "{}", t.accel());
}

#[test]
fn an_app_and_its_proxy_in_one_pod_are_accelerated_both_hops() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::new(&node);
    // The proxy listens on loopback in pod a; iptables sends the app's
    // connections to a service address there, as a mesh sidecar's rules
    // do.
    let proxy = t.ra.run(|| listen_nb("127.0.0.1:15001".parse().unwrap()));
    let proxy6 = t.ra.run(|| listen_nb("[::1]:15002".parse().unwrap()));
    let out = t.a.ns.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        "10.96.99.99",
        "--dport",
        "80",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backend = t.listen(false);
    let backend_addr = backend.local_addr().unwrap();
    let backend6 = t.listen(true);
    let backend6_addr = backend6.local_addr().unwrap();
    let before = t.counter("redir_bytes");
    for (listener, up, be, dst) in [
        (
            proxy,
            backend_addr,
            backend,
            "10.96.99.99:80".parse::<SocketAddr>().unwrap(),
        ),
        (
            proxy6,
            backend6_addr,
            backend6,
            "[::1]:15002".parse().unwrap(),
        ),
    ] {
        let base = t.sockets();
        let app = t.ra.run(move || connect_nb(dst));
        let from_app = accept_nb(&listener);
        let to_server = t.ra.run(move || connect_nb(up));
        let server = accept_nb(&be);
        bulk_buffers(&[&app, &from_app, &to_server, &server]);
        t.wait_sockets(base + 4);
        // The proxy forwards both ways with read/write.
        let fwd = |mut from: Nb, mut to: Nb| {
            std::thread::spawn(move || {
                std::io::copy(&mut from, &mut to).unwrap();
                to.shutdown(Shutdown::Write);
            })
        };
        let f1 = fwd(from_app.try_clone(), to_server.try_clone());
        let f2 = fwd(to_server, from_app);
        let mut server2 = server.try_clone();
        let srv = std::thread::spawn(move || {
            let mut got = Vec::new();
            server2.read_to_end(&mut got).unwrap();
            got
        });
        let mut app2 = app.try_clone();
        let answer = std::thread::spawn(move || {
            let mut got = Vec::new();
            app2.read_to_end(&mut got).unwrap();
            got
        });
        let mut app = app;
        app.write_all(&pattern(21, 4 << 20)).unwrap();
        app.shutdown(Shutdown::Write);
        assert!(
            srv.join().unwrap() == pattern(21, 4 << 20),
            "server got other bytes"
        );
        let mut server = server;
        server.write_all(&pattern(22, 2 << 20)).unwrap();
        server.shutdown(Shutdown::Write);
        assert!(
            answer.join().unwrap() == pattern(22, 2 << 20),
            "app got other bytes"
        );
        f1.join().unwrap();
        f2.join().unwrap();
    }
    // Both hops of both connections were in the map (checked above) and
    // redirected: each of the four at least a bulk minimum.
    t.assert_redirected(before, 4 * BULK_MIN);
}

#[test]
fn a_restart_and_the_switch_leave_open_connections_working() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let mut t = Two::new(&node);
    let (mut c, mut s) = t.pair(false);
    t.wait_sockets(2);
    let srv = std::thread::spawn(move || {
        let mut buf = vec![0; 4096];
        let mut i = 0u64;
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => {
                    assert_eq!(buf, pattern(i, 4096), "request {i}");
                    s.write_all(&buf[..64]).unwrap();
                    i += 1;
                }
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return i,
                Err(e) => panic!("server: {e}"),
            }
        }
    });
    let mut i = 0u64;
    let mut round = |c: &mut Nb, n: u64| {
        let mut b = [0u8; 64];
        for _ in 0..n {
            c.write_all(&pattern(i, 4096)).unwrap();
            c.read_exact(&mut b).unwrap();
            assert_eq!(b.to_vec(), pattern(i, 4096)[..64].to_vec());
            i += 1;
        }
    };
    round(&mut c, 500);
    let r0 = t.counter("redir_msgs");
    // kill -9 and a new daemon: the map, its program and the link are
    // pinned; the connection goes on being redirected.
    t.d.kill9();
    round(&mut c, 500);
    t.d.spawn();
    round(&mut c, 500);
    let r1 = t.counter("redir_msgs");
    assert!(
        r1 >= r0 + 2000,
        "redirects across the restart: {r0} -> {r1}"
    );
    // Off: the next message of each direction goes through TCP, and the
    // connection leaves the shortcut for good: both sockets out of the
    // map while it goes on, nothing lost.
    t.switch(false);
    assert_eq!(t.accel()["enabled"], false);
    let (passed, draining, drained) = (
        t.counter("pass_msgs"),
        t.counter("draining"),
        t.counter("drained"),
    );
    round(&mut c, 500);
    // Counted while the sockets were in the map; after that their sends
    // are plain TCP's, which no program sees.
    assert!(t.counter("fb_off") >= 2, "{}", t.accel());
    assert!(t.counter("pass_msgs") >= passed + 2, "{}", t.accel());
    assert_eq!(t.counter("draining"), draining + 1, "{}", t.accel());
    // Each socket leaves at one of its sends once its peer's psock proves
    // nothing in flight: the second only after the daemon took the first
    // out, so the connection goes on while it waits.
    assert!(
        eventually(5, || {
            round(&mut c, 10);
            t.counter("drained") == drained + 2 && t.sockets() == 0
        }),
        "both sockets should have left the map: {}",
        t.accel()
    );
    // On again: that connection stays on plain TCP (nothing adds an open
    // socket back); a new one is accelerated.
    t.switch(true);
    let r2 = t.counter("redir_msgs");
    round(&mut c, 500);
    assert_eq!(t.sockets(), 0, "{}", t.accel());
    drop(c);
    assert_eq!(srv.join().unwrap(), i);
    let (c2, s2) = t.pair(false);
    t.wait_sockets(2);
    one_way(c2, s2, Arc::new(pattern(3, 1 << 20)), 64 << 10);
    assert!(t.counter("redir_msgs") > r2, "{}", t.accel());
}

#[test]
fn opted_out_unannotated_and_other_nodes_pods_stay_on_tcp() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    // a opted out; b did not say.
    let t = Two::with(&node, &[("sluice.dev/accel", "false")], &[]);
    let skipped = t.counter("skipped");
    let (c, s) = t.pair(false);
    one_way(c, s, Arc::new(pattern(1, 2 << 20)), 64 << 10);
    assert_eq!(t.sockets(), 0, "{}", t.accel());
    assert!(t.counter("skipped") > skipped);
    assert_eq!(t.counter("redir_msgs"), 0);
    if !t.accel()["unguarded"].is_null() {
        // Without guards, a pod that did not opt in is not added either.
        assert!(t.counter("skipped") >= skipped + 2, "{}", t.accel());
    }

    // Pods of two daemons on one kernel: each is in its own daemon's map,
    // neither is ever redirected to the other.
    let node2 = Node::new();
    let d2 = Daemon::start(&node2);
    let ranges2 = r#"[[{"subnet":"10.232.0.0/24","gateway":"10.232.0.1"}]]"#;
    // The two node namespaces joined by a veth, each routing the other's
    // pod range over it (the multi-node harness's fabric, in small).
    let mut tag = sluice_tests::unique("f");
    tag.truncate(14);
    let (l1, l2) = (format!("{tag}a"), format!("{tag}b"));
    let ip_ok = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip_ok(&[
        "link",
        "add",
        &l1,
        "netns",
        &node.ns.name,
        "type",
        "veth",
        "peer",
        "name",
        &l2,
        "netns",
        &node2.ns.name,
    ]);
    for (ns, dev, addr, peer, range) in [
        (
            &node.ns,
            &l1,
            "10.233.0.1/30",
            "10.233.0.2",
            "10.232.0.0/24",
        ),
        (
            &node2.ns,
            &l2,
            "10.233.0.2/30",
            "10.233.0.1",
            "10.231.0.0/24",
        ),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["route", "add", range, "via", peer]);
    }
    let x = pod(&node, RANGES, OPT_IN);
    let y = pod(&node2, ranges2, OPT_IN);
    t.d.wait_edge(&x.cid);
    d2.wait_edge(&y.cid);
    let (rx, ry) = (NsRunner::new(&x.ns), NsRunner::new(&y.ns));
    let bind: SocketAddr = (y.ip(false), 0).into();
    let l = ry.run(move || listen_nb(bind));
    let addr = l.local_addr().unwrap();
    let c = rx.run(move || connect_nb(addr));
    let s = accept_nb(&l);
    // x joins its daemon's map when it connects; y finds no peer in its
    // daemon's map and stays out.
    assert!(eventually(5, || t.sockets() == 1), "{}", t.accel());
    let v2 = d2.call(Request::Accel { enabled: None }).unwrap().data;
    assert_eq!(v2["sockets"], 0, "{v2}");
    assert_eq!(v2["counters"]["skipped_unpaired"], 1, "{v2}");
    one_way(c, s, Arc::new(pattern(2, 2 << 20)), 64 << 10);
    assert_eq!(t.counter("redir_msgs"), 0, "{}", t.accel());
    let v2 = d2.call(Request::Accel { enabled: None }).unwrap().data;
    assert_eq!(v2["counters"]["redir_msgs"], 0, "{v2}");
    assert!(t.counter("fb_no_peer") >= 1);
    // Its first message found no peer: x's socket left the map, so it no
    // longer sends and reads through the redirect path.
    assert!(eventually(5, || t.sockets() == 0), "{}", t.accel());
    assert!(t.counter("evicted") >= 1, "{}", t.accel());
}

/// A pod's connection to a server in the node's own netns (whose sockets
/// the map never holds) joins the map when it connects, as any pod's
/// socket does (its peer could be a local pod behind an in-pod REDIRECT),
/// and leaves it at its first message, which finds no peer: it then
/// sends and reads through plain TCP, not the redirect path (which cost
/// such a transfer up to 0.56x of TCP's throughput while the socket
/// stayed). Bytes exact both ways, before and after it left.
#[test]
fn a_connection_to_the_nodes_netns_leaves_the_map_at_its_first_message() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    // The node's servers do not take part (where guards run they would).
    let t = Two::with_config(&node, "accel_node = false\n");
    assert_eq!(t.accel()["node"], false, "{}", t.accel());
    let evicted = t.counter("evicted");
    let (mut c, mut s) = t.pair_to_node(&NsRunner::new(&node.ns));
    assert!(
        eventually(5, || t.sockets() == 1),
        "the pod's socket joins at connect: {}",
        t.accel()
    );
    c.write_all(b"first").unwrap();
    assert_eq!(read_exact_or_eof(&mut s, 5), b"first");
    assert!(
        eventually(5, || t.sockets() == 0),
        "the pod's socket left the map: {}",
        t.accel()
    );
    assert_eq!(t.counter("evicted"), evicted + 1, "{}", t.accel());
    exchange_with_node_exact(c, s);
    assert_eq!(t.counter("redir_msgs"), 0, "{}", t.accel());
}

/// 8 MiB each way between pod a's client `c` and the node's server `s`,
/// every byte as sent.
fn exchange_with_node_exact(c: Nb, s: Nb) {
    let n = 8 << 20;
    let (got_c, got_s) = duplex(c, s, Nb::try_clone, |s| s.shutdown(Shutdown::Write), n);
    assert!(
        got_s == pattern(1, n),
        "the node's server received different bytes"
    );
    assert!(got_c == pattern(2, n), "the pod received different bytes");
}

#[test]
fn a_pods_connection_to_a_server_of_the_node_is_redirected_where_the_node_takes_part() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let t = Two::with_config(&node, "accel_node = true\n");
    assert_eq!(t.accel()["node"], true, "{}", t.accel());
    let rn = NsRunner::new(&node.ns);
    let (redirected, evicted) = (t.counter("redir_msgs"), t.counter("evicted"));
    let (c, s) = t.pair_to_node(&rn);
    bulk_buffers(&[&c, &s]);
    assert!(
        eventually(5, || t.sockets() == 2),
        "the pod's socket and the node's accepted one are both in the map: {}",
        t.accel()
    );
    exchange_with_node_exact(c, s);
    assert!(
        t.counter("redir_msgs") > redirected,
        "messages went socket to socket: {}",
        t.accel()
    );
    assert_eq!(t.counter("evicted"), evicted, "{}", t.accel());
    assert!(
        eventually(5, || t.sockets() == 0),
        "both left the map at close: {}",
        t.accel()
    );

    // A node's server that reads in blocking mode stays on TCP, and so
    // does the pod's socket connected to it.
    let gw = t.a.gateway();
    let l = rn.run(move || {
        let l = std::net::TcpListener::bind((gw, 0)).unwrap();
        l.set_nonblocking(false).unwrap();
        l
    });
    let addr = l.local_addr().unwrap();
    let skipped = t.counter("skipped_listener");
    let mut c = t.ra.run(move || connect_nb(addr));
    let (mut s, _) = l.accept().unwrap();
    assert!(
        eventually(5, || t.counter("skipped_listener") == skipped + 1
            && t.sockets() == 0),
        "the node's blocking server is not added and the pod's socket leaves: {}",
        t.accel()
    );
    c.write_all(b"to a blocking server").unwrap();
    let mut buf = [0u8; 20];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"to a blocking server");
}

#[test]
fn a_splicing_reader_gets_every_byte() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    // Where guards run, the pods need not opt in and the guard moves the
    // splicing reader to TCP; without them, only opted-in pods (which
    // vouch for not splicing) are accelerated, so these pods, which did
    // not, are on TCP.
    let t = Two::with(&node, &[], &[]);
    let guarded = t.accel()["unguarded"].is_null();
    let (mut c, s) = t.pair(false);
    let data = pattern(31, 8 << 20);
    let d2 = data.clone();
    let w = std::thread::spawn(move || {
        c.write_all(&d2).unwrap();
    });
    // Read as Go's io.Copy into a TCP connection does: splice through a
    // pipe; on EINVAL (the socket does not splice), read(2) instead.
    let mut got = Vec::new();
    let mut fds = [0i32; 2];
    // SAFETY: a pipe of our own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let mut refused = false;
    let mut buf = vec![0u8; 1 << 16];
    while got.len() < data.len() {
        wait_fd(s.fd(), libc::POLLIN);
        let n = if refused {
            // SAFETY: read into our own buffer.
            unsafe { libc::read(s.fd(), buf.as_mut_ptr().cast(), buf.len()) }
        } else {
            // SAFETY: splice between fds we own.
            let n = unsafe {
                libc::splice(
                    s.fd(),
                    std::ptr::null_mut(),
                    fds[1],
                    std::ptr::null_mut(),
                    1 << 16,
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                refused = true;
                continue;
            }
            if n > 0 {
                // SAFETY: read the pipe into our own buffer.
                unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), n as usize) }
            } else {
                n
            }
        };
        if n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock {
            continue;
        }
        assert!(n > 0, "read: {}", std::io::Error::last_os_error());
        got.extend_from_slice(&buf[..n as usize]);
    }
    w.join().unwrap();
    // SAFETY: closing our pipe.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    assert!(got == data, "spliced bytes differ");
    if guarded {
        assert!(t.counter("guard_splice") >= 1, "{}", t.accel());
    } else {
        assert_eq!(t.counter("redir_msgs"), 0, "{}", t.accel());
    }
}

#[test]
fn a_service_whose_backend_is_a_local_pod_is_accelerated() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let dir = node.dir.path().join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let t = Two::with_config(&node, &format!("services_dir = \"{}\"\n", dir.display()));
    let backend = std::net::Ipv4Addr::from(match t.b.ip(false) {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => unreachable!(),
    });
    let bind: SocketAddr = (IpAddr::V4(backend), 8080).into();
    let l = t.rb.run(move || listen_nb(bind));
    let vip = std::net::Ipv4Addr::new(10, 96, 50, 1);
    sluice_tests::manifests::write_atomic(
        &dir,
        "web.yaml",
        &sluice_tests::manifests::service("demo", 1, vip, 80, &[backend], 8080),
    );
    assert!(
        eventually(10, || {
            t.d.call(Request::ListServices)
                .map(|r| r.data["services"].as_array().is_some_and(|s| !s.is_empty()))
                .unwrap_or(false)
        }),
        "service not programmed"
    );
    // The connect is translated to the backend pod before the connection
    // exists, so its two sockets pair like any two pods'.
    let before = t.counter("redir_bytes");
    let to: SocketAddr = (IpAddr::V4(vip), 80).into();
    let c = t.ra.run(move || connect_nb(to));
    let s = accept_nb(&l);
    bulk_buffers(&[&c, &s]);
    assert_eq!(c.0.peer_addr().unwrap(), to, "the client sees the service");
    t.wait_sockets(2);
    one_way(c, s, Arc::new(pattern(41, 4 << 20)), 64 << 10);
    t.assert_redirected(before, BULK_MIN);
}

/// An app writing bulk to its proxy in the same pod, both on one CPU: the
/// writer falls back at its reader's budget and returns to redirecting
/// only for a few messages each time its reader has caught up, so it
/// spent its life on the psock's send path into TCP (0.61x of loopback
/// TCP). After a few such cycles a writer nothing was redirected to
/// leaves the map; every byte arrives in order, the redirected ones and
/// the TCP ones, and EOF follows the close.
#[test]
fn a_one_way_writer_its_reader_keeps_behind_leaves_the_map_and_loses_nothing() {
    if !require_root() {
        return;
    }
    let _cpu0 = cpu0();
    let node = Node::new();
    let t = Two::new(&node);
    let (c, s) = t.loopback_pair();
    let (evicted, redirected) = (t.counter("evicted"), t.counter("redir_bytes"));
    let stop = Arc::new(AtomicBool::new(false));
    let w = blocks_writer(c, 7, stop.clone());
    let r = blocks_reader(s, 7);
    let left = eventually(60, || t.counter("evicted") > evicted);
    stop.store(true, Ordering::Relaxed);
    assert_eq!(r.join().unwrap(), w.join().unwrap(), "blocks read, written");
    assert!(
        t.counter("redir_bytes") > redirected,
        "nothing redirected: {}",
        t.accel()
    );
    assert!(left, "the writer stayed in the map: {}", t.accel());
}

/// An app in a pod uploading to its proxy, which acknowledges each burst:
/// each time the proxy falls behind its budget the app sends on through
/// TCP until it would block (its send buffer), and returns to redirecting
/// once the proxy has read all of it, so it redirects a phase of ~15
/// messages and sends ~140 through TCP over and over, never 255 through
/// TCP in a row; the acknowledgements are redirected. Over loopback a
/// connection busy both ways on that mix is slower than plain TCP (0.60x
/// to 0.71x measured, bidirectional 64 KiB on two CPUs, where 11% to 34%
/// of the messages went redirected): it must drain to TCP once fewer
/// than half the writer's messages are redirected, however short each
/// TCP excursion. Lockstep in one thread (write until `EAGAIN`, read
/// everything written, acknowledge, read the acknowledgement), so the
/// phases do not depend on the scheduler; every byte both ways checked,
/// both sockets out of the map while the connection still talks, and EOF
/// after each shutdown.
#[test]
fn a_connection_in_a_pod_whose_writer_sends_most_messages_through_tcp_drains() {
    if !require_root() {
        return;
    }
    const MSG: usize = 16 << 10;
    const ACK: usize = 1 << 10;
    const MAX_CYCLES: u64 = 300;
    const AFTER_CYCLES: u64 = 4;
    let node = Node::new();
    let t = Two::new(&node);
    let (mut c, mut s) = t.loopback_pair();
    // The proxy's buffer fixed at 512 KiB (a budget of 256 KiB: ~15
    // messages of 16 KiB and their cost), the app's send buffer at 2 MiB
    // (~140 messages through TCP before it would block; measured 144).
    assert_eq!(set_int_opt(&s, libc::SO_RCVBUF, 256 << 10), 0, "SO_RCVBUF");
    assert_eq!(set_int_opt(&c, libc::SO_SNDBUF, 1 << 20), 0, "SO_SNDBUF");
    t.wait_sockets(2);
    let (draining, drained, redir, pass) = (
        t.counter("draining"),
        t.counter("drained"),
        t.counter("redir_msgs"),
        t.counter("pass_msgs"),
    );
    // Bytes each way so far: written, read.
    let (mut up, mut down) = ([0u64; 2], [0u64; 2]);
    let mut msg = vec![0u8; MSG];
    let mut got = vec![0u8; 256 << 10];
    let mut read_all = |r: &mut Nb, t: u8, upto: u64, read: &mut u64| {
        while *read < upto {
            let n = r.read(&mut got).unwrap();
            assert!(n > 0, "EOF at byte {read} of {upto}");
            for (k, b) in got[..n].iter().enumerate() {
                let at = *read + k as u64;
                assert_eq!(*b, writer_byte(t, at), "stream {t}: byte {at} differs");
            }
            *read += n as u64;
        }
    };
    let (mut cycles, mut drain_at) = (0u64, None);
    while cycles < drain_at.map_or(MAX_CYCLES, |at| at + AFTER_CYCLES) {
        // Write until the socket would block (a part of a message may go).
        loop {
            let from = up[0];
            for (k, b) in msg.iter_mut().enumerate() {
                *b = writer_byte(0, from + k as u64);
            }
            match c.0.write(&msg) {
                Ok(n) => up[0] += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        read_all(&mut s, 0, up[0], &mut up[1]);
        let ack: Vec<u8> = (down[0]..down[0] + ACK as u64)
            .map(|i| writer_byte(1, i))
            .collect();
        s.write_all(&ack).unwrap();
        down[0] += ACK as u64;
        read_all(&mut c, 1, down[0], &mut down[1]);
        cycles += 1;
        if drain_at.is_none() && t.counter("draining") > draining {
            drain_at = Some(cycles);
        }
    }
    let (redir, pass) = (
        t.counter("redir_msgs") - redir,
        t.counter("pass_msgs") - pass,
    );
    let at = drain_at.unwrap_or_else(|| {
        panic!(
            "the connection stayed on the mix for {MAX_CYCLES} cycles ({redir} messages \
             redirected, {pass} through TCP): {}",
            t.accel()
        )
    });
    eprintln!("drained after {at} cycles: {redir} messages redirected, {pass} through TCP");
    assert!(
        redir > 0 && redir < pass,
        "the writer should have redirected a small share: {redir} redirected, {pass} through TCP"
    );
    t.assert_drained(draining, drained);
    c.shutdown(Shutdown::Write);
    s.shutdown(Shutdown::Write);
    for r in [&mut s, &mut c] {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes after the last cycle", rest.len());
    }
}

/// Held by the tests whose outcome rests on how the scheduler shares CPU
/// 0 between a writer and its reader (a reader kept behind): another such
/// test's threads pinned there at the same time would change who keeps up.
static CPU0: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cpu0() -> std::sync::MutexGuard<'static, ()> {
    sluice_tests::take_turn(&CPU0)
}

/// What the tests of a reader kept behind send one way: numbered 64 KiB
/// blocks of pattern `seed`, until told to stop (once the socket left the
/// map: how many messages that takes depends on how the scheduler shares
/// the CPU between writer and reader) or at MAX_BLOCKS (4 GiB), then
/// AFTER_BLOCKS more (through TCP alone). Each block costs its writer a
/// memcpy and its reader a memcmp, as fast as the benchmark's writer and
/// reader (a slower reader keeps the writer on the shortcut). Both pinned
/// to CPU 0.
const BLOCK: usize = 64 << 10;
const MAX_BLOCKS: u64 = 65_536;
const AFTER_BLOCKS: u64 = 256;

fn number_block(i: u64, b: &mut [u8]) {
    b[..8].copy_from_slice(&i.to_le_bytes());
}

/// Writes blocks to `c` until `stop` and AFTER_BLOCKS more, then shuts
/// its writing side. Returns how many it wrote.
fn blocks_writer(mut c: Nb, seed: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        sluice_tests::pin_to_cpu(0).expect("pin to CPU 0");
        let mut b = pattern(seed, BLOCK);
        let (mut i, mut end) = (0, MAX_BLOCKS);
        while i < end {
            if end == MAX_BLOCKS && stop.load(Ordering::Relaxed) {
                end = i + AFTER_BLOCKS;
            }
            number_block(i, &mut b);
            c.write_all(&b).unwrap();
            i += 1;
        }
        c.shutdown(Shutdown::Write);
        i
    })
}

/// Reads blocks from `s` until EOF, each checked in order. Returns how
/// many it read.
fn blocks_reader(mut s: Nb, seed: u64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        sluice_tests::pin_to_cpu(0).expect("pin to CPU 0");
        let (mut got, mut want) = (vec![0u8; BLOCK], pattern(seed, BLOCK));
        for i in 0.. {
            let mut filled = 0;
            while filled < BLOCK {
                match s.read(&mut got[filled..]).unwrap() {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                return i;
            }
            assert_eq!(filled, BLOCK, "seed {seed}: block {i} cut short by EOF");
            number_block(i, &mut want);
            assert!(
                got == want,
                "seed {seed}: block {i} differs (got block {})",
                u64::from_le_bytes(got[..8].try_into().unwrap())
            );
        }
        unreachable!()
    })
}

/// The same inside a pod in both directions at once (an app and its
/// proxy streaming both ways, one CPU): each socket has been redirected
/// to, so neither may simply leave (leaving frees its queue of
/// redirected messages). The connection goes to TCP for good, and each
/// socket leaves once no redirect of its peer's can still be on its way
/// and its reader has read its queue. Every byte arrives in order both
/// ways, EOF follows each shutdown, and both sockets are out of the map
/// while the connection is still open.
#[test]
fn a_bidirectional_connection_its_readers_keep_behind_drains_to_tcp_and_loses_nothing() {
    if !require_root() {
        return;
    }
    let _cpu0 = cpu0();
    let node = Node::new();
    let t = Two::new(&node);
    let (c, s) = t.loopback_pair();
    t.wait_sockets(2);
    let (draining, drained, redirected) = (
        t.counter("draining"),
        t.counter("drained"),
        t.counter("redir_bytes"),
    );
    let keep = (c.try_clone(), s.try_clone());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        blocks_writer(c.try_clone(), 7, stop.clone()),
        blocks_writer(s.try_clone(), 8, stop.clone()),
    ];
    let readers = [blocks_reader(s, 7), blocks_reader(c, 8)];
    // Both out of the map while the connection still talks; then the rest.
    let out = eventually(60, || {
        t.counter("drained") >= drained + 2 && t.sockets() == 0
    });
    stop.store(true, Ordering::Relaxed);
    for (w, r) in writers.into_iter().zip(readers) {
        assert_eq!(r.join().unwrap(), w.join().unwrap(), "blocks read, written");
    }
    assert!(
        t.counter("redir_bytes") > redirected,
        "nothing redirected: {}",
        t.accel()
    );
    assert!(out, "both sockets should have left the map: {}", t.accel());
    t.assert_drained(draining, drained);
    drop(keep);
}

/// Byte `i` of writer `t`'s stream in the two-writer test: 7 bits of a
/// hash of `i` (a lost or repeated run shows as a mismatch), the top bit
/// the writer's, so the reader can follow each writer's stream through
/// any interleaving of the two.
fn writer_byte(t: u8, i: u64) -> u8 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x ^ (x >> 31)) as u8 & 0x7f) | (t << 7)
}

/// The drain with two threads writing to each socket at once, so that a
/// send of one thread may be between its verdict and its redirect while
/// the other's send marks the connection draining or finds it so (the
/// case the drain's proof is about: a message chosen for redirect before
/// the flag must be queued before its target leaves). Both directions;
/// each reader follows both writers' streams byte by byte through
/// whatever interleaving the two threads made. `one_cpu`: everything on
/// CPU 0, inside one pod, where the readers fall behind and the strikes
/// drain the connection; otherwise the writers of each socket on two
/// CPUs, and the node switch, turned off halfway, drains it.
fn two_writers_per_socket_drain(one_cpu: bool) {
    const PER_WRITER: u64 = 48 << 20;
    let _cpu0 = cpu0();
    let node = Node::new();
    let t = Two::new(&node);
    let (c, s) = t.loopback_pair();
    t.wait_sockets(2);
    let (draining, drained) = (t.counter("draining"), t.counter("drained"));
    let never = Arc::new(AtomicBool::new(false));
    let side = |sock: &Nb| {
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let cpu = if one_cpu { 0 } else { usize::from(w) };
                let n = PER_WRITER / STREAM_CHUNK;
                stream_writer(
                    sock.try_clone(),
                    w,
                    cpu,
                    0,
                    n,
                    Duration::ZERO,
                    never.clone(),
                )
            })
            .collect();
        let sock = sock.try_clone();
        std::thread::spawn(move || {
            for w in writers {
                w.join().unwrap();
            }
            sock.shutdown(Shutdown::Write);
        })
    };
    let (at_s, at_c): (Arc<[AtomicU64; 2]>, Arc<[AtomicU64; 2]>) = Default::default();
    let cpu = one_cpu.then_some(0);
    let keep = (c.try_clone(), s.try_clone());
    let (wc, ws) = (side(&c), side(&s));
    let rs = stream_reader(s, "server", cpu, at_s.clone());
    let rc = stream_reader(c, "client", cpu, at_c.clone());
    let read = |at: &[AtomicU64; 2]| [0, 1].map(|w| at[w].load(Ordering::Relaxed));
    if !one_cpu {
        // Halfway through (of 4 x PER_WRITER bytes in all), off.
        let half = 2 * PER_WRITER;
        assert!(
            eventually(30, || read(&at_s).iter().chain(&read(&at_c)).sum::<u64>()
                >= half),
            "the transfer did not get halfway"
        );
        t.switch(false);
    }
    for th in [wc, ws, rs, rc] {
        th.join().unwrap();
    }
    assert_eq!(read(&at_s), [PER_WRITER; 2], "server: bytes of each writer");
    assert_eq!(read(&at_c), [PER_WRITER; 2], "client: bytes of each writer");
    t.assert_drained(draining, drained);
    drop(keep);
}

#[test]
fn a_draining_connection_with_two_writers_per_socket_loses_nothing() {
    if require_root() {
        two_writers_per_socket_drain(true);
    }
}

#[test]
fn the_switch_off_drains_two_writers_per_socket_on_two_cpus_losing_nothing() {
    if require_root() {
        two_writers_per_socket_drain(false);
    }
}

/// What a stream writer writes at once (writer_byte): 4 KiB, so that a
/// socket's messages come in many stretches of 255.
const STREAM_CHUNK: u64 = 4 << 10;

/// Writes chunks of writer `w`'s stream (writer_byte) to `sock` from
/// byte `from` on, pinned to `cpu`: `n` of them, or until `stop` is set;
/// `pause` between chunks. Returns where the stream stands.
fn stream_writer(
    mut sock: Nb,
    w: u8,
    cpu: usize,
    from: u64,
    n: u64,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        sluice_tests::pin_to_cpu(cpu).expect("pin the writer");
        let mut i = from;
        for _ in 0..n {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let b: Vec<u8> = (i..i + STREAM_CHUNK).map(|k| writer_byte(w, k)).collect();
            sock.write_all(&b).unwrap();
            i += STREAM_CHUNK;
            std::thread::sleep(pause);
        }
        i
    })
}

/// Reads `sock` (reader `name`) until EOF, following each of two
/// writers' streams (writer_byte) byte by byte through whatever
/// interleaving they made, pinned to `cpu` if given; after each read,
/// `at` shows how far each writer's stream has arrived.
fn stream_reader(
    mut sock: Nb,
    name: &'static str,
    cpu: Option<usize>,
    at: Arc<[AtomicU64; 2]>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Some(cpu) = cpu {
            sluice_tests::pin_to_cpu(cpu).expect("pin the reader");
        }
        let mut pos = [0u64; 2];
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = sock.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            for &b in &buf[..n] {
                let w = usize::from(b >> 7);
                assert_eq!(
                    b,
                    writer_byte(w as u8, pos[w]),
                    "{name}: byte {} of writer {w} differs (lost, repeated or reordered)",
                    pos[w]
                );
                pos[w] += 1;
            }
            for w in 0..2 {
                at[w].store(pos[w], Ordering::Relaxed);
            }
        }
    })
}

/// A writer whose reader has kept up with it, then falls behind for a
/// while, stays on the shortcut and redirects again once its reader has
/// caught up: leaving is for good, and between pods on one CPU readers
/// fall behind now and then for thousands of messages (in accel-bench
/// runs a one-way writer left after such a stall and finished its round
/// at TCP's speed, 1 round in 5). A stall that lasts still takes it out.
/// Between pods, 4 KiB writes, everything on CPU 0; the stall is two
/// threads writing to the socket at once (its reader never has every
/// TCP byte when either sends); the reader follows each writer's stream
/// byte by byte.
#[test]
fn a_writer_whose_reader_kept_up_rides_out_a_stall_and_leaves_one_that_lasts() {
    if !require_root() {
        return;
    }
    let _cpu0 = cpu0();
    let node = Node::new();
    let t = Two::new(&node);
    let (c, s) = t.pair_default_buffers(false);
    t.wait_sockets(2);
    let evicted = t.counter("evicted");
    let read: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
    let reader = stream_reader(s, "server", Some(0), read.clone());
    let caught_up = |pos: [u64; 2]| {
        assert!(
            eventually(30, || (0..2)
                .all(|w| read[w].load(Ordering::Relaxed) == pos[w])),
            "the reader did not catch up: {}",
            t.accel()
        );
    };
    let go = Arc::new(AtomicBool::new(false));
    let slow = Duration::from_micros(300);
    let mut pos = [0u64; 2];
    // The reader keeps up with a writer that pauses between writes.
    let before = t.counter("redir_bytes");
    pos[0] = stream_writer(c.try_clone(), 0, 0, 0, 64, slow, go.clone())
        .join()
        .unwrap();
    caught_up(pos);
    t.assert_redirected(before, pos[0]);
    // The stall: two writers at full speed, ~3,200 writes, 12 stretches.
    fn two(c: &Nb, pos: [u64; 2], n: u64, stop: &Arc<AtomicBool>) -> [u64; 2] {
        let w0 = stream_writer(c.try_clone(), 0, 0, pos[0], n, Duration::ZERO, stop.clone());
        let w1 = stream_writer(c.try_clone(), 1, 0, pos[1], n, Duration::ZERO, stop.clone());
        [w0.join().unwrap(), w1.join().unwrap()]
    }
    pos = two(&c, pos, 1600, &go);
    caught_up(pos);
    assert_eq!(
        t.counter("evicted"),
        evicted,
        "the writer left the map after a stall of ~3,200 writes: {}",
        t.accel()
    );
    // Its reader caught up: it redirects again.
    let before = t.counter("redir_bytes");
    let from = pos[0];
    pos[0] = stream_writer(c.try_clone(), 0, 0, from, 64, slow, go.clone())
        .join()
        .unwrap();
    caught_up(pos);
    t.assert_redirected(before, pos[0] - from);
    assert_eq!(t.sockets(), 2, "{}", t.accel());
    // A stall that lasts: the writer leaves within ~12,000 writes.
    let stop = Arc::new(AtomicBool::new(false));
    let stall = std::thread::spawn({
        let (c, stop) = (c.try_clone(), stop.clone());
        move || two(&c, pos, u64::MAX, &stop)
    });
    let left = eventually(60, || t.counter("evicted") > evicted);
    stop.store(true, Ordering::Relaxed);
    pos = stall.join().unwrap();
    c.shutdown(Shutdown::Write);
    reader.join().unwrap();
    assert_eq!(
        [0, 1].map(|w| read[w].load(Ordering::Relaxed)),
        pos,
        "bytes of each writer"
    );
    assert!(
        left,
        "the writer stayed through a lasting stall: {}",
        t.accel()
    );
}
