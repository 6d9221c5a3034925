//! The `sluice` CNI plugin: routed pod networking without a bridge.
//!
//! Each pod gets a veth pair: its end (`eth0`) holds the pod's /32 and /128
//! and a default route through a gateway that lives on the node's end
//! (`sl…`); the node holds a host route to each pod address and an
//! `unreachable` route for the whole pod range. See the README for the
//! configuration keys and error codes.

pub mod config;
pub mod delegate;
pub mod ipam;
pub mod naming;
pub mod netlink;
pub mod netns;
pub mod plugin;

/// Reads the CNI environment and stdin, runs the command, prints the answer
/// and returns the process exit code.
pub fn main_entry() -> i32 {
    use sluice_common::cni::{print_error, print_json, CniVersion, Env};
    use std::io::Read;
    let env = match Env::from_process() {
        Ok(e) => e,
        Err(e) => {
            // The version is unknown until stdin is read; answer in the one
            // the config names if it parses.
            let mut stdin = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut stdin);
            let v = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| v.get("cniVersion")?.as_str().map(String::from))
                .unwrap_or_else(|| CniVersion::LATEST.as_str().into());
            return print_error(&e, &v);
        }
    };
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = sluice_common::cni::CniError::io("reading the network config from stdin", &e);
        return print_error(&err, CniVersion::LATEST.as_str());
    }
    match plugin::run(env, stdin) {
        Ok(Some(v)) => {
            print_json(&v);
            0
        }
        Ok(None) => 0,
        Err((e, version)) => print_error(&e, &version),
    }
}
