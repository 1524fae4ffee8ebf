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

use crate::tables::StoredMap;
use crate::tracked::TrackedMap;

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
    RegisterNode {
        node: RegisterRequest,
        time: Timestamp,
    },
    SetNodeState {
        node: String,
        state: NodeState,
        time: Timestamp,
    },
    /// The controller's plan: new tasks to create, tasks to stop, why some replicas wait.
    Reconcile {
        place: Vec<Placement>,
        stop: Vec<String>,
        pending: Vec<(String, String)>,
        time: Timestamp,
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
    /// A join token (or the admin credential) of `role` is now the one whose secret has this
    /// sha256 digest; the one before stops working. Without `replace` it is set only where the
    /// role has none yet: a founding server's first commit never undoes a rotation.
    SetToken {
        role: String,
        digest: String,
        replace: bool,
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
}

const TOKEN_PREFIX: &str = "token/";
const CERT_PREFIX: &str = "cert/";

fn token_key(role: &str) -> String {
    format!("{TOKEN_PREFIX}{role}")
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
            | Command::RegisterNode { time, .. }
            | Command::SetNodeState { time, .. }
            | Command::Reconcile { time, .. }
            | Command::Report { time, .. }
            | Command::Reports { time, .. }
            | Command::SetToken { time, .. }
            | Command::AddCertificate { time, .. }
            | Command::RemoveNode { time, .. } => *time,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Deployed(Vec<Change>),
    NotFound(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Index of the last applied log entry.
    pub index: u64,
    pub services: TrackedMap<String, Service>,
    pub tasks: TrackedMap<String, Task>,
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
    /// The cluster's trust: the digest of each token's secret (`token/<role>`) and every node
    /// certificate issued and not revoked (`cert/<fingerprint>` → `<role>/<node>`). Never a
    /// secret itself.
    #[serde(default)]
    pub trust: TrackedMap<String, String>,
    /// Task ids by node and by service slot, so that [`State::assignments`] and apply read the
    /// tasks concerned instead of scanning all of them. Derived from `tasks`, so never stored:
    /// `State::reindex` rebuilds it when a state is loaded.
    #[serde(skip)]
    lookup: TaskIndex,
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
            Command::RegisterNode { node, time } => self.register(node, *time),
            Command::SetNodeState { node, state, time } => self.set_node_state(node, *state, *time),
            Command::Reconcile {
                place,
                stop,
                pending,
                time,
            } => self.reconcile(place, stop, pending, *time),
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
            Command::SetToken {
                role,
                digest,
                replace,
                ..
            } => {
                if *replace || self.token_digest(role).is_none() {
                    self.trust.insert(token_key(role), digest.clone());
                }
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
        }
    }

    /// The digest of the secret of the current token of `role` (`server`, `agent`, `admin`).
    pub fn token_digest(&self, role: &str) -> Option<&str> {
        self.trust.get(&token_key(role)).map(String::as_str)
    }

    /// The role and node of the issued certificate with this fingerprint; `None` when it was
    /// never issued or was revoked.
    pub fn certificate(&self, fingerprint: &str) -> Option<(&str, &str)> {
        self.trust.get(&cert_key(fingerprint))?.split_once('/')
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
            ("nodes", &mut self.nodes),
            ("node_index", &mut self.node_index),
            ("pending", &mut self.pending),
            ("report_seq", &mut self.report_seq),
            ("placement_index", &mut self.placement_index),
            ("trust", &mut self.trust),
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
        }
    }

    pub(crate) fn set_counters(&mut self, counters: Counters) {
        self.index = counters.index;
        self.next_event = counters.next_event;
        self.next_task = counters.next_task;
        self.nodes_placement_index = counters.nodes_placement_index;
        self.forgotten_placement_index = counters.forgotten_placement_index;
    }

    /// Rebuilds what is derived from the stored maps; call it on a state just loaded.
    pub(crate) fn reindex(&mut self) {
        self.lookup = TaskIndex::of(&self.tasks);
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
            drivers: Vec::new(),
            notes: Vec::new(),
            version: String::new(),
            registered_at: time,
            state_since: time,
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
        }
        self.node_index.insert(node.name.clone(), self.index);
        self.nodes_placement_index = self.index;
        self.report_seq.remove(&node.name);
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

    fn set_node_state(&mut self, node: &str, state: NodeState, time: Timestamp) -> Response {
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
        self.nodes_placement_index = self.index;
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
        match self.services.get_mut(&name) {
            Some(svc) => {
                let fields = changed_fields(&svc.spec, &spec);
                // Only a change of the task template needs new tasks; a replica count does not.
                let template_changed = fields.iter().any(|f| f != "replicas");
                if template_changed {
                    svc.version += 1;
                }
                svc.spec = spec;
                svc.removing = false;
                svc.updated_at = time;
                let version = svc.version;
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
                        spec,
                        version: 1,
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
            || !self.nodes.contains_key(&p.node)
        {
            return;
        }
        let version = svc.version;
        let current = self
            .slot_task(&p.service, p.slot, version)
            .map(|t| (t.id.clone(), t.node.is_some()));
        let id = match current {
            Some((_, true)) => return,
            // A replica waiting for room gets its node; it keeps its id.
            Some((id, false)) => id,
            None => self.new_task(&p.service, p.slot, version, time),
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

    /// The task that fills a slot of a service version, placed or waiting.
    fn slot_task(&self, service: &str, slot: u32, version: u64) -> Option<&Task> {
        self.lookup
            .of_slot(service, slot)
            .filter_map(|id| self.tasks.get(id))
            .find(|t| t.desired == DesiredState::Running && t.version == version)
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
            exit_code: None,
            message: None,
            created_at: time,
            updated_at: time,
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
        match task.node.clone() {
            // Never started anywhere: nothing to wait for.
            None => self.forget_task(id),
            Some(node) => {
                self.node_index.insert(node, self.index);
            }
        }
        self.placement_moved(&service);
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
        if task.node.as_deref() != Some(node) || !moves_forward(task, status) {
            return;
        }
        let Some(task) = self.tasks.get_mut(&status.id) else {
            return;
        };
        task.state = status.state;
        task.ready = status.ready;
        task.restarts = status.restarts;
        task.pid = status.pid;
        task.container_id = status.container_id.clone();
        task.ports = status.ports.clone();
        task.started_at = status.started_at;
        task.exit_code = status.exit_code;
        task.message = status.message.clone();
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
        self.nodes_placement_index = self.index;
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
        for slot in 1..=replicas {
            let id = match self.slot_task(service, slot, version) {
                Some(t) if t.node.is_some() => continue,
                Some(t) => t.id.clone(),
                None => self.new_task(service, slot, version, time),
            };
            let message = format!("waiting for a node: {reason}");
            if self.tasks.get(&id).and_then(|t| t.message.as_ref()) != Some(&message)
                && let Some(task) = self.tasks.get_mut(&id)
            {
                task.message = Some(message);
            }
        }
    }

    /// A removed service is forgotten once its last task is gone.
    fn forget_removed_services(&mut self) {
        let gone: Vec<String> = self
            .services
            .iter()
            .filter(|(name, s)| s.removing && self.lookup.of_service(name).next().is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.services.remove(&name);
            self.pending.remove(&name);
            self.placement_index.remove(&name);
            self.forgotten_placement_index = self.index;
        }
    }

    /// Records that something placement reads of `service` changed at this entry.
    fn placement_moved(&mut self, service: &str) {
        self.placement_index.insert(service.to_string(), self.index);
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
        }
    }

    /// Invariants every applied state keeps; checked after each apply in debug builds and tests.
    pub fn check(&self) -> Result<(), String> {
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
        }
        // One pass over the tasks, not one per service: debug builds check after every apply.
        let mut filled = BTreeSet::new();
        for t in self.tasks.values() {
            let current = self
                .services
                .get(&t.service)
                .is_some_and(|svc| svc.version == t.version);
            if current && t.desired == DesiredState::Running && !filled.insert((&t.service, t.slot))
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
            .filter_map(|t| {
                let svc = self.services.get(&t.service)?;
                Some(api::Assignment {
                    task: t.id.clone(),
                    service: t.service.clone(),
                    slot: t.slot,
                    version: t.version,
                    desired: t.desired,
                    spec: svc.spec.clone(),
                })
            })
            .collect()
    }
}

/// Where a state stands within one run of a task; a run only moves to a later step, as in
/// Swarmkit. Exited and Failed are both the end of a run.
fn step(state: TaskState) -> u8 {
    match state {
        TaskState::Pending => 0,
        TaskState::Starting => 1,
        TaskState::Running => 2,
        TaskState::Exited | TaskState::Failed => 3,
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
        }
    }

    fn status(id: &str, state: TaskState) -> StatusReport {
        StatusReport {
            seq: 0,
            tasks: vec![TaskStatus {
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
            },
        );
        assert_eq!(s.tasks["web.1.1"].node.as_deref(), Some("a"));
        assert_eq!(s.tasks["web.1.1"].message, None);
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.assignments("a").len(), 1);
    }
}
