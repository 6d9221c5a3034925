//! Ends the connected UDP sockets that still point at a backend which left
//! its service.
//!
//! A socket that did `connect(ClusterIP:53/udp)` was translated once, at
//! connect, to one backend, and keeps sending there after the backend left
//! the EndpointSlice: to nothing, or to whatever pod gets that address
//! next. kube-proxy deletes the conntrack entries of such stale UDP
//! endpoints; Cilium destroys the sockets. So does this: the connect hook
//! records each connected UDP socket it translates (socket cookie → netns
//! cookie, frontend, backend) in `sluice_udp_conn`, and sock_release drops
//! the record when the socket closes. For each backend that left a UDP
//! frontend (removed, no longer ready, or its service gone), the sockets
//! recorded for it are found in their network namespace through sock_diag
//! and destroyed with `SOCK_DESTROY`. The application sees an error
//! (`ECONNABORTED` on receive, `EDESTADDRREQ` on send) and connects again,
//! to a live backend. TCP connections are left to end as they would under
//! kube-proxy and Cilium: a terminating backend keeps its own.
//!
//! `SOCK_DESTROY` needs `CONFIG_INET_DIAG_DESTROY`, which [`probe`] checks
//! at start. sock_diag sees one network namespace, so the thread enters the
//! node's and each affected pod's in turn (found by netns cookie in the
//! endpoint records); no pod waits on it.

use sluice_common::endpoint::EndpointRecord;
use sluice_dataplane::maps::{self, UdpConn};
use sluice_dataplane::sys;
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tracing::{debug, info, warn};

/// A backend that left a UDP frontend: (the frontend's svc_id, backend id).
pub type Left = (u32, u32);

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const TCP_ESTABLISHED: u32 = 1;
/// `struct inet_diag_sockid`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`, as far as we read it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

fn bytes<T>(v: &T) -> &[u8] {
    // SAFETY: T is a repr(C) struct of integers without padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
}

fn read<T: Default + Copy>(b: &[u8]) -> Option<T> {
    if b.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain integers, any bytes are valid.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A sock_diag socket in the calling thread's network namespace.
struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: a valid option value of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Diag { fd, seq: 0 })
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq += 1;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: a valid buffer of `len` bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads the replies to request `seq` until its end (a dump's DONE, or
    /// an ACK/error), handing each message's payload to `f`.
    fn replies(&self, seq: u32, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: a valid buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes"));
                if len < 16 || len > b.len() {
                    return Err(io::Error::other("truncated sock_diag message"));
                }
                let payload = &b[16..len];
                b = &b[align4(len).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match kind {
                    k if k == libc::NLMSG_DONE as u16 => return Ok(()),
                    k if k == libc::NLMSG_ERROR as u16 => {
                        let err = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
                        return if err == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-err))
                        };
                    }
                    _ => f(payload),
                }
            }
        }
    }
}

/// A connected UDP socket to end, as sock_diag names it.
#[derive(Debug, Clone, Copy)]
struct Stale {
    family: u8,
    id: SockId,
}

fn cookie_of(id: &SockId) -> u64 {
    u64::from(id.cookie[0]) | (u64::from(id.cookie[1]) << 32)
}

/// The connected UDP sockets of the calling thread's netns whose cookies
/// are in `cookies`.
fn find(diag: &mut Diag, cookies: &HashSet<u64>) -> io::Result<Vec<Stale>> {
    let mut out = Vec::new();
    let mut seen = 0;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let req = ReqV2 {
            family,
            protocol: libc::IPPROTO_UDP as u8,
            states: 1 << TCP_ESTABLISHED,
            ..Default::default()
        };
        let seq = diag.send(SOCK_DIAG_BY_FAMILY, libc::NLM_F_DUMP as u16, bytes(&req))?;
        diag.replies(seq, |payload| {
            let Some(msg) = read::<DiagMsg>(payload) else {
                return;
            };
            seen += 1;
            if cookies.contains(&cookie_of(&msg.id)) {
                out.push(Stale {
                    family: msg.family,
                    id: msg.id,
                });
            }
        })?;
    }
    debug!(
        connected_udp = seen,
        wanted = cookies.len(),
        found = out.len(),
        "looked for UDP sockets pointing at backends that left"
    );
    Ok(out)
}

/// Destroys one socket; `Ok(false)` if it was already gone.
fn destroy(diag: &mut Diag, s: &Stale) -> io::Result<bool> {
    let req = ReqV2 {
        family: s.family,
        protocol: libc::IPPROTO_UDP as u8,
        states: u32::MAX,
        id: s.id,
        ..Default::default()
    };
    let seq = diag.send(SOCK_DESTROY, libc::NLM_F_ACK as u16, bytes(&req))?;
    match diag.replies(seq, |_| {}) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What the terminator did, for status and metrics.
#[derive(Debug, Default)]
pub struct TermStats {
    pub destroyed: AtomicU64,
    pub passes: AtomicU64,
    pub errors: AtomicU64,
}

/// The thread that ends stale connected UDP sockets; see the module docs.
#[derive(Debug)]
pub struct Terminator {
    tx: mpsc::Sender<Vec<Left>>,
    pub stats: Arc<TermStats>,
}

impl Terminator {
    /// Starts the thread in the calling thread's (the node's) netns.
    /// `udp_conn` is the pinned connected-UDP map; pods' netns come from
    /// the endpoint records under `state_dir`.
    pub fn start(state_dir: &Path, udp_conn: OwnedFd) -> io::Result<Self> {
        let node = std::fs::File::open("/proc/thread-self/ns/net")?;
        let node_cookie = netns_cookie()?;
        let (tx, rx) = mpsc::channel::<Vec<Left>>();
        let stats = Arc::new(TermStats::default());
        let st = stats.clone();
        let state_dir = state_dir.to_path_buf();
        std::thread::Builder::new()
            .name("sluiced-sockterm".into())
            .spawn(move || {
                crate::housekeeping_priority();
                while let Ok(first) = rx.recv() {
                    let mut left: HashSet<Left> = first.into_iter().collect();
                    while let Ok(more) = rx.try_recv() {
                        left.extend(more);
                    }
                    let targets = match targets(udp_conn.as_fd(), &left) {
                        Ok(t) => t,
                        Err(e) => {
                            st.errors.fetch_add(1, Ordering::Relaxed);
                            warn!("reading {}: {e}", maps::UDP_CONN.name);
                            continue;
                        }
                    };
                    let n = sweep(&state_dir, (&node, node_cookie), &targets, &st);
                    st.passes.fetch_add(1, Ordering::Relaxed);
                    if n > 0 {
                        info!(
                            sockets = n,
                            backends = left.len(),
                            "ended connected UDP sockets still pointing at backends that left"
                        );
                    }
                }
            })?;
        Ok(Terminator { tx, stats })
    }

    /// Ends the connected UDP sockets translated to these backends (on the
    /// thread; returns at once).
    pub fn terminate(&self, left: Vec<Left>) {
        if !left.is_empty() {
            let _ = self.tx.send(left);
        }
    }
}

/// The cookie of the calling thread's network namespace.
fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: i32 = 71;
    let s = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut v = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid buffer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// The recorded connected UDP sockets translated to a backend in `left`:
/// socket cookies by netns cookie.
fn targets(
    map: BorrowedFd<'_>,
    left: &HashSet<Left>,
) -> io::Result<std::collections::BTreeMap<u64, HashSet<u64>>> {
    let mut out: std::collections::BTreeMap<u64, HashSet<u64>> = Default::default();
    for key in sys::map_keys(map, 8)? {
        let mut v = UdpConn::default();
        if !sys::map_lookup(map, &key, maps::bytes_of_mut(&mut v))? {
            continue;
        }
        if left.contains(&(v.svc_id, v.backend_id)) {
            let cookie = u64::from_ne_bytes(key[..8].try_into().expect("8-byte key"));
            out.entry(v.netns_cookie).or_default().insert(cookie);
        }
    }
    Ok(out)
}

/// The network namespaces of the node's pods by netns cookie, from their
/// records.
fn pod_netns(state_dir: &Path) -> std::collections::HashMap<u64, PathBuf> {
    EndpointRecord::list(state_dir)
        .0
        .into_iter()
        .filter_map(|r| Some((r.netns_cookie?, PathBuf::from(r.netns))))
        .collect()
}

/// Ends the target sockets, netns by netns. Returns how many.
fn sweep(
    state_dir: &Path,
    (node, node_cookie): (&std::fs::File, u64),
    targets: &std::collections::BTreeMap<u64, HashSet<u64>>,
    stats: &TermStats,
) -> u64 {
    if targets.is_empty() {
        return 0;
    }
    let pods = pod_netns(state_dir);
    let mut ended = 0;
    for (netns, cookies) in targets {
        let what = if *netns == node_cookie {
            "the node's netns".to_string()
        } else {
            let Some(path) = pods.get(netns) else {
                // A pod that is gone: its sockets went with it.
                continue;
            };
            let Ok(f) = std::fs::File::open(path) else {
                continue;
            };
            if nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                continue;
            }
            path.display().to_string()
        };
        match in_this_netns(cookies) {
            Ok(n) => ended += n,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!("ending stale UDP sockets in {what}: {e}");
            }
        }
        if *netns != node_cookie {
            if let Err(e) = nix::sched::setns(node.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET) {
                warn!("cannot return to the node's netns: {e}");
                break;
            }
        }
    }
    stats.destroyed.fetch_add(ended, Ordering::Relaxed);
    ended
}

fn in_this_netns(cookies: &HashSet<u64>) -> io::Result<u64> {
    let mut diag = Diag::open()?;
    let mut n = 0;
    for s in &find(&mut diag, cookies)? {
        if destroy(&mut diag, s)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Whether this kernel can end sockets for us: `SOCK_DESTROY` on UDP
/// (`CONFIG_INET_DIAG_DESTROY`), tried on a connected UDP socket of our
/// own. `Err` says what is missing.
pub fn probe() -> Result<(), String> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    s.connect(peer.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let mut diag = Diag::open().map_err(|e| format!("sock_diag: {e}"))?;
    let mut id = SockId {
        sport: local.port().to_be(),
        dport: peer.local_addr().map_err(|e| e.to_string())?.port().to_be(),
        ..Default::default()
    };
    id.src[..4].copy_from_slice(&[127, 0, 0, 1]);
    id.dst[..4].copy_from_slice(&[127, 0, 0, 1]);
    id.cookie = [u32::MAX, u32::MAX];
    let stale = Stale {
        family: libc::AF_INET as u8,
        id,
    };
    match destroy(&mut diag, &stale) {
        Ok(true) => Ok(()),
        Ok(false) => Err("SOCK_DESTROY did not find a socket it should have".into()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            Err("the kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY is off)".into())
        }
        Err(e) => Err(format!("SOCK_DESTROY: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(size_of::<SockId>(), 48);
        assert_eq!(size_of::<ReqV2>(), 56);
        assert_eq!(size_of::<DiagMsg>(), 72);
    }

    /// The sockets a pass ends are exactly the recorded ones of the
    /// backends that left, found by cookie and destroyed: here a connected
    /// socket of our own, recorded as the connect hook records it.
    #[test]
    fn a_recorded_socket_of_a_backend_that_left_is_ended() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let map = sys::map_create(1, 8, 16, 16, 0, "test_udp_conn").unwrap();
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sockets = Vec::new();
        for (svc_id, backend_id) in [(3, 8), (3, 9)] {
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            c.connect(server.local_addr().unwrap()).unwrap();
            let mut cookie = 0u64;
            let mut len = size_of::<u64>() as libc::socklen_t;
            // SAFETY: a valid buffer for SO_COOKIE's u64.
            let rc = unsafe {
                libc::getsockopt(
                    c.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            let v = UdpConn {
                netns_cookie: netns_cookie().unwrap(),
                svc_id,
                backend_id,
            };
            sys::map_update(map.as_fd(), &cookie.to_ne_bytes(), maps::bytes_of(&v), 0).unwrap();
            sockets.push(c);
        }
        let left: HashSet<Left> = [(3, 8)].into();
        let t = targets(map.as_fd(), &left).unwrap();
        assert_eq!(t.values().map(HashSet::len).sum::<usize>(), 1);
        let cookies = t.values().next().unwrap();
        assert_eq!(in_this_netns(cookies).unwrap(), 1);
        let err = sockets[0].send(b"x").unwrap_err();
        assert!(
            matches!(
                err.raw_os_error(),
                Some(libc::EDESTADDRREQ) | Some(libc::ECONNABORTED)
            ),
            "{err}"
        );
        sockets[1]
            .send(b"x")
            .expect("the other backend's socket is untouched");
    }
}
