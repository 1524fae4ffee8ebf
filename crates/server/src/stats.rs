//! `GET /v1/stats`: what the nodes and their tasks use now, asked of every node's agent (or one
//! node's, or for one service's tasks) at once.

use std::time::Duration;

use axum::extract::State;
use httpd::{Json, Query};
use serde::Deserialize;

use crate::Server;
use crate::answer::{Answer, no_node, no_service};

/// How long a node's agent has to answer before the node is listed as unreachable.
const STATS_WAIT: Duration = Duration::from_secs(2);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Only the tasks of this service.
    service: Option<String>,
    /// Only this node.
    node: Option<String>,
}

/// Each node's counters and its running tasks', as its agent reads them now.
#[utoipa::path(get, path = "/v1/stats", params(StatsQuery), responses(
    (status = 200, description = "The readings", body = api::ClusterUsage),
    (status = 404, description = "No such service or node", body = api::ApiError)))]
pub async fn stats(
    State(ctx): State<Server>,
    Query(q): Query<StatsQuery>,
) -> Answer<api::ClusterUsage> {
    let nodes = live_nodes(&ctx, q.node.as_ref());
    let service_known = ctx
        .state
        .read(|s| (q.service.as_ref()).is_none_or(|name| s.services.contains_key(name)));
    if let Some(name) = q.service.as_ref().filter(|_| !service_known) {
        return Err(no_service(name));
    }
    if let Some(name) = q.node.as_ref().filter(|_| nodes.is_empty()) {
        return Err(no_node(name));
    }
    let filter = match &q.service {
        // Service names are DNS labels joined by `_`: nothing to escape in a query.
        Some(name) => format!("?service={name}"),
        None => String::new(),
    };
    let path = format!("/v1/agent/stats{filter}");
    let (nodes, unreachable) = ask_agents(&ctx, nodes, &path).await;
    Ok(Json(api::ClusterUsage { nodes, unreachable }))
}

/// (name, agent address) of every node not lost (or of `only`): the agents to ask.
pub(crate) fn live_nodes(ctx: &Server, only: Option<&String>) -> Vec<(String, String)> {
    ctx.state.read(|s| {
        (s.nodes.iter())
            .filter(|(name, n)| !n.state.is_lost() && only.is_none_or(|w| w == *name))
            .map(|(name, n)| (name.clone(), n.address.clone()))
            .collect()
    })
}

/// `path` of every (node, agent address) at once, each given [`STATS_WAIT`]: the answers, and
/// the nodes whose agent did not answer with why.
pub(crate) async fn ask_agents<T: serde::de::DeserializeOwned>(
    ctx: &Server,
    nodes: Vec<(String, String)>,
    path: &str,
) -> (Vec<T>, Vec<api::Unreachable>) {
    ask_agents_with(ctx, nodes, reqwest::Method::GET, path, STATS_WAIT).await
}

/// [`ask_agents`] with another method and wait.
pub(crate) async fn ask_agents_with<T: serde::de::DeserializeOwned>(
    ctx: &Server,
    nodes: Vec<(String, String)>,
    method: reqwest::Method,
    path: &str,
    wait: Duration,
) -> (Vec<T>, Vec<api::Unreachable>) {
    let asks = nodes.into_iter().map(|(node, address)| {
        let request = (ctx.http.request(method.clone(), format!("{address}{path}")))
            .bearer_auth(&ctx.token)
            .timeout(wait);
        async move {
            let answer = match request.send().await {
                Ok(r) if r.status().is_success() => r.json::<T>().await,
                Ok(r) => {
                    let status = r.status();
                    // The agent's own word (an `ApiError`), when it gave one.
                    let why = (r.json::<api::ApiError>().await)
                        .map_or(String::new(), |e| format!(": {}", e.error));
                    return Err((node, format!("its agent answered {status}{why}")));
                }
                Err(e) => Err(e),
            };
            answer.map_err(|e| (node, format!("cannot reach its agent at {address}: {e}")))
        }
    });
    let (mut answers, mut unreachable) = (Vec::new(), Vec::new());
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(answer) => answers.push(answer),
            Err((node, error)) => unreachable.push(api::Unreachable { node, error }),
        }
    }
    (answers, unreachable)
}
