//! The service maps behind a trait: the programmer decides, in order, which
//! map operations a change takes ([`Op`]); a [`ServiceMaps`] carries them
//! out. [`BpfMaps`] writes the pinned maps; the tests' fake records the
//! operations and keeps the maps in memory, so the programmer's ordering,
//! retirement, collection and adoption are tested without a kernel (the
//! shape of youki's syscall traits).

use super::model::Protocol;
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use sluice_dataplane::load::open_pinned;
use sluice_dataplane::maps::{self, Backend, LbSlotKey, SvcBackendKey, SvcKey, SvcValue};
use sluice_dataplane::sys;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// One change to the service maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutBackend {
        id: u32,
        addr: SocketAddr,
        protocol: Protocol,
    },
    PutMember(SvcBackendKey),
    /// One generation of random-selection slots.
    PutSlots {
        svc_id: u32,
        gen: u16,
        ids: Vec<u32>,
    },
    /// A Maglev table, built aside and swapped in with one update.
    PutTable {
        svc_id: u32,
        ids: Vec<u32>,
    },
    PutFrontend {
        key: SvcKey,
        value: SvcValue,
    },
    DelFrontend(SvcKey),
    DelMember(SvcBackendKey),
    DelSlots(Vec<LbSlotKey>),
    DelTable(u32),
    DelBackend(u32),
    DelCounter(SvcBackendKey),
}

impl Op {
    /// Map entries this operation writes (for the count of rewrites).
    pub fn entries_written(&self) -> usize {
        match self {
            Op::PutBackend { .. } | Op::PutMember(_) | Op::PutFrontend { .. } => 1,
            Op::PutSlots { ids, .. } => ids.len(),
            Op::PutTable { ids, .. } => ids.len() + maps::LB_TABLE_HEADER as usize,
            _ => 0,
        }
    }
}

/// What the service maps hold, read once when a programmer adopts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub frontends: Vec<(SvcKey, SvcValue)>,
    pub backends: Vec<(u32, Backend)>,
    pub members: Vec<SvcBackendKey>,
    pub slots: Vec<(LbSlotKey, u32)>,
    /// Maglev tables: svc_id → the table's length (its header). The ids
    /// are read one table at a time, when needed ([`ServiceMaps::table`]):
    /// a thousand tables of 16,381 slots are sixteen million entries.
    pub tables: Vec<(u32, u32)>,
    pub counters: Vec<SvcBackendKey>,
}

pub trait ServiceMaps {
    fn apply(&mut self, op: &Op) -> Result<(), String>;
    fn snapshot(&self) -> Result<Snapshot, String>;
    /// The backend ids of a Maglev table, in slot order.
    fn table(&self, svc_id: u32) -> Result<Vec<u32>, String>;
    /// New connections counted for (frontend, backend), over all CPUs.
    fn connections(&self, key: &SvcBackendKey) -> u64;
}

/// The pinned service maps.
pub struct BpfMaps {
    svc: HashMap<MapData, SvcKey, SvcValue>,
    backends: HashMap<MapData, u32, Backend>,
    members: HashMap<MapData, SvcBackendKey, u8>,
    conns: PerCpuHashMap<MapData, SvcBackendKey, u64>,
    slots: HashMap<MapData, LbSlotKey, u32>,
    tables: OwnedFd,
    /// The same maps by fd, for reading them whole in batches.
    raw: RawFds,
}

struct RawFds {
    svc: OwnedFd,
    backends: OwnedFd,
    members: OwnedFd,
    slots: OwnedFd,
    conns: OwnedFd,
}

impl std::fmt::Debug for BpfMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfMaps").finish_non_exhaustive()
    }
}

fn err(map: &str, op: &str) -> impl Fn(String) -> String {
    let (map, op) = (map.to_string(), op.to_string());
    move |e| format!("service map {map}: cannot {op}: {e}")
}

impl BpfMaps {
    pub fn open(maps_dir: &Path) -> Result<Self, super::program::ProgramError> {
        let open = |m: &maps::MapSpec| open_pinned(maps_dir, m);
        let raw = |m: &maps::MapSpec| {
            sys::obj_get(&maps_dir.join(m.name)).map_err(|e| super::program::ProgramError::Map {
                map: m.name,
                op: "open",
                detail: e.to_string(),
            })
        };
        let typed = |name: &'static str| {
            move |e: aya::maps::MapError| super::program::ProgramError::Map {
                map: name,
                op: "open",
                detail: e.to_string(),
            }
        };
        Ok(BpfMaps {
            svc: HashMap::try_from(open(&maps::SVC)?).map_err(typed(maps::SVC.name))?,
            backends: HashMap::try_from(open(&maps::BACKENDS)?)
                .map_err(typed(maps::BACKENDS.name))?,
            members: HashMap::try_from(open(&maps::SVC_BES)?).map_err(typed(maps::SVC_BES.name))?,
            conns: PerCpuHashMap::try_from(open(&maps::CONNS)?).map_err(typed(maps::CONNS.name))?,
            slots: HashMap::try_from(open(&maps::LB_SLOTS)?).map_err(typed(maps::LB_SLOTS.name))?,
            tables: sys::obj_get(&maps_dir.join(maps::LB_TABLES.name)).map_err(|e| {
                super::program::ProgramError::Map {
                    map: maps::LB_TABLES.name,
                    op: "open",
                    detail: e.to_string(),
                }
            })?,
            raw: RawFds {
                svc: raw(&maps::SVC)?,
                backends: raw(&maps::BACKENDS)?,
                members: raw(&maps::SVC_BES)?,
                slots: raw(&maps::LB_SLOTS)?,
                conns: raw(&maps::CONNS)?,
            },
        })
    }
}

fn pod<T: aya::Pod + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = size_of::<T>().min(b.len());
    maps::bytes_of_mut(&mut v)[..n].copy_from_slice(&b[..n]);
    v
}

/// Every entry of a map, as the type it holds.
fn dump<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: std::os::fd::BorrowedFd<'_>,
    name: &str,
) -> Result<Vec<(K, V)>, String> {
    Ok(sys::map_dump(fd)
        .map_err(|e| format!("reading {name}: {e}"))?
        .into_iter()
        .map(|(k, v)| (pod(&k), pod(&v)))
        .collect())
}

impl ServiceMaps for BpfMaps {
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::PutBackend { id, addr, protocol } => self
                .backends
                .insert(*id, Backend::new(*addr, protocol.number()), 0)
                .map_err(|e| err(maps::BACKENDS.name, "insert")(e.to_string())),
            Op::PutMember(k) => self
                .members
                .insert(*k, 1, 0)
                .map_err(|e| err(maps::SVC_BES.name, "insert")(e.to_string())),
            Op::PutSlots { svc_id, gen, ids } => {
                for (i, id) in ids.iter().enumerate() {
                    let k = LbSlotKey {
                        svc_id: *svc_id,
                        gen: *gen,
                        slot: i as u16,
                    };
                    self.slots
                        .insert(k, *id, 0)
                        .map_err(|e| err(maps::LB_SLOTS.name, "insert")(e.to_string()))?;
                }
                Ok(())
            }
            Op::PutTable { svc_id, ids } => {
                let inner = sys::lb_table(ids, "sluice_lb_tbl")
                    .map_err(|e| err("selection table", "create")(e.to_string()))?;
                sys::map_update(
                    self.tables.as_fd(),
                    &svc_id.to_ne_bytes(),
                    &(inner.as_raw_fd() as u32).to_ne_bytes(),
                    0,
                )
                .map_err(|e| err(maps::LB_TABLES.name, "swap in a table")(e.to_string()))
            }
            Op::PutFrontend { key, value } => self
                .svc
                .insert(key, value, 0)
                .map_err(|e| err(maps::SVC.name, "insert")(e.to_string())),
            Op::DelFrontend(k) => {
                let _ = self.svc.remove(k);
                Ok(())
            }
            Op::DelMember(k) => {
                let _ = self.members.remove(k);
                Ok(())
            }
            Op::DelSlots(keys) => {
                for k in keys {
                    let _ = self.slots.remove(k);
                }
                Ok(())
            }
            Op::DelTable(svc_id) => {
                let _ = sys::map_delete(self.tables.as_fd(), &svc_id.to_ne_bytes());
                Ok(())
            }
            Op::DelBackend(id) => {
                let _ = self.backends.remove(id);
                Ok(())
            }
            Op::DelCounter(k) => {
                let _ = self.conns.remove(k);
                Ok(())
            }
        }
    }

    fn snapshot(&self) -> Result<Snapshot, String> {
        let RawFds {
            svc,
            backends,
            members,
            slots,
            conns,
        } = &self.raw;
        let mut tables = Vec::new();
        for (svc_id, inner_id) in dump::<u32, u32>(self.tables.as_fd(), maps::LB_TABLES.name)? {
            let inner = sys::map_fd_by_id(inner_id).map_err(|e| e.to_string())?;
            let mut n = [0u8; 4];
            if sys::map_lookup(inner.as_fd(), &0u32.to_ne_bytes(), &mut n)
                .map_err(|e| e.to_string())?
            {
                tables.push((svc_id, u32::from_ne_bytes(n)));
            }
        }
        Ok(Snapshot {
            frontends: dump(svc.as_fd(), maps::SVC.name)?,
            backends: dump(backends.as_fd(), maps::BACKENDS.name)?,
            members: dump::<SvcBackendKey, u8>(members.as_fd(), maps::SVC_BES.name)?
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
            slots: dump(slots.as_fd(), maps::LB_SLOTS.name)?,
            tables,
            counters: sys::map_dump(conns.as_fd())
                .map_err(|e| format!("reading {}: {e}", maps::CONNS.name))?
                .into_iter()
                .map(|(k, _)| pod(&k))
                .collect(),
        })
    }

    fn table(&self, svc_id: u32) -> Result<Vec<u32>, String> {
        let mut id = [0u8; 4];
        if !sys::map_lookup(self.tables.as_fd(), &svc_id.to_ne_bytes(), &mut id)
            .map_err(|e| e.to_string())?
        {
            return Ok(Vec::new());
        }
        let inner = sys::map_fd_by_id(u32::from_ne_bytes(id)).map_err(|e| e.to_string())?;
        let mut slots: Vec<(u32, u32)> = dump(inner.as_fd(), "a selection table")?;
        slots.sort_unstable();
        let n = slots.first().map_or(0, |(_, n)| *n) as usize;
        Ok(slots
            .into_iter()
            .skip(maps::LB_TABLE_HEADER as usize)
            .take(n)
            .map(|(_, id)| id)
            .collect())
    }

    fn connections(&self, key: &SvcBackendKey) -> u64 {
        self.conns.get(key, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// In-memory service maps that record every operation, for the
/// programmer's tests.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Default)]
    pub struct FakeMaps {
        pub ops: Vec<Op>,
        pub svc: BTreeMap<[u8; 20], (SvcKey, SvcValue)>,
        pub backends: BTreeMap<u32, (SocketAddr, Protocol)>,
        pub members: std::collections::BTreeSet<(u32, u32)>,
        pub slots: BTreeMap<(u32, u16, u16), u32>,
        pub tables: BTreeMap<u32, Vec<u32>>,
        pub counters: std::collections::BTreeSet<(u32, u32)>,
        /// Operations matching this fail (a full map).
        pub fail: Option<fn(&Op) -> bool>,
    }

    fn k20(k: &SvcKey) -> [u8; 20] {
        maps::bytes_of(k).try_into().expect("20 bytes")
    }

    impl FakeMaps {
        /// What `ops` wrote since the last call, and forget them.
        pub fn take(&mut self) -> Vec<Op> {
            std::mem::take(&mut self.ops)
        }
    }

    impl ServiceMaps for FakeMaps {
        fn apply(&mut self, op: &Op) -> Result<(), String> {
            if self.fail.is_some_and(|f| f(op)) {
                return Err("the map is full".into());
            }
            self.ops.push(op.clone());
            match op {
                Op::PutBackend { id, addr, protocol } => {
                    self.backends.insert(*id, (*addr, *protocol));
                }
                Op::PutMember(k) => {
                    self.members.insert((k.svc_id, k.backend_id));
                }
                Op::PutSlots { svc_id, gen, ids } => {
                    for (i, id) in ids.iter().enumerate() {
                        self.slots.insert((*svc_id, *gen, i as u16), *id);
                    }
                }
                Op::PutTable { svc_id, ids } => {
                    self.tables.insert(*svc_id, ids.clone());
                }
                Op::PutFrontend { key, value } => {
                    self.svc.insert(k20(key), (*key, *value));
                }
                Op::DelFrontend(k) => {
                    self.svc.remove(&k20(k));
                }
                Op::DelMember(k) => {
                    self.members.remove(&(k.svc_id, k.backend_id));
                }
                Op::DelSlots(keys) => {
                    for k in keys {
                        self.slots.remove(&(k.svc_id, k.gen, k.slot));
                    }
                }
                Op::DelTable(id) => {
                    self.tables.remove(id);
                }
                Op::DelBackend(id) => {
                    self.backends.remove(id);
                }
                Op::DelCounter(k) => {
                    self.counters.remove(&(k.svc_id, k.backend_id));
                }
            }
            Ok(())
        }

        fn snapshot(&self) -> Result<Snapshot, String> {
            Ok(Snapshot {
                frontends: self.svc.values().copied().collect(),
                backends: self
                    .backends
                    .iter()
                    .map(|(id, (a, p))| (*id, Backend::new(*a, p.number())))
                    .collect(),
                members: self
                    .members
                    .iter()
                    .map(|(s, b)| SvcBackendKey {
                        svc_id: *s,
                        backend_id: *b,
                    })
                    .collect(),
                slots: self
                    .slots
                    .iter()
                    .map(|((svc_id, gen, slot), id)| {
                        (
                            LbSlotKey {
                                svc_id: *svc_id,
                                gen: *gen,
                                slot: *slot,
                            },
                            *id,
                        )
                    })
                    .collect(),
                tables: self
                    .tables
                    .iter()
                    .map(|(k, v)| (*k, v.len() as u32))
                    .collect(),
                counters: self
                    .counters
                    .iter()
                    .map(|(s, b)| SvcBackendKey {
                        svc_id: *s,
                        backend_id: *b,
                    })
                    .collect(),
            })
        }

        fn table(&self, svc_id: u32) -> Result<Vec<u32>, String> {
            Ok(self.tables.get(&svc_id).cloned().unwrap_or_default())
        }

        fn connections(&self, _: &SvcBackendKey) -> u64 {
            0
        }
    }
}
