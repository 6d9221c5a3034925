//! Pinned maps from another build: reused only when they are exactly this
//! build's (type, key, value, size, flags, inner-map template); carried
//! over into a new map when only size, flags or template differ; migrated
//! into their successor when an older build's layout had another name;
//! refused when the layout changed under the same name.

mod common;

use common::{root, PinDir};
use sluice_dataplane::load::{
    self, aside_path, check_pinned_maps, load_object_carrying, migrate_obsolete, pinned_state,
    LoadError, Pinned,
};
use sluice_dataplane::maps::{self, *};
use sluice_dataplane::sys;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

fn pin(fd: std::os::fd::BorrowedFd<'_>, dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    sys::obj_pin(fd, &dir.join(name)).unwrap();
}

fn info(dir: &Path, name: &str) -> sys::MapInfoRaw {
    sys::map_info(sys::obj_get(&dir.join(name)).unwrap().as_fd()).unwrap()
}

fn lookup<const N: usize>(dir: &Path, name: &str, key: &[u8]) -> Option<[u8; N]> {
    let fd = sys::obj_get(&dir.join(name)).unwrap();
    let mut v = [0u8; N];
    sys::map_lookup(fd.as_fd(), key, &mut v)
        .unwrap()
        .then_some(v)
}

/// The case: a frontend map pinned without `BPF_F_NO_PREALLOC`
/// was reused as it was, and "a frontend is read once" silently no longer
/// held. Now it is seen, and its entries move into a map made right.
#[test]
fn a_frontend_map_with_other_flags_is_carried_into_a_new_one() {
    if !root() {
        return;
    }
    let pins = PinDir::new("pins-flags");
    let old = sys::map_create(
        1,
        SVC.key_size,
        SVC.value_size,
        SVC.max_entries,
        0,
        "sluice_svc",
    )
    .unwrap();
    let key = SvcKey::new("10.96.0.1:443".parse().unwrap(), 6);
    let value = SvcValue {
        svc_id: 7,
        affinity_timeout: 0,
        flags: 0,
        count: 2,
        gen: 3,
    };
    sys::map_update(old.as_fd(), bytes_of(&key), bytes_of(&value), 0).unwrap();
    pin(old.as_fd(), &pins.0, SVC.name);
    drop(old);

    match pinned_state(&pins.0, &SVC).unwrap() {
        Pinned::Reshape(why) => assert!(why.contains("flags 0x0 (this build 0x1)"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Whoever only opens maps (the plugin, sluicectl) refuses it.
    assert!(matches!(
        check_pinned_maps(&pins.0, &[SVC]),
        Err(LoadError::MapMismatch { .. })
    ));

    let (_obj, carried) =
        load_object_carrying("sock", sluice_dataplane::SOCK, &pins.0, &maps::ALL).unwrap();
    assert_eq!(carried.len(), 1, "{carried:?}");
    assert_eq!(
        (carried[0].name, carried[0].copied, carried[0].dropped),
        (SVC.name, 1, 0)
    );
    assert_eq!(info(&pins.0, SVC.name).map_flags, BPF_F_NO_PREALLOC);
    assert_eq!(pinned_state(&pins.0, &SVC).unwrap(), Pinned::Matches);
    let got: [u8; 16] = lookup(&pins.0, SVC.name, bytes_of(&key)).unwrap();
    assert_eq!(got, bytes_of(&value));
    assert!(!aside_path(&pins.0, SVC.name).exists());
}

/// An outer map whose inner-map template fixes the table size (no
/// `BPF_F_INNER_MAP`) would refuse every Maglev table of another size;
/// `bpf_map_info` does not show the template, the kernel's own check does.
#[test]
fn an_outer_map_with_another_inner_template_is_seen_and_replaced() {
    if !root() {
        return;
    }
    let pins = PinDir::new("pins-inner");
    let template = sys::map_create(2, 4, 4, 1, 0, "tmpl").unwrap();
    let outer = sys::map_create_of_maps(
        13,
        4,
        LB_TABLES.max_entries,
        template.as_fd(),
        "sluice_lbtables",
    )
    .unwrap();
    // A table that fits the old template: kept if the new one takes it.
    let table = sys::map_create(2, 4, 4, 1, 0, "old_table").unwrap();
    sys::map_update(
        outer.as_fd(),
        &9u32.to_ne_bytes(),
        &(table.as_raw_fd() as u32).to_ne_bytes(),
        0,
    )
    .unwrap();
    pin(outer.as_fd(), &pins.0, LB_TABLES.name);
    drop(outer);

    match pinned_state(&pins.0, &LB_TABLES).unwrap() {
        Pinned::Reshape(why) => assert!(why.contains("inner-map template"), "{why}"),
        other => panic!("{other:?}"),
    }
    let (_obj, carried) =
        load_object_carrying("sock", sluice_dataplane::SOCK, &pins.0, &maps::ALL).unwrap();
    assert_eq!(carried.len(), 1, "{carried:?}");
    // The old table's template differs from the new one's: it cannot go
    // into the new map (the daemon writes every service's table again).
    assert_eq!((carried[0].copied, carried[0].dropped), (0, 1));
    assert_eq!(pinned_state(&pins.0, &LB_TABLES).unwrap(), Pinned::Matches);
    // The new map takes tables of any size.
    let tables = sys::obj_get(&pins.0.join(LB_TABLES.name)).unwrap();
    for n in [1u32, 3, 16381] {
        let ids: Vec<u32> = (1..=n).collect();
        let t = sys::lb_table(&ids, "t").unwrap();
        sys::map_update(
            tables.as_fd(),
            &n.to_ne_bytes(),
            &(t.as_raw_fd() as u32).to_ne_bytes(),
            0,
        )
        .unwrap();
    }
}

/// A map resized between builds keeps its entries; one killed in the
/// middle of the copy finishes it at the next start.
#[test]
fn a_resized_map_keeps_its_entries_and_an_interrupted_copy_finishes() {
    if !root() {
        return;
    }
    let pins = PinDir::new("pins-size");
    let old = sys::map_create(
        1,
        BACKENDS.key_size,
        BACKENDS.value_size,
        1000,
        BPF_F_NO_PREALLOC,
        "sluice_backends",
    )
    .unwrap();
    for id in 1..=100u32 {
        let b = Backend::new(format!("10.244.0.{id}:80").parse().unwrap(), 6);
        sys::map_update(old.as_fd(), &id.to_ne_bytes(), bytes_of(&b), 0).unwrap();
    }
    pin(old.as_fd(), &pins.0, BACKENDS.name);
    // As a daemon killed after setting the old map aside and creating the
    // new one, before copying: both pins are there.
    load::prepare_pins(&pins.0, &[BACKENDS]).unwrap();
    assert!(aside_path(&pins.0, BACKENDS.name).exists());
    let fresh = sys::map_create(
        1,
        BACKENDS.key_size,
        BACKENDS.value_size,
        BACKENDS.max_entries,
        BPF_F_NO_PREALLOC,
        "sluice_backends",
    )
    .unwrap();
    // A backend the new daemon wrote before it died: it wins over the old.
    let newer = Backend::new("10.244.9.9:80".parse().unwrap(), 6);
    sys::map_update(fresh.as_fd(), &5u32.to_ne_bytes(), bytes_of(&newer), 0).unwrap();
    pin(fresh.as_fd(), &pins.0, BACKENDS.name);

    let (_obj, carried) =
        load_object_carrying("sock", sluice_dataplane::SOCK, &pins.0, &maps::ALL).unwrap();
    assert_eq!(carried.len(), 1, "{carried:?}");
    assert_eq!((carried[0].copied, carried[0].dropped), (99, 0));
    assert!(!aside_path(&pins.0, BACKENDS.name).exists());
    assert_eq!(
        info(&pins.0, BACKENDS.name).max_entries,
        BACKENDS.max_entries
    );
    let five: [u8; 24] = lookup(&pins.0, BACKENDS.name, &5u32.to_ne_bytes()).unwrap();
    assert_eq!(five, bytes_of(&newer));
    let six: [u8; 24] = lookup(&pins.0, BACKENDS.name, &6u32.to_ne_bytes()).unwrap();
    assert_eq!(
        six,
        bytes_of(&Backend::new("10.244.0.6:80".parse().unwrap(), 6))
    );
}

/// The affinity map changed layout (v1: time in ns and the backend apart;
/// v2: both in one word, for atomic first choices): a new name, and the
/// old entries converted into it, then the old map unpinned.
#[test]
fn the_v1_affinity_map_is_migrated_into_v2() {
    if !root() {
        return;
    }
    let pins = PinDir::new("pins-aff");
    let v1 = maps::OBSOLETE_AFFINITY_V1.spec;
    let old = sys::map_create(9, v1.key_size, v1.value_size, v1.max_entries, 0, v1.name).unwrap();
    let key = AffinityKey {
        netns_cookie: 4242,
        svc_id: 3,
        pad: 0,
    };
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&7_500_000_000u64.to_ne_bytes());
    value[8..12].copy_from_slice(&77u32.to_ne_bytes());
    sys::map_update(old.as_fd(), bytes_of(&key), &value, 0).unwrap();
    pin(old.as_fd(), &pins.0, v1.name);

    let (_obj, _) =
        load_object_carrying("sock", sluice_dataplane::SOCK, &pins.0, &maps::ALL).unwrap();
    let migrated = migrate_obsolete(&pins.0, &maps::OBSOLETE, &maps::ALL).unwrap();
    assert_eq!(migrated.len(), 1, "{migrated:?}");
    assert_eq!(
        (migrated[0].name, migrated[0].into),
        (v1.name, AFFINITY.name)
    );
    assert_eq!((migrated[0].copied, migrated[0].dropped), (1, 0));
    assert!(!pins.0.join(v1.name).exists());
    let got: [u8; 8] = lookup(&pins.0, AFFINITY.name, bytes_of(&key)).unwrap();
    let got = AffinityValue {
        word: u64::from_ne_bytes(got),
    };
    assert_eq!((got.backend_id(), got.last_used_ms()), (77, 7500));
}

/// A layout change under the same name is a build that forgot to version
/// the map: refused with the difference named, nothing moved.
#[test]
fn another_layout_under_the_same_name_is_refused() {
    if !root() {
        return;
    }
    let pins = PinDir::new("pins-layout");
    let old = sys::map_create(
        1,
        SVC.key_size,
        8,
        SVC.max_entries,
        BPF_F_NO_PREALLOC,
        "svc",
    )
    .unwrap();
    pin(old.as_fd(), &pins.0, SVC.name);
    let Err(err) = load_object_carrying("sock", sluice_dataplane::SOCK, &pins.0, &maps::ALL) else {
        panic!("loaded over a map of another layout");
    };
    let text = err.to_string();
    assert!(
        text.contains("sluice_svc") && text.contains("/8,"),
        "{text}"
    );
    assert!(pins.0.join(SVC.name).exists(), "left as it was");
    assert!(!aside_path(&pins.0, SVC.name).exists());
}
