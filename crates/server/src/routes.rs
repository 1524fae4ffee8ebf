//! The `/v1` API. Every route but the OpenAPI document needs the bearer token. Writes are
//! validated whole before anything is proposed, so a bad request changes nothing; reads answer
//! from this server's applied state.

use std::time::Duration;

use api::{
    ApiError, Assignments, ClusterStatus, DeployRequest, DeployResponse, DesiredState, Events,
    Problem, RegisterRequest, ScaleRequest, ServiceSummary, StatusReport, Task, TaskState,
};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use store::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use store::{Command, Response as Applied};

use crate::{Ctx, now};

/// Longest a blocking query may wait: below common proxy idle timeouts.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub fn router(ctx: Ctx) -> Router {
    let api = Router::new()
        .route("/v1/services", get(list_services).post(deploy))
        .route(
            "/v1/services/{name}",
            get(get_service).delete(remove_service),
        )
        .route("/v1/services/{name}/scale", post(scale))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/nodes", get(list_nodes).post(register))
        .route("/v1/nodes/{name}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{name}/status", post(report))
        .route("/v1/nodes/{name}/assignments", get(assignments))
        .route("/v1/events", get(events))
        .route("/v1/logs/{target}", get(crate::logs::logs))
        .route("/v1/status", get(status))
        .route("/v1/raft/append", post(raft_append))
        .route("/v1/raft/vote", post(raft_vote))
        .route("/v1/raft/snapshot", post(raft_snapshot))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authorize));
    api.route("/v1/openapi.json", get(openapi)).with_state(ctx)
}

/// An error answer: status plus the JSON body every client understands.
pub struct Fail(StatusCode, ApiError);

impl Fail {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Fail {
        Fail(
            status,
            ApiError {
                error: message.into(),
                problems: Vec::new(),
            },
        )
    }

    fn invalid(message: &str, problems: Vec<Problem>) -> Fail {
        Fail(
            StatusCode::BAD_REQUEST,
            ApiError {
                error: message.into(),
                problems,
            },
        )
    }

    fn unavailable(e: String) -> Fail {
        Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the change could not be committed: {e}; retry shortly"),
        )
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type Answer<T> = Result<Json<T>, Fail>;

async fn authorize(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if t == ctx.token => next.run(req).await,
        Some(_) => Fail::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response(),
        None => Fail::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
        )
        .into_response(),
    }
}

async fn openapi() -> Json<serde_json::Value> {
    Json(api::openapi::document(env!("CARGO_PKG_VERSION")))
}

fn summary(s: &store::State, name: &str) -> Option<ServiceSummary> {
    let svc = s.services.get(name)?;
    let current = s.tasks.values().filter(|t| {
        t.service == name && t.desired == DesiredState::Running && t.version == svc.version
    });
    let (mut running, mut ready) = (0, 0);
    for t in current {
        running += u32::from(t.state == TaskState::Running);
        ready += u32::from(t.ready);
    }
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
    })
}

fn no_service(name: &str) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("no service named {name:?} (see `outpost services`)"),
    )
}

async fn list_services(State(ctx): State<Ctx>) -> Json<Vec<ServiceSummary>> {
    Json(
        ctx.state
            .read(|s| s.services.keys().filter_map(|n| summary(s, n)).collect()),
    )
}

async fn get_service(State(ctx): State<Ctx>, Path(name): Path<String>) -> Answer<ServiceSummary> {
    ctx.state
        .read(|s| summary(s, &name))
        .map(Json)
        .ok_or_else(|| no_service(&name))
}

/// Every problem of a deploy, each located by field path; empty when it may proceed.
fn check_deploy(req: &DeployRequest) -> Vec<Problem> {
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
    problems
}

async fn deploy(State(ctx): State<Ctx>, Json(req): Json<DeployRequest>) -> Answer<DeployResponse> {
    let problems = check_deploy(&req);
    if !problems.is_empty() {
        return Err(Fail::invalid(
            "the deploy was refused; nothing was changed",
            problems,
        ));
    }
    let command = Command::Deploy {
        services: req.services,
        time: now(),
    };
    let changes = if req.dry_run {
        // The same apply the store runs, on a copy: what is shown is exactly what would happen.
        let mut copy = ctx.state.read(|s| s.clone());
        let next = copy.index + 1;
        copy.apply(next, &command)
    } else {
        ctx.propose(command).await.map_err(Fail::unavailable)?
    };
    match changes {
        Applied::Deployed(changes) => Ok(Json(DeployResponse {
            dry_run: req.dry_run,
            changes,
        })),
        other => Err(Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected store answer {other:?}"),
        )),
    }
}

async fn remove_service(
    State(ctx): State<Ctx>,
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
        .map_err(Fail::unavailable)?
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

async fn scale(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> Answer<ServiceSummary> {
    if req.replicas > spec::MAX_REPLICAS {
        return Err(Fail::invalid(
            "the scale was refused",
            vec![Problem {
                path: "replicas".into(),
                message: format!(
                    "{} is more than the maximum of {}",
                    req.replicas,
                    spec::MAX_REPLICAS
                ),
            }],
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
        .map_err(Fail::unavailable)?
    {
        Applied::NotFound(_) => Err(no_service(&name)),
        _ => ctx
            .state
            .read(|s| summary(s, &name))
            .map(Json)
            .ok_or_else(|| no_service(&name)),
    }
}

#[derive(Deserialize)]
struct TaskQuery {
    service: Option<String>,
}

async fn list_tasks(State(ctx): State<Ctx>, Query(q): Query<TaskQuery>) -> Answer<Vec<Task>> {
    ctx.state.read(|s| match &q.service {
        Some(name) if !s.services.contains_key(name) => Err(no_service(name)),
        Some(name) => Ok(Json(
            s.tasks
                .values()
                .filter(|t| &t.service == name)
                .cloned()
                .collect(),
        )),
        None => Ok(Json(s.tasks.values().cloned().collect())),
    })
}

async fn list_nodes(State(ctx): State<Ctx>) -> Json<Vec<api::Node>> {
    Json(ctx.state.read(|s| s.nodes.values().cloned().collect()))
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
        Err(Fail::invalid(
            "the node was refused",
            vec![Problem {
                path: "name".into(),
                message: format!(
                    "{name:?} is not a valid node name (letters, digits, '-', '.', '_'; at most 63)"
                ),
            }],
        ))
    }
}

async fn register(State(ctx): State<Ctx>, Json(req): Json<RegisterRequest>) -> Answer<api::Node> {
    check_node_name(&req.name)?;
    let name = req.name.clone();
    ctx.propose(Command::RegisterNode {
        node: req,
        time: now(),
    })
    .await
    .map_err(Fail::unavailable)?;
    ctx.heartbeats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone(), tokio::time::Instant::now());
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

fn known_node(ctx: &Ctx, name: &str) -> Result<(), Fail> {
    if ctx.state.read(|s| s.nodes.contains_key(name)) {
        Ok(())
    } else {
        Err(Fail::new(
            StatusCode::NOT_FOUND,
            format!("no node named {name:?}; register it first"),
        ))
    }
}

async fn heartbeat(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<StatusCode, Fail> {
    known_node(&ctx, &name)?;
    ctx.heartbeats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name, tokio::time::Instant::now());
    Ok(StatusCode::NO_CONTENT)
}

async fn report(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Json(report): Json<StatusReport>,
) -> Result<StatusCode, Fail> {
    known_node(&ctx, &name)?;
    ctx.propose(Command::Report {
        node: name,
        report,
        time: now(),
    })
    .await
    .map_err(Fail::unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    after: u64,
    wait: Option<String>,
}

impl WaitQuery {
    fn wait(&self) -> Result<Duration, Fail> {
        match &self.wait {
            None => Ok(Duration::ZERO),
            Some(w) => humantime::parse_duration(w)
                .map(|d| d.min(MAX_WAIT))
                .map_err(|e| {
                    Fail::invalid(
                        "bad query",
                        vec![Problem {
                            path: "wait".into(),
                            message: format!("{w:?} is not a duration: {e}"),
                        }],
                    )
                }),
        }
    }
}

/// Waits until `ready` holds for the applied state, or `wait` passes.
async fn block_until(ctx: &Ctx, wait: Duration, ready: impl Fn(&store::State) -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = ctx.state.subscribe();
    while !ctx.state.read(&ready) {
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

async fn assignments(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Answer<Assignments> {
    known_node(&ctx, &name)?;
    let index_of = |s: &store::State| s.node_index.get(&name).copied().unwrap_or(0);
    block_until(&ctx, q.wait()?, |s| index_of(s) > q.index || q.index == 0).await;
    Ok(Json(ctx.state.read(|s| Assignments {
        index: index_of(s).max(1),
        assignments: s.assignments(&name),
    })))
}

async fn events(State(ctx): State<Ctx>, Query(q): Query<WaitQuery>) -> Answer<Events> {
    block_until(&ctx, q.wait()?, |s| s.next_event > q.after).await;
    Ok(Json(ctx.state.read(|s| {
        Events {
            index: s.next_event,
            events: s
                .events
                .iter()
                .filter(|e| e.seq > q.after)
                .cloned()
                .collect(),
        }
    })))
}

async fn status(State(ctx): State<Ctx>) -> Json<ClusterStatus> {
    let leader = ctx.raft.metrics().borrow().current_leader;
    Json(ClusterStatus {
        version: env!("CARGO_PKG_VERSION").into(),
        leader,
        node_id: ctx.id,
        applied_index: ctx.state.applied_index(),
    })
}

async fn raft_append(State(ctx): State<Ctx>, Json(req): Json<AppendEntriesRequest>) -> Response {
    Json(ctx.raft.append_entries(req).await).into_response()
}

async fn raft_vote(State(ctx): State<Ctx>, Json(req): Json<VoteRequest>) -> Response {
    Json(ctx.raft.vote(req).await).into_response()
}

async fn raft_snapshot(
    State(ctx): State<Ctx>,
    Json(req): Json<InstallSnapshotRequest>,
) -> Response {
    Json(ctx.raft.install_snapshot(req).await).into_response()
}
