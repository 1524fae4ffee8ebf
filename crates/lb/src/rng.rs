//! A small random number generator shared by all requests without a lock: SplitMix64 over an
//! atomic counter. Seeded by the caller, so picks are reproducible in tests; not cryptographic,
//! and need not be (it only spreads load).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    pub fn next_u64(&self) -> u64 {
        let x = self.0.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed);
        mix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
    }

    /// Uniform in `0..n`; `n` must be above 0. Lemire's multiply-shift: the bias is below
    /// `n / 2^64`, far under anything a load spread can notice.
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// SplitMix64's finaliser, also a good 64-bit mixer for hashes.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of `bytes` that is the same on every node and release (unlike std's `DefaultHasher`),
/// so every node's balancer sends a key to the same endpoint: FNV-1a, then mixed.
pub fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let a = Rng::new(7);
        let b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let r = Rng::new(1);
        let mut seen = [0u32; 5];
        for _ in 0..5_000 {
            seen[r.below(5)] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn stable_hash_is_fixed() {
        // A changed value would move every consistent-hash key: keep it fixed.
        assert_eq!(stable_hash(0, b""), mix(0xcbf2_9ce4_8422_2325));
        assert_ne!(stable_hash(0, b"a"), stable_hash(1, b"a"));
    }
}
