//! The answers handlers share: the `ApiError` failures (from `httpd`), and the common refusals
//! of this API. Both `routes` and `logs` answer through it.

use axum::http::StatusCode;

pub use httpd::{Fail, Json};

pub type Answer<T> = Result<Json<T>, Fail>;

/// A proposal that Raft did not commit: no leader, or a leader change under way.
pub fn unavailable(e: String) -> Fail {
    Fail::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the change could not be committed: {e}; retry shortly"),
    )
}

pub fn no_service(name: &str) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("no service named {name:?} (see `outpost services`)"),
    )
}

pub fn no_node(name: &str) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("no node named {name:?}; register it first (see `outpost nodes`)"),
    )
}

pub fn no_log_target(target: &str) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("no service or task named {target:?} (see `outpost services` and `outpost ps`)"),
    )
}
