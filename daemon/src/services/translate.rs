//! The one translation from Kubernetes objects (Service, EndpointSlice) to
//! datapath frontends. Pure: the manifest directory source and the
//! Kubernetes API source feed it the same objects and get the same answer.
//!
//! An object that breaks a rule is rejected with its reason and left out;
//! every other object is still translated.

use super::model::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

/// Per-service backend selection: `random` (default) or `maglev`.
pub const LB_ANNOTATION: &str = "sluice.dev/load-balancing";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// Kubernetes' bound on the affinity timeout.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// This node's name, for `internalTrafficPolicy: Local`.
    pub node_name: Option<String>,
    /// Who held each frontend in the previous translation. When two
    /// services claim one frontend (manifests can; the API server cannot),
    /// the holder keeps it, so adding a conflicting object never takes
    /// away what is programmed; otherwise the first by namespace/name wins.
    pub previous_owners: std::sync::Arc<BTreeMap<FrontendKey, ServiceRef>>,
    /// The objects given are only some services (with all their slices):
    /// frontends held by other services stay theirs.
    pub partial: bool,
    /// In a partial translation, the services it covers (given or gone):
    /// a frontend held by one of them is free to take.
    pub scope: BTreeSet<ServiceRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug)]
struct ParsedPort {
    name: String,
    port: u16,
    protocol: Protocol,
}

#[derive(Debug)]
struct ParsedService {
    svc: ServiceRef,
    cluster_ips: Vec<IpAddr>,
    ports: Vec<ParsedPort>,
    affinity_timeout: Option<u32>,
    internal_local: bool,
    selection: Selection,
}

#[derive(Debug)]
struct ParsedEndpoint {
    ip: IpAddr,
    state: BackendState,
    node_name: Option<String>,
}

#[derive(Debug)]
struct ParsedSlice {
    ipv4: bool,
    /// (port name, port, protocol)
    ports: Vec<(String, u16, Protocol)>,
    endpoints: Vec<ParsedEndpoint>,
}

fn port_number(what: &str, p: i32) -> Result<u16, String> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{what} {p} is out of range 1-65535"))
}

fn meta_ref(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<ServiceRef, String> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("metadata.name is missing")?;
    Ok(ServiceRef {
        namespace: namespace_of(meta),
        name,
    })
}

/// The namespace of an object; a manifest without one means "default".
fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// The service a Service object defines, if it is named.
pub(super) fn service_ref(s: &Service) -> Option<ServiceRef> {
    meta_ref(&s.metadata).ok()
}

/// The service an EndpointSlice belongs to, by its service-name label.
pub(super) fn slice_service(s: &EndpointSlice) -> Option<ServiceRef> {
    Some(ServiceRef {
        namespace: namespace_of(&s.metadata),
        name: s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone(),
    })
}

/// `None`: not a service the datapath handles (headless, ExternalName).
fn parse_service(s: &Service) -> Result<Option<ParsedService>, String> {
    let svc = meta_ref(&s.metadata)?;
    let Some(spec) = &s.spec else {
        return Err("spec is missing".into());
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let raw_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => return Err("no clusterIP or clusterIPs".into()),
    };
    if raw_ips.iter().any(|ip| ip == "None") {
        return Ok(None);
    }
    let mut cluster_ips = Vec::new();
    for ip in &raw_ips {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("clusterIP {ip:?} is not an IP address"))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("clusterIP {ip} cannot be a service address"));
        }
        if cluster_ips
            .iter()
            .any(|c: &IpAddr| c.is_ipv4() == ip.is_ipv4())
        {
            return Err(format!(
                "clusterIPs {raw_ips:?} hold two addresses of one family"
            ));
        }
        cluster_ips.push(ip);
    }
    let spec_ports = spec.ports.as_deref().unwrap_or_default();
    if spec_ports.is_empty() {
        return Err("no ports".into());
    }
    let mut ports: Vec<ParsedPort> = Vec::new();
    for p in spec_ports {
        let name = p.name.clone().unwrap_or_default();
        let port = port_number("port", p.port)?;
        let protocol = Protocol::parse(p.protocol.as_deref())?;
        if spec_ports.len() > 1 && name.is_empty() {
            return Err(format!(
                "port {port} has no name; every port must be named when a service has several"
            ));
        }
        if ports
            .iter()
            .any(|q| q.port == port && q.protocol == protocol)
        {
            return Err(format!("port {port}/{protocol:?} is listed twice"));
        }
        if ports.iter().any(|q| q.name == name) {
            return Err(format!("port name {name:?} is used twice"));
        }
        ports.push(ParsedPort {
            name,
            port,
            protocol,
        });
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT as i32);
            if t < 1 || t as u32 > MAX_AFFINITY_TIMEOUT {
                return Err(format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range 1-{MAX_AFFINITY_TIMEOUT}"
                ));
            }
            Some(t as u32)
        }
        Some(other) => {
            return Err(format!(
                "unknown sessionAffinity {other:?} (None or ClientIP)"
            ))
        }
    };
    let internal_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(format!(
                "unknown internalTrafficPolicy {other:?} (Cluster or Local)"
            ))
        }
    };
    let selection = match s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("random") => Selection::Random,
        Some("maglev") => Selection::Maglev,
        Some(other) => {
            return Err(format!(
                "annotation {LB_ANNOTATION}: {other:?} is not random or maglev"
            ))
        }
    };
    Ok(Some(ParsedService {
        svc,
        cluster_ips,
        ports,
        affinity_timeout,
        internal_local,
        selection,
    }))
}

/// `None`: an FQDN slice, which the datapath has no use for.
fn parse_slice(s: &EndpointSlice) -> Result<Option<(ServiceRef, ParsedSlice)>, String> {
    meta_ref(&s.metadata)?;
    let svc = slice_service(s).ok_or_else(|| format!("label {SERVICE_NAME_LABEL} is missing"))?;
    let ipv4 = match s.address_type.as_str() {
        "IPv4" => true,
        "IPv6" => false,
        "FQDN" => return Ok(None),
        other => return Err(format!("unknown addressType {other:?}")),
    };
    let mut ports = Vec::new();
    for p in s.ports.as_deref().unwrap_or_default() {
        let Some(n) = p.port else {
            // An unset port means "all ports"; nothing to translate to.
            continue;
        };
        ports.push((
            p.name.clone().unwrap_or_default(),
            port_number("port", n)?,
            Protocol::parse(p.protocol.as_deref())?,
        ));
    }
    let mut endpoints = Vec::new();
    for e in &s.endpoints {
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        let serving = c.serving.unwrap_or(ready);
        let terminating = c.terminating.unwrap_or(false);
        let state = match (terminating, serving, ready) {
            (true, true, _) => BackendState::ServingTerminating,
            (true, false, _) => BackendState::Terminating,
            (false, _, true) => BackendState::Ready,
            (false, _, false) => BackendState::NotReady,
        };
        for a in &e.addresses {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| format!("endpoint address {a:?} is not an IP address"))?;
            if ip.is_ipv4() != ipv4 {
                return Err(format!(
                    "endpoint address {ip} is not of addressType {}",
                    s.address_type
                ));
            }
            endpoints.push(ParsedEndpoint {
                ip,
                state,
                node_name: e.node_name.clone(),
            });
        }
    }
    Ok(Some((
        svc,
        ParsedSlice {
            ipv4,
            ports,
            endpoints,
        },
    )))
}

/// Translates the whole set. Deterministic: the same objects in any order
/// give the same frontends and the same rejections.
pub fn translate(services: &[Service], slices: &[EndpointSlice], ctx: &Context) -> Translation {
    let mut out = Translation::default();
    let mut reject = |object: String, reason: String, service: Option<ServiceRef>| {
        out.rejected.push(Rejection {
            object,
            reason,
            service,
        })
    };

    let mut parsed: BTreeMap<ServiceRef, ParsedService> = BTreeMap::new();
    let mut seen: BTreeSet<ServiceRef> = BTreeSet::new();
    let mut ordered: Vec<&Service> = services.iter().collect();
    ordered.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for s in ordered {
        let label = format!(
            "Service {}/{}",
            s.metadata.namespace.as_deref().unwrap_or("default"),
            s.metadata.name.as_deref().unwrap_or("?")
        );
        match parse_service(s) {
            Ok(Some(p)) => {
                if !seen.insert(p.svc.clone()) {
                    let r = p.svc.clone();
                    reject(
                        label,
                        "defined twice; the first definition is kept".into(),
                        Some(r),
                    );
                    continue;
                }
                parsed.insert(p.svc.clone(), p);
            }
            Ok(None) => {
                if let Some(r) = service_ref(s) {
                    seen.insert(r);
                }
            }
            Err(reason) => reject(label, reason, service_ref(s)),
        }
    }

    let mut by_service: HashMap<ServiceRef, Vec<ParsedSlice>> = HashMap::new();
    let mut ordered: Vec<&EndpointSlice> = slices.iter().collect();
    ordered.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for s in ordered {
        let label = format!(
            "EndpointSlice {}/{}",
            s.metadata.namespace.as_deref().unwrap_or("default"),
            s.metadata.name.as_deref().unwrap_or("?")
        );
        match parse_slice(s) {
            Ok(Some((svc, slice))) => {
                if !seen.contains(&svc) {
                    reject(
                        label,
                        format!("its service {svc} does not exist"),
                        Some(svc),
                    );
                    continue;
                }
                by_service.entry(svc).or_default().push(slice);
            }
            Ok(None) => {}
            Err(reason) => reject(label, reason, slice_service(s)),
        }
    }

    let holds = |svc: &ServiceRef, p: &ParsedService| {
        p.cluster_ips.iter().any(|ip| {
            p.ports.iter().any(|port| {
                let k = FrontendKey {
                    addr: SocketAddr::new(*ip, port.port),
                    protocol: port.protocol,
                };
                ctx.previous_owners.get(&k) == Some(svc)
            })
        })
    };
    let mut order: Vec<(&ServiceRef, &ParsedService)> = parsed.iter().collect();
    order.sort_by_key(|(svc, p)| !holds(svc, p));
    for (svc, p) in order {
        let keys: Vec<FrontendKey> = p
            .cluster_ips
            .iter()
            .flat_map(|ip| {
                p.ports.iter().map(move |port| FrontendKey {
                    addr: SocketAddr::new(*ip, port.port),
                    protocol: port.protocol,
                })
            })
            .collect();
        // In a partial translation, a frontend held by a service outside
        // the subset is taken too.
        let taken_outside = |k: &FrontendKey| -> Option<ServiceRef> {
            let o = ctx.previous_owners.get(k)?;
            (ctx.partial && o != svc && !ctx.scope.contains(o)).then(|| o.clone())
        };
        if let Some((k, owner)) = keys.iter().find_map(|k| {
            out.frontends
                .get(k)
                .map(|f| (k, f.service.clone()))
                .or_else(|| taken_outside(k).map(|o| (k, o)))
        }) {
            out.rejected.push(Rejection {
                object: format!("Service {svc}"),
                reason: format!("frontend {k} already belongs to service {owner}"),
                service: Some(svc.clone()),
            });
            continue;
        }
        let slices = by_service.get(svc).map(Vec::as_slice).unwrap_or_default();
        let svc = svc.clone();
        for ip in &p.cluster_ips {
            for port in &p.ports {
                let mut backends: BTreeMap<SocketAddr, Backend> = BTreeMap::new();
                for sl in slices.iter().filter(|sl| sl.ipv4 == ip.is_ipv4()) {
                    for (name, number, proto) in &sl.ports {
                        if *name != port.name || *proto != port.protocol {
                            continue;
                        }
                        for e in &sl.endpoints {
                            let local = ctx.node_name.is_some() && e.node_name == ctx.node_name;
                            let b = Backend {
                                addr: SocketAddr::new(e.ip, *number),
                                state: e.state,
                                local,
                                excluded_by_policy: p.internal_local && !local,
                            };
                            // The same address in two slices (a slice being
                            // replaced): keep its best state.
                            backends
                                .entry(b.addr)
                                .and_modify(|old| {
                                    if b.state < old.state {
                                        *old = b.clone();
                                    }
                                })
                                .or_insert(b);
                        }
                    }
                }
                let key = FrontendKey {
                    addr: SocketAddr::new(*ip, port.port),
                    protocol: port.protocol,
                };
                out.frontends.insert(
                    key,
                    Frontend {
                        key,
                        service: svc.clone(),
                        port_name: port.name.clone(),
                        affinity_timeout: p.affinity_timeout,
                        internal_local: p.internal_local,
                        selection: p.selection,
                        backends: backends.into_values().collect(),
                    },
                );
            }
        }
    }
    out.rejected.sort();
    out
}
