//! The placement algorithm as it was before indexes replaced its scans: quadratic, but short
//! enough to trust by reading, and kept whole (its own helpers too) so that a change to the real
//! helpers cannot move both sides at once. Tests hold [`plan`](crate::plan) to it: same inputs,
//! same plan.

use std::collections::BTreeMap;

use api::{DesiredState, Node, NodeState, Placement, Service, Task, TaskState};
use spec::{Condition, ServiceSpec};

use crate::Plan;
use crate::ports::{HostPort, fixed, spec_of};

/// What one node has left to give, as placement goes on.
struct Room<'a> {
    node: &'a Node,
    cpu_free: u64,
    memory_free: u64,
    claimed: Vec<HostPort>,
    tasks: BTreeMap<String, u32>,
    total: u32,
}

pub fn plan(
    services: &BTreeMap<String, Service>,
    tasks: &BTreeMap<String, Task>,
    nodes: &BTreeMap<String, Node>,
) -> Plan {
    let mut plan = Plan::default();
    let live: Vec<&Task> = tasks
        .values()
        .filter(|t| t.desired == DesiredState::Running)
        .collect();
    for task in &live {
        let keep = services.get(&task.service).is_some_and(|s| {
            !s.removing && s.version == task.version && task.slot <= s.spec.replicas
        });
        if !keep {
            plan.stop.push(task.id.clone());
        }
    }
    let mut rooms = rooms(nodes, &live, services, &plan.stop);
    let draining = |t: &Task| {
        let node = t.node.as_ref().and_then(|n| nodes.get(n));
        node.is_some_and(|n| n.draining)
    };
    // A kept task on a draining node stops once another task of its slot, on a node that is
    // neither draining nor lost, is ready; until then it still takes its room.
    let mut moved = Vec::new();
    for (name, service) in services {
        let kept = |t: &&&Task| {
            &t.service == name && t.version == service.version && !plan.stop.contains(&t.id)
        };
        for old in live.iter().filter(kept).filter(|t| draining(t)) {
            let replaced = live.iter().filter(kept).any(|t| {
                let node = t.node.as_ref().and_then(|n| nodes.get(n));
                t.slot == old.slot
                    && t.ready
                    && node.is_some_and(|n| !n.draining && !n.state.is_lost())
            });
            if replaced {
                moved.push(old.id.clone());
            }
        }
    }
    for (name, service) in services.iter().filter(|(_, s)| !s.removing) {
        // A task without a node is a replica still waiting for room: its slot is not filled,
        // nor is it by a task on a draining node.
        let filled: Vec<u32> = live
            .iter()
            .filter(|t| t.node.is_some() && !draining(t))
            .filter(|t| {
                &t.service == name && t.version == service.version && !plan.stop.contains(&t.id)
            })
            .map(|t| t.slot)
            .collect();
        let open = (1..=service.spec.replicas).filter(|s| !filled.contains(s));
        if open.clone().next().is_some()
            && let Some(why) = held(&service.spec, services, &live, nodes)
        {
            plan.pending.push((name.clone(), why));
            continue;
        }
        let mut unplaced = 0;
        for slot in open {
            match pick(&mut rooms, &service.spec) {
                Some(node) => plan.place.push(Placement {
                    service: name.clone(),
                    slot,
                    node,
                }),
                None => unplaced += 1,
            }
        }
        if unplaced > 0 {
            plan.pending
                .push((name.clone(), why_unplaced(&rooms, &service.spec, unplaced)));
        }
    }
    plan.stop.extend(moved);
    plan
}

fn rooms<'a>(
    nodes: &'a BTreeMap<String, Node>,
    live: &[&'a Task],
    services: &BTreeMap<String, Service>,
    stopping: &[String],
) -> Vec<Room<'a>> {
    nodes
        .values()
        .map(|node| {
            let mut room = Room {
                node,
                cpu_free: node.allocatable.cpu_millis,
                memory_free: node.allocatable.memory_bytes,
                claimed: Vec::new(),
                tasks: BTreeMap::new(),
                total: 0,
            };
            let on_node = live
                .iter()
                .filter(|t| t.node.as_deref() == Some(&node.name) && !stopping.contains(&t.id));
            for task in on_node {
                if let Some(svc) = services.get(&task.service) {
                    room.take(&svc.spec);
                    room.claimed.extend(fixed(spec_of(svc, task)));
                }
                *room.tasks.entry(task.service.clone()).or_default() += 1;
                room.total += 1;
            }
            room
        })
        .collect()
}

impl Room<'_> {
    /// Takes a replica's requests out of the room left; a node that runs more than it has (its
    /// allocatable shrank, say) simply has none left.
    fn take(&mut self, spec: &ServiceSpec) {
        let (cpu, mem) = requests(spec);
        self.cpu_free = self.cpu_free.saturating_sub(cpu);
        self.memory_free = self.memory_free.saturating_sub(mem);
    }
}

/// A replica's CPU (millicores) and memory (bytes) requests.
fn requests(spec: &ServiceSpec) -> (u64, u64) {
    let r = &spec.resources.requests;
    (
        r.cpu.map_or(0, |c| c.millis()),
        r.memory.map_or(0, |m| m.bytes()),
    )
}

fn fits(room: &Room, spec: &ServiceSpec) -> bool {
    let (cpu, mem) = requests(spec);
    room.node.state == NodeState::Ready
        && !room.node.memory_pressure
        && !room.node.draining
        && room
            .node
            .drivers
            .iter()
            .any(|d| *d == spec.driver.to_string())
        && room.cpu_free >= cpu
        && room.memory_free >= mem
        && !fixed(spec).any(|w| room.claimed.iter().any(|c| w.clashes(c)))
}

fn pick(rooms: &mut [Room], spec: &ServiceSpec) -> Option<String> {
    let room = rooms.iter_mut().filter(|r| fits(r, spec)).min_by_key(|r| {
        (
            r.tasks.get(&spec.name).copied().unwrap_or(0),
            r.total,
            r.node.name.as_str(),
        )
    })?;
    room.take(spec);
    room.claimed.extend(fixed(spec));
    room.total = room.total.saturating_add(1);
    *room.tasks.entry(spec.name.clone()).or_default() += 1;
    Some(room.node.name.clone())
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

/// Every calm node with the driver and room has a port of the spec taken: which, on how many.
fn ports_taken(ready: &[&Room], spec: &ServiceSpec) -> Option<String> {
    let wanted: Vec<HostPort> = fixed(spec).collect();
    let (cpu, mem) = requests(spec);
    let roomy: Vec<&&Room> = ready
        .iter()
        .filter(|r| !r.node.memory_pressure && !r.node.draining)
        .filter(|r| r.node.drivers.contains(&spec.driver.to_string()))
        .filter(|r| r.cpu_free >= cpu && r.memory_free >= mem)
        .collect();
    let clash = |r: &Room, w: &HostPort| r.claimed.iter().any(|c| w.clashes(c));
    let blocked = |r: &&&Room| wanted.iter().any(|w| clash(r, w));
    if wanted.is_empty() || roomy.is_empty() || !roomy.iter().all(blocked) {
        return None;
    }
    let mut taken: Vec<HostPort> = Vec::new();
    for r in &roomy {
        for w in &wanted {
            if clash(r, w) && !taken.contains(w) {
                taken.push(*w);
            }
        }
    }
    let names: Vec<String> = taken.iter().map(|p| format!("host port {p}")).collect();
    let nodes = if roomy.len() == 1 {
        "the one node".to_string()
    } else {
        format!("all {} nodes", roomy.len())
    };
    Some(format!(
        "{} already taken on {nodes} with room for it (a node gives a fixed host port to one \
         task only)",
        names.join(", ")
    ))
}

/// The first dependency not yet as its condition wants, for every replica.
fn held(
    spec: &ServiceSpec,
    services: &BTreeMap<String, Service>,
    live: &[&Task],
    nodes: &BTreeMap<String, Node>,
) -> Option<String> {
    for (dep, condition) in &spec.depends_on {
        let Some(service) = services.get(dep).filter(|s| !s.removing) else {
            return Some(format!(
                "held until {dep} is deployed ({condition}): there is no such service"
            ));
        };
        let wanted = service.spec.replicas;
        let done = (1..=wanted)
            .filter(|slot| {
                live.iter().any(|t| {
                    let node = t.node.as_ref().and_then(|n| nodes.get(n));
                    let meets = match condition {
                        Condition::ServiceStarted => {
                            t.started_at.is_some()
                                || t.state == TaskState::Starting
                                || t.state == TaskState::Running
                        }
                        Condition::ServiceHealthy => t.ready,
                        Condition::ServiceCompletedSuccessfully => {
                            t.state == TaskState::Exited && t.exit_code == Some(0)
                        }
                    };
                    &t.service == dep
                        && t.version == service.version
                        && t.slot == *slot
                        && node.is_some_and(|n| !n.state.is_lost())
                        && meets
                })
            })
            .count() as u32;
        if done < wanted {
            return Some(format!(
                "held until {dep} is {} ({condition}): {done} of its {wanted} replicas so far",
                condition.past_participle()
            ));
        }
    }
    None
}
