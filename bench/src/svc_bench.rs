//! svc-bench: what a service costs a new connection, against connecting to
//! the backend directly and against the same services programmed the way
//! kube-proxy's iptables mode programs them, all in one run, and from a pod
//! that opted out of socket load balancing (`sluice.dev/socket-lb:
//! "false"`), whose connects are translated per packet on its host veth;
//! plus the time to program 10,000 services and the latency of one
//! endpoint change.
//!
//! A node namespace runs a real `sluiced` with a manifest directory (one
//! file per service, as a GitOps checkout would hold them); a backend pod
//! runs a TCP server; a client pod measures connect → one answer → close.
//! The iptables variant uses other cluster IPs (10.97/16) that Sluice does
//! not know, DNAT'ed in the node's nat table through KUBE-SERVICES →
//! KUBE-SVC-* → KUBE-SEP-* chains loaded with `iptables-restore`.
//!
//! Needs root, iptables and release builds next to this binary.

#[path = "cleanup.rs"]
mod cleanup;
#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;

#[path = "svcmaps.rs"]
mod svcmaps;

#[path = "figures.rs"]
#[allow(dead_code)]
mod figures;
#[path = "method.rs"]
#[allow(dead_code)]
mod method;

use cleanup::Track;
use serde_json::{json, Value};
use sluice_tests::daemon::Daemon;
use sluice_tests::{bin, with_pod_annotations, Node, Ns, Pod, Server};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};
use svcmaps::Maps;

const USAGE: &str = "\
usage: svc-bench [--sizes 1,1000,10000] [--conns 200] [--rounds 20] [--events 200]
                 [--program-rounds 5] [--quick] [--json] [--figures FILE]

  --sizes    numbers of services to measure at (the last is also the size
             for the programming and event figures)
  --conns    connections per sample
  --rounds   rounds per size: each variant once per round, in rotating
             order, after 2 warm-up rounds that are discarded; each ratio
             is the median of its per-round ratios with a bootstrap 95 %
             interval
  --events   endpoint changes timed at the largest size
  --program-rounds  cold programming rounds at the largest size: a daemon
             started with no pins on every manifest, against
             iptables-restore of kube-proxy's rules, alternating
  --quick    --sizes 1,1000 --rounds 6 --conns 100 --events 50
             --program-rounds 2 (a few minutes)
  --figures  also write the figures in bench-report's shape to FILE

Runs as root: bench/run svc-bench [options] builds the release binaries first.";

const ENDPOINTS: usize = 10;
const PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

/// Cluster IP of service `i` for Sluice (10.96/16) or iptables (10.97/16).
fn cluster_ip(i: usize, iptables: bool) -> Ipv4Addr {
    manifests::cluster_ip(i, if iptables { 97 } else { 96 })
}

/// The endpoints of service `i`: the real backend for the measured one
/// (`last`), otherwise ten addresses nothing is ever sent to.
fn endpoints(i: usize, last: usize, backend: Ipv4Addr) -> Vec<Ipv4Addr> {
    if i == last {
        return vec![backend];
    }
    manifests::endpoints(i, ENDPOINTS)
}

fn manifest(i: usize, eps: &[Ipv4Addr]) -> String {
    manifests::service("bench", i, cluster_ip(i, false), PORT, eps, BACKEND_PORT)
}

use sluice_tests::manifests::{self, write_atomic};

/// kube-proxy's iptables layout for `n` services (the measured one,
/// `last`, with the real backend), as one restore file.
fn iptables_rules(n: usize, last: usize, backend: Ipv4Addr, client: Ipv4Addr) -> String {
    let services: Vec<(Ipv4Addr, Vec<Ipv4Addr>)> = (0..n)
        .map(|i| (cluster_ip(i, true), endpoints(i, last, backend)))
        .collect();
    svcmaps::kube_proxy_rules(&services, PORT, BACKEND_PORT, Some(client))
}

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// New connections per second from the client pod to `dst`.
fn rate(client: &Ns, dst: SocketAddr, conns: usize) -> f64 {
    let probe = bin("sluice-probe");
    let out = in_ns(
        &client.name,
        &[
            probe.to_str().unwrap(),
            "rate",
            &dst.to_string(),
            &conns.to_string(),
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rate to {dst}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["per_sec"]
        .as_f64()
        .unwrap_or_else(|| panic!("rate to {dst}: {v}"))
}

/// Whether backend `ip` is in service `i`'s table.
fn in_table(maps: &Maps, i: usize, ip: Ipv4Addr) -> bool {
    maps.in_table(
        SocketAddr::new(cluster_ip(i, false).into(), PORT),
        SocketAddr::new(ip.into(), BACKEND_PORT),
    )
}

fn main() -> ExitCode {
    let mut sizes = vec![1usize, 1000, 10000];
    let mut conns = 200usize;
    let mut rounds = 20usize;
    let mut events = 200usize;
    let mut program_rounds = 5usize;
    let mut as_json = false;
    let mut figures_to: Option<std::path::PathBuf> = None;
    let warmup = 2usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match a.as_str() {
            "--sizes" => {
                sizes = val().split(',').filter_map(|x| x.parse().ok()).collect();
            }
            "--conns" => conns = val().parse().unwrap_or(0),
            "--rounds" => rounds = val().parse().unwrap_or(0),
            "--events" => events = val().parse().unwrap_or(0),
            "--program-rounds" => program_rounds = val().parse().unwrap_or(0).max(1),
            "--json" => as_json = true,
            "--figures" => figures_to = Some(val().into()),
            "--quick" => {
                sizes = vec![1, 1000];
                rounds = 6;
                conns = 100;
                events = 50;
                program_rounds = 2;
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
    if sizes.is_empty()
        || sizes.windows(2).any(|w| w[0] >= w[1])
        || sizes[0] == 0
        || conns == 0
        || rounds == 0
    {
        eprintln!("svc-bench: --sizes must be increasing and positive, --conns and --rounds at least 1\n{USAGE}");
        return ExitCode::from(2);
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("svc-bench: needs root (namespaces, BPF, iptables)");
        return ExitCode::from(2);
    }
    if Command::new("iptables-restore")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("svc-bench: iptables-restore is missing; install iptables (.ci/setup does)");
        return ExitCode::from(2);
    }
    if let Err(e) = cleanup::install() {
        eprintln!("svc-bench: {e}");
        return ExitCode::from(2);
    }
    let mut machine = method::Machine::now();

    let node = Node::new();
    let _node_track = Track::new(Some(&node.ns.name), &[node.dir.path()]);
    let dir = node.dir.path().join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemon::configure(
        &node,
        &format!(
            "services_dir = \"{}\"\nnode_name = \"bench\"\nreconcile_interval_seconds = 1\nmax_removal_percent = 100\n",
            dir.display()
        ),
    );
    let _pin_track = Track::new(None, &[&d.pin_path]);
    let idle_ready = d.spawn();
    let _daemon_track = Track::process(d.pid().unwrap());
    let conf = node.conf(
        "1.0.0",
        r#"[[{"subnet":"10.232.0.0/24","gateway":"10.232.0.1"}]]"#,
    );
    let backend_pod = Pod::add(&node, &conf);
    let _bt = Track::new(Some(&backend_pod.ns.name), &[]);
    let client = Pod::add(&node, &conf);
    let _ct = Track::new(Some(&client.ns.name), &[]);
    // The iptables variant's client: the same kind of pod on the same node.
    let ipt_client = Pod::add(&node, &conf);
    let _it = Track::new(Some(&ipt_client.ns.name), &[]);
    let ipt_client_ip: Ipv4Addr = ipt_client.ips()[0].parse().unwrap();
    // The per-packet client: a pod that opted out of socket load balancing.
    let opted = Pod::add(
        &node,
        &with_pod_annotations(&conf, &[("sluice.dev/socket-lb", "false")]),
    );
    let _ot = Track::new(Some(&opted.ns.name), &[]);
    let backend: Ipv4Addr = backend_pod.ips()[0].parse().unwrap();
    let server = Server::start(&backend_pod.ns, "tcp", BACKEND_PORT, "backend");
    let _server_track = Track::process(server.0.id());
    for ns in [&client.ns, &ipt_client.ns, &opted.ns] {
        in_ns(&ns.name, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    }
    let direct = SocketAddr::new(backend.into(), BACKEND_PORT);
    // Warm up and wait for the server.
    let t = Instant::now();
    while in_ns(
        &client.ns.name,
        &[
            bin("sluice-probe").to_str().unwrap(),
            "tcp",
            &direct.to_string(),
        ],
    )
    .status
    .code()
        != Some(0)
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "backend server not answering"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let maps = Maps::open(&d.pin_path);

    let mut rows = Vec::new();
    let mut written = 0usize;
    let mut program = json!(null);
    for &n in &sizes {
        let last = n - 1;
        eprintln!("svc-bench: {n} services");
        // Sluice: one manifest file per service; the measured one is last.
        let t0 = Instant::now();
        for i in written..n {
            let eps = endpoints(i, last, backend);
            write_atomic(&dir, &format!("svc-{i}.yaml"), &manifest(i, &eps));
        }
        // The previously measured service goes back to ten fake endpoints.
        if written > 0 && written - 1 != last {
            let i = written - 1;
            write_atomic(
                &dir,
                &format!("svc-{i}.yaml"),
                &manifest(i, &endpoints(i, last, backend)),
            );
        }
        written = n;
        while !in_table(&maps, last, backend) || maps.svc.keys().count() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "services not programmed after 2 min"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let sluice_ms = stats::ms(t0.elapsed());
        // kube-proxy's iptables mode, same services, other cluster IPs.
        let rules = iptables_rules(n, last, backend, ipt_client_ip);
        let path = node.dir.path().join("iptables.rules");
        std::fs::write(&path, &rules).unwrap();
        let t1 = Instant::now();
        let out = in_ns(&node.ns.name, &["iptables-restore", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let iptables_ms = stats::ms(t1.elapsed());
        if n == *sizes.last().unwrap() {
            program = json!({
                "services": n,
                "endpoints_per_service": ENDPOINTS,
                "sluice_ms": sluice_ms,
                "iptables_restore_ms": iptables_ms,
            });
        }

        let svc = SocketAddr::new(cluster_ip(last, false).into(), PORT);
        let ipt = SocketAddr::new(cluster_ip(last, true).into(), PORT);
        let (mut rd, mut rs, mut ri, mut rp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..warmup + rounds {
            // Each variant once per round, rotating which goes first.
            let mut got = [0f64; 4];
            for v in 0..4 {
                let k = (r + v) % 4;
                got[k] = match k {
                    0 => rate(&client.ns, direct, conns),
                    1 => rate(&client.ns, svc, conns),
                    2 => rate(&ipt_client.ns, ipt, conns),
                    _ => rate(&opted.ns, svc, conns),
                };
            }
            if r >= warmup {
                rd.push(got[0]);
                rs.push(got[1]);
                ri.push(got[2]);
                rp.push(got[3]);
            }
        }
        let vs = |b: &[f64], s: &[f64]| {
            method::ratio(&method::Rounds {
                baseline: b.to_vec(),
                sluice: s.to_vec(),
            })
        };
        let (r_sd, r_si, r_pd, r_id) = (vs(&rd, &rs), vs(&ri, &rs), vs(&rd, &rp), vs(&rd, &ri));
        let (d_, s_, i_, p_) = (
            method::median(&rd),
            method::median(&rs),
            method::median(&ri),
            method::median(&rp),
        );
        rows.push(json!({
            "services": n, "direct_per_sec": d_, "sluice_per_sec": s_, "iptables_per_sec": i_,
            "per_packet_per_sec": p_,
            "sluice_vs_direct": r_sd, "sluice_vs_iptables": r_si,
            "per_packet_vs_direct": r_pd, "iptables_vs_direct": r_id,
            "sluice_program_ms": sluice_ms, "iptables_restore_ms": iptables_ms,
            "samples": {"direct": rd, "sluice": rs, "iptables": ri, "per_packet": rp},
        }));
    }

    // Cold programming: another node's daemon starts on a directory that
    // already holds every manifest; its first pass (before ready) programs
    // them all.
    let n = *sizes.last().unwrap();
    let cold = {
        eprintln!("svc-bench: cold start with {n} services");
        let node2 = Node::new();
        let _t2 = Track::new(Some(&node2.ns.name), &[node2.dir.path()]);
        let dir2 = node2.dir.path().join("services");
        std::fs::create_dir_all(&dir2).unwrap();
        for i in 0..n {
            std::fs::write(
                dir2.join(format!("svc-{i}.yaml")),
                manifest(i, &endpoints(i, n - 1, backend)),
            )
            .unwrap();
        }
        let mut d2 = Daemon::configure(
            &node2,
            &format!(
                "services_dir = \"{}\"\nnode_name = \"bench2\"\n",
                dir2.display()
            ),
        );
        let _p2 = Track::new(None, &[&d2.pin_path]);
        // Each round: this daemon from nothing (its pins removed, so every
        // map is made and every service programmed before ready), and
        // kube-proxy's rules for the same services restored into an empty
        // table, alternating which goes first.
        let rules = node.dir.path().join("iptables-cold.rules");
        std::fs::write(&rules, iptables_rules(n, n - 1, backend, ipt_client_ip)).unwrap();
        let restore = || {
            for empty in ["-F", "-X"] {
                let out = in_ns(&node2.ns.name, &["iptables", "-t", "nat", empty]);
                assert!(
                    out.status.success(),
                    "iptables -t nat {empty} in the cold node"
                );
            }
            let t = Instant::now();
            let out = in_ns(
                &node2.ns.name,
                &["iptables-restore", rules.to_str().unwrap()],
            );
            assert!(
                out.status.success(),
                "iptables-restore: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            stats::ms(t.elapsed())
        };
        let mut program = method::Rounds::default();
        let mut first_pass = Vec::new();
        let mut d2t = None;
        for round in 0..program_rounds {
            for sluice_side in [round % 2 == 0, round % 2 == 1] {
                if !sluice_side {
                    program.baseline.push(restore());
                    continue;
                }
                d2.kill9();
                if d2.pin_path.exists() {
                    std::fs::remove_dir_all(&d2.pin_path).unwrap();
                }
                let wall = d2.spawn();
                d2t = Some(Track::process(d2.pid().unwrap()));
                let src = d2
                    .call(sluice_common::api::Request::ListServices)
                    .expect("list_services")
                    .data["source"]
                    .clone();
                assert_eq!(src["frontends"].as_u64(), Some(n as u64), "{src}");
                program.sluice.push(stats::ms(wall));
                first_pass.push(src["last_duration_ms"].as_f64().unwrap_or(f64::NAN));
            }
        }
        d2.kill9();
        drop(d2t);
        json!({
            "services": n,
            "rounds": program_rounds,
            "ready_ms": method::median(&program.sluice),
            "first_pass_ms": method::median(&first_pass),
            "idle_ready_ms": stats::ms(idle_ready),
            "iptables_restore_ms": method::median(&program.baseline),
            "samples": program,
        })
    };

    // One endpoint changed at a time, at the largest size.
    let mut lat = Vec::new();
    for e in 0..events {
        let i = (e * 7919) % (n.max(2) - 1);
        let mut eps = endpoints(i, n - 1, backend);
        let fresh = Ipv4Addr::new(10, 250, (e >> 8) as u8, e as u8);
        eps[0] = fresh;
        let t = Instant::now();
        write_atomic(&dir, &format!("svc-{i}.yaml"), &manifest(i, &eps));
        while !in_table(&maps, i, fresh) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "change {e} never reached the datapath"
            );
        }
        lat.push(stats::ms(t.elapsed()));
        // Put it back, untimed.
        write_atomic(
            &dir,
            &format!("svc-{i}.yaml"),
            &manifest(i, &endpoints(i, n - 1, backend)),
        );
        let t = Instant::now();
        while in_table(&maps, i, fresh) {
            assert!(t.elapsed() < Duration::from_secs(10));
        }
    }
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        sorted[(((p / 100.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
    };
    let event =
        json!({"changes": lat.len(), "p50_ms": pct(50.0), "p99_ms": pct(99.0), "services": n});

    // A register under housekeeping (status twenty times a second, the
    // reconcile every second, 100 frontends removed and added again), then
    // the daemon's memory, then a restart at the largest size with a tenth
    // of the services on Maglev.
    let register = {
        eprintln!("svc-bench: register under housekeeping at {n} services");
        let record =
            sluice_common::endpoint::EndpointRecord::load(&node.state_dir(), &client.cid, "eth0")
                .unwrap()
                .unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let churned: Vec<usize> = (0..100.min(n - 1)).collect();
        let (rtts, took) = std::thread::scope(|sc| {
            sc.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    d.status();
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            sc.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for i in &churned {
                        let _ = std::fs::remove_file(dir.join(format!("svc-{i}.yaml")));
                    }
                    std::thread::sleep(Duration::from_millis(400));
                    for i in &churned {
                        write_atomic(
                            &dir,
                            &format!("svc-{i}.yaml"),
                            &manifest(*i, &endpoints(*i, n - 1, backend)),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(400));
                }
            });
            let (mut rtts, mut took) = (Vec::new(), Vec::new());
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(8) {
                let t = Instant::now();
                let r = d
                    .call(sluice_common::api::Request::Register {
                        endpoint: Box::new(record.clone()),
                    })
                    .expect("register");
                rtts.push(stats::ms(t.elapsed()));
                took.push(r.data["took_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (rtts, took)
        });
        let p99 = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[((v.len() * 99).div_ceil(100)).max(1) - 1]
        };
        json!({"registers": rtts.len(), "p99_ms": p99(rtts), "p99_in_daemon_ms": p99(took)})
    };
    // Settle: every service back, programmed.
    let t = Instant::now();
    while maps.svc.keys().count() < n {
        assert!(t.elapsed() < Duration::from_secs(60), "services not back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss = sluice_tests::proc_status_mib(d.pid().unwrap(), "VmRSS");
    let restart = {
        let maglev = (n / 10).max(1);
        eprintln!("svc-bench: restart with {n} services, {maglev} of them Maglev");
        for i in 0..maglev {
            let text = manifest(i, &endpoints(i, n - 1, backend)).replacen(
                &format!("metadata: {{name: svc-{i}, namespace: bench}}"),
                &format!("metadata: {{name: svc-{i}, namespace: bench, annotations: {{sluice.dev/load-balancing: maglev}}}}"),
                1,
            );
            write_atomic(&dir, &format!("svc-{i}.yaml"), &text);
        }
        let t = Instant::now();
        while maps.maglev_frontends() < maglev {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "Maglev services not programmed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        d.kill9();
        let ready = d.spawn();
        let source = |d: &Daemon| {
            d.call(sluice_common::api::Request::ServiceSource)
                .expect("service_source")
                .data["source"]
                .clone()
        };
        let t = Instant::now();
        while source(&d)["last_apply"].is_null() {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "no first pass after the restart"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let src = source(&d);
        json!({
            "services": n,
            "maglev": maglev,
            "ready_ms": stats::ms(ready),
            "first_pass_after_ready_ms": stats::ms(t.elapsed()),
            "first_pass_ms": src["last_duration_ms"],
            "entries_written": src["last_apply"]["entries_written"],
            "unchanged": src["last_apply"]["unchanged"],
        })
    };

    let figures = json!({"rates": rows, "program": program, "cold": cold, "event": event, "register": register, "rss_mib": rss, "restart": restart, "conns_per_sample": conns, "rounds": rounds, "warmup_rounds": warmup});
    machine.finish();
    if let Some(to) = &figures_to {
        let b = shared_figures(&figures, conns);
        if let Err(e) = std::fs::write(to, serde_json::to_string_pretty(&b).unwrap()) {
            eprintln!("svc-bench: writing {}: {e}", to.display());
            return ExitCode::FAILURE;
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    } else {
        println!(
            "Measured on {} ({} CPUs), Linux {}; load {:.2} before, {:.2} after",
            machine.cpu, machine.cpus, machine.kernel, machine.load_before, machine.load_after
        );
        println!("New connections per second from a pod (connect, one answer, close; {rounds} rounds of {conns} per variant after {warmup} warm-up rounds, variants in rotating order; medians, and each ratio the median of the per-round ratios with its bootstrap 95 % interval)");
        println!("(per-packet: a pod that opted out of socket load balancing, translated on its host veth)");
        println!(
            "{:>9} {:>10} {:>10} {:>10} {:>10} {:>14} {:>16} {:>18}",
            "services",
            "direct",
            "sluice",
            "per-packet",
            "iptables",
            "sluice/direct",
            "per-packet/direct",
            "iptables/direct"
        );
        for r in figures["rates"].as_array().unwrap() {
            let ratio = |k: &str| r[k]["median"].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:>9} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>14.3} {:>16.3} {:>18.3}",
                r["services"].as_u64().unwrap(),
                r["direct_per_sec"].as_f64().unwrap(),
                r["sluice_per_sec"].as_f64().unwrap(),
                r["per_packet_per_sec"].as_f64().unwrap(),
                r["iptables_per_sec"].as_f64().unwrap(),
                ratio("sluice_vs_direct"),
                ratio("per_packet_vs_direct"),
                ratio("iptables_vs_direct")
            );
        }
        println!("Each ratio with its 95 % interval:");
        for r in figures["rates"].as_array().unwrap() {
            for (k, what) in [
                ("sluice_vs_direct", "Sluice ÷ direct"),
                ("sluice_vs_iptables", "Sluice ÷ iptables"),
                ("per_packet_vs_direct", "per-packet ÷ direct"),
                ("iptables_vs_direct", "iptables ÷ direct"),
            ] {
                let ratio: method::Ratio = serde_json::from_value(r[k].clone()).unwrap();
                println!("{:>9} services  {what:<20} {}", r["services"], ratio.show());
            }
        }
        println!();
        println!(
            "programming {} services x {} endpoints from manifests: a daemon starting on them is ready in {:.0} ms, its first pass {:.0} ms (idle start {:.0} ms)  target < 2000 ms",
            n,
            ENDPOINTS,
            cold["ready_ms"].as_f64().unwrap_or(f64::NAN),
            cold["first_pass_ms"].as_f64().unwrap_or(f64::NAN),
            cold["idle_ready_ms"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "  written one file at a time into a running daemon's directory: {} services x {} endpoints in the datapath {:.0} ms after the first write (iptables-restore of the same: {:.0} ms)",
            n, ENDPOINTS, program["sluice_ms"].as_f64().unwrap_or(f64::NAN), program["iptables_restore_ms"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "one endpoint change, file written -> datapath, {} changes among {} services: p50 {:.2} ms, p99 {:.2} ms  target p99 < 20 ms",
            lat.len(), n, pct(50.0), pct(99.0)
        );
        println!(
            "register under housekeeping at {n} services ({} registers; status 20/s, reconcile every 1 s, 100 frontends removed and added every 0.8 s): p99 {:.2} ms round trip, {:.2} ms in the daemon  target p99 < 5 ms",
            register["registers"], register["p99_ms"].as_f64().unwrap_or(f64::NAN), register["p99_in_daemon_ms"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "daemon RSS with {n} services x {ENDPOINTS} endpoints from the manifests: {rss:.1} MiB  target < 100 MiB"
        );
        println!(
            "restart (kill -9) with {n} services, {} on Maglev: ready in {:.0} ms; its first pass (after ready) took {:.0} ms and wrote {} entries ({} frontends unchanged)  target ready < 1000 ms, 0 written",
            restart["maglev"], restart["ready_ms"].as_f64().unwrap_or(f64::NAN),
            restart["first_pass_ms"].as_f64().unwrap_or(f64::NAN), restart["entries_written"], restart["unchanged"]
        );
    }
    if let Some(to) = std::env::var_os("SVC_BENCH_DAEMON_LOG") {
        let _ = std::fs::copy(&d.log, to);
    }
    drop(server);
    drop(ipt_client);
    drop(client);
    drop(backend_pod);
    drop(d);
    ExitCode::SUCCESS
}

/// The connect-rate figures and chart, and the one-shot programming
/// figure, in bench-report's shape.
fn shared_figures(v: &Value, conns: usize) -> figures::Bench {
    let mut figs = Vec::new();
    let mut notes = Vec::new();
    let rows = v["rates"].as_array().cloned().unwrap_or_default();
    for r in &rows {
        let n = r["services"].as_u64().unwrap_or(0);
        let samples = |k: &str| -> Vec<f64> {
            serde_json::from_value(r["samples"][k].clone()).unwrap_or_default()
        };
        for (id, sluice, base, label) in [
            ("connect", "sluice", "direct", "direct to the backend"),
            (
                "connect-vs-iptables",
                "sluice",
                "iptables",
                "kube-proxy iptables rules",
            ),
            (
                "connect-per-packet",
                "per_packet",
                "direct",
                "direct to the backend",
            ),
        ] {
            let rounds = method::Rounds {
                baseline: samples(base),
                sluice: samples(sluice),
            };
            let title = match id {
                "connect" => format!("new connections per second at {n} services, socket LB"),
                "connect-vs-iptables" => {
                    format!("new connections per second at {n} services against kube-proxy")
                }
                _ => format!(
                    "new connections per second at {n} services, opted-out pod (per packet)"
                ),
            };
            figs.push(
                figures::Name::new(
                    format!("svc.{id}.{n}"),
                    title,
                    format!("conn/s, {conns} per sample"),
                    true,
                    label,
                )
                .interleaved(rounds),
            );
        }
    }
    let c = &v["cold"];
    if let Ok(rounds) = serde_json::from_value::<method::Rounds>(c["samples"].clone()) {
        figs.push(
            figures::Name::new(
                format!("svc.program.{}", c["services"]),
                format!(
                    "programming {} services x {ENDPOINTS} endpoints from nothing: daemon start \
                     to ready (no pins) against kube-proxy's rules into an empty table",
                    c["services"]
                ),
                "ms",
                false,
                "iptables-restore",
            )
            .interleaved(rounds),
        );
    }
    let p = &v["program"];
    if let (Some(s), Some(b)) = (p["sluice_ms"].as_f64(), p["iptables_restore_ms"].as_f64()) {
        figs.push(
            figures::Name::new(
                format!("svc.program_running.{}", p["services"]),
                format!(
                    "{} services x {ENDPOINTS} endpoints written one file at a time into a \
                     running node, first write to all in the datapath",
                    p["services"]
                ),
                "ms",
                false,
                "iptables-restore",
            )
            .once(b, s),
        );
    }
    let e = &v["event"];
    if let (Some(p50), Some(p99)) = (e["p50_ms"].as_f64(), e["p99_ms"].as_f64()) {
        notes.push(format!(
            "One endpoint change, manifest written to the datapath, {} changes among {} \
             services: p50 {p50:.2} ms, p99 {p99:.2} ms (Sluice only: kube-proxy applies a \
             change at its next sync, by default within 1 s, each an iptables-restore).",
            e["changes"], e["services"]
        ));
    }
    let line = |label: &str, k: &str| figures::Line {
        label: label.into(),
        points: rows
            .iter()
            .map(|r| {
                (
                    r["services"].as_f64().unwrap_or(0.0),
                    r[k].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect(),
    };
    figures::Bench {
        name: "svc-bench".into(),
        command: "bench/run svc-bench".into(),
        figures: figs,
        charts: vec![figures::Chart {
            id: "svc-connect-rate".into(),
            title: "New connections per second from a pod, by number of services".into(),
            x_label: "services".into(),
            y_label: "connections per second (median)".into(),
            log_x: true,
            lines: vec![
                line("direct to the backend", "direct_per_sec"),
                line("Sluice socket LB", "sluice_per_sec"),
                line("Sluice per packet (opted out)", "per_packet_per_sec"),
                line("kube-proxy iptables", "iptables_per_sec"),
            ],
        }],
        notes,
    }
}
