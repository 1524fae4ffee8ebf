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

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use images::{Digest, ImageError, Store};
use serde::Deserialize;

/// Connections the mirror keeps open at most: an Engine pulls a few layers at once.
const MAX_CONNECTIONS: usize = 64;

/// Read size of a blob streamed to a client.
const CHUNK: usize = 256 << 10;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The node's mirror as the Docker driver sees it: where the Engine pulls from, and the store
/// that says what is there.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub addr: std::net::SocketAddr,
    pub store: Store,
}

impl Mirror {
    /// `MIRROR/name:tag` when the store holds `image` (a spec's image name): its repository
    /// without a registry host (`registry.example.com/team/app:1` is `team/app:1` here), its
    /// tag (`latest` when none).
    pub fn holds(&self, image: &str) -> Option<String> {
        let (name, tag) = images::store_name(image);
        self.store.resolve(name, tag).ok().flatten()?;
        Some(format!("{}/{name}:{tag}", self.addr))
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
