//! The endpoint list every node's load balancer and DNS server serve (`GET /v1/endpoints`).
//!
//! Each server keeps it ready-made, per service, and changes it only where the state machine
//! says a batch touched a service or its tasks ([`store::StateHandle::take_changed_services`]):
//! a report of one task recomputes that task's service, not the cluster's 100,000 tasks, and
//! the thousands of agents holding the blocking query read one shared copy and are sent only
//! the services that changed since the index they hold. Its index moves only when the list
//! really changed (a report that changed a task's restart count but not its readiness wakes
//! nobody).

use std::collections::BTreeMap;
use std::sync::Arc;

use api::{EndpointList, ServiceEndpoints, ServiceRange};
use axum::extract::State;
use httpd::Query;
use store::{ChangedServices, StateHandle};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Server;
use crate::answer::{Answer, Json};
use crate::routes::{WaitQuery, wait_of};

/// Removed services remembered, so that a node can be told which went: past this many the
/// oldest are forgotten, and a node asking from before them gets the whole list.
const MAX_REMOVED: usize = 10_000;

/// Services whose endpoints are computed under one read of the state.
const SERVICES_PER_READ: usize = 32;

/// The list as last computed.
#[derive(Debug, Default)]
pub struct Published {
    /// The applied index at which the list last changed; 0 before the first computation.
    pub index: u64,
    /// Each service's endpoints, with the index at which they last changed.
    pub services: BTreeMap<String, (u64, Arc<ServiceEndpoints>)>,
    /// Services removed, with the index at which they went; shared between successive lists
    /// until a removal changes it (up to [`MAX_REMOVED`] names are not copied per batch).
    removed: Arc<BTreeMap<String, u64>>,
    /// What changed after this index can be told as changes; from an earlier one, only the
    /// whole list is sure (removals before it were forgotten).
    since: u64,
}

impl Published {
    /// What a node that has the list at `index` needs: the whole list (`None`), or the
    /// services changed and removed since.
    fn since(&self, index: u64) -> Option<(Vec<ServiceEndpoints>, Vec<String>)> {
        if index == 0 || index < self.since {
            return None;
        }
        let changed = (self.services.values())
            .filter(|(at, _)| *at > index)
            .map(|(_, e)| (**e).clone())
            .collect();
        let removed = (self.removed.iter())
            .filter(|(_, at)| **at > index)
            .map(|(name, _)| name.clone())
            .collect();
        Some((changed, removed))
    }

    fn remove(&mut self, name: &str, index: u64) {
        self.services.remove(name);
        let removed = Arc::make_mut(&mut self.removed);
        removed.insert(name.to_string(), index);
        if removed.len() > MAX_REMOVED
            && let Some((oldest, at)) = (removed.iter())
                .min_by_key(|(_, at)| **at)
                .map(|(n, at)| (n.clone(), *at))
        {
            removed.remove(&oldest);
            self.since = self.since.max(at);
        }
    }
}

/// A server's endpoint list: shared, read by the route, written by [`publish`].
#[derive(Debug, Clone)]
pub struct Endpoints {
    range: ServiceRange,
    published: Arc<watch::Sender<Arc<Published>>>,
}

impl Endpoints {
    pub fn new(range: ServiceRange) -> Endpoints {
        Endpoints {
            range,
            published: Arc::new(watch::channel(Arc::default()).0),
        }
    }

    pub fn range(&self) -> ServiceRange {
        self.range
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    /// Brings the list up to date with the state: every service when `all`, else those named.
    /// Returns those it left for another round, as a batch was applied meanwhile.
    #[must_use]
    fn refresh<'a>(
        &self,
        state: &StateHandle,
        all: bool,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Vec<String> {
        let current = self.published.borrow().clone();
        let mut next = Published {
            index: current.index,
            services: current.services.clone(),
            removed: current.removed.clone(),
            since: current.since,
        };
        let names: Vec<String> = if all {
            let mut every: Vec<String> = state.read(|s| s.services.keys().cloned().collect());
            every.extend(next.services.keys().cloned());
            every
        } else {
            names.into_iter().cloned().collect()
        };
        // A few services per read, so that a batch being applied, and every reader behind it
        // (heartbeats, `ps`), waits for one chunk and not for the whole list. The list stays
        // as of one index: once a batch is applied between two chunks, the services not read
        // yet are left for the next round, which [`publish`] runs at once.
        let mut at: Option<u64> = None;
        let mut moved = false;
        let mut later = Vec::new();
        for (i, chunk) in names.chunks(SERVICES_PER_READ).enumerate() {
            let same = state.read(|s| {
                if *at.get_or_insert(s.index) != s.index {
                    return false;
                }
                for name in chunk {
                    let now = s.endpoints_of(name, &self.range);
                    let before = next.services.get(name).map(|(_, e)| e.as_ref());
                    if now.as_ref() == before {
                        continue;
                    }
                    moved = true;
                    match now {
                        Some(now) => {
                            if next.removed.contains_key(name) {
                                Arc::make_mut(&mut next.removed).remove(name);
                            }
                            next.services.insert(name.clone(), (s.index, Arc::new(now)));
                        }
                        None => next.remove(name, s.index),
                    }
                }
                true
            });
            if !same {
                later = names[i * SERVICES_PER_READ..].to_vec();
                break;
            }
        }
        let moved = if moved { at } else { None };
        if let Some(index) = moved.or((current.index == 0).then(|| state.applied_index())) {
            next.index = index.max(1);
            self.published.send_replace(Arc::new(next));
        }
        later
    }
}

/// After a refresh, the next waits this many times as long as the refresh took: however fast
/// batches are applied, keeping the list costs at most a fifth of a core (at 100,000 tasks a
/// refresh of every service takes tens of milliseconds, and a burst of reports touches every
/// service in each batch), while on a small cluster, where a refresh takes microseconds, a
/// change is published at once. Changes made meanwhile are taken together.
const PAUSE_PER_REFRESH: u32 = 4;

/// Keeps `endpoints` up to date with the applied state until `stop`.
pub async fn publish(state: StateHandle, endpoints: Endpoints, mut stop: watch::Receiver<bool>) {
    let mut changes = state.watch_services();
    // Everything once, then what each batch touched; taken before the state is read, so a
    // change in between is taken the next time round.
    state.take_changed_services();
    let mut next = Some(ChangedServices {
        all: true,
        services: Default::default(),
    });
    let mut pause_until = Instant::now();
    loop {
        if let Some(changed) = next.take() {
            let started = Instant::now();
            // On the blocking pool: a refresh of every service is long work for a runtime's
            // worker, and the API's requests would wait behind it.
            let (state, endpoints) = (state.clone(), endpoints.clone());
            let refreshed = tokio::task::spawn_blocking(move || {
                let mut later = endpoints.refresh(&state, changed.all, &changed.services);
                while !later.is_empty() {
                    later = endpoints.refresh(&state, false, &later);
                }
            });
            if refreshed.await.is_err() {
                return;
            }
            pause_until = Instant::now() + started.elapsed() * PAUSE_PER_REFRESH;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            () = tokio::time::sleep_until(pause_until) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        next = Some(state.take_changed_services());
    }
}

/// Blocking query: the whole endpoint list once it changes past `index`, or after `wait`.
#[utoipa::path(get, path = "/v1/endpoints",
    params(WaitQuery),
    responses(
        (status = 200, description = "Every service's virtual IP, ports and ready endpoints", body = EndpointList),
        (status = 429, description = "This client holds too many blocking queries", body = api::ApiError)))]
pub(crate) async fn endpoints(
    State(ctx): State<Server>,
    Query(q): Query<WaitQuery>,
) -> Answer<EndpointList> {
    let wait = wait_of(&q.wait, ctx.limits.max_wait)?;
    let mut published = ctx.endpoints.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let past = |p: &Arc<Published>| q.index == 0 || p.index > q.index;
    while !past(&published.borrow_and_update()) {
        let changed = tokio::time::timeout_at(deadline, published.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            break;
        }
    }
    let current = published.borrow().clone();
    let (full, services, removed) = match current.since(q.index) {
        Some((changed, removed)) => (false, changed, removed),
        None => {
            let every = current.services.values().map(|(_, e)| (**e).clone());
            (true, every.collect(), Vec::new())
        }
    };
    Ok(Json(EndpointList {
        index: current.index,
        service_range: ctx.endpoints.range(),
        full,
        services,
        removed,
    }))
}

/// How long a node's agent has to give its counters: one that takes longer is listed as not
/// answering, and the others are still shown.
const TRAFFIC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One service's endpoints and every node's listeners of it, with their counters.
#[utoipa::path(get, path = "/v1/services/{name}/traffic",
    params(("name" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The service's endpoints and the nodes' listeners of it", body = api::ServiceTraffic),
        (status = 404, description = "No such service", body = api::ApiError)))]
pub(crate) async fn traffic(
    State(ctx): State<Server>,
    httpd::Path(name): httpd::Path<String>,
) -> Answer<api::ServiceTraffic> {
    let service = ctx
        .endpoints
        .published
        .borrow()
        .services
        .get(&name)
        .map(|(_, e)| Arc::clone(e));
    let service = service.ok_or_else(|| crate::answer::no_service(&name))?;
    let nodes: Vec<(String, String)> = ctx.state.read(|s| {
        (s.nodes.iter())
            .filter(|(_, n)| !n.state.is_lost())
            .map(|(name, n)| (name.clone(), n.address.clone()))
            .collect()
    });
    let asks = nodes.into_iter().map(|(node, address)| {
        // Service names are DNS labels joined by `_`: nothing to escape in a query.
        let request = (ctx
            .http
            .get(format!("{address}/v1/agent/traffic?service={name}")))
        .bearer_auth(&ctx.token)
        .timeout(TRAFFIC_WAIT);
        async move {
            let answer = match request.send().await {
                Ok(r) if r.status().is_success() => r.json::<Vec<api::ListenerTraffic>>().await,
                Ok(r) => return Err(format!("{node}: its agent answered {}", r.status())),
                Err(e) => Err(e),
            };
            answer.map_err(|e| format!("{node}: cannot reach its agent at {address}: {e}"))
        }
    });
    let mut listeners = Vec::new();
    let mut unanswered = Vec::new();
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(mine) => listeners.extend(mine),
            Err(why) => unanswered.push(why),
        }
    }
    Ok(Json(api::ServiceTraffic {
        service: (*service).clone(),
        listeners,
        unanswered,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> Arc<ServiceEndpoints> {
        Arc::new(ServiceEndpoints {
            name: name.into(),
            stack: None,
            vip: None,
            ports: Vec::new(),
            load_balancer: spec::LoadBalancerSpec::default(),
            drain_ms: 0,
            endpoints: Vec::new(),
        })
    }

    #[test]
    fn a_node_is_told_what_changed_since_its_index_or_everything_when_too_far_behind() {
        let mut p = Published {
            index: 30,
            services: BTreeMap::from([
                ("a".to_string(), (10, service("a"))),
                ("b".to_string(), (20, service("b"))),
            ]),
            ..Published::default()
        };
        p.remove("c", 30);
        let names = |(changed, removed): (Vec<ServiceEndpoints>, Vec<String>)| {
            let changed: Vec<String> = changed.into_iter().map(|s| s.name).collect();
            (changed, removed)
        };
        assert_eq!(
            p.since(0),
            None,
            "a node that knows nothing gets everything"
        );
        assert_eq!(
            p.since(15).map(names),
            Some((vec!["b".to_string()], vec!["c".to_string()]))
        );
        assert_eq!(p.since(30).map(names), Some((vec![], vec![])));

        // Past the removals kept, the oldest is forgotten and those behind it get everything.
        for i in 0..MAX_REMOVED {
            p.remove(&format!("gone-{i}"), 40 + i as u64);
        }
        assert_eq!(p.removed.len(), MAX_REMOVED);
        assert_eq!(p.since, 30);
        assert_eq!(p.since(29), None);
        assert!(p.since(30).is_some());
    }
}
