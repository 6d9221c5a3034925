//! The pod edge run on crafted frames through BPF_PROG_TEST_RUN (root
//! only), with maps pinned in a private bpffs directory; and the loader's
//! handling of pinned maps. What only the kernel's receive path shows
//! (VLAN untagging after tc) is tested with real frames from pods in
//! tests/tests/edge.rs.

mod common;

use aya::maps::HashMap;
use aya::programs::{CgroupSockAddr, SchedClassifier, Xdp};
use common::{root, PinDir};
use sluice_dataplane::load::{load_object, load_program, open_pinned, LoadError};
use sluice_dataplane::maps::{self, EdgeStats, SrcKey, EDGE_REASONS};
use std::net::Ipv6Addr;
use std::os::fd::{AsFd, BorrowedFd};

/// What the edge program returns for a frame that passes: TC_ACT_UNSPEC,
/// so later filters and tcx programs (a chained plugin's) still run.
const PASS: u32 = -1i32 as u32;
const TC_ACT_SHOT: u32 = 2;
/// BPF_PROG_TEST_RUN runs tc programs on an skb of the loopback device.
const LO: u32 = 1;

fn run(fd: BorrowedFd<'_>, frame: &[u8]) -> u32 {
    sluice_dataplane::sys::prog_test_run(fd, frame)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()))
}

fn eth(proto: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0x5c, 0, 0, 0, 1, 0x02, 0x5d, 0, 0, 0, 1];
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

fn ipv4(src: [u8; 4]) -> Vec<u8> {
    let mut f = eth(0x0800);
    let mut ip = vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[10, 244, 0, 9]);
    f.extend(ip);
    f.extend_from_slice(&[0u8; 26]);
    f
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

/// An IPv6 frame from `src` whose payload is `next` (protocol) + `body`.
fn ipv6_with(src: [u8; 16], next: u8, body: &[u8]) -> Vec<u8> {
    let mut f = eth(0x86dd);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 255]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&v6("ff02::1"));
    f.extend(ip);
    f.extend_from_slice(body);
    f
}

fn ipv6(src: [u8; 16]) -> Vec<u8> {
    ipv6_with(src, 17, &[0u8; 8])
}

/// ICMPv6 of `type`, padded.
fn icmp6(src: [u8; 16], ty: u8) -> Vec<u8> {
    let mut body = vec![ty, 0, 0, 0];
    body.extend_from_slice(&[0u8; 20]);
    ipv6_with(src, 58, &body)
}

fn arp(htype: u16, sender: [u8; 4]) -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&htype.to_be_bytes());
    f.extend_from_slice(&[0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0x5d, 0, 0, 0, 1]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 244, 0, 1]);
    f
}

fn reason(name: &str) -> usize {
    EDGE_REASONS.iter().position(|r| *r == name).unwrap()
}

#[test]
fn the_edge_decides_on_crafted_frames() {
    if !root() {
        return;
    }
    let pins = PinDir::new("edge");
    let mut ebpf = load_object("tc_pod", sluice_dataplane::TC_POD, &pins.0, &maps::ALL)
        .expect("parse tc_pod.o");
    {
        let mut allowed: HashMap<_, SrcKey, u8> =
            HashMap::try_from(ebpf.map_mut(maps::SRC.name).unwrap()).unwrap();
        allowed
            .insert(SrcKey::new(LO, "10.244.0.5".parse().unwrap()), 1, 0)
            .unwrap();
        allowed
            .insert(SrcKey::new(LO, "fd00::5".parse().unwrap()), 1, 0)
            .unwrap();
    }
    let prog: &mut SchedClassifier =
        load_program(&mut ebpf, "tc_pod", sluice_dataplane::TC_POD_INGRESS)
            .unwrap_or_else(|e| panic!("{e}"));
    let fd = prog.fd().unwrap().as_fd();

    let mut want = [0u64; 8];
    let mut check = |frame: Vec<u8>, verdict: Option<&str>, what: &str| {
        let got = run(fd, &frame);
        match verdict {
            None => assert_eq!(got, PASS, "{what} passes"),
            Some(r) => {
                assert_eq!(got, TC_ACT_SHOT, "{what} is dropped ({r})");
                want[reason(r)] += 1;
            }
        }
    };
    // IPv4 and IPv6 from the pod's own addresses, and from others.
    check(ipv4([10, 244, 0, 5]), None, "own v4");
    check(ipv4([10, 244, 0, 6]), Some("spoofed_source"), "spoofed v4");
    check(ipv6(v6("fd00::5")), None, "own v6");
    check(ipv6(v6("fd00::6")), Some("spoofed_source"), "spoofed v6");
    // Link-local and unspecified sources: neighbour discovery and MLD only.
    check(
        icmp6(v6("fe80::1"), 135),
        None,
        "link-local neighbour solicitation",
    );
    check(
        icmp6(v6("fe80::1"), 136),
        None,
        "link-local neighbour advertisement",
    );
    check(
        icmp6(v6("fe80::1"), 133),
        None,
        "link-local router solicitation",
    );
    check(icmp6(v6("::"), 135), None, "DAD probe from ::");
    check(
        ipv6(v6("fe80::1")),
        Some("link_local"),
        "UDP from link-local",
    );
    check(ipv6(v6("::")), Some("link_local"), "UDP from ::");
    check(
        icmp6(v6("fe80::1"), 128),
        Some("link_local"),
        "echo from link-local",
    );
    // An MLDv2 report behind a hop-by-hop header (router alert).
    let mut hbh = vec![58, 0, 5, 2, 0, 0, 1, 0];
    hbh.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
    check(
        ipv6_with(v6("fe80::1"), 0, &hbh),
        None,
        "MLDv2 report after hop-by-hop",
    );
    // A fragmented ICMPv6 from link-local is never ND.
    let mut frag = vec![58, 0, 0, 1, 0, 0, 0, 7];
    frag.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
    check(
        ipv6_with(v6("fe80::1"), 44, &frag),
        Some("link_local"),
        "fragmented ND",
    );
    // A later fragment of the pod's own datagram: no header to read, passes.
    let later = vec![17, 0, 0x05, 0xa8, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8];
    check(
        ipv6_with(v6("fd00::5"), 44, &later),
        None,
        "own later fragment",
    );
    // Routers' messages never come from a pod, whatever the source.
    check(
        icmp6(v6("fe80::1"), 134),
        Some("router"),
        "router advertisement",
    );
    check(
        icmp6(v6("fd00::5"), 134),
        Some("router"),
        "RA from the pod's own address",
    );
    check(icmp6(v6("fe80::1"), 137), Some("router"), "redirect");
    check(
        icmp6(v6("fd00::5"), 138),
        Some("router"),
        "router renumbering",
    );
    // ARP: Ethernet/IPv4 with the pod's own sender address only.
    check(arp(1, [10, 244, 0, 5]), None, "ARP from the pod's address");
    check(
        arp(1, [10, 244, 0, 6]),
        Some("arp"),
        "ARP claiming another address",
    );
    check(arp(1, [0, 0, 0, 0]), Some("arp"), "ARP probe from 0.0.0.0");
    check(
        arp(6, [10, 244, 0, 5]),
        Some("arp"),
        "ARP for another hardware type",
    );
    // VLAN tags and protocols a pod has no business sending.
    let mut tagged = eth(0x8100);
    tagged.extend_from_slice(&[0, 0, 0x08, 0x00]);
    tagged.extend_from_slice(&ipv4([10, 244, 0, 5])[14..]);
    check(
        tagged,
        Some("vlan"),
        "802.1Q-tagged IPv4 from the pod's address",
    );
    let mut qinq = eth(0x88a8);
    qinq.extend_from_slice(&[0, 0, 0x81, 0x00, 0, 0, 0x08, 0x00]);
    qinq.extend_from_slice(&ipv4([10, 244, 0, 5])[14..]);
    check(qinq, Some("vlan"), "802.1ad double tag");
    let mut other = eth(0x88b5);
    other.extend_from_slice(&[0u8; 46]);
    check(other, Some("protocol"), "local experimental ethertype");
    let mut llc = eth(46);
    llc.extend_from_slice(&[0x42, 0x42, 0x03]);
    llc.extend_from_slice(&[0u8; 43]);
    check(llc, Some("protocol"), "802.3 frame with an LLC header");
    let mut bad = ipv4([10, 244, 0, 5]);
    bad[14] = 0x65;
    check(
        bad,
        Some("malformed"),
        "IPv4 ethertype with a version-6 header",
    );

    let stats: HashMap<_, u32, EdgeStats> =
        HashMap::try_from(ebpf.map(maps::EDGE_STATS.name).unwrap()).unwrap();
    let c = stats.get(&LO, 0).expect("drops are counted per endpoint");
    assert_eq!(
        c.drops,
        want,
        "drops counted by reason: {:?}",
        c.by_reason()
    );
    assert!(c.drop_bytes > 0);
}

/// What only a real skb carries (a VLAN tag the kernel already moved out
/// of the data, skb->protocol) is decided too: through the test program
/// that feeds edge_check() its inputs.
#[test]
fn an_untagged_vlan_and_a_protocol_mismatch_are_dropped() {
    if !root() {
        return;
    }
    let pins = PinDir::new("edge-x");
    let mut ebpf = load_object(
        "test_edge",
        sluice_dataplane::TEST_EDGE,
        &pins.0,
        &maps::ALL,
    )
    .expect("parse test_edge.o");
    {
        let mut allowed: HashMap<_, SrcKey, u8> =
            HashMap::try_from(ebpf.map_mut(maps::SRC.name).unwrap()).unwrap();
        allowed
            .insert(SrcKey::new(7, "10.244.0.5".parse().unwrap()), 1, 0)
            .unwrap();
    }
    let prog: &mut Xdp =
        load_program(&mut ebpf, "test_edge", "sluice_test_edge").unwrap_or_else(|e| panic!("{e}"));
    let fd = prog.fd().unwrap().as_fd();
    let decide = |protocol: u16, vlan: u16, frame: &[u8]| -> u32 {
        let mut pkt = Vec::new();
        pkt.extend_from_slice(&7u32.to_ne_bytes());
        pkt.extend_from_slice(&protocol.to_be_bytes());
        pkt.extend_from_slice(&vlan.to_ne_bytes());
        pkt.extend_from_slice(&[0u8; 8]);
        pkt.extend_from_slice(frame);
        let mut out = vec![0u8; pkt.len() + 64];
        sluice_dataplane::sys::prog_test_run_out(fd, &pkt, &mut out).unwrap();
        u32::from_ne_bytes(out[8..12].try_into().unwrap())
    };
    let own = ipv4([10, 244, 0, 5]);
    assert_eq!(decide(0x0800, 0, &own), 0, "own v4, no tag: passes");
    assert_eq!(
        decide(0x0800, 1, &own) as usize,
        reason("vlan"),
        "tag already untagged"
    );
    assert_eq!(
        decide(0x86dd, 0, &own) as usize,
        reason("protocol"),
        "skb->protocol disagrees with the frame"
    );
}

#[test]
fn socket_programs_pass_the_verifier() {
    if !root() {
        return;
    }
    let pins = PinDir::new("sock");
    let mut ebpf =
        load_object("sock", sluice_dataplane::SOCK, &pins.0, &maps::ALL).expect("parse sock.o");
    for p in sluice_dataplane::SOCK_PROGRAMS {
        load_program::<CgroupSockAddr>(&mut ebpf, "sock", p).unwrap_or_else(|e| panic!("{e}"));
    }
    load_program::<aya::programs::CgroupSock>(&mut ebpf, "sock", sluice_dataplane::SOCK_RELEASE)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pins.0.join(maps::ENDPOINTS.name).exists(),
        "endpoint map pinned by name"
    );
    assert!(pins.0.join(maps::SOCKSTAT.name).exists());
    assert!(
        pins.0.join(maps::SK_NAT.name).exists(),
        "socket storage pinned"
    );
}

/// Both objects share the endpoint and source maps through their pins, and a
/// second load reuses them with their entries.
#[test]
fn pinned_maps_are_reused_across_loads() {
    if !root() {
        return;
    }
    let pins = PinDir::new("reuse");
    {
        let mut ebpf =
            load_object("tc_pod", sluice_dataplane::TC_POD, &pins.0, &maps::ALL).unwrap();
        let mut src: HashMap<_, SrcKey, u8> =
            HashMap::try_from(ebpf.map_mut(maps::SRC.name).unwrap()).unwrap();
        src.insert(SrcKey::new(3, "10.1.2.3".parse().unwrap()), 1, 0)
            .unwrap();
    }
    let ebpf = load_object("tc_pod", sluice_dataplane::TC_POD, &pins.0, &maps::ALL).unwrap();
    let src: HashMap<_, SrcKey, u8> = HashMap::try_from(ebpf.map(maps::SRC.name).unwrap()).unwrap();
    assert_eq!(src.keys().count(), 1, "the entry survived the reload");
    let pinned: HashMap<_, SrcKey, u8> =
        HashMap::try_from(open_pinned(&pins.0, &maps::SRC).unwrap()).unwrap();
    assert!(pinned
        .get(&SrcKey::new(3, "10.1.2.3".parse().unwrap()), 0)
        .is_ok());
}

/// A pinned map left by an incompatible build is refused with a message
/// that names it, instead of being reused with the wrong layout.
#[test]
fn a_pinned_map_of_another_layout_is_refused() {
    if !root() {
        return;
    }
    let pins = PinDir::new("mismatch");
    load_object("tc_pod", sluice_dataplane::TC_POD, &pins.0, &maps::ALL).unwrap();
    let mut wrong = maps::SRC;
    wrong.value_size = 8;
    let e = load_object("tc_pod", sluice_dataplane::TC_POD, &pins.0, &[wrong]).unwrap_err();
    assert!(matches!(e, LoadError::MapMismatch { .. }), "{e}");
    assert!(e.to_string().contains("sluice_src"), "{e}");
}

/// A program the verifier refuses comes back as an error that names it and
/// carries the verifier's own explanation, not a bare EACCES.
#[test]
fn a_verifier_rejection_carries_the_verifier_log() {
    if !root() {
        return;
    }
    let pins = PinDir::new("reject");
    let mut ebpf = load_object("test_reject", sluice_dataplane::TEST_REJECT, &pins.0, &[]).unwrap();
    let e = load_program::<SchedClassifier>(&mut ebpf, "test_reject", "sluice_test_reject")
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LoadError::Program { .. }), "{msg}");
    assert!(msg.contains("sluice_test_reject"), "{msg}");
    assert!(
        msg.contains("invalid access to packet"),
        "verifier log missing: {msg}"
    );
}
