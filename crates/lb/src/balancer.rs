//! The [`Balancer`]: one listener's endpoint set, algorithm, outlier detection, retry budget and
//! counters. The proxies ask it for an endpoint ([`Balancer::pick`]) and tell it how the attempt
//! went ([`Lease::succeeded`], [`Lease::failed`]); the caller feeds it endpoint sets
//! ([`Balancer::update`]) and reads [`Balancer::snapshot`].
//!
//! The set is swapped whole: a pick clones the current `Arc` under a read lock held for just
//! that, so an update never waits for requests and requests never wait for an update's work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::budget::{RetryBudget, Window};
use crate::clock::{Clock, Nanos};
use crate::counters::{Counters, EndpointSnapshot, Snapshot};
use crate::endpoint::{Backend, Endpoint};
use crate::outlier::Outlier;
use crate::pick::{Algorithm, Picker};
use crate::rng::Rng;

/// Tries of one request at most, the first included, when the config says nothing else: a
/// retry after a dead endpoint, and one more in case two died at once.
pub const DEFAULT_MAX_ATTEMPTS: usize = 3;

/// The most tries a config may ask for; a larger number is taken as this.
pub const MAX_ATTEMPTS: usize = 8;

/// How a listener balances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub algorithm: Algorithm,
    pub outlier: Outlier,
    pub retry: RetryBudget,
    /// Tries of one request at most, the first included (1 to [`MAX_ATTEMPTS`]).
    pub max_attempts: usize,
    /// Seeds the random choices (`p2c`, a weighted fallback), so runs can be repeated.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            algorithm: Algorithm::default(),
            outlier: Outlier::default(),
            retry: RetryBudget::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            // "outpost" in ASCII: any fixed seed does.
            seed: 0x006f_7574_706f_7374,
        }
    }
}

#[derive(Debug)]
pub struct Balancer {
    config: Config,
    set: RwLock<Arc<Set>>,
    /// Held while one update is built, so two updates cannot lose one another.
    updating: Mutex<()>,
    /// Held while an ejection is decided, so two failures at once cannot both take the last
    /// ejection the share allows.
    ejecting: Mutex<()>,
    rng: Rng,
    clock: Clock,
    window: Window,
    counters: Counters,
}

#[derive(Debug)]
struct Set {
    backends: Vec<Arc<Backend>>,
    picker: Picker,
}

impl Balancer {
    pub fn new(mut config: Config, endpoints: &[Endpoint]) -> Arc<Balancer> {
        config.max_attempts = config.max_attempts.clamp(1, MAX_ATTEMPTS);
        let backends = dedup(endpoints)
            .map(|e| Arc::new(Backend::new(e)))
            .collect();
        let set = Set::new(&config.algorithm, backends);
        Arc::new(Balancer {
            rng: Rng::new(config.seed),
            config,
            set: RwLock::new(Arc::new(set)),
            updating: Mutex::new(()),
            ejecting: Mutex::new(()),
            clock: Clock::new(),
            window: Window::default(),
            counters: Counters::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the endpoint set. An endpoint that stays (same id and address) keeps its
    /// requests in flight, its ejection and its counters, and takes its new weight and state;
    /// requests in flight on one that left finish there. Of endpoints with the same id, the
    /// first counts.
    pub fn update(&self, endpoints: &[Endpoint]) {
        // The guarded data is `()`: a panic elsewhere cannot have left it half-changed.
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current();
        let kept: HashMap<&str, &Arc<Backend>> = old.backends.iter().map(|b| (b.id(), b)).collect();
        let backends = dedup(endpoints)
            .map(|e| match kept.get(e.id.as_str()) {
                Some(b) if b.addr() == e.addr => {
                    b.set(e);
                    Arc::clone(b)
                }
                _ => Arc::new(Backend::new(e)),
            })
            .collect();
        let set = Arc::new(Set::new(&self.config.algorithm, backends));
        // The set is always whole: a panic while it was being replaced left the old one.
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
    }

    fn current(&self) -> Arc<Set> {
        Arc::clone(&self.set.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// Counts a client's request; the guard counts it out of flight when dropped.
    pub(crate) fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.counters.start();
        self.window.note_request(self.now());
        RequestGuard(Arc::clone(self))
    }

    /// An endpoint for a request of hash `key` that has not tried it yet: one that is ready and
    /// not ejected, or, when every ready one left is ejected, one of those anyway.
    pub(crate) fn pick(&self, key: u64, tried: &Tried) -> Option<Lease> {
        let now = self.now();
        self.choose(key, tried).map(|b| Lease::start(b, now))
    }

    /// [`Balancer::pick`] for a retry: `None` also when the retry budget is spent, which is
    /// only asked once there is an endpoint to retry on.
    pub(crate) fn pick_retry(&self, key: u64, tried: &Tried) -> Option<Lease> {
        let backend = self.choose(key, tried)?;
        let now = self.now();
        if !self.window.try_retry(&self.config.retry, now) {
            return None;
        }
        self.counters.note_retry();
        backend.counters.note_retry();
        Some(Lease::start(backend, now))
    }

    fn choose(&self, key: u64, tried: &Tried) -> Option<Arc<Backend>> {
        let set = self.current();
        let now = self.now();
        let backends = &set.backends;
        let untried = |i: usize| !tried.contains(&backends[i]);
        let index = set
            .picker
            .pick(backends, key, &self.rng, |i| {
                backends[i].is_available(now) && untried(i)
            })
            .or_else(|| {
                set.picker.pick(backends, key, &self.rng, |i| {
                    !backends[i].is_draining() && untried(i)
                })
            })?;
        Some(Arc::clone(&backends[index]))
    }

    pub(crate) fn note_error(&self) {
        self.counters.note_error();
    }

    pub(crate) fn note_latency(&self, since: Nanos) {
        self.counters.note_latency(self.since(since));
    }

    fn since(&self, then: Nanos) -> std::time::Duration {
        std::time::Duration::from_nanos(self.now().0.saturating_sub(then.0))
    }

    /// Ejects `backend` if it is in the current set, ready, not ejected already, and the share
    /// allows one more.
    fn eject(&self, backend: &Arc<Backend>) {
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        if backend.is_draining() || backend.is_ejected(now) {
            return;
        }
        let set = self.current();
        if !set.backends.iter().any(|b| Arc::ptr_eq(b, backend)) {
            return;
        }
        let ready = set.backends.iter().filter(|b| !b.is_draining());
        let ejected = ready.clone().filter(|b| b.is_ejected(now)).count();
        if !self.config.outlier.may_eject(ejected, ready.count()) {
            return;
        }
        let length = self.config.outlier.duration(backend.ejections_in_a_row());
        backend.eject_until(now.plus(length));
        self.counters.note_ejection();
        tracing::info!(
            "endpoint {} ({}) ejected for {length:?} after a failed request",
            backend.id(),
            backend.addr()
        );
    }

    pub fn snapshot(&self) -> Snapshot {
        let now = self.now();
        let set = self.current();
        Snapshot {
            listener: self.counters.snapshot(),
            endpoints: set
                .backends
                .iter()
                .map(|b| EndpointSnapshot {
                    id: b.id().to_owned(),
                    addr: b.addr(),
                    weight: b.weight(),
                    health: b.health(now),
                    counters: b.counters.snapshot(),
                })
                .collect(),
        }
    }
}

impl Set {
    fn new(algorithm: &Algorithm, backends: Vec<Arc<Backend>>) -> Set {
        Set {
            picker: Picker::new(algorithm, &backends),
            backends,
        }
    }
}

fn dedup(endpoints: &[Endpoint]) -> impl Iterator<Item = &Endpoint> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(i, e)| !endpoints[..*i].iter().any(|earlier| earlier.id == e.id))
        .map(|(_, e)| e)
}

/// One client request in flight on a listener.
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Balancer>);

impl RequestGuard {
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.counters.end();
    }
}

/// One attempt in flight on an endpoint; counted out of flight when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    backend: Arc<Backend>,
    started: Nanos,
}

impl Lease {
    fn start(backend: Arc<Backend>, now: Nanos) -> Lease {
        backend.start_request();
        backend.counters.start();
        Lease {
            backend,
            started: now,
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn succeeded(&self, balancer: &Balancer) {
        self.backend.note_success(balancer.now());
        self.backend
            .counters
            .note_latency(balancer.since(self.started));
    }

    /// The attempt failed in a way that says the endpoint is at fault: eject it.
    pub fn failed(&self, balancer: &Balancer) {
        self.backend.counters.note_error();
        self.backend
            .counters
            .note_latency(balancer.since(self.started));
        balancer.eject(&self.backend);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.end_request();
        self.backend.counters.end();
    }
}

/// Endpoints a request has tried, by identity: a set swapped between two attempts may have
/// moved them.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    addresses: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub fn add(&mut self, lease: &Lease) {
        if self.len < MAX_ATTEMPTS {
            self.addresses[self.len] = Arc::as_ptr(&lease.backend) as usize;
            self.len += 1;
        }
    }

    fn contains(&self, backend: &Arc<Backend>) -> bool {
        let address = Arc::as_ptr(backend) as usize;
        self.addresses[..self.len].contains(&address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointState, Health};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    fn endpoints(n: u16) -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::ready(format!("e{i}"), addr(1000 + i)))
            .collect()
    }

    fn health(b: &Balancer, id: &str) -> Health {
        b.snapshot().endpoint(id).unwrap().health
    }

    #[test]
    fn an_update_keeps_in_flight_and_ejection_of_endpoints_that_stay() {
        let b = Balancer::new(Config::default(), &endpoints(3));
        let held = b.pick(0, &Tried::default()).unwrap();
        let held_id = held.backend().id().to_owned();
        let failed = b.pick(0, &Tried::default()).unwrap();
        let failed_id = failed.backend().id().to_owned();
        failed.failed(&b);
        drop(failed);
        assert_eq!(health(&b, &failed_id), Health::Ejected);

        b.update(&endpoints(3));
        let s = b.snapshot();
        assert_eq!(s.endpoint(&held_id).unwrap().counters.in_flight, 1);
        assert_eq!(s.endpoint(&failed_id).unwrap().health, Health::Ejected);
        drop(held);
        assert_eq!(
            b.snapshot().endpoint(&held_id).unwrap().counters.in_flight,
            0
        );
    }

    #[test]
    fn a_moved_endpoint_starts_afresh() {
        let b = Balancer::new(Config::default(), &endpoints(2));
        let lease = b.pick(0, &Tried::default()).unwrap();
        let id = lease.backend().id().to_owned();
        let mut moved = endpoints(2);
        for e in &mut moved {
            e.addr = addr(e.addr.port() + 100);
        }
        b.update(&moved);
        assert_eq!(b.snapshot().endpoint(&id).unwrap().counters.in_flight, 0);
        drop(lease);
        assert_eq!(b.snapshot().endpoint(&id).unwrap().counters.in_flight, 0);
    }

    #[test]
    fn draining_endpoints_get_nothing_new() {
        let b = Balancer::new(Config::default(), &endpoints(2));
        let mut set = endpoints(2);
        set[0].state = EndpointState::Draining;
        b.update(&set);
        for _ in 0..10 {
            assert_eq!(b.pick(0, &Tried::default()).unwrap().backend().id(), "e1");
        }
        set[1].state = EndpointState::Draining;
        b.update(&set);
        assert!(b.pick(0, &Tried::default()).is_none());
    }

    #[test]
    fn tried_endpoints_are_not_picked_again() {
        let b = Balancer::new(Config::default(), &endpoints(3));
        let mut tried = Tried::default();
        let mut seen = Vec::new();
        while let Some(lease) = b.pick(0, &tried) {
            tried.add(&lease);
            seen.push(lease.backend().id().to_owned());
        }
        seen.sort();
        assert_eq!(seen, ["e0", "e1", "e2"]);
    }

    #[test]
    fn when_the_share_is_ejected_the_rest_still_get_requests() {
        let b = Balancer::new(Config::default(), &endpoints(2));
        for _ in 0..4 {
            let lease = b.pick(0, &Tried::default()).unwrap();
            lease.failed(&b);
        }
        let s = b.snapshot();
        let ejected = s
            .endpoints
            .iter()
            .filter(|e| e.health == Health::Ejected)
            .count();
        assert_eq!(ejected, 1, "{s:?}");
        assert!(b.pick(0, &Tried::default()).is_some());
    }

    #[test]
    fn the_last_ready_endpoints_are_picked_even_when_ejected() {
        let b = Balancer::new(Config::default(), &endpoints(2));
        let lease = b.pick(0, &Tried::default()).unwrap();
        let ejected = lease.backend().id().to_owned();
        lease.failed(&b);
        drop(lease);
        // The other one leaves: only the ejected one is left, and is better than none.
        b.update(&[Endpoint::ready(
            ejected.clone(),
            addr(if ejected == "e0" { 1000 } else { 1001 }),
        )]);
        assert_eq!(
            b.pick(0, &Tried::default()).unwrap().backend().id(),
            ejected
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_ends_after_its_time_and_doubles_in_a_row() {
        let b = Balancer::new(Config::default(), &endpoints(2));
        let base = Config::default().outlier.base;
        let lease = b.pick(0, &Tried::default()).unwrap();
        let id = lease.backend().id().to_owned();
        lease.failed(&b);
        drop(lease);
        assert_eq!(health(&b, &id), Health::Ejected);
        tokio::time::advance(base).await;
        assert_eq!(health(&b, &id), Health::Ready);

        let mut tried = Tried::default();
        let again = loop {
            let lease = b.pick(0, &tried).unwrap();
            if lease.backend().id() == id {
                break lease;
            }
            tried.add(&lease);
        };
        again.failed(&b);
        tokio::time::advance(base).await;
        assert_eq!(
            health(&b, &id),
            Health::Ejected,
            "the second lasts twice as long"
        );
        tokio::time::advance(base).await;
        assert_eq!(health(&b, &id), Health::Ready);

        // A success resets the doubling.
        again.succeeded(&b);
        again.failed(&b);
        tokio::time::advance(base + Duration::from_millis(1)).await;
        assert_eq!(health(&b, &id), Health::Ready);
    }

    #[test]
    fn a_snapshot_reads_as_json_for_the_cli() {
        let b = Balancer::new(Config::default(), &endpoints(2));
        let lease = b.pick(0, &Tried::default()).unwrap();
        lease.failed(&b);
        let json = serde_json::to_value(b.snapshot()).unwrap();
        assert_eq!(json["endpoints"][0]["id"], "e0");
        assert_eq!(json["endpoints"][0]["addr"], "127.0.0.1:1000");
        assert_eq!(json["endpoints"][0]["health"], "ejected");
        assert_eq!(json["endpoints"][0]["counters"]["in_flight"], 1);
        assert_eq!(json["endpoints"][1]["health"], "ready");
        assert_eq!(json["listener"]["ejections"], 1);
        let latency = &json["listener"]["latency"];
        assert_eq!(
            latency["le_us"].as_array().unwrap().len() + 1,
            latency["counts"].as_array().unwrap().len()
        );
    }

    #[test]
    fn the_budget_limits_retries() {
        let config = Config {
            retry: RetryBudget {
                percent: 0,
                per_second: 1,
            },
            ..Config::default()
        };
        let b = Balancer::new(config, &endpoints(2));
        let allowed = (0..100)
            .filter(|_| b.pick_retry(0, &Tried::default()).is_some())
            .count();
        assert_eq!(allowed, 10);
        let s = b.snapshot();
        assert_eq!(s.listener.retries, 10);
        assert_eq!(
            s.endpoints[0].counters.retries + s.endpoints[1].counters.retries,
            10
        );
    }

    #[test]
    fn a_retry_with_nowhere_to_go_takes_nothing_from_the_budget() {
        let b = Balancer::new(Config::default(), &endpoints(1));
        let mut tried = Tried::default();
        tried.add(&b.pick(0, &tried).unwrap());
        for _ in 0..1_000 {
            assert!(b.pick_retry(0, &tried).is_none());
        }
        assert_eq!(b.snapshot().listener.retries, 0);
        assert!(b.pick_retry(0, &Tried::default()).is_some());
    }
}
