//! Service specs: the types a user writes, their parsing from native YAML and Docker Compose, and
//! their validation. Pure: no network, disk, clock or environment access — callers pass file text
//! and environment variables in.
//!
//! - [`types`]: `ServiceSpec` and its parts; the same types cross the HTTP API as JSON.
//! - [`quantity`]: Kubernetes CPU and memory quantities.

pub mod quantity;
pub mod types;

pub use quantity::{Cpu, Memory};
pub use types::*;
