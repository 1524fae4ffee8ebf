//! A control-plane member: the `/v1` HTTP API, Raft over HTTP between servers, and the
//! controllers the leader runs.
//!
//! - [`routes`]: the API handlers and the OpenAPI document made from them; writes go through
//!   Raft, reads come from the applied state.
//! - [`answer`]: the `ApiError` answers handlers share.
//! - [`batch`]: agents' status reports that arrive within one tick, committed as one entry.
//! - [`blocking`]: the per-client cap on blocking queries.
//! - [`controller`]: the leader's loops: the service controller (diff desired vs actual, ask the
//!   scheduler, commit the plan) and the node monitor (heartbeats in memory, transitions to Raft).
//! - [`network`]: Raft RPCs to peer servers.
//! - [`logs`]: `outpost logs`, proxied from the agents that hold the files.
//! - [`trust`]: the CA, this server's certificate and the tokens in its data dir.
//! - [`access`]: who calls (certificate or admin token) and what they may do.
//!
//! One server is a one-member Raft group: a server only ever initializes a group of itself, and
//! nothing adds members yet.

pub mod access;
pub mod answer;
pub mod batch;
pub mod blocking;
pub mod controller;
pub mod logs;
pub mod network;
pub mod routes;
pub mod trust;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use api::Timestamp;
use store::raft::{Node, Raft};
use store::{Command, Response, StateHandle};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Raft id of this server; 1 for a single server.
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
    /// The address other nodes reach this server at, when not the listen address; its IP is
    /// written into the server's certificate.
    pub advertise: Option<SocketAddr>,
}

impl ServerConfig {
    /// A single server (Raft id 1) with the default limits.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen,
            id: 1,
            found: true,
            limits: ApiLimits::default(),
            reset: false,
            report_batch: batch::BatchConfig::default(),
            store: store::StoreOptions::default(),
            tls: false,
            advertise: None,
        }
    }

    /// The IP addresses the server's certificate is for: where it listens and is reached, and
    /// loopback.
    pub fn hosts(&self) -> Vec<std::net::IpAddr> {
        let mut hosts = vec![std::net::IpAddr::from([127, 0, 0, 1])];
        for addr in [Some(self.listen), self.advertise].into_iter().flatten() {
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
        "cannot listen on {addr}: {source} (is another outpost running there? pick another address with --api)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("the cluster's certificates: {0}")]
    Trust(String),
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

/// What every handler and controller of this server shares.
#[derive(Clone)]
pub struct Server {
    pub raft: Raft,
    pub state: StateHandle,
    pub token: String,
    pub id: u64,
    pub limits: ApiLimits,
    /// Blocking queries open per client.
    pub blocking: blocking::Clients,
    /// Last heartbeat of each node, by name: liveness lives here, never in Raft.
    pub heartbeats: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    pub http: reqwest::Client,
    /// Where agents' status reports wait to be committed together.
    pub reports: batch::Batcher,
    /// The CA and this server's certificate; `None` on a plain-HTTP server.
    pub trust: Option<Arc<trust::Trust>>,
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

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub token: String,
    pub ctx: Server,
    stop: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
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
    }
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

/// Opens the store and starts Raft on it, founding a one-member group on the first start.
async fn start_raft(
    config: &ServerConfig,
    state_file: &Path,
    token: &str,
    addr: SocketAddr,
    http: &reqwest::Client,
) -> Result<(Raft, StateHandle), ServerError> {
    let scheme = if config.tls { "https" } else { "http" };
    let (log, machine, state) = store::open(state_file, config.store.clone())?;
    tighten(state_file)?;
    let raft_err = |e: &dyn std::fmt::Display| ServerError::Raft(e.to_string());
    let raft_config = store::raft::config("outpost")
        .validate()
        .map_err(|e| raft_err(&e))?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network::Network::new(token.to_string(), http.clone(), scheme),
        log,
        machine,
    )
    .await
    .map_err(|e| raft_err(&e))?;
    let members = BTreeMap::from([(
        config.id,
        Node {
            addr: addr.to_string(),
        },
    )]);
    if config.found {
        store::raft::initialize_once(&raft, members)
            .await
            .map_err(|e| raft_err(&e))?;
    }
    Ok((raft, state))
}

/// Starts the batcher that commits agents' reports, each batch as one `Command::Reports`.
fn start_batcher(
    raft: &Raft,
    config: batch::BatchConfig,
    stop: watch::Receiver<bool>,
) -> batch::Batcher {
    let raft = raft.clone();
    let commit = move |reports| {
        let raft = raft.clone();
        async move {
            let time = now();
            propose(&raft, Command::Reports { reports, time })
                .await
                .map(|_| ())
        }
    };
    batch::Batcher::spawn(config, commit, stop)
}

/// Starts a server: opens the store, starts Raft (founding a one-member group on first start),
/// serves the API, and runs the leader's controllers.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let dir = &config.data_dir;
    seal::files::private_dir(dir).map_err(|source| ServerError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let state_file = dir.join("state.redb");
    // A server that joins a group gets its state from the leader: an empty one is expected.
    check_state(dir, &state_file, config.reset || !config.found)?;
    let token = load_or_create_token(dir)?;
    let listen_err = |source| ServerError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let trust = match config.tls {
        true => Some(Arc::new(trust::load_or_init(dir, &config.hosts())?)),
        false => None,
    };
    let tls = trust.as_ref().map(|t| t.server_config()).transpose()?;
    let http = peer_http(trust.as_ref().map(|t| t.client_config()).transpose()?);
    let (raft, state) = start_raft(&config, &state_file, &token, addr, &http).await?;
    let (stop, stop_rx) = watch::channel(false);
    let reports = start_batcher(&raft, config.report_batch, stop_rx.clone());
    let ctx = Server {
        raft,
        state,
        token: token.clone(),
        id: config.id,
        limits: config.limits.clone(),
        blocking: blocking::Clients::new(config.limits.blocking_per_client),
        heartbeats: Arc::default(),
        http,
        reports,
        trust,
    };
    if config.found && ctx.trust.is_some() {
        tokio::spawn(commit_own_trust(ctx.clone(), stop_rx.clone()));
    }
    tokio::spawn(controller::services(ctx.clone(), stop_rx.clone()));
    tokio::spawn(controller::nodes(ctx.clone(), stop_rx.clone()));
    let app = routes::router(ctx.clone());
    let mut stopped = stop_rx;
    let serve = tokio::spawn(httpd::serve_tls(
        listener,
        app,
        config.limits.listener.clone(),
        tls,
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));
    // Written last: its presence tells a local CLI the API is up.
    let api_file = dir.join("api");
    let scheme = if config.tls { "https" } else { "http" };
    seal::files::write_private(&api_file, format!("{scheme}://{addr}\n").as_bytes()).map_err(
        |source| ServerError::DataDir {
            path: api_file,
            source,
        },
    )?;
    tracing::info!("API listening on {scheme}://{addr}");
    Ok(ServerHandle {
        addr,
        token,
        ctx,
        stop,
        serve,
    })
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
        })
    }
}
