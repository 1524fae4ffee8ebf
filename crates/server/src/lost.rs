//! The leader's lost-task loop: work moves off lost nodes.
//!
//! Every [`LOST_CHECK`], for each node that is `down` or `unreachable`, it finds the tasks whose
//! service's `on_node_lost` time is up (the node's `state_since` plus `replace_after`, or
//! `unreachable_after`, at or before now; `keep` never) and commits them as one
//! `Command::LoseTasks`. The store marks each `lost` and records its service as moved, so the
//! service controller places a replacement at once. Followers run the loop too, doing nothing
//! until they lead.
//!
//! [`due`] is the pure decision; [`watch`] is the loop with its clock, its view of the state and
//! its commit passed in, so that it runs on paused tokio time in tests.

use std::future::Future;
use std::time::Duration;

use api::Timestamp;
use store::{Command, State};
use tokio::sync::watch;

use crate::{Server, now};

/// 250 ms: a tenth of the 2 s default `replace_after`, so replacements are placed within a
/// quarter second of the time being up; a pass reads only the tasks of lost nodes.
pub const LOST_CHECK: Duration = Duration::from_millis(250);

/// The ids of the tasks to give up at `now`, in id order: every task on a lost node for which
/// [`State::loss_due`] holds. Reads only lost nodes' tasks.
pub fn due(s: &State, now: Timestamp) -> Vec<String> {
    let mut ids: Vec<String> = (s.nodes.values())
        .filter(|n| n.state.is_lost())
        .flat_map(|n| s.tasks_on(&n.name))
        .filter(|t| s.loss_due(t, now).is_some())
        .map(|t| t.id.clone())
        .collect();
    ids.sort();
    ids
}

/// The loop as the server runs it.
pub async fn lost(ctx: Server, stop: watch::Receiver<bool>) {
    let leading = ctx.clone();
    let reading = ctx.clone();
    let due_now = move |at| {
        leading
            .is_leader()
            .then(|| reading.state.read(|s| due(s, at)))
    };
    let commit = move |command| {
        let ctx = ctx.clone();
        async move { ctx.propose(command).await.map(|_| ()) }
    };
    watch(stop, now, due_now, commit).await;
}

/// Every [`LOST_CHECK`] until `stop`: asks `due_now` (which answers `None` when this server
/// does not lead) what to give up at `clock()`, and commits it. A commit that fails is tried
/// again at the next check, since the tasks are still due then.
pub async fn watch<D, C, F>(
    mut stop: watch::Receiver<bool>,
    clock: impl Fn() -> Timestamp,
    due_now: D,
    mut commit: C,
) where
    D: Fn(Timestamp) -> Option<Vec<String>>,
    C: FnMut(Command) -> F,
    F: Future<Output = Result<(), String>>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOST_CHECK) => {}
            // A dropped sender is a stop too.
            _ = stop.changed() => return,
        }
        let time = clock();
        let Some(tasks) = due_now(time).filter(|t| !t.is_empty()) else {
            continue;
        };
        let count = tasks.len();
        if let Err(e) = commit(Command::LoseTasks { tasks, time }).await {
            tracing::warn!("cannot give up {count} tasks of lost nodes: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// When the plans of these tests are made: no service here is in a rollout.
    const NOW: api::Timestamp = api::Timestamp(0);

    use api::{Capacity, DesiredState, NodeState, RegisterRequest, TaskState, Timestamp};
    use spec::{KeepTasks, OnNodeLost, ServiceSpec};

    use super::*;

    const T: Timestamp = Timestamp(1_000_000);

    fn apply(s: &mut State, commands: impl IntoIterator<Item = Command>) {
        for c in commands {
            s.apply(s.index + 1, &c);
            assert_eq!(s.check(), Ok(()), "after {c:?}");
        }
    }

    fn register(name: &str) -> Command {
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

    fn service(name: &str, replicas: u32, on_node_lost: OnNodeLost) -> Command {
        let mut spec = ServiceSpec::process(name, &["app"]);
        spec.replicas = replicas;
        spec.on_node_lost = on_node_lost;
        Command::Deploy {
            services: vec![spec],
            time: T,
        }
    }

    fn set(node: &str, state: NodeState, time: Timestamp) -> Command {
        Command::SetNodeState {
            node: node.into(),
            state,
            time,
            silent_since: None,
        }
    }

    /// Plans with the real scheduler and commits the plan, as the service controller does.
    fn plan(s: &mut State, time: Timestamp) {
        let plan = scheduler::plan(&s.services, &s.tasks, &s.nodes, NOW);
        apply(
            s,
            [Command::Reconcile {
                place: plan.place,
                stop: plan.stop,
                pending: plan.pending,
                time,
                completed: Vec::new(),
                stalled: Vec::new(),
            }],
        );
    }

    fn after(ms: u64) -> Timestamp {
        Timestamp(T.0 + ms)
    }

    /// `web` (4 replicas, replaced 2 s after `down`) and `db` (2, kept) spread over a and b,
    /// then b goes down at T.
    fn b_down() -> State {
        let mut s = State::default();
        let keep = OnNodeLost::Keep(KeepTasks::Keep);
        apply(
            &mut s,
            [
                register("a"),
                register("b"),
                service("web", 4, OnNodeLost::default()),
                service("db", 2, keep),
            ],
        );
        plan(&mut s, T);
        assert_eq!(s.tasks_on("b").count(), 3, "spread: web 2 and db 1");
        apply(&mut s, [set("b", NodeState::Down, T)]);
        s
    }

    fn on(s: &State, node: &str, service: &str) -> usize {
        (s.tasks_on(node))
            .filter(|t| t.service == service && t.desired == DesiredState::Running)
            .count()
    }

    #[test]
    fn only_tasks_whose_policy_time_is_up_are_due() {
        let s = b_down();
        assert!(due(&s, after(1_999)).is_empty());
        let web_on_b: Vec<String> = (s.tasks_on("b"))
            .filter(|t| t.service == "web")
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(due(&s, after(2_000)), web_on_b, "db is kept");
        assert_eq!(due(&s, after(86_400_000)), web_on_b);
    }

    #[test]
    fn planning_after_a_loss_places_the_replacements_on_live_nodes() {
        let mut s = b_down();
        let lost = due(&s, after(2_000));
        apply(
            &mut s,
            [Command::LoseTasks {
                tasks: lost.clone(),
                time: after(2_000),
            }],
        );
        assert!(lost.iter().all(|id| s.tasks[id].state == TaskState::Lost));
        assert!(due(&s, after(3_000)).is_empty(), "given up once");
        plan(&mut s, after(2_100));
        assert_eq!(on(&s, "a", "web"), 4, "every web replica now on a");
        assert_eq!((on(&s, "a", "db"), on(&s, "b", "db")), (1, 1), "db kept");
        assert!(scheduler::plan(&s.services, &s.tasks, &s.nodes, NOW).is_empty());
    }

    /// The loop on paused time, over a state it commits to directly.
    #[tokio::test(start_paused = true)]
    async fn the_loop_gives_tasks_up_once_their_time_is_up_and_only_while_leading() {
        let state = Arc::new(Mutex::new(b_down()));
        let leading = Arc::new(Mutex::new(false));
        let start = tokio::time::Instant::now();
        // The cluster clock starts when b went down.
        let clock = move || after(start.elapsed().as_millis() as u64);
        let (read, lead) = (state.clone(), leading.clone());
        let due_now = move |at| {
            let leads = *lead.lock().unwrap();
            leads.then(|| due(&read.lock().unwrap(), at))
        };
        let written = state.clone();
        let commit = move |command: Command| {
            let mut s = written.lock().unwrap();
            let index = s.index + 1;
            s.apply(index, &command);
            std::future::ready(Ok(()))
        };
        let (stop_tx, stop) = watch::channel(false);
        let looping = tokio::spawn(watch(stop, clock, due_now, commit));
        let lost = |s: &Arc<Mutex<State>>| {
            let s = s.lock().unwrap();
            s.tasks
                .values()
                .filter(|t| t.state == TaskState::Lost)
                .count()
        };

        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(lost(&state), 0, "a follower gives nothing up");
        *leading.lock().unwrap() = true;
        tokio::time::sleep(LOST_CHECK + Duration::from_millis(10)).await;
        assert_eq!(lost(&state), 2, "a new leader at once, the time being up");

        // b comes back, and goes down again: its own new time counts.
        let down_again = clock();
        {
            let mut s = state.lock().unwrap();
            let back = [set("b", NodeState::Ready, down_again)];
            apply(&mut s, back);
            plan(&mut s, down_again);
            apply(&mut s, [set("b", NodeState::Down, down_again)]);
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(
            lost(&state),
            0,
            "not up again yet (the old lost ones were forgotten)"
        );
        tokio::time::sleep(Duration::from_millis(500) + LOST_CHECK).await;
        assert!(lost(&state) > 0, "lost once 2 s are up again");
        stop_tx.send(true).unwrap();
        looping.await.unwrap();
    }
}
