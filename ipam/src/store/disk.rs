//! The production store: one directory per network, shared by every plugin
//! process on the node.
//!
//! ```text
//! <dataDir>/<network>/
//!     lock                    flock(LOCK_EX) around every operation
//!     10.244.0.5              address record: "<containerID>\n<ifname>\n"
//!     fd00:244::5             (v6 in canonical Ipv6Addr form)
//!     last_reserved_ip.<i>    where round-robin resumes in range set i
//!     by-id/<cid>:<ifname>    owner index: one address per line
//!     .tmp-*                  in-flight writes; swept by GC after 60 s
//! ```
//!
//! An address record is created by writing a temp file and hard-linking it
//! to the address name: `link(2)` fails if the name exists, so a record
//! appears whole and only once, whenever its writer is killed. The lock
//! serialises the cooperating processes; the exclusive link is what makes a
//! double allocation impossible even for a writer the lock did not stop.

use super::{Owner, Store};
use crate::error::IpamError;
use sluice_common::fsutil::{is_temp_name, sweep_temp_files, temp_sibling, write_atomic};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Temp files younger than this may belong to a live writer of a process
/// that does not take the lock (none of ours); older ones are debris.
const TEMP_FILE_MAX_AGE: Duration = Duration::from_secs(60);

const LOCK_FILE: &str = "lock";
const INDEX_DIR: &str = "by-id";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";

/// A network's reservations under `<dataDir>/<network>/`.
#[derive(Debug, Clone)]
pub struct DiskStore {
    dir: PathBuf,
    by_id: PathBuf,
}

impl DiskStore {
    /// Opens the store of `network`, creating its directories (mode 0755) if
    /// needed. A dataDir we cannot write is an [`IpamError::Io`] naming the
    /// directory.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        let store = Self::at(data_dir, network)?;
        // The owner index lies inside the network's directory: once it is
        // there, both are (one stat instead of two mkdir and two stat on
        // every ADD).
        if fs::metadata(&store.by_id).is_ok_and(|m| m.is_dir()) {
            return Ok(store);
        }
        for dir in [&store.dir, &store.by_id] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| IpamError::io("create directory", dir, e))?;
        }
        Ok(store)
    }

    /// Opens the store of `network` only if its directory exists, creating
    /// nothing: DEL and GC have nothing to do on a network that never
    /// allocated, and must not fail because dataDir is read-only.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Self>, IpamError> {
        let store = Self::at(data_dir, network)?;
        match fs::metadata(&store.dir) {
            Ok(_) => Ok(Some(store)),
            // A file where a directory of the path should be: nothing can
            // have been stored there either.
            Err(e)
                if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(IpamError::io("read", &store.dir, e)),
        }
    }

    fn at(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        if network.is_empty()
            || network == "."
            || network == ".."
            || network.contains(['/', '\0'])
            || is_temp_name(network)
        {
            return Err(IpamError::Config(sluice_common::cni::CniError::config(
                format!("network name {network:?} cannot name the IPAM directory"),
                "the network \"name\" becomes a directory under ipam.dataDir; \
                 use letters, digits, '_', '.' or '-'",
            )));
        }
        let dir = data_dir.join(network);
        let by_id = dir.join(INDEX_DIR);
        Ok(DiskStore { dir, by_id })
    }

    /// `<dataDir>/<network>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn index_path(&self, owner: &Owner) -> PathBuf {
        self.by_id.join(owner.key())
    }

    fn last_reserved_path(&self, set: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"))
    }
}

/// Reads a file, mapping "does not exist" to `None`.
fn read_optional(path: &Path) -> Result<Option<String>, IpamError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        // Not UTF-8: not something we wrote, so it holds nothing we can use.
        Err(e) if e.kind() == ErrorKind::InvalidData => Ok(Some(String::new())),
        Err(e) => Err(IpamError::io("read", path, e)),
    }
}

fn remove_optional(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IpamError::io("remove", path, e)),
    }
}

/// Parses a directory entry named by an address. Only the canonical form we
/// write counts, so one address never has two records.
fn parse_record_name(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = name.parse().ok()?;
    (ip.to_string() == name).then_some(ip)
}

/// Width of `last_reserved_ip.<i>`'s content: the longest address's text
/// (eight groups of four hex digits and seven colons) and a newline.
const LAST_RESERVED_WIDTH: usize = 40;

/// `ip`'s text padded with spaces to [`LAST_RESERVED_WIDTH`], so that
/// writing it over any earlier content leaves none of that content behind.
fn padded_address(ip: IpAddr) -> String {
    format!("{:<w$}\n", ip.to_string(), w = LAST_RESERVED_WIDTH - 1)
}

fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

impl Store for DiskStore {
    type Guard = File;

    fn lock(&self) -> Result<File, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        // A fresh open file description per call: flock excludes other
        // descriptions, so threads of one process exclude each other too.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| IpamError::io("open lock file", &path, e))?;
        loop {
            // SAFETY: flock on a descriptor we own, open for the whole call.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(f);
            }
            let e = io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(IpamError::io("lock", &path, e));
            }
        }
    }

    fn is_reserved(&self, ip: IpAddr) -> Result<bool, IpamError> {
        let path = self.record_path(ip);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IpamError::io("check", &path, e)),
        }
    }

    fn owner(&self, ip: IpAddr) -> Result<Option<Owner>, IpamError> {
        Ok(read_optional(&self.record_path(ip))?.and_then(|s| Owner::decode(&s)))
    }

    fn reserve(&mut self, ip: IpAddr, owner: &Owner) -> Result<bool, IpamError> {
        let path = self.record_path(ip);
        let tmp = temp_sibling(&path);
        if let Err(e) = write_new(&tmp, owner.encode().as_bytes()) {
            let _ = fs::remove_file(&tmp);
            return Err(IpamError::io("write", &tmp, e));
        }
        let linked = fs::hard_link(&tmp, &path);
        // Should this fail, the record (if linked) is complete regardless, and
        // GC sweeps the stray temp name.
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::io("create", &path, e)),
        }
    }

    fn unreserve(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        remove_optional(&self.record_path(ip))
    }

    fn reserved(&self) -> Result<Vec<IpAddr>, IpamError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| IpamError::io("list", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("list", &self.dir, e))?;
            if let Some(ip) = entry.file_name().to_str().and_then(parse_record_name) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    fn read_index(&self, owner: &Owner) -> Result<Option<Vec<IpAddr>>, IpamError> {
        Ok(read_optional(&self.index_path(owner))?.map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<IpAddr>>()
        }))
    }

    fn write_index(&mut self, owner: &Owner, ips: &[IpAddr]) -> Result<(), IpamError> {
        let path = self.index_path(owner);
        let body: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
        write_atomic(&path, body.as_bytes()).map_err(|e| IpamError::io("write", &path, e))
    }

    fn remove_index(&mut self, owner: &Owner) -> Result<(), IpamError> {
        remove_optional(&self.index_path(owner))
    }

    fn indexes(&self) -> Result<Vec<Owner>, IpamError> {
        let entries = match fs::read_dir(&self.by_id) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IpamError::io("list", &self.by_id, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("list", &self.by_id, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_name(name) {
                continue;
            }
            if let Some(owner) = Owner::from_key(name) {
                out.push(owner);
            }
        }
        Ok(out)
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        // Only a hint: a garbled file restarts round-robin at the range start.
        Ok(read_optional(&self.last_reserved_path(set))?.and_then(|s| s.trim().parse().ok()))
    }

    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        // Rewritten in place, not temp-then-rename: it is a hint, a torn
        // write only restarts round-robin at the range start, and this
        // saves creating an inode on every allocation. Nor truncated: the
        // address is padded to the longest one's width, so each write
        // covers the last one whole and the file keeps its data block (a
        // truncate frees the block and the write allocates another; on an
        // ext4 mounted with `discard` and no journal the free is a
        // synchronous discard, 0.3 ms of every ADD on the build machine).
        let path = self.last_reserved_path(set);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(padded_address(ip).as_bytes()))
            .map_err(|e| IpamError::io("write", &path, e))
    }

    fn sweep(&mut self) -> Result<(), IpamError> {
        for dir in [&self.dir, &self.by_id] {
            match sweep_temp_files(dir, TEMP_FILE_MAX_AGE) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(IpamError::io("sweep temp files in", dir, e)),
            }
        }
        Ok(())
    }

    fn probe(&self) -> Result<(), IpamError> {
        let tmp = temp_sibling(&self.dir.join("probe"));
        let res = write_new(&tmp, b"probe\n");
        let _ = fs::remove_file(&tmp);
        res.map_err(|e| IpamError::io("write a probe file in", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str) -> Owner {
        Owner::new(c, "eth0").unwrap()
    }

    #[test]
    fn layout_is_as_documented() {
        let d = tempfile::tempdir().unwrap();
        let mut s = DiskStore::open(d.path(), "net1").unwrap();
        let _g = s.lock().unwrap();
        let v4: IpAddr = "10.244.0.5".parse().unwrap();
        let v6: IpAddr = "fd00:244::5".parse().unwrap();
        assert!(s.reserve(v4, &owner("c1")).unwrap());
        assert!(s.reserve(v6, &owner("c1")).unwrap());
        s.write_index(&owner("c1"), &[v4, v6]).unwrap();
        s.set_last_reserved(0, v4).unwrap();
        let net = d.path().join("net1");
        assert_eq!(
            fs::read_to_string(net.join("10.244.0.5")).unwrap(),
            "c1\neth0\n"
        );
        assert_eq!(
            fs::read_to_string(net.join("fd00:244::5")).unwrap(),
            "c1\neth0\n"
        );
        assert_eq!(
            fs::read_to_string(net.join("by-id/c1:eth0")).unwrap(),
            "10.244.0.5\nfd00:244::5\n"
        );
        let hint = fs::read_to_string(net.join("last_reserved_ip.0")).unwrap();
        assert_eq!(hint.trim(), "10.244.0.5");
        assert_eq!(hint.len(), LAST_RESERVED_WIDTH);
        assert!(net.join("lock").exists());
        let mut names: Vec<String> = fs::read_dir(&net)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "10.244.0.5",
                "by-id",
                "fd00:244::5",
                "last_reserved_ip.0",
                "lock"
            ],
            "no temp files left behind"
        );
    }

    #[test]
    fn the_round_robin_hint_is_rewritten_whole_without_truncating() {
        let d = tempfile::tempdir().unwrap();
        let mut s = DiskStore::open(d.path(), "net1").unwrap();
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
        let short: IpAddr = "10.0.0.2".parse().unwrap();
        s.set_last_reserved(0, longest).unwrap();
        assert_eq!(s.last_reserved(0).unwrap(), Some(longest));
        s.set_last_reserved(0, short).unwrap();
        assert_eq!(s.last_reserved(0).unwrap(), Some(short));
        // A hint an older version wrote unpadded, longer than the new one.
        let path = s.last_reserved_path(1);
        fs::write(&path, "fd00:244::ffff").unwrap();
        s.set_last_reserved(1, short).unwrap();
        assert_eq!(s.last_reserved(1).unwrap(), Some(short));
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            LAST_RESERVED_WIDTH as u64
        );
    }

    #[test]
    fn records_are_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let mut s = DiskStore::open(d.path(), "n").unwrap();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(s.reserve(ip, &owner("a")).unwrap());
        assert!(!s.reserve(ip, &owner("b")).unwrap());
        assert_eq!(s.owner(ip).unwrap(), Some(owner("a")));
    }

    #[test]
    fn foreign_files_are_not_records() {
        let d = tempfile::tempdir().unwrap();
        let s = DiskStore::open(d.path(), "n").unwrap();
        for name in [".tmp-10.0.0.1.1.2.3", "fd00:0::1", "README", "10.0.0.300"] {
            fs::write(s.dir().join(name), "x").unwrap();
        }
        fs::write(s.by_id.join(".tmp-c:eth0.1.2.3"), "10.0.0.1\n").unwrap();
        assert!(s.reserved().unwrap().is_empty());
        assert!(s.indexes().unwrap().is_empty());
    }

    #[test]
    fn garbled_records_have_no_owner() {
        let d = tempfile::tempdir().unwrap();
        let s = DiskStore::open(d.path(), "n").unwrap();
        fs::write(s.dir().join("10.0.0.1"), b"\xff\xfe").unwrap();
        fs::write(s.dir().join("10.0.0.2"), "half").unwrap();
        assert_eq!(s.owner("10.0.0.1".parse().unwrap()).unwrap(), None);
        assert_eq!(s.owner("10.0.0.2".parse().unwrap()).unwrap(), None);
        assert!(s.is_reserved("10.0.0.2".parse().unwrap()).unwrap());
    }

    #[test]
    fn unwritable_data_dir_is_an_io_error_naming_the_directory() {
        let d = tempfile::tempdir().unwrap();
        // A regular file where a directory should be fails for root too,
        // unlike a permission bit.
        let blocker = d.path().join("data");
        fs::write(&blocker, "").unwrap();
        let e = DiskStore::open(&blocker, "net1").unwrap_err();
        assert!(matches!(e, IpamError::Io { .. }), "{e:?}");
        let cni = e.to_cni();
        assert_eq!(cni.code, sluice_common::cni::codes::IO_FAILURE);
        assert!(cni.msg.contains("data/net1"), "{cni}");
        assert!(cni.details.contains("dataDir"), "{cni}");
    }

    #[test]
    fn network_names_cannot_escape_data_dir() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b", ".tmp-x"] {
            let e = DiskStore::open(d.path(), bad).unwrap_err();
            assert_eq!(
                e.to_cni().code,
                sluice_common::cni::codes::INVALID_CONFIG,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_existing_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert!(DiskStore::open_existing(d.path(), "n").unwrap().is_none());
        assert!(!d.path().join("n").exists());
        DiskStore::open(d.path(), "n").unwrap();
        assert!(DiskStore::open_existing(d.path(), "n").unwrap().is_some());
    }

    #[test]
    fn probe_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = DiskStore::open(d.path(), "n").unwrap();
        s.probe().unwrap();
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 1, "only by-id");
    }
}
