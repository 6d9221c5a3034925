//! Sluice's BPF datapath: C programs under `bpf/` compiled by `build.rs`
//! (clang-19, libbpf headers), embedded here; the `#[repr(C)]` mirrors of
//! every map key and value declared in `bpf/include/sluice_maps.h`; the
//! names of the pinned maps; loading with pinned maps (refusing a pinned map
//! whose layout differs); and the few bpf(2) commands aya does not wrap.

pub mod load;
pub mod maps;
pub mod pins;
pub mod sys;

/// tc programs for a pod's host-side veth: `sluice_pod_ingress`, the pod
/// edge (source check, default deny) and per-packet service translation;
/// `sluice_pod_egress`, the replies' reverse translation.
pub static TC_POD: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_pod.o"));

/// tc programs for the node's external devices: NodePorts, ExternalIPs
/// and LoadBalancer addresses reached from outside (include/nodeport.h).
pub static TC_EXT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_ext.o"));
pub const TC_EXT_INGRESS: &str = "sluice_ext_ingress";
pub const TC_EXT_EGRESS: &str = "sluice_ext_egress";

/// cgroup sock_addr programs attached at the cgroup v2 root.
pub static SOCK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));

/// Same-node TCP acceleration: sockops at the cgroup v2 root, sk_msg on
/// the SOCKHASH.
pub static ACCEL: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/accel.o"));

/// The entry points in [`ACCEL`].
pub const ACCEL_SOCKOPS: &str = "sluice_sockops";
pub const ACCEL_SK_MSG: &str = "sluice_sk_msg";
/// The acceleration's guards in [`ACCEL`]: (program, LSM hook).
pub const ACCEL_GUARDS: [(&str, &str); 4] = [
    ("sluice_file_perm", "file_permission"),
    ("sluice_sock_recv", "socket_recvmsg"),
    ("sluice_sock_setopt", "socket_setsockopt"),
    ("sluice_sock_send", "socket_sendmsg"),
];

/// Test fixtures, not datapath: a program the verifier refuses, the
/// service selection and edge logic in XDP programs, the NAT rewrite in a
/// tc program, and connect4 and pod
/// programs standing in for an older build's.
#[doc(hidden)]
pub static TEST_REJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_reject.o"));
#[doc(hidden)]
pub static TEST_LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_lb.o"));
#[doc(hidden)]
pub static TEST_EDGE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_edge.o"));
#[doc(hidden)]
pub static TEST_NAT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_nat.o"));
#[doc(hidden)]
pub static TEST_POD_OLD: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_pod_old.o"));
#[doc(hidden)]
pub static TEST_CONNECT4_OLD: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_connect4_old.o"));

/// The tc entry points in [`TC_POD`]: the edge (and the per-packet
/// service translation of opted-out pods), and their replies' reverse
/// translation.
pub const TC_POD_INGRESS: &str = "sluice_pod_ingress";
pub const TC_POD_EGRESS: &str = "sluice_pod_egress";

/// The `cgroup/sock_release` entry point in [`SOCK`]: drops a closing
/// UDP socket's connected-socket record.
pub const SOCK_RELEASE: &str = "sluice_sock_release";

/// The bind guards in [`SOCK`] (cgroup/bind4, bind6): nothing binds where
/// the datapath answers.
pub const SOCK_BIND_PROGRAMS: [&str; 2] = ["sluice_bind4", "sluice_bind6"];

/// The sock_addr entry points in [`SOCK`], in `enum sock_hook` order.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "sluice_connect4",
    "sluice_connect6",
    "sluice_sendmsg4",
    "sluice_sendmsg6",
    "sluice_recvmsg4",
    "sluice_recvmsg6",
    "sluice_getpeername4",
    "sluice_getpeername6",
];
