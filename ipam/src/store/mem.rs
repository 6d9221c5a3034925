use super::{Owner, Store};
use crate::error::IpamError;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// A [`Store`] in memory, for tests of the allocation logic. Exclusive
/// access through `&mut` stands in for the lock.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    records: BTreeMap<IpAddr, Owner>,
    indexes: BTreeMap<Owner, Vec<IpAddr>>,
    last: HashMap<usize, IpAddr>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    type Guard = ();

    fn lock(&self) -> Result<(), IpamError> {
        Ok(())
    }

    fn is_reserved(&self, ip: IpAddr) -> Result<bool, IpamError> {
        Ok(self.records.contains_key(&ip))
    }

    fn owner(&self, ip: IpAddr) -> Result<Option<Owner>, IpamError> {
        Ok(self.records.get(&ip).cloned())
    }

    fn reserve(&mut self, ip: IpAddr, owner: &Owner) -> Result<bool, IpamError> {
        if self.records.contains_key(&ip) {
            return Ok(false);
        }
        self.records.insert(ip, owner.clone());
        Ok(true)
    }

    fn unreserve(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        self.records.remove(&ip);
        Ok(())
    }

    fn reserved(&self) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self.records.keys().copied().collect())
    }

    fn read_index(&self, owner: &Owner) -> Result<Option<Vec<IpAddr>>, IpamError> {
        Ok(self.indexes.get(owner).cloned())
    }

    fn write_index(&mut self, owner: &Owner, ips: &[IpAddr]) -> Result<(), IpamError> {
        self.indexes.insert(owner.clone(), ips.to_vec());
        Ok(())
    }

    fn remove_index(&mut self, owner: &Owner) -> Result<(), IpamError> {
        self.indexes.remove(owner);
        Ok(())
    }

    fn indexes(&self) -> Result<Vec<Owner>, IpamError> {
        Ok(self.indexes.keys().cloned().collect())
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.last.get(&set).copied())
    }

    fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        self.last.insert(set, ip);
        Ok(())
    }

    fn sweep(&mut self) -> Result<(), IpamError> {
        Ok(())
    }

    fn probe(&self) -> Result<(), IpamError> {
        Ok(())
    }
}
