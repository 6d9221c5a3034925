//! Rust mirrors of `bpf/include/sluice_maps.h`. Each is `#[repr(C)]` with the
//! same explicit padding; the tests assert sizes and offsets match the C
//! `_Static_assert`s, so a change on one side fails the build's tests.

/// `SLUICE_AF_INET` / `SLUICE_AF_INET6` in `src_key.family`.
pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// `struct src_key`: an address the pod behind `ifindex` may send from.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SrcKey {
    pub ifindex: u32,
    pub family: u8,
    pub pad: [u8; 3],
    /// IPv4 in the first 4 bytes, network order.
    pub addr: [u8; 16],
}

// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for SrcKey {}

impl SrcKey {
    pub fn new(ifindex: u32, ip: std::net::IpAddr) -> Self {
        let mut k = SrcKey {
            ifindex,
            ..Default::default()
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                k.family = AF_INET;
                k.addr[..4].copy_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                k.family = AF_INET6;
                k.addr = v6.octets();
            }
        }
        k
    }
}

/// `struct ep_counters`, keyed by host-side ifindex.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EpCounters {
    pub spoof_drops: u64,
    pub spoof_bytes: u64,
}

// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for EpCounters {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn src_key_matches_c() {
        assert_eq!(size_of::<SrcKey>(), 24);
        assert_eq!(offset_of!(SrcKey, ifindex), 0);
        assert_eq!(offset_of!(SrcKey, family), 4);
        assert_eq!(offset_of!(SrcKey, pad), 5);
        assert_eq!(offset_of!(SrcKey, addr), 8);
    }

    #[test]
    fn ep_counters_match_c() {
        assert_eq!(size_of::<EpCounters>(), 16);
        assert_eq!(offset_of!(EpCounters, spoof_drops), 0);
        assert_eq!(offset_of!(EpCounters, spoof_bytes), 8);
    }

    #[test]
    fn keys_carry_addresses_in_network_order() {
        let k = SrcKey::new(7, "10.244.0.5".parse().unwrap());
        assert_eq!(k.family, AF_INET);
        assert_eq!(&k.addr[..4], &[10, 244, 0, 5]);
        assert_eq!(&k.addr[4..], &[0; 12]);
        let k = SrcKey::new(7, "fd00::5".parse().unwrap());
        assert_eq!(k.family, AF_INET6);
        assert_eq!(k.addr[0], 0xfd);
        assert_eq!(k.addr[15], 5);
    }

    /// The verifier accepts the program on this kernel (root only).
    #[test]
    fn tc_pod_program_passes_the_verifier() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading BPF programs needs root");
            return;
        }
        let mut ebpf = aya::Ebpf::load(crate::TC_POD).expect("parse tc_pod.o");
        let prog: &mut aya::programs::SchedClassifier = ebpf
            .program_mut("sluice_pod_ingress")
            .expect("program present")
            .try_into()
            .expect("a tc program");
        if let Err(e) = prog.load() {
            panic!("verifier rejected sluice_pod_ingress: {e:?}");
        }
    }
}
