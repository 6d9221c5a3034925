//! soak: pod churn and daemon kills under steady service traffic, for half
//! an hour by default, with the fault suite's machinery
//! (`sluice_tests::soak`).
//!
//! - A node (a netns) with its daemon, a Service over two backend pods,
//!   and steady traffic from a client pod and from the node: requests on
//!   established connections and a new connection per round.
//! - Pods created and deleted in waves by parallel plugin runs, some of
//!   them SIGKILLed at random moments (a killed ADD is DELed, a killed DEL
//!   retried, as the runtime does); after every wave the checker compares
//!   veths, addresses, routes, tc attachment, map entries, records and
//!   IPAM reservations with the pods that exist.
//! - The first half: the daemon SIGKILLed and restarted every 10-20 s.
//!   The second half: one daemon process lives through the churn, so its
//!   RSS and open descriptors at the start and the end of that half show
//!   what it accumulates (a daemon killed every few seconds never lives
//!   long enough to show a leak). Both are reported, with the first
//!   daemon's after its first wave.
//!
//! Must hold: 0 failed requests on established connections, 0 failed
//! connects, 0 problems found by the checker, 0 addresses left reserved
//! after the last pod is deleted, RSS and descriptors of the long-lived
//! daemon not more than 10 % higher at the end than at the start.
//!
//! Needs root and release builds next to this binary.

#[path = "cleanup.rs"]
mod cleanup;

use cleanup::Track;
use serde_json::json;
use sluice_tests::soak::{kill_loop, rss_and_fds, settle, Churn, ServiceRig};
use sluice_tests::Node;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: soak [--minutes M] [--wave N] [--parallel P] [--kill-fraction F]
            [--kill-every A-B] [--quick] [--json]

  --minutes M        length of the run (default 30), half with daemon kills
  --wave N           pods added (and the previous wave's deleted) per wave (default 50)
  --parallel P       plugin runs at a time (default 8)
  --kill-fraction F  share of plugin runs SIGKILLed (default 0.05)
  --kill-every A-B   seconds between daemon kills in the first half (default 10-20)
  --quick            2 minutes, waves of 20 (for a try)
  --json             print the figures as JSON

Runs as root: bench/run soak [options] builds the release binaries first.";

struct Opts {
    minutes: f64,
    wave: usize,
    parallel: usize,
    kill_fraction: f64,
    kill_every: (u64, u64),
    json: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        minutes: 30.0,
        wave: 50,
        parallel: 8,
        kill_fraction: 0.05,
        kill_every: (10, 20),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => o.minutes = val()?.parse().map_err(|_| "--minutes: a number")?,
            "--wave" => o.wave = val()?.parse().map_err(|_| "--wave: a number")?,
            "--parallel" => o.parallel = val()?.parse().map_err(|_| "--parallel: a number")?,
            "--kill-fraction" => {
                o.kill_fraction = val()?.parse().map_err(|_| "--kill-fraction: a number")?
            }
            "--kill-every" => {
                let v = val()?;
                let (a, b) = v.split_once('-').ok_or("--kill-every: A-B")?;
                o.kill_every = (
                    a.parse().map_err(|_| "--kill-every: A-B")?,
                    b.parse().map_err(|_| "--kill-every: A-B")?,
                );
                if o.kill_every.0 == 0 || o.kill_every.0 >= o.kill_every.1 {
                    return Err("--kill-every: 0 < A < B".into());
                }
            }
            "--quick" => {
                o.minutes = 2.0;
                o.wave = 20;
            }
            "--json" => o.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// Waves until `until`, each followed by the checker; the problems found.
fn churn_until(
    churn: &mut Churn<'_>,
    rig: &ServiceRig<'_>,
    o: &Opts,
    until: Instant,
    problems: &mut Vec<String>,
    after_first: &mut dyn FnMut(),
    (every, sample): (Duration, &mut dyn FnMut()),
) {
    let mut first = true;
    let mut next = Instant::now() + every;
    while Instant::now() < until {
        if Instant::now() >= next {
            sample();
            next += every;
        }
        churn.wave(o.wave, o.parallel, o.kill_fraction);
        let live: Vec<_> = rig.pods().into_iter().chain(churn.pods()).collect();
        let found = settle(rig.node, &rig.daemon, &live, 15);
        let wave = churn.stats.waves;
        problems.extend(found.into_iter().map(|p| format!("after wave {wave}: {p}")));
        if first {
            after_first();
            first = false;
        }
    }
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cleanup::install() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    sluice_tests::set_observer(cleanup::observe);
    let node = Node::new();
    let _t = Track::new(Some(&node.ns.name), &[node.dir.path()]);
    let rig = ServiceRig::new(&node, "");
    let _p = Track::new(None, &[&rig.daemon.lock().unwrap().pin_path]);
    let mut churn = Churn::new(&node, &rig.conf);
    let half = Duration::from_secs_f64(o.minutes * 30.0);
    let pid = || rig.daemon.lock().unwrap().pid().unwrap();
    let stop = AtomicBool::new(false);
    let mut problems = Vec::new();
    let t0 = Instant::now();
    eprintln!(
        "soak: {:.0} min, waves of {} pods, {} at a time, {:.0} % of plugin runs killed, \
         daemon killed every {}-{} s in the first half",
        o.minutes,
        o.wave,
        o.parallel,
        o.kill_fraction * 100.0,
        o.kill_every.0,
        o.kill_every.1
    );
    let traffic = rig.traffic(4, Duration::from_secs_f64(o.minutes * 60.0 + 600.0));
    let mut first = (0, 0);
    let kills = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            kill_loop(
                &rig.daemon,
                Duration::from_secs(o.kill_every.0)..Duration::from_secs(o.kill_every.1),
                &stop,
            )
        });
        churn_until(
            &mut churn,
            &rig,
            &o,
            t0 + half,
            &mut problems,
            &mut || first = rss_and_fds(pid()),
            (half, &mut || {}),
        );
        stop.store(true, Ordering::Relaxed);
        killer.join().unwrap()
    });
    eprintln!(
        "soak: first half done ({} waves, {kills} daemon kills); second half without kills",
        churn.stats.waves
    );
    let long_pid = pid();
    let mut start = (0, 0);
    // RSS and descriptors of the long-lived daemon, a tenth of the half
    // apart: a leak climbs steadily, a warming allocator levels off.
    let t_half = Instant::now();
    let mut series: Vec<(f64, u64, usize)> = Vec::new();
    churn_until(
        &mut churn,
        &rig,
        &o,
        t0 + 2 * half,
        &mut problems,
        &mut || start = rss_and_fds(long_pid),
        (half / 10, &mut || {
            let (r, f) = rss_and_fds(long_pid);
            series.push((t_half.elapsed().as_secs_f64(), r, f));
        }),
    );
    let end = rss_and_fds(long_pid);
    series.push((t_half.elapsed().as_secs_f64(), end.0, end.1));
    let report = traffic.finish();
    churn.delete_all(o.parallel);
    let leftover = settle(&node, &rig.daemon, &rig.pods(), 15);
    let leaked_addresses = leftover
        .iter()
        .filter(|p| p.starts_with("IPAM reservation left"))
        .count();
    problems.extend(leftover.into_iter().map(|p| format!("at the end: {p}")));
    let st = churn.stats;
    let secs = t0.elapsed().as_secs_f64();
    let growth = |a: u64, b: u64| {
        if a == 0 {
            f64::NAN
        } else {
            b as f64 / a as f64
        }
    };
    let rss_growth = growth(start.0, end.0);
    let fd_growth = growth(start.1 as u64, end.1 as u64);
    let ok = report.failed_requests == 0
        && report.failed_connects == 0
        && problems.is_empty()
        && churn.errors.is_empty()
        && leaked_addresses == 0
        && rss_growth <= 1.10
        && fd_growth <= 1.10;
    if o.json {
        println!(
            "{}",
            json!({
                "minutes": secs / 60.0,
                "waves": st.waves, "adds": st.adds, "dels": st.dels,
                "adds_killed": st.adds_killed, "dels_killed": st.dels_killed,
                "daemon_kills": kills,
                "requests": report.requests, "failed_requests": report.failed_requests,
                "connects": report.connects, "failed_connects": report.failed_connects,
                "checker_problems": problems, "plugin_errors": churn.errors,
                "leaked_addresses": leaked_addresses,
                "first_daemon": {"rss_kib": first.0, "fds": first.1},
                "long_lived_daemon": {
                    "series": series.iter().map(|(t, r, f)| json!({"secs": t, "rss_kib": r, "fds": f})).collect::<Vec<_>>(),
                    "start": {"rss_kib": start.0, "fds": start.1},
                    "end": {"rss_kib": end.0, "fds": end.1},
                    "rss_ratio": rss_growth, "fd_ratio": fd_growth,
                },
                "ok": ok,
            })
        );
    } else {
        println!("soak: {:.1} min on this machine", secs / 60.0);
        println!(
            "  churn            {} waves, {} pods added and deleted, {} ADDs and {} DELs killed",
            st.waves, st.adds, st.adds_killed, st.dels_killed
        );
        println!("  daemon kills     {kills} (first half)");
        println!(
            "  requests         {} served on established connections, {} failed",
            report.requests, report.failed_requests
        );
        println!(
            "  connects         {} to the service, {} failed",
            report.connects, report.failed_connects
        );
        println!(
            "  checker          {} problems; plugin errors {}",
            problems.len(),
            churn.errors.len()
        );
        println!("  leaked addresses {leaked_addresses}");
        println!(
            "  daemon RSS       first {} KiB; long-lived: start {} KiB, end {} KiB, end/start {:.3}",
            first.0, start.0, end.0, rss_growth
        );
        println!(
            "  daemon fds       first {}; long-lived: start {}, end {}, end/start {:.3}",
            first.1, start.1, end.1, fd_growth
        );
        println!(
            "  long-lived RSS   {} (KiB, every tenth of the half)",
            series
                .iter()
                .map(|(t, r, _)| format!("{r}@{t:.0}s"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for p in problems.iter().chain(&churn.errors).take(20) {
            println!("  ! {p}");
        }
        for e in report.errors.iter().take(10) {
            println!("  ! traffic: {e}");
        }
        println!("  {}", if ok { "PASS" } else { "FAIL" });
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
