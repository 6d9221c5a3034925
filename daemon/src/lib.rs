//! The Sluice node daemon: loads, attaches and pins the BPF datapath, keeps
//! the endpoint map from pod registrations and endpoint records, serves the
//! API on a unix socket, and exposes metrics. `sluicectl` reads the same
//! config to find the daemon, or its pins when the daemon is down.

pub mod config;
pub mod datapath;
pub mod edge;
pub mod maglev;
pub mod metrics;
pub mod netns;
pub mod server;
pub mod services;
pub mod sockterm;
pub mod state;
pub mod views;
