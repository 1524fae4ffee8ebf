//! The agent's own API: task logs, which the server proxies for `outpost logs`, the load
//! balancer's counters (`GET /v1/agent/traffic?service=`, for `outpost services NAME`), and the two
//! routes of failure detection: `GET /v1/agent/health` (the cheapest answer there is) and
//! `POST /v1/agent/probe`, with which the leader asks this agent whether it can reach another
//! node's agent API when that node's heartbeats stop. Over TLS, logs and probes answer only
//! servers' certificates of the cluster, and health any node's of the cluster (other agents
//! probe it); a plain agent checks the server's bearer token. All through the same hardened
//! listener (`httpd`): a cap on open connections and a header-read timeout, so idle clients
//! cannot exhaust the agent's file descriptors. Every refusal is an `ApiError`.

use std::sync::Arc;

use api::Timestamp;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use httpd::{Fail, Json, Path, Query};
use serde::Deserialize;

use crate::logs::TaskLogs;
use crate::supervisor::RunningTask;

/// 64: the servers of the cluster proxy a few log streams at a time; nothing else connects.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// What the agent's API handlers share.
#[derive(Clone)]
pub struct AgentApi {
    pub logs: TaskLogs,
    /// For probes of other agents, and of the agent's own clients without TLS: the cluster
    /// token.
    pub token: String,
    /// What this agent probes other agents with ([`probe_client`]).
    pub http: reqwest::Client,
    /// The node's name and its mesh, for `traffic`.
    pub mesh: (String, crate::mesh::MeshView),
    pub running: crate::supervisor::Running,
    /// The node's image store, when it has a mirror.
    pub images: Option<images::Store>,
    /// Its collector, for `outpost image prune`.
    pub gc: Option<crate::gc::Collector>,
    /// The node's mirror with its sources, for `outpost image pull`.
    pub mirror: Option<crate::mirror::Mirror>,
}

/// How long an idle connection to another agent is kept, 2 s: below the 5 s after which their
/// listeners close idle connections.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
    /// The run before the current one instead.
    #[serde(default)]
    previous: bool,
    /// Only lines written since: a duration back from this node's clock, or an RFC 3339 time.
    since: Option<String>,
    /// Each line starts with the time it was written.
    #[serde(default)]
    timestamps: bool,
}

/// The HTTP client this agent probes other agents with: its own certificate where it has one
/// (the other agents answer only the cluster's nodes), connections kept briefly.
pub fn probe_client(tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().pool_idle_timeout(POOL_IDLE);
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder.build().unwrap_or_default()
}

/// Serves the agent's API until the process ends: at most [`DEFAULT_MAX_CONNECTIONS`] open
/// connections, with `httpd`'s default header-read timeout. With `tls`, clients are known by
/// their certificates of the cluster (see the module doc); without, by the bearer token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    api: AgentApi,
) {
    let limits = httpd::Limits::with_max_connections(DEFAULT_MAX_CONNECTIONS);
    let routes = Router::new()
        .route("/v1/agent/logs/{task}", get(task_logs))
        .route("/v1/agent/probe", post(probe))
        .route("/v1/agent/traffic", get(traffic))
        .route("/v1/agent/exec/{task}", post(exec))
        .route("/v1/agent/stats", get(stats))
        .route("/v1/agent/images", get(stored_images))
        .route("/v1/agent/images/blobs", get(crate::bundles::blobs))
        .route("/v1/agent/images/plan", post(crate::bundles::plan))
        .route("/v1/agent/images/bundle", post(crate::bundles::bundle))
        .route("/v1/agent/images/load", post(crate::bundles::load))
        .route("/v1/agent/images/prune", post(prune_images))
        .route("/v1/agent/images/pull", post(pull_image));
    let members = Router::new()
        .route("/v1/agent/health", get(health))
        .route("/v1/agent/registry/v2/{*path}", get(registry));
    let app = match &tls {
        Some(_) => routes
            .route_layer(axum::middleware::from_fn(only_servers))
            .merge(members.route_layer(axum::middleware::from_fn(only_members))),
        None => routes
            .merge(members)
            .route_layer(axum::middleware::from_fn_with_state(
                httpd::Token(api.token.as_str().into()),
                httpd::authorize,
            )),
    };
    let app = app.fallback(httpd::not_found).with_state(api);
    httpd::serve_tls(listener, app, limits, tls, None, std::future::pending()).await;
}

/// The certificate the client showed in the TLS handshake (already checked against the CA).
fn peer(req: &axum::extract::Request) -> Option<&rustls::pki_types::CertificateDer<'static>> {
    req.extensions()
        .get::<httpd::PeerCertificate>()
        .and_then(|c| c.0.as_ref())
}

/// Middleware: 403 unless the client's certificate is a server's; agents and people read
/// logs through a server, and only the leader asks for probes.
async fn only_servers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if peer(&req).is_some_and(|c| pki::tls::has_role(c, pki::NodeRole::Server)) {
        next.run(req).await
    } else {
        Fail::new(
            StatusCode::FORBIDDEN,
            "only the cluster's servers may read an agent's logs or ask it to probe: use `outpost logs` against a server",
        )
        .into_response()
    }
}

/// Middleware: any node of the cluster (the handshake checked its certificate against the CA)
/// may ask whether this agent is alive: the leader, and the agents it asks to probe.
async fn only_members(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if peer(&req).is_some() {
        next.run(req).await
    } else {
        Fail::new(
            StatusCode::FORBIDDEN,
            "only the cluster's nodes may probe an agent, with their certificates",
        )
        .into_response()
    }
}

async fn task_logs(
    State(api): State<AgentApi>,
    Path(task): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    if task.contains('/') || task.starts_with('.') {
        return Fail::invalid_at(
            "bad task id",
            "task",
            format!("{task:?} is not a task id (like web.1.7)"),
        )
        .into_response();
    }
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let since = match q
        .since
        .as_deref()
        .map(|t| api::parse_since(t, now))
        .transpose()
    {
        Ok(since) => since,
        Err(why) => return Fail::invalid_at("bad query", "since", why).into_response(),
    };
    let read = crate::logs::Select {
        tail: q.tail,
        since,
        timestamps: q.timestamps,
        previous: q.previous,
    };
    let (head, offset) = match api.logs.read(&task, read) {
        Ok(Some(x)) => x,
        Ok(None) => {
            return Fail::new(
                StatusCode::NOT_FOUND,
                format!("{task} has not restarted: there is no previous run to show"),
            )
            .into_response();
        }
        Err(e) => {
            return Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the log of {task}: {e}"),
            )
            .into_response();
        }
    };
    let follow = q.follow && !q.previous;
    let first = futures_util::stream::once(async move { head });
    let body = if follow {
        let mut partial = Vec::new();
        let new = api
            .logs
            .follow(&task, offset)
            .map(move |chunk| match q.timestamps {
                // Read within the follow poll of being written: the time of the read.
                true => {
                    let now = Timestamp::from_system_time(std::time::SystemTime::now());
                    api::prefix_lines(&format!("{now} "), &mut partial, &chunk)
                }
                false => chunk,
            });
        Body::from_stream(first.chain(new).map(Ok::<_, std::io::Error>))
    } else {
        Body::from_stream(first.map(Ok::<_, std::io::Error>))
    };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Runs a command beside a running task of this node, streaming its output as `api::exec`
/// frames; the command is killed if the caller goes away. The request is a lone
/// `api::ExecRequest` as JSON, or `api::ExecInput` frames for as long as the session lasts.
async fn exec(
    State(api): State<AgentApi>,
    Path(task): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let Some(running) = api.running.get(&task) else {
        return Fail::new(
            StatusCode::CONFLICT,
            format!(
                "{task} does not run on this node now: exec needs a running task (see `outpost ps`)"
            ),
        )
        .into_response();
    };
    let (req, input) = match exec_input(request).await {
        Ok(x) => x,
        Err(fail) => return fail.into_response(),
    };
    if req.argv.first().is_none_or(|p| p.is_empty()) {
        return Fail::invalid_at("no command", "argv", "give the command to run").into_response();
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let RunningTask {
            driver,
            handle,
            launch,
        } = running;
        driver
            .exec_streaming(&handle, &launch, &req, input, tx)
            .await;
    });
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|frame: api::ExecFrame| Ok::<_, std::io::Error>(frame.encode()));
    (
        [(header::CONTENT_TYPE, api::EXEC_FRAMES)],
        Body::from_stream(frames),
    )
        .into_response()
}

/// How long a caller has to send an exec's first frame, 10 s: it is sent with the request's
/// head, and a silent caller must not hold a connection for ever.
const EXEC_START_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// What to run, and the caller's input that follows as the body goes on (read by a task of its
/// own until the body ends: a session may sit idle for hours).
async fn exec_input(
    request: axum::extract::Request,
) -> Result<(api::ExecRequest, crate::driver::ExecInputs), Fail> {
    let framed = (request.headers().get(header::CONTENT_TYPE))
        .is_some_and(|v| v.as_bytes().starts_with(api::EXEC_FRAMES.as_bytes()));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    if !framed {
        let Json(req) =
            <Json<api::ExecRequest> as axum::extract::FromRequest<()>>::from_request(request, &())
                .await?;
        return Ok((req, rx));
    }
    let mut body = request.into_body().into_data_stream();
    let mut decoder = api::InputDecoder::default();
    let bad = |why: String| Fail::new(StatusCode::BAD_REQUEST, format!("bad exec frames: {why}"));
    let start = tokio::time::timeout(EXEC_START_PATIENCE, async {
        loop {
            match decoder.next_frame().map_err(bad)? {
                Some(api::ExecInput::Start(req)) => return Ok(req),
                Some(_) => return Err(bad("the first frame must say what to run".into())),
                None => {}
            }
            match body.next().await {
                Some(Ok(chunk)) => decoder.extend(&chunk),
                Some(Err(e)) => return Err(bad(format!("the request body broke off: {e}"))),
                None => return Err(bad("the body ended before saying what to run".into())),
            }
        }
    });
    let req = start.await.map_err(|_| {
        bad(format!(
            "no start frame within {EXEC_START_PATIENCE:?} of the request"
        ))
    })??;
    tokio::spawn(async move {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
                Ok(None) => match body.next().await {
                    Some(Ok(chunk)) => decoder.extend(&chunk),
                    // The body ended or broke off: so has the caller's input.
                    _ => return,
                },
                // Bytes that are not frames end the input, as its end would.
                Err(_) => return,
            }
        }
    });
    Ok((req, rx))
}

/// The instant of this agent's first stats reading: later ones are timed from it, on the
/// monotonic clock (only the time between two readings is used).
static FIRST_READING: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// What the node and its running tasks (of one service, or all) use now, as counters.
async fn stats(State(api): State<AgentApi>, Query(q): Query<TrafficQuery>) -> Json<api::NodeUsage> {
    let at = FIRST_READING.get_or_init(std::time::Instant::now).elapsed();
    let wanted = (api.running.all().into_iter())
        .filter(|(_, r)| q.service.as_ref().is_none_or(|s| *s == r.launch.service));
    // Every task is read at once, so one slow reading (the Engine's, for a container)
    // holds up none of the others.
    let reads = wanted.map(|(id, running)| async move {
        let usage = running.driver.usage(&running.handle, &id).await;
        let limits = &running.launch.spec.resources.limits;
        api::TaskUsage {
            memory_limit: limits.memory.map(|m| m.bytes()),
            service: running.launch.service.clone(),
            task: id,
            usage,
        }
    });
    let tasks = futures_util::future::join_all(reads).await;
    let total = crate::procfs::meminfo("MemTotal");
    let available = crate::procfs::meminfo("MemAvailable");
    let net = crate::procfs::node_net_bytes();
    Json(api::NodeUsage {
        node: api.mesh.0.clone(),
        at_ms: u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_total: total,
        usage: api::Usage {
            cpu_ns: crate::procfs::node_cpu_ns(),
            memory_bytes: total.zip(available).map(|(t, a)| t.saturating_sub(a)),
            net_rx_bytes: net.map(|n| n.0),
            net_tx_bytes: net.map(|n| n.1),
            disk_read_bytes: None,
            disk_write_bytes: None,
        },
        tasks,
    })
}

/// Another node reading this node's image store (see `mirror::serve_peer`).
async fn registry(State(api): State<AgentApi>, req: axum::extract::Request) -> Response {
    match api.images {
        Some(store) => crate::mirror::serve_peer(store, req).await,
        None => Fail::new(
            StatusCode::NOT_FOUND,
            "this node keeps no image store (--mirror off)",
        )
        .into_response(),
    }
}

/// A blob's progress is told every this many bytes (and at its end): lines, not a flood.
const PULL_PROGRESS_EVERY: u64 = 1 << 20;

/// `outpost image pull` on this node: the image obtained into the store (peers first, then its
/// registry), told as NDJSON [`api::PullLine`]s as it goes, ending with `done` or `failed`.
async fn pull_image(
    State(api): State<AgentApi>,
    httpd::Json(asked): httpd::Json<api::PullRequest>,
) -> Response {
    let node = api.mesh.0.clone();
    let Some(mirror) = api.mirror else {
        let why = format!("node {node} keeps no image store (its agent runs with --mirror off)");
        return Fail::new(StatusCode::CONFLICT, why).into_response();
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<api::PullLine>();
    tokio::spawn(async move {
        let told = std::sync::Mutex::new(0u64);
        let progress = |step: crate::mirror::Step| {
            let line = match step {
                crate::mirror::Step::Trying(source) => api::PullLine::Trying {
                    node: node.clone(),
                    source,
                },
                crate::mirror::Step::Blob {
                    digest,
                    done,
                    total,
                } => {
                    let mut last = told.lock().unwrap_or_else(|p| p.into_inner());
                    let end = total == Some(done);
                    if !end && done.saturating_sub(*last) < PULL_PROGRESS_EVERY && done > *last {
                        return;
                    }
                    *last = if end { 0 } else { done };
                    api::PullLine::Blob {
                        node: node.clone(),
                        digest: digest.to_string(),
                        done,
                        total,
                    }
                }
            };
            let _ = tx.send(line);
        };
        let last = match mirror.obtain(&asked.image, false, None, &progress).await {
            Ok(obtained) => api::PullLine::Done {
                node: node.clone(),
                origin: obtained.origin,
                bytes: obtained.bytes,
                warning: obtained.warning,
            },
            Err(error) => api::PullLine::Failed {
                node: node.clone(),
                error,
            },
        };
        let _ = tx.send(last);
    });
    let lines = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(|line| {
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, std::io::Error>(bytes)
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

/// What the node's image store holds; an empty list for a node without a mirror.
async fn stored_images(State(api): State<AgentApi>) -> Response {
    let node = api.mesh.0.clone();
    let Some(store) = api.images else {
        let none = api::NodeImages {
            node,
            images: Vec::new(),
            blobs: 0,
            blob_bytes: 0,
        };
        return Json(none).into_response();
    };
    // Reading manifests and sizing blobs is file work.
    let listed = tokio::task::spawn_blocking(move || {
        let images = store.images()?;
        let blobs = store.blobs()?;
        Ok::<_, images::ImageError>((images, blobs))
    })
    .await;
    let (listed, blobs) = match listed.map_err(|e| e.to_string()) {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            return Fail::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
        Err(e) => return Fail::new(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let images = (listed.into_iter())
        .map(|i| api::StoredImage {
            name: i.name,
            tag: i.tag,
            digest: i.digest.to_string(),
            bytes: i.bytes,
            missing_blobs: i.missing,
            used_by: Vec::new(),
            rollback: Vec::new(),
        })
        .collect();
    Json(api::NodeImages {
        node,
        images,
        blobs: blobs.len(),
        blob_bytes: blobs.iter().map(|(_, size)| size).sum(),
    })
    .into_response()
}

#[derive(Deserialize)]
struct PruneQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Collects the node's image store now (`outpost image prune`), or with `dry_run` says what
/// would go; 503 when the servers cannot say what the cluster keeps (nothing is collected).
async fn prune_images(State(api): State<AgentApi>, Query(q): Query<PruneQuery>) -> Response {
    let Some(gc) = api.gc else {
        let none = api::NodePrune {
            node: api.mesh.0.clone(),
            dry_run: q.dry_run,
            images: Vec::new(),
            blobs: 0,
            bytes: 0,
            kept_blobs: 0,
            partial: 0,
            engine_tags: Vec::new(),
        };
        return Json(none).into_response();
    };
    match gc.collect(q.dry_run, true).await {
        Ok(pruned) => Json(pruned).into_response(),
        Err(e) => Fail::new(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

#[derive(Deserialize)]
struct TrafficQuery {
    service: Option<String>,
}

/// The node's listeners of one service (or of all) and their counters.
async fn traffic(
    State(api): State<AgentApi>,
    Query(q): Query<TrafficQuery>,
) -> Json<Vec<api::ListenerTraffic>> {
    let (node, mesh) = &api.mesh;
    Json(mesh.traffic(node, q.service.as_deref()))
}

/// Alive: the process runs and its API answers.
async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Whether this agent reaches the agent API at `address` (another node's, as it registered):
/// a few health requests at once, each with a short timeout (`client::agent`).
async fn probe(
    State(api): State<AgentApi>,
    Json(req): Json<api::ProbeRequest>,
) -> Result<Json<api::ProbeAnswer>, Fail> {
    let address = req.address.trim();
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(Fail::invalid_at(
            "bad probe",
            "address",
            format!("{address:?} is not an agent API address (like http://10.0.0.7:7001)"),
        ));
    }
    let reached = client::agent::reachable(&api.http, address, &api.token).await;
    Ok(Json(api::ProbeAnswer { reached }))
}
