//! `POST /v1/images/pull`: nodes obtain an image into their stores (`outpost image pull`). Each
//! node's agent is asked at once (`POST /v1/agent/images/pull`), and their NDJSON progress
//! lines are passed on as they come, whole lines only, so one node's never cut into another's.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use httpd::{Fail, Json};
use tokio::sync::mpsc;

use crate::Server;

/// (name, agent address) of each node to ask.
type Asked = Vec<(String, String)>;

/// Nodes the pull is for: the named ones (every live node when none is), and the named ones
/// that cannot be asked, with why. A name the cluster does not know is refused.
fn targets(ctx: &Server, named: &[String]) -> Result<(Asked, Vec<api::PullLine>), Fail> {
    let live = crate::stats::live_nodes(ctx, None);
    if named.is_empty() {
        return Ok((live, Vec::new()));
    }
    let (mut asked, mut lost) = (Vec::new(), Vec::new());
    for name in named {
        match live.iter().find(|(n, _)| n == name) {
            Some(node) => asked.push(node.clone()),
            None => {
                let state = ctx.state.read(|s| s.nodes.get(name).map(|n| n.state));
                let Some(state) = state else {
                    let why = format!("no node named {name:?} (see `outpost nodes`)");
                    return Err(Fail::new(StatusCode::NOT_FOUND, why));
                };
                lost.push(api::PullLine::Failed {
                    node: name.clone(),
                    error: format!("the node is {state}: its agent cannot be asked"),
                });
            }
        }
    }
    Ok((asked, lost))
}

/// Every asked node obtains the image into its store (peers first, then its registry), as
/// NDJSON `PullLine`s: each node's lines end with `done` (where it came from, bytes moved) or
/// `failed` (each source's failure).
#[utoipa::path(post, path = "/v1/images/pull", request_body = api::PullRequest, responses(
    (status = 200, description = "One `PullLine` a line, as the nodes go", content_type = "application/x-ndjson", body = api::PullLine),
    (status = 404, description = "A named node the cluster does not know", body = api::ApiError)))]
pub async fn pull(State(ctx): State<Server>, Json(asked): Json<api::PullRequest>) -> Response {
    let (nodes, lost) = match targets(&ctx, &asked.nodes) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    for line in lost {
        let _ = tx.try_send(encode(&line));
    }
    for (node, address) in nodes {
        let (ctx, image, tx) = (ctx.clone(), asked.image.clone(), tx.clone());
        tokio::spawn(async move { pump(&ctx, node, address, image, tx).await });
    }
    drop(tx);
    let body =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::io::Error>);
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

fn encode(line: &api::PullLine) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// One node's pull: its agent's lines into `tx`, and a `failed` line of this server's when the
/// agent cannot be asked or stops before its last line.
async fn pump(
    ctx: &Server,
    node: String,
    address: String,
    image: String,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let failed = |error: String| {
        encode(&api::PullLine::Failed {
            node: node.clone(),
            error,
        })
    };
    let request = (ctx.http.post(format!("{address}/v1/agent/images/pull")))
        .bearer_auth(&ctx.token)
        .json(&api::PullRequest {
            image,
            nodes: Vec::new(),
        });
    let answer = match request.send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            let why = (r.json::<api::ApiError>().await)
                .map_or_else(|_| format!("its agent answered {status}"), |e| e.error);
            let _ = tx.send(failed(why)).await;
            return;
        }
        Err(e) => {
            let why = format!("cannot reach its agent at {address}: {e}");
            let _ = tx.send(failed(why)).await;
            return;
        }
    };
    let mut body = answer.bytes_stream();
    let mut partial = Vec::new();
    let mut ended = false;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=end).collect();
            ended |= serde_json::from_slice::<api::PullLine>(&line).is_ok_and(|l| {
                matches!(l, api::PullLine::Done { .. } | api::PullLine::Failed { .. })
            });
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    if !ended {
        let why = format!("its agent at {address} stopped answering before the pull ended");
        let _ = tx.send(failed(why)).await;
    }
}
