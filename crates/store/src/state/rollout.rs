//! Rollouts as the state applies them. A deploy that changes a service's task template records
//! a revision and starts a rollout from the version before; the scheduler replaces tasks slot by
//! slot by its settings (`scheduler::rollout`) and says when it is done. Here: failures of the
//! new version's tasks within their monitor, and what `failure_action` makes of them; `rollout
//! pause|resume|promote|undo`; and which revisions are kept.

use api::{Level, Revision, Rollout, RolloutState, Task, TaskState, TaskStatus, Timestamp};
use serde::{Deserialize, Serialize};
use spec::{FailureAction, ServiceSpec};

use super::{Response, State};

/// Top-level spec fields whose change needs no new tasks: how many, how to roll out, and
/// what holds new tasks back (`depends_on`), lists them together (`stack`) or spreads their
/// traffic (`load_balancer`).
#[rustfmt::skip]
const NOT_TEMPLATE: &[&str] = &[
    "replicas", "update", "rollback", "revision_history", "depends_on", "stack", "load_balancer",
];

/// Whether a change of these top-level fields changes the task template.
pub(super) fn template_changed(fields: &[String]) -> bool {
    fields.iter().any(|f| !NOT_TEMPLATE.contains(&f.as_str()))
}

/// What `outpost rollout` asks of a service's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    /// No new task starts until `Resume`.
    Pause,
    Resume,
    /// A canary held at its count goes on to every slot.
    Promote,
    /// Back to revision `to`, or to the one before the current.
    Undo {
        to: Option<u64>,
    },
}

impl State {
    /// `name`'s template changed from `old`: the new spec is a new version, recorded as a
    /// revision, and rolled out over the version before.
    pub(super) fn new_revision(
        &mut self,
        name: &str,
        old: ServiceSpec,
        fields: &[String],
        time: Timestamp,
    ) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let from = svc.version;
        // A service stored before revisions were kept has none for its current version.
        if !svc.revisions.iter().any(|r| r.version == from) {
            svc.revisions.push(Revision {
                version: from,
                spec: old,
                changed: Vec::new(),
                created_at: svc.updated_at,
            });
        }
        let to = svc.latest_version.max(from) + 1;
        svc.version = to;
        svc.latest_version = to;
        svc.revisions.push(Revision {
            version: to,
            spec: svc.spec.clone(),
            changed: fields.to_vec(),
            created_at: time,
        });
        let settings = svc.spec.update;
        svc.rollout = Some(Rollout {
            from,
            to,
            state: RolloutState::Updating,
            paused: false,
            promoted: false,
            settings,
            failed: Vec::new(),
            message: None,
            started_at: time,
            updated_at: time,
        });
        self.keep_revisions(name);
        let message = format!(
            "rolling out version {to} over version {from}: {} at a time, {}",
            settings.parallelism,
            order_words(settings.order)
        );
        self.rollout_event(time, Level::Info, "rollout-started", name, message);
    }

    /// Keeps the last `revision_history` revisions, the current one, and those a task still
    /// runs.
    fn keep_revisions(&mut self, name: &str) {
        let running: std::collections::BTreeSet<u64> = (self.lookup.of_service(name))
            .filter_map(|(_, id)| self.tasks.get(id))
            .map(|t| t.version)
            .collect();
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        let keep = svc.spec.revision_history as usize;
        let newest: Vec<u64> = (svc.revisions.iter().rev().take(keep))
            .map(|r| r.version)
            .collect();
        let current = svc.version;
        svc.revisions.retain(|r| {
            r.version == current || newest.contains(&r.version) || running.contains(&r.version)
        });
    }

    /// The spec a task of `version` runs: its revision's, or the service's own for a version
    /// that has none (stored before revisions were kept).
    pub fn spec_of(&self, service: &str, version: u64) -> Option<&ServiceSpec> {
        let svc = self.services.get(service)?;
        (svc.revisions.iter())
            .find(|r| r.version == version && version != svc.version)
            .map(|r| &r.spec)
            .or(Some(&svc.spec))
    }

    /// Whether `task` is of a version being rolled out.
    pub(super) fn rolled_out(&self, task: &Task) -> bool {
        (self.services.get(&task.service))
            .and_then(|s| s.rollout.as_ref())
            .is_some_and(|r| r.active() && r.to == task.version)
    }

    /// A status of `task` is about to be recorded: when it is a task of the version being
    /// rolled out that breaks within its monitor (it ends, restarts, or stops being ready),
    /// that is a failure of the rollout.
    pub(super) fn watch_rollout(&mut self, task: &Task, status: &TaskStatus, time: Timestamp) {
        let Some(rollout) = (self.services.get(&task.service)).and_then(|s| s.rollout.as_ref())
        else {
            return;
        };
        if !rollout.active()
            || task.version != rollout.to
            || rollout.failed.contains(&task.id)
            || task.ready_for(rollout.settings.monitor, time)
        {
            return;
        }
        let why = if matches!(status.state, TaskState::Exited | TaskState::Failed) {
            match status.exit_code {
                Some(code) => format!("exited with code {code}"),
                None => "ended".to_string(),
            }
        } else if status.restarts > task.restarts {
            "restarted".to_string()
        } else if task.ready && !status.ready {
            "stopped being ready".to_string()
        } else {
            return;
        };
        self.rollout_failure(&task.service, &task.id, &why, time);
    }

    /// The plan found task `id` of the version rolled out running unready past its deadline.
    pub(super) fn rollout_stalled(&mut self, id: &str, time: Timestamp) {
        let Some(task) = self.tasks.get(id) else {
            return;
        };
        let counted = (self.services.get(&task.service))
            .and_then(|s| s.rollout.as_ref())
            .is_none_or(|r| r.failed.iter().any(|f| f == id));
        if !self.rolled_out(task) || counted || task.ready {
            return;
        }
        let service = task.service.clone();
        self.rollout_failure(&service, id, "did not become ready in time", time);
    }

    fn rollout_failure(&mut self, service: &str, task: &str, why: &str, time: Timestamp) {
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        let replicas = svc.spec.replicas;
        let Some(rollout) = svc.rollout.as_mut() else {
            return;
        };
        rollout.failed.push(task.to_string());
        rollout.updated_at = time;
        let failed = rollout.failed.len() as u32;
        let over = (rollout.settings.max_failure_ratio).exceeded_by(failed, replicas);
        let (to, rolling_back) = (rollout.to, rollout.state == RolloutState::RollingBack);
        let message = format!("task {task} of version {to} {why} within its monitor");
        self.event(
            time,
            Level::Warning,
            "rollout-task-failed",
            Some(service),
            Some(task),
            None,
            message.clone(),
        );
        if !over {
            return;
        }
        let action = self.services.get(service).and_then(|s| s.rollout.as_ref());
        match action.map(|r| r.settings.failure_action) {
            Some(FailureAction::Rollback) if !rolling_back => {
                self.roll_back(service, None, Some(message), time);
            }
            Some(FailureAction::Continue) => {}
            // Pause, and a rollback that fails: nothing further back to go to on its own.
            _ => self.pause_for(service, message, time),
        }
    }

    fn pause_for(&mut self, service: &str, why: String, time: Timestamp) {
        if let Some(rollout) = self.rollout_mut(service) {
            rollout.paused = true;
            rollout.message = Some(why.clone());
            rollout.updated_at = time;
        }
        let message = format!("rollout paused: {why}");
        self.rollout_event(time, Level::Warning, "rollout-paused", service, message);
    }

    /// Makes revision `to` (the one before the current when `None`) the service's version
    /// again, rolled out with the current spec's `rollback` settings.
    fn roll_back(
        &mut self,
        service: &str,
        to: Option<u64>,
        why: Option<String>,
        time: Timestamp,
    ) -> Response {
        let Some(svc) = self.services.get(service) else {
            return Response::NotFound(service.to_string());
        };
        let current = svc.version;
        let target = to.or_else(|| {
            let earlier = (svc.revisions.iter()).filter(|r| r.version != current);
            match &svc.rollout {
                // A rollout under way goes back to where it came from.
                Some(r) if r.active() && r.from != current => Some(r.from),
                _ => earlier.map(|r| r.version).max(),
            }
        });
        let kept: Vec<String> = (svc.revisions.iter())
            .map(|r| r.version.to_string())
            .collect();
        let Some(revision) = target.and_then(|t| svc.revisions.iter().find(|r| r.version == t))
        else {
            return Response::Refused(match target {
                Some(t) => format!(
                    "revision {t} of {service} is not kept (kept: {}); see `outpost rollout history {service}`",
                    kept.join(", ")
                ),
                None => format!("{service} has no earlier revision to go back to"),
            });
        };
        if revision.version == current {
            return Response::Refused(format!("{service} already runs revision {current}"));
        }
        let (version, mut spec) = (revision.version, revision.spec.clone());
        let settings = svc.spec.rollback;
        spec.replicas = svc.spec.replicas;
        let Some(svc) = self.services.get_mut(service) else {
            return Response::NotFound(service.to_string());
        };
        svc.spec = spec;
        svc.version = version;
        svc.updated_at = time;
        svc.rollout = Some(Rollout {
            from: current,
            to: version,
            state: RolloutState::RollingBack,
            paused: false,
            promoted: false,
            settings,
            failed: Vec::new(),
            message: why.clone(),
            started_at: time,
            updated_at: time,
        });
        self.placement_moved(service);
        let message = match why {
            Some(why) => format!("rolling back to version {version}: {why}"),
            None => format!("rolling back from version {current} to version {version}"),
        };
        self.rollout_event(time, Level::Warning, "rollout-rollback", service, message);
        Response::Ok
    }

    /// An event of `service`'s rollout.
    fn rollout_event(
        &mut self,
        time: Timestamp,
        level: Level,
        reason: &str,
        service: &str,
        message: String,
    ) {
        self.event(time, level, reason, Some(service), None, None, message);
    }

    fn rollout_mut(&mut self, service: &str) -> Option<&mut Rollout> {
        self.services.get_mut(service)?.rollout.as_mut()
    }

    /// `outpost rollout pause|resume|promote|undo`.
    pub(super) fn rollout_action(
        &mut self,
        service: &str,
        action: &RolloutAction,
        time: Timestamp,
    ) -> Response {
        let Some(svc) = self.services.get(service) else {
            return Response::NotFound(service.to_string());
        };
        if let RolloutAction::Undo { to } = action {
            return self.roll_back(service, *to, None, time);
        }
        let active = svc.rollout.as_ref().filter(|r| r.active());
        let Some(rollout) = active else {
            return Response::Refused(format!(
                "{service} has no rollout under way; see `outpost rollout status {service}`"
            ));
        };
        let (reason, message) = match action {
            RolloutAction::Pause if rollout.paused => return Response::Ok,
            RolloutAction::Resume if !rollout.paused => return Response::Ok,
            RolloutAction::Promote if rollout.settings.canary == 0 => {
                return Response::Refused(format!(
                    "the rollout of {service} has no canary to promote"
                ));
            }
            RolloutAction::Pause => ("rollout-paused", "rollout paused".to_string()),
            RolloutAction::Resume => ("rollout-resumed", "rollout resumed".to_string()),
            RolloutAction::Promote => (
                "rollout-promoted",
                format!(
                    "canary promoted: version {} goes on to every slot",
                    rollout.to
                ),
            ),
            RolloutAction::Undo { .. } => return Response::Ok,
        };
        if let Some(rollout) = self.rollout_mut(service) {
            match action {
                RolloutAction::Pause => rollout.paused = true,
                RolloutAction::Resume => {
                    rollout.paused = false;
                    rollout.message = None;
                }
                _ => rollout.promoted = true,
            }
            rollout.updated_at = time;
        }
        self.placement_moved(service);
        self.rollout_event(time, Level::Info, reason, service, message);
        Response::Ok
    }

    /// Task `id` is about to be stopped: when it is an older version's task whose slot a
    /// ready task of the version rolled out now holds, that slot is updated, and an event says so.
    pub(super) fn note_slot_updated(&mut self, id: &str, time: Timestamp) {
        let Some(old) = self.tasks.get(id) else {
            return;
        };
        let Some(rollout) = (self.services.get(&old.service)).and_then(|s| s.rollout.as_ref())
        else {
            return;
        };
        if !rollout.active() || old.version == rollout.to {
            return;
        }
        let to = rollout.to;
        let new = (self.lookup.of_slot(&old.service, old.slot))
            .filter_map(|other| self.tasks.get(other))
            .find(|t| t.version == to && t.ready);
        let Some(new) = new else {
            return;
        };
        let message = format!(
            "slot {} updated to version {to}: task {} is ready, task {id} stops",
            old.slot, new.id
        );
        let (service, task) = (old.service.clone(), new.id.clone());
        self.event(
            time,
            Level::Info,
            "rollout-task-updated",
            Some(&service),
            Some(&task),
            None,
            message,
        );
    }

    /// The scheduler found every slot of `service` held by an updated task of the version
    /// rolled out, and nothing older left running.
    pub(super) fn complete_rollout(&mut self, service: &str, time: Timestamp) {
        let Some(rollout) = self.rollout_mut(service).filter(|r| r.active()) else {
            return;
        };
        let (state, reason) = match rollout.state {
            RolloutState::RollingBack => (RolloutState::RolledBack, "rollout-rolled-back"),
            _ => (RolloutState::Completed, "rollout-completed"),
        };
        rollout.state = state;
        rollout.paused = false;
        rollout.updated_at = time;
        let message = format!("rollout {state}: every replica runs version {}", rollout.to);
        self.keep_revisions(service);
        self.rollout_event(time, Level::Info, reason, service, message);
    }
}

fn order_words(order: spec::UpdateOrder) -> &'static str {
    match order {
        spec::UpdateOrder::StartFirst => {
            "start-first (each old task stops once its replacement is updated)"
        }
        spec::UpdateOrder::StopFirst => {
            "stop-first (each old task stops before its replacement starts)"
        }
    }
}
