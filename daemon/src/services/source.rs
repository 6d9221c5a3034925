//! The manifest directory: every `*.yaml`, `*.yml` and `*.json` file in it
//! (not hidden, not an editor's temp file), each read whole. A file that no
//! longer parses (half-written, broken) keeps contributing what it held
//! before, so nothing programmed is lost to a bad save; the error is
//! reported until the file is fixed.

use super::manifest::{self, Objects};
use super::model::Rejection;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    size: u64,
}

#[derive(Debug)]
struct FileEntry {
    stamp: Stamp,
    /// The last objects the file parsed to.
    objects: Objects,
    /// Why the file's current content is not used, if it is not.
    error: Option<String>,
}

#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
}

fn is_manifest(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with('~')
        && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
}

impl ManifestDir {
    pub fn new(dir: &Path) -> Self {
        ManifestDir {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rereads the files whose inode, mtime or size changed and forgets the
    /// ones that went away. Returns whether anything changed.
    pub fn scan(&mut self) -> Result<bool, String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read services directory {}: {e}", self.dir.display()))?;
        let mut seen = Vec::new();
        let mut changed = false;
        for e in entries.flatten() {
            let path = e.path();
            if !is_manifest(&path) {
                continue;
            }
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            if !md.is_file() {
                continue;
            }
            seen.push(path.clone());
            let stamp = Stamp {
                ino: md.ino(),
                mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
                size: md.size(),
            };
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            changed = true;
            let name = path.display().to_string();
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("{name}: {e}"))
                .and_then(|text| manifest::parse(&name, &text));
            let previous = self
                .files
                .remove(&path)
                .map(|f| f.objects)
                .unwrap_or_default();
            let entry = match parsed {
                Ok(objects) => FileEntry {
                    stamp,
                    objects,
                    error: None,
                },
                Err(error) => FileEntry {
                    stamp,
                    objects: previous,
                    error: Some(error),
                },
            };
            self.files.insert(path, entry);
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        Ok(changed || self.files.len() != before)
    }

    /// Everything the files hold, and everything that could not be used.
    pub fn objects(&self) -> (Vec<Service>, Vec<EndpointSlice>, Vec<Rejection>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut rejected = Vec::new();
        for (path, f) in &self.files {
            services.extend(f.objects.services.iter().cloned());
            slices.extend(f.objects.slices.iter().cloned());
            rejected.extend(f.objects.rejected.iter().cloned());
            if let Some(e) = &f.error {
                rejected.push(Rejection {
                    object: path.display().to_string(),
                    reason: format!("{e}; keeping what the file held before"),
                });
            }
        }
        (services, slices, rejected)
    }
}

/// Wakes the caller (one `()` per batch of events) when a file in `dir` is
/// written, moved in or out, or deleted. Runs on a thread of its own.
pub fn watch(dir: &Path) -> Result<std::sync::mpsc::Receiver<()>, String> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let ino = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| format!("inotify: {e}"))?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CREATE,
    )
    .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sluiced-watch".into())
        .spawn(move || {
            while let Ok(_events) = ino.read_events() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("starting the watch thread: {e}"))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn a_broken_save_keeps_the_previous_objects() {
        let d = tempfile::tempdir().unwrap();
        let mut m = ManifestDir::new(d.path());
        std::fs::write(d.path().join("a.yaml"), SVC).unwrap();
        std::fs::write(d.path().join(".a.yaml.swp"), "junk: [").unwrap();
        std::fs::write(d.path().join("notes.txt"), "junk: [").unwrap();
        assert!(m.scan().unwrap());
        assert!(!m.scan().unwrap(), "nothing changed");
        assert_eq!(m.objects().0.len(), 1);
        // Half-written: not YAML. The service stays, the error is reported.
        std::fs::write(
            d.path().join("a.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: a\n",
        )
        .unwrap();
        assert!(m.scan().unwrap());
        let (svcs, _, rej) = m.objects();
        assert_eq!(svcs.len(), 1, "previous objects kept");
        assert_eq!(rej.len(), 1);
        assert!(
            rej[0].reason.contains("keeping what the file held before"),
            "{}",
            rej[0]
        );
        // Fixed: the error goes.
        std::fs::write(d.path().join("a.yaml"), SVC.replace("name: a", "name: b")).unwrap();
        assert!(m.scan().unwrap());
        let (svcs, _, rej) = m.objects();
        assert_eq!(svcs[0].metadata.name.as_deref(), Some("b"));
        assert!(rej.is_empty());
        // Deleted: its objects go.
        std::fs::remove_file(d.path().join("a.yaml")).unwrap();
        assert!(m.scan().unwrap());
        assert!(m.objects().0.is_empty());
    }

    #[test]
    fn the_watch_wakes_on_a_write() {
        let d = tempfile::tempdir().unwrap();
        let rx = watch(d.path()).unwrap();
        std::fs::write(d.path().join("x.yaml"), SVC).unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("an event for the write");
    }
}
