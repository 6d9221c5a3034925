//! The library's error, carrying what failed and where, and its mapping to
//! the CNI error object a runtime shows the operator.

use sluice_common::cni::{codes, CniError};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A filesystem operation on the store failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What we were doing, as a verb phrase: "create", "lock", "read".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Every allocatable address of a range set is reserved.
    #[error(
        "range set {label} is exhausted: all {capacity} allocatable addresses of {ranges} are reserved"
    )]
    Exhausted {
        /// Index of the set in the parsed config.
        set: usize,
        /// Where the set is in the config (`ranges[1]`).
        label: String,
        capacity: u128,
        /// The set's ranges, described for the operator.
        ranges: String,
    },

    /// The attachment already holds a reservation.
    #[error(
        "container {container_id} ifname {ifname} already holds {}; DEL it first",
        join(addresses)
    )]
    AlreadyAllocated {
        container_id: String,
        ifname: String,
        addresses: Vec<IpAddr>,
    },

    /// A container ID or interface name that cannot name a store file.
    #[error("{what} {value:?} cannot be used as a reservation key: {why}")]
    InvalidAttachment {
        what: &'static str,
        value: String,
        why: &'static str,
    },

    /// The configuration is invalid (already phrased for the operator).
    #[error("{0}")]
    Config(CniError),
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl IpamError {
    /// The store's filesystem is read-only.
    pub fn is_read_only(&self) -> bool {
        matches!(self, IpamError::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS))
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IpamError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The CNI error object for this failure: code, message and what to do.
    pub fn to_cni(&self) -> CniError {
        match self {
            IpamError::Io { op, path, source } => {
                let hint = match source.raw_os_error() {
                    Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                        "make dataDir writable by root or set ipam.dataDir to a writable directory"
                            .to_string()
                    }
                    Some(libc::ENOSPC) | Some(libc::EDQUOT) => format!(
                        "free space (or inodes) on the filesystem holding {}",
                        path.display()
                    ),
                    _ => format!(
                        "check the filesystem holding {}, or set ipam.dataDir to another directory",
                        path.display()
                    ),
                };
                CniError::new(
                    codes::IO_FAILURE,
                    format!("ipam: cannot {op} {}", path.display()),
                    format!("{source}; {hint}"),
                )
            }
            IpamError::Exhausted { .. } => CniError::new(
                codes::POOL_EXHAUSTED,
                format!("ipam: {self}"),
                "release addresses (delete pods that are gone, or let the runtime run GC) \
                 or widen the range: a larger subnet, a wider rangeStart..rangeEnd, \
                 or another range in this set",
            ),
            IpamError::AlreadyAllocated { .. } => CniError::new(
                codes::ALREADY_ALLOCATED,
                format!("ipam: {self}"),
                "each (container ID, ifname) holds one reservation per network; \
                 the runtime must DEL the attachment before adding it again",
            ),
            IpamError::InvalidAttachment { .. } => CniError::new(
                codes::INVALID_ENV,
                format!("ipam: {self}"),
                "container IDs are letters, digits, '_', '.' and '-'; \
                 interface names have no '/', ':' or whitespace",
            ),
            IpamError::Config(e) => e.clone(),
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        e.to_cni()
    }
}

impl From<CniError> for IpamError {
    fn from(e: CniError) -> Self {
        IpamError::Config(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_the_path_and_the_fix() {
        let e = IpamError::io(
            "create",
            "/var/run/sluice/ipam/net",
            std::io::Error::from_raw_os_error(libc::EACCES),
        )
        .to_cni();
        assert_eq!(e.code, codes::IO_FAILURE);
        assert!(e.msg.contains("create /var/run/sluice/ipam/net"), "{e}");
        assert!(e.details.contains("ipam.dataDir"), "{e}");
    }

    #[test]
    fn codes_follow_the_error_table() {
        let ex = IpamError::Exhausted {
            set: 1,
            label: "ranges[1]".into(),
            capacity: 253,
            ranges: "10.0.0.1-10.0.0.254 in 10.0.0.0/24".into(),
        }
        .to_cni();
        assert_eq!(ex.code, codes::POOL_EXHAUSTED);
        assert!(
            ex.msg.contains("ranges[1]") && ex.msg.contains("253"),
            "{ex}"
        );
        let dup = IpamError::AlreadyAllocated {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            addresses: vec!["10.244.0.5".parse().unwrap()],
        }
        .to_cni();
        assert_eq!(dup.code, codes::ALREADY_ALLOCATED);
        assert!(
            dup.msg
                .contains("container c1 ifname eth0 already holds 10.244.0.5; DEL it first"),
            "{dup}"
        );
        let cfg = IpamError::Config(CniError::config("bad", "fix")).to_cni();
        assert_eq!(cfg.code, codes::INVALID_CONFIG);
    }
}
