//! daemon-bench: what sluiced costs and how fast it is, measured with the
//! real plugin and daemon in namespaces this bench makes.
//!
//! - Protection at ADD's return: for each of N pods (default 200), whether
//!   the pod's netns cookie was in the pinned endpoint map and its edge
//!   check in place (attached by the plugin, as the daemon then finds it)
//!   when ADD returned; the time until the daemon has registered and
//!   confirmed it; and, side by side, ADD's own time with the daemon
//!   against ADD with no daemon at all, and the register API's round trip
//!   on its own.
//! - Bursts of P parallel ADDs without and with the daemon, alternating,
//!   and whether every pod of each burst was protected when its ADD
//!   returned.
//! - Restart-to-ready with M restored endpoints (default 1,000), after
//!   `kill -9`, alternating with an idle daemon's restart on a second node.
//! - RSS idle, with M endpoints, and after each restart against the idle
//!   daemon's.
//!
//! Needs root and release builds next to this binary
//! (`cargo build --release --workspace --bins`).

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

use cleanup::Track;
use serde_json::json;
use sluice_common::api::Request;
use sluice_common::endpoint::EndpointRecord;
use sluice_tests::daemon::{netns_cookie, Daemon};
use sluice_tests::{Node, Ns};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: daemon-bench [--pods N] [--restore M] [--parallel P] [--bursts B] [--restarts R]
                    [--tc-attach auto|tcx|clsact] [--quick] [--json] [--figures FILE]

  --pods N      rounds of the registration latency, each adding one pod
                without and one with the daemon (default 200)
  --restore M   endpoints restored at start and held for RSS (default
                1000, at least 2 x --pods)
  --parallel P  pods in the burst test: P ADDs at once, without and with
                the daemon (default 100)
  --bursts B    rounds of the burst test, alternating which goes first
                (default 15)
  --restarts R  kill -9 and restart of the loaded daemon, alternating with
                an idle daemon's on a second node (default 5)
  --tc-attach   tcAttach of the plugin and tc_attach of the daemon (default
                auto: a clsact filter)
  --json        print the figures as JSON
  --quick       --pods 40 --restore 200 --parallel 20 --bursts 2 --restarts 2
  --figures F   also write the figures in bench-report's shape to F

Runs as root: bench/run daemon-bench [options] builds the release binaries first.";

const RANGES: &str = r#"[[{"subnet":"10.220.0.0/16","gateway":"10.220.0.1"}]]"#;

/// Targets from the daemon and pod-edge issues.
const P99_REGISTER_MS: f64 = 10.0;
/// 100 parallel ADDs with the daemon against without.
const MAX_BURST_RATIO: f64 = 1.1;
const READY_MS: f64 = 1000.0;
const RSS_MIB: f64 = 40.0;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy)]
struct P {
    p50: f64,
    p99: f64,
}

fn pct(mut v: Vec<f64>) -> P {
    v.sort_by(f64::total_cmp);
    P {
        p50: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
    }
}

fn rss_mib(pid: u32) -> f64 {
    sluice_tests::proc_status_mib(pid, "VmRSS")
}

struct BenchPod {
    ns: Ns,
    cid: String,
    _track: Track,
}

fn add_pod(node: &Node, conf: &str, i: usize) -> (BenchPod, Duration) {
    let ns = Ns::new("b");
    let track = Track::new(Some(&ns.name), &[]);
    let cid = format!("bench-{}-{i}", std::process::id());
    let t = Instant::now();
    node.cni("ADD", &cid, Some(&ns.path()), "eth0", conf).ok();
    (
        BenchPod {
            ns,
            cid,
            _track: track,
        },
        t.elapsed(),
    )
}

/// Starts `n` ADDs at once (each into a fresh netns) and waits for all.
fn parallel_adds(node: &Node, conf: &str, n: usize, tag: &str) -> (Vec<BenchPod>, Duration) {
    let nss: Vec<(Ns, Track)> = (0..n)
        .map(|_| {
            let ns = Ns::new("b");
            let t = Track::new(Some(&ns.name), &[]);
            (ns, t)
        })
        .collect();
    let cids: Vec<String> = (0..n)
        .map(|i| format!("bench-{}-{tag}{i}", std::process::id()))
        .collect();
    let t = Instant::now();
    for out in node.run_all(
        "ADD",
        nss.iter()
            .zip(&cids)
            .map(|((ns, _), cid)| (ns.path(), cid.as_str())),
        conf,
    ) {
        out.ok();
    }
    let wall = t.elapsed();
    let pods = nss
        .into_iter()
        .zip(cids)
        .map(|((ns, track), cid)| BenchPod {
            ns,
            cid,
            _track: track,
        })
        .collect();
    (pods, wall)
}

/// DELs every pod and waits for the kernel to finish deleting their veths,
/// so that work does not land in the next measurement.
fn del_all(node: &Node, conf: &str, pods: Vec<BenchPod>) {
    for p in &pods {
        node.cni("DEL", &p.cid, Some(&p.ns.path()), "eth0", conf);
    }
    drop(pods);
    node.ns.wait_for_retired_links();
}

fn main() -> ExitCode {
    let mut pods = 200usize;
    let mut restore = 1000usize;
    let mut as_json = false;
    let mut tc_attach = "auto".to_string();
    let mut parallel = 100usize;
    let mut bursts = 15usize;
    let mut restarts = 5usize;
    let mut figures_to: Option<std::path::PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a number\n{USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--pods" => pods = num("--pods"),
            "--restore" => restore = num("--restore"),
            "--parallel" => parallel = num("--parallel"),
            "--bursts" => bursts = num("--bursts").max(1),
            "--restarts" => restarts = num("--restarts").max(1),
            "--json" => as_json = true,
            "--quick" => {
                pods = 40;
                restore = 200;
                parallel = 20;
                bursts = 2;
                restarts = 2;
            }
            "--figures" => figures_to = it.next().map(Into::into),
            "--tc-attach" => {
                tc_attach = it.next().unwrap_or_default();
                if !["auto", "tcx", "clsact"].contains(&tc_attach.as_str()) {
                    eprintln!("--tc-attach takes auto, tcx or clsact\n{USAGE}");
                    return ExitCode::from(2);
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("unknown argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("daemon-bench: needs root (namespaces, veths, BPF)");
        return ExitCode::from(2);
    }
    if pods == 0 || restore < 2 * pods {
        eprintln!(
            "daemon-bench: --pods must be at least 1 and --restore at least twice --pods \
             (each round adds one pod without and one with the daemon)"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = cleanup::install() {
        eprintln!("daemon-bench: {e}");
        return ExitCode::from(2);
    }

    let node = Node::new();
    let _node_track = Track::new(Some(&node.ns.name), &[node.dir.path()]);
    node.mount_tmpfs();
    // A second node, for an idle daemon whose restarts alternate with the
    // loaded one's below.
    let idle_node = Node::new();
    let _idle_node_track = Track::new(Some(&idle_node.ns.name), &[idle_node.dir.path()]);
    idle_node.mount_tmpfs();
    let conf = node.conf("1.0.0", RANGES).replace(
        "\"pinPath\"",
        &format!("\"tcAttach\":\"{tc_attach}\",\"pinPath\""),
    );

    // Baseline: ADD with no daemon listening (the plugin's notify fails at
    // once on the missing socket), interleaved below with ADD + register.
    let mut d = Daemon::configure(&node, &format!("tc_attach = \"{tc_attach}\"\n"));
    let _pin_track = Track::new(None, &[&d.pin_path]);
    let first_ready = d.spawn();
    let mut _daemon_track = Track::process(d.pid().unwrap());
    let rss_idle = rss_mib(d.pid().unwrap());

    eprintln!(
        "daemon-bench: {bursts} rounds of {parallel} parallel ADDs without and with the daemon, \
         alternating which goes first"
    );
    let mut burst_without = Vec::new();
    let mut burst_with = Vec::new();
    let mut confirmed_all = Vec::new();
    let mut protected_at_return = 0usize;
    for round in 0..bursts {
        for with in [round % 2 == 1, round % 2 == 0] {
            let tag = format!("p{}{round}-", if with { 'd' } else { 'w' });
            if !with {
                let socket = d.socket();
                let hidden = socket.with_extension("hidden");
                std::fs::rename(&socket, &hidden).unwrap();
                let (burst, wall) = parallel_adds(&node, &conf, parallel, &tag);
                std::fs::rename(&hidden, &socket).unwrap();
                burst_without.push(stats::ms(wall));
                del_all(&node, &conf, burst);
                continue;
            }
            let (burst, wall) = parallel_adds(&node, &conf, parallel, &tag);
            burst_with.push(stats::ms(wall));
            let t = Instant::now();
            protected_at_return += loop {
                let eps = d.endpoints();
                let views: Vec<_> = burst.iter().filter_map(|p| eps.get(&p.cid)).collect();
                if views.len() == burst.len()
                    && views.iter().all(|e| e["edge"]["protecting"] == true)
                {
                    // Found in place by the daemon, not attached by it: the
                    // plugin's attachment, there when ADD returned.
                    break views.iter().filter(|e| e["edge"]["by"] == "plugin").count();
                }
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "the daemon never confirmed the burst's edges"
                );
                std::thread::sleep(Duration::from_millis(1));
            };
            confirmed_all.push(stats::ms(wall + t.elapsed()));
            del_all(&node, &conf, burst);
        }
    }
    let burst_rounds = method::Rounds {
        baseline: burst_without,
        sluice: burst_with,
    };
    let confirmed_all = method::median(&confirmed_all);

    eprintln!("daemon-bench: {pods} pods, ADD with and without the daemon, interleaved");
    let eps = d.endpoint_map();
    let mut live = Vec::new();
    let mut add_with = Vec::new();
    let mut add_without = Vec::new();
    let mut visible = Vec::new();
    let mut guarded = Vec::new();
    let mut protected_rounds = 0usize;
    for i in 0..pods {
        // Without: stop the daemon (SIGSTOP would make the plugin wait its
        // timeout; a missing socket is what "no daemon" looks like).
        let socket = d.socket();
        let hidden = socket.with_extension("hidden");
        std::fs::rename(&socket, &hidden).unwrap();
        let (p, t) = add_pod(&node, &conf, 2 * i);
        add_without.push(stats::ms(t));
        std::fs::rename(&hidden, &socket).unwrap();
        live.push(p);

        let probe = Ns::new("b");
        let probe_track = Track::new(Some(&probe.name), &[]);
        let cookie = netns_cookie(&probe.path());
        let cid = format!("bench-{}-{}", std::process::id(), 2 * i + 1);
        let t = Instant::now();
        node.cni("ADD", &cid, Some(&probe.path()), "eth0", &conf)
            .ok();
        let returned = Instant::now();
        add_with.push(stats::ms(returned - t));
        // The plugin writes the entry itself: it is there at once, or the
        // time until the daemon wrote it.
        if eps.get(&cookie, 0).is_ok() {
            visible.push(0.0);
        } else {
            while eps.get(&cookie, 0).is_err() {
                assert!(
                    returned.elapsed() < Duration::from_secs(5),
                    "endpoint never appeared"
                );
            }
            visible.push(stats::ms(returned.elapsed()));
        }
        let by = loop {
            let e = d.endpoints().get(&cid).cloned().unwrap_or_default();
            if e["edge"]["protecting"] == true {
                break e["edge"]["by"].clone();
            }
            assert!(
                returned.elapsed() < Duration::from_secs(5),
                "the daemon never confirmed the edge"
            );
        };
        guarded.push(stats::ms(returned.elapsed()));
        protected_rounds += usize::from(by == "plugin" && visible.last() == Some(&0.0));
        live.push(BenchPod {
            ns: probe,
            cid,
            _track: probe_track,
        });
    }
    // The pods added without the daemon were picked up by its reconcile
    // only; register them now so every pod is in the datapath.
    let mut api_rtt = Vec::new();
    for p in &live {
        let rec = EndpointRecord::load(&node.state_dir(), &p.cid, "eth0")
            .unwrap()
            .unwrap();
        let t = Instant::now();
        d.call(Request::Register {
            endpoint: Box::new(rec),
        })
        .expect("register");
        api_rtt.push(stats::ms(t.elapsed()));
    }

    eprintln!(
        "daemon-bench: adding {} more pods for the restore test",
        restore.saturating_sub(live.len())
    );
    while live.len() < restore {
        let i = live.len();
        live.push(add_pod(&node, &conf, i).0);
    }
    d.wait_endpoints(restore);
    let rss_loaded = rss_mib(d.pid().unwrap());

    // Restarts after kill -9, alternating with an idle daemon's on a second
    // node of its own (pins, no endpoints): start to ready and RSS after
    // the restore, against the same with nothing to restore.
    eprintln!("daemon-bench: {restarts} restarts after kill -9, {restore} endpoints against none");
    let mut idle = Daemon::configure(&idle_node, &format!("tc_attach = \"{tc_attach}\"\n"));
    let _idle_pin_track = Track::new(None, &[&idle.pin_path]);
    idle.spawn();
    let mut _idle_track = Track::process(idle.pid().unwrap());
    let mut ready = method::Rounds::default();
    let mut rss = method::Rounds::default();
    let mut restore_ms = Vec::new();
    let mut idle_restore_ms = Vec::new();
    for round in 0..restarts {
        for loaded in [round % 2 == 1, round % 2 == 0] {
            let (dm, track) = if loaded {
                (&mut d, &mut _daemon_track)
            } else {
                (&mut idle, &mut _idle_track)
            };
            dm.kill9();
            let took = stats::ms(dm.spawn());
            *track = Track::process(dm.pid().unwrap());
            let st = dm.status();
            let daemon_ms = st["restore"]["duration_ms"].as_f64().unwrap();
            let mib = rss_mib(dm.pid().unwrap());
            if loaded {
                let restored = st["restore"]["report"]["restored"].as_u64().unwrap();
                assert_eq!(restored as usize, restore, "{st}");
                ready.sluice.push(took);
                rss.sluice.push(mib);
                restore_ms.push(daemon_ms);
            } else {
                ready.baseline.push(took);
                rss.baseline.push(mib);
                idle_restore_ms.push(daemon_ms);
            }
        }
    }
    drop(idle);
    let restore_ms = method::median(&restore_ms);
    let idle_restore_ms = method::median(&idle_restore_ms);
    let rss_restored = method::median(&rss.sluice);

    let add_rounds = method::Rounds {
        baseline: add_without.clone(),
        sluice: add_with.clone(),
    };
    let add_with = pct(add_with);
    let add_without = pct(add_without);
    let visible = pct(visible);
    let guarded = pct(guarded);
    let api_rtt = pct(api_rtt);
    let ready_idle_ms = method::median(&ready.baseline);
    let ready_restore_ms = method::median(&ready.sluice);
    let burst_ratio = method::median(&burst_rounds.sluice) / method::median(&burst_rounds.baseline);

    let figures = json!({
        "pods": pods,
        "restored_endpoints": restore,
        "add_return_to_endpoint_entry_ms": {"p50": visible.p50, "p99": visible.p99},
        "register_api_rtt_ms": {"p50": api_rtt.p50, "p99": api_rtt.p99},
        "protected_at_add_return": {"pods": pods, "protected": protected_rounds},
        "add_return_to_daemon_confirmed_ms": {"p50": guarded.p50, "p99": guarded.p99},
        "tc_attach": tc_attach,
        "add_with_daemon_ms": {"p50": add_with.p50, "p99": add_with.p99},
        "add_without_daemon_ms": {"p50": add_without.p50, "p99": add_without.p99},
        "parallel": {"pods": parallel, "rounds": bursts,
                     "add_wall_without_daemon_ms": method::median(&burst_rounds.baseline),
                     "add_wall_with_daemon_ms": method::median(&burst_rounds.sluice),
                     "ratio": burst_ratio,
                     "protected_at_add_return": protected_at_return,
                     "daemon_confirmed_all_ms": confirmed_all},
        "ready_ms": {"first_start_wall": stats::ms(first_ready), "restarts": restarts,
                     "idle_wall": ready_idle_ms, "idle_daemon": idle_restore_ms,
                     "restored_wall": ready_restore_ms, "restored_daemon": restore_ms},
        "rss_mib": {"idle": rss_idle, "with_endpoints": rss_loaded, "after_restore": rss_restored,
                    "idle_after_restart": method::median(&rss.baseline)},
    });
    if let Some(to) = &figures_to {
        use figures::Name;
        let b = figures::Bench {
            name: "daemon-bench".into(),
            command: "bench/run daemon-bench".into(),
            figures: vec![
                Name::new(
                    "daemon.add_with_register",
                    "ADD with the daemon registering the pod, against ADD with no daemon",
                    "ms",
                    false,
                    "no daemon",
                )
                .interleaved(add_rounds.clone()),
                Name::new(
                    "daemon.parallel_add",
                    format!("{parallel} parallel ADDs with the daemon, wall time"),
                    "ms",
                    false,
                    "no daemon",
                )
                .interleaved(burst_rounds.clone()),
                Name::new(
                    "daemon.ready_restored",
                    format!("restart to ready with {restore} endpoints restored (kill -9)"),
                    "ms",
                    false,
                    "restart with none",
                )
                .interleaved(ready.clone()),
                Name::new(
                    "daemon.rss",
                    format!("RSS after a restart with {restore} endpoints"),
                    "MiB",
                    false,
                    "with none",
                )
                .interleaved(rss.clone()),
            ],
            charts: Vec::new(),
            notes: vec![
                format!(
                    "Protected when ADD returned (endpoint entry and edge check in place, \
                     attached by the plugin): {protected_rounds} of {pods} pods added one at a \
                     time, {protected_at_return} of {} in {bursts} bursts of {parallel}.",
                    parallel * bursts
                ),
                format!(
                    "ADD return to the daemon's confirmation p50 {:.2} ms, p99 {:.2} ms; register \
                     API round trip p50 {:.2} ms, p99 {:.2} ms; a burst of {parallel} confirmed \
                     {confirmed_all:.0} ms (median) after its first ADD started.",
                    guarded.p50, guarded.p99, api_rtt.p50, api_rtt.p99
                ),
                format!(
                    "RSS idle {rss_idle:.1} MiB, with {restore} endpoints {rss_loaded:.1} MiB; \
                     the daemon's own restore with {restore} endpoints {restore_ms:.1} ms \
                     (median), with none {idle_restore_ms:.1} ms."
                ),
            ],
        };
        if let Err(e) = std::fs::write(to, serde_json::to_string_pretty(&b).unwrap()) {
            eprintln!("daemon-bench: writing {}: {e}", to.display());
            return ExitCode::FAILURE;
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    } else {
        println!(
            "sluiced on this machine ({pods} pods registered, {bursts} bursts, {restarts} restarts \
             with {restore} restored against as many with none; medians)"
        );
        println!(
            "{:<44}{:>12}{:>12}{:>10}",
            "", "baseline", "sluiced", "ratio"
        );
        let row = |name: &str, base: f64, v: f64| {
            println!("{name:<44}{base:>12.2}{v:>12.2}{:>10.2}", v / base);
        };
        row(
            "ADD p50 ms (no daemon | with register)",
            add_without.p50,
            add_with.p50,
        );
        row(
            "ADD p99 ms (no daemon | with register)",
            add_without.p99,
            add_with.p99,
        );
        row(
            &format!("{parallel} parallel ADDs, wall ms"),
            method::median(&burst_rounds.baseline),
            method::median(&burst_rounds.sluice),
        );
        row(
            &format!("restart to ready ms (none | {restore}), wall"),
            ready_idle_ms,
            ready_restore_ms,
        );
        row(
            &format!("restart to ready ms (none | {restore}), daemon"),
            idle_restore_ms,
            restore_ms,
        );
        row(
            &format!("RSS MiB (idle | {restore} endpoints)"),
            rss_idle,
            rss_loaded,
        );
        row(
            &format!("RSS MiB after restart (none | {restore})"),
            method::median(&rss.baseline),
            rss_restored,
        );
        println!();
        println!(
            "{:<44}{:>12}{:>12}{:>10}",
            "against the issue's targets", "target", "sluiced", "share"
        );
        let t = |name: &str, target: f64, v: f64| {
            let verdict = if v <= target { "PASS" } else { "FAIL" };
            println!(
                "{name:<44}{target:>12.2}{v:>12.2}{:>10.2}  {verdict}",
                v / target
            );
        };
        t(
            "ADD return to endpoint entry p99 ms",
            P99_REGISTER_MS,
            visible.p99,
        );
        t(
            &format!("{parallel} parallel ADDs, with / without daemon"),
            MAX_BURST_RATIO,
            burst_ratio,
        );
        t(
            "register API round trip p99 ms",
            P99_REGISTER_MS,
            api_rtt.p99,
        );
        t(
            &format!("ready ms with {restore} endpoints (wall)"),
            READY_MS,
            ready_restore_ms,
        );
        t("RSS MiB idle", RSS_MIB, rss_idle);
        t(
            &format!("RSS MiB with {restore} endpoints"),
            RSS_MIB,
            rss_loaded.max(rss_restored),
        );
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        println!(
            "protected when ADD returned: {protected_rounds} of {pods} pods one at a time, \
             {protected_at_return} of {} in {bursts} bursts (target: all) -> {}",
            parallel * bursts,
            verdict(protected_rounds == pods && protected_at_return == parallel * bursts)
        );
        println!(
            "(the daemon registered and confirmed every edge of a burst {:.0} ms (median) after its first ADD \
             started; one pod: ADD return to confirmed p50 {:.2} ms, p99 {:.2} ms; register API round \
             trip p50 {:.2} ms; tcAttach={tc_attach})",
            confirmed_all,
            guarded.p50,
            guarded.p99,
            api_rtt.p50
        );
    }

    eprintln!("daemon-bench: removing {} pods", live.len());
    for p in &live {
        node.cni("DEL", &p.cid, Some(&p.ns.path()), "eth0", &conf);
    }
    drop(live);
    drop(d);
    ExitCode::SUCCESS
}
