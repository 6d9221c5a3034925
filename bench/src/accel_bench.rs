//! accel-bench: what the same-node TCP acceleration (sockmap) gives two
//! pods on one node, against the same connection through the kernel's TCP
//! stack, in one run: acceleration switched off and on for alternate
//! connections (`sluicectl accel off|on` through the API), rounds
//! interleaved. The client and server threads are pinned first to the same
//! CPU, then to different CPUs. Measured: request/response rate and
//! p50/p99 latency for 1 B and 1 KiB messages over one connection;
//! one-way and bidirectional throughput in 64 KiB writes; the time from a
//! writer's close to its reader's EOF, and from the start of its one
//! 64 KiB write to that EOF (a one-shot response); the same between an application
//! and a proxy inside one pod (over 127.0.0.1). Beside them, the same
//! ping-pong over a Unix-domain socketpair, driven the same way: the next
//! rung of the ladder (TCP, Unix socket, sockmap), and the same pair with
//! blocking reads and writes (no EAGAIN read, no poll).
//!
//! Sockets are non-blocking and driven as event loops drive them (read or
//! write, poll when it would block), for both variants alike: the
//! acceleration applies to such sockets only (docs/sockmap.md).
//!
//! Needs root and release builds next to this binary.

#[path = "cleanup.rs"]
mod cleanup;
#[path = "figures.rs"]
#[allow(dead_code)]
mod figures;
#[path = "method.rs"]
#[allow(dead_code)]
mod method;

use cleanup::Track;
use serde_json::{json, Value};
use sluice_common::api::Request;
use sluice_tests::daemon::Daemon;
use sluice_tests::nbsock::{accept_nb, connect_nb, listen_nb, Nb, NbUnix};
use sluice_tests::{with_pod_annotations, Node, NsRunner, Pod};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: accel-bench [--rounds N] [--secs S] [--max-queue BYTES] [--node-off] [--only TEXT]
                   [--cpus TEXT] [--variant tcp|sluice] [--eof-write BYTES] [--quick]
                   [--per-round] [--json] [--figures FILE]

  --rounds N  samples per variant and test, variants interleaved (default 10)
  --secs S    length of one sample in seconds (default 1)
  --max-queue BYTES  sluiced's accel_max_queue_bytes (default: its default)
  --node-off  sluiced's accel_node = false: the node's servers stay on TCP, so
              the node path measures a pod's socket that finds no peer in the
              map (default: accel_node = true, the node's servers take part)
  --only TEXT  run only the tests whose name contains TEXT
  --cpus TEXT  run only the CPU layout whose name contains TEXT (\"same\", \"two\")
  --variant V  measure only \"tcp\" or only \"sluice\" (for profiling one; no ratio)
  --eof-write BYTES  what the close-to-EOF and write-to-EOF tests write
              in one write before they close (default 65536)
  --quick     2 rounds of 0.3 s: the figures are rough, the code runs
  --per-round  print each round's pair and the acceleration counters that
              moved during its accelerated sample (to stderr): which rounds
              fell back, drained or were evicted
  --json      print the figures as JSON instead of the table
  --figures FILE  also write the figures in bench-report's shape to FILE

Runs as root: bench/run accel-bench [options] builds the release binaries first.";

const RANGES: &str = r#"[[{"subnet":"10.234.0.0/24","gateway":"10.234.0.1"}]]"#;

/// Pins the calling thread to `cpu` (best effort, as before: an unpinned
/// sample still measures both variants alike).
fn pin(cpu: usize) {
    let _ = sluice_tests::pin_to_cpu(cpu);
}

/// Where the two ends are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// pod a to pod b
    Pods,
    /// two threads of pod a over 127.0.0.1 (an app and its proxy)
    InPod,
    /// pod a to a server in the node's own netns, on its gateway address:
    /// accelerated (`accel_node = true`), or with `--node-off` a control,
    /// what the pod's socket pays for joining the map without a peer
    ToNode,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Pods => "pod to pod",
            Path::InPod => "app to proxy in a pod",
            Path::ToNode => "pod to the node's netns",
        }
    }
}

struct Env<'a> {
    d: Daemon<'a>,
    _a: Pod<'a>,
    b_ip: std::net::IpAddr,
    /// Pod a's gateway: the node's address for it.
    gw: std::net::IpAddr,
    ra: NsRunner,
    rb: NsRunner,
    rn: NsRunner,
}

impl Env<'_> {
    fn switch(&self, on: bool) {
        self.d
            .call(Request::Accel { enabled: Some(on) })
            .expect("switch the acceleration");
    }

    fn accel(&self) -> Value {
        self.d
            .call(Request::Accel { enabled: None })
            .expect("acceleration state")
            .data
    }

    /// A new connection on `path`, accelerated if the switch is on.
    fn connect(&self, path: Path) -> (Nb, Nb) {
        let (listener_runner, bind): (&NsRunner, SocketAddr) = match path {
            Path::Pods => (&self.rb, (self.b_ip, 0).into()),
            Path::InPod => (&self.ra, "127.0.0.1:0".parse().unwrap()),
            Path::ToNode => (&self.rn, (self.gw, 0).into()),
        };
        let l = listener_runner.run(move || listen_nb(bind));
        let addr = l.local_addr().unwrap();
        let c = self.ra.run(move || connect_nb(addr));
        (c, accept_nb(&l))
    }
}

/// One sample: the figure and, for latency tests, p50/p99 in µs.
#[derive(Clone, Debug, Default)]
struct Sample {
    value: f64,
    p50: f64,
    p99: f64,
    /// Latency tests: (percentile, µs) at each of [`QUANTILES`].
    dist: Vec<(f64, f64)>,
}

/// Where a latency distribution is sampled for the chart, in hundredths
/// of a percent (99.99 % is 9999).
const QUANTILES: [u64; 11] = [
    100, 500, 1000, 2500, 5000, 7500, 9000, 9500, 9900, 9990, 9999,
];

/// `sorted` (ns) at each of [`QUANTILES`], as (percentile, µs).
fn distribution(sorted: &[u64]) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    QUANTILES
        .iter()
        .map(|&q| (q as f64 / 100.0, percentile(sorted, q)))
        .collect()
}

/// `sorted` (ns) at `q` hundredths of a percent, in µs.
fn percentile(sorted: &[u64], q: u64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() as u64 * q).div_ceil(10_000).max(1) as usize;
    sorted[rank - 1] as f64 / 1e3
}

/// Ping-pong of `size`-byte messages for `dur`: round trips per second
/// and their p50/p99 in µs. The server echoes on `cpus.1`, the client on
/// `cpus.0`.
fn rr<S: Read + Write + Send + 'static>(
    mut c: S,
    mut s: S,
    size: usize,
    dur: Duration,
    cpus: (usize, usize),
) -> Sample {
    let srv = std::thread::spawn(move || {
        pin(cpus.1);
        let mut buf = vec![0u8; size];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let cli = std::thread::spawn(move || {
        pin(cpus.0);
        let mut buf = vec![1u8; size];
        let mut lat = Vec::with_capacity(1 << 20);
        let t0 = Instant::now();
        while t0.elapsed() < dur {
            let t = Instant::now();
            c.write_all(&buf).unwrap();
            c.read_exact(&mut buf).unwrap();
            lat.push(t.elapsed().as_nanos() as u64);
        }
        let secs = t0.elapsed().as_secs_f64();
        drop(c);
        (lat, secs)
    });
    let (mut lat, secs) = cli.join().unwrap();
    srv.join().unwrap();
    lat.sort_unstable();
    Sample {
        value: lat.len() as f64 / secs,
        p50: percentile(&lat, 5000),
        p99: percentile(&lat, 9900),
        dist: distribution(&lat),
    }
}

/// Writes 64 KiB writes from `c` for `dur` while `s` reads: Gbit/s
/// received. `both`: `s` writes to `c` at the same time too, and the sum
/// of both directions is returned.
fn bulk(c: Nb, s: Nb, dur: Duration, cpus: (usize, usize), both: bool) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let writer = |mut w: Nb, cpu: usize, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            pin(cpu);
            let buf = vec![7u8; 64 << 10];
            while !stop.load(Ordering::Relaxed) {
                if w.write_all(&buf).is_err() {
                    break;
                }
            }
            w.shutdown(Shutdown::Write);
        })
    };
    let reader = |mut r: Nb, cpu: usize, got: Arc<AtomicU64>| {
        std::thread::spawn(move || {
            pin(cpu);
            let mut buf = vec![0u8; 256 << 10];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let mut threads = vec![
        writer(c.try_clone(), cpus.0, stop.clone()),
        reader(s.try_clone(), cpus.1, got.clone()),
    ];
    if both {
        threads.push(writer(s.try_clone(), cpus.1, stop.clone()));
        threads.push(reader(c.try_clone(), cpus.0, got.clone()));
    }
    // Warm up, then count over `dur`.
    std::thread::sleep(dur / 5);
    let (g0, t0) = (got.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(dur);
    let bytes = got.load(Ordering::Relaxed) - g0;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    drop((c, s));
    Sample {
        value: bytes as f64 * 8.0 / secs / 1e9,
        ..Sample::default()
    }
}

/// Where a close-to-EOF sample starts: at the writer's close (what the
/// close itself adds), or before its write (the whole one-shot transfer
/// the reader waits for, as a client waits for a response).
#[derive(Clone, Copy, Debug, PartialEq)]
enum EofFrom {
    Close,
    Write,
}

/// `n` connections: each writes `bytes` in one write and closes; the
/// reader's EOF follows. p50/p99 from `from` to the EOF in µs (value: the
/// p50).
fn close_to_eof(
    env: &Env,
    path: Path,
    n: usize,
    cpus: (usize, usize),
    bytes: usize,
    from: EofFrom,
) -> Sample {
    let mut d = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut c, mut s) = env.connect(path);
        let closed = std::thread::spawn(move || {
            pin(cpus.0);
            let buf = vec![3u8; bytes];
            let written = Instant::now();
            c.write_all(&buf).unwrap();
            let t = Instant::now();
            drop(c);
            match from {
                EofFrom::Close => t,
                EofFrom::Write => written,
            }
        });
        pin(cpus.1);
        let mut buf = vec![0u8; 64 << 10];
        while s.read(&mut buf).unwrap() > 0 {}
        let eof = Instant::now();
        let t = closed.join().unwrap();
        d.push(eof.saturating_duration_since(t).as_nanos() as u64);
    }
    d.sort_unstable();
    let p50 = percentile(&d, 5000);
    Sample {
        value: p50,
        p50,
        p99: percentile(&d, 9900),
        dist: distribution(&d),
    }
}

/// One test's samples of both variants.
struct Row {
    test: String,
    cpus: &'static str,
    unit: &'static str,
    off: Vec<Sample>,
    on: Vec<Sample>,
    /// The share of the "on" samples' bytes that went the redirected way.
    redirected: f64,
}

/// The median, 0 for no samples (a row not measured).
fn median(v: Vec<f64>) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        method::median(&v)
    }
}

impl Row {
    fn med(v: &[Sample], f: fn(&Sample) -> f64) -> f64 {
        median(v.iter().map(f).collect())
    }

    /// on ÷ off of the medians, and the lowest and highest ratio of the
    /// rounds (each round's on against its own off).
    fn ratio(&self) -> (f64, f64, f64) {
        let r: Vec<f64> = self
            .on
            .iter()
            .zip(&self.off)
            .map(|(a, b)| a.value / b.value)
            .collect();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        (
            Self::med(&self.on, |s| s.value) / Self::med(&self.off, |s| s.value),
            lo,
            hi,
        )
    }

    fn json(&self) -> Value {
        let (ratio, lo, hi) = self.ratio();
        let side = |v: &[Sample]| {
            json!({
                "median": Self::med(v, |s| s.value),
                "p50_us": Self::med(v, |s| s.p50),
                "p99_us": Self::med(v, |s| s.p99),
                "samples": v.iter().map(|s| s.value).collect::<Vec<_>>(),
            })
        };
        json!({
            "test": self.test, "cpus": self.cpus, "unit": self.unit,
            "tcp": side(&self.off), "sluice": side(&self.on),
            "ratio": ratio, "ratio_min": lo, "ratio_max": hi,
            "redirected_share": self.redirected,
        })
    }
}

/// `65536` as "64 KiB", `1000` as "1000 B".
fn size_name(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn main() -> ExitCode {
    let mut rounds = 10usize;
    let mut secs = 1.0f64;
    let mut as_json = false;
    let mut figures_to: Option<std::path::PathBuf> = None;
    let mut max_queue: Option<u64> = None;
    let mut node_off = false;
    let mut only = String::new();
    let mut layout_filter = String::new();
    let mut variant = String::new();
    let mut eof_write: usize = 64 << 10;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--secs" => secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0),
            "--quick" => {
                rounds = 2;
                secs = 0.3;
            }
            "--json" => as_json = true,
            "--figures" => figures_to = it.next().map(Into::into),
            "--max-queue" => max_queue = it.next().and_then(|v| v.parse().ok()),
            "--node-off" => node_off = true,
            "--only" => only = it.next().unwrap_or_default(),
            "--cpus" => layout_filter = it.next().unwrap_or_default(),
            "--variant" => variant = it.next().unwrap_or_default(),
            "--eof-write" => eof_write = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--per-round" => PER_ROUND.store(true, std::sync::atomic::Ordering::Relaxed),
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
    if !["", "tcp", "sluice"].contains(&variant.as_str()) {
        eprintln!("accel-bench: --variant is tcp or sluice\n{USAGE}");
        return ExitCode::from(2);
    }
    VARIANT.set(variant).expect("set once");
    if rounds == 0 || secs <= 0.0 || eof_write == 0 {
        eprintln!("accel-bench: --rounds, --secs and --eof-write must be positive\n{USAGE}");
        return ExitCode::from(2);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("accel-bench: needs root (namespaces, BPF)");
        return ExitCode::from(2);
    }
    if let Err(e) = cleanup::install() {
        eprintln!("accel-bench: {e}");
        return ExitCode::from(2);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dur = Duration::from_secs_f64(secs);

    let node = Node::new();
    let _node_track = Track::new(Some(&node.ns.name), &[node.dir.path()]);
    let d = Daemon::start_with(
        &node,
        &format!(
            "accel_node = {}\n{}",
            !node_off,
            max_queue.map_or(String::new(), |q| format!("accel_max_queue_bytes = {q}\n"))
        ),
    );
    let _pin_track = Track::new(None, &[&d.pin_path]);
    let _daemon_track = Track::process(d.pid().unwrap());
    // Opted in: where the kernel cannot run the guards, only such pods
    // are accelerated.
    let conf = with_pod_annotations(&node.conf("1.0.0", RANGES), &[("sluice.dev/accel", "true")]);
    let a = Pod::add(&node, &conf);
    let _at = Track::new(Some(&a.ns.name), &[]);
    let b = Pod::add(&node, &conf);
    let _bt = Track::new(Some(&b.ns.name), &[]);
    let b_ip = b.ips()[0].parse().unwrap();
    let gw = a.gateway();
    let env = Env {
        ra: NsRunner::new(&a.ns),
        rb: NsRunner::new(&b.ns),
        rn: NsRunner::new(&node.ns),
        gw,
        d,
        _a: a,
        b_ip,
    };
    let state = env.accel();
    let unguarded = state["unguarded"].as_str().map(str::to_string);

    let mut layouts = vec![("same CPU", (0, 0))];
    if cpus > 1 {
        layouts.push(("two CPUs", (0, 1)));
    }
    layouts.retain(|(name, _)| name.contains(&layout_filter));
    let mut rows = Vec::new();
    for path in [Path::Pods, Path::InPod, Path::ToNode] {
        for (cpu_name, cpu) in &layouts {
            // The node path is a control: one size of each kind.
            let sizes: &[usize] = if path == Path::ToNode {
                &[1]
            } else {
                &[1, 1024]
            };
            for &size in sizes {
                rows.push(measure(
                    &env,
                    &only,
                    format!("request/response {size} B, {}", path.name()),
                    cpu_name,
                    "round trips/s",
                    rounds,
                    |env| {
                        let (c, s) = env.connect(path);
                        rr(c, s, size, dur, *cpu)
                    },
                ));
            }
            for (name, both) in [("one-way", false), ("bidirectional", true)] {
                rows.push(measure(
                    &env,
                    &only,
                    format!("{name} throughput, 64 KiB writes, {}", path.name()),
                    cpu_name,
                    "Gbit/s",
                    rounds,
                    |env| {
                        let (c, s) = env.connect(path);
                        bulk(c, s, dur, *cpu, both)
                    },
                ));
            }
            for (from, what) in [
                (EofFrom::Close, "close to EOF"),
                (EofFrom::Write, "write to EOF"),
            ] {
                rows.push(measure(
                    &env,
                    &only,
                    format!("{what} after {}, {}", size_name(eof_write), path.name()),
                    cpu_name,
                    "µs (p50)",
                    rounds,
                    |env| close_to_eof(env, path, 50, *cpu, eof_write, from),
                ));
            }
        }
    }
    // The ladder's middle rung: a Unix socketpair, same ping-pong, driven
    // like the TCP sockets (non-blocking, poll when it would block), and,
    // beside it, with blocking reads and writes (no EAGAIN read, no poll:
    // what an event loop does not do, and what the shortcut does not
    // serve).
    fn rr_rounds<S: Read + Write + Send + 'static>(
        rounds: usize,
        pair: impl Fn() -> (S, S),
        size: usize,
        dur: Duration,
        cpus: (usize, usize),
    ) -> Vec<Sample> {
        (0..rounds)
            .map(|_| {
                let (c, s) = pair();
                rr(c, s, size, dur, cpus)
            })
            .collect()
    }
    let mut unix = Vec::new();
    for (cpu_name, cpu) in &layouts {
        for size in [1usize, 1024] {
            unix.push((
                format!("request/response {size} B, Unix socketpair"),
                *cpu_name,
                rr_rounds(rounds, NbUnix::pair, size, dur, *cpu),
            ));
            unix.push((
                format!("request/response {size} B, Unix socketpair, blocking"),
                *cpu_name,
                rr_rounds(rounds, || UnixStream::pair().unwrap(), size, dur, *cpu),
            ));
        }
    }
    let after = env.accel();

    let machine = json!({
        "kernel": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
        "cpus": cpus,
        "rounds": rounds,
        "secs": secs,
        "guards": unguarded.is_none(),
        "node_servers_accelerated": !node_off,
        "unguarded": unguarded,
    });
    if let Some(to) = &figures_to {
        let b = shared_figures(&rows, &unix);
        if let Err(e) = std::fs::write(to, serde_json::to_string_pretty(&b).unwrap()) {
            eprintln!("accel-bench: writing {}: {e}", to.display());
            return ExitCode::FAILURE;
        }
    }
    if as_json {
        let out = json!({
            "machine": machine,
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "unix": unix.iter().map(|(t, c, v)| json!({
                "test": t, "cpus": c,
                "median": median(v.iter().map(|s| s.value).collect()),
                "p50_us": median(v.iter().map(|s| s.p50).collect()),
                "p99_us": median(v.iter().map(|s| s.p99).collect()),
            })).collect::<Vec<_>>(),
            "counters": after["counters"],
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
        return ExitCode::SUCCESS;
    }
    println!(
        "accel-bench: Linux {}, {} CPUs, {} rounds of {:.1} s per variant, interleaved",
        machine["kernel"].as_str().unwrap_or(""),
        cpus,
        rounds,
        secs
    );
    if let Some(why) = &machine["unguarded"].as_str() {
        println!(
            "(no guards on this kernel: {why}; the pods are annotated sluice.dev/accel: \"true\")"
        );
    }
    println!(
        "(the node's servers {}: accel_node = {})",
        if node_off { "stay on TCP" } else { "take part" },
        !node_off
    );
    println!(
        "\n{:<56} {:<9} {:>14} {:>14} {:>7} {:>13} {:>7}",
        "test", "cpus", "TCP", "sluice", "ratio", "rounds", "redir"
    );
    rows.retain(|r| !r.on.is_empty());
    for r in &rows {
        let (ratio, lo, hi) = r.ratio();
        let fmt = |v: &[Sample]| {
            let m = Row::med(v, |s| s.value);
            if m >= 1000.0 {
                format!("{m:.0}")
            } else {
                format!("{m:.2}")
            }
        };
        println!(
            "{:<56} {:<9} {:>14} {:>14} {:>6.2}x {:>5.2}-{:<5.2}  {:>5.0}%   {}",
            r.test,
            r.cpus,
            fmt(&r.off),
            fmt(&r.on),
            ratio,
            lo,
            hi,
            r.redirected * 100.0,
            r.unit
        );
        if r.test.starts_with("request/response") {
            println!(
                "{:<56} {:<9} {:>14} {:>14} {:>7}",
                "  latency p50 / p99 (µs)",
                "",
                format!(
                    "{:.1} / {:.1}",
                    Row::med(&r.off, |s| s.p50),
                    Row::med(&r.off, |s| s.p99)
                ),
                format!(
                    "{:.1} / {:.1}",
                    Row::med(&r.on, |s| s.p50),
                    Row::med(&r.on, |s| s.p99)
                ),
                ""
            );
        }
    }
    println!();
    for (t, c, v) in &unix {
        let rate = median(v.iter().map(|s| s.value).collect());
        println!(
            "{:<56} {:<9} {:>14.0} round trips/s, p50 / p99 {:.1} / {:.1} µs{}",
            t,
            c,
            rate,
            median(v.iter().map(|s| s.p50).collect()),
            median(v.iter().map(|s| s.p99).collect()),
            unix_vs_tcp(&rows, t, c, rate),
        );
    }
    println!(
        "\nratio: sluice ÷ TCP of the medians (times: lower is better); rounds: lowest-highest \
         ratio of one round's pair; redir: share of the accelerated variant's bytes that were \
         redirected (the rest fell back to TCP, counters: {})",
        after["counters"]
    );
    ExitCode::SUCCESS
}

/// The Unix socketpair's rate `rate` (test `t`, layout `c`) as a multiple
/// of kernel TCP's between two pods in the same ping-pong: the rung the
/// shortcut is measured against ("" where TCP was not measured).
fn unix_vs_tcp(rows: &[Row], t: &str, c: &str, rate: f64) -> String {
    let rr = t.split(", Unix socketpair").next().unwrap_or_default();
    rows.iter()
        .find(|r| r.test == format!("{rr}, pod to pod") && r.cpus == c)
        .map(|r| Row::med(&r.off, |s| s.value))
        .filter(|tcp| *tcp > 0.0)
        .map_or(String::new(), |tcp| format!(" ({:.2}x TCP)", rate / tcp))
}

/// `--per-round`: print each round's figures and counter deltas.
static PER_ROUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--variant`: "" (both), "tcp" or "sluice".
static VARIANT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs `sample` `rounds` times with the acceleration off and on,
/// alternating, and keeps what each variant gave (one only with
/// `--variant`: the other's samples are then the same, for the table).
fn measure(
    env: &Env,
    only: &str,
    test: String,
    cpus: &'static str,
    unit: &'static str,
    rounds: usize,
    mut sample: impl FnMut(&Env) -> Sample,
) -> Row {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let (mut redir, mut passed) = (0u64, 0u64);
    let rounds = if test.contains(only) { rounds } else { 0 };
    let which = VARIANT.get().map_or("", String::as_str);
    for _ in 0..rounds {
        if which != "sluice" {
            env.switch(false);
            off.push(sample(env));
        }
        if which == "tcp" {
            on.push(off.last().expect("a sample").clone());
            continue;
        }
        env.switch(true);
        let c0 = env.accel()["counters"].clone();
        on.push(sample(env));
        if which == "sluice" {
            off.push(on.last().expect("a sample").clone());
        }
        let c1 = env.accel()["counters"].clone();
        let delta = |k: &str| c1[k].as_u64().unwrap_or(0) - c0[k].as_u64().unwrap_or(0);
        redir += delta("redir_bytes");
        passed += delta("pass_bytes");
        if PER_ROUND.load(std::sync::atomic::Ordering::Relaxed) {
            let moved: Vec<String> = c1
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| delta(k) > 0)
                .map(|(k, _)| format!("{k}={}", delta(k)))
                .collect();
            let (t, a) = (
                off.last().map_or(0.0, |s: &Sample| s.value),
                on[on.len() - 1].value,
            );
            eprintln!(
                "  round {}: {test} ({cpus}) tcp {t:.2} sluice {a:.2} {unit} ({:.2}x); {}",
                on.len(),
                a / t,
                moved.join(" ")
            );
        }
    }
    eprintln!("  measured: {test} ({cpus})");
    Row {
        test,
        cpus,
        unit,
        off,
        on,
        redirected: if redir + passed > 0 {
            redir as f64 / (redir + passed) as f64
        } else {
            0.0
        },
    }
}

/// A latency distribution over rounds: at each of [`QUANTILES`], the
/// median across the rounds of that quantile.
fn dist_line(v: &[Sample]) -> Vec<(f64, f64)> {
    QUANTILES
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            (
                q as f64 / 100.0,
                median(
                    v.iter()
                        .filter_map(|s| s.dist.get(i).map(|d| d.1))
                        .collect(),
                ),
            )
        })
        .collect()
}

/// Every measured row as a figure in bench-report's shape (TCP the
/// baseline, each round's pair one ratio), and the request/response
/// latency by percentile as a chart.
fn shared_figures(rows: &[Row], unix: &[(String, &'static str, Vec<Sample>)]) -> figures::Bench {
    let mut figs = Vec::new();
    for r in rows.iter().filter(|r| !r.on.is_empty()) {
        let rounds = method::Rounds {
            baseline: r.off.iter().map(|s| s.value).collect(),
            sluice: r.on.iter().map(|s| s.value).collect(),
        };
        let slug: String = format!("{} {}", r.test, r.cpus)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        figs.push(
            figures::Name::new(
                format!("accel.{slug}"),
                format!("{} ({})", r.test, r.cpus),
                r.unit,
                !r.unit.starts_with("µs"),
                "kernel TCP",
            )
            .interleaved(rounds),
        );
    }
    let mut lines = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.test == "request/response 1 B, pod to pod" && !r.on.is_empty())
    {
        for (label, v) in [("kernel TCP", &r.off), ("Sluice sockmap", &r.on)] {
            lines.push(figures::Line {
                label: format!("{label}, {}", r.cpus),
                points: dist_line(v),
            });
        }
    }
    for (t, c, v) in unix {
        if t == "request/response 1 B, Unix socketpair" {
            lines.push(figures::Line {
                label: format!("Unix socketpair, {c}"),
                points: dist_line(v),
            });
        }
    }
    figures::Bench {
        name: "accel-bench".into(),
        command: "bench/run accel-bench".into(),
        figures: figs,
        charts: if lines.is_empty() {
            Vec::new()
        } else {
            vec![figures::Chart {
                id: "accel-rr-latency".into(),
                title: "1 B request/response latency between two pods, with and without sockmap"
                    .into(),
                x_label: "percentile (1 to 99.99)".into(),
                y_label: "µs".into(),
                log_x: false,
                lines,
            }]
        },
        notes: Vec::new(),
    }
}
