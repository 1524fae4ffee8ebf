//! A control-plane member: the `/v1` HTTP API, Raft over HTTP between servers, and the
//! controllers the leader runs.
//!
//! - [`routes`]: the API handlers; writes go through Raft, reads come from the applied state.
//! - [`controller`]: the leader's loops: the service controller (diff desired vs actual, ask the
//!   scheduler, commit the plan) and the node monitor (heartbeats in memory, transitions to Raft).
//! - [`network`]: Raft RPCs to peer servers.
//! - [`logs`]: `outpost logs`, proxied from the agents that hold the files.
//!
//! One server is a one-member Raft group: the same code path as three or five.

pub mod controller;
pub mod logs;
pub mod network;
pub mod routes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
    /// Start with an empty state even though the data dir belongs to a cluster whose state file
    /// is missing or empty (`--reset`). Without it such a start is refused.
    pub reset: bool,
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
    #[error(
        "data dir {dir} belongs to a cluster (it holds its token), but the cluster state {state} is {what}: restore it from a backup, or start with --reset to begin a new, empty cluster here (agents keep the same token)"
    )]
    StateLost {
        dir: PathBuf,
        state: PathBuf,
        what: &'static str,
    },
}

/// The file that marks a data dir as a cluster's: the token, written at the first start before
/// the state. A data dir with it but without its state lost that state; starting afresh there
/// would quietly make an empty cluster, and its agents would then stop every task.
const MARKER: &str = "token";

/// Refuses to start an empty cluster in a data dir that held one, unless told to (`reset`).
fn check_state(dir: &Path, state: &Path, reset: bool) -> Result<(), ServerError> {
    let what = match std::fs::metadata(state) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing",
        Ok(meta) if meta.len() == 0 => "empty",
        _ => return Ok(()),
    };
    if reset || !dir.join(MARKER).exists() {
        return Ok(());
    }
    Err(ServerError::StateLost {
        dir: dir.to_path_buf(),
        state: state.to_path_buf(),
        what,
    })
}

/// What every handler and controller shares.
#[derive(Clone)]
pub struct Ctx {
    pub raft: Raft,
    pub state: StateHandle,
    pub token: String,
    pub id: u64,
    /// Last heartbeat of each node, by name: liveness lives here, never in Raft.
    pub heartbeats: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    pub http: reqwest::Client,
}

impl Ctx {
    /// Commits `command` through Raft and returns the state machine's answer.
    pub async fn propose(&self, command: Command) -> Result<Response, String> {
        self.raft
            .client_write(command)
            .await
            .map(|r| r.data)
            .map_err(|e| e.to_string())
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }
}

pub fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub token: String,
    pub ctx: Ctx,
    stop: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops serving, stops Raft, and waits until the store file is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // Not graceful: blocking queries and followed logs would hold it open for many seconds.
        self.serve.abort();
        let _ = self.ctx.raft.shutdown().await;
        let state = self.ctx.state.clone();
        drop(self.ctx);
        state.closed().await;
    }
}

/// Reads the API token from `data_dir/token`, creating it (mode 0600) on first start.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("token");
    let err = |source| ServerError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 24];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(err)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    use std::io::Write;
    file.write_all(token.as_bytes()).map_err(err)?;
    Ok(token)
}

/// Starts a server: opens the store, starts Raft (founding a one-member group on first start),
/// serves the API, and runs the leader's controllers.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let state_file = dir.join("state.redb");
    check_state(dir, &state_file, config.reset)?;
    let token = load_or_create_token(dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;

    let (log, machine, state) = store::open(&state_file)?;
    let raft_config = store::raft::config("outpost")
        .validate()
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network::Network::new(token.clone()),
        log,
        machine,
    )
    .await
    .map_err(|e| ServerError::Raft(e.to_string()))?;
    let members = BTreeMap::from([(
        config.id,
        Node {
            addr: addr.to_string(),
        },
    )]);
    store::raft::initialize_once(&raft, members)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;

    let ctx = Ctx {
        raft,
        state,
        token: token.clone(),
        id: config.id,
        heartbeats: Arc::default(),
        http: reqwest::Client::new(),
    };
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(controller::services(ctx.clone(), stop_rx.clone()));
    tokio::spawn(controller::nodes(ctx.clone(), stop_rx));
    let app = routes::router(ctx.clone());
    let serve = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("API server stopped: {e}");
        }
    });
    // Written last: its presence tells a local CLI the API is up.
    let api_file = dir.join("api");
    std::fs::write(&api_file, format!("http://{addr}\n")).map_err(|source| {
        ServerError::DataDir {
            path: api_file,
            source,
        }
    })?;
    tracing::info!("API listening on http://{addr}");
    Ok(ServerHandle {
        addr,
        token,
        ctx,
        stop,
        serve,
    })
}
