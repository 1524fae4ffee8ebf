//! The bearer-token check both APIs share. The scheme is matched case-insensitively (RFC 7235
//! §2.1) and the token in constant time, so its bytes cannot be guessed from answer times.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::Fail;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("missing bearer token (send the header Authorization: Bearer <token>)")]
    Missing,
    #[error("wrong bearer token: check --token, --token-file or the server's token file")]
    Wrong,
}

/// Checks the `Authorization: Bearer <token>` header against `expected`.
pub fn check_bearer(headers: &HeaderMap, expected: &str) -> Result<(), BearerError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(BearerError::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(BearerError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Missing);
    }
    // Different lengths compare unequal at once; that tells only the length.
    if bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(BearerError::Wrong)
    }
}

/// The token a router's [`authorize`] layer checks.
#[derive(Clone)]
pub struct Token(pub Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Middleware: 401 with an `ApiError` unless the request carries the token.
pub async fn authorize(State(token): State<Token>, req: Request, next: Next) -> Response {
    match check_bearer(req.headers(), &token.0) {
        Ok(()) => next.run(req).await,
        Err(e) => Fail::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Option<&str>) -> Result<(), BearerError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(header::AUTHORIZATION, v.parse().unwrap());
        }
        check_bearer(&headers, "s3cret")
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR  s3cret",
        ] {
            assert_eq!(check(Some(value)), Ok(()), "{value}");
        }
    }

    #[test]
    fn a_wrong_or_missing_token_is_refused() {
        assert_eq!(check(Some("Bearer s3cre")), Err(BearerError::Wrong));
        assert_eq!(check(Some("Bearer s3cretx")), Err(BearerError::Wrong));
        assert_eq!(check(Some("Bearer S3CRET")), Err(BearerError::Wrong));
        assert_eq!(check(Some("Basic s3cret")), Err(BearerError::Missing));
        assert_eq!(check(Some("s3cret")), Err(BearerError::Missing));
        assert_eq!(check(None), Err(BearerError::Missing));
    }
}
