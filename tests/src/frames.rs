//! Real frames from a pod: builders for the Ethernet frames a hostile pod
//! with CAP_NET_RAW can send (spoofed sources, VLAN tags, ARP, neighbour
//! discovery, router advertisements), a packet socket to send them on and
//! read answers from, and a UDP sink that counts what arrives. Each runs
//! on a thread of its own that entered the namespace, never on the test's
//! thread.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `f` on a new thread inside the netns at `path` and returns its
/// result.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(path).expect("open netns");
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the fd is valid.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns: {}",
            io::Error::last_os_error()
        );
        f()
    })
    .join()
    .expect("netns thread")
}

pub type Mac = [u8; 6];

/// The MAC of `ifname` in the calling thread's netns.
pub fn mac_of(ifname: &str) -> Mac {
    // SAFETY: plain socket + ioctl with a zeroed ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        libc::close(fd);
        assert_eq!(rc, 0, "SIOCGIFHWADDR {ifname}");
        let sa = req.ifr_ifru.ifru_hwaddr.sa_data;
        [
            sa[0] as u8,
            sa[1] as u8,
            sa[2] as u8,
            sa[3] as u8,
            sa[4] as u8,
            sa[5] as u8,
        ]
    }
}

pub fn ifindex_of(ifname: &str) -> u32 {
    let c = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "no interface {ifname}");
    i
}

/// An AF_PACKET socket bound to one interface, for whole frames.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl PacketSocket {
    /// Opens it on `ifname` of the calling thread's netns.
    pub fn open(ifname: &str) -> Self {
        let ifindex = ifindex_of(ifname);
        // SAFETY: plain socket(2); ETH_P_ALL in network order.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            )
        };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: we own the new descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_ll with family, protocol and ifindex.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
        PacketSocket { fd, ifindex }
    }

    /// Sends one whole frame (no VLAN offload: tags stay in the data, as a
    /// hostile pod would send them).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: a zeroed sockaddr_ll naming the interface.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and sll are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "sendto: {}",
            io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for an incoming frame that `want` accepts.
    pub fn recv_matching(&self, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r <= 0 {
                continue;
            }
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            // Only what comes in, not our own frames going out.
            if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING && want(&buf[..n as usize]) {
                return true;
            }
        }
        false
    }
}

/// A UDP socket on `[::]:port` (IPv4 too) in the calling thread's netns.
pub fn udp_sink(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).expect("bind sink");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Reads what arrives on `s` for `window`; returns the payloads.
pub fn drain(s: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    }
    out
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

pub fn eth(dst: Mac, src: Mac, proto: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

/// Inserts a VLAN tag (`tpid`, VID `vid`) after the MAC addresses.
pub fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

fn csum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An IPv4 UDP datagram in a frame.
pub fn udp4(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let body = udp(40000, dport, payload);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(dst_mac, src_mac, ETH_P_IP);
    f.extend(ip);
    // UDP checksum 0: none, allowed over IPv4.
    f.extend(body);
    f
}

/// The pseudo-header an IPv6 transport checksum covers: addresses, the
/// upper-layer length and the next header.
fn ipv6_pseudo_header(src: Ipv6Addr, dst: Ipv6Addr, len: usize, next: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next]);
    p
}

/// An IPv6 packet in a frame from `macs.1` to `macs.0`, with the
/// transport checksum written at `csum_at` of `body` when given.
fn ipv6_frame(
    macs: (Mac, Mac),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hop: u8,
    mut body: Vec<u8>,
    csum_at: Option<usize>,
) -> Vec<u8> {
    if let Some(at) = csum_at {
        let mut sum = 0u32;
        for c in ipv6_pseudo_header(src, dst, body.len(), next).chunks(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        body[at..at + 2].copy_from_slice(&[0, 0]);
        // A computed 0 goes out as 0xffff, its one's-complement equal: UDP
        // reads 0 as "no checksum", which IPv6 forbids, and the receiver
        // drops the datagram (one in 65,535 did, and a test lost it).
        let c = match csum(&body, sum) {
            0 => 0xffff,
            c => c,
        };
        body[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = eth(macs.0, macs.1, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, hop]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend(body);
    f
}

/// An IPv6 UDP datagram in a frame.
pub fn udp6(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    ipv6_frame(
        (dst_mac, src_mac),
        src,
        dst,
        17,
        64,
        udp(40000, dport, payload),
        Some(6),
    )
}

/// A UDP datagram of either family.
pub fn udp_any(
    dst_mac: Mac,
    src_mac: Mac,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => udp4(dst_mac, src_mac, s, d, dport, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp6(dst_mac, src_mac, s, d, dport, payload),
        _ => panic!("mixed families"),
    }
}

/// An ARP request for `target` from (`src_mac`, `sender`).
pub fn arp_request(src_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = eth([0xff; 6], src_mac, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// Whether `frame` is an ARP reply that says where `ip` is.
pub fn is_arp_reply_for(frame: &[u8], ip: Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[12..14] == ETH_P_ARP.to_be_bytes()
        && frame[20..22] == [0, 2]
        && frame[28..32] == ip.octets()
}

/// The solicited-node multicast address and MAC of `target`.
fn solicited(target: Ipv6Addr) -> (Ipv6Addr, Mac) {
    let t = target.octets();
    let ip = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | t[13] as u16,
        u16::from_be_bytes([t[14], t[15]]),
    );
    let o = ip.octets();
    (ip, [0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// A neighbour solicitation for `target` from `src`.
pub fn neighbour_solicitation(src_mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let (dst, dst_mac) = solicited(target);
    let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    // Source link-layer address option.
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src_mac);
    ipv6_frame((dst_mac, src_mac), src, dst, 58, 255, body, Some(2))
}

/// Whether `frame` is a neighbour advertisement for `target`.
pub fn is_neighbour_advert_for(frame: &[u8], target: Ipv6Addr) -> bool {
    frame.len() >= 14 + 40 + 24
        && frame[12..14] == ETH_P_IPV6.to_be_bytes()
        && frame[20] == 58
        && frame[54] == 136
        && frame[62..78] == target.octets()
}

/// A router advertisement from `src` (link-local) to all nodes: a default
/// router with a lifetime, and a route to `prefix`/64 (route information
/// option), so a node that takes it gains routes.
pub fn router_advertisement(src_mac: Mac, src: Ipv6Addr, prefix: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    // Source link-layer address.
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src_mac);
    // Route information (RFC 4191): /64, lifetime 1800 s.
    body.extend_from_slice(&[24, 3, 64, 0, 0, 0, 0x07, 0x08]);
    body.extend_from_slice(&prefix.octets());
    let dst: Ipv6Addr = "ff02::1".parse().unwrap();
    ipv6_frame(
        ([0x33, 0x33, 0, 0, 0, 1], src_mac),
        src,
        dst,
        58,
        255,
        body,
        Some(2),
    )
}

/// A redirect from `src` telling the node that `dest` is reached via
/// `target`.
pub fn redirect(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    dest: Ipv6Addr,
) -> Vec<u8> {
    let mut body = vec![137, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&dest.octets());
    ipv6_frame((dst_mac, src_mac), src, dst, 58, 255, body, Some(2))
}

/// A frame of an L3 protocol a pod has no business sending.
pub fn other_protocol(dst_mac: Mac, src_mac: Mac, ethertype: u16) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ethertype);
    f.extend_from_slice(&[0x5c; 46]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UDP checksum field of an IPv6 frame from `udp6`.
    fn udp6_checksum(f: &[u8]) -> u16 {
        u16::from_be_bytes([f[14 + 40 + 6], f[14 + 40 + 7]])
    }

    /// Among all ports, the one whose datagram sums to a checksum of 0
    /// goes out with 0xffff, and every checksum verifies.
    #[test]
    fn a_udp_datagram_over_ipv6_never_carries_a_zero_checksum() {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fd00:215::2".parse().unwrap(),
            "fd00:215::1".parse().unwrap(),
        );
        let mut all_ones = 0;
        for port in 0..=u16::MAX {
            let f = udp6([2; 6], [4; 6], src, dst, port, b"own6-7");
            let c = udp6_checksum(&f);
            assert_ne!(c, 0, "port {port}");
            all_ones += usize::from(c == 0xffff);
            // Verifying sums the pseudo-header and the datagram, checksum
            // included: a valid one gives 0 after the final complement.
            let mut summed = ipv6_pseudo_header(src, dst, f.len() - 54, 17);
            summed.extend_from_slice(&f[54..]);
            assert_eq!(csum(&summed, 0), 0, "port {port}");
        }
        assert_eq!(all_ones, 1, "exactly one port sums to 0 before the fix-up");
    }
}
