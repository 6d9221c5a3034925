//! Sluice's BPF datapath: C programs under `bpf/`, compiled by `build.rs`,
//! and the `#[repr(C)]` mirrors of every map key and value.
//!
//! Nothing lives here yet: the programs arrive with the node daemon
//! (issue "The node daemon `sluiced`, the BPF build pipeline, and pod
//! registration"). Pod networking on one node works without them.
