//! The CNI commands. Each parses and validates everything first, then acts;
//! ADD undoes every step it made when a later one fails, DEL and GC carry on
//! past failures and report them all.

use crate::config::{PluginConf, TcAttach, DEFAULT_MTU};
use crate::edge::{self, EdgeError, EdgeMaps, EdgeProg};
use crate::ipam::{Ipam, Lease};
use crate::naming;
use crate::netlink::{
    address_op, format_mac, neighbour_op, pod_route_op, proxy_neighbour_op, route_op, set_up_op,
    unreachable_op, Netlink, NlError,
};
use crate::netns::{Netns, NetnsError};
use ipnetwork::IpNetwork;
use netlink_packet_route::route::RouteScope;
use sluice_common::api::{self, Request};
use sluice_common::cni::{
    codes, CniError, CniResult, CniVersion, Command, Env, Interface, IpConfig, NetConf,
    Request as CniRequest, Route,
};
use sluice_common::endpoint::{
    annotations_from_runtime_config, EdgeMode, EndpointRecord, PodIdentity, RECORD_VERSION,
};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Everything a command needs, parsed and validated.
#[derive(Debug)]
pub struct Invocation {
    pub env: Env,
    pub conf: NetConf,
    pub version: CniVersion,
    pub plugin: PluginConf,
    pub stdin: Vec<u8>,
}

/// Runs one command (VERSION is answered by the shared dispatcher); the
/// JSON returned is printed to stdout.
pub fn handle(req: CniRequest<'_>) -> Result<Option<serde_json::Value>, CniError> {
    req.conf.require_name()?;
    let plugin = PluginConf::from_netconf(&req.conf)?;
    let inv = Invocation {
        env: req.env,
        conf: req.conf,
        version: req.version,
        plugin,
        stdin: req.stdin.to_vec(),
    };
    match inv.env.command {
        Command::Add => add(&inv).map(Some),
        Command::Del => del(&inv).map(|_| None),
        Command::Check => check(&inv).map(|_| None),
        Command::Status => status(&inv).map(|_| None),
        Command::Gc => gc(&inv).map(|_| None),
        Command::Version => unreachable!("dispatch answers VERSION"),
    }
}

fn nl_err(e: NlError) -> CniError {
    let hint = match e.errno() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "the plugin needs CAP_NET_ADMIN in the node's netns; run it as root"
        }
        Some(libc::EEXIST) => "a conflicting interface or route already exists",
        _ => "see the kernel's error above; `ip link`, `ip addr` and `ip route` show the state",
    };
    CniError::new(codes::NETLINK_FAILURE, e.to_string(), hint)
}

fn netns_err(e: NetnsError) -> CniError {
    match e {
        NetnsError::NotFound { .. } => CniError::new(
            codes::UNKNOWN_CONTAINER,
            e.to_string(),
            "the sandbox is gone or CNI_NETNS is wrong; the runtime must pass the pod's netns path",
        ),
        NetnsError::NotNetns { .. } => CniError::env(
            e.to_string(),
            "CNI_NETNS must name a network namespace file such as /var/run/netns/<name> \
             or /proc/<pid>/ns/net",
        ),
        _ => CniError::new(codes::IO_FAILURE, e.to_string(), ""),
    }
}

fn record_err(e: sluice_common::endpoint::RecordError) -> CniError {
    CniError::new(
        codes::IO_FAILURE,
        e.to_string(),
        "make stateDir writable by the plugin (root) or set \"stateDir\" in the network config",
    )
}

fn edge_err(e: EdgeError) -> CniError {
    let hint = match e {
        EdgeError::Netlink(n) => return nl_err(n).context("protecting the pod's edge"),
        EdgeError::MapLayout { .. } => {
            "upgrade the plugin and sluiced together (the DaemonSet installs both)"
        }
        EdgeError::Sysctl { .. } => {
            "the plugin must run as root in the node's netns with /proc/sys writable"
        }
        _ => "the plugin needs CAP_BPF and CAP_NET_ADMIN, and pinPath must be on a bpf filesystem",
    };
    CniError::new(
        codes::NETLINK_FAILURE,
        format!("protecting the pod's edge: {e}"),
        hint,
    )
}

/// The address a pod holds: the lease's IP as a host route.
fn host_prefix(ip: IpAddr) -> IpNetwork {
    match ip {
        IpAddr::V4(v4) => IpNetwork::new(IpAddr::V4(v4), 32).expect("/32 is valid"),
        IpAddr::V6(v6) => IpNetwork::new(IpAddr::V6(v6), 128).expect("/128 is valid"),
    }
}

fn default_dst(v6: bool) -> IpNetwork {
    if v6 {
        IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).expect("::/0")
    } else {
        IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).expect("0.0.0.0/0")
    }
}

/// What ADD has done so far, undone in reverse on failure.
struct AddUndo<'a> {
    inv: &'a Invocation,
    ipam: Option<&'a mut Ipam>,
    host_link: Option<String>,
    /// Map entries written for (host ifindex, addresses, netns cookie).
    edge_entries: Option<(EdgeMaps, u32, Vec<IpAddr>, u64)>,
    /// A tcx link pinned for this host ifindex.
    tc_pin: Option<u32>,
    record: bool,
}

impl AddUndo<'_> {
    fn rollback(mut self) {
        let (cid, ifname) = (&self.inv.env.container_id, &self.inv.env.ifname);
        if self.record {
            let _ = EndpointRecord::remove(&self.inv.plugin.state_dir, cid, ifname);
        }
        if let Some((maps, ifindex, addrs, cookie)) = self.edge_entries.take() {
            let _ = maps.remove(ifindex, &addrs, Some(cookie));
        }
        if let Some(ifindex) = self.tc_pin.take() {
            let _ = edge::unpin_tc_link(&self.inv.plugin.pins(), ifindex);
        }
        if let Some(name) = self.host_link.take() {
            if let Ok(mut nl) = Netlink::open() {
                let _ = nl.delete_link(&name);
            }
        }
        if let Some(ipam) = self.ipam.take() {
            if let Err(e) = ipam.del(&self.inv.env) {
                eprintln!("sluice: undoing ADD: releasing addresses failed: {e}");
            }
        }
    }
}

pub fn add(inv: &Invocation) -> Result<serde_json::Value, CniError> {
    let env = &inv.env;
    let netns_path = env.netns.as_ref().expect("validated: ADD has a netns");
    let pod_ns = Netns::open(netns_path).map_err(netns_err)?;
    let mut ipam = Ipam::from_netconf(inv)?;
    let host_name = naming::host_ifname(&env.container_id, &env.ifname);
    let mut nl = Netlink::open().map_err(nl_err)?;
    // The pod's side, through a socket bound to its netns, which also names
    // the netns by its cookie (the key of its endpoint entry).
    let mut pod_nl = Netlink::open_in(&pod_ns).map_err(nl_err)?;
    let cookie = pod_nl.netns_cookie().map_err(nl_err)?;
    if nl.netns_cookie().map_err(nl_err)? == cookie {
        return Err(CniError::env(
            format!("CNI_NETNS {} is the node's own netns", netns_path.display()),
            "the runtime must pass the pod's network namespace, not the host's",
        ));
    }
    // An attachment added twice is refused by the IPAM (it holds a
    // reservation), before anything is created.
    let (leases, ipam_routes, dns) = ipam.add(env)?;
    let mut undo = AddUndo {
        inv,
        ipam: Some(&mut ipam),
        host_link: None,
        edge_entries: None,
        tc_pin: None,
        record: false,
    };
    match add_steps(
        inv,
        &pod_ns,
        (&mut nl, &mut pod_nl, cookie),
        &host_name,
        &leases,
        &mut undo,
    ) {
        Ok(record) => {
            // Committed: nothing below may undo the ADD.
            undo.ipam = None;
            undo.edge_entries = None;
            undo.tc_pin = None;
            drop(undo);
            tell_daemon(
                inv,
                Request::Register {
                    endpoint: Box::new(record.clone()),
                },
            );
            let mut result = build_result(&record, &leases);
            // Routes and DNS the IPAM asked for are passed on; the pod's own
            // default routes are already in the result.
            for r in ipam_routes {
                if !result.routes.iter().any(|x| x.dst == r.dst) {
                    result.routes.push(r);
                }
            }
            if result.dns.is_empty() {
                result.dns = dns;
            }
            Ok(result.to_json(inv.version))
        }
        Err(e) => {
            undo.rollback();
            Err(e)
        }
    }
}

/// The node's and the pod's netlink sockets, and the pod's netns cookie.
type Sockets<'a> = (&'a mut Netlink, &'a mut Netlink, u64);

fn add_steps(
    inv: &Invocation,
    pod_ns: &Netns,
    (nl, pod_nl, cookie): Sockets<'_>,
    host_name: &str,
    leases: &[Lease],
    undo: &mut AddUndo<'_>,
) -> Result<EndpointRecord, CniError> {
    let env = &inv.env;
    for l in leases {
        if l.gateway.is_none() {
            return Err(CniError::config(
                format!("IPAM gave {} without a gateway", l.address),
                "routed pods need a gateway per range; set \"gateway\" in the ipam ranges",
            ));
        }
    }
    let node_ops = ensure_node_ready(leases)?;
    let mtu = match inv
        .plugin
        .mtu
        .or_else(|| node_file_mtu(&inv.plugin.state_dir))
    {
        Some(m) => m,
        None => nl
            .default_route_mtu()
            .map_err(nl_err)?
            .unwrap_or(DEFAULT_MTU),
    };
    let (host_mac, pod_mac) = naming::macs(&env.container_id, &env.ifname);
    let alias = naming::host_alias(&inv.conf.name, &env.container_id, &env.ifname);
    let echoed = nl
        .create_veth(host_name, host_mac, &env.ifname, pod_mac, pod_ns, mtu)
        .map_err(|e| {
            if e.is(libc::EEXIST) {
                CniError::new(
                    codes::ALREADY_EXISTS,
                    format!(
                        "interface {} already exists in the pod's netns {}",
                        env.ifname,
                        pod_ns.path().display()
                    ),
                    "another plugin or an earlier ADD created it; DEL first or use another CNI_IFNAME",
                )
            } else {
                nl_err(e)
            }
        })?;
    undo.host_link = Some(host_name.to_string());
    let vanished = |side: &str, name: &str| {
        CniError::new(
            codes::NETLINK_FAILURE,
            format!("{side} interface {name} vanished right after creation"),
            "something else removed it; retry the ADD",
        )
    };
    let (host_index, pod_index) = match echoed {
        Some(i) => i,
        None => (
            nl.link_by_name(host_name)
                .map_err(nl_err)?
                .ok_or_else(|| vanished("host", host_name))?
                .index,
            pod_nl
                .link_by_name(&env.ifname)
                .map_err(nl_err)?
                .ok_or_else(|| vanished("the pod's", &env.ifname))?
                .index,
        ),
    };
    let mut ops = Vec::new();
    for l in leases {
        ops.push(address_op(pod_index, host_prefix(l.address.ip())));
    }
    ops.push(set_up_op(pod_index, None));
    for l in leases {
        let gw = l.gateway.expect("checked above");
        ops.push(neighbour_op(pod_index, gw, host_mac));
        ops.push(route_op(host_prefix(gw), None, pod_index, RouteScope::Link));
        ops.push(route_op(
            default_dst(gw.is_ipv6()),
            Some(gw),
            pod_index,
            RouteScope::Universe,
        ));
    }
    pod_nl.batch(ops).map_err(nl_err)?;

    let mut record = EndpointRecord {
        version: RECORD_VERSION,
        network: inv.conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: pod_ns.path().display().to_string(),
        pod: PodIdentity {
            namespace: env.args.k8s_pod_namespace.clone(),
            name: env.args.k8s_pod_name.clone(),
            uid: env.args.k8s_pod_uid.clone(),
            infra_container_id: env.args.k8s_pod_infra_container_id.clone(),
        },
        addresses: leases.iter().map(|l| host_prefix(l.address.ip())).collect(),
        gateways: leases.iter().filter_map(|l| l.gateway).collect(),
        host_ifname: host_name.to_string(),
        host_ifindex: host_index,
        host_mac: format_mac(host_mac),
        pod_mac: format_mac(pod_mac),
        mtu,
        runtime_config: inv.conf.runtime_config.clone(),
        extra_args: env.args.other.clone(),
        // Present when the conflist declares the pod-annotations capability
        // and the runtime is a CRI one (containerd, CRI-O).
        annotations: annotations_from_runtime_config(inv.conf.runtime_config.as_ref()),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        netns_cookie: Some(cookie),
        edge: None,
    };

    // The node's side. The pod's edge is in place before the device comes
    // up: from its first packet, the pod sends nothing unchecked.
    edge::set_backstops(host_name, leases.iter().any(|l| l.address.is_ipv6())).map_err(edge_err)?;
    // Held until the record is written: the daemon's sweep of entries no
    // record explains waits for it (see lock_datapath).
    let _datapath_lock = sluice_common::endpoint::lock_datapath(&inv.plugin.state_dir, false)
        .map_err(|e| {
            CniError::new(
                codes::IO_FAILURE,
                format!(
                    "cannot lock {}/datapath.lock: {e}",
                    inv.plugin.state_dir.display()
                ),
                "make stateDir writable by the plugin (root)",
            )
        })?;
    record.edge = Some(protect_edge(inv, nl, &record, cookie, undo)?);
    let mut ops = node_ops;
    ops.push(set_up_op(host_index, alias.as_deref()));
    for l in leases {
        let gw = l.gateway.expect("checked above");
        ops.push(neighbour_op(host_index, l.address.ip(), pod_mac));
        ops.push(pod_route_op(host_prefix(l.address.ip()), host_index, gw));
        if gw.is_ipv6() {
            // IPv6 answers solicitations only for addresses on the link
            // they arrive on; the gateway is on the loopback.
            ops.push(proxy_neighbour_op(host_index, gw));
        }
    }
    // The kernel ignores IFLA_IFALIAS on creation, so it is set with `up`;
    // a plugin killed before this leaves a link without alias, which GC
    // still recognises by its derived name.
    nl.batch(ops).map_err(nl_err)?;

    // The pod's first packet to its gateway must find the node: an IPv6
    // gateway the batch just put on the loopback is not routed locally
    // until the kernel's address worker has run (see Netlink::wait_local).
    wait_local(nl, leases.iter().filter_map(|l| l.gateway), "the node")?;

    // Both ends must pass packets before the runtime starts the pod.
    for (sock, index, side) in [
        (&mut *nl, host_index, "node"),
        (&mut *pod_nl, pod_index, "pod"),
    ] {
        if !sock
            .wait_oper_up(index, std::time::Duration::from_secs(2))
            .map_err(nl_err)?
        {
            eprintln!("sluice: the {side} end of the veth is not up after 2s; continuing");
        }
    }
    // And the first packet that reaches the pod must find it: its own IPv6
    // addresses, added before its link was up, are routed locally only once
    // the link is up and the same worker has run (measured on busy nodes:
    // 2 to 4 of 48 pods, two a node, not yet when ADD returned; with only
    // each node's first pod, whose ADD had waited for its gateway, none).
    let pod_v6 = leases
        .iter()
        .map(|l| l.address.ip())
        .filter(IpAddr::is_ipv6);
    wait_local(pod_nl, pod_v6, "the pod")?;

    undo.record = true;
    record.write(&inv.plugin.state_dir).map_err(record_err)?;
    Ok(record)
}

/// Waits (bounded, 2 s each) until every one of `ips` is a local address
/// of `whose` netns (Netlink::wait_local); one past the bound is reported
/// on stderr and ADD goes on, as for the veth's wait to be up.
fn wait_local(
    nl: &mut Netlink,
    ips: impl Iterator<Item = IpAddr>,
    whose: &str,
) -> Result<(), CniError> {
    for ip in ips {
        if !nl
            .wait_local(ip, std::time::Duration::from_secs(2))
            .map_err(nl_err)?
        {
            eprintln!("sluice: {ip} is not a local address of {whose} after 2s; continuing");
        }
    }
    Ok(())
}

/// The edge mode for this pod: the configured one, where `auto` means a
/// clsact filter unless a chained `bandwidth` plugin will shape the pod's
/// egress (it adds an `ingress` qdisc of its own, which a clsact qdisc
/// would refuse, so that pod's check goes on a tcx link instead).
fn edge_mode(inv: &Invocation) -> Result<EdgeMode, CniError> {
    let tcx = edge::tcx_supported();
    match inv.plugin.tc_attach {
        TcAttach::Clsact => Ok(EdgeMode::Clsact),
        TcAttach::Tcx if tcx => Ok(EdgeMode::Tcx),
        TcAttach::Tcx => Err(CniError::config(
            "tcAttach \"tcx\" needs Linux 6.6 or newer; this kernel is older",
            "set \"tcAttach\" to \"auto\" or \"clsact\"",
        )),
        TcAttach::Auto if tcx && shapes_egress(inv.conf.runtime_config.as_ref()) => {
            Ok(EdgeMode::Tcx)
        }
        TcAttach::Auto => Ok(EdgeMode::Clsact),
    }
}

/// Whether `runtimeConfig` carries an egress rate for the `bandwidth`
/// capability (sent to every plugin of the list that declares it).
fn shapes_egress(rc: Option<&serde_json::Value>) -> bool {
    rc.and_then(|v| v.get("bandwidth"))
        .and_then(|b| b.get("egressRate"))
        .and_then(|r| r.as_u64())
        .is_some_and(|r| r > 0)
}

/// Writes the pod's map entries and attaches the edge program to its host
/// veth: the daemon's pinned check, or, when none is pinned, a program
/// that drops everything the pod sends until the daemon replaces it.
fn protect_edge(
    inv: &Invocation,
    nl: &mut Netlink,
    record: &EndpointRecord,
    cookie: u64,
    undo: &mut AddUndo<'_>,
) -> Result<sluice_common::endpoint::EdgeRecord, CniError> {
    let pins = inv.plugin.pins();
    let mode = edge_mode(inv)?;
    let ifindex = record.host_ifindex;
    let prog = match EdgeMaps::open(&pins).map_err(edge_err)? {
        Some(maps) => match EdgeProg::pinned(&pins).map_err(edge_err)? {
            Some(prog) => {
                let addrs: Vec<IpAddr> = record.addresses.iter().map(|a| a.ip()).collect();
                let entry = edge::endpoint_entry(record);
                let put = maps.put(ifindex, &addrs, edge::source_flags(record), cookie, &entry);
                undo.edge_entries = Some((maps, ifindex, addrs, cookie));
                put.map_err(edge_err)?;
                prog
            }
            None => EdgeProg::isolate().map_err(edge_err)?,
        },
        None => EdgeProg::isolate().map_err(edge_err)?,
    };
    if prog.program == sluice_common::endpoint::EdgeProgram::Isolate {
        eprintln!(
            "sluice: no edge check pinned under {}: the pod is isolated (sends nothing) until \
             sluiced runs on this node",
            pins.root().display()
        );
    }
    let rec = edge::attach(nl, &pins, ifindex, mode, &prog, true).map_err(edge_err)?;
    if mode == EdgeMode::Tcx {
        undo.tc_pin = Some(ifindex);
    }
    Ok(rec)
}

/// The loopback's ifindex, the same in every netns.
const LOOPBACK_INDEX: u32 = 1;

/// Node-wide settings every pod relies on; idempotent, never undone. The
/// routes come back as requests for the caller's next batch.
/// The pod MTU the daemon's node routing wrote to `<stateDir>/node.json`
/// (the underlay's, less the overlay's encapsulation while VXLAN is in
/// use); `None` when there is no such file or it holds no valid MTU.
fn node_file_mtu(state_dir: &std::path::Path) -> Option<u32> {
    let text = std::fs::read(state_dir.join("node.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["podMTU"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .filter(|m| (crate::config::MIN_MTU..=crate::config::MAX_MTU).contains(m))
}

fn ensure_node_ready(leases: &[Lease]) -> Result<Vec<crate::netlink::Op>, CniError> {
    let v4 = leases.iter().any(|l| l.address.is_ipv4());
    let v6 = leases.iter().any(|l| l.address.is_ipv6());
    if v4 {
        ensure_sysctl("/proc/sys/net/ipv4/ip_forward")?;
    }
    if v6 {
        ensure_sysctl("/proc/sys/net/ipv6/conf/all/forwarding")?;
    }
    let mut ops = Vec::new();
    for l in leases {
        // Traffic to an address of the pod range that has no pod dies here
        // instead of following the default route off the node.
        let net = IpNetwork::new(l.address.network(), l.address.prefix())
            .map_err(|e| CniError::config(format!("IPAM returned {}: {e}", l.address), ""))?;
        ops.push(unreachable_op(net));
        // The gateway is the node's address for the pods: one copy on the
        // loopback (ifindex 1 in every netns) serves all of them, so the
        // node answers for it and a pod reaches the node through it.
        // Replacing the same address is a no-op.
        if let Some(gw) = l.gateway {
            ops.push(address_op(LOOPBACK_INDEX, host_prefix(gw)));
        }
    }
    Ok(ops)
}

fn ensure_sysctl(path: &str) -> Result<(), CniError> {
    if std::fs::read_to_string(path)
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::write(path, b"1").map_err(|e| {
        CniError::new(
            codes::IO_FAILURE,
            format!("cannot enable forwarding ({path})"),
            format!("{e}; the plugin must run as root in the node's netns"),
        )
    })
}

fn build_result(record: &EndpointRecord, leases: &[Lease]) -> CniResult {
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: record.host_ifname.clone(),
                mac: Some(record.host_mac.clone()),
                mtu: Some(record.mtu),
                sandbox: None,
            },
            Interface {
                name: record.ifname.clone(),
                mac: Some(record.pod_mac.clone()),
                mtu: Some(record.mtu),
                sandbox: Some(record.netns.clone()),
            },
        ],
        ..Default::default()
    };
    for l in leases {
        result.ips.push(IpConfig {
            address: host_prefix(l.address.ip()),
            gateway: l.gateway,
            interface: Some(1),
        });
        if !result
            .routes
            .iter()
            .any(|r| r.dst.is_ipv4() == l.address.is_ipv4())
        {
            result
                .routes
                .push(Route::new(default_dst(l.address.is_ipv6()), l.gateway));
        }
    }
    result
}

/// Tells the daemon of an ADD or DEL that is already complete on the node
/// (veth, edge, map entries, record), without waiting for its answer: no
/// pod waits on the daemon's work, and a daemon that is down or slow
/// catches up from the record.
fn tell_daemon(inv: &Invocation, req: Request) {
    if let Err(e) = api::notify(&inv.plugin.daemon_socket, req, inv.plugin.daemon_timeout) {
        // Not an error for the runtime: the record on disk is the truth and
        // the daemon reconciles it when it (re)starts.
        eprintln!(
            "sluice: daemon not notified ({e}); it will pick the change up from the state dir"
        );
    }
}

/// Removes what ADD wrote into the daemon's maps for a record, and its
/// tcx link pins. Failures are logged, not returned: DEL must not fail for
/// want of the daemon's maps, and the daemon sweeps leftovers at start.
fn release_edge(inv: &Invocation, rec: &EndpointRecord) {
    let pins = inv.plugin.pins();
    let addrs: Vec<IpAddr> = rec.addresses.iter().map(|a| a.ip()).collect();
    match EdgeMaps::open(&pins) {
        Ok(Some(maps)) => {
            if let Err(e) = maps.remove(rec.host_ifindex, &addrs, rec.netns_cookie) {
                eprintln!("sluice: {e}; sluiced removes the entries at its next start");
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("sluice: {e}; sluiced removes the entries at its next start"),
    }
    // A tcx edge, and the reply translation of a pod translated per packet
    // (a tcx egress link in either mode), are pinned.
    if rec.edge.is_some_and(|e| e.mode == EdgeMode::Tcx) || rec.socket_lb_opt_out() {
        if let Err(e) = edge::unpin_tc_link(&pins, rec.host_ifindex) {
            eprintln!(
                "sluice: removing the tcx link pin of ifindex {}: {e}",
                rec.host_ifindex
            );
        }
    }
}

/// DEL without a record: an ADD killed after it wrote the pod's map
/// entries (or pinned its tcx link) and before its record. What it wrote
/// names the host veth, which is still there under its name: everything
/// that names that veth's ifindex goes, before the veth does (an ifindex is
/// reused once its link is gone).
fn release_orphans(inv: &Invocation, nl: &mut Netlink, host_name: &str) {
    let Ok(Some(link)) = nl.link_by_name(host_name) else {
        return;
    };
    let pins = inv.plugin.pins();
    match EdgeMaps::open(&pins) {
        Ok(Some(maps)) => match maps.remove_all_of(link.index) {
            Ok(0) => {}
            Ok(n) => eprintln!(
                "sluice: DEL: no record; removed {n} map entries of {host_name} (#{}) left by an \
                 interrupted ADD",
                link.index
            ),
            Err(e) => eprintln!("sluice: {e}; sluiced removes the entries at its next sweep"),
        },
        Ok(None) => {}
        Err(e) => eprintln!("sluice: {e}; sluiced removes the entries at its next sweep"),
    }
    if let Err(e) = edge::unpin_tc_link(&pins, link.index) {
        eprintln!(
            "sluice: removing the tcx link pin of ifindex {}: {e}",
            link.index
        );
    }
}

/// Joins several failures into one error, keeping the first one's code.
fn combine(errors: Vec<CniError>) -> Result<(), CniError> {
    let mut it = errors.into_iter();
    let Some(first) = it.next() else {
        return Ok(());
    };
    let rest: Vec<String> = it.map(|e| e.to_string()).collect();
    if rest.is_empty() {
        return Err(first);
    }
    Err(CniError::new(
        first.code,
        first.msg,
        format!("{}; also: {}", first.details, rest.join("; ")),
    ))
}

pub fn del(inv: &Invocation) -> Result<(), CniError> {
    let env = &inv.env;
    let mut errors = Vec::new();
    let record = match EndpointRecord::load(&inv.plugin.state_dir, &env.container_id, &env.ifname) {
        Ok(r) => r,
        Err(e) => {
            // A corrupt record must not block the release of everything else.
            eprintln!("sluice: DEL: {e}; removing it");
            None
        }
    };
    match Ipam::from_netconf(inv) {
        Ok(mut ipam) => {
            if let Err(e) = ipam.del(env) {
                errors.push(e.context("releasing addresses"));
            }
        }
        Err(e) => errors.push(e),
    }
    let host_name = naming::host_ifname(&env.container_id, &env.ifname);
    match Netlink::open() {
        Ok(mut nl) => {
            if record.is_none() {
                release_orphans(inv, &mut nl, &host_name);
            }
            let mut names = vec![host_name.clone()];
            if let Some(r) = &record {
                if r.host_ifname != host_name {
                    names.push(r.host_ifname.clone());
                }
            }
            let mut deleted = false;
            for n in names {
                match retire_link(&mut nl, &n) {
                    Ok(d) => deleted |= d,
                    Err(e) => errors.push(nl_err(e).context(format!("deleting {n}"))),
                }
            }
            // The host end is gone with its peer; if it was not there, the
            // pod's end may still be, when the netns still exists.
            if !deleted {
                if let Some(ns) = env.netns.as_ref().and_then(|p| Netns::open(p).ok()) {
                    if let Ok(mut pod_nl) = Netlink::open_in(&ns) {
                        if let Err(e) = pod_nl.delete_link(&env.ifname) {
                            errors.push(nl_err(e).context("deleting the pod's interface"));
                        }
                    }
                }
            }
        }
        Err(e) => errors.push(nl_err(e)),
    }
    if let Some(r) = &record {
        release_edge(inv, r);
    }
    if let Err(e) = EndpointRecord::remove(&inv.plugin.state_dir, &env.container_id, &env.ifname) {
        errors.push(record_err(e));
    }
    tell_daemon(
        inv,
        Request::Unregister {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        },
    );
    combine(errors)
}

/// Takes a pod's node-side link out of service at once and deletes it in the
/// background. Deleting a veth blocks in the kernel (`rcu_barrier()` in
/// `netdev_run_todo`) for 10-30 ms, longer than everything else DEL does;
/// the runtime need not wait for that. Setting the link down removes its
/// routes, so no packet reaches the pod from here on; renaming it to its
/// tombstone frees the name for a new ADD of the same attachment. Returns
/// whether there was a link (or a deletion already under way).
fn retire_link(nl: &mut Netlink, name: &str) -> Result<bool, NlError> {
    let tomb = naming::is_host_ifname(name).then(|| naming::tombstone_ifname(name));
    let Some(link) = nl.link_by_name(name)? else {
        return match &tomb {
            Some(t) => Ok(nl.link_by_name(t)?.is_some()),
            None => Ok(false),
        };
    };
    let Some(tomb) = tomb else {
        return nl.delete_link(name);
    };
    nl.set_down(link.index)?;
    if nl.rename(link.index, &tomb).is_err() {
        // A tombstone of the same name is still being deleted: delete this
        // one here instead.
        return nl.delete_link(name);
    }
    spawn_deleter(&tomb);
    Ok(true)
}

/// Forks a child that deletes `name` and exits. The child closes the
/// runtime's pipes first, so the runtime's read of our output is not held
/// open by it.
fn spawn_deleter(name: &str) {
    use nix::unistd::{fork, setsid, ForkResult};
    // SAFETY: the plugin is single-threaded; the child only calls
    // async-signal-safe functions and netlink before _exit.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = setsid();
            // SAFETY: plain fd manipulation on our own descriptors.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
            }
            let code = match Netlink::open().and_then(|mut nl| nl.delete_link(name)) {
                Ok(_) => 0,
                Err(_) => 1,
            };
            // SAFETY: leaving the child without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { .. }) => {}
        Err(e) => {
            eprintln!("sluice: cannot fork to delete {name} ({e}); deleting it now");
            if let Ok(mut nl) = Netlink::open() {
                let _ = nl.delete_link(name);
            }
        }
    }
}

fn check_failed(msg: String) -> CniError {
    CniError::new(
        codes::CHECK_FAILED,
        msg,
        "the pod's network drifted from what ADD set up; the runtime should recreate the pod",
    )
}

pub fn check(inv: &Invocation) -> Result<(), CniError> {
    if !inv.version.has_check() {
        return Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for cniVersion {}", inv.version),
            "CHECK needs cniVersion 0.4.0 or later",
        ));
    }
    let env = &inv.env;
    let prev = inv.conf.prev_result()?.ok_or_else(|| {
        CniError::config(
            "CHECK needs prevResult",
            "the runtime must pass the result of ADD as prevResult",
        )
    })?;
    let record = EndpointRecord::load(&inv.plugin.state_dir, &env.container_id, &env.ifname)
        .map_err(record_err)?
        .ok_or_else(|| {
            check_failed(format!(
                "no endpoint record for container {} ifname {}",
                env.container_id, env.ifname
            ))
        })?;
    let netns_path = env.netns.as_ref().expect("validated: CHECK has a netns");
    let pod_ns = Netns::open(netns_path).map_err(netns_err)?;
    let want: Vec<IpNetwork> = prev
        .ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| prev.interfaces.get(i))
                .map(|i| i.sandbox.is_some() && i.name == env.ifname)
                .unwrap_or(true)
        })
        .map(|ip| ip.address)
        .collect();
    if want.is_empty() {
        return Err(check_failed(
            "prevResult has no address for the pod's interface".into(),
        ));
    }
    let mut drift = Vec::new();

    let mut ipam = Ipam::from_netconf(inv)?;
    if let Err(e) = ipam.check(env, &want.iter().map(|n| n.ip()).collect::<Vec<_>>()) {
        drift.push(e.msg);
    }

    let mut nl = Netlink::open().map_err(nl_err)?;
    match nl.link_by_name(&record.host_ifname).map_err(nl_err)? {
        None => drift.push(format!("host interface {} is missing", record.host_ifname)),
        Some(l) => {
            if !l.up {
                drift.push(format!("host interface {} is down", l.name));
            }
            if l.kind.as_deref() != Some("veth") {
                drift.push(format!("host interface {} is not a veth", l.name));
            }
            for v6 in [false, true] {
                let routes = nl.routes(v6).map_err(nl_err)?;
                for a in want.iter().filter(|a| a.is_ipv6() == v6) {
                    let hp = host_prefix(a.ip());
                    if !routes.iter().any(|r| r.dst == hp && r.oif == Some(l.index)) {
                        drift.push(format!("node route to {hp} via {} is missing", l.name));
                    }
                }
            }
        }
    }

    let mut pod_nl = Netlink::open_in(&pod_ns).map_err(nl_err)?;
    match pod_nl.link_by_name(&env.ifname).map_err(nl_err)? {
        None => drift.push(format!(
            "interface {} is missing from {}",
            env.ifname,
            netns_path.display()
        )),
        Some(l) => {
            if !l.up {
                drift.push(format!("pod interface {} is down", l.name));
            }
            let have = pod_nl.addresses(l.index).map_err(nl_err)?;
            for a in &want {
                if !have.iter().any(|h| h.ip() == a.ip()) {
                    drift.push(format!("pod interface {} lacks address {a}", l.name));
                }
            }
            for ip in prev.ips.iter().filter(|ip| want.contains(&ip.address)) {
                let Some(gw) = ip.gateway else { continue };
                let routes = pod_nl.routes(gw.is_ipv6()).map_err(nl_err)?;
                if !routes
                    .iter()
                    .any(|r| r.dst.prefix() == 0 && r.gateway == Some(gw) && r.oif == Some(l.index))
                {
                    drift.push(format!("pod default route via {gw} is missing"));
                }
            }
        }
    }
    if drift.is_empty() {
        Ok(())
    } else {
        Err(check_failed(format!(
            "container {} ifname {}: {}",
            env.container_id,
            env.ifname,
            drift.join("; ")
        )))
    }
}

fn require_1_1(inv: &Invocation, what: &str) -> Result<(), CniError> {
    if inv.version.has_status_and_gc() {
        return Ok(());
    }
    Err(CniError::new(
        codes::INCOMPATIBLE_VERSION,
        format!("{what} is not defined for cniVersion {}", inv.version),
        format!("{what} needs cniVersion 1.1.0; list it in the conflist's cniVersions"),
    ))
}

pub fn status(inv: &Invocation) -> Result<(), CniError> {
    require_1_1(inv, "STATUS")?;
    // Endpoint records must be writable or every ADD would fail.
    let dir = sluice_common::endpoint::endpoints_dir(&inv.plugin.state_dir);
    let probe = std::fs::create_dir_all(&dir).and_then(|_| {
        let p = sluice_common::fsutil::temp_sibling(&dir.join("status-probe"));
        std::fs::write(&p, b"")?;
        std::fs::remove_file(&p)
    });
    if let Err(e) = probe {
        return Err(CniError::new(
            codes::PLUGIN_NOT_AVAILABLE,
            format!("state dir {} is not writable: {e}", dir.display()),
            "make stateDir writable by root or point \"stateDir\" elsewhere",
        ));
    }
    let mut ipam = Ipam::from_netconf(inv)?;
    ipam.status(&inv.env)
}

pub fn gc(inv: &Invocation) -> Result<(), CniError> {
    require_1_1(inv, "GC")?;
    let Some(valid) = inv.conf.valid_attachments()? else {
        // Without the list there is no way to tell a leak from a live pod.
        return Ok(());
    };
    let valid: HashSet<(String, String)> = valid
        .into_iter()
        .map(|a| (a.container_id, a.ifname))
        .collect();
    let mut errors = Vec::new();
    match Ipam::from_netconf(inv) {
        Ok(mut ipam) => {
            if let Err(e) = ipam.gc(&inv.env, &valid) {
                errors.push(e.context("releasing stale addresses"));
            }
        }
        Err(e) => errors.push(e),
    }
    let mut nl = match Netlink::open() {
        Ok(nl) => Some(nl),
        Err(e) => {
            errors.push(nl_err(e));
            None
        }
    };
    let (records, bad) = EndpointRecord::list(&inv.plugin.state_dir);
    for b in bad {
        eprintln!("sluice: GC: {b}");
    }
    for r in records
        .iter()
        .filter(|r| r.network == inv.conf.name)
        .filter(|r| !valid.contains(&(r.container_id.clone(), r.ifname.clone())))
    {
        if let Some(nl) = nl.as_mut() {
            if let Err(e) = nl.delete_link(&r.host_ifname) {
                errors.push(nl_err(e).context(format!("deleting {}", r.host_ifname)));
            }
        }
        release_edge(inv, r);
        if let Err(e) = EndpointRecord::remove(&inv.plugin.state_dir, &r.container_id, &r.ifname) {
            errors.push(record_err(e));
        }
        tell_daemon(
            inv,
            Request::Unregister {
                container_id: r.container_id.clone(),
                ifname: r.ifname.clone(),
            },
        );
    }
    // Links whose record was lost (a crash between veth and record).
    if let Some(nl) = nl.as_mut() {
        match nl.links() {
            Ok(links) => {
                let valid_names: HashSet<String> = valid
                    .iter()
                    .map(|(c, i)| naming::host_ifname(c, i))
                    .collect();
                for l in links {
                    // A tombstone whose background deleter died.
                    let stale = naming::is_tombstone(&l.name)
                        || match l.alias.as_deref().and_then(naming::parse_alias) {
                            Some((net, cid, ifn)) => {
                                net == inv.conf.name
                                    && !valid.contains(&(cid.to_string(), ifn.to_string()))
                            }
                            // No alias: an ADD killed between creating the veth
                            // and labelling it. The name is derived from
                            // (container, ifname), so it is ours, and stale
                            // unless a valid attachment derives to it.
                            None => {
                                l.alias.as_deref().unwrap_or("").is_empty()
                                    && l.kind.as_deref() == Some("veth")
                                    && naming::is_host_ifname(&l.name)
                                    && !valid_names.contains(&l.name)
                            }
                        };
                    if stale {
                        if let Err(e) = nl.delete_link(&l.name) {
                            errors.push(nl_err(e).context(format!("deleting {}", l.name)));
                        }
                    }
                }
            }
            Err(e) => errors.push(nl_err(e)),
        }
    }
    combine(errors)
}
