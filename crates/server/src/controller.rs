//! The leader's controllers. Followers run the same loops but do nothing until they lead.
//!
//! - [`services`]: after an applied change to what placement reads (a fingerprint of the
//!   services, the tasks' placement fields, the nodes and the pending reasons moved), diffs
//!   desired against actual through the pure scheduler and commits the plan as one `Reconcile`
//!   entry. Status reports that only move a task's state or readiness plan nothing; a full pass
//!   every [`FULL_PASS`] is the safety net.
//! - [`nodes`]: keeps each node's last heartbeat in memory and commits only transitions
//!   (ready → suspect → down, and back to ready).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::mem::discriminant;
use std::time::Duration;

use api::NodeState;
use store::{Command, State};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Server, now};

/// A node whose heartbeats (every 500 ms) stop for 1.5 s is suspect: three beats missed.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(1_500);
/// Down after 5 s of silence. Its work stays put for now: moving it is a per-service policy.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);
const NODE_CHECK: Duration = Duration::from_millis(250);
/// Retry pace for plans that could not be committed.
const RESYNC: Duration = Duration::from_secs(1);
/// A full pass however quiet the fingerprint looks: it guards against a change the fingerprint
/// misses (a hash collision, a field placement reads that it leaves out). Five retry periods: a
/// pass at 100,000 tasks costs tens of milliseconds, so this is about 1% of a core at most.
const FULL_PASS: Duration = Duration::from_secs(5);

/// The inputs the last plan was made from, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    fingerprint: u64,
    at: Instant,
}

pub async fn services(ctx: Server, mut stop: watch::Receiver<bool>) {
    let mut applied = ctx.state.subscribe();
    let mut last = None;
    loop {
        if *stop.borrow() {
            return;
        }
        // A leader that lost office and won it back plans afresh: it cannot know what happened.
        last = if ctx.is_leader() {
            reconcile(&ctx, last).await
        } else {
            None
        };
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Plans when the inputs moved (or a full pass is due) and commits what the plan changes.
/// Returns what was planned, or `None` when the plan could not be committed so the next
/// wake-up plans again.
async fn reconcile(ctx: &Server, last: Option<Planned>) -> Option<Planned> {
    let at = Instant::now();
    let work = ctx.state.read(|s| {
        let fingerprint = fingerprint(s);
        due(last, fingerprint, at).then(|| {
            let plan = scheduler::plan(&s.services, &s.tasks, &s.nodes);
            (fingerprint, plan, s.pending.clone())
        })
    });
    let Some((fingerprint, plan, pending_now)) = work else {
        return last;
    };
    let planned = Some(Planned { fingerprint, at });
    let pending_changed = plan
        .pending
        .iter()
        .cloned()
        .collect::<std::collections::BTreeMap<_, _>>()
        != pending_now;
    if plan.is_empty() && !pending_changed {
        return planned;
    }
    let command = Command::Reconcile {
        place: plan.place,
        stop: plan.stop,
        pending: plan.pending,
        time: now(),
    };
    match ctx.propose(command).await {
        Ok(_) => planned,
        Err(e) => {
            tracing::warn!("cannot commit a placement plan: {e}");
            None
        }
    }
}

/// Whether to plan: nothing planned yet, the inputs moved, or the full pass is due.
fn due(last: Option<Planned>, fingerprint: u64, now: Instant) -> bool {
    last.is_none_or(|l| l.fingerprint != fingerprint || now.duration_since(l.at) >= FULL_PASS)
}

/// A hash of everything [`scheduler::plan`] reads, and of the pending reasons it is compared
/// with: a task's state, readiness, restarts or ports leave it alone. One pass over the state,
/// far cheaper than a plan; the hasher's fixed keys make it stable within the process.
fn fingerprint(s: &State) -> u64 {
    let mut h = DefaultHasher::new();
    for (name, svc) in &s.services {
        // A changed task template bumps the version; the replica count does not.
        (name, svc.version, svc.spec.replicas, svc.removing).hash(&mut h);
    }
    for task in s.tasks.values() {
        (&task.id, &task.service, task.slot, task.version, &task.node).hash(&mut h);
        discriminant(&task.desired).hash(&mut h);
    }
    for node in s.nodes.values() {
        let a = &node.allocatable;
        (
            &node.name,
            node.memory_pressure,
            &node.drivers,
            a.cpu_millis,
            a.memory_bytes,
        )
            .hash(&mut h);
        discriminant(&node.state).hash(&mut h);
    }
    s.pending.hash(&mut h);
    h.finish()
}

pub async fn nodes(ctx: Server, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(NODE_CHECK) => {}
            _ = stop.changed() => return,
        }
        let leader = ctx.is_leader();
        if leader && !was_leader {
            // A new leader knows no heartbeat yet: every node starts with a fresh grace period.
            let names: Vec<String> = ctx.state.read(|s| s.nodes.keys().cloned().collect());
            let mut beats = ctx.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
            for name in names {
                beats.insert(name, Instant::now());
            }
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        for (name, state) in transitions(&ctx) {
            let command = Command::SetNodeState {
                node: name,
                state,
                time: now(),
            };
            if let Err(e) = ctx.propose(command).await {
                tracing::warn!("cannot record a node state change: {e}");
            }
        }
    }
}

fn transitions(ctx: &Server) -> Vec<(String, NodeState)> {
    let nodes: Vec<(String, NodeState)> = ctx.state.read(|s| {
        s.nodes
            .values()
            .map(|n| (n.name.clone(), n.state))
            .collect()
    });
    let mut beats = ctx.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
    nodes
        .into_iter()
        .filter_map(|(name, current)| {
            let last = *beats.entry(name.clone()).or_insert_with(Instant::now);
            let silent = last.elapsed();
            let next = if silent >= DOWN_AFTER {
                NodeState::Down
            } else if silent >= SUSPECT_AFTER {
                NodeState::Suspect
            } else {
                NodeState::Ready
            };
            (next != current).then_some((name, next))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use api::{
        Capacity, Placement, RegisterRequest, StatusReport, TaskState, TaskStatus, Timestamp,
    };
    use spec::ServiceSpec;

    use super::*;

    const T: Timestamp = Timestamp(1_000);

    /// One service of two replicas, both placed on one registered node.
    fn placed() -> State {
        let mut spec = ServiceSpec::process("web", &["app"]);
        spec.replicas = 2;
        let node = RegisterRequest {
            name: "n1".into(),
            address: "http://n1".into(),
            capacity: Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            allocatable: Capacity::default(),
            drivers: vec!["process".into()],
            notes: vec![],
            version: "test".into(),
        };
        let place = (1..=2)
            .map(|slot| Placement {
                service: "web".into(),
                slot,
                node: "n1".into(),
            })
            .collect();
        let mut s = State::default();
        for c in [
            Command::Deploy {
                services: vec![spec],
                time: T,
            },
            Command::RegisterNode { node, time: T },
            Command::Reconcile {
                place,
                stop: vec![],
                pending: vec![],
                time: T,
            },
        ] {
            s.apply(s.index + 1, &c);
        }
        assert_eq!(s.tasks.len(), 2);
        s
    }

    fn running(id: &str, ready: bool) -> TaskStatus {
        TaskStatus {
            id: id.into(),
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
        }
    }

    #[test]
    fn status_reports_leave_the_fingerprint_alone() {
        let mut s = placed();
        let before = fingerprint(&s);
        let ids: Vec<String> = s.tasks.keys().cloned().collect();
        for ready in [false, true] {
            let report = StatusReport {
                seq: 0,
                tasks: ids.iter().map(|id| running(id, ready)).collect(),
                events: vec![],
                memory_pressure: None,
            };
            let node = "n1".into();
            s.apply(
                s.index + 1,
                &Command::Report {
                    node,
                    report,
                    time: T,
                },
            );
            assert!(s.tasks.values().all(|t| t.ready == ready));
            assert_eq!(fingerprint(&s), before, "ready: {ready}");
        }
    }

    /// A named change to a state.
    type Change = (&'static str, fn(&mut State));

    #[test]
    fn every_placement_input_moves_the_fingerprint() {
        let changes: Vec<Change> = vec![
            ("replicas", |s| {
                s.services.get_mut("web").unwrap().spec.replicas = 3
            }),
            ("version", |s| {
                s.services.get_mut("web").unwrap().version += 1
            }),
            ("removing", |s| {
                s.services.get_mut("web").unwrap().removing = true
            }),
            ("task node", |s| {
                s.tasks.values_mut().next().unwrap().node = None
            }),
            ("task desired", |s| {
                s.tasks.values_mut().next().unwrap().desired = api::DesiredState::Shutdown
            }),
            ("node state", |s| {
                s.nodes.get_mut("n1").unwrap().state = NodeState::Down
            }),
            ("memory pressure", |s| {
                s.nodes.get_mut("n1").unwrap().memory_pressure = true
            }),
            ("allocatable", |s| {
                s.nodes.get_mut("n1").unwrap().allocatable.cpu_millis = 1
            }),
            ("drivers", |s| {
                s.nodes.get_mut("n1").unwrap().drivers.clear()
            }),
            ("pending", |s| {
                s.pending.insert("web".into(), "waiting".into());
            }),
        ];
        let before = fingerprint(&placed());
        for (what, change) in changes {
            let mut s = placed();
            change(&mut s);
            assert_ne!(fingerprint(&s), before, "{what}");
        }
    }

    #[test]
    fn plans_when_inputs_move_or_the_full_pass_is_due() {
        let at = Instant::now();
        let last = Some(Planned { fingerprint: 7, at });
        assert!(due(None, 7, at), "nothing planned yet");
        assert!(
            !due(last, 7, at + FULL_PASS / 2),
            "same inputs, pass not due"
        );
        assert!(due(last, 8, at + FULL_PASS / 2), "inputs moved");
        assert!(due(last, 7, at + FULL_PASS), "full pass due");
    }
}
