//! Rust mirrors of `bpf/include/sluice_maps.h` and the maps that hold them.
//! Each mirror is `#[repr(C)]` with the same explicit padding; the tests
//! assert sizes and offsets match the C `_Static_assert`s, so a change on one
//! side fails the tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `SLUICE_AF_INET` / `SLUICE_AF_INET6` in `src_key.family`.
pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// A map the datapath pins by name, and the layout a pinned copy must have
/// to be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    /// `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub what: &'static str,
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// netns cookie → [`Endpoint`].
pub const ENDPOINTS: MapSpec = MapSpec {
    name: "sluice_eps",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: 8,
    value_size: size_of::<Endpoint>() as u32,
    max_entries: 65536,
    what: "endpoints by netns cookie",
};

/// [`SrcKey`] → 1: addresses each pod may send from.
pub const SRC: MapSpec = MapSpec {
    name: "sluice_src",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: size_of::<SrcKey>() as u32,
    value_size: 1,
    max_entries: 65536,
    what: "allowed pod source addresses",
};

/// host ifindex → [`EpCounters`].
pub const SRC_DROP: MapSpec = MapSpec {
    name: "sluice_src_drop",
    map_type: BPF_MAP_TYPE_HASH,
    key_size: 4,
    value_size: size_of::<EpCounters>() as u32,
    max_entries: 65536,
    what: "spoofed-source drops per endpoint",
};

/// `enum sock_hook` → u64 per CPU.
pub const SOCKSTAT: MapSpec = MapSpec {
    name: "sluice_sockstat",
    map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
    key_size: 4,
    value_size: 8,
    max_entries: SOCK_HOOKS.len() as u32,
    what: "socket operations of known endpoints, per hook",
};

/// Every pinned map.
pub const ALL: [MapSpec; 4] = [ENDPOINTS, SRC, SRC_DROP, SOCKSTAT];

/// `enum sock_hook`, in order.
pub const SOCK_HOOKS: [&str; 8] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
    "getpeername4",
    "getpeername6",
];

/// `SLUICE_EP_F_*`.
pub const EP_F_HOST: u32 = 1 << 0;
pub const EP_F_IPV4: u32 = 1 << 1;
pub const EP_F_IPV6: u32 = 1 << 2;

/// `struct endpoint`, keyed by netns cookie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub host_ifindex: u32,
    pub flags: u32,
    pub ipv4: [u8; 4],
    pub pad: [u8; 4],
    pub ipv6: [u8; 16],
}

// SAFETY: plain old data, no implicit padding (asserted below).
unsafe impl aya::Pod for Endpoint {}

impl Endpoint {
    /// A pod behind `host_ifindex` with (at most) one address per family;
    /// further addresses of a family are only in the source map.
    pub fn pod(host_ifindex: u32, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut e = Endpoint {
            host_ifindex,
            ..Default::default()
        };
        for a in addrs {
            match a {
                IpAddr::V4(v4) if e.flags & EP_F_IPV4 == 0 => {
                    e.flags |= EP_F_IPV4;
                    e.ipv4 = v4.octets();
                }
                IpAddr::V6(v6) if e.flags & EP_F_IPV6 == 0 => {
                    e.flags |= EP_F_IPV6;
                    e.ipv6 = v6.octets();
                }
                _ => {}
            }
        }
        e
    }

    /// The node's own netns.
    pub fn host() -> Self {
        Endpoint {
            flags: EP_F_HOST,
            ..Default::default()
        }
    }

    pub fn is_host(&self) -> bool {
        self.flags & EP_F_HOST != 0
    }

    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        (self.flags & EP_F_IPV4 != 0).then(|| Ipv4Addr::from(self.ipv4))
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        (self.flags & EP_F_IPV6 != 0).then(|| Ipv6Addr::from(self.ipv6))
    }
}

/// `struct src_key`: an address the pod behind `ifindex` may send from.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
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
    pub fn new(ifindex: u32, ip: IpAddr) -> Self {
        let mut k = SrcKey {
            ifindex,
            ..Default::default()
        };
        match ip {
            IpAddr::V4(v4) => {
                k.family = AF_INET;
                k.addr[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                k.family = AF_INET6;
                k.addr = v6.octets();
            }
        }
        k
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self.family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                self.addr[0],
                self.addr[1],
                self.addr[2],
                self.addr[3],
            ))),
            AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(self.addr))),
            _ => None,
        }
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
    use std::mem::offset_of;

    #[test]
    fn endpoint_matches_c() {
        assert_eq!(size_of::<Endpoint>(), 32);
        assert_eq!(offset_of!(Endpoint, host_ifindex), 0);
        assert_eq!(offset_of!(Endpoint, flags), 4);
        assert_eq!(offset_of!(Endpoint, ipv4), 8);
        assert_eq!(offset_of!(Endpoint, pad), 12);
        assert_eq!(offset_of!(Endpoint, ipv6), 16);
    }

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

    /// The C header is the one definition: check the constants Rust
    /// repeats (flags, hook order, map names) against its text.
    #[test]
    fn constants_match_the_c_header() {
        let h = include_str!("../bpf/include/sluice_maps.h");
        assert!(h.contains("#define SLUICE_EP_F_HOST (1U << 0)"));
        assert!(h.contains("#define SLUICE_EP_F_IPV4 (1U << 1)"));
        assert!(h.contains("#define SLUICE_EP_F_IPV6 (1U << 2)"));
        assert!(h.contains("#define SLUICE_AF_INET 4"));
        assert!(h.contains("#define SLUICE_AF_INET6 6"));
        let hooks: Vec<String> = h
            .lines()
            .filter_map(|l| l.trim().strip_prefix("SOCK_HOOK_"))
            .map(|l| l.split([',', ' ']).next().unwrap().to_lowercase())
            .filter(|n| n != "max")
            .collect();
        assert_eq!(hooks, SOCK_HOOKS);
        let sock = include_str!("../bpf/sock.c");
        for (prog, hook) in crate::SOCK_PROGRAMS.iter().zip(SOCK_HOOKS) {
            assert!(sock.contains(&format!("SEC(\"cgroup/{hook}\")\nint {prog}(")));
        }
        let all_c = [
            include_str!("../bpf/include/endpoints.h"),
            include_str!("../bpf/include/src_check.h"),
            include_str!("../bpf/include/sock.h"),
        ]
        .concat();
        for m in ALL {
            assert!(
                all_c.contains(&format!("}} {} SEC(\".maps\")", m.name)),
                "{}",
                m.name
            );
            assert!(
                m.name.len() < 16,
                "{} is longer than BPF_OBJ_NAME_LEN",
                m.name
            );
        }
    }

    #[test]
    fn keys_carry_addresses_in_network_order() {
        let k = SrcKey::new(7, "10.244.0.5".parse().unwrap());
        assert_eq!(k.family, AF_INET);
        assert_eq!(&k.addr[..4], &[10, 244, 0, 5]);
        assert_eq!(&k.addr[4..], &[0; 12]);
        assert_eq!(k.ip(), Some("10.244.0.5".parse().unwrap()));
        let k = SrcKey::new(7, "fd00::5".parse().unwrap());
        assert_eq!(k.family, AF_INET6);
        assert_eq!(k.addr[0], 0xfd);
        assert_eq!(k.addr[15], 5);
        assert_eq!(k.ip(), Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn endpoint_keeps_first_address_per_family() {
        let e = Endpoint::pod(
            9,
            [
                "10.0.0.1".parse().unwrap(),
                "fd00::1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ],
        );
        assert_eq!(e.ipv4(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(e.ipv6(), Some("fd00::1".parse().unwrap()));
        assert!(!e.is_host());
        assert!(Endpoint::host().is_host());
        assert_eq!(Endpoint::host().ipv4(), None);
    }
}
