//! Placement. [`plan`] is a pure function from a snapshot of the cluster (services, tasks, nodes)
//! to a [`Plan`]: which replicas to create on which node, which tasks to stop, and why any
//! replica must wait. The server commits the plan through Raft; nothing here does I/O.
//!
//! Rules, in order:
//! - a task of a removed service, of an older spec version, or in a slot above `replicas` stops;
//! - every slot `1..=replicas` without a running-desired task of the current version gets one;
//! - a node is a candidate when it is `ready`, not under memory pressure, has the service's
//!   driver, and its allocatable resources minus the requests of the tasks it already runs fit
//!   the task's requests;
//!   and none of its tasks holds a fixed host port the task needs (same port and protocol, on
//!   an overlapping address: `ports.rs`);
//! - a service whose `depends_on` are not all started, ready or completed (each as its
//!   condition says, for every replica of the dependency's current version) places nothing
//!   new: its open slots wait, with the dependency named;
//! - among candidates the node with the fewest tasks of this service wins (spread), then the
//!   fewest tasks overall, then the name (determinism).
//!
//! Quantities are unsigned and every sum saturates: a request too large for any node (validation
//! refuses the absurd ones, but a spec stored before that rule may still hold one) never fits,
//! and never wraps around into free room.
//!
//! A full pass costs O((tasks + nodes) · log nodes): each task is looked at once, and the next
//! node for a replica comes from ordered sets (`cluster.rs`), not a scan. `oracle.rs`, for tests
//! only, keeps the direct quadratic algorithm the plans are checked against.
//!
//! [`plan_services`] places only the services it is given, against the room every other
//! service's tasks leave: the service controller's pass after a few services changed. With the
//! services whose replicas wait, it gives what a full pass would (`tests/props.rs` holds it to
//! that after random changes), because every other service has nothing to do.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use api::{DesiredState, Node, NodeState, Placement, Service, Task, TaskState, Timestamp};
use spec::{Condition, ServiceSpec};

mod cluster;
#[cfg(test)]
mod oracle;
mod ports;
mod rollout;

use cluster::{Room, Rooms};
use ports::HostPort;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub place: Vec<Placement>,
    pub stop: Vec<String>,
    /// Service → why some of its replicas cannot be placed.
    pub pending: Vec<(String, String)>,
    /// Services whose rollout is done: every slot holds an updated task of the new version.
    pub completed: Vec<String>,
    /// Tasks of a rollout's new version that ran past their readiness deadline unready.
    pub stalled: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.place.is_empty()
            && self.stop.is_empty()
            && self.completed.is_empty()
            && self.stalled.is_empty()
    }
}

/// A full pass: O((tasks + nodes) · log nodes), plus one scan of the nodes for each service
/// that has replicas left without room (to find that there is none, and say why).
/// `now` is what rollouts measure their monitor and delay by (`rollout.rs`).
pub fn plan(
    services: &BTreeMap<String, Service>,
    tasks: &BTreeMap<String, Task>,
    nodes: &BTreeMap<String, Node>,
    now: Timestamp,
) -> Plan {
    plan_in(services, tasks, nodes, None, now)
}

/// A pass over the services named in `only`, against the room the whole cluster has left: the
/// tasks of every other service stay as they are and only take room. Names in `only` that are
/// no longer services get their tasks stopped.
///
/// It equals [`plan`] when every service outside `only` is settled: neither it nor its tasks
/// changed since a full plan was applied, and it had no replica waiting for room. Such a
/// service has every slot filled and nothing to stop, whatever became of the nodes since (a
/// task fills its slot on any node), so a full pass would only charge its tasks to their
/// nodes, which this pass does too. Services still compete for room, and that is why the
/// caller must name every service with waiting replicas even when nothing of it changed: a
/// service that scales down or goes away frees room a waiting one may now take, and so does a
/// node that joins or recovers. Services are placed in name order as in a full pass, so a
/// changed service takes room before a waiting one named after it, exactly as it would there.
///
/// Costs one look at each task, which is most of a full pass that has nothing to place: a
/// node's room left is the sum of what runs there. The lookups are cheap (a task of the same
/// service as the one before needs none), and only the named services are placed.
pub fn plan_services(
    services: &BTreeMap<String, Service>,
    tasks: &BTreeMap<String, Task>,
    nodes: &BTreeMap<String, Node>,
    only: &BTreeSet<String>,
    now: Timestamp,
) -> Plan {
    plan_in(services, tasks, nodes, Some(only), now)
}

/// One service this pass plans, and what its kept tasks hold.
struct Planned<'a> {
    name: &'a str,
    service: &'a Service,
    requests: (u64, u64),
    /// The fixed host ports of its current spec.
    ports: Vec<HostPort>,
    /// Slots its kept tasks on a node fill.
    filled: Vec<u32>,
    /// Slots where a kept task on a node that is not draining is ready.
    ready: Vec<u32>,
    /// Its kept tasks on draining nodes, by slot: they fill nothing, and stop once another task
    /// of their slot is ready.
    draining: Vec<(u32, &'a str)>,
    /// The room of each of its kept tasks, once per task.
    rooms: Vec<usize>,
    /// While a rollout is under way: its placed tasks of the version rolled out, and its tasks
    /// of other versions, each with its slot.
    current: Vec<(u32, &'a Task)>,
    old: Vec<(u32, &'a Task)>,
}

impl Planned<'_> {
    /// Whether tasks of older versions are being replaced slot by slot.
    fn rolling(&self) -> bool {
        !self.service.removing && self.service.rollout.as_ref().is_some_and(|r| r.active())
    }
}

/// Who a task belongs to, for this pass.
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// A service this pass plans: its index among them.
    Planned(usize),
    /// A service outside the pass, or a name outside it that is no longer a service: the task
    /// stays and takes its room.
    Settled(Option<&'a Service>),
    /// A service in the pass that no longer exists: its tasks stop.
    Gone,
}

/// Looks up tasks' owners, remembering the last one: the store names tasks after their
/// service, so in id order a service's tasks come one after another and most lookups are a
/// string comparison.
struct Owners<'a> {
    services: &'a BTreeMap<String, Service>,
    only: Option<&'a BTreeSet<String>>,
    planned: HashMap<&'a str, usize>,
    last: Option<(&'a str, Owner<'a>)>,
}

impl<'a> Owners<'a> {
    fn of(&mut self, service: &'a str) -> Owner<'a> {
        if let Some((name, owner)) = self.last
            && name == service
        {
            return owner;
        }
        let owner = match self.planned.get(service) {
            Some(i) => Owner::Planned(*i),
            None if self.only.is_none_or(|o| o.contains(service)) => Owner::Gone,
            None => Owner::Settled(self.services.get(service)),
        };
        self.last = Some((service, owner));
        owner
    }
}

fn plan_in(
    services: &BTreeMap<String, Service>,
    tasks: &BTreeMap<String, Task>,
    nodes: &BTreeMap<String, Node>,
    only: Option<&BTreeSet<String>>,
    now: Timestamp,
) -> Plan {
    let mut planned = planned_services(services, only);
    let mut owners = Owners {
        services,
        only,
        planned: (planned.iter().enumerate())
            .map(|(i, p)| (p.name, i))
            .collect(),
        last: None,
    };
    let mut plan = Plan::default();
    let mut rooms = Rooms::new(nodes.values());
    let mut dependencies: HashMap<&str, Vec<&Task>> = (planned.iter())
        .flat_map(|p| p.service.spec.depends_on.keys())
        .map(|dep| (dep.as_str(), Vec::new()))
        .collect();
    for task in tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running)
    {
        if let Some(seen) = dependencies.get_mut(task.service.as_str()) {
            seen.push(task);
        }
        let node = task.node.as_deref();
        match owners.of(&task.service) {
            Owner::Settled(service) => {
                if let Some(node) = node {
                    let ports: Vec<HostPort> = service
                        .map(|s| ports::fixed(ports::spec_of(s, task)).collect())
                        .unwrap_or_default();
                    rooms.charge(node, service.map(|s| requests(&s.spec)), &ports);
                }
            }
            Owner::Gone => plan.stop.push(task.id.clone()),
            Owner::Planned(i) => {
                let p = &mut planned[i];
                if p.rolling() && task.version != p.service.version && keeps_slot(p.service, task) {
                    // An older version's task runs until the rollout reaches its slot.
                    if let Some(node) = node {
                        let ports: Vec<HostPort> =
                            ports::fixed(ports::spec_of(p.service, task)).collect();
                        p.rooms.extend(rooms.charge(node, Some(p.requests), &ports));
                    }
                    p.old.push((task.slot, task));
                    continue;
                }
                if !keeps(p.service, task) {
                    plan.stop.push(task.id.clone());
                    continue;
                }
                // A task without a node is a replica still waiting for room: its slot is not
                // filled.
                let Some(node) = node else { continue };
                p.rooms
                    .extend(rooms.charge(node, Some(p.requests), &p.ports));
                match nodes.get(node) {
                    // Its replacement is placed elsewhere first; it stops once that is ready.
                    Some(n) if n.draining => p.draining.push((task.slot, &task.id)),
                    n => {
                        if p.rolling() && n.is_some_and(|n| !n.state.is_lost()) {
                            p.current.push((task.slot, task));
                        }
                        p.filled.push(task.slot);
                        if task.ready && n.is_some_and(|n| !n.state.is_lost()) {
                            p.ready.push(task.slot);
                        }
                    }
                }
            }
        }
    }
    for p in &mut planned {
        let moved = (p.draining.iter()).filter(|(slot, _)| p.ready.contains(slot));
        plan.stop.extend(moved.map(|(_, id)| id.to_string()));
        if let Some(r) = p.service.rollout.as_ref().filter(|_| p.rolling()) {
            let step = rollout::step(r, &p.service.spec, &p.current, &p.old, now);
            plan.stop.extend(step.stop);
            plan.stalled.extend(step.stalled);
            p.filled.extend(step.hold);
            if step.done {
                plan.completed.push(p.name.to_string());
            }
        }
    }
    let mut cluster = rooms.index();
    for p in planned.iter_mut().filter(|p| !p.service.removing) {
        let spec = &p.service.spec;
        let mut open = open_slots(&mut p.filled, spec.replicas).peekable();
        if open.peek().is_none() {
            // Every slot is filled: nothing to index for this service.
            continue;
        }
        if let Some(why) = held(spec, services, &dependencies, nodes) {
            plan.pending.push((p.name.to_string(), why));
            continue;
        }
        let mut counts: HashMap<usize, u32> = HashMap::new();
        for room in &p.rooms {
            *counts.entry(*room).or_default() += 1;
        }
        let mut placing = cluster.start(spec, counts);
        let mut unplaced = 0;
        for slot in open {
            // Rooms only shrink while a service is placed: once none fits, none will.
            match (unplaced == 0)
                .then(|| cluster.pick(&mut placing))
                .flatten()
            {
                Some(node) => plan.place.push(Placement {
                    service: p.name.to_string(),
                    slot,
                    node: node.name.clone(),
                }),
                None => unplaced += 1,
            }
        }
        if unplaced > 0 {
            let why = why_unplaced(&cluster.rooms, spec, unplaced);
            plan.pending.push((p.name.to_string(), why));
        }
    }
    plan
}

/// The services a pass plans, in name order: all of them, or those named in `only`.
fn planned_services<'a>(
    services: &'a BTreeMap<String, Service>,
    only: Option<&BTreeSet<String>>,
) -> Vec<Planned<'a>> {
    services
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o.contains(*name)))
        .map(|(name, service)| Planned {
            name,
            service,
            requests: requests(&service.spec),
            ports: ports::fixed(&service.spec).collect(),
            filled: Vec::new(),
            ready: Vec::new(),
            draining: Vec::new(),
            rooms: Vec::new(),
            current: Vec::new(),
            old: Vec::new(),
        })
        .collect()
}

/// Whether a task that should run keeps running: its service is not going away, it is of the
/// current version, and its slot is still wanted.
fn keeps(service: &Service, task: &Task) -> bool {
    service.version == task.version && keeps_slot(service, task)
}

/// Whether the service still wants the task's slot.
fn keeps_slot(service: &Service, task: &Task) -> bool {
    !service.removing && task.slot <= service.spec.replicas
}

/// The slots `1..=replicas` that no kept task fills, in order (sorts `filled`).
fn open_slots(filled: &mut [u32], replicas: u32) -> impl Iterator<Item = u32> + '_ {
    filled.sort_unstable();
    let mut filled = filled.iter().copied().peekable();
    (1..=replicas).filter(move |slot| {
        while filled.next_if(|f| f < slot).is_some() {}
        filled.peek() != Some(slot)
    })
}

/// A replica's CPU (millicores) and memory (bytes) requests.
fn requests(spec: &ServiceSpec) -> (u64, u64) {
    let r = &spec.resources.requests;
    (
        r.cpu.map_or(0, |c| c.millis()),
        r.memory.map_or(0, |m| m.bytes()),
    )
}

/// Why a service's open slots must wait for its dependencies, naming the first whose condition
/// does not hold yet; `None` when every one holds. `seen` holds the tasks wanted running of
/// each dependency.
fn held(
    spec: &ServiceSpec,
    services: &BTreeMap<String, Service>,
    seen: &HashMap<&str, Vec<&Task>>,
    nodes: &BTreeMap<String, Node>,
) -> Option<String> {
    for (dep, condition) in &spec.depends_on {
        let Some(service) = services.get(dep).filter(|s| !s.removing) else {
            return Some(format!(
                "held until {dep} is deployed ({condition}): there is no such service"
            ));
        };
        let tasks = seen.get(dep.as_str()).map_or(&[][..], Vec::as_slice);
        let done = reached(service, tasks, *condition, nodes);
        let wanted = service.spec.replicas;
        if done < wanted {
            return Some(format!(
                "held until {dep} is {} ({condition}): {done} of its {wanted} replicas so far",
                condition.past_participle()
            ));
        }
    }
    None
}

/// How many slots of `service` have a task of its current version that meets `condition`, on
/// a node that is not lost.
fn reached(
    service: &Service,
    tasks: &[&Task],
    condition: Condition,
    nodes: &BTreeMap<String, Node>,
) -> u32 {
    let meets = |t: &Task| match condition {
        Condition::ServiceStarted => {
            t.started_at.is_some() || matches!(t.state, TaskState::Starting | TaskState::Running)
        }
        Condition::ServiceHealthy => t.ready,
        Condition::ServiceCompletedSuccessfully => {
            t.state == TaskState::Exited && t.exit_code == Some(0)
        }
    };
    let on_live_node = |t: &Task| {
        let node = t.node.as_ref().and_then(|n| nodes.get(n));
        node.is_some_and(|n| !n.state.is_lost())
    };
    let mut slots: Vec<u32> = (tasks.iter())
        .filter(|t| t.version == service.version && keeps_slot(service, t))
        .filter(|t| on_live_node(t) && meets(t))
        .map(|t| t.slot)
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots.len() as u32
}

fn why_unplaced(rooms: &[Room], spec: &ServiceSpec, unplaced: u32) -> String {
    let driver = spec.driver.to_string();
    let ready: Vec<&Room> = rooms
        .iter()
        .filter(|r| r.node.state == NodeState::Ready)
        .collect();
    let reason = if rooms.is_empty() {
        "no node has registered yet".to_string()
    } else if ready.is_empty() {
        "no node is ready".to_string()
    } else if !ready.iter().any(|r| r.node.drivers.contains(&driver)) {
        format!("no ready node supports the {driver} driver")
    } else if ready.iter().all(|r| r.node.memory_pressure) {
        "every ready node is under memory pressure".to_string()
    } else if ready
        .iter()
        .all(|r| r.node.memory_pressure || r.node.draining)
    {
        "every ready node is draining or under memory pressure".to_string()
    } else if let Some(taken) = ports_taken(&ready, spec) {
        taken
    } else {
        let (cpu, mem) = requests(spec);
        let calm = ready
            .iter()
            .filter(|r| !r.node.memory_pressure && !r.node.draining);
        let best_cpu = calm.clone().map(|r| r.cpu_free).max().unwrap_or(0);
        let best_mem = calm.map(|r| r.memory_free).max().unwrap_or(0);
        format!(
            "insufficient resources: each replica requests {} CPU and {} memory; the roomiest node has {} CPU and {} memory left",
            spec::Cpu(cpu),
            spec::Memory(mem),
            spec::Cpu(best_cpu),
            spec::Memory(best_mem),
        )
    };
    format!(
        "{unplaced} of {} replicas cannot be placed: {reason}",
        spec.replicas
    )
}

/// When every calm node that could run the service and has room for it holds one of its fixed
/// host ports already: which ports, on how many nodes.
fn ports_taken(ready: &[&Room], spec: &ServiceSpec) -> Option<String> {
    let wanted: Vec<HostPort> = ports::fixed(spec).collect();
    if wanted.is_empty() {
        return None;
    }
    let (cpu, mem) = requests(spec);
    let driver = spec.driver.to_string();
    let roomy: Vec<&&Room> = (ready.iter())
        .filter(|r| !r.node.memory_pressure && !r.node.draining)
        .filter(|r| r.node.drivers.contains(&driver))
        .filter(|r| r.cpu_free >= cpu && r.memory_free >= mem)
        .collect();
    if roomy.is_empty() || roomy.iter().any(|r| ports::free(&r.claimed, &wanted)) {
        return None;
    }
    let mut taken: Vec<HostPort> = Vec::new();
    for room in &roomy {
        for port in ports::taken(&room.claimed, &wanted) {
            if !taken.contains(&port) {
                taken.push(port);
            }
        }
    }
    let names: Vec<String> = taken.iter().map(|p| format!("host port {p}")).collect();
    let nodes = match roomy.len() {
        1 => "the one node".to_string(),
        n => format!("all {n} nodes"),
    };
    Some(format!(
        "{} already taken on {nodes} with room for it (a node gives a fixed host port to one \
         task only)",
        names.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::{Capacity, Timestamp};

    /// When the plans of these tests are made: no task here is in a rollout.
    pub(crate) const NOW: Timestamp = Timestamp(0);
    use proptest::prelude::*;

    mod props;

    fn node(name: &str, cpu: u64, mem: u64) -> Node {
        Node {
            name: name.into(),
            address: String::new(),
            state: NodeState::Ready,
            capacity: Capacity {
                cpu_millis: cpu,
                memory_bytes: mem,
            },
            allocatable: Capacity {
                cpu_millis: cpu,
                memory_bytes: mem,
            },
            memory_pressure: false,
            draining: false,
            notes: vec![],
            drivers: vec!["process".into()],
            version: String::new(),
            registered_at: Timestamp(0),
            state_since: Timestamp(0),
            silent_since: None,
        }
    }

    fn service(name: &str, replicas: u32, cpu: u64) -> Service {
        let mut spec = ServiceSpec::process(name, &["app"]);
        spec.replicas = replicas;
        spec.resources.requests.cpu = Some(spec::Cpu(cpu));
        Service {
            spec,
            version: 1,
            removing: false,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            latest_version: 1,
            revisions: Vec::new(),
            rollout: None,
            vip: None,
        }
    }

    pub(crate) fn task(service: &str, slot: u32, node: &str, version: u64) -> Task {
        Task {
            id: format!("{service}.{slot}.{version}"),
            service: service.into(),
            slot,
            version,
            node: Some(node.into()),
            desired: DesiredState::Running,
            state: TaskState::Running,
            ready: true,
            restarts: 0,
            qos: spec::QosClass::BestEffort,
            pid: None,
            container_id: None,
            ports: BTreeMap::new(),
            started_at: None,
            ready_since: Some(Timestamp(0)),
            status_seq: 0,
            exit_code: None,
            message: None,
            last_exit: None,
            next_start: None,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            node_state: None,
        }
    }

    fn by_name<T>(items: Vec<(&str, T)>) -> BTreeMap<String, T> {
        items.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn fills_every_slot_spreading_across_nodes() {
        let services = by_name(vec![("web", service("web", 3, 100))]);
        let nodes = by_name(vec![
            ("a", node("a", 4000, 1 << 30)),
            ("b", node("b", 4000, 1 << 30)),
        ]);
        let plan = plan(&services, &BTreeMap::new(), &nodes, NOW);
        let placed: Vec<(u32, &str)> = plan
            .place
            .iter()
            .map(|p| (p.slot, p.node.as_str()))
            .collect();
        assert_eq!(placed, vec![(1, "a"), (2, "b"), (3, "a")]);
        assert!(plan.stop.is_empty() && plan.pending.is_empty());
    }

    #[test]
    fn a_draining_node_gets_nothing_new_and_its_tasks_stop_once_replaced_and_ready() {
        let services = by_name(vec![("web", service("web", 2, 0))]);
        let mut tasks = by_name(vec![
            ("web.1.1", task("web", 1, "a", 1)),
            ("web.2.1", task("web", 2, "b", 1)),
        ]);
        let mut a = node("a", 1000, 1 << 30);
        a.draining = true;
        let nodes = by_name(vec![("a", a), ("b", node("b", 1000, 1 << 30))]);
        let first = plan(&services, &tasks, &nodes, NOW);
        let to_b = Placement {
            service: "web".into(),
            slot: 1,
            node: "b".into(),
        };
        assert_eq!(first.place, vec![to_b.clone()], "replaced on b first");
        assert!(first.stop.is_empty(), "the old one keeps serving meanwhile");
        let mut replacement = task("web", 1, "b", 1);
        replacement.id = "web.1.2".into();
        replacement.ready = false;
        tasks.insert(replacement.id.clone(), replacement);
        let waiting = plan(&services, &tasks, &nodes, NOW);
        assert!(waiting.is_empty(), "nothing until it is ready: {waiting:?}");
        tasks.get_mut("web.1.2").unwrap().ready = true;
        let moved = plan(&services, &tasks, &nodes, NOW);
        assert_eq!(moved.stop, vec!["web.1.1".to_string()]);
        assert!(moved.place.is_empty());
        // A replacement on a node that is lost does not count, however ready it said it was.
        let mut lost = nodes.clone();
        lost.get_mut("b").unwrap().state = NodeState::Down;
        assert!(plan(&services, &tasks, &lost, NOW).stop.is_empty());
        // With nowhere else to go, the task stays and the replica says why it waits.
        let only_a = by_name(vec![("a", nodes["a"].clone())]);
        let stuck = plan(
            &services,
            &by_name(vec![("web.1.1", task("web", 1, "a", 1))]),
            &only_a,
            NOW,
        );
        assert!(stuck.stop.is_empty() && stuck.place.is_empty());
        assert!(
            stuck.pending[0].1.contains("every ready node is draining"),
            "{:?}",
            stuck.pending
        );
    }

    #[test]
    fn scaling_down_stops_the_highest_slots() {
        let services = by_name(vec![("web", service("web", 1, 0))]);
        let tasks = by_name(vec![
            ("web.1.1", task("web", 1, "a", 1)),
            ("web.2.1", task("web", 2, "a", 1)),
        ]);
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30))]);
        let plan = plan(&services, &tasks, &nodes, NOW);
        assert_eq!(plan.stop, vec!["web.2.1".to_string()]);
        assert!(plan.place.is_empty());
    }

    #[test]
    fn a_new_version_replaces_old_tasks() {
        let mut svc = service("web", 1, 0);
        svc.version = 2;
        let services = by_name(vec![("web", svc)]);
        let tasks = by_name(vec![("web.1.1", task("web", 1, "a", 1))]);
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30))]);
        let plan = plan(&services, &tasks, &nodes, NOW);
        assert_eq!(plan.stop, vec!["web.1.1".to_string()]);
        assert_eq!(
            plan.place,
            vec![Placement {
                service: "web".into(),
                slot: 1,
                node: "a".into()
            }]
        );
    }

    #[test]
    fn replicas_that_do_not_fit_wait_with_a_reason() {
        let services = by_name(vec![("big", service("big", 3, 600))]);
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30))]);
        let plan = plan(&services, &BTreeMap::new(), &nodes, NOW);
        assert_eq!(plan.place.len(), 1);
        assert_eq!(
            plan.pending,
            vec![(
                "big".to_string(),
                "2 of 3 replicas cannot be placed: insufficient resources: each replica requests 600m CPU and 0 memory; the roomiest node has 400m CPU and 1Gi memory left".to_string()
            )]
        );
    }

    #[test]
    fn no_node_means_pending_not_placed() {
        let services = by_name(vec![("web", service("web", 2, 0))]);
        let plan = plan(&services, &BTreeMap::new(), &BTreeMap::new(), NOW);
        assert!(plan.place.is_empty());
        assert_eq!(
            plan.pending[0].1,
            "2 of 2 replicas cannot be placed: no node has registered yet"
        );
    }

    #[test]
    fn down_nodes_and_missing_drivers_are_skipped() {
        let mut docker = service("db", 1, 0);
        docker.spec.driver = spec::DriverKind::Docker;
        let services = by_name(vec![("db", docker)]);
        let mut down = node("down", 1000, 1 << 30);
        down.state = NodeState::Down;
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30)), ("down", down)]);
        let plan = plan(&services, &BTreeMap::new(), &nodes, NOW);
        assert!(plan.place.is_empty());
        assert!(
            plan.pending[0]
                .1
                .ends_with("no ready node supports the docker driver"),
            "{:?}",
            plan.pending
        );
    }

    #[test]
    fn nodes_under_memory_pressure_get_nothing_new() {
        let services = by_name(vec![("web", service("web", 1, 0))]);
        let mut pressed = node("a", 1000, 1 << 30);
        pressed.memory_pressure = true;
        let nodes = by_name(vec![("a", pressed.clone())]);
        let plan = plan(&services, &BTreeMap::new(), &nodes, NOW);
        assert!(plan.place.is_empty());
        assert!(
            plan.pending[0]
                .1
                .ends_with("every ready node is under memory pressure")
        );
        let nodes = by_name(vec![("a", pressed), ("b", node("b", 1000, 1 << 30))]);
        assert_eq!(
            super::plan(&services, &BTreeMap::new(), &nodes, NOW).place[0].node,
            "b"
        );
    }

    #[test]
    fn placement_uses_allocatable_not_capacity() {
        let services = by_name(vec![("web", service("web", 2, 500))]);
        let mut a = node("a", 1000, 1 << 30);
        a.allocatable.cpu_millis = 900;
        let plan = plan(&services, &BTreeMap::new(), &by_name(vec![("a", a)]), NOW);
        assert_eq!(plan.place.len(), 1, "two 500m replicas do not fit in 900m");
    }

    #[test]
    fn removed_service_tasks_stop() {
        let mut svc = service("web", 2, 0);
        svc.removing = true;
        let services = by_name(vec![("web", svc)]);
        let tasks = by_name(vec![("web.1.1", task("web", 1, "a", 1))]);
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30))]);
        let plan = plan(&services, &tasks, &nodes, NOW);
        assert_eq!(plan.stop, vec!["web.1.1".to_string()]);
        assert!(plan.place.is_empty());
    }

    #[test]
    fn a_request_past_i64_never_makes_room() {
        // 2^64 - 100000 millicores: as an i64 it was -100 cores, which added room on the node.
        let mut huge = service("huge", 1, 18_446_744_073_709_451_616);
        huge.spec.resources.requests.memory = Some(spec::Memory(u64::MAX));
        let services = by_name(vec![("huge", huge), ("web", service("web", 10, 1000))]);
        let tasks = by_name(vec![("huge.1.1", task("huge", 1, "a", 1))]);
        let nodes = by_name(vec![("a", node("a", 1900, 1 << 30))]);
        let plan = plan(&services, &tasks, &nodes, NOW);
        assert!(plan.place.is_empty(), "{:?}", plan.place);
        let services = by_name(vec![("web", service("web", 10, 1000))]);
        let huge_alone = by_name(vec![("huge", service("huge", 1, u64::MAX))]);
        assert_eq!(
            super::plan(&services, &BTreeMap::new(), &nodes, NOW)
                .place
                .len(),
            1,
            "one 1-CPU replica fits in 1.9 CPU"
        );
        assert!(
            super::plan(&huge_alone, &BTreeMap::new(), &nodes, NOW)
                .place
                .is_empty()
        );
    }

    fn with_host_port(mut svc: Service, port: u16, ip: Option<&str>) -> Service {
        let mut p = spec::PortSpec::named("http");
        p.host_port = Some(port);
        p.host_ip = ip.map(str::to_string);
        svc.spec.ports.push(p);
        svc
    }

    #[test]
    fn replicas_needing_one_host_port_get_a_node_each_and_the_rest_wait_naming_it() {
        let services = by_name(vec![(
            "web",
            with_host_port(service("web", 3, 0), 8080, None),
        )]);
        let nodes = by_name(vec![
            ("a", node("a", 1000, 1 << 30)),
            ("b", node("b", 1000, 1 << 30)),
        ]);
        let plan = plan(&services, &BTreeMap::new(), &nodes, NOW);
        let placed: Vec<&str> = plan.place.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(placed, ["a", "b"]);
        assert_eq!(
            plan.pending,
            vec![(
                "web".to_string(),
                "1 of 3 replicas cannot be placed: host port 8080/tcp already taken on all 2 \
                 nodes with room for it (a node gives a fixed host port to one task only)"
                    .to_string()
            )]
        );
    }

    #[test]
    fn another_service_holding_the_port_keeps_its_node_and_other_addresses_do_not_clash() {
        let services = by_name(vec![
            ("api", with_host_port(service("api", 1, 0), 8080, None)),
            ("old", with_host_port(service("old", 1, 0), 8080, None)),
            (
                "one",
                with_host_port(service("one", 1, 0), 9000, Some("127.0.0.1")),
            ),
            (
                "two",
                with_host_port(service("two", 1, 0), 9000, Some("127.0.0.2")),
            ),
        ]);
        let tasks = by_name(vec![("old.1.1", task("old", 1, "a", 1))]);
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30))]);
        let plan = plan(&services, &tasks, &nodes, NOW);
        let placed: Vec<&str> = plan.place.iter().map(|p| p.service.as_str()).collect();
        assert_eq!(placed, ["one", "two"], "two addresses, one port each");
        assert_eq!(plan.pending.len(), 1);
        assert!(
            plan.pending[0].1.ends_with("host port 8080/tcp already taken on the one node with room for it (a node gives a fixed host port to one task only)"),
            "{:?}",
            plan.pending
        );
        // UDP beside TCP is no clash.
        let mut udp = with_host_port(service("api", 1, 0), 8080, None);
        udp.spec.ports[0].protocol = spec::Protocol::Udp;
        let services = by_name(vec![("api", udp), ("old", services["old"].clone())]);
        assert_eq!(super::plan(&services, &tasks, &nodes, NOW).place.len(), 1);
    }

    fn depends(mut svc: Service, on: &str, condition: spec::Condition) -> Service {
        svc.spec.depends_on.insert(on.to_string(), condition);
        svc
    }

    #[test]
    fn a_dependent_waits_until_every_replica_of_its_dependency_meets_the_condition() {
        let services = by_name(vec![
            ("db", service("db", 2, 0)),
            (
                "web",
                depends(service("web", 1, 0), "db", spec::Condition::ServiceHealthy),
            ),
        ]);
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30))]);
        let first = plan(&services, &BTreeMap::new(), &nodes, NOW);
        let placed: Vec<&str> = first.place.iter().map(|p| p.service.as_str()).collect();
        assert_eq!(placed, ["db", "db"], "the dependency first");
        assert_eq!(
            first.pending,
            vec![(
                "web".to_string(),
                "held until db is ready (service_healthy): 0 of its 2 replicas so far".to_string()
            )]
        );
        let mut tasks = by_name(vec![
            ("db.1.1", task("db", 1, "a", 1)),
            ("db.2.1", task("db", 2, "a", 1)),
        ]);
        tasks.get_mut("db.2.1").unwrap().ready = false;
        let half = plan(&services, &tasks, &nodes, NOW);
        assert!(half.place.is_empty());
        assert!(
            half.pending[0].1.ends_with("1 of its 2 replicas so far"),
            "{half:?}"
        );
        tasks.get_mut("db.2.1").unwrap().ready = true;
        let ready = plan(&services, &tasks, &nodes, NOW);
        assert_eq!(ready.place.len(), 1);
        assert!(ready.pending.is_empty());
        // Once placed, a dependent keeps running whatever becomes of its dependency.
        tasks.insert("web.1.1".into(), task("web", 1, "a", 1));
        tasks.get_mut("db.1.1").unwrap().ready = false;
        assert!(plan(&services, &tasks, &nodes, NOW).is_empty());
    }

    #[test]
    fn started_and_completed_conditions_read_the_tasks_state() {
        let nodes = by_name(vec![("a", node("a", 1000, 1 << 30))]);
        let mut job = task("job", 1, "a", 1);
        (job.state, job.ready) = (TaskState::Starting, false);
        let tasks = by_name(vec![("job.1.1", job.clone())]);
        let services = |condition| {
            by_name(vec![
                ("job", service("job", 1, 0)),
                ("app", depends(service("app", 1, 0), "job", condition)),
            ])
        };
        let started = plan(
            &services(spec::Condition::ServiceStarted),
            &tasks,
            &nodes,
            NOW,
        );
        assert_eq!(started.place.len(), 1, "starting is started");
        let done = services(spec::Condition::ServiceCompletedSuccessfully);
        assert_eq!(plan(&done, &tasks, &nodes, NOW).place.len(), 0);
        (job.state, job.exit_code) = (TaskState::Exited, Some(1));
        let failed = by_name(vec![("job.1.1", job.clone())]);
        assert_eq!(
            plan(&done, &failed, &nodes, NOW).place.len(),
            0,
            "exit 1 is no success"
        );
        job.exit_code = Some(0);
        let completed = by_name(vec![("job.1.1", job.clone())]);
        assert_eq!(plan(&done, &completed, &nodes, NOW).place.len(), 1);
        // A dependency on a lost node, or one that is gone, holds the dependent.
        let mut lost = nodes.clone();
        lost.get_mut("a").unwrap().state = NodeState::Down;
        let mut b = node("b", 1000, 1 << 30);
        b.name = "b".into();
        lost.insert("b".into(), b);
        assert_eq!(plan(&done, &completed, &lost, NOW).place.len(), 0);
        let alone = by_name(vec![("app", done["app"].clone())]);
        assert_eq!(
            plan(&alone, &BTreeMap::new(), &nodes, NOW).pending[0].1,
            "held until job is deployed (service_completed_successfully): there is no such service"
        );
    }

    proptest! {
        /// Whatever the demand, even requests near u64::MAX and nodes already running tasks, a
        /// plan never overcommits a node and fills each slot at most once.
        #[test]
        fn never_overcommits(
            demands in proptest::collection::vec(
                (1u32..6, any::<u64>(), any::<u64>(), any::<bool>()),
                1..6,
            ),
            capacities in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..4),
        ) {
            let services: BTreeMap<String, Service> = demands
                .iter()
                .enumerate()
                .map(|(i, (n, cpu, mem, small))| {
                    // Half the services ask for amounts a node can hold, so plans place some.
                    let (cpu, mem) = if *small { (cpu % 2000, mem % (1 << 31)) } else { (*cpu, *mem) };
                    let mut svc = service(&format!("s{i}"), *n, cpu);
                    svc.spec.resources.requests.memory = Some(spec::Memory(mem));
                    (format!("s{i}"), svc)
                })
                .collect();
            let nodes: BTreeMap<String, Node> = capacities
                .iter()
                .enumerate()
                .map(|(i, (cpu, mem))| {
                    let (cpu, mem) = (cpu % 4000, mem % (1 << 32));
                    (format!("n{i}"), node(&format!("n{i}"), cpu, mem))
                })
                .collect();
            // Some tasks already run: the first slot of every service on the first node.
            let running: BTreeMap<String, Task> = services
                .keys()
                .map(|name| (format!("{name}.1.1"), task(name, 1, "n0", 1)))
                .collect();
            let plan = plan(&services, &running, &nodes, NOW);
            let request = |name: &str| {
                let r = &services[name].spec.resources.requests;
                (
                    u128::from(r.cpu.map_or(0, |c| c.0)),
                    u128::from(r.memory.map_or(0, |m| m.0)),
                )
            };
            for (name, n) in &nodes {
                let (cpu_before, mem_before) = running
                    .values()
                    .filter(|t| t.node.as_deref() == Some(name))
                    .fold((0u128, 0u128), |(c, m), t| {
                        let (rc, rm) = request(&t.service);
                        (c + rc, m + rm)
                    });
                let (cpu, mem) = plan
                    .place
                    .iter()
                    .filter(|p| &p.node == name)
                    .fold((0u128, 0u128), |(c, m), p| {
                        let (rc, rm) = request(&p.service);
                        (c + rc, m + rm)
                    });
                if cpu + mem > 0 {
                    // Whatever was placed fits beside what already ran there.
                    prop_assert!(cpu_before + cpu <= u128::from(n.allocatable.cpu_millis));
                    prop_assert!(mem_before + mem <= u128::from(n.allocatable.memory_bytes));
                }
            }
            for (name, svc) in &services {
                let mut slots: Vec<u32> = plan.place.iter().filter(|p| &p.service == name).map(|p| p.slot).collect();
                let placed = slots.len() as u32;
                slots.sort_unstable();
                slots.dedup();
                prop_assert_eq!(slots.len() as u32, placed);
                prop_assert!(!slots.contains(&1), "slot 1 already runs");
                let waiting = plan.pending.iter().any(|(s, _)| s == name);
                prop_assert_eq!(placed + 1 == svc.spec.replicas, !waiting);
            }
        }
    }
}
