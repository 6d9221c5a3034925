//! Affinity entries that no longer mean anything go: those of pods that
//! are gone (their netns cookie is no longer an endpoint; cookies are never
//! reused; on the per-packet path, no endpoint has their host ifindex) and
//! those of frontends that are gone (svc_ids are never reused).
//! The walk runs on its own map handles, outside the programmer's lock.

use super::program::ProgramError;
use aya::maps::{HashMap, MapData, MapError};
use sluice_dataplane::load::open_pinned;
use sluice_dataplane::maps::{
    self, AffinityKey, AffinityValue, Endpoint, AFF_ID_EXTERNAL, AFF_ID_IFINDEX,
};
use std::collections::HashSet;
use std::path::Path;

pub struct Sweeper {
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    eps: HashMap<MapData, u64, Endpoint>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").finish_non_exhaustive()
    }
}

fn opened<T>(name: &'static str, r: Result<T, MapError>) -> Result<T, ProgramError> {
    r.map_err(|e| ProgramError::Map {
        map: name,
        op: "open",
        detail: e.to_string(),
    })
}

impl Sweeper {
    pub fn open(maps_dir: &Path) -> Result<Self, ProgramError> {
        Ok(Sweeper {
            affinity: opened(
                maps::AFFINITY.name,
                HashMap::try_from(open_pinned(maps_dir, &maps::AFFINITY)?),
            )?,
            eps: opened(
                maps::ENDPOINTS.name,
                HashMap::try_from(open_pinned(maps_dir, &maps::ENDPOINTS)?),
            )?,
        })
    }

    /// Removes the entries of pods and frontends that are gone. `live`
    /// gives the svc_ids programmed now; it is asked after the walk, so a
    /// frontend added meanwhile keeps its entries. Returns how many went.
    pub fn sweep(&mut self, live: impl FnOnce() -> HashSet<u32>) -> usize {
        let keys: Vec<AffinityKey> = self.affinity.keys().filter_map(Result::ok).collect();
        if keys.is_empty() {
            return 0;
        }
        let live = live();
        // The per-packet path keys a pod by its host ifindex (tagged).
        let ifindexes: HashSet<u64> = if keys.iter().any(|k| k.netns_cookie & AFF_ID_IFINDEX != 0) {
            self.eps
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, e)| e.host_ifindex != 0)
                .map(|(_, e)| AFF_ID_IFINDEX | u64::from(e.host_ifindex))
                .collect()
        } else {
            HashSet::new()
        };
        let mut n = 0;
        for k in keys {
            // An external client's entry is nobody's pod: it goes with its
            // frontend or its timeout.
            let pod_gone = if k.netns_cookie & AFF_ID_EXTERNAL == AFF_ID_EXTERNAL {
                false
            } else if k.netns_cookie & AFF_ID_IFINDEX != 0 {
                !ifindexes.contains(&k.netns_cookie)
            } else {
                matches!(self.eps.get(&k.netns_cookie, 0), Err(MapError::KeyNotFound))
            };
            if (pod_gone || !live.contains(&k.svc_id)) && self.affinity.remove(&k).is_ok() {
                n += 1;
            }
        }
        n
    }
}
