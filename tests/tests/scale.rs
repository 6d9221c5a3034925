//! The daemon at 10,000 services: no pod waits on housekeeping.

use serde_json::Value;
use sluice_common::api::Request;
use sluice_common::endpoint::EndpointRecord;
use sluice_dataplane::maps::{AffinityKey, AffinityValue, AFFINITY};
use sluice_tests::daemon::{eventually, Daemon};
use sluice_tests::manifests::{self, write_atomic};
use sluice_tests::{require_root, Node, Pod};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SERVICES: usize = 10_000;
const PER_FILE: usize = 100;
const ENDPOINTS: usize = 10;

/// Writes `SERVICES` services, `PER_FILE` to a file (`f<k>.yaml`), each
/// with `endpoints` endpoints.
fn write_services(dir: &Path, endpoints: usize) {
    for f in 0..SERVICES / PER_FILE {
        let text: Vec<String> = (f * PER_FILE..(f + 1) * PER_FILE)
            .map(|i| {
                manifests::service(
                    "scale",
                    i,
                    manifests::cluster_ip(i, 96),
                    80,
                    &manifests::endpoints(i, endpoints),
                    8080,
                )
            })
            .collect();
        write_atomic(dir, &format!("f{f}.yaml"), &text.join("---\n"));
    }
}

fn source(d: &Daemon<'_>) -> Value {
    d.call(Request::ServiceSource).expect("service_source").data["source"].clone()
}

fn frontends(d: &Daemon<'_>) -> u64 {
    source(d)["frontends"].as_u64().unwrap_or(0)
}

/// The two tests here each run a daemon at 10,000 services and one of them
/// times registers: run side by side on two CPUs, the other's first pass
/// and restart put its own p99 past the bound (seen in CI: 6.7 ms, 0.5-0.7
/// ms alone). They take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    sluice_tests::take_turn(&ONE_AT_A_TIME)
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99).div_ceil(100) - 1]
}

/// A register does not wait on housekeeping (p99 of its wait for the
/// daemon's state under 5 ms, of its whole time in the daemon under 15 ms)
/// while, at the same time and at 10,000 services, `sluicectl status` runs
/// over and over, the endpoint reconcile runs every second, and a hundred
/// frontends are removed and added again (their affinity entries, 60,000
/// of them, with them). Before, status counted every map's keys under the
/// state lock the register needs, the accept loop waited for each
/// reconcile, and a removal walked the affinity map under the programmer's
/// lock.
#[test]
fn register_stays_fast_while_housekeeping_runs_at_10000_services() {
    if !require_root() {
        return;
    }
    let _turn = one_at_a_time();
    let node = Node::new();
    let dir = node.dir.path().join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let d = Daemon::start_with(
        &node,
        &format!(
            "services_dir = \"{}\"\nreconcile_interval_seconds = 1\nmax_removal_percent = 100\n",
            dir.display()
        ),
    );
    let conf = node.conf("1.0.0", sluice_tests::ranges("v4"));
    let pod = Pod::add(&node, &conf);
    let record = EndpointRecord::load(&node.state_dir(), &pod.cid, "eth0")
        .unwrap()
        .unwrap();
    write_services(&dir, ENDPOINTS);
    assert!(
        eventually(60, || frontends(&d) == SERVICES as u64),
        "{SERVICES} services programmed"
    );
    // Affinity entries of the services the removal takes away.
    let pins = sluice_dataplane::pins::Pins::new(&node.pin_path);
    let mut aff: aya::maps::HashMap<_, AffinityKey, AffinityValue> = aya::maps::HashMap::try_from(
        sluice_dataplane::load::open_pinned(&pins.maps(), &AFFINITY).unwrap(),
    )
    .unwrap();
    let svcs: Value = d.call(Request::ListServices).unwrap().data;
    let ids: Vec<u32> = svcs["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["service"]
                .as_str()
                .unwrap()
                .strip_prefix("scale/svc-")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < PER_FILE)
        })
        .map(|s| s["svc_id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids.len(), PER_FILE);
    for n in 0..60_000u64 {
        let k = AffinityKey {
            netns_cookie: record.netns_cookie.unwrap(),
            svc_id: ids[n as usize % ids.len()],
            pad: n as u32,
        };
        aff.insert(k, AffinityValue::new(1, 0).unwrap(), 0).unwrap();
    }

    let stop = AtomicBool::new(false);
    let (rtts, statuses, removals) = std::thread::scope(|s| {
        let status = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // What `sluicectl status` asks, without starting a process
                // each time (on this kernel, PREEMPT_NONE, process start and
                // exit delay every other task on the CPU, daemon or not).
                let s = d.status();
                assert!(s["maps"].as_array().is_some_and(|m| !m.is_empty()), "{s}");
                n += 1;
                // Twenty a second: far more than any operator or monitor,
                // without the test itself taking every CPU of the node.
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        });
        let churn = s.spawn(|| {
            let mut n = 0;
            let f0 = dir.join("f0.yaml");
            let text = std::fs::read_to_string(&f0).unwrap();
            while !stop.load(Ordering::Relaxed) {
                std::fs::remove_file(&f0).unwrap();
                std::thread::sleep(Duration::from_millis(400));
                write_atomic(&dir, "f0.yaml", &text);
                std::thread::sleep(Duration::from_millis(400));
                n += 1;
            }
            n
        });
        let mut rtts = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(8) {
            let t = Instant::now();
            let r = d
                .call(Request::Register {
                    endpoint: Box::new(record.clone()),
                })
                .expect("register");
            let rtt = t.elapsed().as_secs_f64() * 1e3;
            assert!(r.ok, "{r:?}");
            let took = r.data["took_us"].as_f64().expect("took_us") / 1e3;
            let waited = r.data["waited_us"].as_f64().expect("waited_us") / 1e3;
            rtts.push((rtt, took, waited));
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        (rtts, status.join().unwrap(), churn.join().unwrap())
    });
    assert!(
        statuses > 5 && removals >= 5,
        "{statuses} statuses, {removals} removals"
    );
    let n = rtts.len();
    let rtt = p99(rtts.iter().map(|r| r.0).collect());
    let took = p99(rtts.iter().map(|r| r.1).collect());
    let waited = p99(rtts.iter().map(|r| r.2).collect());
    eprintln!(
        "register under housekeeping: {n} registers, p99 round trip {rtt:.2} ms, p99 in the daemon \
         {took:.2} ms, p99 waiting for the state {waited:.2} ms"
    );
    // Waiting for the state another task holds: the housekeeping a
    // register must not wait on (before: 274 ms at p99 in the daemon,
    // waiting for status's map walk under the state lock).
    assert!(
        waited < 5.0,
        "register p99 wait for the state {waited:.2} ms over {n} registers, with {statuses} \
         statuses and {removals} removals of 100 frontends"
    );
    // The whole time in the daemon, from the request read to the answer:
    // here 0.4-0.5 ms at the median and 0.7-3 ms at p99 (a debug build),
    // single registers reaching 5-11 ms when the machine's disk (the
    // daemon logs every register to a file) or scheduler holds the thread;
    // CI once measured a p99 above 5 ms. Bounded at 15 ms.
    assert!(
        took < 15.0,
        "register p99 in the daemon {took:.2} ms over {n} registers, with {statuses} statuses \
         and {removals} removals of 100 frontends"
    );
    // The round trip adds the scheduling of both ends on this 2-core,
    // PREEMPT_NONE machine that the test loads itself; it is bounded far
    // below the plugin's 250 ms budget (before: 274 ms at p99).
    assert!(
        rtt < 25.0,
        "register p99 round trip {rtt:.2} ms over {n} registers"
    );
}

fn last_apply(d: &Daemon<'_>) -> Value {
    source(d)["last_apply"].clone()
}

/// A restart with 10,000 services of 30 endpoints programmed (300,000
/// backends in their tables) adopts the maps as they are: its first pass
/// writes no entry. A change afterwards writes only that service's.
/// Before, every frontend's table was written again at each start.
#[test]
fn a_restart_at_10000_services_rewrites_nothing() {
    if !require_root() {
        return;
    }
    let _turn = one_at_a_time();
    let node = Node::new();
    let dir = node.dir.path().join("services");
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = Daemon::start_with(&node, &format!("services_dir = \"{}\"\n", dir.display()));
    write_services(&dir, 30);
    assert!(
        eventually(120, || frontends(&d) == SERVICES as u64),
        "{SERVICES} services programmed: {}",
        frontends(&d)
    );
    let source = source(&d);
    let members = source["fill"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["map"] == "sluice_svc_bes")
        .unwrap()["entries"]
        .as_u64()
        .unwrap();
    assert_eq!(members, (SERVICES * 30) as u64, "{source:#}");

    d.kill9();
    let ready = d.spawn();
    // Ready at once with the adopted maps; the first pass follows.
    assert_eq!(
        frontends(&d),
        SERVICES as u64,
        "adopted before the first pass"
    );
    let t = Instant::now();
    assert!(
        eventually(120, || !last_apply(&d).is_null()),
        "the first pass after the restart"
    );
    let pass = t.elapsed();
    let first = last_apply(&d);
    eprintln!(
        "restart with {SERVICES} x 30: ready in {ready:?}, first pass done {pass:?} later: {first}"
    );
    assert_eq!(first["unchanged"], SERVICES as u64, "{first}");
    assert_eq!(first["entries_written"], 0, "nothing rewritten: {first}");
    assert_eq!(
        first["added"].as_u64().unwrap() + first["changed"].as_u64().unwrap(),
        0
    );

    // One service changes: only it is written (a new generation of 31
    // slots, one backend, one member, the frontend).
    let f0 = std::fs::read_to_string(dir.join("f0.yaml")).unwrap();
    let changed = f0.replacen(
        "conditions: {ready: true}\n---",
        "conditions: {ready: true}\n- addresses: [\"10.250.0.1\"]\n  conditions: {ready: true}\n---",
        1,
    );
    assert_ne!(changed, f0);
    write_atomic(&dir, "f0.yaml", &changed);
    assert!(eventually(10, || last_apply(&d)["changed"] == 1));
    let after = last_apply(&d);
    assert_eq!(after["entries_written"], 34, "{after}");
}
