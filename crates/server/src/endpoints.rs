//! The endpoint list every node's load balancer and DNS server serve (`GET /v1/endpoints`).
//!
//! Each server keeps it ready-made, per service, and changes it only where the state machine
//! says a batch touched a service or its tasks ([`store::StateHandle::take_changed_services`]):
//! a report of one task recomputes that task's service, not the cluster's 100,000 tasks, and
//! the thousands of agents holding the blocking query read one shared copy. Its index moves
//! only when the list really changed (a report that changed a task's restart count but not its
//! readiness wakes nobody).

use std::collections::BTreeMap;
use std::sync::Arc;

use api::{EndpointList, ServiceEndpoints, ServiceRange};
use axum::extract::State;
use httpd::Query;
use store::StateHandle;
use tokio::sync::watch;

use crate::Server;
use crate::answer::{Answer, Json};
use crate::routes::{WaitQuery, wait_of};

/// The list as last computed.
#[derive(Debug, Default)]
pub struct Published {
    /// The applied index at which the list last changed; 0 before the first computation.
    pub index: u64,
    pub services: BTreeMap<String, Arc<ServiceEndpoints>>,
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
    fn refresh<'a>(
        &self,
        state: &StateHandle,
        all: bool,
        names: impl IntoIterator<Item = &'a String>,
    ) {
        let current = self.published.borrow().clone();
        let mut services = current.services.clone();
        let moved = state.read(|s| {
            let names: Vec<String> = if all {
                let mut every: Vec<String> = s.services.keys().cloned().collect();
                every.extend(services.keys().cloned());
                every
            } else {
                names.into_iter().cloned().collect()
            };
            let mut moved = false;
            for name in names {
                let now = s.endpoints_of(&name, &self.range);
                let before = services.get(&name).map(|e| e.as_ref());
                if now.as_ref() == before {
                    continue;
                }
                moved = true;
                match now {
                    Some(now) => services.insert(name, Arc::new(now)),
                    None => services.remove(&name),
                };
            }
            moved.then_some(s.index)
        });
        if let Some(index) = moved.or((current.index == 0).then(|| state.applied_index())) {
            self.published.send_replace(Arc::new(Published {
                index: index.max(1),
                services,
            }));
        }
    }
}

/// Keeps `endpoints` up to date with the applied state until `stop`.
pub async fn publish(state: StateHandle, endpoints: Endpoints, mut stop: watch::Receiver<bool>) {
    let mut changes = state.watch_services();
    // Everything once, then what each batch touched; taken before the state is read, so a
    // change in between is taken the next time round.
    state.take_changed_services();
    endpoints.refresh(&state, true, []);
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let changed = state.take_changed_services();
        endpoints.refresh(&state, changed.all, &changed.services);
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
    Ok(Json(EndpointList {
        index: current.index,
        service_range: ctx.endpoints.range(),
        services: current.services.values().map(|e| (**e).clone()).collect(),
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
        .cloned();
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
