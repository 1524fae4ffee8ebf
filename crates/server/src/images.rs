//! `GET /v1/images`: what every node's image store holds (or one node's), asked of their agents
//! at once.

use axum::extract::State;
use httpd::{Json, Query};
use serde::Deserialize;

use crate::Server;
use crate::answer::{Answer, no_node};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SourcesQuery {
    /// The image as a spec names it (`team/app:1.4`; a registry host is left out).
    image: String,
}

/// The nodes whose stores hold `image` whole: where a node that lacks it fetches it from before
/// any registry. Any node of the cluster may ask.
#[utoipa::path(get, path = "/v1/image-sources", params(SourcesQuery), responses(
    (status = 200, description = "The nodes holding the image, with their agents' addresses", body = Vec<api::ImageSource>),
    (status = 400, description = "No `image` given", body = api::ApiError)))]
pub async fn sources(
    State(ctx): State<Server>,
    Query(q): Query<SourcesQuery>,
) -> Answer<Vec<api::ImageSource>> {
    let (name, tag) = images::store_name(&q.image);
    let nodes = crate::stats::live_nodes(&ctx, None);
    let addresses: std::collections::BTreeMap<String, String> = nodes.iter().cloned().collect();
    let (stores, _) =
        crate::stats::ask_agents::<api::NodeImages>(&ctx, nodes, "/v1/agent/images").await;
    let holders = stores
        .into_iter()
        .filter(|s| {
            (s.images.iter()).any(|i| i.name == name && i.tag == tag && i.missing_blobs == 0)
        })
        .filter_map(|s| {
            let address = addresses.get(&s.node)?.clone();
            Some(api::ImageSource {
                node: s.node,
                address,
            })
        });
    Ok(Json(holders.collect()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImagesQuery {
    /// Only this node.
    node: Option<String>,
}

/// Each node's stored images, as its agent lists them now, with the services using each and
/// those keeping it for rollback only.
#[utoipa::path(get, path = "/v1/images", params(ImagesQuery), responses(
    (status = 200, description = "Each node's images", body = api::ClusterImages),
    (status = 404, description = "No such node", body = api::ApiError)))]
pub async fn images(
    State(ctx): State<Server>,
    Query(q): Query<ImagesQuery>,
) -> Answer<api::ClusterImages> {
    let nodes = crate::stats::live_nodes(&ctx, q.node.as_ref());
    if let Some(name) = q.node.as_ref().filter(|_| nodes.is_empty()) {
        return Err(no_node(name));
    }
    let (mut nodes, unreachable) =
        crate::stats::ask_agents::<api::NodeImages>(&ctx, nodes, "/v1/agent/images").await;
    crate::image_gc::annotate(&ctx, &mut nodes);
    Ok(Json(api::ClusterImages { nodes, unreachable }))
}
