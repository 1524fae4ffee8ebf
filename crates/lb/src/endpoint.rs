//! Endpoints: what the caller says about each one ([`Endpoint`]) and what the balancer keeps
//! about it while it is in a set ([`Backend`]: in-flight count, ejection, counters).
//!
//! A `Backend` is shared by every set it is part of and by the requests it serves, so an update
//! of the set keeps its in-flight count and ejection, and a request still running on an endpoint
//! that left finishes on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use hyper::http::uri::Authority;
use serde::Serialize;

use crate::clock::Nanos;
use crate::counters::Counters;

/// Weights above this are taken as this, so a weighted schedule stays small.
pub const MAX_WEIGHT: u32 = 1_000;

/// One endpoint of a service, as the caller knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable name (a task id, say): an endpoint keeps its state across updates by its id and
    /// address.
    pub id: String,
    pub addr: SocketAddr,
    /// Share of traffic under `weighted_round_robin`, 1 to [`MAX_WEIGHT`]; 0 is taken as 1.
    pub weight: u32,
    pub state: EndpointState,
}

impl Endpoint {
    /// A ready endpoint of weight 1.
    pub fn ready(id: impl Into<String>, addr: SocketAddr) -> Endpoint {
        Endpoint {
            id: id.into(),
            addr,
            weight: 1,
            state: EndpointState::Ready,
        }
    }
}

/// What the caller says about an endpoint. Ejection is the balancer's own verdict and is kept
/// apart ([`Health::Ejected`] in snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Gets new requests.
    Ready,
    /// Gets no new requests; those in flight finish.
    Draining,
}

/// How an endpoint stands right now, for snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ready,
    Ejected,
    Draining,
}

/// The balancer's live record of one endpoint.
#[derive(Debug)]
pub struct Backend {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    /// `addr` as a URI authority, made once so a request's URI costs no formatting.
    pub(crate) authority: Authority,
    weight: AtomicU32,
    state: AtomicU8,
    in_flight: AtomicU64,
    /// When the current ejection ends, in [`Nanos`]; 0 when it was never ejected.
    ejected_until: AtomicU64,
    /// Ejections since the last success: each one lasts twice the one before.
    ejections_in_a_row: AtomicU32,
    pub(crate) counters: Counters,
}

const READY: u8 = 0;
const DRAINING: u8 = 1;

impl Backend {
    pub(crate) fn new(endpoint: &Endpoint) -> Backend {
        let backend = Backend {
            id: endpoint.id.clone(),
            addr: endpoint.addr,
            authority: authority(endpoint.addr),
            weight: AtomicU32::new(1),
            state: AtomicU8::new(READY),
            in_flight: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            ejections_in_a_row: AtomicU32::new(0),
            counters: Counters::default(),
        };
        backend.set(endpoint);
        backend
    }

    /// Takes the caller's weight and state.
    pub(crate) fn set(&self, endpoint: &Endpoint) {
        self.weight
            .store(endpoint.weight.clamp(1, MAX_WEIGHT), Relaxed);
        let state = match endpoint.state {
            EndpointState::Ready => READY,
            EndpointState::Draining => DRAINING,
        };
        self.state.store(state, Relaxed);
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.state.load(Relaxed) == DRAINING
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn is_ejected(&self, now: Nanos) -> bool {
        self.ejected_until.load(Relaxed) > now.0
    }

    /// Ready and not ejected: may get a new request.
    pub(crate) fn is_available(&self, now: Nanos) -> bool {
        !self.is_draining() && !self.is_ejected(now)
    }

    pub(crate) fn health(&self, now: Nanos) -> Health {
        if self.is_draining() {
            Health::Draining
        } else if self.is_ejected(now) {
            Health::Ejected
        } else {
            Health::Ready
        }
    }

    pub(crate) fn start_request(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn end_request(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn ejections_in_a_row(&self) -> u32 {
        self.ejections_in_a_row.load(Relaxed)
    }

    /// Ejects until `until`; the caller holds the balancer's ejection lock.
    pub(crate) fn eject_until(&self, until: Nanos) {
        self.ejected_until.store(until.0, Relaxed);
        self.ejections_in_a_row.fetch_add(1, Relaxed);
        self.counters.note_ejection();
    }

    /// A request succeeded: the next ejection, if any, starts again from the base time. A
    /// success of a request sent before a current ejection does not count.
    pub(crate) fn note_success(&self, now: Nanos) {
        if self.ejections_in_a_row.load(Relaxed) != 0 && !self.is_ejected(now) {
            self.ejections_in_a_row.store(0, Relaxed);
        }
    }
}

fn authority(addr: SocketAddr) -> Authority {
    // A socket address always formats as a valid authority (`1.2.3.4:80`, `[::1]:80`).
    Authority::try_from(addr.to_string().as_str())
        .unwrap_or_else(|_| Authority::from_static("invalid.invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_v4_and_v6_addresses() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(authority(v4).as_str(), "127.0.0.1:8080");
        assert_eq!(authority(v6).as_str(), "[::1]:80");
    }

    #[test]
    fn weights_are_clamped() {
        let mut e = Endpoint::ready("a", "127.0.0.1:1".parse().unwrap());
        e.weight = 0;
        assert_eq!(Backend::new(&e).weight(), 1);
        e.weight = u32::MAX;
        assert_eq!(Backend::new(&e).weight(), MAX_WEIGHT);
    }

    #[test]
    fn a_success_during_an_ejection_keeps_the_doubling() {
        let b = Backend::new(&Endpoint::ready("a", "127.0.0.1:1".parse().unwrap()));
        b.eject_until(Nanos(100));
        b.note_success(Nanos(50));
        assert_eq!(b.ejections_in_a_row(), 1);
        b.note_success(Nanos(100));
        assert_eq!(b.ejections_in_a_row(), 0);
        assert!(b.is_available(Nanos(100)));
    }
}
