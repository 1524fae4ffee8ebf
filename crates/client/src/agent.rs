//! The agent's own API as the leader and other agents call it to tell a dead node from one
//! whose heartbeats alone are lost: `GET /v1/agent/health` and `POST /v1/agent/probe`. Both
//! carry the same bearer token as every other call of the agent's API.

use std::time::Duration;

use api::{ProbeAnswer, ProbeRequest};
use futures_util::future::join_all;
use reqwest::Method;

use crate::{Client, ClientError};

/// 500 ms: how long one probe attempt waits for the target's health answer. A live agent on a
/// LAN answers in milliseconds; the margin absorbs one retransmitted packet (Linux's minimum
/// retransmission timeout is 200 ms) and a busy machine, and a round still ends well inside the
/// 2 s detection target.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// 3 attempts, made at once, each on its own connection: on a lossy link each is an
/// independent chance (a lost SYN is only retried after a second), and a round takes one
/// [`PROBE_TIMEOUT`] however many fail.
pub const PROBE_ATTEMPTS: usize = 3;

/// How long the leader waits for a helper's answer: the helper's own probe plus a round trip.
pub const HELPER_TIMEOUT: Duration = Duration::from_millis(1_000);

/// A client of one agent's API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentClient(Client);

impl AgentClient {
    /// The agent at `base` (its registered address, `http://HOST:PORT`), over `http`.
    pub fn new(http: reqwest::Client, base: &str, token: &str) -> AgentClient {
        AgentClient(Client::with_http(http, base, token, "https"))
    }

    /// Whether the agent answers its health route within `timeout`.
    pub async fn health(&self, timeout: Duration) -> Result<(), ClientError> {
        let req = self.0.request(Method::GET, "/v1/agent/health");
        self.0.execute(req.timeout(timeout)).await.map(drop)
    }

    /// Asks this agent whether it can reach the agent API at `target`.
    pub async fn probe(&self, target: &str) -> Result<bool, ClientError> {
        let body = ProbeRequest {
            address: target.to_string(),
        };
        let req = self.0.request(Method::POST, "/v1/agent/probe").json(&body);
        let answer: ProbeAnswer = self.0.send(req, HELPER_TIMEOUT).await?;
        Ok(answer.reached)
    }
}

/// Whether the agent API at `address` answers: [`PROBE_ATTEMPTS`] health requests at once,
/// each given [`PROBE_TIMEOUT`]; one answer is enough.
pub async fn reachable(http: &reqwest::Client, address: &str, token: &str) -> bool {
    let agent = AgentClient::new(http.clone(), address, token);
    let attempts = (0..PROBE_ATTEMPTS).map(|_| agent.health(PROBE_TIMEOUT));
    join_all(attempts).await.iter().any(Result::is_ok)
}
