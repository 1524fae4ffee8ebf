//! What `outpost stats` shows: counters of what tasks and nodes use, as each node's agent reads
//! them at one instant. Counters only grow; rates are two readings apart, so the reader (the
//! CLI) computes them and no agent keeps a history.

use serde::{Deserialize, Serialize};

/// Cumulative counters of a task or a node; `None` where they cannot be read there (a process
/// task shares the node's network, so it has no counters of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// CPU time used, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory in use now, in bytes.
    pub memory_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskUsage {
    pub task: String,
    pub service: String,
    pub usage: Usage,
    /// The memory limit of its spec, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
}

/// One node's reading: its own counters and its running tasks'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeUsage {
    pub node: String,
    /// When it was read, in milliseconds on the node's monotonic clock: only the difference
    /// between two readings of one node means anything.
    pub at_ms: u64,
    /// CPUs the node has: a task using all of one shows as 100%.
    pub cpus: u32,
    pub memory_total: Option<u64>,
    pub usage: Usage,
    pub tasks: Vec<TaskUsage>,
}

/// Every node's reading, and the nodes that did not answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterUsage {
    pub nodes: Vec<NodeUsage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<Unreachable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Unreachable {
    pub node: String,
    pub error: String,
}
