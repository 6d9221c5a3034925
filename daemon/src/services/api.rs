//! The Kubernetes API as the service source: Services, EndpointSlices and
//! Nodes listed and watched with kube-runtime's watcher (paginated list,
//! watch from the list's resourceVersion with bookmarks, a dropped watch
//! resumed from the last version seen, 410 Gone relisted, retries backed
//! off exponentially with jitter).
//!
//! Each object is reduced, as it arrives, to what the translation reads of
//! it ([`ParsedObject`], the same as a manifest's) and kept in
//! [`ApiStore`]; the services thread translates and programs from there.
//!
//! What makes it safe:
//! - nothing is programmed until the first full list of every kind is in
//!   ([`ApiStore::synced`]): a half-listed view never removes a backend;
//! - a relist (after 410, or any error that loses the watch's place) is
//!   buffered and replaces what the kind held only once complete, and only
//!   the difference reaches the datapath;
//! - while the API cannot be reached nothing changes: the last good state
//!   stays programmed;
//! - objects are read one by one ([`DynamicObject`], then their type): an
//!   object that is not a valid Service, EndpointSlice or Node is rejected
//!   alone, with its reason, and never stops the others;
//! - an event that changes nothing the translation reads (status, managed
//!   fields, another node's heartbeat, an annotation we do not use) does
//!   not reach the datapath at all.

use super::model::{Rejection, ServiceRef};
use super::translate::{Context, ParsedObject};
use crate::nodes::ClusterNode;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How the daemon reaches the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiSettings {
    /// A kubeconfig file; `None`: the pod's service account (in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, over whatever the kubeconfig or the
    /// environment says: a kube-proxy-free cluster cannot reach the
    /// `kubernetes` Service before Sluice programs it.
    pub api_server: Option<String>,
    /// Objects per list page.
    pub page_size: u32,
}

/// A watch runs this long (seconds, chosen at random per watch stream, as
/// client-go does, so that a DaemonSet's daemons do not all come back
/// at once) before the server ends it and it is resumed from where it was.
const WATCH_TIMEOUT_S: (u32, u32) = (240, 300);

/// No answer byte for this long (a list, a watch start, or a watch the
/// server neither feeds nor ends) and the request is given up: longer than
/// any watch, so a healthy one is never cut; a silently dead connection is
/// noticed within it.
const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_S.1 as u64 + 30);

/// How often the API server is asked for its version, for reachability.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Retries after a failed list or watch: from the first delay, doubled up
/// to the last, ± 50 % jitter; reset by anything the watch yields. A 410
/// Gone is relisted at once.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(15));

/// The kinds the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    fn index(self) -> usize {
        self as usize
    }

    fn resource(self) -> ApiResource {
        match self {
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
            Kind::Node => ApiResource::erase::<Node>(&()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
}

/// One object as the store keeps it.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// A Service or EndpointSlice, as the translation reads it.
    Object(ParsedObject),
    Node(ClusterNode),
    /// Not a valid object of its kind: kept out, with why.
    Bad(Rejection),
}

impl Item {
    fn service_ref(&self) -> Option<&ServiceRef> {
        match self {
            Item::Object(o) => o.service_ref(),
            Item::Bad(r) => r.service.as_ref(),
            Item::Node(_) => None,
        }
    }
}

/// What an event changed, for the services thread.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Services whose objects changed.
    pub services: BTreeSet<ServiceRef>,
    /// The Node set changed.
    pub nodes: bool,
    /// Every kind has now been listed once (the first full pass is due).
    pub first_sync: bool,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.nodes && !self.first_sync
    }

    pub fn merge(&mut self, o: Touched) {
        self.services.extend(o.services);
        self.nodes |= o.nodes;
        self.first_sync |= o.first_sync;
    }
}

/// Per kind: what it holds and how its watch is doing.
#[derive(Debug, Default)]
struct KindState {
    items: HashMap<String, Item>,
    /// A list in progress (from `Init` to `InitDone`).
    buffer: Option<HashMap<String, Item>>,
    synced: bool,
    events: u64,
    lists: u64,
    errors: u64,
    last_event: Option<Instant>,
    last_error: Option<(Instant, String)>,
    /// The last time the watch yielded something (an object listed, a
    /// change).
    last_ok: Option<Instant>,
}

/// Everything the API holds that the translation reads.
#[derive(Debug)]
pub struct ApiStore {
    kinds: [KindState; 3],
    /// Which Service and EndpointSlice keys belong to each service.
    index: HashMap<ServiceRef, BTreeSet<(Kind, String)>>,
    nodes_generation: u64,
    started: Instant,
    synced_after: Option<Duration>,
    server: String,
    /// Why no client could be made (a bad kubeconfig, no service account).
    client_error: Option<String>,
    /// The last version probe: `Ok` when it answered.
    probe: Option<Result<(), String>>,
    /// The first pass after the first full list has programmed it (set by
    /// the services thread): only then is the source reported synced.
    programmed: bool,
}

/// The source's state for `sluicectl source` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `kubernetes` (or `manifests`).
    pub source: String,
    /// The API server, or the manifests directory.
    pub server: String,
    /// Every kind has been listed once: what is programmed follows the API.
    pub synced: bool,
    /// From the daemon's start to the first full list of every kind.
    #[serde(default)]
    pub synced_after_ms: Option<f64>,
    /// The API server answers (its version, every few seconds) and no watch
    /// has failed since it last yielded anything.
    pub reachable: bool,
    #[serde(default)]
    pub client_error: Option<String>,
    pub kinds: Vec<KindStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindStatus {
    pub kind: String,
    pub synced: bool,
    pub objects: usize,
    /// Objects that are not valid ones of their kind.
    pub rejected: usize,
    /// Adds, updates and deletes seen (and objects listed).
    pub events: u64,
    /// Full lists done (the first and every relist).
    pub lists: u64,
    pub errors: u64,
    #[serde(default)]
    pub last_event_age_s: Option<f64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_age_s: Option<f64>,
}

fn key_of(kind: Kind, meta: &kube::api::ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("");
    match kind {
        Kind::Node => name.to_string(),
        _ => format!("{}/{name}", meta.namespace.as_deref().unwrap_or("default")),
    }
}

/// Reads one object as its kind. Done on the API thread, outside the
/// store's lock.
pub fn item(kind: Kind, o: DynamicObject, ctx: &Context) -> (String, Item) {
    let key = key_of(kind, &o.metadata);
    let label = format!("{} {key}", kind.name());
    // The service it belongs to, read from its metadata as the translation
    // does (a bad object is still grouped with its service).
    let service = match kind {
        Kind::Service => super::translate::service_ref(&o.metadata),
        Kind::EndpointSlice => super::translate::slice_service(&o.metadata),
        Kind::Node => None,
    };
    let bad = |reason: String| {
        Item::Bad(Rejection {
            object: label.clone(),
            reason,
            service: service.clone(),
        })
    };
    let value = match serde_json::to_value(&o) {
        Ok(v) => v,
        Err(e) => return (key, bad(e.to_string())),
    };
    let item = match kind {
        Kind::Service => match serde_json::from_value::<Service>(value) {
            Ok(s) => Item::Object(ParsedObject::service(&s, ctx)),
            Err(e) => bad(format!("not a valid Service: {e}")),
        },
        Kind::EndpointSlice => match serde_json::from_value::<EndpointSlice>(value) {
            Ok(s) => Item::Object(ParsedObject::slice(&s, ctx)),
            Err(e) => bad(format!("not a valid EndpointSlice: {e}")),
        },
        Kind::Node => match serde_json::from_value::<Node>(value) {
            Ok(n) => match crate::nodes::parse(&n) {
                Ok(n) => Item::Node(n),
                Err(reason) => bad(reason),
            },
            Err(e) => bad(format!("not a valid Node: {e}")),
        },
    };
    (key, item)
}

impl ApiStore {
    pub fn new(server: String) -> Self {
        ApiStore {
            kinds: Default::default(),
            index: HashMap::new(),
            nodes_generation: 0,
            started: Instant::now(),
            synced_after: None,
            server,
            client_error: None,
            probe: None,
            programmed: false,
        }
    }

    /// The services thread programmed the first full list.
    pub fn set_programmed(&mut self) {
        self.programmed = true;
    }

    /// Whether the API answers: the last version probe did, and no watch
    /// failed after it last yielded anything (or longer ago than the
    /// longest retry, plus a margin: a watch that came back quietly).
    fn reachable(&self) -> bool {
        let since = RETRY.1 * 2;
        self.client_error.is_none()
            && matches!(self.probe, Some(Ok(())))
            && self.kinds.iter().all(|k| match &k.last_error {
                None => true,
                Some((t, _)) => k.last_ok.is_some_and(|o| o > *t) || t.elapsed() > since,
            })
    }

    /// The version probe's outcome.
    pub fn probe(&mut self, r: Result<(), String>) {
        if let Err(e) = &r {
            if matches!(self.probe, Some(Ok(())) | None) {
                warn!("Kubernetes API server not answering: {e}; what is programmed stays");
            }
        } else if matches!(self.probe, Some(Err(_))) {
            info!("Kubernetes API server answering again");
        }
        self.probe = Some(r);
    }

    /// Every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.kinds.iter().all(|k| k.synced)
    }

    fn unindex(&mut self, kind: Kind, key: &str, item: &Item) {
        if let Some(r) = item.service_ref() {
            if let Some(set) = self.index.get_mut(r) {
                set.remove(&(kind, key.to_string()));
                if set.is_empty() {
                    self.index.remove(r);
                }
            }
        }
    }

    /// Puts one object in place (`None`: removes it); says what changed.
    fn put(&mut self, kind: Kind, key: String, item: Option<Item>, t: &mut Touched) {
        if self.kinds[kind.index()].items.get(&key) == item.as_ref() {
            return;
        }
        let new_ref = item.as_ref().and_then(Item::service_ref).cloned();
        if let Some(r) = &new_ref {
            self.index
                .entry(r.clone())
                .or_default()
                .insert((kind, key.clone()));
            t.services.insert(r.clone());
        }
        let items = &mut self.kinds[kind.index()].items;
        let old = match item {
            Some(new) => items.insert(key.clone(), new),
            None => items.remove(&key),
        };
        if let Some(old) = old {
            if let Some(r) = old.service_ref() {
                t.services.insert(r.clone());
                if Some(r) != new_ref.as_ref() {
                    self.unindex(kind, &key, &old);
                }
            }
        }
        if kind == Kind::Node {
            self.nodes_generation += 1;
            t.nodes = true;
        }
    }

    /// Applies one watcher event of `kind`.
    pub fn event(&mut self, kind: Kind, ev: Event) -> Touched {
        let mut t = Touched::default();
        let was_synced = self.synced();
        let k = &mut self.kinds[kind.index()];
        if !matches!(ev, Event::Init) {
            // Init comes before the list is asked for: not an answer.
            k.last_ok = Some(Instant::now());
        }
        if matches!(
            ev,
            Event::Apply(..) | Event::Delete(_) | Event::InitApply(..)
        ) {
            k.events += 1;
            k.last_event = Some(Instant::now());
        }
        match ev {
            Event::Apply(key, item) => self.put(kind, key, Some(item), &mut t),
            Event::Delete(key) => self.put(kind, key, None, &mut t),
            Event::Init => k.buffer = Some(HashMap::new()),
            Event::InitApply(key, item) => {
                k.buffer.get_or_insert_with(HashMap::new).insert(key, item);
            }
            Event::InitDone => {
                let listed = k.buffer.take().unwrap_or_default();
                k.lists += 1;
                k.synced = true;
                let gone: Vec<String> = k
                    .items
                    .keys()
                    .filter(|x| !listed.contains_key(*x))
                    .cloned()
                    .collect();
                for key in gone {
                    self.put(kind, key, None, &mut t);
                }
                for (key, item) in listed {
                    self.put(kind, key, Some(item), &mut t);
                }
                if !was_synced && self.synced() {
                    let after = self.started.elapsed();
                    self.synced_after = Some(after);
                    t.first_sync = true;
                    info!(
                        ms = format!("{:.0}", after.as_secs_f64() * 1e3),
                        services = self.kinds[0].items.len(),
                        endpoint_slices = self.kinds[1].items.len(),
                        nodes = self.kinds[2].items.len(),
                        "Kubernetes API source synced"
                    );
                }
            }
        }
        t
    }

    /// A watch failed (the watcher backs off and tries again).
    pub fn error(&mut self, kind: Kind, e: String) {
        let k = &mut self.kinds[kind.index()];
        k.errors += 1;
        let recovered = match &k.last_error {
            None => true,
            Some((t, _)) => k.last_ok.is_some_and(|o| o > *t),
        };
        if recovered || k.last_error.as_ref().map(|x| &x.1) != Some(&e) {
            warn!(
                kind = kind.name(),
                "Kubernetes API: {e}; what is programmed stays, retrying with backoff"
            );
        }
        k.last_error = Some((Instant::now(), e));
    }

    pub fn client(&mut self, r: Result<String, String>) {
        match r {
            Ok(url) => {
                self.server = url;
                self.client_error = None;
            }
            Err(e) => self.client_error = Some(e),
        }
    }

    /// The Services and EndpointSlices the API holds.
    pub fn objects(&self) -> Vec<&ParsedObject> {
        self.kinds[..2]
            .iter()
            .flat_map(|k| k.items.values())
            .filter_map(|i| match i {
                Item::Object(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// The objects of the given services only.
    pub fn objects_for(&self, refs: &BTreeSet<ServiceRef>) -> Vec<&ParsedObject> {
        refs.iter()
            .filter_map(|r| self.index.get(r))
            .flatten()
            .filter_map(|(kind, key)| self.kinds[kind.index()].items.get(key))
            .filter_map(|i| match i {
                Item::Object(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// Every valid Node, and a number that changes whenever they may have.
    pub fn nodes(&self) -> (Vec<ClusterNode>, u64) {
        let mut nodes: Vec<ClusterNode> = self.kinds[Kind::Node.index()]
            .items
            .values()
            .filter_map(|i| match i {
                Item::Node(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        nodes.sort();
        (nodes, self.nodes_generation)
    }

    /// Objects that are not valid ones of their kind.
    pub fn rejections(&self) -> Vec<Rejection> {
        let mut out: Vec<Rejection> = self
            .kinds
            .iter()
            .flat_map(|k| k.items.values())
            .filter_map(|i| match i {
                Item::Bad(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    pub fn status(&self) -> SourceStatus {
        let age = |t: Instant| (t.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        SourceStatus {
            source: "kubernetes".into(),
            server: self.server.clone(),
            synced: self.synced() && self.programmed,
            synced_after_ms: self.synced_after.map(|d| d.as_secs_f64() * 1e3),
            reachable: self.reachable(),
            client_error: self.client_error.clone(),
            kinds: Kind::ALL
                .iter()
                .map(|&kind| {
                    let k = &self.kinds[kind.index()];
                    let rejected = k
                        .items
                        .values()
                        .filter(|i| matches!(i, Item::Bad(_)))
                        .count();
                    KindStatus {
                        kind: kind.name().into(),
                        synced: k.synced,
                        objects: k.items.len() - rejected,
                        rejected,
                        events: k.events,
                        lists: k.lists,
                        errors: k.errors,
                        last_event_age_s: k.last_event.map(age),
                        last_error: k.last_error.as_ref().map(|e| e.1.clone()),
                        last_error_age_s: k.last_error.as_ref().map(|e| age(e.0)),
                    }
                })
                .collect(),
        }
    }
}

/// A watcher event with its object already read.
#[derive(Debug)]
pub enum Event {
    Apply(String, Item),
    Delete(String),
    Init,
    InitApply(String, Item),
    InitDone,
}

impl Event {
    fn read(kind: Kind, ev: watcher::Event<DynamicObject>, ctx: &Context) -> Self {
        match ev {
            watcher::Event::Apply(o) => {
                let (k, i) = item(kind, o, ctx);
                Event::Apply(k, i)
            }
            watcher::Event::Delete(o) => Event::Delete(key_of(kind, &o.metadata)),
            watcher::Event::Init => Event::Init,
            watcher::Event::InitApply(o) => {
                let (k, i) = item(kind, o, ctx);
                Event::InitApply(k, i)
            }
            watcher::Event::InitDone => Event::InitDone,
        }
    }
}

/// Where the API thread delivers what it reads.
pub trait Sink: Send + Sync + 'static {
    /// Applies an event to the store; the services thread hears of what
    /// changed through `tx`.
    fn event(&self, kind: Kind, ev: Event);
    fn error(&self, kind: Kind, e: String);
    /// The version probe's outcome.
    fn probe(&self, r: Result<(), String>);
    /// A client was made for this server URL (`Ok`), or could not be.
    fn client(&self, r: Result<String, String>);
}

/// The client's config: the kubeconfig if one is named, else the pod's
/// service account; the server address replaced by `api_server` if set.
async fn client_config(s: &ApiSettings) -> Result<kube::Config, String> {
    let mut c = match &s.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| format!("kubeconfig {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", p.display()))?
        }
        None => {
            let c = if s.api_server.is_some() {
                // No need for KUBERNETES_SERVICE_HOST: the address is ours.
                kube::Config::incluster_dns()
            } else {
                kube::Config::incluster_env()
            };
            c.map_err(|e| {
                format!(
                    "in-cluster config (the pod's service account): {e}; set kubeconfig in \
                     sluiced.toml outside a pod"
                )
            })?
        }
    };
    if let Some(url) = &s.api_server {
        c.cluster_url = url
            .parse()
            .map_err(|e| format!("api_server {url:?} is not a URL: {e}"))?;
    }
    // Without it a list, or a watch start on a pooled connection, to a
    // server that accepted but never answers would wait forever.
    c.read_timeout = Some(READ_TIMEOUT);
    c.reset_reader_on_write = true;
    Ok(c)
}

/// The server the settings name, for status before a client exists.
pub fn describe(s: &ApiSettings) -> String {
    match (&s.api_server, &s.kubeconfig) {
        (Some(u), _) => u.clone(),
        (None, Some(p)) => format!("from {}", p.display()),
        (None, None) => "in-cluster".into(),
    }
}

/// Starts the API thread: a client (retried with backoff until one can be
/// made), then one watcher per kind, each event read and handed to `sink`.
pub fn spawn(
    settings: ApiSettings,
    ctx: Context,
    sink: std::sync::Arc<dyn Sink>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("sluiced-k8s".into())
        .spawn(move || {
            crate::housekeeping_priority();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    sink.client(Err(format!("starting the API thread's runtime: {e}")));
                    return;
                }
            };
            rt.block_on(run(settings, ctx, sink));
        })?;
    Ok(())
}

async fn run(settings: ApiSettings, ctx: Context, sink: std::sync::Arc<dyn Sink>) {
    let mut delay = Duration::from_millis(500);
    let client = loop {
        let made = match client_config(&settings).await {
            Ok(c) => {
                let url = c.cluster_url.to_string();
                kube::Client::try_from(c)
                    .map(|c| (c, url))
                    .map_err(|e| format!("Kubernetes client: {e}"))
            }
            Err(e) => Err(e),
        };
        match made {
            Ok((c, url)) => {
                info!(server = %url, "Kubernetes API source: listing and watching");
                sink.client(Ok(url));
                break c;
            }
            Err(e) => {
                warn!("{e}; retried in {:?}", delay);
                sink.client(Err(e));
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    let watch = |kind: Kind| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
        let sink = sink.clone();
        let ctx = ctx.clone();
        let page_size = settings.page_size;
        async move {
            let timeout = fastrand::u32(WATCH_TIMEOUT_S.0..=WATCH_TIMEOUT_S.1);
            let cfg = watcher::Config::default()
                .page_size(page_size)
                .timeout(timeout);
            let mut stream = watcher(api, cfg).boxed();
            let mut delay = RETRY.0;
            // The watcher never ends: after an error it goes on from where
            // it was (resumes the watch, or lists again) when polled.
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        delay = RETRY.0;
                        sink.event(kind, Event::read(kind, ev, &ctx));
                    }
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        // Its version is gone: the watcher lists again on
                        // the next poll, at once (as client-go does).
                        sink.error(
                            kind,
                            format!(
                                "watch expired (410 Gone: {}): listing again",
                                status.message
                            ),
                        );
                    }
                    Err(e) => {
                        sink.error(kind, e.to_string());
                        tokio::time::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(RETRY.1);
                    }
                }
            }
        }
    };
    let probe = async {
        loop {
            let r = match tokio::time::timeout(PROBE_EVERY, client.apiserver_version()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer to GET /version within {PROBE_EVERY:?}")),
            };
            sink.probe(r);
            tokio::time::sleep(PROBE_EVERY).await;
        }
    };
    futures::join!(
        watch(Kind::Service),
        watch(Kind::EndpointSlice),
        watch(Kind::Node),
        probe
    );
}

/// `d` ± 50 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

/// A channel the services thread reads coalesced changes from.
pub type Updates = mpsc::Receiver<Touched>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..Default::default()
        }
    }

    fn obj(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    fn svc(name: &str, ip: &str) -> DynamicObject {
        obj(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}
        }))
    }

    /// A Service whose port is not a number: not a valid Service.
    fn bad_svc(name: &str, ip: &str) -> DynamicObject {
        obj(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"port": "eighty"}]}
        }))
    }

    fn apply(s: &mut ApiStore, kind: Kind, o: DynamicObject) -> Touched {
        let (k, i) = item(kind, o, &ctx());
        s.event(kind, Event::Apply(k, i))
    }

    fn list(s: &mut ApiStore, kind: Kind, objs: Vec<DynamicObject>) -> Touched {
        let mut t = s.event(kind, Event::Init);
        for o in objs {
            let (k, i) = item(kind, o, &ctx());
            t.merge(s.event(kind, Event::InitApply(k, i)));
        }
        t.merge(s.event(kind, Event::InitDone));
        t
    }

    #[test]
    fn synced_only_once_every_kind_is_listed() {
        let mut s = ApiStore::new("x".into());
        let t = list(&mut s, Kind::Service, vec![svc("a", "10.96.0.1")]);
        assert!(!s.synced() && !t.first_sync);
        list(&mut s, Kind::EndpointSlice, vec![]);
        let t = list(&mut s, Kind::Node, vec![]);
        assert!(s.synced() && t.first_sync);
        assert_eq!(s.objects().len(), 1);
        // Reported synced only once the services thread programmed it.
        assert!(!s.status().synced);
        s.set_programmed();
        assert!(s.status().synced);
    }

    #[test]
    fn an_update_that_changes_nothing_read_touches_nothing() {
        let mut s = ApiStore::new("x".into());
        apply(&mut s, Kind::Service, svc("a", "10.96.0.1"));
        let mut same = svc("a", "10.96.0.1");
        same.metadata.resource_version = Some("2".into());
        same.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
        assert!(apply(&mut s, Kind::Service, same).is_empty());
        let t = apply(&mut s, Kind::Service, svc("a", "10.96.0.2"));
        assert_eq!(t.services.len(), 1);
    }

    #[test]
    fn a_relist_applies_only_the_difference_and_removes_what_is_gone() {
        let mut s = ApiStore::new("x".into());
        list(
            &mut s,
            Kind::Service,
            vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")],
        );
        // Mid-relist the old set is still what is served.
        s.event(Kind::Service, Event::Init);
        let (k, i) = item(Kind::Service, svc("a", "10.96.0.1"), &ctx());
        s.event(Kind::Service, Event::InitApply(k, i));
        assert_eq!(s.objects().len(), 2);
        let t = s.event(Kind::Service, Event::InitDone);
        assert_eq!(
            t.services
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(s.objects().len(), 1);
    }

    #[test]
    fn a_bad_object_is_rejected_alone() {
        let mut s = ApiStore::new("x".into());
        let bad = bad_svc("bad", "10.96.0.9");
        list(&mut s, Kind::Service, vec![svc("a", "10.96.0.1"), bad]);
        assert_eq!(s.objects().len(), 1);
        let r = s.rejections();
        assert_eq!(r.len(), 1);
        assert!(r[0].object.contains("default/bad"), "{r:?}");
        assert_eq!(s.status().kinds[0].rejected, 1);
    }

    /// The same objects through the manifests source and through the API
    /// source translate to the same frontends and the same rejections.
    #[test]
    fn the_api_and_the_manifests_translate_alike() {
        use super::super::translate::translate_parsed;
        let corpus = include_str!("../../../tests/data/translation-corpus.yaml");
        let ctx = Context {
            node_name: Some("node-a".into()),
            service_cidrs: crate::config::Config::default().service_cidrs,
            nodeport_range: Some((30000, 32767)),
            external_ip_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
            ..Default::default()
        };
        let m = super::super::manifest::parse("corpus.yaml", corpus).unwrap();
        let from_files: Vec<ParsedObject> = m
            .services
            .iter()
            .map(|s| ParsedObject::service(s, &ctx))
            .chain(m.slices.iter().map(|s| ParsedObject::slice(s, &ctx)))
            .collect();
        let mut store = ApiStore::new("test".into());
        for d in serde_yaml::Deserializer::from_str(corpus) {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
            let kind = match v["kind"].as_str() {
                Some("Service") => Kind::Service,
                Some("EndpointSlice") => Kind::EndpointSlice,
                _ => continue,
            };
            let (k, i) = item(kind, obj(v), &ctx);
            store.event(kind, Event::Apply(k, i));
        }
        let a = translate_parsed(&from_files, &ctx);
        let b = translate_parsed(store.objects(), &ctx);
        assert!(!a.frontends.is_empty());
        assert_eq!(a.frontends, b.frontends);
        assert_eq!(a.rejected, b.rejected);
        assert_eq!(m.rejected.len(), 1, "{:?}", m.rejected);
        assert_eq!(store.rejections().len(), 1, "{:?}", store.rejections());
        // Not ours: headless, ExternalName, another proxy's.
        for name in ["headless", "alias", "other-proxy"] {
            assert!(
                !a.frontends.values().any(|f| f.service.name == name),
                "{name} has no frontend"
            );
        }
    }

    #[test]
    fn a_slice_moved_to_another_service_leaves_the_first() {
        let mut s = ApiStore::new("x".into());
        let slice = |svc: &str| {
            obj(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "s1", "namespace": "default",
                              "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.210.0.5"]}],
                "ports": [{"port": 8080}]
            }))
        };
        let a = apply(&mut s, Kind::EndpointSlice, slice("a")).services;
        let t = apply(&mut s, Kind::EndpointSlice, slice("b"));
        assert_eq!(t.services.len(), 2, "both services touched");
        assert!(s.objects_for(&a).is_empty(), "gone from a");
        let b: BTreeSet<ServiceRef> = t.services.difference(&a).cloned().collect();
        assert_eq!(s.objects_for(&b).len(), 1);
        assert_eq!(s.index.len(), 1);
    }

    #[test]
    fn a_rejected_object_fixed_is_used() {
        let mut s = ApiStore::new("x".into());
        let bad = bad_svc("a", "10.96.0.1");
        let t = apply(&mut s, Kind::Service, bad);
        assert_eq!(t.services.len(), 1);
        assert_eq!(s.rejections().len(), 1);
        assert!(s.objects_for(&t.services).is_empty());
        let t = apply(&mut s, Kind::Service, svc("a", "10.96.0.1"));
        assert!(s.rejections().is_empty());
        assert_eq!(s.objects_for(&t.services).len(), 1);
    }

    #[test]
    fn slices_are_found_by_their_service() {
        let mut s = ApiStore::new("x".into());
        let slice = obj(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "a-x1", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": "a"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.210.0.5"]}],
            "ports": [{"port": 8080}]
        }));
        let t = apply(&mut s, Kind::EndpointSlice, slice);
        let r: BTreeSet<ServiceRef> = t.services.clone();
        assert_eq!(s.objects_for(&r).len(), 1);
        let del = s.event(Kind::EndpointSlice, Event::Delete("default/a-x1".into()));
        assert_eq!(del.services, r);
        assert!(s.objects_for(&r).is_empty());
        assert!(s.index.is_empty());
    }
}
