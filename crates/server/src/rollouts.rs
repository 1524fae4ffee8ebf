//! The `/v1/services/{name}/rollout` routes: where a rollout stands (`rollout status` and
//! `history`), and `pause`, `resume`, `promote` and `undo`.

use api::{DesiredState, RevisionSummary, RolloutStatus, TaskState, Timestamp, UndoRequest};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use store::{Command, Response as Applied, RolloutAction};

use crate::answer::{Answer, Fail, Json, no_service, unavailable};
use crate::{Server, now};

/// Where `name`'s rollout stands at `at`.
pub fn status(s: &store::State, name: &str, at: Timestamp) -> Option<RolloutStatus> {
    let svc = s.services.get(name)?;
    let wanted: Vec<&api::Task> = (s.tasks_of(name))
        .filter(|t| t.desired == DesiredState::Running && t.state != TaskState::Lost)
        .collect();
    let monitor = svc
        .rollout
        .as_ref()
        .map_or(std::time::Duration::ZERO, |r| r.settings.monitor);
    let current = |t: &&&api::Task| t.version == svc.version;
    let updated = (wanted.iter().filter(current))
        .filter(|t| t.slot <= svc.spec.replicas && t.ready_for(monitor, at))
        .count() as u32;
    let started = wanted
        .iter()
        .filter(current)
        .filter(|t| t.node.is_some())
        .count() as u32;
    let held = svc.rollout.as_ref().is_some_and(|r| {
        r.active() && r.settings.canary > 0 && !r.promoted && started >= r.settings.canary
    });
    Some(RolloutStatus {
        service: name.to_string(),
        version: svc.version,
        replicas: svc.spec.replicas,
        updated,
        old: wanted.iter().filter(|t| t.version != svc.version).count() as u32,
        held,
        rollout: svc.rollout.clone(),
        revisions: (svc.revisions.iter())
            .map(|r| RevisionSummary {
                version: r.version,
                changed: r.changed.clone(),
                created_at: r.created_at,
                current: r.version == svc.version,
            })
            .collect(),
    })
}

/// Where a service's rollout stands, with its revisions.
#[utoipa::path(get, path = "/v1/services/{name}/rollout",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The rollout", body = RolloutStatus)))]
pub async fn get_rollout(
    State(ctx): State<Server>,
    Path(name): Path<String>,
) -> Answer<RolloutStatus> {
    let found = ctx.state.read(|s| status(s, &name, now()));
    found.map(Json).ok_or_else(|| no_service(&name))
}

/// Stop starting new tasks of the rollout under way.
#[utoipa::path(post, path = "/v1/services/{name}/rollout/pause",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The rollout", body = RolloutStatus)))]
pub async fn pause(ctx: State<Server>, name: Path<String>) -> Answer<RolloutStatus> {
    act(ctx, name, RolloutAction::Pause).await
}

/// Go on with a paused rollout.
#[utoipa::path(post, path = "/v1/services/{name}/rollout/resume",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The rollout", body = RolloutStatus)))]
pub async fn resume(ctx: State<Server>, name: Path<String>) -> Answer<RolloutStatus> {
    act(ctx, name, RolloutAction::Resume).await
}

/// Let a canary held at its count go on to every slot.
#[utoipa::path(post, path = "/v1/services/{name}/rollout/promote",
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The rollout", body = RolloutStatus)))]
pub async fn promote(ctx: State<Server>, name: Path<String>) -> Answer<RolloutStatus> {
    act(ctx, name, RolloutAction::Promote).await
}

/// Go back to an earlier revision (the one before the current by default), rolled out with
/// the current spec's `rollback` settings.
#[utoipa::path(post, path = "/v1/services/{name}/rollout/undo", request_body = UndoRequest,
    params(("name" = String, Path, description = "Service name")),
    responses((status = 200, description = "The rollout", body = RolloutStatus)))]
pub async fn undo(
    ctx: State<Server>,
    name: Path<String>,
    Json(req): Json<UndoRequest>,
) -> Answer<RolloutStatus> {
    act(
        ctx,
        name,
        RolloutAction::Undo {
            to: req.to_revision,
        },
    )
    .await
}

async fn act(
    State(ctx): State<Server>,
    Path(name): Path<String>,
    action: RolloutAction,
) -> Answer<RolloutStatus> {
    let command = Command::Rollout {
        service: name.clone(),
        action,
        time: now(),
    };
    match ctx.propose(command).await.map_err(unavailable)? {
        Applied::NotFound(_) => Err(no_service(&name)),
        Applied::Refused(why) => Err(Fail::new(StatusCode::CONFLICT, why)),
        _ => {
            let found = ctx.state.read(|s| status(s, &name, now()));
            found.map(Json).ok_or_else(|| no_service(&name))
        }
    }
}
