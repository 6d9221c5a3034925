//! Shared by the privileged tests of this crate.

use std::path::{Path, PathBuf};

/// A pin directory of its own on /sys/fs/bpf, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        sluice_dataplane::load::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("mount bpffs");
        let p = PathBuf::from(format!("/sys/fs/bpf/sluice-t{}-{tag}", std::process::id()));
        PinDir(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: loading BPF programs needs root");
    }
    root
}
