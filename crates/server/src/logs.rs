//! `GET /v1/logs/{target}`: the log of one task, or of every task of a service, fetched from the
//! agents that keep the files. Lines of a service's tasks are prefixed with the task id. With
//! `follow`, tasks that appear later (a replacement, a scale-up) join the stream.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use httpd::{Path, Query};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::Server;
use crate::answer::no_log_target;

/// How often a followed service is checked for new tasks.
const NEW_TASK_POLL: Duration = Duration::from_millis(500);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only the last N lines of each task.
    tail: Option<usize>,
    /// Keep the answer open and stream new output, also of tasks that appear later.
    #[serde(default)]
    follow: bool,
    /// The output of each task's run before its last restart instead.
    #[serde(default)]
    previous: bool,
    /// Only lines written since: a duration back from now (`10m`; each node reads it on its own
    /// clock) or an RFC 3339 time.
    since: Option<String>,
    /// Each line starts with the time it was written (RFC 3339), after a service's task prefix.
    #[serde(default)]
    timestamps: bool,
}

/// (task id, agent base URL) of what `target` names: one task, or every task of a service.
fn sources(ctx: &Server, target: &str) -> Option<(bool, Vec<(String, String)>)> {
    ctx.state.read(|s| {
        let addr = |node: &Option<String>| {
            node.as_ref()
                .and_then(|n| s.nodes.get(n))
                .map(|n| n.address.clone())
        };
        if let Some(task) = s.tasks.get(target).or_else(|| s.finished.get(target)) {
            return Some((
                false,
                addr(&task.node)
                    .map(|a| (task.id.clone(), a))
                    .into_iter()
                    .collect(),
            ));
        }
        if !s.services.contains_key(target) {
            return None;
        }
        let tasks = s
            .tasks
            .values()
            .filter(|t| t.service == target)
            .filter_map(|t| addr(&t.node).map(|a| (t.id.clone(), a)));
        Some((true, tasks.collect()))
    })
}

/// The log text of a service's tasks (each line prefixed with its task id) or of one task.
#[utoipa::path(get, path = "/v1/logs/{target}",
    params(("target" = String, Path, description = "A service name or a task id"), LogQuery),
    responses(
        (status = 200, description = "Log text", content_type = "text/plain", body = String),
        (status = 400, description = "`since` is neither a duration nor an RFC 3339 time", body = api::ApiError),
        (status = 502, description = "With `previous`: the task's agent cannot be reached", body = api::ApiError)))]
pub async fn logs(
    State(ctx): State<Server>,
    Path(target): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    if let Some(since) = &q.since
        && let Err(refused) = crate::routes::since(since, api::Timestamp(0))
    {
        return refused.into_response();
    }
    let Some((is_service, tasks)) = sources(&ctx, &target) else {
        return no_log_target(&target).into_response();
    };
    let part = Part {
        tail: q.tail,
        follow: q.follow && !q.previous,
        previous: q.previous,
        since: q.since,
        timestamps: q.timestamps,
    };
    if part.previous && !is_service {
        return previous(&ctx, tasks.into_iter().next(), &part).await;
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut streams = Vec::new();
        for (task, addr) in tasks {
            seen.insert(task.clone());
            let prefix = is_service.then(|| format!("{task} | "));
            let copy = pump(ctx.clone(), addr, task, prefix, part.clone(), tx.clone());
            match part.follow {
                true => streams.push(tokio::spawn(copy)),
                false => copy.await,
            }
        }
        if !part.follow || !is_service {
            return;
        }
        // Followed service: watch for new tasks until the client goes away.
        while !tx.is_closed() {
            tokio::time::sleep(NEW_TASK_POLL).await;
            let Some((_, now)) = sources(&ctx, &target) else {
                break;
            };
            for (task, addr) in now {
                if seen.insert(task.clone()) {
                    let prefix = Some(format!("{task} | "));
                    // A new task: all its output.
                    let part = Part {
                        tail: None,
                        since: None,
                        ..part.clone()
                    };
                    streams.push(tokio::spawn(pump(
                        ctx.clone(),
                        addr,
                        task,
                        prefix,
                        part,
                        tx.clone(),
                    )));
                }
            }
        }
        for s in streams {
            s.abort();
        }
    });
    let body =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::io::Error>);
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

/// What part of a task's log to copy.
#[derive(Debug, Clone)]
struct Part {
    tail: Option<usize>,
    follow: bool,
    previous: bool,
    since: Option<String>,
    timestamps: bool,
}

impl Part {
    /// Where the task's agent answers this part of its log.
    fn url(&self, addr: &str, task: &str) -> String {
        let mut url = format!("{addr}/v1/agent/logs/{task}?follow={}", self.follow);
        if self.previous {
            url.push_str("&previous=true");
        }
        if self.timestamps {
            url.push_str("&timestamps=true");
        }
        if let Some(n) = self.tail {
            url.push_str(&format!("&tail={n}"));
        }
        if let Some(since) = &self.since {
            url.push_str(&format!("&since={}", client::encode(since)));
        }
        url
    }
}

/// One task's previous run, answered as its agent answers (an error when it has none).
async fn previous(ctx: &Server, task: Option<(String, String)>, part: &Part) -> Response {
    let Some((task, addr)) = task else {
        let why = "the task is on no node: it has no output";
        return httpd::Fail::new(axum::http::StatusCode::NOT_FOUND, why).into_response();
    };
    match ctx
        .http
        .get(part.url(&addr, &task))
        .bearer_auth(&ctx.token)
        .send()
        .await
    {
        Ok(answer) => {
            let status = axum::http::StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            let body = answer.bytes().await.unwrap_or_default();
            let kind = if status.is_success() {
                "text/plain; charset=utf-8"
            } else {
                "application/json"
            };
            (status, [(header::CONTENT_TYPE, kind)], body).into_response()
        }
        Err(e) => {
            let why = format!("cannot reach the agent of {task} at {addr}: {e}");
            httpd::Fail::new(axum::http::StatusCode::BAD_GATEWAY, why).into_response()
        }
    }
}

/// Copies one task's log from its agent into `tx`, line by line with `prefix`.
async fn pump(
    ctx: Server,
    addr: String,
    task: String,
    prefix: Option<String>,
    part: Part,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let resp = match ctx
        .http
        .get(part.url(&addr, &task))
        .bearer_auth(&ctx.token)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            let why = (r.json::<api::ApiError>().await)
                .map_or_else(|_| format!("the agent answered {status}"), |e| e.error);
            let _ = tx.send(format!("[{task}: {why}]\n").into_bytes()).await;
            return;
        }
        Err(e) => {
            let _ = tx
                .send(format!("[{task}: cannot reach its agent at {addr}: {e}]\n").into_bytes())
                .await;
            return;
        }
    };
    let mut body = resp.bytes_stream();
    let mut partial: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        let out = match &prefix {
            None => chunk.to_vec(),
            Some(p) => api::prefix_lines(p, &mut partial, &chunk),
        };
        if !out.is_empty() && tx.send(out).await.is_err() {
            return;
        }
    }
    if let (Some(p), false) = (&prefix, partial.is_empty()) {
        partial.push(b'\n');
        let _ = tx.send([p.as_bytes(), &partial].concat()).await;
    }
}
