//! The `/v1` API. Every route but the OpenAPI document needs the bearer token. Writes are
//! validated whole before anything is proposed, so a bad request changes nothing; reads answer
//! from the applied state. Writes and listings are answered by the leader, to which a follower
//! forwards them (`cluster::at_leader`).
//!
//! Each handler carries its OpenAPI description (`#[utoipa::path]`) and is routed through
//! `utoipa_axum`, so the document served at `/v1/openapi.json` lists exactly what is routed.
//! Prompt routes get a time limit; blocking queries (bounded by their `wait`) get a per-client
//! cap instead; followed logs get neither.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use api::{
    ApiError, Assignments, ClusterStatus, DeployRequest, DeployResponse, DesiredState, Event,
    Events, Level, Problem, RegisterRequest, ScaleRequest, ServiceSummary, StatusReport, Task,
    TaskState, Timestamp,
};
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, http::Method};
use httpd::{Path, Query};
use serde::Deserialize;
use store::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use store::{Command, Response as Applied};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Caller;
use crate::answer::{Answer, Fail, Json, no_node, no_service, unavailable};
use crate::trust::FIRST_GENERATION;
use crate::{ApiLimits, Server, blocking, cluster, now, objects};

pub fn router(ctx: Server) -> Router {
    let limits = ctx.limits.clone();
    let (api, doc) = documented(&ctx).split_for_parts();
    let document = Arc::new(document(doc));
    let raft = Router::new()
        .route("/v1/raft/append", post(raft_append))
        .route("/v1/raft/vote", post(raft_vote))
        .route("/v1/raft/snapshot", post(raft_snapshot))
        .route_layer(middleware::from_fn_with_state(
            crate::raft_body_limit(&limits),
            raft_body_limit,
        ))
        .route_layer(middleware::from_fn_with_state(
            limits.request_timeout,
            httpd::time_limit,
        ));
    api.merge(raft)
        .route_layer(middleware::from_fn_with_state(
            ctx.clone(),
            crate::access::check,
        ))
        .route(
            "/v1/openapi.json",
            get(move || async move { axum::Json(document.as_ref().clone()) }),
        )
        .fallback(httpd::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ctx)
}

/// Every documented route, each group with its layer.
fn documented(ctx: &Server) -> OpenApiRouter<Server> {
    // Answered by the leader: writes, and reads that must be current (`cluster::at_leader`).
    let at_leader = OpenApiRouter::new()
        .routes(routes!(list_services, deploy))
        .routes(routes!(get_service, remove_service))
        .routes(routes!(scale))
        .routes(routes!(restart_service))
        .routes(routes!(restart_task))
        .routes(routes!(crate::endpoints::traffic))
        .routes(routes!(crate::stats::stats))
        .routes(routes!(crate::images::images))
        .routes(routes!(crate::images::sources))
        .routes(routes!(crate::bundles::list_keys, crate::bundles::add_key))
        .routes(routes!(crate::bundles::revoke_key))
        .routes(routes!(crate::image_gc::kept))
        .routes(routes!(crate::image_gc::prune))
        .routes(routes!(crate::stacks::remove_stack))
        .routes(routes!(crate::rollouts::get_rollout))
        .routes(routes!(crate::rollouts::pause))
        .routes(routes!(crate::rollouts::resume))
        .routes(routes!(crate::rollouts::promote))
        .routes(routes!(crate::rollouts::undo))
        .routes(routes!(list_tasks))
        .routes(routes!(list_nodes, register))
        .routes(routes!(remove_node))
        .routes(routes!(heartbeat))
        .routes(routes!(drain))
        .routes(routes!(undrain))
        .routes(routes!(join))
        .routes(routes!(show_token))
        .routes(routes!(rotate_token))
        .routes(routes!(crate::backup::backup))
        .routes(routes!(report))
        .routes(routes!(objects::list_secrets, objects::create_secret))
        .routes(routes!(objects::remove_secret))
        .routes(routes!(objects::list_configs, objects::create_config))
        .routes(routes!(objects::remove_config))
        .routes(routes!(objects::node_secret))
        .routes(routes!(objects::node_config))
        .route_layer(middleware::from_fn_with_state(
            ctx.clone(),
            cluster::at_leader,
        ));
    let prompt = OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(cluster::cluster))
        .merge(at_leader)
        .route_layer(middleware::from_fn_with_state(
            ctx.limits.request_timeout,
            httpd::time_limit,
        ));
    // A join waits for the new server to catch up before it answers.
    let membership = OpenApiRouter::new()
        .routes(routes!(cluster::join))
        .routes(routes!(cluster::promote))
        .routes(routes!(cluster::remove))
        .route_layer(middleware::from_fn_with_state(
            ctx.clone(),
            cluster::at_leader,
        ))
        .route_layer(middleware::from_fn(cluster::server_only))
        .route_layer(middleware::from_fn_with_state(
            ctx.limits.request_timeout + cluster::CATCH_UP,
            httpd::time_limit,
        ));
    let blocking = OpenApiRouter::new()
        .routes(routes!(assignments))
        .routes(routes!(crate::endpoints::endpoints))
        .routes(routes!(events))
        .route_layer(middleware::from_fn_with_state(
            ctx.blocking.clone(),
            blocking::limit,
        ));
    let streams = OpenApiRouter::new()
        .routes(routes!(crate::logs::logs))
        .routes(routes!(crate::exec::exec))
        .routes(routes!(crate::bundles::save))
        .routes(routes!(crate::bundles::load))
        .routes(routes!(crate::pull::pull));
    prompt.merge(membership).merge(blocking).merge(streams)
}

/// Middleware of the Raft routes: their bodies may be as large as a full AppendEntries request
/// ([`crate::raft_body_limit`]), not just the API's limit.
async fn raft_body_limit(
    State(limit): State<usize>,
    mut req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    req.extensions_mut().insert(httpd::BodyLimit(limit));
    next.run(req).await
}

/// The whole document: the frame from `api`, the routed paths, and the error answers every
/// operation can give (so each handler lists only those particular to it).
fn document(paths: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = api::openapi::frame(env!("CARGO_PKG_VERSION"));
    doc.merge(paths);
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            add_common_errors(op);
        }
    }
    let openapi_json = utoipa::openapi::path::PathItem::new(
        utoipa::openapi::HttpMethod::Get,
        utoipa::openapi::path::OperationBuilder::new()
            .summary(Some("This document"))
            .security(utoipa::openapi::security::SecurityRequirement::default())
            .response(
                "200",
                utoipa::openapi::Response::new("The OpenAPI document"),
            ),
    );
    doc.paths
        .paths
        .insert("/v1/openapi.json".into(), openapi_json);
    serde_json::to_value(&doc).unwrap_or_default()
}

fn operations(
    item: &mut utoipa::openapi::path::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn add_common_errors(op: &mut utoipa::openapi::path::Operation) {
    use api::openapi::add_error;
    use utoipa::openapi::path::ParameterIn;
    let params = op.parameters.clone().unwrap_or_default();
    if op.request_body.is_some() || !params.is_empty() {
        add_error(
            op,
            400,
            "Invalid input; every problem is listed with its field path",
        );
    }
    if op.request_body.is_some() {
        add_error(
            op,
            413,
            "The body is over the server's limit, which is named",
        );
        add_error(op, 415, "The body is not sent as application/json");
    }
    if params.iter().any(|p| p.parameter_in == ParameterIn::Path) {
        add_error(op, 404, "No such service, task or node");
    }
    add_error(
        op,
        401,
        "Missing or wrong bearer token, or a node certificate the cluster does not know",
    );
    add_error(
        op,
        403,
        "The caller may not do this: an agent acting for another node, or not a server",
    );
    add_error(
        op,
        503,
        "Not done in time, no leader, or too many connections; retry shortly",
    );
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Fail {
    Fail::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; see /v1/openapi.json",
            uri.path()
        ),
    )
}

fn summary(s: &store::State, name: &str) -> Option<ServiceSummary> {
    summaries(s, &[name]).pop()
}

/// The services named, with their counts from one pass over the tasks (a page of services
/// costs one scan, not one per service). Names with no service are left out.
///
/// Counts are of slots, not tasks: while a drain moves a replica, or a rollout replaces it, its
/// slot holds the old task and its replacement, both ready for a moment, and that is still one
/// replica (of whichever version). A task on a lost node counts as neither running nor ready:
/// its node cannot say.
fn summaries(s: &store::State, names: &[&str]) -> Vec<ServiceSummary> {
    let mut slots: BTreeMap<&str, (BTreeSet<u32>, BTreeSet<u32>)> =
        names.iter().map(|n| (*n, Default::default())).collect();
    for t in s.tasks.values() {
        let Some((running, ready)) = slots.get_mut(t.service.as_str()) else {
            continue;
        };
        let wanted = s
            .services
            .get(&t.service)
            .is_some_and(|svc| t.slot <= svc.spec.replicas);
        if wanted && t.desired == DesiredState::Running {
            if !s.on_lost_node(t) && t.state == TaskState::Running {
                running.insert(t.slot);
            }
            if s.counts_ready(t) {
                ready.insert(t.slot);
            }
        }
    }
    let count = |set: &BTreeSet<u32>| u32::try_from(set.len()).unwrap_or(u32::MAX);
    let summary = |name: &str| {
        let svc = s.services.get(name)?;
        let (running, ready) = slots
            .get(name)
            .map_or((0, 0), |(run, ready)| (count(run), count(ready)));
        Some(ServiceSummary {
            name: name.to_string(),
            driver: svc.spec.driver.to_string(),
            version: svc.version,
            replicas: svc.spec.replicas,
            running,
            ready,
            removing: svc.removing,
            updated_at: svc.updated_at,
            spec: svc.spec.clone(),
            rollout: (svc.rollout.as_ref())
                .filter(|r| r.active())
                .map(|r| r.state),
        })
    };
    names.iter().filter_map(|n| summary(n)).collect()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ServiceQuery {
    /// Only the services of this stack.
    stack: Option<String>,
    /// The most records to answer, 1 to 1000 (the default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The token from the previous page's `outpost-continue` header: answer what follows it.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    cont: Option<String>,
}

/// List services with their replica counts, by name, one page at a time; with `stack`, only
/// that stack's.
#[utoipa::path(get, path = "/v1/services", params(ServiceQuery), responses(
    (status = 200, description = "One page of services, by name", body = Vec<ServiceSummary>,
        headers(("outpost-continue" = String, description = "The `continue` token of the next page; absent on the last page")))))]
async fn list_services(
    State(ctx): State<Server>,
    Query(q): Query<ServiceQuery>,
) -> Result<Response, Fail> {
    let limit = page_limit(q.limit)?;
    let in_stack = |svc: &api::Service| q.stack.is_none() || svc.spec.stack == q.stack;
    Ok(ctx.state.read(|s| {
        // One more than a page, so `page` knows whether another follows.
        let names: Vec<&str> = (s.services.range::<str, _>(after(&q.cont)))
            .filter(|(_, svc)| in_stack(svc))
            .take(limit + 1)
            .map(|(n, _)| n.as_str())
            .collect();
        page(summaries(s, &names).into_iter(), limit, |s| &s.name)
    }))
}

/// The services of `stack` not being removed, with their counts.
pub(crate) fn stack_summaries(s: &store::State, stack: &str) -> Vec<ServiceSummary> {
    let names: Vec<&str> = (s.services.iter())
        .filter(|(_, svc)| !svc.removing && svc.spec.stack.as_deref() == Some(stack))
        .map(|(name, _)| name.as_str())
        .collect();
    summaries(s, &names)
}

/// One service.
#[utoipa::path(get, path = "/v1/services/{name}",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The service", body = ServiceSummary)))]
async fn get_service(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Answer<ServiceSummary> {
    ctx.state
        .read(|s| summary(s, &name))
        .map(Json)
        .ok_or_else(|| no_service(&name))
}

/// Why `replicas` is refused for one service, when it is over the limit.
fn over_replicas(replicas: u32, limits: &ApiLimits) -> Option<String> {
    // The spec's own ceiling holds whatever limits an embedder sets.
    let max = limits.max_replicas.min(spec::MAX_REPLICAS);
    (replicas > max).then(|| {
        format!("over the limit of {max} replicas per service (raise it with --max-replicas)")
    })
}

/// Every problem of a deploy, each located by field path; empty when it may proceed. A deploy
/// over the services limit is refused on that alone, before its specs are validated one by one.
fn check_deploy(req: &DeployRequest, limits: &ApiLimits) -> Vec<Problem> {
    let count = req.services.len();
    if count > limits.max_services_per_deploy {
        return vec![Problem {
            path: "services".into(),
            message: format!(
                "a deploy of {count} services: over the limit of {} services per deploy \
                 (raise it with --max-services-per-deploy)",
                limits.max_services_per_deploy
            ),
        }];
    }
    let mut problems: Vec<Problem> = match spec::validate_all(&req.services) {
        Ok(()) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| Problem {
                path: p.path,
                message: p.message,
            })
            .collect(),
    };
    if req.services.is_empty() {
        problems.push(Problem {
            path: "services".into(),
            message: "no service to deploy".into(),
        });
    }
    // Past the spec's own ceiling the spec's problem already names the field.
    let within_spec = req
        .services
        .iter()
        .filter(|s| s.replicas <= spec::MAX_REPLICAS);
    for svc in within_spec {
        if let Some(why) = over_replicas(svc.replicas, limits) {
            problems.push(Problem {
                path: format!("{}.replicas", svc.name),
                message: format!("{} replicas: {why}", svc.replicas),
            });
        }
    }
    problems
}

/// Deploy (create or update) services; with `dry_run`, only report the changes.
#[utoipa::path(post, path = "/v1/services", request_body = DeployRequest, responses(
    (status = 200, description = "What changed, or would change", body = DeployResponse)))]
async fn deploy(
    State(ctx): State<Server>,
    Json(req): Json<DeployRequest>,
) -> Answer<DeployResponse> {
    let mut problems = check_deploy(&req, &ctx.limits);
    problems.extend(objects::check_uploads(&req.objects));
    problems.extend(objects::unknown_refs(&ctx, &req.services, &req.objects));
    if !problems.is_empty() {
        return Err(Fail::invalid(
            "the deploy was refused; nothing was changed",
            problems,
        ));
    }
    ctx.state.read(|s| crate::stacks::check(s, &req))?;
    let names: BTreeSet<String> = req.services.iter().map(|spec| spec.name.clone()).collect();
    let command = Command::Deploy {
        services: req.services.clone(),
        time: now(),
    };
    check_entry_size(&command, &ctx.limits)?;
    // The deploy's secrets and configs are stored first, in an entry of their own, once the
    // whole deploy is known to be accepted.
    if !req.objects.is_empty() && !req.dry_run {
        let command = Command::PutObjects {
            objects: objects::seal(&ctx, req.objects)?,
            time: now(),
        };
        check_entry_size(&command, &ctx.limits)?;
        ctx.propose(command).await.map_err(unavailable)?;
    }
    let (changes, waiting) = if req.dry_run {
        // The same apply the store runs, on a copy: what is shown is exactly what would happen.
        // A deploy reads and changes only the services (and adds events), so the copy leaves
        // the tasks out: at 100,000 of them a whole copy would hold up applies. The scheduler
        // then says which replicas would wait, against the tasks and nodes there are.
        ctx.state.read(|s| {
            let mut copy = s.deploy_copy();
            let next = copy.index + 1;
            let changes = copy.apply(next, &command);
            (changes, crate::stacks::waiting(s, &copy, &names))
        })
    } else {
        let changes = ctx.propose(command).await.map_err(unavailable)?;
        (changes, Vec::new())
    };
    match changes {
        Applied::Deployed(changes) => Ok(Json(DeployResponse {
            dry_run: req.dry_run,
            changes,
            waiting,
        })),
        other => Err(Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected store answer {other:?}"),
        )),
    }
}

/// A deploy whose entry would be over [`crate::max_entry_bytes`] is refused: the Raft routes of
/// the other servers take AppendEntries of entries up to that size only.
fn check_entry_size(command: &Command, limits: &ApiLimits) -> Result<(), Fail> {
    let max = crate::max_entry_bytes(limits);
    let size = serde_json::to_vec(command).map_or(usize::MAX, |bytes| bytes.len());
    if size <= max {
        return Ok(());
    }
    Err(Fail::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the deploy makes a log entry of {size} bytes, over the limit of {max} bytes (twice \
             --max-body-size); deploy the services in several requests. Nothing was changed"
        ),
    ))
}

/// Remove a service: stop its tasks, then forget it.
#[utoipa::path(delete, path = "/v1/services/{name}",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The service, now removing", body = ServiceSummary)))]
async fn remove_service(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Answer<ServiceSummary> {
    let before = ctx
        .state
        .read(|s| summary(s, &name))
        .ok_or_else(|| no_service(&name))?;
    match ctx
        .propose(Command::Remove {
            service: name.clone(),
            time: now(),
        })
        .await
        .map_err(unavailable)?
    {
        Applied::NotFound(_) => Err(no_service(&name)),
        _ => Ok(Json(ctx.state.read(|s| summary(s, &name)).unwrap_or(
            ServiceSummary {
                removing: true,
                ..before
            },
        ))),
    }
}

/// Restart a service's tasks: a new revision of the same spec, rolled out by the service's
/// update rules.
#[utoipa::path(post, path = "/v1/services/{name}/restart",
    params(("name" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The service, rolling out its restart", body = ServiceSummary),
        (status = 404, description = "No such service, or it is being removed", body = ApiError)))]
async fn restart_service(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Answer<ServiceSummary> {
    let command = Command::Restart {
        service: name.clone(),
        task: None,
        time: now(),
    };
    match ctx.propose(command).await.map_err(unavailable)? {
        Applied::NotFound(_) => Err(no_service(&name)),
        _ => (ctx.state.read(|s| summary(s, &name)))
            .map(Json)
            .ok_or_else(|| no_service(&name)),
    }
}

/// Restart one task: it is stopped, and a new one takes its slot.
#[utoipa::path(post, path = "/v1/tasks/{id}/restart",
    params(("id" = String, Path, description = "A task id, as `outpost ps` shows it")),
    responses(
        (status = 200, description = "The task, now stopping", body = Task),
        (status = 404, description = "No task of that id wanted running", body = ApiError)))]
async fn restart_task(State(ctx): State<Server>, Path(id): Path<String>) -> Answer<Task> {
    let no_task = || {
        let why = format!("no running task named {id:?} (see `outpost ps`)");
        Fail::new(StatusCode::NOT_FOUND, why)
    };
    let service = (ctx
        .state
        .read(|s| s.tasks.get(&id).map(|t| t.service.clone())))
    .ok_or_else(no_task)?;
    let command = Command::Restart {
        service,
        task: Some(id.clone()),
        time: now(),
    };
    match ctx.propose(command).await.map_err(unavailable)? {
        Applied::NotFound(_) => Err(no_task()),
        _ => {
            let task = ctx.state.read(|s| {
                let task = s.tasks.get(&id).or_else(|| s.finished.get(&id))?;
                Some(s.task_view(task))
            });
            task.map(Json).ok_or_else(no_task)
        }
    }
}

/// Set a service's replica count.
#[utoipa::path(post, path = "/v1/services/{name}/scale", request_body = ScaleRequest,
    params(("name" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The service with its new count", body = ServiceSummary),
        (status = 409, description = "The service is being removed", body = ApiError)))]
async fn scale(
    State(ctx): State<Server>,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> Answer<ServiceSummary> {
    if let Some(why) = over_replicas(req.replicas, &ctx.limits) {
        return Err(Fail::invalid_at(
            "the scale was refused; nothing was changed",
            "replicas",
            format!("scale {name} to {} replicas: {why}", req.replicas),
        ));
    }
    let removing = ctx
        .state
        .read(|s| s.services.get(&name).map(|s| s.removing))
        .ok_or_else(|| no_service(&name))?;
    if removing {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            format!("service {name:?} is being removed; deploy it again to bring it back"),
        ));
    }
    match ctx
        .propose(Command::Scale {
            service: name.clone(),
            replicas: req.replicas,
            time: now(),
        })
        .await
        .map_err(unavailable)?
    {
        Applied::NotFound(_) => Err(no_service(&name)),
        _ => ctx
            .state
            .read(|s| summary(s, &name))
            .map(Json)
            .ok_or_else(|| no_service(&name)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// The most records to answer, 1 to 1000 (the default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The token from the previous page's `outpost-continue` header: answer what follows it.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    cont: Option<String>,
}

/// `limit` checked against [`api::MAX_PAGE`], which it defaults to.
fn page_limit(limit: Option<usize>) -> Result<usize, Fail> {
    match limit {
        None => Ok(api::MAX_PAGE),
        Some(n) if (1..=api::MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(Fail::invalid_at(
            "bad query",
            "limit",
            format!(
                "{n} is not between 1 and {}; page through more with the `continue` token",
                api::MAX_PAGE
            ),
        )),
    }
}

/// The keys past a continue token (the last key of the previous page), or all of them.
fn after(token: &Option<String>) -> (Bound<&str>, Bound<&str>) {
    match token {
        Some(t) => (Bound::Excluded(t.as_str()), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

/// The first `limit` of `items` as a JSON array; when more follow, the last one's key is the
/// continue token, in the `outpost-continue` header.
fn page<T: serde::Serialize>(
    items: impl Iterator<Item = T>,
    limit: usize,
    key: impl Fn(&T) -> &str,
) -> Response {
    let mut items = items.peekable();
    let mut shown = Vec::new();
    while shown.len() < limit {
        let Some(item) = items.next() else { break };
        shown.push(item);
    }
    let token = match (items.peek(), shown.last()) {
        (Some(_), Some(last)) => HeaderValue::from_str(key(last)).ok(),
        _ => None,
    };
    let mut answer = Json(shown).into_response();
    if let Some(token) = token {
        answer.headers_mut().insert(api::CONTINUE_HEADER, token);
    }
    answer
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TaskQuery {
    /// Only the tasks of this service.
    service: Option<String>,
    /// Only the tasks placed on this node.
    node: Option<String>,
    /// Only the tasks in this observed state.
    state: Option<TaskState>,
    /// Also the tasks that finished or were replaced, as they last stood (the latest few of
    /// each service).
    #[serde(default)]
    finished: bool,
    /// The most tasks to answer, 1 to 1000 (the default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The token from the previous page's `outpost-continue` header: answer what follows it.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    cont: Option<String>,
}

impl TaskQuery {
    fn matches(&self, t: &Task) -> bool {
        self.service.as_ref().is_none_or(|s| &t.service == s)
            && self
                .node
                .as_ref()
                .is_none_or(|n| t.node.as_ref() == Some(n))
            && self.state.is_none_or(|s| t.state == s)
    }
}

/// List tasks by id, one page at a time, filtered by service, node and state.
#[utoipa::path(get, path = "/v1/tasks", params(TaskQuery), responses(
    (status = 200, description = "One page of matching tasks, by id", body = Vec<Task>,
        headers(("outpost-continue" = String, description = "The `continue` token of the next page; absent on the last page"))),
    (status = 404, description = "No such service or node", body = ApiError)))]
async fn list_tasks(
    State(ctx): State<Server>,
    Query(q): Query<TaskQuery>,
) -> Result<Response, Fail> {
    let limit = page_limit(q.limit)?;
    ctx.state.read(|s| {
        if let Some(name) = q.service.as_ref().filter(|n| !s.services.contains_key(*n)) {
            return Err(no_service(name));
        }
        if let Some(name) = q.node.as_ref().filter(|n| !s.nodes.contains_key(*n)) {
            return Err(no_node(name));
        }
        // A task's id starts with its service's name and a dot, which no name holds: the tasks
        // of one service are one run of ids, read without passing over every other task.
        let prefix = q.service.as_ref().map(|name| format!("{name}."));
        let (mut from, to) = after(&q.cont);
        if let Some(prefix) = &prefix
            && q.cont.as_deref().is_none_or(|c| c < prefix.as_str())
        {
            from = Bound::Included(prefix.as_str());
        }
        let tasks = s.tasks.range::<str, _>((from, to)).map(|(_, t)| t);
        let finished =
            (s.finished.range::<str, _>((from, to)).map(|(_, t)| t)).filter(|_| q.finished);
        let tasks = by_id(tasks, finished);
        let tasks = tasks.take_while(|t| prefix.as_ref().is_none_or(|p| t.id.starts_with(p)));
        let shown = tasks.filter(|t| q.matches(t)).map(|t| s.task_view(t));
        Ok(page(shown, limit, |t| &t.id))
    })
}

/// Two runs of tasks ordered by id, merged into one (an id is in one of them only).
fn by_id<'a>(
    a: impl Iterator<Item = &'a Task>,
    b: impl Iterator<Item = &'a Task>,
) -> impl Iterator<Item = &'a Task> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if y.id < x.id => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

/// List nodes by name, one page at a time, each with the liveness this server sees.
#[utoipa::path(get, path = "/v1/nodes", params(PageQuery), responses(
    (status = 200, description = "One page of nodes, by name", body = Vec<api::NodeInfo>,
        headers(("outpost-continue" = String, description = "The `continue` token of the next page; absent on the last page")))))]
async fn list_nodes(
    State(ctx): State<Server>,
    Query(q): Query<PageQuery>,
) -> Result<Response, Fail> {
    let limit = page_limit(q.limit)?;
    Ok(ctx.state.read(|s| {
        let nodes = s.nodes.range::<str, _>(after(&q.cont)).map(|(_, n)| n);
        let nodes = nodes.map(|n| node_info(&ctx, s, n));
        page(nodes, limit, |n| &n.node.name)
    }))
}

/// A node with the time since its last heartbeat and its phi, as this server sees them, and
/// the tasks placed on it that are wanted running.
fn node_info(ctx: &Server, s: &store::State, node: &api::Node) -> api::NodeInfo {
    let (age, phi) = ctx.heartbeats.seen(&node.name);
    let tasks = (s.tasks_on(&node.name))
        .filter(|t| t.desired == DesiredState::Running)
        .count();
    api::NodeInfo {
        node: node.clone(),
        tasks: u64::try_from(tasks).unwrap_or(u64::MAX),
        last_heartbeat_age_ms: age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        // Two decimals: what an operator compares with the thresholds.
        phi: phi.map(|p| (p * 100.0).round() / 100.0),
    }
}

fn check_node_name(name: &str) -> Result<(), Fail> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Fail::invalid_at(
            "the node was refused",
            "name",
            format!(
                "{name:?} is not a valid node name (letters, digits, '-', '.', '_'; at most 63)"
            ),
        ))
    }
}

/// Register an agent's node (or update its registration).
#[utoipa::path(post, path = "/v1/nodes", request_body = RegisterRequest, responses(
    (status = 200, description = "The node as registered", body = api::Node)))]
async fn register(
    State(ctx): State<Server>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<RegisterRequest>,
) -> Answer<api::Node> {
    check_node_name(&req.name)?;
    if let Caller::Agent(me) = &caller
        && *me != req.name
    {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            format!(
                "the certificate of node {me} may not register node {}: an agent registers \
                 only itself",
                req.name
            ),
        ));
    }
    let name = req.name.clone();
    // Coalesced with the other agents' calls: when a site's servers come back, thousands of
    // agents register at once.
    ctx.reports.register(req).await.map_err(unavailable)?;
    ctx.heartbeats.beat(&name);
    ctx.state
        .read(|s| s.nodes.get(&name).cloned())
        .map(Json)
        .ok_or_else(|| {
            Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "node vanished after registering",
            )
        })
}

/// Remove a node: its tasks are placed again elsewhere and its certificates revoked, so its
/// agent can no longer call the API.
#[utoipa::path(delete, path = "/v1/nodes/{name}",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 204, description = "Removed")))]
async fn remove_node(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Result<StatusCode, Fail> {
    known_node(&ctx, &name)?;
    let answer = ctx
        .propose(Command::RemoveNode {
            node: name.clone(),
            time: now(),
        })
        .await
        .map_err(unavailable)?;
    if let Applied::NotFound(_) = answer {
        return Err(no_node(&name));
    }
    // The node monitor forgets the liveness of a node the state no longer holds.
    Ok(StatusCode::NO_CONTENT)
}

/// The role a join or token route names; refused unless one of `allowed`.
fn token_role(role: &str, allowed: &[pki::Role]) -> Result<pki::Role, Fail> {
    let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    pki::Role::parse(role)
        .filter(|r| allowed.contains(r))
        .ok_or_else(|| {
            Fail::invalid_at(
                "unknown role",
                "role",
                format!("{role:?} is not one of {}", names.join(", ")),
            )
        })
}

fn trust_of(ctx: &Server) -> Result<&crate::trust::Trust, Fail> {
    ctx.trust.as_deref().ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            "this server serves no TLS: it has no CA, join tokens or certificates",
        )
    })
}

/// Join the cluster: a node sends a join token's secret and gets its certificate and the CA.
/// Refused, with nothing changed, for a wrong or rotated secret and for an agent token used to
/// join as a server.
#[utoipa::path(post, path = "/v1/join", request_body = api::JoinRequest, responses(
    (status = 200, description = "The node's certificate, its key and the CA", body = api::JoinResponse),
    (status = 404, description = "This server serves no TLS and issues no certificates", body = ApiError)))]
async fn join(
    State(ctx): State<Server>,
    Json(req): Json<api::JoinRequest>,
) -> Answer<api::JoinResponse> {
    trust_of(&ctx)?;
    let role = token_role(&req.role, &[pki::Role::Server, pki::Role::Agent])?;
    check_node_name(&req.name)?;
    let digests = ctx.state.read(|s| {
        [pki::Role::Server, pki::Role::Agent]
            .map(|r| s.token_digest(r.as_str()).map(str::to_string))
    });
    let (own, other) = match role {
        pki::Role::Server => (&digests[0], &digests[1]),
        _ => (&digests[1], &digests[0]),
    };
    if own.is_none() || other.is_none() {
        // A new cluster's first entries are its tokens (both are needed to say which token a
        // wrong secret is); they commit once it leads.
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster's join tokens are not committed yet; retry shortly",
        ));
    }
    let matches = |d: &Option<String>| {
        d.as_deref()
            .is_some_and(|d| pki::secret_matches(&req.secret, d))
    };
    if !matches(own) {
        let why = if role == pki::Role::Server && matches(other) {
            "this is the agent join token: a server joins with the server token (`outpost token \
             show server`)"
                .to_string()
        } else {
            format!(
                "the {role} join token is wrong or was rotated: get the current one with \
                 `outpost token show {role}`"
            )
        };
        return Err(Fail::new(StatusCode::UNAUTHORIZED, why));
    }
    let node_role = match role {
        pki::Role::Server => pki::NodeRole::Server,
        _ => pki::NodeRole::Agent,
    };
    ctx.issue(node_role, &req.name, &req.hosts)
        .await
        .map(Json)
        .map_err(unavailable)
}

/// The current token of a role (`server`, `agent` or `admin`). A join token is made again from
/// the CA key and the generation the state holds, so any leader shows it.
#[utoipa::path(get, path = "/v1/tokens/{role}",
    params(("role" = String, Path, description = "server, agent or admin")),
    responses((status = 200, description = "The token", body = api::TokenAnswer)))]
async fn show_token(
    State(ctx): State<Server>,
    Path(role): Path<String>,
) -> Answer<api::TokenAnswer> {
    let trust = trust_of(&ctx)?;
    let role = token_role(
        &role,
        &[pki::Role::Server, pki::Role::Agent, pki::Role::Admin],
    )?;
    let token = match role {
        pki::Role::Admin => trust.token(role).map_err(|e| {
            Fail::new(
                StatusCode::NOT_FOUND,
                format!("this server does not keep the admin token ({e}); ask another server"),
            )
        })?,
        _ => current_token(&ctx, trust, role)?,
    };
    Ok(Json(api::TokenAnswer {
        role: role.to_string(),
        token,
    }))
}

/// The join token of `role` whose digest the applied state holds.
fn current_token(
    ctx: &Server,
    trust: &crate::trust::Trust,
    role: pki::Role,
) -> Result<String, Fail> {
    let (digest, generation) = ctx.state.read(|s| {
        let digest = s.token_digest(role.as_str()).map(str::to_string);
        (digest, s.token_generation(role.as_str()))
    });
    let token = (trust.current_token(role, digest.as_deref(), generation)).map_err(internal)?;
    token.ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            format!(
                "the current {role} token is kept only by the server that made it (before \
                 tokens were derived from the CA key), not this one: show it there, or rotate \
                 it (`outpost token rotate {role}`) and every server can show the new one"
            ),
        )
    })
}

fn internal(e: crate::ServerError) -> Fail {
    Fail::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Replace the join token of a role (`server` or `agent`): the old one stops working at once.
/// The new one is the next generation's, which every server can make again.
#[utoipa::path(post, path = "/v1/tokens/{role}/rotate",
    params(("role" = String, Path, description = "server or agent")),
    responses((status = 200, description = "The new token", body = api::TokenAnswer)))]
async fn rotate_token(
    State(ctx): State<Server>,
    Path(role): Path<String>,
) -> Answer<api::TokenAnswer> {
    let trust = trust_of(&ctx)?;
    let role = token_role(&role, &[pki::Role::Server, pki::Role::Agent])?;
    // The generation must be the latest committed, not one a new leader has yet to apply:
    // the next one is then above every token ever given. The first generation is the first
    // token's even before a new cluster committed it, so a rotation is never that token.
    crate::cluster::confirm_leading(&ctx.raft)
        .await
        .map_err(crate::cluster::unconfirmed)?;
    let generation = ctx
        .state
        .read(|s| s.token_generation(role.as_str()))
        .unwrap_or(FIRST_GENERATION)
        .max(FIRST_GENERATION)
        .saturating_add(1);
    let token = trust.join_token(role, generation).map_err(internal)?;
    ctx.propose(Command::SetToken {
        role: role.as_str().into(),
        digest: pki::secret_digest(&token.secret),
        replace: true,
        generation: Some(generation),
        time: now(),
    })
    .await
    .map_err(unavailable)?;
    // A rotation committed meanwhile may have taken this generation or a later one: either
    // way the current token is new, and it is the answer.
    Ok(Json(api::TokenAnswer {
        role: role.to_string(),
        token: current_token(&ctx, trust, role)?,
    }))
}

fn known_node(ctx: &Server, name: &str) -> Result<(), Fail> {
    if ctx.state.knows_node(name) {
        Ok(())
    } else {
        Err(no_node(name))
    }
}

/// Drain a node: nothing new is placed on it, and each of its tasks is stopped once a
/// replacement placed elsewhere is ready.
#[utoipa::path(post, path = "/v1/nodes/{name}/drain",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, description = "The node, now draining", body = api::Node)))]
async fn drain(State(ctx): State<Server>, Path(name): Path<String>) -> Answer<api::Node> {
    set_drain(&ctx, name, true).await
}

/// Stop draining a node: it takes new work again, and moves still under way are called off.
#[utoipa::path(post, path = "/v1/nodes/{name}/undrain",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 200, description = "The node, no longer draining", body = api::Node)))]
async fn undrain(State(ctx): State<Server>, Path(name): Path<String>) -> Answer<api::Node> {
    set_drain(&ctx, name, false).await
}

async fn set_drain(ctx: &Server, name: String, drain: bool) -> Answer<api::Node> {
    known_node(ctx, &name)?;
    let command = Command::SetDrain {
        node: name.clone(),
        drain,
        time: now(),
    };
    if let Applied::NotFound(_) = ctx.propose(command).await.map_err(unavailable)? {
        return Err(no_node(&name));
    }
    ctx.state
        .read(|s| s.nodes.get(&name).cloned())
        .map(Json)
        .ok_or_else(|| no_node(&name))
}

/// An agent's heartbeat: kept in this server's memory, never a Raft entry.
#[utoipa::path(post, path = "/v1/nodes/{name}/heartbeat",
    params(("name" = String, Path, description = "Node name")),
    responses((status = 204, description = "Noted")))]
async fn heartbeat(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Result<StatusCode, Fail> {
    known_node(&ctx, &name)?;
    ctx.heartbeats.beat(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// A report longer than the limit is refused whole: none of it is applied.
fn check_report(node: &str, report: &StatusReport, limits: &ApiLimits) -> Result<(), Fail> {
    let items = report.tasks.len() + report.events.len();
    if items <= limits.max_report_items {
        return Ok(());
    }
    Err(Fail::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "a report of {items} statuses and events from node {node}: over the limit of {} \
             items per report (raise it with --max-report-items); none of it was applied",
            limits.max_report_items
        ),
    ))
}

/// There is room for a report among those waiting to be committed. Taken before the body: a
/// server too busy to admit a report answers so without reading and decoding it, which under a
/// burst of thousands of agents was much of what kept it busy.
struct RoomForReports;

impl axum::extract::FromRequestParts<Server> for RoomForReports {
    type Rejection = Fail;

    async fn from_request_parts(
        _: &mut axum::http::request::Parts,
        ctx: &Server,
    ) -> Result<Self, Fail> {
        ctx.reports.room().map_err(unavailable)?;
        Ok(RoomForReports)
    }
}

/// An agent's report of its tasks and events. Reports arriving within one tick are committed
/// together, as one entry; this answers once that entry commits.
#[utoipa::path(post, path = "/v1/nodes/{name}/status", request_body = StatusReport,
    params(("name" = String, Path, description = "Node name")),
    responses((status = 204, description = "Committed")))]
async fn report(
    State(ctx): State<Server>,
    Path(name): Path<String>,
    _room: RoomForReports,
    Json(report): Json<StatusReport>,
) -> Result<StatusCode, Fail> {
    known_node(&ctx, &name)?;
    check_report(&name, &report, &ctx.limits)?;
    ctx.reports
        .submit(name, report)
        .await
        .map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// Answer once the index is past this one (0 answers at once).
    #[serde(default)]
    pub(crate) index: u64,
    /// How long to block for news, as `250ms` or `25s`; capped by the server (30 s by default).
    /// Without it the query answers at once.
    pub(crate) wait: Option<String>,
}

/// `wait` as a duration, at most `max`; none is zero.
pub(crate) fn wait_of(wait: &Option<String>, max: Duration) -> Result<Duration, Fail> {
    match wait {
        None => Ok(Duration::ZERO),
        Some(w) => humantime::parse_duration(w)
            .map(|d| d.min(max))
            .map_err(|e| {
                Fail::invalid_at("bad query", "wait", format!("{w:?} is not a duration: {e}"))
            }),
    }
}

/// Waits until `ready` holds for the applied state, or `wait` passes.
async fn block_until(ctx: &Server, wait: Duration, ready: impl Fn(&store::State) -> bool) {
    block_on(ctx, ctx.state.subscribe(), wait, ready).await;
}

/// [`block_until`], woken only by `changes` (subscribed before the state is first read, so no
/// change is missed).
async fn block_on(
    ctx: &Server,
    mut changes: tokio::sync::watch::Receiver<u64>,
    wait: Duration,
    ready: impl Fn(&store::State) -> bool,
) {
    let deadline = tokio::time::Instant::now() + wait;
    while !ctx.state.read(&ready) {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Blocking query: the node's assignments once they change past `index`, or after `wait`.
#[utoipa::path(get, path = "/v1/nodes/{name}/assignments",
    params(("name" = String, Path, description = "Node name"), WaitQuery),
    responses(
        (status = 200, description = "The node's whole assignment list", body = Assignments),
        (status = 429, description = "This client holds too many blocking queries", body = ApiError)))]
async fn assignments(
    State(ctx): State<Server>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Answer<Assignments> {
    known_node(&ctx, &name)?;
    let wait = wait_of(&q.wait, ctx.limits.max_wait)?;
    let index_of = |s: &store::State| s.node_index.get(&name).copied().unwrap_or(0);
    // Woken only when this node's assignments move, not by every entry of every other node.
    let changes = ctx.state.watch_node(&name);
    block_on(&ctx, changes, wait, |s| {
        index_of(s) > q.index || q.index == 0
    })
    .await;
    Ok(Json(ctx.state.read(|s| Assignments {
        index: index_of(s).max(1),
        assignments: s.assignments(&name),
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only events with a sequence number past this one.
    #[serde(default)]
    after: u64,
    /// How long to block for a matching event, as `250ms` or `25s`; capped by the server (30 s
    /// by default). Without it the query answers at once.
    wait: Option<String>,
    /// Only events at or after this time: a duration before now (`10m`, `2h`) or an RFC 3339
    /// time (`2026-05-01T12:00:00Z`).
    since: Option<String>,
    /// Only events of this service (it may be gone: its history is kept).
    service: Option<String>,
    /// Only events of this node.
    node: Option<String>,
    /// Only events at this level or above (`warning` shows warnings and errors).
    level: Option<Level>,
}

/// An [`EventQuery`]'s filters, checked.
struct EventFilter {
    after: u64,
    since: Option<Timestamp>,
    service: Option<String>,
    node: Option<String>,
    level: Option<Level>,
}

impl EventFilter {
    fn new(q: EventQuery, now: Timestamp) -> Result<EventFilter, Fail> {
        let since = q.since.as_deref().map(|t| since(t, now)).transpose()?;
        Ok(EventFilter {
            after: q.after,
            since,
            service: q.service,
            node: q.node,
            level: q.level,
        })
    }

    fn matches(&self, e: &Event) -> bool {
        let e = &e.event;
        self.since.is_none_or(|t| e.time >= t)
            && self.level.is_none_or(|l| rank(e.level) >= rank(l))
            && self
                .service
                .as_ref()
                .is_none_or(|s| e.service.as_ref() == Some(s))
            && self
                .node
                .as_ref()
                .is_none_or(|n| e.node.as_ref() == Some(n))
    }

    /// The matching events past `after`, oldest first.
    fn select<'a>(&self, s: &'a store::State) -> impl Iterator<Item = &'a Event> {
        let newer = s.events.iter().rev().take_while(|e| e.seq > self.after);
        let mut found: Vec<&Event> = newer.filter(|e| self.matches(e)).collect();
        found.reverse();
        found.into_iter()
    }
}

fn rank(level: Level) -> u8 {
    match level {
        Level::Info => 0,
        Level::Warning => 1,
        Level::Error => 2,
    }
}

/// `since` as an instant (see [`api::parse_since`]), or the answer refusing it.
pub(crate) fn since(text: &str, now: Timestamp) -> Result<Timestamp, Fail> {
    api::parse_since(text, now).map_err(|why| Fail::invalid_at("bad query", "since", why))
}

/// Events after `after` that match the filters; with `wait`, blocks until one arrives.
#[utoipa::path(get, path = "/v1/events", params(EventQuery), responses(
    (status = 200, description = "The matching events, oldest first", body = Events),
    (status = 429, description = "This client holds too many blocking queries", body = ApiError)))]
async fn events(State(ctx): State<Server>, Query(q): Query<EventQuery>) -> Answer<Events> {
    let wait = wait_of(&q.wait, ctx.limits.max_wait)?;
    let filter = EventFilter::new(q, now())?;
    block_until(&ctx, wait, |s| filter.select(s).next().is_some()).await;
    Ok(Json(ctx.state.read(|s| Events {
        index: s.next_event,
        events: filter.select(s).cloned().collect(),
    })))
}

/// This server's view of the cluster.
#[utoipa::path(get, path = "/v1/status", responses(
    (status = 200, description = "Leader, this server's id, applied index", body = ClusterStatus)))]
async fn status(State(ctx): State<Server>) -> Json<ClusterStatus> {
    let leader = ctx.raft.metrics().borrow().current_leader;
    Json(ClusterStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        leader,
        node_id: ctx.id,
        applied_index: ctx.state.applied_index(),
    })
}

async fn raft_append(State(ctx): State<Server>, Json(req): Json<AppendEntriesRequest>) -> Response {
    Json(ctx.raft.append_entries(req).await).into_response()
}

async fn raft_vote(State(ctx): State<Server>, Json(req): Json<VoteRequest>) -> Response {
    Json(ctx.raft.vote(req).await).into_response()
}

async fn raft_snapshot(
    State(ctx): State<Server>,
    Json(req): Json<InstallSnapshotRequest>,
) -> Response {
    Json(ctx.raft.install_snapshot(req).await).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(fail: Fail) -> String {
        assert_eq!(fail.0, StatusCode::BAD_REQUEST);
        let p = &fail.1.problems[0];
        format!("{}: {}", p.path, p.message)
    }

    #[test]
    fn a_page_limit_defaults_to_the_maximum_and_outside_it_is_refused_naming_it() {
        assert_eq!(page_limit(None).unwrap(), api::MAX_PAGE);
        assert_eq!(page_limit(Some(7)).unwrap(), 7);
        for bad in [0, api::MAX_PAGE + 1] {
            let text = problem(page_limit(Some(bad)).unwrap_err());
            assert!(
                text.starts_with("limit: ") && text.contains("1000"),
                "{text}"
            );
        }
    }

    async fn body_and_token(answer: Response) -> (Vec<u32>, Option<String>) {
        let token = answer
            .headers()
            .get(api::CONTINUE_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        (serde_json::from_slice(&bytes).unwrap(), token)
    }

    #[tokio::test]
    async fn a_page_names_its_last_key_only_when_more_follow() {
        let keys = ["1", "2", "3"];
        let page_of = |limit| page([1u32, 2, 3].into_iter(), limit, |n| keys[*n as usize - 1]);
        assert_eq!(
            body_and_token(page_of(2)).await,
            (vec![1, 2], Some("2".into()))
        );
        assert_eq!(body_and_token(page_of(3)).await, (vec![1, 2, 3], None));
    }

    #[test]
    fn a_bad_since_names_the_parameter() {
        let now = Timestamp(10 * 60_000 + 5);
        assert_eq!(since("10m", now).unwrap(), Timestamp(5));
        let text = problem(since("yesterday", now).unwrap_err());
        assert!(
            text.starts_with("since: ") && text.contains("RFC 3339"),
            "{text}"
        );
    }

    fn event(level: Level, service: Option<&str>, node: Option<&str>, time: u64) -> Event {
        Event {
            seq: 1,
            event: api::NewEvent {
                time: Timestamp(time),
                level,
                reason: "r".into(),
                service: service.map(str::to_string),
                task: None,
                node: node.map(str::to_string),
                message: String::new(),
            },
        }
    }

    #[test]
    fn an_event_filter_keeps_its_level_and_above_and_every_given_field_must_match() {
        let filter = EventFilter {
            after: 0,
            since: Some(Timestamp(100)),
            service: Some("web".into()),
            node: Some("n3".into()),
            level: Some(Level::Warning),
        };
        let web = Some("web");
        let n3 = Some("n3");
        assert!(filter.matches(&event(Level::Warning, web, n3, 100)));
        assert!(filter.matches(&event(Level::Error, web, n3, 200)));
        assert!(
            !filter.matches(&event(Level::Info, web, n3, 200)),
            "below the level"
        );
        assert!(
            !filter.matches(&event(Level::Error, web, n3, 99)),
            "before since"
        );
        assert!(!filter.matches(&event(Level::Error, Some("db"), n3, 200)));
        assert!(!filter.matches(&event(Level::Error, web, None, 200)));
    }

    #[test]
    fn a_deploy_over_a_limit_is_refused_naming_the_limit_and_the_flag_to_raise_it() {
        let limits = ApiLimits {
            max_services_per_deploy: 2,
            max_replicas: 5,
            ..ApiLimits::default()
        };
        let yaml = "name: a\nreplicas: 6\ncommand: [x]\n";
        let env = std::collections::BTreeMap::new();
        let one = spec::parse_file("a.yaml", yaml, &env, None)
            .unwrap()
            .services[0]
            .clone();
        let deploy = |n: usize| DeployRequest {
            services: (0..n)
                .map(|i| spec::ServiceSpec {
                    name: format!("s{i}"),
                    ..one.clone()
                })
                .collect(),
            dry_run: false,
            objects: Vec::new(),
            force: false,
        };
        let said = |problems: Vec<Problem>| -> Vec<String> {
            problems
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect()
        };
        assert_eq!(
            said(check_deploy(&deploy(3), &limits)),
            [
                "services: a deploy of 3 services: over the limit of 2 services per deploy \
              (raise it with --max-services-per-deploy)"
            ],
            "refused on the count alone"
        );
        let over =
            "6 replicas: over the limit of 5 replicas per service (raise it with --max-replicas)";
        assert_eq!(
            said(check_deploy(&deploy(2), &limits)),
            [
                format!("s0.replicas: {over}"),
                format!("s1.replicas: {over}")
            ]
        );
    }

    #[test]
    fn the_documented_continue_header_is_the_one_answered() {
        let (_, doc) = OpenApiRouter::<Server>::new()
            .routes(routes!(list_tasks))
            .split_for_parts();
        let doc = serde_json::to_value(doc).unwrap();
        let headers = &doc["paths"]["/v1/tasks"]["get"]["responses"]["200"]["headers"];
        assert!(headers[api::CONTINUE_HEADER].is_object(), "{headers}");
    }
}
