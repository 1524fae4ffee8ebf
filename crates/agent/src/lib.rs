//! The edge agent. It registers its node with a server, watches its assignments with a blocking
//! query, runs each assigned task under a [`supervisor`], and reports what it sees. It keeps its
//! assignments in its own redb file ([`local`]), so with no server reachable — cut off, or just
//! rebooted — it still starts, probes and restarts its work.
//!
//! - [`driver`]: the `Driver` seam, the process and Docker drivers.
//! - [`supervisor`]: one task's lifecycle: start, probes, restart backoff, stop.
//! - [`ports`]: host ports for tasks, from a range the agent owns.
//! - [`cgroup`], [`procfs`]: what the process driver writes to cgroups and reads from `/proc`.
//! - [`eviction`]: which task goes first under memory pressure.
//! - [`probe`]: http/tcp/exec probe evaluation and thresholds.
//! - [`logs`]: per-task log files, rotation, tail and follow.
//! - [`local`]: the agent's durable state.
//! - [`http`]: the agent's own small API (task logs), which the server proxies.
//! - [`mesh`]: the node's load balancer listeners and DNS server: every service by name and
//!   virtual IP, published ports on every node.
//! - [`mirror`]: the node's image mirror, the OCI distribution API over its content store.
//! - [`gc`]: the store's garbage collection, on a timer and when a server asks.
//! - `report`: batches supervisors' updates to the server, and keeps them while it is away.
//! - `retry`: the backoff with jitter of every loop that talks to the server.
//!
//! The agent knows nothing of Raft: it sees the control plane only through the `/v1` API.

pub mod bundles;
pub mod cgroup;
pub mod credentials;
pub mod driver;
pub mod eviction;
pub mod gc;
pub mod http;
pub mod local;
pub mod logs;
pub mod mesh;
pub mod mirror;
pub mod objects;
pub mod ports;
pub mod probe;
pub mod procfs;
mod report;
mod retry;
pub mod supervisor;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::{Assignment, Assignments, Capacity, DesiredState, RegisterRequest};
use client::Client;
use tokio::sync::{mpsc, watch};

use crate::driver::Driver;
use crate::driver::Handle;
use crate::driver::docker::DockerDriver;
use crate::driver::process::ProcessDriver;
use crate::local::{LocalState, LocalTask};
use crate::logs::TaskLogs;
use crate::ports::Ports;
use crate::retry::Retry;
use crate::supervisor::{Control, Supervision};

/// 500 ms, the default heartbeat: the leader's phi-accrual detector (`server::detector`) learns
/// each node's pace, and at 500 ms a steady node that stops is judged lost about 1.5 s after
/// its last beat (three beats), inside the 2 s detection target with room for a probe round;
/// one lost beat is no alarm. `outpost agent --heartbeat` changes it.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// 100 ms, the fastest heartbeat allowed: ten requests a second per node is already a load on a
/// server of a few hundred nodes, and buys detection little, since a silence is only judged
/// against the spread of arrivals.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// 2 s, the slowest heartbeat allowed: a node is judged lost after about three beats of
/// silence, and past 2 s that is far from "about a second"; the detector's prior for a node it
/// has just met (`server::detector::PRIOR_MEAN`) is sized for it.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long one blocking query may wait on the server before it answers unchanged.
const WATCH_WAIT: Duration = Duration::from_secs(25);

/// How long a stopping agent waits for the reporter to deliver the tasks' final states: the
/// server is usually right there, and an unreachable one must not hold up the stop.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Beyond the longest `stop_grace`, how long a stopping agent waits for its tasks: SIGKILL and
/// the wait for the task's cgroup or group to empty fit well inside it.
const STOP_SLACK: Duration = Duration::from_secs(6);

/// How often available memory is compared with the eviction threshold. One eviction per check
/// leaves the kernel a second to reclaim before the next victim is chosen.
const PRESSURE_CHECK: Duration = Duration::from_secs(1);

/// How often each task's log size is sampled for its time index (`logs::TaskLogs::stamp`): a
/// line's time is at most this late. A `stat` per task per tick.
const LOG_TICK: Duration = Duration::from_millis(250);

/// Every how many log ticks the files are checked for rotation (2 s).
const ROTATE_TICKS: u32 = 8;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// Where the agent's own API (logs) listens; port 0 picks one.
    pub listen: SocketAddr,
    /// The servers' API addresses, separated by commas; the agent learns the others of the
    /// group from the first it reaches.
    pub server: String,
    /// The bearer token of a plain (non-TLS) server; empty with `tls`.
    pub token: String,
    /// This node's certificate and the cluster CA: every connection is mutually authenticated
    /// TLS. `None` only against a plain server (embedders, tests).
    pub tls: Option<credentials::AgentTls>,
    /// The address servers reach the agent's API at, when not the listen address.
    pub advertise: Option<SocketAddr>,
    /// Working directory for processes whose spec names none.
    pub workdir: Option<PathBuf>,
    /// Below this much available memory the node is under pressure: it evicts tasks, one per
    /// check, and the control plane places nothing new on it.
    pub eviction_threshold: u64,
    /// Host ports handed to tasks come from this range, which the agent owns and records.
    pub ports: std::ops::RangeInclusive<u16>,
    /// Kept back from workloads for the system and the agent: allocatable = capacity − reserved.
    pub reserved: Capacity,
    /// How often the agent tells the server it is alive, within [`MIN_HEARTBEAT`] and
    /// [`MAX_HEARTBEAT`].
    pub heartbeat: Duration,
    /// Whether the node serves the mesh: the services' virtual IPs (from the servers' service
    /// range, made local to this host), their DNS names and published ports. Off for embedders
    /// and tests of one agent.
    pub mesh: bool,
    /// Where the node's image mirror ([`mirror`]) listens, on loopback; `None` for none.
    pub mirror: Option<SocketAddr>,
    /// How often the node's image store is collected ([`gc`]); `None` only when asked.
    pub image_gc_every: Option<Duration>,
    /// Registries (`HOST[:PORT]`, or a host at any port) the mirror reaches over plain HTTP,
    /// besides loopback ones, as the Docker Engine's `insecure-registries`.
    pub insecure_registries: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error("cannot use {path} in the agent's data dir: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error("cannot listen on {addr} for the agent API: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for the image mirror: {source}; give another --mirror address or off"
    )]
    MirrorListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Images(#[from] images::ImageError),
}

/// Everything the agent's event loop can be woken by.
enum LoopEvent {
    Assigned(Assignments),
    Finished(String),
    /// A task's secret and config files are written: it may start.
    Prepared(Box<LocalTask>, bool),
    LogTick,
    PressureCheck,
    Shutdown,
}

struct Running {
    control: watch::Sender<Control>,
    assignment: Assignment,
}

/// How many tasks gone for good keep their log files on a node (the latest written), for
/// `outpost logs` of a finished or replaced task.
const FINISHED_LOGS_KEPT: usize = 50;

pub struct Agent {
    config: AgentConfig,
    shared: Supervision,
    client: Client,
    running: HashMap<String, Running>,
    finished_tx: mpsc::UnboundedSender<String>,
    /// Tasks the control plane no longer lists, or wants stopped: drop them once stopped.
    forget: HashSet<String>,
    /// Tasks finished here for good (stopped or evicted): an answer to the assignment watch
    /// that was already on its way may still list them, and must not start them again.
    done: HashSet<String>,
    /// Whether available memory was below the eviction threshold at the last check.
    under_pressure: bool,
    /// Per running task, the log size its time index notes last (`None`: read it from there).
    log_sizes: HashMap<String, Option<u64>>,
    log_ticks: u32,
    reporter: report::Reporter,
    /// Tasks whose secrets and configs are being fetched before they start.
    preparing: HashMap<String, tokio::task::JoinHandle<()>>,
    prepared_tx: mpsc::UnboundedSender<(LocalTask, bool)>,
    prepared_rx: Option<mpsc::UnboundedReceiver<(LocalTask, bool)>>,
}

impl Agent {
    /// Runs the agent until `shutdown` resolves; then stops every process task it runs (each with
    /// SIGTERM, its `stop_grace`, then SIGKILL), leaves containers running for the next agent,
    /// and returns. Once `force` resolves, tasks still stopping are killed without waiting out
    /// their grace.
    pub async fn run(
        config: AgentConfig,
        shutdown: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let local = open_local(&config)?;
        let logs = TaskLogs::new(config.data_dir.join("logs"));
        let (listener, address) = listen(config.listen).await?;
        let address = config.advertise.unwrap_or(address);
        let (serve_tls, client_tls) = match &config.tls {
            Some(tls) => {
                let (serve, connect) = tls.configs()?;
                (Some(serve), Some(connect))
            }
            None => (None, None),
        };
        let mirror = match config.mirror {
            Some(addr) => Some(start_mirror(&config.data_dir, addr).await?),
            None => None,
        };
        let client = Client::connect(&config.server, &config.token, None, client_tls.clone());
        let mut upstream_notes = Vec::new();
        let mirror = mirror.map(|m| mirror::Mirror {
            peers: Some(mirror::Peers {
                server: client.clone(),
                http: http::probe_client(client_tls.clone()),
                node: config.name.clone(),
            }),
            upstream: Some(mirror::Upstream::new(
                upstream_client(&mut upstream_notes),
                config.insecure_registries.clone(),
            )),
            ..m
        });
        let mesh_view = mesh::MeshView::default();
        let running = supervisor::Running::default();
        let store = mirror.as_ref().map(|m| m.store.clone());
        let api_mirror = mirror.clone();

        let (updates_tx, updates_rx) = mpsc::unbounded_channel();
        let (registered_tx, registered_rx) = watch::channel(false);
        let reporter = report::spawn(
            client.clone(),
            config.name.clone(),
            updates_rx,
            registered_rx,
            &local,
        )?;
        let agent_id = agent_id(&config.data_dir)?;
        let ports = Arc::new(Ports::new(config.ports.clone()));
        let mut notes: Vec<String> = ports.overlap_note().into_iter().collect();
        notes.extend(upstream_notes);
        let mirror_addr = mirror.as_ref().map(|m| m.addr);
        let (drivers, process, docker) = drivers(&agent_id, mirror, &mut notes).await;
        let gc = store
            .clone()
            .zip(mirror_addr)
            .map(|(store, mirror)| gc::Collector {
                node: config.name.clone(),
                store,
                server: client.clone(),
                local: local.clone(),
                running: running.clone(),
                docker: docker.clone(),
                mirror,
                updates: updates_tx.clone(),
                one: Default::default(),
            });
        if let (Some(gc), Some(every)) = (&gc, config.image_gc_every) {
            tokio::spawn(gc.clone().run(every));
        }
        let api = http::AgentApi {
            logs: logs.clone(),
            token: config.token.clone(),
            http: http::probe_client(client_tls.clone()),
            mesh: (config.name.clone(), mesh_view.clone()),
            running: running.clone(),
            images: store,
            mirror: api_mirror,
            gc,
        };
        // Served once the drivers are known (the listener is bound, so callers only wait).
        tokio::spawn(http::serve(listener, serve_tls, api));
        sweep_orphans(&process, &local).await?;
        let shared = Supervision {
            node: config.name.clone(),
            drivers,
            logs,
            local,
            updates: updates_tx,
            default_workdir: config.workdir.clone(),
            ports,
            files: objects::Files::for_agent(&agent_id),
            mesh: mesh_view,
            running,
        };
        let (mesh_stop, mesh_stopped) = watch::channel(false);
        if config.mesh {
            let (node, updates) = (config.name.clone(), shared.updates.clone());
            let saved = config.data_dir.join("endpoints.json");
            let mesh = mesh::Mesh::new(client.clone(), saved, shared.mesh.clone(), node, updates);
            tokio::spawn(mesh.run(mesh_stopped));
        }
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
        let mut agent = Agent::new(config, shared, client, finished_tx, reporter);
        agent.restore()?;
        if let Some(d) = &docker {
            agent.remove_unknown_containers(d).await;
        }

        let register = agent.register_request(address, notes);
        let (assigned_tx, assigned_rx) = mpsc::channel(4);
        let watch = tokio::spawn(connect(
            agent.client.clone(),
            register,
            agent.config.heartbeat,
            registered_tx,
            assigned_tx,
        ));
        agent
            .event_loop(assigned_rx, &mut finished_rx, shutdown)
            .await;
        agent.stop_all(&mut finished_rx, force).await;
        // Its final states delivered, the agent stops watching: the server may go away next
        // (as in `outpost dev`), and a stopped agent has nothing to retry.
        watch.abort();
        mesh_stop.send_replace(true);
        Ok(())
    }

    fn new(
        config: AgentConfig,
        shared: Supervision,
        client: Client,
        finished_tx: mpsc::UnboundedSender<String>,
        reporter: report::Reporter,
    ) -> Agent {
        let (prepared_tx, prepared_rx) = mpsc::unbounded_channel();
        Agent {
            config,
            shared,
            client,
            running: HashMap::new(),
            finished_tx,
            forget: HashSet::new(),
            done: HashSet::new(),
            under_pressure: false,
            log_sizes: HashMap::new(),
            log_ticks: 0,
            reporter,
            preparing: HashMap::new(),
            prepared_tx,
            prepared_rx: Some(prepared_rx),
        }
    }

    /// Everything the agent's event loop is woken by, one [`LoopEvent`] at a time, until shutdown.
    async fn event_loop(
        &mut self,
        mut assigned: mpsc::Receiver<Assignments>,
        finished: &mut mpsc::UnboundedReceiver<String>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut log_tick = tokio::time::interval(LOG_TICK);
        let mut pressure = tokio::time::interval(PRESSURE_CHECK);
        let Some(mut prepared) = self.prepared_rx.take() else {
            return;
        };
        tokio::pin!(shutdown);
        loop {
            let event = tokio::select! {
                Some(a) = assigned.recv() => LoopEvent::Assigned(a),
                Some(id) = finished.recv() => LoopEvent::Finished(id),
                Some((task, adopt)) = prepared.recv() => LoopEvent::Prepared(Box::new(task), adopt),
                _ = log_tick.tick() => LoopEvent::LogTick,
                _ = pressure.tick() => LoopEvent::PressureCheck,
                _ = &mut shutdown => LoopEvent::Shutdown,
            };
            match event {
                LoopEvent::Assigned(a) => self.reconcile(a.assignments),
                LoopEvent::Finished(id) => self.finished(&id),
                LoopEvent::Prepared(task, adopt) => {
                    if self.preparing.remove(&task.assignment.task).is_some() {
                        self.supervise(*task, adopt);
                    }
                }
                LoopEvent::LogTick => self.log_tick(),
                LoopEvent::PressureCheck => self.check_pressure().await,
                LoopEvent::Shutdown => return,
            }
        }
    }

    /// How this node introduces itself to the control plane.
    fn register_request(&self, address: SocketAddr, notes: Vec<String>) -> RegisterRequest {
        let capacity = capacity();
        let reserved = &self.config.reserved;
        RegisterRequest {
            name: self.config.name.clone(),
            address: format!(
                "{}://{address}",
                if self.config.tls.is_some() {
                    "https"
                } else {
                    "http"
                }
            ),
            allocatable: Capacity {
                cpu_millis: capacity.cpu_millis.saturating_sub(reserved.cpu_millis),
                memory_bytes: capacity.memory_bytes.saturating_sub(reserved.memory_bytes),
            },
            capacity,
            notes,
            drivers: self.shared.drivers.keys().cloned().collect(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Restarts or re-adopts every task remembered from before, before any server is asked.
    fn restore(&mut self) -> Result<(), AgentError> {
        let tasks = self.shared.local.all()?;
        let live: HashSet<String> = tasks.iter().map(|t| t.assignment.task.clone()).collect();
        self.shared.logs.prune(&live, FINISHED_LOGS_KEPT);
        // Every remembered port is held before any task is started, so none is handed out twice.
        for task in &tasks {
            self.shared.ports.hold(task.ports.values().copied());
        }
        for task in tasks {
            tracing::info!(
                task = task.assignment.task,
                "restoring task from local state"
            );
            self.start(task, true);
        }
        Ok(())
    }

    /// Supervises the task, once its secret and config files are in place: fetched first
    /// when they are not (a new task, or one restored after a reboot emptied the tmpfs).
    fn start(&mut self, task: LocalTask, adopt: bool) {
        let spec = &task.assignment.spec;
        let wanted = task.assignment.desired == DesiredState::Running;
        let id = task.assignment.task.clone();
        match &self.shared.files {
            _ if !wanted || !objects::uses_files(spec) => self.supervise(task, adopt),
            Some(files) if files.complete(&id, spec) => self.supervise(task, adopt),
            Some(files) => {
                let fetch = prepare(
                    files.clone(),
                    self.client.clone(),
                    self.config.name.clone(),
                    task,
                    adopt,
                    self.prepared_tx.clone(),
                );
                self.preparing.insert(id, tokio::spawn(fetch));
            }
            None => tracing::error!(
                task = id,
                "not starting the task: it uses secrets or configs, and neither /run nor /dev/shm \
                 is a tmpfs to keep them in; mount a tmpfs on /dev/shm"
            ),
        }
    }

    /// Stops fetching the files of tasks no longer wanted here, and forgets them.
    fn cancel_preparing(&mut self, listed: &HashMap<&str, &Assignment>) {
        let unwanted: Vec<String> = self
            .preparing
            .keys()
            .filter(|id| {
                !listed
                    .get(id.as_str())
                    .is_some_and(|a| a.desired == DesiredState::Running)
            })
            .cloned()
            .collect();
        for id in unwanted {
            if let Some(fetch) = self.preparing.remove(&id) {
                fetch.abort();
            }
            self.forget_files(&id);
            if let Err(e) = self.shared.local.remove(&id) {
                tracing::error!(task = id, "cannot forget task: {e}");
            }
        }
    }

    /// Keeps the log files of the tasks this agent runs (or is about to), and of the latest
    /// [`FINISHED_LOGS_KEPT`] gone for good.
    fn prune_logs(&self) {
        let live: HashSet<String> = (self.running.keys())
            .chain(self.preparing.keys())
            .cloned()
            .collect();
        self.shared.logs.prune(&live, FINISHED_LOGS_KEPT);
    }

    fn forget_files(&self, id: &str) {
        if let Some(files) = &self.shared.files {
            files.remove(id);
        }
    }

    /// Removes this agent's containers that no remembered task owns (their service was removed
    /// while the agent was down). Containers of other agents, or unlabelled ones, are never
    /// touched.
    async fn remove_unknown_containers(&self, docker: &DockerDriver) {
        match docker.owned().await {
            Ok(owned) => {
                for (task, container) in owned {
                    if !self.running.contains_key(&task) {
                        tracing::info!(task, "removing container {container}: its task is gone");
                        docker.remove(&container).await;
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list this agent's containers: {e}"),
        }
    }

    fn supervise(&mut self, task: LocalTask, adopt: bool) {
        let id = task.assignment.task.clone();
        let assignment = task.assignment.clone();
        // A task to be stopped is told so from the start, so its supervisor never starts it.
        let initial = match assignment.desired {
            DesiredState::Running => Control::Run,
            DesiredState::Shutdown => Control::Stop,
        };
        let (control, join) = supervisor::spawn(self.shared.clone(), task, adopt, initial);
        self.running.insert(
            id,
            Running {
                control,
                assignment,
            },
        );
        let finished = self.finished_tx.clone();
        tokio::spawn(async move {
            if let Ok(id) = join.await {
                let _ = finished.send(id);
            }
        });
    }

    /// Makes what runs here match the control plane's list: its desired state wins.
    fn reconcile(&mut self, assignments: Vec<Assignment>) {
        let listed: HashMap<&str, &Assignment> =
            assignments.iter().map(|a| (a.task.as_str(), a)).collect();
        for (id, run) in &self.running {
            let keep = listed
                .get(id.as_str())
                .is_some_and(|a| a.desired == DesiredState::Running);
            if !keep {
                let _ = run.control.send(Control::Stop);
                self.forget.insert(id.clone());
            }
        }
        // Once the server stops listing a finished task it never lists it again (ids are not
        // reused), so only listed ones need remembering.
        self.done.retain(|id| listed.contains_key(id.as_str()));
        self.cancel_preparing(&listed);
        for a in &assignments {
            let known = self.running.contains_key(&a.task) || self.preparing.contains_key(&a.task);
            if known || self.done.contains(&a.task) {
                continue;
            }
            let task = LocalTask::new(a.clone());
            match a.desired {
                DesiredState::Running => {
                    if let Err(e) = self.shared.local.put(&task) {
                        tracing::error!(task = a.task, "cannot save assignment: {e}");
                    }
                }
                // Asked to stop something not running here (finished before, or lost with a
                // reboot): a supervisor told to stop at once reports it stopped, so the control
                // plane can let it go.
                DesiredState::Shutdown => {
                    self.forget.insert(a.task.clone());
                }
            }
            self.start(task, false);
        }
    }

    fn finished(&mut self, id: &str) {
        self.running.remove(id);
        if self.forget.remove(id) {
            self.done.insert(id.to_string());
            if let Err(e) = self.shared.local.remove(id) {
                tracing::error!(task = id, "cannot forget task: {e}");
            }
            self.prune_logs();
            self.forget_files(id);
        }
    }

    /// Compares available memory with the threshold; tells the control plane when that changes,
    /// and under pressure evicts the task that Kubernetes' order picks.
    async fn check_pressure(&mut self) {
        let Some(available) = procfs::meminfo("MemAvailable") else {
            return;
        };
        let threshold = self.config.eviction_threshold;
        let under = available < threshold;
        if under != self.under_pressure {
            self.under_pressure = under;
            let _ = self.shared.updates.send(supervisor::Update {
                memory_pressure: Some(under),
                ..Default::default()
            });
        }
        if !under {
            return;
        }
        let candidates = self.eviction_candidates().await;
        if let Some(victim) = eviction::next_victim(available, threshold, &candidates) {
            let reason = format!(
                "node under memory pressure ({} available, threshold {})",
                spec::Memory(available),
                spec::Memory(threshold)
            );
            self.evict(victim, reason);
        }
    }

    /// Every task that may be evicted, with its memory use as its driver measures it (the
    /// task's cgroup, or the container's stats).
    async fn eviction_candidates(&self) -> Vec<eviction::Candidate> {
        let handles: HashMap<String, Handle> = self
            .shared
            .local
            .all()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| Some((t.assignment.task.clone(), t.handle?)))
            .collect();
        let mut candidates = Vec::new();
        for (id, r) in &self.running {
            if r.assignment.desired != DesiredState::Running || self.forget.contains(id) {
                continue;
            }
            let driver = self
                .shared
                .drivers
                .get(&r.assignment.spec.driver.to_string());
            let usage = match (driver, handles.get(id)) {
                (Some(d), Some(h)) => d.memory_usage(h, id).await.unwrap_or(0),
                _ => 0,
            };
            let request = &r.assignment.spec.resources.requests.memory;
            candidates.push(eviction::Candidate {
                task: id.clone(),
                qos: r.assignment.spec.qos(),
                usage,
                request: request.map_or(0, |m| m.bytes()),
            });
        }
        candidates
    }

    fn evict(&mut self, victim: String, reason: String) {
        tracing::warn!(task = victim, "evicting: {reason}");
        if let Some(run) = self.running.get(&victim) {
            // The event goes out now, in the order victims are chosen; the task's final state
            // follows once it is down.
            let event = api::NewEvent {
                time: supervisor::now(),
                level: api::Level::Warning,
                reason: "evicted".into(),
                service: Some(run.assignment.service.clone()),
                task: Some(victim.clone()),
                node: Some(self.config.name.clone()),
                message: format!("evicted: {reason}"),
            };
            let _ = self.shared.updates.send(supervisor::Update {
                events: vec![event],
                ..Default::default()
            });
            let _ = run.control.send(Control::Evict(reason));
        }
        self.forget.insert(victim);
    }

    /// Samples every running task's log for its time index and, every [`ROTATE_TICKS`], rotates
    /// the logs grown too large.
    fn log_tick(&mut self) {
        let logs = &self.shared.logs;
        self.log_sizes.retain(|id, _| self.running.contains_key(id));
        self.log_ticks = (self.log_ticks + 1) % ROTATE_TICKS;
        for id in self.running.keys() {
            let seen = self.log_sizes.entry(id.clone()).or_default();
            logs.stamp(id, seen);
            if self.log_ticks != 0 {
                continue;
            }
            match logs.rotate_if_needed(id) {
                Ok(true) => *seen = Some(0),
                Ok(false) => {}
                Err(e) => tracing::warn!(task = id, "cannot rotate log: {e}"),
            }
        }
    }

    /// Stops every task whose driver does not let it outlive the agent (and leaves containers
    /// running), then waits for each supervisor to finish. Assignments stay in local state, so the
    /// next start of the agent brings the tasks back or re-adopts them.
    async fn stop_all(
        &mut self,
        finished: &mut mpsc::UnboundedReceiver<String>,
        force: impl Future<Output = ()>,
    ) {
        for run in self.running.values() {
            let _ = run.control.send(Control::Detach);
        }
        let longest = self
            .running
            .values()
            .map(|r| r.assignment.spec.stop_grace)
            .max()
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + longest + STOP_SLACK;
        tokio::pin!(force);
        let mut forced = false;
        while !self.running.is_empty() {
            let id = tokio::select! {
                id = tokio::time::timeout_at(deadline, finished.recv()) => id,
                _ = &mut force, if !forced => {
                    forced = true;
                    tracing::warn!("forced stop: killing tasks without waiting out their grace");
                    for run in self.running.values() {
                        let _ = run.control.send(Control::Force);
                    }
                    continue;
                }
            };
            match id {
                Ok(Some(id)) => {
                    self.running.remove(&id);
                    if self.forget.remove(&id) {
                        let _ = self.shared.local.remove(&id);
                    }
                }
                _ => break,
            }
        }
        // The final states go out while the server may still be up.
        if !self.reporter.flushed(FLUSH_WAIT).await {
            tracing::warn!("the server did not take the final task states within {FLUSH_WAIT:?}");
        }
    }
}

/// Registers (retrying until the server answers), then keeps heartbeating and watching.
async fn connect(
    client: Client,
    register: RegisterRequest,
    heartbeat: Duration,
    registered: watch::Sender<bool>,
    assigned: mpsc::Sender<Assignments>,
) {
    register_until_done(&client, &register).await;
    let _ = registered.send(true);
    tokio::spawn(beat(client.clone(), register.clone(), heartbeat));
    let mut index = 0;
    let mut retry = Retry::default();
    loop {
        match client.assignments(&register.name, index, WATCH_WAIT).await {
            Ok(a) => {
                retry.reset();
                index = a.index;
                if assigned.send(a).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let delay = retry.next_delay();
                tracing::warn!(
                    "cannot watch assignments: {e}; retrying in {delay:?} (tasks keep running)"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Heartbeats every `every`, each in its own request, so that one delayed by a lossy link does
/// not hold back the next: the detector judges arrivals, and a beat that waits on a
/// retransmission would make a healthy node look silent. Each request gives up after 2 s
/// (`Client::heartbeat`), so at most a few are in flight. A server that forgot the node (a
/// fresh cluster) has it register again. The registration counts as a beat, so the first comes
/// one period after it: the server learns the node's pace from the intervals, and one of nearly
/// nothing would teach it a wrong one.
async fn beat(client: Client, register: RegisterRequest, every: Duration) {
    let (forgotten_tx, mut forgotten) = mpsc::channel::<()>(1);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (client, name, forgotten) =
                    (client.clone(), register.name.clone(), forgotten_tx.clone());
                tokio::spawn(async move {
                    if let Err(e) = client.heartbeat(&name).await
                        && e.status() == Some(reqwest::StatusCode::NOT_FOUND)
                    {
                        let _ = forgotten.try_send(());
                    }
                });
            }
            Some(()) = forgotten.recv() => register_until_done(&client, &register).await,
        }
    }
}

/// How long fetching a task's files waits between tries, at most.
const PREPARE_BACKOFF: Duration = Duration::from_secs(10);

/// Fetches a task's secret and config files, trying again while the server cannot be reached
/// or does not yet know the task here, then hands the task back to the event loop.
async fn prepare(
    files: objects::Files,
    client: Client,
    node: String,
    task: LocalTask,
    adopt: bool,
    done: mpsc::UnboundedSender<(LocalTask, bool)>,
) {
    let mut wait = Duration::from_millis(200);
    loop {
        match files.fetch(&client, &node, &task.assignment).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(task = task.assignment.task, "{e}; trying again"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(PREPARE_BACKOFF);
    }
    let _ = done.send((task, adopt));
}

async fn register_until_done(client: &Client, register: &RegisterRequest) {
    let mut retry = Retry::default();
    loop {
        match client.register(register).await {
            Ok(_) => {
                // Every server of the group, so that the agent carries on through another
                // when the one it talks to stops answering.
                if let Err(e) = client.learn_servers().await {
                    tracing::debug!("cannot learn the group's servers: {e}");
                }
                return;
            }
            Err(e) => {
                let delay = retry.next_delay();
                tracing::warn!(
                    "cannot register with {}: {e}; retrying in {delay:?}",
                    client.base()
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Creates the data dir and opens the agent's local state in it.
/// Opens the agent's state in its data dir, which, like every file in it, is this user's alone:
/// task specs' `env` may hold secrets.
fn open_local(config: &AgentConfig) -> Result<Arc<LocalState>, AgentError> {
    let dir_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| AgentError::DataDir { path, source }
    };
    let dir = &config.data_dir;
    seal::files::private_dir(dir).map_err(dir_err(dir))?;
    seal::files::private_dir(&dir.join("logs")).map_err(dir_err(&dir.join("logs")))?;
    let file = dir.join("agent.redb");
    // Waits out a lock that a child of a killed agent holds until it execs (see LOCK_PATIENCE).
    let local = seal::files::open_when_unlocked(
        seal::files::LOCK_PATIENCE,
        local::LocalError::is_locked,
        |e| tracing::warn!("{e}; waiting up to {:?} for it", seal::files::LOCK_PATIENCE),
        || LocalState::open(&file),
    )?;
    seal::files::private_file(&file).map_err(dir_err(&file))?;
    Ok(Arc::new(local))
}

/// A registry that cannot be reached within this long is given up (the store's copy, if
/// any, starts instead): 10 s, room for a slow edge link's handshake, not for a dead one.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(10);

/// A registry that sends nothing for this long has stalled; the fetch fails and resumes
/// from its bytes next time.
const UPSTREAM_STALL: Duration = Duration::from_secs(60);

/// The client of upstream registries: the system's roots (reqwest's rustls platform
/// verifier), not the cluster's CA. A node without any (a `FROM scratch` container) still
/// reaches plain-HTTP registries; every HTTPS one is refused as unverifiable, and a note says
/// why.
fn upstream_client(notes: &mut Vec<String>) -> reqwest::Client {
    let builder = || {
        reqwest::Client::builder()
            .connect_timeout(UPSTREAM_CONNECT)
            .read_timeout(UPSTREAM_STALL)
    };
    match builder().build() {
        Ok(client) => client,
        Err(e) => {
            notes.push(format!(
                "images: HTTPS registries cannot be verified on this node ({}); install its CA \
                 certificates (ca-certificates)",
                mirror::upstream::chain(&e)
            ));
            (builder().tls_certs_only([]).build()).unwrap_or_default()
        }
    }
}

/// Opens the node's content store (`<data>/images`) and serves it as a registry on `addr`; the
/// address it listens on goes to `<data>/mirror`, for clients and tests to find.
async fn start_mirror(
    data_dir: &std::path::Path,
    addr: SocketAddr,
) -> Result<mirror::Mirror, AgentError> {
    let store = images::Store::open(&data_dir.join("images"))?;
    let err = |source| AgentError::MirrorListen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let path = data_dir.join("mirror");
    seal::files::write_private(&path, bound.to_string().as_bytes())
        .map_err(|source| AgentError::DataDir { path, source })?;
    tracing::info!("image mirror at {bound}");
    tokio::spawn(mirror::serve(listener, store.clone()));
    Ok(mirror::Mirror {
        addr: bound,
        store,
        peers: None,
        upstream: None,
    })
}

/// Binds the agent's own API, and says where it listens (port 0 picks one).
async fn listen(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), AgentError> {
    let err = |source| AgentError::Listen { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let address = listener.local_addr().map_err(err)?;
    Ok((listener, address))
}

type Drivers = BTreeMap<String, Arc<dyn Driver>>;

/// The drivers this node has: processes always (in cgroups where they are usable), Docker where
/// an engine answers. What is missing goes to `notes`, for `outpost nodes`.
async fn drivers(
    agent_id: &str,
    mirror: Option<mirror::Mirror>,
    notes: &mut Vec<String>,
) -> (Drivers, Arc<ProcessDriver>, Option<Arc<DockerDriver>>) {
    let cgroups = match cgroup::Cgroups::detect(
        std::path::Path::new(cgroup::DEFAULT_ROOT),
        &format!("outpost-{agent_id}"),
    ) {
        Ok(cg) => {
            notes.push(format!(
                "process limits: {} ({})",
                cg.mode(),
                cg.controllers().join(", ")
            ));
            notes.extend(cg.notes().iter().cloned());
            Some(cg)
        }
        Err(e) => {
            notes.push(format!(
                "process limits: rlimits only (address space), no cgroups: {e}"
            ));
            None
        }
    };
    let process = Arc::new(ProcessDriver::new(cgroups, agent_id));
    let mut drivers: Drivers = BTreeMap::new();
    drivers.insert("process".into(), process.clone());
    let docker = match DockerDriver::connect(agent_id).await {
        Ok(d) => Some(Arc::new(d.with_mirror(mirror))),
        Err(e) => {
            tracing::warn!("docker driver unavailable: {e}");
            notes.push(format!("docker driver unavailable: {e}"));
            None
        }
    };
    if let Some(d) = &docker {
        drivers.insert("docker".into(), d.clone());
    }
    (drivers, process, docker)
}

/// Kills this agent's processes that no task record owns, before any task is restored.
async fn sweep_orphans(process: &ProcessDriver, local: &LocalState) -> Result<(), AgentError> {
    let records: HashMap<String, Option<Handle>> = local
        .all()?
        .into_iter()
        .map(|t| (t.assignment.task, t.handle))
        .collect();
    for done in process.sweep(&records).await {
        tracing::warn!("{done}");
    }
    Ok(())
}

/// This agent's identity on the node's container engine, made once and kept in its data dir:
/// several agents (or test clusters) may share one engine without touching each other's
/// containers.
fn agent_id(data_dir: &std::path::Path) -> Result<String, AgentError> {
    // 4 random bytes: unique among the agents sharing one engine, short in a container label.
    seal::files::read_or_create_secret(&data_dir.join("agent-id"), 4).map_err(|e| match e {
        seal::files::SecretError::Empty { path } => AgentError::DataDir {
            path,
            source: std::io::Error::other(
                "the agent id file is empty: restore it (the agent's containers carry it in \
                 their `outpost.agent` label) or remove it to have a new id made",
            ),
        },
        seal::files::SecretError::Io { path, source } => AgentError::DataDir { path, source },
    })
}

/// What an agent keeps back by default: 100m of CPU and a tenth of memory, at most 256 MiB —
/// room for the OS and the agent itself on a 512 MB box.
pub fn default_reserved() -> Capacity {
    let total = capacity().memory_bytes;
    Capacity {
        cpu_millis: 100,
        memory_bytes: (total / 10).min(256 << 20),
    }
}

/// What this node offers: all its cores and the memory it has.
fn capacity() -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    Capacity {
        cpu_millis: cpus * 1000,
        memory_bytes: procfs::meminfo("MemTotal").unwrap_or(0),
    }
}
