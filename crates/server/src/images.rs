//! `GET /v1/images`: what every node's image store holds (or one node's), asked of their agents
//! at once.

use axum::extract::State;
use httpd::{Json, Query};
use serde::Deserialize;

use crate::Server;
use crate::answer::{Answer, no_node};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImagesQuery {
    /// Only this node.
    node: Option<String>,
}

/// Each node's stored images, as its agent lists them now.
#[utoipa::path(get, path = "/v1/images", params(ImagesQuery), responses(
    (status = 200, description = "Each node's images", body = api::ClusterImages),
    (status = 404, description = "No such node", body = api::ApiError)))]
pub async fn images(
    State(ctx): State<Server>,
    Query(q): Query<ImagesQuery>,
) -> Answer<api::ClusterImages> {
    let nodes: Vec<(String, String)> = ctx.state.read(|s| {
        (s.nodes.iter())
            .filter(|(name, n)| !n.state.is_lost() && q.node.as_ref().is_none_or(|w| w == *name))
            .map(|(name, n)| (name.clone(), n.address.clone()))
            .collect()
    });
    if let Some(name) = q.node.as_ref().filter(|_| nodes.is_empty()) {
        return Err(no_node(name));
    }
    let (nodes, unreachable) =
        crate::stats::ask_agents::<api::NodeImages>(&ctx, nodes, "/v1/agent/images").await;
    Ok(Json(api::ClusterImages { nodes, unreachable }))
}
