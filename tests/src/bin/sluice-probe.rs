//! A tiny client and server for the service tests, run inside pod and node
//! namespaces: what a connect or a datagram to a service address reaches,
//! and what the application sees as its peer.
//!
//! serve tcp|udp PORT NAME   answer each connection (then echo lines) or
//!                           datagram with NAME, on [::]:PORT (v4 too)
//! tcp ADDR                  connect, print {"peer","reply"} as JSON
//! tcp-hold ADDR SECS        connect, read the name, wait SECS, then check
//!                           the connection still echoes
//! udp ADDR                  unconnected sendto/recvfrom: {"from","reply"}
//! udp-connected ADDR        connect, send, recv: {"peer","from","reply"}
//! rate ADDR COUNT           COUNT times: connect, read the answer, close;
//!                           {"count","secs","per_sec"}
//! udp-connected-wait ADDR   connect, send, recv, print; then wait for a line
//!                           on stdin and do it again on the same socket
//! flood ADDR COUNT          COUNT times: a new UDP socket, one sendto, its
//!                           answer read, close; {"count","answered","secs"}
//! burst ADDR THREADS EACH   THREADS threads released together, each EACH
//!                           times: connect, read the answer, close;
//!                           {"replies":{NAME:count},"errors":[..]}
//! serve tcp-peer PORT NAME  like serve tcp, answering NAME@<client address
//!                           as the server sees it>
//! serve udp-peer PORT NAME  like serve udp, answering NAME@<client address>
//! tcp-from ADDR SPORT       like tcp, from local port SPORT
//! http ADDR                 GET / ; {"status":CODE,"body":BODY}
//! steady ADDR CONNS MILLIS  for MILLIS (or until stdin has a line or
//!                           ends): CONNS established connections
//!                           each sending a line and reading its echo in
//!                           turn, and a new connection (connect, answer,
//!                           close) each round; {"requests","failed_requests",
//!                           "connects","failed_connects","errors":[..]}
//! bind tcp|udp ADDR         bind ADDR with IP(V6)_FREEBIND set, so only a
//!                           bind hook can refuse it: {"bound":true}
//! give PORT BYTES           for each connection: send BYTES of the fixed
//!                           stream, half-close, wait for EOF
//! take ADDR BYTES           connect, read to EOF; {"bytes","intact","secs",
//!                           "peer"}: intact if exactly the fixed stream
//! sink PORT                 accept connections on [::]:PORT one by one; read
//!                           each to EOF, answer {"bytes","hash"} of what
//!                           arrived, close
//! source ADDR BYTES         connect, send BYTES of a fixed pseudo-random
//!                           stream, half-close, read the sink's answer;
//!                           {"bytes","hash","secs","sink":{..}}

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn fail(what: &str, e: std::io::Error) -> ! {
    println!(
        "{{\"error\":\"{what}: {e}\",\"errno\":{}}}",
        e.raw_os_error().unwrap_or(0)
    );
    std::process::exit(1);
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| {
        eprintln!("{s:?} is not ip:port");
        std::process::exit(2)
    })
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let t = Duration::from_secs(3);
    match a.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", "tcp", port, name] => {
            let l = TcpListener::bind(format!("[::]:{port}")).unwrap_or_else(|e| fail("bind", e));
            for s in l.incoming().flatten() {
                let name = name.to_string();
                std::thread::spawn(move || {
                    let mut w = &s;
                    let _ = writeln!(w, "{name}");
                    for line in BufReader::new(&s).lines() {
                        let Ok(line) = line else { return };
                        if writeln!(w, "{line}").is_err() {
                            return;
                        }
                    }
                });
            }
        }
        ["serve", "tcp-peer", port, name] => {
            let l = TcpListener::bind(format!("[::]:{port}")).unwrap_or_else(|e| fail("bind", e));
            for s in l.incoming().flatten() {
                let peer = s
                    .peer_addr()
                    .map(|a| match a.ip() {
                        std::net::IpAddr::V6(v6) => v6
                            .to_ipv4_mapped()
                            .map(std::net::IpAddr::V4)
                            .unwrap_or(std::net::IpAddr::V6(v6)),
                        v4 => v4,
                    })
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                let mut w = &s;
                let _ = writeln!(w, "{name}@{peer}");
            }
        }
        ["give", port, bytes] => {
            let total: u64 = bytes.parse().expect("BYTES is a number");
            let l = TcpListener::bind(format!("[::]:{port}")).unwrap_or_else(|e| fail("bind", e));
            for mut s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut p = Pattern::default();
                    let mut buf = vec![0u8; 64 << 10];
                    let mut sent = 0u64;
                    while sent < total {
                        let n = (total - sent).min(buf.len() as u64) as usize;
                        p.fill(&mut buf[..n]);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        sent += n as u64;
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let _ = std::io::Read::read(&mut s, &mut buf);
                });
            }
        }
        ["take", dst, bytes] => {
            let total: u64 = bytes.parse().expect("BYTES is a number");
            let t0 = std::time::Instant::now();
            let mut s =
                TcpStream::connect_timeout(&addr(dst), t).unwrap_or_else(|e| fail("connect", e));
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let mut p = Pattern::default();
            let mut buf = vec![0u8; 256 << 10];
            let mut want = vec![0u8; 256 << 10];
            let (mut got, mut intact) = (0u64, true);
            loop {
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if intact {
                            p.fill(&mut want[..n]);
                            intact = buf[..n] == want[..n];
                        }
                        got += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => fail("read", e),
                }
            }
            println!(
                "{{\"bytes\":{got},\"intact\":{},\"secs\":{},\"peer\":\"{peer}\"}}",
                intact && got == total,
                t0.elapsed().as_secs_f64()
            );
        }
        ["serve", "udp-peer", port, name] => {
            let s = UdpSocket::bind(format!("[::]:{port}")).unwrap_or_else(|e| fail("bind", e));
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = s.recv_from(&mut buf) {
                let ip = match from.ip() {
                    std::net::IpAddr::V6(v6) => v6
                        .to_ipv4_mapped()
                        .map(std::net::IpAddr::V4)
                        .unwrap_or(std::net::IpAddr::V6(v6)),
                    v4 => v4,
                };
                let _ = s.send_to(format!("{name}@{ip}").as_bytes(), from);
            }
        }
        ["steady", dst, conns, millis] => steady(
            addr(dst),
            conns.parse().expect("CONNS"),
            Duration::from_millis(millis.parse().expect("MILLIS")),
        ),
        ["bind", proto, a] => match freebind(proto, addr(a)) {
            Ok(()) => println!("{{\"bound\":true}}"),
            Err(e) => fail("bind", e),
        },
        ["http", dst] => {
            let mut s =
                TcpStream::connect_timeout(&addr(dst), t).unwrap_or_else(|e| fail("connect", e));
            s.set_read_timeout(Some(t)).unwrap();
            write!(
                s,
                "GET / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n"
            )
            .unwrap_or_else(|e| fail("send", e));
            let mut text = String::new();
            std::io::Read::read_to_string(&mut s, &mut text).unwrap_or_else(|e| fail("read", e));
            let code: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("null");
            println!("{{\"status\":{code},\"body\":{body}}}");
        }
        ["serve", "udp", port, name] => {
            let s = UdpSocket::bind(format!("[::]:{port}")).unwrap_or_else(|e| fail("bind", e));
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(name.as_bytes(), from);
            }
        }
        ["tcp", dst] => {
            let t0 = std::time::Instant::now();
            let s = TcpStream::connect_timeout(&addr(dst), t).unwrap_or_else(|e| {
                println!(
                    "{{\"error\":\"connect: {e}\",\"errno\":{},\"connect_ms\":{}}}",
                    e.raw_os_error().unwrap_or(0),
                    t0.elapsed().as_secs_f64() * 1e3
                );
                std::process::exit(1)
            });
            s.set_read_timeout(Some(t)).unwrap();
            let peer = s.peer_addr().unwrap_or_else(|e| fail("getpeername", e));
            let mut line = String::new();
            BufReader::new(&s)
                .read_line(&mut line)
                .unwrap_or_else(|e| fail("read", e));
            println!("{{\"peer\":\"{peer}\",\"reply\":\"{}\"}}", line.trim());
        }
        ["tcp-from", dst, sport] => {
            use nix::sys::socket::{self as ns, sockopt, AddressFamily, SockFlag, SockType};
            let d = addr(dst);
            let fam = if d.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = ns::socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .unwrap_or_else(|e| fail("socket", e.into()));
            ns::setsockopt(&fd, sockopt::ReuseAddr, &true)
                .unwrap_or_else(|e| fail("setsockopt", e.into()));
            let port: u16 = sport.parse().expect("SPORT is a port");
            let local: SocketAddr = if d.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], port))
            } else {
                SocketAddr::from(([0u16; 8], port))
            };
            ns::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &ns::SockaddrStorage::from(local),
            )
            .unwrap_or_else(|e| fail("bind", e.into()));
            ns::connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &ns::SockaddrStorage::from(d),
            )
            .unwrap_or_else(|e| fail("connect", e.into()));
            let s = TcpStream::from(fd);
            s.set_read_timeout(Some(t)).unwrap();
            let mut line = String::new();
            BufReader::new(&s)
                .read_line(&mut line)
                .unwrap_or_else(|e| fail("read", e));
            println!("{{\"reply\":\"{}\"}}", line.trim());
        }
        ["tcp-hold", dst, secs] => {
            let s =
                TcpStream::connect_timeout(&addr(dst), t).unwrap_or_else(|e| fail("connect", e));
            s.set_read_timeout(Some(t)).unwrap();
            let mut r = BufReader::new(&s);
            let mut name = String::new();
            r.read_line(&mut name).unwrap_or_else(|e| fail("read", e));
            std::thread::sleep(Duration::from_secs_f64(secs.parse().unwrap_or(1.0)));
            let mut w = &s;
            writeln!(w, "still-there").unwrap_or_else(|e| fail("write", e));
            let mut echo = String::new();
            r.read_line(&mut echo)
                .unwrap_or_else(|e| fail("read after wait", e));
            println!(
                "{{\"reply\":\"{}\",\"echo\":\"{}\"}}",
                name.trim(),
                echo.trim()
            );
        }
        ["udp", dst] => {
            let d = addr(dst);
            let s = UdpSocket::bind(if d.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                .unwrap_or_else(|e| fail("bind", e));
            s.set_read_timeout(Some(t)).unwrap();
            s.send_to(b"hi", d).unwrap_or_else(|e| fail("sendto", e));
            let mut buf = [0u8; 1500];
            let (n, from) = s
                .recv_from(&mut buf)
                .unwrap_or_else(|e| fail("recvfrom", e));
            println!(
                "{{\"from\":\"{from}\",\"reply\":\"{}\"}}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        ["udp-connected", dst] => {
            let d = addr(dst);
            let s = UdpSocket::bind(if d.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                .unwrap_or_else(|e| fail("bind", e));
            s.set_read_timeout(Some(t)).unwrap();
            s.connect(d).unwrap_or_else(|e| fail("connect", e));
            let peer = s.peer_addr().unwrap_or_else(|e| fail("getpeername", e));
            s.send(b"hi").unwrap_or_else(|e| fail("send", e));
            let mut buf = [0u8; 1500];
            let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| fail("recv", e));
            println!(
                "{{\"peer\":\"{peer}\",\"from\":\"{from}\",\"reply\":\"{}\"}}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        ["udp-connected-wait", dst] => {
            let d = addr(dst);
            let s = UdpSocket::bind(if d.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                .unwrap_or_else(|e| fail("bind", e));
            s.set_read_timeout(Some(t)).unwrap();
            s.connect(d).unwrap_or_else(|e| fail("connect", e));
            let round = |s: &UdpSocket| {
                let peer = s.peer_addr().unwrap_or_else(|e| fail("getpeername", e));
                s.send(b"hi").unwrap_or_else(|e| fail("send", e));
                let mut buf = [0u8; 1500];
                let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| fail("recv", e));
                println!(
                    "{{\"peer\":\"{peer}\",\"from\":\"{from}\",\"reply\":\"{}\"}}",
                    String::from_utf8_lossy(&buf[..n])
                );
                std::io::stdout().flush().unwrap();
            };
            round(&s);
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            round(&s);
        }
        ["flood", dst, count] => {
            let d = addr(dst);
            let n: u32 = count.parse().unwrap_or(1000);
            let t0 = std::time::Instant::now();
            let mut answered = 0u32;
            let mut buf = [0u8; 64];
            for _ in 0..n {
                let s = UdpSocket::bind(if d.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                    .unwrap_or_else(|e| fail("bind", e));
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                s.send_to(b"x", d).unwrap_or_else(|e| fail("sendto", e));
                // A resolver reads its answer: the reverse translation is
                // used, not only written.
                answered += u32::from(s.recv_from(&mut buf).is_ok());
            }
            println!(
                "{{\"count\":{n},\"answered\":{answered},\"secs\":{}}}",
                t0.elapsed().as_secs_f64()
            );
        }
        ["rate", dst, count] => {
            let d = addr(dst);
            let n: u32 = count.parse().unwrap_or(1000);
            let t0 = std::time::Instant::now();
            let mut buf = [0u8; 256];
            for _ in 0..n {
                let mut s =
                    TcpStream::connect_timeout(&d, t).unwrap_or_else(|e| fail("connect", e));
                s.set_read_timeout(Some(t)).unwrap();
                use std::io::Read;
                let got = s.read(&mut buf).unwrap_or_else(|e| fail("read", e));
                if got == 0 {
                    fail("read", std::io::Error::other("closed before answering"));
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "{{\"count\":{n},\"secs\":{secs},\"per_sec\":{}}}",
                n as f64 / secs
            );
        }
        ["burst", dst, threads, each] => {
            let d = addr(dst);
            let threads: usize = threads.parse().unwrap_or(8);
            let each: usize = each.parse().unwrap_or(25);
            let start = std::sync::Arc::new(std::sync::Barrier::new(threads));
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let start = start.clone();
                    std::thread::spawn(move || {
                        start.wait();
                        (0..each)
                            .map(|_| -> Result<String, String> {
                                let s = TcpStream::connect_timeout(&d, t)
                                    .map_err(|e| format!("connect: {e}"))?;
                                s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
                                let mut line = String::new();
                                BufReader::new(&s)
                                    .read_line(&mut line)
                                    .map_err(|e| format!("read: {e}"))?;
                                Ok(line.trim().to_string())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut replies = std::collections::BTreeMap::<String, usize>::new();
            let mut errors = Vec::new();
            for w in workers {
                for r in w.join().expect("burst thread") {
                    match r {
                        Ok(name) => *replies.entry(name).or_default() += 1,
                        Err(e) => errors.push(e),
                    }
                }
            }
            let replies: Vec<String> = replies
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            let errors: Vec<String> = errors.iter().map(|e| format!("{e:?}")).collect();
            println!(
                "{{\"replies\":{{{}}},\"errors\":[{}]}}",
                replies.join(","),
                errors.join(",")
            );
        }
        ["sink", port] => {
            let l = TcpListener::bind(format!("[::]:{port}")).unwrap_or_else(|e| fail("bind", e));
            for mut s in l.incoming().flatten() {
                let mut h = StreamHash::default();
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match std::io::Read::read(&mut s, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => h.feed(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = writeln!(s, "{{\"bytes\":{},\"hash\":\"{:016x}\"}}", h.bytes, h.hash);
            }
        }
        ["source", dst, bytes] => {
            let total: u64 = bytes.parse().expect("BYTES is a number");
            let t0 = std::time::Instant::now();
            let mut s =
                TcpStream::connect_timeout(&addr(dst), t).unwrap_or_else(|e| fail("connect", e));
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut h = StreamHash::default();
            let mut p = Pattern::default();
            let mut buf = vec![0u8; 64 << 10];
            while h.bytes < total {
                let n = (total - h.bytes).min(buf.len() as u64) as usize;
                p.fill(&mut buf[..n]);
                s.write_all(&buf[..n]).unwrap_or_else(|e| fail("send", e));
                h.feed(&buf[..n]);
            }
            s.shutdown(std::net::Shutdown::Write)
                .unwrap_or_else(|e| fail("shutdown", e));
            let mut line = String::new();
            BufReader::new(&s)
                .read_line(&mut line)
                .unwrap_or_else(|e| fail("reading the sink's answer", e));
            println!(
                "{{\"bytes\":{},\"hash\":\"{:016x}\",\"secs\":{},\"sink\":{}}}",
                h.bytes,
                h.hash,
                t0.elapsed().as_secs_f64(),
                if line.trim().is_empty() {
                    "null"
                } else {
                    line.trim()
                }
            );
        }
        _ => {
            eprintln!("usage: sluice-probe serve tcp|udp PORT NAME | tcp ADDR | tcp-hold ADDR SECS | udp ADDR | udp-connected ADDR | udp-connected-wait ADDR | flood ADDR COUNT | rate ADDR COUNT | burst ADDR THREADS EACH | sink PORT | source ADDR BYTES | give PORT BYTES | take ADDR BYTES | serve tcp-peer PORT NAME | serve udp-peer PORT NAME | http ADDR | tcp-from ADDR SPORT");
            std::process::exit(2);
        }
    }
}

/// FNV-1a over a byte stream, with its length.
#[derive(Default)]
struct StreamHash {
    bytes: u64,
    hash: u64,
}

impl StreamHash {
    fn feed(&mut self, b: &[u8]) {
        if self.bytes == 0 && self.hash == 0 {
            self.hash = 0xcbf2_9ce4_8422_2325;
        }
        for x in b {
            self.hash ^= u64::from(*x);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.bytes += b.len() as u64;
    }
}

/// The fixed pseudo-random stream (xorshift64, little-endian words),
/// continued across calls.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern {
            state: 0x9e37_79b9_7f4a_7c15,
            word: [0; 8],
            used: 8,
        }
    }
}

impl Pattern {
    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// A socket bound to `a` with IP_FREEBIND / IPV6_FREEBIND: any address is
/// accepted by the kernel, local or not, as a pod may do without any
/// capability.
fn freebind(proto: &str, a: SocketAddr) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (family, level, opt) = match a {
        SocketAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_IP, libc::IP_FREEBIND),
        SocketAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND),
    };
    let ty = if proto == "udp" {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: plain socket calls on an fd we own; the address outlives bind.
    unsafe {
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let sa = nix::sys::socket::SockaddrStorage::from(a);
        if libc::bind(
            fd.as_raw_fd(),
            nix::sys::socket::SockaddrLike::as_ptr(&sa),
            nix::sys::socket::SockaddrLike::len(&sa),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Steady service traffic for the fault tests: requests on established
/// connections (whose failure is a lost request) and new connections
/// (whose failure is a lost connect). A failed established connection is
/// replaced, so one fault is counted once, not for the rest of the run.
fn steady(dst: SocketAddr, conns: usize, run: Duration) {
    let t = Duration::from_secs(3);
    let open = |n: &mut u64, failed: &mut u64, errors: &mut Vec<String>| {
        *n += 1;
        let r = TcpStream::connect_timeout(&dst, t).and_then(|s| {
            s.set_read_timeout(Some(t))?;
            s.set_nodelay(true)?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut name = String::new();
            r.read_line(&mut name)?;
            if name.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok((s, r))
        });
        r.map_err(|e| {
            *failed += 1;
            if errors.len() < 10 {
                errors.push(format!("connect: {e}"));
            }
        })
        .ok()
    };
    let (mut connects, mut failed_connects) = (0u64, 0u64);
    let (mut requests, mut failed_requests) = (0u64, 0u64);
    let mut errors = Vec::new();
    let mut held: Vec<Option<(TcpStream, BufReader<TcpStream>)>> = (0..conns)
        .map(|_| open(&mut connects, &mut failed_connects, &mut errors))
        .collect();
    // A line on stdin, or its end, stops the run early.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        stop2.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let start = std::time::Instant::now();
    let mut round = 0u64;
    while start.elapsed() < run && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        round += 1;
        for h in held.iter_mut() {
            let Some((s, r)) = h.as_mut() else {
                *h = open(&mut connects, &mut failed_connects, &mut errors);
                continue;
            };
            requests += 1;
            let mut line = String::new();
            let ok = writeln!(s, "r{round}")
                .and_then(|()| r.read_line(&mut line))
                .map(|_| line.trim_end() == format!("r{round}"));
            if !matches!(ok, Ok(true)) {
                failed_requests += 1;
                if errors.len() < 10 {
                    errors.push(format!(
                        "request on an established connection: {ok:?} {line:?}"
                    ));
                }
                *h = None;
            }
        }
        drop(open(&mut connects, &mut failed_connects, &mut errors));
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "{}",
        serde_json::json!({
            "requests": requests,
            "failed_requests": failed_requests,
            "connects": connects,
            "failed_connects": failed_connects,
            "errors": errors,
        })
    );
}
