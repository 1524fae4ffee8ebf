//! The Raft group: who is in it, how a server joins and leaves, and which server answers what.
//!
//! - Membership changes go through openraft. A joining server asks any server
//!   (`POST /v1/cluster/servers`); the leader gives it a Raft id no server ever had (a counter in
//!   the replicated state that every applied membership moves past its members) and adds it as
//!   a learner.
//!   Once the joiner runs with that id it asks to vote (`POST /v1/cluster/servers/{id}/voter`):
//!   the leader waits until it caught up with the log (bounded), then makes it a voter.
//!   `DELETE /v1/cluster/servers/{id}` removes a server; replacing a dead one is removing it and
//!   joining a new one. One change at a time: the leader holds a lock across each.
//! - Any server answers the API ([`at_leader`]): writes and the reads that must be current are
//!   forwarded, with the caller's credentials, to the leader, which commits the writes and answers
//!   the reads after openraft's read-index check (`ensure_linearizable`), so a read never misses
//!   a write that was acknowledged before it; the one voter of a group of one skips the check
//!   once it applied an entry of its own term ([`reads_locally`] says why that is as current).
//!   openraft 0.9 offers that check on the leader only;
//!   forwarding costs one hop and needs nothing else. Blocking queries, logs and
//!   `/v1/status` are answered by the server reached, from its own applied state.
//! - Joins are authenticated by one function, [`authorize_server`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use api::{ClusterInfo, MemberRequest, MemberResponse, Membership, ServerInfo};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use httpd::{BodyLimit, DEFAULT_BODY_LIMIT, Path};
use openraft::ChangeMembers;
use openraft::error::{CheckIsLeaderError, RaftError};
use store::raft::{Node, NodeId};

use crate::answer::{Answer, Fail, Json};
use crate::{Server, ServerError};

/// The header a server sets on a request it forwards to the leader. A server that receives a
/// forwarded request and is not the leader answers 503 instead of forwarding it on: a request
/// is forwarded at most once, never in a loop while leadership moves.
pub const FORWARDED: &str = "outpost-forwarded";

/// 60 s for a joining server to catch up with the log before it is made a voter: a snapshot of
/// a large site is a few dozen 1 MiB chunks, each within the 10 s install timeout.
pub const CATCH_UP: Duration = Duration::from_secs(60);

/// 2 min: the longest a forwarded request may take; the time limit of the route it came in
/// on (30 s, or [`CATCH_UP`] and more for a join) ends it first.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

/// The one check a request to change the group's membership passes: a server's certificate
/// (a joining server has one from `POST /v1/join`) or the admin token.
pub fn authorize_server(req: &Request) -> Result<(), Fail> {
    use crate::access::Caller;
    match req.extensions().get::<Caller>() {
        Some(Caller::Server(_) | Caller::Admin) => Ok(()),
        Some(Caller::Agent(me)) => Err(Fail::new(
            StatusCode::FORBIDDEN,
            format!(
                "the certificate of agent {me} may not change the group of servers: a server \
                 joins with `outpost server join ADDR --token SERVER_TOKEN`"
            ),
        )),
        _ => Err(Fail::new(
            StatusCode::UNAUTHORIZED,
            "changing the group of servers needs a server's certificate or the admin token",
        )),
    }
}

/// Middleware of the membership routes: [`authorize_server`].
pub async fn server_only(req: Request, next: Next) -> Response {
    match authorize_server(&req) {
        Ok(()) => next.run(req).await,
        Err(fail) => fail.into_response(),
    }
}

/// What this server knows of the group: each member, and who leads.
pub fn info(ctx: &Server) -> ClusterInfo {
    let metrics = ctx.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let servers = membership
        .nodes()
        .map(|(id, node)| ServerInfo {
            id: *id,
            name: node.name.clone(),
            address: node.addr.clone(),
            membership: if voters.contains(id) {
                Membership::Voter
            } else {
                Membership::Learner
            },
            leader: metrics.current_leader == Some(*id),
        })
        .collect();
    ClusterInfo {
        leader: metrics.current_leader,
        answered_by: ctx.id,
        servers,
    }
}

/// The servers of the group, as this server knows them.
#[utoipa::path(get, path = "/v1/cluster", responses(
    (status = 200, description = "The servers of the group and which one leads", body = ClusterInfo)))]
pub async fn cluster(State(ctx): State<Server>) -> Json<ClusterInfo> {
    Json(info(&ctx))
}

/// A server asks to join: it is given a Raft id never given before and added as a learner.
#[utoipa::path(post, path = "/v1/cluster/servers", request_body = MemberRequest, responses(
    (status = 200, description = "The new server's id; it is a learner until it asks to vote", body = MemberResponse),
    (status = 409, description = "A member already has that address", body = api::ApiError)))]
pub async fn join(
    State(ctx): State<Server>,
    Json(req): Json<MemberRequest>,
) -> Answer<MemberResponse> {
    let address = req.address.trim();
    if !is_host_port(address) {
        return Err(Fail::invalid_at(
            "the join was refused",
            "address",
            format!(
                "{address:?} is not host:port (a port from 1 to 65535); give the joining \
                 server's --advertise"
            ),
        ));
    }
    let _one_change = ctx.membership.lock().await;
    let nodes = members(&ctx);
    if let Some((id, _)) = nodes.iter().find(|(_, n)| n.addr == address) {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            format!(
                "server {id} already has the address {address}; remove it first \
                 (`outpost server leave {id}`) or join from another address"
            ),
        ));
    }
    // Every membership change committed before this one applied here, so the state's counter
    // has seen every id ever given (a new leader may still be applying its predecessor's).
    confirm_leading(&ctx.raft).await.map_err(unconfirmed)?;
    let id = ctx.state.read(|s| s.fresh_server_id(nodes.keys().copied()));
    let node = Node {
        addr: address.to_string(),
        name: name_or_default(&req.name, id),
    };
    ctx.raft
        .add_learner(id, node, false)
        .await
        .map_err(|e| unavailable(format!("cannot add server {id} as a learner: {e}")))?;
    tracing::info!("server {id} at {address} joined as a learner");
    Ok(Json(MemberResponse {
        id,
        servers: info(&ctx).servers,
    }))
}

/// A learner asks to vote: once it caught up with the log it becomes a voter.
#[utoipa::path(post, path = "/v1/cluster/servers/{id}/voter",
    params(("id" = u64, Path, description = "The server's Raft id")),
    responses(
        (status = 200, description = "The server is a voter", body = MemberResponse),
        (status = 404, description = "No such server", body = api::ApiError)))]
pub async fn promote(State(ctx): State<Server>, Path(id): Path<u64>) -> Answer<MemberResponse> {
    let _one_change = ctx.membership.lock().await;
    let voters = voters(&ctx);
    if voters.contains(&id) {
        return Ok(Json(MemberResponse {
            id,
            servers: info(&ctx).servers,
        }));
    }
    if !members(&ctx).contains_key(&id) {
        return Err(no_server(id));
    }
    caught_up(&ctx, id).await?;
    ctx.raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(|e| unavailable(format!("cannot make server {id} a voter: {e}")))?;
    tracing::info!("server {id} is a voter");
    Ok(Json(MemberResponse {
        id,
        servers: info(&ctx).servers,
    }))
}

/// Remove a server from the group (it may be dead: this is how a dead server is replaced).
#[utoipa::path(delete, path = "/v1/cluster/servers/{id}",
    params(("id" = u64, Path, description = "The server's Raft id")),
    responses(
        (status = 200, description = "The group without the server", body = ClusterInfo),
        (status = 404, description = "No such server", body = api::ApiError),
        (status = 409, description = "The server is the last voter", body = api::ApiError)))]
pub async fn remove(State(ctx): State<Server>, Path(id): Path<u64>) -> Answer<ClusterInfo> {
    let _one_change = ctx.membership.lock().await;
    if !members(&ctx).contains_key(&id) {
        return Err(no_server(id));
    }
    let voters = voters(&ctx);
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(Fail::new(
                StatusCode::CONFLICT,
                format!(
                    "server {id} is the group's last voter: without it nothing could be \
                     committed; join another server first"
                ),
            ));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    ctx.raft
        .change_membership(change, false)
        .await
        .map_err(|e| unavailable(format!("cannot remove server {id}: {e}")))?;
    tracing::info!("server {id} left the group");
    Ok(Json(info(&ctx)))
}

/// `host:port`, with a host of visible characters and a port from 1 to 65535.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !host.is_empty()
        && host.chars().all(|c| c.is_ascii_graphic() && c != '/')
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn members(ctx: &Server) -> BTreeMap<NodeId, Node> {
    let metrics = ctx.raft.metrics().borrow().clone();
    metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect()
}

fn voters(ctx: &Server) -> BTreeSet<NodeId> {
    let metrics = ctx.raft.metrics().borrow().clone();
    metrics.membership_config.membership().voter_ids().collect()
}

/// `name`, or `server-ID` when the joiner gave none.
pub fn name_or_default(name: &str, id: NodeId) -> String {
    let name = name.trim();
    if name.is_empty() {
        format!("server-{id}")
    } else {
        name.to_string()
    }
}

/// Waits until the leader has replicated to `id` everything it had when asked, or [`CATCH_UP`].
async fn caught_up(ctx: &Server, id: NodeId) -> Result<(), Fail> {
    let mut metrics = ctx.raft.metrics();
    let target = metrics.borrow().last_log_index.unwrap_or(0);
    let matched = |m: &store::raft::RaftMetrics| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(&id).cloned().flatten())
            .map_or(0, |log| log.index)
    };
    let waited = tokio::time::timeout(CATCH_UP, async {
        metrics.wait_for(|m| matched(m) >= target).await.is_ok()
    })
    .await;
    match waited {
        Ok(true) => Ok(()),
        Ok(false) => Err(unavailable("this server is stopping".into())),
        Err(_) => {
            let at = matched(&ctx.raft.metrics().borrow());
            Err(unavailable(format!(
                "server {id} did not catch up with the log within {CATCH_UP:?} (it has {at} of \
                 {target} entries); is it running and reachable at its advertised address?"
            )))
        }
    }
}

fn no_server(id: NodeId) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("no server with id {id} in the group (see `outpost nodes`)"),
    )
}

fn unavailable(message: String) -> Fail {
    Fail::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{message}; retry shortly"),
    )
}

/// Where a request is answered.
enum Answerer {
    Here,
    Leader { id: NodeId, addr: String },
}

/// 4 s: twice the longest silence before a follower campaigns (lease and timeout, 2 s). A request that arrives while the group has no
/// leader (a server just started, or the leader just died) waits this long for one to be
/// elected before it is answered 503.
const LEADER_WAIT: Duration = Duration::from_secs(4);

/// The leader this server knows of, with its address; `None` while there is none.
fn leader_of(metrics: &store::raft::RaftMetrics) -> Option<(NodeId, String)> {
    let id = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&id)?;
    Some((id, node.addr.clone()))
}

/// The leader, waiting up to [`LEADER_WAIT`] for one to be elected.
async fn leader(ctx: &Server) -> Option<(NodeId, String)> {
    let mut metrics = ctx.raft.metrics();
    let known = async {
        let m = metrics.wait_for(|m| leader_of(m).is_some()).await.ok()?;
        leader_of(&m)
    };
    tokio::time::timeout(LEADER_WAIT, known)
        .await
        .ok()
        .flatten()
}

/// How long a leader may go without hearing from a majority before it stops answering: the
/// longest silence after which a follower campaigns (lease and timeout, 2 s). openraft 0.9
/// keeps a leader that lost its majority leading until it hears of a higher term, so without
/// this a write sent to a cut-off leader would wait for a commit that cannot come.
const MAJORITY_SILENCE_MS: u64 = 2 * store::raft::ELECTION_TIMEOUT_MS.1;

/// The milliseconds since a majority last answered this leader, when that is longer than
/// [`MAJORITY_SILENCE_MS`]; a group of one always has its majority.
fn unheard_majority(metrics: &store::raft::RaftMetrics) -> Option<u64> {
    let voters = metrics.membership_config.membership().voter_ids().count();
    let silent = metrics.millis_since_quorum_ack?;
    (voters > 1 && silent > MAJORITY_SILENCE_MS).then_some(silent)
}

/// Waits until this leader has not heard from a majority for [`MAJORITY_SILENCE_MS`], and
/// says for how long; never, while it hears from one.
async fn majority_lost(ctx: &Server) -> u64 {
    let mut metrics = ctx.raft.metrics();
    let lost = (metrics.wait_for(|m| unheard_majority(m).is_some()).await)
        .map(|m| unheard_majority(&m).unwrap_or(MAJORITY_SILENCE_MS));
    match lost {
        Ok(silent) => silent,
        // Raft stopped: the server is shutting down, and the request ends with it.
        Err(_) => std::future::pending().await,
    }
}

/// Here if this server leads (for a read: once the read-index check confirmed it), else the
/// leader's address.
async fn answerer(ctx: &Server, method: &Method) -> Result<Answerer, Fail> {
    let no_leader = || unavailable("no leader is elected at the moment".into());
    let (id, addr) = leader(ctx).await.ok_or_else(no_leader)?;
    if id != ctx.id {
        return Ok(Answerer::Leader { id, addr });
    }
    if let Some(silent) = unheard_majority(&ctx.raft.metrics().borrow()) {
        return Err(unavailable(format!(
            "this server leads but has heard from no majority of the servers for {silent} ms: \
             it is cut off from them, and another server may lead by now"
        )));
    }
    if method != Method::GET || reads_locally(&ctx.raft.metrics().borrow(), ctx.id) {
        return Ok(Answerer::Here);
    }
    match confirm_leading(&ctx.raft).await {
        Ok(()) => Ok(Answerer::Here),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) => Ok(Answerer::Leader {
                    id,
                    addr: node.addr,
                }),
                _ => Err(no_leader()),
            }
        }
        Err(e) => Err(unconfirmed(e)),
    }
}

/// Whether this leader's applied state already answers a current read, without the read-index
/// round: it is the group's one voter, so no other server can lead without it, and it applied
/// an entry of its own term, so every entry an earlier leader acknowledged is applied too. Every
/// write it acknowledged was applied before the acknowledgement. The round would go through
/// openraft's core, which takes one message at a time and awaits each append's flush, and then
/// wait for everything committed to be applied: under a steady load of reports, seconds.
fn reads_locally(metrics: &store::raft::RaftMetrics, me: NodeId) -> bool {
    let mut voters = metrics.membership_config.membership().voter_ids();
    let alone = voters.next() == Some(me) && voters.next().is_none();
    let applied_term = metrics.last_applied.map(|id| id.leader_id.get_term());
    alone && metrics.current_leader == Some(me) && applied_term == Some(metrics.current_term)
}

/// How many rounds [`confirm_leading`] tries, and the pause between two.
const CONFIRM_ROUNDS: u32 = 5;
const CONFIRM_PAUSE: Duration = Duration::from_millis(100);

/// `Raft::ensure_linearizable`, tried again when a round heard too few servers. openraft counts
/// only answers that arrive within one heartbeat interval (100 ms), so a busy follower makes a
/// single round fail although the group is whole; a leader that is really cut off fails every
/// round, and a server that is not the leader is told so at once.
pub async fn confirm_leading(
    raft: &store::raft::Raft,
) -> Result<(), RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>> {
    let mut round = 1;
    loop {
        match raft.ensure_linearizable().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                if round < CONFIRM_ROUNDS =>
            {
                round += 1;
                tokio::time::sleep(CONFIRM_PAUSE).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Middleware of the routes the leader answers: writes and current reads. See the module doc.
pub async fn at_leader(State(ctx): State<Server>, req: Request, next: Next) -> Response {
    let forwarded = req.headers().contains_key(FORWARDED);
    match answerer(&ctx, req.method()).await {
        Ok(Answerer::Here) => tokio::select! {
            answer = next.run(req) => answer,
            silent = majority_lost(&ctx) => unavailable(format!(
                "this server lost its majority while answering (none heard for {silent} ms); \
                 the request may or may not have been applied"
            ))
            .into_response(),
        },
        Ok(Answerer::Leader { id, .. }) if forwarded => unavailable(format!(
            "this server is not the leader any more (server {id} is)"
        ))
        .into_response(),
        Ok(Answerer::Leader { id, addr }) => forward(&ctx, id, &addr, req).await,
        Err(fail) => fail.into_response(),
    }
}

/// Sends `req` to the leader as it came, with the caller's credentials, and relays the answer.
async fn forward(ctx: &Server, id: NodeId, addr: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let limit = parts
        .extensions
        .get::<BodyLimit>()
        .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Fail::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over the limit of {limit} bytes, or was cut off \
                 (raise the limit with --max-body-size)"
            ),
        )
        .into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = ctx
        .http
        .request(
            parts.method.clone(),
            format!("{}://{addr}{path}", ctx.scheme()),
        )
        .header(FORWARDED, ctx.id.to_string())
        .timeout(FORWARD_TIMEOUT)
        .body(bytes);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = parts.headers.get(&name) {
            out = out.header(name, value);
        }
    }
    // The leader sees this server's certificate; it decides by the caller checked here.
    if let Some(caller) = parts.extensions.get::<crate::access::Caller>() {
        out = out.header(crate::access::ON_BEHALF, caller.header());
    }
    // A leader cut off mid-request never answers, and its connection is not closed: once
    // another server leads, the request is given up so the caller can send it there.
    let mut metrics = ctx.raft.metrics();
    let deposed = async {
        let now = metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != id));
        now.await.ok().and_then(|m| m.current_leader)
    };
    tokio::select! {
        answer = out.send() => match answer {
            Ok(answer) => relay(answer).await,
            Err(e) => unavailable(format!(
                "the leader (server {id} at {addr}) did not answer: {}",
                root_cause(&e)
            ))
            .into_response(),
        },
        Some(now) = deposed => unavailable(format!(
            "the leader (server {id} at {addr}) did not answer before server {now} was elected \
             in its place; the request may or may not have been applied"
        ))
        .into_response(),
    }
}

/// The leader's answer, as this server's.
async fn relay(answer: reqwest::Response) -> Response {
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE.as_str(), api::CONTINUE_HEADER] {
        if let Some(value) = answer.headers().get(name)
            && let Ok(name) = header::HeaderName::from_bytes(name.as_bytes())
        {
            headers.insert(name, value.clone());
        }
    }
    match answer.bytes().await {
        Ok(body) => (status, headers, Body::from(body)).into_response(),
        Err(e) => unavailable(format!(
            "the leader's answer was cut off: {}",
            root_cause(&e)
        ))
        .into_response(),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// The joining side: asks the server at `target` to add a server at `address` as a learner.
pub(crate) async fn ask_to_join(
    http: &reqwest::Client,
    scheme: &str,
    target: &str,
    token: &str,
    req: &MemberRequest,
) -> Result<MemberResponse, ServerError> {
    let url = format!("{}/v1/cluster/servers", base(target, scheme));
    call(http.post(url).bearer_auth(token).json(req), target).await
}

/// The joining side, once it runs with its id: asks to be made a voter, retrying while the
/// group has no leader or the one asked stops answering, until [`CATCH_UP`] and more pass.
pub(crate) async fn ask_to_vote(
    http: &reqwest::Client,
    scheme: &str,
    targets: &[String],
    token: &str,
    id: NodeId,
) -> Result<MemberResponse, ServerError> {
    let deadline = tokio::time::Instant::now() + CATCH_UP * 2;
    let mut attempt = 0usize;
    loop {
        let target = &targets[attempt % targets.len()];
        let url = format!("{}/v1/cluster/servers/{id}/voter", base(target, scheme));
        match call(http.post(url).bearer_auth(token), target).await {
            Ok(done) => return Ok(done),
            Err(ServerError::Join { retry: true, .. })
                if tokio::time::Instant::now() < deadline =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A server that joined but stopped before it was made a voter is a learner on its restart:
/// once it hears from a leader it asks that leader to vote, as the join would have.
pub(crate) async fn vote_if_learner(ctx: Server) {
    let mut metrics = ctx.raft.metrics();
    let me = ctx.id;
    let heard = metrics
        .wait_for(|m| m.current_leader.is_some_and(|l| l != me))
        .await
        .map(|m| m.clone());
    let Ok(m) = heard else { return };
    let membership = m.membership_config.membership();
    let learner = membership.learner_ids().any(|id| id == me);
    let leader = m
        .current_leader
        .and_then(|l| membership.get_node(&l))
        .map(|n| n.addr.clone());
    let (true, Some(leader)) = (learner, leader) else {
        return;
    };
    tracing::info!("this server is still a learner; asking the leader at {leader} to vote");
    if let Err(e) = ask_to_vote(&ctx.http, ctx.scheme(), &[leader], &ctx.token, me).await {
        tracing::warn!("{e}; restart this server to ask again");
    }
}

fn base(target: &str, scheme: &str) -> String {
    let bare = target.trim_end_matches('/');
    if bare.starts_with("http://") || bare.starts_with("https://") {
        bare.to_string()
    } else {
        format!("{scheme}://{bare}")
    }
}

/// A data dir that joined earlier, started again with `server join` (a unit's fixed command
/// line): refused when the group at `target` no longer has server `id` (it left); otherwise
/// started as a plain restart would be, also when `target` cannot say (the group may be
/// starting again too, and a plain restart would not ask it either).
pub(crate) async fn check_rejoin(
    http: &reqwest::Client,
    scheme: &str,
    target: &str,
    token: &str,
    dir: &std::path::Path,
    id: NodeId,
) -> Result<(), ServerError> {
    let url = format!("{}/v1/cluster", base(target, scheme));
    match call::<ClusterInfo>(http.get(url).bearer_auth(token), target).await {
        Ok(info) if !info.servers.iter().any(|s| s.id == id) => Err(ServerError::LeftGroup {
            dir: dir.to_path_buf(),
            id,
            target: target.to_string(),
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            let why = match e {
                ServerError::Join { message, .. } => message,
                other => other.to_string(),
            };
            tracing::warn!(
                "cannot ask the server at {target} whether the group still has server {id} \
                 ({why}); starting as that server, as the data dir says"
            );
            Ok(())
        }
    }
}

async fn call<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    target: &str,
) -> Result<T, ServerError> {
    let failed = |message: String, retry: bool| ServerError::Join {
        target: target.to_string(),
        message,
        retry,
    };
    let answer = req.timeout(FORWARD_TIMEOUT).send().await.map_err(|e| {
        let why = root_cause(&e);
        failed(
            format!("{why} (is a server of the group running there?)"),
            true,
        )
    })?;
    let status = answer.status();
    let text = answer
        .text()
        .await
        .map_err(|e| failed(root_cause(&e), true))?;
    if status.is_success() {
        return serde_json::from_str(&text)
            .map_err(|e| failed(format!("unexpected answer: {e}"), false));
    }
    let said = serde_json::from_str::<api::ApiError>(&text).map_or(text, |e| e.error);
    Err(failed(
        format!("{status}: {said}"),
        status == StatusCode::SERVICE_UNAVAILABLE,
    ))
}

/// A leader that could not confirm it still leads: it heard from no majority of its group in
/// time (cut off from its peers, or they are down).
pub fn unconfirmed(e: impl std::fmt::Display) -> httpd::Fail {
    unavailable(format!(
        "cannot confirm this server still leads: no majority of its group answered it ({e}); \
         retry shortly, or ask another server"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_address_is_host_and_port() {
        for good in ["127.0.0.1:7400", "server-2.site:1", "[::1]:7400"] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in [
            "",
            "127.0.0.1",
            ":7400",
            "host:0",
            "host:99999",
            "http://h:1/x",
            "a b:1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    /// Server 1 leading in `term`, with `voters`, having applied an entry of `applied_term`.
    fn leading(term: u64, applied_term: u64, voters: &[NodeId]) -> store::raft::RaftMetrics {
        let mut m = store::raft::RaftMetrics::new_initial(1);
        m.current_term = term;
        m.current_leader = Some(1);
        let leader = openraft::CommittedLeaderId::new(applied_term, 1);
        m.last_applied = Some(openraft::LogId::new(leader, 7));
        let nodes: BTreeMap<NodeId, Node> =
            voters.iter().map(|id| (*id, Node::default())).collect();
        let config = openraft::Membership::new(vec![voters.iter().copied().collect()], nodes);
        m.membership_config =
            std::sync::Arc::new(store::raft::StoredMembership::new(m.last_applied, config));
        m
    }

    #[test]
    fn only_a_lone_voter_that_applied_its_own_term_reads_without_a_round() {
        assert!(reads_locally(&leading(3, 3, &[1]), 1));
        // Entries of an earlier leader may still be unapplied: its noop is not applied yet.
        assert!(!reads_locally(&leading(3, 2, &[1]), 1));
        // Another voter may have elected a leader of its own.
        assert!(!reads_locally(&leading(3, 3, &[1, 2]), 1));
        assert!(!reads_locally(&leading(3, 3, &[2]), 1));
        let mut follower = leading(3, 3, &[1]);
        follower.current_leader = Some(2);
        assert!(!reads_locally(&follower, 1));
    }
}
