//! Counters of a listener and of each endpoint, kept in atomics on the request path and read as
//! plain [`Snapshot`]s (serde) for `outpost services` and a metrics endpoint.
//!
//! A listener counts its clients' requests (a TCP connection is one request); an endpoint counts
//! the attempts sent to it, so a retried request is one request of the listener and one of each
//! endpoint it tried. Latency is measured to the response head (to the connection for TCP).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use crate::endpoint::Health;

/// Upper bounds of the latency buckets, in microseconds: from loopback's tenths of a
/// millisecond to a slow backend's seconds. One more bucket counts everything slower.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    ejections: AtomicU64,
    in_flight: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

impl Counters {
    pub fn start(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub fn note_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    pub fn note_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub fn note_ejection(&self) {
        self.ejections.fetch_add(1, Relaxed);
    }

    pub fn note_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.latency[bucket].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
            retries: self.retries.load(Relaxed),
            ejections: self.ejections.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            latency: Histogram {
                le_us: LATENCY_BUCKETS_US.to_vec(),
                counts: self.latency.iter().map(|c| c.load(Relaxed)).collect(),
            },
        }
    }
}

/// A listener's counters and its endpoints'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub listener: CountersSnapshot,
    /// In the order of the last update.
    pub endpoints: Vec<EndpointSnapshot>,
}

impl Snapshot {
    pub fn endpoint(&self, id: &str) -> Option<&EndpointSnapshot> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSnapshot {
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: Health,
    pub counters: CountersSnapshot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    pub requests: u64,
    /// Failed requests: for a listener, those answered with a 5xx or cut off; for an endpoint,
    /// attempts that failed (no connection, a reset, not HTTP, a 5xx).
    pub errors: u64,
    /// Retries made (a listener) or received (an endpoint).
    pub retries: u64,
    /// Times an endpoint was ejected; a listener counts its endpoints'.
    pub ejections: u64,
    pub in_flight: u64,
    pub latency: Histogram,
}

/// Counts of latencies up to each bound (`counts[i]` for at most `le_us[i]` and more than the
/// bound before); the last count is of those above every bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Histogram {
    pub le_us: Vec<u64>,
    pub counts: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets() {
        let c = Counters::default();
        c.note_latency(Duration::from_micros(100));
        c.note_latency(Duration::from_micros(101));
        c.note_latency(Duration::from_secs(60));
        let h = c.snapshot().latency;
        assert_eq!(h.counts.len(), h.le_us.len() + 1);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[h.le_us.len()], 1);
    }
}
