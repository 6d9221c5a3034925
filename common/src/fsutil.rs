//! Temp-then-rename file writes: a reader sees the old file or the new one,
//! never a torn one, whenever the writer is killed.
//!
//! No fsync: the state these files hold (endpoint records, IPAM reservations)
//! lives under `/var/run` by default, a tmpfs that does not survive the
//! reboot that would make fsync matter, and pods do not survive it either.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `data` to `path` atomically (same-directory temp file, then
/// rename), readable and writable by its owner only (0600): records and
/// reservations name pods, their addresses and annotations.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Creates `dir` and its missing parents with mode 0700, and takes group
/// and other access away from `dir` itself if an older build made it
/// open (parents that already exist are left as they are).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let m = fs::metadata(dir)?;
    if m.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Takes group and other access away from every file directly in `dir`
/// (records an older build wrote 0644). Returns how many it changed.
pub fn tighten_files(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() && m.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(
                e.path(),
                fs::Permissions::from_mode(m.permissions().mode() & 0o700),
            )?;
            n += 1;
        }
    }
    Ok(n)
}

/// A unique temp name next to `path`, starting with `.tmp-` so listings skip it.
pub fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(".tmp-{name}.{}.{n}.{nanos}", std::process::id()))
}

/// Whether a directory entry is one of our temp files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(".tmp-")
}

/// Removes temp files older than `age` left by killed writers.
pub fn sweep_temp_files(dir: &Path, age: std::time::Duration) -> io::Result<usize> {
    let mut n = 0;
    let now = std::time::SystemTime::now();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if !is_temp_name(&e.file_name().to_string_lossy()) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() >= age)
            .unwrap_or(false);
        if old && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn sweeps_old_temp_files_only() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(".tmp-x.1.2.3"), b"").unwrap();
        fs::write(d.path().join("keep"), b"").unwrap();
        assert_eq!(
            sweep_temp_files(d.path(), std::time::Duration::ZERO).unwrap(),
            1
        );
        assert!(d.path().join("keep").exists());
    }
}
