//! The daemon's life: restore, then serve the API and metrics until told
//! to stop. Stopping never detaches anything: the datapath stays pinned.

use crate::config::Config;
use crate::datapath::Datapath;
use crate::metrics::Metrics;
use crate::netns::CookieReader;
use crate::state::State;
use crate::views::{RestoreView, StatusView};
use anyhow::Context;
use serde_json::json;
use sluice_common::api::{
    Request, RequestEnvelope, ResponseEnvelope, API_VERSION, MAX_MESSAGE_BYTES,
};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{error, info, warn};

/// An idle API connection is closed after this long.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Daemon {
    state: Arc<Mutex<State>>,
    /// The service source and programmer, if `services_dir` is set.
    services: Option<Arc<crate::services::runner::Services>>,
    /// Node routing, unless `routing = "off"`.
    routing: Option<Arc<crate::routing::Routing>>,
    /// Asks the edge thread to check endpoints now.
    edge_kick: std::sync::mpsc::Sender<EdgeKick>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    started: Instant,
    restore: RestoreView,
    /// What this kernel has, and the features it allows.
    kernel: crate::kernel::Kernel,
    allowed_uids: Vec<u32>,
    /// The pinned maps' summary for `status`, read without the state lock.
    map_stats: crate::datapath::MapStats,
}

/// Holds the state dir's lock for the daemon's life: two daemons on one
/// state dir would fight over the same records and pins.
#[derive(Debug)]
struct InstanceLock(#[allow(dead_code)] std::fs::File);

fn lock_instance(cfg: &Config) -> anyhow::Result<InstanceLock> {
    use std::os::fd::AsRawFd;
    sluice_common::fsutil::private_dir(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
    // Records name pods, their addresses and annotations: an older build
    // left them world-readable.
    let records = sluice_common::endpoint::endpoints_dir(&cfg.state_dir);
    if records.is_dir() {
        match sluice_common::fsutil::private_dir(&records)
            .and_then(|()| sluice_common::fsutil::tighten_files(&records))
        {
            Ok(0) => {}
            Ok(n) => info!(
                "made {n} endpoint records in {} private (0600)",
                records.display()
            ),
            Err(e) => warn!(
                "cannot make the endpoint records in {} private: {e}",
                records.display()
            ),
        }
    }
    let path = cfg.lock_file();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "another sluiced (pid {}) is running with state dir {}; stop it first or give this one its own state_dir, socket and pin_path",
            holder.trim(),
            cfg.state_dir.display()
        );
    }
    f.set_len(0).ok();
    std::fs::write(&path, format!("{}\n", std::process::id())).ok();
    Ok(InstanceLock(f))
}

/// Restores, serves, and returns when SIGTERM or SIGINT arrives.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let _lock = lock_instance(&cfg)?;
    let cookies = CookieReader::spawn().context("starting the netns thread")?;
    let cfg2 = cfg.clone();
    let kernel = crate::kernel::detect();
    if let Some(why) = kernel.fatal() {
        anyhow::bail!(why);
    }
    for f in kernel.features.iter().filter(|f| !f.on) {
        warn!(
            release = %kernel.release,
            "{} is off on this kernel: it lacks {} (every feature: Linux {})",
            f.name,
            f.why_off,
            crate::kernel::MINIMUM
        );
    }
    let socket_lb = kernel.has(crate::kernel::SOCKET_LB);
    let per_packet = kernel.has(crate::kernel::PER_PACKET);
    let accel = kernel.has(crate::kernel::ACCEL);
    let (state, report, services, routing) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let dp = Datapath::open(&cfg2, socket_lb, per_packet, accel)?;
        info!(
            pin_path = %cfg2.pin_path.display(),
            cgroup_root = %dp.cgroup_root.display(),
            edge_mode = %dp.edge_mode,
            edge_program = ?dp.edge_prog_outcome,
            maps_reused = dp.maps_reused.len(),
            links = ?dp.cgroup_links.iter().map(|l| (l.program.as_str(), l.id, l.outcome)).collect::<Vec<_>>(),
            "datapath open"
        );
        let routing = crate::routing::Routing::start(&cfg2)?;
        let services = if socket_lb {
            crate::services::runner::Services::start(&cfg2, dp.maps_dir(), routing.clone())?
        } else {
            if cfg2.services_dir.is_some() {
                warn!("services_dir is set, but socket load balancing is off on this kernel: no service is programmed");
            }
            None
        };
        let mut st = State::new(cfg2, dp, cookies)?;
        st.put_host_entry()?;
        let report = st.reconcile(true);
        Ok((st, report, services, routing))
    })
    .await??;
    let maps_reused = state.dp.maps_reused.iter().map(|s| s.to_string()).collect();
    let maps_carried = state
        .dp
        .maps_migrated
        .iter()
        .map(|c| crate::views::CarriedView {
            map: c.name.into(),
            into: c.into.into(),
            why: c.why.clone(),
            copied: c.copied,
            dropped: c.dropped,
        })
        .collect();
    let state = Arc::new(Mutex::new(state));
    let metrics = Arc::new(Metrics::new(state.clone(), services.clone()));
    let ready = Arc::new(AtomicBool::new(false));

    let listener = bind_api(&cfg)?;
    if let Some(addr) = cfg.metrics_address {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding metrics_address {addr}; set another or \"\" to turn it off")
        })?;
        info!(address = %l.local_addr()?, "metrics and /healthz listening");
        tokio::spawn(crate::metrics::serve(l, metrics.clone(), ready.clone()));
    }
    let restore = RestoreView {
        duration_ms: t0.elapsed().as_secs_f64() * 1e3,
        report: report.clone(),
        maps_reused,
        maps_carried,
    };
    metrics.restore_seconds.set(t0.elapsed().as_secs_f64());
    // The first edge pass before ready: pods added while the daemon was
    // away, isolated ones, and an upgrade's newer program are in place
    // before the daemon says it is.
    let edge_report = {
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            let mut nl = sluice_cni::netlink::Netlink::open()?;
            Ok::<_, sluice_cni::netlink::NlError>(crate::state::edge_pass(&st, &mut nl, None))
        })
        .await?
        .context("opening a netlink socket for the edge pass")?
    };
    metrics.observe_edge_pass(&edge_report);
    let edge_kick = spawn_edge_keeper(state.clone(), metrics.clone(), cfg.edge_check_interval)?;
    let daemon = Arc::new(Daemon {
        services,
        routing,
        edge_kick,
        state,
        metrics,
        ready: ready.clone(),
        started: t0,
        restore,
        kernel,
        allowed_uids: cfg.api_allowed_uids.clone(),
        map_stats: crate::datapath::MapStats::start(cfg.maps_dir())?,
    });
    ready.store(true, Ordering::Release);
    info!(
        socket = %cfg.socket.display(),
        restored = report.restored,
        cleaned = report.cleaned,
        failed = report.failed,
        stale = report.stale_entries,
        edges_checked = edge_report.checked,
        edges_repaired = edge_report.repaired,
        ms = format!("{:.1}", t0.elapsed().as_secs_f64() * 1e3),
        "ready"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(cfg.reconcile_interval);
    tick.tick().await;
    let reconciling = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((s, _)) => { tokio::spawn(serve_conn(s, daemon.clone())); }
                Err(e) => { warn!("accepting an API connection: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; }
            },
            _ = tick.tick() => {
                // Off the accept loop: a register never waits for it. One
                // at a time; a tick while one runs is skipped.
                if !reconciling.swap(true, Ordering::AcqRel) {
                    let d = daemon.clone();
                    let busy = reconciling.clone();
                    tokio::task::spawn_blocking(move || {
                        let rep = State::reconcile_shared(&d.state, false);
                        crate::memory::release_free();
                        busy.store(false, Ordering::Release);
                        d.metrics.reconcile_runs.inc();
                        if rep.restored + rep.cleaned + rep.removed + rep.failed + rep.stale_entries > 0 {
                            info!(?rep, "reconciled endpoint records");
                        }
                    });
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let _ = std::fs::remove_file(&cfg.socket);
    info!("stopping; the datapath stays attached and pinned");
    Ok(())
}

/// A request to the edge thread: check these endpoints now.
type EdgeKick = (String, String);

/// One OS thread keeps every pod's edge: it checks the endpoints a
/// registration names as they come, and all of them every `interval`,
/// repairing what it finds missing or older (see [`crate::edge`]). Its
/// own thread and netlink socket: a tcx attach holds RTNL for an RCU
/// grace period, and nothing else should wait behind it.
fn spawn_edge_keeper(
    state: Arc<Mutex<State>>,
    metrics: Arc<Metrics>,
    interval: Duration,
) -> anyhow::Result<std::sync::mpsc::Sender<EdgeKick>> {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::channel::<EdgeKick>();
    let mut nl = sluice_cni::netlink::Netlink::open()
        .context("opening a netlink socket for the edge thread")?;
    std::thread::Builder::new()
        .name("sluiced-edge".into())
        .spawn(move || {
            let mut next_full = Instant::now() + interval;
            loop {
                let wait = next_full.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(first) => {
                        let mut keys = std::collections::HashSet::from([first]);
                        while let Ok(k) = rx.try_recv() {
                            keys.insert(k);
                        }
                        let rep = crate::state::edge_pass(&state, &mut nl, Some(&keys));
                        metrics.observe_edge_pass(&rep);
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        let rep = crate::state::edge_pass(&state, &mut nl, None);
                        metrics.observe_edge_pass(&rep);
                        next_full = Instant::now() + interval;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .context("starting the edge thread")?;
    Ok(tx)
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind_api(cfg: &Config) -> anyhow::Result<UnixListener> {
    let path = &cfg.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The instance lock is held, so a socket file left here is from a dead
    // daemon.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok(l)
}

fn reply(error: Option<String>, data: serde_json::Value) -> Vec<u8> {
    let mut v = serde_json::to_vec(&ResponseEnvelope {
        version: API_VERSION,
        ok: error.is_none(),
        error,
        data,
    })
    .expect("responses serialize");
    v.push(b'\n');
    v
}

async fn serve_conn(stream: UnixStream, d: Arc<Daemon>) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            warn!("API peer credentials unreadable: {e}");
            return;
        }
    };
    let (r, mut w) = stream.into_split();
    if !d.allowed_uids.contains(&cred.uid()) {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "API peer refused");
        d.metrics.count("refused_peer", false);
        let msg = format!(
            "peer uid {} (pid {}) may not use the sluiced API; allowed uids: {:?}",
            cred.uid(),
            cred.pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
            d.allowed_uids
        );
        refuse_and_close(r, w, msg).await;
        return;
    }
    let mut reader = BufReader::new(r);
    loop {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            IDLE,
            (&mut reader)
                .take(MAX_MESSAGE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        match read {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_MESSAGE_BYTES {
            d.metrics.count("oversized", false);
            let msg =
                format!("request larger than {MAX_MESSAGE_BYTES} bytes; closing the connection");
            refuse_and_close(reader.into_inner(), w, msg).await;
            return;
        }
        let out = handle(&line, &d).await;
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Sends a final error, then lets the peer finish writing (bounded) before
/// the socket closes, so it reads the error instead of a reset.
async fn refuse_and_close(
    mut r: tokio::net::unix::OwnedReadHalf,
    mut w: tokio::net::unix::OwnedWriteHalf,
    msg: String,
) {
    let _ = w
        .write_all(&reply(Some(msg), serde_json::Value::Null))
        .await;
    let _ = w.shutdown().await;
    let mut sink = vec![0u8; 64 << 10];
    let mut left: usize = 16 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n @ 1..) = r.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Reads one request line: the request, or the metric it counts under and
/// the error to answer with. Pure, for the fuzzer.
pub fn decode(line: &[u8]) -> Result<RequestEnvelope, (&'static str, String)> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| ("malformed", format!("malformed request: not JSON ({e})")))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == API_VERSION as u64 => {}
        Some(v) => {
            return Err((
                "bad_version",
                format!("unsupported API version {v}; this daemon speaks version {API_VERSION}"),
            ))
        }
        None => {
            return Err((
                "bad_version",
                format!(
                    "request has no numeric \"version\"; this daemon speaks version {API_VERSION}"
                ),
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| ("malformed", format!("malformed request: {e}")))
}

/// Parses and answers one request line.
async fn handle(line: &[u8], d: &Arc<Daemon>) -> Vec<u8> {
    let t = Instant::now();
    let req = match decode(line) {
        Ok(r) => r,
        Err((metric, e)) => {
            d.metrics.count(metric, false);
            return reply(Some(e), serde_json::Value::Null);
        }
    };
    let op = match &req.request {
        Request::Register { .. } => "register",
        Request::Unregister { .. } => "unregister",
        Request::ListEndpoints => "list_endpoints",
        Request::ListServices => "list_services",
        Request::ServiceSource => "service_source",
        Request::AllowServiceRemoval => "allow_service_removal",
        Request::Status => "status",
        Request::Accel { .. } => "accel",
        Request::Nodes => "nodes",
    };
    let registered = match &req.request {
        Request::Register { endpoint } => {
            Some((endpoint.container_id.clone(), endpoint.ifname.clone()))
        }
        _ => None,
    };
    // A register whose state is free is answered here, on the API thread:
    // its work is a file read and a few map writes, and a pod's register
    // then waits on no other thread (each hop is a scheduling delay on a
    // busy node). Anything else, or a busy state, goes to a blocking
    // thread.
    let inline = match &req.request {
        Request::Register { endpoint } => d
            .state
            .try_lock()
            .ok()
            .map(|mut st| register(&mut st, endpoint, std::time::Duration::ZERO)),
        _ => None,
    };
    let result = match inline {
        Some(r) => Ok(r),
        None => {
            let d2 = d.clone();
            tokio::task::spawn_blocking(move || answer(req.request, &d2, t)).await
        }
    };
    let mut result = match result {
        Ok(r) => r,
        Err(e) => {
            error!("API handler failed: {e}");
            Err(format!("internal error handling {op}: {e}"))
        }
    };
    if op == "register" {
        let took = t.elapsed();
        d.metrics.register_seconds.observe(took.as_secs_f64());
        // What the daemon itself took, from the request read to the
        // answer: the part of a register's round trip no scheduler adds
        // (beside `waited_us`, from register()).
        if let Ok(data) = result.as_mut() {
            data["took_us"] = json!(took.as_micros() as u64);
        }
        if let (Ok(_), Some(key)) = (&result, registered) {
            // The plugin attached the edge; the edge thread checks it.
            let _ = d.edge_kick.send(key);
        }
    }
    d.metrics.count(op, result.is_ok());
    match result {
        Ok(data) => reply(None, data),
        Err(msg) => reply(Some(msg), serde_json::Value::Null),
    }
}

/// Registers `endpoint` with the state held; `waited` is how long the
/// register waited until it held it (another task had it: the hop to a
/// blocking thread and the wait for the lock; zero when answered on the
/// API thread), answered as `waited_us`.
fn register(
    st: &mut State,
    endpoint: &sluice_common::endpoint::EndpointRecord,
    waited: std::time::Duration,
) -> Result<serde_json::Value, String> {
    let r = st.register(endpoint).map_err(|e| {
        warn!(container_id = %endpoint.container_id, "register refused: {e}");
        e.to_string()
    })?;
    Ok(json!({
        "cookie": r.cookie,
        "host_ifindex": r.record.host_ifindex,
        "waited_us": waited.as_micros() as u64,
    }))
}

/// Answers `req` on a blocking thread; `since` is when its line was read.
fn answer(req: Request, d: &Daemon, since: Instant) -> Result<serde_json::Value, String> {
    match req {
        Request::Register { endpoint } => {
            let mut st = lock(&d.state);
            register(&mut st, &endpoint, since.elapsed())
        }
        Request::Unregister {
            container_id,
            ifname,
        } => {
            let known = lock(&d.state).unregister(&container_id, &ifname);
            Ok(json!({ "known": known }))
        }
        Request::ListEndpoints => {
            Ok(serde_json::to_value(lock(&d.state).views()).expect("views serialize"))
        }
        Request::ListServices => match &d.services {
            Some(s) => Ok(json!({ "services": s.views(), "source": s.last_pass() })),
            None => Err("no service source: set services_dir in the daemon's config".into()),
        },
        Request::ServiceSource => match &d.services {
            Some(s) => Ok(json!({ "source": s.last_pass() })),
            None => Err("no service source: set services_dir in the daemon's config".into()),
        },
        Request::AllowServiceRemoval => match &d.services {
            Some(s) => {
                let held = s.allow_removal();
                info!(held, "the operator let a held service removal through");
                Ok(json!({ "held": held }))
            }
            None => Err("no service source: set services_dir in the daemon's config".into()),
        },
        Request::Accel { enabled } => {
            let mut st = lock(&d.state);
            let why_off = d
                .kernel
                .features
                .iter()
                .find(|f| f.name == crate::kernel::ACCEL)
                .map(|f| f.why_off.clone())
                .unwrap_or_default();
            let Some(a) = st.dp.accel.as_mut() else {
                return Err(format!(
                    "same-node TCP acceleration is not available on this kernel ({}): {why_off}",
                    d.kernel.release
                ));
            };
            if let Some(on) = enabled {
                a.set_enabled(on).map_err(|e| e.to_string())?;
                info!(enabled = on, "same-node TCP acceleration switched");
            }
            let (view, sockhash) = crate::views::AccelView::of(a);
            drop(st);
            Ok(serde_json::to_value(view.count(sockhash)).expect("accel serializes"))
        }
        Request::Nodes => match &d.routing {
            Some(r) => Ok(serde_json::to_value(r.status()).expect("routing status serializes")),
            None => Err("node routing is off (routing = \"off\" in the daemon's config)".into()),
        },
        Request::Status => {
            // Counting the maps' entries walks every map: done (or taken
            // from the last second's count) before the state lock, which
            // registers need, is taken.
            let maps = d.map_stats.get();
            let st = lock(&d.state);
            let mut s = StatusView {
                version: env!("CARGO_PKG_VERSION").into(),
                api_version: API_VERSION,
                pid: std::process::id(),
                uptime_seconds: d.started.elapsed().as_secs(),
                ready: d.ready.load(Ordering::Acquire),
                state_dir: st.cfg.state_dir.clone(),
                socket: st.cfg.socket.clone(),
                pin_path: st.cfg.pin_path.clone(),
                cgroup_root: st.dp.cgroup_root.clone(),
                edge_mode: st.dp.edge_mode,
                edge_program_id: st.dp.edge_prog.id,
                edge_program: st.dp.edge_prog_outcome,
                host_cookie: st.host_cookie,
                endpoints: st.endpoints.len(),
                restore: d.restore.clone(),
                kernel: Some(d.kernel.clone()),
                socket_links: st.dp.cgroup_links.clone(),
                sock_ops: st
                    .dp
                    .sock_stats()
                    .into_iter()
                    .map(|(h, n)| (h.to_string(), n))
                    .collect(),
                lb_stats: st
                    .dp
                    .lb_stats()
                    .into_iter()
                    .map(|(h, n)| (h.to_string(), n))
                    .collect(),
                per_packet: st
                    .dp
                    .ct_stats()
                    .into_iter()
                    .map(|(h, n)| (h.to_string(), n))
                    .collect(),
                accel: None,
                maps,
            };
            let accel = st.dp.accel.as_ref().map(crate::views::AccelView::of);
            drop(st);
            s.accel = accel.map(|(view, sockhash)| view.count(sockhash));
            Ok(serde_json::to_value(s).expect("status serializes"))
        }
    }
}
