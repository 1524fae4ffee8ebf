//! One pass of a rollout: which of a service's old tasks stop now, which slots wait for their
//! turn, and whether the rollout is done. Pure: the tasks and the time are given.
//!
//! A slot is *updated* once its task of the new version has been ready for the settings'
//! `monitor` (`Task::ready_for`); it is *in flight* while that task runs but is not updated yet.
//! Each pass:
//! - an old task whose slot is updated stops (start-first keeps it until then), and so does
//!   the second old task of a slot (a deploy superseded a rollout mid-way);
//! - at most `parallelism` slots are in flight: new slots are released while fewer are, in slot
//!   order, unless the rollout is paused, a canary holds it at its count, or `delay` has not
//!   passed since the last slot was updated;
//! - a released slot gets its new task (and, stop-first, its old task stops at once); a slot
//!   not released stays held by its old task;
//! - the rollout is done when every slot is updated and no old task is left;
//! - a new task running longer than [`readiness_deadline`] without becoming ready is
//!   reported stalled, a failure of the rollout as a crash is.
//!
//! With start-first a service so never has fewer ready tasks than wanted (an old task stops
//! only once its replacement is updated), and never more than `replicas + parallelism`.

use std::collections::BTreeSet;

use api::{Rollout, Task, Timestamp};
use spec::UpdateOrder;

/// What a pass of a rollout does.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Step {
    /// Old tasks to stop.
    pub stop: Vec<String>,
    /// Slots that keep their old task for now: nothing new is placed there.
    pub hold: Vec<u32>,
    pub done: bool,
    /// New tasks running for longer than the readiness deadline without becoming ready: they
    /// fail the rollout as a crash would.
    pub stalled: Vec<String>,
}

/// The pass of `rollout` over a service of `replicas` slots whose tasks are `current` (placed
/// tasks of the version rolled out) and `old` (tasks of any other version, slots within
/// `replicas`), at `now`.
pub(crate) fn step(
    rollout: &Rollout,
    spec: &spec::ServiceSpec,
    current: &[(u32, &Task)],
    old: &[(u32, &Task)],
    now: Timestamp,
) -> Step {
    let (settings, replicas) = (&rollout.settings, spec.replicas);
    let proven = |t: &Task| t.ready_for(settings.monitor, now);
    let updated: BTreeSet<u32> = (current.iter())
        .filter(|(_, t)| proven(t))
        .map(|(slot, _)| *slot)
        .collect();
    let started: BTreeSet<u32> = current.iter().map(|(slot, _)| *slot).collect();
    let mut step = Step::default();
    let mut waiting = BTreeSet::new();
    for (slot, task) in old {
        if updated.contains(slot) || keeper(old, *slot).is_none_or(|k| k.id != task.id) {
            step.stop.push(task.id.clone());
        } else if !started.contains(slot) {
            waiting.insert(*slot);
        }
    }
    let in_flight = started.difference(&updated).count() as u32;
    let mut budget = settings.parallelism.saturating_sub(in_flight);
    if rollout.paused || waiting_out_delay(rollout, current, now) {
        budget = 0;
    }
    if settings.canary > 0 && !rollout.promoted {
        budget = budget.min(settings.canary.saturating_sub(started.len() as u32));
    }
    for (i, slot) in waiting.iter().enumerate() {
        if (i as u32) >= budget {
            step.hold.push(*slot);
        } else if settings.order == UpdateOrder::StopFirst {
            let olds = old.iter().filter(|(s, _)| s == slot);
            step.stop.extend(olds.map(|(_, t)| t.id.clone()));
        }
    }
    let stopping: BTreeSet<&str> = step.stop.iter().map(String::as_str).collect();
    let old_left = old.iter().any(|(_, t)| !stopping.contains(t.id.as_str()));
    step.done = !old_left && (1..=replicas).all(|slot| updated.contains(&slot));
    let deadline = readiness_deadline(spec, settings.monitor);
    step.stalled = (current.iter())
        .map(|(_, t)| *t)
        // Started (its process or container runs: an image pull is not counted), not ready.
        .filter(|t| t.started_at.is_some() && !t.ready)
        .filter(|t| matches!(t.state, api::TaskState::Starting | api::TaskState::Running))
        .filter(|t| t.updated_at.elapsed_at(now) > deadline && !rollout.failed.contains(&t.id))
        .map(|t| t.id.clone())
        .collect();
    step
}

/// How long a new task may run without becoming ready before it counts as failed: its
/// monitor, plus what its readiness probe allows a slow start (the initial delay, and the
/// failures it tolerates). A slow starter states that in its probe, as for Kubernetes.
pub(crate) fn readiness_deadline(
    spec: &spec::ServiceSpec,
    monitor: std::time::Duration,
) -> std::time::Duration {
    let probe = spec.readiness.as_ref();
    let allowance = probe.map_or(std::time::Duration::ZERO, |p| {
        p.initial_delay + p.period.saturating_mul(p.failure_threshold)
    });
    monitor + allowance
}

/// The one old task a slot keeps when a deploy superseded a rollout and the slot holds two
/// (the superseded rollout's new task beside its old one): the ready one, the newer version
/// of two ready ones. The other stops, so the slot never holds more than one old task.
fn keeper<'a>(old: &[(u32, &'a Task)], slot: u32) -> Option<&'a Task> {
    (old.iter().filter(|(s, _)| *s == slot))
        .map(|(_, t)| *t)
        .max_by_key(|t| (t.ready, t.version))
}

/// Whether `delay` has yet to pass since the last slot was updated.
fn waiting_out_delay(rollout: &Rollout, current: &[(u32, &Task)], now: Timestamp) -> bool {
    let settings = &rollout.settings;
    if settings.delay.is_zero() {
        return false;
    }
    let monitor = settings.monitor.as_millis() as u64;
    let last = (current.iter())
        .filter(|(_, t)| t.ready_for(settings.monitor, now))
        .filter_map(|(_, t)| t.ready_since)
        .map(|since| since.0.saturating_add(monitor))
        .max();
    last.is_some_and(|at| now.0 < at.saturating_add(settings.delay.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use api::{RolloutState, TaskState};
    use spec::{ServiceSpec, UpdateSpec};

    use super::*;

    const MONITOR: Duration = Duration::from_secs(5);

    fn at(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    fn rollout(settings: UpdateSpec) -> Rollout {
        Rollout {
            from: 1,
            to: 2,
            state: RolloutState::Updating,
            paused: false,
            promoted: false,
            settings: UpdateSpec {
                monitor: MONITOR,
                ..settings
            },
            failed: Vec::new(),
            message: None,
            started_at: at(0),
            updated_at: at(0),
        }
    }

    /// A task of `version` in `slot`, started, ready since `ready_ms` (not ready when `None`).
    fn task(slot: u32, version: u64, ready_ms: Option<u64>) -> Task {
        let mut t = crate::tests::task("web", slot, "a", version);
        t.id = format!("web.{slot}.v{version}");
        t.ready = ready_ms.is_some();
        t.ready_since = ready_ms.map(at);
        t.started_at = Some(at(0));
        t.state = TaskState::Running;
        t
    }

    fn web(replicas: u32) -> ServiceSpec {
        let mut spec = ServiceSpec::process("web", &["app"]);
        spec.replicas = replicas;
        spec
    }

    fn slots(tasks: &[Task]) -> Vec<(u32, &Task)> {
        tasks.iter().map(|t| (t.slot, t)).collect()
    }

    #[test]
    fn start_first_releases_parallelism_slots_and_stops_an_old_task_once_its_slot_is_updated() {
        let old: Vec<Task> = (1..=4).map(|s| task(s, 1, Some(0))).collect();
        let r = rollout(UpdateSpec {
            parallelism: 2,
            ..UpdateSpec::default()
        });
        let first = step(&r, &web(4), &[], &slots(&old), at(0));
        assert_eq!(
            (first.stop.len(), first.hold.clone(), first.done),
            (0, vec![3, 4], false)
        );
        // Slot 1's new task is ready but not through its monitor; slot 2's is.
        let new = [task(1, 2, Some(1_000)), task(2, 2, Some(0))];
        let later = step(&r, &web(4), &slots(&new), &slots(&old), at(5_500));
        assert_eq!(
            later.stop,
            ["web.2.v1"],
            "only the updated slot's old task stops"
        );
        assert_eq!(later.hold, [4], "one slot in flight: one more released");
    }

    #[test]
    fn stop_first_pauses_and_canaries_bound_what_starts_and_the_end_is_seen() {
        let old: Vec<Task> = (1..=3).map(|s| task(s, 1, Some(0))).collect();
        let stop_first = rollout(UpdateSpec {
            order: spec::UpdateOrder::StopFirst,
            ..UpdateSpec::default()
        });
        let s = step(&stop_first, &web(3), &[], &slots(&old), at(0));
        assert_eq!((s.stop, s.hold), (vec!["web.1.v1".to_string()], vec![2, 3]));
        let mut paused = rollout(UpdateSpec::default());
        paused.paused = true;
        assert_eq!(
            step(&paused, &web(3), &[], &slots(&old), at(0)).hold,
            [1, 2, 3]
        );
        let canary = rollout(UpdateSpec {
            parallelism: 3,
            canary: 1,
            ..UpdateSpec::default()
        });
        let new = [task(1, 2, None)];
        let held = step(&canary, &web(3), &slots(&new), &slots(&old[1..]), at(0));
        assert_eq!(held.hold, [2, 3], "a canary of 1 starts nothing more");
        let new: Vec<Task> = (1..=3).map(|s| task(s, 2, Some(0))).collect();
        assert!(step(&canary, &web(3), &slots(&new), &[], at(5_000)).done);
        assert!(
            !step(&canary, &web(3), &slots(&new), &[], at(4_999)).done,
            "monitor not over"
        );
    }

    #[test]
    fn a_new_task_unready_past_its_deadline_is_stalled() {
        let r = rollout(UpdateSpec::default());
        let mut new = task(1, 2, None);
        new.updated_at = at(1_000);
        let old = [task(1, 1, Some(0))];
        assert!(
            step(
                &r,
                &web(1),
                &slots(std::slice::from_ref(&new)),
                &slots(&old),
                at(6_000)
            )
            .stalled
            .is_empty()
        );
        let s = step(
            &r,
            &web(1),
            &slots(std::slice::from_ref(&new)),
            &slots(&old),
            at(6_001),
        );
        assert_eq!(s.stalled, ["web.1.v2"]);
        new.started_at = None;
        let pulling = step(
            &r,
            &web(1),
            &slots(std::slice::from_ref(&new)),
            &slots(&old),
            at(60_000),
        );
        assert!(
            pulling.stalled.is_empty(),
            "a task not started yet (an image pull) is not stalled"
        );
    }
}
