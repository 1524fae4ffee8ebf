//! One simulated agent. It makes the calls `crates/agent` makes, through the same client: it
//! registers, heartbeats every 500 ms, holds a blocking query on its assignments, and reports
//! each assigned task `starting`, then `running` and ready — without starting anything. A task
//! the control plane wants stopped is reported `exited`. In the steady phase it flips the
//! readiness of all its running tasks each time its previous report is acknowledged, so the
//! offered load is as much as the server takes.
//!
//! Like the agent's reporter, it keeps one report in flight, numbers reports with `seq`, and
//! sends a report that failed again (under a new `seq`) until it is acknowledged: an
//! acknowledged report is committed and applied, so what it counts is what the server applied.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use api::{
    Assignment, Assignments, Capacity, DesiredState, RegisterRequest, StatusReport, TaskState,
    TaskStatus, Timestamp,
};
use client::{Client, ClientError};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

/// The agent's own pace (`agent::HEARTBEAT_INTERVAL`).
const HEARTBEAT: Duration = Duration::from_millis(500);

/// The agent's own blocking-query wait (`WATCH_WAIT` in `crates/agent`).
const WATCH_WAIT: Duration = Duration::from_secs(25);

/// The agent's own retry policy (`crates/agent/src/retry.rs`): pauses from 200 ms up to 5 s.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// Registrations in flight at once, across all simulated agents. Registering is the set-up of a
/// run, not one of its figures: unbounded, 5,000 at once queue so deep behind a slow commit that
/// each one outwaits the server's 30 s limit and is sent again, and the queue only grows. 64
/// keeps it short, and still registers 5,000 nodes in about a second on a server that commits
/// a registration in 10 ms.
pub const REGISTERING: usize = 64;

/// What the agent keeps back from workloads by default (`agent::default_reserved` on a box of
/// 8 GiB or more).
const RESERVED: Capacity = Capacity {
    cpu_millis: 100,
    memory_bytes: 256 << 20,
};

/// Where the run is; every simulated agent watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Register, take assignments, report tasks running.
    Deploy,
    /// Also flip the readiness of every running task, report after report.
    Steady,
    /// Stop flipping; once the last report is acknowledged, say what the server was told.
    Settle,
}

/// The readiness an agent last had acknowledged for each of its running tasks.
pub type Told = Vec<(String, bool)>;

/// Counts every simulated agent adds to, and the instants the totals were reached.
#[derive(Debug)]
pub struct Counters {
    tasks: u64,
    pub registered: AtomicU64,
    /// Agents that joined with a node certificate.
    pub joined: AtomicU64,
    placed: AtomicU64,
    pub all_placed: OnceLock<Instant>,
    running: AtomicU64,
    pub all_running: OnceLock<Instant>,
    /// Task statuses in acknowledged reports: each one changed a task on the server.
    pub changes: AtomicU64,
    pub reports: AtomicU64,
    pub failed_joins: AtomicU64,
    pub failed_registers: AtomicU64,
    pub failed_reports: AtomicU64,
    pub failed_heartbeats: AtomicU64,
    pub failed_watches: AtomicU64,
    last_error: Mutex<Option<String>>,
    next_pid: AtomicU32,
}

impl Counters {
    /// Counters for a run that deploys `tasks` tasks in all.
    pub fn new(tasks: u64) -> Counters {
        Counters {
            tasks,
            registered: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            placed: AtomicU64::new(0),
            all_placed: OnceLock::new(),
            running: AtomicU64::new(0),
            all_running: OnceLock::new(),
            changes: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            failed_joins: AtomicU64::new(0),
            failed_registers: AtomicU64::new(0),
            failed_reports: AtomicU64::new(0),
            failed_heartbeats: AtomicU64::new(0),
            failed_watches: AtomicU64::new(0),
            last_error: Mutex::new(None),
            // Above the pids a small system has in use, so they look like real task pids.
            next_pid: AtomicU32::new(10_000),
        }
    }

    pub fn placed(&self) -> u64 {
        self.placed.load(Ordering::Relaxed)
    }

    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }

    /// The last error any simulated agent met, for the message of a phase that timed out.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn add_placed(&self, n: u64) {
        reach(&self.placed, n, self.tasks, &self.all_placed);
    }

    fn add_running(&self, n: u64) {
        reach(&self.running, n, self.tasks, &self.all_running);
    }

    fn failed(&self, counter: &AtomicU64, what: &str, e: &ClientError) {
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{what}: {e}"));
    }
}

/// Adds `n` to `counter`, and notes the instant it first reaches `total`.
fn reach(counter: &AtomicU64, n: u64, total: u64, at: &OnceLock<Instant>) {
    if n == 0 {
        return;
    }
    if counter.fetch_add(n, Ordering::Relaxed) + n >= total {
        let _ = at.set(Instant::now());
    }
}

/// Everything one simulated agent needs.
pub struct Sim {
    pub name: String,
    /// Its own loopback address: the server caps blocking queries per client address.
    pub address: IpAddr,
    pub api: String,
    pub token: String,
    /// The cluster CA, when the server speaks TLS.
    pub tls: Option<rustls::ClientConfig>,
    /// The agent join token, when the server speaks TLS: the agent joins with it, as a real
    /// one does, and then calls with its own node certificate instead of `token`, so that the
    /// server sees it as it sees a real agent.
    pub join_token: Option<String>,
    pub counters: Arc<Counters>,
    pub phase: watch::Receiver<Phase>,
    pub told: mpsc::UnboundedSender<Told>,
    /// Shared by every agent: at most [`REGISTERING`] permits.
    pub registering: Arc<Semaphore>,
}

impl Sim {
    /// Registers, then heartbeats, watches and reports until the run ends (the runtime stops).
    pub async fn run(self) {
        let joined = match &self.join_token {
            Some(token) => self.join(token).await,
            None => None,
        };
        let client = match joined {
            Some(tls) => Client::connect(&self.api, "", Some(self.address), Some(tls)),
            None => Client::connect(&self.api, &self.token, Some(self.address), self.tls),
        };
        let health = answer_health(self.address).await;
        let register = register_request(&self.name, health);
        let gate = Gate {
            client: client.clone(),
            register,
            registering: self.registering,
            counters: self.counters.clone(),
        };
        gate.register().await;
        self.counters.registered.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(heartbeat(gate));
        let (assigned_tx, assigned) = watch::channel(None);
        tokio::spawn(watch_assignments(
            client.clone(),
            self.name.clone(),
            assigned_tx,
            self.counters.clone(),
        ));
        let reporter = Reporter {
            client,
            name: self.name,
            counters: self.counters,
            seq: 0,
            held: BTreeMap::new(),
            pending: BTreeMap::new(),
            done: HashSet::new(),
            retry: Backoff::default(),
        };
        reporter.run(assigned, self.phase, self.told).await;
    }

    /// A TLS configuration with a node certificate got with the join token `token`, holding one
    /// of the registration permits; `None` (counted, and the agent calls with the operator's
    /// token instead) if the server refused or did not answer within `client::JOIN_PATIENCE`.
    async fn join(&self, token: &str) -> Option<rustls::ClientConfig> {
        let _permit = self.registering.acquire().await.ok();
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol {
            url: self.api.clone(),
            message: e.to_string(),
        };
        let joined = async {
            let token = pki::JoinToken::parse(token).map_err(|e| protocol(&e))?;
            let request = api::JoinRequest {
                role: "agent".into(),
                name: self.name.clone(),
                secret: String::new(),
                hosts: vec![self.address],
            };
            let joined =
                client::join_patiently(&self.api, &token, request, client::JOIN_PATIENCE).await?;
            let me = pki::Identity {
                cert_pem: joined.cert,
                key_pem: joined.key,
            };
            pki::tls::client_config(&joined.ca, Some(&me)).map_err(|e| protocol(&e))
        };
        match joined.await {
            Ok(tls) => {
                self.counters.joined.fetch_add(1, Ordering::Relaxed);
                Some(tls)
            }
            Err(e) => {
                self.counters
                    .failed(&self.counters.failed_joins, "join", &e);
                None
            }
        }
    }
}

/// Listens on `address` (a port of its own) and answers every request as the agent answers
/// `GET /v1/agent/health`: the leader asks a node it has not heard from, and peers probe it
/// on the leader's behalf, before calling it lost. Returns where it listens; where it cannot
/// listen, the agent port nothing answers on, so the node is judged by its heartbeats alone.
async fn answer_health(address: IpAddr) -> SocketAddr {
    let Ok(listener) = tokio::net::TcpListener::bind((address, 0)).await else {
        return SocketAddr::new(address, 7001);
    };
    let Ok(local) = listener.local_addr() else {
        return SocketAddr::new(address, 7001);
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_no_content(stream));
        }
    });
    local
}

/// Reads a request's head and answers `204 No Content`, closing the connection.
async fn answer_no_content(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
    let _ = stream.write_all(answer).await;
    let _ = stream.shutdown().await;
}

/// How a simulated node introduces itself, as `Agent::register_request` does.
fn register_request(name: &str, address: SocketAddr) -> RegisterRequest {
    let capacity = crate::specs::node_capacity();
    RegisterRequest {
        name: name.to_string(),
        // Only health is answered there: `outpost logs` of a simulated task gets no logs.
        address: format!("http://{address}"),
        allocatable: Capacity {
            cpu_millis: capacity.cpu_millis - RESERVED.cpu_millis,
            memory_bytes: capacity.memory_bytes - RESERVED.memory_bytes,
        },
        capacity,
        drivers: vec!["process".into()],
        notes: vec!["simulated by outpost-loadgen: runs nothing".into()],
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// How a simulated agent registers, first and whenever the server forgot it.
struct Gate {
    client: Client,
    register: RegisterRequest,
    registering: Arc<Semaphore>,
    counters: Arc<Counters>,
}

impl Gate {
    /// Registers, retrying until the server takes it, while holding one of the permits.
    async fn register(&self) {
        // A closed semaphore (never closed here) would only mean no bound.
        let _permit = self.registering.acquire().await.ok();
        let mut retry = Backoff::default();
        while let Err(e) = self.client.register(&self.register).await {
            self.counters
                .failed(&self.counters.failed_registers, "register", &e);
            retry.pause().await;
        }
    }
}

/// Beats every [`HEARTBEAT`]; a server that forgot the node is introduced to it again.
async fn heartbeat(gate: Gate) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = gate.client.heartbeat(&gate.register.name).await {
            gate.counters
                .failed(&gate.counters.failed_heartbeats, "heartbeat", &e);
            if e.status().map(|s| s.as_u16()) == Some(404) {
                gate.register().await;
            }
        }
    }
}

/// The blocking query on this node's assignments, as the agent holds it. A task is counted
/// placed the moment its node first hears of it.
async fn watch_assignments(
    client: Client,
    name: String,
    assigned: watch::Sender<Option<Assignments>>,
    counters: Arc<Counters>,
) {
    let mut index = 0;
    let mut seen: HashSet<String> = HashSet::new();
    let mut retry = Backoff::default();
    loop {
        match client.assignments(&name, index, WATCH_WAIT).await {
            Ok(a) => {
                retry.reset();
                index = a.index;
                let listed: HashSet<&str> = a.assignments.iter().map(|a| a.task.as_str()).collect();
                seen.retain(|id| listed.contains(id.as_str()));
                let new = a
                    .assignments
                    .iter()
                    .filter(|a| a.desired == DesiredState::Running)
                    .filter(|a| seen.insert(a.task.clone()))
                    .count();
                counters.add_placed(new as u64);
                if assigned.send(Some(a)).is_err() {
                    return;
                }
            }
            Err(e) => {
                counters.failed(&counters.failed_watches, "watch", &e);
                retry.pause().await;
            }
        }
    }
}

/// What one simulated agent tells the server about its tasks.
struct Reporter {
    client: Client,
    name: String,
    counters: Arc<Counters>,
    seq: u64,
    /// The last acknowledged status of each task this node holds.
    held: BTreeMap<String, TaskStatus>,
    /// Statuses not yet acknowledged, newest per task.
    pending: BTreeMap<String, TaskStatus>,
    /// Tasks finished here for good: a stale answer that still lists them starts nothing.
    done: HashSet<String>,
    retry: Backoff,
}

impl Reporter {
    async fn run(
        mut self,
        mut assigned: watch::Receiver<Option<Assignments>>,
        mut phase: watch::Receiver<Phase>,
        told: mpsc::UnboundedSender<Told>,
    ) {
        let mut settled = false;
        loop {
            if assigned.has_changed().unwrap_or(false) {
                self.take(&mut assigned);
            }
            if !self.pending.is_empty() {
                self.send().await;
                continue;
            }
            match *phase.borrow_and_update() {
                Phase::Steady => {
                    self.flip();
                    if !self.pending.is_empty() {
                        continue;
                    }
                }
                Phase::Settle if !settled => {
                    settled = true;
                    let _ = told.send(self.readiness());
                }
                _ => {}
            }
            tokio::select! {
                changed = assigned.changed() => match changed {
                    Ok(()) => self.take(&mut assigned),
                    Err(_) => return,
                },
                changed = phase.changed() => if changed.is_err() { return },
            }
        }
    }

    fn take(&mut self, assigned: &mut watch::Receiver<Option<Assignments>>) {
        let latest = assigned.borrow_and_update().clone();
        if let Some(a) = latest {
            self.assign(&a.assignments);
        }
    }

    /// Makes what this node says match the control plane's list: new tasks start, tasks it
    /// wants stopped exit, tasks it no longer lists are forgotten.
    fn assign(&mut self, assignments: &[Assignment]) {
        let listed: HashSet<&str> = assignments.iter().map(|a| a.task.as_str()).collect();
        self.held.retain(|id, _| listed.contains(id.as_str()));
        self.pending.retain(|id, _| listed.contains(id.as_str()));
        self.done.retain(|id| listed.contains(id.as_str()));
        for a in assignments {
            let known = self.held.contains_key(&a.task) || self.pending.contains_key(&a.task);
            match a.desired {
                DesiredState::Running if !known && !self.done.contains(&a.task) => {
                    let pid = self.counters.next_pid.fetch_add(1, Ordering::Relaxed);
                    self.pending.insert(a.task.clone(), starting(&a.task, pid));
                }
                DesiredState::Shutdown if !self.done.contains(&a.task) => {
                    self.done.insert(a.task.clone());
                    let last = self.pending.get(&a.task).or_else(|| self.held.get(&a.task));
                    let status = exited(&a.task, last);
                    self.pending.insert(a.task.clone(), status);
                }
                _ => {}
            }
        }
    }

    /// Flips the readiness of every running task.
    fn flip(&mut self) {
        for (id, status) in &self.held {
            if status.state == TaskState::Running {
                let flipped = TaskStatus {
                    ready: !status.ready,
                    ..status.clone()
                };
                self.pending.insert(id.clone(), flipped);
            }
        }
    }

    /// Sends what is pending as one report; on failure it stays pending, to go out again.
    async fn send(&mut self) {
        self.seq += 1;
        let report = StatusReport {
            seq: self.seq,
            tasks: self.pending.values().cloned().collect(),
            events: Vec::new(),
            memory_pressure: None,
        };
        let result = self.client.report(&self.name, &report).await;
        if let Err(e) = &result {
            self.counters
                .failed(&self.counters.failed_reports, "report", e);
        }
        self.sent(report.tasks, result.is_ok());
        if result.is_ok() {
            self.retry.reset();
        } else {
            self.retry.pause().await;
        }
    }

    /// After a report went out: what an acknowledged one says, the server now holds; a failed
    /// one stays pending, to go out again. Either way, a task reported starting passed its
    /// readiness probe meanwhile, as a real task whose probe passes at once would: it is next
    /// reported running and ready, in place of a `starting` not yet acknowledged.
    fn sent(&mut self, statuses: Vec<TaskStatus>, acknowledged: bool) {
        if acknowledged {
            self.pending.clear();
            self.counters.reports.fetch_add(1, Ordering::Relaxed);
            self.counters
                .changes
                .fetch_add(statuses.len() as u64, Ordering::Relaxed);
        }
        let mut now_running = 0;
        for status in statuses {
            let id = status.id.clone();
            if status.state == TaskState::Starting {
                self.pending.insert(id.clone(), running(&status));
            }
            if !acknowledged {
                continue;
            }
            match status.state {
                TaskState::Exited | TaskState::Failed | TaskState::Lost => {
                    self.held.remove(&id);
                }
                TaskState::Running => {
                    let was = self.held.insert(id, status);
                    if was.is_none_or(|s| s.state != TaskState::Running) {
                        now_running += 1;
                    }
                }
                TaskState::Starting | TaskState::Pending => {
                    self.held.insert(id, status);
                }
            }
        }
        self.counters.add_running(now_running);
    }

    /// The acknowledged readiness of each running task.
    fn readiness(&self) -> Told {
        self.held
            .iter()
            .filter(|(_, s)| s.state == TaskState::Running)
            .map(|(id, s)| (id.clone(), s.ready))
            .collect()
    }
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A task just started, as a supervisor first reports it.
fn starting(id: &str, pid: u32) -> TaskStatus {
    TaskStatus {
        seq: 0,
        id: id.to_string(),
        state: TaskState::Starting,
        evicted: false,
        ready: false,
        restarts: 0,
        pid: Some(pid),
        container_id: None,
        ports: BTreeMap::new(),
        started_at: Some(now()),
        exit_code: None,
        message: None,
        last_exit: None,
        next_start: None,
    }
}

/// The same run, up and passing readiness.
fn running(started: &TaskStatus) -> TaskStatus {
    TaskStatus {
        state: TaskState::Running,
        ready: true,
        ..started.clone()
    }
}

/// A task stopped on purpose: the end of its run, exit code 0.
fn exited(id: &str, last: Option<&TaskStatus>) -> TaskStatus {
    let mut status = last.cloned().unwrap_or_else(|| starting(id, 0));
    status.state = TaskState::Exited;
    status.ready = false;
    status.exit_code = Some(0);
    status.message = Some("stopped".into());
    status
}

/// Pauses between tries of a failed call, as the agent's: the k-th is drawn from `[d, 2d)` with
/// `d` doubling from half of [`RETRY_FIRST`] up to half of [`RETRY_CAP`], so thousands of
/// agents that fail together do not retry in step.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: RETRY_FIRST / 2,
        }
    }
}

impl Backoff {
    fn delay(&mut self) -> Duration {
        // The jitter varies with the clock's nanoseconds: spread enough for a bench, without a
        // random number generator.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let delay = self.next + self.next.mul_f64(f64::from(nanos % 1000) / 1000.0);
        self.next = (self.next * 2).min(RETRY_CAP / 2);
        delay
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.delay()).await;
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_simulated_agent_answers_health_where_it_registered() {
        let at = answer_health(IpAddr::from([127, 0, 0, 1])).await;
        let address = register_request("n1", at).address;
        assert_eq!(address, format!("http://{at}"));
        let http = reqwest::Client::new();
        assert!(client::agent::reachable(&http, &address, "t").await);
    }

    fn reporter() -> Reporter {
        Reporter {
            client: Client::new("http://127.0.0.1:9", "t"),
            name: "n1".into(),
            counters: Arc::new(Counters::new(2)),
            seq: 0,
            held: BTreeMap::new(),
            pending: BTreeMap::new(),
            done: HashSet::new(),
            retry: Backoff::default(),
        }
    }

    fn assignment(task: &str, desired: DesiredState) -> Assignment {
        Assignment {
            task: task.into(),
            service: "svc-0000".into(),
            slot: 1,
            version: 1,
            desired,
            spec: crate::specs::services(1, 1).unwrap().remove(0),
        }
    }

    /// Sends whatever is pending, answered as the server would: 204 or a failure.
    fn send(r: &mut Reporter, acknowledged: bool) -> Vec<(String, TaskState, bool)> {
        let sent: Vec<TaskStatus> = r.pending.values().cloned().collect();
        let seen = sent
            .iter()
            .map(|s| (s.id.clone(), s.state, s.ready))
            .collect();
        r.sent(sent, acknowledged);
        seen
    }

    fn ack(r: &mut Reporter) -> Vec<(String, TaskState, bool)> {
        send(r, true)
    }

    #[test]
    fn an_assigned_task_is_reported_starting_then_running_and_ready_then_flips() {
        let mut r = reporter();
        r.assign(&[assignment("a", DesiredState::Running)]);
        assert_eq!(ack(&mut r), [("a".into(), TaskState::Starting, false)]);
        assert_eq!(ack(&mut r), [("a".into(), TaskState::Running, true)]);
        assert_eq!(r.counters.running(), 1);
        assert!(
            r.pending.is_empty(),
            "nothing more to say until the steady phase"
        );
        r.flip();
        assert_eq!(ack(&mut r), [("a".into(), TaskState::Running, false)]);
        assert_eq!(r.readiness(), [("a".into(), false)]);
        assert_eq!(r.counters.changes.load(Ordering::Relaxed), 3);
        assert_eq!(r.counters.running(), 1, "a flip is not a new running task");
    }

    #[test]
    fn a_failed_report_goes_out_again_and_a_start_not_yet_acknowledged_becomes_running() {
        let mut r = reporter();
        r.assign(&[assignment("a", DesiredState::Running)]);
        assert_eq!(
            send(&mut r, false),
            [("a".into(), TaskState::Starting, false)]
        );
        assert_eq!(r.counters.changes.load(Ordering::Relaxed), 0);
        assert_eq!(
            send(&mut r, false),
            [("a".into(), TaskState::Running, true)]
        );
        assert_eq!(
            r.counters.running(),
            0,
            "nothing is counted before it is acknowledged"
        );
        assert_eq!(ack(&mut r), [("a".into(), TaskState::Running, true)]);
        assert_eq!(r.counters.running(), 1);
        assert_eq!(r.counters.reports.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_task_to_stop_is_reported_exited_once_and_never_started_again() {
        let mut r = reporter();
        r.assign(&[assignment("a", DesiredState::Running)]);
        ack(&mut r);
        ack(&mut r);
        let stop = [assignment("a", DesiredState::Shutdown)];
        r.assign(&stop);
        assert_eq!(ack(&mut r), [("a".into(), TaskState::Exited, false)]);
        r.assign(&stop);
        r.assign(&[assignment("a", DesiredState::Running)]);
        assert!(r.pending.is_empty(), "a stale listing starts nothing");
        assert!(r.readiness().is_empty());
    }

    #[test]
    fn the_instant_all_tasks_run_is_noted_once_the_total_is_reached() {
        let counters = Counters::new(2);
        counters.add_running(1);
        assert!(counters.all_running.get().is_none());
        counters.add_running(1);
        assert!(counters.all_running.get().is_some());
    }

    #[test]
    fn retry_pauses_grow_within_the_agents_bounds_and_start_again_after_success() {
        let mut b = Backoff::default();
        let first = b.delay();
        assert!(first >= RETRY_FIRST / 2 && first < RETRY_FIRST, "{first:?}");
        for _ in 0..10 {
            let d = b.delay();
            assert!(d < RETRY_CAP, "{d:?}");
        }
        assert!(
            b.delay() >= RETRY_CAP / 2,
            "the pauses reach the top of the range"
        );
        b.reset();
        assert!(b.delay() < RETRY_FIRST);
    }
}
