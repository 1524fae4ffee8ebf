//! The agent's side of image bundles (see `images::Store::load_bundle` for what is checked):
//! - `GET /v1/agent/images/blobs`: every blob digest in the store (what a delta for this node
//!   leaves out);
//! - `POST /v1/agent/images/plan`: the manifest of a bundle of some images, for a target that
//!   holds some blobs or images already, for a server to sign;
//! - `POST /v1/agent/images/bundle`: the bundle of a signed manifest, streamed as it is written;
//! - `POST /v1/agent/images/load`: a bundle read as it arrives, checked against the keys the
//!   server sends, and taken into the store only if all of it is right.
//!
//! The store's work is blocking file work: it runs on blocking threads, joined to the request
//! and answer bodies by bounded channels, so a bundle is never held in memory whole.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use httpd::Fail;
use images::{BundleSignature, Digest, ImageError, LoadLimits, Store, TrustedKeys};
use serde::Deserialize;

use crate::http::AgentApi;

/// Chunks in flight between the network and the store's thread.
const IN_FLIGHT: usize = 8;

fn store(api: &AgentApi) -> Result<Store, Fail> {
    api.images.clone().ok_or_else(|| {
        Fail::new(
            StatusCode::NOT_FOUND,
            "this node keeps no image store (--mirror off)",
        )
    })
}

fn refused(e: ImageError) -> Fail {
    let status = match &e {
        ImageError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    Fail::new(status, e.to_string())
}

/// Runs the store's blocking `work`, its error as an answer.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Fail> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done.map_err(refused),
        Err(e) => Err(Fail::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

pub async fn blobs(State(api): State<AgentApi>) -> Response {
    let store = match store(&api) {
        Ok(store) => store,
        Err(fail) => return fail.into_response(),
    };
    match blocking(move || store.blobs()).await {
        Ok(blobs) => {
            let digests: Vec<String> = blobs.into_iter().map(|(d, _)| d.to_string()).collect();
            Json(digests).into_response()
        }
        Err(fail) => fail.into_response(),
    }
}

#[derive(Deserialize)]
pub struct PlanRequest {
    images: Vec<String>,
    #[serde(default)]
    have_blobs: Vec<String>,
    #[serde(default)]
    have_images: Vec<String>,
}

pub async fn plan(State(api): State<AgentApi>, Json(req): Json<PlanRequest>) -> Response {
    let store = match store(&api) {
        Ok(store) => store,
        Err(fail) => return fail.into_response(),
    };
    let made = blocking(move || {
        let mut have = BTreeSet::new();
        for blob in &req.have_blobs {
            have.insert(blob.parse::<Digest>()?);
        }
        for image in &req.have_images {
            let (name, tag) = images::store_name(image);
            let (digest, _) = store.resolve(name, tag)?.ok_or_else(|| {
                ImageError::Bundle(format!(
                    "--have {image}: this node's store does not hold it, so it cannot tell \
                     which blobs it has"
                ))
            })?;
            have.extend(store.blobs_of(&digest)?);
        }
        let images: Vec<String> = (req.images.iter())
            .map(|i| {
                let (name, tag) = images::store_name(i);
                format!("{name}:{tag}")
            })
            .collect();
        let plan = store.plan_bundle(&images, &have, now_ms())?;
        Ok(serde_json::to_string(&plan).expect("a plan encodes"))
    })
    .await;
    match made {
        Ok(manifest) => manifest.into_response(),
        Err(fail) => fail.into_response(),
    }
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

#[derive(Deserialize)]
pub struct BundleRequest {
    /// The manifest's exact text, as signed.
    manifest: String,
    signature: BundleSignature,
}

pub async fn bundle(State(api): State<AgentApi>, Json(req): Json<BundleRequest>) -> Response {
    let store = match store(&api) {
        Ok(store) => store,
        Err(fail) => return fail.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter { tx: tx.clone() };
        let written = store.write_bundle(req.manifest.as_bytes(), &req.signature, &mut out);
        if let Err(e) = written {
            // The answer breaks off: the caller sees an incomplete bundle, never a short one.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Body::from_stream(stream).into_response()
}

/// Bytes written on a blocking thread, sent to an answer body.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the caller left"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Deserialize)]
pub struct LoadQuery {
    #[serde(default)]
    unsigned: bool,
}

pub async fn load(
    State(api): State<AgentApi>,
    Query(q): Query<LoadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let store = match store(&api) {
        Ok(store) => store,
        Err(fail) => return fail.into_response(),
    };
    let trusted = match trusted_keys(&headers) {
        Ok(keys) => keys,
        Err(fail) => return fail.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(IN_FLIGHT);
    // The whole body is read even once the load stopped: a sender that is answered before it
    // has sent everything sees a broken connection, not the refusal.
    let feed = tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(std::io::Error::other);
            let failed = chunk.is_err();
            if failed {
                let _ = tx.send(chunk).await;
                break;
            }
            if !tx.is_closed() {
                let _ = tx.send(chunk).await;
            }
        }
    });
    let limits = LoadLimits {
        allow_unsigned: q.unsigned,
        ..LoadLimits::default()
    };
    let node = api.mesh.0.clone();
    let loaded = blocking(move || {
        let input = ChannelReader {
            rx,
            chunk: Bytes::new(),
        };
        store.load_bundle(input, &trusted, limits)
    })
    .await;
    let _ = feed.await;
    match loaded {
        Ok(loaded) => {
            let images: Vec<String> = loaded.images.into_iter().map(|i| i.image).collect();
            let warnings = into_engine(&api, &images).await;
            Json(api::LoadedBundle {
                node,
                images,
                blobs_added: loaded.blobs_added,
                bytes_added: loaded.bytes_added,
                signed_by: loaded.signed_by,
                warnings,
            })
            .into_response()
        }
        Err(fail) => fail.into_response(),
    }
}

/// Has the node's Docker Engine pull each loaded image from the mirror, under its own name,
/// so `docker run` on the node finds it too; what could not be is said, not failed: the
/// store holds it, and a task starting it brings it to the Engine then.
async fn into_engine(api: &AgentApi, images: &[String]) -> Vec<String> {
    let Some((docker, mirror)) =
        (api.gc.as_ref()).and_then(|gc| Some((gc.docker.clone()?, gc.mirror)))
    else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    for image in images {
        if let Err(e) = docker
            .pull_from_mirror(image, &format!("{mirror}/{image}"))
            .await
        {
            warnings.push(format!(
                "{image} is in the store, not in the Docker Engine: {e}"
            ));
        }
    }
    warnings
}

/// The keys the server sent (hex, comma-separated); none is an error: a server always sends
/// the cluster's own.
fn trusted_keys(headers: &HeaderMap) -> Result<TrustedKeys, Fail> {
    let text = (headers.get("x-outpost-trusted-keys"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mut keys = TrustedKeys::default();
    for key in text.split(',').filter(|k| !k.is_empty()) {
        let Some(key) = images::public_key(key) else {
            let why = "a trusted key is not an ed25519 public key in hex";
            return Err(Fail::new(StatusCode::BAD_REQUEST, why));
        };
        keys.add(&key);
    }
    Ok(keys)
}

/// A request body read on a blocking thread, chunk by chunk as it arrives.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                // The body ended.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
