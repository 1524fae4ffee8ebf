//! The replicated state and the commands that change it.
//!
//! `State::apply` is deterministic: the same commands in the same order give the same state on
//! every server. Everything that varies (time, ids of new nodes) arrives inside the command; task
//! ids come from a counter kept in the state itself.
//!
//! Each map of the state is a [`TrackedMap`], which records the keys an apply changed: the store
//! writes only those rows (`State::stored_maps` lists every map it keeps as a table).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use api::{
    Capacity, Change, ChangeKind, DesiredState, Event, Level, NewEvent, Node, NodeState, Placement,
    RegisterRequest, Service, StatusReport, Task, TaskState, TaskStatus, Timestamp,
};
use serde::{Deserialize, Serialize};
use spec::ServiceSpec;

mod objects;

use crate::tables::StoredMap;

mod rollout;
use crate::tracked::TrackedMap;
pub use rollout::RolloutAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or update services (a whole deploy is one entry: all or nothing).
    Deploy {
        services: Vec<ServiceSpec>,
        time: Timestamp,
    },
    Scale {
        service: String,
        replicas: u32,
        time: Timestamp,
    },
    Remove {
        service: String,
        time: Timestamp,
    },
    /// Restart a service's tasks (a new revision of the same spec, rolled out by its update
    /// rules), or one task (stopped, and replaced in its slot).
    Restart {
        service: String,
        #[serde(default)]
        task: Option<String>,
        time: Timestamp,
    },
    RegisterNode {
        node: RegisterRequest,
        time: Timestamp,
    },
    SetNodeState {
        node: String,
        state: NodeState,
        time: Timestamp,
        /// When the leader last heard the node (a verdict of silence); `None` from a verdict
        /// that is not about silence, or from an entry written before it was recorded.
        #[serde(default)]
        silent_since: Option<Timestamp>,
    },
    /// The controller's plan: new tasks to create, tasks to stop, why some replicas wait.
    Reconcile {
        place: Vec<Placement>,
        stop: Vec<String>,
        pending: Vec<(String, String)>,
        time: Timestamp,
        /// Services whose rollout the plan found done. Absent from older entries.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        completed: Vec<String>,
        /// Tasks of a rollout's new version that ran past their readiness deadline unready.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stalled: Vec<String>,
    },
    /// An agent's report of its tasks' observed state, with the events it saw. Entries written
    /// before reports were coalesced hold one of these each; they stay readable.
    Report {
        node: String,
        report: StatusReport,
        time: Timestamp,
    },
    /// Reports of many nodes that arrived within one short tick, committed as one entry and
    /// applied in order, each as a [`Command::Report`] would be. Last of the variants, so
    /// encodings that number variants still read older entries.
    Reports {
        reports: Vec<(String, StatusReport)>,
        time: Timestamp,
    },
    /// The leader's verdict that these tasks are lost: their node has been `down` or
    /// `unreachable` for longer than their service's `on_node_lost` allows at `time`. Each one
    /// that still qualifies when applied stops being wanted (its slot is placed again at once)
    /// and is marked `lost`. Added after `Reports`, so older entries still decode.
    LoseTasks {
        tasks: Vec<String>,
        time: Timestamp,
    },
    /// `outpost node drain` (`drain: true`) and `undrain`. Added after `LoseTasks`.
    SetDrain {
        node: String,
        drain: bool,
        time: Timestamp,
    },
    /// A join token (or the admin credential) of `role` is now the one whose secret has this
    /// sha256 digest; the one before stops working. Without `replace` it is set only where the
    /// role has none yet: a founding server's first commit never undoes a rotation.
    ///
    /// `generation` says the secret is derived from the CA key at that generation (every
    /// server can then make the token again); `None` for a random secret kept in one server's
    /// data dir (entries written before secrets were derived). A generation at or below the
    /// highest ever committed for the role is ignored whole: a rotated token never comes back.
    SetToken {
        role: String,
        digest: String,
        replace: bool,
        #[serde(default)]
        generation: Option<u64>,
        time: Timestamp,
    },
    /// A node certificate was issued: the servers know it by its fingerprint from now on.
    AddCertificate {
        fingerprint: String,
        role: String,
        node: String,
        time: Timestamp,
    },
    /// `outpost node rm`: the node, its tasks and its certificates are gone.
    RemoveNode {
        node: String,
        time: Timestamp,
    },
    /// `outpost rollout pause|resume|promote|undo SERVICE`. Added after `RemoveNode`.
    Rollout {
        service: String,
        action: RolloutAction,
        time: Timestamp,
    },
    /// Secrets (sealed) and configs to store. One that differs from the stored value makes a
    /// new version of every service that uses it; the same value again changes nothing.
    PutObjects {
        objects: Vec<api::StoredObject>,
        time: Timestamp,
    },
    /// `outpost secret rm` / `config rm`: refused while a service still uses it.
    RemoveObject {
        kind: spec::ObjectKind,
        name: String,
        time: Timestamp,
    },
    /// `outpost rm --stack`: every service of the stack, as [`Command::Remove`] removes one,
    /// in one entry. Added after `RemoveObject`.
    RemoveStack {
        stack: String,
        time: Timestamp,
    },
    /// `outpost image keys add`: bundles this ed25519 key signs are accepted. Refused for a
    /// key revoked before: a revoked key never comes back. Added after `RemoveStack`.
    TrustKey {
        id: String,
        name: String,
        public_key: String,
        time: Timestamp,
    },
    /// `outpost image keys revoke`: bundles key `id` signs are refused from now on. For the
    /// cluster's own key, `generation` is the next one, which the servers sign with from now on.
    RevokeKey {
        id: String,
        name: String,
        #[serde(default)]
        generation: Option<u64>,
        time: Timestamp,
    },
    /// Agents' registrations and reports that arrived within one short tick, committed as one
    /// entry and applied in arrival order, each as a [`Command::RegisterNode`] or a
    /// [`Command::Report`] would be. Added after `RevokeKey`; entries written before it hold
    /// `Reports` and one `RegisterNode` per registration, which stay readable.
    FromAgents {
        items: Vec<FromAgent>,
        time: Timestamp,
    },
}

/// One agent's call in a [`Command::FromAgents`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    Register(RegisterRequest),
    Report { node: String, report: StatusReport },
}

const TOKEN_PREFIX: &str = "token/";
pub(crate) const CERT_PREFIX: &str = "cert/";
const GENERATION_PREFIX: &str = "generation/";
const KEY_PREFIX: &str = "bundle-key/";
const REVOKED_KEY_PREFIX: &str = "bundle-key-revoked/";
/// The generation of the cluster's own bundle key, as `generation/<role>` is a token's.
const OWN_KEY_GENERATION: &str = "generation/bundle-key";

fn token_key(role: &str) -> String {
    format!("{TOKEN_PREFIX}{role}")
}

fn generation_key(role: &str) -> String {
    format!("{GENERATION_PREFIX}{role}")
}

fn cert_key(fingerprint: &str) -> String {
    format!("{CERT_PREFIX}{fingerprint}")
}

impl Command {
    /// When the command was made: the cluster's clock, which is what event ages are measured
    /// against (never this server's own clock, which may differ from the leader's).
    pub fn time(&self) -> Timestamp {
        match self {
            Command::Deploy { time, .. }
            | Command::Scale { time, .. }
            | Command::Remove { time, .. }
            | Command::Restart { time, .. }
            | Command::RegisterNode { time, .. }
            | Command::SetNodeState { time, .. }
            | Command::Reconcile { time, .. }
            | Command::Report { time, .. }
            | Command::Reports { time, .. }
            | Command::LoseTasks { time, .. }
            | Command::SetDrain { time, .. }
            | Command::SetToken { time, .. }
            | Command::AddCertificate { time, .. }
            | Command::RemoveNode { time, .. }
            | Command::Rollout { time, .. } => *time,
            Command::PutObjects { time, .. }
            | Command::RemoveObject { time, .. }
            | Command::RemoveStack { time, .. }
            | Command::TrustKey { time, .. }
            | Command::RevokeKey { time, .. }
            | Command::FromAgents { time, .. } => *time,
        }
    }
}

/// How a slot of a service version is filled: see [`State::slot_fill`].
enum SlotFill {
    Filled,
    Waiting(String),
    Open,
}

/// Why a task is to be given up: see [`State::loss_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub node: String,
    pub state: NodeState,
    /// How long the node has been silent (or, for a verdict not about silence, in that
    /// state).
    pub lost_for: std::time::Duration,
    /// Whether `lost_for` counts from the node's last heartbeat.
    pub silent: bool,
    /// What the service's `on_node_lost` allows for it.
    pub allowed: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Deployed(Vec<Change>),
    NotFound(String),
    /// Not done, and why (a secret still in use names its services).
    Refused(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Index of the last applied log entry.
    pub index: u64,
    pub services: TrackedMap<String, Service>,
    pub tasks: TrackedMap<String, Task>,
    /// Tasks that finished or were replaced, as they last stood: the latest
    /// [`FINISHED_KEPT`] of each service, for `ps -a`. Forgotten with their service.
    #[serde(default)]
    pub finished: TrackedMap<String, Task>,
    pub nodes: TrackedMap<String, Node>,
    /// Index at which each node's assignments last changed: what an agent's blocking query waits on.
    pub node_index: TrackedMap<String, u64>,
    /// Per service, why replicas are waiting for placement (empty when all are placed).
    pub pending: TrackedMap<String, String>,
    /// The events kept, oldest first, numbered without gaps. Apply only appends; the store drops
    /// the oldest ones past its retention (`store::Retention`), here and on disk alike.
    pub events: VecDeque<Event>,
    pub next_event: u64,
    pub next_task: u64,
    /// The `seq` of the last report applied from each node, since it last registered.
    #[serde(default)]
    pub report_seq: TrackedMap<String, u64>,
    /// Index at which something placement reads last changed for each service: its version,
    /// replicas or removal, or one of its tasks created, placed, stopped or evicted. What the
    /// service controller compares to plan only the services that moved.
    #[serde(default)]
    pub placement_index: TrackedMap<String, u64>,
    /// Index at which a node's placement inputs last changed: one registered, or its state,
    /// memory pressure, allocatable or drivers. Every service may be placed differently then.
    #[serde(default)]
    pub nodes_placement_index: u64,
    /// Index at which a removed service was last forgotten. Its `placement_index` entry goes
    /// with it, and with the entry the news that its tasks stopped and left room: this keeps
    /// that news for the services still waiting.
    #[serde(default)]
    pub forgotten_placement_index: u64,
    /// The cluster's trust: the digest of each token's secret (`token/<role>`), the highest
    /// generation of a derived join secret (`generation/<role>`) and every node certificate
    /// issued and not revoked (`cert/<fingerprint>` → `<role>/<node>`). Never a secret itself.
    #[serde(default)]
    pub trust: TrackedMap<String, String>,
    /// The lowest Raft id no server was ever given: above every id any applied membership
    /// named, so an id is never given out twice, even after its server left (a server that
    /// comes back with its old data dir must not collide with a newer one). 0 in states
    /// written before it was kept.
    #[serde(default)]
    pub next_server_id: u64,
    /// Task ids by node and by service slot, so that [`State::assignments`] and apply read the
    /// tasks concerned instead of scanning all of them. Derived from `tasks`, so never stored:
    /// `State::reindex` rebuilds it when a state is loaded.
    #[serde(skip)]
    lookup: TaskIndex,
    /// Secrets (sealed with the cluster key) and configs, by `secret/<name>` and
    /// `config/<name>`.
    #[serde(default)]
    pub objects: TrackedMap<String, api::StoredObject>,
}

/// The state's single values, kept in the store's meta row and a snapshot's head beside the
/// tables of its maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) index: u64,
    pub(crate) next_event: u64,
    pub(crate) next_task: u64,
    #[serde(default)]
    pub(crate) nodes_placement_index: u64,
    #[serde(default)]
    pub(crate) forgotten_placement_index: u64,
    #[serde(default)]
    pub(crate) next_server_id: u64,
}

/// Task ids by node, and by service and slot. Equal to every other: it is a function of the
/// tasks, which equality already compares, and `State::check` verifies it against them.
#[derive(Debug, Clone, Default)]
struct TaskIndex {
    by_node: BTreeMap<String, BTreeSet<String>>,
    by_service: BTreeMap<String, BTreeSet<(u32, String)>>,
}

impl PartialEq for TaskIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl TaskIndex {
    fn of(tasks: &BTreeMap<String, Task>) -> TaskIndex {
        let mut index = TaskIndex::default();
        for task in tasks.values() {
            index.add(task);
            if let Some(node) = &task.node {
                index.placed(node, &task.id);
            }
        }
        index
    }

    fn add(&mut self, task: &Task) {
        self.by_service
            .entry(task.service.clone())
            .or_default()
            .insert((task.slot, task.id.clone()));
    }

    fn placed(&mut self, node: &str, id: &str) {
        self.by_node
            .entry(node.to_string())
            .or_default()
            .insert(id.to_string());
    }

    fn forget(&mut self, task: &Task) {
        if let Some(node) = &task.node {
            remove_from(&mut self.by_node, node, &task.id);
        }
        remove_from(
            &mut self.by_service,
            &task.service,
            &(task.slot, task.id.clone()),
        );
    }

    /// The ids of one service's tasks, by slot.
    fn of_service(&self, service: &str) -> impl Iterator<Item = &(u32, String)> {
        self.by_service.get(service).into_iter().flatten()
    }

    /// The ids of the tasks of one slot of a service.
    fn of_slot(&self, service: &str, slot: u32) -> impl Iterator<Item = &String> {
        let from = (slot, String::new());
        self.by_service
            .get(service)
            .into_iter()
            .flat_map(move |ids| ids.range(from.clone()..))
            .take_while(move |(s, _)| *s == slot)
            .map(|(_, id)| id)
    }
}

/// Removes `item` from the set under `key`, and the set once empty.
fn remove_from<T: Ord>(map: &mut BTreeMap<String, BTreeSet<T>>, key: &str, item: &T) {
    if let Some(items) = map.get_mut(key) {
        items.remove(item);
        if items.is_empty() {
            map.remove(key);
        }
    }
}

impl State {
    /// Applies one committed command. Each command has its own function below; `index` is the
    /// log index of the entry, which the state records as its own.
    pub fn apply(&mut self, index: u64, command: &Command) -> Response {
        self.index = index;
        match command {
            Command::Deploy { services, time } => self.deploy_all(services, *time),
            Command::Scale {
                service,
                replicas,
                time,
            } => self.scale(service, *replicas, *time),
            Command::Remove { service, time } => self.remove(service, *time),
            Command::Restart {
                service,
                task,
                time,
            } => self.restart(service, task.as_deref(), *time),
            Command::RegisterNode { node, time } => self.register(node, *time),
            Command::SetNodeState {
                node,
                state,
                time,
                silent_since,
            } => {
                let answer = self.set_node_state(node, *state, *time, *silent_since);
                self.forget_removed_services();
                answer
            }
            Command::Reconcile {
                place,
                stop,
                pending,
                time,
                completed,
                stalled,
            } => {
                for task in stalled {
                    self.rollout_stalled(task, *time);
                }
                let answer = self.reconcile(place, stop, pending, *time);
                for service in completed {
                    self.complete_rollout(service, *time);
                }
                answer
            }
            Command::Report { node, report, time } => {
                self.report(node, report, *time);
                self.forget_removed_services();
                Response::Ok
            }
            // Removed services are looked for once per entry, not once per report in it.
            Command::Reports { reports, time } => {
                for (node, report) in reports {
                    self.report(node, report, *time);
                }
                self.forget_removed_services();
                Response::Ok
            }
            Command::LoseTasks { tasks, time } => {
                for id in tasks {
                    self.lose_task(id, *time);
                }
                self.forget_removed_services();
                Response::Ok
            }
            Command::SetDrain { node, drain, time } => self.set_drain(node, *drain, *time),
            Command::SetToken {
                role,
                digest,
                replace,
                generation,
                ..
            } => {
                self.set_token(role, digest, *replace, *generation);
                Response::Ok
            }
            Command::AddCertificate {
                fingerprint,
                role,
                node,
                ..
            } => {
                self.trust
                    .insert(cert_key(fingerprint), format!("{role}/{node}"));
                Response::Ok
            }
            Command::RemoveNode { node, time } => self.remove_node(node, *time),
            Command::Rollout {
                service,
                action,
                time,
            } => self.rollout_action(service, action, *time),
            Command::PutObjects { objects, time } => self.put_objects(objects, *time),
            Command::RemoveObject { kind, name, time } => self.remove_object(*kind, name, *time),
            Command::RemoveStack { stack, time } => self.remove_stack(stack, *time),
            Command::TrustKey {
                id,
                name,
                public_key,
                ..
            } => self.trust_key(id, name, public_key),
            Command::RevokeKey {
                id,
                name,
                generation,
                time,
            } => self.revoke_key(id, name, *generation, *time),
            // Removed services are looked for once per entry, as for `Reports`.
            Command::FromAgents { items, time } => {
                for item in items {
                    match item {
                        FromAgent::Register(node) => {
                            self.register(node, *time);
                        }
                        FromAgent::Report { node, report } => self.report(node, report, *time),
                    }
                }
                self.forget_removed_services();
                Response::Ok
            }
        }
    }

    /// See [`Command::TrustKey`].
    fn trust_key(&mut self, id: &str, name: &str, public_key: &str) -> Response {
        if self
            .trust
            .contains_key(&format!("{REVOKED_KEY_PREFIX}{id}"))
        {
            return Response::Refused(format!(
                "key {id} was revoked: a revoked key cannot be trusted again; have its owner \
                 make a new one (`outpost image keys revoke` on their cluster)"
            ));
        }
        self.trust
            .insert(format!("{KEY_PREFIX}{id}"), format!("{name} {public_key}"));
        Response::Ok
    }

    /// See [`Command::RevokeKey`].
    fn revoke_key(
        &mut self,
        id: &str,
        name: &str,
        generation: Option<u64>,
        time: Timestamp,
    ) -> Response {
        if let Some(generation) = generation {
            if generation <= self.own_key_generation() {
                return Response::Refused(format!("key {id} is revoked already"));
            }
            self.trust
                .insert(OWN_KEY_GENERATION.to_string(), generation.to_string());
        } else if self.trust.remove(&format!("{KEY_PREFIX}{id}")).is_none() {
            return Response::NotFound(id.to_string());
        }
        self.trust
            .insert(format!("{REVOKED_KEY_PREFIX}{id}"), name.to_string());
        let message = format!("image bundle key {id} ({name}) revoked");
        self.event(
            time,
            Level::Warning,
            "key-revoked",
            None,
            None,
            None,
            message,
        );
        Response::Ok
    }

    /// The generation of the key the cluster signs its bundles with (1 until one is revoked).
    pub fn own_key_generation(&self) -> u64 {
        (self.trust.get(OWN_KEY_GENERATION))
            .and_then(|g| g.parse().ok())
            .unwrap_or(1)
    }

    /// Keys added by `outpost image keys add` and still trusted: (id, name, public key hex).
    pub fn trusted_keys(&self) -> Vec<(&str, &str, &str)> {
        (self.trust.iter())
            .filter_map(|(k, v)| {
                let id = k.strip_prefix(KEY_PREFIX)?;
                let (name, key) = v.rsplit_once(' ')?;
                Some((id, name, key))
            })
            .collect()
    }

    /// Keys revoked, the cluster's own old ones among them: (id, name).
    pub fn revoked_keys(&self) -> Vec<(&str, &str)> {
        (self.trust.iter())
            .filter_map(|(k, v)| Some((k.strip_prefix(REVOKED_KEY_PREFIX)?, v.as_str())))
            .collect()
    }

    /// Removes every service of `stack` not already being removed; `NotFound` when there is
    /// none.
    fn remove_stack(&mut self, stack: &str, time: Timestamp) -> Response {
        let names: Vec<String> = (self.services.iter())
            .filter(|(_, s)| !s.removing && s.spec.stack.as_deref() == Some(stack))
            .map(|(name, _)| name.clone())
            .collect();
        if names.is_empty() {
            return Response::NotFound(stack.to_string());
        }
        for name in names {
            self.remove(&name, time);
        }
        Response::Ok
    }

    /// The digest of the secret of the current token of `role` (`server`, `agent`, `admin`).
    pub fn token_digest(&self, role: &str) -> Option<&str> {
        self.trust.get(&token_key(role)).map(String::as_str)
    }

    /// The highest generation of a derived secret ever committed for `role`: the current
    /// token's when its digest is that secret's, and in any case below every one to come.
    pub fn token_generation(&self, role: &str) -> Option<u64> {
        self.trust.get(&generation_key(role))?.parse().ok()
    }

    /// See [`Command::SetToken`].
    fn set_token(&mut self, role: &str, digest: &str, replace: bool, generation: Option<u64>) {
        if !replace && self.token_digest(role).is_some() {
            return;
        }
        if let Some(generation) = generation {
            if self
                .token_generation(role)
                .is_some_and(|kept| generation <= kept)
            {
                return;
            }
            self.trust
                .insert(generation_key(role), generation.to_string());
        }
        // A random secret (`None`) keeps the generation: the next derived one must still be
        // above every one given before.
        self.trust.insert(token_key(role), digest.to_string());
    }

    /// The role and node of the issued certificate with this fingerprint; `None` when it was
    /// never issued or was revoked.
    pub fn certificate(&self, fingerprint: &str) -> Option<(&str, &str)> {
        self.trust.get(&cert_key(fingerprint))?.split_once('/')
    }

    /// Whether any node certificate is known: not yet on a server that joined a moment ago
    /// and has applied nothing of the group's log.
    pub fn knows_certificates(&self) -> bool {
        self.trust.keys().any(|k| k.starts_with(CERT_PREFIX))
    }

    /// Removes a node, its tasks (their replicas are placed again elsewhere) and every
    /// certificate issued to it.
    fn remove_node(&mut self, node: &str, time: Timestamp) -> Response {
        if self.nodes.remove(node).is_none() {
            return Response::NotFound(node.to_string());
        }
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.node.as_deref() == Some(node))
            .map(|t| t.id.clone())
            .collect();
        for id in &ids {
            if let Some(service) = self.tasks.get(id).map(|t| t.service.clone()) {
                self.forget_task(id);
                self.placement_moved(&service);
            }
        }
        self.node_index.remove(node);
        self.report_seq.remove(node);
        self.nodes_placement_index = self.index;
        let revoked: Vec<String> = self
            .trust
            .iter()
            .filter(|(k, v)| {
                k.starts_with(CERT_PREFIX) && v.split_once('/').is_some_and(|(_, n)| n == node)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &revoked {
            self.trust.remove(key);
        }
        let message = format!(
            "node {node} removed with {} task(s); {} certificate(s) revoked",
            ids.len(),
            revoked.len()
        );
        self.event(
            time,
            Level::Warning,
            "node-removed",
            None,
            None,
            Some(node),
            message,
        );
        self.forget_removed_services();
        Response::Ok
    }

    /// Every map the store keeps as a table of its own, with the table's name. A map added to
    /// `State` is persisted, reloaded and carried in snapshots once it is listed here.
    pub(crate) fn stored_maps(&mut self) -> Vec<(&'static str, &mut dyn StoredMap)> {
        vec![
            ("services", &mut self.services),
            ("tasks", &mut self.tasks),
            ("finished", &mut self.finished),
            ("nodes", &mut self.nodes),
            ("node_index", &mut self.node_index),
            ("pending", &mut self.pending),
            ("report_seq", &mut self.report_seq),
            ("placement_index", &mut self.placement_index),
            ("trust", &mut self.trust),
            ("objects", &mut self.objects),
        ]
    }

    /// A copy with what a `Command::Deploy` reads — the services and the counters — and none of
    /// the tasks or nodes: a dry run applies the deploy to it and shows its answer.
    pub fn deploy_copy(&self) -> State {
        let mut copy = State {
            services: self.services.clone(),
            ..State::default()
        };
        copy.set_counters(self.counters());
        copy
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters {
            index: self.index,
            next_event: self.next_event,
            next_task: self.next_task,
            nodes_placement_index: self.nodes_placement_index,
            forgotten_placement_index: self.forgotten_placement_index,
            next_server_id: self.next_server_id,
        }
    }

    pub(crate) fn set_counters(&mut self, counters: Counters) {
        self.index = counters.index;
        self.next_event = counters.next_event;
        self.next_task = counters.next_task;
        self.nodes_placement_index = counters.nodes_placement_index;
        self.forgotten_placement_index = counters.forgotten_placement_index;
        self.next_server_id = counters.next_server_id;
    }

    /// Notes the servers of an applied membership: no id at or below the highest is given again.
    pub fn note_servers(&mut self, ids: impl IntoIterator<Item = u64>) {
        if let Some(highest) = ids.into_iter().max() {
            self.next_server_id = self.next_server_id.max(highest.saturating_add(1));
        }
    }

    /// The Raft id for a server joining a group whose members are `members`: above every id
    /// ever given, never one a removed server had.
    pub fn fresh_server_id(&self, members: impl IntoIterator<Item = u64>) -> u64 {
        // Ids are never below the founder's 1.
        let above_members = members.into_iter().max().unwrap_or(0).saturating_add(1);
        self.next_server_id.max(above_members).max(1)
    }

    /// Rebuilds what is derived from the stored maps; call it on a state just loaded.
    pub(crate) fn reindex(&mut self) {
        self.lookup = TaskIndex::of(&self.tasks);
    }

    /// The lowest virtual IP offset no service holds.
    fn free_vip(&self) -> u32 {
        let taken: BTreeSet<u32> = self.services.values().filter_map(|s| s.vip).collect();
        (api::FIRST_VIP..)
            .find(|vip| !taken.contains(vip))
            .unwrap_or(api::FIRST_VIP)
    }

    fn deploy_all(&mut self, services: &[ServiceSpec], time: Timestamp) -> Response {
        let changes = services
            .iter()
            .map(|spec| self.deploy(spec.clone(), time))
            .collect();
        Response::Deployed(changes)
    }

    fn scale(&mut self, service: &str, replicas: u32, time: Timestamp) -> Response {
        let Some(svc) = self.services.get_mut(service) else {
            return Response::NotFound(service.to_string());
        };
        let from = svc.spec.replicas;
        svc.spec.replicas = replicas;
        svc.updated_at = time;
        self.placement_moved(service);
        let message = format!("scaled from {from} to {replicas} replicas");
        self.event(
            time,
            Level::Info,
            "scaled",
            Some(service),
            None,
            None,
            message,
        );
        Response::Ok
    }

    fn restart(&mut self, service: &str, task: Option<&str>, time: Timestamp) -> Response {
        let Some(svc) = self.services.get(service).filter(|s| !s.removing) else {
            return Response::NotFound(service.to_string());
        };
        let Some(id) = task else {
            let spec = svc.spec.clone();
            self.new_revision(service, spec, &["restart".to_string()], time);
            self.placement_moved(service);
            return Response::Ok;
        };
        let wanted = (self.tasks.get(id))
            .filter(|t| t.service == service && t.desired == DesiredState::Running);
        if wanted.is_none() {
            return Response::NotFound(id.to_string());
        }
        self.stop_task(id, time);
        let message = format!("task {id} restarted: stopped, and replaced in its slot");
        let node = self.tasks.get(id).and_then(|t| t.node.clone());
        self.event(
            time,
            Level::Info,
            "restart",
            Some(service),
            Some(id),
            node.as_deref(),
            message,
        );
        Response::Ok
    }

    fn remove(&mut self, service: &str, time: Timestamp) -> Response {
        let Some(svc) = self.services.get_mut(service) else {
            return Response::NotFound(service.to_string());
        };
        svc.removing = true;
        svc.updated_at = time;
        self.placement_moved(service);
        let ids: Vec<String> = self
            .lookup
            .of_service(service)
            .map(|(_, id)| id.clone())
            .collect();
        for id in ids {
            self.stop_task(&id, time);
        }
        let message = "service removed; stopping its tasks".to_string();
        self.event(
            time,
            Level::Info,
            "removing",
            Some(service),
            None,
            None,
            message,
        );
        self.forget_removed_services();
        Response::Ok
    }

    /// A node (re)registering starts a new run of its agent: its report sequence starts afresh,
    /// so an agent that lost its own state is not ignored for ever.
    fn register(&mut self, node: &RegisterRequest, time: Timestamp) -> Response {
        let entry = self.nodes.get_or_insert_with(node.name.clone(), || Node {
            name: node.name.clone(),
            address: node.address.clone(),
            state: NodeState::Ready,
            capacity: Capacity::default(),
            allocatable: Capacity::default(),
            memory_pressure: false,
            draining: false,
            drivers: Vec::new(),
            notes: Vec::new(),
            version: String::new(),
            registered_at: time,
            state_since: time,
            silent_since: None,
        });
        entry.address = node.address.clone();
        entry.capacity = node.capacity.clone();
        entry.allocatable = node.allocatable.clone();
        entry.drivers = node.drivers.clone();
        entry.notes = node.notes.clone();
        entry.version = node.version.clone();
        if entry.state != NodeState::Ready {
            entry.state = NodeState::Ready;
            entry.state_since = time;
            entry.silent_since = None;
        }
        self.node_index.insert(node.name.clone(), self.index);
        self.node_moved(&node.name);
        self.report_seq.remove(&node.name);
        self.forget_lost_on(&node.name);
        let message = format!("node {} registered at {}", node.name, node.address);
        let name = Some(node.name.as_str());
        self.event(
            time,
            Level::Info,
            "node-registered",
            None,
            None,
            name,
            message,
        );
        Response::Ok
    }

    fn set_node_state(
        &mut self,
        node: &str,
        state: NodeState,
        time: Timestamp,
        silent_since: Option<Timestamp>,
    ) -> Response {
        let Some(n) = self.nodes.get(node) else {
            return Response::NotFound(node.to_string());
        };
        if n.state == state {
            return Response::Ok;
        }
        let Some(n) = self.nodes.get_mut(node) else {
            return Response::NotFound(node.to_string());
        };
        let from = n.state;
        n.state = state;
        n.state_since = time;
        // The silence began once, at the last beat: a later verdict of the same silence (down
        // after suspect) keeps it, and a ready node has none.
        n.silent_since = match state {
            NodeState::Ready => None,
            _ => n.silent_since.or(silent_since),
        };
        self.node_moved(node);
        if state == NodeState::Ready {
            self.forget_lost_on(node);
        } else if state.is_lost() {
            self.forget_stopping_on(node);
        }
        let level = if state == NodeState::Ready {
            Level::Info
        } else {
            Level::Warning
        };
        let message = format!("node {node} is {state} (was {from})");
        self.event(time, level, "node-state", None, None, Some(node), message);
        Response::Ok
    }

    fn reconcile(
        &mut self,
        place: &[Placement],
        stop: &[String],
        pending: &[(String, String)],
        time: Timestamp,
    ) -> Response {
        for p in place {
            self.place(p, time);
        }
        for id in stop {
            self.note_slot_updated(id, time);
            self.stop_task(id, time);
        }
        self.set_pending(pending, time);
        Response::Ok
    }

    fn deploy(&mut self, spec: ServiceSpec, time: Timestamp) -> Change {
        let name = spec.name.clone();
        if self
            .services
            .get(&name)
            .is_some_and(|svc| svc.spec == spec && !svc.removing)
        {
            return Change {
                service: name,
                change: ChangeKind::Unchanged,
                fields: Vec::new(),
            };
        }
        let needs_vip = (self.services.get(&name)).is_none_or(|svc| svc.vip.is_none());
        let fresh_vip = needs_vip.then(|| self.free_vip());
        match self.services.get_mut(&name) {
            Some(svc) => {
                let fields = changed_fields(&svc.spec, &spec);
                let old = std::mem::replace(&mut svc.spec, spec);
                svc.vip = svc.vip.or(fresh_vip);
                svc.removing = false;
                svc.updated_at = time;
                // Only a change of the task template needs new tasks; a replica count (or how
                // to roll out) does not.
                if rollout::template_changed(&fields) {
                    self.new_revision(&name, old, &fields, time);
                }
                let version = self.services.get(&name).map_or(0, |s| s.version);
                self.placement_moved(&name);
                self.event(
                    time,
                    Level::Info,
                    "updated",
                    Some(&name),
                    None,
                    None,
                    format!(
                        "service updated to version {version} ({})",
                        fields.join(", ")
                    ),
                );
                Change {
                    service: name,
                    change: ChangeKind::Update,
                    fields,
                }
            }
            None => {
                self.services.insert(
                    name.clone(),
                    Service {
                        vip: fresh_vip,
                        revisions: vec![api::Revision {
                            version: 1,
                            spec: spec.clone(),
                            changed: Vec::new(),
                            created_at: time,
                        }],
                        spec,
                        version: 1,
                        latest_version: 1,
                        rollout: None,
                        removing: false,
                        created_at: time,
                        updated_at: time,
                    },
                );
                self.placement_moved(&name);
                self.event(
                    time,
                    Level::Info,
                    "created",
                    Some(&name),
                    None,
                    None,
                    "service created".into(),
                );
                Change {
                    service: name,
                    change: ChangeKind::Create,
                    fields: Vec::new(),
                }
            }
        }
    }

    fn place(&mut self, p: &Placement, time: Timestamp) {
        // A plan may be stale by the time it commits: skip what no longer makes sense.
        let Some(svc) = self.services.get(&p.service) else {
            return;
        };
        if svc.removing
            || p.slot == 0
            || p.slot > svc.spec.replicas
            || self.nodes.get(&p.node).is_none_or(|n| n.draining)
        {
            return;
        }
        let version = svc.version;
        let id = match self.slot_fill(&p.service, p.slot, version) {
            SlotFill::Filled => return,
            // A replica waiting for room gets its node; it keeps its id.
            SlotFill::Waiting(id) => id,
            SlotFill::Open => self.new_task(&p.service, p.slot, version, time),
        };
        if let Some(task) = self.tasks.get_mut(&id) {
            task.node = Some(p.node.clone());
            task.message = None;
            task.updated_at = time;
            self.lookup.placed(&p.node, &id);
        }
        self.node_index.insert(p.node.clone(), self.index);
        self.placement_moved(&p.service);
        self.event(
            time,
            Level::Info,
            "placed",
            Some(&p.service),
            Some(&id),
            Some(&p.node),
            format!("task {id} placed on {}", p.node),
        );
    }

    /// The tasks wanted running in a slot of a service version, placed or waiting.
    fn slot_tasks(&self, service: &str, slot: u32, version: u64) -> impl Iterator<Item = &Task> {
        self.lookup
            .of_slot(service, slot)
            .filter_map(|id| self.tasks.get(id))
            .filter(move |t| t.desired == DesiredState::Running && t.version == version)
    }

    /// Whether a slot of a service version is filled: by a task on a node that is not
    /// draining (one on a draining node stays until its replacement is ready, but fills
    /// nothing), or by a replica waiting for room.
    fn slot_fill(&self, service: &str, slot: u32, version: u64) -> SlotFill {
        let mut fill = SlotFill::Open;
        for t in self.slot_tasks(service, slot, version) {
            match &t.node {
                None => fill = SlotFill::Waiting(t.id.clone()),
                Some(node) if !self.node_draining(node) => return SlotFill::Filled,
                Some(_) => {}
            }
        }
        fill
    }

    /// Whether a task of another version than `version` runs in the slot.
    fn held_by_older(&self, service: &str, slot: u32, version: u64) -> bool {
        (self.lookup.of_slot(service, slot))
            .filter_map(|id| self.tasks.get(id))
            .any(|t| t.desired == DesiredState::Running && t.version != version)
    }

    /// Whether another task of `task`'s slot sits on a draining node, waiting for it.
    fn drain_waits_on(&self, task: &Task) -> bool {
        (self.slot_tasks(&task.service, task.slot, task.version))
            .any(|o| o.id != task.id && o.node.as_deref().is_some_and(|n| self.node_draining(n)))
    }

    fn node_draining(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.draining)
    }

    /// Drains a node (nothing new is placed there; each of its tasks stops once a replacement
    /// elsewhere is ready, see the scheduler) or stops draining it. Undraining calls off the
    /// moves still under way: a replacement not yet needed, since its slot's task is here, is
    /// stopped, so that each slot keeps one task off draining nodes.
    fn set_drain(&mut self, node: &str, drain: bool, time: Timestamp) -> Response {
        let Some(n) = self.nodes.get(node) else {
            return Response::NotFound(node.to_string());
        };
        if n.draining == drain {
            return Response::Ok;
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.draining = drain;
        }
        self.node_moved(node);
        let message = if drain {
            format!(
                "node {node} is draining: nothing new is placed on it, and each of its tasks \
                 stops once its replacement elsewhere is ready"
            )
        } else {
            for id in self.replacements_of(node) {
                self.stop_task(&id, time);
            }
            format!("node {node} is no longer draining")
        };
        self.event(time, Level::Info, "drain", None, None, Some(node), message);
        Response::Ok
    }

    /// The tasks placed elsewhere, off draining nodes, in the slots of the tasks on `node`.
    fn replacements_of(&self, node: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for t in self
            .tasks_on(node)
            .filter(|t| t.desired == DesiredState::Running)
        {
            let others = (self.slot_tasks(&t.service, t.slot, t.version))
                .filter(|o| o.id != t.id)
                .filter(|o| o.node.as_deref().is_some_and(|n| !self.node_draining(n)));
            ids.extend(others.map(|o| o.id.clone()));
        }
        ids
    }

    /// Creates a task with no node yet and returns its id.
    fn new_task(&mut self, service: &str, slot: u32, version: u64, time: Timestamp) -> String {
        let qos = self
            .services
            .get(service)
            .map_or(spec::QosClass::BestEffort, |s| s.spec.qos());
        self.next_task += 1;
        self.placement_moved(service);
        // The service's name leads the id: listings read one service's tasks as one run of ids.
        let id = format!("{service}.{slot}.{}", self.next_task);
        let task = Task {
            id: id.clone(),
            service: service.to_string(),
            slot,
            version,
            node: None,
            desired: DesiredState::Running,
            state: TaskState::Pending,
            ready: false,
            restarts: 0,
            qos,
            pid: None,
            container_id: None,
            ports: BTreeMap::new(),
            started_at: None,
            ready_since: None,
            status_seq: 0,
            exit_code: None,
            message: None,
            last_exit: None,
            next_start: None,
            created_at: time,
            updated_at: time,
            node_state: None,
        };
        self.lookup.add(&task);
        self.tasks.insert(id.clone(), task);
        id
    }

    fn stop_task(&mut self, id: &str, time: Timestamp) {
        if self
            .tasks
            .get(id)
            .is_none_or(|t| t.desired == DesiredState::Shutdown)
        {
            return;
        }
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        task.desired = DesiredState::Shutdown;
        task.updated_at = time;
        let service = task.service.clone();
        let node = task.node.clone();
        let on_lost = node.as_ref().is_some_and(|n| self.node_is_lost(n));
        match node {
            // Never started anywhere, or on a lost node that cannot say it stopped: nothing to
            // wait for. A lost node that comes back no longer finds it in its assignments, so
            // it stops it.
            None => self.forget_task(id),
            Some(_) if on_lost => self.forget_task(id),
            Some(node) => {
                self.node_index.insert(node, self.index);
            }
        }
        self.placement_moved(&service);
    }

    /// Gives up one task on a lost node, if it still qualifies (see [`State::loss_due`]).
    fn lose_task(&mut self, id: &str, time: Timestamp) {
        let Some(loss) = self.tasks.get(id).and_then(|t| self.loss_due(t, time)) else {
            return;
        };
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let lost_for = humantime::format_duration(loss.lost_for);
        let message = match loss.silent {
            true => format!(
                "node {} is {}, silent for {lost_for}: its replica is placed elsewhere",
                loss.node, loss.state
            ),
            false => format!(
                "node {} has been {} for {lost_for}: its replica is placed elsewhere",
                loss.node, loss.state
            ),
        };
        task.desired = DesiredState::Shutdown;
        task.state = TaskState::Lost;
        task.ready = false;
        task.message = Some(message.clone());
        task.updated_at = time;
        let service = task.service.clone();
        self.node_index.insert(loss.node.clone(), self.index);
        self.placement_moved(&service);
        let message = format!(
            "task {id} lost: {message} (on_node_lost allows {})",
            humantime::format_duration(loss.allowed)
        );
        self.event(
            time,
            Level::Warning,
            "lost",
            Some(&service),
            Some(id),
            Some(&loss.node),
            message,
        );
    }

    /// Whether `task` is to be given up at `now`: it is still wanted, its node is lost (`down`
    /// or `unreachable`), and has been for at least what its service's `on_node_lost` allows
    /// for that state (`keep` never gives it up). What the leader's loop asks before it
    /// proposes `Command::LoseTasks`, and what the apply asks again.
    pub fn loss_due(&self, task: &Task, now: Timestamp) -> Option<Loss> {
        if task.desired != DesiredState::Running {
            return None;
        }
        let node = self.nodes.get(task.node.as_deref()?)?;
        if !node.state.is_lost() {
            return None;
        }
        let svc = self.services.get(&task.service)?;
        let unreachable = node.state == NodeState::Unreachable;
        let allowed = svc.spec.on_node_lost.replace_after(unreachable)?;
        let lost_for = (node.silent_since.unwrap_or(node.state_since)).elapsed_at(now);
        (lost_for >= allowed).then(|| Loss {
            silent: node.silent_since.is_some(),
            node: node.name.clone(),
            state: node.state,
            lost_for,
            allowed,
        })
    }

    /// The tasks of `service`.
    pub fn tasks_of(&self, service: &str) -> impl Iterator<Item = &Task> {
        (self.lookup.of_service(service)).filter_map(|(_, id)| self.tasks.get(id))
    }

    /// The tasks placed on `node`.
    pub fn tasks_on(&self, node: &str) -> impl Iterator<Item = &Task> {
        (self.lookup.by_node.get(node).into_iter().flatten()).filter_map(|id| self.tasks.get(id))
    }

    fn node_is_lost(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.state.is_lost())
    }

    /// Whether a task counts as ready: it said so, and its node is not lost. A task on a node
    /// that is `down` or `unreachable` is never counted ready, whatever it last reported; the
    /// node's state decides at read time, so no row is rewritten when a node goes down.
    pub fn counts_ready(&self, task: &Task) -> bool {
        task.ready && !self.on_lost_node(task)
    }

    /// Whether the task's node is lost (`down` or `unreachable`).
    pub fn on_lost_node(&self, task: &Task) -> bool {
        task.node.as_deref().is_some_and(|n| self.node_is_lost(n))
    }

    /// A task as listings show it: with its node's state when that is not `ready`, and not
    /// ready when the node is lost (see [`State::counts_ready`]).
    pub fn task_view(&self, task: &Task) -> Task {
        let mut view = task.clone();
        view.ready = self.counts_ready(task);
        view.node_state = (task.node.as_ref())
            .and_then(|n| self.nodes.get(n))
            .map(|n| n.state)
            .filter(|s| *s != NodeState::Ready);
        view
    }

    /// A node is back: the tasks given up on it are forgotten. Its assignments no longer list
    /// them, so its agent stops whatever of them it still runs.
    fn forget_lost_on(&mut self, node: &str) {
        let lost: Vec<String> = (self.tasks_on(node))
            .filter(|t| t.state == TaskState::Lost)
            .map(|t| t.id.clone())
            .collect();
        for id in lost {
            self.forget_task(&id);
        }
    }

    /// A node was lost while some of its tasks were stopping: it cannot say they stopped, so
    /// they are forgotten now (a removal or a scale-down never waits on it); if it comes back,
    /// its assignments no longer list them and it stops them.
    fn forget_stopping_on(&mut self, node: &str) {
        let stopping: Vec<String> = (self.tasks_on(node))
            .filter(|t| t.desired == DesiredState::Shutdown && t.state != TaskState::Lost)
            .map(|t| t.id.clone())
            .collect();
        if !stopping.is_empty() {
            self.node_index.insert(node.to_string(), self.index);
        }
        for id in stopping {
            self.forget_task(&id);
        }
    }

    /// Replicas that fit nowhere become tasks without a node, in state pending with the reason,
    /// so `ps` shows them; an event tells when the reason changes.
    fn set_pending(&mut self, pending: &[(String, String)], time: Timestamp) {
        let now: BTreeMap<String, String> = pending.iter().cloned().collect();
        for (service, reason) in &now {
            self.wait_for_room(service, reason, time);
            if self.pending.get(service) != Some(reason) {
                self.event(
                    time,
                    Level::Warning,
                    "unschedulable",
                    Some(service),
                    None,
                    None,
                    reason.clone(),
                );
            }
        }
        self.pending.replace_with(now);
    }

    /// An agent's report. One older than a report already applied from the same node is
    /// ignored whole; within a report, a task's status that would move it back within its run
    /// is ignored (see [`moves_forward`]).
    fn report(&mut self, node: &str, report: &StatusReport, time: Timestamp) {
        if report.seq != 0 {
            if report.seq <= self.report_seq.get(node).copied().unwrap_or(0) {
                return;
            }
            self.report_seq.insert(node.to_string(), report.seq);
        }
        for status in &report.tasks {
            self.observe(node, status, time);
        }
        for e in &report.events {
            let mut e = e.clone();
            e.node = Some(node.to_string());
            self.push_event(e);
        }
        if let Some(pressure) = report.memory_pressure {
            self.set_pressure(node, pressure, time);
        }
    }

    /// Records one task's observed state, if `node` runs it and the status moves it forward.
    fn observe(&mut self, node: &str, status: &TaskStatus, time: Timestamp) {
        let Some(task) = self.tasks.get(&status.id) else {
            return;
        };
        // Only the node that runs a task may say how it is.
        if task.node.as_deref() != Some(node) {
            return;
        }
        // Lost is final: no report moves a task out of it. Its node saying it stopped the task
        // is the last news of it, and it is forgotten.
        if task.state == TaskState::Lost {
            if matches!(status.state, TaskState::Exited | TaskState::Failed) {
                self.forget_task(&status.id);
            }
            return;
        }
        // A status older than one applied (a late or replayed report) changes nothing.
        if status.seq != 0 && status.seq <= task.status_seq {
            return;
        }
        if !moves_forward(task, status) {
            return;
        }
        if self.rolled_out(task) {
            let task = task.clone();
            self.watch_rollout(&task, status, time);
        }
        let Some(task) = self.tasks.get(&status.id) else {
            return;
        };
        // A replacement's readiness is what a drain waits on: its slot's old task stops then.
        let became_ready = status.ready && !task.ready;
        let waited = (became_ready && self.drain_waits_on(task)).then(|| task.service.clone());
        // How far a task got is what services that depend on its own wait on.
        let progressed = status.state != task.state
            || status.ready != task.ready
            || status.started_at != task.started_at
            || status.exit_code != task.exit_code;
        let dependents = match progressed {
            true => self.dependents_waiting_on(&task.service),
            false => Vec::new(),
        };
        for service in waited.into_iter().chain(dependents) {
            self.placement_moved(&service);
        }
        let Some(task) = self.tasks.get_mut(&status.id) else {
            return;
        };
        task.state = status.state;
        task.status_seq = task.status_seq.max(status.seq);
        task.ready_since = match (status.ready, task.ready) {
            (false, _) => None,
            (true, false) => Some(time),
            (true, true) => task.ready_since.or(Some(time)),
        };
        task.ready = status.ready;
        task.restarts = status.restarts;
        task.pid = status.pid;
        task.container_id = status.container_id.clone();
        task.ports = status.ports.clone();
        task.started_at = status.started_at;
        task.exit_code = status.exit_code;
        task.message = status.message.clone();
        task.last_exit = status.last_exit.clone();
        task.next_start = status.next_start;
        task.updated_at = time;
        let finished = matches!(task.state, TaskState::Exited | TaskState::Failed);
        // An evicted task is done for good: the scheduler places a new one in its slot.
        if finished && (task.desired == DesiredState::Shutdown || status.evicted) {
            // Placement reads only tasks that should run: one already shut down frees nothing.
            let freed = (task.desired == DesiredState::Running).then(|| task.service.clone());
            self.forget_task(&status.id);
            if let Some(service) = freed {
                self.placement_moved(&service);
            }
        }
    }

    fn set_pressure(&mut self, node: &str, pressure: bool, time: Timestamp) {
        if self
            .nodes
            .get(node)
            .is_none_or(|n| n.memory_pressure == pressure)
        {
            return;
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.memory_pressure = pressure;
        }
        self.node_moved(node);
        let (level, message) = if pressure {
            (
                Level::Warning,
                format!("node {node} is under memory pressure: nothing new is placed on it"),
            )
        } else {
            (
                Level::Info,
                format!("node {node} is no longer under memory pressure"),
            )
        };
        self.event(
            time,
            level,
            "memory-pressure",
            None,
            None,
            Some(node),
            message,
        );
    }

    fn wait_for_room(&mut self, service: &str, reason: &str, time: Timestamp) {
        let Some(svc) = self.services.get(service) else {
            return;
        };
        if svc.removing {
            return;
        }
        let (replicas, version) = (svc.spec.replicas, svc.version);
        let rolling = svc.rollout.as_ref().is_some_and(|r| r.active());
        for slot in 1..=replicas {
            // A slot an older version still holds waits for its turn in the rollout.
            if rolling && self.held_by_older(service, slot, version) {
                continue;
            }
            let id = match self.slot_fill(service, slot, version) {
                SlotFill::Filled => continue,
                SlotFill::Waiting(id) => id,
                SlotFill::Open => self.new_task(service, slot, version, time),
            };
            // A replica held for a dependency waits for it, not for a node.
            let message = match reason.starts_with("held until ") {
                true => reason.to_string(),
                false => format!("waiting for a node: {reason}"),
            };
            if self.tasks.get(&id).and_then(|t| t.message.as_ref()) != Some(&message)
                && let Some(task) = self.tasks.get_mut(&id)
            {
                task.message = Some(message);
            }
        }
    }

    /// A removed service is forgotten once its last task is gone: stopped, or lost (those go
    /// with it).
    fn forget_removed_services(&mut self) {
        let gone: Vec<String> = self
            .services
            .iter()
            .filter(|(name, s)| {
                s.removing
                    && (self.lookup.of_service(name))
                        .filter_map(|(_, id)| self.tasks.get(id))
                        .all(|t| t.state == TaskState::Lost)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let lost: Vec<String> = (self.lookup.of_service(&name))
                .map(|(_, id)| id.clone())
                .collect();
            for id in lost {
                self.forget_task(&id);
            }
            self.services.remove(&name);
            self.forget_finished(&name);
            self.pending.remove(&name);
            self.placement_index.remove(&name);
            self.forgotten_placement_index = self.index;
        }
    }

    /// The services with replicas waiting that depend on `service`: few, since only those
    /// with replicas waiting are looked at.
    fn dependents_waiting_on(&self, service: &str) -> Vec<String> {
        (self.pending.keys())
            .filter(|name| {
                (self.services.get(*name)).is_some_and(|s| s.spec.depends_on.contains_key(service))
            })
            .cloned()
            .collect()
    }

    /// Records that something placement reads of `service` changed at this entry.
    fn placement_moved(&mut self, service: &str) {
        self.placement_index.insert(service.to_string(), self.index);
    }

    /// Records that something placement reads of `node` changed at this entry (its state, its
    /// room, a drain): the services with tasks there are planned again, and so are replicas
    /// waiting for room (the controller reads `nodes_placement_index` for those), but not every
    /// service: under a burst of node changes a full pass each time held the state's lock for
    /// 100-300 ms at 100,000 tasks (`bench/scale`).
    fn node_moved(&mut self, node: &str) {
        self.nodes_placement_index = self.index;
        let services: BTreeSet<String> = self.tasks_on(node).map(|t| t.service.clone()).collect();
        for service in services {
            self.placement_moved(&service);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        time: Timestamp,
        level: Level,
        reason: &str,
        service: Option<&str>,
        task: Option<&str>,
        node: Option<&str>,
        message: String,
    ) {
        self.push_event(NewEvent {
            time,
            level,
            reason: reason.to_string(),
            service: service.map(str::to_string),
            task: task.map(str::to_string),
            node: node.map(str::to_string),
            message,
        });
    }

    fn push_event(&mut self, event: NewEvent) {
        self.next_event += 1;
        self.events.push_back(Event {
            seq: self.next_event,
            event,
        });
    }

    /// Removes a task and its places in the task index.
    fn forget_task(&mut self, id: &str) {
        if let Some(task) = self.tasks.remove(id) {
            self.lookup.forget(&task);
            if self
                .services
                .get(&task.service)
                .is_some_and(|s| !s.removing)
            {
                self.keep_finished(task);
            }
        }
    }

    /// Keeps a task that is done with in the service's history, dropping its oldest past
    /// [`FINISHED_KEPT`] (ids count up: `web.<slot>.<n>`).
    fn keep_finished(&mut self, task: Task) {
        let prefix = format!("{}.", task.service);
        self.finished.insert(task.id.clone(), task);
        let mut kept: Vec<(u64, String)> = (self.finished.range::<str, _>((
            std::ops::Bound::Included(prefix.as_str()),
            std::ops::Bound::Unbounded,
        )))
        .take_while(|(id, _)| id.starts_with(&prefix))
        .map(|(id, _)| (task_number(id), id.clone()))
        .collect();
        if kept.len() <= FINISHED_KEPT {
            return;
        }
        kept.sort();
        for (_, id) in kept.iter().take(kept.len() - FINISHED_KEPT) {
            self.finished.remove(id);
        }
    }

    /// Forgets the history of a service that is gone.
    fn forget_finished(&mut self, service: &str) {
        let prefix = format!("{service}.");
        let ids: Vec<String> = (self.finished.range::<str, _>((
            std::ops::Bound::Included(prefix.as_str()),
            std::ops::Bound::Unbounded,
        )))
        .take_while(|(id, _)| id.starts_with(&prefix))
        .map(|(id, _)| id.clone())
        .collect();
        for id in ids {
            self.finished.remove(&id);
        }
    }

    /// Invariants every applied state keeps; checked after each apply in debug builds and tests.
    pub fn check(&self) -> Result<(), String> {
        if let Some(t) = self
            .finished
            .values()
            .find(|t| !self.services.contains_key(&t.service))
        {
            return Err(format!(
                "finished task {} outlived its service {}",
                t.id, t.service
            ));
        }
        for task in self.tasks.values() {
            if !self.services.contains_key(&task.service) {
                return Err(format!(
                    "task {} belongs to unknown service {}",
                    task.id, task.service
                ));
            }
            if !task
                .id
                .strip_prefix(task.service.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
            {
                return Err(format!(
                    "task {} does not start with its service's name {}",
                    task.id, task.service
                ));
            }
            if let Some(node) = &task.node
                && !self.nodes.contains_key(node)
            {
                return Err(format!("task {} is on unknown node {node}", task.id));
            }
            if task.state == TaskState::Lost
                && (task.desired != DesiredState::Shutdown || task.ready)
            {
                return Err(format!("lost task {} is still wanted or ready", task.id));
            }
        }
        // One pass over the tasks, not one per service: debug builds check after every apply.
        // A task on a draining node fills no slot: its replacement runs beside it until ready.
        let mut filled = BTreeSet::new();
        for t in self.tasks.values() {
            let current = self
                .services
                .get(&t.service)
                .is_some_and(|svc| svc.version == t.version);
            let draining = t.node.as_deref().is_some_and(|n| self.node_draining(n));
            if current
                && t.desired == DesiredState::Running
                && !draining
                && !filled.insert((&t.service, t.slot))
            {
                return Err(format!(
                    "service {} has two running tasks in one slot",
                    t.service
                ));
            }
        }
        let rebuilt = TaskIndex::of(&self.tasks);
        if self.lookup.by_node != rebuilt.by_node || self.lookup.by_service != rebuilt.by_service {
            return Err("the index of tasks by node and slot does not match the tasks".to_string());
        }
        Ok(())
    }

    /// The assignments of one node: every task placed on it that it has not yet finished stopping.
    pub fn assignments(&self, node: &str) -> Vec<api::Assignment> {
        let Some(ids) = self.lookup.by_node.get(node) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| self.tasks.get(id))
            // Given up here: the node stops it, as it stops anything no longer listed.
            .filter(|t| t.state != TaskState::Lost)
            .filter_map(|t| {
                // Each task runs the spec of its own version, whatever the service's now is.
                let spec = self.spec_of(&t.service, t.version)?;
                Some(api::Assignment {
                    task: t.id.clone(),
                    service: t.service.clone(),
                    slot: t.slot,
                    version: t.version,
                    desired: t.desired,
                    spec: spec.clone(),
                })
            })
            .collect()
    }
}

impl State {
    /// What the load balancers serve of one service: its virtual IP in `range`, its ports, and
    /// its tasks that may get traffic. A ready task on a node that is not lost is an endpoint,
    /// draining once it is wanted stopped; one whose node's address is not an IP is left out.
    /// `None` for a service that does not exist or is being removed.
    pub fn endpoints_of(
        &self,
        service: &str,
        range: &api::ServiceRange,
    ) -> Option<api::ServiceEndpoints> {
        let svc = self.services.get(service).filter(|s| !s.removing)?;
        let endpoints = (self.lookup.of_service(service))
            .filter_map(|(_, id)| self.tasks.get(id))
            .filter(|t| self.counts_ready(t) && t.state == TaskState::Running)
            .filter_map(|t| {
                let node = t.node.as_deref()?;
                let host = node_ip(&self.nodes.get(node)?.address)?;
                Some(api::TaskEndpoint {
                    task: t.id.clone(),
                    node: node.to_string(),
                    host,
                    ports: t.ports.clone(),
                    version: t.version,
                    draining: t.desired != DesiredState::Running,
                })
            })
            .collect();
        let spec = &svc.spec;
        Some(api::ServiceEndpoints {
            name: spec.name.clone(),
            stack: spec.stack.clone(),
            vip: svc.vip.and_then(|offset| range.addr(offset)),
            ports: spec.ports.clone(),
            load_balancer: spec.load_balancer.clone(),
            drain_ms: u64::try_from(spec.stop_grace.as_millis()).unwrap_or(u64::MAX),
            endpoints,
        })
    }
}

/// How many finished and replaced tasks each service keeps for `ps -a`.
pub const FINISHED_KEPT: usize = 10;

/// The number that ends a task id (`web.2.17` → 17): tasks are numbered as they are made.
fn task_number(id: &str) -> u64 {
    id.rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The IP address in a node's advertised API address (`https://10.0.0.5:7401`).
fn node_ip(address: &str) -> Option<std::net::IpAddr> {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Where a state stands within one run of a task; a run only moves to a later step, as in
/// Swarmkit. Exited and Failed are both the end of a run.
fn step(state: TaskState) -> u8 {
    match state {
        TaskState::Pending => 0,
        TaskState::Starting => 1,
        TaskState::Running => 2,
        TaskState::Exited | TaskState::Failed => 3,
        TaskState::Lost => 4,
    }
}

/// Whether `status` may replace what is known of `task`. A run is one start of the task: the
/// agent counts finished runs in `restarts` (bumped when it decides to restart, while the old
/// run's end is still the state) and stamps each successful start in `started_at`. A status of
/// a later run always applies, one of an earlier run never does, and within a run the state
/// never moves back a step.
fn moves_forward(task: &Task, status: &TaskStatus) -> bool {
    // `None < Some`: a first start is later than never having started.
    if status.restarts > task.restarts || status.started_at > task.started_at {
        return true;
    }
    if status.restarts < task.restarts || status.started_at < task.started_at {
        return false;
    }
    step(status.state) >= step(task.state)
}

/// Names of the top-level spec fields that differ, in spec order.
pub fn changed_fields(old: &ServiceSpec, new: &ServiceSpec) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp(1_000);

    /// Applies commands in order, checking the invariants after each, as the store does.
    fn run(state: &mut State, commands: Vec<Command>) -> Vec<Response> {
        commands
            .into_iter()
            .map(|c| {
                let r = state.apply(state.index + 1, &c);
                assert_eq!(state.check(), Ok(()), "after {c:?}");
                r
            })
            .collect()
    }

    #[test]
    fn a_server_id_is_never_given_twice_and_is_kept_with_the_counters() {
        let mut state = State::default();
        assert_eq!(state.fresh_server_id([]), 1, "ids start at the founder's 1");
        assert_eq!(state.fresh_server_id([1]), 2);
        state.note_servers([1, 2, 3]);
        // Server 3, the highest, leaves: its id stays given.
        state.note_servers([1, 2]);
        assert_eq!(state.fresh_server_id([1, 2]), 4);
        // A membership written before the counter was kept still counts.
        assert_eq!(state.fresh_server_id([1, 7]), 8);
        let mut reloaded = State::default();
        reloaded.set_counters(state.counters());
        assert_eq!(reloaded.fresh_server_id([1]), 4);
    }

    fn web(replicas: u32) -> ServiceSpec {
        let mut spec = ServiceSpec::process("web", &["app"]);
        spec.replicas = replicas;
        spec
    }

    fn node(name: &str) -> Command {
        Command::RegisterNode {
            node: RegisterRequest {
                name: name.into(),
                address: format!("http://{name}"),
                capacity: Capacity {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                },
                allocatable: Capacity::default(),
                drivers: vec!["process".into()],
                notes: vec![],
                version: "test".into(),
            },
            time: T,
        }
    }

    fn place(slot: u32, node: &str) -> Command {
        Command::Reconcile {
            place: vec![Placement {
                service: "web".into(),
                slot,
                node: node.into(),
            }],
            stop: vec![],
            pending: vec![],
            time: T,
            completed: Vec::new(),
            stalled: Vec::new(),
        }
    }

    fn status(id: &str, state: TaskState) -> StatusReport {
        StatusReport {
            seq: 0,
            tasks: vec![TaskStatus {
                seq: 0,
                id: id.into(),
                state,
                evicted: false,
                ready: state == TaskState::Running,
                restarts: 0,
                pid: Some(7),
                container_id: None,
                ports: BTreeMap::new(),
                started_at: Some(T),
                exit_code: None,
                message: None,
                last_exit: None,
                next_start: None,
            }],
            events: vec![],
            memory_pressure: None,
        }
    }

    fn report(node: &str, id: &str, state: TaskState) -> Command {
        Command::Report {
            node: node.into(),
            report: status(id, state),
            time: T,
        }
    }

    #[test]
    fn a_service_keeps_its_virtual_ip_and_a_removed_ones_is_given_again() {
        let mut s = State::default();
        let spec = |name: &str, replicas| ServiceSpec {
            replicas,
            ..ServiceSpec::process(name, &["x"])
        };
        let deploy = |specs| Command::Deploy {
            services: specs,
            time: T,
        };
        run(
            &mut s,
            vec![
                deploy(vec![spec("a", 0), spec("b", 0)]),
                deploy(vec![spec("a", 2)]),
            ],
        );
        let vip = |s: &State, name: &str| s.services.get(name).and_then(|svc| svc.vip);
        assert_eq!((vip(&s, "a"), vip(&s, "b")), (Some(2), Some(3)));
        run(
            &mut s,
            vec![Command::Remove {
                service: "a".into(),
                time: T,
            }],
        );
        assert_eq!(
            vip(&s, "a"),
            None,
            "a service with no tasks is forgotten at once"
        );
        run(&mut s, vec![deploy(vec![spec("c", 1)])]);
        assert_eq!(vip(&s, "c"), Some(2), "the lowest free offset");
        assert_eq!(vip(&s, "b"), Some(3), "kept");
    }

    #[test]
    fn deploy_tells_create_update_and_unchanged() {
        let mut s = State::default();
        let mut changed = web(1);
        changed.env.insert("A".into(), "1".into());
        let answers = run(
            &mut s,
            vec![
                Command::Deploy {
                    services: vec![web(1)],
                    time: T,
                },
                Command::Deploy {
                    services: vec![web(1)],
                    time: T,
                },
                Command::Deploy {
                    services: vec![web(3)],
                    time: T,
                },
                Command::Deploy {
                    services: vec![changed],
                    time: T,
                },
            ],
        );
        let kinds: Vec<(ChangeKind, Vec<String>)> = answers
            .into_iter()
            .map(|r| match r {
                Response::Deployed(c) => (c[0].change, c[0].fields.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ChangeKind::Create, vec![]),
                (ChangeKind::Unchanged, vec![]),
                (ChangeKind::Update, vec!["replicas".to_string()]),
                (
                    ChangeKind::Update,
                    vec!["env".to_string(), "replicas".to_string()]
                ),
            ]
        );
        // A replica count alone keeps the version: running tasks need not be replaced.
        assert_eq!(s.services["web"].version, 2);
    }

    #[test]
    fn placements_create_tasks_once_and_bump_the_nodes_index() {
        let mut s = State::default();
        run(
            &mut s,
            vec![
                node("a"),
                Command::Deploy {
                    services: vec![web(2)],
                    time: T,
                },
            ],
        );
        let before = s.node_index["a"];
        run(
            &mut s,
            vec![
                place(1, "a"),
                place(1, "a"),
                place(3, "a"),
                place(1, "ghost"),
            ],
        );
        assert_eq!(
            s.tasks.keys().collect::<Vec<_>>(),
            vec!["web.1.1"],
            "duplicate, out-of-range and unknown-node placements are skipped"
        );
        assert!(s.node_index["a"] > before);
        assert_eq!(s.assignments("a").len(), 1);
        assert!(s.assignments("b").is_empty());
    }

    #[test]
    fn only_the_owning_node_reports_and_stopped_tasks_are_forgotten() {
        let mut s = State::default();
        run(
            &mut s,
            vec![
                node("a"),
                node("b"),
                Command::Deploy {
                    services: vec![web(1)],
                    time: T,
                },
                place(1, "a"),
            ],
        );
        run(&mut s, vec![report("b", "web.1.1", TaskState::Failed)]);
        assert_eq!(
            s.tasks["web.1.1"].state,
            TaskState::Pending,
            "node b does not run it"
        );
        run(&mut s, vec![report("a", "web.1.1", TaskState::Running)]);
        assert_eq!(
            (s.tasks["web.1.1"].state, s.tasks["web.1.1"].ready),
            (TaskState::Running, true)
        );
        run(
            &mut s,
            vec![Command::Remove {
                service: "web".into(),
                time: T,
            }],
        );
        assert_eq!(s.tasks["web.1.1"].desired, DesiredState::Shutdown);
        assert!(s.services["web"].removing, "kept until its task is down");
        run(&mut s, vec![report("a", "web.1.1", TaskState::Exited)]);
        assert!(s.tasks.is_empty() && s.services.is_empty());
    }

    #[test]
    fn unknown_targets_answer_not_found() {
        let mut s = State::default();
        let answers = run(
            &mut s,
            vec![
                Command::Scale {
                    service: "nope".into(),
                    replicas: 2,
                    time: T,
                },
                Command::Remove {
                    service: "nope".into(),
                    time: T,
                },
                Command::SetNodeState {
                    node: "nope".into(),
                    state: NodeState::Down,
                    time: T,
                    silent_since: None,
                },
            ],
        );
        assert!(
            answers
                .iter()
                .all(|r| matches!(r, Response::NotFound(n) if n == "nope"))
        );
        assert_eq!(
            s,
            State {
                index: 3,
                ..State::default()
            }
        );
    }

    #[test]
    fn events_are_appended_and_numbered_without_gaps() {
        let mut s = State::default();
        run(&mut s, vec![node("a")]);
        for state in [NodeState::Suspect, NodeState::Ready, NodeState::Down] {
            let c = Command::SetNodeState {
                node: "a".into(),
                state,
                time: T,
                silent_since: None,
            };
            run(&mut s, vec![c]);
        }
        let seqs: Vec<u64> = s.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(s.next_event, 4);
    }

    #[test]
    fn removing_a_node_forgets_its_tasks_and_revokes_its_certificates() {
        let mut s = running_web();
        let cert = |fp: &str, node: &str| Command::AddCertificate {
            fingerprint: fp.into(),
            role: "agent".into(),
            node: node.into(),
            time: T,
        };
        run(
            &mut s,
            vec![node("b"), cert("f1", "a"), cert("f2", "a"), cert("f3", "b")],
        );
        assert_eq!(s.certificate("f1"), Some(("agent", "a")));
        let rm = Command::RemoveNode {
            node: "a".into(),
            time: T,
        };
        run(&mut s, vec![rm.clone()]);
        assert!(!s.nodes.contains_key("a"));
        assert!(
            s.tasks.is_empty(),
            "the task on a is gone, to be placed again"
        );
        assert_eq!(s.certificate("f1"), None);
        assert_eq!(s.certificate("f2"), None);
        assert_eq!(s.certificate("f3"), Some(("agent", "b")));
        assert_eq!(s.events.back().unwrap().event.reason, "node-removed");
        s.check().unwrap();
        let next = s.index + 1;
        assert_eq!(s.apply(next, &rm), Response::NotFound("a".into()));
    }

    #[test]
    fn a_token_set_again_replaces_the_one_before() {
        let mut s = State::default();
        assert_eq!(s.token_digest("agent"), None);
        let set = |digest: &str, replace| Command::SetToken {
            role: "agent".into(),
            digest: digest.into(),
            replace,
            generation: None,
            time: T,
        };
        run(&mut s, vec![set("d1", false), set("d2", true)]);
        assert_eq!(s.token_digest("agent"), Some("d2"));
        run(&mut s, vec![set("d3", false)]);
        assert_eq!(
            s.token_digest("agent"),
            Some("d2"),
            "a first commit never undoes a rotation"
        );
        assert_eq!(s.token_digest("server"), None);
    }

    #[test]
    fn a_derived_token_moves_only_to_a_higher_generation() {
        let mut s = State::default();
        let set = |digest: &str, replace, generation| Command::SetToken {
            role: "agent".into(),
            digest: digest.into(),
            replace,
            generation,
            time: T,
        };
        run(&mut s, vec![set("g1", false, Some(1))]);
        assert_eq!(
            (s.token_digest("agent"), s.token_generation("agent")),
            (Some("g1"), Some(1))
        );
        assert_eq!(s.token_generation("server"), None);
        // A rotation commits generation 2; a second rotation that read the state before it
        // (same generation) or an older one changes nothing.
        run(
            &mut s,
            vec![
                set("g2", true, Some(2)),
                set("g2-again", true, Some(2)),
                set("g1", true, Some(1)),
            ],
        );
        assert_eq!(
            (s.token_digest("agent"), s.token_generation("agent")),
            (Some("g2"), Some(2))
        );
        // A random secret (an older server's rotation) replaces the token but not the
        // generation: the next derived one is still above every one given.
        run(&mut s, vec![set("random", true, None)]);
        assert_eq!(
            (s.token_digest("agent"), s.token_generation("agent")),
            (Some("random"), Some(2))
        );
        run(&mut s, vec![set("g2", true, Some(2))]);
        assert_eq!(
            s.token_digest("agent"),
            Some("random"),
            "a rotated token is back"
        );
        run(&mut s, vec![set("g3", true, Some(3))]);
        assert_eq!(s.token_digest("agent"), Some("g3"));
        // A founding server's first commit never undoes a rotation, generation or not.
        run(&mut s, vec![set("g9", false, Some(9))]);
        assert_eq!(
            (s.token_digest("agent"), s.token_generation("agent")),
            (Some("g3"), Some(3))
        );
    }

    #[test]
    fn a_set_token_entry_written_without_a_generation_still_decodes() {
        let entry = r#"{"SetToken":{"role":"agent","digest":"d","replace":true,
            "time":"1970-01-01T00:00:01Z"}}"#;
        let command: Command = serde_json::from_str(entry).unwrap();
        assert_eq!(
            command,
            Command::SetToken {
                role: "agent".into(),
                digest: "d".into(),
                replace: true,
                generation: None,
                time: T,
            }
        );
    }

    /// A cluster with node `a` running task `web.1.1`.
    fn running_web() -> State {
        let mut s = State::default();
        run(
            &mut s,
            vec![
                node("a"),
                Command::Deploy {
                    services: vec![web(1)],
                    time: T,
                },
                place(1, "a"),
            ],
        );
        s
    }

    /// A report of `web.1.1` from node `a`: `seq`, state, restarts, and start time in ms.
    fn seen(seq: u64, state: TaskState, restarts: u32, started: Option<u64>) -> Command {
        let mut report = status("web.1.1", state);
        report.seq = seq;
        report.tasks[0].restarts = restarts;
        report.tasks[0].started_at = started.map(Timestamp);
        report.events = vec![NewEvent {
            time: T,
            level: Level::Info,
            reason: format!("seq-{seq}"),
            service: None,
            task: None,
            node: None,
            message: String::new(),
        }];
        Command::Report {
            node: "a".into(),
            report,
            time: T,
        }
    }

    fn web_task(s: &State) -> (TaskState, u32) {
        let t = &s.tasks["web.1.1"];
        (t.state, t.restarts)
    }

    #[test]
    fn a_report_older_than_one_applied_is_ignored_whole() {
        let mut s = running_web();
        run(
            &mut s,
            vec![
                seen(10, TaskState::Running, 0, Some(1)),
                seen(12, TaskState::Failed, 0, Some(1)),
                // Sent before 12 and timed out on the agent, committed only now.
                seen(11, TaskState::Running, 1, Some(2)),
            ],
        );
        assert_eq!(web_task(&s), (TaskState::Failed, 0));
        assert_eq!(s.report_seq["a"], 12);
        let reasons: Vec<&str> = s.events.iter().map(|e| e.event.reason.as_str()).collect();
        assert!(
            !reasons.contains(&"seq-11"),
            "its events are dropped too: {reasons:?}"
        );
        run(&mut s, vec![seen(13, TaskState::Starting, 1, Some(2))]);
        assert_eq!(web_task(&s), (TaskState::Starting, 1));
    }

    #[test]
    fn an_old_task_is_assigned_the_spec_of_its_own_revision_during_a_rollout() {
        let mut s = running_web();
        let mut two = web(1);
        two.env.insert("GREETING".into(), "two".into());
        run(
            &mut s,
            vec![Command::Deploy {
                services: vec![two],
                time: T,
            }],
        );
        assert_eq!(s.services["web"].version, 2);
        let assigned = s.assignments("a");
        let old = assigned
            .iter()
            .find(|a| a.task == "web.1.1")
            .expect("the old task");
        assert_eq!(old.version, 1);
        assert!(
            old.spec.env.is_empty(),
            "the old task got the new spec: {:?}",
            old.spec.env
        );
        let revisions: Vec<u64> = s.services["web"]
            .revisions
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(revisions, [1, 2]);
    }

    #[test]
    fn a_task_status_older_than_one_applied_is_ignored_even_after_the_node_registers_again() {
        let mut s = running_web();
        let flip = |seq: u64, ready: bool| {
            let mut report = status("web.1.1", TaskState::Running);
            report.tasks[0].seq = seq;
            report.tasks[0].ready = ready;
            Command::Report {
                node: "a".into(),
                report,
                time: T,
            }
        };
        run(
            &mut s,
            vec![flip(20, true), flip(21, false), flip(22, true)],
        );
        assert!(s.tasks["web.1.1"].ready);
        // Its agent restarted and registered again (the node's report order starts afresh);
        // a status it sent before, committed only now, still moves nothing back.
        run(&mut s, vec![node("a"), flip(21, false)]);
        assert!(
            s.tasks["web.1.1"].ready,
            "a replayed status turned the task unready"
        );
        assert_eq!(s.tasks["web.1.1"].status_seq, 22);
        run(&mut s, vec![flip(23, false)]);
        assert!(!s.tasks["web.1.1"].ready);
    }

    #[test]
    fn coalesced_reports_apply_exactly_as_the_same_reports_one_by_one() {
        let pressure = Command::Report {
            node: "b".into(),
            report: StatusReport {
                memory_pressure: Some(true),
                ..status("web.1.1", TaskState::Failed)
            },
            time: T,
        };
        let commands = vec![
            seen(10, TaskState::Running, 0, Some(1)),
            pressure,
            seen(12, TaskState::Failed, 0, Some(1)),
            // Older than 12 although later in the entry: ignored whole, as on its own.
            seen(11, TaskState::Running, 1, Some(2)),
        ];
        let reports = commands
            .iter()
            .map(|c| match c {
                Command::Report { node, report, .. } => (node.clone(), report.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let mut one_by_one = running_web();
        run(&mut one_by_one, vec![node("b")]);
        let mut coalesced = one_by_one.clone();
        run(&mut one_by_one, commands);
        run(&mut coalesced, vec![Command::Reports { reports, time: T }]);
        assert_eq!(web_task(&coalesced), (TaskState::Failed, 0));
        assert!(coalesced.nodes["b"].memory_pressure);
        assert_eq!(coalesced.index + 3, one_by_one.index, "one entry, not four");
        // Indexes record the entry a change came in, which is all that differs.
        coalesced.index = one_by_one.index;
        coalesced.nodes_placement_index = one_by_one.nodes_placement_index;
        assert_eq!(coalesced, one_by_one);
    }

    #[test]
    fn registrations_and_reports_of_one_entry_apply_as_one_by_one_in_their_order() {
        let commands = vec![
            node("b"),
            seen(10, TaskState::Running, 0, Some(1)),
            // The agent of `a` restarted: its report order starts afresh after this.
            node("a"),
            seen(2, TaskState::Failed, 0, Some(1)),
        ];
        let items = (commands.iter())
            .map(|c| match c {
                Command::RegisterNode { node, .. } => FromAgent::Register(node.clone()),
                Command::Report { node, report, .. } => FromAgent::Report {
                    node: node.clone(),
                    report: report.clone(),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        let mut one_by_one = running_web();
        let mut coalesced = one_by_one.clone();
        run(&mut one_by_one, commands);
        run(&mut coalesced, vec![Command::FromAgents { items, time: T }]);
        assert_eq!(web_task(&coalesced), (TaskState::Failed, 0));
        assert!(coalesced.nodes.contains_key("b"));
        assert_eq!(coalesced.index + 3, one_by_one.index, "one entry, not four");
        coalesced.index = one_by_one.index;
        coalesced.nodes_placement_index = one_by_one.nodes_placement_index;
        coalesced.node_index = one_by_one.node_index.clone();
        coalesced.placement_index = one_by_one.placement_index.clone();
        assert_eq!(coalesced, one_by_one);
    }

    #[test]
    fn a_single_report_written_before_coalescing_still_decodes() {
        let entry = r#"{"Report":{"node":"a","report":{"seq":3,"tasks":[]},
            "time":"1970-01-01T00:00:01Z"}}"#;
        let command: Command = serde_json::from_str(entry).unwrap();
        assert_eq!(
            command,
            Command::Report {
                node: "a".into(),
                report: StatusReport {
                    seq: 3,
                    ..StatusReport::default()
                },
                time: T,
            }
        );
    }

    #[test]
    fn registering_again_starts_the_node_sequence_afresh() {
        let mut s = running_web();
        run(&mut s, vec![seen(1_000, TaskState::Running, 0, Some(1))]);
        // The agent lost its own state and counts from a lower base.
        run(
            &mut s,
            vec![node("a"), seen(5, TaskState::Failed, 0, Some(1))],
        );
        assert_eq!(web_task(&s), (TaskState::Failed, 0));
    }

    #[test]
    fn a_task_never_moves_back_within_a_run() {
        let mut s = running_web();
        run(
            &mut s,
            vec![
                seen(0, TaskState::Running, 0, Some(1)),
                seen(0, TaskState::Failed, 0, Some(1)),
                seen(0, TaskState::Running, 0, Some(1)),
                seen(0, TaskState::Starting, 0, Some(1)),
                seen(0, TaskState::Pending, 0, None),
            ],
        );
        assert_eq!(web_task(&s), (TaskState::Failed, 0));
        // Both ends of a run are final steps: a stop after a crash is recorded.
        run(&mut s, vec![seen(0, TaskState::Exited, 0, Some(1))]);
        assert_eq!(web_task(&s), (TaskState::Exited, 0));
    }

    #[test]
    fn a_restart_is_a_new_run_and_an_old_run_never_comes_back() {
        let mut s = running_web();
        run(
            &mut s,
            vec![
                seen(0, TaskState::Running, 0, Some(1)),
                seen(0, TaskState::Failed, 0, Some(1)),
                // The agent counts the restart while the old run's end is still the state.
                seen(0, TaskState::Failed, 1, Some(1)),
                seen(0, TaskState::Starting, 1, Some(2)),
                seen(0, TaskState::Running, 1, Some(2)),
            ],
        );
        assert_eq!(web_task(&s), (TaskState::Running, 1));
        run(&mut s, vec![seen(0, TaskState::Failed, 0, Some(1))]);
        assert_eq!(web_task(&s), (TaskState::Running, 1), "run 0 is over");
        // A start that fails keeps the last start time; it is still a later run.
        run(&mut s, vec![seen(0, TaskState::Failed, 2, Some(2))]);
        assert_eq!(web_task(&s), (TaskState::Failed, 2));
    }

    #[test]
    fn apply_is_deterministic() {
        let commands = vec![
            node("a"),
            Command::Deploy {
                services: vec![web(2)],
                time: T,
            },
            place(1, "a"),
            place(2, "a"),
            report("a", "web.1.1", TaskState::Running),
            Command::Scale {
                service: "web".into(),
                replicas: 1,
                time: T,
            },
            Command::Reconcile {
                place: vec![],
                stop: vec!["web.2.2".into()],
                pending: vec![],
                time: T,
                completed: Vec::new(),
                stalled: Vec::new(),
            },
        ];
        let (mut x, mut y) = (State::default(), State::default());
        run(&mut x, commands.clone());
        run(&mut y, commands);
        assert_eq!(x, y);
        assert_eq!(x.tasks["web.2.2"].desired, DesiredState::Shutdown);
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    #[test]
    fn replicas_without_room_wait_as_tasks_and_keep_their_id_when_placed() {
        let mut s = State::default();
        let mut spec = ServiceSpec::process("web", &["app"]);
        spec.replicas = 2;
        let t = Timestamp(1);
        s.apply(
            1,
            &Command::Deploy {
                services: vec![spec],
                time: t,
            },
        );
        let reason = "2 of 2 replicas cannot be placed: no node has registered yet".to_string();
        let wait = Command::Reconcile {
            place: vec![],
            stop: vec![],
            pending: vec![("web".into(), reason.clone())],
            time: t,
            completed: Vec::new(),
            stalled: Vec::new(),
        };
        s.apply(2, &wait);
        s.apply(3, &wait);
        assert_eq!(s.tasks.len(), 2, "waiting replicas are created once");
        let waiting = &s.tasks["web.1.1"];
        assert_eq!(
            (waiting.node.as_deref(), waiting.state),
            (None, TaskState::Pending)
        );
        assert_eq!(
            waiting.message.as_deref(),
            Some(format!("waiting for a node: {reason}").as_str())
        );
        assert_eq!(
            s.events
                .iter()
                .filter(|e| e.event.reason == "unschedulable")
                .count(),
            1
        );
        s.apply(
            4,
            &Command::RegisterNode {
                node: RegisterRequest {
                    name: "a".into(),
                    address: String::new(),
                    capacity: Capacity::default(),
                    allocatable: Capacity::default(),
                    drivers: vec![],
                    notes: vec![],
                    version: String::new(),
                },
                time: t,
            },
        );
        let place = Placement {
            service: "web".into(),
            slot: 1,
            node: "a".into(),
        };
        s.apply(
            5,
            &Command::Reconcile {
                place: vec![place],
                stop: vec![],
                pending: vec![],
                time: t,
                completed: Vec::new(),
                stalled: Vec::new(),
            },
        );
        assert_eq!(s.tasks["web.1.1"].node.as_deref(), Some("a"));
        assert_eq!(s.tasks["web.1.1"].message, None);
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.assignments("a").len(), 1);
    }
}

#[cfg(test)]
mod lost_tests {
    use super::*;

    const T: Timestamp = Timestamp(10_000);

    fn at(ms: u64) -> Timestamp {
        Timestamp(T.0 + ms)
    }

    fn run(s: &mut State, commands: impl IntoIterator<Item = Command>) {
        for c in commands {
            s.apply(s.index + 1, &c);
            assert_eq!(s.check(), Ok(()), "after {c:?}");
        }
    }

    fn node(name: &str) -> Command {
        let room = Capacity {
            cpu_millis: 4000,
            memory_bytes: 1 << 32,
        };
        Command::RegisterNode {
            node: RegisterRequest {
                name: name.into(),
                address: format!("http://{name}"),
                capacity: room.clone(),
                allocatable: room,
                drivers: vec!["process".into()],
                notes: vec![],
                version: "test".into(),
            },
            time: T,
        }
    }

    fn node_state(name: &str, state: NodeState, time: Timestamp) -> Command {
        Command::SetNodeState {
            node: name.into(),
            state,
            time,
            silent_since: None,
        }
    }

    fn ready(node: &str, id: &str, restarts: u32) -> Command {
        Command::Report {
            node: node.into(),
            report: StatusReport {
                tasks: vec![TaskStatus {
                    seq: 0,
                    id: id.into(),
                    state: TaskState::Running,
                    evicted: false,
                    ready: true,
                    restarts,
                    pid: Some(7),
                    container_id: None,
                    ports: BTreeMap::new(),
                    started_at: Some(Timestamp(T.0 + u64::from(restarts))),
                    exit_code: None,
                    message: None,
                    last_exit: None,
                    next_start: None,
                }],
                ..StatusReport::default()
            },
            time: T,
        }
    }

    fn exited(node: &str, id: &str) -> Command {
        let mut c = ready(node, id, 0);
        if let Command::Report { report, .. } = &mut c {
            report.tasks[0].state = TaskState::Exited;
            report.tasks[0].ready = false;
        }
        c
    }

    /// Plans with the real scheduler and commits the plan, as the service controller does.
    fn settle(s: &mut State, time: Timestamp) {
        let plan = scheduler_free_plan(s);
        run(s, [plan_command(plan, time)]);
    }

    /// The store cannot depend on the scheduler (the scheduler's own tests cover it): this
    /// places every open slot of every service on the first ready node, which is all these
    /// tests need of a plan.
    fn scheduler_free_plan(s: &State) -> Vec<Placement> {
        let mut place = Vec::new();
        let ready: Vec<&String> = (s.nodes.iter())
            .filter(|(_, n)| n.state == NodeState::Ready)
            .map(|(name, _)| name)
            .collect();
        for (name, svc) in s.services.iter().filter(|(_, svc)| !svc.removing) {
            for slot in 1..=svc.spec.replicas {
                if matches!(s.slot_fill(name, slot, svc.version), SlotFill::Open)
                    && let Some(node) = ready.first()
                {
                    place.push(Placement {
                        service: name.clone(),
                        slot,
                        node: node.to_string(),
                    });
                }
            }
        }
        place
    }

    fn plan_command(place: Vec<Placement>, time: Timestamp) -> Command {
        Command::Reconcile {
            place,
            stop: vec![],
            pending: vec![],
            time,
            completed: Vec::new(),
            stalled: Vec::new(),
        }
    }

    fn deploy(spec: ServiceSpec) -> Command {
        Command::Deploy {
            services: vec![spec],
            time: T,
        }
    }

    fn web(on_node_lost: spec::OnNodeLost) -> ServiceSpec {
        let mut spec = ServiceSpec::process("web", &["app"]);
        spec.replicas = 2;
        spec.on_node_lost = on_node_lost;
        spec
    }

    fn placed(slot: u32, node: &str) -> Placement {
        Placement {
            service: "web".into(),
            slot,
            node: node.into(),
        }
    }

    #[test]
    fn a_node_change_marks_for_planning_the_services_with_tasks_there_and_no_other() {
        let mut s = State::default();
        let mut db = ServiceSpec::process("db", &["db"]);
        db.replicas = 1;
        let db_on_a = Placement {
            service: "db".into(),
            slot: 1,
            node: "a".into(),
        };
        run(
            &mut s,
            [
                node("a"),
                node("b"),
                deploy(web(spec::OnNodeLost::default())),
                deploy(db),
                plan_command(vec![placed(1, "a"), placed(2, "b"), db_on_a], T),
            ],
        );
        let (web_before, db_before) = (s.placement_index["web"], s.placement_index["db"]);
        for change in [
            node_state("b", NodeState::Down, at(1)),
            node_state("b", NodeState::Ready, at(2)),
            Command::SetDrain {
                node: "b".into(),
                drain: true,
                time: at(3),
            },
        ] {
            run(&mut s, [change]);
            assert_eq!(s.placement_index["web"], s.index, "web has a task on b");
            assert_eq!(s.placement_index["db"], db_before, "db has none there");
            assert_eq!(
                s.nodes_placement_index, s.index,
                "so replicas waiting are planned"
            );
        }
        assert!(s.placement_index["web"] > web_before);
    }

    /// `web` with slot 1 on `a` and slot 2 on `b`, both ready, then `b` goes `state` at T.
    fn b_lost(policy: spec::OnNodeLost, state: NodeState) -> State {
        let mut s = State::default();
        run(
            &mut s,
            [
                node("a"),
                node("b"),
                deploy(web(policy)),
                plan_command(vec![placed(1, "a"), placed(2, "b")], T),
            ],
        );
        let on_b = b_task(&s);
        run(
            &mut s,
            [
                ready("a", "web.1.1", 0),
                ready("b", &on_b, 0),
                node_state("b", state, T),
            ],
        );
        s
    }

    fn b_task(s: &State) -> String {
        s.tasks_on("b").next().expect("a task on b").id.clone()
    }

    fn lose_due(s: &mut State, now: Timestamp) {
        let due: Vec<String> = (s.nodes.keys())
            .flat_map(|n| s.tasks_on(n))
            .filter(|t| s.loss_due(t, now).is_some())
            .map(|t| t.id.clone())
            .collect();
        run(
            s,
            [Command::LoseTasks {
                tasks: due,
                time: now,
            }],
        );
    }

    #[test]
    fn replace_after_counts_from_the_last_heartbeat_not_from_the_verdict() {
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Ready);
        let id = b_task(&s);
        let silent = |state, time, since: u64| Command::SetNodeState {
            node: "b".into(),
            state,
            time,
            silent_since: Some(at(since)),
        };
        // Last heard at +0; suspect at +1.1 s, down at +1.8 s (that verdict's own idea of the
        // silence does not move its start).
        run(&mut s, [silent(NodeState::Suspect, at(1_100), 0)]);
        run(&mut s, [silent(NodeState::Down, at(1_800), 500)]);
        assert_eq!(s.nodes["b"].silent_since, Some(at(0)));
        assert!(s.loss_due(&s.tasks[&id], at(1_999)).is_none());
        let loss = s
            .loss_due(&s.tasks[&id], at(2_000))
            .expect("2 s of silence is up");
        assert_eq!(loss.lost_for, std::time::Duration::from_secs(2));
        lose_due(&mut s, at(2_000));
        assert_eq!(s.tasks[&id].state, TaskState::Lost);
        let lost = s.events.iter().rfind(|e| e.event.reason == "lost").unwrap();
        assert!(
            lost.event.message.contains("node b is down, silent for 2s"),
            "{}",
            lost.event.message
        );
        // Back: no silence any more, and the next one starts afresh.
        run(&mut s, [node_state("b", NodeState::Ready, at(3_000))]);
        assert_eq!(s.nodes["b"].silent_since, None);
        run(&mut s, [silent(NodeState::Suspect, at(9_000), 8_000)]);
        assert_eq!(s.nodes["b"].silent_since, Some(at(8_000)));
    }

    #[test]
    fn endpoints_are_ready_tasks_on_nodes_not_lost_and_drain_while_stopping() {
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Ready);
        for (name, ip) in [("a", "10.0.0.1"), ("b", "[fd00::2]")] {
            let mut n = s.nodes[name].clone();
            n.address = format!("https://{ip}:7401");
            s.nodes.insert(name.to_string(), n);
        }
        let range = api::ServiceRange::DEFAULT;
        let hosts = |s: &State| -> Vec<(String, bool)> {
            let list = s.endpoints_of("web", &range).expect("web exists");
            (list.endpoints.iter())
                .map(|e| (e.host.to_string(), e.draining))
                .collect()
        };
        assert_eq!(
            hosts(&s),
            [
                ("10.0.0.1".to_string(), false),
                ("fd00::2".to_string(), false)
            ]
        );
        let vip = s.endpoints_of("web", &range).and_then(|e| e.vip);
        assert_eq!(vip, Some(std::net::Ipv4Addr::new(10, 96, 0, 2)));

        run(&mut s, [node_state("b", NodeState::Down, T)]);
        assert_eq!(hosts(&s), [("10.0.0.1".to_string(), false)], "b is lost");
        run(&mut s, [node_state("b", NodeState::Ready, T)]);
        let on_b = b_task(&s);
        run(&mut s, [exited("b", &on_b)]);
        assert_eq!(hosts(&s), [("10.0.0.1".to_string(), false)], "not running");

        run(
            &mut s,
            [Command::Scale {
                service: "web".into(),
                replicas: 1,
                time: T,
            }],
        );
        s.stop_task("web.1.1", T);
        assert_eq!(hosts(&s), [("10.0.0.1".to_string(), true)], "being stopped");
        run(
            &mut s,
            [Command::Remove {
                service: "web".into(),
                time: T,
            }],
        );
        assert!(s.endpoints_of("web", &range).is_none());
    }

    #[test]
    fn a_task_on_a_down_node_counts_not_ready_at_once_without_a_row_rewritten() {
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Ready);
        let id = b_task(&s);
        s.tasks.forget_changes();
        run(&mut s, [node_state("b", NodeState::Down, T)]);
        assert_eq!(s.tasks.take_changes().count(), 0, "no task row written");
        let t = &s.tasks[&id];
        assert!(t.ready, "as last reported");
        assert!(!s.counts_ready(t));
        let view = s.task_view(t);
        assert_eq!(
            (view.ready, view.node_state),
            (false, Some(NodeState::Down))
        );
        let on_a = s.task_view(&s.tasks["web.1.1"]);
        assert_eq!((on_a.ready, on_a.node_state), (true, None));
        run(&mut s, [node_state("b", NodeState::Suspect, T)]);
        assert!(s.counts_ready(&s.tasks[&id]), "suspect is not lost");
    }

    #[test]
    fn tasks_are_lost_once_the_policy_time_is_up_and_their_slot_is_placed_again() {
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Down);
        let id = b_task(&s);
        let index = s.placement_index["web"];
        lose_due(&mut s, at(1_999));
        assert_eq!(s.tasks[&id].state, TaskState::Running, "2s not up yet");
        // A stale verdict is checked again when applied.
        run(
            &mut s,
            [Command::LoseTasks {
                tasks: vec![id.clone(), "web.1.1".into(), "nope".into()],
                time: at(1_000),
            }],
        );
        assert_eq!(s.tasks[&id].desired, DesiredState::Running);
        s.tasks.forget_changes();
        lose_due(&mut s, at(2_000));
        let changed: Vec<String> = s.tasks.take_changes().map(|(k, _)| k).collect();
        assert_eq!(
            changed,
            std::slice::from_ref(&id),
            "only the lost task's row is written"
        );
        let t = &s.tasks[&id];
        assert_eq!(
            (t.desired, t.state, t.ready),
            (DesiredState::Shutdown, TaskState::Lost, false)
        );
        assert!(
            s.placement_index["web"] > index,
            "the service is planned again"
        );
        let lost: Vec<&Event> = s
            .events
            .iter()
            .filter(|e| e.event.reason == "lost")
            .collect();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].event.node.as_deref(), Some("b"));
        assert_eq!(lost[0].event.task.as_deref(), Some(id.as_str()));
        assert!(
            lost[0]
                .event
                .message
                .contains("node b has been down for 2s"),
            "{}",
            lost[0].event.message
        );
        // Lost again later: nothing more happens, no second event.
        lose_due(&mut s, at(9_000));
        run(
            &mut s,
            [Command::LoseTasks {
                tasks: vec![id.clone()],
                time: at(9_000),
            }],
        );
        assert_eq!(
            s.events.iter().filter(|e| e.event.reason == "lost").count(),
            1
        );
        // The slot is open again: the plan places a replacement on a, next to the lost one.
        settle(&mut s, at(2_100));
        let slot2: Vec<&Task> = s.tasks.values().filter(|t| t.slot == 2).collect();
        assert_eq!(slot2.len(), 2);
        assert!(
            slot2
                .iter()
                .any(|t| t.node.as_deref() == Some("a") && t.desired == DesiredState::Running)
        );
        assert!(scheduler_free_plan(&s).is_empty(), "nothing more to place");
    }

    #[test]
    fn a_lost_task_never_comes_back_and_the_returning_node_is_told_to_drop_it() {
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Down);
        let id = b_task(&s);
        lose_due(&mut s, at(5_000));
        assert!(s.assignments("b").is_empty(), "no longer listed for b");
        // Late reports from b, even of a later run, never move it back.
        run(&mut s, [ready("b", &id, 0), ready("b", &id, 3)]);
        let t = &s.tasks[&id];
        assert_eq!((t.state, t.ready, t.restarts), (TaskState::Lost, false, 0));
        // b says it stopped it: the last news of the task.
        run(&mut s, [exited("b", &id)]);
        assert!(!s.tasks.contains_key(&id));
    }

    #[test]
    fn a_returning_node_forgets_its_lost_tasks() {
        for back in [node("b"), node_state("b", NodeState::Ready, at(6_000))] {
            let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Down);
            let id = b_task(&s);
            lose_due(&mut s, at(5_000));
            run(&mut s, [back]);
            assert!(!s.tasks.contains_key(&id));
            assert!(s.assignments("b").is_empty());
        }
    }

    #[test]
    fn keep_never_loses_and_unreachable_waits_for_its_own_time() {
        let keep = spec::OnNodeLost::Keep(spec::KeepTasks::Keep);
        let mut s = b_lost(keep, NodeState::Down);
        lose_due(&mut s, at(86_400_000));
        assert_eq!(s.tasks[&b_task(&s)].desired, DesiredState::Running);
        assert!(
            !s.counts_ready(&s.tasks[&b_task(&s)]),
            "kept, but not ready"
        );

        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Unreachable);
        lose_due(&mut s, at(299_999));
        assert_eq!(s.tasks[&b_task(&s)].state, TaskState::Running);
        lose_due(&mut s, at(300_000));
        assert_eq!(s.tasks[&b_task(&s)].state, TaskState::Lost);
        let message = s.tasks[&b_task(&s)].message.clone().unwrap_or_default();
        assert!(message.contains("unreachable for 5m"), "{message}");
    }

    #[test]
    fn a_node_down_again_later_counts_from_its_new_state_since() {
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Down);
        run(
            &mut s,
            [
                node_state("b", NodeState::Ready, at(1_000)),
                node_state("b", NodeState::Down, at(10_000)),
            ],
        );
        lose_due(&mut s, at(11_000));
        assert_eq!(s.tasks[&b_task(&s)].state, TaskState::Running);
        lose_due(&mut s, at(12_000));
        assert_eq!(s.tasks[&b_task(&s)].state, TaskState::Lost);
    }

    #[test]
    fn rm_completes_with_tasks_on_a_down_node() {
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Down);
        let on_b = b_task(&s);
        run(
            &mut s,
            [Command::Remove {
                service: "web".into(),
                time: at(100),
            }],
        );
        assert!(!s.tasks.contains_key(&on_b), "b cannot say it stopped it");
        assert!(s.services["web"].removing, "a still stops its task");
        run(&mut s, [exited("a", "web.1.1")]);
        assert!(s.services.is_empty() && s.tasks.is_empty());
        assert!(s.assignments("b").is_empty());
    }

    #[test]
    fn rm_completes_when_the_node_goes_down_while_stopping_or_after_a_loss() {
        // The node goes down while its task is stopping.
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Ready);
        run(
            &mut s,
            [
                Command::Remove {
                    service: "web".into(),
                    time: T,
                },
                exited("a", "web.1.1"),
            ],
        );
        assert!(s.services.contains_key("web"), "waits on b");
        run(&mut s, [node_state("b", NodeState::Down, at(100))]);
        assert!(s.services.is_empty() && s.tasks.is_empty());

        // Lost first, its replacement placed and running, then removed.
        let mut s = b_lost(spec::OnNodeLost::default(), NodeState::Down);
        lose_due(&mut s, at(2_000));
        settle(&mut s, at(2_100));
        let ids: Vec<String> = s.tasks_on("a").map(|t| t.id.clone()).collect();
        run(
            &mut s,
            [Command::Remove {
                service: "web".into(),
                time: at(3_000),
            }],
        );
        run(&mut s, ids.iter().map(|id| exited("a", id)));
        assert!(s.services.is_empty() && s.tasks.is_empty(), "{:?}", s.tasks);
    }

    #[test]
    fn a_scale_down_never_waits_on_a_down_node() {
        let mut s = b_lost(
            spec::OnNodeLost::Keep(spec::KeepTasks::Keep),
            NodeState::Down,
        );
        let on_b = b_task(&s);
        run(
            &mut s,
            [
                Command::Scale {
                    service: "web".into(),
                    replicas: 1,
                    time: at(100),
                },
                Command::Reconcile {
                    place: vec![],
                    stop: vec![on_b.clone()],
                    pending: vec![],
                    time: at(100),
                    completed: Vec::new(),
                    stalled: Vec::new(),
                },
            ],
        );
        assert!(!s.tasks.contains_key(&on_b));
        assert!(s.assignments("b").is_empty());
    }

    #[test]
    fn losing_tasks_is_deterministic_and_an_older_entry_still_decodes() {
        let commands = |s: &State| {
            vec![Command::LoseTasks {
                tasks: vec![b_task(s)],
                time: at(2_000),
            }]
        };
        let mut x = b_lost(spec::OnNodeLost::default(), NodeState::Down);
        let mut y = x.clone();
        let (cx, cy) = (commands(&x), commands(&y));
        run(&mut x, cx);
        run(&mut y, cy);
        assert_eq!(x, y);
        let entry = r#"{"Remove":{"service":"web","time":"1970-01-01T00:00:01Z"}}"#;
        assert!(serde_json::from_str::<Command>(entry).is_ok());
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    const T: Timestamp = Timestamp(1_000);

    fn run(s: &mut State, commands: impl IntoIterator<Item = Command>) {
        for c in commands {
            s.apply(s.index + 1, &c);
            assert_eq!(s.check(), Ok(()), "after {c:?}");
        }
    }

    fn node(name: &str) -> Command {
        Command::RegisterNode {
            node: RegisterRequest {
                name: name.into(),
                address: String::new(),
                capacity: Capacity::default(),
                allocatable: Capacity::default(),
                drivers: vec!["process".into()],
                notes: vec![],
                version: String::new(),
            },
            time: T,
        }
    }

    fn drain(node: &str, drain: bool) -> Command {
        Command::SetDrain {
            node: node.into(),
            drain,
            time: T,
        }
    }

    fn place(slot: u32, node: &str) -> Command {
        Command::Reconcile {
            place: vec![Placement {
                service: "web".into(),
                slot,
                node: node.into(),
            }],
            stop: vec![],
            pending: vec![],
            time: T,
            completed: Vec::new(),
            stalled: Vec::new(),
        }
    }

    fn stop(id: &str) -> Command {
        Command::Reconcile {
            place: vec![],
            stop: vec![id.into()],
            pending: vec![],
            time: T,
            completed: Vec::new(),
            stalled: Vec::new(),
        }
    }

    fn report(node: &str, id: &str, state: TaskState, ready: bool) -> Command {
        Command::Report {
            node: node.into(),
            report: StatusReport {
                tasks: vec![TaskStatus {
                    seq: 0,
                    id: id.into(),
                    state,
                    evicted: false,
                    ready,
                    restarts: 0,
                    pid: Some(7),
                    container_id: None,
                    ports: BTreeMap::new(),
                    started_at: Some(T),
                    exit_code: None,
                    message: None,
                    last_exit: None,
                    next_start: None,
                }],
                ..StatusReport::default()
            },
            time: T,
        }
    }

    /// `web` slot 1 on a (ready), slot 2 on b, then a drained.
    fn a_draining() -> State {
        let mut spec = ServiceSpec::process("web", &["app"]);
        spec.replicas = 2;
        let mut s = State::default();
        run(
            &mut s,
            [
                node("a"),
                node("b"),
                Command::Deploy {
                    services: vec![spec],
                    time: T,
                },
                place(1, "a"),
                place(2, "b"),
                report("a", "web.1.1", TaskState::Running, true),
                drain("a", true),
            ],
        );
        s
    }

    fn slot_one(s: &State) -> Vec<(String, Option<String>, DesiredState)> {
        (s.tasks.values())
            .filter(|t| t.slot == 1)
            .map(|t| (t.id.clone(), t.node.clone(), t.desired))
            .collect()
    }

    #[test]
    fn a_drained_task_runs_beside_its_replacement_until_that_is_ready() {
        let mut s = a_draining();
        assert!(s.nodes["a"].draining);
        assert_eq!(
            s.nodes_placement_index, s.index,
            "every service is planned again"
        );
        assert!(s.events.iter().any(|e| e.event.reason == "drain"));
        // Nothing new on a; the replacement goes beside the old task, once.
        run(&mut s, [place(1, "a"), place(1, "b"), place(1, "b")]);
        let b = Some("b".to_string());
        let a = Some("a".to_string());
        assert_eq!(
            slot_one(&s),
            [
                ("web.1.1".into(), a.clone(), DesiredState::Running),
                ("web.1.3".into(), b.clone(), DesiredState::Running)
            ]
        );
        let index = s.placement_index["web"];
        run(&mut s, [report("b", "web.1.3", TaskState::Running, false)]);
        assert_eq!(
            s.placement_index["web"], index,
            "not ready: nothing to plan"
        );
        run(&mut s, [report("b", "web.1.3", TaskState::Running, true)]);
        assert!(
            s.placement_index["web"] > index,
            "ready: the old one may stop"
        );
        run(
            &mut s,
            [
                stop("web.1.1"),
                report("a", "web.1.1", TaskState::Exited, false),
            ],
        );
        assert_eq!(s.tasks_on("a").count(), 0, "a is empty");
        assert_eq!(slot_one(&s), [("web.1.3".into(), b, DesiredState::Running)]);
    }

    #[test]
    fn undraining_calls_off_the_moves_under_way() {
        let mut s = a_draining();
        run(&mut s, [place(1, "b"), drain("a", false)]);
        let a = Some("a".to_string());
        assert_eq!(
            slot_one(&s),
            [
                ("web.1.1".into(), a, DesiredState::Running),
                ("web.1.3".into(), Some("b".into()), DesiredState::Shutdown)
            ]
        );
        assert!(!s.nodes["a"].draining);
        let answer = s.apply(s.index + 1, &drain("nope", true));
        assert_eq!(answer, Response::NotFound("nope".into()));
    }
}

#[cfg(test)]
mod stack_tests {
    use super::*;

    const T: Timestamp = Timestamp(1);

    fn run(s: &mut State, commands: impl IntoIterator<Item = Command>) -> Vec<Response> {
        (commands.into_iter())
            .map(|c| {
                let next = s.index + 1;
                s.apply(next, &c)
            })
            .collect()
    }

    fn in_stack(stack: Option<&str>, short: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::process(&spec::stack_service_name(stack, short), &["app"]);
        spec.stack = stack.map(str::to_string);
        spec
    }

    fn deploy(services: Vec<ServiceSpec>) -> Command {
        Command::Deploy { services, time: T }
    }

    #[test]
    fn a_stack_is_removed_in_one_entry_and_nothing_else_with_it() {
        let mut s = State::default();
        run(
            &mut s,
            [deploy(vec![
                in_stack(Some("shop"), "web"),
                in_stack(Some("shop"), "db"),
                in_stack(Some("blog"), "web"),
                in_stack(None, "web"),
            ])],
        );
        let removed = run(
            &mut s,
            [Command::RemoveStack {
                stack: "shop".into(),
                time: T,
            }],
        );
        assert_eq!(removed, [Response::Ok]);
        // Without tasks, removed services are forgotten at once.
        let left: Vec<&str> = s.services.keys().map(String::as_str).collect();
        assert_eq!(left, ["blog_web", "web"]);
        let again = run(
            &mut s,
            [Command::RemoveStack {
                stack: "shop".into(),
                time: T,
            }],
        );
        assert_eq!(again, [Response::NotFound("shop".into())]);
    }

    #[test]
    fn a_changed_depends_on_or_stack_makes_no_new_version() {
        let mut s = State::default();
        let db = in_stack(Some("shop"), "db");
        let web = in_stack(Some("shop"), "web");
        run(&mut s, [deploy(vec![db.clone(), web.clone()])]);
        let mut waiting = web.clone();
        waiting
            .depends_on
            .insert("shop_db".into(), spec::Condition::ServiceHealthy);
        run(&mut s, [deploy(vec![waiting])]);
        assert_eq!(s.services["shop_web"].version, 1);
        assert_eq!(s.services["shop_web"].spec.depends_on.len(), 1);
    }

    /// A dependent with replicas held, its dependency with one task placed on node `a`.
    fn held() -> State {
        let mut s = State::default();
        let mut web = in_stack(None, "web");
        web.depends_on
            .insert("db".into(), spec::Condition::ServiceHealthy);
        let reason = "held until db is ready (service_healthy): 0 of its 1 replicas so far";
        run(
            &mut s,
            [
                Command::RegisterNode {
                    node: RegisterRequest {
                        name: "a".into(),
                        address: "http://a".into(),
                        capacity: Capacity::default(),
                        allocatable: Capacity::default(),
                        drivers: vec!["process".into()],
                        notes: vec![],
                        version: "test".into(),
                    },
                    time: T,
                },
                deploy(vec![in_stack(None, "db"), web]),
                Command::Reconcile {
                    place: vec![Placement {
                        service: "db".into(),
                        slot: 1,
                        node: "a".into(),
                    }],
                    stop: vec![],
                    pending: vec![("web".into(), reason.into())],
                    time: T,
                    completed: Vec::new(),
                    stalled: Vec::new(),
                },
            ],
        );
        s
    }

    fn db_status(ready: bool) -> Command {
        Command::Report {
            node: "a".into(),
            report: StatusReport {
                seq: 0,
                tasks: vec![TaskStatus {
                    seq: 0,
                    id: "db.1.1".into(),
                    state: TaskState::Running,
                    evicted: false,
                    ready,
                    restarts: 0,
                    pid: Some(7),
                    container_id: None,
                    ports: BTreeMap::new(),
                    started_at: Some(T),
                    exit_code: None,
                    message: None,
                    last_exit: None,
                    next_start: None,
                }],
                events: vec![],
                memory_pressure: None,
            },
            time: T,
        }
    }

    #[test]
    fn a_held_replica_says_what_it_waits_for() {
        let s = held();
        let waiting = &s.tasks["web.1.2"];
        assert_eq!(waiting.state, TaskState::Pending);
        assert_eq!(
            waiting.message.as_deref(),
            Some("held until db is ready (service_healthy): 0 of its 1 replicas so far")
        );
    }

    #[test]
    fn a_dependency_moving_on_marks_the_services_waiting_on_it_for_planning() {
        let mut s = held();
        let before = s.placement_index["web"];
        run(&mut s, [db_status(false)]);
        let started = s.placement_index["web"];
        assert!(started > before, "started: the controller looks again");
        run(&mut s, [db_status(false)]);
        assert_eq!(s.placement_index["web"], started, "no change, no plan");
        run(&mut s, [db_status(true)]);
        assert!(s.placement_index["web"] > started, "ready");
    }
}

#[cfg(test)]
mod finished_tests {
    use super::*;

    const T: Timestamp = Timestamp(1);

    fn deployed(name: &str) -> State {
        let mut s = State::default();
        let spec = ServiceSpec::process(name, &["app"]);
        s.apply(
            1,
            &Command::Deploy {
                services: vec![spec],
                time: T,
            },
        );
        s
    }

    #[test]
    fn a_forgotten_task_is_kept_in_its_services_history_up_to_the_limit() {
        let mut s = deployed("web");
        let total = FINISHED_KEPT + 3;
        let ids: Vec<String> = (0..total).map(|_| s.new_task("web", 1, 1, T)).collect();
        for id in &ids {
            s.forget_task(id);
        }
        assert!(ids.iter().all(|id| !s.tasks.contains_key(id)));
        let kept: Vec<&String> = s.finished.keys().collect();
        assert_eq!(kept.len(), FINISHED_KEPT);
        assert!(
            ids[..3].iter().all(|id| !s.finished.contains_key(id)),
            "the oldest go first: {kept:?}"
        );
        assert!(s.finished.contains_key(&ids[total - 1]));
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn a_removed_services_history_goes_with_it() {
        let mut s = deployed("web");
        let other = ServiceSpec::process("webby", &["app"]);
        s.apply(
            2,
            &Command::Deploy {
                services: vec![other],
                time: T,
            },
        );
        let web = s.new_task("web", 1, 1, T);
        let webby = s.new_task("webby", 1, 1, T);
        s.forget_task(&web);
        s.forget_task(&webby);
        s.forget_finished("web");
        let kept: Vec<&String> = s.finished.keys().collect();
        assert_eq!(kept, [&webby], "only web's, not webby's");
    }
}
