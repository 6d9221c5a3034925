//! Prometheus metrics (`/metrics`) and `/healthz` on a local address.
//!
//! Counters the daemon owns (API requests, register latency) live in the
//! registry; what the datapath counts (spoofed-source drops per endpoint,
//! socket operations per hook) is read from the maps at scrape time.

use crate::state::State;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub op: String,
    pub result: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub api_requests: Family<ApiLabels, Counter>,
    pub register_seconds: Histogram,
    pub restore_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub reconcile_runs: Counter,
    pub edge_checks: Counter,
    pub edge_repairs: Counter,
    pub edge_failures: Counter,
}

impl Metrics {
    pub fn new(
        state: Arc<Mutex<State>>,
        services: Option<Arc<crate::services::runner::Services>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let api_requests = Family::<ApiLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests by operation and result",
            api_requests.clone(),
        );
        // 100 µs .. ~0.8 s
        let register_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 14),
        );
        registry.register(
            "register_duration_seconds",
            "Time from a register request to the endpoint being in the datapath",
            register_seconds.clone(),
        );
        let restore_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "restore_duration_seconds",
            "Time from start to ready (datapath opened, records reconciled)",
            restore_seconds.clone(),
        );
        let reconcile_runs = Counter::default();
        registry.register(
            "reconcile_runs",
            "Periodic reconcile passes",
            reconcile_runs.clone(),
        );
        let edge_checks = Counter::default();
        registry.register(
            "edge_checks",
            "Pod edges checked by the edge passes",
            edge_checks.clone(),
        );
        let edge_repairs = Counter::default();
        registry.register(
            "edge_repairs",
            "Pod edge checks put back or replaced after something removed, detached, overtook or changed them",
            edge_repairs.clone(),
        );
        let edge_failures = Counter::default();
        registry.register(
            "edge_failures",
            "Pod edges a pass could not check or repair (see the log)",
            edge_failures.clone(),
        );
        registry.register_collector(Box::new(DatapathCollector { state, services }));
        Metrics {
            registry,
            api_requests,
            register_seconds,
            restore_seconds,
            reconcile_runs,
            edge_checks,
            edge_repairs,
            edge_failures,
        }
    }

    pub fn observe_edge_pass(&self, r: &crate::state::EdgePassReport) {
        self.edge_checks.inc_by(r.checked as u64);
        self.edge_repairs.inc_by(r.repaired as u64);
        self.edge_failures.inc_by(r.failed as u64);
    }

    pub fn count(&self, op: &str, ok: bool) {
        self.api_requests
            .get_or_create(&ApiLabels {
                op: op.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[derive(Debug)]
struct DatapathCollector {
    state: Arc<Mutex<State>>,
    services: Option<Arc<crate::services::runner::Services>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    container_id: String,
    ifname: String,
    namespace: String,
    pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeDropLabels {
    container_id: String,
    ifname: String,
    namespace: String,
    pod: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(s) = &self.services {
            let pass = s.last_pass();
            if let Some(src) = &pass.source {
                ConstGauge::new(i64::from(src.synced)).encode(encoder.encode_descriptor(
                    "source_synced",
                    "1 once the service source has been listed whole (nothing is programmed from it before)",
                    None,
                    MetricType::Gauge,
                )?)?;
                ConstGauge::new(i64::from(src.reachable)).encode(encoder.encode_descriptor(
                    "source_reachable",
                    "1 while the source answers (the API server its version, every few seconds) and no watch failed since it last yielded anything",
                    None,
                    MetricType::Gauge,
                )?)?;
                for (name, help, of) in [
                    (
                        "source_objects",
                        "Objects the source holds, per kind",
                        (|k: &crate::services::api::KindStatus| k.objects as u64)
                            as fn(&crate::services::api::KindStatus) -> u64,
                    ),
                    (
                        "source_rejected_objects",
                        "Objects of the source that are not valid ones of their kind",
                        |k| k.rejected as u64,
                    ),
                    (
                        "source_events_total",
                        "Adds, updates and deletes seen, per kind",
                        |k| k.events,
                    ),
                    (
                        "source_lists_total",
                        "Full lists done, per kind (relists after 410 included)",
                        |k| k.lists,
                    ),
                    (
                        "source_errors_total",
                        "Failed list or watch requests, per kind",
                        |k| k.errors,
                    ),
                ] {
                    let counter = name.ends_with("_total");
                    let kind = if counter {
                        MetricType::Counter
                    } else {
                        MetricType::Gauge
                    };
                    let mut m = encoder.encode_descriptor(
                        name.trim_end_matches("_total"),
                        help,
                        None,
                        kind,
                    )?;
                    for k in &src.kinds {
                        let labels = KindLabels {
                            kind: k.kind.clone(),
                        };
                        if counter {
                            ConstCounter::new(of(k)).encode(m.encode_family(&labels)?)?;
                        } else {
                            ConstGauge::new(of(k) as i64).encode(m.encode_family(&labels)?)?;
                        }
                    }
                }
            }
            let fill = pass.fill;
            for (name, help, of) in [
                (
                    "service_map_entries",
                    "Entries the service maps hold",
                    (|f: &crate::services::program::Fill| f.entries as i64)
                        as fn(&crate::services::program::Fill) -> i64,
                ),
                (
                    "service_map_capacity",
                    "Entries the service maps are sized for (max_frontends, max_endpoints_per_frontend)",
                    |f| i64::from(f.capacity),
                ),
            ] {
                let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for f in &fill {
                    ConstGauge::new(of(f)).encode(m.encode_family(&MapLabels {
                        map: f.map.clone(),
                    })?)?;
                }
            }
        }
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let views = st.views();
        ConstGauge::new(views.len() as i64).encode(encoder.encode_descriptor(
            "endpoints",
            "Endpoints registered in the datapath",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut m = encoder.encode_descriptor(
                "spoof_drops",
                "Packets a pod sent from an address that is not its own, dropped",
                None,
                MetricType::Counter,
            )?;
            for v in &views {
                let l = EndpointLabels {
                    container_id: v.container_id.clone(),
                    ifname: v.ifname.clone(),
                    namespace: v.namespace.clone().unwrap_or_default(),
                    pod: v.pod.clone().unwrap_or_default(),
                };
                ConstCounter::new(v.spoof_drops).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "edge_drops",
                "Frames a pod sent that its edge dropped, by reason (spoofed_source, vlan, protocol, arp, router, link_local, malformed)",
                None,
                MetricType::Counter,
            )?;
            for v in &views {
                for (reason, n) in v.edge.iter().flat_map(|e| e.drops.iter()) {
                    let l = EdgeDropLabels {
                        container_id: v.container_id.clone(),
                        ifname: v.ifname.clone(),
                        namespace: v.namespace.clone().unwrap_or_default(),
                        pod: v.pod.clone().unwrap_or_default(),
                        reason: reason.clone(),
                    };
                    ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
                }
            }
        }
        {
            let protecting = views
                .iter()
                .filter(|v| v.edge.as_ref().is_some_and(|e| e.protecting))
                .count();
            ConstGauge::new(protecting as i64).encode(encoder.encode_descriptor(
                "edges_protecting",
                "Endpoints whose edge check was found in place and passes their own traffic",
                None,
                MetricType::Gauge,
            )?)?;
        }
        {
            let mut m = encoder.encode_descriptor(
                "lb_connects",
                "Service connects and unconnected datagrams by outcome: translated, refused for want of a backend, refused because the maps disagree (should stay 0)",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in st.dp.lb_stats() {
                ConstCounter::new(n).encode(m.encode_family(&ResultLabels {
                    result: result.into(),
                })?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "sock_ops",
                "Socket operations of known endpoints seen by each cgroup hook",
                None,
                MetricType::Counter,
            )?;
            for (hook, n) in st.dp.sock_stats() {
                ConstCounter::new(n).encode(m.encode_family(&HookLabels { hook: hook.into() })?)?;
            }
        }
        let accel = st.dp.accel.as_ref().map(crate::views::AccelView::of);
        drop(st);
        if let Some(a) = accel.map(|(view, sockhash)| view.count(sockhash)) {
            ConstGauge::new(i64::from(a.enabled)).encode(encoder.encode_descriptor(
                "accel_enabled",
                "Same-node TCP acceleration switched on (1) or off (0)",
                None,
                MetricType::Gauge,
            )?)?;
            ConstGauge::new(a.sockets as i64).encode(encoder.encode_descriptor(
                "accel_sockets",
                "TCP sockets accelerated now (both ends of each connection)",
                None,
                MetricType::Gauge,
            )?)?;
            let mut m = encoder.encode_descriptor(
                "accel_events",
                "Same-node TCP acceleration: sockets added, skipped or refused; messages and bytes redirected or passed to TCP; fallbacks to TCP by reason",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in a.counters {
                ConstCounter::new(n).encode(m.encode_family(&ResultLabels { result })?)?;
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` and `GET /healthz` (200 once ready, 503 before).
/// Deliberately small: one request per connection, bounded read, timeout.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    loop {
        let Ok((mut s, peer)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    let n = s.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            debug!(%peer, %method, %path, "http");
            let (status, ctype, body) = match (method, path) {
                ("GET", "/metrics") => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    tokio::task::spawn_blocking(move || metrics.render())
                        .await
                        .unwrap_or_default(),
                ),
                ("GET", "/healthz") if ready.load(Ordering::Acquire) => {
                    ("200 OK", "text/plain", "ok\n".to_string())
                }
                ("GET", "/healthz") => (
                    "503 Service Unavailable",
                    "text/plain",
                    "restoring\n".to_string(),
                ),
                ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
