//! Sluice's BPF datapath: C programs under `bpf/` compiled by `build.rs`
//! (clang-19, libbpf headers), embedded here, and the `#[repr(C)]` mirrors of
//! every map key and value declared in `bpf/include/sluice_maps.h`.
//!
//! Work in progress for the daemon issue: the pod veth program (source
//! check) builds and passes the verifier; the daemon that attaches it comes
//! next.

pub mod maps;

/// tc programs for a pod's host-side veth (`sluice_pod_ingress`).
pub static TC_POD: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_pod.o"));
