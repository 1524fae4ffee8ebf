//! Records and request/response bodies of the `/v1` API.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use spec::ServiceSpec;

use crate::Timestamp;

/// What the control plane wants of a task. Written only by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Shutdown,
}

/// What the agent last saw of a task. Written only by the agent that runs it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Not started yet: waiting for a node (placement, or room on one), or for its agent to
    /// start it. A task waiting out a restart backoff keeps the state its last run ended in
    /// (`exited` or `failed`); a `restarting` event says when it starts again.
    Pending,
    /// Started; liveness not yet failed, readiness not yet decided.
    Starting,
    Running,
    /// Stopped with exit code 0, or stopped on purpose.
    Exited,
    /// Crashed, killed, or could not be started (see `message`).
    Failed,
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Pending => "pending",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
        })
    }
}

/// One replica of a service. `node` is `None` while it waits for placement (or for room);
/// once set it never changes: a replaced task is a new task with a new id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: String,
    pub service: String,
    /// Replica number, 1-based; stable across restarts on the same node.
    pub slot: u32,
    /// The service spec version this task runs.
    pub version: u64,
    pub node: Option<String>,
    pub desired: DesiredState,
    pub state: TaskState,
    pub ready: bool,
    pub restarts: u32,
    /// Kubernetes QoS class of its spec's resources: who is evicted first under memory pressure.
    pub qos: spec::QosClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Port name → host port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the task is in its state: a start error, an exit reason, why it is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A task's observed state as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskStatus {
    pub id: String,
    pub state: TaskState,
    /// Stopped by the node to relieve memory pressure: the control plane replaces it.
    #[serde(default)]
    pub evicted: bool,
    pub ready: bool,
    pub restarts: u32,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    /// Heartbeats are late; its work is left alone for now.
    Suspect,
    Down,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "ready",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
        })
    }
}

/// What a node offers to workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Capacity {
    /// Millicores.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    pub name: String,
    /// Base URL of the node's agent API (logs), e.g. `http://127.0.0.1:7001`.
    pub address: String,
    pub state: NodeState,
    /// All the node has.
    pub capacity: Capacity,
    /// What workloads may request: capacity less what is reserved for the system and the agent.
    /// Placement never exceeds it.
    pub allocatable: Capacity,
    /// Set while the node's available memory is below its eviction threshold: nothing new is
    /// placed on it.
    #[serde(default)]
    pub memory_pressure: bool,
    #[serde(default)]
    pub drivers: Vec<String>,
    /// What an operator should know about the node: how it isolates resources, drivers it lacks.
    #[serde(default)]
    pub notes: Vec<String>,
    pub version: String,
    pub registered_at: Timestamp,
    pub state_since: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        })
    }
}

/// Something that happened, as it is reported: by the control plane or by an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewEvent {
    pub time: Timestamp,
    pub level: Level,
    /// Short machine-readable reason: `started`, `exited`, `restarting`, `unhealthy`, …
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

/// A committed event: `seq` orders all events of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub seq: u64,
    #[serde(flatten)]
    pub event: NewEvent,
}

/// A service as the control plane holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub spec: ServiceSpec,
    /// Bumped when a deploy changes the task template (any field but `replicas`), so its tasks
    /// are replaced; a new replica count (deploy or scale) keeps it.
    pub version: u64,
    /// Set by `rm`: its tasks are being stopped, then the service is forgotten.
    #[serde(default)]
    pub removing: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A service with counts, as `outpost services` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub driver: String,
    pub version: u64,
    pub replicas: u32,
    pub running: u32,
    pub ready: u32,
    pub removing: bool,
    pub updated_at: Timestamp,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployRequest {
    pub services: Vec<ServiceSpec>,
    /// Validate and report the changes without applying them.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Create,
    Update,
    Unchanged,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::Create => "create",
            ChangeKind::Update => "update",
            ChangeKind::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Change {
    pub service: String,
    pub change: ChangeKind,
    /// The top-level spec fields that differ, for updates.
    #[serde(default)]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployResponse {
    pub dry_run: bool,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScaleRequest {
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    pub name: String,
    pub address: String,
    pub capacity: Capacity,
    pub allocatable: Capacity,
    pub drivers: Vec<String>,
    #[serde(default)]
    pub notes: Vec<String>,
    pub version: String,
}

/// The most task statuses and events an agent puts in one [`StatusReport`]. A server accepts at
/// least this many in a report, so an agent's report is never refused for its length.
pub const REPORT_ITEMS: usize = 1_000;

/// What an agent sends after anything about its tasks changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// Orders one node's reports: it increases with every report, across agent restarts too, so
    /// the control plane ignores a report older than one it applied (one that timed out on the
    /// agent may still commit after its retry). 0, from an agent that predates it, is always
    /// applied.
    #[serde(default)]
    pub seq: u64,
    pub tasks: Vec<TaskStatus>,
    #[serde(default)]
    pub events: Vec<NewEvent>,
    /// Whether the node is under memory pressure, when that changed.
    #[serde(default)]
    pub memory_pressure: Option<bool>,
}

/// A task an agent must run (desired `running`) or stop (desired `shutdown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub task: String,
    pub service: String,
    pub slot: u32,
    pub version: u64,
    pub desired: DesiredState,
    pub spec: ServiceSpec,
}

/// Answer to a blocking query: the node's whole assignment list as of `index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignments {
    pub index: u64,
    pub assignments: Vec<Assignment>,
}

/// Answer to `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Events {
    pub index: u64,
    pub events: Vec<Event>,
}

/// One problem with a request, located by a field path such as `web.liveness.period`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// The server's answer to `GET /v1/status`: its version, the Raft leader it knows of, its own
/// Raft id and its applied index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub version: String,
    pub leader: Option<u64>,
    pub node_id: u64,
    pub applied_index: u64,
}

/// Where the scheduler put one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub service: String,
    pub slot: u32,
    pub node: String,
}

/// The response header of a listing (`GET /v1/tasks`, `/v1/services`, `/v1/nodes`) that holds
/// the token for its next page; absent on the last page. The body stays a plain array, so a
/// client that reads one page only still gets well-formed records.
pub const CONTINUE_HEADER: &str = "outpost-continue";

/// The most records one page of a listing holds, and its default `limit`. 1,000 tasks are about
/// 0.5 MB of JSON (a task is ~500 bytes): one page stays a small, quick answer on an edge server,
/// and 100,000 tasks take 100 requests.
pub const MAX_PAGE: usize = 1000;

/// `POST /v1/join`: a node asks for its certificate with a join token's secret. Sent only over
/// TLS to a server whose CA the joiner checked against the token's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// `agent` or `server`: which token the secret must be, and which certificate is issued.
    pub role: String,
    /// The node's name, which its certificate will be for.
    pub name: String,
    /// The join token's secret (the part after the CA digest).
    pub secret: String,
    /// IP addresses the node serves on, written into its certificate.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub hosts: Vec<std::net::IpAddr>,
}

/// The joined node's credentials, all PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinResponse {
    pub cert: String,
    pub key: String,
    pub ca: String,
    /// The CA's key, for a server (which signs node certificates in its turn); never an agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinResponse(..)")
    }
}

/// A token, as `outpost token show|rotate` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenAnswer {
    pub role: String,
    pub token: String,
}
