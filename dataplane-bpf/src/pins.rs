//! Where a daemon's pinned objects live below its pin path. The plugin
//! finds the pod program and the maps it writes here, so this layout is
//! shared by both and is part of the upgrade contract.

use std::path::{Path, PathBuf};

/// The pod edge program, pinned by the daemon under `progs/`.
pub const POD_PROGRAM: &str = crate::TC_POD_INGRESS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Pins { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps, pinned by name.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Programs a plugin attaches itself (the pod edge check).
    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn pod_program(&self) -> PathBuf {
        self.progs().join(POD_PROGRAM)
    }

    /// The socket programs' cgroup links.
    pub fn cgroup_links(&self) -> PathBuf {
        self.root.join("links").join("cgroup")
    }

    /// Pod tcx links, one per host-side ifindex.
    pub fn tc_links(&self) -> PathBuf {
        self.root.join("links").join("tc")
    }

    pub fn tc_link(&self, ifindex: u32) -> PathBuf {
        self.tc_links().join(ifindex.to_string())
    }
}
