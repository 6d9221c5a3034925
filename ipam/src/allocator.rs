//! Allocation, release, GC and usage over any [`Store`].
//!
//! Crash safety rests on the order of writes in [`Allocator::allocate`]:
//!
//! 1. the owner index is written (atomically) listing the candidates;
//! 2. each address record is created atomically and exclusively;
//! 3. `last_reserved_ip.<set>` is updated.
//!
//! Killed after 1, the index names addresses the attachment does not own:
//! release skips them. Killed during 2, every record that exists is named by
//! the index, so DEL and GC find it. A record is never created twice, so an
//! address is never handed out twice. Step 3 is a hint only.
//!
//! Cost does not grow with the pool: the next candidate is the address after
//! the last one handed out, which in a mostly free pool is free; the
//! attachment's reservation is found through its index, not by a scan. Only
//! declaring a set exhausted walks it, once around.

use crate::addr::{self, Family};
use crate::config::{IpamConfig, RangeSet};
use crate::error::IpamError;
use crate::store::{Owner, Store};
use ipnetwork::IpNetwork;
use sluice_common::cni::CniError;
use std::collections::HashSet;
use std::net::IpAddr;

/// One address handed out, from range set `set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// Index of the range set in [`IpamConfig::range_sets`].
    pub set: usize,
    /// The address with its subnet's prefix length, such as `10.244.0.5/24`.
    pub address: IpNetwork,
    /// The gateway of the range the address came from.
    pub gateway: IpAddr,
}

/// What GC released for one owner. `owner` is `None` for address records
/// whose content names no valid owner (garbled by hand or by a foreign tool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub owner: Option<Owner>,
    pub addresses: Vec<IpAddr>,
}

/// Usage of one range set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetUsage {
    pub set: usize,
    /// Where the set is in the config (`ranges[1]`).
    pub label: String,
    /// The set's ranges, described for the operator.
    pub ranges: String,
    /// Addresses that can be handed out (gateways excluded).
    pub capacity: u128,
    /// Addresses reserved now.
    pub used: u128,
}

impl SetUsage {
    pub fn exhausted(&self) -> bool {
        self.used >= self.capacity
    }
}

/// What STATUS reports on.
#[derive(Debug)]
pub struct Status {
    pub sets: Vec<SetUsage>,
    /// Whether a reservation could be written now.
    pub writable: Result<(), IpamError>,
}

/// The allocator of one network.
#[derive(Debug)]
pub struct Allocator<S: Store> {
    range_sets: Vec<RangeSet>,
    gateways: Vec<IpAddr>,
    store: S,
}

impl<S: Store> Allocator<S> {
    pub fn new(config: &IpamConfig, store: S) -> Self {
        Allocator {
            range_sets: config.range_sets.clone(),
            gateways: config.gateways(),
            store,
        }
    }

    /// An allocator that can only release, look up and collect: these never
    /// consult the ranges, so a pod stays deletable when its network's
    /// ranges no longer parse. `allocate` fails with code 7.
    pub fn without_ranges(store: S) -> Self {
        Allocator {
            range_sets: Vec::new(),
            gateways: Vec::new(),
            store,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    /// Reserves one address from each range set for the attachment. On any
    /// failure nothing stays reserved.
    pub fn allocate(
        &mut self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Allocation>, IpamError> {
        let owner = Owner::new(container_id, ifname)?;
        if self.range_sets.is_empty() {
            return Err(IpamError::Config(CniError::config(
                "ipam has no ranges to allocate from",
                "set \"ranges\" in the ipam configuration",
            )));
        }
        let _lock = self.store.lock()?;

        if let Some(listed) = self.store.read_index(&owner)? {
            let owned = self.owned(&owner, &listed)?;
            if !owned.is_empty() && owned.len() == listed.len() {
                return Err(IpamError::AlreadyAllocated {
                    container_id: owner.container_id,
                    ifname: owner.ifname,
                    addresses: owned,
                });
            }
            // An earlier attempt for this attachment was killed midway (or
            // failed and could not undo): it holds part of a reservation.
            // Free it so this attempt starts clean rather than leaking it.
            for ip in owned {
                self.store.unreserve(ip)?;
            }
        }

        let mut chosen: Vec<IpAddr> = Vec::with_capacity(self.range_sets.len());
        if let Err(e) = self.reserve_all(&owner, &mut chosen) {
            // Best effort: whatever survives a failed undo is still named by
            // the index, so DEL or GC will free it.
            if self.undo(&owner, &chosen).is_ok() {
                let _ = self.store.remove_index(&owner);
            }
            return Err(e);
        }
        for (set, ip) in chosen.iter().enumerate() {
            // A hint for the next allocation; a failure here costs at most a
            // less even spread of addresses, not correctness.
            let _ = self.store.set_last_reserved(set, *ip);
        }
        Ok(chosen
            .iter()
            .enumerate()
            .map(|(set, ip)| self.allocation(set, *ip))
            .collect())
    }

    /// Steps 1 and 2 of the module docs. `chosen` ends up holding every
    /// candidate the index named, for the caller to undo on failure.
    fn reserve_all(&mut self, owner: &Owner, chosen: &mut Vec<IpAddr>) -> Result<(), IpamError> {
        // Every set picks its candidate before anything is written, so an
        // exhausted set costs no writes at all.
        for set in 0..self.range_sets.len() {
            let after = self.store.last_reserved(set)?;
            chosen.push(self.next_free(set, after)?);
        }
        self.store.write_index(owner, chosen)?;
        for set in 0..chosen.len() {
            while !self.store.reserve(chosen[set], owner)? {
                // Taken since we looked: only a writer that ignores the lock
                // can do that, and the exclusive create still wins. Move on,
                // keeping the index ahead of the records.
                let next = self.next_free(set, Some(chosen[set]))?;
                chosen[set] = next;
                self.store.write_index(owner, chosen)?;
            }
        }
        Ok(())
    }

    /// Removes the records of `ips` that `owner` holds.
    fn undo(&mut self, owner: &Owner, ips: &[IpAddr]) -> Result<(), IpamError> {
        for ip in ips {
            if self.store.owner(*ip)?.as_ref() == Some(owner) {
                self.store.unreserve(*ip)?;
            }
        }
        Ok(())
    }

    /// The addresses of `listed` whose record names `owner`.
    fn owned(&self, owner: &Owner, listed: &[IpAddr]) -> Result<Vec<IpAddr>, IpamError> {
        let mut out = Vec::with_capacity(listed.len());
        for ip in listed {
            if self.store.owner(*ip)?.as_ref() == Some(owner) {
                out.push(*ip);
            }
        }
        Ok(out)
    }

    /// The first free address of set `set` after `after`, round-robin over
    /// the set's ranges in order, skipping gateways. One lap at most.
    fn next_free(&self, set: usize, after: Option<IpAddr>) -> Result<IpAddr, IpamError> {
        let rs = &self.range_sets[set];
        let exhausted = || IpamError::Exhausted {
            set,
            label: rs.label.clone(),
            capacity: rs.allocatable(&self.gateways),
            ranges: rs.describe(),
        };
        // Parsed configs never have an empty set; a hand-built one might.
        let Some(first) = rs.ranges.first() else {
            return Err(exhausted());
        };
        let family = Family::of(first.range_start);
        let bounds: Vec<(u128, u128)> = rs
            .ranges
            .iter()
            .map(|r| (addr::to_u128(r.range_start), addr::to_u128(r.range_end)))
            .collect();
        let last = bounds.len() - 1;
        // Resume after `after` when it is still in the set; otherwise (first
        // allocation, or the ranges were edited) at the start of the first
        // range, which is what the step after the end of the last range is.
        let (mut r, mut v) = after
            .and_then(|ip| {
                rs.ranges
                    .iter()
                    .position(|range| range.contains(ip))
                    .map(|i| (i, addr::to_u128(ip)))
            })
            .unwrap_or((last, bounds[last].1));
        let lap = rs
            .ranges
            .iter()
            .fold(0u128, |a, r| a.saturating_add(r.size()));
        let mut steps: u128 = 0;
        while steps < lap {
            steps += 1;
            if v >= bounds[r].1 {
                r = if r == last { 0 } else { r + 1 };
                v = bounds[r].0;
            } else {
                v += 1;
            }
            let ip = addr::from_u128(v, family);
            if self.gateways.contains(&ip) || self.store.is_reserved(ip)? {
                continue;
            }
            return Ok(ip);
        }
        Err(exhausted())
    }

    fn allocation(&self, set: usize, ip: IpAddr) -> Allocation {
        let range = self.range_sets[set]
            .range_of(ip)
            .expect("next_free returns addresses of the set");
        Allocation {
            set,
            address: IpNetwork::new(ip, range.subnet.prefix())
                .expect("the subnet's prefix fits its family"),
            gateway: range.gateway,
        }
    }

    /// Frees the attachment's reservation and returns the addresses freed.
    /// No reservation is success: DEL is idempotent.
    /// On a read-only store (the lock file cannot even be opened) an
    /// attachment that holds nothing is still released: nothing can be
    /// writing there, so its missing index is the truth, and a DEL after a
    /// failed ADD succeeds as the spec wants.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let owner = Owner::new(container_id, ifname)?;
        let _lock = match self.store.lock() {
            Ok(l) => l,
            Err(e) if e.is_read_only() => {
                return match self.store.read_index(&owner)? {
                    None => Ok(Vec::new()),
                    Some(_) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        self.release_locked(&owner)
    }

    fn release_locked(&mut self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        let Some(listed) = self.store.read_index(owner)? else {
            return Ok(Vec::new());
        };
        // The index may name addresses this owner never got (killed between
        // writing it and creating the records) and that someone else holds
        // now: those records stay.
        let owned = self.owned(owner, &listed)?;
        for ip in &owned {
            self.store.unreserve(*ip)?;
        }
        // Last, so a release killed midway leaves an index naming what is left.
        self.store.remove_index(owner)?;
        Ok(owned)
    }

    /// The addresses the attachment holds now (for CHECK).
    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let owner = Owner::new(container_id, ifname)?;
        let _lock = self.store.lock()?;
        match self.store.read_index(&owner)? {
            Some(listed) => self.owned(&owner, &listed),
            None => Ok(Vec::new()),
        }
    }

    /// Releases every attachment not in `valid` (pairs of container ID and
    /// ifname), including address records no index names, and sweeps debris
    /// of killed writers. Returns what was released.
    pub fn gc(&mut self, valid: &HashSet<(String, String)>) -> Result<Vec<Released>, IpamError> {
        let _lock = self.store.lock()?;
        self.store.sweep()?;
        let mut out: Vec<Released> = Vec::new();
        for owner in self.store.indexes()? {
            if owner.is_in(valid) {
                continue;
            }
            let addresses = self.release_locked(&owner)?;
            out.push(Released {
                owner: Some(owner),
                addresses,
            });
        }
        // Records left now are those of valid owners, and orphans: records
        // whose index is gone (removed by hand, or by a foreign tool) or
        // whose content names nobody.
        for ip in self.store.reserved()? {
            let owner = self.store.owner(ip)?;
            if owner.as_ref().is_some_and(|o| o.is_in(valid)) {
                continue;
            }
            self.store.unreserve(ip)?;
            match out.iter_mut().find(|r| r.owner == owner) {
                Some(r) => r.addresses.push(ip),
                None => out.push(Released {
                    owner,
                    addresses: vec![ip],
                }),
            }
        }
        Ok(out)
    }

    /// Capacity and use of each range set, and whether the store is
    /// writable. Walks the records (what is used), never the pool.
    pub fn status(&self) -> Result<Status, IpamError> {
        let _lock = self.store.lock()?;
        let reserved = self.store.reserved()?;
        let sets = self
            .range_sets
            .iter()
            .enumerate()
            .map(|(set, rs)| SetUsage {
                set,
                label: rs.label.clone(),
                ranges: rs.describe(),
                capacity: rs.allocatable(&self.gateways),
                used: reserved
                    .iter()
                    .filter(|ip| rs.contains(**ip) && !self.gateways.contains(ip))
                    .count() as u128,
            })
            .collect();
        Ok(Status {
            sets,
            writable: self.store.probe(),
        })
    }
}

#[cfg(test)]
mod tests;
