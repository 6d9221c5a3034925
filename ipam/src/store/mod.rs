//! Where reservations live: the few primitives the allocator is written
//! against, an on-disk implementation for production ([`DiskStore`]) and an
//! in-memory one for tests ([`MemStore`]).
//!
//! The model: an *address record* per reserved address, naming its owner
//! (container ID, ifname), created exclusively; and an *owner index* per
//! attachment listing the addresses it may hold. The index can name more
//! than the attachment owns (an allocation interrupted between writing the
//! index and creating the records), never less, so the allocator always
//! checks a record's owner before removing it.
//!
//! Every primitive assumes the caller holds [`Store::lock`]; only the
//! allocator calls them.

mod disk;
mod mem;

pub use disk::DiskStore;
pub use mem::MemStore;

use crate::error::IpamError;
use std::fmt;
use std::net::IpAddr;

/// Longest file name Linux filesystems accept.
const MAX_NAME_LEN: usize = 255;

/// The attachment a reservation belongs to: the spec's (container ID, ifname).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    /// Checks that the pair can name store files: `<containerID>:<ifname>`
    /// must be one path component, not a temp name, and the record content
    /// (`<containerID>\n<ifname>\n`) must read back unambiguously.
    pub fn new(container_id: &str, ifname: &str) -> Result<Self, IpamError> {
        let bad = |what, value: &str, why| {
            Err(IpamError::InvalidAttachment {
                what,
                value: value.to_string(),
                why,
            })
        };
        let forbidden = |s: &str| {
            s.chars()
                .any(|c| matches!(c, '/' | ':' | '\n' | '\r' | '\0'))
        };
        if container_id.is_empty() {
            return bad("container ID", container_id, "it is empty");
        }
        if container_id.starts_with('.') {
            return bad("container ID", container_id, "it starts with '.'");
        }
        if forbidden(container_id) {
            return bad(
                "container ID",
                container_id,
                "it contains '/', ':' or a control character",
            );
        }
        if ifname.is_empty() {
            return bad("interface name", ifname, "it is empty");
        }
        if forbidden(ifname) {
            return bad(
                "interface name",
                ifname,
                "it contains '/', ':' or a control character",
            );
        }
        if container_id.len() + 1 + ifname.len() > MAX_NAME_LEN {
            return bad(
                "container ID",
                container_id,
                "it is too long to name a file",
            );
        }
        Ok(Owner {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// The owner index file name.
    pub(crate) fn key(&self) -> String {
        format!("{}:{}", self.container_id, self.ifname)
    }

    pub(crate) fn from_key(key: &str) -> Option<Self> {
        let (c, i) = key.split_once(':')?;
        Owner::new(c, i).ok()
    }

    /// The address record content.
    pub(crate) fn encode(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    /// Reads a record back; anything but exactly our two lines is `None`.
    pub(crate) fn decode(content: &str) -> Option<Self> {
        let body = content.strip_suffix('\n')?;
        let (c, i) = body.split_once('\n')?;
        Owner::new(c, i).ok()
    }

    /// Whether this owner is one of GC's valid `(container ID, ifname)` pairs.
    pub(crate) fn is_in(&self, valid: &std::collections::HashSet<(String, String)>) -> bool {
        valid.contains(&(self.container_id.clone(), self.ifname.clone()))
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {} ifname {}", self.container_id, self.ifname)
    }
}

/// The primitives the allocator needs. Mutations take `&mut self` so an
/// in-memory store needs no interior mutability; a disk store is cheap to
/// open, so each process (or thread) opens its own and [`Store::lock`]
/// serialises them.
pub trait Store {
    /// Held for the whole of an allocate, release, GC or status read;
    /// dropping it releases the lock.
    type Guard;

    fn lock(&self) -> Result<Self::Guard, IpamError>;

    /// Whether an address record exists for `ip` (whoever owns it).
    fn is_reserved(&self, ip: IpAddr) -> Result<bool, IpamError>;

    /// The owner named by the record of `ip`: `None` when there is no record
    /// or it does not name a valid owner.
    fn owner(&self, ip: IpAddr) -> Result<Option<Owner>, IpamError>;

    /// Creates the record of `ip` for `owner`, atomically and exclusively:
    /// `Ok(false)` when a record already exists, which is left untouched.
    fn reserve(&mut self, ip: IpAddr, owner: &Owner) -> Result<bool, IpamError>;

    /// Removes the record of `ip`; no record is not an error.
    fn unreserve(&mut self, ip: IpAddr) -> Result<(), IpamError>;

    /// Every address that has a record.
    fn reserved(&self) -> Result<Vec<IpAddr>, IpamError>;

    /// The addresses the owner index of `owner` lists, if it has one.
    fn read_index(&self, owner: &Owner) -> Result<Option<Vec<IpAddr>>, IpamError>;

    /// Replaces the owner index of `owner`, atomically.
    fn write_index(&mut self, owner: &Owner, ips: &[IpAddr]) -> Result<(), IpamError>;

    /// Removes the owner index; no index is not an error.
    fn remove_index(&mut self, owner: &Owner) -> Result<(), IpamError>;

    /// Every owner that has an index.
    fn indexes(&self) -> Result<Vec<Owner>, IpamError>;

    /// The address last handed out from range set `set`, where round-robin
    /// resumes.
    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError>;

    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> Result<(), IpamError>;

    /// Removes what killed writers left behind (temp files).
    fn sweep(&mut self) -> Result<(), IpamError>;

    /// Proves that a reservation could be written now.
    fn probe(&self) -> Result<(), IpamError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_through_keys_and_records() {
        let o = Owner::new("abc_1.2-x", "eth0").unwrap();
        assert_eq!(Owner::from_key(&o.key()), Some(o.clone()));
        assert_eq!(Owner::decode(&o.encode()), Some(o.clone()));
        assert_eq!(o.to_string(), "container abc_1.2-x ifname eth0");
    }

    #[test]
    fn keys_that_could_escape_or_collide_are_rejected() {
        for (c, i) in [
            ("", "eth0"),
            ("a/b", "eth0"),
            ("a:b", "eth0"),
            (".tmp-x", "eth0"),
            ("..", "eth0"),
            ("abc", ""),
            ("abc", "eth/0"),
            ("abc", "eth:0"),
            ("abc", "eth\n0"),
        ] {
            assert!(Owner::new(c, i).is_err(), "{c:?} {i:?}");
        }
        assert!(Owner::new(&"a".repeat(300), "eth0").is_err());
    }

    #[test]
    fn garbled_records_have_no_owner() {
        for bad in [
            "",
            "abc",
            "abc\n",
            "abc\neth0",
            "abc\neth0\nextra\n",
            "\neth0\n",
        ] {
            assert_eq!(Owner::decode(bad), None, "{bad:?}");
        }
    }
}
