//! Service selection (`lb_select` in bpf/include/lb.h) run through
//! BPF_PROG_TEST_RUN: an XDP test program takes a `struct lb_req` as its
//! packet and writes the decision back, since the kernel cannot test-run
//! cgroup sock_addr programs. Maps are pinned in a private directory and
//! filled the way the daemon fills them.

mod common;

use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::Xdp;
use common::{root, PinDir};
use sluice_dataplane::load::{load_object, load_program, open_pinned};
use sluice_dataplane::maps::{self, *};
use sluice_dataplane::sys;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

const TCP: u8 = 6;
const UDP: u8 = 17;

struct Lb {
    _pins: PinDir,
    ebpf: aya::Ebpf,
    svc: HashMap<MapData, SvcKey, SvcValue>,
    slots: HashMap<MapData, LbSlotKey, u32>,
    /// svc_id -> its frontend, as written.
    frontends: std::collections::HashMap<u32, (SvcKey, SvcValue)>,
    backends: HashMap<MapData, u32, Backend>,
    members: HashMap<MapData, SvcBackendKey, u8>,
    tables: OwnedFd,
}

impl Lb {
    fn new(tag: &str) -> Self {
        let pins = PinDir::new(tag);
        let mut ebpf = load_object("test_lb", sluice_dataplane::TEST_LB, &pins.0, &maps::ALL)
            .unwrap_or_else(|e| panic!("{e}"));
        load_program::<Xdp>(&mut ebpf, "test_lb", "sluice_test_lb")
            .unwrap_or_else(|e| panic!("{e}"));
        let open = |m: &MapSpec| open_pinned(&pins.0, m).unwrap_or_else(|e| panic!("{e}"));
        Lb {
            svc: HashMap::try_from(open(&SVC)).unwrap(),
            slots: HashMap::try_from(open(&LB_SLOTS)).unwrap(),
            frontends: Default::default(),
            backends: HashMap::try_from(open(&BACKENDS)).unwrap(),
            members: HashMap::try_from(open(&SVC_BES)).unwrap(),
            tables: sys::obj_get(&pins.0.join(LB_TABLES.name)).unwrap(),
            ebpf,
            _pins: pins,
        }
    }

    fn frontend(&mut self, addr: &str, proto: u8, svc_id: u32, affinity: u32, flags: u32) {
        let v = SvcValue {
            svc_id,
            affinity_timeout: affinity,
            flags,
            count: 0,
            gen: 0,
        };
        let k = SvcKey::new(addr.parse().unwrap(), proto);
        self.svc.insert(k, v, 0).unwrap();
        self.frontends.insert(svc_id, (k, v));
    }

    fn backend(&mut self, id: u32, addr: &str, proto: u8) {
        self.backends
            .insert(id, Backend::new(addr.parse().unwrap(), proto), 0)
            .unwrap();
    }

    /// Replaces the backends of `svc_id` the way the daemon does: a new
    /// generation of slots and one update of the frontend (random), or a
    /// whole new table swapped into the outer map (Maglev).
    fn table(&mut self, svc_id: u32, ids: &[u32]) {
        let (k, mut v) = self.frontends[&svc_id];
        if v.flags & SVC_F_MAGLEV != 0 {
            let t = sys::lb_table(ids, "test_table").unwrap();
            use std::os::fd::AsRawFd;
            sys::map_update(
                self.tables.as_fd(),
                &svc_id.to_ne_bytes(),
                &(t.as_fd().as_raw_fd() as u32).to_ne_bytes(),
                0,
            )
            .unwrap();
        } else {
            let gen = v.gen.wrapping_add(1);
            for (i, id) in ids.iter().enumerate() {
                let key = LbSlotKey {
                    svc_id,
                    gen,
                    slot: i as u16,
                };
                self.slots.insert(key, *id, 0).unwrap();
            }
            v.gen = gen;
            v.count = ids.len() as u16;
            self.svc.insert(k, v, 0).unwrap();
            self.frontends.insert(svc_id, (k, v));
        }
        for id in ids {
            self.members
                .insert(
                    SvcBackendKey {
                        svc_id,
                        backend_id: *id,
                    },
                    1,
                    0,
                )
                .unwrap();
        }
    }

    fn run(&self, req: LbReq) -> LbReq {
        let prog: &Xdp = self
            .ebpf
            .program("sluice_test_lb")
            .unwrap()
            .try_into()
            .unwrap();
        // SAFETY: LbReq is plain old data.
        let bytes = unsafe {
            std::slice::from_raw_parts(&req as *const LbReq as *const u8, size_of::<LbReq>())
        };
        let mut out = vec![0u8; 256];
        let ret = sys::prog_test_run_out(prog.fd().unwrap().as_fd(), bytes, &mut out).unwrap();
        assert_eq!(ret, 2, "XDP_PASS");
        // SAFETY: the program wrote a whole LbReq back.
        unsafe { std::ptr::read_unaligned(out.as_ptr() as *const LbReq) }
    }

    /// `sluice_lbstat[i]`, summed over CPUs.
    fn stat(&self, i: u32) -> u64 {
        let m: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(open_pinned(&self._pins.0, &LBSTAT).unwrap()).unwrap();
        m.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// New connections frontend `svc_id` sent to backend `id`.
    fn conns(&self, svc_id: u32, id: u32) -> u64 {
        let m: PerCpuHashMap<_, SvcBackendKey, u64> =
            PerCpuHashMap::try_from(open_pinned(&self._pins.0, &CONNS).unwrap()).unwrap();
        let k = SvcBackendKey {
            svc_id,
            backend_id: id,
        };
        m.get(&k, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

fn req(addr: &str, proto: u8, rnd: u32) -> LbReq {
    let a: SocketAddr = addr.parse().unwrap();
    let (bytes, family) = addr_bytes(a.ip());
    LbReq {
        addr: bytes,
        port: a.port().to_be(),
        proto,
        family,
        rnd,
        hash: rnd.wrapping_mul(2654435761),
        netns_cookie: 42,
        now_ns: 1_000_000_000_000,
        ..Default::default()
    }
}

fn backend_of(r: &LbReq) -> String {
    r.be.socket_addr().unwrap().to_string()
}

#[test]
fn not_a_service_passes_untouched() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-pass");
    lb.frontend("10.96.0.10:80", TCP, 1, 0, 0);
    for r in [
        req("10.96.0.11:80", TCP, 0),
        req("10.96.0.10:81", TCP, 0),
        req("10.96.0.10:80", UDP, 0),
    ] {
        assert_eq!(lb.run(r).verdict, LB_PASS);
    }
}

#[test]
fn random_selection_spreads_over_the_table_and_counts() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-random");
    lb.frontend("10.96.0.10:80", TCP, 1, 0, 0);
    lb.backend(11, "10.244.0.5:8080", TCP);
    lb.backend(12, "10.244.0.6:8080", TCP);
    lb.table(1, &[11, 12]);
    let a = lb.run(req("10.96.0.10:80", TCP, 0));
    assert_eq!((a.verdict, a.svc_id, a.backend_id), (LB_XLATE, 1, 11));
    assert_eq!(backend_of(&a), "10.244.0.5:8080");
    let b = lb.run(req("10.96.0.10:80", TCP, 1));
    assert_eq!(backend_of(&b), "10.244.0.6:8080");
    let c = lb.run(req("10.96.0.10:80", TCP, 7));
    assert_eq!(c.backend_id, 12, "7 % 2 = 1: the second slot");
    assert_eq!(
        (lb.conns(1, 11), lb.conns(1, 12)),
        (1, 2),
        "new connections per backend"
    );
    // Another frontend over the same backend counts apart.
    lb.frontend("10.96.0.11:80", TCP, 2, 0, 0);
    lb.table(2, &[12]);
    lb.run(req("10.96.0.11:80", TCP, 0));
    assert_eq!((lb.conns(1, 12), lb.conns(2, 12)), (2, 1));
}

#[test]
fn v6_and_udp_frontends() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-v6");
    lb.frontend("[fd00:96::10]:53", UDP, 3, 0, 0);
    lb.backend(31, "[fd00:244::5]:5353", UDP);
    lb.table(3, &[31]);
    let r = lb.run(req("[fd00:96::10]:53", UDP, 5));
    assert_eq!(r.verdict, LB_XLATE);
    assert_eq!(backend_of(&r), "[fd00:244::5]:5353");
    assert_eq!(lb.run(req("[fd00:96::10]:53", TCP, 5)).verdict, LB_PASS);
}

#[test]
fn a_service_without_backends_refuses() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-refuse");
    lb.frontend("10.96.0.20:80", TCP, 2, 0, 0);
    assert_eq!(
        lb.run(req("10.96.0.20:80", TCP, 0)).verdict,
        LB_REFUSE,
        "no table yet"
    );
    lb.table(2, &[]);
    assert_eq!(
        lb.run(req("10.96.0.20:80", TCP, 0)).verdict,
        LB_REFUSE,
        "empty table"
    );
    lb.frontend("10.96.0.21:80", TCP, 7, 0, SVC_F_MAGLEV);
    assert_eq!(
        lb.run(req("10.96.0.21:80", TCP, 0)).verdict,
        LB_REFUSE,
        "Maglev, no table"
    );
    lb.table(7, &[]);
    assert_eq!(
        lb.run(req("10.96.0.21:80", TCP, 0)).verdict,
        LB_REFUSE,
        "Maglev, empty table"
    );
    assert_eq!(
        (lb.stat(1), lb.stat(2)),
        (4, 0),
        "refused for want of a backend"
    );
    lb.table(2, &[99]);
    assert_eq!(
        lb.run(req("10.96.0.20:80", TCP, 0)).verdict,
        LB_REFUSE,
        "unknown backend id"
    );
    assert_eq!(lb.stat(2), 1, "an inconsistency is counted apart");
    assert_eq!(lb.stat(0), 0, "nothing translated");
}

#[test]
fn maglev_services_select_by_hash() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-maglev");
    lb.frontend("10.96.0.30:80", TCP, 4, 0, SVC_F_MAGLEV);
    lb.backend(41, "10.244.0.41:80", TCP);
    lb.backend(42, "10.244.0.42:80", TCP);
    // A 7-slot table: the hash picks the slot, the random value is ignored.
    lb.table(4, &[41, 42, 41, 42, 42, 41, 42]);
    let mut r = req("10.96.0.30:80", TCP, 0);
    for h in 0..7u32 {
        r.hash = h;
        for rnd in [0, 1, 12345] {
            r.rnd = rnd;
            let out = lb.run(r);
            assert_eq!(
                out.backend_id,
                [41, 42, 41, 42, 42, 41, 42][h as usize],
                "hash {h}"
            );
        }
    }
}

#[test]
fn affinity_holds_per_pod_until_timeout_or_backend_leaves() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-affinity");
    lb.frontend("10.96.0.40:80", TCP, 5, 30, 0);
    lb.backend(51, "10.244.0.51:80", TCP);
    lb.backend(52, "10.244.0.52:80", TCP);
    lb.table(5, &[51, 52]);
    let mut r = req("10.96.0.40:80", TCP, 0);
    assert_eq!(lb.run(r).backend_id, 51);
    r.rnd = 1;
    r.now_ns += 10_000_000_000;
    assert_eq!(lb.run(r).backend_id, 51, "sticks within the timeout");
    let mut other_pod = r;
    other_pod.netns_cookie = 43;
    assert_eq!(lb.run(other_pod).backend_id, 52, "affinity is per pod");
    r.now_ns += 29_000_000_000;
    assert_eq!(lb.run(r).backend_id, 51, "each use renews it");
    r.now_ns += 31_000_000_000;
    assert_eq!(lb.run(r).backend_id, 52, "expired after 30 s idle");
    // The backend it sticks to leaves the table: the next connect re-picks.
    r.rnd = 0;
    r.now_ns += 1_000_000_000;
    lb.members
        .remove(&SvcBackendKey {
            svc_id: 5,
            backend_id: 52,
        })
        .unwrap();
    lb.table(5, &[51]);
    assert_eq!(
        lb.run(r).backend_id,
        51,
        "not sticky to a backend that left"
    );
}

/// A connect that read the clock just before another connect of the same
/// pod renewed the entry sees a last use later than its own "now". That
/// is a live entry, not an expired one: it must stick, not re-pick (the
/// unsigned `now - last_used` made it look 584 years old).
#[test]
fn affinity_renewed_after_now_was_read_still_holds() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-aff-race");
    lb.frontend("10.96.0.41:80", TCP, 15, 30, 0);
    lb.backend(61, "10.244.0.61:80", TCP);
    lb.backend(62, "10.244.0.62:80", TCP);
    lb.table(15, &[61, 62]);
    let aff: HashMap<MapData, AffinityKey, AffinityValue> =
        HashMap::try_from(open_pinned(&lb._pins.0, &AFFINITY).unwrap()).unwrap();
    let mut r = req("10.96.0.41:80", TCP, 0);
    let key = AffinityKey {
        netns_cookie: r.netns_cookie,
        svc_id: 15,
        pad: 0,
    };
    // Renewed 3 ms after this connect's clock read, to backend 62.
    let renewed = AffinityValue::new(62, r.now_ns / 1_000_000 + 3).unwrap();
    let mut aff = aff;
    aff.insert(key, renewed, 0).unwrap();
    r.rnd = 0; // a fresh pick would be 61
    assert_eq!(lb.run(r).backend_id, 62, "a renewal newer than now holds");
    assert_eq!(aff.get(&key, 0).unwrap(), renewed, "not renewed backwards");
    // Exactly at last use + timeout it has expired.
    r.now_ns = (renewed.last_used_ms() + 30_000) * 1_000_000;
    assert_eq!(lb.run(r).backend_id, 61, "expired at last use + timeout");
    let now = aff.get(&key, 0).unwrap();
    assert_eq!(
        (now.backend_id(), now.last_used_ms()),
        (61, r.now_ns / 1_000_000)
    );
}

#[test]
fn a_new_generation_takes_effect_whole() {
    if !root() {
        return;
    }
    let mut lb = Lb::new("lb-swap");
    lb.frontend("10.96.0.50:80", TCP, 6, 0, 0);
    for i in 1..=4 {
        lb.backend(60 + i, &format!("10.244.0.{}:80", 60 + i), TCP);
    }
    lb.table(6, &[61, 62]);
    lb.table(6, &[63, 64]);
    // The old generation's slots are still there (the daemon deletes them
    // later), yet only the new one is read.
    for rnd in 0..8 {
        let id = lb.run(req("10.96.0.50:80", TCP, rnd)).backend_id;
        assert!(id == 63 || id == 64, "only the new generation: {id}");
    }
    // A shorter generation: the slot index wraps on its count.
    lb.table(6, &[62]);
    for rnd in 0..4 {
        assert_eq!(lb.run(req("10.96.0.50:80", TCP, rnd)).backend_id, 62);
    }
}
