//! api-bench: the Kubernetes API source at cluster scale, against the test
//! API server (`sluice_tests::kubeapi`: the real list/watch protocol over
//! HTTPS, objects in their real JSON form).
//!
//! - **Initial sync**: a daemon starts against an API holding N Services
//!   with E endpoints each (one EndpointSlice per service, pages of 500):
//!   the time from the last list page served to the datapath holding every
//!   frontend and the last service's backends (read from the pinned maps).
//!   Side by side, in the same run: the same objects as a manifests
//!   directory (Sluice's other source), and `iptables-restore` of
//!   kube-proxy's iptables rules for the same services, the programming
//!   step kube-proxy's iptables mode ends its sync with.
//! - **Event latency**: single-EndpointSlice updates streamed at a fixed
//!   rate (100/s), each giving one service a fresh endpoint; from the
//!   update's write on the server to the new backend in that service's
//!   table in the pinned maps.
//! - **Daemon cost**: RSS (now and peak) after the sync and after the
//!   stream, CPU time of the sync and CPU share during the stream.
//! - The same initial sync at 5,000 services with 250,000 endpoints, the
//!   size kube-proxy's nftables mode was reported to take 13 minutes to
//!   sync (kubernetes#135639; a report, not measured here).
//!
//! Needs root, iptables and release builds next to this binary.

#[path = "cleanup.rs"]
mod cleanup;
#[path = "figures.rs"]
#[allow(dead_code)]
mod figures;
#[path = "method.rs"]
#[allow(dead_code)]
mod method;
#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "svcmaps.rs"]
mod svcmaps;

use cleanup::Track;
use serde_json::{json, Value};
use sluice_tests::daemon::Daemon;
use sluice_tests::kubeapi::KubeApi;
use sluice_tests::manifests;
use sluice_tests::Node;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};
use svcmaps::Maps;

const USAGE: &str = "\
usage: api-bench [--services N] [--endpoints E] [--rate R] [--seconds S]
                 [--large N,E|none] [--sync-rounds R] [--quick] [--json]
                 [--figures FILE]

  --services N   services in the API for the sync and event figures (default 10000)
  --endpoints E  endpoints per service (default 10: 100,000 endpoints)
  --rate R       EndpointSlice updates per second in the event stream (default 100)
  --seconds S    length of the event stream (default 30)
  --large N,E    a second sync at N services x E endpoints (default 5000,50:
                 250,000 endpoints; none skips it)
  --sync-rounds R  initial syncs at N x E, each a fresh daemon and API
                 server, alternating with iptables-restore of kube-proxy's
                 rules (default 5; the first also streams the events)
  --quick        1000 services, 3 s of events, no large sync, 2 sync rounds
  --json         print the figures as JSON
  --figures FILE also write the figures in bench-report's shape to FILE

Runs as root: bench/run api-bench [options] builds the release binaries first.";

const PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;
const PAGE: u32 = 500;

#[derive(Debug)]
struct Args {
    services: usize,
    endpoints: usize,
    rate: u32,
    seconds: u64,
    large: Option<(usize, usize)>,
    sync_rounds: usize,
    json: bool,
    figures: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        services: 10_000,
        endpoints: 10,
        rate: 100,
        seconds: 30,
        large: Some((5000, 50)),
        sync_rounds: 5,
        json: false,
        figures: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{v:?} is not a number"))
        };
        match flag.as_str() {
            "--services" => a.services = num(value()?)?,
            "--endpoints" => a.endpoints = num(value()?)?,
            "--rate" => a.rate = num(value()?)? as u32,
            "--seconds" => a.seconds = num(value()?)? as u64,
            "--sync-rounds" => a.sync_rounds = num(value()?)?.max(1),
            "--large" => {
                let v = value()?;
                a.large = if v == "none" {
                    None
                } else {
                    let (n, e) = v.split_once(',').ok_or("--large N,E")?;
                    Some((num(n.into())?, num(e.into())?))
                };
            }
            "--quick" => {
                a.services = 1000;
                a.seconds = 3;
                a.large = None;
                a.sync_rounds = 2;
            }
            "--json" => a.json = true,
            "--figures" => {
                a.figures = Some(it.next().ok_or("--figures needs a file")?.into());
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.services < 2 || a.endpoints == 0 || a.rate == 0 || a.endpoints > 100 {
        return Err("need at least 2 services, 1-100 endpoints each and a rate".into());
    }
    Ok(a)
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    manifests::cluster_ip(i, 96)
}

fn service(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
           "spec": {"clusterIP": cluster_ip(i).to_string(), "clusterIPs": [cluster_ip(i).to_string()],
                    "type": "ClusterIP",
                    "ports": [{"name": "http", "port": PORT, "protocol": "TCP", "targetPort": BACKEND_PORT}]}})
}

fn slice(i: usize, eps: &[Ipv4Addr]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{i}-1"), "namespace": "bench",
                        "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
           "endpoints": eps.iter().map(|e| json!({
               "addresses": [e.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false},
               "nodeName": "bench-node"})).collect::<Vec<_>>()})
}

fn objects(n: usize, e: usize) -> Vec<Value> {
    (0..n)
        .flat_map(|i| [service(i), slice(i, &manifests::endpoints(i, e))])
        .collect()
}

/// RSS now and at its peak, in MiB, and CPU seconds so far.
fn usage(pid: u32) -> (f64, f64, f64) {
    let mib = |field: &str| sluice_tests::proc_status_mib(pid, field);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (mib("VmRSS"), mib("VmHWM"), (ticks(11) + ticks(12)) / hz)
}

struct Synced {
    /// Last list page served → datapath holds everything.
    after_last_page_ms: f64,
    /// Daemon start → datapath holds everything.
    from_start_ms: f64,
    rss_mib: f64,
    peak_mib: f64,
    cpu_s: f64,
}

/// Waits until `maps` hold `n` frontends and the last service's last
/// endpoint.
fn wait_programmed(maps: &Maps, n: usize, e: usize, limit: Duration) -> Instant {
    let last = manifests::endpoints(n - 1, e)[e - 1];
    let fe = SocketAddr::new(cluster_ip(n - 1).into(), PORT);
    let be = SocketAddr::new(last.into(), BACKEND_PORT);
    let t0 = Instant::now();
    loop {
        if maps.in_table(fe, be) && maps.svc.keys().count() >= n {
            return Instant::now();
        }
        assert!(t0.elapsed() < limit, "not programmed after {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A daemon on a fresh node syncing `n` x `e` from a fresh API server;
/// then `after` runs with it (its pid, the server, its pin path).
fn sync<T>(
    n: usize,
    e: usize,
    after: impl FnOnce(u32, &KubeApi, &std::path::Path) -> T,
) -> (Synced, T) {
    let api = KubeApi::new();
    api.load(objects(n, e));
    let node = Node::new();
    let _t = Track::new(Some(&node.ns.name), &[node.dir.path()]);
    let url = api.listen_in(&node.ns);
    let kc = api.kubeconfig(&url);
    let source = format!(
        "kubernetes = true\nkubeconfig = \"{}\"\napi_page_size = {PAGE}\n",
        kc.display()
    );
    start_until_programmed(&node, &source, n, e, |d, t_start, done| {
        let pid = d.pid().unwrap();
        let last_page = api
            .log()
            .iter()
            .filter(|l| !l.watch && l.status == 200)
            .map(|l| l.at)
            .max()
            .expect("lists served");
        let (rss, peak, cpu) = usage(pid);
        let s = Synced {
            after_last_page_ms: stats::ms(done.saturating_duration_since(last_page)),
            from_start_ms: stats::ms(done - t_start),
            rss_mib: rss,
            peak_mib: peak,
            cpu_s: cpu,
        };
        (s, after(pid, &api, &d.pin_path))
    })
}

/// Starts a daemon on `node` reading `source` (config lines), sized for `n`
/// services of `e` endpoints, waits until its maps hold them all, and runs
/// `then` with it, when it was started and when it was done.
fn start_until_programmed<T>(
    node: &Node,
    source: &str,
    n: usize,
    e: usize,
    then: impl FnOnce(&Daemon<'_>, Instant, Instant) -> T,
) -> T {
    let mut d = Daemon::configure(
        node,
        &format!(
            "{source}node_name = \"bench-node\"\nrouting = \"off\"\nmax_frontends = {}\n\
             max_endpoints_per_frontend = {}\n",
            (n * 2).max(1024),
            e.next_power_of_two().max(16)
        ),
    );
    let _p = Track::new(None, &[&d.pin_path]);
    let t_start = Instant::now();
    d.spawn();
    let _dt = Track::process(d.pid().unwrap());
    let done = wait_programmed(&Maps::open(&d.pin_path), n, e, Duration::from_secs(300));
    then(&d, t_start, done)
}

/// The same objects as a manifests directory: daemon start → programmed.
fn sync_manifests(n: usize, e: usize) -> f64 {
    let node = Node::new();
    let _t = Track::new(Some(&node.ns.name), &[node.dir.path()]);
    let dir = node.dir.path().join("services");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("svc-{i}.yaml")),
            manifests::service(
                "bench",
                i,
                cluster_ip(i),
                PORT,
                &manifests::endpoints(i, e),
                BACKEND_PORT,
            ),
        )
        .unwrap();
    }
    let source = format!("services_dir = \"{}\"\n", dir.display());
    start_until_programmed(&node, &source, n, e, |_, t, done| stats::ms(done - t))
}

/// kube-proxy's iptables rules for the same services, restored into a
/// fresh netns: ms.
fn iptables_restore(n: usize, e: usize) -> Option<f64> {
    let services: Vec<(Ipv4Addr, Vec<Ipv4Addr>)> = (0..n)
        .map(|i| (cluster_ip(i), manifests::endpoints(i, e)))
        .collect();
    let rules = svcmaps::kube_proxy_rules(&services, PORT, BACKEND_PORT, None);
    let ns = sluice_tests::Ns::new("ipt");
    let _t = Track::new(Some(&ns.name), &[]);
    let path = std::env::temp_dir().join(format!("sluice-bench-{}.rules", std::process::id()));
    std::fs::write(&path, rules).ok()?;
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-restore"])
        .arg(&path)
        .output()
        .ok()?;
    let ms = stats::ms(t.elapsed());
    let _ = std::fs::remove_file(&path);
    out.status.success().then_some(ms)
}

/// Streams `rate` single-slice updates a second for `seconds` into the
/// API; returns each one's latency to the datapath (ms).
fn stream(
    api: &KubeApi,
    pin: &std::path::Path,
    n: usize,
    e: usize,
    rate: u32,
    seconds: u64,
) -> Vec<f64> {
    let total = rate as u64 * seconds;
    let every = Duration::from_secs(1) / rate;
    let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr, Instant)>();
    let pin = pin.to_path_buf();
    let checker = std::thread::spawn(move || {
        let maps = Maps::open(&pin);
        let mut lat = Vec::new();
        for (fe, be, t) in rx {
            while !maps.in_table(fe, be) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "an update never reached the datapath"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            lat.push(stats::ms(t.elapsed()));
        }
        lat
    });
    let start = Instant::now();
    for k in 0..total {
        let due = start + every * k as u32;
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let i = (k as usize * 7919) % n;
        let mut eps = manifests::endpoints(i, e);
        let fresh = Ipv4Addr::new(10, 250, (k >> 8) as u8, k as u8);
        eps[0] = fresh;
        let t = Instant::now();
        api.apply(slice(i, &eps));
        tx.send((
            SocketAddr::new(cluster_ip(i).into(), PORT),
            SocketAddr::new(fresh.into(), BACKEND_PORT),
            t,
        ))
        .unwrap();
    }
    drop(tx);
    checker.join().expect("checker")
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(((p / 100.0) * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("api-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("api-bench: needs root (netns, bpf); run it with bench/run api-bench");
        return ExitCode::from(2);
    }
    if let Err(e) = cleanup::install() {
        eprintln!("api-bench: {e}");
        return ExitCode::FAILURE;
    }
    let (n, e) = (args.services, args.endpoints);
    eprintln!("api-bench: {n} services x {e} endpoints from the API");
    let (main_sync, (lat, cpu_share, rss1, peak1)) = sync(n, e, |pid, api, pin| {
        eprintln!(
            "api-bench: streaming {} updates/s for {} s",
            args.rate, args.seconds
        );
        let (_, _, cpu0) = usage(pid);
        let t = Instant::now();
        let lat = stream(api, pin, n, e, args.rate, args.seconds);
        let wall = t.elapsed().as_secs_f64();
        let (rss1, peak1, cpu1) = usage(pid);
        (lat, (cpu1 - cpu0) / wall, rss1, peak1)
    });
    // More rounds of the sync, alternating with kube-proxy's restore.
    let mut sync_rounds = method::Rounds::default();
    let mut after_page = vec![main_sync.after_last_page_ms];
    sync_rounds.sluice.push(main_sync.from_start_ms);
    sync_rounds.baseline.extend(iptables_restore(n, e));
    for round in 1..args.sync_rounds {
        eprintln!(
            "api-bench: sync round {} of {}",
            round + 1,
            args.sync_rounds
        );
        let first_api = round % 2 == 0;
        if !first_api {
            sync_rounds.baseline.extend(iptables_restore(n, e));
        }
        let (s, ()) = sync(n, e, |_, _, _| ());
        sync_rounds.sluice.push(s.from_start_ms);
        after_page.push(s.after_last_page_ms);
        if first_api {
            sync_rounds.baseline.extend(iptables_restore(n, e));
        }
    }
    eprintln!("api-bench: the same objects from a manifests directory");
    let manifests_ms = sync_manifests(n, e);
    eprintln!("api-bench: kube-proxy's iptables rules for them");
    let ipt_ms = (sync_rounds.baseline.len() == sync_rounds.sluice.len())
        .then(|| method::median(&sync_rounds.baseline));
    let large = args.large.map(|(ln, le)| {
        eprintln!("api-bench: {ln} services x {le} endpoints from the API");
        let (s, ()) = sync(ln, le, |_, _, _| ());
        let ipt = iptables_restore(ln, le);
        (ln, le, s, ipt)
    });

    let report = json!({
        "services": n, "endpoints": n * e, "page_size": PAGE,
        "sync": {
            "after_last_page_ms": main_sync.after_last_page_ms,
            "from_start_ms": main_sync.from_start_ms,
            "rounds": sync_rounds,
            "manifests_from_start_ms": manifests_ms,
            "iptables_restore_ms": ipt_ms,
            "rss_mib": main_sync.rss_mib, "peak_rss_mib": main_sync.peak_mib,
            "cpu_s": main_sync.cpu_s,
        },
        "events": {
            "rate_per_s": args.rate, "updates": lat.len(),
            "p50_ms": pct(&lat, 50.0), "p99_ms": pct(&lat, 99.0), "max_ms": pct(&lat, 100.0),
            "cpu_share": cpu_share, "rss_mib": rss1, "peak_rss_mib": peak1,
        },
        "large": large.as_ref().map(|(ln, le, s, ipt)| json!({
            "services": ln, "endpoints": ln * le,
            "after_last_page_ms": s.after_last_page_ms, "from_start_ms": s.from_start_ms,
            "peak_rss_mib": s.peak_mib, "cpu_s": s.cpu_s, "iptables_restore_ms": ipt,
        })),
    });
    if let Some(to) = &args.figures {
        let name = |n: usize, e: usize| {
            figures::Name::new(
                format!("api.sync.{n}x{e}"),
                format!("daemon start to {n} services x {e} endpoints programmed from the API"),
                "ms",
                false,
                "iptables-restore of kube-proxy's rules",
            )
        };
        let mut figs = Vec::new();
        if ipt_ms.is_some() {
            figs.push(name(n, e).interleaved(sync_rounds.clone()));
        }
        if let Some((ln, le, s, Some(ipt))) = &large {
            figs.push(name(*ln, *le).once(*ipt, s.from_start_ms));
        }
        let b = figures::Bench {
            name: "api-bench".into(),
            command: "bench/run api-bench".into(),
            figures: figs,
            charts: Vec::new(),
            notes: vec![
                format!(
                    "Initial sync of {n} x {e}, last list page served to every frontend \
                     programmed: {:.0} ms (median of {}).",
                    method::median(&after_page),
                    after_page.len()
                ),
                format!(
                    "{} single-EndpointSlice updates at {}/s, API write to the datapath: p50 \
                     {:.1} ms, p99 {:.1} ms, max {:.1} ms; daemon CPU {:.1} % of a core, RSS \
                     {rss1:.0} MiB (peak {peak1:.0}). Sluice only: kube-proxy applies changes at \
                     its next sync.",
                    lat.len(),
                    args.rate,
                    pct(&lat, 50.0),
                    pct(&lat, 99.0),
                    pct(&lat, 100.0),
                    cpu_share * 100.0
                ),
                format!(
                    "The same objects from a manifests directory: daemon start to programmed \
                     {manifests_ms:.0} ms (once)."
                ),
            ],
        };
        if let Err(e) = std::fs::write(to, serde_json::to_string_pretty(&b).unwrap()) {
            eprintln!("api-bench: writing {}: {e}", to.display());
            return ExitCode::FAILURE;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        return ExitCode::SUCCESS;
    }
    println!(
        "api-bench: {n} services x {e} endpoints ({} endpoints), list pages of {PAGE}, test API server over HTTPS",
        n * e
    );
    println!(
        "  initial sync, last list page -> datapath programmed: {:.0} ms  (target < 5000 ms)",
        main_sync.after_last_page_ms
    );
    println!(
        "  daemon start -> programmed (median of {} rounds): API {:.0} ms | manifests dir {:.0} ms | iptables-restore of kube-proxy's rules {} ms | API / iptables-restore {}",
        sync_rounds.sluice.len(),
        method::median(&sync_rounds.sluice),
        manifests_ms,
        ipt_ms.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
        ipt_ms
            .map(|_| method::ratio(&sync_rounds).show())
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  daemon after the sync: RSS {:.0} MiB (peak {:.0} MiB, target < 200), CPU {:.2} s",
        main_sync.rss_mib, main_sync.peak_mib, main_sync.cpu_s
    );
    println!(
        "  {} single-slice updates at {}/s: event -> datapath p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 50 ms); daemon CPU {:.1} % of a core, RSS {:.0} MiB (peak {:.0})",
        lat.len(),
        args.rate,
        pct(&lat, 50.0),
        pct(&lat, 99.0),
        pct(&lat, 100.0),
        cpu_share * 100.0,
        rss1,
        peak1
    );
    if let Some((ln, le, s, ipt)) = &large {
        println!(
            "  {ln} services x {le} endpoints ({}): last list page -> programmed {:.0} ms, start -> programmed {:.0} ms, peak RSS {:.0} MiB, CPU {:.2} s | iptables-restore {} ms | kube-proxy nftables: 13 min reported (kubernetes#135639, not measured here)",
            ln * le,
            s.after_last_page_ms,
            s.from_start_ms,
            s.peak_mib,
            s.cpu_s,
            ipt.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into())
        );
    }
    ExitCode::SUCCESS
}
