//! `POST /v1/tasks/{id}/exec`: a command run beside a task by the agent of its node, its output
//! passed back as the agent streams it (`api::exec` frames), untouched. Closing the answer
//! early ends the command. A request body of frames (the start, then the caller's stdin and
//! window sizes) is passed on to the agent as it comes, untouched too, on one request per hop:
//! the answer flows while the body still does. No time limit: an interactive session may sit
//! idle for as long as its operator does.

use axum::body::Body;
use axum::extract::{FromRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use httpd::{Fail, Json, Path};

use crate::Server;

/// Runs a command beside a running task: in its container (the Engine's exec), or for a process
/// with its environment, working directory and cgroup. The body is an `ExecRequest` as JSON
/// (no stdin), or frames (`application/octet-stream`): a start frame (kind 16, the
/// `ExecRequest` as JSON), then stdin (17), its end (18) and window sizes (19), each a kind
/// byte, a big-endian u32 length and the payload.
#[utoipa::path(post, path = "/v1/tasks/{id}/exec",
    request_body(content(
        (api::ExecRequest = "application/json"),
        (Vec<u8> = "application/octet-stream"))),
    params(("id" = String, Path, description = "A task id, as `outpost ps` shows it")),
    responses(
        (status = 200, description = "Frames of stdout and stderr, then how it ended",
            content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "No command, or frames that are not an exec's", body = api::ApiError),
        (status = 404, description = "No such task", body = api::ApiError),
        (status = 409, description = "The task does not run now", body = api::ApiError),
        (status = 502, description = "The task's agent cannot be reached", body = api::ApiError)))]
pub async fn exec(
    State(ctx): State<Server>,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let framed = (request.headers().get(header::CONTENT_TYPE))
        .is_some_and(|v| v.as_bytes().starts_with(api::EXEC_FRAMES.as_bytes()));
    let body = if framed {
        let frames = request.into_body().into_data_stream();
        Forward::Frames(reqwest::Body::wrap_stream(frames))
    } else {
        match <Json<api::ExecRequest> as FromRequest<()>>::from_request(request, &()).await {
            Ok(Json(req)) if req.argv.first().is_none_or(|p| p.is_empty()) => {
                return Fail::invalid_at("no command", "argv", "give the command to run")
                    .into_response();
            }
            Ok(Json(req)) => Forward::Json(req),
            Err(fail) => return fail.into_response(),
        }
    };
    let found = ctx.state.read(|s| {
        let task = s.tasks.get(&id)?;
        let node = task.node.as_ref().and_then(|n| s.nodes.get(n));
        Some(node.map(|n| n.address.clone()))
    });
    let addr = match found {
        None => {
            let why = format!("no task named {id:?} (see `outpost ps`)");
            return Fail::new(StatusCode::NOT_FOUND, why).into_response();
        }
        Some(None) => {
            let why = format!("{id} is on no node yet: exec needs a running task");
            return Fail::new(StatusCode::CONFLICT, why).into_response();
        }
        Some(Some(addr)) => addr,
    };
    let url = format!("{addr}/v1/agent/exec/{id}");
    let to_agent = ctx.http.post(&url).bearer_auth(&ctx.token);
    let sent = match body {
        Forward::Json(req) => to_agent.json(&req),
        Forward::Frames(frames) => to_agent
            .header(header::CONTENT_TYPE, api::EXEC_FRAMES)
            .body(frames),
    }
    .send()
    .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => {
            let why = format!("cannot reach the agent of {id} at {addr}: {e}");
            return Fail::new(StatusCode::BAD_GATEWAY, why).into_response();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = (answer.headers().get(header::CONTENT_TYPE).cloned())
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    let body = answer
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// What the agent is sent: the old clients' JSON, or the caller's frames as they come.
enum Forward {
    Json(api::ExecRequest),
    Frames(reqwest::Body),
}
