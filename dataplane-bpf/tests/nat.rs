//! The address and port rewrite every translated packet goes through
//! (`nat_rewrite` in bpf/include/nat.h: per-packet service NAT of
//! opted-out pods, NodePort SNAT and DSR), run through BPF_PROG_TEST_RUN
//! on real frames, with every checksum of the output verified.

mod common;

use aya::maps::{Array, MapData};
use aya::programs::SchedClassifier;
use common::{root, PinDir};
use sluice_dataplane::load::{load_object, load_program};
use sluice_dataplane::{maps, sys};
use std::net::IpAddr;
use std::os::fd::AsFd;

const TCP: u8 = 6;
const UDP: u8 = 17;

/// `struct nat_test_to` of bpf/test_nat.c.
#[repr(C)]
#[derive(Clone, Copy)]
struct To {
    addr: [u8; 16],
    port: [u8; 2],
    dst: u8,
    pad: u8,
}
// SAFETY: plain old data, no padding.
unsafe impl aya::Pod for To {}

struct Nat {
    _pins: PinDir,
    ebpf: aya::Ebpf,
}

impl Nat {
    fn new(tag: &str) -> Self {
        let pins = PinDir::new(tag);
        let mut ebpf = load_object("test_nat", sluice_dataplane::TEST_NAT, &pins.0, &maps::ALL)
            .unwrap_or_else(|e| panic!("{e}"));
        load_program::<SchedClassifier>(&mut ebpf, "test_nat", "sluice_test_nat")
            .unwrap_or_else(|e| panic!("{e}"));
        Nat { _pins: pins, ebpf }
    }

    /// Rewrites `frame`'s destination (`dst`) or source to `addr`:`port`;
    /// the frame as the program left it.
    fn rewrite(&mut self, frame: &[u8], dst: bool, addr: IpAddr, port: u16) -> Vec<u8> {
        let mut to = To {
            addr: [0; 16],
            port: port.to_be_bytes(),
            dst: dst as u8,
            pad: 0,
        };
        match addr {
            IpAddr::V4(a) => to.addr[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => to.addr.copy_from_slice(&a.octets()),
        }
        let mut m: Array<&mut MapData, To> =
            Array::try_from(self.ebpf.map_mut("sluice_test_natto").unwrap()).unwrap();
        m.set(0, to, 0).unwrap();
        let prog: &SchedClassifier = self
            .ebpf
            .program("sluice_test_nat")
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len()];
        let ret = sys::prog_test_run_out(prog.fd().unwrap().as_fd(), frame, &mut out).unwrap();
        assert_eq!(ret, 0, "TC_ACT_OK: the rewrite failed");
        out
    }
}

/// The one's-complement sum of `data` added to `sum`, folded, not
/// complemented.
fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    p
}

fn csum_at(proto: u8) -> usize {
    if proto == TCP {
        16
    } else {
        6
    }
}

/// The transport segment (`proto` TCP or UDP, ports, `payload`) with its
/// checksum as a sender computes it: a 0 result goes out as 0xffff.
fn segment(src: (IpAddr, u16), dst: (IpAddr, u16), proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let c = match !ones_sum(
        &l4,
        ones_sum(&pseudo(src.0, dst.0, proto, l4.len()), 0) as u32,
    ) {
        0 => 0xffff,
        c => c,
    };
    let at = csum_at(proto);
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    l4
}

/// An Ethernet frame carrying `l4` from `src` to `dst`.
fn frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = !ones_sum(&ip, 0);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(l4);
    f
}

/// Parses `f` back: (source, destination, transport segment).
fn parse(f: &[u8]) -> (IpAddr, IpAddr, u8, Vec<u8>) {
    if f[12..14] == [0x08, 0x00] {
        let ip = &f[14..34];
        assert_eq!(ones_sum(ip, 0), 0xffff, "IPv4 header checksum");
        let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[o..o + 4]).unwrap());
        (a(12), a(16), ip[9], f[34..].to_vec())
    } else {
        let ip = &f[14..54];
        let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap());
        (a(8), a(24), ip[6], f[54..].to_vec())
    }
}

/// The checksum field of `f`'s segment, after checking that it verifies
/// (or is an IPv4 UDP datagram's 0, none).
fn verified_checksum(f: &[u8]) -> u16 {
    let (src, dst, proto, l4) = parse(f);
    let at = csum_at(proto);
    let field = u16::from_be_bytes([l4[at], l4[at + 1]]);
    if field == 0 && proto == UDP && src.is_ipv4() {
        return 0;
    }
    assert_ne!(
        (field, proto, src.is_ipv6()),
        (0, UDP, true),
        "UDP over IPv6 with checksum 0: the receiver drops it"
    );
    assert_eq!(
        ones_sum(&l4, ones_sum(&pseudo(src, dst, proto, l4.len()), 0) as u32),
        0xffff,
        "the {} checksum verifies after the rewrite",
        if proto == TCP { "TCP" } else { "UDP" }
    );
    field
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A UDP datagram whose checksum after the rewrite sums to 0: the two
/// payload bytes are chosen so. The rewrite must write 0xffff, as a
/// sender would; 0 is "no checksum", which IPv6 forbids, and the kernel
/// drops such a datagram (Udp6InCsumErrors). One IPv6 UDP packet in
/// 65,535 through service NAT or NodePort was dropped so.
#[test]
fn an_ipv6_udp_rewrite_that_sums_to_zero_writes_0xffff() {
    if !root() {
        return;
    }
    let mut nat = Nat::new("nat-zero");
    let client = (ip("fd00:10::2"), 40000u16);
    let service = (ip("fd00:96::a"), 80u16);
    // The port changed (the last update is the port's) and kept (the last
    // is the address's).
    for (backend, dst) in [
        ((ip("fd00:20::5"), 8080u16), true),
        ((ip("fd00:20::5"), 8080u16), false),
        ((ip("fd00:20::5"), 80u16), true),
        ((ip("fd00:20::5"), 80u16), false),
    ] {
        // After the rewrite: client -> backend (destination rewritten) or
        // backend -> client (a reply whose source becomes the service's).
        let (after_src, after_dst) = if dst {
            (client, backend)
        } else {
            (service, client)
        };
        let (before_src, before_dst) = if dst {
            (client, service)
        } else {
            (backend, client)
        };
        let mut payload = vec![0u8, 0, b'x', b'y', b'z'];
        let mut l4 = segment(after_src, after_dst, UDP, &payload);
        l4[6..8].copy_from_slice(&[0, 0]);
        let s = ones_sum(
            &l4,
            ones_sum(&pseudo(after_src.0, after_dst.0, UDP, l4.len()), 0) as u32,
        );
        payload[..2].copy_from_slice(&(!s).to_be_bytes());
        let f = frame(
            before_src.0,
            before_dst.0,
            UDP,
            &segment(before_src, before_dst, UDP, &payload),
        );
        let (to, port) = if dst { backend } else { service };
        let out = nat.rewrite(&f, dst, to, port);
        let (s, d, _, _) = parse(&out);
        assert_eq!((s, d), (after_src.0, after_dst.0));
        assert_eq!(
            verified_checksum(&out),
            0xffff,
            "rewrite of the {}, port {} -> {port}",
            if dst { "destination" } else { "source" },
            if dst { service.1 } else { backend.1 },
        );
    }
}

/// Every rewrite keeps every checksum right: both families, TCP and UDP,
/// destination and source, the port changed or kept, over many payloads;
/// an IPv4 UDP datagram without a checksum (0) keeps none.
#[test]
fn every_rewrite_keeps_the_checksums_right() {
    if !root() {
        return;
    }
    let mut nat = Nat::new("nat-all");
    let families = [
        (ip("10.0.0.2"), ip("10.96.0.10"), ip("10.1.0.5")),
        (ip("fd00:10::2"), ip("fd00:96::a"), ip("fd00:20::5")),
    ];
    let mut seed = 0x9e37_79b9u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for (client, service, backend) in families {
        for proto in [TCP, UDP] {
            for dst in [true, false] {
                for new_port in [80u16, 8080] {
                    for _ in 0..100 {
                        let len = 1 + next() as usize % 64;
                        let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                        let (a, b) = if dst {
                            ((client, 40000), (service, 80))
                        } else {
                            ((backend, 8080), (client, 40000))
                        };
                        let f = frame(a.0, b.0, proto, &segment(a, b, proto, &payload));
                        let to = if dst { backend } else { service };
                        let out = nat.rewrite(&f, dst, to, new_port);
                        verified_checksum(&out);
                    }
                }
            }
        }
    }
    // An IPv4 UDP datagram sent without a checksum keeps none.
    let (client, service, backend) = families[0];
    let mut l4 = segment((client, 40000), (service, 80), UDP, b"none");
    l4[6..8].copy_from_slice(&[0, 0]);
    let out = nat.rewrite(&frame(client, service, UDP, &l4), true, backend, 8080);
    assert_eq!(verified_checksum(&out), 0, "no checksum stays none");
}
