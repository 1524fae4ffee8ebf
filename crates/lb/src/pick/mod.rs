//! Picking an endpoint: pure functions of the endpoint set, the request's key and a seeded
//! random number generator, one file per algorithm. Nothing here does I/O or reads a clock; the
//! caller says which endpoints may be picked (ready, not ejected, not tried yet).

mod least_connections;
mod maglev;
mod p2c;
mod round_robin;
mod weighted;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use hyper::http::HeaderName;

use crate::endpoint::Backend;
use crate::rng::{Rng, stable_hash};

/// The client's address as it is meant: an IPv4 client of a dual-stack listener shows as an
/// IPv4-mapped IPv6 address.
pub(crate) fn client_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The consistent-hash key of a client address.
pub(crate) fn ip_key(ip: IpAddr) -> u64 {
    match client_ip(ip) {
        IpAddr::V4(v4) => stable_hash(0, &v4.octets()),
        IpAddr::V6(v6) => stable_hash(0, &v6.octets()),
    }
}

/// How a listener spreads requests over its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// In turn, as often as each endpoint's weight, spread smoothly (nginx's algorithm).
    WeightedRoundRobin,
    /// The endpoint with the fewest requests in flight; ties in turn.
    LeastConnections,
    /// The same key always to the same endpoint while it is there (Maglev).
    ConsistentHash(HashKey),
    /// The less busy of two endpoints picked at random.
    P2c,
}

/// What a consistent hash is taken over. A request without the header or cookie is hashed by
/// its client's IP address; a TCP connection always is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashKey {
    #[default]
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

/// An algorithm with what it precomputed for one endpoint set.
#[derive(Debug)]
pub(crate) struct Picker {
    kind: Kind,
    cursor: AtomicUsize,
}

#[derive(Debug)]
enum Kind {
    RoundRobin,
    Weighted(weighted::Schedule),
    LeastConnections,
    Maglev(maglev::Table),
    P2c,
}

impl Picker {
    pub fn new(algorithm: &Algorithm, backends: &[Arc<Backend>]) -> Picker {
        let kind = match algorithm {
            Algorithm::RoundRobin => Kind::RoundRobin,
            Algorithm::WeightedRoundRobin => {
                let weights: Vec<u32> = backends
                    .iter()
                    .map(|b| if b.is_draining() { 0 } else { b.weight() })
                    .collect();
                Kind::Weighted(weighted::Schedule::new(&weights))
            }
            Algorithm::LeastConnections => Kind::LeastConnections,
            Algorithm::ConsistentHash(_) => Kind::Maglev(maglev::Table::new(
                backends.iter().map(|b| (b.id(), !b.is_draining())),
            )),
            Algorithm::P2c => Kind::P2c,
        };
        Picker {
            kind,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The index of the endpoint for a request of hash `key` (used by consistent hashing only),
    /// among those `eligible`; `None` when none is.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        key: u64,
        rng: &Rng,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        let in_flight = |i: usize| backends[i].in_flight();
        match &self.kind {
            Kind::RoundRobin => round_robin::pick(n, &self.cursor, eligible),
            Kind::Weighted(schedule) => {
                schedule.pick(&self.cursor, rng, |i| backends[i].weight(), n, eligible)
            }
            Kind::LeastConnections => least_connections::pick(n, &self.cursor, in_flight, eligible),
            Kind::Maglev(table) => table.pick(key, n, eligible),
            Kind::P2c => p2c::pick(n, rng, in_flight, eligible),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Endpoint, EndpointState};
    use crate::rng::mix;
    use proptest::prelude::{ProptestConfig, any, prop, prop_assert, prop_assert_eq, proptest};

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Arc::new(Backend::new(&Endpoint {
                    id: format!("e{i}"),
                    addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                    weight,
                    state: EndpointState::Ready,
                }))
            })
            .collect()
    }

    fn counts(algorithm: &Algorithm, weights: &[u32], picks: usize, seed: u64) -> Vec<usize> {
        let b = backends(weights);
        let picker = Picker::new(algorithm, &b);
        let rng = Rng::new(seed);
        let mut seen = vec![0; b.len()];
        for k in 0..picks {
            let i = picker.pick(&b, mix(k as u64), &rng, |_| true).unwrap();
            seen[i] += 1;
        }
        seen
    }

    proptest! {
        // A case may build Maglev tables and make thousands of picks: fewer cases do.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_robin_is_exactly_even(n in 1usize..20, rounds in 1usize..50) {
            let seen = counts(&Algorithm::RoundRobin, &vec![1; n], n * rounds, 0);
            prop_assert!(seen.iter().all(|&c| c == rounds), "{:?}", seen);
        }

        #[test]
        fn weighted_follows_the_weights(weights in prop::collection::vec(1u32..20, 1..8)) {
            let total: u32 = weights.iter().sum();
            let rounds = 20;
            let seen = counts(&Algorithm::WeightedRoundRobin, &weights, (total * rounds) as usize, 0);
            for (w, c) in weights.iter().zip(&seen) {
                prop_assert_eq!(*c as u32, w * rounds, "{:?} gave {:?}", weights, seen);
            }
        }

        #[test]
        fn p2c_and_hashing_spread_evenly(n in 2usize..8, seed in any::<u64>()) {
            let picks = 4_000 * n;
            for algorithm in [Algorithm::P2c, Algorithm::ConsistentHash(HashKey::ClientIp)] {
                let seen = counts(&algorithm, &vec![1; n], picks, seed);
                let fair = (picks / n) as f64;
                for &c in &seen {
                    // Five standard deviations of a binomial share, and Maglev's 1% slot skew.
                    let tolerance = 5.0 * fair.sqrt() + fair * 0.02;
                    prop_assert!((c as f64 - fair).abs() < tolerance, "{:?}: {:?}", algorithm, seen);
                }
            }
        }

        #[test]
        fn only_eligible_endpoints_are_picked(
            n in 1usize..10,
            mask in any::<u16>(),
            seed in any::<u64>(),
        ) {
            let b = backends(&vec![1; n]);
            let eligible = |i: usize| mask & (1 << i) != 0;
            let any_eligible = (0..n).any(eligible);
            for algorithm in [
                Algorithm::RoundRobin,
                Algorithm::WeightedRoundRobin,
                Algorithm::LeastConnections,
                Algorithm::ConsistentHash(HashKey::ClientIp),
                Algorithm::P2c,
            ] {
                let picker = Picker::new(&algorithm, &b);
                let rng = Rng::new(seed);
                for k in 0..20u64 {
                    let picked = picker.pick(&b, mix(k ^ seed), &rng, eligible);
                    prop_assert_eq!(picked.is_some(), any_eligible);
                    prop_assert!(picked.is_none_or(eligible));
                }
            }
        }
    }

    #[test]
    fn least_connections_and_p2c_avoid_the_busy_one() {
        let b = backends(&[1, 1]);
        b[0].start_request();
        b[0].start_request();
        let rng = Rng::new(5);
        for algorithm in [Algorithm::LeastConnections, Algorithm::P2c] {
            let picker = Picker::new(&algorithm, &b);
            for _ in 0..20 {
                assert_eq!(picker.pick(&b, 0, &rng, |_| true), Some(1), "{algorithm:?}");
            }
        }
    }

    #[test]
    fn same_seed_same_picks() {
        let a = counts(&Algorithm::P2c, &[1, 1, 1], 300, 42);
        let b = counts(&Algorithm::P2c, &[1, 1, 1], 300, 42);
        assert_eq!(a, b);
    }
}
