//! The programmer's planning, on the recording fake: which map operations
//! each change takes, in which order; what is retired and collected when;
//! what a restart adopts and rewrites.

use super::model::*;
use super::program::*;
use super::translate::Translation;
use super::writer::fake::FakeMaps;
use sluice_dataplane::maps::{Capacity, SvcKey};
use std::time::{Duration, Instant};

fn key(s: &str) -> FrontendKey {
    FrontendKey {
        addr: s.parse().unwrap(),
        protocol: Protocol::Tcp,
    }
}

fn frontend(k: &str, svc: &str, backends: &[&str], selection: Selection) -> Frontend {
    Frontend {
        key: key(k),
        service: ServiceRef {
            namespace: "t".into(),
            name: svc.into(),
        },
        port_name: String::new(),
        affinity_timeout: None,
        internal_local: false,
        selection,
        backends: backends
            .iter()
            .map(|b| Backend {
                addr: b.parse().unwrap(),
                state: BackendState::Ready,
                local: true,
                excluded_by_policy: false,
            })
            .collect(),
        kind: Default::default(),
        external_local: false,
        external_mode: Default::default(),
        health_check_node_port: None,
    }
}

fn translation(fs: Vec<Frontend>) -> Translation {
    Translation {
        frontends: fs.into_iter().map(|f| (f.key, f)).collect(),
        ..Default::default()
    }
}

fn programmer() -> Programmer<FakeMaps> {
    Programmer::adopt(
        FakeMaps::default(),
        MaglevConfig::default(),
        Capacity::DEFAULT,
    )
    .unwrap()
}

fn full(p: &mut Programmer<FakeMaps>, t: &Translation, now: Instant) -> ApplyReport {
    p.apply_at(t, None, RemovalGuard::default(), now).unwrap()
}

/// The index of the first op matching `f`.
fn at(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
    ops.iter().position(f).unwrap_or_else(|| panic!("{ops:#?}"))
}

#[test]
fn a_new_frontend_is_visible_only_after_its_backends_and_table() {
    let mut p = programmer();
    let t0 = Instant::now();
    let t = translation(vec![frontend(
        "10.96.0.1:80",
        "a",
        &["10.244.0.1:8080", "10.244.0.2:8080"],
        Selection::Random,
    )]);
    let rep = full(&mut p, &t, t0);
    assert_eq!((rep.added, rep.backends_added), (1, 2));
    let ops = p.maps().take();
    let fe = at(&ops, |o| matches!(o, Op::PutFrontend { .. }));
    assert_eq!(fe, ops.len() - 1, "the frontend goes last: {ops:#?}");
    let slots = at(&ops, |o| matches!(o, Op::PutSlots { .. }));
    let members = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Op::PutMember(_)))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    let backends = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Op::PutBackend { .. }))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    assert_eq!((members.len(), backends.len()), (2, 2));
    assert!(backends.iter().all(|b| *b < slots) && members.iter().all(|m| *m < slots));
    // The same translation again writes nothing.
    let rep = full(&mut p, &t, t0 + Duration::from_millis(10));
    assert_eq!((rep.unchanged, rep.entries_written), (1, 0));
    assert!(p.maps().take().is_empty());
}

/// A changed table: new members and a new generation before the frontend
/// switches to it; leaving members after; the old generation, a leaving
/// backend and its counter only a second later.
#[test]
fn a_changed_table_switches_whole_and_retires_the_old_a_second_later() {
    let mut p = programmer();
    let t0 = Instant::now();
    full(
        &mut p,
        &translation(vec![frontend(
            "10.96.0.1:80",
            "a",
            &["10.244.0.1:8080", "10.244.0.2:8080"],
            Selection::Random,
        )]),
        t0,
    );
    p.maps().take();
    let changed = translation(vec![frontend(
        "10.96.0.1:80",
        "a",
        &["10.244.0.2:8080", "10.244.0.3:8080"],
        Selection::Random,
    )]);
    let rep = full(&mut p, &changed, t0 + Duration::from_millis(100));
    assert_eq!((rep.changed, rep.backends_added), (1, 1));
    let ops = p.maps().take();
    let join = at(&ops, |o| matches!(o, Op::PutMember(_)));
    let slots = at(&ops, |o| matches!(o, Op::PutSlots { gen: 2, .. }));
    let switch = at(
        &ops,
        |o| matches!(o, Op::PutFrontend { value, .. } if value.gen == 2),
    );
    let leave = at(&ops, |o| matches!(o, Op::DelMember(_)));
    assert!(join < slots && slots < switch && switch < leave, "{ops:#?}");
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::DelSlots(_) | Op::DelBackend(_) | Op::DelCounter(_))),
        "nothing a connect may still read goes at once: {ops:#?}"
    );
    // Half a second later: still there.
    full(&mut p, &changed, t0 + Duration::from_millis(600));
    assert!(p.maps().take().is_empty());
    // A second later: the old generation, the backend that left and its
    // counter go; the live generation stays.
    full(&mut p, &changed, t0 + Duration::from_millis(1200));
    let ops = p.maps().take();
    assert!(ops
        .iter()
        .any(|o| matches!(o, Op::DelSlots(k) if k.iter().all(|k| k.gen == 1))));
    assert!(ops.iter().any(|o| matches!(o, Op::DelBackend(_))));
    assert!(ops.iter().any(|o| matches!(o, Op::DelCounter(_))));
    assert_eq!(p.maps().slots.len(), 2, "the live generation");
    assert!(p.maps().slots.keys().all(|(_, gen, _)| *gen == 2));
}

/// A removed frontend leaves `sluice_svc` first; its slots go a second
/// later, its backend ids become free and are reused, smallest first.
#[test]
fn a_removed_frontend_goes_first_and_its_ids_are_reused_after_collection() {
    let mut p = programmer();
    let t0 = Instant::now();
    full(
        &mut p,
        &translation(vec![
            frontend("10.96.0.1:80", "a", &["10.244.0.1:8080"], Selection::Random),
            frontend("10.96.0.2:80", "b", &["10.244.0.9:8080"], Selection::Random),
        ]),
        t0,
    );
    let a_backend = p
        .maps()
        .backends
        .iter()
        .find(|(_, (a, _))| a.port() == 8080 && a.ip().to_string() == "10.244.0.1")
        .map(|(id, _)| *id)
        .unwrap();
    p.maps().take();
    let only_b = translation(vec![frontend(
        "10.96.0.2:80",
        "b",
        &["10.244.0.9:8080"],
        Selection::Random,
    )]);
    let rep = full(&mut p, &only_b, t0 + Duration::from_millis(10));
    assert_eq!(rep.removed, 1);
    let ops = p.maps().take();
    assert!(matches!(ops[0], Op::DelFrontend(_)), "{ops:#?}");
    assert!(!ops
        .iter()
        .any(|o| matches!(o, Op::DelSlots(_) | Op::DelBackend(_))));
    // Before collection the id is not reused.
    let with_c = translation(vec![
        frontend("10.96.0.2:80", "b", &["10.244.0.9:8080"], Selection::Random),
        frontend("10.96.0.3:80", "c", &["10.244.0.7:8080"], Selection::Random),
    ]);
    full(&mut p, &with_c, t0 + Duration::from_millis(20));
    let c_id = |p: &mut Programmer<FakeMaps>, ip: &str| {
        p.maps()
            .backends
            .iter()
            .find(|(_, (a, _))| a.ip().to_string() == ip)
            .map(|(id, _)| *id)
            .unwrap()
    };
    assert_ne!(
        c_id(&mut p, "10.244.0.7"),
        a_backend,
        "not reused while a map holds it"
    );
    // After collection it is.
    full(&mut p, &with_c, t0 + Duration::from_millis(1500));
    let with_d = translation(vec![
        frontend("10.96.0.2:80", "b", &["10.244.0.9:8080"], Selection::Random),
        frontend("10.96.0.3:80", "c", &["10.244.0.7:8080"], Selection::Random),
        frontend("10.96.0.4:80", "d", &["10.244.0.6:8080"], Selection::Random),
    ]);
    full(&mut p, &with_d, t0 + Duration::from_millis(1600));
    assert_eq!(
        c_id(&mut p, "10.244.0.6"),
        a_backend,
        "the freed id, smallest first"
    );
}

/// A restart adopts the maps: everything in place is kept as it is (no
/// entry written), what no frontend explains (a generation a crash left
/// half-written, a table, members and counters of a frontend that is
/// gone) is collected by the first full pass, and only what changed is
/// written.
#[test]
fn a_restart_adopts_everything_in_place_and_collects_orphans() {
    let mut p = programmer();
    let t0 = Instant::now();
    let t = translation(vec![
        frontend(
            "10.96.0.1:80",
            "a",
            &["10.244.0.1:8080", "10.244.0.2:8080"],
            Selection::Random,
        ),
        frontend(
            "10.96.0.2:80",
            "m",
            &["10.244.0.1:8080", "10.244.0.3:8080"],
            Selection::Maglev,
        ),
    ]);
    full(&mut p, &t, t0);
    let mut maps = std::mem::take(p.maps());
    maps.take();
    // What a crash left: a half-written generation of a, a table and
    // members and a counter of a frontend (svc_id 99) that is gone.
    maps.slots.insert((1, 7, 0), 1);
    maps.tables.insert(99, vec![1]);
    maps.members.insert((99, 1));
    maps.counters.insert((99, 1));
    maps.counters.insert((1, 1));

    let mut p = Programmer::adopt(maps, MaglevConfig::default(), Capacity::DEFAULT).unwrap();
    assert_eq!(p.frontends(), 2);
    let rep = full(&mut p, &t, t0 + Duration::from_secs(5));
    assert_eq!(
        (rep.unchanged, rep.added, rep.changed),
        (2, 0, 0),
        "{rep:?}"
    );
    assert_eq!(rep.entries_written, 0, "nothing rewritten");
    assert_eq!(rep.orphans_collected, 4, "{rep:?}");
    let ops = p.maps().take();
    assert!(
        ops.iter().all(|o| matches!(
            o,
            Op::DelSlots(_) | Op::DelTable(99) | Op::DelMember(_) | Op::DelCounter(_)
        )),
        "{ops:#?}"
    );
    assert!(p.maps().counters.contains(&(1, 1)), "a live counter stays");
    assert!(!p.maps().slots.contains_key(&(1, 7, 0)));
    assert!(p.maps().tables.contains_key(&2) && !p.maps().tables.contains_key(&99));

    // A change after the restart writes only that frontend's new state.
    let changed = translation(vec![
        frontend(
            "10.96.0.1:80",
            "a",
            &["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.4:8080"],
            Selection::Random,
        ),
        frontend(
            "10.96.0.2:80",
            "m",
            &["10.244.0.1:8080", "10.244.0.3:8080"],
            Selection::Maglev,
        ),
    ]);
    let rep = full(&mut p, &changed, t0 + Duration::from_secs(6));
    assert_eq!((rep.changed, rep.unchanged), (1, 1));
    // One backend, one member, three slots, the frontend.
    assert_eq!(rep.entries_written, 6, "{:#?}", p.maps().take());
}

/// A new id is never one an adopted map still holds (a counter or a
/// member of a frontend that is gone counts).
#[test]
fn adopted_ids_are_not_reused() {
    let mut maps = FakeMaps::default();
    maps.members.insert((40, 70));
    maps.counters.insert((41, 71));
    let mut p = Programmer::adopt(maps, MaglevConfig::default(), Capacity::DEFAULT).unwrap();
    full(
        &mut p,
        &translation(vec![frontend(
            "10.96.0.1:80",
            "a",
            &["10.244.0.1:8080"],
            Selection::Random,
        )]),
        Instant::now(),
    );
    let fe = p.maps().svc.values().next().unwrap().1;
    assert!(fe.svc_id > 41, "{fe:?}");
    assert!(p.maps().backends.keys().all(|id| *id > 71));
}

/// Beyond the capacity the maps are sized for, a frontend is refused with
/// the limit named; the others are programmed, and none is half-written.
#[test]
fn beyond_capacity_a_frontend_is_refused_and_the_rest_programmed() {
    let cap = Capacity {
        frontends: 2,
        endpoints_per_frontend: 2,
    };
    let mut p = Programmer::adopt(FakeMaps::default(), MaglevConfig::default(), cap).unwrap();
    let t = translation(vec![
        frontend("10.96.0.1:80", "a", &["10.244.0.1:8080"], Selection::Random),
        frontend("10.96.0.2:80", "b", &["10.244.0.2:8080"], Selection::Random),
        frontend("10.96.0.3:80", "c", &["10.244.0.3:8080"], Selection::Random),
    ]);
    let rep = full(&mut p, &t, Instant::now());
    assert_eq!(rep.added, 2);
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert!(
        rep.failed[0].contains("max_frontends") && rep.failed[0].contains("(2)"),
        "{}",
        rep.failed[0]
    );
    let fill = p.fill();
    let svc = fill.iter().find(|f| f.map == "sluice_svc").unwrap();
    assert_eq!((svc.entries, svc.capacity), (2, 2));
    // Too many memberships: refused before anything is written.
    let big = translation(vec![
        frontend("10.96.0.1:80", "a", &["10.244.0.1:8080"], Selection::Random),
        frontend(
            "10.96.0.2:80",
            "b",
            &[
                "10.244.0.2:8080",
                "10.244.0.4:8080",
                "10.244.0.5:8080",
                "10.244.0.6:8080",
                "10.244.0.7:8080",
            ],
            Selection::Random,
        ),
    ]);
    p.maps().take();
    let rep = full(&mut p, &big, Instant::now());
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert!(
        rep.failed[0].contains("max_endpoints_per_frontend"),
        "{}",
        rep.failed[0]
    );
    assert!(
        !p.maps()
            .take()
            .iter()
            .any(|o| matches!(o, Op::PutFrontend { .. } | Op::PutSlots { .. })),
        "no part of b's new table was switched to"
    );
}

/// A write that fails (a full map) leaves the frontend as it was and is
/// retried by the next pass.
#[test]
fn a_failed_write_is_retried_by_the_next_pass() {
    let mut p = programmer();
    p.maps().fail = Some(|o| matches!(o, Op::PutSlots { .. }));
    let t = translation(vec![frontend(
        "10.96.0.1:80",
        "a",
        &["10.244.0.1:8080"],
        Selection::Random,
    )]);
    let rep = full(&mut p, &t, Instant::now());
    assert_eq!((rep.added, rep.failed.len()), (0, 1));
    assert!(p.maps().svc.is_empty(), "not visible");
    p.maps().fail = None;
    let rep = full(&mut p, &t, Instant::now());
    assert_eq!(rep.added, 1, "{rep:?}");
    assert_eq!(p.maps().svc.len(), 1);
    let k = SvcKey::new("10.96.0.1:80".parse().unwrap(), 6);
    assert!(p.maps().svc.values().any(|(sk, _)| *sk == k));
}

/// Adopted Maglev tables are not read whole (a thousand tables are sixteen
/// million entries): one is, to check it was built with this Maglev
/// configuration; if it was, the others are taken by their length and
/// members; if the seed changed, every table is written again.
#[test]
fn adopted_maglev_tables_are_checked_once_and_rebuilt_if_the_seed_changed() {
    let fs = |n: usize| -> Translation {
        translation(
            (0..n)
                .map(|i| {
                    frontend(
                        &format!("10.96.0.{}:80", i + 1),
                        &format!("m{i}"),
                        &["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"],
                        Selection::Maglev,
                    )
                })
                .collect(),
        )
    };
    let mut p = programmer();
    let t0 = Instant::now();
    full(&mut p, &fs(3), t0);
    let maps = std::mem::take(p.maps());
    let mut same = Programmer::adopt(maps, MaglevConfig::default(), Capacity::DEFAULT).unwrap();
    let rep = full(&mut same, &fs(3), t0 + Duration::from_secs(2));
    assert_eq!((rep.unchanged, rep.entries_written), (3, 0), "{rep:?}");

    let mut maps = std::mem::take(same.maps());
    maps.take();
    let other_seed = MaglevConfig {
        seed: 7,
        ..MaglevConfig::default()
    };
    let mut reseeded = Programmer::adopt(maps, other_seed, Capacity::DEFAULT).unwrap();
    let rep = full(&mut reseeded, &fs(3), t0 + Duration::from_secs(4));
    assert_eq!(rep.changed, 3, "{rep:?}");
    let tables = reseeded
        .maps()
        .take()
        .iter()
        .filter(|o| matches!(o, Op::PutTable { .. }))
        .count();
    assert_eq!(tables, 3);
}

/// A crash while a removed service's backends wait out their second
/// before deletion, after the service came back with the same backends
/// under new (reused, smaller) ids: the maps hold two ids for each
/// address. A restart must take the ids the tables hold, keep every
/// frontend as it is (found by a svc-bench restart that rewrote 100
/// Maglev tables, 1.6 million entries), and sweep the stale ids.
#[test]
fn a_restart_takes_the_backend_ids_the_tables_hold_when_an_address_has_two() {
    // m and r share three backends; y stays throughout (the removal
    // guard holds removing everything); x comes first and goes, freeing
    // the smallest ids for m and r's return.
    let y = frontend("10.96.1.1:80", "y", &["10.244.1.1:8080"], Selection::Random);
    let abc = ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.0.3:8080"];
    let with_mr = |extra: Vec<Frontend>| {
        let mut fs = extra;
        fs.push(frontend("10.96.0.1:80", "m", &abc, Selection::Maglev));
        fs.push(frontend("10.96.0.2:80", "r", &abc, Selection::Random));
        fs.push(y.clone());
        translation(fs)
    };
    let x = frontend(
        "10.96.0.0:80",
        "x",
        &["10.244.9.1:8080", "10.244.9.2:8080", "10.244.9.3:8080"],
        Selection::Random,
    );
    let mut p = programmer();
    let t0 = Instant::now();
    // x takes ids 1-3, m and r 4-6, y 7; x goes and its ids are freed.
    full(&mut p, &with_mr(vec![x]), t0);
    full(&mut p, &with_mr(Vec::new()), t0 + Duration::from_secs(1));
    full(&mut p, &with_mr(Vec::new()), t0 + Duration::from_secs(3));
    // m and r go; 0.5 s later they are back, their backends under the
    // freed ids 1-3 while 4-6 wait out their second before deletion.
    full(
        &mut p,
        &translation(vec![y.clone()]),
        t0 + Duration::from_secs(4),
    );
    full(
        &mut p,
        &with_mr(Vec::new()),
        t0 + Duration::from_millis(4500),
    );
    let mut maps = std::mem::take(p.maps());
    assert_eq!(
        maps.backends.len(),
        7,
        "two ids per address: {:?}",
        maps.backends
    );
    maps.take();
    // kill -9, and a restart on the same maps.
    let mut again = Programmer::adopt(maps, MaglevConfig::default(), Capacity::DEFAULT).unwrap();
    let rep = full(
        &mut again,
        &with_mr(Vec::new()),
        t0 + Duration::from_secs(5),
    );
    assert_eq!(
        (rep.unchanged, rep.changed, rep.added),
        (3, 0, 0),
        "{rep:?}"
    );
    // Nothing written again; only the removed frontends' leftovers (their
    // old slots and table, the stale backends) collected.
    let written: Vec<Op> = again
        .maps()
        .take()
        .into_iter()
        .filter(|op| {
            matches!(
                op,
                Op::PutBackend { .. }
                    | Op::PutMember(_)
                    | Op::PutSlots { .. }
                    | Op::PutTable { .. }
                    | Op::PutFrontend { .. }
                    | Op::DelFrontend(_)
            )
        })
        .collect();
    assert!(written.is_empty(), "{written:#?}");
    // The stale ids go after their second; the live ones stay.
    full(
        &mut again,
        &with_mr(Vec::new()),
        t0 + Duration::from_secs(7),
    );
    let left: Vec<u32> = again.maps().backends.keys().copied().collect();
    assert_eq!(left, [1, 2, 3, 7], "{:?}", again.maps().backends);
}
