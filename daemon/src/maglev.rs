//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016), with weights.
//!
//! Why Maglev: each node builds a service's lookup table on its own and the
//! BPF program picks `table[hash(flow) % M]`. If every node holds the same
//! table, a flow reaches the same backend whichever node it enters through,
//! without sharing connection state between nodes; and when one backend of N
//! comes or goes, only about 1/N of the table moves, so most established
//! flows keep their backend.
//!
//! Why everything here is pinned down: the table is a contract between
//! nodes, including nodes that run different daemon versions during an
//! upgrade. So the table depends only on the backends' keys and weights, the
//! size and the seed: the hash is written out here (`std`'s `DefaultHasher`
//! may change between Rust releases and `RandomState` differs per process),
//! backends are visited in key order (not in the caller's order), and the
//! `pinned_*` tests fail when the output changes. Changing the output is a
//! datapath compatibility break, not a refactoring.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Table size used unless a service needs more: prime (see [`table`]), and
/// more than 100 slots per backend up to 163 backends, which keeps every
/// backend's share within 1% of its fair share. 64 KiB as a BPF array of
/// `u32`.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// The seed every node uses unless the cluster configures another one; it
/// is the ASCII bytes of `"sluice:1"` read as a big-endian `u64`
/// (`0x736c_7569_6365_3a31`). All nodes of a cluster must use the same
/// seed. Changing it reshuffles every table, so it is fixed here rather
/// than derived from anything that could vary (time, host, process).
pub const DEFAULT_SEED: u64 = u64::from_be_bytes(*b"sluice:1");

/// One candidate backend of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// The backend's stable identity, e.g. `"10.0.0.5:8080/TCP"`. The table
    /// is a function of the keys, so the key must be spelled the same way on
    /// every node, and must not change while the backend lives (a new key
    /// is a new backend as far as flows are concerned).
    pub key: &'a str,
    /// Relative share of the table. Only ratios matter (1:2 and 10:20 give
    /// the same table). 0 keeps the backend out of the table, which lets a
    /// caller drain a backend without reindexing its slice.
    pub weight: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error(
        "Maglev table size {size} is not prime; use a prime such as 16381 or 65521, \
         otherwise some backends' preference lists skip most of the table"
    )]
    NotPrime { size: u32 },
    #[error(
        "Maglev table size {size} is too small for {backends} backends with a nonzero weight; \
         use a prime of at least {}, and preferably above {} (100 slots per backend) \
         to keep each backend's share within 1%",
        .backends.saturating_mul(2),
        .backends.saturating_mul(100)
    )]
    TooSmall { size: u32, backends: usize },
    #[error(
        "Maglev backend key {key:?} appears more than once; pass each backend once \
         (add up the weights of the duplicates) or give each its own key"
    )]
    DuplicateKey { key: String },
    #[error(
        "{backends} Maglev backends cannot be indexed by u32 table entries; \
         leave the weight-0 backends out of the slice"
    )]
    TooManyBackends { backends: usize },
}

/// Builds the Maglev lookup table of a service.
///
/// Returns `size` entries, each an index into `backends` (so the caller can
/// map it to whatever backend id its BPF maps use). Backends with weight 0
/// never appear. With no backend of nonzero weight the result is an empty
/// `Vec`: the service has nowhere to send traffic, which the caller must
/// handle (an empty table, not a table full of some sentinel).
///
/// The table depends only on the multiset of `(key, weight)` pairs, `size`
/// and `seed`: shuffling `backends` permutes the returned indexes but maps
/// every slot to the same key. Each backend gets its exact share
/// `size * weight / sum of weights` to within two slots plus N/M of that
/// share (with equal weights the counts differ by at most one), so shares
/// are within 1% once M >= 100 N. A backend whose share is under a slot
/// (weights 1 and 1,000,000 in a table of 16381) may get none.
///
/// Validation, and why:
/// - `size` must be prime, so that every skip `1..size` is coprime with it
///   and each backend's preference list visits every slot (the fill loop
///   relies on this to terminate). The size is checked even when there are
///   no backends, so a bad configuration shows up before the first endpoint.
/// - `size` must be at least twice the number of backends with a nonzero
///   weight. Below that some backends would get one slot and others two, a
///   2:1 imbalance no load balancer should ship; 100 times is needed for a
///   1% balance, but that is left to the caller (a service with 200
///   backends in the default table is better served slightly unevenly than
///   not at all).
/// - Keys must be unique, because the table is keyed by them: two entries
///   with one key have no defined order.
///
/// Cost: O(M log N) for the weighted turns plus the Maglev fill, which
/// probes O(M log M) slots in expectation; M = 16381 with 1,000 backends
/// takes about 10 ms in a debug build.
pub fn table(
    backends: &[MaglevBackend<'_>],
    size: u32,
    seed: u64,
) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime { size });
    }
    if u32::try_from(backends.len()).is_err() {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
        });
    }
    // Canonical order: `str`'s `Ord` compares bytes, so it is the same on
    // every node and every Rust version.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_unstable_by_key(|&i| backends[i].key);
    if let Some(pair) = order
        .windows(2)
        .find(|pair| backends[pair[0]].key == backends[pair[1]].key)
    {
        return Err(MaglevError::DuplicateKey {
            key: backends[pair[0]].key.to_owned(),
        });
    }
    order.retain(|&i| backends[i].weight > 0);
    if order.is_empty() {
        return Ok(Vec::new());
    }
    if u64::from(size) < 2 * order.len() as u64 {
        return Err(MaglevError::TooSmall {
            size,
            backends: order.len(),
        });
    }
    let m = u64::from(size);
    let (seed_offset, seed_skip) = hash_seeds(seed);
    let cursors = order
        .iter()
        .map(|&i| {
            let b = &backends[i];
            Cursor {
                index: i as u32,
                next: key_hash(b.key, seed_offset) % m,
                skip: key_hash(b.key, seed_skip) % (m - 1) + 1,
                weight: u64::from(b.weight),
                taken: 0,
            }
        })
        .collect();
    Ok(fill(cursors, size))
}

/// Where a backend is in its preference list, and how far it has got.
struct Cursor {
    /// Caller's index, the value written into the table.
    index: u32,
    /// Next slot of the preference list `offset + j * skip (mod M)`.
    next: u64,
    skip: u64,
    weight: u64,
    /// Slots taken so far.
    taken: u64,
}

/// The Maglev fill, weighted by credit (the idea Cilium uses, not its exact
/// arithmetic: these tables are not meant to match Cilium's): every round
/// each backend earns `weight` credit and takes one slot per `max_weight` of
/// credit, so the heaviest backend takes a slot every round and one of half
/// its weight every other round. Within a round backends take turns in
/// canonical order. The k-th slot of a backend is therefore taken in round
/// `ceil(k * max_weight / weight)`; a heap ordered by (round, canonical
/// rank) replays exactly those turns while skipping the rounds in which
/// light backends earn credit but take nothing, which keeps skewed weights
/// from costing O(M * N).
fn fill(mut cursors: Vec<Cursor>, size: u32) -> Vec<u32> {
    const EMPTY: u32 = u32::MAX; // never an index: `table` checked len <= u32::MAX
    let m = u64::from(size);
    let max_weight = cursors.iter().map(|c| c.weight).max().unwrap_or(1);
    // k <= M + 1 < 2^33 and max_weight < 2^32, so the product fits in u64.
    let round = |k: u64, weight: u64| (k * max_weight).div_ceil(weight);
    let mut turns: BinaryHeap<Reverse<(u64, usize)>> = cursors
        .iter()
        .enumerate()
        .map(|(rank, c)| Reverse((round(1, c.weight), rank)))
        .collect();

    let mut table = vec![EMPTY; size as usize];
    for _ in 0..size {
        let Reverse((_, rank)) = turns.pop().expect("every backend is always queued");
        let c = &mut cursors[rank];
        // Terminates: the list is a permutation of all slots (M prime) and
        // at least one slot is still empty.
        while table[c.next as usize] != EMPTY {
            c.next = (c.next + c.skip) % m;
        }
        table[c.next as usize] = c.index;
        c.next = (c.next + c.skip) % m;
        c.taken += 1;
        turns.push(Reverse((round(c.taken + 1, c.weight), rank)));
    }
    table
}

/// Trial division by 6k ± 1; at most ~11,000 divisions for a `u32`, and
/// table sizes are checked once per table, not per packet.
pub fn is_prime(n: u32) -> bool {
    let n = u64::from(n);
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// splitmix64's increment (2^64 / golden ratio).
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a 64 from a given basis: trivially portable and byte-order free,
/// but weak in the high bits for keys that differ only at the end (as
/// `10.0.0.5` and `10.0.0.6` do), hence [`fmix64`] after it.
fn fnv1a64(basis: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(basis, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// splitmix64's output function (Steele, Lea, Flood 2014): a bijection in
/// which every input bit flips about half of the output bits.
fn fmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seeds of the offset hash and the skip hash: the first two outputs of
/// splitmix64 started at `seed`. Two unrelated seeds make offset and skip
/// independent, which the paper's balance and disruption figures assume.
fn hash_seeds(seed: u64) -> (u64, u64) {
    (
        fmix64(seed.wrapping_add(GOLDEN_GAMMA)),
        fmix64(seed.wrapping_add(GOLDEN_GAMMA.wrapping_mul(2))),
    )
}

/// A key's 64-bit hash under one seed: FNV-1a with the seed folded into the
/// basis, then the splitmix64 finalizer.
fn key_hash(key: &str, seed: u64) -> u64 {
    fmix64(fnv1a64(FNV_OFFSET_BASIS ^ seed, key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn be(key: &str, weight: u32) -> MaglevBackend<'_> {
        MaglevBackend { key, weight }
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}:8080/TCP", i / 65536, (i / 256) % 256, i % 256))
            .collect()
    }

    fn equal(keys: &[String]) -> Vec<MaglevBackend<'_>> {
        keys.iter()
            .map(|k| MaglevBackend { key: k, weight: 1 })
            .collect()
    }

    /// The table with each entry replaced by its backend's key, which is
    /// what must agree between nodes and across backend changes.
    fn by_key<'a>(t: &[u32], backends: &[MaglevBackend<'a>]) -> Vec<&'a str> {
        t.iter().map(|&i| backends[i as usize].key).collect()
    }

    fn counts(t: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in t {
            c[i as usize] += 1;
        }
        c
    }

    fn changed(a: &[&str], b: &[&str]) -> usize {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    /// splitmix64, for shuffles that are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
            fmix64(self.0)
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                let j = (self.next() % (i as u64 + 1)) as usize;
                v.swap(i, j);
            }
        }
    }

    #[test]
    fn maglev_hash_primitives_match_published_vectors() {
        // FNV-1a 64 test vectors (Fowler/Noll/Vo reference).
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        // splitmix64 seeded with 0: first two outputs of the reference.
        assert_eq!(
            hash_seeds(0),
            (0xe220_a839_7b1d_cdaf, 0x6e78_9e6a_a1b9_65f4)
        );
        assert_eq!(DEFAULT_SEED, 0x736c_7569_6365_3a31);
    }

    #[test]
    fn maglev_is_prime_known_values() {
        for p in [
            2,
            3,
            5,
            7,
            13,
            10_007,
            16_381,
            65_521,
            65_537,
            4_294_967_291,
        ] {
            assert!(is_prime(p), "{p} is prime");
        }
        // 16383 = 3 * 43 * 127; 65521^2 has no factor below 65521;
        // u32::MAX = 3 * 5 * 17 * 257 * 65537.
        for c in [0, 1, 4, 9, 25, 49, 16_383, 65_535, 4_293_001_441, u32::MAX] {
            assert!(!is_prime(c), "{c} is not prime");
        }
        // Against a sieve for every n below 20,000.
        let n = 20_000;
        let mut sieve = vec![true; n];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..n {
            if sieve[i] {
                for j in (i * i..n).step_by(i) {
                    sieve[j] = false;
                }
            }
        }
        for (i, &p) in sieve.iter().enumerate() {
            assert_eq!(is_prime(i as u32), p, "is_prime({i})");
        }
        assert!(is_prime(DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn maglev_errors() {
        let k = keys(3);
        let b = equal(&k);
        assert_eq!(
            table(&b, 16_383, DEFAULT_SEED),
            Err(MaglevError::NotPrime { size: 16_383 })
        );
        assert_eq!(
            table(&b, 0, DEFAULT_SEED),
            Err(MaglevError::NotPrime { size: 0 })
        );
        assert_eq!(
            table(&b, 1, DEFAULT_SEED),
            Err(MaglevError::NotPrime { size: 1 })
        );
        // The size is checked even with nothing to put in the table.
        assert_eq!(
            table(&[], 100, DEFAULT_SEED),
            Err(MaglevError::NotPrime { size: 100 })
        );
        // 3 backends need at least 6 slots; 5 is prime but too small, 7 is enough.
        assert_eq!(
            table(&b, 5, DEFAULT_SEED),
            Err(MaglevError::TooSmall {
                size: 5,
                backends: 3
            })
        );
        assert_eq!(table(&b, 7, DEFAULT_SEED).unwrap().len(), 7);
        // Weight-0 backends do not count towards the minimum.
        let mut drained = b.clone();
        drained[0].weight = 0;
        assert_eq!(table(&drained, 5, DEFAULT_SEED).unwrap().len(), 5);
        // Duplicates are found wherever they are, weight 0 or not.
        let mut dup = b.clone();
        dup.push(MaglevBackend {
            key: &k[1],
            weight: 0,
        });
        assert_eq!(
            table(&dup, DEFAULT_TABLE_SIZE, DEFAULT_SEED),
            Err(MaglevError::DuplicateKey { key: k[1].clone() })
        );
        let msg = MaglevError::TooSmall {
            size: 5,
            backends: 3,
        }
        .to_string();
        assert!(
            msg.contains("at least 6") && msg.contains("above 300"),
            "{msg}"
        );
    }

    #[test]
    fn maglev_empty_inputs_give_empty_tables() {
        assert_eq!(table(&[], DEFAULT_TABLE_SIZE, DEFAULT_SEED), Ok(vec![]));
        let k = keys(4);
        let zero: Vec<_> = k
            .iter()
            .map(|k| MaglevBackend { key: k, weight: 0 })
            .collect();
        assert_eq!(table(&zero, DEFAULT_TABLE_SIZE, DEFAULT_SEED), Ok(vec![]));
    }

    #[test]
    fn maglev_shares_are_even() {
        let mut worst: f64 = 0.0;
        for (n, m) in [
            (1, 16_381),
            (2, 16_381),
            (3, 16_381),
            (7, 16_381),
            (10, 16_381),
            (50, 16_381),
            (100, 16_381),
            (100, 10_007),
            (163, 16_381),
        ] {
            let k = keys(n);
            let t = table(&equal(&k), m, DEFAULT_SEED).unwrap();
            assert_eq!(t.len(), m as usize);
            let c = counts(&t, n);
            let (lo, hi) = (m as usize / n, (m as usize).div_ceil(n));
            for (i, &ci) in c.iter().enumerate() {
                let dev = (ci as f64 / f64::from(m) - 1.0 / n as f64).abs();
                worst = worst.max(dev);
                assert!(dev <= 0.01, "N={n} M={m}: backend {i} has {ci} slots");
                // Stronger, and what the turn-taking guarantees: counts
                // differ by at most one.
                assert!(
                    (lo..=hi).contains(&ci),
                    "N={n} M={m}: backend {i} has {ci} slots"
                );
            }
        }
        println!("worst share deviation |count/M - 1/N|: {worst:.6}");
    }

    #[test]
    fn maglev_weights_are_proportional() {
        let k = keys(60);
        let m = DEFAULT_TABLE_SIZE;
        // 20 of weight 1, 20 of weight 2, 10 of weight 3, 10 of weight 0.
        let weight = |i: usize| match i % 6 {
            0 | 1 => 1,
            2 | 3 => 2,
            4 => 3,
            _ => 0,
        };
        let b: Vec<_> = k
            .iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k,
                weight: weight(i),
            })
            .collect();
        let t = table(&b, m, DEFAULT_SEED).unwrap();
        let c = counts(&t, b.len());
        let sum: u32 = b.iter().map(|b| b.weight).sum();
        let mut worst: f64 = 0.0;
        let mut per_weight = [0usize; 4];
        for (i, bi) in b.iter().enumerate() {
            per_weight[bi.weight as usize] += c[i];
            let dev = (c[i] as f64 / f64::from(m) - f64::from(bi.weight) / f64::from(sum)).abs();
            worst = worst.max(dev);
            assert!(
                dev <= 0.01,
                "backend {i} (weight {}) has {} slots",
                bi.weight,
                c[i]
            );
        }
        assert_eq!(per_weight[0], 0, "weight 0 must get no slot");
        // Per slot of weight: weight-2 and weight-3 backends get 2x and 3x
        // what weight-1 backends get, within 1%.
        let per_unit = per_weight[1] as f64 / 20.0;
        let ratio2 = per_weight[2] as f64 / 20.0 / per_unit;
        let ratio3 = per_weight[3] as f64 / 10.0 / per_unit;
        assert!(
            (ratio2 - 2.0).abs() <= 0.02,
            "weight 2 : weight 1 = {ratio2}"
        );
        assert!(
            (ratio3 - 3.0).abs() <= 0.03,
            "weight 3 : weight 1 = {ratio3}"
        );

        // Two backends, 1:2.
        let two = [be("a", 1), be("b", 2)];
        let c2 = counts(&table(&two, m, DEFAULT_SEED).unwrap(), 2);
        let ratio = c2[1] as f64 / c2[0] as f64;
        assert!((ratio - 2.0).abs() <= 0.02, "2 backends 1:2 got {c2:?}");
        println!(
            "weights: worst share deviation {worst:.6}; 2:1 = {ratio2:.4}, 3:1 = {ratio3:.4}; \
             a:b (1:2) = {c2:?}"
        );
    }

    #[test]
    fn maglev_weighted_counts_meet_the_documented_bound() {
        // `table`'s doc: within two slots plus N/M of the exact share.
        let k = keys(40);
        let mut rng = Rng(7);
        for m in [1009, 16_381] {
            for _ in 0..20 {
                let b: Vec<_> = k
                    .iter()
                    .map(|k| be(k, (rng.next() % 100) as u32 + 1))
                    .collect();
                let c = counts(&table(&b, m, DEFAULT_SEED).unwrap(), b.len());
                let sum: f64 = b.iter().map(|b| f64::from(b.weight)).sum();
                for (bi, &ci) in b.iter().zip(&c) {
                    let exact = f64::from(m) * f64::from(bi.weight) / sum;
                    let slack = 2.0 + exact * b.len() as f64 / f64::from(m);
                    assert!(
                        (ci as f64 - exact).abs() <= slack,
                        "M={m} weight {}: {ci} slots, exact share {exact:.1}",
                        bi.weight
                    );
                }
            }
        }
    }

    #[test]
    fn maglev_only_weight_ratios_matter() {
        let k = keys(5);
        let b1: Vec<_> = k
            .iter()
            .zip([1, 2, 3, 1, 5])
            .map(|(k, w)| MaglevBackend { key: k, weight: w })
            .collect();
        let b10: Vec<_> = b1
            .iter()
            .map(|b| MaglevBackend {
                weight: b.weight * 10,
                ..*b
            })
            .collect();
        assert_eq!(
            table(&b1, 1009, DEFAULT_SEED),
            table(&b10, 1009, DEFAULT_SEED)
        );
        // Equal weights of any value are the unweighted table.
        let b7: Vec<_> = k
            .iter()
            .map(|k| MaglevBackend { key: k, weight: 7 })
            .collect();
        assert_eq!(
            table(&b7, 1009, DEFAULT_SEED),
            table(&equal(&k), 1009, DEFAULT_SEED)
        );
    }

    #[test]
    fn maglev_skewed_weights_terminate_and_are_fast() {
        // The heavy backend takes a slot every round and the light ones
        // would earn their first slot in round 2^32 - 1: simulated round by
        // round this is M rounds of N backends, with the turn queue it is M
        // turns.
        let k = keys(1000);
        let mut b = equal(&k);
        b[0].weight = u32::MAX;
        let start = Instant::now();
        let t = table(&b, DEFAULT_TABLE_SIZE, DEFAULT_SEED).unwrap();
        let took = start.elapsed();
        let c = counts(&t, b.len());
        // Its share is (2^32 - 1) / (2^32 - 1 + 999): all but a slot or so.
        assert!(c[0] >= t.len() - 1, "heavy backend got {} slots", c[0]);
        println!("weights u32::MAX + 999 x 1, M=16381: {took:?}");
        assert!(took.as_secs_f64() < 2.0, "{took:?}");
    }

    #[test]
    fn maglev_same_inputs_same_table_in_any_order() {
        let k = keys(50);
        let mut b: Vec<_> = k
            .iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k,
                weight: (i % 4) as u32,
            })
            .collect();
        let first = table(&b, DEFAULT_TABLE_SIZE, DEFAULT_SEED).unwrap();
        assert_eq!(table(&b, DEFAULT_TABLE_SIZE, DEFAULT_SEED).unwrap(), first);
        let want = by_key(&first, &b);
        let mut rng = Rng(1);
        for _ in 0..5 {
            rng.shuffle(&mut b);
            let t = table(&b, DEFAULT_TABLE_SIZE, DEFAULT_SEED).unwrap();
            assert_eq!(by_key(&t, &b), want);
        }
        // Weight-0 backends are as good as absent.
        let live: Vec<_> = b.iter().filter(|b| b.weight > 0).cloned().collect();
        let t = table(&live, DEFAULT_TABLE_SIZE, DEFAULT_SEED).unwrap();
        assert_eq!(by_key(&t, &live), want);
        // And the seed matters (otherwise it would not be a seed).
        let other = table(&b, DEFAULT_TABLE_SIZE, DEFAULT_SEED ^ 1).unwrap();
        assert!(changed(&by_key(&other, &b), &want) > want.len() / 2);
    }

    /// How many slots may change key when one of `n` backends leaves (or,
    /// read backwards, joins): its own share, which must move, plus 2% of
    /// M. Not 1%: Maglev moves some slots between the remaining backends
    /// too, because their turns shift. Measured over 300 seeds at M = 16381
    /// that extra is on average 0.5% of M for N = 10, 1.0% for N = 50, 1.3%
    /// for N = 100 and 1.6% for N = 163 (M/N = 100), exactly what the same
    /// fill gives with truly random offsets and skips, so it belongs to
    /// the algorithm, not to the hash. A rare seed does worse (two backends
    /// that draw the same skip, probability ~N^2/2M), so the bound holds
    /// for `DEFAULT_SEED` and these keys, not for every seed.
    fn churn_bound(m: u32, n: usize) -> usize {
        (m as usize).div_ceil(n) + m as usize / 50
    }

    #[test]
    fn maglev_removing_a_backend_moves_about_one_nth() {
        let m = DEFAULT_TABLE_SIZE;
        let mut worst: f64 = 0.0; // moved slots beyond M/N, as a fraction of M
        for n in [2, 3, 5, 10, 20, 50, 100, 163] {
            let k = keys(n);
            let all = equal(&k);
            let before = table(&all, m, DEFAULT_SEED).unwrap();
            // The first, middle and last backend in canonical order.
            let mut sorted: Vec<usize> = (0..n).collect();
            sorted.sort_by_key(|&i| &k[i]);
            for gone in [sorted[0], sorted[n / 2], sorted[n - 1]] {
                let rest: Vec<_> = (0..n)
                    .filter(|&i| i != gone)
                    .map(|i| all[i].clone())
                    .collect();
                let after = table(&rest, m, DEFAULT_SEED).unwrap();
                let moved = changed(&by_key(&before, &all), &by_key(&after, &rest));
                let own = counts(&before, n)[gone];
                assert!(moved >= own, "the departed backend's slots must all move");
                worst = worst.max((moved - own) as f64 / f64::from(m));
                let bound = churn_bound(m, n);
                assert!(
                    moved <= bound,
                    "N={n}, without #{gone}: {moved} of {m} slots moved, bound {bound}"
                );
            }
        }
        println!("removing: worst extra churn beyond the departed share: {worst:.4} of M");
    }

    #[test]
    fn maglev_adding_a_backend_moves_about_one_nth() {
        // As the daemon would see it: a new key appended to the slice.
        let m = DEFAULT_TABLE_SIZE;
        let mut worst: f64 = 0.0;
        for n in [1, 2, 4, 9, 19, 49, 99, 162] {
            let k = keys(n + 1);
            let before_b = equal(&k[..n]);
            let after_b = equal(&k);
            let before = table(&before_b, m, DEFAULT_SEED).unwrap();
            let after = table(&after_b, m, DEFAULT_SEED).unwrap();
            let moved = changed(&by_key(&before, &before_b), &by_key(&after, &after_b));
            let gained = counts(&after, n + 1)[n];
            assert!(moved >= gained, "the new backend's slots must all change");
            worst = worst.max((moved - gained) as f64 / f64::from(m));
            let bound = churn_bound(m, n + 1);
            assert!(
                moved <= bound,
                "{n} -> {}: {moved} of {m} slots moved, bound {bound}",
                n + 1
            );
        }
        println!("adding: worst extra churn beyond the new backend's share: {worst:.4} of M");
    }

    #[test]
    fn maglev_1000_backends_timing() {
        let k = keys(1000);
        let b = equal(&k);
        let start = Instant::now();
        let t = table(&b, DEFAULT_TABLE_SIZE, DEFAULT_SEED).unwrap();
        let took = start.elapsed();
        assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
        println!("N=1000, M=16381: {took:?}");
        // Generous so it never flakes on a loaded CI runner in a debug build.
        assert!(took.as_secs_f64() < 2.0, "{took:?}");
    }

    // PINNED OUTPUT. These tables are what every node computes today. If
    // one of these tests fails, the hash or the fill order changed, and a
    // node running the new code would disagree with nodes running the old
    // code during a rolling upgrade, sending the same flow to different
    // backends depending on the node it enters through. Do not update the
    // expected values to make the test pass unless that break is intended
    // and planned (e.g. a new table format version). The values were
    // checked against a separate Python implementation of this file's
    // description (credit rounds simulated one by one, no heap).

    #[test]
    fn pinned_small_table() {
        let b = [be("a", 1), be("b", 1), be("c", 1)];
        assert_eq!(table(&b, 13, DEFAULT_SEED).unwrap(), PINNED_ABC_13);
    }

    #[test]
    fn pinned_default_size_prefix() {
        let k = keys(5);
        let t = table(&equal(&k), DEFAULT_TABLE_SIZE, DEFAULT_SEED).unwrap();
        assert_eq!(t[..16], PINNED_5_DEFAULT_16);
    }

    #[test]
    fn pinned_weighted_table() {
        let b = [
            be("10.0.0.5:8080/TCP", 3),
            be("10.0.0.6:8080/TCP", 1),
            be("10.0.0.7:8080/TCP", 0),
            be("10.0.0.8:8080/TCP", 2),
        ];
        assert_eq!(table(&b, 17, DEFAULT_SEED).unwrap(), PINNED_WEIGHTED_17);
    }

    const PINNED_ABC_13: [u32; 13] = [0, 1, 0, 2, 0, 2, 1, 2, 1, 0, 2, 1, 0];
    const PINNED_5_DEFAULT_16: [u32; 16] = [2, 2, 2, 2, 2, 4, 1, 4, 3, 4, 4, 0, 0, 1, 0, 3];
    const PINNED_WEIGHTED_17: [u32; 17] = [3, 3, 0, 0, 3, 0, 1, 0, 1, 0, 3, 0, 0, 1, 3, 0, 0];
}
