//! cni-bench: ADD and DEL latency of `sluice` against the reference `ptp` +
//! `host-local` (Debian's containernetworking-plugins), both exec'd the same
//! way from the same node netns in one run, interleaved, on a node that
//! looks like a production one: sluiced running, some pods of each plugin
//! already there, state and IPAM dirs on a tmpfs (as /var/run is); then N
//! parallel ADDs of each, wall time; then sluice's ADD with 10, 100 and
//! 1,000 pods on the node. Needs root and release builds of the workspace's
//! binaries next to this one (`cargo build --release --workspace --bins`).

mod cleanup;
#[allow(dead_code)]
mod figures;
#[allow(dead_code)]
mod method;
mod plugin;
mod report;
mod stats;

use cleanup::Track;
use plugin::{Plugin, Pod};
use report::{Latency, Level, Parallel, Report, Scale};
use sluice_tests::daemon::Daemon;
use sluice_tests::{bin, list_files, Node, NsRunner};
use stats::{ms, Summary};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const MIN_ROUNDS: usize = 20;
/// Pods a plugin needs at most, at the largest scale level plus the rounds.
const SLUICE_RANGES_CAPACITY: usize = 65000;
const REFERENCE_DIR: &str = "/usr/lib/cni";
const SLUICE_RANGES: &str = r#"[[{"subnet":"10.210.0.0/16"}]]"#;
const REFERENCE_SUBNET: &str = "10.211.0.0/16";
const REFERENCE_NET: &str = "refnet";

const USAGE: &str = "\
usage: cni-bench [--rounds N] [--parallel N] [--parallel-rounds N] [--residents N]
                 [--scale L,L,..|none] [--scale-rounds N] [--quick] [--json]
                 [--figures FILE]

  --rounds N        interleaved ADD/DEL rounds per plugin (default 100, at least 20)
  --parallel N      pods in the parallel-ADD test (default 100)
  --parallel-rounds N  parallel-ADD batches of each plugin, alternating which
                    goes first (default 7)
  --residents N     pods of each plugin on the node during the rounds (default 10)
  --scale L,..      pods already on the node at which sluice's ADD is timed again,
                    round by round against a second node that keeps --residents
                    (default 10,100,1000; none skips it)
  --scale-rounds N  alternating ADD/DEL rounds at each scale level (default 60)
  --json            print the figures as JSON instead of the table
  --quick           --rounds 20 --parallel 20 --parallel-rounds 3 --scale 10,100
                    --scale-rounds 10
  --figures FILE    also write the figures in bench-report's shape to FILE

Runs as root: bench/run cni-bench [options] builds the release binaries first.";

#[derive(Debug)]
struct Args {
    rounds: usize,
    parallel: usize,
    parallel_rounds: usize,
    residents: usize,
    scale: Vec<usize>,
    scale_rounds: usize,
    json: bool,
    figures: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        rounds: 100,
        parallel: 100,
        parallel_rounds: 7,
        residents: 10,
        scale: vec![10, 100, 1000],
        scale_rounds: 60,
        json: false,
        figures: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut number = |name: &str| -> Result<usize, String> {
            let v = inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a number"))?;
            v.parse()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--rounds" => args.rounds = number("--rounds")?,
            "--parallel" => args.parallel = number("--parallel")?,
            "--parallel-rounds" => args.parallel_rounds = number("--parallel-rounds")?,
            "--residents" => args.residents = number("--residents")?,
            "--scale-rounds" => args.scale_rounds = number("--scale-rounds")?,
            "--scale" => {
                let v = inline.clone().or_else(|| it.next()).unwrap_or_default();
                args.scale = if v == "none" {
                    Vec::new()
                } else {
                    v.split(',')
                        .map(|x| {
                            x.parse()
                                .map_err(|_| format!("--scale: {x:?} is not a number"))
                        })
                        .collect::<Result<Vec<usize>, String>>()?
                };
                args.scale.sort_unstable();
            }
            "--json" if inline.is_none() => args.json = true,
            "--quick" if inline.is_none() => {
                args.rounds = MIN_ROUNDS;
                args.parallel = 20;
                args.parallel_rounds = 3;
                args.scale = vec![10, 100];
                args.scale_rounds = 10;
            }
            "--figures" => {
                args.figures = Some(
                    inline
                        .clone()
                        .or_else(|| it.next())
                        .ok_or("--figures needs a file")?
                        .into(),
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    if args.rounds < MIN_ROUNDS {
        return Err(format!("--rounds must be at least {MIN_ROUNDS}"));
    }
    if args.parallel == 0 || args.parallel_rounds == 0 {
        return Err("--parallel and --parallel-rounds must be at least 1".into());
    }
    if args.scale.last().copied().unwrap_or(0) + args.scale_rounds > SLUICE_RANGES_CAPACITY {
        return Err(format!(
            "--scale asks for more pods than the bench's range holds ({SLUICE_RANGES_CAPACITY})"
        ));
    }
    Ok(args)
}

/// What must be there before anything is created.
fn preflight() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "needs root: it creates network namespaces and veths and runs \
                    CNI plugins as a container runtime does; run it as root"
                .into(),
        );
    }
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let dir = exe.parent().ok_or("own path has no directory")?;
    let plugins = sluice_tests::plugin_dir(dir)
        .ok_or_else(|| format!("{} is not target/<host triple>/release", dir.display()))?;
    for name in sluice_tests::PLUGINS {
        if !plugins.join(name).is_file() {
            return Err(format!(
                "{} is not built; run `bench/run cni-bench`, which builds it \
                 (or `source .ci/setup && build_plugins --release`)",
                plugins.join(name).display()
            ));
        }
    }
    for name in ["ptp", "host-local"] {
        let p = Path::new(REFERENCE_DIR).join(name);
        if !p.is_file() {
            return Err(format!(
                "{} is missing; install Debian's containernetworking-plugins",
                p.display()
            ));
        }
    }
    for tool in ["ip", "ping"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file());
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("cni-bench: {msg}");
}

fn reference_conf(data_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": REFERENCE_NET,
        "type": "ptp",
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{ "subnet": REFERENCE_SUBNET }]],
        },
    })
    .to_string()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cni-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = preflight().and_then(|_| cleanup::install()) {
        eprintln!("cni-bench: {e}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(report) => {
            if let Some(to) = &args.figures {
                let b = report.shared();
                if let Err(e) = std::fs::write(to, serde_json::to_string_pretty(&b).unwrap()) {
                    eprintln!("cni-bench: writing {}: {e}", to.display());
                    return ExitCode::FAILURE;
                }
            }
            if args.json {
                println!("{:#}", report.json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cni-bench: aborted: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Report, String> {
    // Declared first, dropped last: every pod is DEL'd and its netns gone
    // before the node netns (and any veth left in it) and its dirs go.
    let node = Node::new();
    let _node_track = Track::new(Some(&node.ns.name), &[node.dir.path()]);
    node.mount_tmpfs();
    let daemon = Daemon::start(&node);
    let _daemon_track = Track::process(daemon.pid().unwrap());
    let runner = NsRunner::new(&node.ns);
    let (sluice, reference) = plugins(&node);

    progress("warm-up: one untimed ADD, gateway ping, DEL of each plugin");
    for p in [&sluice, &reference] {
        let mut pod = Pod::new(p, &runner);
        pod.timed("ADD")?;
        pod.reaches_gateway()?;
        pod.timed("DEL")?;
    }
    progress(&format!(
        "{} pods of each plugin stay on the node",
        args.residents
    ));
    let mut residents = add_pods([&sluice, &reference], &runner, args.residents)?;

    progress(&format!("{} interleaved rounds", args.rounds));
    let (add, del) = interleaved(&node, &runner, &sluice, &reference, args.rounds)?;

    let parallel = parallel_adds(
        &node,
        &runner,
        &sluice,
        &reference,
        args.parallel,
        args.parallel_rounds,
    )?;

    let scale = if args.scale.is_empty() {
        None
    } else {
        Some(scaling(
            &node,
            &daemon,
            &runner,
            &sluice,
            args,
            &mut residents,
        )?)
    };
    drop(residents);
    check_clean(&node)?;
    drop(daemon);
    Ok(Report {
        rounds: args.rounds,
        residents: args.residents,
        sluice: sluice.label,
        reference: reference.label,
        add,
        del,
        parallel,
        scale,
    })
}

/// sluice's ADD timed with more and more of its pods on the node: the
/// plugin's cost must not grow with them. Each level is measured round by
/// round against the same ADD on a second node (its own netns, daemon and
/// state, on the same kernel) that keeps `args.residents` pods of each
/// plugin, which goes first alternating: the machine's drift over the
/// minutes it takes to add 1,000 pods falls on both sides alike. What the
/// ratio cannot show is a cost in the kernel's state shared by every
/// netns, which both nodes carry.
fn scaling<'a>(
    node: &Node,
    daemon: &Daemon,
    runner: &'a NsRunner,
    sluice: &'a Plugin,
    args: &Args,
    residents: &mut Vec<Pod<'a>>,
) -> Result<Scale, String> {
    // Declared in this order so the pods go first and the node last.
    let second = Node::new();
    let _second_track = Track::new(Some(&second.ns.name), &[second.dir.path()]);
    second.mount_tmpfs();
    let second_daemon = Daemon::start(&second);
    let _second_daemon_track = Track::process(second_daemon.pid().unwrap());
    let second_runner = NsRunner::new(&second.ns);
    let (second_sluice, second_reference) = plugins(&second);
    progress(&format!(
        "second node with {} pods of each plugin",
        args.residents
    ));
    let second_pods = add_pods(
        [&second_sluice, &second_reference],
        &second_runner,
        args.residents,
    )?;
    settle(&second, &second_daemon, args.residents)?;

    let add_del = |plugin: &Plugin, runner: &NsRunner, on: &Node| -> Result<Duration, String> {
        let mut pod = Pod::new(plugin, runner);
        let took = pod.timed("ADD")?;
        pod.timed("DEL")?;
        on.ns.wait_for_retired_links();
        Ok(took)
    };
    let mut on_node = args.residents;
    let mut levels = Vec::new();
    for &level in &args.scale {
        progress(&format!(
            "ADD with {level} pods on the node, against the second node with {}",
            args.residents
        ));
        while on_node < level {
            let mut pod = Pod::new(sluice, runner);
            pod.timed("ADD")?;
            residents.push(pod);
            on_node += 1;
        }
        settle(node, daemon, on_node)?;
        settle(&second, &second_daemon, args.residents)?;
        let (mut big, mut small) = (Vec::new(), Vec::new());
        // One warm-up round, not kept.
        for i in 0..=args.scale_rounds {
            let (b, s) = if i % 2 == 0 {
                let s = add_del(&second_sluice, &second_runner, &second)?;
                (add_del(sluice, runner, node)?, s)
            } else {
                let b = add_del(sluice, runner, node)?;
                (b, add_del(&second_sluice, &second_runner, &second)?)
            };
            if i > 0 {
                big.push(b);
                small.push(s);
            }
        }
        levels.push(Level {
            pods: level,
            rounds: method::Rounds {
                baseline: small.iter().copied().map(ms).collect(),
                sluice: big.iter().copied().map(ms).collect(),
            },
            big: Summary::of(&big),
            small: Summary::of(&small),
        });
    }
    drop(second_pods);
    check_clean(&second)?;
    Ok(Scale {
        against: args.residents,
        levels,
    })
}

/// Waits until the node is at rest with `pods` sluice pods: the daemon has
/// registered each and checked its edge, and no retired link is left. The
/// level measures ADD on a node with that many pods, not ADD in the wake
/// of a burst of that many (the daemon and the kernel still catching up).
fn settle(node: &Node, daemon: &Daemon, pods: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let eps = daemon.endpoints();
        let checked = eps
            .values()
            .filter(|e| e["edge"]["verified_unix_ms"].as_u64().unwrap_or(0) > 0)
            .count();
        if checked >= pods {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the daemon checked {checked} of {pods} pods' edges in 60 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    node.ns.wait_for_retired_links();
    Ok(())
}

/// The two plugins under test on `node`: sluice and the reference.
fn plugins(node: &Node) -> (Plugin, Plugin) {
    (
        Plugin {
            label: "sluice",
            path: bin("sluice"),
            conf: node.conf("1.0.0", SLUICE_RANGES),
        },
        Plugin {
            label: "ptp+host-local",
            path: PathBuf::from(REFERENCE_DIR).join("ptp"),
            conf: reference_conf(&reference_data_dir(node)),
        },
    )
}

/// `n` pods of each of `plugins`, added and kept (their ADD times unused).
fn add_pods<'a>(
    plugins: [&'a Plugin; 2],
    runner: &'a NsRunner,
    n: usize,
) -> Result<Vec<Pod<'a>>, String> {
    let mut pods = Vec::new();
    for p in plugins {
        for _ in 0..n {
            let mut pod = Pod::new(p, runner);
            pod.timed("ADD")?;
            pods.push(pod);
        }
    }
    Ok(pods)
}

fn reference_data_dir(node: &Node) -> PathBuf {
    node.dir.path().join("host-local")
}

/// Round i: ADD both pods i (sluice first in even rounds, the reference
/// first in odd ones), then DEL both in the same order, netns still there.
fn interleaved(
    node: &Node,
    runner: &NsRunner,
    sluice: &Plugin,
    reference: &Plugin,
    rounds: usize,
) -> Result<(Latency, Latency), String> {
    let mut pods: Vec<[Pod<'_>; 2]> = (0..rounds)
        .map(|_| [Pod::new(sluice, runner), Pod::new(reference, runner)])
        .collect();
    // [command][plugin] -> samples
    let mut samples: [[Vec<Duration>; 2]; 2] = Default::default();
    for (i, pair) in pods.iter_mut().enumerate() {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for (c, cmd) in ["ADD", "DEL"].into_iter().enumerate() {
            for k in order {
                samples[c][k].push(pair[k].timed(cmd)?);
                // sluice's DEL returns before the kernel has finished
                // deleting the veth (a forked child does that); let it
                // finish, untimed, so it does not slow the next sample.
                node.ns.wait_for_retired_links();
            }
        }
    }
    let latency = |s: &[Vec<Duration>; 2]| Latency {
        sluice: Summary::of(&s[0]),
        reference: Summary::of(&s[1]),
    };
    Ok((latency(&samples[0]), latency(&samples[1])))
}

/// `n` concurrent ADDs of each plugin, `rounds` times, alternating which
/// plugin goes first; each batch DEL'd (untimed) before the next starts so
/// both find the same empty node. All pod netns are made before the first
/// batch and serve every round.
fn parallel_adds(
    node: &Node,
    runner: &NsRunner,
    sluice: &Plugin,
    reference: &Plugin,
    n: usize,
    rounds: usize,
) -> Result<Parallel, String> {
    progress(&format!(
        "{rounds} rounds of {n} parallel ADDs of each, alternating which goes first"
    ));
    let plugins = [reference, sluice];
    let mut batches: Vec<Vec<Pod<'_>>> = plugins
        .iter()
        .map(|p| (0..n).map(|_| Pod::new(p, runner)).collect())
        .collect();
    let mut wall: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        for side in [round % 2, 1 - round % 2] {
            let (plugin, pods) = (plugins[side], &mut batches[side]);
            let t = plugin::parallel(pods, "ADD")?;
            let distinct: HashSet<IpAddr> = pods.iter().filter_map(|p| p.address).collect();
            if distinct.len() != n {
                return Err(format!(
                    "{}: {n} parallel ADDs gave {} distinct addresses",
                    plugin.label,
                    distinct.len()
                ));
            }
            plugin::parallel(pods, "DEL")?;
            node.ns.wait_for_retired_links();
            wall[side].push(ms(t));
        }
    }
    let [reference_ms, sluice_ms] = wall;
    Ok(Parallel {
        count: n,
        rounds: method::Rounds {
            baseline: reference_ms,
            sluice: sluice_ms,
        },
    })
}

/// After every DEL the node must hold nothing of either plugin.
fn check_clean(node: &Node) -> Result<(), String> {
    node.ns.wait_for_retired_links();
    let mut left = Vec::new();
    let links: Vec<String> = node.ns.links().into_iter().filter(|l| l != "lo").collect();
    if !links.is_empty() {
        left.push(format!("links in the node netns: {}", links.join(" ")));
    }
    let records = node.records();
    if !records.is_empty() {
        left.push(format!("{} sluice endpoint records", records.len()));
    }
    let sluice_ips = node.reservations();
    if !sluice_ips.is_empty() {
        left.push(format!("{} sluice-ipam reservations", sluice_ips.len()));
    }
    let host_local: Vec<PathBuf> = list_files(&reference_data_dir(node).join(REFERENCE_NET))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<IpAddr>().is_ok())
        })
        .collect();
    if !host_local.is_empty() {
        left.push(format!("{} host-local reservations", host_local.len()));
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("DEL left things behind: {}", left.join("; ")))
    }
}
