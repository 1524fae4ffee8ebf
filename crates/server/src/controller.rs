//! The leader's controllers. Followers run the same loops but do nothing until they lead.
//!
//! - [`services`]: diffs desired against actual through the pure scheduler and commits the plan
//!   as one `Reconcile` entry. It plans only what moved: the store records, per service, the
//!   index at which something placement reads last changed (`State::placement_index`), and one
//!   index for the nodes. The controller remembers the index it last planned at and plans the
//!   services that moved since, with every service whose replicas wait for room, since room that
//!   another service frees may now fit them. A node change, nothing planned yet (a new term of
//!   office), or [`FULL_PASS`] since the last full pass plans every service. A status report
//!   that only moves a task's state or readiness plans nothing.
//! - [`nodes`]: judges the heartbeats kept in memory ([`Heartbeats`]) with the failure
//!   detector (`detector`), probes silent nodes directly and through other agents, and commits
//!   only transitions (ready → suspect → unreachable | down, and back to ready).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{NodeState, Timestamp};
use futures_util::future::join_all;
use store::{Command, State};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::detector::{Monitor, ProbeOrder, Tick};
use crate::{Server, now};

/// 100 ms: how often the leader judges every node. Phi crosses the down threshold at a moment
/// no tick waits for, so the tick adds up to this much to a detection (a twentieth of the 2 s
/// target); a tick is arithmetic over each node's window of 100 intervals, microseconds for an
/// edge cluster's nodes.
pub const NODE_CHECK: Duration = Duration::from_millis(100);
/// 250 ms: how often a rollout is looked at while one is under way, so a task is counted
/// updated within a quarter second of its monitor's end.
const ROLLOUT_TICK: Duration = Duration::from_millis(250);
/// Retry pace for plans that could not be committed.
const RESYNC: Duration = Duration::from_secs(1);
/// A full pass however quiet the indexes look: it guards against a change they miss (an apply
/// that forgets to record one). A full pass at 100,000 tasks holds the state's read lock for
/// about 20 ms in a release build (`bench/scheduler`), so every 30 s costs under 0.1% of a core
/// and blocks applies as rarely, and a missed change waits 30 s at most.
const FULL_PASS: Duration = Duration::from_secs(30);
/// After a plan, the next waits at least twice as long as it took: however fast entries come,
/// planning takes at most a third of a core and holds the state's read lock (which applying
/// waits on) at most a third of the time. A plan of a small cluster takes microseconds, so it
/// never waits there; entries applied meanwhile are planned together.
const PAUSE_PER_PLAN: u32 = 2;

/// What the controller last planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    /// The state's index when it planned: every change at or below it was planned for.
    index: u64,
    /// When it last planned every service.
    full_at: Instant,
}

/// What one wake-up plans.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pass {
    Full,
    /// Only these services, against the room the whole cluster has left.
    Services(BTreeSet<String>),
}

pub async fn services(ctx: Server, mut stop: watch::Receiver<bool>) {
    let mut applied = ctx.state.subscribe();
    let mut last = None;
    loop {
        if *stop.borrow() {
            return;
        }
        // A leader that lost office and won it back plans afresh: it cannot know what happened.
        let (planned, planning) = if ctx.is_leader() {
            reconcile(&ctx, last).await
        } else {
            (None, Duration::ZERO)
        };
        last = planned;
        let pause_until = Instant::now() + planning * PAUSE_PER_PLAN;
        // A rollout moves on with time too (monitors and delays run out), not only with entries.
        let rolling = ctx.state.read(|s| !rolling(s).is_empty());
        let wait = if rolling { ROLLOUT_TICK } else { RESYNC };
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
            // A dropped sender is a stop too; waiting on it again would spin.
            changed = stop.changed() => if changed.is_err() { return },
        }
        tokio::select! {
            () = tokio::time::sleep_until(pause_until) => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// The scheduler's plan for one pass.
fn plan(s: &State, pass: &Pass, at: api::Timestamp) -> scheduler::Plan {
    match pass {
        Pass::Full => scheduler::plan(&s.services, &s.tasks, &s.nodes, at),
        Pass::Services(only) => scheduler::plan_services(&s.services, &s.tasks, &s.nodes, only, at),
    }
}

/// The services with a rollout under way.
fn rolling(s: &State) -> Vec<String> {
    (s.services.iter())
        .filter(|(_, svc)| svc.rollout.as_ref().is_some_and(|r| r.active()))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Plans what moved (or everything, when a full pass is due) and commits what the plan
/// changes. Returns what was planned, or `None` when the plan could not be committed so the
/// next wake-up plans every service again; with it, how long planning took (not committing).
async fn reconcile(ctx: &Server, last: Option<Planned>) -> (Option<Planned>, Duration) {
    let at = Instant::now();
    // On the blocking pool: a pass at 100,000 tasks is tens of milliseconds of work, too long
    // for one of the runtime's workers, which serve the API meanwhile.
    let state = ctx.state.clone();
    let work = tokio::task::spawn_blocking(move || {
        state.read(|s| {
            let locked = Instant::now();
            let pass = due(s, last, at)?;
            let plan = plan(s, &pass, now());
            // The plan names every service still waiting (it planned all of those that were), so
            // it says the whole of what `pending` should become.
            let pending_changed = !plan.pending.iter().map(|(k, v)| (k, v)).eq(&s.pending);
            let full_at = match (&pass, last) {
                (Pass::Services(_), Some(l)) => l.full_at,
                _ => at,
            };
            let planned = Planned {
                index: s.index,
                full_at,
            };
            Some((pass, planned, plan, pending_changed, locked.elapsed()))
        })
    });
    let work = work.await.ok().flatten();
    let planning = at.elapsed();
    let Some((pass, planned, plan, pending_changed, held)) = work else {
        return (last, planning);
    };
    tracing::debug!(
        full = matches!(pass, Pass::Full),
        lock_ms = held.as_secs_f64() * 1e3,
        place = plan.place.len(),
        stop = plan.stop.len(),
        "planned under the state's read lock"
    );
    if plan.is_empty() && !pending_changed {
        return (Some(planned), planning);
    }
    let command = Command::Reconcile {
        place: plan.place,
        stop: plan.stop,
        pending: plan.pending,
        time: now(),
        completed: plan.completed,
        stalled: plan.stalled,
    };
    match ctx.propose(command).await {
        Ok(_) => (Some(planned), planning),
        Err(e) => {
            tracing::warn!("cannot commit a placement plan: {e}");
            (None, planning)
        }
    }
}

/// What to plan, if anything: every service when nothing was planned yet or the full pass is
/// due; otherwise the services whose placement inputs moved since the last plan, with those
/// waiting for room (also when a node changed, as it may have room now, or a removed service was
/// forgotten: its entry went with it, and the room its tasks left may fit them). Looks at one
/// index per service, not at the tasks.
///
/// A node change moves the placement index of every service with tasks on the node (a drain,
/// the node of a drain's replacement going up or down, a node lost), so those are planned with
/// the waiting ones; the full pass every [`FULL_PASS`] catches whatever a rule comes to read of
/// the nodes beyond that.
fn due(s: &State, last: Option<Planned>, now: Instant) -> Option<Pass> {
    let last = match last {
        Some(l) if now < l.full_at + FULL_PASS => l,
        _ => return Some(Pass::Full),
    };
    let mut only: BTreeSet<String> = (s.placement_index.iter())
        .filter(|(_, at)| **at > last.index)
        .map(|(name, _)| name.clone())
        .collect();
    let room_moved =
        s.nodes_placement_index > last.index || s.forgotten_placement_index > last.index;
    if !only.is_empty() || room_moved {
        only.extend(s.pending.keys().cloned());
    }
    only.extend(rolling(s));
    (!only.is_empty()).then_some(Pass::Services(only))
}

/// The leader's node monitor: judges every node's heartbeats each [`NODE_CHECK`] with the
/// failure detector, starts the probe rounds it asks for, and commits the transitions it finds
/// (each one entry and one event). Followers only keep the heartbeats they receive.
pub async fn nodes(ctx: Server, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(NODE_CHECK) => {}
            _ = stop.changed() => return,
        }
        let leader = ctx.is_leader();
        if leader && !was_leader {
            // A new leader cannot know how long nodes were silent before it took office:
            // every node starts with a fresh grace period.
            let names: Vec<String> = ctx.state.read(|s| s.nodes.keys().cloned().collect());
            (ctx.heartbeats.lock()).restart(names.iter().map(String::as_str), Instant::now());
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        let (tick, addresses) = check(&ctx);
        for order in tick.probes {
            tokio::spawn(probe_round(ctx.clone(), order, addresses.clone()));
        }
        for (name, state) in tick.transitions {
            let time = now();
            // A verdict of silence says since when: the service's `on_node_lost` counts from
            // the last beat, not from the verdict.
            let silent = (state != NodeState::Ready)
                .then(|| ctx.heartbeats.lock().silent_for(&name, Instant::now()))
                .flatten();
            let command = Command::SetNodeState {
                node: name,
                state,
                time,
                silent_since: silent
                    .map(|d| Timestamp(time.0.saturating_sub(d.as_millis() as u64))),
            };
            if let Err(e) = ctx.propose(command).await {
                tracing::warn!("cannot record a node state change: {e}");
            }
        }
    }
}

/// Node name → base URL of its agent API.
type Addresses = Arc<HashMap<String, String>>;

/// One judgement of every node, with the addresses its probe rounds need.
fn check(ctx: &Server) -> (Tick, Addresses) {
    let nodes: Vec<(String, NodeState)> = ctx.state.read(|s| {
        (s.nodes.values())
            .map(|n| (n.name.clone(), n.state))
            .collect()
    });
    let tick = ctx.heartbeats.lock().tick(&nodes, Instant::now());
    if tick.probes.is_empty() {
        return (tick, Addresses::default());
    }
    let wanted: BTreeSet<&String> = (tick.probes.iter())
        .flat_map(|p| std::iter::once(&p.node).chain(&p.helpers))
        .collect();
    let addresses = ctx.state.read(|s| {
        (wanted.into_iter())
            .filter_map(|name| Some((name.clone(), s.nodes.get(name)?.address.clone())))
            .collect()
    });
    (tick, Arc::new(addresses))
}

/// Probes a silent node's agent API from here and through the helpers its order names, all at
/// once, and hands the monitor whether anybody reached it. Every probe is bounded
/// (`client::agent::PROBE_TIMEOUT`, and a little more for a helper's round trip), so a round
/// ends within about a second whatever the network does.
async fn probe_round(ctx: Server, order: ProbeOrder, addresses: Addresses) {
    let Some(target) = addresses.get(&order.node) else {
        return;
    };
    let (ctx, order) = (&ctx, &order);
    let direct = client::agent::reachable(&ctx.http, target, &ctx.token);
    let indirect = (order.helpers.iter())
        .filter_map(|h| addresses.get(h).map(|a| (h, a)))
        .map(|(helper, address)| async move {
            let agent = client::agent::AgentClient::new(ctx.http.clone(), address, &ctx.token);
            match agent.probe(target).await {
                Ok(reached) => reached,
                Err(e) => {
                    tracing::debug!(node = order.node, "no probe through {helper}: {e}");
                    false
                }
            }
        });
    let (direct, indirect) = futures_util::future::join(direct, join_all(indirect)).await;
    let reached = direct || indirect.contains(&true);
    tracing::debug!(
        node = order.node,
        direct,
        through_peers = ?indirect,
        "probe round {} of a silent node",
        order.round
    );
    (ctx.heartbeats.lock()).probed(&order.node, order.round, reached, Instant::now());
}

/// Every node's liveness as this server sees it, shared by the heartbeat route (which feeds
/// it) and the node monitor (which judges it). Memory only: heartbeats are never entries.
#[derive(Clone, Default)]
pub struct Heartbeats(Arc<Mutex<Monitor>>);

impl Heartbeats {
    /// `node` beat (or registered) just now.
    pub fn beat(&self, node: &str) {
        self.lock().beat(node, Instant::now());
    }

    /// Time since `node`'s last beat and its phi, where this server has them.
    pub fn seen(&self, node: &str) -> (Option<Duration>, Option<f64>) {
        self.lock().seen(node, Instant::now())
    }

    /// Never held across an await: a tick or a beat takes microseconds.
    fn lock(&self) -> std::sync::MutexGuard<'_, Monitor> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use api::{Capacity, RegisterRequest, StatusReport, TaskState, TaskStatus, Timestamp};

    /// When the plans of these tests are made: no service here is in a rollout.
    const NOW: Timestamp = Timestamp(0);
    use spec::ServiceSpec;

    use super::*;

    const T: Timestamp = Timestamp(1_000);

    fn spec(name: &str, replicas: u32, cpu: u64) -> ServiceSpec {
        let mut spec = ServiceSpec::process(name, &["app"]);
        spec.replicas = replicas;
        spec.resources.requests.cpu = Some(spec::Cpu(cpu));
        spec
    }

    /// Node `name` with 1 CPU to give and the process driver.
    fn node(name: &str) -> RegisterRequest {
        let room = Capacity {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        };
        RegisterRequest {
            name: name.into(),
            address: format!("http://{name}"),
            capacity: room.clone(),
            allocatable: room,
            drivers: vec!["process".into()],
            notes: vec![],
            version: "test".into(),
        }
    }

    fn register(node: RegisterRequest) -> Command {
        Command::RegisterNode { node, time: T }
    }

    fn deploy(spec: ServiceSpec) -> Command {
        Command::Deploy {
            services: vec![spec],
            time: T,
        }
    }

    fn scale(service: &str, replicas: u32) -> Command {
        Command::Scale {
            service: service.into(),
            replicas,
            time: T,
        }
    }

    fn remove(service: &str) -> Command {
        Command::Remove {
            service: service.into(),
            time: T,
        }
    }

    /// A report from `node` of these task statuses and, when given, its memory pressure.
    fn report(node: &str, tasks: Vec<TaskStatus>, memory_pressure: Option<bool>) -> Command {
        Command::Report {
            node: node.into(),
            report: StatusReport {
                seq: 0,
                tasks,
                events: vec![],
                memory_pressure,
            },
            time: T,
        }
    }

    fn status(id: &str, state: TaskState, ready: bool) -> TaskStatus {
        TaskStatus {
            seq: 0,
            id: id.into(),
            state,
            evicted: false,
            ready,
            restarts: 0,
            pid: Some(7),
            container_id: None,
            ports: Default::default(),
            started_at: Some(T),
            exit_code: None,
            message: None,
            last_exit: None,
            next_start: None,
        }
    }

    /// Applies commands as the store does, checking its invariants after each.
    fn apply(s: &mut State, commands: impl IntoIterator<Item = Command>) {
        for c in commands {
            s.apply(s.index + 1, &c);
            assert_eq!(s.check(), Ok(()), "after {c:?}");
        }
    }

    /// The plan a pass makes, as [`reconcile`] makes it.
    fn commit(s: &mut State, plan: scheduler::Plan) {
        let command = Command::Reconcile {
            place: plan.place,
            stop: plan.stop,
            pending: plan.pending,
            time: T,
            completed: Vec::new(),
            stalled: Vec::new(),
        };
        apply(s, [command]);
    }

    /// The ids of a service's tasks on a node.
    fn placed_tasks(s: &State, service: &str) -> Vec<String> {
        (s.tasks.values())
            .filter(|t| t.service == service && t.node.is_some())
            .map(|t| t.id.clone())
            .collect()
    }

    fn only(names: &[&str]) -> Pass {
        Pass::Services(names.iter().map(|n| n.to_string()).collect())
    }

    /// `web` (two replicas of 100m) placed on n1, and `big` (2 CPU) waiting: n1 gives 1 CPU.
    fn settled() -> State {
        let mut s = State::default();
        apply(
            &mut s,
            [
                register(node("n1")),
                deploy(spec("web", 2, 100)),
                deploy(spec("big", 1, 2000)),
            ],
        );
        let plan = scheduler::plan(&s.services, &s.tasks, &s.nodes, NOW);
        commit(&mut s, plan);
        assert_eq!(placed_tasks(&s, "web").len(), 2);
        assert_eq!(s.pending.keys().collect::<Vec<_>>(), ["big"]);
        s
    }

    /// What the controller remembers after planning `s` at `at`.
    fn planned(s: &State, at: Instant) -> Option<Planned> {
        Some(Planned {
            index: s.index,
            full_at: at,
        })
    }

    #[test]
    fn a_status_only_report_plans_nothing() {
        let mut s = settled();
        let at = Instant::now();
        let last = planned(&s, at);
        let ids = placed_tasks(&s, "web");
        // Starting, ready, crashed (the agent restarts it in place), and running again.
        let runs = [
            (TaskState::Running, false, 0),
            (TaskState::Running, true, 0),
            (TaskState::Failed, false, 0),
            (TaskState::Running, true, 1),
        ];
        for (state, ready, restarts) in runs {
            let tasks = ids
                .iter()
                .map(|id| TaskStatus {
                    restarts,
                    ports: [("http".to_string(), 8080)].into(),
                    ..status(id, state, ready)
                })
                .collect();
            apply(&mut s, [report("n1", tasks, Some(false))]);
            assert!(ids.iter().all(|id| s.tasks[id].state == state));
            assert_eq!(due(&s, last, at), None, "{state:?}, ready: {ready}");
        }
    }

    /// Commands to apply, made from the state they apply to.
    type Commands = fn(&State) -> Vec<Command>;

    /// A named change made after a plan, and what the next pass plans: the service it moved,
    /// with `big`, which waits, or every service.
    type Change = (&'static str, Commands, Pass);

    #[test]
    fn every_placement_input_plans_its_service_and_the_waiting_ones() {
        let changes: Vec<Change> = vec![
            ("replicas", |_| vec![scale("web", 3)], only(&["big", "web"])),
            (
                "version",
                |_| {
                    let mut new = spec("web", 2, 100);
                    new.env.insert("A".into(), "1".into());
                    vec![deploy(new)]
                },
                only(&["big", "web"]),
            ),
            ("removal", |_| vec![remove("web")], only(&["big", "web"])),
            (
                "a new service",
                |_| vec![deploy(spec("api", 1, 100))],
                only(&["api", "big"]),
            ),
            (
                "a task stopped",
                |s| {
                    vec![Command::Reconcile {
                        place: vec![],
                        stop: placed_tasks(s, "web")[..1].to_vec(),
                        pending: s
                            .pending
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        time: T,
                        completed: Vec::new(),
                        stalled: Vec::new(),
                    }]
                },
                only(&["big", "web"]),
            ),
            (
                "a task evicted",
                |s| {
                    let id = &placed_tasks(s, "web")[0];
                    let evicted = TaskStatus {
                        evicted: true,
                        ..status(id, TaskState::Failed, false)
                    };
                    vec![report("n1", vec![evicted], None)]
                },
                only(&["big", "web"]),
            ),
            // A change to n1, which holds web's tasks, plans web and the waiting replicas.
            (
                "node state",
                |_| {
                    vec![Command::SetNodeState {
                        node: "n1".into(),
                        state: NodeState::Suspect,
                        time: T,
                        silent_since: None,
                    }]
                },
                only(&["big", "web"]),
            ),
            (
                "memory pressure",
                |_| vec![report("n1", vec![], Some(true))],
                only(&["big", "web"]),
            ),
            (
                "allocatable",
                |_| {
                    let mut n1 = node("n1");
                    n1.allocatable.cpu_millis = 500;
                    vec![register(n1)]
                },
                only(&["big", "web"]),
            ),
            (
                "drivers",
                |_| {
                    let mut n1 = node("n1");
                    n1.drivers.push("docker".into());
                    vec![register(n1)]
                },
                only(&["big", "web"]),
            ),
            (
                "a node registered",
                |_| vec![register(node("n2"))],
                // n2 holds no task: only the waiting replicas may fit in its room.
                only(&["big"]),
            ),
        ];
        for (what, change, pass) in changes {
            let mut s = settled();
            let at = Instant::now();
            let last = planned(&s, at);
            let commands = change(&s);
            apply(&mut s, commands);
            assert_eq!(due(&s, last, at), Some(pass), "{what}");
        }
    }

    #[test]
    fn tasks_lost_with_their_node_plan_their_service() {
        let mut s = settled();
        apply(
            &mut s,
            [Command::SetNodeState {
                node: "n1".into(),
                state: NodeState::Down,
                time: T,
                silent_since: None,
            }],
        );
        let at = Instant::now();
        let last = planned(&s, at);
        let lost = crate::lost::due(&s, Timestamp(T.0 + 2_000));
        assert_eq!(lost.len(), 2, "both web tasks, 2 s after n1 went down");
        let time = Timestamp(T.0 + 2_000);
        apply(&mut s, [Command::LoseTasks { tasks: lost, time }]);
        assert_eq!(due(&s, last, at), Some(only(&["big", "web"])));
    }

    #[test]
    fn a_drain_moves_each_task_once_its_replacement_is_ready_as_a_full_pass_would() {
        let mut s = settled();
        let at = Instant::now();
        let mut last = planned(&s, at);
        apply(&mut s, [register(node("n2"))]);
        settle(&mut s, &mut last, at, "n2 joins");
        let drain = Command::SetDrain {
            node: "n1".into(),
            drain: true,
            time: T,
        };
        apply(&mut s, [drain]);
        settle(&mut s, &mut last, at, "n1 drains");
        let old = placed_tasks(&s, "web");
        let on = |s: &State, node: &str| {
            (s.tasks_on(node))
                .filter(|t| t.service == "web" && t.desired == api::DesiredState::Running)
                .map(|t| t.id.clone())
                .collect::<Vec<_>>()
        };
        let replacements = on(&s, "n2");
        assert_eq!((on(&s, "n1").len(), replacements.len()), (2, 2), "{old:?}");
        let ready = (replacements.iter())
            .map(|id| status(id, TaskState::Running, true))
            .collect();
        apply(&mut s, [report("n2", ready, None)]);
        let moved = settle(&mut s, &mut last, at, "the replacements are ready");
        assert_eq!(moved, 1, "an incremental pass stopped the old tasks");
        assert!(on(&s, "n1").is_empty());
        assert_eq!(on(&s, "n2"), replacements);
    }

    #[test]
    fn a_forgotten_service_plans_the_waiting_ones() {
        let mut s = settled();
        apply(&mut s, [remove("web")]);
        let at = Instant::now();
        let last = planned(&s, at);
        let exited = (placed_tasks(&s, "web").iter())
            .map(|id| status(id, TaskState::Exited, false))
            .collect();
        apply(&mut s, [report("n1", exited, None)]);
        assert!(!s.services.contains_key("web"), "forgotten");
        assert_eq!(due(&s, last, at), Some(only(&["big"])));
    }

    #[test]
    fn plans_every_service_when_nothing_was_planned_or_the_full_pass_is_due() {
        let s = settled();
        let at = Instant::now();
        let last = planned(&s, at);
        assert_eq!(due(&s, None, at), Some(Pass::Full), "nothing planned yet");
        assert_eq!(due(&s, last, at + FULL_PASS / 2), None, "nothing moved");
        assert_eq!(due(&s, last, at + FULL_PASS), Some(Pass::Full));
    }

    /// Runs the controller's passes on `s` until one has nothing to commit, checking each
    /// against a full pass. Returns how many passes planned only some services and changed
    /// something.
    fn settle(s: &mut State, last: &mut Option<Planned>, at: Instant, after: &str) -> usize {
        let mut incremental = 0;
        for _ in 0..10 {
            let Some(pass) = due(s, *last, at) else {
                return incremental;
            };
            let plan = plan(s, &pass, NOW);
            let full = scheduler::plan(&s.services, &s.tasks, &s.nodes, NOW);
            assert_eq!(plan, full, "after {after}, planning {pass:?}");
            *last = planned(s, at);
            let pending: Vec<(String, String)> = s
                .pending
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if plan.is_empty() && plan.pending == pending {
                continue;
            }
            incremental += usize::from(pass != Pass::Full);
            commit(s, plan);
        }
        panic!("after {after}, the passes never settle");
    }

    #[test]
    fn planning_what_moved_commits_what_a_full_pass_would() {
        let mut s = State::default();
        let at = Instant::now();
        let mut last = None;
        let steps: Vec<(&str, Commands)> = vec![
            ("two nodes", |_| {
                vec![register(node("n1")), register(node("n2"))]
            }),
            ("a deploy", |_| {
                vec![deploy(spec("web", 3, 300)), deploy(spec("api", 2, 200))]
            }),
            ("a service too big for now", |_| {
                vec![deploy(spec("big", 1, 900))]
            }),
            ("a scale down", |_| vec![scale("web", 1)]),
            ("an eviction", |s| {
                let id = &placed_tasks(s, "api")[0];
                let node = s.tasks[id].node.clone().expect("placed");
                let evicted = TaskStatus {
                    evicted: true,
                    ..status(id, TaskState::Failed, false)
                };
                vec![report(&node, vec![evicted], None)]
            }),
            ("a scale up", |_| vec![scale("web", 4)]),
            ("a node down", |_| {
                vec![Command::SetNodeState {
                    node: "n2".into(),
                    state: NodeState::Down,
                    time: T,
                    silent_since: None,
                }]
            }),
            ("a removal", |_| vec![remove("api")]),
            ("its tasks exit", |s| {
                (placed_tasks(s, "api").iter())
                    .map(|id| {
                        let node = s.tasks[id].node.clone().expect("placed");
                        report(&node, vec![status(id, TaskState::Exited, false)], None)
                    })
                    .collect()
            }),
            ("a new node", |_| vec![register(node("n3"))]),
        ];
        let mut incremental = 0;
        for (what, step) in steps {
            let commands = step(&s);
            apply(&mut s, commands);
            incremental += settle(&mut s, &mut last, at, what);
        }
        assert!(
            incremental >= 3,
            "{incremental} passes of some services placed or stopped"
        );
        assert!(!s.services.contains_key("api"));
        assert!(scheduler::plan(&s.services, &s.tasks, &s.nodes, NOW).is_empty());
    }
}
