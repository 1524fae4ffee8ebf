//! Image garbage collection, the control plane's half: which images the cluster keeps
//! (`GET /v1/images/kept`, which agents ask before each collection), and `POST
//! /v1/images/prune`, which asks every node's agent (or one node's) to collect now.
//!
//! An image is kept while a service keeps a revision that names it: its current one, any a task
//! still runs, and the earlier ones it keeps for `rollout undo` (the last `revision_history`,
//! `store::State`'s `keep_revisions`). So the N of "the last N revisions" is each service's own
//! `revision_history`, and no other knob is needed. The agent adds what it must never drop
//! itself (its own tasks' images), and collects nothing when it cannot ask.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::State;
use httpd::{Json, Query};
use serde::Deserialize;

use crate::Server;
use crate::answer::{Answer, no_node};

/// How long a node's agent has to collect and answer: removing files and the Engine's
/// copies of images takes seconds on a slow disk, not the 2 s a reading gets.
const PRUNE_WAIT: Duration = Duration::from_secs(30);

/// The images the services keep, each with the services using it now and those keeping it
/// for rollback only. `live` is, per service, the versions its tasks run.
pub fn kept_images<'a>(
    services: impl IntoIterator<Item = &'a api::Service>,
    live: &BTreeMap<String, BTreeSet<u64>>,
) -> Vec<api::KeptImage> {
    let mut kept: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    for service in services {
        let running = live.get(&service.spec.name);
        let in_use = |version: u64| {
            version == service.version || running.is_some_and(|r| r.contains(&version))
        };
        let mut revisions: Vec<(u64, &spec::ServiceSpec)> = (service.revisions.iter())
            .map(|r| (r.version, &r.spec))
            .collect();
        // The current spec is the service's own (a service stored before revisions has none).
        revisions.push((service.version, &service.spec));
        for (version, spec) in revisions {
            let Some(image) = &spec.image else { continue };
            let entry = kept.entry(image.clone()).or_default();
            match in_use(version) {
                true => entry.0.insert(service.spec.name.clone()),
                false => entry.1.insert(service.spec.name.clone()),
            };
        }
    }
    (kept.into_iter())
        .map(|(image, (used, rollback))| api::KeptImage {
            image,
            rollback: rollback.difference(&used).cloned().collect(),
            used_by: used.into_iter().collect(),
        })
        .collect()
}

/// The images no node may collect: every revision the services keep names them.
#[utoipa::path(get, path = "/v1/images/kept", responses(
    (status = 200, description = "The images kept, with the services using each and those keeping it for rollback", body = Vec<api::KeptImage>)))]
pub async fn kept(State(ctx): State<Server>) -> Answer<Vec<api::KeptImage>> {
    Ok(Json(kept_now(&ctx)))
}

/// The images the cluster keeps, as of the applied state.
fn kept_now(ctx: &Server) -> Vec<api::KeptImage> {
    ctx.state.read(|s| {
        let mut live: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for task in s.tasks.values() {
            live.entry(task.service.clone())
                .or_default()
                .insert(task.version);
        }
        kept_images(s.services.values(), &live)
    })
}

/// Fills in each stored image's services: those using it and those keeping it for rollback
/// (specs name images with a registry host, stores without: both read as the store names them).
pub fn annotate(ctx: &Server, nodes: &mut [api::NodeImages]) {
    let mut by_name: BTreeMap<(String, String), (BTreeSet<String>, BTreeSet<String>)> =
        BTreeMap::new();
    for kept in kept_now(ctx) {
        let (name, tag) = images::store_name(&kept.image);
        let entry = by_name.entry((name.into(), tag.into())).or_default();
        entry.0.extend(kept.used_by);
        entry.1.extend(kept.rollback);
    }
    for image in nodes.iter_mut().flat_map(|n| n.images.iter_mut()) {
        if let Some((used, rollback)) = by_name.get(&(image.name.clone(), image.tag.clone())) {
            image.used_by = used.iter().cloned().collect();
            image.rollback = rollback.difference(used).cloned().collect();
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PruneQuery {
    /// Only this node.
    node: Option<String>,
    /// Say what would be removed, and remove nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Each node's agent collects its image store now (images no service keeps, their blobs, and
/// their Engine copies pulled through the mirror), and says what it removed.
#[utoipa::path(post, path = "/v1/images/prune", params(PruneQuery), responses(
    (status = 200, description = "What each node removed, or would remove in a dry run; the nodes that did not answer collected nothing", body = api::ClusterPrune),
    (status = 400, description = "A `dry_run` that is neither true nor false", body = api::ApiError),
    (status = 404, description = "No such node", body = api::ApiError)))]
pub async fn prune(
    State(ctx): State<Server>,
    Query(q): Query<PruneQuery>,
) -> Answer<api::ClusterPrune> {
    let nodes = crate::stats::live_nodes(&ctx, q.node.as_ref());
    if let Some(name) = q.node.as_ref().filter(|_| nodes.is_empty()) {
        return Err(no_node(name));
    }
    let path = format!("/v1/agent/images/prune?dry_run={}", q.dry_run);
    let (nodes, unreachable) =
        crate::stats::ask_agents_with(&ctx, nodes, reqwest::Method::POST, &path, PRUNE_WAIT).await;
    Ok(Json(api::ClusterPrune { nodes, unreachable }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, version: u64, images: &[(u64, &str)]) -> api::Service {
        let spec = |image: &str| spec::ServiceSpec {
            driver: spec::DriverKind::Docker,
            image: Some(image.into()),
            ..spec::ServiceSpec::process(name, &[])
        };
        let current = images.iter().find(|(v, _)| *v == version).unwrap().1;
        let at = api::Timestamp(0);
        api::Service {
            spec: spec(current),
            version,
            removing: false,
            created_at: at,
            updated_at: at,
            latest_version: images.iter().map(|(v, _)| *v).max().unwrap(),
            revisions: (images.iter())
                .map(|(v, image)| api::Revision {
                    version: *v,
                    spec: spec(image),
                    changed: Vec::new(),
                    created_at: at,
                })
                .collect(),
            rollout: None,
            vip: None,
        }
    }

    fn kept(
        services: &[api::Service],
        live: &[(&str, &[u64])],
    ) -> Vec<(String, Vec<String>, Vec<String>)> {
        let live = (live.iter())
            .map(|(s, v)| (s.to_string(), v.iter().copied().collect()))
            .collect();
        (kept_images(services, &live).into_iter())
            .map(|k| (k.image, k.used_by, k.rollback))
            .collect()
    }

    fn row(image: &str, used: &[&str], rollback: &[&str]) -> (String, Vec<String>, Vec<String>) {
        let names = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        (image.into(), names(used), names(rollback))
    }

    #[test]
    fn the_current_revision_is_in_use_and_the_kept_earlier_ones_are_for_rollback() {
        // Revisions 3 and 4 kept (revision_history 2), 4 current, no task left on 3.
        let web = service("web", 4, &[(3, "app:3"), (4, "app:4")]);
        assert_eq!(
            kept(&[web], &[("web", &[4])]),
            [row("app:3", &[], &["web"]), row("app:4", &["web"], &[])]
        );
    }

    #[test]
    fn a_revision_a_task_still_runs_is_in_use() {
        // A rollout from 3 to 4 under way; the store keeps 2 as well, which nothing runs.
        let web = service("web", 4, &[(2, "app:2"), (3, "app:3"), (4, "app:4")]);
        assert_eq!(
            kept(&[web], &[("web", &[3, 4])]),
            [
                row("app:2", &[], &["web"]),
                row("app:3", &["web"], &[]),
                row("app:4", &["web"], &[])
            ]
        );
    }

    #[test]
    fn an_image_used_by_one_service_and_kept_by_another_is_in_use() {
        let api = service("api", 2, &[(1, "base:1"), (2, "base:2")]);
        let worker = service("worker", 1, &[(1, "base:1")]);
        assert_eq!(
            kept(&[api, worker], &[]),
            [
                row("base:1", &["worker"], &["api"]),
                row("base:2", &["api"], &[])
            ]
        );
    }

    #[test]
    fn a_rolled_back_service_keeps_the_newer_revision_for_rollback_and_processes_keep_none() {
        // Undone from 2 to 1: version 1 is current again, 2 stays kept.
        let web = service("web", 1, &[(1, "app:1"), (2, "app:2")]);
        let mut job = service("job", 1, &[(1, "unused")]);
        job.spec.image = None;
        job.revisions[0].spec.image = None;
        assert_eq!(
            kept(&[web, job], &[("web", &[1])]),
            [row("app:1", &["web"], &[]), row("app:2", &[], &["web"])]
        );
    }
}
