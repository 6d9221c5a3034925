//! Where a daemon's pinned objects live below its pin path. The plugin
//! finds the pod program and the maps it writes here, so this layout is
//! shared by both and is part of the upgrade contract.

use std::path::{Path, PathBuf};

/// The pod edge program, pinned by the daemon under `progs/`.
pub const POD_PROGRAM: &str = crate::TC_POD_INGRESS;

/// What follows the ifindex in the name of a tcx egress link's pin.
pub const EGRESS_SUFFIX: &str = "-egress";

/// The host ifindex a pin under `links/tc/` belongs to (`7` or
/// `7-egress`).
pub fn tc_pin_ifindex(name: &str) -> Option<u32> {
    name.strip_suffix(EGRESS_SUFFIX)
        .unwrap_or(name)
        .parse()
        .ok()
}

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

    /// The tcx egress link of a pod whose services are translated per
    /// packet (the reverse translation of its replies).
    pub fn tc_egress_link(&self, ifindex: u32) -> PathBuf {
        self.tc_links().join(format!("{ifindex}{EGRESS_SUFFIX}"))
    }

    /// The reverse-translation program, pinned by the daemon.
    pub fn pod_egress_program(&self) -> PathBuf {
        self.progs().join(crate::TC_POD_EGRESS)
    }
}
