//! The typed service spec: what a user asks for. The system never modifies a spec it was given;
//! defaults are filled in once, at parse time, so every later reader sees the same values.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::LoadBalancerSpec;
use crate::quantity::{Cpu, Memory};
use crate::rollout::{DEFAULT_REVISION_HISTORY, UpdateSpec};

/// One service: N replicas of the same task template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `<stack>_<short name>` for a service of a stack, else the name as given.
    pub name: String,
    /// The stack it was deployed with (a Compose project: `outpost deploy -p`, the file's
    /// `name:` or its directory; or a native spec's `stack:`), listed and removed together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    pub replicas: u32,
    pub driver: DriverKind,
    /// Container image; required for `docker`, forbidden for `process`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// argv for a process; for a container it overrides the image's CMD.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Container only: overrides the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    pub restart: RestartSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSpec>,
    #[serde(default)]
    pub resources: Resources,
    /// How long a task being stopped has, twice over: first to finish the connections it has
    /// once no new one is sent to it (drain; a task without ports skips it), then to exit
    /// after SIGTERM before it is killed.
    #[serde(with = "duration_str")]
    #[schema(value_type = String, example = "5s")]
    pub stop_grace: Duration,
    /// Docker only: the signal that asks the container to stop (`SIGTERM`, `SIGQUIT`, `SIGRTMIN+3`
    /// or a number 1 to 64); `None` keeps the image's STOPSIGNAL. Stored as `SIG<NAME>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Docker only: when to pull the image.
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
    /// Docker only: the secret (`outpost secret create`) holding the credentials for the
    /// image's registry, as a Docker config (`{"auths": {...}}`, what `docker login` writes).
    /// It comes before the node's own Docker config; its value reaches only the nodes that
    /// run the service, and only their tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    /// Docker only: mount the container's root filesystem read-only (volumes stay as mounted).
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Docker only: Linux capabilities to add, stored upper-case without `CAP_` (`NET_ADMIN`);
    /// `ALL` means every capability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Docker only: capabilities to drop, in the same form as `cap_add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Docker only: `apparmor=PROFILE`, `seccomp=unconfined|builtin|/path/on/node.json` (or the
    /// profile's JSON inline), `label=...`, `no-new-privileges[=true|false]`, as
    /// `docker run --security-opt` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// Docker only: run with every capability and every host device, without AppArmor or
    /// seccomp confinement; Docker then ignores `cap_add` and `cap_drop`. The escape hatch for
    /// system agents.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// What becomes of the tasks on a node that is lost (`down` or `unreachable`). Specs stored
    /// before it existed decode to the default.
    #[serde(default, skip_serializing_if = "OnNodeLost::is_default")]
    pub on_node_lost: OnNodeLost,
    /// Secrets of the cluster (`outpost secret create`) its tasks read as files; names only,
    /// never a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// Configs of the cluster (`outpost config create`) its tasks read as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// How a new revision replaces the tasks of the one before.
    #[serde(default, skip_serializing_if = "UpdateSpec::is_default")]
    pub update: UpdateSpec,
    /// How a failed update (or `outpost rollout undo`) brings a revision back.
    #[serde(
        default = "UpdateSpec::rollback_default",
        skip_serializing_if = "UpdateSpec::is_rollback_default"
    )]
    pub rollback: UpdateSpec,
    /// Revisions kept for `outpost rollout history` and `undo`.
    #[serde(
        default = "default_revision_history",
        skip_serializing_if = "is_default_revision_history"
    )]
    pub revision_history: u32,
    /// Services (full names) whose tasks must be started, ready or completed before this
    /// one's are placed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Condition>,
    /// How the node's load balancer spreads the service's traffic over its ready replicas.
    #[serde(default, skip_serializing_if = "LoadBalancerSpec::is_default")]
    pub load_balancer: LoadBalancerSpec,
}

/// What a dependency must have reached before a dependent's tasks are placed: Compose's
/// `depends_on` conditions, with Compose's words. Each holds for every replica of the
/// dependency's current version.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Its tasks have started (running; a later crash does not undo it).
    #[default]
    ServiceStarted,
    /// Its tasks are ready (their readiness probe passes, or they run and have none).
    ServiceHealthy,
    /// Its tasks exited with status 0 (one-shot jobs: migrations, seeds).
    ServiceCompletedSuccessfully,
}

impl Condition {
    pub const ALL: [(&'static str, Condition); 3] = [
        ("service_started", Condition::ServiceStarted),
        ("service_healthy", Condition::ServiceHealthy),
        (
            "service_completed_successfully",
            Condition::ServiceCompletedSuccessfully,
        ),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::ServiceStarted => "service_started",
            Condition::ServiceHealthy => "service_healthy",
            Condition::ServiceCompletedSuccessfully => "service_completed_successfully",
        }
    }

    /// What a dependency must be, in a sentence: "started", "ready", "completed".
    pub fn past_participle(self) -> &'static str {
        match self {
            Condition::ServiceStarted => "started",
            Condition::ServiceHealthy => "ready",
            Condition::ServiceCompletedSuccessfully => "completed successfully",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_revision_history() -> u32 {
    DEFAULT_REVISION_HISTORY
}

fn is_default_revision_history(n: &u32) -> bool {
    *n == DEFAULT_REVISION_HISTORY
}

impl ServiceSpec {
    /// A process service with every optional field at its default; handy in tests and docs.
    pub fn process(name: &str, command: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            replicas: 1,
            driver: DriverKind::Process,
            image: None,
            command: command.iter().map(|s| s.to_string()).collect(),
            entrypoint: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            ports: Vec::new(),
            volumes: Vec::new(),
            restart: RestartSpec::default(),
            liveness: None,
            readiness: None,
            resources: Resources::default(),
            stop_grace: DEFAULT_STOP_GRACE,
            stop_signal: None,
            pull: PullPolicy::default(),
            pull_secret: None,
            read_only: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            security_opt: Vec::new(),
            privileged: false,
            on_node_lost: OnNodeLost::default(),
            update: UpdateSpec::default(),
            rollback: UpdateSpec::rollback_default(),
            revision_history: DEFAULT_REVISION_HISTORY,
            secrets: Vec::new(),
            configs: Vec::new(),
            stack: None,
            depends_on: BTreeMap::new(),
            load_balancer: LoadBalancerSpec::default(),
        }
    }

    /// The name inside its stack (`web` of `shop_web`); the whole name without a stack.
    pub fn short_name(&self) -> &str {
        stack_short_name(&self.name, self.stack.as_deref())
    }

    /// The references of one kind: `secrets` or `configs`.
    pub fn file_refs(&self, kind: ObjectKind) -> &[FileRef] {
        match kind {
            ObjectKind::Secret => &self.secrets,
            ObjectKind::Config => &self.configs,
        }
    }

    /// Whether its tasks read the secret or config `name` (the pull secret counts: the node
    /// reads it to pull the image).
    pub fn uses(&self, kind: ObjectKind, name: &str) -> bool {
        let pulls = kind == ObjectKind::Secret && self.pull_secret.as_deref() == Some(name);
        pulls || self.file_refs(kind).iter().any(|r| r.source == name)
    }

    /// The service's QoS class; see [`Resources::qos`].
    pub fn qos(&self) -> QosClass {
        self.resources.qos()
    }
}

/// The full name of service `short` in `stack`: `<stack>_<short>`, as `docker stack deploy`
/// names them.
pub fn stack_service_name(stack: Option<&str>, short: &str) -> String {
    match stack {
        Some(stack) => format!("{stack}_{short}"),
        None => short.to_string(),
    }
}

/// `name` without its stack's prefix; `name` itself when it has none.
pub fn stack_short_name<'a>(name: &'a str, stack: Option<&str>) -> &'a str {
    stack
        .and_then(|s| name.strip_prefix(s))
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or(name)
}

/// A secret or config of the cluster: the two kinds of value a task reads as a file.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Secret,
    Config,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 2] = [ObjectKind::Secret, ObjectKind::Config];

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
        }
    }

    /// The spec field that refers to this kind: `secrets` or `configs`.
    pub fn field(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secrets",
            ObjectKind::Config => "configs",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service's use of a secret or config: `db-password`, or the long form
/// `{ source, target, uid, gid, mode }`.
///
/// Where the file appears: for a process task, `$OUTPOST_SECRETS_DIR/<target>` (configs:
/// `$OUTPOST_CONFIGS_DIR/<target>`); for a container, `/run/secrets/<target>` (configs:
/// `/<target>`), or `target` itself when it is an absolute path. `target` defaults to the
/// name; `mode` to 0400 for a process task's secrets and 0444 otherwise (a container's user is
/// the image's; Swarm's default); `uid` and `gid` to the agent's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(from = "FileRefForm")]
pub struct FileRef {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl FileRef {
    pub fn named(source: &str) -> FileRef {
        FileRef {
            source: source.to_string(),
            target: None,
            uid: None,
            gid: None,
            mode: None,
        }
    }

    /// The file's name under the task's directory of its kind (or its absolute path).
    pub fn target(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.source)
    }
}

/// How a [`FileRef`] may be written in JSON: the name alone, or the long form.
#[derive(Deserialize)]
#[serde(untagged)]
enum FileRefForm {
    Short(String),
    Long(LongFileRef),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongFileRef {
    source: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    mode: Option<u32>,
}

impl From<FileRefForm> for FileRef {
    fn from(form: FileRefForm) -> FileRef {
        match form {
            FileRefForm::Short(source) => FileRef::named(&source),
            FileRefForm::Long(l) => FileRef {
                source: l.source,
                target: l.target,
                uid: l.uid,
                gid: l.gid,
                mode: l.mode,
            },
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What to do with a service's tasks on a lost node: replace them once the node has been lost
/// for a while (`{ replace_after: 2s, unreachable_after: 5m }`), or `keep` them where they are
/// whatever happens.
///
/// Read by hand rather than as an untagged enum, so that a wrong value is told what it should
/// be instead of matching "no variant".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum OnNodeLost {
    /// `keep`: tasks stay on their node, and count again once it is back.
    Keep(KeepTasks),
    Replace(ReplaceAfter),
}

/// The word `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeepTasks {
    Keep,
}

/// How long a lost node must have been silent (since its last heartbeat reached the leader)
/// before its tasks are replaced elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceAfter {
    /// After the node went `down`: nobody reaches it, it most likely crashed.
    #[serde(with = "duration_str", default = "default_replace_after")]
    #[schema(value_type = String, example = "2s")]
    pub replace_after: Duration,
    /// After the node went `unreachable`: its peers still reach it, only the servers do not,
    /// so its tasks most likely still serve their site.
    #[serde(with = "duration_str", default = "default_unreachable_after")]
    #[schema(value_type = String, example = "5m")]
    pub unreachable_after: Duration,
}

/// 2 s: a node that nobody reaches is gone; its replicas are back elsewhere within the few
/// seconds that beat Swarm (~20 s), Nomad (~30 s) and Kubernetes (~5 min).
pub const DEFAULT_REPLACE_AFTER: Duration = Duration::from_secs(2);

/// 5 min: a node cut off from the servers but alive to its peers usually still serves its
/// site; a short uplink outage must not duplicate its work.
pub const DEFAULT_UNREACHABLE_AFTER: Duration = Duration::from_secs(300);

fn default_replace_after() -> Duration {
    DEFAULT_REPLACE_AFTER
}

fn default_unreachable_after() -> Duration {
    DEFAULT_UNREACHABLE_AFTER
}

impl Default for ReplaceAfter {
    fn default() -> Self {
        ReplaceAfter {
            replace_after: DEFAULT_REPLACE_AFTER,
            unreachable_after: DEFAULT_UNREACHABLE_AFTER,
        }
    }
}

impl Default for OnNodeLost {
    fn default() -> Self {
        OnNodeLost::Replace(ReplaceAfter::default())
    }
}

impl<'de> Deserialize<'de> for OnNodeLost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Unexpected, Visitor};

        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = OnNodeLost;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`keep`, or a mapping of `replace_after` and `unreachable_after`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<OnNodeLost, E> {
                match text {
                    "keep" => Ok(OnNodeLost::Keep(KeepTasks::Keep)),
                    other => Err(E::invalid_value(Unexpected::Str(other), &self)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OnNodeLost, A::Error> {
                let map = de::value::MapAccessDeserializer::new(map);
                ReplaceAfter::deserialize(map).map(OnNodeLost::Replace)
            }
        }
        d.deserialize_any(Either)
    }
}

impl OnNodeLost {
    pub fn is_default(&self) -> bool {
        *self == OnNodeLost::default()
    }

    /// How long a node must have been `down` (`unreachable` when `unreachable` is true) before
    /// its tasks are replaced; `None` for `keep`.
    pub fn replace_after(&self, unreachable: bool) -> Option<Duration> {
        match self {
            OnNodeLost::Keep(_) => None,
            OnNodeLost::Replace(r) if unreachable => Some(r.unreachable_after),
            OnNodeLost::Replace(r) => Some(r.replace_after),
        }
    }
}

/// 5 s: long enough for a web server to drain, short enough that a scale-down feels prompt.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    Process,
    Docker,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::Process => "process",
            DriverKind::Docker => "docker",
        })
    }
}

/// When the docker driver pulls a service's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull only when the node lacks the image: a node cut off from its registry still starts.
    #[default]
    IfNotPresent,
    /// Pull before every start, to follow a moving tag; the local image is used when the
    /// registry cannot be reached.
    Always,
    /// Never pull: the image must already be on the node (loaded from a bundle, say).
    Never,
}

impl PullPolicy {
    fn is_default(&self) -> bool {
        *self == PullPolicy::default()
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        })
    }
}

/// A named port. For a process the agent picks a free host port and passes it in the
/// environment; for a container it maps a host port to `container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub name: String,
    /// For a container, the port it listens on inside. A process always listens on the host
    /// port the agent gives it (`PORT`); for it this is only the port its service answers on
    /// by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Docker only: the host address to publish on (Compose's `127.0.0.1:8080:80`); `None`
    /// publishes on every interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// The routing mesh: every node answers on this port and forwards to a ready replica on
    /// any node (TCP and HTTP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<u16>,
}

impl PortSpec {
    /// A port known only by name; the agent picks the host port.
    pub fn named(name: &str) -> PortSpec {
        PortSpec {
            name: name.to_string(),
            container_port: None,
            host_port: None,
            protocol: Protocol::Tcp,
            host_ip: None,
            publish: None,
        }
    }

    /// The port the service answers on at its virtual IP: what its tasks listen on
    /// (`container_port`), else its published port. Never a fixed `host_port`: the node's
    /// listener on it would take the port from the task that binds it there. `None` for a port
    /// known only by name or host port, reached through its tasks' addresses instead.
    pub fn service_port(&self) -> Option<u16> {
        self.container_port.or(self.publish)
    }

    /// The variable that carries this port's host port into a task: `OUTPOST_PORT_<NAME>`,
    /// upper-cased with `-` as `_` so it is a valid shell name.
    pub fn env_var(&self) -> String {
        format!(
            "OUTPOST_PORT_{}",
            self.name.to_uppercase().replace('-', "_")
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    /// TCP that the load balancer proxies as HTTP/1.1: per request, with retries and
    /// forwarded-for headers.
    Http,
}

impl Protocol {
    /// The transport: `http` is TCP to everything below the load balancer.
    pub fn is_udp(self) -> bool {
        self == Protocol::Udp
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// A host path (starts with `/` or `.`) or a named volume.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    pub policy: RestartPolicy,
    /// Delay before the first restart; doubles on each further restart.
    #[serde(with = "duration_str")]
    #[schema(value_type = String, example = "5s")]
    pub initial_backoff: Duration,
    #[serde(with = "duration_str")]
    #[schema(value_type = String, example = "5s")]
    pub max_backoff: Duration,
    /// A task that stays up this long has its backoff reset to `initial_backoff`.
    #[serde(with = "duration_str")]
    #[schema(value_type = String, example = "5s")]
    pub reset_after: Duration,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Always,
            // 100 ms: a crashed task is back well inside the 300 ms recovery target, yet a
            // crash loop cannot spin a core.
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// A health check: what to try, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    #[serde(flatten)]
    pub action: ProbeAction,
    #[serde(with = "duration_str")]
    #[schema(value_type = String, example = "5s")]
    pub initial_delay: Duration,
    #[serde(with = "duration_str")]
    #[schema(value_type = String, example = "5s")]
    pub period: Duration,
    #[serde(with = "duration_str")]
    #[schema(value_type = String, example = "5s")]
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}

impl ProbeSpec {
    pub fn new(action: ProbeAction) -> ProbeSpec {
        ProbeSpec {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProbeAction {
    Http {
        path: String,
        port: PortRef,
    },
    Tcp {
        port: PortRef,
    },
    /// argv run beside the task (inside the container for docker); exit 0 is healthy.
    Exec {
        command: Vec<String>,
    },
}

/// A port named in `ports`, or a literal port number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: ResourceList,
    #[serde(default)]
    pub limits: ResourceList,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "250m")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "64Mi")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl Resources {
    /// The quality-of-service class, by Kubernetes' rules for a pod with one container. Only CPU
    /// and memory count, not pids. A missing request defaults to its limit first, as the
    /// Kubernetes API server fills it in; after that, an amount of zero counts as unset.
    ///
    /// - **Guaranteed**: CPU and memory both have a limit, and each request equals its limit.
    ///   Limits alone are enough, since the requests default to them; an explicit request of 0
    ///   is not missing, so it does not default and the class is Burstable.
    /// - **BestEffort**: no CPU or memory request or limit (above zero) at all.
    /// - **Burstable**: everything else.
    pub fn qos(&self) -> QosClass {
        let cpu = Amounts::of(self.requests.cpu.map(|c| c.0), self.limits.cpu.map(|c| c.0));
        let memory = Amounts::of(
            self.requests.memory.map(|m| m.0),
            self.limits.memory.map(|m| m.0),
        );
        if cpu.guaranteed() && memory.guaranteed() {
            QosClass::Guaranteed
        } else if cpu.is_empty() && memory.is_empty() {
            QosClass::BestEffort
        } else {
            QosClass::Burstable
        }
    }
}

/// One resource's request and limit as Kubernetes judges QoS: after the request defaults to
/// the limit, with zeros dropped.
struct Amounts {
    request: Option<u64>,
    limit: Option<u64>,
}

impl Amounts {
    fn of(request: Option<u64>, limit: Option<u64>) -> Amounts {
        let positive = |n: &u64| *n > 0;
        Amounts {
            // Defaulting happens before zeros are dropped: an explicit request of 0 stays 0.
            request: request.or(limit).filter(positive),
            limit: limit.filter(positive),
        }
    }

    fn guaranteed(&self) -> bool {
        self.limit.is_some() && self.request == self.limit
    }

    fn is_empty(&self) -> bool {
        self.request.is_none() && self.limit.is_none()
    }
}

/// Kubernetes' pod QoS classes, which rank tasks for eviction when a node runs short of memory.
/// The variants are ordered by how well a task is protected: BestEffort goes first, Guaranteed
/// last, so `min` picks the class to evict first. Display and the JSON form use Kubernetes'
/// spelling (`BestEffort`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum QosClass {
    BestEffort,
    Burstable,
    Guaranteed,
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QosClass::BestEffort => "BestEffort",
            QosClass::Burstable => "Burstable",
            QosClass::Guaranteed => "Guaranteed",
        })
    }
}

/// Durations cross the wire in the same humantime form users write (`1s`, `250ms`).
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resources from `(request, limit)` pairs: CPU in millicores, memory in MiB.
    fn resources(cpu: (Option<u64>, Option<u64>), memory: (Option<u64>, Option<u64>)) -> Resources {
        let mib = |m: Option<u64>| m.map(|n| Memory(n << 20));
        Resources {
            requests: ResourceList {
                cpu: cpu.0.map(Cpu),
                memory: mib(memory.0),
                pids: None,
            },
            limits: ResourceList {
                cpu: cpu.1.map(Cpu),
                memory: mib(memory.1),
                pids: None,
            },
        }
    }

    fn check(
        cpu: (Option<u64>, Option<u64>),
        memory: (Option<u64>, Option<u64>),
        expect: QosClass,
    ) {
        assert_eq!(
            resources(cpu, memory).qos(),
            expect,
            "cpu {cpu:?}, memory {memory:?}"
        );
    }

    const NONE: (Option<u64>, Option<u64>) = (None, None);

    #[test]
    fn guaranteed_needs_cpu_and_memory_limits_that_equal_the_requests() {
        check(
            (Some(500), Some(500)),
            (Some(64), Some(64)),
            QosClass::Guaranteed,
        );
        check(
            (Some(100), Some(500)),
            (Some(64), Some(64)),
            QosClass::Burstable,
        );
        check(
            (Some(500), Some(500)),
            (Some(32), Some(64)),
            QosClass::Burstable,
        );
        check((Some(500), Some(500)), NONE, QosClass::Burstable);
        check(NONE, (Some(64), Some(64)), QosClass::Burstable);
    }

    #[test]
    fn a_missing_request_defaults_to_its_limit() {
        check((None, Some(500)), (None, Some(64)), QosClass::Guaranteed);
        check(
            (Some(500), Some(500)),
            (None, Some(64)),
            QosClass::Guaranteed,
        );
        // An explicit zero is not missing: it stays zero, below the limit.
        check((Some(0), Some(500)), (None, Some(64)), QosClass::Burstable);
    }

    #[test]
    fn best_effort_has_no_cpu_or_memory_request_or_limit() {
        check(NONE, NONE, QosClass::BestEffort);
        // Zero asks for nothing, as in Kubernetes.
        check((Some(0), None), (Some(0), None), QosClass::BestEffort);
        let pids_only = Resources {
            limits: ResourceList {
                pids: Some(100),
                ..ResourceList::default()
            },
            ..Resources::default()
        };
        assert_eq!(pids_only.qos(), QosClass::BestEffort, "pids do not count");
    }

    #[test]
    fn burstable_is_everything_in_between() {
        check((Some(100), None), NONE, QosClass::Burstable);
        check(NONE, (None, Some(64)), QosClass::Burstable);
        check((Some(100), None), (Some(64), None), QosClass::Burstable);
    }

    #[test]
    fn a_service_reports_the_class_of_its_resources() {
        let mut spec = ServiceSpec::process("web", &["./web"]);
        assert_eq!(spec.qos(), QosClass::BestEffort);
        spec.resources = resources((None, Some(250)), (None, Some(128)));
        assert_eq!(spec.qos(), QosClass::Guaranteed);
    }

    #[test]
    fn qos_classes_are_spelled_and_ordered_as_kubernetes_evicts() {
        let classes = [
            QosClass::BestEffort,
            QosClass::Burstable,
            QosClass::Guaranteed,
        ];
        let shown: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
        assert_eq!(shown, ["BestEffort", "Burstable", "Guaranteed"]);
        let json = serde_json::to_string(&classes).unwrap();
        assert_eq!(json, r#"["BestEffort","Burstable","Guaranteed"]"#);
        assert!(classes.is_sorted(), "evicted first sorts first");
    }

    #[test]
    fn pull_policies_are_kebab_case_words() {
        let all = [
            PullPolicy::IfNotPresent,
            PullPolicy::Always,
            PullPolicy::Never,
        ];
        let shown: Vec<String> = all.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["if-not-present", "always", "never"]);
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(json, r#"["if-not-present","always","never"]"#);
    }
}
