//! A test Kubernetes API server: the list/watch protocol of the real one,
//! over HTTPS with a bearer token, for Services, EndpointSlices and Nodes
//! in their real JSON form (no cluster can run here).
//!
//! What it speaks, as the API server does:
//! - `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`,
//!   `/api/v1/nodes`: a list with `metadata.resourceVersion`, paginated by
//!   `limit` with a `continue` token served from a snapshot (a token older
//!   than the last compaction: `410 Expired`);
//! - `?watch=1&resourceVersion=R`: every change after R, then live ones,
//!   one JSON event per line in a chunked body; `BOOKMARK` events when
//!   `allowWatchBookmarks=true`; an `R` older than the last compaction: an
//!   `ERROR` event with a `410` Status ("too old resource version"), as
//!   etcd's compaction makes the real server do; the watch ends after
//!   `timeoutSeconds`.
//!
//! And what tests do to it: objects added, changed, deleted
//! ([`KubeApi::apply`], [`KubeApi::delete`]); watches dropped
//! ([`KubeApi::drop_watches`]); history compacted ([`KubeApi::compact`]);
//! the server down ([`KubeApi::set_down`]: connections closed at once) or
//! slow ([`KubeApi::set_delay`]); every request recorded.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The kinds served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn of(kind: &str) -> Option<Kind> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            _ => None,
        }
    }

    fn of_path(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub kind: Option<Kind>,
    pub watch: bool,
    /// The `resourceVersion` asked for ("" if none).
    pub resource_version: String,
    pub continued: bool,
    pub status: u16,
    /// When the answer (a watch's first byte) was ready.
    pub at: std::time::Instant,
}

#[derive(Debug)]
struct Watcher {
    kind: Kind,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Kind, BTreeMap<String, Value>>,
    /// (resourceVersion, kind, event type, object) since the last compaction.
    history: Vec<(u64, Kind, &'static str, Value)>,
    compacted: u64,
    watchers: Vec<Watcher>,
    /// List snapshots by id, for `continue`.
    snapshots: HashMap<u64, (u64, Arc<Vec<Value>>)>,
    next_snapshot: u64,
    down: bool,
    /// Open connections, closed when the server goes down.
    conns: Vec<tokio::task::AbortHandle>,
    delay: Duration,
    bookmark_every: Option<Duration>,
    log: Vec<Logged>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    token: String,
}

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server; dropped: stopped.
#[derive(Debug)]
pub struct KubeApi {
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    pub ca_pem: String,
    dir: tempfile::TempDir,
}

fn key_of(kind: Kind, o: &Value) -> String {
    let m = &o["metadata"];
    let name = m["name"].as_str().unwrap_or("");
    match kind {
        Kind::Node => name.to_string(),
        _ => format!("{}/{name}", m["namespace"].as_str().unwrap_or("default")),
    }
}

impl Default for KubeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeApi {
    /// A server with a fresh CA and certificate (for 127.0.0.1 and
    /// localhost) and a random token; it listens where [`KubeApi::listen_in`]
    /// or [`KubeApi::listen`] say.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "sluice-test-apiserver-ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = p.signed_by(&key, &ca).expect("server certificate");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        KubeApi {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    rv: 1000,
                    ..Default::default()
                }),
                token: format!("sluice-test-{:016x}", fastrand::u64(..)),
            }),
            rt: Some(rt),
            tls: Arc::new(tls),
            ca_pem: ca.pem(),
            dir: tempfile::Builder::new()
                .prefix("sluice-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// Listens on 127.0.0.1 of `ns` (a socket stays in the netns it was
    /// made in); returns its URL.
    pub fn listen_in(&self, ns: &crate::Ns) -> String {
        let runner = crate::NsRunner::new(ns);
        let l = runner
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind in the netns");
        self.serve(l)
    }

    /// Listens on 127.0.0.1 of the current netns; returns its URL.
    pub fn listen(&self) -> String {
        self.serve(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
    }

    fn serve(&self, l: std::net::TcpListener) -> String {
        let addr: SocketAddr = l.local_addr().expect("address");
        l.set_nonblocking(true).expect("nonblocking");
        let shared = self.shared.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let rt = self.rt.as_ref().expect("running");
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    continue;
                };
                if lock(&shared).down {
                    drop(sock);
                    continue;
                }
                // As the real API server (Go sets it on every TCP
                // connection): a watch's events go out as they come, not
                // held back by Nagle until the last one is acknowledged.
                let _ = sock.set_nodelay(true);
                let shared2 = shared.clone();
                let acceptor = acceptor.clone();
                let task = tokio::spawn(async move {
                    let shared = shared2;
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
                let mut inner = lock(&shared);
                inner.conns.retain(|c| !c.is_finished());
                inner.conns.push(task.abort_handle());
            }
        });
        format!("https://{addr}")
    }

    /// A kubeconfig for `url` with the CA and the token.
    pub fn kubeconfig(&self, url: &str) -> PathBuf {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", fastrand::u32(..)));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    \
             certificate-authority-data: {}\nusers:\n- name: sluiced\n  user:\n    token: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: sluiced\n\
             current-context: test\n",
            b64.encode(&self.ca_pem),
            self.shared.token
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Adds or replaces each Service, EndpointSlice and Node of the YAML
    /// documents (other kinds are passed over); one event each.
    pub fn apply_yaml(&self, text: &str) {
        for v in yaml_objects(text) {
            self.apply(v);
        }
    }

    /// Adds or replaces one object (its `kind` says which).
    pub fn apply(&self, mut o: Value) {
        if o["metadata"].get("uid").is_none() {
            o["metadata"]["uid"] = format!("{:032x}", fastrand::u128(..)).into();
        }
        let mut inner = lock(&self.shared);
        let (kind, rv, key, replaced) = inner.put(o);
        let o = inner.objects[&kind][&key].clone();
        let ty = if replaced { "MODIFIED" } else { "ADDED" };
        publish(&mut inner, rv, kind, ty, o);
    }

    /// Many objects at once, with no history (as if they had always been
    /// there): a watch from before them gets 410.
    pub fn load(&self, objects: impl IntoIterator<Item = Value>) {
        let mut inner = lock(&self.shared);
        for o in objects {
            inner.put(o);
        }
        inner.compacted = inner.rv + 1;
        inner.history.clear();
    }

    /// Deletes one object (`key`: `namespace/name`, or a Node's name).
    pub fn delete(&self, kind: Kind, key: &str) -> bool {
        let mut inner = lock(&self.shared);
        let Some(mut o) = inner.objects.entry(kind).or_default().remove(key) else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        o["metadata"]["resourceVersion"] = rv.to_string().into();
        publish(&mut inner, rv, kind, "DELETED", o);
        true
    }

    /// Every object of a kind, by key.
    pub fn objects(&self, kind: Kind) -> BTreeMap<String, Value> {
        lock(&self.shared)
            .objects
            .get(&kind)
            .cloned()
            .unwrap_or_default()
    }

    /// Ends every open watch (the connection's body ends, as when the
    /// server restarts or a load balancer drops it).
    pub fn drop_watches(&self) {
        lock(&self.shared).watchers.clear();
    }

    /// Forgets the history (as etcd's compaction does): a watch resumed
    /// from any version seen so far gets 410 Gone, and so does a list's
    /// `continue`.
    pub fn compact(&self) {
        let mut inner = lock(&self.shared);
        inner.compacted = inner.rv + 1;
        inner.history.clear();
        inner.snapshots.clear();
    }

    /// Down: every connection is closed as it comes, open watches end.
    pub fn set_down(&self, down: bool) {
        let mut inner = lock(&self.shared);
        inner.down = down;
        if down {
            inner.watchers.clear();
            for c in inner.conns.drain(..) {
                c.abort();
            }
        }
    }

    /// Every list page and watch start waits this long.
    pub fn set_delay(&self, d: Duration) {
        lock(&self.shared).delay = d;
    }

    /// Bookmarks to watches that ask for them, this often.
    pub fn set_bookmarks(&self, every: Option<Duration>) {
        lock(&self.shared).bookmark_every = every;
    }

    /// The requests so far.
    pub fn log(&self) -> Vec<Logged> {
        lock(&self.shared).log.clone()
    }

    /// Watches open now.
    pub fn watches(&self) -> usize {
        lock(&self.shared).watchers.len()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared).rv
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        lock(&self.shared).watchers.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Inner {
    /// Stores one object (its `kind` says which) under the next
    /// resourceVersion, in `default` if it names no namespace; returns its
    /// kind, version, key and whether it replaced one.
    fn put(&mut self, mut o: Value) -> (Kind, u64, String, bool) {
        let kind = Kind::of(o["kind"].as_str().unwrap_or("")).expect("a served kind");
        self.rv += 1;
        let rv = self.rv;
        let m = &mut o["metadata"];
        m["resourceVersion"] = rv.to_string().into();
        if kind != Kind::Node && m.get("namespace").is_none() {
            m["namespace"] = "default".into();
        }
        let key = key_of(kind, &o);
        let replaced = self
            .objects
            .entry(kind)
            .or_default()
            .insert(key.clone(), o)
            .is_some();
        (kind, rv, key, replaced)
    }
}

/// Records an event and sends it to the kind's watches.
fn publish(inner: &mut Inner, rv: u64, kind: Kind, ty: &'static str, o: Value) {
    let line = event_line(ty, &o);
    inner
        .watchers
        .retain(|w| w.kind != kind || w.tx.send(line.clone()).is_ok());
    inner.history.push((rv, kind, ty, o));
}

fn event_line(ty: &str, o: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": ty, "object": o})).expect("JSON");
    s.push(b'\n');
    Bytes::from(s)
}

/// The Services, EndpointSlices and Nodes of YAML documents (lists
/// opened), as JSON.
pub fn yaml_objects(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(d).expect("YAML document");
        let items = if v["kind"] == "List" {
            v["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![v]
        };
        out.extend(
            items
                .into_iter()
                .filter(|o| Kind::of(o["kind"].as_str().unwrap_or("")).is_some()),
        );
    }
    out
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(code: u16, body: &Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("JSON"))).boxed())
        .expect("response")
}

async fn handle(
    shared: &Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%3A", ":")))
        .collect();
    let kind = Kind::of_path(req.uri().path());
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    let rv = query.get("resourceVersion").cloned().unwrap_or_default();
    let cont = query.get("continue").cloned();
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        == Some(&format!("Bearer {}", shared.token));
    let log = |code: u16| Logged {
        kind,
        watch,
        resource_version: rv.clone(),
        continued: cont.is_some(),
        status: code,
        at: std::time::Instant::now(),
    };
    if !authorized {
        lock(shared).log.push(log(401));
        return respond(401, &status(401, "Unauthorized", "Unauthorized"));
    }
    if req.uri().path() == "/version" {
        return respond(
            200,
            &json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-sluice-test",
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2026-12-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc",
                    "platform": "linux/amd64"}),
        );
    }
    let Some(kind) = kind else {
        lock(shared).log.push(log(404));
        return respond(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let delay = lock(shared).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if watch {
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290u64);
        return start_watch(shared, kind, &rv, bookmarks, timeout, log(200));
    }
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let mut inner = lock(shared);
    // A page: from a snapshot taken at the first page.
    let (snap_id, snap_rv, items, offset) = match &cont {
        Some(c) => {
            let parsed = c
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?)));
            match parsed
                .and_then(|(id, off)| inner.snapshots.get(&id).map(|s| (id, s.clone(), off)))
            {
                Some((id, (srv, items), off)) => (id, srv, items, off),
                None => {
                    inner.log.push(log(410));
                    return respond(
                        410,
                        &status(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. \
                             You can start a new list without the continue parameter.",
                        ),
                    );
                }
            }
        }
        None => {
            let items: Vec<Value> = inner
                .objects
                .get(&kind)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            let id = inner.next_snapshot;
            inner.next_snapshot += 1;
            let rv = inner.rv;
            let items = Arc::new(items);
            inner.snapshots.insert(id, (rv, items.clone()));
            (id, rv, items, 0)
        }
    };
    let end = offset.saturating_add(limit).min(items.len());
    let mut meta = json!({"resourceVersion": snap_rv.to_string()});
    if end < items.len() {
        meta["continue"] = format!("{snap_id}:{end}").into();
        meta["remainingItemCount"] = (items.len() - end).into();
    } else {
        inner.snapshots.remove(&snap_id);
    }
    inner.log.push(log(200));
    drop(inner);
    let page: Vec<Value> = items[offset.min(items.len())..end]
        .iter()
        .map(|o| {
            // Items of a list carry no kind and apiVersion.
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    respond(
        200,
        &json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": meta,
            "items": page,
        }),
    )
}

fn start_watch(
    shared: &Arc<Shared>,
    kind: Kind,
    rv: &str,
    bookmarks: bool,
    timeout_s: u64,
    logged: Logged,
) -> hyper::Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let mut inner = lock(shared);
    let from: u64 = rv.parse().unwrap_or(inner.rv);
    let expired = from < inner.compacted.saturating_sub(1);
    // Logged as 410 when it is answered with one (in an ERROR event).
    inner.log.push(Logged {
        status: if expired { 410 } else { logged.status },
        ..logged
    });
    if expired {
        let msg = format!("too old resource version: {from} ({})", inner.compacted - 1);
        let _ = tx.send(event_line("ERROR", &status(410, "Expired", &msg)));
        drop(tx);
    } else {
        for (r, k, ty, o) in &inner.history {
            if *k == kind && *r > from {
                let _ = tx.send(event_line(ty, o));
            }
        }
        if bookmarks {
            if let Some(every) = inner.bookmark_every {
                tokio::spawn(send_bookmarks(shared.clone(), kind, every, tx.downgrade()));
            }
        }
        inner.watchers.push(Watcher { kind, tx });
    }
    drop(inner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_s);
    let stream = futures::stream::unfold(rx, move |mut rx| async move {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(b)) => Some((Ok::<_, Infallible>(Frame::data(b)), rx)),
            _ => None,
        }
    });
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}

/// Sends a watch a BOOKMARK with the current version every `every`,
/// under the lock (so no event of a later version goes out before it).
/// It holds the watch's sender weakly: a watch the server ends
/// ([`KubeApi::drop_watches`]) ends even while bookmarks are due.
async fn send_bookmarks(
    shared: Arc<Shared>,
    kind: Kind,
    every: Duration,
    tx: mpsc::WeakUnboundedSender<Bytes>,
) {
    loop {
        tokio::time::sleep(every).await;
        let inner = lock(&shared);
        let Some(tx) = tx.upgrade() else { return };
        let o = json!({"kind": kind.name(), "apiVersion": kind.api_version(),
                       "metadata": {"resourceVersion": inner.rv.to_string()}});
        if tx.send(event_line("BOOKMARK", &o)).is_err() {
            return;
        }
    }
}
