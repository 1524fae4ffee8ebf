//! The agent's own API: task logs, which the server proxies for `outpost logs`. Over TLS it
//! answers only servers' certificates of the cluster; a plain agent checks the server's bearer
//! token. Both through the same hardened listener (`httpd`): a cap on open connections and a
//! header-read timeout, so idle clients cannot exhaust the agent's file descriptors. Every
//! refusal is an `ApiError`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use httpd::{Fail, Path, Query};
use serde::Deserialize;

use crate::logs::TaskLogs;

/// 64: the servers of the cluster proxy a few log streams at a time; nothing else connects.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// What the agent's API handlers share.
#[derive(Clone)]
struct AgentApi {
    logs: TaskLogs,
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// Serves the agent's API until the process ends: at most [`DEFAULT_MAX_CONNECTIONS`] open
/// connections, with `httpd`'s default header-read timeout. With `tls`, only clients that
/// present a server's certificate of the cluster are answered; without, the bearer token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    logs: TaskLogs,
    token: String,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let limits = httpd::Limits::with_max_connections(DEFAULT_MAX_CONNECTIONS);
    let routes = Router::new().route("/v1/agent/logs/{task}", get(task_logs));
    let routes = match tls {
        Some(_) => routes.route_layer(axum::middleware::from_fn(only_servers)),
        None => routes.route_layer(axum::middleware::from_fn_with_state(
            httpd::Token(token.into()),
            httpd::authorize,
        )),
    };
    let app = routes
        .fallback(httpd::not_found)
        .with_state(AgentApi { logs });
    httpd::serve_tls(listener, app, limits, tls, std::future::pending()).await;
}

/// Middleware: 403 unless the client's certificate (checked against the CA in the handshake)
/// is a server's; agents and people read logs through a server.
async fn only_servers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let server = req
        .extensions()
        .get::<httpd::PeerCertificate>()
        .and_then(|c| c.0.as_ref())
        .is_some_and(|c| pki::tls::has_role(c, pki::NodeRole::Server));
    if server {
        next.run(req).await
    } else {
        Fail::new(
            StatusCode::FORBIDDEN,
            "only the cluster's servers may read an agent's logs: use `outpost logs` against a server",
        )
        .into_response()
    }
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
