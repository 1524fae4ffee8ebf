//! The node's image mirror: the OCI distribution API (pull and push) over the node's content
//! store ([`images::Store`]), on loopback. The Docker Engine pulls from it as from any registry
//! (it trusts loopback registries without TLS), and `skopeo` or `outpost image push` push to it.
//!
//! Routes (`NAME` may hold `/`):
//! - `GET /v2/`: the API version check;
//! - `GET|HEAD /v2/NAME/manifests/REF` (a tag or a digest), `PUT` the same to push one: refused
//!   while a blob it refers to is missing;
//! - `GET|HEAD /v2/NAME/blobs/DIGEST`, with `Range: bytes=N-` for a resumed pull;
//! - `POST /v2/NAME/blobs/uploads/` (with `?digest=` for one request, `?mount=` for a blob the
//!   store has), then `PATCH` and `PUT ?digest=` on the upload's location;
//! - `GET /v2/NAME/tags/list`.
//!
//! Blobs are shared by every name: the store is content-addressed. Nothing pushed becomes
//! visible before its digest is checked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Weak};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use images::{Digest, ImageError, Store};
use serde::Deserialize;

pub mod upstream;

pub use upstream::{Remote, Upstream};

/// Connections the mirror keeps open at most: an Engine pulls a few layers at once.
const MAX_CONNECTIONS: usize = 64;

/// Read size of a blob streamed to a client.
const CHUNK: usize = 256 << 10;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The node's mirror as the Docker driver sees it: where the Engine pulls from, the store that
/// says what is there, the other nodes it fills the store from, and the registries beyond.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub addr: std::net::SocketAddr,
    pub store: Store,
    pub peers: Option<Peers>,
    pub upstream: Option<Upstream>,
}

/// How the mirror finds and reaches other nodes' stores: the control plane says who holds an
/// image, and their agents serve it (`/v1/agent/registry/v2/`) to this node's certificate.
#[derive(Debug, Clone)]
pub struct Peers {
    pub server: client::Client,
    pub http: reqwest::Client,
    /// This node's name, never its own source.
    pub node: String,
}

/// What a pull tells as it goes: the source it asks, then each blob's bytes.
pub type Progress<'a> = &'a (dyn Fn(Step) + Send + Sync);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Trying(String),
    Blob {
        digest: Digest,
        done: u64,
        total: Option<u64>,
    },
}

/// An image the store holds, and how it came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obtained {
    /// `MIRROR/name:tag` (or `@digest`), what the Engine pulls.
    pub image: String,
    pub origin: api::PullOrigin,
    /// Bytes received for it.
    pub bytes: u64,
    /// Why its registry's version could not be had, when it was asked for and the store's (or
    /// a peer's) is used instead.
    pub warning: Option<String>,
}

impl Mirror {
    /// [`Mirror::holds`], after filling the store when it lacks `image`: from another node that
    /// holds it, else from its upstream registry. With `refresh` (the spec's `pull: always`),
    /// the registry is asked first so a moved tag is followed, and the store's or a peer's copy
    /// serves, with a warning, when it cannot answer. The registry is asked with the
    /// credentials of `secret` (the service's pull secret) where it has some for it. An error
    /// names every source tried and why it failed.
    pub async fn obtain(
        &self,
        image: &str,
        refresh: bool,
        secret: Option<&upstream::PullSecret>,
        progress: Progress<'_>,
    ) -> Result<Obtained, String> {
        let reference = upstream::Reference::parse(image)?;
        let mut failures = Vec::new();
        if refresh {
            match self
                .obtain_from_upstream(image, &reference, secret, progress)
                .await
            {
                Ok(obtained) => return Ok(obtained),
                Err(e) => failures.push(e),
            }
        }
        let warning = |failures: &[String]| {
            (!failures.is_empty()).then(|| {
                format!(
                    "cannot pull {image} ({}); the registry is unreachable, starting from this \
                     node's image mirror",
                    failures.join("; ")
                )
            })
        };
        if let Some(here) = self.holds(image) {
            return Ok(Obtained {
                image: here,
                origin: api::PullOrigin::Store,
                bytes: 0,
                warning: warning(&failures),
            });
        }
        match self.obtain_from_peers(image, progress).await {
            Ok(mut obtained) => {
                obtained.warning = warning(&failures);
                return Ok(obtained);
            }
            Err(e) => failures.push(e),
        }
        if !refresh {
            match self
                .obtain_from_upstream(image, &reference, secret, progress)
                .await
            {
                Ok(obtained) => return Ok(obtained),
                Err(e) => failures.push(e),
            }
        }
        Err(failures.join("; "))
    }

    /// From another node holding it: the first that gives it whole.
    async fn obtain_from_peers(
        &self,
        image: &str,
        progress: Progress<'_>,
    ) -> Result<Obtained, String> {
        let Some(peers) = &self.peers else {
            return Err("peers: this node asks none".into());
        };
        let sources = (peers.server.image_sources(image).await)
            .map_err(|e| format!("peers: cannot ask which nodes hold it: {e}"))?;
        let (name, tag) = images::store_name(image);
        let mut failures = Vec::new();
        for source in sources.iter().filter(|s| s.node != peers.node) {
            progress(Step::Trying(format!("node {}", source.node)));
            let remote = Remote::peer(&peers.http, &source.address, name);
            match fetch(&remote, name, tag, tag, &self.store, progress).await {
                Ok(bytes) => {
                    let origin = api::PullOrigin::Peer {
                        peer: source.node.clone(),
                    };
                    return self.obtained(image, origin, bytes);
                }
                Err(e) => failures.push(format!("peer {}: {e}", source.node)),
            }
        }
        match failures.is_empty() {
            true => Err("peers: no other node holds it".into()),
            false => Err(failures.join("; ")),
        }
    }

    /// From the registry the name points at.
    async fn obtain_from_upstream(
        &self,
        image: &str,
        reference: &upstream::Reference,
        secret: Option<&upstream::PullSecret>,
        progress: Progress<'_>,
    ) -> Result<Obtained, String> {
        let host = reference.api_host().to_string();
        let Some(upstream) = &self.upstream else {
            return Err(format!("upstream {host}: this node pulls from no registry"));
        };
        progress(Step::Trying(format!("upstream {host}")));
        let remote =
            (upstream.remote(reference, secret)).map_err(|e| format!("upstream {host}: {e}"))?;
        let (name, tag) = images::store_name(image);
        let manifest = reference.manifest();
        let bytes = (fetch(&remote, name, tag, &manifest, &self.store, progress).await)
            .map_err(|e| format!("upstream {host}: {e}"))?;
        let origin = api::PullOrigin::Upstream { registry: host };
        self.obtained(image, origin, bytes)
    }

    fn obtained(
        &self,
        image: &str,
        origin: api::PullOrigin,
        bytes: u64,
    ) -> Result<Obtained, String> {
        let here = (self.holds(image)).ok_or_else(|| format!("{image}: fetched, then not held"))?;
        Ok(Obtained {
            image: here,
            origin,
            bytes,
            warning: None,
        })
    }

    /// `MIRROR/name:tag` when the store holds `image` (a spec's image name): its repository
    /// without a registry host (`registry.example.com/team/app:1` is `team/app:1` here), its
    /// tag (`latest` when none); `MIRROR/name@digest` for a name that pins a digest.
    pub fn holds(&self, image: &str) -> Option<String> {
        let (name, tag) = images::store_name(image);
        if let Some((_, pinned)) = image.split_once('@') {
            let digest = pinned.parse::<Digest>().ok()?;
            self.store.size(&digest)?;
            return Some(format!("{}/{name}@{digest}", self.addr));
        }
        self.store.resolve(name, tag).ok().flatten()?;
        Some(format!("{}/{name}:{tag}", self.addr))
    }
}

/// Media types a fetch accepts for a manifest, as registries need to be told.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Copies manifest `reference` (a tag or a digest) of `remote` into `store` as `name:tag`:
/// every blob it lacks (each verified, and resumed from the bytes an interrupted fetch left,
/// with a `Range` request), then the manifests, then the tag (none for a digest). Nothing is
/// tagged unless every blob arrived whole. Returns the bytes received.
pub async fn fetch(
    remote: &Remote,
    name: &str,
    tag: &str,
    reference: &str,
    store: &Store,
    progress: Progress<'_>,
) -> Result<u64, String> {
    let (digest, kind, bytes) = fetch_manifest(remote, reference).await?;
    let mut received = bytes.len() as u64;
    let mut manifests = vec![(digest.clone(), bytes)];
    let mut index = 0;
    while let Some((digest, bytes)) = manifests.get(index).cloned() {
        index += 1;
        let refs = images::references(&digest, &bytes).map_err(|e| e.to_string())?;
        for blob in &refs.blobs {
            received += fetch_blob(remote, blob, store, progress).await?;
        }
        for child in refs.manifests {
            let (d, _, b) = fetch_manifest(remote, &child.to_string()).await?;
            received += b.len() as u64;
            manifests.push((d, b));
        }
    }
    // Children before the index that names them, so a reader never meets a missing one.
    for (digest, bytes) in manifests.iter().rev() {
        let _alone = exclusive(store, digest).await;
        store.put(digest, bytes).map_err(|e| e.to_string())?;
    }
    if reference.parse::<Digest>().is_err() {
        (store.tag(name, tag, &digest, &kind)).map_err(|e| e.to_string())?;
    }
    Ok(received)
}

async fn fetch_manifest(
    remote: &Remote,
    reference: &str,
) -> Result<(Digest, String, Vec<u8>), String> {
    let what = format!("manifest {}:{reference}", remote.repo);
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_TYPES));
    let answer = (remote.get(&format!("manifests/{reference}"), headers).await)
        .map_err(|e| format!("cannot fetch {what}: {e}"))?;
    let kind = (answer.headers().get(header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    let too_big = |_| format!("{what} is over {} bytes", images::MAX_MANIFEST);
    if let Some(length) = answer.content_length() {
        usize::try_from(length)
            .ok()
            .filter(|l| *l <= images::MAX_MANIFEST)
            .ok_or(())
            .map_err(too_big)?;
    }
    let bytes = (answer.bytes().await).map_err(|e| format!("{what}: {e}"))?;
    if bytes.len() > images::MAX_MANIFEST {
        return Err(too_big(()));
    }
    let digest = Digest::of(&bytes);
    if let Ok(asked) = reference.parse::<Digest>()
        && asked != digest
    {
        return Err(format!(
            "manifest {asked} came as bytes hashing to {digest}"
        ));
    }
    Ok((digest, kind, bytes.to_vec()))
}

/// One blob into the store, unless it is there: resumed from what an interrupted fetch left.
/// Returns the bytes received.
async fn fetch_blob(
    remote: &Remote,
    digest: &Digest,
    store: &Store,
    progress: Progress<'_>,
) -> Result<u64, String> {
    let _alone = exclusive(store, digest).await;
    if store.size(digest).is_some() {
        return Ok(0);
    }
    let mut ingest = store.ingest(digest, None).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    if ingest.offset() > 0 {
        let range = format!("bytes={}-", ingest.offset());
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(&range).map_err(|e| e.to_string())?,
        );
    }
    let answer = (remote.get(&format!("blobs/{digest}"), headers).await)
        .map_err(|e| format!("cannot fetch blob {digest}: {e}"))?;
    if answer.status() != StatusCode::PARTIAL_CONTENT && ingest.offset() > 0 {
        // The source sends it whole: start over.
        ingest.restart().map_err(|e| e.to_string())?;
    }
    let total = answer.content_length().map(|l| l + ingest.offset());
    let mut received = 0;
    let mut body = answer.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("blob {digest} was cut off: {e}"))?;
        ingest.write(&chunk).map_err(|e| e.to_string())?;
        received += chunk.len() as u64;
        let done = ingest.offset();
        let digest = digest.clone();
        progress(Step::Blob {
            digest,
            done,
            total,
        });
    }
    ingest.commit().map_err(|e| e.to_string())?;
    Ok(received)
}

/// The blobs being written by a fetch in this process, each by its path in its store.
type Writing = std::sync::Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;
static WRITING: LazyLock<Writing> = LazyLock::new(Default::default);

/// Waits until no other fetch of this process writes blob `digest` to `store`, and keeps others
/// off it until dropped: replicas of a service starting together, or two images sharing a
/// layer, would otherwise append to the same ingest file. The one that waited then finds the
/// blob stored and fetches nothing.
async fn exclusive(store: &Store, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
    let key = store.root().join(digest.hex());
    let lock = {
        let mut writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
        writing.retain(|_, w| w.strong_count() > 0);
        match writing.get(&key).and_then(Weak::upgrade) {
            Some(lock) => lock,
            None => {
                let lock = Arc::new(tokio::sync::Mutex::new(()));
                writing.insert(key, Arc::downgrade(&lock));
                lock
            }
        }
    };
    lock.lock_owned().await
}

/// Another node's read of this node's store, under `/v1/agent/registry/v2/`: manifests and
/// blobs (`GET`, `HEAD`), nothing written.
pub async fn serve_peer(store: Store, req: Request) -> Response {
    let path = (req.uri().path())
        .trim_start_matches("/v1/agent/registry/v2/")
        .to_string();
    let head = req.method() == Method::HEAD;
    if !(head || req.method() == Method::GET) {
        let why = "other nodes only read this node's store";
        return oci_error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", why);
    }
    match target(&path) {
        Some(Target::Manifest(name, reference)) if images::check_name(name).is_ok() => {
            get_manifest(&store, name, reference, head)
        }
        Some(Target::Blob(name, digest)) if images::check_name(name).is_ok() => {
            get_blob(&store, digest, req.headers(), head).await
        }
        _ => oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("nothing at {path}"),
        ),
    }
}

/// Serves the mirror on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, store: Store) {
    let app = Router::new()
        .route("/v2", axum::routing::get(version))
        .route("/v2/", axum::routing::get(version))
        .route("/v2/{*path}", axum::routing::any(route))
        .with_state(store);
    let limits = httpd::Limits::with_max_connections(MAX_CONNECTIONS);
    httpd::serve(listener, app, limits, std::future::pending()).await;
}

async fn version() -> Response {
    (
        [("Docker-Distribution-API-Version", "registry/2.0")],
        axum::Json(serde_json::json!({})),
    )
        .into_response()
}

/// What a request under `/v2/` names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
    Tags(&'a str),
}

fn target(path: &str) -> Option<Target<'_>> {
    if let Some((name, rest)) = path.split_once("/blobs/uploads") {
        return match rest.trim_start_matches('/') {
            "" => Some(Target::Uploads(name)),
            id => Some(Target::Upload(name, id)),
        };
    }
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Target::Tags(name));
    }
    if let Some((name, reference)) = path.rsplit_once("/manifests/") {
        return Some(Target::Manifest(name, reference));
    }
    let (name, digest) = path.rsplit_once("/blobs/")?;
    Some(Target::Blob(name, digest))
}

#[derive(Debug, Default, Deserialize)]
struct UploadQuery {
    digest: Option<String>,
    mount: Option<String>,
}

async fn route(State(store): State<Store>, req: Request) -> Response {
    let path = req.uri().path().trim_start_matches("/v2/").to_string();
    let query: UploadQuery = req
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let Some(target) = target(&path) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no route for /v2/{path}"),
        );
    };
    let name = match &target {
        Target::Manifest(n, _) | Target::Blob(n, _) | Target::Uploads(n) | Target::Upload(n, _) => {
            *n
        }
        Target::Tags(n) => *n,
    };
    if let Err(e) = images::check_name(name) {
        return oci_error(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string());
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = req.into_body();
    let head = method == Method::HEAD;
    match (method, target) {
        (Method::GET | Method::HEAD, Target::Manifest(name, reference)) => {
            get_manifest(&store, name, reference, head)
        }
        (Method::PUT, Target::Manifest(name, reference)) => {
            put_manifest(&store, name, reference, &headers, body).await
        }
        (Method::GET | Method::HEAD, Target::Blob(_, digest)) => {
            get_blob(&store, digest, &headers, head).await
        }
        (Method::POST, Target::Uploads(name)) => start_upload(&store, name, query, body).await,
        (Method::PATCH, Target::Upload(name, id)) => match append(&store, id, body).await {
            Ok(size) => upload_accepted(name, id, size),
            Err(e) => image_error(e),
        },
        (Method::PUT, Target::Upload(name, id)) => {
            let Some(digest) = query.digest else {
                return oci_error(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "the upload's PUT needs ?digest=",
                );
            };
            finish(&store, name, id, &digest, body).await
        }
        (Method::GET, Target::Upload(name, id)) => match store.upload_size(id) {
            Ok(size) => {
                let mut answer = upload_accepted(name, id, size);
                *answer.status_mut() = StatusCode::NO_CONTENT;
                answer
            }
            Err(e) => image_error(e),
        },
        (Method::DELETE, Target::Upload(_, id)) => match store.cancel_upload(id) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => image_error(e),
        },
        (Method::GET, Target::Tags(name)) => tags(&store, name),
        (method, _) => oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not served on /v2/{path}"),
        ),
    }
}

fn get_manifest(store: &Store, name: &str, reference: &str, head: bool) -> Response {
    let found = match reference.parse::<Digest>() {
        Ok(digest) => store.read(&digest).map(|bytes| {
            let kind = media_type(&bytes).unwrap_or_else(|| OCI_MANIFEST.to_string());
            (digest, kind, bytes)
        }),
        Err(_) => match store.resolve(name, reference) {
            Ok(Some((digest, kind))) => store.read(&digest).map(|bytes| (digest, kind, bytes)),
            Ok(None) => {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!("{name}:{reference} is not in this node's mirror"),
                );
            }
            Err(e) => Err(e),
        },
    };
    let (digest, kind, bytes) = match found {
        Ok(found) => found,
        Err(ImageError::Missing(d)) => {
            return oci_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("manifest {d} is not in this node's mirror"),
            );
        }
        Err(e) => return image_error(e),
    };
    let headers = [
        (header::CONTENT_TYPE, kind),
        (header::CONTENT_LENGTH, bytes.len().to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.to_string(),
        ),
    ];
    match head {
        true => (headers, Body::empty()).into_response(),
        false => (headers, bytes).into_response(),
    }
}

/// The `mediaType` a manifest names itself.
fn media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(value.get("mediaType")?.as_str()?.to_string())
}

async fn put_manifest(
    store: &Store,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let bytes = match axum::body::to_bytes(body, images::MAX_MANIFEST).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return oci_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MANIFEST_INVALID",
                format!("a manifest may have at most {} bytes", images::MAX_MANIFEST),
            );
        }
    };
    let digest = Digest::of(&bytes);
    let refs = match images::references(&digest, &bytes) {
        Ok(refs) => refs,
        Err(e) => return oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string()),
    };
    let missing: Vec<String> = (refs.manifests.iter().chain(&refs.blobs))
        .filter(|d| store.size(d).is_none())
        .map(ToString::to_string)
        .collect();
    if !missing.is_empty() {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            format!(
                "manifest {digest} refers to blobs this mirror lacks, push them first: {}",
                missing.join(", ")
            ),
        );
    }
    let as_digest = reference.parse::<Digest>().ok();
    if as_digest.as_ref().is_some_and(|d| *d != digest) {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the manifest's bytes hash to {digest}, not {reference}"),
        );
    }
    if as_digest.is_none()
        && let Err(e) = images::check_tag(reference)
    {
        return oci_error(StatusCode::BAD_REQUEST, "TAG_INVALID", e.to_string());
    }
    if let Err(e) = store.put(&digest, &bytes) {
        return image_error(e);
    }
    // The manifest's own word first: a client may send it as plain JSON.
    let kind = media_type(&bytes)
        .or_else(|| {
            let sent = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
            (sent != "application/json").then(|| sent.to_string())
        })
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    if as_digest.is_none()
        && let Err(e) = store.tag(name, reference, &digest, &kind)
    {
        return image_error(e);
    }
    created(format!("/v2/{name}/manifests/{digest}"), &digest)
}

async fn get_blob(store: &Store, digest: &str, headers: &HeaderMap, head: bool) -> Response {
    let digest = match digest.parse::<Digest>() {
        Ok(d) => d,
        Err(e) => return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()),
    };
    let Some(size) = store.size(&digest) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not in this node's mirror"),
        );
    };
    let from = match headers.get(header::RANGE).map(|r| range_start(r, size)) {
        None => None,
        Some(Some(from)) => Some(from),
        Some(None) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
    };
    let start = from.unwrap_or(0);
    let mut answer = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, (size - start).to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header("docker-content-digest", digest.to_string());
    if from.is_some() {
        answer = answer.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", size.saturating_sub(1)),
        );
    }
    let body = match head {
        true => Body::empty(),
        false => match blob_stream(store, &digest, start).await {
            Ok(body) => body,
            Err(e) => return image_error(e),
        },
    };
    answer
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `Range: bytes=N-` (or `N-M`, served to the end): where to start; `None` past the end or
/// unreadable.
fn range_start(value: &HeaderValue, size: u64) -> Option<u64> {
    let spec = value.to_str().ok()?.strip_prefix("bytes=")?;
    let (start, _) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    (start < size || size == 0).then_some(start)
}

async fn blob_stream(store: &Store, digest: &Digest, start: u64) -> Result<Body, ImageError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = store.path(digest);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ImageError::Missing(digest.clone()))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|source| ImageError::Io {
            what: "cannot seek",
            path,
            source,
        })?;
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok(Body::from_stream(chunks))
}

async fn start_upload(store: &Store, name: &str, query: UploadQuery, body: Body) -> Response {
    if let Some(mount) = query
        .mount
        .as_deref()
        .and_then(|m| m.parse::<Digest>().ok())
        && store.size(&mount).is_some()
    {
        return created(format!("/v2/{name}/blobs/{mount}"), &mount);
    }
    let id = match store.begin_upload() {
        Ok(id) => id,
        Err(e) => return image_error(e),
    };
    match query.digest {
        // The whole blob in this one request.
        Some(digest) => finish(store, name, &id, &digest, body).await,
        None => upload_accepted(name, &id, 0),
    }
}

/// Appends the request's body to upload `id`; its size after.
async fn append(store: &Store, id: &str, body: Body) -> Result<u64, ImageError> {
    let mut size = store.upload_size(id)?;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ImageError::Io {
            what: "cannot receive",
            path: id.into(),
            source: std::io::Error::other(e),
        })?;
        size = store.append_upload(id, &chunk)?;
    }
    Ok(size)
}

async fn finish(store: &Store, name: &str, id: &str, digest: &str, body: Body) -> Response {
    let digest = match digest.parse::<Digest>() {
        Ok(d) => d,
        Err(e) => {
            let _ = store.cancel_upload(id);
            return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string());
        }
    };
    if let Err(e) = append(store, id, body).await {
        return image_error(e);
    }
    let (store, id, checked) = (store.clone(), id.to_string(), digest.clone());
    // Hashing a large layer is long blocking work.
    let done = tokio::task::spawn_blocking(move || store.finish_upload(&id, &checked)).await;
    match done {
        Ok(Ok(_)) => created(format!("/v2/{name}/blobs/{digest}"), &digest),
        Ok(Err(e)) => image_error(e),
        Err(e) => oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()),
    }
}

fn tags(store: &Store, name: &str) -> Response {
    let all = match store.tags() {
        Ok(all) => all,
        Err(e) => return image_error(e),
    };
    let prefix = format!("{name}:");
    let tags: Vec<&str> = all.keys().filter_map(|k| k.strip_prefix(&prefix)).collect();
    if tags.is_empty() {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("{name} is not in this node's mirror"),
        );
    }
    axum::Json(serde_json::json!({ "name": name, "tags": tags })).into_response()
}

fn upload_accepted(name: &str, id: &str, size: u64) -> Response {
    (
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}")),
            (header::RANGE, format!("0-{}", size.saturating_sub(1))),
            (
                header::HeaderName::from_static("docker-upload-uuid"),
                id.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_string()),
        ],
    )
        .into_response()
}

fn created(location: String, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_string()),
        ],
    )
        .into_response()
}

/// A store error as the distribution API's error body.
fn image_error(e: ImageError) -> Response {
    let (status, code) = match &e {
        ImageError::DigestMismatch { .. } | ImageError::BadDigest(_) => {
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        }
        ImageError::SizeMismatch { .. } => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
        ImageError::Missing(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        ImageError::UnknownUpload(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
        ImageError::BadName(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
        ImageError::BadTag(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
        ImageError::BadManifest { .. } => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
        ImageError::Bundle(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
        ImageError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
    };
    oci_error(status, code, e.to_string())
}

/// `{"errors": [{"code", "message"}]}`, as registries answer.
fn oci_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message.into() }] });
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A registry of one image (`demo:1`, one layer of `layer` bytes) whose first answer for
    /// the layer breaks off halfway; each layer request's `Range` header goes to `ranges`.
    async fn cutting_registry(
        layer: Vec<u8>,
        ranges: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    ) -> (String, Vec<u8>) {
        use axum::routing::get;
        let config = b"{}".to_vec();
        let manifest = one_layer_manifest(&config, &layer);
        let (m, c, l) = (manifest.clone(), config.clone(), layer.clone());
        let blob = move |axum::extract::Path(digest): axum::extract::Path<String>,
                         headers: HeaderMap| {
            let (c, l, ranges) = (c.clone(), l.clone(), ranges.clone());
            async move {
                if digest == Digest::of(&c).to_string() {
                    return Body::from(c).into_response();
                }
                let range = headers
                    .get(header::RANGE)
                    .map(|r| r.to_str().unwrap().to_string());
                let first = {
                    let mut seen = ranges.lock().unwrap();
                    seen.push(range.clone());
                    seen.len() == 1
                };
                if first {
                    // Half the bytes, then the connection breaks (once they are surely sent).
                    let half = l[..l.len() / 2].to_vec();
                    let chunks = futures_util::stream::unfold(Some(half), |half| async move {
                        match half {
                            Some(half) => Some((Ok(half), None)),
                            None => {
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                                Some((Err(std::io::Error::other("cut off")), None))
                            }
                        }
                    });
                    return Body::from_stream(chunks).into_response();
                }
                let from = range_start(
                    &HeaderValue::from_str(&range.unwrap()).unwrap(),
                    l.len() as u64,
                )
                .unwrap();
                (StatusCode::PARTIAL_CONTENT, l[from as usize..].to_vec()).into_response()
            }
        };
        (serve_demo(m, get(blob)).await, manifest)
    }

    /// Serves repository `demo`: `manifest` under every reference, blobs by `blob`; the base URL.
    async fn serve_demo(manifest: Vec<u8>, blob: axum::routing::MethodRouter) -> String {
        let app = Router::new()
            .route(
                "/v2/demo/manifests/{reference}",
                axum::routing::get(move || {
                    let m = manifest.clone();
                    async move { ([(header::CONTENT_TYPE, OCI_MANIFEST)], m) }
                }),
            )
            .route("/v2/demo/blobs/{digest}", blob);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    fn one_layer_manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(config).to_string(), "size": config.len() },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::of(layer).to_string(), "size": layer.len() }],
        }))
        .unwrap()
    }

    /// A registry of image `demo:1` whose layer comes slowly, in 16 pieces, as whole bodies
    /// (no ranges); counts the layer's requests.
    async fn slow_registry(layer: Vec<u8>, asked: Arc<AtomicUsize>) -> String {
        use axum::routing::get;
        let config = b"{}".to_vec();
        let manifest = one_layer_manifest(&config, &layer);
        let blob = move |axum::extract::Path(digest): axum::extract::Path<String>| {
            let (config, layer, asked) = (config.clone(), layer.clone(), asked.clone());
            async move {
                if digest == Digest::of(&config).to_string() {
                    return Body::from(config).into_response();
                }
                asked.fetch_add(1, Ordering::SeqCst);
                let pieces: Vec<Vec<u8>> = layer
                    .chunks(layer.len() / 16 + 1)
                    .map(<[u8]>::to_vec)
                    .collect();
                let chunks = futures_util::stream::iter(pieces).then(|piece| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    Ok::<_, std::io::Error>(piece)
                });
                Body::from_stream(chunks).into_response()
            }
        };
        serve_demo(manifest, get(blob)).await
    }

    #[tokio::test]
    async fn replicas_starting_together_fetch_a_layer_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let asked = Arc::new(AtomicUsize::new(0));
        let base = slow_registry(layer.clone(), asked.clone()).await;
        pki::install_default();
        let http = reqwest::Client::new();
        let quiet = |_| {};
        let pulls = (0..3).map(|_| {
            let (remote, store) = (Remote::at(&http, &base, "demo"), store.clone());
            async move { fetch(&remote, "demo", "1", "1", &store, &quiet).await }
        });
        let fetched = futures_util::future::join_all(pulls).await;
        for result in &fetched {
            assert!(result.is_ok(), "{fetched:?}");
        }
        assert_eq!(store.read(&Digest::of(&layer)).unwrap(), layer);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "the layer was fetched once"
        );
    }

    #[tokio::test]
    async fn a_fetch_cut_off_halfway_resumes_from_the_bytes_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (base, manifest) = cutting_registry(layer.clone(), ranges.clone()).await;
        pki::install_default();
        let http = reqwest::Client::new();
        let remote = Remote::at(&http, &base, "demo");
        let quiet = |_| {};

        let err = (fetch(&remote, "demo", "1", "1", &store, &quiet).await).unwrap_err();
        assert!(err.contains("was cut off"), "{err}");
        assert_eq!(
            store.resolve("demo", "1").unwrap(),
            None,
            "nothing tagged half-way"
        );
        assert_eq!(
            store.size(&Digest::of(&layer)),
            None,
            "no partial blob visible"
        );

        fetch(&remote, "demo", "1", "1", &store, &quiet)
            .await
            .unwrap();
        let half = layer.len() / 2;
        assert_eq!(
            *ranges.lock().unwrap(),
            vec![None, Some(format!("bytes={half}-"))],
            "the second fetch asked for the second half only"
        );
        assert_eq!(store.read(&Digest::of(&layer)).unwrap(), layer);
        let (digest, _) = store.resolve("demo", "1").unwrap().unwrap();
        assert_eq!(digest, Digest::of(&manifest));
    }

    #[test]
    fn paths_name_their_target() {
        assert_eq!(
            target("a/b/manifests/latest"),
            Some(Target::Manifest("a/b", "latest"))
        );
        assert_eq!(
            target("demo/blobs/sha256:ab"),
            Some(Target::Blob("demo", "sha256:ab"))
        );
        assert_eq!(target("x/y/blobs/uploads/"), Some(Target::Uploads("x/y")));
        assert_eq!(
            target("x/blobs/uploads/0f"),
            Some(Target::Upload("x", "0f"))
        );
        assert_eq!(target("lib/app/tags/list"), Some(Target::Tags("lib/app")));
        assert_eq!(target("nothing"), None);
    }

    #[test]
    fn ranges_start_where_asked_and_not_past_the_end() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(range_start(&v("bytes=100-"), 1000), Some(100));
        assert_eq!(range_start(&v("bytes=100-199"), 1000), Some(100));
        assert_eq!(range_start(&v("bytes=1000-"), 1000), None);
        assert_eq!(range_start(&v("items=1-"), 1000), None);
    }
}
