//! The replicated store: [`state`] holds the cluster state and its deterministic `apply`.

pub mod state;

pub use state::{Command, Placement, Response, State};
