//! Sluice's IPAM: host-local's configuration and behaviour, with a store
//! that stays correct when a plugin process is killed at any instant and
//! whose cost does not grow with the pool.
//!
//! * [`config`]: the `ipam` object (ranges, range sets, routes, dataDir).
//! * [`store`]: the [`Store`](store::Store) primitives, the on-disk
//!   [`DiskStore`](store::DiskStore) and the in-memory
//!   [`MemStore`](store::MemStore).
//! * [`allocator`]: allocate, release, look up, GC and usage over any store.
//! * [`plugin`]: the standalone `sluice-ipam` CNI plugin.
//! * [`error`]: the library's error and its CNI error codes.

mod addr;
pub mod allocator;
pub mod config;
pub mod error;
pub mod plugin;
pub mod store;

pub use allocator::{Allocation, Allocator, Released, SetUsage, Status};
pub use config::{IpamConfig, Range, RangeSet, DEFAULT_DATA_DIR};
pub use error::IpamError;
pub use store::{DiskStore, MemStore, Owner, Store};
