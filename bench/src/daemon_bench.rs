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
//! - A burst of P parallel ADDs without and with the daemon, and whether
//!   every pod of the burst was protected when its ADD returned.
//! - Start-to-ready with M restored endpoints (default 1,000), after
//!   `kill -9`, against an idle start (no endpoints) in the same run.
//! - RSS idle and with M endpoints.
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
usage: daemon-bench [--pods N] [--restore M] [--parallel P] [--tc-attach auto|tcx|clsact]
                    [--quick] [--json] [--figures FILE]

  --pods N      rounds of the registration latency, each adding one pod
                without and one with the daemon (default 200)
  --restore M   endpoints restored at start and held for RSS (default
                1000, at least 2 x --pods)
  --parallel P  pods in the burst test: P ADDs at once, without and with
                the daemon (default 100)
  --tc-attach   tcAttach of the plugin and tc_attach of the daemon (default
                auto: a clsact filter)
  --json        print the figures as JSON
  --quick       --pods 40 --restore 200 --parallel 20 (a minute or two)
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
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
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
            "--json" => as_json = true,
            "--quick" => {
                pods = 40;
                restore = 200;
                parallel = 20;
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
    let conf = node.conf("1.0.0", RANGES).replace(
        "\"pinPath\"",
        &format!("\"tcAttach\":\"{tc_attach}\",\"pinPath\""),
    );

    // Baseline: ADD with no daemon listening (the plugin's notify fails at
    // once on the missing socket), interleaved below with ADD + register.
    let mut d = Daemon::configure(&node, &format!("tc_attach = \"{tc_attach}\"\n"));
    let _pin_track = Track::new(None, &[&d.pin_path]);
    let ready_idle = d.spawn();
    let mut _daemon_track = Track::process(d.pid().unwrap());
    let rss_idle = rss_mib(d.pid().unwrap());
    let idle_restore_ms = d.status()["restore"]["duration_ms"].as_f64().unwrap();

    eprintln!("daemon-bench: {parallel} parallel ADDs without, then with the daemon");
    let socket = d.socket();
    let hidden = socket.with_extension("hidden");
    std::fs::rename(&socket, &hidden).unwrap();
    let (burst, burst_without) = parallel_adds(&node, &conf, parallel, "pw");
    std::fs::rename(&hidden, &socket).unwrap();
    del_all(&node, &conf, burst);
    let (burst, burst_with) = parallel_adds(&node, &conf, parallel, "pd");
    let mut confirmed_all = burst_with;
    let t = Instant::now();
    let protected_at_return = loop {
        let eps = d.endpoints();
        let views: Vec<_> = burst.iter().filter_map(|p| eps.get(&p.cid)).collect();
        if views.len() == burst.len() && views.iter().all(|e| e["edge"]["protecting"] == true) {
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
    confirmed_all += t.elapsed();
    del_all(&node, &conf, burst);

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

    d.kill9();
    drop(_daemon_track);
    let ready_restore = d.spawn();
    _daemon_track = Track::process(d.pid().unwrap());
    let st = d.status();
    let restore_ms = st["restore"]["duration_ms"].as_f64().unwrap();
    let restored = st["restore"]["report"]["restored"].as_u64().unwrap();
    assert_eq!(restored as usize, restore, "{st}");
    let rss_restored = rss_mib(d.pid().unwrap());

    let add_rounds = method::Rounds {
        baseline: add_without.clone(),
        sluice: add_with.clone(),
    };
    let add_with = pct(add_with);
    let add_without = pct(add_without);
    let visible = pct(visible);
    let guarded = pct(guarded);
    let api_rtt = pct(api_rtt);
    let ready_idle_ms = stats::ms(ready_idle);
    let ready_restore_ms = stats::ms(ready_restore);

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
        "parallel": {"pods": parallel, "add_wall_without_daemon_ms": stats::ms(burst_without),
                     "add_wall_with_daemon_ms": stats::ms(burst_with),
                     "ratio": stats::ms(burst_with) / stats::ms(burst_without),
                     "protected_at_add_return": protected_at_return,
                     "daemon_confirmed_all_ms": stats::ms(confirmed_all)},
        "ready_ms": {"idle_wall": ready_idle_ms, "idle_daemon": idle_restore_ms,
                     "restored_wall": ready_restore_ms, "restored_daemon": restore_ms},
        "rss_mib": {"idle": rss_idle, "with_endpoints": rss_loaded, "after_restore": rss_restored},
    });
    if let Some(to) = &figures_to {
        let one = |id: &str, title: String, unit: &str, base_label: &str, base: f64, v: f64| {
            figures::Figure {
                id: id.into(),
                title,
                unit: unit.into(),
                higher_is_better: false,
                baseline_label: base_label.into(),
                baseline: base,
                sluice: v,
                ratio: None,
                rounds: None,
            }
        };
        let b = figures::Bench {
            name: "daemon-bench".into(),
            command: "bench/run daemon-bench".into(),
            figures: vec![
                figures::Figure {
                    id: "daemon.add_with_register".into(),
                    title: "ADD with the daemon registering the pod, against ADD with no daemon"
                        .into(),
                    unit: "ms".into(),
                    higher_is_better: false,
                    baseline_label: "no daemon".into(),
                    baseline: method::median(&add_rounds.baseline),
                    sluice: method::median(&add_rounds.sluice),
                    ratio: Some(method::ratio(&add_rounds)),
                    rounds: Some(add_rounds.clone()),
                },
                one(
                    "daemon.parallel_add",
                    format!("{parallel} parallel ADDs with the daemon, wall time"),
                    "ms",
                    "no daemon",
                    stats::ms(burst_without),
                    stats::ms(burst_with),
                ),
                one(
                    "daemon.ready_restored",
                    format!("start to ready with {restore} endpoints restored (kill -9)"),
                    "ms",
                    "idle start",
                    ready_idle_ms,
                    ready_restore_ms,
                ),
                one(
                    "daemon.rss",
                    format!("RSS with {restore} endpoints"),
                    "MiB",
                    "idle",
                    rss_idle,
                    rss_loaded,
                ),
            ],
            charts: Vec::new(),
        };
        if let Err(e) = std::fs::write(to, serde_json::to_string_pretty(&b).unwrap()) {
            eprintln!("daemon-bench: writing {}: {e}", to.display());
            return ExitCode::FAILURE;
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    } else {
        println!("sluiced, one run on this machine ({pods} pods registered, {restore} restored)");
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
            stats::ms(burst_without),
            stats::ms(burst_with),
        );
        row(
            &format!("ready ms (idle | {restore} restored), wall"),
            ready_idle_ms,
            ready_restore_ms,
        );
        row(
            &format!("ready ms (idle | {restore} restored), daemon"),
            idle_restore_ms,
            restore_ms,
        );
        row(
            &format!("RSS MiB (idle | {restore} endpoints)"),
            rss_idle,
            rss_loaded,
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
            stats::ms(burst_with) / stats::ms(burst_without),
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
             {protected_at_return} of {parallel} in the burst (target: all) -> {}",
            verdict(protected_rounds == pods && protected_at_return == parallel)
        );
        println!(
            "(the daemon registered and confirmed every edge of the burst {:.0} ms after the first ADD \
             started; one pod: ADD return to confirmed p50 {:.2} ms, p99 {:.2} ms; register API round \
             trip p50 {:.2} ms; tcAttach={tc_attach})",
            stats::ms(confirmed_all),
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
