//! The `sluice` CNI plugin: routed pod networking without a bridge.
//!
//! Each pod gets a veth pair: its end (`eth0`) holds the pod's /32 and /128
//! and a default route through a gateway that lives on the node's end
//! (`sl…`); the node holds a host route to each pod address and an
//! `unreachable` route for the whole pod range. See the README for the
//! configuration keys and error codes.

pub mod config;
pub mod delegate;
pub mod edge;
pub mod install;
pub mod ipam;
pub mod naming;
pub mod netlink;
pub mod netlink_node;
pub mod netns;
pub mod plugin;

/// Reads the CNI environment and stdin, runs the command, prints the answer
/// and returns the process exit code. `args`: the command line after the
/// program's name.
pub fn main_entry(args: Vec<String>) -> i32 {
    // `sluice install …` (the DaemonSet's init container); every other
    // run is the CNI protocol (argv is not part of it).
    if args.first().map(String::as_str) == Some("install") {
        return install::main(&args[1..]);
    }
    sluice_common::cni::main_with(plugin::handle)
}
