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
    /// Services whose current revision (or one a task still runs) uses it; filled in by the
    /// servers' listing (`GET /v1/images`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// Services that keep it only for rollback (an earlier revision they keep): with no
    /// `used_by`, the image is kept for `rollout undo` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<String>,
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

/// A key whose signed image bundles the cluster accepts (or once did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BundleKey {
    /// `ed25519:` and 16 hex digits of the key's sha256: what a bundle's signature names.
    pub id: String,
    pub name: String,
    /// The ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// `cluster` for the key this cluster signs its bundles with, `added` for one trusted by
    /// `outpost image keys add`.
    pub origin: String,
    /// `trusted`, or `revoked`: bundles it signed are refused.
    pub state: String,
}

/// `outpost image keys add NAME KEY`: trust bundles another cluster signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrustKeyRequest {
    pub name: String,
    /// The other cluster's public key as `outpost image keys` there shows it (64 hex digits).
    pub public_key: String,
}

/// `outpost image save`: which images, from which node, for a target that holds what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SaveRequest {
    /// Images as specs name them (`team/app:1.4`).
    pub images: Vec<String>,
    /// The node whose store to bundle from; by default one that holds all of them.
    #[serde(default)]
    pub node: Option<String>,
    /// Leave out what the target has: blobs it holds (`sha256:…`), images it holds, or every
    /// blob of these nodes' stores.
    #[serde(default)]
    pub have: Have,
}

/// What the target of a delta bundle holds already.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Have {
    #[serde(default)]
    pub blobs: Vec<String>,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub nodes: Vec<String>,
}

/// A bundle loaded into a node's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoadedBundle {
    pub node: String,
    /// `name:tag` of each image now in the store.
    pub images: Vec<String>,
    /// Blobs new to the store, and their bytes.
    pub blobs_added: usize,
    pub bytes_added: u64,
    /// The key that signed it; none for an unsigned `docker save` archive.
    pub signed_by: Option<String>,
    /// Why an image is in the store but not yet in the node's Docker Engine (it then gets
    /// there when a task starts it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// An image the cluster's services keep: no node collects it (`GET /v1/images/kept`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeptImage {
    /// As the specs name it (`registry.example.com/team/app:1.4`).
    pub image: String,
    /// Services whose current revision, or a revision a task still runs, uses it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// Services that keep it only for rollback: the image of an earlier revision they keep
    /// (the last `revision_history`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback: Vec<String>,
}

/// An image a collection removed from a node's store (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrunedImage {
    pub name: String,
    pub tag: String,
    pub digest: String,
    /// Bytes its manifests, config and layers held; shared layers that other images keep
    /// stay, so the node frees `NodePrune::bytes`, not the sum of these.
    pub bytes: u64,
}

/// What one node's collection removed, or would remove in a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodePrune {
    pub node: String,
    pub dry_run: bool,
    pub images: Vec<PrunedImage>,
    /// Blobs removed and their bytes, each counted once.
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs left in the store.
    pub kept_blobs: usize,
    /// Partial writes older than an hour removed (uploads, interrupted fetches).
    pub partial: usize,
    /// Tags removed from the node's Docker Engine: its copies of the images removed, pulled
    /// through the mirror and used by no container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_tags: Vec<String>,
}

/// Every node's collection, and the nodes that did not answer (which collected nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterPrune {
    pub nodes: Vec<NodePrune>,
    pub unreachable: Vec<Unreachable>,
}
