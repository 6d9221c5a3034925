//! The CNI protocol, as the spec describes it (<https://www.cni.dev/docs/spec/>).
//!
//! We speak 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0. The 0.1/0.2 result format
//! (`ip4`/`ip6` objects) is a different shape that no runtime we target sends,
//! so a config naming those versions gets error code 1.

mod args;
mod config;
mod dispatch;
mod env;
mod error;
mod result;
mod version;

pub use args::CniArgs;
pub use config::{NetConf, ValidAttachment};
pub use dispatch::{dispatch, main_with, Outcome, Request};
pub use env::{Command, Env, MAX_IFNAME_LEN};
pub use error::{codes, CniError};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{CniVersion, SUPPORTED_VERSIONS};

/// Writes a successful answer to stdout, as the spec requires.
pub fn print_json(value: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout leaves nothing useful to do: the runtime is gone.
    let _ = serde_json::to_writer(&mut out, value);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Writes the spec's error object to stdout and returns the process exit code.
pub fn print_error(err: &CniError, version: &str) -> i32 {
    print_json(&err.to_json(version));
    1
}
