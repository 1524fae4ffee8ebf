//! The agent's own API: task logs, which the server proxies for `outpost logs`. It checks the
//! same bearer token as the server.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::logs::LogStore;

#[derive(Clone)]
struct Ctx {
    logs: LogStore,
    token: String,
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

pub async fn serve(listener: tokio::net::TcpListener, logs: LogStore, token: String) {
    let app = Router::new()
        .route("/v1/agent/logs/{task}", get(task_logs))
        .with_state(Ctx { logs, token });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("agent API stopped: {e}");
    }
}

async fn task_logs(
    State(ctx): State<Ctx>,
    Path(task): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == ctx.token);
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
    }
    if task.contains('/') || task.starts_with('.') {
        return (StatusCode::BAD_REQUEST, "bad task id\n").into_response();
    }
    let (head, offset) = match ctx.logs.tail(&task, q.tail) {
        Ok(x) => x,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read log: {e}\n"),
            )
                .into_response();
        }
    };
    let first = futures_util::stream::once(async move { head });
    let body = if q.follow {
        Body::from_stream(
            first
                .chain(ctx.logs.follow(&task, offset))
                .map(Ok::<_, std::io::Error>),
        )
    } else {
        Body::from_stream(first.map(Ok::<_, std::io::Error>))
    };
    body.into_response()
}
