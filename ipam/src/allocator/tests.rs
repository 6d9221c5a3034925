//! The allocator against both stores: every behaviour test below runs once
//! on a [`MemStore`] and once on a [`DiskStore`] in a temp dir.

use super::*;
use crate::store::{DiskStore, MemStore};
use serde_json::json;
use sluice_common::cni::codes;
use std::time::{Duration, Instant};

fn cfg(ranges: serde_json::Value) -> IpamConfig {
    IpamConfig::parse(&json!({ "ranges": ranges })).unwrap()
}

fn v4_24() -> IpamConfig {
    cfg(json!([[{"subnet": "10.244.0.0/24"}]]))
}

fn dual() -> IpamConfig {
    cfg(json!([[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:244::/64"}]]))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addrs(a: &[Allocation]) -> Vec<IpAddr> {
    a.iter().map(|a| a.address.ip()).collect()
}

fn valid(pairs: &[(&str, &str)]) -> HashSet<(String, String)> {
    pairs
        .iter()
        .map(|(c, i)| (c.to_string(), i.to_string()))
        .collect()
}

fn allocates_v4<S: Store>(store: S) {
    let mut a = Allocator::new(
        &cfg(
            json!([[{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.10",
                       "rangeEnd": "10.244.0.200", "gateway": "10.244.0.1"}]]),
        ),
        store,
    );
    let got = a.allocate("c1", "eth0").unwrap();
    assert_eq!(
        got,
        vec![Allocation {
            set: 0,
            address: "10.244.0.10/24".parse().unwrap(),
            gateway: ip("10.244.0.1"),
        }]
    );
    assert_eq!(a.get("c1", "eth0").unwrap(), vec![ip("10.244.0.10")]);
    assert_eq!(
        addrs(&a.allocate("c2", "eth0").unwrap()),
        vec![ip("10.244.0.11")]
    );
    // Same container, another interface: a separate attachment.
    assert_eq!(
        addrs(&a.allocate("c1", "net1").unwrap()),
        vec![ip("10.244.0.12")]
    );
}

fn allocates_v6<S: Store>(store: S) {
    let mut a = Allocator::new(&cfg(json!([[{"subnet": "fd00:244::/64"}]])), store);
    let got = a.allocate("c1", "eth0").unwrap();
    assert_eq!(
        got[0].address,
        "fd00:244::2/64".parse::<IpNetwork>().unwrap()
    );
    assert_eq!(got[0].gateway, ip("fd00:244::1"));
}

fn allocates_dual_stack<S: Store>(store: S) {
    let mut a = Allocator::new(&dual(), store);
    let got = a.allocate("c1", "eth0").unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].set, got[1].set), (0, 1));
    assert_eq!(got[0].address.to_string(), "10.244.0.2/24");
    assert_eq!(got[1].address.to_string(), "fd00:244::2/64");
    let mut held = a.get("c1", "eth0").unwrap();
    held.sort();
    assert_eq!(held, vec![ip("10.244.0.2"), ip("fd00:244::2")]);
}

fn round_robin_skips_the_just_freed<S: Store>(store: S) {
    let mut a = Allocator::new(&v4_24(), store);
    let first = addrs(&a.allocate("c1", "eth0").unwrap());
    a.allocate("c2", "eth0").unwrap();
    a.release("c1", "eth0").unwrap();
    let third = addrs(&a.allocate("c3", "eth0").unwrap());
    assert_ne!(
        third, first,
        "a just-freed address is reused only after a lap"
    );
    assert_eq!(third, vec![ip("10.244.0.4")]);
}

fn round_robin_wraps_and_spans_ranges<S: Store>(store: S) {
    let mut a = Allocator::new(
        &cfg(json!([[
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
            {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.20", "rangeEnd": "10.0.1.21",
             "gateway": "10.0.1.1"}
        ]])),
        store,
    );
    let got: Vec<Allocation> = ["a", "b", "c", "d"]
        .iter()
        .flat_map(|c| a.allocate(c, "eth0").unwrap())
        .collect();
    let got: Vec<String> = got.iter().map(|a| a.address.to_string()).collect();
    assert_eq!(
        got,
        [
            "10.0.0.10/24",
            "10.0.0.11/24",
            "10.0.1.20/24",
            "10.0.1.21/24"
        ]
    );
    assert_eq!(
        a.allocate("e", "eth0").unwrap_err().to_cni().code,
        codes::POOL_EXHAUSTED
    );
    a.release("b", "eth0").unwrap();
    // After the end of the last range comes the start of the first.
    assert_eq!(
        addrs(&a.allocate("e", "eth0").unwrap()),
        vec![ip("10.0.0.11")]
    );
}

fn gateway_is_never_allocated<S: Store>(store: S) {
    let mut a = Allocator::new(
        &cfg(json!([[{"subnet": "10.0.0.0/29", "gateway": "10.0.0.4"}]])),
        store,
    );
    let got: Vec<IpAddr> = (0..5)
        .flat_map(|i| addrs(&a.allocate(&format!("c{i}"), "eth0").unwrap()))
        .collect();
    assert_eq!(
        got,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"].map(ip)
    );
    assert!(a.allocate("c9", "eth0").is_err());
}

fn duplicate_attachment_is_101<S: Store>(store: S) {
    let mut a = Allocator::new(&dual(), store);
    a.allocate("c1", "eth0").unwrap();
    let e = a.allocate("c1", "eth0").unwrap_err();
    assert!(matches!(e, IpamError::AlreadyAllocated { .. }), "{e:?}");
    let cni = e.to_cni();
    assert_eq!(cni.code, codes::ALREADY_ALLOCATED);
    assert!(
        cni.msg
            .contains("container c1 ifname eth0 already holds 10.244.0.2"),
        "{cni}"
    );
    assert!(cni.msg.contains("DEL it first"), "{cni}");
    assert_eq!(
        a.get("c1", "eth0").unwrap().len(),
        2,
        "the reservation is untouched"
    );
}

fn exhaustion_is_100_and_leaves_nothing<S: Store>(store: S) {
    // v4 has room; the v6 /126 holds ::2 and ::3 beside its gateway ::1.
    let mut a = Allocator::new(
        &cfg(json!([[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00::/126"}]])),
        store,
    );
    a.allocate("c1", "eth0").unwrap();
    a.allocate("c2", "eth0").unwrap();
    let e = a.allocate("c3", "eth0").unwrap_err();
    let cni = e.to_cni();
    assert_eq!(cni.code, codes::POOL_EXHAUSTED);
    assert!(
        cni.msg.contains("ranges[1]") && cni.msg.contains("all 2 "),
        "{cni}"
    );
    assert!(cni.details.contains("widen"), "{cni}");
    assert!(a.get("c3", "eth0").unwrap().is_empty());
    assert_eq!(
        a.store.reserved().unwrap().len(),
        4,
        "no v4 address left behind"
    );
    assert!(a
        .store
        .read_index(&Owner::new("c3", "eth0").unwrap())
        .unwrap()
        .is_none());
    let st = a.status().unwrap();
    assert!(!st.sets[0].exhausted() && st.sets[1].exhausted());
    assert_eq!((st.sets[0].used, st.sets[0].capacity), (2, 253));
    // Freeing one v6 address makes room again.
    a.release("c1", "eth0").unwrap();
    assert_eq!(a.allocate("c3", "eth0").unwrap().len(), 2);
}

fn release_is_idempotent<S: Store>(store: S) {
    let mut a = Allocator::new(&dual(), store);
    assert!(a.release("never", "eth0").unwrap().is_empty());
    a.allocate("c1", "eth0").unwrap();
    assert_eq!(a.release("c1", "eth0").unwrap().len(), 2);
    assert!(a.release("c1", "eth0").unwrap().is_empty());
    assert!(a.store.reserved().unwrap().is_empty());
    assert!(a.store.indexes().unwrap().is_empty());
    // Released, the attachment may allocate again.
    a.allocate("c1", "eth0").unwrap();
}

fn release_skips_addresses_owned_by_others<S: Store>(store: S) {
    let mut a = Allocator::new(&v4_24(), store);
    // c1 was killed after writing its index naming .2 and before creating
    // the record; c2 then got .2.
    let c1 = Owner::new("c1", "eth0").unwrap();
    a.store.write_index(&c1, &[ip("10.244.0.2")]).unwrap();
    assert_eq!(
        addrs(&a.allocate("c2", "eth0").unwrap()),
        vec![ip("10.244.0.2")]
    );
    assert!(a.get("c1", "eth0").unwrap().is_empty());
    assert!(a.release("c1", "eth0").unwrap().is_empty());
    assert_eq!(a.get("c2", "eth0").unwrap(), vec![ip("10.244.0.2")]);
    assert!(a.store.read_index(&c1).unwrap().is_none());
}

fn a_killed_allocation_is_retried_cleanly<S: Store>(store: S) {
    let mut a = Allocator::new(&dual(), store);
    // Killed after creating the v4 record, before the v6 one.
    let c1 = Owner::new("c1", "eth0").unwrap();
    a.store
        .write_index(&c1, &[ip("10.244.0.50"), ip("fd00:244::50")])
        .unwrap();
    assert!(a.store.reserve(ip("10.244.0.50"), &c1).unwrap());
    let got = a.allocate("c1", "eth0").unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        !a.store.is_reserved(ip("10.244.0.50")).unwrap(),
        "the leftover is freed"
    );
    let mut held = a.get("c1", "eth0").unwrap();
    held.sort();
    assert_eq!(held, addrs(&got));
    assert_eq!(a.store.reserved().unwrap().len(), 2);
}

fn gc_keeps_valid_and_frees_the_rest<S: Store>(store: S) {
    let mut a = Allocator::new(&dual(), store);
    for c in ["keep", "drop1", "drop2"] {
        a.allocate(c, "eth0").unwrap();
    }
    // Records no index names: one of a gone owner, one of nobody readable.
    let ghost = Owner::new("ghost", "eth0").unwrap();
    assert!(a.store.reserve(ip("10.244.0.99"), &ghost).unwrap());
    // A record of a valid owner whose index is missing stays.
    let kept = Owner::new("keep", "eth1").unwrap();
    assert!(a.store.reserve(ip("10.244.0.98"), &kept).unwrap());

    let mut released = a.gc(&valid(&[("keep", "eth0"), ("keep", "eth1")])).unwrap();
    released.sort_by(|x, y| x.owner.cmp(&y.owner));
    let owners: Vec<String> = released
        .iter()
        .map(|r| r.owner.as_ref().unwrap().container_id.clone())
        .collect();
    assert_eq!(owners, ["drop1", "drop2", "ghost"]);
    assert_eq!(released[0].addresses.len(), 2);
    assert_eq!(released[2].addresses, vec![ip("10.244.0.99")]);
    let mut left = a.store.reserved().unwrap();
    left.sort();
    assert_eq!(
        left,
        vec![ip("10.244.0.2"), ip("10.244.0.98"), ip("fd00:244::2")]
    );
    assert_eq!(
        a.store.indexes().unwrap(),
        vec![Owner::new("keep", "eth0").unwrap()]
    );
    assert!(a
        .gc(&valid(&[("keep", "eth0"), ("keep", "eth1")]))
        .unwrap()
        .is_empty());
    // An empty valid list frees everything.
    assert_eq!(a.gc(&HashSet::new()).unwrap().len(), 2);
    assert!(a.store.reserved().unwrap().is_empty());
}

fn status_counts_per_set<S: Store>(store: S) {
    let mut a = Allocator::new(&dual(), store);
    for c in ["a", "b", "c"] {
        a.allocate(c, "eth0").unwrap();
    }
    let st = a.status().unwrap();
    assert!(st.writable.is_ok());
    assert_eq!(st.sets.len(), 2);
    assert_eq!((st.sets[0].used, st.sets[0].capacity), (3, 253));
    assert_eq!(
        (st.sets[1].used, st.sets[1].capacity),
        (3, (1u128 << 64) - 2)
    );
    assert_eq!(st.sets[1].label, "ranges[1]");
}

fn invalid_attachments_are_rejected<S: Store>(store: S) {
    let mut a = Allocator::new(&v4_24(), store);
    for (c, i) in [("../x", "eth0"), ("c1", "a/b"), ("", "eth0"), ("c1", "")] {
        let e = a.allocate(c, i).unwrap_err();
        assert_eq!(e.to_cni().code, codes::INVALID_ENV, "{c:?} {i:?}");
    }
    assert!(a.store.reserved().unwrap().is_empty());
}

fn without_ranges_releases_but_does_not_allocate<S: Store>(store: S) {
    let mut a = Allocator::new(&v4_24(), store);
    a.allocate("c1", "eth0").unwrap();
    let mut b = Allocator::without_ranges(a.into_store());
    assert_eq!(b.get("c1", "eth0").unwrap(), vec![ip("10.244.0.2")]);
    assert_eq!(
        b.allocate("c2", "eth0").unwrap_err().to_cni().code,
        codes::INVALID_CONFIG
    );
    assert_eq!(b.release("c1", "eth0").unwrap(), vec![ip("10.244.0.2")]);
}

/// 2,000 allocations in a /24 and in a /16, holding 100 at a time (a /24
/// cannot hold 2,000). If the cost grew with the pool, the /16 (256x the
/// addresses) would be far slower; the better of two runs absorbs noise.
fn pool_size_does_not_matter<S: Store>(make: impl Fn() -> S) {
    let run = |subnet: &str| {
        let mut a = Allocator::new(&cfg(json!([[{ "subnet": subnet }]])), make());
        // The second round starts after the first's leftovers in the store.
        a.gc(&HashSet::new()).unwrap();
        let start = Instant::now();
        for i in 0..2000 {
            a.allocate(&format!("c{i}"), "eth0").unwrap();
            if i >= 100 {
                a.release(&format!("c{}", i - 100), "eth0").unwrap();
            }
        }
        let took = start.elapsed();
        a.gc(&HashSet::new()).unwrap();
        took
    };
    let best = |subnet: &str| (0..2).map(|_| run(subnet)).min().unwrap();
    let small = best("10.1.0.0/24");
    let large = best("10.2.0.0/16");
    assert!(
        large <= small * 3 + Duration::from_millis(20),
        "/16 took {large:?}, /24 took {small:?}"
    );
}

/// A store that dies after `budget` writes: every later call fails, as if
/// the process had been SIGKILLed there, so not even the undo runs.
struct Killed<S> {
    inner: S,
    budget: std::cell::Cell<usize>,
}

impl<S: Store> Killed<S> {
    fn spend(&self) -> Result<(), IpamError> {
        match self.budget.get() {
            0 => Err(IpamError::io(
                "survive",
                "/killed",
                std::io::Error::other("killed"),
            )),
            n => {
                self.budget.set(n - 1);
                Ok(())
            }
        }
    }

    fn alive(&self) -> Result<(), IpamError> {
        if self.budget.get() == 0 {
            return self.spend();
        }
        Ok(())
    }
}

impl<S: Store> Store for Killed<S> {
    type Guard = S::Guard;
    fn lock(&self) -> Result<S::Guard, IpamError> {
        self.alive()?;
        self.inner.lock()
    }
    fn is_reserved(&self, ip: IpAddr) -> Result<bool, IpamError> {
        self.alive()?;
        self.inner.is_reserved(ip)
    }
    fn owner(&self, ip: IpAddr) -> Result<Option<Owner>, IpamError> {
        self.alive()?;
        self.inner.owner(ip)
    }
    fn reserve(&mut self, ip: IpAddr, owner: &Owner) -> Result<bool, IpamError> {
        self.spend()?;
        self.inner.reserve(ip, owner)
    }
    fn unreserve(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        self.spend()?;
        self.inner.unreserve(ip)
    }
    fn reserved(&self) -> Result<Vec<IpAddr>, IpamError> {
        self.alive()?;
        self.inner.reserved()
    }
    fn read_index(&self, owner: &Owner) -> Result<Option<Vec<IpAddr>>, IpamError> {
        self.alive()?;
        self.inner.read_index(owner)
    }
    fn write_index(&mut self, owner: &Owner, ips: &[IpAddr]) -> Result<(), IpamError> {
        self.spend()?;
        self.inner.write_index(owner, ips)
    }
    fn remove_index(&mut self, owner: &Owner) -> Result<(), IpamError> {
        self.spend()?;
        self.inner.remove_index(owner)
    }
    fn indexes(&self) -> Result<Vec<Owner>, IpamError> {
        self.alive()?;
        self.inner.indexes()
    }
    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        self.alive()?;
        self.inner.last_reserved(set)
    }
    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        self.spend()?;
        self.inner.set_last_reserved(set, ip)
    }
    fn sweep(&mut self) -> Result<(), IpamError> {
        self.spend()?;
        self.inner.sweep()
    }
    fn probe(&self) -> Result<(), IpamError> {
        self.alive()?;
        self.inner.probe()
    }
}

/// Every record is named by its owner's index, so DEL and GC can find it.
fn assert_every_record_indexed<S: Store>(store: &S) {
    for ip in store.reserved().unwrap() {
        let owner = store.owner(ip).unwrap().expect("records name their owner");
        let listed = store.read_index(&owner).unwrap().unwrap_or_default();
        assert!(listed.contains(&ip), "{ip} of {owner} is in no index");
    }
}

/// Kills an allocation after each of its writes in turn, and checks that
/// whatever it left is findable, never handed out twice, and cleaned up by
/// a retry, a DEL or a GC.
fn survives_being_killed_at_any_write<S: Store + Clone>(store: S) {
    let config = dual();
    let mut base = Allocator::new(&config, store);
    let c0: HashSet<IpAddr> = addrs(&base.allocate("c0", "eth0").unwrap())
        .into_iter()
        .collect();
    let pristine = base.into_store();
    // c1 allocates, then releases (a crash there is covered too).
    for budget in 0..=8 {
        let mut a = Allocator::new(
            &config,
            Killed {
                inner: pristine.clone(),
                budget: std::cell::Cell::new(budget),
            },
        );
        let done = a
            .allocate("c1", "eth0")
            .and_then(|_| a.release("c1", "eth0"));
        let store = a.into_store().inner;
        assert_every_record_indexed(&store);
        let mut a = Allocator::new(&config, store);
        let c2: HashSet<IpAddr> = addrs(&a.allocate("c2", "eth0").unwrap())
            .into_iter()
            .collect();
        assert!(c2.is_disjoint(&c0), "budget {budget}: c2 got c0's address");
        let c1: HashSet<IpAddr> = a.get("c1", "eth0").unwrap().into_iter().collect();
        assert!(c1.is_disjoint(&c2), "budget {budget}: c1 and c2 share");
        // A retried ADD after the crash works, or says it already has one.
        match a.allocate("c1", "eth0") {
            Ok(got) => assert_eq!(got.len(), 2),
            Err(e) => assert_eq!(e.to_cni().code, codes::ALREADY_ALLOCATED, "{budget}: {e}"),
        }
        a.release("c1", "eth0").unwrap();
        a.gc(&valid(&[("c0", "eth0"), ("c2", "eth0")])).unwrap();
        let mut left = a.store.reserved().unwrap();
        left.sort();
        let mut want: Vec<IpAddr> = c0.union(&c2).copied().collect();
        want.sort();
        assert_eq!(left, want, "budget {budget}");
        // Allocating writes 5 times (index, 2 records, 2 hints), releasing
        // 3 times (2 records, index): budget 8 is the first to finish.
        assert_eq!(done.is_ok(), budget == 8, "budget {budget}: {done:?}");
        // Undo this iteration's c2 so the next starts from `pristine` again
        // (the clone of a disk store shares its directory).
        a.release("c2", "eth0").unwrap();
    }
}

macro_rules! on_both_stores {
    ($($t:ident),* $(,)?) => {
        mod mem_store {
            $(#[test]
            fn $t() {
                super::$t(crate::store::MemStore::new());
            })*
        }
        mod disk_store {
            $(#[test]
            fn $t() {
                let d = tempfile::tempdir().unwrap();
                super::$t(crate::store::DiskStore::open(d.path(), "net").unwrap());
            })*
        }
    };
}

on_both_stores!(
    allocates_v4,
    allocates_v6,
    allocates_dual_stack,
    round_robin_skips_the_just_freed,
    round_robin_wraps_and_spans_ranges,
    gateway_is_never_allocated,
    duplicate_attachment_is_101,
    exhaustion_is_100_and_leaves_nothing,
    release_is_idempotent,
    release_skips_addresses_owned_by_others,
    a_killed_allocation_is_retried_cleanly,
    gc_keeps_valid_and_frees_the_rest,
    status_counts_per_set,
    invalid_attachments_are_rejected,
    without_ranges_releases_but_does_not_allocate,
    survives_being_killed_at_any_write,
);

#[test]
fn mem_store_pool_size_does_not_matter() {
    pool_size_does_not_matter(MemStore::new);
}

#[test]
fn disk_store_pool_size_does_not_matter() {
    // On tmpfs when there is one, as under the default /var/run dataDir:
    // creating inodes on a disk filesystem costs milliseconds on some VMs,
    // which would make this test slow and its timings noisy.
    let d = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    // Each run opens its own handle on one directory, as processes would.
    pool_size_does_not_matter(|| DiskStore::open(d.path(), "net").unwrap());
}

/// Entries of a network directory that are neither bookkeeping nor by-id.
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "lock" && n != "by-id" && !n.starts_with("last_reserved_ip."))
        .collect()
}

#[test]
fn disk_temp_files_are_ignored_and_swept_when_old() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Allocator::new(&v4_24(), DiskStore::open(d.path(), "net").unwrap());
    let net = d.path().join("net");
    // Debris of a writer killed before its link: the address is still free.
    let fresh = net.join(".tmp-10.244.0.2.123.0.456");
    let stale = net.join(".tmp-10.244.0.3.123.1.456");
    let stale_index = net.join("by-id/.tmp-c9:eth0.123.2.456");
    for p in [&fresh, &stale, &stale_index] {
        std::fs::write(p, "c9\neth0\n").unwrap();
    }
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    for p in [&stale, &stale_index] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    assert_eq!(
        addrs(&a.allocate("c1", "eth0").unwrap()),
        vec![ip("10.244.0.2")]
    );
    assert!(a.status().unwrap().sets[0].used == 1);
    assert!(a.gc(&valid(&[("c1", "eth0")])).unwrap().is_empty());
    assert!(
        fresh.exists(),
        "young temp files may belong to a live writer"
    );
    assert!(!stale.exists() && !stale_index.exists());
}

#[test]
fn disk_gc_removes_garbled_records() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Allocator::new(&v4_24(), DiskStore::open(d.path(), "net").unwrap());
    a.allocate("c1", "eth0").unwrap();
    std::fs::write(d.path().join("net/10.244.0.77"), "garbage").unwrap();
    // Garbled records still hold their address.
    assert_eq!(a.status().unwrap().sets[0].used, 2);
    let released = a.gc(&valid(&[("c1", "eth0")])).unwrap();
    assert_eq!(
        released,
        vec![Released {
            owner: None,
            addresses: vec![ip("10.244.0.77")]
        }]
    );
    assert_eq!(leftovers(&d.path().join("net")), ["10.244.0.2"]);
}

#[test]
fn disk_status_fails_when_the_store_is_unusable() {
    let d = tempfile::tempdir().unwrap();
    // A file where the network directory should be: root ignores mode bits,
    // so permissions cannot simulate a broken store.
    std::fs::write(d.path().join("net"), "").unwrap();
    let store = DiskStore::open_existing(d.path(), "net").unwrap().unwrap();
    let e = Allocator::new(&v4_24(), store).status().unwrap_err();
    let cni = e.to_cni();
    assert_eq!(cni.code, codes::IO_FAILURE);
    assert!(cni.msg.contains("net/lock"), "{cni}");
}

#[test]
fn disk_concurrent_allocations_are_distinct() {
    const THREADS: usize = 8;
    const EACH: usize = 50;
    let d = tempfile::tempdir().unwrap();
    let config = cfg(json!([[{"subnet": "10.244.0.0/22"}], [{"subnet": "fd00:244::/64"}]]));
    let spawn_all = |work: fn(&mut Allocator<DiskStore>, usize, usize) -> Vec<IpAddr>| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (config, path) = (&config, d.path());
                    s.spawn(move || {
                        // Its own store, as a separate plugin process has.
                        let store = DiskStore::open(path, "net").unwrap();
                        let mut a = Allocator::new(config, store);
                        (0..EACH)
                            .flat_map(|i| work(&mut a, t, i))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<Vec<IpAddr>>()
        })
    };
    let got = spawn_all(|a, t, i| addrs(&a.allocate(&format!("t{t}-{i}"), "eth0").unwrap()));
    assert_eq!(got.len(), THREADS * EACH * 2);
    let distinct: HashSet<IpAddr> = got.iter().copied().collect();
    assert_eq!(distinct.len(), got.len(), "an address was handed out twice");

    let freed = spawn_all(|a, t, i| a.release(&format!("t{t}-{i}"), "eth0").unwrap());
    assert_eq!(freed.len(), got.len());
    let net = d.path().join("net");
    assert!(leftovers(&net).is_empty(), "{:?}", leftovers(&net));
    assert_eq!(std::fs::read_dir(net.join("by-id")).unwrap().count(), 0);
}
