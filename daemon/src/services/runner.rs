//! Keeps the service maps equal to the manifest directory: scan, translate
//! the whole set, apply the difference; again on every change the watch
//! reports (and every 10 s, in case an event was missed).

use super::model::Rejection;
use super::program::{ApplyReport, MaglevConfig, Programmer, ServiceView};
use super::source::{watch, ManifestDir};
use super::translate::{translate, Context};
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long a file that disappeared keeps its services, in case it is
/// being replaced (editors move the old file away first).
const MISSING_GRACE: Duration = Duration::from_millis(200);

/// How often everything is read, translated and applied again.
const FULL_EVERY: Duration = Duration::from_secs(30);

/// The last pass, for the API and metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pass {
    pub dir: String,
    pub frontends: usize,
    pub rejected: Vec<Rejection>,
    pub last_apply: Option<ApplyReport>,
    /// Scan, translation and apply of the last pass that changed anything.
    pub last_duration_ms: f64,
    pub passes: u64,
}

#[derive(Debug)]
pub struct Services {
    programmer: Mutex<Programmer>,
    dir: Mutex<ManifestDir>,
    ctx: Context,
    pass: Mutex<Pass>,
    /// The translation's rejections, kept per service across incremental
    /// passes.
    translation_rejected: Mutex<Vec<Rejection>>,
    /// When a full pass is owed sooner than the periodic one (after an
    /// incremental pass freed a frontend another service may claim, or
    /// failed to program one).
    full_due: Mutex<Option<Instant>>,
    /// Files the watch named that were missing: forgotten after
    /// [`MISSING_GRACE`] if still missing.
    deferred: Mutex<Vec<std::ffi::OsString>>,
    dir_path: std::path::PathBuf,
}

/// An apply's report, or its error logged (the next full pass retries).
fn apply_logged(r: Result<ApplyReport, super::program::ProgramError>) -> Option<ApplyReport> {
    r.map_err(|e| warn!("programming services: {e}")).ok()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Services {
    /// Opens the maps, makes the directory if needed and runs the first
    /// pass (so the daemon is ready with its services programmed).
    pub fn start(cfg: &Config, maps_dir: &std::path::Path) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(dir) = &cfg.services_dir else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating services_dir {}: {e}", dir.display()))?;
        let programmer = Programmer::open(
            maps_dir,
            MaglevConfig {
                table_size: cfg.maglev_table_size,
                seed: cfg.maglev_seed,
            },
        )?;
        let node_name = cfg.node_name.clone().or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        });
        let s = Arc::new(Services {
            programmer: Mutex::new(programmer),
            dir: Mutex::new(ManifestDir::new(dir)),
            ctx: Context {
                node_name,
                ..Default::default()
            },
            pass: Mutex::new(Pass {
                dir: dir.display().to_string(),
                ..Default::default()
            }),
            translation_rejected: Mutex::new(Vec::new()),
            full_due: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            dir_path: dir.clone(),
        });
        // Watch first: a change made during the first pass is not missed.
        let rx = watch(dir).map_err(|e| anyhow::anyhow!(e))?;
        s.pass(true);
        let s2 = s.clone();
        std::thread::Builder::new()
            .name("sluiced-services".into())
            .spawn(move || {
                let mut last_full = Instant::now();
                loop {
                    // A full pass every 30 s whatever else happens (a lost
                    // event, a retry), sooner when one is due.
                    let mut due = s2.full_due().unwrap_or(last_full + FULL_EVERY);
                    if !lock(&s2.deferred).is_empty() {
                        due = due.min(Instant::now() + MISSING_GRACE);
                    }
                    let wait = due.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(mut names) => {
                            while let Ok(more) = rx.try_recv() {
                                names.extend(more);
                            }
                            if names.is_empty() {
                                // An overflowed queue names nothing.
                                s2.pass(true);
                                last_full = Instant::now();
                            } else {
                                s2.changed(&names, false);
                                // A file gone now may be an editor's save
                                // in progress: look again shortly.
                                let gone = super::source::missing(s2.dir_path(), &names);
                                if !gone.is_empty() {
                                    lock(&s2.deferred).extend(gone);
                                }
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            let gone = std::mem::take(&mut *lock(&s2.deferred));
                            if !gone.is_empty() {
                                s2.changed(&gone, true);
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    if Instant::now() >= s2.full_due().unwrap_or(last_full + FULL_EVERY) {
                        s2.pass(true);
                        last_full = Instant::now();
                    }
                }
            })?;
        Ok(Some(s))
    }

    fn dir_path(&self) -> &std::path::Path {
        &self.dir_path
    }

    fn full_due(&self) -> Option<Instant> {
        *lock(&self.full_due)
    }

    /// One scan, translation and apply.
    fn pass(&self, force: bool) {
        *lock(&self.full_due) = None;
        lock(&self.programmer).collect();
        let t0 = Instant::now();
        let mut dir = lock(&self.dir);
        let changed = match dir.scan() {
            Ok(c) => c,
            Err(e) => {
                warn!("{e}");
                return;
            }
        };
        if !changed && !force {
            return;
        }
        let (services, slices, rejected) = dir.objects();
        drop(dir);
        let mut programmer = lock(&self.programmer);
        // The context (and its share of the owners map) is dropped before
        // apply writes the map, so the write does not copy it.
        let t = {
            let mut ctx = self.ctx.clone();
            ctx.previous_owners = programmer.owners();
            translate(&services, &slices, &ctx)
        };
        *lock(&self.translation_rejected) = t.rejected.clone();
        let report = apply_logged(programmer.apply(&t));
        let frontends = programmer.frontends();
        drop(programmer);
        let ms = self.record(rejected, report.as_ref(), frontends, t0);
        if let Some(r) = &report {
            info!(
                frontends,
                added = r.added,
                changed = r.changed,
                removed = r.removed,
                rejected = lock(&self.pass).rejected.len(),
                ms = format!("{ms:.1}"),
                "services programmed"
            );
        }
    }

    /// An incremental pass for the files the watch named: only the services
    /// they touch are translated and applied.
    fn changed(&self, names: &[std::ffi::OsString], forget_missing: bool) {
        let t0 = Instant::now();
        let mut dir = lock(&self.dir);
        let refs = dir.refresh(names, forget_missing);
        let (services, slices) = dir.objects_for(&refs);
        let rejected = dir.file_rejections();
        drop(dir);
        let mut programmer = lock(&self.programmer);
        let report = if refs.is_empty() {
            None
        } else {
            let t = {
                let mut ctx = self.ctx.clone();
                ctx.previous_owners = programmer.owners();
                ctx.partial = true;
                ctx.scope = refs.clone();
                translate(&services, &slices, &ctx)
            };
            let conflicts = {
                let mut tr = lock(&self.translation_rejected);
                tr.retain(|r| r.service.as_ref().is_none_or(|s| !refs.contains(s)));
                tr.extend(t.rejected.iter().cloned());
                tr.iter().any(|x| x.reason.contains("already belongs to"))
            };
            let report = apply_logged(programmer.apply_scoped(&t, Some(&refs)));
            // A freed frontend may be claimed by a service outside this
            // pass (a conflict's loser), and a failure is retried: a full
            // pass comes soon.
            if report
                .as_ref()
                .is_some_and(|r| (r.removed > 0 && conflicts) || !r.failed.is_empty())
            {
                let soon = Instant::now() + Duration::from_secs(1);
                lock(&self.full_due).get_or_insert(soon);
            }
            report
        };
        let frontends = programmer.frontends();
        drop(programmer);
        let ms = self.record(rejected, report.as_ref(), frontends, t0);
        if let Some(r) = &report {
            debug!(
                services = refs.len(),
                added = r.added,
                changed = r.changed,
                removed = r.removed,
                ms = format!("{ms:.2}"),
                "services updated"
            );
        }
    }

    /// Records a pass for the API: the rejections (the files' own, the
    /// translation's and frontends that could not be programmed, which a
    /// full pass retries soon), logging the new ones. Returns the pass's
    /// duration in ms.
    fn record(
        &self,
        mut rejected: Vec<Rejection>,
        report: Option<&ApplyReport>,
        frontends: usize,
        t0: Instant,
    ) -> f64 {
        rejected.extend(lock(&self.translation_rejected).iter().cloned());
        if let Some(r) = report {
            rejected.extend(r.failed.iter().map(|f| Rejection {
                object: "datapath".into(),
                reason: format!("cannot program {f}; retried on the next full pass"),
                service: None,
            }));
            if !r.failed.is_empty() {
                let soon = Instant::now() + Duration::from_secs(5);
                lock(&self.full_due).get_or_insert(soon);
            }
        }
        rejected.sort();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut pass = lock(&self.pass);
        for r in rejected.iter().filter(|r| !pass.rejected.contains(r)) {
            warn!(object = %r.object, "rejected: {}", r.reason);
        }
        if let Some(r) = report {
            pass.last_apply = Some(r.clone());
            pass.last_duration_ms = ms;
        }
        pass.frontends = frontends;
        pass.rejected = rejected;
        pass.passes += 1;
        ms
    }

    pub fn views(&self) -> Vec<ServiceView> {
        lock(&self.programmer).views()
    }

    pub fn last_pass(&self) -> Pass {
        lock(&self.pass).clone()
    }
}
