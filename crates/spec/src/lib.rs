//! Service specs: the types a user writes, their parsing from native YAML and Docker Compose, and
//! their validation. Pure: no network, disk, clock or environment access — callers pass file text
//! and environment variables in.
//!
//! - [`types`]: `ServiceSpec` and its parts, and the Kubernetes QoS class its resources give
//!   ([`ServiceSpec::qos`]); the same types cross the HTTP API as JSON.
//! - [`quantity`]: Kubernetes CPU and memory quantities.
//! - [`parse_file`]: text to validated specs, from either format. Parsing collects every
//!   problem in a file before failing; each [`Problem`] names a field path such as
//!   `web.liveness.period`.
//! - [`validate_all`]: the same rules for specs that arrive as JSON.
//!
//! Inside: `yaml` parses text into a small tree (via serde-saphyr), `decode` holds the
//! problem-collecting helpers `native` and `compose` decode that tree with, `interpolate` and
//! `dotenv` implement Compose's variables, `words` splits string commands, `container` knows
//! the docker-only vocabulary (capability and signal names, security options) and `validate`
//! holds the rules.

mod compose;
mod container;
mod decode;
mod dotenv;
mod error;
mod interpolate;
mod native;
mod objects;
pub mod quantity;
mod rollout;
pub mod types;
mod validate;
mod words;
mod yaml;

use std::collections::BTreeMap;

pub use error::{Problem, SpecError};
pub use objects::{MAX_OBJECT_NAME_LEN, MAX_OBJECT_SIZE, ObjectSource, check_object_name};
pub use quantity::{Cpu, Memory};
pub use rollout::*;
pub use types::*;
pub use validate::{
    MAX_BACKOFF, MAX_CPU, MAX_MEMORY, MAX_NAME_LEN, MAX_NODE_LOST_WAIT, MAX_PIDS,
    MAX_PROBE_DURATION, MAX_PROBE_THRESHOLD, MAX_REPLICAS, MAX_RESET_AFTER, MAX_STOP_GRACE,
    MIN_BACKOFF, MIN_PROBE_PERIOD, MIN_PROBE_TIMEOUT, TASK_VARS, validate_all,
};

/// The services in a file, plus what was accepted but not honoured (Compose keys Outpost does
/// not support yet), for the CLI to print before deploying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub services: Vec<ServiceSpec>,
    pub warnings: Vec<String>,
    /// Compose's secrets and configs defined by a file, for the CLI to read and send along.
    pub objects: Vec<ObjectSource>,
}

/// Parses a file in either format. A file whose first document has a top-level `services:`
/// mapping is Compose (native specs have no such key); anything else is native. `env` and
/// `dotenv` only matter for Compose, which interpolates `${VAR}`.
pub fn parse_file(
    source: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    dotenv: Option<&str>,
) -> Result<Parsed, SpecError> {
    let docs = yaml::load(source, text)?;
    if is_compose(&docs) {
        return compose::from_docs(source, &docs, env, dotenv);
    }
    let services = native::from_docs(source, &docs)?;
    Ok(Parsed {
        services,
        warnings: Vec::new(),
        objects: Vec::new(),
    })
}

fn is_compose(docs: &[yaml::Yaml]) -> bool {
    let services = docs.first().and_then(|doc| doc.get("services"));
    matches!(services, Some(yaml::Yaml::Map(_) | yaml::Yaml::Null))
}
