//! The agent's own API: task logs, which the server proxies for `outpost logs`, and the two
//! routes of failure detection: `GET /v1/agent/health` (the cheapest answer there is) and
//! `POST /v1/agent/probe`, with which the leader asks this agent whether it can reach another
//! node's agent API when that node's heartbeats stop. It checks the same bearer token as the
//! server on every route, through the same hardened listener (`httpd`): a cap on open
//! connections and a header-read timeout, so idle clients cannot exhaust the agent's file
//! descriptors. Every refusal is an `ApiError`.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use httpd::{Fail, Json, Path, Query};
use serde::Deserialize;

use crate::logs::TaskLogs;

/// 64: the servers of the cluster proxy a few log streams at a time; nothing else connects.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// What the agent's API handlers share.
#[derive(Clone)]
struct AgentApi {
    logs: TaskLogs,
    /// For probes of other agents: the cluster token, and connections kept briefly.
    token: String,
    http: reqwest::Client,
}

/// How long an idle connection to another agent is kept, 2 s: below the 5 s after which their
/// listeners close idle connections.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// Serves the agent's API until the process ends: at most [`DEFAULT_MAX_CONNECTIONS`] open
/// connections, with `httpd`'s default header-read timeout.
pub async fn serve(listener: tokio::net::TcpListener, logs: TaskLogs, token: String) {
    let limits = httpd::Limits::with_max_connections(DEFAULT_MAX_CONNECTIONS);
    let http = reqwest::Client::builder()
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .unwrap_or_default();
    let app = Router::new()
        .route("/v1/agent/logs/{task}", get(task_logs))
        .route("/v1/agent/health", get(health))
        .route("/v1/agent/probe", post(probe))
        .route_layer(axum::middleware::from_fn_with_state(
            httpd::Token(token.as_str().into()),
            httpd::authorize,
        ))
        .fallback(httpd::not_found)
        .with_state(AgentApi { logs, token, http });
    httpd::serve(listener, app, limits, std::future::pending()).await;
}

async fn task_logs(
    State(api): State<AgentApi>,
    Path(task): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    if task.contains('/') || task.starts_with('.') {
        return Fail::invalid_at(
            "bad task id",
            "task",
            format!("{task:?} is not a task id (like web.1.7)"),
        )
        .into_response();
    }
    let (head, offset) = match api.logs.tail(&task, q.tail) {
        Ok(x) => x,
        Err(e) => {
            return Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the log of {task}: {e}"),
            )
            .into_response();
        }
    };
    let first = futures_util::stream::once(async move { head });
    let body = if q.follow {
        Body::from_stream(
            first
                .chain(api.logs.follow(&task, offset))
                .map(Ok::<_, std::io::Error>),
        )
    } else {
        Body::from_stream(first.map(Ok::<_, std::io::Error>))
    };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Alive: the process runs and its API answers.
async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Whether this agent reaches the agent API at `address` (another node's, as it registered):
/// a few health requests at once, each with a short timeout (`client::agent`).
async fn probe(
    State(api): State<AgentApi>,
    Json(req): Json<api::ProbeRequest>,
) -> Result<Json<api::ProbeAnswer>, Fail> {
    let address = req.address.trim();
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(Fail::invalid_at(
            "bad probe",
            "address",
            format!("{address:?} is not an agent API address (like http://10.0.0.7:7001)"),
        ));
    }
    let reached = client::agent::reachable(&api.http, address, &api.token).await;
    Ok(Json(api::ProbeAnswer { reached }))
}
