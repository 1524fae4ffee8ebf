//! Hardened HTTP serving, shared by the server's API and the agent's: one accept loop with a
//! connection cap and header-read/idle timeouts ([`serve`], over [`accept_loop`], which the load
//! balancer's listeners share), a JSON body extractor with a size
//! limit whose every refusal is an [`api::ApiError`] ([`Json`]; [`Path`] and [`Query`] likewise), the bearer-token check
//! ([`authorize`]), and the answers every route shares ([`Fail`], [`not_found`],
//! [`time_limit`]).
//!
//! It knows HTTP and the API's error shape, nothing of Raft or tasks.

mod answer;
mod bearer;
mod json;
mod params;
mod serve;

pub use answer::{Fail, not_found, time_limit};
pub use bearer::{BearerError, Token, authorize, check_bearer};
pub use hyper_util::server::graceful::Watcher;
pub use json::{DRAIN_MAX, Json};
pub use params::{Path, Query};
pub use serve::{
    BodyLimit, DEFAULT_BODY_LIMIT, DEFAULT_HEADER_READ_TIMEOUT, Lane, Limits, PeerCertificate,
    accept_loop, refuse_busy, serve, serve_tls,
};
