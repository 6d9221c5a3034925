//! Writes a [`Translation`] into the service maps, changing only what
//! differs from what is programmed.
//!
//! The programmer keeps what is programmed (frontends with their svc_id,
//! table and members; backend ids) and decides, for each change, the map
//! operations it takes, in order ([`Op`]); a [`ServiceMaps`] carries them
//! out (the pinned maps, or the tests' recording fake). Ordering keeps
//! every connect consistent:
//! - a new frontend becomes visible (its `sluice_svc` entry) only after its
//!   backends and its whole selection table are in place;
//! - a changed frontend gets a new table, built aside and swapped in with
//!   one update (a new generation of slots and one update of the frontend,
//!   or a new Maglev table swapped into the outer map); backends joining
//!   are members before the swap, backends leaving stop being members
//!   after it;
//! - a removed frontend disappears from `sluice_svc` first, then its table
//!   and members; its affinities go in the affinity sweep;
//! - what a connect may still be reading (replaced slots and tables,
//!   backends no table holds, their counters) is deleted a second later.
//!
//! After a restart the maps are adopted, not flushed or rewritten: frontends
//! keep their svc_ids, tables and members, backends their ids, so a first
//! pass that finds everything in place writes nothing. What no frontend
//! explains (slots of a generation a crash left half-written, tables,
//! members and counters of frontends that are gone) is collected by the
//! first full pass. svc_ids are never reused; a backend id is reused only
//! once no map holds it.
//!
//! The maps are sized by [`Capacity`]; a frontend that would not fit is
//! refused with the limit named, and the rest are programmed.

use super::model::{Frontend, FrontendKey, Protocol, Selection};
use super::translate::Translation;
pub use super::writer::{BpfMaps, Op, ServiceMaps, Snapshot};
use crate::maglev;
use serde::{Deserialize, Serialize};
use sluice_dataplane::load::LoadError;
use sluice_dataplane::maps::{
    self, Capacity, LbSlotKey, SvcBackendKey, SvcKey, SvcValue, SVC_F_MAGLEV,
};
use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

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
    #[error("{what} would exceed the capacity the service maps are sized for ({limit}); raise {key} in sluiced.toml (the maps are resized, entries kept, at the daemon's next start)")]
    Capacity {
        what: String,
        limit: u32,
        key: &'static str,
    },
    #[error("{0}")]
    Write(String),
    #[error("reading the service maps to adopt them: {0}")]
    Snapshot(String),
}

/// What is programmed for one frontend.
#[derive(Debug, Clone)]
struct Programmed {
    frontend: Option<Frontend>,
    svc_id: u32,
    value: SvcValue,
    /// The table as written (backend ids, in slot order); empty for an
    /// adopted frontend whose table was not whole (written again).
    table: Vec<u32>,
    /// An adopted Maglev table not read yet: its length.
    unread: Option<u32>,
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
    /// Map entries written (a restart that finds everything in place
    /// writes none).
    #[serde(default)]
    pub entries_written: usize,
    /// Entries found at adoption that no frontend explained, collected.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub orphans_collected: usize,
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

/// State a connect may still be reading, replaced at `at` and deleted a
/// second later.
#[derive(Debug)]
struct Retired {
    at: Instant,
    ops: Vec<Op>,
    /// Backend ids freed for reuse once the deletion is done.
    frees: Vec<u32>,
}

/// How long replaced state is kept: a connect reads its frontend and then
/// its slots within microseconds.
const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// What the maps held at adoption that no frontend explains.
#[derive(Debug, Default)]
struct Orphans {
    slots: Vec<LbSlotKey>,
    tables: Vec<u32>,
    members: Vec<SvcBackendKey>,
    counters: Vec<SvcBackendKey>,
}

pub struct Programmer<M: ServiceMaps = BpfMaps> {
    maps: M,
    capacity: Capacity,
    maglev: MaglevConfig,
    /// Whether the adopted Maglev tables were built with this Maglev
    /// configuration: the first one whose members are unchanged is read
    /// and compared whole; the others are taken by their length and
    /// members if it matched, and written again if it did not.
    maglev_checked: Option<bool>,
    current: BTreeMap<FrontendKey, Programmed>,
    /// Replaced state waiting to be deleted.
    retired: Vec<Retired>,
    /// Found at adoption; collected by the first full apply.
    orphans: Option<Orphans>,
    /// Who holds each frontend, shared with the translation (cloned only
    /// when written while a translation still reads it).
    owners: std::sync::Arc<BTreeMap<FrontendKey, super::model::ServiceRef>>,
    /// The frontends of each service (the inverse of `owners`).
    by_service: StdHashMap<super::model::ServiceRef, BTreeSet<FrontendKey>>,
    backend_ids: StdHashMap<(SocketAddr, Protocol), u32>,
    backend_addrs: StdHashMap<u32, (SocketAddr, Protocol)>,
    /// How many frontends' tables hold each backend.
    backend_refs: StdHashMap<u32, u32>,
    /// Backend ids no map holds any more, reused smallest first.
    free_ids: BTreeSet<u32>,
    next_backend_id: u32,
    next_svc_id: u32,
    /// Entries the maps hold now (members, slots incl. retired ones).
    members_held: usize,
    slots_held: usize,
}

impl<M: ServiceMaps> std::fmt::Debug for Programmer<M> {
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

fn frontend_key(k: &SvcKey) -> Option<FrontendKey> {
    let (Some(ip), Some(protocol)) = (maps::addr_from(k.addr, k.family), proto_of(k.proto)) else {
        return None;
    };
    Some(FrontendKey {
        addr: SocketAddr::new(ip, u16::from_be(k.port)),
        protocol,
    })
}

/// How many entries the maps hold, against what they are sized for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

impl Programmer<BpfMaps> {
    /// Opens the pinned service maps (the daemon has loaded the objects, so
    /// they exist) and adopts what they hold.
    pub fn open(
        maps_dir: &Path,
        maglev: MaglevConfig,
        capacity: Capacity,
    ) -> Result<Self, ProgramError> {
        Programmer::adopt(BpfMaps::open(maps_dir)?, maglev, capacity)
    }
}

impl<M: ServiceMaps> Programmer<M> {
    /// Takes over what `maps` hold: frontends with their real tables and
    /// members, backends with their ids; what nothing explains is noted for
    /// the first full apply to collect.
    pub fn adopt(maps: M, maglev: MaglevConfig, capacity: Capacity) -> Result<Self, ProgramError> {
        let snap = maps.snapshot().map_err(ProgramError::Snapshot)?;
        let slots: StdHashMap<(u32, u16, u16), u32> = snap
            .slots
            .iter()
            .map(|(k, id)| ((k.svc_id, k.gen, k.slot), *id))
            .collect();
        let tables: StdHashMap<u32, u32> = snap.tables.iter().copied().collect();
        let mut current = BTreeMap::new();
        let mut next_svc_id = 1;
        let mut next_backend_id = 1;
        for (k, v) in &snap.frontends {
            next_svc_id = next_svc_id.max(v.svc_id + 1);
            let Some(key) = frontend_key(k) else {
                continue;
            };
            let (table, unread) = if v.flags & SVC_F_MAGLEV != 0 {
                (Vec::new(), tables.get(&v.svc_id).copied())
            } else {
                let t = (0..v.count)
                    .map(|slot| slots.get(&(v.svc_id, v.gen, slot)).copied())
                    .collect::<Option<Vec<u32>>>();
                (t.unwrap_or_default(), None)
            };
            current.insert(
                key,
                Programmed {
                    frontend: None,
                    svc_id: v.svc_id,
                    value: *v,
                    table,
                    unread,
                    members: BTreeSet::new(),
                },
            );
        }
        let live: StdHashMap<u32, FrontendKey> =
            current.iter().map(|(k, p)| (p.svc_id, *k)).collect();
        let mut orphans = Orphans::default();
        let mut backend_refs: StdHashMap<u32, u32> = StdHashMap::new();
        for k in &snap.members {
            next_svc_id = next_svc_id.max(k.svc_id + 1);
            next_backend_id = next_backend_id.max(k.backend_id + 1);
            match live.get(&k.svc_id).and_then(|f| current.get_mut(f)) {
                Some(p) => {
                    if p.members.insert(k.backend_id) {
                        *backend_refs.entry(k.backend_id).or_default() += 1;
                    }
                }
                None => orphans.members.push(*k),
            }
        }
        for (k, _) in &snap.slots {
            next_svc_id = next_svc_id.max(k.svc_id + 1);
            let in_use = live
                .get(&k.svc_id)
                .and_then(|f| current.get(f))
                .is_some_and(|p| {
                    p.value.flags & SVC_F_MAGLEV == 0
                        && p.value.gen == k.gen
                        && k.slot < p.value.count
                });
            if !in_use {
                orphans.slots.push(*k);
            }
        }
        for (svc_id, _) in &snap.tables {
            next_svc_id = next_svc_id.max(svc_id + 1);
            let in_use = live
                .get(svc_id)
                .and_then(|f| current.get(f))
                .is_some_and(|p| p.value.flags & SVC_F_MAGLEV != 0);
            if !in_use {
                orphans.tables.push(*svc_id);
            }
        }
        for k in &snap.counters {
            next_svc_id = next_svc_id.max(k.svc_id + 1);
            next_backend_id = next_backend_id.max(k.backend_id + 1);
            let in_use = live
                .get(&k.svc_id)
                .and_then(|f| current.get(f))
                .is_some_and(|p| p.members.contains(&k.backend_id));
            if !in_use {
                orphans.counters.push(*k);
            }
        }
        let mut backend_ids: StdHashMap<(SocketAddr, Protocol), u32> = StdHashMap::new();
        let mut backend_addrs = StdHashMap::new();
        let refs = |id: &u32| backend_refs.get(id).copied().unwrap_or(0);
        for (id, b) in &snap.backends {
            next_backend_id = next_backend_id.max(id + 1);
            if let (Some(addr), Some(p)) = (b.socket_addr(), proto_of(b.proto)) {
                backend_addrs.insert(*id, (addr, p));
                // Two ids for one address: the daemon died while a removed
                // service's backends waited out their second before
                // deletion, after the service came back under new ids. The
                // id the tables hold is the backend; the other, unheld, is
                // swept by the first full pass.
                match backend_ids.entry((addr, p)) {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(*id);
                    }
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        if refs(id) > refs(e.get()) {
                            e.insert(*id);
                        }
                    }
                }
            }
        }
        let members_held = snap.members.len();
        let slots_held = snap.slots.len();
        Ok(Programmer {
            maps,
            capacity,
            maglev,
            maglev_checked: None,
            current,
            retired: Vec::new(),
            orphans: Some(orphans),
            owners: Default::default(),
            by_service: StdHashMap::new(),
            backend_ids,
            backend_addrs,
            backend_refs,
            free_ids: BTreeSet::new(),
            next_backend_id,
            next_svc_id,
            members_held,
            slots_held,
        })
    }

    /// The maps, for tests that look at them.
    #[cfg(test)]
    pub fn maps(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn frontends(&self) -> usize {
        self.current.len()
    }

    /// Who holds each programmed frontend (the translation's conflict rule
    /// keeps it with its holder).
    pub fn owners(&self) -> std::sync::Arc<BTreeMap<FrontendKey, super::model::ServiceRef>> {
        self.owners.clone()
    }

    /// The svc_ids programmed now: affinity entries of any other are of a
    /// frontend that is gone (svc_ids are never reused).
    pub fn live_svc_ids(&self) -> std::collections::HashSet<u32> {
        self.current.values().map(|p| p.svc_id).collect()
    }

    /// Entries held against capacity, per service map.
    pub fn fill(&self) -> Vec<Fill> {
        let c = &self.capacity;
        vec![
            Fill {
                map: maps::SVC.name.into(),
                entries: self.current.len(),
                capacity: c.frontends,
            },
            Fill {
                map: maps::BACKENDS.name.into(),
                entries: self.backend_addrs.len(),
                capacity: c.backends(),
            },
            Fill {
                map: maps::SVC_BES.name.into(),
                entries: self.members_held,
                capacity: c.members(),
            },
            Fill {
                map: maps::LB_SLOTS.name.into(),
                entries: self.slots_held,
                capacity: c.slots(),
            },
        ]
    }

    fn write(&mut self, op: Op, rep: &mut ApplyReport) -> Result<(), ProgramError> {
        self.maps.apply(&op).map_err(ProgramError::Write)?;
        rep.entries_written += op.entries_written();
        match &op {
            Op::PutMember(_) => self.members_held += 1,
            Op::DelMember(_) => self.members_held = self.members_held.saturating_sub(1),
            Op::PutSlots { ids, .. } => self.slots_held += ids.len(),
            Op::DelSlots(keys) => self.slots_held = self.slots_held.saturating_sub(keys.len()),
            _ => {}
        }
        Ok(())
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
        self.apply_at(t, scope, guard, Instant::now())
    }

    /// [`Programmer::apply_scoped`] at time `now` (the tests' clock).
    pub fn apply_at(
        &mut self,
        t: &Translation,
        scope: Option<&BTreeSet<super::model::ServiceRef>>,
        guard: RemovalGuard,
        now: Instant,
    ) -> Result<ApplyReport, ProgramError> {
        let mut rep = ApplyReport::default();
        self.collect_at(now, &mut rep);
        let programmed = self.current.len();
        // Backends that left some table: freed below if no table holds them.
        let mut released: Vec<u32> = Vec::new();
        let mut failed = Vec::new();
        for (key, f) in &t.frontends {
            // One frontend's failure (a Maglev table that cannot be built, a
            // full map) must not stop the others or the removals below.
            if let Err(e) = self.apply_one(key, f, &mut rep, &mut released, now) {
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
            self.remove_one(key, &mut rep, &mut released, now)?;
        }
        rep.backends_removed = self.release_unused_backends(released, scope.is_none(), now);
        if scope.is_none() && rep.held_removals == 0 {
            if let Some(o) = self.orphans.take() {
                self.collect_orphans(o, &mut rep)?;
            }
        }
        Ok(rep)
    }

    /// A frontend goes: first from `sluice_svc`, then (a second later) its
    /// selection state; its members at once (nothing selects it any more).
    fn remove_one(
        &mut self,
        key: FrontendKey,
        rep: &mut ApplyReport,
        released: &mut Vec<u32>,
        now: Instant,
    ) -> Result<(), ProgramError> {
        let p = self.current.remove(&key).expect("a programmed frontend");
        self.write(
            Op::DelFrontend(SvcKey::new(key.addr, key.protocol.number())),
            rep,
        )?;
        let mut later = self.retire_ops(&p, false);
        for id in &p.members {
            let k = SvcBackendKey {
                svc_id: p.svc_id,
                backend_id: *id,
            };
            self.write(Op::DelMember(k), rep)?;
            later.push(Op::DelCounter(k));
            released.push(*id);
            if key.protocol == Protocol::Udp {
                rep.udp_left.push((p.svc_id, *id));
            }
        }
        self.retire(now, later, Vec::new());
        if let Some(owner) = std::sync::Arc::make_mut(&mut self.owners).remove(&key) {
            if let Some(set) = self.by_service.get_mut(&owner) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_service.remove(&owner);
                }
            }
        }
        rep.removed += 1;
        Ok(())
    }

    /// Programs one frontend (see the module doc for the order).
    fn apply_one(
        &mut self,
        key: &FrontendKey,
        f: &Frontend,
        rep: &mut ApplyReport,
        released: &mut Vec<u32>,
        now: Instant,
    ) -> Result<(), ProgramError> {
        let prev = self.current.get(key).cloned();
        if prev.is_none() && self.current.len() >= self.capacity.frontends as usize {
            return Err(ProgramError::Capacity {
                what: format!("frontend number {}", self.current.len() + 1),
                limit: self.capacity.frontends,
                key: "max_frontends",
            });
        }
        let eligible = f.eligible();
        if f.selection == Selection::Random && eligible.len() > u16::MAX as usize {
            return Err(ProgramError::TooManyBackends {
                frontend: *key,
                backends: eligible.len(),
            });
        }
        // Backends this frontend needs that have no id yet.
        let new_backends = eligible
            .iter()
            .filter(|a| !self.backend_ids.contains_key(&(**a, key.protocol)))
            .count();
        if self.backend_addrs.len() + new_backends > self.capacity.backends() as usize {
            return Err(ProgramError::Capacity {
                what: format!("{} backends", self.backend_addrs.len() + new_backends),
                limit: self.capacity.backends(),
                key: "max_endpoints_per_frontend",
            });
        }
        let mut ids = Vec::with_capacity(eligible.len());
        for addr in &eligible {
            let (id, new) = self.backend_id(*addr, key.protocol, rep)?;
            rep.backends_added += usize::from(new);
            ids.push(id);
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
        let was_maglev = prev
            .as_ref()
            .is_some_and(|p| p.value.flags & SVC_F_MAGLEV != 0);
        if let Some(p) = prev.as_ref().filter(|_| maglev && was_maglev) {
            if p.unread == Some(table.len() as u32) && p.members == members {
                if self.maglev_checked.is_none() {
                    let found = self.maps.table(p.svc_id).map_err(ProgramError::Write)?;
                    self.maglev_checked = Some(found == table);
                }
                if self.maglev_checked == Some(true) {
                    if let Some(q) = self.current.get_mut(key) {
                        q.table = table.clone();
                        q.unread = None;
                    }
                }
            }
        }
        let prev = self.current.get(key).cloned();
        let same_table = prev
            .as_ref()
            .is_some_and(|p| p.table == table && was_maglev == maglev && !table.is_empty())
            || prev.as_ref().is_some_and(|p| {
                p.table.is_empty()
                    && table.is_empty()
                    && p.value.count == 0
                    && !maglev
                    && !was_maglev
            });
        // Random selection: a changed table is a new generation of slots;
        // an unchanged one keeps its generation. Generations only move
        // forward, also across a switch to Maglev and back, so a retired
        // generation is never live again.
        let (count, gen) = match (&prev, maglev, same_table) {
            (_, true, _) => (0, prev.as_ref().map_or(0, |p| p.value.gen)),
            (Some(p), false, true) => (p.value.count, p.value.gen),
            (Some(p), false, false) => (table.len() as u16, p.value.gen.wrapping_add(1)),
            (None, false, _) => (table.len() as u16, 1),
        };
        let value = SvcValue {
            svc_id,
            affinity_timeout: f.affinity_timeout.unwrap_or(0),
            flags: if maglev { SVC_F_MAGLEV } else { 0 } | f.reach_flags(),
            count,
            gen,
        };
        let same_value = prev.as_ref().is_some_and(|p| p.value == value);
        let old_members = prev.as_ref().map(|p| p.members.clone()).unwrap_or_default();
        // A frontend adopted with all its members and table in place, and
        // its value unchanged, is already programmed.
        if same_table && same_value && old_members == members {
            self.set_owner(key, &f.service);
            if let Some(p) = self.current.get_mut(key) {
                p.frontend = Some(f.clone());
            }
            rep.unchanged += 1;
            return Ok(());
        }
        if !same_table {
            let joining = members.difference(&old_members).count();
            let slots_needed = if maglev { 0 } else { table.len() };
            if self.members_held + joining > self.capacity.members() as usize {
                return Err(ProgramError::Capacity {
                    what: format!("{} table memberships", self.members_held + joining),
                    limit: self.capacity.members(),
                    key: "max_endpoints_per_frontend",
                });
            }
            if self.slots_held + slots_needed > self.capacity.slots() as usize {
                return Err(ProgramError::Capacity {
                    what: format!("{} selection slots", self.slots_held + slots_needed),
                    limit: self.capacity.slots(),
                    key: "max_endpoints_per_frontend",
                });
            }
        }
        for id in members.difference(&old_members) {
            self.write(
                Op::PutMember(SvcBackendKey {
                    svc_id,
                    backend_id: *id,
                }),
                rep,
            )?;
        }
        if !same_table {
            if maglev {
                self.write(
                    Op::PutTable {
                        svc_id,
                        ids: table.clone(),
                    },
                    rep,
                )?;
            } else {
                self.write(
                    Op::PutSlots {
                        svc_id,
                        gen,
                        ids: table.clone(),
                    },
                    rep,
                )?;
            }
        }
        if !same_value {
            self.write(
                Op::PutFrontend {
                    key: SvcKey::new(key.addr, key.protocol.number()),
                    value,
                },
                rep,
            )?;
        }
        // Only now is the old state unreachable for new connects.
        for id in members.difference(&old_members) {
            *self.backend_refs.entry(*id).or_default() += 1;
        }
        let mut later = Vec::new();
        for id in old_members.difference(&members) {
            let k = SvcBackendKey {
                svc_id,
                backend_id: *id,
            };
            self.write(Op::DelMember(k), rep)?;
            later.push(Op::DelCounter(k));
            released.push(*id);
            if key.protocol == Protocol::Udp {
                rep.udp_left.push((svc_id, *id));
            }
        }
        // Only a replaced selection state is retired: with the table
        // unchanged (an affinity change) the live slots stay.
        if let Some(p) = prev.as_ref().filter(|_| !same_table) {
            later.extend(self.retire_ops(p, maglev));
        }
        self.retire(now, later, Vec::new());
        self.set_owner(key, &f.service);
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
                unread: None,
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

    /// The id of a backend, allocating (and writing) it if it is new: the
    /// smallest id no map holds.
    fn backend_id(
        &mut self,
        addr: SocketAddr,
        p: Protocol,
        rep: &mut ApplyReport,
    ) -> Result<(u32, bool), ProgramError> {
        if let Some(id) = self.backend_ids.get(&(addr, p)) {
            return Ok((*id, false));
        }
        let id = match self.free_ids.pop_first() {
            Some(id) => id,
            None => {
                let id = self.next_backend_id;
                if id > maps::MAX_BACKEND_ID {
                    return Err(ProgramError::Capacity {
                        what: format!("backend id {id}"),
                        limit: maps::MAX_BACKEND_ID,
                        key: "max_endpoints_per_frontend",
                    });
                }
                self.next_backend_id += 1;
                id
            }
        };
        if let Err(e) = self.write(
            Op::PutBackend {
                id,
                addr,
                protocol: p,
            },
            rep,
        ) {
            self.free_ids.insert(id);
            return Err(e);
        }
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

    /// The deletions that the selection state `p` used takes, now replaced
    /// (`now_maglev`: the frontend is Maglev now, so its table stays).
    fn retire_ops(&self, p: &Programmed, now_maglev: bool) -> Vec<Op> {
        let was_maglev = p.value.flags & SVC_F_MAGLEV != 0;
        let mut ops = Vec::new();
        if !was_maglev && p.value.count > 0 {
            ops.push(Op::DelSlots(
                (0..p.value.count)
                    .map(|slot| LbSlotKey {
                        svc_id: p.svc_id,
                        gen: p.value.gen,
                        slot,
                    })
                    .collect(),
            ));
        }
        if was_maglev && !now_maglev {
            ops.push(Op::DelTable(p.svc_id));
        }
        ops
    }

    fn retire(&mut self, now: Instant, ops: Vec<Op>, frees: Vec<u32>) {
        if !ops.is_empty() || !frees.is_empty() {
            self.retired.push(Retired {
                at: now,
                ops,
                frees,
            });
        }
    }

    /// Deletes retired state older than [`RETIRE_AFTER`].
    pub fn collect(&mut self) {
        let mut rep = ApplyReport::default();
        self.collect_at(Instant::now(), &mut rep);
    }

    fn collect_at(&mut self, now: Instant, rep: &mut ApplyReport) {
        let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| now.saturating_duration_since(r.at) >= RETIRE_AFTER);
        self.retired = keep;
        if old.is_empty() {
            return;
        }
        // What is live now must survive, whatever was queued before it.
        let live: StdHashMap<u32, (u16, bool, &BTreeSet<u32>)> = self
            .current
            .values()
            .map(|p| {
                (
                    p.svc_id,
                    (p.value.gen, p.value.flags & SVC_F_MAGLEV != 0, &p.members),
                )
            })
            .collect();
        let mut ops = Vec::new();
        let mut frees = Vec::new();
        for r in old {
            frees.extend(r.frees);
            for op in r.ops {
                let still_live = match &op {
                    Op::DelSlots(keys) => keys.first().is_some_and(|k| {
                        live.get(&k.svc_id)
                            .is_some_and(|(gen, maglev, _)| !maglev && *gen == k.gen)
                    }),
                    Op::DelTable(svc_id) => live.get(svc_id).is_some_and(|(_, maglev, _)| *maglev),
                    // Back in the frontend's table since: its count goes on.
                    Op::DelCounter(k) => live
                        .get(&k.svc_id)
                        .is_some_and(|(_, _, m)| m.contains(&k.backend_id)),
                    // Backend ids are reused only after this.
                    Op::DelBackend(id) => self.backend_addrs.contains_key(id),
                    _ => false,
                };
                if !still_live {
                    ops.push(op);
                }
            }
        }
        for op in ops {
            if let Err(e) = self.write(op, rep) {
                tracing::warn!("deleting replaced service state: {e}");
            }
        }
        self.free_ids.extend(
            frees
                .into_iter()
                .filter(|id| !self.backend_addrs.contains_key(id)),
        );
    }

    /// Deletes what the maps held at adoption that no frontend explains.
    fn collect_orphans(&mut self, o: Orphans, rep: &mut ApplyReport) -> Result<(), ProgramError> {
        let ops = {
            let live: StdHashMap<u32, &Programmed> =
                self.current.values().map(|p| (p.svc_id, p)).collect();
            let slots: Vec<LbSlotKey> = o
                .slots
                .into_iter()
                .filter(|k| {
                    !live.get(&k.svc_id).is_some_and(|p| {
                        p.value.flags & SVC_F_MAGLEV == 0
                            && p.value.gen == k.gen
                            && k.slot < p.value.count
                    })
                })
                .collect();
            let mut ops = Vec::new();
            if !slots.is_empty() {
                ops.push(Op::DelSlots(slots));
            }
            ops.extend(
                o.tables
                    .into_iter()
                    .filter(|t| {
                        live.get(t)
                            .is_none_or(|p| p.value.flags & SVC_F_MAGLEV == 0)
                    })
                    .map(Op::DelTable),
            );
            let unexplained = |k: &SvcBackendKey| {
                !live
                    .get(&k.svc_id)
                    .is_some_and(|p| p.members.contains(&k.backend_id))
            };
            ops.extend(o.members.into_iter().filter(unexplained).map(Op::DelMember));
            ops.extend(
                o.counters
                    .into_iter()
                    .filter(unexplained)
                    .map(Op::DelCounter),
            );
            ops
        };
        rep.orphans_collected = ops
            .iter()
            .map(|op| match op {
                Op::DelSlots(k) => k.len(),
                _ => 1,
            })
            .sum();
        for op in ops {
            self.write(op, rep)?;
        }
        Ok(())
    }

    /// Drops one reference of each `released` backend and removes those no
    /// table holds any more; `sweep` (a full apply) also removes every
    /// other unreferenced one (adopted leftovers). Returns how many went.
    fn release_unused_backends(&mut self, released: Vec<u32>, sweep: bool, now: Instant) -> usize {
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
        let mut ops = Vec::new();
        let mut frees = Vec::new();
        for id in gone {
            if self.backend_refs.get(&id).copied().unwrap_or(0) > 0 {
                continue;
            }
            self.backend_refs.remove(&id);
            if let Some(k) = self.backend_addrs.remove(&id) {
                // Only if it names this id: an adopted stale duplicate
                // shares its address with a live backend.
                if self.backend_ids.get(&k) == Some(&id) {
                    self.backend_ids.remove(&k);
                }
                ops.push(Op::DelBackend(id));
                frees.push(id);
            }
        }
        let n = ops.len();
        // The map entries go a second later: a connect that read the old
        // slots a moment ago still finds its backend; the id is free after.
        self.retire(now, ops, frees);
        n
    }

    /// Every programmed frontend, with what the datapath counted.
    /// Each `healthCheckNodePort` of the programmed services, with its
    /// service and how many of its backends on this node take new
    /// connections (0: load balancers should not send here).
    pub fn health_checks(&self) -> BTreeMap<u16, (String, usize)> {
        let mut out: BTreeMap<u16, (String, usize)> = BTreeMap::new();
        for f in self.current.values().filter_map(|p| p.frontend.as_ref()) {
            let Some(port) = f.health_check_node_port else {
                continue;
            };
            if !f.external_local {
                continue;
            }
            let local = f.eligible().len();
            let e = out.entry(port).or_insert((f.service.to_string(), 0));
            e.1 = e.1.max(local);
        }
        out
    }

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
                    table_size: p.unread.map_or(p.table.len(), |n| n as usize),
                    backends: f
                        .map(|f| {
                            f.backends
                                .iter()
                                .map(|b| {
                                    let id = self.backend_ids.get(&(b.addr, k.protocol));
                                    BackendView {
                                        addr: b.addr,
                                        state: b.state,
                                        local: b.local,
                                        excluded_by_policy: b.excluded_by_policy,
                                        in_table: id.is_some_and(|id| p.members.contains(id)),
                                        connections: id.map_or(0, |id| {
                                            self.maps.connections(&SvcBackendKey {
                                                svc_id: p.svc_id,
                                                backend_id: *id,
                                            })
                                        }),
                                    }
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
