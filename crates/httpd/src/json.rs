//! A JSON body extractor whose every refusal is an `ApiError`: a missing body or malformed JSON
//! is 400 with the JSON path serde stopped at, another content type 415, a body over the
//! listener's [`BodyLimit`] 413 naming the limit. (axum's own `Json` answers plain text with
//! 400, 415 or 422, and its limit is fixed per route.)

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{BodyLimit, DEFAULT_BODY_LIMIT, Fail};

/// 128 MiB: a body over the limit is still read (and dropped) up to this much, so the client
/// finishes sending and hears the 413 instead of a reset connection; past it the connection is
/// closed. Bounded, so it costs at most this much reading.
pub const DRAIN_MAX: usize = 128 << 20;

/// A JSON request or response body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Fail;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Fail> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(is_json);
        let bytes = read_limited(req.into_body(), limit).await?;
        if bytes.is_empty() {
            return Err(Fail::invalid_at(
                "the request has no body",
                "",
                "expected a JSON document (Content-Type: application/json)",
            ));
        }
        if json_type != Some(true) {
            return Err(Fail::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the request body must be JSON: send it with Content-Type: application/json",
            ));
        }
        parse(&bytes).map(Json)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `application/json`, or a `+json` type such as `application/merge-patch+json`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Decodes `bytes`, naming the JSON path where decoding stopped. Tracking the path costs a
/// good part of decoding, so it is done only to explain a body that does not decode.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Fail> {
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let refuse = |path: &str, message: String| {
        Fail::invalid_at("the request body is not valid", path, message)
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        refuse(&path, e.into_inner().to_string())
    })?;
    de.end().map_err(|e| refuse("", e.to_string()))?;
    Ok(value)
}

/// The whole body, or 413 once it passes `limit` (after reading on up to [`DRAIN_MAX`]).
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, Fail> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Fail::invalid_at("the request body could not be read", "", e.to_string())
        })?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_MAX {
            break;
        }
    }
    if seen > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(buf))
}

fn too_large(limit: usize) -> Fail {
    Fail::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than the server's limit of {} ({limit} bytes); send less \
             (deploy fewer services at once), or start the server with a larger --max-body-size",
            mebibytes(limit)
        ),
    )
}

fn mebibytes(n: usize) -> String {
    if n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        items: Vec<BTreeMap<String, u32>>,
    }

    async fn extract(
        content_type: Option<&str>,
        body: Vec<u8>,
        limit: usize,
    ) -> Result<Outer, Fail> {
        let mut req = Request::post("/");
        if let Some(t) = content_type {
            req = req.header(header::CONTENT_TYPE, t);
        }
        let mut req = req.body(Body::from(body)).unwrap();
        req.extensions_mut().insert(BodyLimit(limit));
        Json::<Outer>::from_request(req, &()).await.map(|j| j.0)
    }

    const JSON: Option<&str> = Some("application/json; charset=utf-8");

    #[tokio::test]
    async fn malformed_json_names_the_path_where_it_went_wrong() {
        let body = br#"{"items":[{"a":1},{"b":"two"}]}"#.to_vec();
        let Fail(status, error) = extract(JSON, body, 1024).await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error.problems[0].path, "items[1].b");
        assert!(
            error.problems[0].message.contains("invalid type"),
            "{error:?}"
        );
        let Fail(status, error) = extract(JSON, b"{\"items\": [".to_vec(), 1024)
            .await
            .unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error.problems[0].message.contains("EOF"), "{error:?}");
        let Fail(_, error) = extract(JSON, br#"{"items":[]} x"#.to_vec(), 1024)
            .await
            .unwrap_err();
        assert!(error.problems[0].message.contains("trailing"), "{error:?}");
    }

    #[tokio::test]
    async fn a_missing_body_or_another_content_type_is_refused() {
        let Fail(status, error) = extract(JSON, Vec::new(), 1024).await.unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error.error, "the request has no body");
        for t in [None, Some("text/plain")] {
            let Fail(status, _) = extract(t, br#"{"items":[]}"#.to_vec(), 1024)
                .await
                .unwrap_err();
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{t:?}");
        }
        assert!(
            extract(
                Some("application/problem+json"),
                br#"{"items":[]}"#.to_vec(),
                1024
            )
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_naming_the_limit() {
        let body = format!(r#"{{"items":[{{"{}":1}}]}}"#, "k".repeat(3 << 20)).into_bytes();
        let Fail(status, error) = extract(JSON, body.clone(), 2 << 20).await.unwrap_err();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            error.error.contains("limit of 2 MiB (2097152 bytes)"),
            "{}",
            error.error
        );
        assert!(error.error.contains("--max-body-size"), "{}", error.error);
        assert!(extract(JSON, body, 4 << 20).await.is_ok());
    }
}
