//! The tc source check run on crafted frames through BPF_PROG_TEST_RUN
//! (root only). aya has no test-run call, so this issues the bpf(2) command
//! itself on the program aya loaded.

use aya::maps::HashMap;
use aya::programs::SchedClassifier;
use sluice_dataplane::maps::{EpCounters, SrcKey};
use std::os::fd::{AsFd, AsRawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// BPF_PROG_TEST_RUN runs tc programs on an skb of the loopback device.
const LO: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

fn run(fd: i32, frame: &[u8]) -> u32 {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRun {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix for this command.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRun,
            std::mem::size_of::<TestRun>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN on {} bytes: {}",
        frame.len(),
        std::io::Error::last_os_error()
    );
    attr.retval
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
        return;
    }
    let mut ebpf = aya::Ebpf::load(sluice_dataplane::TC_POD).expect("parse tc_pod.o");
    {
        let mut allowed: HashMap<_, SrcKey, u8> =
            HashMap::try_from(ebpf.map_mut("sluice_src").unwrap()).unwrap();
        allowed
            .insert(SrcKey::new(LO, "10.244.0.5".parse().unwrap()), 1, 0)
            .unwrap();
        allowed
            .insert(SrcKey::new(LO, "fd00::5".parse().unwrap()), 1, 0)
            .unwrap();
    }
    let prog: &mut SchedClassifier = ebpf
        .program_mut("sluice_pod_ingress")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().expect("verifier accepts the program");
    let fd = prog.fd().unwrap().as_fd().as_raw_fd();

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
        HashMap::try_from(ebpf.map("sluice_ep_counters").unwrap()).unwrap();
    let c = counters
        .get(&LO, 0)
        .expect("drops are counted per endpoint");
    assert_eq!(c.spoof_drops, 2, "two spoofed frames counted");
    assert!(c.spoof_bytes > 0);
}
