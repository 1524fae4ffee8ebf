//! Wire types of Outpost's HTTP API (`/v1`), shared by the server, the agent and the CLI, and the
//! OpenAPI document that describes them ([`openapi`]). Pure data: no I/O.
//!
//! The same `Task`, `Node` and `Event` records are what the replicated store keeps, so what a
//! client reads is exactly what was committed.

mod endpoints;
mod exec;
mod images;
mod lines;
mod objects;
pub mod openapi;
mod pull;
mod stats;
mod time;
mod types;

pub use endpoints::*;
pub use exec::*;
pub use images::*;
pub use lines::prefix_lines;
pub use objects::*;
pub use pull::*;
pub use stats::*;
pub use time::{Timestamp, parse_since};
pub use types::*;
