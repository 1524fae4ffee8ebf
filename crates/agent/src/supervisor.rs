//! One supervisor per task: starts it through its driver, probes it, restarts it with backoff
//! under its restart policy, and stops it (SIGTERM, `stop_grace`, SIGKILL) when told to. Every
//! change of what it observes goes out as a [`Update`] to the reporter; it never talks to the
//! server itself, so it heals its task the same whether the server is reachable or not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::{Level, NewEvent, TaskState, TaskStatus, Timestamp};
use spec::{ProbeSpec, RestartPolicy, RestartSpec, ServiceSpec};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};

use crate::driver::{BoxFuture, Driver, Exit, Handle, Launch, Liveness, Started, StopSignal};
use crate::local::{LocalState, LocalTask};
use crate::logs::TaskLogs;
use crate::ports::{PortError, Ports};
use crate::probe::{self, Threshold, Verdict};

/// Until a task is first ready its readiness probe runs this often (or at its period, if
/// shorter), so a restarted task is back in rotation within tens of milliseconds instead of a
/// whole period later.
const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// How long to wait for a task to die after SIGKILL before warning that it has not, and how
/// often SIGKILL is sent again meanwhile (a signal may not have been sent while the task's
/// identity could not be read). It is never reported gone while any of it runs.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often a draining task's open connections are counted. It has drained once two counts
/// in a row find none: a node that picked it just before it heard of the drain has connected
/// by the second.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Something for the control plane: a change in one task's observed state, the events that
/// explain it, or a change of the node's memory pressure.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub status: Option<TaskStatus>,
    pub events: Vec<NewEvent>,
    pub memory_pressure: Option<bool>,
}

/// What every supervisor is given: the node's drivers, task logs, local state and ports, and
/// the channel to the reporter.
#[derive(Clone)]
pub struct Supervision {
    pub node: String,
    pub drivers: BTreeMap<String, Arc<dyn Driver>>,
    pub logs: TaskLogs,
    pub local: Arc<LocalState>,
    pub updates: mpsc::UnboundedSender<Update>,
    /// Working directory for processes whose spec names none.
    pub default_workdir: Option<PathBuf>,
    /// The agent's host ports, handed to tasks.
    pub ports: Arc<Ports>,
    /// Where tasks' secret and config files are (a tmpfs); `None` where there is no tmpfs.
    pub files: Option<crate::objects::Files>,
    /// The node's DNS server and the services' addresses, for tasks to find each other.
    pub mesh: crate::mesh::MeshView,
    /// The tasks that run now, for `exec`.
    pub running: Running,
}

/// Each running task's driver, handle and launch: what `exec` needs to run a command beside it.
#[derive(Clone, Default)]
pub struct Running(Arc<std::sync::Mutex<BTreeMap<String, RunningTask>>>);

#[derive(Clone)]
pub struct RunningTask {
    pub driver: Arc<dyn Driver>,
    pub handle: Handle,
    pub launch: Launch,
}

impl Running {
    pub fn get(&self, task: &str) -> Option<RunningTask> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(task)
            .cloned()
    }

    /// Every running task, by id.
    pub fn all(&self) -> Vec<(String, RunningTask)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(id, r)| (id.clone(), r.clone())).collect()
    }

    fn set(&self, task: &str, running: Option<RunningTask>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match running {
            Some(r) => map.insert(task.to_string(), r),
            None => map.remove(task),
        };
    }
}

/// The supervisor's view of its task, reported after every change.
struct Observed {
    state: TaskState,
    ready: bool,
    evicted: bool,
    exit_code: Option<i32>,
    message: Option<String>,
}

/// What follows a run of the task.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// Start again after the backoff; `up_since` is when the run began (`None`: it never started).
    Restart { up_since: Option<Instant> },
    /// Stay down until told to stop.
    Park,
}

enum Outcome {
    Exited(Exit),
    Unhealthy(String),
    Stop,
}

/// How one run of the task ended, for the supervisor's loop.
enum Step {
    /// Left running for the next agent.
    Detached,
    /// Stopped as told.
    Stopped,
    Then(Next),
}

pub struct Supervisor {
    shared: Supervision,
    task: LocalTask,
    driver: Arc<dyn Driver>,
    control: watch::Receiver<Control>,
    observed: Observed,
    /// Restarts since the task last stayed up for `reset_after`: the backoff exponent.
    streak: u32,
    /// How the last run ended, reported until the next one ends.
    last_exit: Option<api::LastExit>,
    /// When the task starts again, while it waits out its backoff.
    next_start: Option<Timestamp>,
}

/// What the agent wants of a supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Run,
    /// Stop the task for good.
    Stop,
    /// Stop the task to relieve memory pressure, saying why; the control plane replaces it.
    Evict(String),
    /// The agent is shutting down: stop the task unless its driver's tasks outlive the agent,
    /// in which case leave it running for the next agent to re-adopt.
    Detach,
    /// The agent is shutting down at once (a second Ctrl-C): like `Detach`, but a task being
    /// stopped is killed without waiting out its `stop_grace`.
    Force,
}

impl Control {
    /// The agent is shutting down, cleanly or at once.
    fn shutting_down(&self) -> bool {
        matches!(self, Control::Detach | Control::Force)
    }
}

/// Starts supervising `task`, told `initial` from the start (a task to be stopped is never
/// started); returns the sender that steers it. With `adopt`, a task whose process still runs is
/// re-attached instead of restarted.
pub fn spawn(
    shared: Supervision,
    task: LocalTask,
    adopt: bool,
    initial: Control,
) -> (watch::Sender<Control>, tokio::task::JoinHandle<String>) {
    let (control_tx, control) = watch::channel(initial);
    let driver_name = task.assignment.spec.driver.to_string();
    let id = task.assignment.task.clone();
    let Some(driver) = shared.drivers.get(&driver_name).cloned() else {
        let shared2 = shared.clone();
        let join = tokio::spawn(async move {
            let message = format!("this node has no {driver_name} driver");
            report_raw(
                &shared2,
                &id,
                TaskState::Failed,
                Some(message.clone()),
                Level::Error,
                "no-driver",
            );
            id
        });
        return (control_tx, join);
    };
    let sup = Supervisor {
        shared,
        task,
        driver,
        control,
        observed: Observed {
            state: TaskState::Pending,
            ready: false,
            exit_code: None,
            message: None,
            evicted: false,
        },
        streak: 0,
        last_exit: None,
        next_start: None,
    };
    let join = tokio::spawn(sup.run(adopt));
    (control_tx, join)
}

fn report_raw(
    shared: &Supervision,
    id: &str,
    state: TaskState,
    message: Option<String>,
    level: Level,
    reason: &str,
) {
    let status = TaskStatus {
        seq: 0,
        id: id.to_string(),
        state,
        evicted: false,
        ready: false,
        restarts: 0,
        pid: None,
        container_id: None,
        ports: BTreeMap::new(),
        started_at: None,
        exit_code: None,
        message: message.clone(),
        last_exit: None,
        next_start: None,
    };
    let event = NewEvent {
        time: now(),
        level,
        reason: reason.into(),
        service: None,
        task: Some(id.to_string()),
        node: Some(shared.node.clone()),
        message: message.unwrap_or_default(),
    };
    shared.mesh.note_local(id, false);
    let _ = shared.updates.send(Update {
        status: Some(status),
        events: vec![event],
        memory_pressure: None,
    });
}

/// A word or two for how a run ended, as `ps` shows it.
fn exit_summary(exit: &Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit {c}"),
        Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
            Ok(signal) => signal.as_str().to_string(),
            Err(_) => format!("signal {s}"),
        },
        Exit::OutOfMemory => "out of memory".into(),
        Exit::Unknown => "exited".into(),
    }
}

pub fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

impl Supervisor {
    fn spec(&self) -> &ServiceSpec {
        &self.task.assignment.spec
    }

    fn id(&self) -> &str {
        &self.task.assignment.task
    }

    fn stopping(&self) -> bool {
        *self.control.borrow() != Control::Run
    }

    /// Told to leave the task running for the next agent.
    fn detaching(&self) -> bool {
        self.control.borrow().shutting_down() && self.driver.outlives_agent()
    }

    /// Waits until told to stop or detach.
    async fn until_stopped(&self) {
        let mut control = self.control.clone();
        let _ = control.wait_for(|c| *c != Control::Run).await;
    }

    async fn run(mut self, adopt: bool) -> String {
        let mut handle = match adopt {
            true => self.readopt().await,
            false => None,
        };
        while !self.stopping() {
            let h = match handle.take() {
                Some(h) => h,
                None => match self.start().await {
                    Some(h) => h,
                    None => {
                        if !self.after_run(self.restart_unless_never(None)).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let running = RunningTask {
                driver: Arc::clone(&self.driver),
                handle: h.clone(),
                launch: self.launch(),
            };
            self.shared.running.set(self.id(), Some(running));
            let step = self.run_once(&h).await;
            self.shared.running.set(self.id(), None);
            match step {
                Step::Detached => return self.task.assignment.task,
                Step::Stopped => break,
                Step::Then(next) => {
                    if !self.after_run(next).await {
                        break;
                    }
                }
            }
        }
        self.finish();
        self.task.assignment.task
    }

    /// Re-attaches to the task recorded as running before an agent restart. A task whose
    /// liveness cannot be read is re-attached too: it must not be taken for dead (and started a
    /// second time) just because `/proc` was unreadable for a moment. Without a readiness probe it
    /// is ready at once; with one, it is probed again before it counts as ready.
    async fn readopt(&mut self) -> Option<Handle> {
        let h = self.task.handle.clone()?;
        let unknown = match self.driver.alive(&h).await {
            Liveness::Gone => return None,
            Liveness::Alive => None,
            Liveness::Unknown(why) => Some(why),
        };
        self.driver.adopt(&h, &self.launch()).await;
        let has_readiness = self.spec().readiness.is_some();
        self.observed.state = if has_readiness {
            TaskState::Starting
        } else {
            TaskState::Running
        };
        self.observed.ready = !has_readiness;
        let pid = h.pid.map_or(String::new(), |p| format!(" (pid {p})"));
        let mut events = vec![self.event(
            Level::Info,
            "adopted",
            format!("re-adopted running task{pid}"),
        )];
        if let Some(why) = unknown {
            events.push(self.event(
                Level::Warning,
                "unknown",
                format!("cannot tell whether the task still runs ({why}); kept as running"),
            ));
        }
        self.report(events);
        Some(h)
    }

    /// Watches one run of the task to its end and says what follows.
    async fn run_once(&mut self, h: &Handle) -> Step {
        let started = Instant::now();
        match self.watch(h).await {
            Outcome::Stop if self.detaching() => Step::Detached,
            Outcome::Stop => {
                self.drain(h).await;
                self.terminate(h).await;
                self.driver.cleanup(h).await;
                Step::Stopped
            }
            Outcome::Exited(exit) => {
                self.exited(&exit);
                let up_since = Some(started);
                match self.should_restart(&exit) {
                    true => Step::Then(Next::Restart { up_since }),
                    false => Step::Then(Next::Park),
                }
            }
            Outcome::Unhealthy(reason) => {
                self.unhealthy(h, reason).await;
                Step::Then(self.restart_unless_never(Some(started)))
            }
        }
    }

    fn restart_unless_never(&self, up_since: Option<Instant>) -> Next {
        match self.spec().restart.policy {
            RestartPolicy::Never => Next::Park,
            _ => Next::Restart { up_since },
        }
    }

    /// Kills a task that failed its liveness probe.
    async fn unhealthy(&mut self, h: &Handle, reason: String) {
        let e = self.event(
            Level::Warning,
            "unhealthy",
            format!("liveness probe failed: {reason}; restarting"),
        );
        self.observed.ready = false;
        self.report(vec![e]);
        self.terminate(h).await;
        self.observed.state = TaskState::Failed;
        let message = format!("killed after failing its liveness probe: {reason}");
        self.ended("unhealthy".into(), message.clone(), None);
        self.observed.message = Some(message);
    }

    /// Reports the supervisor's last word. A task gone for good (stopped or evicted) gives its
    /// ports back; one stopped because the agent is shutting down keeps them in its record, for
    /// the next agent to start it with.
    fn finish(&mut self) {
        if self.detaching() {
            return;
        }
        let control = self.control.borrow().clone();
        let for_good = !control.shutting_down();
        match control {
            Control::Evict(reason) => self.evicted(reason),
            _ => self.stopped(),
        }
        if for_good {
            self.shared.ports.release(self.task.ports.values().copied());
        }
    }

    /// Starts the task once. On failure reports why and returns `None`.
    ///
    /// Intent first: the task's record is saved with its ports and without a handle before
    /// anything runs, so an agent killed in the middle of a start finds processes no handle owns
    /// (by cgroup, or by the agent's mark) and sweeps them away instead of running them untracked.
    async fn start(&mut self) -> Option<Handle> {
        if let Err(e) = self.assign_ports() {
            self.start_failed(e.to_string());
            return None;
        }
        self.task.handle = None;
        self.persist();
        let launch = self.launch();
        if self.task.restarts > 0 || self.task.started_at.is_some() {
            self.shared.logs.note(
                self.id(),
                &format!("restart {} of task {}", self.task.restarts, self.id()),
            );
        }
        match self.driver.start(&launch).await {
            Ok(started) => Some(self.started(started)),
            Err(e) => {
                self.start_failed(e.to_string());
                None
            }
        }
    }

    /// Records and reports a task just started.
    fn started(&mut self, Started { handle, warnings }: Started) -> Handle {
        self.task.handle = Some(handle.clone());
        self.task.started_at = Some(now());
        self.persist();
        let has_readiness = self.spec().readiness.is_some();
        self.observed = Observed {
            state: if has_readiness {
                TaskState::Starting
            } else {
                TaskState::Running
            },
            ready: !has_readiness,
            exit_code: None,
            message: None,
            evicted: false,
        };
        let pid = handle.pid.map_or(String::new(), |p| format!(" as pid {p}"));
        let mut events = vec![self.event(Level::Info, "started", format!("started{pid}"))];
        events.extend(
            warnings
                .into_iter()
                .map(|w| self.event(Level::Warning, "warning", w)),
        );
        self.report(events);
        handle
    }

    fn start_failed(&mut self, message: String) {
        self.task.handle = None;
        self.ended("start failed".into(), message.clone(), None);
        self.observed = Observed {
            state: TaskState::Failed,
            ready: false,
            exit_code: None,
            message: Some(message.clone()),
            evicted: false,
        };
        self.report(vec![self.event(Level::Error, "start-failed", message)]);
    }

    /// Gives each of the spec's ports a host port, once: a restart keeps the task's ports.
    fn assign_ports(&mut self) -> Result<(), PortError> {
        for port in self.task.assignment.spec.ports.clone() {
            if self.task.ports.contains_key(&port.name) {
                continue;
            }
            let chosen = match port.host_port {
                Some(fixed) => {
                    self.shared.ports.hold([fixed]);
                    fixed
                }
                None => self.shared.ports.allocate()?,
            };
            self.task.ports.insert(port.name, chosen);
        }
        Ok(())
    }

    fn launch(&self) -> Launch {
        let spec = self.spec();
        let mut vars = self.shared.mesh.service_vars(spec.stack.as_deref());
        vars.extend(task_vars(spec, &self.task, &self.shared.node));
        if let Some(files) = &self.shared.files {
            file_vars(files, spec, self.id(), &mut vars);
        }
        let mut env: BTreeMap<String, String> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), expand(v, &vars)))
            .collect();
        env.extend(vars.clone());
        let expand_all = |args: &[String]| args.iter().map(|a| expand(a, &env)).collect();
        Launch {
            task_id: self.id().to_string(),
            service: self.task.assignment.service.clone(),
            version: self.task.assignment.version,
            spec: spec.clone(),
            entrypoint: expand_all(&spec.entrypoint),
            command: expand_all(&spec.command),
            ports: self.task.ports.clone(),
            env: env.clone(),
            workdir: spec
                .workdir
                .as_ref()
                .map(PathBuf::from)
                .or_else(|| self.shared.default_workdir.clone()),
            log_path: self.shared.logs.path(self.id()),
            dns: self.shared.mesh.dns().map(|server| crate::driver::TaskDns {
                server,
                search: crate::mesh::search_domains(spec.stack.as_deref()),
            }),
            pull_secret: (spec.pull_secret.as_ref())
                .and(self.shared.files.as_ref())
                .map(|files| files.pull_secret(self.id())),
        }
    }

    /// Waits for whatever ends this run of the task, probing it meanwhile.
    async fn watch(&mut self, h: &Handle) -> Outcome {
        let driver = self.driver.clone();
        let spec = self.spec().clone();
        let launch = Arc::new(self.launch());
        let mut exit = driver.wait(h);
        let probe = |spec, startup| {
            ProbeLoop::new(spec, startup, launch.clone(), driver.clone(), h.clone()).round()
        };
        let mut live = probe(spec.liveness, false);
        let mut ready = probe(spec.readiness, true);
        let mut control = self.control.clone();
        loop {
            tokio::select! {
                // An exit seen at the same time as a probe result is the truer story.
                biased;
                e = &mut exit => return Outcome::Exited(e),
                changed = control.changed() => {
                    if changed.is_err() || *control.borrow() != Control::Run {
                        return Outcome::Stop;
                    }
                }
                (probe, verdict, result) = &mut live => {
                    if let (Verdict::Unhealthy, Err(reason)) = (verdict, result) {
                        // The probe may fail because the task just died, before its exit was
                        // collected (a loaded machine): then it is reported as the exit it was.
                        if driver.alive(h).await == Liveness::Gone {
                            return Outcome::Exited((&mut exit).await);
                        }
                        return Outcome::Unhealthy(reason);
                    }
                    live = probe.round();
                }
                (probe, verdict, result) = &mut ready => {
                    self.readiness((verdict, result));
                    ready = probe.round();
                }
            }
        }
    }

    fn readiness(&mut self, (verdict, result): (Verdict, Result<(), String>)) {
        let ready = match verdict {
            Verdict::Healthy => true,
            Verdict::Unhealthy => false,
            Verdict::Undecided => return,
        };
        if ready == self.observed.ready && self.observed.state == TaskState::Running {
            return;
        }
        self.observed.ready = ready;
        self.observed.state = TaskState::Running;
        let event = if ready {
            self.event(Level::Info, "ready", "readiness probe passed".into())
        } else {
            let reason = result.err().unwrap_or_default();
            self.event(
                Level::Warning,
                "not-ready",
                format!("readiness probe failed: {reason}"),
            )
        };
        self.report(vec![event]);
    }

    fn exited(&mut self, exit: &Exit) {
        let ok = exit.success();
        self.observed = Observed {
            state: if ok {
                TaskState::Exited
            } else {
                TaskState::Failed
            },
            ready: false,
            exit_code: exit.code(),
            message: Some(exit.describe()),
            evicted: false,
        };
        self.ended(exit_summary(exit), exit.describe(), exit.code());
        let level = if ok { Level::Info } else { Level::Warning };
        self.report(vec![self.event(level, "exited", exit.describe())]);
    }

    fn should_restart(&self, exit: &Exit) -> bool {
        match self.spec().restart.policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        }
    }

    /// After a run ended: waits out the backoff and returns `true` to restart, or parks until
    /// told to stop. Returns `false` once stopped.
    async fn after_run(&mut self, next: Next) -> bool {
        let up_since = match next {
            Next::Park => {
                self.until_stopped().await;
                return false;
            }
            Next::Restart { up_since } => up_since,
        };
        if up_since.is_some_and(|t| t.elapsed() >= self.spec().restart.reset_after) {
            self.streak = 0;
        }
        let delay = backoff(&self.spec().restart, self.streak);
        self.streak += 1;
        self.task.restarts += 1;
        self.persist();
        let e = self.event(
            Level::Info,
            "restarting",
            format!(
                "restart {} in {}",
                self.task.restarts,
                humantime_short(delay)
            ),
        );
        self.next_start = Some(Timestamp::from_system_time(
            std::time::SystemTime::now() + delay,
        ));
        self.report(vec![e]);
        let again = tokio::select! {
            _ = sleep(delay) => true,
            _ = self.until_stopped() => false,
        };
        self.next_start = None;
        again
    }

    /// Keeps how a run ended, for the reports until the next one ends.
    fn ended(&mut self, summary: String, reason: String, code: Option<i32>) {
        self.last_exit = Some(api::LastExit {
            summary,
            reason,
            code,
            at: now(),
        });
    }

    /// Before a task that serves ports is stopped for good, lets its connections finish: no new
    /// one reaches it (this node's listeners leave it at once, every other node's once the
    /// control plane lists it as draining), and those it has get up to `stop_grace` to close.
    /// Proxies close their idle kept-alive connections within seconds; a task that keeps
    /// connections open (a direct client's) is signalled when the grace is up. Evictions and
    /// agent shutdowns do not wait.
    async fn drain(&mut self, h: &Handle) {
        let ports = self.driver.serving_ports(self.spec(), &self.task.ports);
        let (Some(pid), false) = (h.pid, ports.is_empty()) else {
            return;
        };
        if *self.control.borrow() != Control::Stop {
            return;
        }
        self.shared.mesh.note_local(self.id(), false);
        let grace = self.spec().stop_grace;
        let deadline = Instant::now() + grace;
        let mut control = self.control.clone();
        let (mut quiet, mut told) = (0, false);
        loop {
            let open = match crate::procfs::connections_to(pid, &ports) {
                Ok(open) => open,
                Err(e) => {
                    tracing::debug!(task = self.id(), "cannot count its connections: {e}");
                    return;
                }
            };
            if open == 0 && !self.shared.mesh.routed(self.id()) {
                quiet += 1;
                if quiet == 2 {
                    return;
                }
            } else {
                quiet = 0;
            }
            if open > 0 && !told {
                told = true;
                let message = format!(
                    "draining: {open} connection(s) open; stopping once they close, within {}",
                    humantime_short(grace)
                );
                let e = self.event(Level::Info, "draining", message);
                self.report(vec![e]);
            }
            if Instant::now() >= deadline {
                let message = format!(
                    "{open} connection(s) still open after {}; stopping anyway",
                    humantime_short(grace)
                );
                let e = self.event(Level::Warning, "drain-timeout", message);
                self.report(vec![e]);
                return;
            }
            tokio::select! {
                () = sleep(DRAIN_POLL) => {}
                _ = control.wait_for(|c| *c == Control::Force) => return,
            }
        }
    }

    /// SIGTERM, up to `stop_grace`, then SIGKILL; returns only once the driver says nothing of
    /// the task is left, so a next start never meets its leftovers.
    async fn terminate(&mut self, h: &Handle) {
        let grace = self.spec().stop_grace;
        self.signal(h, StopSignal::Term).await;
        let mut control = self.control.clone();
        tokio::select! {
            exited = tokio::time::timeout(grace, self.driver.wait(h)) => {
                if exited.is_ok() {
                    return;
                }
            }
            _ = control.wait_for(|c| *c == Control::Force) => {}
        }
        let e = self.event(
            Level::Warning,
            "killed",
            format!("did not stop within {}; killed", humantime_short(grace)),
        );
        self.report(vec![e]);
        self.signal(h, StopSignal::Kill).await;
        let mut warned = false;
        while tokio::time::timeout(KILL_WAIT, self.driver.wait(h))
            .await
            .is_err()
        {
            if !warned {
                warned = true;
                let e = self.event(
                    Level::Warning,
                    "not-stopped",
                    format!(
                        "still running {} after SIGKILL; waiting for it to end",
                        humantime_short(KILL_WAIT)
                    ),
                );
                self.report(vec![e]);
            }
            self.signal(h, StopSignal::Kill).await;
        }
    }

    async fn signal(&self, h: &Handle, signal: StopSignal) {
        if let Err(e) = self.driver.signal(h, signal).await {
            tracing::warn!(task = self.id(), "{e}");
        }
    }

    fn evicted(&mut self, reason: String) {
        let message = format!("evicted: {reason}");
        self.observed = Observed {
            state: TaskState::Failed,
            ready: false,
            evicted: true,
            exit_code: self.observed.exit_code,
            message: Some(message.clone()),
        };
        self.task.handle = None;
        // The agent recorded the eviction event when it chose this task.
        self.report(Vec::new());
    }

    fn stopped(&mut self) {
        self.observed = Observed {
            state: TaskState::Exited,
            ready: false,
            exit_code: self.observed.exit_code,
            message: Some("stopped".into()),
            evicted: false,
        };
        self.task.handle = None;
        let e = self.event(Level::Info, "stopped", "stopped".into());
        self.report(vec![e]);
    }

    fn persist(&self) {
        if let Err(e) = self.shared.local.put(&self.task) {
            tracing::error!(task = self.id(), "cannot save task state: {e}");
        }
    }

    fn event(&self, level: Level, reason: &str, message: String) -> NewEvent {
        NewEvent {
            time: now(),
            level,
            reason: reason.into(),
            service: Some(self.task.assignment.service.clone()),
            task: Some(self.id().to_string()),
            node: Some(self.shared.node.clone()),
            message,
        }
    }

    fn report(&self, events: Vec<NewEvent>) {
        let h = self.task.handle.as_ref();
        let live = matches!(
            self.observed.state,
            TaskState::Starting | TaskState::Running
        );
        let status = TaskStatus {
            seq: 0,
            id: self.id().to_string(),
            state: self.observed.state,
            evicted: self.observed.evicted,
            ready: self.observed.ready,
            restarts: self.task.restarts,
            // A task that ended has no pid: the number may already be another process's.
            pid: h.and_then(|h| h.pid).filter(|_| live),
            container_id: h.and_then(|h| h.container_id.clone()),
            ports: self.task.ports.clone(),
            started_at: self.task.started_at,
            exit_code: self.observed.exit_code,
            message: self.observed.message.clone(),
            last_exit: self.last_exit.clone(),
            next_start: self.next_start,
        };
        for e in &events {
            tracing::info!(task = self.id(), reason = e.reason, "{}", e.message);
        }
        // A task being stopped takes no new connection here, though it still runs (drains).
        let serving = status.state == TaskState::Running && status.ready && !self.stopping();
        self.shared.mesh.note_local(self.id(), serving);
        let _ = self.shared.updates.send(Update {
            status: Some(status),
            events,
            memory_pressure: None,
        });
    }
}

/// Delay before restart number `streak + 1`: `initial_backoff × 2^streak`, at most `max_backoff`.
pub fn backoff(spec: &RestartSpec, streak: u32) -> Duration {
    let factor = 2u32.saturating_pow(streak.min(31));
    spec.initial_backoff
        .saturating_mul(factor)
        .min(spec.max_backoff)
}

fn humantime_short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// One probe's schedule and consecutive results. It owns what it needs, so its attempt can stay
/// in flight across iterations of the supervisor's `select!` (a cancelled attempt would restart
/// and might never finish).
struct ProbeLoop {
    spec: Option<ProbeSpec>,
    /// The run's launch: its ports, and the environment exec probes get.
    launch: Arc<Launch>,
    driver: Arc<dyn Driver>,
    handle: Handle,
    next: Instant,
    threshold: Threshold,
    /// Readiness probes run fast until the first success.
    startup: bool,
    decided: bool,
}

type ProbeRound = (ProbeLoop, Verdict, Result<(), String>);

impl ProbeLoop {
    fn new(
        spec: Option<ProbeSpec>,
        startup: bool,
        launch: Arc<Launch>,
        driver: Arc<dyn Driver>,
        handle: Handle,
    ) -> ProbeLoop {
        let delay = spec.as_ref().map_or(Duration::ZERO, |s| s.initial_delay);
        ProbeLoop {
            spec,
            launch,
            driver,
            handle,
            next: Instant::now() + delay,
            threshold: Threshold::default(),
            startup,
            decided: false,
        }
    }

    /// Waits for the next attempt, runs it, and gives itself back with the verdict so far.
    /// Never resolves when there is no probe.
    fn round(mut self) -> BoxFuture<'static, ProbeRound> {
        Box::pin(async move {
            let Some(spec) = self.spec.clone() else {
                return std::future::pending().await;
            };
            sleep_until(self.next).await;
            let result =
                probe::check(&spec, self.driver.as_ref(), &self.handle, &self.launch).await;
            let verdict = self.threshold.record(result.is_ok(), &spec);
            if verdict == Verdict::Healthy {
                self.decided = true;
            }
            let fast = self.startup && !self.decided;
            let interval = if fast {
                spec.period.min(STARTUP_PROBE_INTERVAL)
            } else {
                spec.period
            };
            self.next = Instant::now() + interval;
            // While starting up, a failure only means "not yet": it must not mark unready a task
            // that never was ready.
            let verdict = if fast && verdict == Verdict::Unhealthy {
                Verdict::Undecided
            } else {
                verdict
            };
            (self, verdict, result)
        })
    }
}

/// Variables every task gets: its identity and its ports.
fn task_vars(spec: &ServiceSpec, task: &LocalTask, node: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::from([
        ("OUTPOST_TASK_ID".to_string(), task.assignment.task.clone()),
        (
            "OUTPOST_SERVICE".to_string(),
            task.assignment.service.clone(),
        ),
        ("OUTPOST_SLOT".to_string(), task.assignment.slot.to_string()),
        ("OUTPOST_NODE".to_string(), node.to_string()),
    ]);
    for (i, port) in spec.ports.iter().enumerate() {
        let Some(p) = task.ports.get(&port.name) else {
            continue;
        };
        if i == 0 {
            vars.insert("PORT".into(), p.to_string());
        }
        vars.insert(
            format!(
                "OUTPOST_PORT_{}",
                port.name.to_uppercase().replace('-', "_")
            ),
            p.to_string(),
        );
    }
    vars
}

/// `OUTPOST_SECRETS_DIR` and `OUTPOST_CONFIGS_DIR`, for a spec that uses secrets or configs.
fn file_vars(
    files: &crate::objects::Files,
    spec: &ServiceSpec,
    task: &str,
    vars: &mut BTreeMap<String, String>,
) {
    use crate::objects::{CONFIGS_VAR, SECRETS_VAR};
    for (kind, var) in [
        (api::ObjectKind::Secret, SECRETS_VAR),
        (api::ObjectKind::Config, CONFIGS_VAR),
    ] {
        if !spec.file_refs(kind).is_empty() {
            let dir = files.dir(task, kind).display().to_string();
            vars.insert(var.to_string(), dir);
        }
    }
}

/// Replaces `${NAME}` with its value; unknown names are left as written.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
