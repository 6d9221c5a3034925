//! nodeport-bench: external traffic to a NodePort whose backend is on
//! another node, from the outside client of a two-node cluster on one
//! machine (tests/src/cluster.rs), in one run:
//!
//! - **Sluice SNAT** and **Sluice DSR**: the same backend behind two
//!   services, one per mode, served by node0's tc programs;
//! - **kube-proxy**: a third service whose NodePort only iptables serves,
//!   programmed in node0's nat table as kube-proxy's iptables mode
//!   programs NodePorts (KUBE-SERVICES with every service's cluster IP
//!   rule, then KUBE-NODEPORTS → KUBE-EXT-* → KUBE-MARK-MASQ and
//!   KUBE-SVC-* → KUBE-SEP-* DNAT, masquerade in KUBE-POSTROUTING), loaded
//!   with `iptables-restore` for its rounds only (so Sluice's packets never
//!   walk the chains);
//!
//! at 1 and 10,000 services (every service in Sluice's manifests and in
//! the iptables rules alike; the measured one in the middle of the chains).
//! Rounds alternate the three; each round measures new connections per
//! second (connect, read the answer, close) and 64 MiB downloaded, and
//! records per request the machine's CPU time (all namespaces share the
//! CPUs, so per-node CPU cannot be told apart: the whole machine's, from
//! /proc/stat) and the packets node0 handled (its fabric port, both ways:
//! the receiving node's work). Medians over the rounds with their
//! interquartile range; ratios against SNAT and against kube-proxy.

#[path = "figures.rs"]
#[allow(dead_code)]
mod figures;
#[path = "method.rs"]
#[allow(dead_code)]
mod method;

use serde_json::{json, Value};
use sluice_tests::cluster::{routing, wait_peers, Cluster};
use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::{require_root, Ns, Pod, Server};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const USAGE: &str = "\
usage: nodeport-bench [--quick] [--rounds N] [--conns N] [--scales 1,10000] [--json]
                      [--figures FILE]

  --rounds N    alternating rounds per variant (default 7; --quick 3)
  --conns N     connections per rate sample (default 4000; --quick 1500)
  --scales L,.. numbers of services (default 1,10000; --quick 1,2000)
  --json        print the figures as JSON
  --figures F   also write the figures in bench-report's shape to F

Runs as root: bench/run nodeport-bench [options] builds the release binaries first.";

const MIB: u64 = 1 << 20;
const BULK: u64 = 64 * MIB;
/// NodePorts below Linux's ephemeral range (32768-60999), as Kubernetes'
/// default range is: a reply to one of the node's own connections never
/// lands on a NodePort.
const NP_BASE: u16 = 20000;
const NP_RANGE: &str = "20000-32767";
/// The bulk port of a target is its rate port plus this.
const BULK_OFFSET: u16 = 12000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Snat,
    Dsr,
    KubeProxy,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Snat => "sluice-snat",
            Variant::Dsr => "sluice-dsr",
            Variant::KubeProxy => "kube-proxy",
        }
    }
}

struct Args {
    rounds: usize,
    conns: usize,
    scales: Vec<usize>,
    json: bool,
    figures: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rounds: 7,
        conns: 4000,
        scales: vec![1, 10000],
        json: false,
        figures: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = |n: &str| it.next().ok_or_else(|| format!("{n} needs a value"));
        match x.as_str() {
            "--quick" => {
                a.rounds = 3;
                a.conns = 1500;
                a.scales = vec![1, 2000];
            }
            "--rounds" => a.rounds = val("--rounds")?.parse().map_err(|_| "--rounds: a number")?,
            "--conns" => a.conns = val("--conns")?.parse().map_err(|_| "--conns: a number")?,
            "--scales" => {
                a.scales = val("--scales")?
                    .split(',')
                    .map(|s| s.parse().map_err(|_| format!("--scales: {s:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--json" => a.json = true,
            "--figures" => a.figures = Some(val("--figures")?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.rounds == 0
        || a.conns == 0
        || a.scales.is_empty()
        || a.scales.iter().any(|s| *s < 1 || *s > 11000)
    {
        return Err("rounds and conns must be at least 1; scales 1-11000".into());
    }
    Ok(a)
}

/// Cluster IP and nodePort of filler service `i`.
fn filler(i: usize) -> (String, u16) {
    (
        format!("10.{}.{}.{}", 100 + i / 62500, (i / 250) % 250, i % 250 + 1),
        NP_BASE + 10 + i as u16,
    )
}

const TARGETS: [(Variant, &str, u16); 3] = [
    (Variant::Snat, "10.96.1.1", NP_BASE),
    (Variant::Dsr, "10.96.1.2", NP_BASE + 1),
    (Variant::KubeProxy, "10.96.1.3", NP_BASE + 2),
];

/// Sluice's manifests: the SNAT and DSR targets (ports 80 → 8080 rate, 81
/// → 8081 bulk) and `fillers` services with a backend nobody reaches.
fn manifests(backend: &str, fillers: usize) -> String {
    let mut s = String::new();
    for (v, ip, np) in TARGETS.iter().filter(|t| t.0 != Variant::KubeProxy) {
        let mode = if *v == Variant::Dsr { "dsr" } else { "snat" };
        let name = v.name();
        s.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench, annotations: {{sluice.dev/external-mode: {mode}}}}}\n\
             spec:\n  type: NodePort\n  clusterIP: {ip}\n  ports: [{{name: rate, port: 80, nodePort: {np}}}, {{name: bulk, port: 81, nodePort: {}}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: rate, port: 8080}}, {{name: bulk, port: 8081}}]\n\
             endpoints:\n- addresses: [\"{backend}\"]\n  nodeName: node1\n---\n",
            np + BULK_OFFSET
        ));
    }
    for i in 0..fillers {
        let (ip, np) = filler(i);
        s.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: f{i}, namespace: bench}}\n\
             spec:\n  type: NodePort\n  clusterIP: {ip}\n  ports: [{{name: rate, port: 80, nodePort: {np}}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: f{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: f{i}}}}}\n\
             addressType: IPv4\nports: [{{name: rate, port: 8080}}]\n\
             endpoints:\n- addresses: [\"10.210.1.250\"]\n  nodeName: node1\n---\n"
        ));
    }
    s
}

/// kube-proxy's nat table for the fillers and the kube-proxy target (in
/// the middle of both chains), as `iptables-restore` takes it.
fn iptables_rules(backend: &str, fillers: usize) -> String {
    let (_, ip, np) = TARGETS[2];
    let mut services: Vec<(String, u16, String, u16)> = (0..fillers)
        .map(|i| {
            let (ip, np) = filler(i);
            (ip, np, "10.210.1.250".to_string(), 8080)
        })
        .collect();
    let mid = services.len() / 2;
    services.insert(mid, (ip.to_string(), np, backend.to_string(), 8080));
    services.insert(
        mid,
        (ip.to_string(), np + BULK_OFFSET, backend.to_string(), 8081),
    );
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    let mut nodeports = String::new();
    for (i, (cip, np, be, bp)) in services.iter().enumerate() {
        let svc = format!("KUBE-SVC-{i:012X}");
        let ext = format!("KUBE-EXT-{i:012X}");
        let sep = format!("KUBE-SEP-{i:012X}");
        chains.push_str(&format!(":{svc} - [0:0]\n:{ext} - [0:0]\n:{sep} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {cip}/32 -p tcp -m comment --comment \"bench/s{i} cluster IP\" -m tcp --dport {} -j {svc}\n\
             -A {ext} -m comment --comment \"masquerade traffic for bench/s{i} external destinations\" -j KUBE-MARK-MASQ\n\
             -A {ext} -j {svc}\n\
             -A {svc} -m comment --comment \"bench/s{i} -> {be}:{bp}\" -j {sep}\n\
             -A {sep} -s {be}/32 -m comment --comment \"bench/s{i}\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p tcp -m comment --comment \"bench/s{i}\" -m tcp -j DNAT --to-destination {be}:{bp}\n",
            if *bp == 8081 { 81 } else { 80 }
        ));
        nodeports.push_str(&format!(
            "-A KUBE-NODEPORTS -p tcp -m comment --comment \"bench/s{i}\" -m tcp --dport {np} -j {ext}\n"
        ));
    }
    rules.push_str(&nodeports);
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    format!("{chains}{rules}COMMIT\n")
}

/// The probe client's JSON line in `ns`, or an object naming what it
/// printed instead.
fn probe(ns: &Ns, args: &[&str]) -> Value {
    sluice_tests::probe(ns, args).unwrap_or_else(|e| json!({ "error": e }))
}

/// Busy CPU time of the whole machine, ns (user, nice, system, irq,
/// softirq, steal from /proc/stat).
fn busy_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| f.get(*i))
        .sum::<u64>();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    busy * 1_000_000_000 / hz
}

/// Packets through node `i`'s fabric port, both ways.
fn node_packets(c: &Cluster, i: usize) -> u64 {
    let v = c.fabric.ip_json(&["-s", "link", "show", &format!("n{i}")]);
    let s = &v[0]["stats64"];
    s["rx"]["packets"].as_u64().unwrap_or(0) + s["tx"]["packets"].as_u64().unwrap_or(0)
}

#[derive(Debug, Default, Clone)]
struct Samples {
    rate: Vec<f64>,
    mib_s: Vec<f64>,
    cpu_us_per_req: Vec<f64>,
    pkts_per_req: Vec<f64>,
}

fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    (q(0.25), q(0.5), q(0.75))
}

fn cell(v: &[f64], digits: usize) -> String {
    let (lo, m, hi) = quartiles(v);
    format!("{m:.digits$} [{lo:.digits$}-{hi:.digits$}]")
}

fn wait_frontends(d: &Daemon<'_>, n: usize) -> Result<(), String> {
    let mut last = Value::Null;
    if eventually(600, || {
        last = d
            .call(sluice_common::api::Request::ServiceSource)
            .map(|r| r.data)
            .unwrap_or(Value::Null);
        last["source"]["frontends"].as_u64().unwrap_or(0) as usize >= n
    }) {
        Ok(())
    } else {
        Err(format!("services not programmed: {last}"))
    }
}

fn measure(c: &Cluster, v: Variant, conns: usize) -> Result<(f64, f64, f64, f64), String> {
    let (_, _, np) = TARGETS.iter().find(|t| t.0 == v).copied().unwrap();
    let node = if v == Variant::KubeProxy { 2 } else { 0 };
    let at = c.nodes[node].address(false);
    let rate_addr = format!("{at}:{np}");
    let bulk_addr = format!("{at}:{}", np + BULK_OFFSET);
    let (cpu0, p0) = (busy_ns(), node_packets(c, node));
    let r = probe(&c.client, &["rate", &rate_addr, &conns.to_string()]);
    let (cpu1, p1) = (busy_ns(), node_packets(c, node));
    let rate = r["per_sec"]
        .as_f64()
        .ok_or_else(|| format!("{} rate: {r}", v.name()))?;
    let t = probe(&c.client, &["take", &bulk_addr, &BULK.to_string()]);
    if t["intact"] != true {
        return Err(format!("{} bulk: {t}", v.name()));
    }
    let secs = t["secs"].as_f64().unwrap_or(f64::NAN);
    Ok((
        rate,
        BULK as f64 / MIB as f64 / secs,
        (cpu1 - cpu0) as f64 / 1e3 / conns as f64,
        (p1 - p0) as f64 / conns as f64,
    ))
}

fn run(a: &Args) -> Result<Value, String> {
    let c = Cluster::new(3);
    let d = c.start_daemons(&format!(
        "routing = \"direct\"\nnodeport_range = \"{NP_RANGE}\"\nmax_frontends = 40000\n"
    ));
    for (i, d) in d.iter().enumerate() {
        let peers: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("node{j}"))
            .collect();
        let want: Vec<(&str, &str)> = peers.iter().map(|p| (p.as_str(), "direct")).collect();
        wait_peers(d, &want);
    }
    let backend = Pod::add(&c.nodes[1].node, &c.nodes[1].conf());
    let be = backend.ip(false).to_string();
    let _rate = Server::spawn(&backend.ns, &["serve", "tcp", "8080", "b"]);
    let _bulk = Server::spawn(&backend.ns, &["give", "8081", &BULK.to_string()]);
    // Every rate sample connects to the same NodePort: the client's
    // TIME_WAIT sockets would use up its ephemeral ports within a minute
    // on a fast machine (EADDRNOTAVAIL); a client making this many
    // connections reuses them, as svc-bench's do.
    for kv in [
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65535",
    ] {
        let out = c.client.exec(&["sysctl", "-qw", kv]);
        if !out.status.success() {
            return Err(format!(
                "setting {kv} in the outside client's netns: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let mut out = Vec::new();
    for &n in &a.scales {
        let fillers = n.saturating_sub(1);
        let t0 = Instant::now();
        c.write_manifest("bench.yaml", &manifests(&be, fillers));
        // Each service: a cluster IP and a NodePort frontend (targets: two
        // ports each).
        for d in &d {
            wait_frontends(d, 8 + 2 * fillers)?;
        }
        eprintln!(
            "{n} services programmed on both nodes in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        load_rules(&c.nodes[2].node.ns, &iptables_rules(&be, fillers))?;
        let mut samples: Vec<(Variant, Samples)> =
            [Variant::Snat, Variant::Dsr, Variant::KubeProxy]
                .iter()
                .map(|v| (*v, Samples::default()))
                .collect();
        // One warm-up round, discarded.
        for round in 0..=a.rounds {
            for (v, s) in samples.iter_mut() {
                let (rate, mib_s, cpu, pkts) = measure(&c, *v, a.conns).map_err(|e| {
                    format!(
                        "{e}\nnode0: {}\nnode1: {}",
                        routing(&d[0])["external"],
                        routing(&d[1])["external"]
                    )
                })?;
                if round > 0 {
                    s.rate.push(rate);
                    s.mib_s.push(mib_s);
                    s.cpu_us_per_req.push(cpu);
                    s.pkts_per_req.push(pkts);
                }
            }
        }
        out.push((n, samples));
    }
    let k = routing(&d[0])["external"]["counters"].clone();
    if !a.json {
        println!("nodeport-bench: outside client -> NodePort at node0 (Sluice) or node2 (kube-proxy) -> backend on node1; medians of {} rounds [IQR]", a.rounds);
        println!(
            "{:>8} {:<12} {:>22} {:>20} {:>22} {:>18} {:>9} {:>9} {:>9}",
            "services",
            "variant",
            "conns/s",
            "MiB/s down",
            "machine CPU us/conn",
            "recv node pkts/conn",
            "rate/snat",
            "rate/kp",
            "cpu/snat"
        );
    }
    let mut rows = Vec::new();
    for (n, samples) in &out {
        let med = |v: Variant, f: fn(&Samples) -> &Vec<f64>| {
            quartiles(f(&samples.iter().find(|x| x.0 == v).unwrap().1)).1
        };
        let snat_rate = med(Variant::Snat, |s| &s.rate);
        let kp_rate = med(Variant::KubeProxy, |s| &s.rate);
        let snat_cpu = med(Variant::Snat, |s| &s.cpu_us_per_req);
        for (v, s) in samples {
            let rate = quartiles(&s.rate).1;
            let cpu = quartiles(&s.cpu_us_per_req).1;
            if !a.json {
                println!(
                    "{:>8} {:<12} {:>22} {:>20} {:>22} {:>18} {:>9.3} {:>9.3} {:>9.3}",
                    n,
                    v.name(),
                    cell(&s.rate, 0),
                    cell(&s.mib_s, 0),
                    cell(&s.cpu_us_per_req, 1),
                    cell(&s.pkts_per_req, 2),
                    rate / snat_rate,
                    rate / kp_rate,
                    cpu / snat_cpu
                );
            }
            rows.push(json!({
                "services": n, "variant": v.name(),
                "conns_per_sec": quartiles(&s.rate), "mib_per_sec": quartiles(&s.mib_s),
                "cpu_us_per_conn": quartiles(&s.cpu_us_per_req), "receiving_node_packets_per_conn": quartiles(&s.pkts_per_req),
                "rate_vs_snat": rate / snat_rate, "rate_vs_kube_proxy": rate / kp_rate, "cpu_vs_snat": cpu / snat_cpu,
            }));
        }
    }
    if !a.json {
        println!("node0's external-traffic counters: {k}");
        println!(
            "(quartiles are [25%-75%]; CPU is the whole machine's: every node shares its CPUs)"
        );
    }
    if let Some(to) = &a.figures {
        let b = shared_figures(&out, a.conns);
        std::fs::write(to, serde_json::to_string_pretty(&b).unwrap())
            .map_err(|e| format!("writing {}: {e}", to.display()))?;
    }
    Ok(json!({ "rounds": a.rounds, "conns": a.conns, "rows": rows, "counters": k }))
}

/// The figures in bench-report's shape: per scale, DSR against SNAT and
/// each against kube-proxy (rate, throughput, CPU per connection), each
/// round's pair one ratio; a chart of the rates by number of services.
fn shared_figures(out: &[(usize, Vec<(Variant, Samples)>)], conns: usize) -> figures::Bench {
    let mut figs = Vec::new();
    let mut lines: Vec<figures::Line> = [Variant::Snat, Variant::Dsr, Variant::KubeProxy]
        .iter()
        .map(|v| figures::Line {
            label: v.name().into(),
            points: Vec::new(),
        })
        .collect();
    for (n, samples) in out {
        let get = |v: Variant| &samples.iter().find(|x| x.0 == v).unwrap().1;
        for (i, v) in [Variant::Snat, Variant::Dsr, Variant::KubeProxy]
            .into_iter()
            .enumerate()
        {
            lines[i]
                .points
                .push((*n as f64, method::median(&get(v).rate)));
        }
        type Pick = fn(&Samples) -> &Vec<f64>;
        let metrics: [(&str, &str, bool, Pick); 3] = [
            ("rate", "new connections per second", true, |s| &s.rate),
            (
                "download",
                "MiB/s downloaded (64 MiB per round)",
                true,
                |s| &s.mib_s,
            ),
            ("cpu", "machine CPU µs per connection", false, |s| {
                &s.cpu_us_per_req
            }),
        ];
        for (key, what, higher, pick) in metrics {
            for (sl, base) in [
                (Variant::Dsr, Variant::Snat),
                (Variant::Snat, Variant::KubeProxy),
                (Variant::Dsr, Variant::KubeProxy),
            ] {
                let rounds = method::Rounds {
                    baseline: pick(get(base)).clone(),
                    sluice: pick(get(sl)).clone(),
                };
                figs.push(
                    figures::Name::new(
                        format!("nodeport.{key}.{}-vs-{}.{n}", sl.name(), base.name()),
                        format!("NodePort {what} at {n} services, {}", sl.name()),
                        if key == "rate" {
                            format!("conn/s, {conns} per sample")
                        } else {
                            key.into()
                        },
                        higher,
                        base.name(),
                    )
                    .interleaved(rounds),
                );
            }
        }
    }
    figures::Bench {
        name: "nodeport-bench".into(),
        command: "bench/run nodeport-bench".into(),
        figures: figs,
        charts: vec![figures::Chart {
            id: "nodeport-rate".into(),
            title: "NodePort new connections per second, backend on another node".into(),
            x_label: "services".into(),
            y_label: "connections per second (median)".into(),
            log_x: true,
            lines,
        }],
        notes: Vec::new(),
    }
}

fn load_rules(ns: &Ns, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut c = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-restore", "-w"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    c.stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .map_err(|e| format!("iptables-restore: {e}"))?;
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !require_root() {
        return ExitCode::from(2);
    }
    match run(&a) {
        Ok(v) => {
            if a.json {
                println!("{v:#}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nodeport-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
