//! Error answers in the API's one shape, `ApiError { error, problems }`, and the layers that
//! produce them for every route: an unknown path, a request that took too long.

use std::time::Duration;

use api::{ApiError, Problem};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// An error answer: a status and the JSON body every client understands.
#[derive(Debug)]
pub struct Fail(pub StatusCode, pub ApiError);

impl Fail {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Fail {
        Fail(
            status,
            ApiError {
                error: message.into(),
                problems: Vec::new(),
            },
        )
    }

    /// 400 with every problem located by its field path.
    pub fn invalid(message: impl Into<String>, problems: Vec<Problem>) -> Fail {
        Fail(
            StatusCode::BAD_REQUEST,
            ApiError {
                error: message.into(),
                problems,
            },
        )
    }

    /// 400 for one problem at `path`.
    pub fn invalid_at(message: &str, path: &str, problem: impl Into<String>) -> Fail {
        Fail::invalid(
            message,
            vec![Problem {
                path: path.into(),
                message: problem.into(),
            }],
        )
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

/// The fallback of every router: a 404 that names what was asked for.
pub async fn not_found(method: Method, uri: Uri) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such API path: {method} {}; the paths are listed in /v1/openapi.json",
            uri.path()
        ),
    )
}

/// Middleware that answers 503 when a request is not done within the duration in its state.
/// Only for routes that answer promptly: blocking queries and streams are bounded otherwise.
pub async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request was not done within {}; retry shortly",
                humanize(limit)
            ),
        )
        .into_response(),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_time_limit_is_answered_503() {
        let app = axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .route("/quick", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                Duration::from_secs(30),
                time_limit,
            ));
        let call = |path: &'static str| {
            let app = app.clone();
            async move {
                use tower_service::Service;
                let req = Request::get(path).body(axum::body::Body::empty()).unwrap();
                app.clone().call(req).await.unwrap()
            }
        };
        assert_eq!(call("/quick").await.status(), StatusCode::OK);
        let slow = call("/slow").await;
        assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(slow.into_body(), 1 << 16)
            .await
            .unwrap();
        let error: ApiError = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            error.error,
            "the request was not done within 30 s; retry shortly"
        );
    }
}
