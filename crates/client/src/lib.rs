//! A typed client of Outpost's `/v1` HTTP API. The agent uses it to register, watch its
//! assignments and report; the CLI uses it for everything a user asks. It knows the wire types of
//! the `api` crate and nothing of how the server stores them.
//!
//! - [`agent`]: the agent's own API as servers and other agents call it: health and probes.

pub mod agent;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{
    ApiError, Assignments, ClusterInfo, ClusterStatus, DeployRequest, DeployResponse, Events,
    JoinRequest, JoinResponse, Level, Node, NodeInfo, RegisterRequest, ScaleRequest,
    ServiceSummary, StatusReport, Task, TaskState, TokenAnswer,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Outpost API at {url}: {} (is it running? check --api / OUTPOST_API)", root_cause(.cause))]
    Unreachable { url: String, cause: reqwest::Error },
    #[error("the API refused the token (401): {message}")]
    Unauthorized { message: String },
    /// The TLS handshake failed on the server's certificate: not the cluster's CA, or a token
    /// of another cluster.
    #[error(
        "the server at {url} is not trusted: {reason} (check --ca / OUTPOST_CA: it must be this cluster's CA certificate; a joiner checks the CA digest in its token)"
    )]
    Untrusted { url: String, reason: String },
    #[error("{}", render_api_error(.status, .error))]
    Api { status: StatusCode, error: ApiError },
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    /// A name that cannot be sent as a path segment: URLs resolve `.` and `..` away.
    #[error("no {what} named {name:?}: names are never empty, `.` or `..` ({hint})")]
    BadName {
        name: String,
        what: &'static str,
        hint: &'static str,
    },
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            _ => None,
        }
    }
}

/// A request that got no answer: untrusted when the TLS handshake refused the server's
/// certificate, unreachable otherwise.
fn unreachable(base: &str, cause: reqwest::Error) -> ClientError {
    if let Some(tls) = tls_error(&cause) {
        return ClientError::Untrusted {
            url: base.to_string(),
            reason: tls.to_string(),
        };
    }
    ClientError::Unreachable {
        url: base.to_string(),
        cause,
    }
}

/// The TLS error somewhere in a chain. An io::Error's `source` skips the error it wraps (and
/// the connector wraps rustls' in two), so those are looked into as well.
fn tls_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        e = match wrapped {
            Some(inner) => inner,
            None => e.source()?,
        };
    }
}

/// The innermost error of a chain: reqwest repeats the request line at every level.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

fn render_api_error(status: &StatusCode, error: &ApiError) -> String {
    let mut out = error.error.clone();
    for p in &error.problems {
        out.push_str(&format!("\n  {}: {}", p.path, p.message));
    }
    if error.error.is_empty() {
        out = format!("request failed with {status}");
    }
    out
}

/// A client of a cluster's servers, with its token. Cheap to clone; clones share what they
/// learn of the servers.
///
/// It talks to one server at a time. When that one cannot be reached (the connection is
/// refused or not made: nothing was sent) or answers 503 (it has no leader to answer with),
/// the same request goes to the next server it knows, which it then keeps talking to. Every
/// write of the API is a desired state (deploy this spec, scale to N), so sending one again
/// after an unclear 503 does no harm. It knows the servers it was given (several, separated by
/// commas) and those [`Client::learn_servers`] found.
#[derive(Debug, Clone)]
pub struct Client {
    servers: Arc<Servers>,
    token: String,
    http: reqwest::Client,
}

/// The servers' base URLs and which one is talked to.
#[derive(Debug)]
struct Servers {
    bases: Mutex<Vec<String>>,
    current: AtomicUsize,
    /// `https` or `http`: what a learned `host:port` is reached with.
    scheme: &'static str,
}

impl Servers {
    fn list(&self) -> Vec<String> {
        self.bases.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `host:port` or a URL, as a base URL without a trailing slash; `scheme` where none is given.
fn base_url(text: &str, scheme: &str) -> String {
    let text = text.trim().trim_end_matches('/');
    if text.starts_with("http://") || text.starts_with("https://") {
        text.to_string()
    } else {
        format!("{scheme}://{text}")
    }
}

/// 60 s: above the longest blocking query (`wait` is capped at 30 s by the server).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// 150 s: a backup forwarded by a follower may take the forward's 120 s, and a large state
/// comes over a slow uplink.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(150);

/// 10 s: how long a request's bytes may go unacknowledged before its connection counts as
/// dead (TCP_USER_TIMEOUT; reqwest's default is 30 s). A server that vanished mid-request
/// (powered off, cut off) is given up on this soon; a slow but live link acknowledges within
/// a few round trips, and a server's slow answer is not limited by it.
const UNACKED_LIMIT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection is kept, 2 s: below the 5 s after which Outpost's
/// listeners close idle connections, so a request is never sent on one being closed.
const POOL_IDLE: Duration = Duration::from_secs(2);

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        Client::build(base, token, None)
    }

    /// A client whose connections leave from `local`. The server caps blocking queries per
    /// client address, so clients that stand in for many nodes on one host each need their own
    /// address (any of 127.0.0.0/8 works on loopback).
    pub fn from_address(base: &str, token: &str, local: IpAddr) -> Client {
        Client::build(base, token, Some(local))
    }

    fn build(base: &str, token: &str, local: Option<IpAddr>) -> Client {
        Client::connect(base, token, local, None)
    }

    /// A client over TLS with `tls` (the cluster CA, and a node's own certificate when it has
    /// one); a base without a scheme is `https://`.
    pub fn with_tls(base: &str, token: &str, tls: rustls::ClientConfig) -> Client {
        Client::connect(base, token, None, Some(tls))
    }

    /// A client with every option: where its connections leave from, and TLS.
    pub fn connect(
        base: &str,
        token: &str,
        local: Option<IpAddr>,
        tls: Option<rustls::ClientConfig>,
    ) -> Client {
        let scheme = if tls.is_some() { "https" } else { "http" };
        // reqwest needs a process-wide crypto provider even for plain HTTP; the binary installs
        // it at start-up, and this covers embedders and tests (a second install is a no-op).
        pki::install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .tcp_user_timeout(UNACKED_LIMIT)
            .pool_idle_timeout(POOL_IDLE)
            .local_address(local);
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder.build().unwrap_or_default();
        Client::with_http(http, base, token, scheme)
    }

    /// A client over an HTTP client of the caller's (its pool, its timeouts, its TLS); a base
    /// without a scheme gets `scheme`.
    fn with_http(http: reqwest::Client, base: &str, token: &str, scheme: &'static str) -> Client {
        let mut bases: Vec<String> = Vec::new();
        for each in base.split(',').filter(|b| !b.trim().is_empty()) {
            let url = base_url(each, scheme);
            if !bases.contains(&url) {
                bases.push(url);
            }
        }
        if bases.is_empty() {
            bases.push(base_url(base, scheme));
        }
        Client {
            servers: Arc::new(Servers {
                bases: Mutex::new(bases),
                current: AtomicUsize::new(0),
                scheme,
            }),
            token: token.to_string(),
            http,
        }
    }

    /// The base URL of the server talked to.
    pub fn base(&self) -> String {
        let list = self.servers.list();
        let at = self.servers.current.load(Ordering::Relaxed) % list.len().max(1);
        list.get(at).cloned().unwrap_or_default()
    }

    /// Every server this client knows, the one talked to first.
    pub fn servers(&self) -> Vec<String> {
        let list = self.servers.list();
        let at = self.servers.current.load(Ordering::Relaxed);
        (0..list.len())
            .map(|i| list[(at + i) % list.len()].clone())
            .collect()
    }

    /// Asks the server talked to for the group's servers and adds those not known yet, so
    /// that requests can go to them once it stops answering. Returns the group as that server
    /// knows it.
    pub async fn learn_servers(&self) -> Result<ClusterInfo, ClientError> {
        let info = self.cluster().await?;
        let mut bases = self.servers.bases.lock().unwrap_or_else(|p| p.into_inner());
        for server in &info.servers {
            let base = base_url(&server.address, self.servers.scheme);
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
        Ok(info)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base()));
        // A node with a certificate sends no token.
        if self.token.is_empty() {
            req
        } else {
            req.bearer_auth(&self.token)
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let resp = self.execute(req.timeout(timeout)).await?;
        let url = resp.url().to_string();
        resp.json::<T>().await.map_err(|e| ClientError::Protocol {
            url,
            message: e.to_string(),
        })
    }

    /// Sends `req` to the server talked to or, while they cannot be reached, to the others.
    async fn send_anywhere(&self, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let first = self.base();
        let request = req.build().map_err(|e| ClientError::Protocol {
            url: first.clone(),
            message: e.to_string(),
        })?;
        // What follows the server's address: the same on every server.
        let url = request.url();
        let tail = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let list = self.servers.list();
        let start = self.servers.current.load(Ordering::Relaxed);
        let (mut unreached, mut unavailable) = (None, None);
        for i in 0..list.len().max(1) {
            let at = (start + i) % list.len().max(1);
            let base = list.get(at).cloned().unwrap_or_else(|| first.clone());
            // A body that cannot be copied (a stream) is sent once, to the first server.
            let attempt = match (i, request.try_clone()) {
                (_, Some(mut copy)) => match reqwest::Url::parse(&format!("{base}{tail}")) {
                    Ok(url) => {
                        *copy.url_mut() = url;
                        copy
                    }
                    Err(_) => continue,
                },
                (0, None) => return self.sent(self.http.execute(request).await, &base),
                (_, None) => break,
            };
            match self.http.execute(attempt).await {
                Err(cause) if cause.is_connect() => unreached = Some((base, cause)),
                // No leader on that server's side (an election, or it is cut off from its
                // peers): another server may have one.
                Ok(answer) if answer.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    unavailable = Some(answer)
                }
                answer => {
                    self.servers.current.store(at, Ordering::Relaxed);
                    return self.sent(answer, &base);
                }
            }
        }
        match (unavailable, unreached) {
            (Some(answer), _) => Ok(answer),
            (None, Some((url, cause))) => Err(unreachable(&url, cause)),
            (None, None) => Err(ClientError::Protocol {
                url: first,
                message: "no server to send the request to".into(),
            }),
        }
    }

    fn sent(
        &self,
        answer: Result<reqwest::Response, reqwest::Error>,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        answer.map_err(|cause| unreachable(url, cause))
    }

    async fn execute(&self, req: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = self.send_anywhere(req).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let error = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| ApiError {
            error: format!("{status}: {text}"),
            problems: Vec::new(),
        });
        // A node authenticates by its certificate and sends no token: its refusal says why.
        if status == StatusCode::UNAUTHORIZED && !self.token.is_empty() {
            return Err(ClientError::Unauthorized {
                message: error.error,
            });
        }
        Err(ClientError::Api { status, error })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(Method::GET, path), REQUEST_TIMEOUT)
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(Method::POST, path).json(body), REQUEST_TIMEOUT)
            .await
    }

    pub async fn deploy(&self, req: &DeployRequest) -> Result<DeployResponse, ClientError> {
        self.post("/v1/services", req).await
    }

    /// Every service, page after page.
    pub async fn services(&self) -> Result<Vec<ServiceSummary>, ClientError> {
        self.all("/v1/services?").await
    }

    /// Every service of a stack, page after page.
    pub async fn services_in(&self, stack: &str) -> Result<Vec<ServiceSummary>, ClientError> {
        self.all(&format!("/v1/services?stack={}&", segment(stack, STACK)?))
            .await
    }

    /// A service's endpoints and every node's listeners of it, with their counters.
    pub async fn traffic(&self, service: &str) -> Result<api::ServiceTraffic, ClientError> {
        let path = format!("/v1/services/{}/traffic", segment(service, SERVICE)?);
        self.get(&path).await
    }

    /// Removes every service of a stack; answers them, now removing.
    pub async fn remove_stack(&self, stack: &str) -> Result<Vec<ServiceSummary>, ClientError> {
        self.send(
            self.request(
                Method::DELETE,
                &format!("/v1/stacks/{}", segment(stack, STACK)?),
            ),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// Every task, or every task of one service, page after page.
    pub async fn tasks(&self, service: Option<&str>) -> Result<Vec<Task>, ClientError> {
        let filter = TaskFilter {
            service: service.map(str::to_string),
            ..TaskFilter::default()
        };
        self.all(&filter.path()).await
    }

    /// Every task that matches `filter`, page after page.
    pub async fn tasks_where(&self, filter: &TaskFilter) -> Result<Vec<Task>, ClientError> {
        self.all(&filter.path()).await
    }

    /// One page of the tasks that match `filter`: at most `limit`, after the token `after`.
    pub async fn tasks_page(
        &self,
        filter: &TaskFilter,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<Task>, ClientError> {
        self.page(&filter.path(), limit, after).await
    }

    /// Every node, page after page, with the liveness the answering server sees.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.all("/v1/nodes?").await
    }

    /// One page of a listing; `path` ends in `?` or in a query.
    async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Page<T>, ClientError> {
        let mut full = format!("{path}&limit={limit}");
        if let Some(token) = after {
            full.push_str(&format!("&continue={}", encode(token)));
        }
        let req = self.request(Method::GET, &full).timeout(REQUEST_TIMEOUT);
        let resp = self.execute(req).await?;
        let url = resp.url().to_string();
        let next = resp
            .headers()
            .get(api::CONTINUE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let items = resp.json().await.map_err(|e| ClientError::Protocol {
            url,
            message: e.to_string(),
        })?;
        Ok(Page { items, next })
    }

    /// Every record of a listing, following its continue tokens.
    async fn all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut after = None;
        loop {
            let page = self.page(path, api::MAX_PAGE, after.as_deref()).await?;
            items.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// Events after `after` that match `filter`; with `wait`, blocks until at least one
    /// arrives or `wait` passes.
    pub async fn events(
        &self,
        after: u64,
        wait: Option<Duration>,
        filter: &EventFilter,
    ) -> Result<Events, ClientError> {
        let mut path = format!("/v1/events?after={after}{}", filter.query());
        if let Some(w) = wait {
            path.push_str(&format!("&wait={}ms", w.as_millis()));
        }
        self.get(&path).await
    }

    /// Where a service's rollout stands, with its revisions.
    pub async fn rollout(&self, service: &str) -> Result<api::RolloutStatus, ClientError> {
        self.get(&format!(
            "/v1/services/{}/rollout",
            segment(service, SERVICE)?
        ))
        .await
    }

    /// `pause`, `resume` or `promote` the rollout of `service`.
    pub async fn rollout_action(
        &self,
        service: &str,
        action: &str,
    ) -> Result<api::RolloutStatus, ClientError> {
        let path = format!(
            "/v1/services/{}/rollout/{action}",
            segment(service, SERVICE)?
        );
        self.post(&path, &serde_json::json!({})).await
    }

    /// Back to revision `to`, or to the one before the current.
    pub async fn rollout_undo(
        &self,
        service: &str,
        to: Option<u64>,
    ) -> Result<api::RolloutStatus, ClientError> {
        let path = format!("/v1/services/{}/rollout/undo", segment(service, SERVICE)?);
        self.post(&path, &api::UndoRequest { to_revision: to })
            .await
    }

    pub async fn scale(&self, service: &str, replicas: u32) -> Result<ServiceSummary, ClientError> {
        self.post(
            &format!("/v1/services/{}/scale", segment(service, SERVICE)?),
            &ScaleRequest { replicas },
        )
        .await
    }

    /// Drains node `name` (`drain: true`), or stops draining it.
    pub async fn drain(&self, name: &str, drain: bool) -> Result<Node, ClientError> {
        let action = if drain { "drain" } else { "undrain" };
        let path = format!("/v1/nodes/{}/{action}", segment(name, NODE)?);
        self.send(self.request(Method::POST, &path), REQUEST_TIMEOUT)
            .await
    }

    /// Restarts a service's tasks by its update rules.
    pub async fn restart_service(&self, service: &str) -> Result<ServiceSummary, ClientError> {
        let path = format!("/v1/services/{}/restart", segment(service, SERVICE)?);
        self.send(self.request(Method::POST, &path), REQUEST_TIMEOUT)
            .await
    }

    /// Restarts one task: it stops, and a new one takes its slot.
    pub async fn restart_task(&self, task: &str) -> Result<Task, ClientError> {
        let path = format!("/v1/tasks/{}/restart", segment(task, TASK)?);
        self.send(self.request(Method::POST, &path), REQUEST_TIMEOUT)
            .await
    }

    /// One service; an error naming it when there is none.
    pub async fn service(&self, service: &str) -> Result<ServiceSummary, ClientError> {
        let path = format!("/v1/services/{}", segment(service, SERVICE)?);
        self.get(&path).await
    }

    pub async fn remove(&self, service: &str) -> Result<ServiceSummary, ClientError> {
        self.send(
            self.request(
                Method::DELETE,
                &format!("/v1/services/{}", segment(service, SERVICE)?),
            ),
            REQUEST_TIMEOUT,
        )
        .await
    }

    /// The service's (or task's) log as a byte stream: what `options` asks for.
    pub async fn logs(
        &self,
        target: &str,
        options: LogOptions,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, ClientError>> + use<>, ClientError>
    {
        let LogOptions {
            tail,
            follow,
            previous,
            since,
            timestamps,
        } = options;
        let mut path = format!("/v1/logs/{}?follow={follow}", segment(target, LOG_TARGET)?);
        if previous {
            path.push_str("&previous=true");
        }
        if timestamps {
            path.push_str("&timestamps=true");
        }
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        push("since", since.as_deref(), &mut path);
        let resp = self.execute(self.request(Method::GET, &path)).await?;
        Ok(self.byte_stream(resp))
    }

    /// What every node (or `node`) and its running tasks (of `service`) use now.
    pub async fn stats(
        &self,
        service: Option<&str>,
        node: Option<&str>,
    ) -> Result<api::ClusterUsage, ClientError> {
        let mut query = String::new();
        push("service", service, &mut query);
        push("node", node, &mut query);
        self.get(&format!("/v1/stats{}", query.replacen('&', "?", 1)))
            .await
    }

    /// The nodes whose stores hold `image` whole (asked by an agent that lacks it).
    pub async fn image_sources(&self, image: &str) -> Result<Vec<api::ImageSource>, ClientError> {
        self.get(&format!("/v1/image-sources?image={}", encode(image)))
            .await
    }

    /// The images the cluster's services keep, which no node collects.
    pub async fn kept_images(&self) -> Result<Vec<api::KeptImage>, ClientError> {
        self.get("/v1/images/kept").await
    }

    /// Has every node (or `node`) collect its image store now; with `dry_run`, only say what
    /// would go.
    pub async fn prune_images(
        &self,
        node: Option<&str>,
        dry_run: bool,
    ) -> Result<api::ClusterPrune, ClientError> {
        let mut query = format!("?dry_run={dry_run}");
        push("node", node, &mut query);
        let path = format!("/v1/images/prune{query}");
        self.send(self.request(Method::POST, &path), REQUEST_TIMEOUT)
            .await
    }

    /// What every node's image store (or `node`'s) holds.
    pub async fn images(&self, node: Option<&str>) -> Result<api::ClusterImages, ClientError> {
        let mut query = String::new();
        push("node", node, &mut query);
        self.get(&format!("/v1/images{}", query.replacen('&', "?", 1)))
            .await
    }

    /// The keys image bundles are checked against.
    pub async fn image_keys(&self) -> Result<Vec<api::BundleKey>, ClientError> {
        self.get("/v1/image-keys").await
    }

    /// Trusts bundles signed by another cluster's key.
    pub async fn trust_key(
        &self,
        req: &api::TrustKeyRequest,
    ) -> Result<api::BundleKey, ClientError> {
        self.post("/v1/image-keys", req).await
    }

    /// Stops trusting key `id`.
    pub async fn revoke_key(&self, id: &str) -> Result<api::BundleKey, ClientError> {
        let path = format!("/v1/image-keys/{}", segment(id, KEY)?);
        self.send(self.request(Method::DELETE, &path), REQUEST_TIMEOUT)
            .await
    }

    /// A signed bundle of `req`'s images, as it comes: the bytes of the blobs it carries
    /// (uncompressed), and the bundle's bytes.
    pub async fn save_images(
        &self,
        req: &api::SaveRequest,
    ) -> Result<
        (
            Option<u64>,
            impl futures_util::Stream<Item = Result<Vec<u8>, ClientError>> + use<>,
        ),
        ClientError,
    > {
        let resp = (self.execute(self.request(Method::POST, "/v1/images/save").json(req))).await?;
        let carried = (resp.headers().get("x-outpost-bundle-bytes"))
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Ok((carried, self.byte_stream(resp)))
    }

    /// Loads a bundle (`body`, sent as it comes) into `node`'s store.
    pub async fn load_images(
        &self,
        node: Option<&str>,
        unsigned: bool,
        body: reqwest::Body,
    ) -> Result<api::LoadedBundle, ClientError> {
        let mut path = format!("/v1/images/load?unsigned={unsigned}");
        push("node", node, &mut path);
        let request = (self.request(Method::POST, &path))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let resp = self.execute(request).await?;
        let url = resp.url().to_string();
        resp.json().await.map_err(|e| ClientError::Protocol {
            url,
            message: e.to_string(),
        })
    }

    /// Has the nodes (every live one when `nodes` is empty) obtain `image` into their stores:
    /// the answer's body as it comes, NDJSON `api::PullLine`s.
    pub async fn pull_image(
        &self,
        image: &str,
        nodes: &[String],
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, ClientError>> + use<>, ClientError>
    {
        let body = api::PullRequest {
            image: image.to_string(),
            nodes: nodes.to_vec(),
        };
        let request = self.request(Method::POST, "/v1/images/pull").json(&body);
        let resp = self.execute(request).await?;
        Ok(self.byte_stream(resp))
    }

    /// Runs `req` beside a running task: its output as `api::exec` frames, as they come. The
    /// request body is `req` as a frame, then, with `input`, what it gives as frames, sent as it
    /// gives them (the caller's stdin and window sizes, for as long as the session lasts), on
    /// the one request. Without `input` the body is whole from the start, so it is sent to
    /// another server while one cannot be reached; a session's goes to the first server only.
    pub async fn exec<I>(
        &self,
        task: &str,
        req: &api::ExecRequest,
        input: Option<I>,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, ClientError>> + use<I>, ClientError>
    where
        I: futures_util::Stream<Item = api::ExecInput> + Send + 'static,
    {
        use futures_util::StreamExt;
        let path = format!("/v1/tasks/{}/exec", segment(task, TASK)?);
        let start = api::ExecInput::Start(req.clone()).encode();
        let body = match input {
            None => reqwest::Body::from(start),
            Some(input) => {
                let first = futures_util::stream::once(std::future::ready(start));
                let frames = first.chain(input.map(|frame| frame.encode()));
                reqwest::Body::wrap_stream(frames.map(Ok::<_, std::convert::Infallible>))
            }
        };
        let request = (self.request(Method::POST, &path))
            .header(reqwest::header::CONTENT_TYPE, api::EXEC_FRAMES)
            .body(body);
        let resp = self.execute(request).await?;
        Ok(self.byte_stream(resp))
    }

    /// An answer's body as it comes.
    fn byte_stream(
        &self,
        resp: reqwest::Response,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>, ClientError>> + use<> {
        use futures_util::StreamExt;
        let url = self.base();
        resp.bytes_stream().map(move |chunk| {
            chunk
                .map(|b| b.to_vec())
                .map_err(|e| ClientError::Protocol {
                    url: url.clone(),
                    message: e.to_string(),
                })
        })
    }

    /// The server's view of the cluster: its Raft leader and applied index.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/v1/status").await
    }

    /// The servers of the group and which one leads, as the server reached knows them.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.get("/v1/cluster").await
    }

    /// Removes server `id` from the group.
    pub async fn remove_server(&self, id: u64) -> Result<ClusterInfo, ClientError> {
        self.send(
            self.request(Method::DELETE, &format!("/v1/cluster/servers/{id}")),
            REQUEST_TIMEOUT,
        )
        .await
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<Node, ClientError> {
        self.post("/v1/nodes", req).await
    }

    pub async fn heartbeat(&self, node: &str) -> Result<(), ClientError> {
        let req = self.request(
            Method::POST,
            &format!("/v1/nodes/{}/heartbeat", segment(node, NODE)?),
        );
        self.execute(req.timeout(Duration::from_secs(2)))
            .await
            .map(drop)
    }

    pub async fn report(&self, node: &str, report: &StatusReport) -> Result<(), ClientError> {
        let req = self
            .request(
                Method::POST,
                &format!("/v1/nodes/{}/status", segment(node, NODE)?),
            )
            .json(report);
        self.execute(req.timeout(Duration::from_secs(10)))
            .await
            .map(drop)
    }

    /// Removes a node: its tasks are placed again elsewhere and its certificates revoked.
    pub async fn remove_node(&self, node: &str) -> Result<(), ClientError> {
        let req = self.request(
            Method::DELETE,
            &format!("/v1/nodes/{}", segment(node, NODE)?),
        );
        self.execute(req.timeout(REQUEST_TIMEOUT)).await.map(drop)
    }

    /// Stores a secret or config (a new value for one that exists); the answer has no value.
    pub async fn create_object(
        &self,
        kind: api::ObjectKind,
        name: &str,
        data: &[u8],
    ) -> Result<api::ObjectInfo, ClientError> {
        #[derive(Serialize)]
        struct Body<'a> {
            name: &'a str,
            #[serde(serialize_with = "api::hex_bytes::serialize")]
            data: &'a [u8],
        }
        let path = format!("/v1/{}", kind.field());
        self.post(&path, &Body { name, data }).await
    }

    /// Every secret or every config, without values.
    pub async fn objects(
        &self,
        kind: api::ObjectKind,
    ) -> Result<Vec<api::ObjectInfo>, ClientError> {
        self.get(&format!("/v1/{}", kind.field())).await
    }

    /// Removes a secret or config; refused (409) while a service uses it.
    pub async fn remove_object(
        &self,
        kind: api::ObjectKind,
        name: &str,
    ) -> Result<api::ObjectInfo, ClientError> {
        let path = format!("/v1/{}/{}", kind.field(), segment(name, OBJECT)?);
        self.send(self.request(Method::DELETE, &path), REQUEST_TIMEOUT)
            .await
    }

    /// The value of a secret or config a task on `node` uses: for that node's agent.
    pub async fn node_object(
        &self,
        node: &str,
        kind: api::ObjectKind,
        name: &str,
    ) -> Result<api::ObjectValue, ClientError> {
        let path = format!(
            "/v1/nodes/{}/{}/{}",
            segment(node, NODE)?,
            kind.field(),
            segment(name, OBJECT)?
        );
        self.get(&path).await
    }

    /// The current token of `role` (`server`, `agent`, `admin`).
    pub async fn token(&self, role: &str) -> Result<TokenAnswer, ClientError> {
        self.get(&format!("/v1/tokens/{}", segment(role, TOKEN_ROLE)?))
            .await
    }

    /// A backup of the cluster (`GET /v1/backup`): the file's bytes, as the leader made them.
    pub async fn backup(&self) -> Result<Vec<u8>, ClientError> {
        let req = self
            .request(Method::GET, "/v1/backup")
            .timeout(BACKUP_TIMEOUT);
        let resp = self.execute(req).await?;
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Protocol {
            url,
            message: format!("the backup was cut off: {e}"),
        })?;
        Ok(bytes.to_vec())
    }

    /// Replaces the join token of `role`; the old one stops working.
    pub async fn rotate_token(&self, role: &str) -> Result<TokenAnswer, ClientError> {
        let path = format!("/v1/tokens/{}/rotate", segment(role, TOKEN_ROLE)?);
        self.send(self.request(Method::POST, &path), REQUEST_TIMEOUT)
            .await
    }

    /// Blocking query: returns once the node's assignments changed past `index`, or after `wait`.
    pub async fn assignments(
        &self,
        node: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Assignments, ClientError> {
        let path = format!(
            "/v1/nodes/{}/assignments?index={index}&wait={}ms",
            segment(node, NODE)?,
            wait.as_millis()
        );
        self.send(
            self.request(Method::GET, &path),
            wait + Duration::from_secs(10),
        )
        .await
    }

    /// Blocking query: every service's endpoints, once the list changed past `index`, or after
    /// `wait`.
    pub async fn endpoints(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<api::EndpointList, ClientError> {
        let path = format!("/v1/endpoints?index={index}&wait={}ms", wait.as_millis());
        self.send(
            self.request(Method::GET, &path),
            wait + Duration::from_secs(10),
        )
        .await
    }
}

/// One page of a listing and the token of the next, if there is more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Which part of a log to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines of each task.
    pub tail: Option<usize>,
    /// Stay open, streaming new output.
    pub follow: bool,
    /// The run before each task's last restart instead.
    pub previous: bool,
    /// Only lines written since: a duration back from now (`10m`, read on each node's clock)
    /// or an RFC 3339 time.
    pub since: Option<String>,
    /// Each line starts with the time it was written (RFC 3339) and a space.
    pub timestamps: bool,
}

/// Which tasks to list; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub service: Option<String>,
    pub node: Option<String>,
    pub state: Option<TaskState>,
    /// Also the tasks that finished or were replaced (the latest few of each service).
    pub finished: bool,
}

impl TaskFilter {
    fn path(&self) -> String {
        let mut path = String::from("/v1/tasks?");
        push("service", self.service.as_deref(), &mut path);
        push("node", self.node.as_deref(), &mut path);
        push(
            "state",
            self.state.map(|s| s.to_string()).as_deref(),
            &mut path,
        );
        push("finished", self.finished.then_some("true"), &mut path);
        path
    }
}

/// Which events to show; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// A duration back from now (`10m`) or an RFC 3339 time; the server reads it.
    pub since: Option<String>,
    pub service: Option<String>,
    pub node: Option<String>,
    /// This level or above.
    pub level: Option<Level>,
}

impl EventFilter {
    fn query(&self) -> String {
        let mut query = String::new();
        push("since", self.since.as_deref(), &mut query);
        push("service", self.service.as_deref(), &mut query);
        push("node", self.node.as_deref(), &mut query);
        push(
            "level",
            self.level.map(|l| l.to_string()).as_deref(),
            &mut query,
        );
        query
    }
}

/// Appends `&name=value` to a query when there is a value.
fn push(name: &str, value: Option<&str>, query: &mut String) {
    if let Some(v) = value {
        query.push_str(&format!("&{name}={}", encode(v)));
    }
}

/// What a path segment names, and where to look for the real names.
type Named = (&'static str, &'static str);
const SERVICE: Named = ("service", "see `outpost services`");
const NODE: Named = ("node", "see `outpost nodes`");
const STACK: Named = ("stack", "see `outpost services`");
const OBJECT: Named = (
    "secret or config",
    "see `outpost secret ls` and `outpost config ls`",
);
const LOG_TARGET: Named = ("service or task", "see `outpost services` and `outpost ps`");
const TASK: Named = ("task", "see `outpost ps`");
const TOKEN_ROLE: Named = ("token role", "server, agent or admin");
const KEY: Named = ("key", "see `outpost image keys`");

/// `name` as one path segment; refused when a URL would resolve it away.
fn segment(name: &str, (what, hint): Named) -> Result<String, ClientError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(ClientError::BadName {
            name: name.to_string(),
            what,
            hint,
        });
    }
    Ok(encode(name))
}

/// `s` percent-encoded for a URL's path segment or query value: every character but the
/// unreserved ones of RFC 3986.
pub fn encode(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' | '_' | '~' => c.to_string(),
            c => {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect()
}

/// Asks the server at `addr` for a node certificate with a join token. The server is trusted
/// only if its TLS chain holds the CA whose digest the token names; the secret is sent only
/// after that check, and a mismatch is said as such.
pub async fn join(
    addr: &str,
    token: &pki::JoinToken,
    mut req: JoinRequest,
) -> Result<JoinResponse, ClientError> {
    let tls =
        pki::tls::pinned_client_config(&token.ca_digest).map_err(|e| ClientError::Protocol {
            url: addr.to_string(),
            message: e.to_string(),
        })?;
    req.secret = token.secret.clone();
    let client = Client::with_tls(addr, "", tls);
    client.post("/v1/join", &req).await
}

/// How long a first start keeps trying to join a server that is not up yet, or has no
/// leader or committed join tokens yet: a cluster and its nodes are often started together.
pub const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
const JOIN_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// [`join`], trying again for up to `patience` while the server cannot be reached or cannot
/// answer yet (503); a refusal is final.
pub async fn join_patiently(
    addr: &str,
    token: &pki::JoinToken,
    req: JoinRequest,
    patience: std::time::Duration,
) -> Result<JoinResponse, ClientError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let err = match join(addr, token, req.clone()).await {
            Ok(joined) => return Ok(joined),
            Err(e) => e,
        };
        let passing = matches!(err, ClientError::Unreachable { .. })
            || err.status() == Some(StatusCode::SERVICE_UNAVAILABLE);
        if !passing || tokio::time::Instant::now() >= deadline {
            return Err(err);
        }
        tracing::info!("cannot join {addr} yet ({err}); retrying");
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that answers every request with `status` and an API error body,
    /// and counts the connections it took.
    async fn canned(status: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let body = r#"{"error":"no leader is elected at the moment; retry shortly"}"#;
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), hits)
    }

    #[tokio::test]
    async fn a_server_without_a_leader_is_passed_over_for_the_next_one() {
        let (leaderless, passed_over) = canned("503 Service Unavailable").await;
        let (leading, answered) = canned("200 OK").await;
        let client = Client::new(&format!("{leaderless},{leading}"), "t");
        client.heartbeat("edge-1").await.unwrap();
        assert_eq!(passed_over.load(Ordering::SeqCst), 1);
        assert_eq!(answered.load(Ordering::SeqCst), 1);
        // The server that answered is the one talked to from then on.
        client.heartbeat("edge-1").await.unwrap();
        assert_eq!(passed_over.load(Ordering::SeqCst), 1);
        assert_eq!(answered.load(Ordering::SeqCst), 2);
        assert_eq!(client.base(), leading);
    }

    #[tokio::test]
    async fn when_no_server_has_a_leader_the_answer_says_so() {
        let (one, _) = canned("503 Service Unavailable").await;
        let (two, _) = canned("503 Service Unavailable").await;
        let client = Client::new(&format!("{one},{two}"), "t");
        let err = client.heartbeat("edge-1").await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert!(err.to_string().contains("no leader"), "{err}");
    }

    #[test]
    fn names_a_url_would_resolve_away_are_refused_with_what_they_should_name() {
        for name in ["", ".", ".."] {
            let err = segment(name, LOG_TARGET).unwrap_err().to_string();
            assert!(err.starts_with("no service or task named"), "{err}");
            assert!(err.contains("outpost ps"), "{err}");
        }
        assert_eq!(segment("web.1.7", SERVICE).unwrap(), "web.1.7");
        assert_eq!(segment("a b/..", SERVICE).unwrap(), "a%20b%2F..");
    }

    #[test]
    fn filters_become_an_escaped_query_of_only_the_fields_given() {
        assert_eq!(TaskFilter::default().path(), "/v1/tasks?");
        let tasks = TaskFilter {
            service: Some("web".into()),
            node: Some("n 3".into()),
            state: Some(TaskState::Running),
            finished: true,
        };
        assert_eq!(
            tasks.path(),
            "/v1/tasks?&service=web&node=n%203&state=running&finished=true"
        );
        let events = EventFilter {
            since: Some("2026-05-01T12:00:00+02:00".into()),
            level: Some(Level::Warning),
            ..EventFilter::default()
        };
        assert_eq!(
            events.query(),
            "&since=2026-05-01T12%3A00%3A00%2B02%3A00&level=warning"
        );
    }
}
