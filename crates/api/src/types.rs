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
    /// Its node was lost (`down` or `unreachable`) for longer than the service's
    /// `on_node_lost` allows: the control plane gave it up and placed a replacement. The one
    /// observed state the control plane writes, since the node can no longer say; final, no
    /// report moves a task out of it.
    Lost,
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Pending => "pending",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
            TaskState::Lost => "lost",
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
    /// The `seq` of the last status applied (0 before any carried one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status_seq: u64,
    /// Since when it has been ready without a break; `None` while it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the task is in its state: a start error, an exit reason, why it is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How its last run ended, kept while it runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExit>,
    /// While it waits out a restart backoff: when its agent starts it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// In listings, the state of the task's node when that is not `ready`: a task on a lost
    /// node is never `ready`, whatever it last reported. Filled in when read, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_state: Option<NodeState>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Task {
    /// Whether the task has been ready, without a break, for `monitor` at `now`: what a
    /// rollout counts as updated.
    pub fn ready_for(&self, monitor: std::time::Duration, now: Timestamp) -> bool {
        self.ready && (self.ready_since).is_some_and(|since| since.elapsed_at(now) >= monitor)
    }
}

/// A task's observed state as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskStatus {
    pub id: String,
    /// Orders this task's statuses: it grows with every status its node's agent produces,
    /// across agent restarts too, and the control plane ignores a status not above the last
    /// one it applied for the task (a late or replayed report). 0, from an agent that predates
    /// it, is judged by the task's state alone.
    #[serde(default)]
    pub seq: u64,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<LastExit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start: Option<Timestamp>,
}

/// How a task's last run ended, kept through the restarts that follow (Kubernetes' "Last
/// State"): why the task restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastExit {
    /// A word or two: `exit 2`, `SIGKILL`, `out of memory`, `unhealthy`, `start failed`.
    pub summary: String,
    /// The whole reason, as the task's `exited` (or `unhealthy`, `start-failed`) event said it.
    pub reason: String,
    /// The exit status (128 + the signal for a signal), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    /// Heartbeats are late; its work is left alone for now.
    Suspect,
    /// Alive to other agents but its heartbeats do not reach the servers.
    Unreachable,
    Down,
}

impl NodeState {
    /// Whether the node is lost: `down` or `unreachable`. Its tasks count as not ready, and
    /// its services' `on_node_lost` decides when they are replaced.
    pub fn is_lost(self) -> bool {
        matches!(self, NodeState::Down | NodeState::Unreachable)
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "ready",
            NodeState::Suspect => "suspect",
            NodeState::Unreachable => "unreachable",
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
    /// Set by `outpost node drain`: nothing new is placed on it, and each of its tasks stops
    /// once a replacement placed elsewhere is ready.
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub drivers: Vec<String>,
    /// What an operator should know about the node: how it isolates resources, drivers it lacks.
    #[serde(default)]
    pub notes: Vec<String>,
    pub version: String,
    pub registered_at: Timestamp,
    pub state_since: Timestamp,
    /// While the node is suspect, down or unreachable: when the leader last heard its
    /// heartbeat. `on_node_lost` counts from here, so "replace after 2 s" means after 2 s of
    /// silence, not 2 s after the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_since: Option<Timestamp>,
}

/// A node as `GET /v1/nodes` lists it: the record the cluster keeps, with the liveness the
/// answering server sees, which lives in its memory only (never in the replicated state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    #[serde(flatten)]
    pub node: Node,
    /// Milliseconds since this server last heard the node's heartbeat; `null` where it has
    /// heard none (a follower, or a leader that took office since the node's last beat).
    #[serde(default)]
    pub last_heartbeat_age_ms: Option<u64>,
    /// The failure detector's suspicion (phi accrual: -log10 of the chance that a beat is this
    /// late): below 3 the node is ready, from 8 on it is judged lost. `null` where this server
    /// keeps no liveness for the node.
    #[serde(default)]
    pub phi: Option<f64>,
    /// Tasks placed on the node that are wanted running.
    #[serde(default)]
    pub tasks: u64,
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
    /// The highest version ever given: a rollback lowers `version`, and the next deploy goes
    /// above this. 0 in a service stored before it was kept: `version` stands in.
    #[serde(default)]
    pub latest_version: u64,
    /// The task templates of recent versions, oldest first, for `rollout history` and `undo`
    /// and for the tasks still running them; at most the spec's `revision_history`, plus any
    /// version a task still runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<Revision>,
    /// The move from one version to another, once one began; kept once done, for `rollout
    /// status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Its virtual IP, as an offset into the cluster's service range (the servers'
    /// `--service-range`): the lowest free one from [`FIRST_VIP`] on, given at its first deploy
    /// and kept while the service exists. `None` in services stored before it was kept, until
    /// they are deployed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<u32>,
}

/// The first offset of the service range a service's virtual IP takes: 0 is the network's
/// address and 1 ([`DNS_VIP`]) the nodes' DNS server.
pub const FIRST_VIP: u32 = 2;
/// The offset of the service range where every node's DNS server answers.
pub const DNS_VIP: u32 = 1;

/// One version of a service's task template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revision {
    pub version: u64,
    pub spec: ServiceSpec,
    /// The spec's fields that differ from the version before (as `deploy --dry-run` says).
    #[serde(default)]
    pub changed: Vec<String>,
    pub created_at: Timestamp,
}

/// A rollout: tasks of `from` (and of any older version) are replaced by tasks of `to`, a few
/// slots at a time, by `settings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    pub from: u64,
    pub to: u64,
    pub state: RolloutState,
    /// Set by `rollout pause` (or a failure with `failure_action: pause`): no new task starts.
    #[serde(default)]
    pub paused: bool,
    /// Set by `rollout promote`: a canary goes on to every slot.
    #[serde(default)]
    pub promoted: bool,
    /// The update (or rollback) settings in force.
    pub settings: spec::UpdateSpec,
    /// Tasks of `to` that failed within their monitor.
    #[serde(default)]
    pub failed: Vec<String>,
    /// Why it stands where it does: the failure that paused or rolled it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Rollout {
    /// Whether tasks are still being replaced.
    pub fn active(&self) -> bool {
        matches!(
            self.state,
            RolloutState::Updating | RolloutState::RollingBack
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    Updating,
    RollingBack,
    Completed,
    RolledBack,
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RolloutState::Updating => "updating",
            RolloutState::RollingBack => "rolling back",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled back",
        })
    }
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
    /// While a rollout is under way: whether it updates or rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployRequest {
    pub services: Vec<ServiceSpec>,
    /// Validate and report the changes without applying them.
    #[serde(default)]
    pub dry_run: bool,
    /// Secrets and configs to store with the deploy (a Compose file's `file:` definitions):
    /// stored only when the whole deploy is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<crate::ObjectUpload>,
    /// Replace services of the same name that belong to another stack (or to none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
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
    /// For a dry run: the services whose replicas would wait once deployed (for a fixed host
    /// port, room, or a dependency), and why, as the scheduler would say it now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiting>,
}

/// Why some replicas of a service wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Waiting {
    pub service: String,
    pub reason: String,
}

/// `POST /v1/services/{name}/rollout/undo`: the revision to go back to, or the one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UndoRequest {
    #[serde(default)]
    pub to_revision: Option<u64>,
}

/// `GET /v1/services/{name}/rollout`: where a service's rollout stands, and its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutStatus {
    pub service: String,
    /// The version the service's tasks are moving to (or run).
    pub version: u64,
    pub replicas: u32,
    /// Slots whose task of `version` is updated: ready through its monitor.
    pub updated: u32,
    /// Tasks of other versions still wanted running.
    pub old: u32,
    /// Set by a canary that reached its count: `rollout promote` lets it go on.
    pub held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Oldest first, without their specs.
    pub revisions: Vec<RevisionSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevisionSummary {
    pub version: u64,
    pub changed: Vec<String>,
    pub created_at: Timestamp,
    pub current: bool,
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

/// `POST /v1/agent/probe`: the leader asks an agent whether it can reach another node's agent
/// API, to tell a node that is gone from one whose heartbeats alone are lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeRequest {
    /// Base URL of the target's agent API, as the node registered it (`Node::address`).
    pub address: String,
}

/// What an agent saw when it probed another node's agent API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProbeAnswer {
    /// Whether the target's `GET /v1/agent/health` answered within the probe's time.
    pub reached: bool,
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

/// One server of the Raft group, as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServerInfo {
    /// The server's Raft id.
    pub id: u64,
    /// The server's name; an agent of the same name runs on the same machine.
    pub name: String,
    /// The server's API address, `host:port`.
    pub address: String,
    /// `voter` (counts towards the quorum) or `learner` (catching up before it does).
    pub membership: Membership,
    /// True on the server that leads.
    pub leader: bool,
}

/// Whether a server counts towards the quorum yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    Voter,
    Learner,
}

/// The answer of `GET /v1/cluster`: the servers of the group, as the answering server knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterInfo {
    /// The Raft id of the leader, if one is known.
    pub leader: Option<u64>,
    /// The id of the server that answered.
    pub answered_by: u64,
    pub servers: Vec<ServerInfo>,
}

/// Body of `POST /v1/cluster/servers`: a server asks to be added to the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberRequest {
    /// Where the group reaches the new server, `host:port`.
    pub address: String,
    /// The new server's name.
    pub name: String,
}

/// The answer to a membership step: the new server's Raft id and the group as it now stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberResponse {
    pub id: u64,
    pub servers: Vec<ServerInfo>,
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
    /// The admin credential, for a server (every server keeps it in its data dir, where the
    /// CLI on that machine finds it); never an agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
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
