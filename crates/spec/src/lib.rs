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

mod balance;
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
mod stack;
pub mod types;
mod validate;
mod words;
mod yaml;

use std::collections::BTreeMap;

pub use balance::{BalanceAlgorithm, HashOn, LoadBalancerSpec, MAX_BALANCE_WEIGHT};
pub use error::{Problem, SpecError};
pub use objects::{MAX_OBJECT_NAME_LEN, MAX_OBJECT_SIZE, ObjectSource, check_object_name};
pub use quantity::{Cpu, Memory};
pub use rollout::*;
pub use stack::{
    MAX_STACK_LEN, RESERVED_NAMES, check_dependencies, check_stack_name, normalize_stack_name,
};
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

/// Where a file's services go, as the caller knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stacking {
    /// The stack named on the command line (`outpost deploy -p NAME`); it must already be in
    /// normal form, as `docker compose -p` requires.
    pub project: Option<String>,
    /// The name of the directory the file is in: a Compose file's stack when neither
    /// `project`, `COMPOSE_PROJECT_NAME` nor its `name:` gives one.
    pub directory: Option<String>,
}

/// Parses a file in either format, outside any stack (a Compose file that names none stays
/// outside one too). See [`parse_file_in`].
pub fn parse_file(
    source: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    dotenv: Option<&str>,
) -> Result<Parsed, SpecError> {
    parse_file_in(source, text, env, dotenv, &Stacking::default())
}

/// Parses a file in either format. A file whose first document has a top-level `services:`
/// mapping is Compose (native specs have no such key); anything else is native. `env` and
/// `dotenv` only matter for Compose, which interpolates `${VAR}`.
///
/// A Compose file is a stack named, as `docker compose` names its project, by
/// `stacking.project`, else `COMPOSE_PROJECT_NAME`, else its top-level `name:`, else
/// `stacking.directory` (the last two normalised, [`normalize_stack_name`]); its services are
/// `<stack>_<service>`. A native file's services are in the stack `stacking.project` names, or
/// in their own `stack:`, if any.
pub fn parse_file_in(
    source: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    dotenv: Option<&str>,
    stacking: &Stacking,
) -> Result<Parsed, SpecError> {
    if let Some(project) = &stacking.project {
        check_stack_name(project).map_err(|why| Problem::new("-p", why))?;
    }
    let docs = yaml::load(source, text)?;
    if is_compose(&docs) {
        return compose::from_docs(source, &docs, env, dotenv, stacking);
    }
    let services = native::from_docs(source, &docs, stacking.project.as_deref())?;
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
