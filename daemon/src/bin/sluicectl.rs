//! `sluicectl`: what the node's datapath holds. Asks the daemon over its API;
//! when the daemon is down, reads the pinned maps and the endpoint records
//! directly, so an operator can still see what the kernel is doing.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_common::api::{self, Request};
use sluice_common::endpoint::EndpointRecord;
use sluice_daemon::config::{Config, DEFAULT_CONFIG};
use sluice_daemon::datapath::{map_summary, MapSummary};
use sluice_daemon::edge::EdgeState;
use sluice_daemon::services::program::ServiceView;
use sluice_daemon::services::runner::Pass;
use sluice_daemon::views::{AccelView, EdgeView, EndpointView, StatusView};
use sluice_dataplane::load::open_pinned;
use sluice_dataplane::maps::{self, EdgeStats, Endpoint};
use sluice_dataplane::sys;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(version, about = "Inspect the Sluice datapath on this node")]
struct Args {
    /// The daemon's config (for its socket, pin path and state dir).
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Overrides the config's socket.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Overrides the config's pin_path.
    #[arg(long, global = true)]
    pin_path: Option<PathBuf>,
    /// Overrides the config's state_dir.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The daemon's state, or what is pinned when it is down.
    Status,
    /// Registered pod interfaces with their netns cookie and counters.
    Endpoints,
    /// Service frontends, their backends with state and new-connection
    /// counts, and what the service source rejected.
    Services {
        #[command(subcommand)]
        what: Option<ServicesCmd>,
    },
    /// Same-node TCP acceleration: sockets accelerated, messages and bytes
    /// redirected against passed, fallbacks by reason; `on`/`off` switch
    /// it for the whole node (open connections keep working).
    Accel {
        #[arg(value_enum)]
        switch: Option<Switch>,
    },
    /// Node routing: the other nodes, how each is reached (direct or
    /// VXLAN) and through what, the pod MTU, and rejected Node objects.
    Nodes,
    /// The service source: synced or not, objects per kind, last event
    /// age, API reachability and errors. Exit status 1 until synced.
    Source,
    /// BPF objects.
    Bpf {
        #[command(subcommand)]
        what: BpfCmd,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum ServicesCmd {
    /// Lets through the removal of frontends the daemon held back (a pass
    /// that would remove most or all of them at once).
    AllowRemoval,
}

#[derive(Debug, Subcommand)]
enum BpfCmd {
    /// Pinned maps with their entry counts, and pinned links.
    Maps,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sluicectl: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(args: &Args) -> anyhow::Result<i32> {
    let mut cfg = Config::load_or_default(&args.config)?;
    if let Some(s) = &args.state_dir {
        cfg.socket = s.join("sluiced.sock");
        cfg.state_dir = s.clone();
    }
    if let Some(s) = &args.socket {
        cfg.socket = s.clone();
    }
    if let Some(p) = &args.pin_path {
        cfg.pin_path = p.clone();
    }
    let ask = |req| api::call(&cfg.socket, req, Duration::from_secs(5));
    match &args.cmd {
        Cmd::Status => match ask(Request::Status) {
            Ok(r) => {
                let s: StatusView = serde_json::from_value(r.data).context("reading the status")?;
                match args.output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
                    Output::Table => print_status(&s),
                }
                Ok(0)
            }
            Err(e) => {
                eprintln!("sluiced is not answering: {e}");
                eprintln!("reading the pins under {} instead", cfg.pin_path.display());
                let maps = map_summary(&cfg.maps_dir());
                let links = pinned_links(&cfg);
                match args.output {
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "daemon": null, "maps": maps, "links": links
                        }))?
                    ),
                    Output::Table => {
                        println!("daemon       down ({})", cfg.socket.display());
                        print_links(&links);
                        print_maps(&maps);
                    }
                }
                Ok(1)
            }
        },
        Cmd::Endpoints => {
            let eps: Vec<EndpointView> = match ask(Request::ListEndpoints) {
                Ok(r) => serde_json::from_value(r.data).context("reading the endpoint list")?,
                Err(e) => {
                    eprintln!("sluiced is not answering ({e}); reading records and pinned maps");
                    endpoints_from_pins(&cfg)?
                }
            };
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&eps)?),
                Output::Table => print_endpoints(&eps),
            }
            Ok(0)
        }
        Cmd::Services {
            what: Some(ServicesCmd::AllowRemoval),
        } => {
            let r = ask(Request::AllowServiceRemoval)?;
            println!(
                "the held removal ({} frontends) goes through on the daemon's next pass, now",
                r.data["held"]
            );
            Ok(0)
        }
        Cmd::Services { what: None } => {
            let r = ask(Request::ListServices)?;
            let views: Vec<ServiceView> = serde_json::from_value(r.data["services"].clone())
                .context("reading the service list")?;
            let pass: Pass = serde_json::from_value(r.data["source"].clone())
                .context("reading the source state")?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r.data)?),
                Output::Table => print_services(&views, &pass),
            }
            Ok(if pass.rejected.is_empty() { 0 } else { 1 })
        }
        Cmd::Accel { switch } => {
            let r = ask(Request::Accel {
                enabled: switch.map(|s| s == Switch::On),
            })?;
            let v: AccelView = serde_json::from_value(r.data).context("reading the state")?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => print_accel(&v),
            }
            Ok(0)
        }
        Cmd::Nodes => {
            let r = ask(Request::Nodes)?;
            let v: sluice_daemon::routing::RoutingStatus =
                serde_json::from_value(r.data).context("reading the routing state")?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => print_nodes(&v),
            }
            Ok(if v.rejected.is_empty() && v.last_error.is_none() {
                0
            } else {
                1
            })
        }
        Cmd::Source => {
            let r = ask(Request::ServiceSource)?;
            let pass: Pass = serde_json::from_value(r.data["source"].clone())
                .context("reading the source state")?;
            let Some(src) = pass.source.clone() else {
                anyhow::bail!("this daemon does not report its source's state (older version)");
            };
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&src)?),
                Output::Table => print_source(&src, &pass),
            }
            Ok(if src.synced && src.reachable { 0 } else { 1 })
        }
        Cmd::Bpf { what: BpfCmd::Maps } => {
            let maps = map_summary(&cfg.maps_dir());
            let links = pinned_links(&cfg);
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "maps": maps, "links": links })
                    )?
                ),
                Output::Table => {
                    print_maps(&maps);
                    print_links(&links);
                }
            }
            Ok(if maps.iter().all(|m| m.entries.is_some()) {
                0
            } else {
                1
            })
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct PinnedLink {
    pin: PathBuf,
    id: Option<u32>,
    prog_id: Option<u32>,
    kind: &'static str,
    /// tcx: the device it is on (0: the device is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    ifindex: Option<u32>,
}

fn pinned_links(cfg: &Config) -> Vec<PinnedLink> {
    let mut out = Vec::new();
    for dir in [cfg.cgroup_links_dir(), cfg.tc_links_dir()] {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for pin in entries {
            let info = sys::pinned_link_info(&pin).ok();
            out.push(PinnedLink {
                id: info.map(|i| i.id),
                prog_id: info.map(|i| i.prog_id),
                kind: match info.map(|i| i.link_type) {
                    Some(sys::LINK_TYPE_CGROUP) => "cgroup",
                    Some(sys::LINK_TYPE_TCX) => "tcx",
                    Some(_) => "other",
                    None => "unreadable",
                },
                ifindex: info
                    .filter(|i| i.link_type == sys::LINK_TYPE_TCX)
                    .map(|i| i.tcx_ifindex),
                pin,
            });
        }
    }
    out
}

/// The endpoint list rebuilt without the daemon: records joined with the
/// pinned endpoint map (by host ifindex) and counters.
fn endpoints_from_pins(cfg: &Config) -> anyhow::Result<Vec<EndpointView>> {
    use aya::maps::HashMap;
    let eps: HashMap<_, u64, Endpoint> =
        HashMap::try_from(open_pinned(&cfg.maps_dir(), &maps::ENDPOINTS)?)?;
    let drops: HashMap<_, u32, EdgeStats> =
        HashMap::try_from(open_pinned(&cfg.maps_dir(), &maps::EDGE_STATS)?)?;
    let pins = cfg.pins();
    let current = sluice_cni::edge::EdgeProg::pinned(&pins).ok().flatten();
    let mut nl = sluice_cni::netlink::Netlink::open().ok();
    let by_ifindex: std::collections::HashMap<u32, (u64, Endpoint)> = eps
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, e)| !e.is_host())
        .map(|(c, e)| (e.host_ifindex, (c, e)))
        .collect();
    let (records, bad) = EndpointRecord::list(&cfg.state_dir);
    for b in bad {
        eprintln!("skipping: {b}");
    }
    Ok(records
        .into_iter()
        .map(|r| {
            let entry = by_ifindex.get(&r.host_ifindex);
            let cookie = entry.map(|(c, _)| *c);
            let c = drops.get(&r.host_ifindex, 0).unwrap_or_default();
            // What the record says ADD attached, checked against the kernel.
            let edge = r.edge.as_ref().map(|rec| {
                let mut st = EdgeState::from_record(rec);
                let guard = nl.as_mut().and_then(|nl| {
                    sluice_cni::edge::inspect(nl, &pins, r.host_ifindex)
                        .ok()?
                        .guard(rec.mode, r.host_ifindex)
                });
                match guard {
                    Some(id) => {
                        st.prog_id = id;
                        if current.as_ref().is_some_and(|p| p.id == id) {
                            st.verified_unix_ms = sluice_daemon::edge::now_ms();
                        } else if id != rec.prog_id {
                            st.last_problem =
                                Some(format!("runs program {id}, not the pinned one"));
                        }
                    }
                    None => st.last_problem = Some("not in place, or not first".into()),
                }
                EdgeView::of(&st, &c)
            });
            EndpointView {
                namespace: r.pod.namespace.clone(),
                pod: r.pod.name.clone(),
                netns: r.netns.clone(),
                cookie: cookie.unwrap_or(0),
                addresses: r.addresses.iter().map(|a| a.ip()).collect(),
                host_ifname: r.host_ifname.clone(),
                host_ifindex: r.host_ifindex,
                edge,
                in_endpoint_map: cookie.is_some(),
                // The map entry says what the datapath does; without one,
                // the record's wish.
                socket_lb: entry.map_or(!r.socket_lb_opt_out(), |(_, e)| {
                    sluice_daemon::state::socket_lb_of(e)
                }),
                spoof_drops: c.spoofed(),
                spoof_bytes: c.drop_bytes,
                container_id: r.container_id,
                ifname: r.ifname,
            }
        })
        .collect())
}

fn table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(head.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn short(s: &str, n: usize) -> String {
    if s.len() > n {
        s[..n].to_string()
    } else {
        s.to_string()
    }
}

fn print_endpoints(eps: &[EndpointView]) {
    table(
        &[
            "POD",
            "CONTAINER",
            "IF",
            "ADDRESSES",
            "HOST IF",
            "COOKIE",
            "EDGE",
            "SINCE",
            "IN MAP",
            "SOCKET LB",
            "EDGE DROPS",
        ],
        eps.iter()
            .map(|e| {
                vec![
                    match (&e.namespace, &e.pod) {
                        (Some(n), Some(p)) => format!("{n}/{p}"),
                        (_, Some(p)) => p.clone(),
                        _ => "-".into(),
                    },
                    short(&e.container_id, 12),
                    e.ifname.clone(),
                    e.addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    format!("{} ({})", e.host_ifname, e.host_ifindex),
                    e.cookie.to_string(),
                    edge_cell(e.edge.as_ref()),
                    e.edge
                        .as_ref()
                        .map(|x| clock(x.since_unix_ms))
                        .unwrap_or_else(|| "-".into()),
                    if e.in_endpoint_map { "yes" } else { "NO" }.into(),
                    if e.socket_lb { "yes" } else { "no" }.into(),
                    drops_cell(e.edge.as_ref()),
                ]
            })
            .collect(),
    );
}

/// `clsact check`, `tcx check (repaired 2)`, `clsact isolate`, or what is
/// wrong in capitals.
fn edge_cell(e: Option<&EdgeView>) -> String {
    let Some(e) = e else {
        return "NONE YET".into();
    };
    let mut s = format!("{} {}", e.mode, e.program);
    if e.verified_unix_ms == 0 {
        s.push_str(" (unchecked)");
    } else if !e.protecting {
        s = s.to_uppercase();
    }
    if e.repairs > 0 {
        s.push_str(&format!(" (repaired {})", e.repairs));
    }
    s
}

fn drops_cell(e: Option<&EdgeView>) -> String {
    match e {
        Some(e) if !e.drops.is_empty() => e
            .drops
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "0".into(),
    }
}

/// A wall-clock time (UTC) from ms since the epoch: `2026-12-01 14:32:05`.
fn clock(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn print_maps(maps: &[MapSummary]) {
    table(
        &["MAP", "ID", "ENTRIES", "MAX", "WHAT"],
        maps.iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    m.entries
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "not pinned".into()),
                    m.max_entries.to_string(),
                    m.what.clone(),
                ]
            })
            .collect(),
    );
}

fn print_links(links: &[PinnedLink]) {
    println!();
    table(
        &["LINK", "ID", "PROG", "KIND", "PIN"],
        links
            .iter()
            .map(|l| {
                vec![
                    l.pin
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    l.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    l.prog_id
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "-".into()),
                    match l.ifindex {
                        Some(0) => "tcx (device gone)".to_string(),
                        Some(i) => format!("tcx on ifindex {i}"),
                        None => l.kind.to_string(),
                    },
                    l.pin.display().to_string(),
                ]
            })
            .collect(),
    );
}

fn print_nodes(v: &sluice_daemon::routing::RoutingStatus) {
    println!(
        "node {} ({}), routing {}, underlay {}, pod MTU {}",
        v.node_name,
        if v.pod_cidrs.is_empty() {
            "no pod range".into()
        } else {
            v.pod_cidrs.join(", ")
        },
        v.mode,
        v.underlay_device.as_deref().unwrap_or("-"),
        v.pod_mtu
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("{:<24} {:<7} ROUTES", "NODE", "VIA");
    for p in &v.peers {
        println!("{:<24} {:<7} {}", p.name, p.via, p.routes.join("; "));
    }
    for w in &v.warnings {
        println!("warning: {w}");
    }
    if let Some(e) = &v.last_error {
        println!("error: {e}");
    }
    for r in &v.rejected {
        println!("rejected: {r}");
    }
}

fn print_accel(v: &AccelView) {
    let c = |k: &str| v.counters.get(k).copied().unwrap_or(0);
    println!(
        "accel        {}; {} sockets accelerated now ({} added, {} taken out before anything \
         was redirected to them; not added: {} opted out (or not in), {} blocking, {} refused \
         by a full map)",
        if v.enabled { "on" } else { "off" },
        v.sockets,
        c("added"),
        c("evicted"),
        c("skipped"),
        c("skipped_blocking"),
        c("add_failed")
    );
    match &v.unguarded {
        None => println!(
            "             guarded ({} LSM links): every pod not opted out",
            v.guards.len()
        ),
        Some(why) => println!(
            "             only pods annotated sluice.dev/accel: \"true\": no guards here ({why})"
        ),
    }
    println!(
        "             the node's own servers: {}",
        if v.node {
            "accelerated with the pods that connect to them"
        } else {
            "on TCP (accel_node)"
        }
    );
    println!(
        "             redirected {} msgs / {} bytes; passed to TCP {} msgs / {} bytes",
        c("redir_msgs"),
        c("redir_bytes"),
        c("pass_msgs"),
        c("pass_bytes")
    );
    let by = |prefix: &str| -> String {
        v.counters
            .iter()
            .filter_map(|(k, n)| Some(format!("{} {n}", k.strip_prefix(prefix)?)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "             fallbacks to TCP: {}; back to redirecting: {}",
        by("fb_"),
        c("resumed")
    );
    println!(
        "             connections drained to TCP (readers kept behind, or switched off): {}, \
         their sockets out of the map: {}",
        c("draining"),
        c("drained")
    );
    println!("             guards: {}", by("guard_"));
}

fn print_status(s: &StatusView) {
    println!(
        "daemon       sluiced {} (pid {}, up {} s, API v{})",
        s.version, s.pid, s.uptime_seconds, s.api_version
    );
    println!("ready        {}", s.ready);
    println!("endpoints    {}", s.endpoints);
    println!("pins         {}", s.pin_path.display());
    println!("cgroup root  {}", s.cgroup_root.display());
    println!(
        "pod edges    attached as {} by the daemon; program {} ({:?} at start)",
        s.edge_mode, s.edge_program_id, s.edge_program
    );
    println!("node netns   cookie {}", s.host_cookie);
    if let Some(k) = &s.kernel {
        let on: Vec<&str> = k
            .features
            .iter()
            .filter(|f| f.on)
            .map(|f| f.name.as_str())
            .collect();
        println!("kernel       Linux {}: {}", k.release, on.join(", "));
        for f in k.features.iter().filter(|f| !f.on) {
            println!("             OFF {}: lacks {}", f.name, f.why_off);
        }
    }
    if !s.lb_stats.is_empty() {
        let parts: Vec<String> = s.lb_stats.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("services     connects: {}", parts.join(", "));
    }
    if let Some(a) = &s.accel {
        print_accel(a);
    }
    let r = &s.restore.report;
    println!(
        "last start   ready in {:.1} ms: {} endpoints restored, {} cleaned, {} failed, {} stale entries removed, {} maps reused",
        s.restore.duration_ms,
        r.restored,
        r.cleaned,
        r.failed,
        r.stale_entries,
        s.restore.maps_reused.len()
    );
    for c in &s.restore.maps_carried {
        println!(
            "             map {} carried into {} ({}): {} entries copied, {} dropped",
            c.map, c.into, c.why, c.copied, c.dropped
        );
    }
    println!();
    table(
        &["SOCKET PROGRAM", "LINK", "PROG", "AT START", "OPS SEEN"],
        s.socket_links
            .iter()
            .map(|l| {
                let hook = l.program.trim_start_matches("sluice_");
                let n = s
                    .sock_ops
                    .iter()
                    .find(|(h, _)| h == hook)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                vec![
                    l.program.clone(),
                    l.id.to_string(),
                    l.prog_id.to_string(),
                    format!("{:?}", l.outcome).to_lowercase(),
                    n.to_string(),
                ]
            })
            .collect(),
    );
    println!();
    print_maps(&s.maps);
}

fn print_source(s: &sluice_daemon::services::api::SourceStatus, pass: &Pass) {
    let age = |a: Option<f64>| {
        a.map(|a| format!("{a:.1}s ago"))
            .unwrap_or_else(|| "-".into())
    };
    println!("source       {} {}", s.source, s.server);
    println!(
        "synced       {}",
        match (s.synced, s.synced_after_ms) {
            (true, Some(ms)) => format!("yes (after {:.1}s)", ms / 1e3),
            (true, None) => "yes".into(),
            (false, _) => "no: nothing is programmed from it until every kind is listed".into(),
        }
    );
    println!(
        "reachable    {}",
        if s.reachable {
            "yes"
        } else {
            "no: what is programmed stays"
        }
    );
    if let Some(e) = &s.client_error {
        println!("client       {e}");
    }
    println!(
        "programmed   {} frontends, {} passes, {} rejected",
        pass.frontends,
        pass.passes,
        pass.rejected.len()
    );
    let mut rows = Vec::new();
    for k in &s.kinds {
        rows.push(vec![
            k.kind.clone(),
            if k.synced { "yes" } else { "no" }.into(),
            k.objects.to_string(),
            k.rejected.to_string(),
            k.events.to_string(),
            k.lists.to_string(),
            age(k.last_event_age_s),
            k.errors.to_string(),
            match &k.last_error {
                Some(e) => format!("{} ({e})", age(k.last_error_age_s)),
                None => "-".into(),
            },
        ]);
    }
    table(
        &[
            "KIND",
            "SYNCED",
            "OBJECTS",
            "REJECTED",
            "EVENTS",
            "LISTS",
            "LAST EVENT",
            "ERRORS",
            "LAST ERROR",
        ],
        rows,
    );
}

fn print_services(views: &[ServiceView], pass: &Pass) {
    let mut rows = Vec::new();
    for v in views {
        let head = [
            if v.service.is_empty() {
                "(adopted)".to_string()
            } else {
                v.service.clone()
            },
            v.frontend.clone(),
            v.selection
                .map(|s| format!("{s:?}").to_lowercase())
                .unwrap_or_else(|| "-".into()),
            v.affinity_timeout
                .map(|t| format!("ClientIP {t}s"))
                .unwrap_or_else(|| "-".into()),
        ];
        if v.backends.is_empty() {
            let mut r = head.to_vec();
            r.extend(["(none: refused)".into(), "-".into(), "-".into(), "-".into()]);
            rows.push(r);
        }
        for (i, b) in v.backends.iter().enumerate() {
            let mut r = if i == 0 {
                head.to_vec()
            } else {
                vec![String::new(); 4]
            };
            let mut state = format!("{:?}", b.state).to_lowercase();
            if b.excluded_by_policy {
                state.push_str(" (other node, policy Local)");
            }
            r.extend([
                b.addr.to_string(),
                state,
                if b.in_table { "yes" } else { "no" }.into(),
                b.connections.to_string(),
            ]);
            rows.push(r);
        }
    }
    table(
        &[
            "SERVICE",
            "FRONTEND",
            "SELECTION",
            "AFFINITY",
            "BACKEND",
            "STATE",
            "NEW CONNS",
            "CONNECTIONS",
        ],
        rows,
    );
    println!();
    println!(
        "source {}: {} frontends, last change programmed in {:.1} ms",
        pass.dir, pass.frontends, pass.last_duration_ms
    );
    if let Some(n) = &pass.node_name {
        println!("node name {n} (from {})", pass.node_name_source);
    }
    if !pass.fill.is_empty() {
        let parts: Vec<String> = pass
            .fill
            .iter()
            .map(|f| format!("{} {}/{}", f.map, f.entries, f.capacity))
            .collect();
        println!("maps      {}", parts.join(", "));
    }
    if !pass.udp_socket_termination.is_empty() {
        println!(
            "connected UDP sockets to a backend that left are ended: {} ({} so far)",
            pass.udp_socket_termination, pass.udp_sockets_ended
        );
    }
    for w in &pass.warnings {
        println!("warning   {w}");
    }
    if pass.held_removals > 0 {
        println!(
            "held      {} frontends the source no longer has stay programmed; `sluicectl services allow-removal` removes them",
            pass.held_removals
        );
    }
    for r in &pass.rejected {
        println!("rejected  {r}");
    }
}
