//! `outpost images`: what each node's image store holds.

use serde::{Deserialize, Serialize};

use crate::Unreachable;

/// An image a node holds in its store (and serves from its mirror).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredImage {
    /// The repository as the store names it (without a registry host): `team/app`.
    pub name: String,
    pub tag: String,
    /// The manifest's (or index's) digest.
    pub digest: String,
    /// Bytes of its manifests, config and layers on the node; layers shared with other images
    /// count in each.
    pub bytes: u64,
    /// Blobs it refers to that the node lacks: 0 for an image that starts without a registry.
    pub missing_blobs: usize,
}

/// One node's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeImages {
    pub node: String,
    pub images: Vec<StoredImage>,
    /// Every blob in the store, images' or not, counted once.
    pub blobs: usize,
    pub blob_bytes: u64,
}

/// A node whose store holds an image whole, where another node's agent can fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSource {
    pub node: String,
    /// Its agent's API (`https://…`), which serves its store read-only under
    /// `/v1/agent/registry/v2/` to the cluster's nodes.
    pub address: String,
}

/// Every node's store, and the nodes that did not answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterImages {
    pub nodes: Vec<NodeImages>,
    pub unreachable: Vec<Unreachable>,
}
