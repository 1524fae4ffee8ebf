//! A control-plane member: the `/v1` HTTP API, Raft over HTTP between servers, and the
//! controllers the leader runs.
//!
//! - [`routes`]: the API handlers and the OpenAPI document made from them; writes go through
//!   Raft, reads come from the applied state.
//! - [`answer`]: the `ApiError` answers handlers share.
//! - [`batch`]: agents' status reports that arrive within one tick, committed as one entry.
//! - [`blocking`]: the per-client cap on blocking queries.
//! - [`controller`]: the leader's loops: the service controller (diff desired vs actual, ask the
//!   scheduler, commit the plan) and the node monitor (heartbeats in memory, probes of silent
//!   nodes, transitions to Raft).
//! - [`detector`]: the failure detector, pure: phi accrual over each node's heartbeat history,
//!   and the states it leads to with the probes' findings.
//! - [`lost`]: the leader's loop that gives up the tasks of lost nodes once their service's
//!   `on_node_lost` allows, so that the service controller replaces them.
//! - [`network`]: Raft RPCs to peer servers.
//! - [`logs`]: `outpost logs`, proxied from the agents that hold the files.
//! - [`cluster`]: membership (join, voter, leave) and which server answers what: writes and
//!   current reads are forwarded to the leader.
//! - [`trust`]: the CA, this server's certificate and the tokens in its data dir.
//! - [`access`]: who calls (certificate or admin token) and what they may do.
//!
//! One server is a one-member Raft group. The first server founds the group (Raft id 1); others
//! join it ([`ServerConfig::join`]) and keep the id they were given in the data dir's
//! `server-id`, so a plain restart rejoins.

pub mod access;
pub mod answer;
pub mod backup;
pub mod batch;
pub mod blocking;
pub mod bundles;
pub mod cluster;
pub mod controller;
pub mod core_thread;
pub mod detector;
pub mod endpoints;
pub mod exec;
pub mod image_gc;
pub mod images;
pub mod logs;
pub mod lost;
pub mod network;
pub mod objects;
pub mod pull;
pub mod rollouts;
pub mod routes;
pub mod stacks;
pub mod stats;
pub mod trust;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::Timestamp;
use store::raft::{Node, Raft};
use store::{Command, Response, StateHandle};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where the other servers and clients reach this one (`host:port`); the bound listen
    /// address when not given.
    pub advertise: Option<String>,
    /// This server's name in the membership; `server-ID` when empty.
    pub name: String,
    /// Join the group of the server at this address on the first start (`outpost server join`).
    /// A data dir that already holds a `server-id` starts as a plain start would, unless that
    /// group no longer has it or the token names another cluster.
    pub join: Option<String>,
    /// The cluster token to keep in the data dir (a joining server is given it). Refused when
    /// the data dir already holds another.
    pub token: Option<String>,
    /// Raft id of this server when its data dir holds none: 1 for the founder.
    pub id: u64,
    /// Found a one-member group on the first start. A server that is to be added to an existing
    /// group (as a learner, then a voter) starts without, and waits for the leader to reach it.
    pub found: bool,
    /// Start with an empty state even though the data dir belongs to a cluster whose state file
    /// is missing or empty (`--reset`). Without it such a start is refused.
    pub reset: bool,
    pub limits: ApiLimits,
    /// How agents' status reports are coalesced into entries.
    pub report_batch: batch::BatchConfig,
    /// How the store keeps what it keeps (the event history's retention).
    pub store: store::StoreOptions,
    /// Serve mutually authenticated TLS on the cluster CA (made in the data dir on the first
    /// start). Without it (embedders' and tests' servers) the API is plain HTTP behind the
    /// one token.
    pub tls: bool,
    /// Where services' virtual IPs come from (`--service-range`); every server of a group must
    /// say the same.
    pub service_range: api::ServiceRange,
}

impl ServerConfig {
    /// A single server (Raft id 1) with the default limits.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen,
            advertise: None,
            name: String::new(),
            join: None,
            token: None,
            id: 1,
            found: true,
            limits: ApiLimits::default(),
            reset: false,
            report_batch: batch::BatchConfig::default(),
            store: store::StoreOptions::default(),
            tls: false,
            service_range: api::ServiceRange::DEFAULT,
        }
    }

    /// The IP addresses the server's certificate is for: where it listens and is reached, and
    /// loopback.
    pub fn hosts(&self) -> Vec<std::net::IpAddr> {
        let mut hosts = vec![std::net::IpAddr::from([127, 0, 0, 1])];
        let advertised = (self.advertise.as_deref()).and_then(|a| a.parse::<SocketAddr>().ok());
        for addr in [Some(self.listen), advertised].into_iter().flatten() {
            let ip = addr.ip();
            if !ip.is_unspecified() && !hosts.contains(&ip) {
                hosts.push(ip);
            }
        }
        hosts
    }
}

/// 512: far more than the agents and people of an edge cluster keep open, and with the agent's
/// 64 well inside the 1024 descriptors a process gets by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// 30 s: a prompt route that takes longer is stuck (no leader, say); the client hears so.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a blocking query may wait, 30 s: below common proxy idle timeouts.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// 10,000: the 100,000 tasks a cluster is built for hold ten services that large; a larger
/// count is most likely an extra zero, and would fill the state with replicas that fit nowhere.
pub const DEFAULT_MAX_REPLICAS: u32 = 10_000;

/// 1,000: a deploy is one entry, applied whole under the state lock; a thousand specs keep it
/// around a megabyte and an apply short enough that reads meanwhile stay prompt.
pub const DEFAULT_MAX_SERVICES_PER_DEPLOY: usize = 1_000;

/// 5,000 statuses and events: five times what an agent puts in one report
/// (`api::REPORT_ITEMS`), and a tenth of the event history the store keeps by default.
pub const DEFAULT_MAX_REPORT_ITEMS: usize = 5_000;

/// What the API allows its clients.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Open connections, header-read timeout, request body size.
    pub listener: httpd::Limits,
    /// Time limit of every route but blocking queries and followed logs.
    pub request_timeout: Duration,
    /// The cap on a blocking query's `wait`.
    pub max_wait: Duration,
    /// Blocking queries one client address may hold open at once.
    pub blocking_per_client: usize,
    /// Replicas one service may ask for (`--max-replicas`), by deploy or by scale; at most
    /// `spec::MAX_REPLICAS`.
    pub max_replicas: u32,
    /// Services one deploy may hold (`--max-services-per-deploy`).
    pub max_services_per_deploy: usize,
    /// Task statuses and events one report may hold (`--max-report-items`); at least
    /// `api::REPORT_ITEMS`, or agents' reports would be refused.
    pub max_report_items: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            listener: httpd::Limits::with_max_connections(DEFAULT_MAX_CONNECTIONS),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_wait: DEFAULT_MAX_WAIT,
            blocking_per_client: blocking::DEFAULT_PER_CLIENT,
            max_replicas: DEFAULT_MAX_REPLICAS,
            max_services_per_deploy: DEFAULT_MAX_SERVICES_PER_DEPLOY,
            max_report_items: DEFAULT_MAX_REPORT_ITEMS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(
        "cannot listen on {addr}: {source} (is another outpost running there? pick another address with --listen, or --api for dev)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("cannot join the group of the server at {target}: {message}")]
    Join {
        target: String,
        message: String,
        /// Worth asking again: no answer, or no leader at the moment.
        retry: bool,
    },
    #[error(
        "data dir {dir} is of server {id}, which the group of the server at {target} no longer \
         has (it left, `outpost server leave {id}`): join with a new, empty data dir"
    )]
    LeftGroup {
        dir: PathBuf,
        id: u64,
        target: String,
    },
    #[error(
        "data dir {dir} belongs to another cluster than the join token names (the CA it holds \
         has sha256 {held}, the token names {named}): give a join token of its own cluster, or \
         join with a new, empty data dir"
    )]
    OtherCluster {
        dir: PathBuf,
        held: String,
        named: String,
    },
    #[error(
        "the server id file {path} holds {text:?}, not a Raft id: restore the id this server was \
         given, or remove it from the group and join again with a new data dir"
    )]
    BadId { path: PathBuf, text: String },
    #[error(
        "data dir {dir} holds the token of another cluster: join with a new data dir, or give \
         the token it holds"
    )]
    OtherToken { dir: PathBuf },
    #[error("the cluster's certificates: {0}")]
    Trust(String),
    #[error("cannot restore the backup: {0}")]
    Restore(String),
    #[error(
        "the token file {path} is empty: write the cluster token into it, or remove it to have \
         a new token made (agents and clients then need the new one)"
    )]
    EmptyToken { path: PathBuf },
    #[error(
        "data dir {dir} belongs to a cluster (it holds its token), but the cluster state {state} is {what}: restore it from a backup, or start with --reset to begin a new, empty cluster here (agents keep the same token)"
    )]
    StateLost {
        dir: PathBuf,
        state: PathBuf,
        what: &'static str,
    },
}

/// 24 random bytes (192 bits): far beyond guessing, short enough to paste.
const TOKEN_BYTES: usize = 24;

/// The file that marks a data dir as a cluster's: the token, written at the first start before
/// the state. A data dir with it but without its state lost that state; starting afresh there
/// would quietly make an empty cluster, and its agents would then stop every task.
pub(crate) const MARKER: &str = "token";

/// Refuses to start an empty cluster in a data dir that held one, unless told to (`reset`).
fn check_state(dir: &Path, state: &Path, reset: bool) -> Result<(), ServerError> {
    let what = match std::fs::metadata(state) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
        Ok(meta) if meta.len() == 0 => "empty",
        _ => return Ok(()),
    };
    // An empty token is damage of its own, refused by name when the token is read.
    let marked = std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|t| !t.trim().is_empty());
    if reset || !marked {
        return Ok(());
    }
    Err(ServerError::StateLost {
        dir: dir.to_path_buf(),
        state: state.to_path_buf(),
        what,
    })
}

/// What every handler and controller of this server shares. Cloned for every request (axum
/// hands each handler and middleware its own), so a clone is one reference count.
#[derive(Clone)]
pub struct Server(Arc<Shared>);

impl std::ops::Deref for Server {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of a [`Server`].
pub struct Shared {
    pub raft: Raft,
    pub state: StateHandle,
    pub token: String,
    pub id: u64,
    /// One membership change at a time (join, voter, leave), on the leader.
    pub membership: Arc<tokio::sync::Mutex<()>>,
    pub limits: ApiLimits,
    /// Blocking queries open per client.
    pub blocking: blocking::Clients,
    /// Every node's heartbeats and the failure detector's view of them: liveness lives here,
    /// never in Raft.
    pub heartbeats: controller::Heartbeats,
    pub http: reqwest::Client,
    /// Where agents' status reports wait to be committed together.
    pub reports: batch::Batcher,
    /// The CA and this server's certificate; `None` on a plain-HTTP server.
    pub trust: Option<Arc<trust::Trust>>,
    /// What the nodes' load balancers serve, kept ready-made.
    pub endpoints: endpoints::Endpoints,
}

/// Commits `command` through Raft and returns the state machine's answer.
async fn propose(raft: &Raft, command: Command) -> Result<Response, String> {
    raft.client_write(command)
        .await
        .map(|r| r.data)
        .map_err(|e| e.to_string())
}

impl Server {
    /// Commits `command` through Raft and returns the state machine's answer.
    pub async fn propose(&self, command: Command) -> Result<Response, String> {
        propose(&self.raft, command).await
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// `https` for a server on the cluster CA, `http` for a plain one: how its peers, its
    /// agents and its own forwards are reached.
    pub fn scheme(&self) -> &'static str {
        scheme(self.trust.is_some())
    }
}

pub fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// How long an idle pooled connection to an agent or a peer is kept, 2 s: below the 5 s after
/// which their listeners close idle connections (`httpd::DEFAULT_HEADER_READ_TIMEOUT`), so a
/// request is never sent on a connection the other end is closing.
const POOL_IDLE: Duration = Duration::from_secs(2);

/// The HTTP client for agents (logs) and peer servers (Raft): over TLS with this server's
/// certificate when it has one.
pub fn peer_http(tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    // reqwest needs a process-wide crypto provider even for plain HTTP (see `client`).
    pki::install_default();
    let mut builder = reqwest::Client::builder().pool_idle_timeout(POOL_IDLE);
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build().unwrap_or_default()
}

pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A running server. Dropping it ends its threads (Raft's, and over TLS the API's listener)
/// without the orderly steps of [`ServerHandle::shutdown`], which is what to call.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub token: String,
    pub ctx: Server,
    /// This start joined the group (a join of a data dir that had joined before is a restart).
    pub joined: bool,
    stop: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
    /// Where the API listens, over TLS (`core_thread::FRONT`).
    front: Option<core_thread::LoopThread>,
    /// Where Raft runs: dropped last, once Raft is shut down.
    core: core_thread::LoopThread,
}

impl ServerHandle {
    /// Stops serving, stops Raft, and waits until the store file is closed.
    pub async fn shutdown(self) {
        // Controllers and the listener stop; open requests get the listener's short grace.
        let _ = self.stop.send(true);
        let _ = self.serve.await;
        let _ = self.ctx.raft.shutdown().await;
        let state = self.ctx.state.clone();
        drop(self.ctx);
        state.closed().await;
        drop(self.front);
        // Whatever is left on Raft's thread (the batcher, answers not yet sent) ends with it.
        drop(self.core);
    }
}

/// The lane that serves agents' connections on the calling runtime and every other one
/// (operators, other servers) where the listener runs (`core_thread::FRONT`).
fn agents_here() -> httpd::Lane {
    let api = tokio::runtime::Handle::current();
    Arc::new(move |cert: &httpd::PeerCertificate| {
        let agent = (cert.0.as_ref()).is_some_and(|c| pki::tls::has_role(c, pki::NodeRole::Agent));
        agent.then(|| api.clone())
    })
}

/// Reads the API token from `data_dir/token`, creating it (mode 0600) on first start. An empty
/// file is an error: it may be a token that was meant to be there.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, ServerError> {
    seal::files::read_or_create_secret(&data_dir.join("token"), TOKEN_BYTES).map_err(|e| match e {
        seal::files::SecretError::Empty { path } => ServerError::EmptyToken { path },
        seal::files::SecretError::Io { path, source } => ServerError::DataDir { path, source },
    })
}

/// Makes the store file readable by this user only, also when an older version made it.
fn tighten(path: &Path) -> Result<(), ServerError> {
    seal::files::private_file(path).map_err(|source| ServerError::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens the store and starts Raft on it as server `id`, founding a one-member group on the
/// first start when `found`. Runs on `core`, where Raft's tasks then stay.
async fn start_raft(
    core: &core_thread::LoopThread,
    config: &ServerConfig,
    me: &Identity,
    state_file: &Path,
    token: &str,
    http: &reqwest::Client,
) -> Result<(Raft, StateHandle), ServerError> {
    let (config, id, node, found) = (config.clone(), me.id, me.node.clone(), me.found);
    let (state_file, token, http) = (state_file.to_path_buf(), token.to_string(), http.clone());
    let started = core.run(async move {
        let scheme = scheme(config.tls);
        // Waits out a lock that a child of a killed server holds until it execs (see
        // LOCK_PATIENCE).
        let (log, machine, state) = seal::files::open_when_unlocked(
            seal::files::LOCK_PATIENCE,
            |e| matches!(e, store::StoreError::Locked { .. }),
            |e| tracing::warn!("{e}; waiting up to {:?} for it", seal::files::LOCK_PATIENCE),
            || store::open(&state_file, config.store.clone()),
        )?;
        tighten(&state_file)?;
        let raft_err = |e: &dyn std::fmt::Display| ServerError::Raft(e.to_string());
        let raft_config = store::raft::config("outpost")
            .validate()
            .map_err(|e| raft_err(&e))?;
        let raft = Raft::new(
            id,
            Arc::new(raft_config),
            network::Network::new(token, http, scheme),
            log,
            machine,
        )
        .await
        .map_err(|e| raft_err(&e))?;
        if found {
            store::raft::initialize_once(&raft, BTreeMap::from([(id, node)]))
                .await
                .map_err(|e| raft_err(&e))?;
        }
        Ok((raft, state))
    });
    let ended = || ServerError::Raft("the Raft thread ended while Raft was starting".into());
    started.await.ok_or_else(ended)?
}

/// The file where a server that joined a group keeps the Raft id it was given. The founder has
/// none: its id is 1, as for every data dir made before servers could join.
const SERVER_ID: &str = "server-id";

/// Who this server is in the group.
struct Identity {
    id: u64,
    node: Node,
    /// Found a one-member group on the first start.
    found: bool,
    /// The servers to ask for a vote once running, when this start joined the group.
    joined_through: Option<Vec<String>>,
    /// A restart of a server that joined earlier (its id is in the data dir).
    rejoined: bool,
}

fn read_id(dir: &Path) -> Result<Option<u64>, ServerError> {
    let path = dir.join(SERVER_ID);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ServerError::DataDir { path, source }),
    };
    match text.trim().parse::<u64>() {
        Ok(id) if id > 0 => Ok(Some(id)),
        _ => Err(ServerError::BadId { path, text }),
    }
}

/// The id from the data dir; or, joining, one the group's leader gives (written at once, so a
/// restart keeps it); or the configured one.
async fn identity(
    config: &ServerConfig,
    token: &str,
    advertise: &str,
    http: &reqwest::Client,
) -> Result<Identity, ServerError> {
    let dir = &config.data_dir;
    let node = |id| Node {
        addr: advertise.to_string(),
        name: cluster::name_or_default(&config.name, id),
    };
    match (read_id(dir)?, &config.join) {
        (Some(id), Some(target)) => {
            cluster::check_rejoin(http, scheme(config.tls), target, token, dir, id).await?;
            tracing::info!(
                "data dir {} already joined the group as server {id}: starting it as `outpost \
                 server --data-dir {}` does; the join token is not needed",
                dir.display(),
                dir.display()
            );
            Ok(Identity {
                id,
                node: node(id),
                found: false,
                joined_through: None,
                rejoined: true,
            })
        }
        (Some(id), None) => Ok(Identity {
            id,
            node: node(id),
            found: false,
            joined_through: None,
            rejoined: true,
        }),
        (None, None) => Ok(Identity {
            id: config.id,
            node: node(config.id),
            found: config.found,
            joined_through: None,
            rejoined: false,
        }),
        (None, Some(target)) => {
            let request = api::MemberRequest {
                address: advertise.to_string(),
                name: config.name.clone(),
            };
            let answer =
                cluster::ask_to_join(http, scheme(config.tls), target, token, &request).await?;
            write_token(dir, token)?;
            let path = dir.join(SERVER_ID);
            seal::files::write_private(&path, format!("{}\n", answer.id).as_bytes())
                .map_err(|source| ServerError::DataDir { path, source })?;
            let mut through = vec![target.clone()];
            through.extend(answer.servers.into_iter().map(|s| s.address));
            Ok(Identity {
                id: answer.id,
                node: node(answer.id),
                found: false,
                joined_through: Some(through),
                rejoined: false,
            })
        }
    }
}

/// The cluster token: the one given (kept in the data dir, which must not hold another), or the
/// data dir's own, made on the first start.
fn token_of(config: &ServerConfig) -> Result<String, ServerError> {
    let dir = &config.data_dir;
    let Some(given) = config.token.as_deref().map(str::trim) else {
        return load_or_create_token(dir);
    };
    let path = dir.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(held) if held.trim() == given => Ok(given.to_string()),
        Ok(_) => Err(ServerError::OtherToken { dir: dir.clone() }),
        // A joining server keeps the token once the group took it (`identity`).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config.join.is_some() => {
            Ok(given.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_token(dir, given)?;
            Ok(given.to_string())
        }
        Err(source) => Err(ServerError::DataDir { path, source }),
    }
}

fn write_token(dir: &Path, token: &str) -> Result<(), ServerError> {
    let path = dir.join(MARKER);
    seal::files::write_private(&path, format!("{token}\n").as_bytes())
        .map_err(|source| ServerError::DataDir { path, source })
}

/// The body limit of the Raft routes: AppendEntries of the largest entries this server commits.
pub fn raft_body_limit(limits: &ApiLimits) -> usize {
    store::raft::raft_body_limit(max_entry_bytes(limits))
}

/// The largest entry, as JSON, a server commits: twice the API's body limit, room for what a
/// deploy's specs grow to once every default is written out. A larger deploy is refused.
pub fn max_entry_bytes(limits: &ApiLimits) -> usize {
    limits.listener.body_limit.saturating_mul(2)
}

/// Starts the batcher that commits agents' reports and registrations, each batch as one
/// `Command::FromAgents`.
fn start_batcher(
    raft: &Raft,
    config: batch::BatchConfig,
    stop: watch::Receiver<bool>,
) -> batch::Batcher {
    let raft = raft.clone();
    let commit = move |items| {
        let raft = raft.clone();
        async move {
            let time = now();
            propose(&raft, Command::FromAgents { items, time })
                .await
                .map(|_| ())
        }
    };
    batch::Batcher::spawn(config, commit, stop)
}

/// Starts a server: opens the store, starts Raft (founding a one-member group on first start,
/// or joining the group of [`ServerConfig::join`]), serves the API, and runs the leader's
/// controllers. A joining server returns once it is a voter.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let dir = &config.data_dir;
    seal::files::private_dir(dir).map_err(|source| ServerError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let state_file = dir.join("state.redb");
    // A server that joins (or joined) a group gets its state from the leader: an empty one is
    // expected. Checked before anything is written.
    let joins = !config.found || config.join.is_some() || read_id(dir)?.is_some();
    check_state(dir, &state_file, config.reset || joins)?;
    let listen_err = |source| ServerError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let trust = server_trust(&config).await?;
    let tls = trust.as_ref().map(|t| t.server_config()).transpose()?;
    let http = peer_http(trust.as_ref().map(|t| t.client_config()).transpose()?);
    let token = if config.tls {
        load_or_create_token(dir)?
    } else {
        token_of(&config)?
    };
    let me = identity(&config, &token, &advertise, &http).await?;
    let core = core_thread::LoopThread::start(core_thread::RAFT)
        .map_err(|e| ServerError::Raft(format!("cannot start the thread Raft runs on: {e}")))?;
    let (raft, state) = start_raft(&core, &config, &me, &state_file, &token, &http).await?;
    let (stop, stop_rx) = watch::channel(false);
    let reports = {
        let _on_core = core.enter();
        start_batcher(&raft, config.report_batch, stop_rx.clone())
    };
    let ctx = Server(Arc::new(Shared {
        raft,
        state,
        token: token.clone(),
        id: me.id,
        membership: Arc::default(),
        limits: config.limits.clone(),
        blocking: blocking::Clients::new(config.limits.blocking_per_client),
        heartbeats: controller::Heartbeats::default(),
        http,
        reports,
        trust,
        endpoints: endpoints::Endpoints::new(config.service_range),
    }));
    tokio::spawn(endpoints::publish(
        ctx.state.clone(),
        ctx.endpoints.clone(),
        stop_rx.clone(),
    ));
    if config.found && ctx.trust.is_some() {
        tokio::spawn(commit_own_trust(ctx.clone(), stop_rx.clone()));
    }
    tokio::spawn(controller::services(ctx.clone(), stop_rx.clone()));
    tokio::spawn(controller::nodes(ctx.clone(), stop_rx.clone()));
    tokio::spawn(lost::lost(ctx.clone(), stop_rx.clone()));
    let app = routes::router(ctx.clone());
    let mut stopped = stop_rx;
    // Over TLS, where a certificate tells agents apart, only agents are served on this runtime.
    let front = match tls {
        Some(_) => Some(
            core_thread::LoopThread::start(core_thread::FRONT).map_err(|e| {
                ServerError::Raft(format!("cannot start the thread the API listens on: {e}"))
            })?,
        ),
        None => None,
    };
    let lane = front.as_ref().map(|_| agents_here());
    let serving = httpd::serve_tls(
        listener,
        app,
        config.limits.listener.clone(),
        tls,
        lane,
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    );
    let serve = match &front {
        Some(front) => front.handle().spawn(serving),
        None => tokio::spawn(serving),
    };
    let handle = ServerHandle {
        addr,
        token,
        ctx,
        joined: me.joined_through.is_some(),
        stop,
        serve,
        front,
        core,
    };
    if me.rejoined {
        tokio::spawn(cluster::vote_if_learner(handle.ctx.clone()));
    }
    if let Some(through) = &me.joined_through {
        let asked = cluster::ask_to_vote(
            &handle.ctx.http,
            handle.ctx.scheme(),
            through,
            &handle.token,
            me.id,
        )
        .await;
        if let Err(e) = asked {
            handle.shutdown().await;
            return Err(e);
        }
        tracing::info!("joined the group as server {}", me.id);
    }
    // Written last: its presence tells a local CLI the API is up.
    let api_file = dir.join("api");
    let scheme = handle.ctx.scheme();
    if let Err(source) =
        seal::files::write_private(&api_file, format!("{scheme}://{addr}\n").as_bytes())
    {
        handle.shutdown().await;
        return Err(ServerError::DataDir {
            path: api_file,
            source,
        });
    }
    tracing::info!("API listening on {scheme}://{addr} as server {}", me.id);
    Ok(handle)
}

/// The cluster's trust of a TLS server: the first start of a joining server gets it from the
/// group with the server join token (`trust::join`); every other start loads it, or makes a
/// new cluster's.
async fn server_trust(config: &ServerConfig) -> Result<Option<Arc<trust::Trust>>, ServerError> {
    if !config.tls {
        return Ok(None);
    }
    let dir = &config.data_dir;
    let trust = match (&config.join, trust::initialized(dir)) {
        (Some(target), false) => {
            let token = config.token.as_deref().ok_or_else(|| {
                ServerError::Trust(
                    "joining a group needs its server join token (`outpost token show server` \
                     on a server of the group)"
                        .into(),
                )
            })?;
            // Its Raft id comes after the certificate: the certificate names the role.
            let name = match config.name.trim() {
                "" => "server",
                name => name,
            };
            // Said as a join of that server's group, whatever step refused it.
            trust::join(dir, target, token, name, &config.hosts())
                .await
                .map_err(|e| match e {
                    ServerError::Trust(message) => ServerError::Join {
                        target: target.clone(),
                        message,
                        retry: false,
                    },
                    other => other,
                })?
        }
        (Some(_), true) => {
            // Joined before (or half-way): a join token of another cluster is refused.
            let trust = trust::load_or_init(dir, &config.hosts())?;
            if let Some(token) = config.token.as_deref() {
                trust.check_cluster(token)?;
            }
            trust
        }
        (None, _) => trust::load_or_init(dir, &config.hosts())?,
    };
    Ok(Some(Arc::new(trust)))
}

/// `outpost server init`: a new cluster's CA, certificates and tokens in `config.data_dir`,
/// and its (empty) state file, so the first start founds the cluster rather than taking the
/// data dir for one that lost its state.
pub fn init(config: &ServerConfig) -> Result<(), ServerError> {
    trust::init(&config.data_dir, &config.hosts())?;
    let state_file = config.data_dir.join("state.redb");
    let opened = store::open(&state_file, config.store.clone())?;
    drop(opened);
    tighten(&state_file)
}

/// How often a founding server tries again to commit its own trust while it has no leader.
const TRUST_RETRY: Duration = Duration::from_millis(200);

/// Commits what the replicated trust lacks of this server's own files (its tokens' digests,
/// its certificate), once it leads: a new cluster's first entries, and an older data dir's on
/// its first start with TLS.
async fn commit_own_trust(ctx: Server, mut stop: watch::Receiver<bool>) {
    let Some(trust) = ctx.trust.clone() else {
        return;
    };
    loop {
        if ctx.is_leader() {
            let wanted = ctx.state.read(|s| trust.wanted(s, ctx.id));
            match wanted {
                Ok(commands) if commands.is_empty() => return,
                Ok(commands) => {
                    for command in commands {
                        if let Err(e) = ctx.propose(command).await {
                            tracing::debug!("cannot commit the cluster's trust yet: {e}");
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("{e}");
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TRUST_RETRY) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Server {
    /// A certificate for node `name` in `role`, for `hosts`, known to the cluster once this
    /// returns: what `POST /v1/join` answers, and what `outpost dev` gives its own agent.
    pub async fn issue(
        &self,
        role: pki::NodeRole,
        name: &str,
        hosts: &[std::net::IpAddr],
    ) -> Result<api::JoinResponse, String> {
        let trust = self
            .trust
            .as_ref()
            .ok_or("this server serves no TLS and issues no certificates")?;
        let node = trust
            .ca
            .issue(role, name, hosts)
            .map_err(|e| e.to_string())?;
        let fingerprint = node.fingerprint().map_err(|e| e.to_string())?;
        self.propose(Command::AddCertificate {
            fingerprint,
            role: role.as_str().into(),
            node: name.into(),
            time: now(),
        })
        .await?;
        Ok(api::JoinResponse {
            cert: node.cert_pem.clone(),
            key: node.key_pem.clone(),
            ca: trust.ca.cert_pem().to_string(),
            ca_key: (role == pki::NodeRole::Server).then(|| trust.ca.identity().key_pem.clone()),
            admin_token: (role == pki::NodeRole::Server).then(|| self.token.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_agents_are_served_on_the_apis_runtime() {
        let ca = pki::Ca::generate().unwrap();
        let localhost = [std::net::IpAddr::from([127, 0, 0, 1])];
        let cert = |role| {
            let identity = ca.issue(role, "n1", &localhost).unwrap();
            httpd::PeerCertificate(Some(pki::tls::first_cert(&identity.cert_pem).unwrap()))
        };
        let lane = agents_here();
        assert!(lane(&cert(pki::NodeRole::Agent)).is_some());
        assert!(lane(&cert(pki::NodeRole::Server)).is_none());
        assert!(lane(&httpd::PeerCertificate(None)).is_none());
    }
}
