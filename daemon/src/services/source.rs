//! The manifest directory: every `*.yaml`, `*.yml` and `*.json` file in it
//! (not hidden, not an editor's temp file), each read whole. A file that no
//! longer parses (half-written, broken) keeps contributing what it held
//! before, so nothing programmed is lost to a bad save; the error is
//! reported until the file is fixed.
//!
//! Each object is kept as what the translation reads of it
//! ([`ParsedObject`]), parsed once when its file is read, not as the
//! Kubernetes object.

use super::manifest;
use super::model::{Rejection, ServiceRef};
use super::translate::{Context, ParsedObject};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    size: u64,
}

/// What one file held the last time it parsed.
#[derive(Debug, Default)]
struct FileObjects {
    objects: Vec<ParsedObject>,
    /// Its Node objects (for node routing).
    nodes: Vec<crate::nodes::ClusterNode>,
    /// Documents that are a Service, EndpointSlice or Node but not a valid
    /// one.
    rejected: Vec<Rejection>,
}

#[derive(Debug)]
struct FileEntry {
    stamp: Stamp,
    /// The last objects the file parsed to.
    objects: FileObjects,
    /// Why the file's current content is not used, if it is not.
    error: Option<String>,
}

#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// What objects are parsed with (the service, NodePort and external
    /// ranges, the node's external mode: settings that do not change
    /// while the daemon runs).
    ctx: Context,
    files: BTreeMap<PathBuf, FileEntry>,
    /// Which files hold objects of each service.
    index: std::collections::HashMap<ServiceRef, BTreeSet<PathBuf>>,
    /// Counts changes to the set of Node objects (a file that held or
    /// holds one was read or forgotten).
    nodes_generation: u64,
}

fn refs_of(o: &FileObjects) -> Vec<ServiceRef> {
    o.objects
        .iter()
        .filter_map(|x| x.service_ref().cloned())
        .collect()
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
    /// `ctx`: the service ranges objects are parsed with.
    pub fn new(dir: &Path, ctx: &Context) -> Self {
        ManifestDir {
            dir: dir.into(),
            ctx: Context {
                service_cidrs: ctx.service_cidrs.clone(),
                nodeport_range: ctx.nodeport_range,
                external_ip_cidrs: ctx.external_ip_cidrs.clone(),
                external_mode: ctx.external_mode,
                ..Default::default()
            },
            files: BTreeMap::new(),
            index: Default::default(),
            nodes_generation: 0,
        }
    }

    /// Rereads the files whose inode, mtime or size changed and forgets the
    /// ones that went away. Returns whether anything changed.
    pub fn scan(&mut self) -> Result<bool, String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read services directory {}: {e}", self.dir.display()))?;
        let mut seen = std::collections::HashSet::new();
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
            seen.insert(path.clone());
            changed |= self.load(&path, &md, false);
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        for p in &gone {
            self.forget(p);
        }
        Ok(changed || !gone.is_empty())
    }

    /// Rereads one file if its stamp changed (`md` its metadata). Returns
    /// whether it did.
    /// `force`: reread even with an unchanged stamp (the watch said the
    /// file was written: two same-size writes within one mtime tick look
    /// alike).
    fn load(&mut self, path: &Path, md: &std::fs::Metadata, force: bool) -> bool {
        let stamp = Stamp {
            ino: md.ino(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            size: md.size(),
        };
        if !force && self.files.get(path).is_some_and(|f| f.stamp == stamp) {
            return false;
        }
        let name = path.display().to_string();
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|text| manifest::parse(&name, &text))
            .map(|o| {
                let mut rejected = o.rejected;
                let mut nodes = Vec::new();
                for n in &o.nodes {
                    match crate::nodes::parse(n) {
                        Ok(n) => nodes.push(n),
                        Err(reason) => rejected.push(Rejection {
                            object: format!(
                                "{name}: Node {}",
                                n.metadata.name.as_deref().unwrap_or("?")
                            ),
                            reason,
                            service: None,
                        }),
                    }
                }
                FileObjects {
                    objects: o
                        .services
                        .iter()
                        .map(|s| ParsedObject::service(s, &self.ctx))
                        .chain(o.slices.iter().map(|s| ParsedObject::slice(s, &self.ctx)))
                        .collect(),
                    nodes,
                    rejected,
                }
            });
        let previous = self.forget(path).unwrap_or_default();
        let had_nodes = !previous.nodes.is_empty();
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
        for r in refs_of(&entry.objects) {
            self.index.entry(r).or_default().insert(path.into());
        }
        if had_nodes || !entry.objects.nodes.is_empty() {
            self.nodes_generation += 1;
        }
        self.files.insert(path.into(), entry);
        true
    }

    /// Drops a file and its index entries; returns its objects.
    fn forget(&mut self, path: &Path) -> Option<FileObjects> {
        let f = self.files.remove(path)?;
        if !f.objects.nodes.is_empty() {
            self.nodes_generation += 1;
        }
        for r in refs_of(&f.objects) {
            if let Some(set) = self.index.get_mut(&r) {
                set.remove(path);
                if set.is_empty() {
                    self.index.remove(&r);
                }
            }
        }
        Some(f.objects)
    }

    /// Rereads just the named files (from the watch) and returns the
    /// services whose objects may have changed: those of the files' old
    /// and new contents.
    ///
    /// A named file that is missing is forgotten only if `forget_missing`:
    /// an editor that moves the old file away before writing the new one
    /// would otherwise make its services vanish for a moment.
    pub fn refresh(
        &mut self,
        names: &[std::ffi::OsString],
        forget_missing: bool,
    ) -> BTreeSet<ServiceRef> {
        let mut touched = BTreeSet::new();
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let path = self.dir.join(n);
            if !seen.insert(path.clone()) || !is_manifest(&path) {
                continue;
            }
            if let Some(f) = self.files.get(&path) {
                touched.extend(refs_of(&f.objects));
            }
            match std::fs::metadata(&path) {
                Ok(md) if md.is_file() => {
                    self.load(&path, &md, true);
                }
                _ if forget_missing => {
                    self.forget(&path);
                }
                _ => {}
            }
            if let Some(f) = self.files.get(&path) {
                touched.extend(refs_of(&f.objects));
            }
        }
        touched
    }

    /// The Services and EndpointSlices of the given services only.
    pub fn objects_for(&self, refs: &BTreeSet<ServiceRef>) -> Vec<&ParsedObject> {
        let paths: BTreeSet<&PathBuf> = refs
            .iter()
            .filter_map(|r| self.index.get(r))
            .flatten()
            .collect();
        paths
            .into_iter()
            .filter_map(|p| self.files.get(p))
            .flat_map(|f| &f.objects.objects)
            .filter(|o| o.service_ref().is_some_and(|r| refs.contains(r)))
            .collect()
    }

    /// Every Node object of the files, and a number that changes whenever
    /// they may have.
    pub fn nodes(&self) -> (Vec<crate::nodes::ClusterNode>, u64) {
        let nodes = self
            .files
            .values()
            .flat_map(|f| f.objects.nodes.iter().cloned())
            .collect();
        (nodes, self.nodes_generation)
    }

    /// What the files themselves could not give (broken files, bad
    /// documents).
    pub fn file_rejections(&self) -> Vec<Rejection> {
        let mut out = Vec::new();
        for (path, f) in &self.files {
            out.extend(f.objects.rejected.iter().cloned());
            if let Some(e) = &f.error {
                out.push(Rejection {
                    object: path.display().to_string(),
                    reason: format!("{e}; keeping what the file held before"),
                    service: None,
                });
            }
        }
        out
    }

    /// How many Services, EndpointSlices and Node objects the files hold,
    /// and how many files or documents are rejected (for the source's
    /// status, without copying any of them).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let (mut services, mut slices, mut nodes, mut rejected) = (0, 0, 0, 0);
        for f in self.files.values() {
            let o = &f.objects;
            let s = o.objects.iter().filter(|x| x.is_service()).count();
            services += s;
            slices += o.objects.len() - s;
            nodes += o.nodes.len();
            rejected += o.rejected.len() + usize::from(f.error.is_some());
        }
        (services, slices, nodes, rejected)
    }

    /// Everything the files hold (borrowed: a pass at 10,000 services does
    /// not copy them), and everything that could not be used.
    pub fn objects(&self) -> (Vec<&ParsedObject>, Vec<Rejection>) {
        let objects = self
            .files
            .values()
            .flat_map(|f| f.objects.objects.iter())
            .collect();
        (objects, self.file_rejections())
    }
}

/// Sends the names of the files in `dir` that were written, moved in or
/// out, or deleted (one batch per read). Runs on a thread of its own.
pub fn watch(dir: &Path) -> Result<std::sync::mpsc::Receiver<Vec<std::ffi::OsString>>, String> {
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
            crate::housekeeping_priority();
            while let Ok(events) = ino.read_events() {
                let names = events.into_iter().filter_map(|e| e.name).collect();
                if tx.send(names).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("starting the watch thread: {e}"))?;
    Ok(rx)
}

/// Of `names`, those that name a manifest file that does not exist now.
pub fn missing(dir: &Path, names: &[std::ffi::OsString]) -> Vec<std::ffi::OsString> {
    names
        .iter()
        .filter(|n| {
            let p = dir.join(n);
            is_manifest(&p) && !p.exists()
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn a_broken_save_keeps_the_previous_objects() {
        let d = tempfile::tempdir().unwrap();
        let ctx = Context {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..Default::default()
        };
        let mut m = ManifestDir::new(d.path(), &ctx);
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
        let (svcs, rej) = m.objects();
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
        let (svcs, rej) = m.objects();
        assert_eq!(svcs[0].service_ref().unwrap().name, "b");
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
