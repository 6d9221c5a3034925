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
/// Per-service mode of external traffic to remote backends: `snat`,
/// `dsr` or `hybrid` (DSR for TCP, SNAT for UDP); default the node's.
pub const EXTERNAL_MODE_ANNOTATION: &str = "sluice.dev/external-mode";
/// Kubernetes' default NodePort range.
pub const DEFAULT_NODEPORT_RANGE: (u16, u16) = (30000, 32767);
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Service with this label belongs to another proxy (kube-proxy and
/// Cilium leave it alone too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// This node's name, for `internalTrafficPolicy: Local`.
    pub node_name: Option<String>,
    /// The cluster's service ranges: the only addresses a frontend may
    /// have, and addresses no backend may have. Empty: no frontend at all.
    pub service_cidrs: Vec<ipnetwork::IpNetwork>,
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
    /// NodePorts outside this range are refused (`None`: the default,
    /// 30000-32767).
    pub nodeport_range: Option<(u16, u16)>,
    /// The ranges ExternalIPs may be in; one outside is ignored (the
    /// CVE-2020-8554 mitigation: a service cannot capture traffic to an
    /// address it does not own).
    pub external_ip_cidrs: Vec<ipnetwork::IpNetwork>,
    /// The node's external mode, for services without the annotation.
    pub external_mode: ExternalMode,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    pub frontends: BTreeMap<FrontendKey, Frontend>,
    pub rejected: Vec<Rejection>,
    /// Every `nodeName` the translated endpoints carry (to tell an operator
    /// whose `node_name` matches none of them).
    pub node_names: BTreeSet<String>,
    /// Services with `internalTrafficPolicy: Local`.
    pub local_policy_services: usize,
}

#[derive(Debug, PartialEq)]
struct ParsedPort {
    name: String,
    port: u16,
    protocol: Protocol,
    /// Served on every node address (type NodePort or LoadBalancer).
    node_port: Option<u16>,
}

#[derive(Debug, PartialEq)]
struct ParsedService {
    svc: ServiceRef,
    cluster_ips: Vec<IpAddr>,
    ports: Vec<ParsedPort>,
    affinity_timeout: Option<u32>,
    internal_local: bool,
    selection: Selection,
    /// ExternalIPs (in the allowed ranges) and LoadBalancer ingress IPs.
    external_ips: Vec<IpAddr>,
    external_local: bool,
    external_mode: ExternalMode,
    health_check_node_port: Option<u16>,
}

#[derive(Debug, PartialEq)]
struct ParsedEndpoint {
    ip: IpAddr,
    state: BackendState,
    node_name: Option<String>,
}

#[derive(Debug, PartialEq)]
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
pub(super) fn service_ref(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ServiceRef> {
    meta_ref(meta).ok()
}

/// The service an EndpointSlice belongs to, by its service-name label.
pub(super) fn slice_service(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ServiceRef> {
    Some(ServiceRef {
        namespace: namespace_of(meta),
        name: meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone(),
    })
}

fn ranges_text(cidrs: &[ipnetwork::IpNetwork]) -> String {
    if cidrs.is_empty() {
        return "none configured".into();
    }
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why an address cannot be a backend, as the API server refuses endpoint
/// addresses: loopback, link-local, unspecified, multicast, or in the
/// service ranges (a backend that is itself a service address would loop).
fn bad_backend(ip: IpAddr, ctx: &Context) -> Option<String> {
    let kind = match ip {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        IpAddr::V4(v4) if v4.is_link_local() => "link-local",
        IpAddr::V6(v6) if v6.is_unicast_link_local() => "link-local",
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => "IPv4-mapped",
        _ => {
            let range = ctx.service_cidrs.iter().find(|c| c.contains(ip))?;
            return Some(format!(
                "endpoint address {ip} is in the service range {range}; a backend cannot be a service address"
            ));
        }
    };
    Some(format!(
        "endpoint address {ip} is {kind}; a backend must be a pod or node address"
    ))
}

/// `None`: not a service the datapath handles (headless, ExternalName, or
/// labelled for another proxy).
/// Ports Sluice cannot serve (SCTP) are left out, each with a note; the
/// service's other ports are kept.
fn parse_service(
    s: &Service,
    ctx: &Context,
    notes: &mut Vec<String>,
) -> Result<Option<ParsedService>, String> {
    let svc = meta_ref(&s.metadata)?;
    let Some(spec) = &s.spec else {
        return Err("spec is missing".into());
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let labels = s.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
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
        if !ctx.service_cidrs.iter().any(|c| c.contains(ip)) {
            return Err(format!(
                "clusterIP {ip} is outside the service ranges ({}); a frontend there could \
                 capture traffic that is not a service's. If the cluster's service CIDRs \
                 differ, set service_cidrs in sluiced.toml",
                ranges_text(&ctx.service_cidrs)
            ));
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
        if p.protocol.as_deref() == Some("SCTP") {
            notes.push(format!(
                "port {port}/SCTP left out: Sluice's socket load balancing serves TCP and UDP; the service's other ports are programmed"
            ));
            continue;
        }
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
        let exposed = matches!(
            spec.type_.as_deref(),
            Some("NodePort") | Some("LoadBalancer")
        );
        let node_port = match p.node_port {
            Some(n) if exposed => {
                let n = port_number("nodePort", n)?;
                let (lo, hi) = ctx.nodeport_range.unwrap_or(DEFAULT_NODEPORT_RANGE);
                if (lo..=hi).contains(&n) {
                    Some(n)
                } else {
                    notes.push(format!(
                        "nodePort {n} of port {port}/{protocol:?} is outside the NodePort range                          {lo}-{hi}: not served on the nodes (set nodeport_range in sluiced.toml                          if the cluster's range differs)"
                    ));
                    None
                }
            }
            _ => None,
        };
        ports.push(ParsedPort {
            name,
            port,
            protocol,
            node_port,
        });
    }
    if let Some((a, b)) = ports.iter().enumerate().find_map(|(i, a)| {
        ports[i + 1..]
            .iter()
            .find(|b| {
                a.node_port.is_some() && a.node_port == b.node_port && a.protocol == b.protocol
            })
            .map(|b| (a, b))
    }) {
        return Err(format!(
            "nodePort {} is given to ports {} and {}",
            a.node_port.unwrap_or(0),
            a.port,
            b.port
        ));
    }
    if ports.is_empty() {
        return Err(
            "no port Sluice can serve: socket load balancing serves TCP and UDP, not SCTP".into(),
        );
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
    let mut external_ips = Vec::new();
    for raw in spec.external_ips.as_deref().unwrap_or_default() {
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| format!("externalIP {raw:?} is not an IP address"))?;
        if ctx.external_ip_cidrs.iter().any(|c| c.contains(ip)) {
            external_ips.push(ip);
        } else {
            notes.push(format!(
                "externalIP {ip} is outside external_ip_cidrs ({}): ignored, so a service cannot capture traffic to an address it does not own (CVE-2020-8554); allow the range in sluiced.toml if this address is the service's",
                ranges_text(&ctx.external_ip_cidrs)
            ));
        }
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for i in ingress.map(Vec::as_slice).unwrap_or_default() {
            if let Some(raw) = &i.ip {
                // A bad entry is left out alone: the service's other
                // frontends (its ClusterIP among them) stay.
                match raw.parse::<IpAddr>() {
                    Ok(ip) if !external_ips.contains(&ip) => external_ips.push(ip),
                    Ok(_) => {}
                    Err(_) => notes.push(format!(
                        "status.loadBalancer.ingress ip {raw:?} is not an IP address: left out"
                    )),
                }
            }
        }
    }
    for ip in &external_ips {
        if ctx.service_cidrs.iter().any(|c| c.contains(*ip)) || ip.is_unspecified() {
            return Err(format!(
                "external address {ip} is a cluster IP range address or unspecified"
            ));
        }
    }
    let external_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            return Err(format!(
                "unknown externalTrafficPolicy {other:?} (Cluster or Local)"
            ))
        }
    };
    let external_mode = match s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXTERNAL_MODE_ANNOTATION))
    {
        None => ctx.external_mode,
        Some(m) => ExternalMode::parse(m)
            .map_err(|e| format!("annotation {EXTERNAL_MODE_ANNOTATION}: {e}"))?,
    };
    let health_check_node_port = match spec.health_check_node_port {
        Some(n) if external_local && spec.type_.as_deref() == Some("LoadBalancer") => {
            let n = port_number("healthCheckNodePort", n)?;
            if ports.iter().any(|p| p.node_port == Some(n)) {
                return Err(format!("healthCheckNodePort {n} is also a nodePort"));
            }
            Some(n)
        }
        _ => None,
    };
    Ok(Some(ParsedService {
        svc,
        cluster_ips,
        ports,
        affinity_timeout,
        internal_local,
        selection,
        external_ips,
        external_local,
        external_mode,
        health_check_node_port,
    }))
}

/// `None`: an FQDN slice, which the datapath has no use for. Endpoint
/// addresses no backend may have are left out, each with a note.
fn parse_slice(
    s: &EndpointSlice,
    ctx: &Context,
    notes: &mut Vec<String>,
) -> Result<Option<(ServiceRef, ParsedSlice)>, String> {
    meta_ref(&s.metadata)?;
    let svc = slice_service(&s.metadata)
        .ok_or_else(|| format!("label {SERVICE_NAME_LABEL} is missing"))?;
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
        if p.protocol.as_deref() == Some("SCTP") {
            // The service's SCTP port is left out (and said so there).
            continue;
        }
        ports.push((
            p.name.clone().unwrap_or_default(),
            port_number("port", n)?,
            Protocol::parse(p.protocol.as_deref())?,
        ));
    }
    let mut endpoints = Vec::new();
    for e in &s.endpoints {
        let c = e.conditions.clone().unwrap_or_default();
        // Unset conditions read as kube-proxy reads them: ready and
        // serving unless said otherwise, terminating only if said.
        let ready = c.ready.unwrap_or(true);
        let serving = c.serving.unwrap_or(true);
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
            if let Some(why) = bad_backend(ip, ctx) {
                notes.push(format!("{why}; left out"));
                continue;
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

/// Every frontend of a service: its cluster IPs' ports, its NodePorts
/// (one per family it has a cluster IP of, the address unspecified) and
/// its external addresses' ports.
fn frontends_of(p: &ParsedService) -> Vec<(FrontendKey, FrontendKind, &ParsedPort)> {
    let mut out = Vec::new();
    for ip in &p.cluster_ips {
        for port in &p.ports {
            out.push((
                FrontendKey {
                    addr: SocketAddr::new(*ip, port.port),
                    protocol: port.protocol,
                },
                FrontendKind::ClusterIp,
                port,
            ));
            if let Some(np) = port.node_port {
                let any: IpAddr = if ip.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                out.push((
                    FrontendKey {
                        addr: SocketAddr::new(any, np),
                        protocol: port.protocol,
                    },
                    FrontendKind::NodePort,
                    port,
                ));
            }
        }
    }
    // An external address of a family the service has no cluster IP of
    // has no backends of that family either: left out.
    for ip in p
        .external_ips
        .iter()
        .filter(|ip| p.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()))
    {
        for port in &p.ports {
            out.push((
                FrontendKey {
                    addr: SocketAddr::new(*ip, port.port),
                    protocol: port.protocol,
                },
                FrontendKind::External,
                port,
            ));
        }
    }
    out
}

/// One Service or EndpointSlice reduced to what the translation reads of
/// it: parsed once, when its file is read, and kept instead of the object
/// (a daemon with 10,000 services keeps what the datapath and the next
/// diff need, not every field of every object). Parsing reads only the
/// context's service ranges, which do not change while the daemon runs.
#[derive(Debug, PartialEq)]
pub struct ParsedObject {
    /// (namespace, name) as the object has them: the order objects are
    /// taken in, so the first definition of a service wins whatever order
    /// they come in.
    order: (Option<String>, Option<String>),
    /// The service it defines (a Service) or belongs to (a slice).
    service: Option<ServiceRef>,
    notes: Vec<String>,
    kind: ParsedKind,
}

#[derive(Debug, PartialEq)]
enum ParsedKind {
    Service(Result<Option<ParsedService>, String>),
    Slice(Result<Option<(ServiceRef, ParsedSlice)>, String>),
}

impl ParsedObject {
    pub fn service(s: &Service, ctx: &Context) -> Self {
        let mut notes = Vec::new();
        let parsed = parse_service(s, ctx, &mut notes);
        // A service refused whole says why once, not port by port.
        if parsed.is_err() {
            notes.clear();
        }
        ParsedObject {
            order: (s.metadata.namespace.clone(), s.metadata.name.clone()),
            service: service_ref(&s.metadata),
            notes,
            kind: ParsedKind::Service(parsed),
        }
    }

    pub fn slice(s: &EndpointSlice, ctx: &Context) -> Self {
        let mut notes = Vec::new();
        let parsed = parse_slice(s, ctx, &mut notes);
        ParsedObject {
            order: (s.metadata.namespace.clone(), s.metadata.name.clone()),
            service: slice_service(&s.metadata),
            notes,
            kind: ParsedKind::Slice(parsed),
        }
    }

    /// The service the object defines or belongs to.
    pub fn service_ref(&self) -> Option<&ServiceRef> {
        self.service.as_ref()
    }

    pub fn is_service(&self) -> bool {
        matches!(self.kind, ParsedKind::Service(_))
    }

    fn label(&self) -> String {
        format!(
            "{} {}/{}",
            if self.is_service() {
                "Service"
            } else {
                "EndpointSlice"
            },
            self.order.0.as_deref().unwrap_or("default"),
            self.order.1.as_deref().unwrap_or("?")
        )
    }
}

/// Translates the whole set. Deterministic: the same objects in any order
/// give the same frontends and the same rejections.
pub fn translate<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ctx: &Context,
) -> Translation {
    let parsed: Vec<ParsedObject> = services
        .into_iter()
        .map(|s| ParsedObject::service(s, ctx))
        .chain(slices.into_iter().map(|s| ParsedObject::slice(s, ctx)))
        .collect();
    translate_parsed(&parsed, ctx)
}

/// [`translate`] over objects parsed beforehand (see [`ParsedObject`]).
pub fn translate_parsed<'a>(
    objects: impl IntoIterator<Item = &'a ParsedObject>,
    ctx: &Context,
) -> Translation {
    let mut out = Translation::default();
    let mut reject = |object: String, reason: String, service: Option<ServiceRef>| {
        out.rejected.push(Rejection {
            object,
            reason,
            service,
        })
    };

    let (mut services, mut slices): (Vec<&ParsedObject>, Vec<&ParsedObject>) =
        objects.into_iter().partition(|o| o.is_service());
    services.sort_by(|a, b| a.order.cmp(&b.order));
    slices.sort_by(|a, b| a.order.cmp(&b.order));

    let mut parsed: BTreeMap<&ServiceRef, &ParsedService> = BTreeMap::new();
    let mut seen: BTreeSet<&ServiceRef> = BTreeSet::new();
    for o in services {
        let ParsedKind::Service(parsed_one) = &o.kind else {
            continue;
        };
        let label = o.label();
        for n in &o.notes {
            reject(label.clone(), n.clone(), o.service.clone());
        }
        match parsed_one {
            Ok(Some(p)) => {
                if !seen.insert(&p.svc) {
                    reject(
                        label,
                        "defined twice; the first definition is kept".into(),
                        Some(p.svc.clone()),
                    );
                    continue;
                }
                parsed.insert(&p.svc, p);
            }
            Ok(None) => {
                if let Some(r) = &o.service {
                    seen.insert(r);
                }
            }
            Err(reason) => {
                // Its slices are not orphans: they just have no use now.
                if let Some(r) = &o.service {
                    seen.insert(r);
                }
                reject(label, reason.clone(), o.service.clone())
            }
        }
    }

    let mut by_service: HashMap<&ServiceRef, Vec<&ParsedSlice>> = HashMap::new();
    for o in slices {
        let ParsedKind::Slice(parsed_one) = &o.kind else {
            continue;
        };
        let label = o.label();
        for n in &o.notes {
            reject(label.clone(), n.clone(), o.service.clone());
        }
        match parsed_one {
            Ok(Some((svc, slice))) => {
                if !seen.contains(svc) {
                    reject(
                        label,
                        format!("its service {svc} does not exist"),
                        Some(svc.clone()),
                    );
                    continue;
                }
                by_service.entry(svc).or_default().push(slice);
            }
            Ok(None) => {}
            Err(reason) => reject(label, reason.clone(), o.service.clone()),
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
    let mut order: Vec<(&ServiceRef, &ParsedService)> =
        parsed.iter().map(|(s, p)| (*s, *p)).collect();
    order.sort_by_key(|(svc, p)| !holds(svc, p));
    for (svc, p) in order {
        let placed = frontends_of(p);
        let keys: Vec<FrontendKey> = placed.iter().map(|(k, _, _)| *k).collect();
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
        out.node_names.extend(
            slices
                .iter()
                .flat_map(|sl| &sl.endpoints)
                .filter_map(|e| e.node_name.clone()),
        );
        out.local_policy_services += usize::from(p.internal_local);
        let svc = svc.clone();
        for (key, kind, port) in placed {
            let ip = key.addr.ip();
            {
                let excluded = |local: bool| match kind {
                    FrontendKind::ClusterIp => p.internal_local && !local,
                    _ => p.external_local && !local,
                };
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
                                excluded_by_policy: excluded(local),
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
                out.frontends.insert(
                    key,
                    Frontend {
                        key,
                        service: svc.clone(),
                        port_name: port.name.clone(),
                        affinity_timeout: p.affinity_timeout,
                        internal_local: p.internal_local && kind == FrontendKind::ClusterIp,
                        selection: p.selection,
                        backends: backends.into_values().collect(),
                        kind,
                        external_local: p.external_local && kind != FrontendKind::ClusterIp,
                        external_mode: p.external_mode,
                        health_check_node_port: p.health_check_node_port,
                    },
                );
            }
        }
    }
    out.rejected.sort();
    out
}
