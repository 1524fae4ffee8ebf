//! Image bundles and the keys that sign them.
//!
//! - `POST /v1/images/save`: a signed bundle of images from a node's store. The node's agent
//!   plans it (which blobs, leaving out what the target has) and writes it; this server signs
//!   the plan in between, so the signing key never leaves the servers.
//! - `POST /v1/images/load?node=N`: a bundle, passed as it comes to the node's agent with the
//!   public keys the cluster trusts; the agent checks all of it before anything is visible.
//! - `GET|POST /v1/image-keys`, `DELETE /v1/image-keys/{id}`: the keys bundles are checked
//!   against. The cluster's own key is derived from the CA key at a generation (the same on
//!   every server, none stored); revoking it moves to the next generation.

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use httpd::{Fail, Json, Path, Query};
use ring::signature::KeyPair as _;
use serde::Deserialize;
use store::{Command, Response as Applied};

use crate::Server;
use crate::answer::{Answer, no_node, unavailable};
use crate::now;

/// The header that carries the trusted public keys (hex, comma-separated) to an agent.
pub const TRUSTED_KEYS: &str = "x-outpost-trusted-keys";
/// The header of a saved bundle's answer: the bytes of the blobs it carries, uncompressed.
pub const BUNDLE_BYTES: &str = "x-outpost-bundle-bytes";

/// The cluster's own key at `generation`: the CA's on a TLS server, the token's on a plain one.
fn own_key(ctx: &Server, generation: u64) -> ring::signature::Ed25519KeyPair {
    match &ctx.trust {
        Some(trust) => trust.ca.bundle_key(generation),
        None => pki::bundle_key(ctx.token.as_bytes(), generation),
    }
}

/// Every key: the cluster's current one, those added, those revoked.
fn keys(ctx: &Server) -> Vec<api::BundleKey> {
    let (generation, added, revoked) = ctx.state.read(|s| {
        let added: Vec<(String, String, String)> = (s.trusted_keys().into_iter())
            .map(|(id, name, key)| (id.into(), name.into(), key.into()))
            .collect();
        let revoked: Vec<(String, String)> = (s.revoked_keys().into_iter())
            .map(|(id, name)| (id.into(), name.into()))
            .collect();
        (s.own_key_generation(), added, revoked)
    });
    let own = own_key(ctx, generation);
    let own = own.public_key().as_ref();
    let key =
        |id: String, name: String, public_key: String, origin: &str, state: &str| api::BundleKey {
            id,
            name,
            public_key,
            origin: origin.into(),
            state: state.into(),
        };
    let mut keys = vec![key(
        images::key_id(own),
        own_key_name(generation),
        images::hex(own),
        "cluster",
        "trusted",
    )];
    for (id, name, public_key) in added {
        keys.push(key(id, name, public_key, "added", "trusted"));
    }
    for (id, name) in revoked {
        keys.push(key(id, name, String::new(), "", "revoked"));
    }
    keys
}

fn own_key_name(generation: u64) -> String {
    format!("this cluster (generation {generation})")
}

/// The keys the cluster trusts.
#[utoipa::path(get, path = "/v1/image-keys", responses(
    (status = 200, description = "The cluster's own key first, then those added, then the revoked ones", body = Vec<api::BundleKey>)))]
pub async fn list_keys(State(ctx): State<Server>) -> Json<Vec<api::BundleKey>> {
    Json(keys(&ctx))
}

/// Trusts bundles signed by another cluster's key (`outpost image keys` there shows it).
#[utoipa::path(post, path = "/v1/image-keys", request_body = api::TrustKeyRequest, responses(
    (status = 201, description = "The key, now trusted", body = api::BundleKey),
    (status = 400, description = "Not an ed25519 public key, or no name", body = api::ApiError),
    (status = 409, description = "The key was revoked before, or is this cluster's own", body = api::ApiError)))]
pub async fn add_key(
    State(ctx): State<Server>,
    Json(req): Json<api::TrustKeyRequest>,
) -> Result<(StatusCode, Json<api::BundleKey>), Fail> {
    let public_key = req.public_key.trim().to_ascii_lowercase();
    let Some(bytes) = images::public_key(&public_key) else {
        return Err(Fail::invalid_at(
            "not an ed25519 public key (64 hex digits)",
            "public_key",
            "copy the key `outpost image keys` shows on the cluster that signs the bundles",
        ));
    };
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 || name.contains(char::is_control) {
        return Err(Fail::invalid_at(
            "a key needs a name of 1 to 100 printable characters",
            "name",
            "name it after the cluster or site that signs with it",
        ));
    }
    let id = images::key_id(&bytes);
    if keys(&ctx)
        .iter()
        .any(|k| k.id == id && k.origin == "cluster")
    {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            format!("{id} is this cluster's own key: it is trusted already"),
        ));
    }
    let command = Command::TrustKey {
        id: id.clone(),
        name: name.to_string(),
        public_key,
        time: now(),
    };
    match ctx.propose(command).await.map_err(unavailable)? {
        Applied::Ok => {}
        Applied::Refused(why) => return Err(Fail::new(StatusCode::CONFLICT, why)),
        other => return Err(unexpected(other)),
    }
    let key = keys(&ctx).into_iter().find(|k| k.id == id);
    key.map(|k| (StatusCode::CREATED, Json(k)))
        .ok_or_else(|| unexpected(Applied::NotFound(id)))
}

fn unexpected(answer: Applied) -> Fail {
    Fail::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected store answer {answer:?}"),
    )
}

/// Stops trusting a key: bundles it signed are refused from now on. Revoking the cluster's
/// own key makes the servers sign with a new one.
#[utoipa::path(delete, path = "/v1/image-keys/{id}",
    params(("id" = String, Path, description = "The key's id, as `outpost image keys` shows it")),
    responses(
        (status = 200, description = "The key, now revoked", body = api::BundleKey),
        (status = 404, description = "No trusted key has this id", body = api::ApiError),
        (status = 409, description = "Revoked already", body = api::ApiError)))]
pub async fn revoke_key(
    State(ctx): State<Server>,
    Path(id): Path<String>,
) -> Answer<api::BundleKey> {
    let all = keys(&ctx);
    let Some(key) = all.iter().find(|k| k.id == id).cloned() else {
        return Err(Fail::new(
            StatusCode::NOT_FOUND,
            format!("no key {id:?} (see `outpost image keys`)"),
        ));
    };
    if key.state == "revoked" {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            format!("key {id} is revoked already"),
        ));
    }
    let generation =
        (key.origin == "cluster").then(|| ctx.state.read(|s| s.own_key_generation()) + 1);
    let command = Command::RevokeKey {
        id: id.clone(),
        name: key.name.clone(),
        generation,
        time: now(),
    };
    match ctx.propose(command).await.map_err(unavailable)? {
        Applied::Ok => Ok(Json(api::BundleKey {
            state: "revoked".into(),
            ..key
        })),
        Applied::NotFound(_) => Err(Fail::new(StatusCode::NOT_FOUND, format!("no key {id:?}"))),
        Applied::Refused(why) => Err(Fail::new(StatusCode::CONFLICT, why)),
        other => Err(unexpected(other)),
    }
}

/// The public keys (hex) a bundle may be signed by now.
fn trusted_hex(ctx: &Server) -> String {
    let keys = keys(ctx).into_iter().filter(|k| k.state == "trusted");
    keys.map(|k| k.public_key).collect::<Vec<_>>().join(",")
}

/// A signed bundle of images from a node's store, as zstd-compressed bytes.
#[utoipa::path(post, path = "/v1/images/save", request_body = api::SaveRequest, responses(
    (status = 200, description = "The bundle", content_type = "application/zstd", body = Vec<u8>),
    (status = 400, description = "No image named, or a name or digest that is not one", body = api::ApiError),
    (status = 404, description = "No such node, or no node holds all the images", body = api::ApiError),
    (status = 502, description = "The node's agent cannot be reached", body = api::ApiError)))]
pub async fn save(State(ctx): State<Server>, Json(req): Json<api::SaveRequest>) -> Response {
    match save_bundle(&ctx, req).await {
        Ok(answer) => answer,
        Err(fail) => fail.into_response(),
    }
}

async fn save_bundle(ctx: &Server, req: api::SaveRequest) -> Result<Response, Fail> {
    if req.images.is_empty() {
        return Err(Fail::invalid_at(
            "no image to save",
            "images",
            "name one or more images",
        ));
    }
    let (node, address) = source_node(ctx, &req).await?;
    let mut have_blobs = req.have.blobs.clone();
    for target in &req.have.nodes {
        have_blobs.extend(node_blobs(ctx, target).await?);
    }
    let plan = serde_json::json!({
        "images": req.images, "have_blobs": have_blobs, "have_images": req.have.images,
    });
    let url = format!("{address}/v1/agent/images/plan");
    let answer = agent_call(ctx, &node, ctx.http.post(&url).json(&plan)).await?;
    let manifest = answer.text().await.map_err(|e| agent_failed(&node, e))?;
    let carried: u64 = serde_json::from_str::<images::BundleManifest>(&manifest)
        .map(|m| m.blobs.iter().map(|b| b.size).sum())
        .unwrap_or(0);
    let generation = ctx.state.read(|s| s.own_key_generation());
    let key = own_key(ctx, generation);
    let signature = images::BundleSignature {
        key: images::key_id(key.public_key().as_ref()),
        signature: images::hex(key.sign(manifest.as_bytes()).as_ref()),
    };
    let body = serde_json::json!({ "manifest": manifest, "signature": signature });
    let url = format!("{address}/v1/agent/images/bundle");
    let answer = agent_call(ctx, &node, ctx.http.post(&url).json(&body)).await?;
    let stream = (answer.bytes_stream()).map(|chunk| chunk.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "application/zstd".to_string()),
            (
                header::HeaderName::from_static(BUNDLE_BYTES),
                carried.to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The node to bundle from: the one asked for, or the first that holds every image whole.
async fn source_node(ctx: &Server, req: &api::SaveRequest) -> Result<(String, String), Fail> {
    if let Some(node) = &req.node {
        return (crate::stats::live_nodes(ctx, Some(node)).into_iter().next())
            .ok_or_else(|| no_node(node));
    }
    let nodes = crate::stats::live_nodes(ctx, None);
    let (stores, _) =
        crate::stats::ask_agents::<api::NodeImages>(ctx, nodes.clone(), "/v1/agent/images").await;
    let holds_all = |store: &api::NodeImages| {
        req.images.iter().all(|image| {
            let (name, tag) = images::store_name(image);
            (store.images.iter()).any(|i| i.name == name && i.tag == tag && i.missing_blobs == 0)
        })
    };
    let holder = stores.iter().find(|s| holds_all(s)).map(|s| s.node.clone());
    holder
        .and_then(|h| nodes.into_iter().find(|(n, _)| *n == h))
        .ok_or_else(|| {
            Fail::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no node holds all of {} whole (see `outpost images`); push or pull them \
                     to one node first",
                    req.images.join(", ")
                ),
            )
        })
}

/// Every blob in `node`'s store: what a delta for it leaves out.
async fn node_blobs(ctx: &Server, node: &str) -> Result<Vec<String>, Fail> {
    let (_, address) = (crate::stats::live_nodes(ctx, Some(&node.to_string())).into_iter())
        .next()
        .ok_or_else(|| no_node(node))?;
    let url = format!("{address}/v1/agent/images/blobs");
    let answer = agent_call(ctx, node, ctx.http.get(&url)).await?;
    answer.json().await.map_err(|e| agent_failed(node, e))
}

/// Sends a request to `node`'s agent; its own refusals (4xx) pass through as they are.
async fn agent_call(
    ctx: &Server,
    node: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, Fail> {
    let answer =
        (request.bearer_auth(&ctx.token).send().await).map_err(|e| agent_failed(node, e))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(answer);
    }
    let error = answer.json::<api::ApiError>().await.ok();
    let why = error.map_or_else(|| format!("its agent answered {status}"), |e| e.error);
    Err(match status.is_client_error() {
        true => Fail::new(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_REQUEST),
            format!("node {node}: {why}"),
        ),
        false => Fail::new(StatusCode::BAD_GATEWAY, format!("node {node}: {why}")),
    })
}

fn agent_failed(node: &str, e: reqwest::Error) -> Fail {
    Fail::new(
        StatusCode::BAD_GATEWAY,
        format!("cannot reach the agent of {node}: {e}"),
    )
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoadQuery {
    /// The node whose store takes the bundle; may be left out when the cluster has one node.
    node: Option<String>,
    /// Accept an unsigned `docker save` archive.
    #[serde(default)]
    unsigned: bool,
}

/// Loads a bundle (the request body, as `outpost image save` wrote it) into a node's store:
/// checked whole against the keys the cluster trusts before any of it is visible.
#[utoipa::path(post, path = "/v1/images/load", params(LoadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "What the node's store took in", body = api::LoadedBundle),
        (status = 400, description = "The bundle was refused, and why; nothing was loaded", body = api::ApiError),
        (status = 404, description = "No such node", body = api::ApiError),
        (status = 502, description = "The node's agent cannot be reached", body = api::ApiError)))]
pub async fn load(
    State(ctx): State<Server>,
    Query(q): Query<LoadQuery>,
    body: Body,
) -> Answer<api::LoadedBundle> {
    let nodes = crate::stats::live_nodes(&ctx, q.node.as_ref());
    let (node, address) = match (&q.node, nodes.as_slice()) {
        (Some(node), []) => return Err(no_node(node)),
        (_, [one]) => one.clone(),
        (None, _) => {
            return Err(Fail::invalid_at(
                "the cluster has several nodes",
                "node",
                "name the node to load into (`--node`)",
            ));
        }
        (Some(node), _) => return Err(no_node(node)),
    };
    let url = format!("{address}/v1/agent/images/load?unsigned={}", q.unsigned);
    let stream = reqwest::Body::wrap_stream(body.into_data_stream());
    let request = (ctx.http.post(&url))
        .header(TRUSTED_KEYS, trusted_hex(&ctx))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(stream);
    let answer = agent_call(&ctx, &node, request).await?;
    answer
        .json()
        .await
        .map(Json)
        .map_err(|e| agent_failed(&node, e))
}
