use serde_json::json;
use std::fmt;

/// Error codes. 1-99 are the spec's; 100 and up are ours and documented in
/// the README's error table.
pub mod codes {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD requests.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin is available with limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    /// Ours: every address of a range set is reserved.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// Ours: the (container ID, ifname) pair already holds a reservation.
    pub const ALREADY_ALLOCATED: u32 = 101;
    /// Ours: a kernel (netlink) operation failed.
    pub const NETLINK_FAILURE: u32 = 102;
    /// Ours: an interface or address of the pod already exists.
    pub const ALREADY_EXISTS: u32 = 103;
    /// Ours: CHECK found the pod's network different from its result.
    pub const CHECK_FAILED: u32 = 104;
    /// Ours: a delegated IPAM plugin failed.
    pub const DELEGATE_FAILED: u32 = 105;
}

/// The spec's error object: `{"cniVersion", "code", "msg", "details"}`.
///
/// `msg` says what failed; `details` says where and what the operator can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn io(what: impl Into<String>, err: &std::io::Error) -> Self {
        Self::new(codes::IO_FAILURE, what, err.to_string())
    }

    pub fn config(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::INVALID_CONFIG, msg, details)
    }

    pub fn env(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ENV, msg, details)
    }

    /// Prefixes the message with the step that failed, keeping the code.
    pub fn context(mut self, step: impl fmt::Display) -> Self {
        self.msg = format!("{step}: {}", self.msg);
        self
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }

    /// Parses an error object printed by another plugin (a delegated IPAM).
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let code = v.get("code")?.as_u64()? as u32;
        Some(Self {
            code,
            msg: v.get("msg").and_then(|m| m.as_str()).unwrap_or("").into(),
            details: v
                .get("details")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .into(),
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(codes::INVALID_CONFIG, "bad range", "fix it");
        let v = e.to_json("1.0.0");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad range");
        assert_eq!(v["details"], "fix it");
        assert_eq!(CniError::from_json(&v).unwrap(), e);
    }

    #[test]
    fn empty_details_are_omitted() {
        let v = CniError::new(5, "x", "").to_json("0.4.0");
        assert!(v.get("details").is_none());
    }

    #[test]
    fn context_keeps_the_code() {
        let e = CniError::new(codes::IO_FAILURE, "disk full", "").context("writing record");
        assert_eq!(e.code, 5);
        assert_eq!(e.msg, "writing record: disk full");
    }
}
