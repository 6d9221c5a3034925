use super::{codes, CniError};
use std::fmt;

/// The spec versions whose result format we can produce, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI spec version we speak. Ordered, so feature gates read as comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "0.3.0" => Self::V0_3_0,
            "0.3.1" => Self::V0_3_1,
            "0.4.0" => Self::V0_4_0,
            "1.0.0" => Self::V1_0_0,
            "1.1.0" => Self::V1_1_0,
            "" => {
                return Err(CniError::new(
                    codes::INCOMPATIBLE_VERSION,
                    "the network configuration has no cniVersion",
                    format!(
                        "set \"cniVersion\" to one of {}",
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                ))
            }
            other => {
                return Err(CniError::new(
                    codes::INCOMPATIBLE_VERSION,
                    format!("CNI version {other:?} is not supported"),
                    format!(
                        "this plugin speaks {}; set \"cniVersion\" to one of them",
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK was introduced in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// STATUS and GC were introduced in 1.1.0.
    pub fn has_status_and_gc(self) -> bool {
        self >= Self::V1_1_0
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in each IP entry.
    pub fn ips_carry_version(self) -> bool {
        self < Self::V1_0_0
    }

    /// 1.1.0 added `mtu` on interfaces and the extra route attributes.
    pub fn has_extended_fields(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_round_trips() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(v).unwrap().as_str(), *v);
        }
    }

    #[test]
    fn old_and_unknown_versions_are_code_1() {
        for v in ["0.1.0", "0.2.0", "2.0.0", "1.0", "banana", ""] {
            let e = CniVersion::parse(v).unwrap_err();
            assert_eq!(e.code, codes::INCOMPATIBLE_VERSION, "{v}");
        }
    }

    #[test]
    fn feature_gates_follow_the_spec() {
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(!CniVersion::V1_0_0.has_status_and_gc());
        assert!(CniVersion::V1_1_0.has_status_and_gc());
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
    }
}
