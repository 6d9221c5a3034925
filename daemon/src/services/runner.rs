//! Keeps the service maps equal to the manifest directory: scan, translate
//! the whole set, apply the difference; again on every change the watch
//! reports (and every 30 s, in case an event was missed).
//!
//! What is programmed is kept until the directory is known: one that does
//! not exist (not mounted yet) or cannot be read changes nothing, and a
//! pass that would remove most or all of the frontends at once is held
//! back until the operator lets it through ([`RemovalGuard`]).

use super::api::{self, ApiStore, SourceStatus, Touched};
use super::model::{FrontendKey, FrontendKind, Rejection, ServiceRef};
use super::program::{ApplyReport, MaglevConfig, Programmer, RemovalGuard, ServiceView};
use super::source::{watch, ManifestDir};
use super::translate::{translate_parsed, Context, ParsedObject};
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How long a file that disappeared keeps its services, in case it is
/// being replaced (editors move the old file away first).
const MISSING_GRACE: Duration = Duration::from_millis(200);

/// How often everything is read, translated and applied again.
const FULL_EVERY: Duration = Duration::from_secs(30);

/// How often the affinity entries of pods and frontends that are gone are
/// removed (and a second after a pass that removed frontends).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How often a services directory that does not exist is looked for.
const MISSING_DIR_EVERY: Duration = Duration::from_secs(1);

/// Changes (API updates, manifest files written) are applied together
/// once none has come for this long (a burst to one service is one
/// pass) ...
const COALESCE_QUIET: Duration = Duration::from_millis(2);
/// ... or once the first of them has waited this long.
const COALESCE_MAX: Duration = Duration::from_millis(20);

/// After `first` of a burst has arrived: gathers what follows into it
/// until none has come for [`COALESCE_QUIET`] or the first has waited
/// [`COALESCE_MAX`], so a storm of changes costs one pass per 20 ms, not
/// one per change.
fn coalesce<T>(rx: &std::sync::mpsc::Receiver<T>, first: &mut T, mut merge: impl FnMut(&mut T, T)) {
    let since = Instant::now();
    while since.elapsed() < COALESCE_MAX {
        match rx.recv_timeout(COALESCE_QUIET) {
            Ok(more) => merge(first, more),
            Err(_) => break,
        }
    }
}

/// Where the objects come from. (One per daemon, behind a mutex: the
/// variants' sizes do not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Source {
    Dir(ManifestDir),
    Api(ApiStore),
}

impl Source {
    fn objects(&self) -> (Vec<&ParsedObject>, Vec<Rejection>) {
        match self {
            Source::Dir(d) => d.objects(),
            Source::Api(a) => (a.objects(), a.rejections()),
        }
    }

    fn objects_for(&self, refs: &std::collections::BTreeSet<ServiceRef>) -> Vec<&ParsedObject> {
        match self {
            Source::Dir(d) => d.objects_for(refs),
            Source::Api(a) => a.objects_for(refs),
        }
    }

    fn nodes(&self) -> (Vec<crate::nodes::ClusterNode>, u64) {
        match self {
            Source::Dir(d) => d.nodes(),
            Source::Api(a) => a.nodes(),
        }
    }

    fn rejections(&self) -> Vec<Rejection> {
        match self {
            Source::Dir(d) => d.file_rejections(),
            Source::Api(a) => a.rejections(),
        }
    }

    fn status(&self, dir: Option<&std::path::Path>) -> SourceStatus {
        match self {
            Source::Api(a) => a.status(),
            Source::Dir(d) => {
                let (services, slices, nodes, rejected) = d.counts();
                let exists = dir.is_some_and(|p| p.is_dir());
                let kind = |k: &str, n: usize| api::KindStatus {
                    kind: k.into(),
                    synced: exists,
                    objects: n,
                    ..Default::default()
                };
                SourceStatus {
                    source: "manifests".into(),
                    server: dir.map(|p| p.display().to_string()).unwrap_or_default(),
                    synced: exists,
                    reachable: exists,
                    client_error: (rejected > 0)
                        .then(|| format!("{rejected} files or documents rejected")),
                    kinds: vec![
                        kind("Service", services),
                        kind("EndpointSlice", slices),
                        kind("Node", nodes),
                    ],
                    ..Default::default()
                }
            }
        }
    }
}

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
    /// This node's name and where it came from.
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub node_name_source: String,
    /// What the operator should know (a node name no endpoint carries, a
    /// directory that is missing, removals held back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Frontends the last pass would have removed but held back.
    #[serde(default)]
    pub held_removals: usize,
    /// Affinity entries of pods that are gone, removed so far.
    #[serde(default)]
    pub affinity_swept: u64,
    /// Whether connected UDP sockets to a backend that left are ended
    /// ("on", or "off: why").
    #[serde(default)]
    pub udp_socket_termination: String,
    /// Connected UDP sockets ended so far (their backend left).
    #[serde(default)]
    pub udp_sockets_ended: u64,
    /// Entries the service maps hold, against what they are sized for.
    #[serde(default)]
    pub fill: Vec<super::program::Fill>,
    /// The source's own state (synced, objects per kind, API reachability).
    #[serde(default)]
    pub source: Option<SourceStatus>,
}

#[derive(Debug)]
pub struct Services {
    programmer: Mutex<Programmer>,
    source: Mutex<Source>,
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
    /// The manifests directory (`None`: the API is the source).
    dir_path: Option<std::path::PathBuf>,
    max_removal_percent: u8,
    /// The operator let a held removal through: the next pass applies it.
    allow_removal: std::sync::atomic::AtomicBool,
    /// Ends connected UDP sockets still pointing at a backend that left
    /// (`None` where the kernel cannot).
    terminator: Option<crate::sockterm::Terminator>,
    /// Removes affinity entries of pods and frontends that are gone.
    sweeper: Mutex<super::affinity::Sweeper>,
    /// A pass removed frontends: their affinity entries go soon.
    sweep_due: std::sync::atomic::AtomicBool,
    /// Node routing, which takes the Node objects of the directory.
    routing: Option<Arc<crate::routing::Routing>>,
    /// The source's state as last read (shown while a pass holds it).
    last_status: Mutex<Option<SourceStatus>>,
    /// What the API changed, to the services thread of the API source
    /// (`None` for the directory); an empty change just wakes it.
    api_changes: Mutex<Option<std::sync::mpsc::Sender<Touched>>>,
    /// `<state_dir>/node.json`, written here (this node's pod ranges) when
    /// node routing is off; routing writes it otherwise.
    node_file: std::path::PathBuf,
    /// The directory's node generation last handed to routing, plus one
    /// (0: none yet).
    nodes_sent: std::sync::atomic::AtomicU64,
    /// The health-check node ports of `externalTrafficPolicy: Local`
    /// services (`None` if the server could not start).
    health: Option<Arc<crate::healthcheck::HealthChecks>>,
}

/// NodePorts about to be programmed whose port a socket of this node
/// already holds are left out with a reason (the service's other frontends
/// stay): serving them would take the port from under that socket. One
/// programmed before the socket came keeps it (the bind guard refuses such
/// sockets).
fn drop_clashing_nodeports(
    t: &mut super::translate::Translation,
    held: &BTreeMap<FrontendKey, ServiceRef>,
) {
    let new: Vec<FrontendKey> = t
        .frontends
        .iter()
        .filter(|(k, f)| f.kind == FrontendKind::NodePort && !held.contains_key(*k))
        .map(|(k, _)| *k)
        .collect();
    if new.is_empty() {
        return;
    }
    let used = crate::external::ports_in_use();
    for k in new {
        if !used.contains(&(k.protocol, k.addr.port())) {
            continue;
        }
        if let Some(f) = t.frontends.remove(&k) {
            t.rejected.push(Rejection {
                object: format!("Service {}", f.service),
                reason: format!(
                    "nodePort {}/{:?} is held by a socket on this node that was there first: not \
                     served on this node until the port is free",
                    k.addr.port(),
                    k.protocol
                ),
                service: Some(f.service),
            });
        }
    }
}

/// An apply's report, or its error logged (the next full pass retries).
fn apply_logged(r: Result<ApplyReport, super::program::ProgramError>) -> Option<ApplyReport> {
    r.map_err(|e| warn!("programming services: {e}")).ok()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Services {
    /// Opens the maps and runs the first pass (so the daemon is ready
    /// with its services programmed). A directory that does not exist yet
    /// changes nothing programmed; it is looked for every second.
    pub fn start(
        cfg: &Config,
        maps_dir: &std::path::Path,
        routing: Option<Arc<crate::routing::Routing>>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let (source_name, dir) = match (&cfg.services_dir, &cfg.kubernetes) {
            (Some(dir), _) => (dir.display().to_string(), Some(dir)),
            (None, Some(k)) => (format!("kubernetes {}", api::describe(k)), None),
            (None, None) => return Ok(None),
        };
        let sweeper = super::affinity::Sweeper::open(maps_dir)?;
        let programmer = Programmer::open(
            maps_dir,
            MaglevConfig {
                table_size: cfg.maglev_table_size,
                seed: cfg.maglev_seed,
            },
            cfg.capacity,
        )?;
        let (node_name, node_name_source) = cfg.resolved_node_name();
        let (terminator, udp_socket_termination) = match start_terminator(cfg, maps_dir) {
            Ok(t) => (Some(t), "on".to_string()),
            Err(why) => {
                warn!(
                    "connected UDP sockets will keep pointing at backends that left (kube-proxy \
                     and Cilium end them): {why}"
                );
                (None, format!("off: {why}"))
            }
        };
        info!(
            node_name = node_name.as_deref().unwrap_or("(none)"),
            from = node_name_source,
            service_cidrs = ?cfg.service_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "service source: {source_name}"
        );
        let ctx = Context {
            node_name: node_name.clone(),
            service_cidrs: cfg.service_cidrs.clone(),
            nodeport_range: Some(cfg.nodeport_range),
            external_ip_cidrs: cfg.external_ip_cidrs.clone(),
            external_mode: cfg.external_mode,
            ..Default::default()
        };
        let source = match dir {
            Some(dir) => Source::Dir(ManifestDir::new(dir, &ctx)),
            None => Source::Api(ApiStore::new(
                cfg.kubernetes
                    .as_ref()
                    .map(api::describe)
                    .unwrap_or_default(),
            )),
        };
        let s = Arc::new(Services {
            programmer: Mutex::new(programmer),
            source: Mutex::new(source),
            ctx,
            pass: Mutex::new(Pass {
                dir: source_name,
                node_name,
                node_name_source: node_name_source.into(),
                udp_socket_termination,
                ..Default::default()
            }),
            translation_rejected: Mutex::new(Vec::new()),
            full_due: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            dir_path: dir.cloned(),
            max_removal_percent: cfg.max_removal_percent,
            allow_removal: Default::default(),
            terminator,
            sweeper: Mutex::new(sweeper),
            sweep_due: Default::default(),
            routing,
            node_file: cfg.state_dir.join("node.json"),
            api_changes: Mutex::new(None),
            last_status: Mutex::new(None),
            nodes_sent: Default::default(),
            health: crate::healthcheck::HealthChecks::start()
                .map_err(|e| warn!("health-check node ports are not served: {e}"))
                .ok(),
        });
        // Watch first: a change made during the first pass is not missed.
        // A restart that adopted programmed frontends is ready at once:
        // the datapath already holds them, and its first pass (which
        // finds them in place and writes nothing) runs on the services
        // thread. A first start programs its services before it is ready.
        let adopted = {
            let p = lock(&s.programmer);
            let mut pass = lock(&s.pass);
            pass.frontends = p.frontends();
            pass.fill = p.fill();
            p.frontends() > 0
        };
        let Some(dir) = dir else {
            // The API: what is programmed stays as it is until every kind
            // has been listed (the daemon is ready meanwhile: pods and the
            // datapath do not wait for the API server).
            let (tx, rx) = std::sync::mpsc::channel();
            *lock(&s.api_changes) = Some(tx);
            let settings = cfg
                .kubernetes
                .clone()
                .expect("the API source is configured");
            api::spawn(
                settings,
                s.ctx.clone(),
                Arc::new(ApiSink {
                    services: s.clone(),
                }),
            )?;
            let s2 = s.clone();
            std::thread::Builder::new()
                .name("sluiced-services".into())
                .spawn(move || {
                    crate::housekeeping_priority();
                    s2.run_api(rx)
                })?;
            return Ok(Some(s));
        };
        let (rx, first_pass_due) = if dir.is_dir() {
            let rx = watch(dir).map_err(|e| anyhow::anyhow!(e))?;
            if !adopted {
                s.pass(true);
            }
            (Some(rx), adopted)
        } else {
            s.dir_missing();
            (None, false)
        };
        let s2 = s.clone();
        std::thread::Builder::new()
            .name("sluiced-services".into())
            .spawn(move || {
                crate::housekeeping_priority();
                if first_pass_due {
                    s2.pass(true);
                }
                s2.run(rx)
            })?;
        Ok(Some(s))
    }

    /// Keeps what is programmed while the directory is missing, and says so.
    fn dir_missing(&self) {
        let frontends = lock(&self.programmer).frontends();
        let w = format!(
            "services_dir {} does not exist (not mounted yet?): the {frontends} programmed frontends are kept until it does",
            self.dir_path().display()
        );
        let mut pass = lock(&self.pass);
        if !pass.warnings.contains(&w) {
            warn!("{w}");
            pass.warnings = vec![w];
        }
        pass.frontends = frontends;
    }

    /// The services thread: waits for the directory, then applies what the
    /// watch reports, a full pass every 30 s, and the affinity sweep.
    fn run(&self, mut rx: Option<std::sync::mpsc::Receiver<Vec<std::ffi::OsString>>>) {
        let mut clock = Clock::new();
        loop {
            let Some(events) = rx.as_ref() else {
                std::thread::sleep(MISSING_DIR_EVERY);
                if self.dir_path().is_dir() {
                    match watch(self.dir_path()) {
                        Ok(r) => {
                            info!(dir = %self.dir_path().display(), "services_dir appeared");
                            rx = Some(r);
                            self.pass(true);
                            clock.last_full = Instant::now();
                        }
                        Err(e) => warn!("{e}"),
                    }
                } else {
                    self.dir_missing();
                }
                continue;
            };
            let mut due = self.next_due(&clock);
            if !lock(&self.deferred).is_empty() {
                due = due.min(Instant::now() + MISSING_GRACE);
            }
            let wait = due.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait) {
                Ok(mut names) => {
                    // An overflowed queue names nothing: a full pass,
                    // whatever else the burst named.
                    let mut overflowed = names.is_empty();
                    coalesce(events, &mut names, |n, more| {
                        overflowed |= more.is_empty();
                        n.extend(more);
                    });
                    if overflowed {
                        self.pass(true);
                        clock.last_full = Instant::now();
                    } else {
                        self.changed(&names, false);
                        // A file gone now may be an editor's save in
                        // progress: look again shortly.
                        let gone = super::source::missing(self.dir_path(), &names);
                        if !gone.is_empty() {
                            lock(&self.deferred).extend(gone);
                        }
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let gone = std::mem::take(&mut *lock(&self.deferred));
                    if !gone.is_empty() {
                        self.changed(&gone, true);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.housekeeping(&mut clock);
        }
    }

    /// The services thread of the API source: waits for every kind to be
    /// listed, then applies what changed (bursts coalesced), a full pass
    /// every 30 s, and the affinity sweep.
    fn run_api(&self, rx: api::Updates) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut clock = Clock::new();
        loop {
            let wait = self
                .next_due(&clock)
                .saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(mut t) => {
                    coalesce(&rx, &mut t, |t, more| t.merge(more));
                    self.api_changed(t, &mut clock);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Never: the services keep a sender to wake this thread.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
            self.housekeeping(&mut clock);
        }
    }

    /// Applies what the API changed, once it has been listed whole.
    fn api_changed(&self, t: Touched, clock: &mut Clock) {
        let src = lock(&self.source);
        if !matches!(&*src, Source::Api(a) if a.synced()) {
            return;
        }
        if t.first_sync {
            drop(src);
            self.pass(true);
            clock.last_full = Instant::now();
            if let Source::Api(a) = &mut *lock(&self.source) {
                a.set_programmed();
            }
        } else if !t.services.is_empty() {
            self.apply_refs(src, t.services, Instant::now());
        } else if t.nodes {
            self.send_nodes(&src);
        }
    }

    /// When the next full pass is due, if one is: when one was asked for
    /// (a retry, a freed frontend, a removal let through), else every 30 s
    /// for the directory (an inotify event can be lost); never unasked for
    /// the API, whose watch loses nothing (a lost place is a relist), so a
    /// pass at 10,000 services does not hold the source's lock, and the API
    /// thread, for nothing.
    fn full_pass_due(&self, clock: &Clock) -> Option<Instant> {
        self.full_due()
            .or_else(|| self.dir_path.as_ref().map(|_| clock.last_full + FULL_EVERY))
    }

    /// When the next full pass or sweep is due.
    fn next_due(&self, clock: &Clock) -> Instant {
        let mut due = clock.last_sweep + SWEEP_EVERY;
        if let Some(full) = self.full_pass_due(clock) {
            due = due.min(full);
        }
        if self.sweep_due.load(std::sync::atomic::Ordering::Relaxed) {
            due = due.min(clock.last_sweep + MISSING_DIR_EVERY);
        }
        due
    }

    /// The affinity sweep and the periodic full pass, when due.
    fn housekeeping(&self, clock: &mut Clock) {
        let soon = self.sweep_due.load(std::sync::atomic::Ordering::Relaxed)
            && Instant::now() >= clock.last_sweep + MISSING_DIR_EVERY;
        if soon || Instant::now() >= clock.last_sweep + SWEEP_EVERY {
            self.sweep_due
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let n = lock(&self.sweeper).sweep(|| lock(&self.programmer).live_svc_ids());
            if n > 0 {
                debug!(
                    entries = n,
                    "affinity entries of pods or frontends that are gone removed"
                );
                lock(&self.pass).affinity_swept += n as u64;
            }
            clock.last_sweep = Instant::now();
        }
        if self
            .full_pass_due(clock)
            .is_some_and(|due| Instant::now() >= due)
        {
            self.pass(true);
            clock.last_full = Instant::now();
        }
    }

    /// Hands the directory's Node objects to node routing when they may
    /// have changed since the last time.
    fn send_nodes(&self, dir: &Source) {
        use std::sync::atomic::Ordering;
        let (nodes, generation) = dir.nodes();
        if self.nodes_sent.swap(generation + 1, Ordering::Relaxed) == generation + 1 {
            return;
        }
        match &self.routing {
            Some(r) => r.update(nodes),
            None => {
                if !self.write_node_file(&nodes) {
                    // Tried again on the next pass.
                    self.nodes_sent.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// With node routing off, this node's pod ranges (from its Node
    /// object) still go to `node.json` for the plugin; no MTU is written
    /// (the plugin takes the default route's). A list without this node
    /// changes nothing.
    /// Returns false when it could not be written.
    fn write_node_file(&self, nodes: &[crate::nodes::ClusterNode]) -> bool {
        let name = self.ctx.node_name.as_deref().unwrap_or("");
        let Some(own) = nodes.iter().find(|n| n.name == name) else {
            return true;
        };
        if own.pod_cidrs.is_empty() {
            return true;
        }
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "nodeName": name,
            "podCIDRs": own.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }))
        .expect("JSON of plain values");
        if std::fs::read_to_string(&self.node_file).is_ok_and(|t| t == text) {
            return true;
        }
        match sluice_common::fsutil::write_atomic(&self.node_file, text.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    "writing {}: {e}; tried again on the next pass",
                    self.node_file.display()
                );
                false
            }
        }
    }

    /// Lets a held removal through: the next pass (now) applies it.
    pub fn allow_removal(&self) -> usize {
        // (A source held by a pass is a listed one: an unlisted API runs
        // no pass.)
        if matches!(self.source.try_lock().as_deref(), Ok(Source::Api(a)) if !a.synced()) {
            // A removal the first full list will bring is not held yet:
            // letting it through now would lift the guard for the very
            // pass it protects.
            return 0;
        }
        self.allow_removal
            .store(true, std::sync::atomic::Ordering::SeqCst);
        *lock(&self.full_due) = Some(Instant::now());
        // The services thread may be waiting for an API change: wake it.
        self.tell_services_thread(Touched::default());
        lock(&self.pass).held_removals
    }

    /// Hands an API change to the services thread (API source only).
    fn tell_services_thread(&self, t: Touched) {
        if let Some(tx) = &*lock(&self.api_changes) {
            let _ = tx.send(t);
        }
    }

    /// The removal guard of a pass; only a full pass takes the operator's
    /// permission (an incremental one leaves it for the full pass that
    /// holds the removal).
    fn guard(&self, full: bool) -> RemovalGuard {
        RemovalGuard {
            max_percent: self.max_removal_percent,
            allow: full
                && self
                    .allow_removal
                    .swap(false, std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// The manifests directory (only the directory source asks).
    fn dir_path(&self) -> &std::path::Path {
        self.dir_path.as_deref().unwrap_or(std::path::Path::new(""))
    }

    fn full_due(&self) -> Option<Instant> {
        *lock(&self.full_due)
    }

    /// One scan, translation and apply.
    fn pass(&self, force: bool) {
        *lock(&self.full_due) = None;
        lock(&self.programmer).collect();
        let t0 = Instant::now();
        let mut dir = lock(&self.source);
        let changed = match &mut *dir {
            Source::Dir(d) => match d.scan() {
                Ok(c) => c,
                Err(e) => {
                    warn!("{e}");
                    return;
                }
            },
            // Nothing is programmed from a view not listed whole.
            Source::Api(a) if !a.synced() => return,
            Source::Api(_) => false,
        };
        if matches!(&*dir, Source::Dir(_)) && !self.dir_path().is_dir() {
            // Removed while we read it: nothing read can be trusted.
            drop(dir);
            self.dir_missing();
            return;
        }
        self.send_nodes(&dir);
        if !changed && !force {
            return;
        }
        let (objects, rejected) = dir.objects();
        let mut programmer = lock(&self.programmer);
        // The context (and its share of the owners map) is dropped before
        // apply writes the map, so the write does not copy it.
        let t = {
            let mut ctx = self.ctx.clone();
            ctx.previous_owners = programmer.owners();
            let mut t = translate_parsed(objects, &ctx);
            drop_clashing_nodeports(&mut t, &ctx.previous_owners);
            t
        };
        drop(dir);
        *lock(&self.translation_rejected) = t.rejected.clone();
        let warnings = self.node_warnings(&t);
        let report = apply_logged(programmer.apply_scoped(&t, None, self.guard(true)));
        let frontends = programmer.frontends();
        lock(&self.pass).fill = programmer.fill();
        if let Some(h) = &self.health {
            h.set(programmer.health_checks());
        }
        drop(programmer);
        lock(&self.pass).warnings = warnings;
        drop(t);
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
        let mut src = lock(&self.source);
        let Source::Dir(dir) = &mut *src else {
            return;
        };
        let refs = dir.refresh(names, forget_missing);
        self.apply_refs(src, refs, t0);
    }

    /// Translates and applies the given services only.
    fn apply_refs(
        &self,
        dir: MutexGuard<'_, Source>,
        refs: std::collections::BTreeSet<ServiceRef>,
        t0: Instant,
    ) {
        self.send_nodes(&dir);
        let rejected = dir.rejections();
        let mut programmer = lock(&self.programmer);
        let report = if refs.is_empty() {
            drop(dir);
            None
        } else {
            let t = {
                let objects = dir.objects_for(&refs);
                let mut ctx = self.ctx.clone();
                ctx.previous_owners = programmer.owners();
                ctx.partial = true;
                ctx.scope = refs.clone();
                let mut t = translate_parsed(objects, &ctx);
                drop_clashing_nodeports(&mut t, &ctx.previous_owners);
                t
            };
            drop(dir);
            let conflicts = {
                let mut tr = lock(&self.translation_rejected);
                tr.retain(|r| r.service.as_ref().is_none_or(|s| !refs.contains(s)));
                tr.extend(t.rejected.iter().cloned());
                tr.iter().any(|x| x.reason.contains("already belongs to"))
            };
            let report = apply_logged(programmer.apply_scoped(&t, Some(&refs), self.guard(false)));
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
        lock(&self.pass).fill = programmer.fill();
        if let Some(h) = &self.health {
            h.set(programmer.health_checks());
        }
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
        if let (Some(t), Some(r)) = (&self.terminator, report) {
            t.terminate(r.udp_left.clone());
        }
        if report.is_some_and(|r| r.removed > 0) {
            self.sweep_due
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
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
            if r.held_removals > 0 && pass.held_removals != r.held_removals {
                warn!(
                    held = r.held_removals,
                    programmed = frontends,
                    "a pass would remove {} of the {} programmed frontends at once (more than \
                     max_removal_percent = {}, or all of them): held back, they stay programmed. \
                     If the source is right, let it through with `sluicectl services allow-removal`",
                    r.held_removals,
                    frontends,
                    self.max_removal_percent
                );
            }
            pass.held_removals = r.held_removals;
        }
        pass.frontends = frontends;
        pass.rejected = rejected;
        pass.passes += 1;
        ms
    }

    /// A node name that no endpoint carries while services with
    /// `internalTrafficPolicy: Local` exist: every connect to them from
    /// this node would be refused, which is almost always a wrong name.
    fn node_warnings(&self, t: &super::translate::Translation) -> Vec<String> {
        let name = self.ctx.node_name.as_deref().unwrap_or("");
        if t.local_policy_services == 0 || t.node_names.is_empty() || t.node_names.contains(name) {
            return Vec::new();
        }
        let source = lock(&self.pass).node_name_source.clone();
        let seen: Vec<&str> = t.node_names.iter().map(String::as_str).take(8).collect();
        let w = format!(
            "node name {name:?} (from {source}) is the nodeName of no endpoint (they name {}); \
             the {} services with internalTrafficPolicy: Local refuse every connect from this \
             node. Set node_name in sluiced.toml (or NODE_NAME) to this node's Kubernetes name",
            seen.join(", "),
            t.local_policy_services
        );
        if !lock(&self.pass).warnings.contains(&w) {
            warn!("{w}");
        }
        vec![w]
    }

    pub fn views(&self) -> Vec<ServiceView> {
        lock(&self.programmer).views()
    }

    pub fn last_pass(&self) -> Pass {
        // The source is locked through a whole pass (seconds at 10,000
        // services in a debug build): the API and metrics do not wait for
        // it, they show the state as it was last read.
        let status = match self.source.try_lock() {
            Ok(src) => {
                let st = src.status(self.dir_path.as_deref());
                *lock(&self.last_status) = Some(st.clone());
                st
            }
            Err(std::sync::TryLockError::Poisoned(e)) => {
                e.into_inner().status(self.dir_path.as_deref())
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                lock(&self.last_status).clone().unwrap_or_default()
            }
        };
        let mut p = lock(&self.pass).clone();
        p.source = Some(status);
        if let Some(t) = &self.terminator {
            p.udp_sockets_ended = t.stats.destroyed.load(std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
}

/// When the services thread last did its periodic work.
#[derive(Debug)]
struct Clock {
    last_full: Instant,
    last_sweep: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            last_full: Instant::now(),
            last_sweep: Instant::now(),
        }
    }
}

/// Where the API thread puts what it reads: the store (under the services'
/// lock), and what changed to the services thread.
struct ApiSink {
    services: Arc<Services>,
}

impl ApiSink {
    fn with_store<T: Default>(&self, f: impl FnOnce(&mut ApiStore) -> T) -> T {
        match &mut *lock(&self.services.source) {
            Source::Api(a) => f(a),
            Source::Dir(_) => T::default(),
        }
    }
}

impl api::Sink for ApiSink {
    fn event(&self, kind: api::Kind, ev: api::Event) {
        let t = self.with_store(|a| a.event(kind, ev));
        if !t.is_empty() {
            self.services.tell_services_thread(t);
        }
    }

    fn error(&self, kind: api::Kind, e: String) {
        self.with_store(|a| a.error(kind, e));
    }

    fn client(&self, r: Result<String, String>) {
        self.with_store(|a| a.client(r));
    }

    fn probe(&self, r: Result<(), String>) {
        self.with_store(|a| a.probe(r));
    }
}

/// The UDP socket terminator, if this kernel can end sockets for us.
fn start_terminator(
    cfg: &Config,
    maps_dir: &std::path::Path,
) -> Result<crate::sockterm::Terminator, String> {
    crate::sockterm::probe()?;
    let pin = maps_dir.join(sluice_dataplane::maps::UDP_CONN.name);
    let map = sluice_dataplane::sys::obj_get(&pin)
        .map_err(|e| format!("opening {}: {e}", pin.display()))?;
    crate::sockterm::Terminator::start(&cfg.state_dir, map).map_err(|e| e.to_string())
}
