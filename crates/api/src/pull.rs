//! `outpost image pull`: nodes obtaining an image into their stores, as NDJSON lines (one
//! [`PullLine`] a line), passed from each node's agent through the server as they come.

use serde::{Deserialize, Serialize};

/// What to pull, and where (every live node when `nodes` is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PullRequest {
    /// The image as a spec names it (`alpine:3.20`, `registry.example.com/team/app:1`).
    pub image: String,
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// One step of one node's pull. Each node's lines end with one `done` or one `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullLine {
    /// The node asks a source (`node edge-1`, `upstream registry-1.docker.io`).
    Trying { node: String, source: String },
    /// Bytes of one blob received so far, of `total` when the source said.
    Blob {
        node: String,
        digest: String,
        done: u64,
        total: Option<u64>,
    },
    /// The node holds the image whole.
    Done {
        node: String,
        origin: PullOrigin,
        /// Bytes it received for it (0 when its store held it already).
        bytes: u64,
        /// Why a refresh from the registry was given up, when it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
    },
    /// No source could give it: each source's failure.
    Failed { node: String, error: String },
}

impl PullLine {
    pub fn node(&self) -> &str {
        match self {
            PullLine::Trying { node, .. }
            | PullLine::Blob { node, .. }
            | PullLine::Done { node, .. }
            | PullLine::Failed { node, .. } => node,
        }
    }
}

/// Where a node's image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PullOrigin {
    /// Its store held it already.
    Store,
    /// Another node's store.
    Peer { peer: String },
    /// Its registry (`registry-1.docker.io`, `127.0.0.1:5000`).
    Upstream { registry: String },
}

impl std::fmt::Display for PullOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullOrigin::Store => f.write_str("already held"),
            PullOrigin::Peer { peer } => write!(f, "from node {peer}"),
            PullOrigin::Upstream { registry } => write!(f, "from upstream {registry}"),
        }
    }
}
