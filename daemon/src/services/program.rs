//! Writes a [`Translation`] into the service maps, changing only what
//! differs from what is programmed.
//!
//! Ordering keeps every connect consistent:
//! - a new frontend becomes visible (its `sluice_svc` entry) only after its
//!   backends and its whole selection table are in place;
//! - a changed frontend gets a new table, built aside and swapped in with
//!   one update of the outer map; backends joining are members before the
//!   swap, backends leaving stop being members after it;
//! - a removed frontend disappears from `sluice_svc` first, then its table,
//!   members, reverse translations and affinities.
//!
//! After a restart the maps are adopted, not flushed: frontends keep their
//! svc_ids and backends their ids, and entries no translation explains are
//! removed only by the first [`Programmer::apply`] (made once the source has
//! read everything).

use super::model::{Frontend, FrontendKey, Protocol, Selection};
use super::translate::Translation;
use crate::maglev;
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use serde::{Deserialize, Serialize};
use sluice_dataplane::load::{open_pinned, LoadError};
use sluice_dataplane::maps::{
    self, Backend, LbSlotKey, SvcBackendKey, SvcKey, SvcValue, SVC_F_MAGLEV,
};
use sluice_dataplane::sys;
use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("frontend {frontend} has {backends} eligible backends; random selection holds at most 65535 per frontend (use Maglev or split the service)")]
    TooManyBackends {
        frontend: FrontendKey,
        backends: usize,
    },
    #[error(transparent)]
    Open(#[from] LoadError),
    #[error("service map {map}: cannot {op}: {detail}")]
    Map {
        map: &'static str,
        op: &'static str,
        detail: String,
    },
    #[error("service {service} ({frontend}): {source}")]
    Maglev {
        service: String,
        frontend: FrontendKey,
        source: maglev::MaglevError,
    },
}

fn merr(map: &'static str, op: &'static str) -> impl Fn(String) -> ProgramError {
    move |detail| ProgramError::Map { map, op, detail }
}

/// What is programmed for one frontend.
#[derive(Debug, Clone)]
struct Programmed {
    frontend: Option<Frontend>,
    svc_id: u32,
    value: SvcValue,
    /// The table as written (backend ids, in slot order).
    table: Vec<u32>,
    members: BTreeSet<u32>,
}

/// What one apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Frontends that could not be programmed, with the reason; the rest
    /// were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Frontends this pass would have removed but held back (see
    /// [`RemovalGuard`]); they stay programmed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_removals: usize,
    /// Backends that left a UDP frontend's table (svc_id, backend id):
    /// connected UDP sockets still pointing at them are to be ended.
    #[serde(skip)]
    pub udp_left: Vec<(u32, u32)>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// More frontends than this may always go in one pass (within the share).
pub const REMOVAL_FLOOR: usize = 4;

/// When a pass's removals are held back: a source that looks empty never
/// deletes what is programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovalGuard {
    /// More than this share of the programmed frontends (and more than
    /// [`REMOVAL_FLOOR`]) at once is held; so is removing every one.
    pub max_percent: u8,
    /// The operator let the held removal through (for this pass).
    pub allow: bool,
}

impl RemovalGuard {
    /// Whether removing `gone` of `programmed` frontends, leaving
    /// `remaining`, is held back.
    pub fn holds(&self, gone: usize, programmed: usize, remaining: usize) -> bool {
        if self.allow || gone == 0 || self.max_percent >= 100 {
            return false;
        }
        let all = remaining == 0;
        let share = gone > REMOVAL_FLOOR && gone * 100 > self.max_percent as usize * programmed;
        all || share
    }
}

impl Default for RemovalGuard {
    fn default() -> Self {
        RemovalGuard {
            max_percent: 100,
            allow: false,
        }
    }
}

/// Maglev settings shared by every node of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevConfig {
    pub table_size: u32,
    pub seed: u64,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            table_size: maglev::DEFAULT_TABLE_SIZE,
            seed: maglev::DEFAULT_SEED,
        }
    }
}

/// Selection state and backends replaced at `at`, deleted a second later.
#[derive(Debug)]
struct Retired {
    at: std::time::Instant,
    slots: Vec<LbSlotKey>,
    table: Option<u32>,
    backends: Vec<u32>,
    /// Connection counters of backends that left a frontend's table (a
    /// connect that read the old table may still count one).
    counters: Vec<SvcBackendKey>,
}

pub struct Programmer {
    svc: HashMap<MapData, SvcKey, SvcValue>,
    backends: HashMap<MapData, u32, Backend>,
    members: HashMap<MapData, SvcBackendKey, u8>,
    /// New connections per (frontend's svc_id, backend id).
    conns: PerCpuHashMap<MapData, SvcBackendKey, u64>,

    tables: OwnedFd,
    slots: HashMap<MapData, LbSlotKey, u32>,
    /// Replaced selection state waiting to be deleted: when, which slots,
    /// which Maglev table.
    retired: Vec<Retired>,
    maglev: MaglevConfig,
    current: BTreeMap<FrontendKey, Programmed>,
    /// Who holds each frontend, shared with the translation (cloned only
    /// when written while a translation still reads it).
    owners: std::sync::Arc<BTreeMap<FrontendKey, super::model::ServiceRef>>,
    /// The frontends of each service (the inverse of `owners`).
    by_service: StdHashMap<super::model::ServiceRef, BTreeSet<FrontendKey>>,
    backend_ids: StdHashMap<(SocketAddr, Protocol), u32>,
    backend_addrs: StdHashMap<u32, (SocketAddr, Protocol)>,
    /// How many frontends' tables hold each backend.
    backend_refs: StdHashMap<u32, u32>,
    next_backend_id: u32,
    next_svc_id: u32,
}

impl std::fmt::Debug for Programmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programmer")
            .field("frontends", &self.current.len())
            .field("backends", &self.backend_ids.len())
            .finish_non_exhaustive()
    }
}

fn proto_of(n: u8) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        _ => None,
    }
}

impl Programmer {
    /// Opens the pinned service maps (the daemon has loaded the objects, so
    /// they exist) and adopts what they hold.
    pub fn open(maps_dir: &Path, maglev: MaglevConfig) -> Result<Self, ProgramError> {
        let open = |m: &maps::MapSpec| open_pinned(maps_dir, m);
        let typed = |name: &'static str| merr(name, "open");
        let svc: HashMap<_, SvcKey, SvcValue> = HashMap::try_from(open(&maps::SVC)?)
            .map_err(|e| typed(maps::SVC.name)(e.to_string()))?;
        let backends: HashMap<_, u32, Backend> = HashMap::try_from(open(&maps::BACKENDS)?)
            .map_err(|e| typed(maps::BACKENDS.name)(e.to_string()))?;
        let members: HashMap<_, SvcBackendKey, u8> = HashMap::try_from(open(&maps::SVC_BES)?)
            .map_err(|e| typed(maps::SVC_BES.name)(e.to_string()))?;
        let conns = PerCpuHashMap::try_from(open(&maps::CONNS)?)
            .map_err(|e| typed(maps::CONNS.name)(e.to_string()))?;
        let slots: HashMap<_, LbSlotKey, u32> = HashMap::try_from(open(&maps::LB_SLOTS)?)
            .map_err(|e| typed(maps::LB_SLOTS.name)(e.to_string()))?;
        let tables = sys::obj_get(&maps_dir.join(maps::LB_TABLES.name))
            .map_err(|e| typed(maps::LB_TABLES.name)(e.to_string()))?;

        let mut current = BTreeMap::new();
        let mut next_svc_id = 1;
        for (k, v) in svc.iter().filter_map(Result::ok) {
            let (Some(ip), Some(protocol)) = (maps::addr_from(k.addr, k.family), proto_of(k.proto))
            else {
                continue;
            };
            let key = FrontendKey {
                addr: SocketAddr::new(ip, u16::from_be(k.port)),
                protocol,
            };
            next_svc_id = next_svc_id.max(v.svc_id + 1);
            current.insert(
                key,
                Programmed {
                    frontend: None,
                    svc_id: v.svc_id,
                    value: v,
                    table: Vec::new(),
                    members: BTreeSet::new(),
                },
            );
        }
        let mut backend_ids = StdHashMap::new();
        let mut next_backend_id = 1;
        for (id, b) in backends.iter().filter_map(Result::ok) {
            next_backend_id = next_backend_id.max(id + 1);
            if let (Some(addr), Some(p)) = (b.socket_addr(), proto_of(b.proto)) {
                backend_ids.insert((addr, p), id);
            }
        }
        let by_svc_id: StdHashMap<u32, FrontendKey> =
            current.iter().map(|(k, p)| (p.svc_id, *k)).collect();
        let mut backend_refs: StdHashMap<u32, u32> = StdHashMap::new();
        for (k, _) in members.iter().filter_map(Result::ok) {
            if let Some(p) = by_svc_id.get(&k.svc_id).and_then(|f| current.get_mut(f)) {
                if p.members.insert(k.backend_id) {
                    *backend_refs.entry(k.backend_id).or_default() += 1;
                }
            }
        }
        let backend_addrs = backend_ids.iter().map(|(k, id)| (*id, *k)).collect();
        Ok(Programmer {
            svc,
            backends,
            members,
            conns,
            tables,
            slots,
            retired: Vec::new(),
            maglev,
            current,
            owners: Default::default(),
            by_service: StdHashMap::new(),
            backend_ids,
            backend_addrs,
            backend_refs,
            next_backend_id,
            next_svc_id,
        })
    }

    pub fn frontends(&self) -> usize {
        self.current.len()
    }

    /// Who holds each programmed frontend (the translation's conflict rule
    /// keeps it with its holder).
    pub fn owners(&self) -> std::sync::Arc<BTreeMap<FrontendKey, super::model::ServiceRef>> {
        self.owners.clone()
    }

    /// Programs `t`, changing only what differs.
    pub fn apply(&mut self, t: &Translation) -> Result<ApplyReport, ProgramError> {
        self.apply_scoped(t, None, RemovalGuard::default())
    }

    /// Programs `t` as the whole truth about the services in `scope` (all
    /// services if `None`): frontends of other services are left alone.
    pub fn apply_scoped(
        &mut self,
        t: &Translation,
        scope: Option<&BTreeSet<super::model::ServiceRef>>,
        guard: RemovalGuard,
    ) -> Result<ApplyReport, ProgramError> {
        self.collect();
        let programmed = self.current.len();
        let mut rep = ApplyReport::default();
        // Backends that left some table: freed below if no table holds them.
        let mut released: Vec<u32> = Vec::new();
        let mut failed = Vec::new();
        for (key, f) in &t.frontends {
            // One frontend's failure (a Maglev table that cannot be built, a
            // full map) must not stop the others or the removals below.
            if let Err(e) = self.apply_one(key, f, &mut rep, &mut released) {
                failed.push(format!("{} ({key}): {e}", f.service));
            }
        }
        rep.failed = failed;

        let mut gone: Vec<FrontendKey> = match scope {
            None => self
                .current
                .keys()
                .filter(|k| !t.frontends.contains_key(k))
                .copied()
                .collect(),
            // Only the scope's frontends can go: found through the index.
            Some(s) => s
                .iter()
                .filter_map(|r| self.by_service.get(r))
                .flatten()
                .filter(|k| !t.frontends.contains_key(k))
                .copied()
                .collect(),
        };
        if guard.holds(gone.len(), programmed, self.current.len() - gone.len()) {
            rep.held_removals = gone.len();
            gone.clear();
        }
        for key in gone {
            let p = self.current.remove(&key).expect("listed above");
            let _ = self
                .svc
                .remove(&SvcKey::new(key.addr, key.protocol.number()));
            // Its slots (or Maglev table) go a second later, like any
            // replaced selection state.
            let was_maglev = p.value.flags & SVC_F_MAGLEV != 0;
            self.retire(&p, !was_maglev);
            let mut counters = Vec::new();
            for id in &p.members {
                let k = SvcBackendKey {
                    svc_id: p.svc_id,
                    backend_id: *id,
                };
                let _ = self.members.remove(&k);
                counters.push(k);
                released.push(*id);
                if key.protocol == Protocol::Udp {
                    rep.udp_left.push((p.svc_id, *id));
                }
            }
            self.retire_counters(counters);
            if let Some(owner) = std::sync::Arc::make_mut(&mut self.owners).remove(&key) {
                if let Some(set) = self.by_service.get_mut(&owner) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.by_service.remove(&owner);
                    }
                }
            }
            rep.removed += 1;
        }
        rep.backends_removed = self.release_unused_backends(released, scope.is_none());
        Ok(rep)
    }

    /// Programs one frontend (see the module doc for the order).
    fn apply_one(
        &mut self,
        key: &FrontendKey,
        f: &Frontend,
        rep: &mut ApplyReport,
        released: &mut Vec<u32>,
    ) -> Result<(), ProgramError> {
        let prev = self.current.get(key).cloned();
        let eligible = f.eligible();
        let mut ids = Vec::with_capacity(eligible.len());
        for addr in &eligible {
            let (id, new) = self.backend_id(*addr, key.protocol)?;
            rep.backends_added += usize::from(new);
            ids.push(id);
        }
        if f.selection == Selection::Random && ids.len() > u16::MAX as usize {
            return Err(ProgramError::TooManyBackends {
                frontend: *key,
                backends: ids.len(),
            });
        }
        let table = match f.selection {
            Selection::Random => ids.clone(),
            Selection::Maglev => self.maglev_table(f, &eligible, &ids)?,
        };
        let svc_id = match &prev {
            Some(p) => p.svc_id,
            None => {
                let id = self.next_svc_id;
                self.next_svc_id += 1;
                id
            }
        };
        let maglev = f.selection == Selection::Maglev;
        let members: BTreeSet<u32> = ids.iter().copied().collect();
        let same_table = prev
            .as_ref()
            .is_some_and(|p| p.table == table && p.frontend.is_some());
        // Random selection: a changed table is a new generation of
        // slots; an unchanged one keeps its generation.
        let (count, gen) = match (&prev, maglev, same_table) {
            // Generations only move forward, also across a switch to Maglev
            // and back, so a retired generation is never live again.
            (_, true, _) => (0, prev.as_ref().map_or(0, |p| p.value.gen)),
            (Some(p), false, true) => (p.value.count, p.value.gen),
            (Some(p), false, false) => (table.len() as u16, p.value.gen.wrapping_add(1)),
            (None, false, _) => (table.len() as u16, 1),
        };
        let value = SvcValue {
            svc_id,
            affinity_timeout: f.affinity_timeout.unwrap_or(0),
            flags: if maglev { SVC_F_MAGLEV } else { 0 },
            count,
            gen,
        };
        let same_value = prev.as_ref().is_some_and(|p| p.value == value);
        if same_table && same_value {
            self.set_owner(key, &f.service);
            if let Some(p) = self.current.get_mut(key) {
                p.frontend = Some(f.clone());
            }
            rep.unchanged += 1;
            return Ok(());
        }
        let old_members = prev.as_ref().map(|p| p.members.clone()).unwrap_or_default();
        if !same_table {
            for id in members.difference(&old_members) {
                self.members
                    .insert(
                        SvcBackendKey {
                            svc_id,
                            backend_id: *id,
                        },
                        1,
                        0,
                    )
                    .map_err(|e| merr(maps::SVC_BES.name, "insert")(e.to_string()))?;
            }
            if maglev {
                self.swap_table(svc_id, &table)?;
            } else {
                self.write_slots(svc_id, gen, &table)?;
            }
        }
        if !same_value {
            self.svc
                .insert(SvcKey::new(key.addr, key.protocol.number()), value, 0)
                .map_err(|e| merr(maps::SVC.name, "insert")(e.to_string()))?;
        }
        // Only now is the old state unreachable for new connects.
        if !same_table {
            for id in members.difference(&old_members) {
                *self.backend_refs.entry(*id).or_default() += 1;
            }
            let mut counters = Vec::new();
            for id in old_members.difference(&members) {
                let k = SvcBackendKey {
                    svc_id,
                    backend_id: *id,
                };
                let _ = self.members.remove(&k);
                counters.push(k);
                released.push(*id);
                if key.protocol == Protocol::Udp {
                    rep.udp_left.push((svc_id, *id));
                }
            }
            self.retire_counters(counters);
        }
        self.set_owner(key, &f.service);
        // Only a replaced selection state is retired: with the table
        // unchanged (an affinity change) the live slots stay.
        if let Some(p) = prev.as_ref().filter(|_| !same_table) {
            self.retire(p, maglev);
        }
        if prev.is_some() {
            rep.changed += 1;
        } else {
            rep.added += 1;
        }
        self.current.insert(
            *key,
            Programmed {
                frontend: Some(f.clone()),
                svc_id,
                value,
                table,
                members,
            },
        );
        Ok(())
    }

    /// Records that `service` holds `key` (and no longer its previous owner).
    fn set_owner(&mut self, key: &FrontendKey, service: &super::model::ServiceRef) {
        let before = std::sync::Arc::make_mut(&mut self.owners).insert(*key, service.clone());
        if let Some(old) = before.filter(|o| o != service) {
            if let Some(set) = self.by_service.get_mut(&old) {
                set.remove(key);
            }
        }
        self.by_service
            .entry(service.clone())
            .or_default()
            .insert(*key);
    }

    /// The id of a backend, allocating (and writing) it if it is new.
    fn backend_id(&mut self, addr: SocketAddr, p: Protocol) -> Result<(u32, bool), ProgramError> {
        if let Some(id) = self.backend_ids.get(&(addr, p)) {
            return Ok((*id, false));
        }
        let id = self.next_backend_id;
        if id > maps::MAX_BACKEND_ID {
            return Err(ProgramError::Map {
                map: maps::BACKENDS.name,
                op: "allocate a backend id",
                detail: format!("every id up to {} is taken", maps::MAX_BACKEND_ID),
            });
        }
        self.next_backend_id += 1;
        self.backends
            .insert(id, Backend::new(addr, p.number()), 0)
            .map_err(|e| merr(maps::BACKENDS.name, "insert")(e.to_string()))?;
        self.backend_ids.insert((addr, p), id);
        self.backend_addrs.insert(id, (addr, p));
        Ok((id, true))
    }

    fn maglev_table(
        &self,
        f: &Frontend,
        eligible: &[SocketAddr],
        ids: &[u32],
    ) -> Result<Vec<u32>, ProgramError> {
        let keys: Vec<String> = eligible
            .iter()
            .map(|a| format!("{a}/{:?}", f.key.protocol))
            .collect();
        let bes: Vec<maglev::MaglevBackend<'_>> = keys
            .iter()
            .map(|k| maglev::MaglevBackend { key: k, weight: 1 })
            .collect();
        let t =
            maglev::table(&bes, self.maglev.table_size, self.maglev.seed).map_err(|source| {
                ProgramError::Maglev {
                    service: f.service.to_string(),
                    frontend: f.key,
                    source,
                }
            })?;
        Ok(t.into_iter().map(|i| ids[i as usize]).collect())
    }

    /// Writes one generation of random-selection slots.
    fn write_slots(&mut self, svc_id: u32, gen: u16, ids: &[u32]) -> Result<(), ProgramError> {
        for (i, id) in ids.iter().enumerate() {
            let k = LbSlotKey {
                svc_id,
                gen,
                slot: i as u16,
            };
            self.slots
                .insert(k, *id, 0)
                .map_err(|e| merr(maps::LB_SLOTS.name, "insert")(e.to_string()))?;
        }
        Ok(())
    }

    /// Queues the selection state `p` used, now replaced, for deletion once
    /// no connect can still be reading it (see [`Programmer::collect`]).
    fn retire(&mut self, p: &Programmed, now_maglev: bool) {
        let was_maglev = p.value.flags & SVC_F_MAGLEV != 0;
        let mut keys = Vec::new();
        if !was_maglev && (p.value.count > 0 || p.value.gen > 0) {
            // An adopted frontend's old count is what the map said.
            let n = p.value.count;
            keys.extend((0..n).map(|slot| LbSlotKey {
                svc_id: p.svc_id,
                gen: p.value.gen,
                slot,
            }));
        }
        let drop_table = was_maglev && !now_maglev;
        if !keys.is_empty() || drop_table {
            self.retired.push(Retired {
                at: std::time::Instant::now(),
                slots: keys,
                table: drop_table.then_some(p.svc_id),
                backends: Vec::new(),
                counters: Vec::new(),
            });
        }
    }

    /// Queues connection counters of backends that left a frontend for
    /// deletion with the rest of the replaced state.
    fn retire_counters(&mut self, counters: Vec<SvcBackendKey>) {
        if !counters.is_empty() {
            self.retired.push(Retired {
                at: std::time::Instant::now(),
                slots: Vec::new(),
                table: None,
                backends: Vec::new(),
                counters,
            });
        }
    }

    /// Deletes retired slots and tables older than a second: a connect
    /// reads its frontend and then its slots within microseconds, so by
    /// then nothing can still use them.
    pub fn collect(&mut self) {
        let now = std::time::Instant::now();
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| now.duration_since(r.at) >= std::time::Duration::from_secs(1));
        self.retired = keep;
        if old.is_empty() {
            return;
        }
        // What is live now must survive, whatever was queued before it.
        let live_members: std::collections::HashSet<(u32, u32)> = self
            .current
            .values()
            .flat_map(|p| p.members.iter().map(move |b| (p.svc_id, *b)))
            .collect();
        let live: StdHashMap<u32, (u16, bool)> = self
            .current
            .values()
            .map(|p| (p.svc_id, (p.value.gen, p.value.flags & SVC_F_MAGLEV != 0)))
            .collect();
        for Retired {
            slots: keys,
            table,
            backends,
            counters,
            ..
        } in old
        {
            // Backend ids are never reused, so these are nobody's now.
            for id in backends {
                let _ = self.backends.remove(&id);
            }
            for k in counters {
                // Back in the frontend's table since: its count goes on.
                let back = live_members.contains(&(k.svc_id, k.backend_id));
                if !back {
                    let _ = self.conns.remove(&k);
                }
            }
            for k in keys {
                let is_live = live
                    .get(&k.svc_id)
                    .is_some_and(|(gen, maglev)| !maglev && *gen == k.gen);
                if !is_live {
                    let _ = self.slots.remove(&k);
                }
            }
            if let Some(svc_id) = table {
                if !live.get(&svc_id).is_some_and(|(_, maglev)| *maglev) {
                    let _ = sys::map_delete(self.tables.as_fd(), &svc_id.to_ne_bytes());
                }
            }
        }
    }

    /// Builds the table aside and swaps it in with one outer-map update.
    fn swap_table(&mut self, svc_id: u32, table: &[u32]) -> Result<(), ProgramError> {
        let inner = sys::lb_table(table, "sluice_lb_tbl")
            .map_err(|e| merr("selection table", "create")(e.to_string()))?;
        sys::map_update(
            self.tables.as_fd(),
            &svc_id.to_ne_bytes(),
            &(inner.as_raw_fd() as u32).to_ne_bytes(),
            0,
        )
        .map_err(|e| merr(maps::LB_TABLES.name, "swap in a table")(e.to_string()))
    }

    /// The svc_ids programmed now: affinity entries of any other are of a
    /// frontend that is gone (svc_ids are never reused).
    pub fn live_svc_ids(&self) -> std::collections::HashSet<u32> {
        self.current.values().map(|p| p.svc_id).collect()
    }

    /// Drops one reference of each `released` backend and removes those no
    /// table holds any more; `sweep` (a full apply) also removes every
    /// other unreferenced one (adopted leftovers). Returns how many went.
    fn release_unused_backends(&mut self, released: Vec<u32>, sweep: bool) -> usize {
        let mut gone = Vec::new();
        for id in released {
            let r = self.backend_refs.entry(id).or_default();
            *r = r.saturating_sub(1);
            if *r == 0 {
                gone.push(id);
            }
        }
        if sweep {
            gone.extend(
                self.backend_addrs
                    .keys()
                    .filter(|id| self.backend_refs.get(id).copied().unwrap_or(0) == 0)
                    .copied(),
            );
        }
        gone.sort_unstable();
        gone.dedup();
        let mut n = 0;
        let mut retired = Vec::new();
        for id in gone {
            if self.backend_refs.get(&id).copied().unwrap_or(0) > 0 {
                continue;
            }
            self.backend_refs.remove(&id);
            if let Some(k) = self.backend_addrs.remove(&id) {
                self.backend_ids.remove(&k);
                retired.push(id);
                n += 1;
            }
        }
        // The map entries go a second later: a connect that read the old
        // slots a moment ago still finds its backend.
        if !retired.is_empty() {
            self.retired.push(Retired {
                at: std::time::Instant::now(),
                slots: Vec::new(),
                table: None,
                backends: retired,
                counters: Vec::new(),
            });
        }
        n
    }

    /// New connections frontend `svc_id` sent to a backend (summed over
    /// CPUs).
    pub fn connections(&self, svc_id: u32, addr: SocketAddr, p: Protocol) -> Option<u64> {
        let id = self.backend_ids.get(&(addr, p))?;
        let k = SvcBackendKey {
            svc_id,
            backend_id: *id,
        };
        Some(self.conns.get(&k, 0).map(|v| v.iter().sum()).unwrap_or(0))
    }

    /// Every programmed frontend, with what the datapath counted.
    pub fn views(&self) -> Vec<ServiceView> {
        self.current
            .iter()
            .map(|(k, p)| {
                let f = p.frontend.as_ref();
                ServiceView {
                    frontend: k.to_string(),
                    service: f.map(|f| f.service.to_string()).unwrap_or_default(),
                    port_name: f.map(|f| f.port_name.clone()).unwrap_or_default(),
                    svc_id: p.svc_id,
                    selection: f.map(|f| f.selection),
                    affinity_timeout: f.and_then(|f| f.affinity_timeout),
                    internal_local: f.is_some_and(|f| f.internal_local),
                    table_size: p.table.len(),
                    backends: f
                        .map(|f| {
                            f.backends
                                .iter()
                                .map(|b| BackendView {
                                    addr: b.addr,
                                    state: b.state,
                                    local: b.local,
                                    excluded_by_policy: b.excluded_by_policy,
                                    in_table: self
                                        .backend_ids
                                        .get(&(b.addr, k.protocol))
                                        .is_some_and(|id| p.members.contains(id)),
                                    connections: self
                                        .connections(p.svc_id, b.addr, k.protocol)
                                        .unwrap_or(0),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub addr: SocketAddr,
    pub state: super::model::BackendState,
    pub local: bool,
    pub excluded_by_policy: bool,
    /// Gets new connections now.
    pub in_table: bool,
    pub connections: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub frontend: String,
    /// Empty for a frontend adopted from the maps at start and not yet
    /// confirmed by the source.
    pub service: String,
    pub port_name: String,
    pub svc_id: u32,
    pub selection: Option<Selection>,
    pub affinity_timeout: Option<u32>,
    pub internal_local: bool,
    pub table_size: usize,
    pub backends: Vec<BackendView>,
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn the_removal_guard_holds_empty_sources_and_mass_removals() {
        let g = RemovalGuard {
            max_percent: 50,
            allow: false,
        };
        // A source that looks empty: every frontend would go.
        assert!(g.holds(1, 1, 0));
        assert!(g.holds(3, 3, 0));
        assert!(g.holds(10_000, 10_000, 0));
        // Most at once, beyond the floor.
        assert!(g.holds(6_000, 10_000, 4_000));
        assert!(g.holds(REMOVAL_FLOOR + 1, REMOVAL_FLOOR + 2, 1));
        // Ordinary changes go through.
        assert!(!g.holds(0, 10, 10));
        assert!(!g.holds(1, 6, 5));
        assert!(
            !g.holds(REMOVAL_FLOOR, REMOVAL_FLOOR + 1, 1),
            "at the floor"
        );
        assert!(!g.holds(5_000, 10_000, 5_000), "exactly the share");
        // Let through, or turned off.
        assert!(!RemovalGuard { allow: true, ..g }.holds(3, 3, 0));
        assert!(!RemovalGuard {
            max_percent: 100,
            allow: false
        }
        .holds(3, 3, 0));
    }
}
