//! The part every CNI plugin binary shares: read stdin and the environment,
//! answer VERSION, parse the config, run the command's handler, and print
//! the result or the spec's error object in the config's version.

use super::{
    print_error, print_json, CniError, CniVersion, Command, Env, NetConf, SUPPORTED_VERSIONS,
};
use serde_json::{json, Value};
use std::io::Read;

/// What a plugin answers: JSON on stdout, nothing, or an error object.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Print(Value),
    Silent,
    Fail {
        error: CniError,
        /// The `cniVersion` the error object is written in.
        version: String,
    },
}

impl Outcome {
    /// Writes the answer to stdout and returns the process exit code.
    pub fn emit(&self) -> i32 {
        match self {
            Outcome::Print(v) => {
                print_json(v);
                0
            }
            Outcome::Silent => 0,
            Outcome::Fail { error, version } => print_error(error, version),
        }
    }
}

/// A parsed request for any command but VERSION.
#[derive(Debug)]
pub struct Request<'a> {
    pub env: Env,
    pub conf: NetConf,
    pub version: CniVersion,
    /// The config exactly as received, for delegating to another plugin.
    pub stdin: &'a [u8],
}

/// Answers one CNI request: VERSION here, every other command through
/// `handle`, which returns the JSON to print (ADD) or nothing.
pub fn dispatch(
    env: Result<Env, CniError>,
    stdin: &[u8],
    handle: impl FnOnce(Request<'_>) -> Result<Option<Value>, CniError>,
) -> Outcome {
    let parsed = NetConf::parse(stdin);
    // Errors are written in the config's version when it parsed; before
    // that we know no better than the latest.
    let error_version = parsed
        .as_ref()
        .map(|(c, _)| c.cni_version.clone())
        .unwrap_or_else(|_| CniVersion::LATEST.to_string());
    let fail = |error: CniError| Outcome::Fail {
        error,
        version: error_version.clone(),
    };
    let env = match env {
        Ok(env) => env,
        Err(e) => return fail(e),
    };
    if env.command == Command::Version {
        // The runtime may send no config (or one we cannot read) with
        // VERSION; it is asking what we speak, so answer regardless.
        let version = parsed.map(|(_, v)| v).unwrap_or(CniVersion::LATEST);
        return Outcome::Print(json!({
            "cniVersion": version.as_str(),
            "supportedVersions": SUPPORTED_VERSIONS,
        }));
    }
    let (conf, version) = match parsed {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let request = Request {
        env,
        conf,
        version,
        stdin,
    };
    match handle(request) {
        Ok(Some(v)) => Outcome::Print(v),
        Ok(None) => Outcome::Silent,
        Err(e) => fail(e),
    }
}

/// A plugin binary's `main`: reads the process environment and stdin,
/// answers on stdout, and returns the exit code.
pub fn main_with(handle: impl FnOnce(Request<'_>) -> Result<Option<Value>, CniError>) -> i32 {
    // Room for a typical config up front: read_to_end would otherwise
    // start at 32 bytes and take a read(2) per doubling.
    let mut stdin = Vec::with_capacity(16 * 1024);
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return Outcome::Fail {
            error: CniError::io("cannot read the network configuration from stdin", &e),
            version: CniVersion::LATEST.to_string(),
        }
        .emit();
    }
    dispatch(Env::from_process(), &stdin, handle).emit()
}
