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
//! - the rollout is done when every slot is updated and no old task is left.
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
}

/// The pass of `rollout` over a service of `replicas` slots whose tasks are `current` (placed
/// tasks of the version rolled out) and `old` (tasks of any other version, slots within
/// `replicas`), at `now`.
pub(crate) fn step(
    rollout: &Rollout,
    replicas: u32,
    current: &[(u32, &Task)],
    old: &[(u32, &Task)],
    now: Timestamp,
) -> Step {
    let settings = &rollout.settings;
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
    step
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
