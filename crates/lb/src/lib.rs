//! The node's load balancer: a listener per published port or service name, each spreading its
//! clients over the ready endpoints of one service.
//!
//! - [`Balancer`] (`balancer.rs`): one listener's endpoint set, fed by the caller with
//!   [`Balancer::update`] and swapped whole, its [`Algorithm`] (`pick/`, one file each, pure),
//!   passive outlier detection ([`Outlier`], `outlier.rs`), the [`RetryBudget`] (`budget.rs`)
//!   and counters read as a [`Snapshot`] (`counters.rs`).
//! - [`serve_http`] (`http.rs`): the HTTP/1 proxy, with pooled keep-alive connections to the
//!   endpoints, forwarded-for headers and retries; [`serve_tcp`] (`tcp.rs`): the L4 proxy, with
//!   an optional PROXY protocol v2 header (`proxy_protocol.rs`). Both run on `httpd`'s accept
//!   loop (connection cap) with an idle timeout (`idle.rs`), and on a [`ProxyThread`]
//!   (`thread.rs`): an event loop of their own.
//! - [`dns`]: the node's DNS server for service discovery, answering for Outpost's domain from
//!   a zone the caller builds and forwarding other names upstream, over UDP and TCP.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use lb::{Balancer, Config, Endpoint, HttpOptions};
//! let balancer = Balancer::new(Config::default(), &[
//!     Endpoint::ready("web-1", "10.0.0.5:8080".parse().unwrap()),
//!     Endpoint::ready("web-2", "10.0.0.6:8080".parse().unwrap()),
//! ]);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
//! tokio::spawn(lb::serve_http(listener, balancer.clone(), HttpOptions::default(), std::future::pending()));
//! // Later, as readiness changes:
//! balancer.update(&[Endpoint::ready("web-2", "10.0.0.6:8080".parse().unwrap())]);
//! # Ok(()) }
//! ```
//!
//! It knows sockets and HTTP, nothing of tasks, specs or the control plane.

mod balancer;
mod budget;
mod clock;
mod counters;
pub mod dns;
mod endpoint;
mod http;
mod idle;
mod outlier;
mod pick;
mod pool;
mod proxy_protocol;
mod rng;
mod tcp;
mod thread;

pub use balancer::{Balancer, Config, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS};
pub use budget::RetryBudget;
pub use counters::{CountersSnapshot, EndpointSnapshot, Histogram, LATENCY_BUCKETS_US, Snapshot};
pub use endpoint::{Endpoint, EndpointState, Health, MAX_WEIGHT};
pub use http::{HttpOptions, serve_http};
pub use outlier::Outlier;
pub use pick::{Algorithm, HashKey};
pub use tcp::{TcpOptions, serve_tcp};
pub use thread::ProxyThread;
