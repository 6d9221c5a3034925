//! The tc source check run on crafted frames through BPF_PROG_TEST_RUN
//! (root only), with maps pinned in a private bpffs directory; and the
//! loader's handling of pinned maps.

mod common;

use aya::maps::HashMap;
use aya::programs::{CgroupSockAddr, SchedClassifier};
use common::{root, PinDir};
use sluice_dataplane::load::{load_object, load_program, open_pinned, LoadError};
use sluice_dataplane::maps::{self, EpCounters, SrcKey};
use std::os::fd::{AsFd, BorrowedFd};

const TC_ACT_OK: u32 = 0;
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

fn ipv6(src: [u8; 16]) -> Vec<u8> {
    let mut f = eth(0x86dd);
    let mut ip = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&"fd00::9".parse::<std::net::Ipv6Addr>().unwrap().octets());
    f.extend(ip);
    f.extend_from_slice(&[0u8; 8]);
    f
}

#[test]
fn source_check_on_crafted_frames() {
    if !root() {
        return;
    }
    let pins = PinDir::new("src");
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

    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    assert_eq!(run(fd, &ipv4([10, 244, 0, 5])), TC_ACT_OK, "own v4 address");
    assert_eq!(run(fd, &ipv4([10, 244, 0, 6])), TC_ACT_SHOT, "spoofed v4");
    assert_eq!(run(fd, &ipv6(v6("fd00::5"))), TC_ACT_OK, "own v6 address");
    assert_eq!(run(fd, &ipv6(v6("fd00::6"))), TC_ACT_SHOT, "spoofed v6");
    assert_eq!(
        run(fd, &ipv6(v6("fe80::1"))),
        TC_ACT_OK,
        "link-local for ND"
    );
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(run(fd, &arp), TC_ACT_OK, "non-IP passes");

    let counters: HashMap<_, u32, EpCounters> =
        HashMap::try_from(ebpf.map(maps::SRC_DROP.name).unwrap()).unwrap();
    let c = counters
        .get(&LO, 0)
        .expect("drops are counted per endpoint");
    assert_eq!(c.spoof_drops, 2, "two spoofed frames counted");
    assert!(c.spoof_bytes > 0);
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
