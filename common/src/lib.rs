//! Types shared by every Sluice binary, defined once.
//!
//! * [`cni`]: the CNI protocol (spec versions 0.3.0 to 1.1.0): environment,
//!   network configuration, results rendered in the version asked for, and the
//!   spec's error object with its codes.
//! * [`endpoint`]: the endpoint record the plugin writes to the state dir,
//!   which the daemon treats as the truth about which pods exist.
//! * [`api`]: the messages of the daemon's unix-socket API.
//! * [`fsutil`]: temp-then-rename writes used for every state file.
//!
//! This crate has no async runtime: the CNI plugin links it and must start fast.

pub mod api;
pub mod cni;
pub mod endpoint;
pub mod fsutil;
