//! The supervisor's lifecycle on paused tokio time, against a fake driver whose runs end when
//! the test says: start, readiness and liveness through exec probes the fake answers, restart
//! backoff doubling and reset, stop (SIGTERM, grace, SIGKILL), adoption, and a task told to
//! stop from the start. Time only moves when every task waits, so the delays asserted are exact
//! and no test sleeps for real.

use std::collections::HashMap;
use std::sync::Mutex;

use api::{Assignment, DesiredState};
use spec::{PortSpec, ProbeAction};

use super::*;
use crate::driver::DriverError;

/// Far beyond any delay a test expects: reached only if the supervisor waits for ever.
const NEVER: Duration = Duration::from_secs(3600);

/// A driver whose runs are watch channels: a run ends when the test (or a signal the run does
/// not ignore) says so.
struct Fake {
    local: Arc<LocalState>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<u32, watch::Sender<Option<Exit>>>,
    /// When each start happened, with the task's record as saved at that moment.
    starts: Vec<(Instant, Option<LocalTask>)>,
    signals: Vec<(StopSignal, Instant)>,
    /// What exec probes answer.
    exec_ok: bool,
    /// How many of the next starts exit at once with status 1.
    crash_next: usize,
    /// Signals runs take without ending.
    ignored: Vec<StopSignal>,
    /// What `alive` says of an adopted handle.
    liveness: Option<Liveness>,
}

impl Fake {
    fn new(local: Arc<LocalState>) -> Fake {
        Fake {
            local,
            inner: Mutex::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap())
    }

    fn run(&self, pid: u32) -> watch::Sender<Option<Exit>> {
        self.with(|i| {
            i.runs
                .entry(pid)
                .or_insert_with(|| watch::channel(None).0)
                .clone()
        })
    }

    fn exit(&self, pid: u32, exit: Exit) {
        self.run(pid).send_replace(Some(exit));
    }

    fn starts(&self) -> Vec<Instant> {
        self.with(|i| i.starts.iter().map(|(t, _)| *t).collect())
    }

    fn signals(&self) -> Vec<(StopSignal, Instant)> {
        self.with(|i| i.signals.clone())
    }
}

fn handle(pid: u32) -> Handle {
    Handle {
        pid: Some(pid),
        start_ticks: Some(1),
        boot_id: None,
        container_id: None,
    }
}

impl Driver for Fake {
    fn name(&self) -> &'static str {
        "process"
    }

    fn outlives_agent(&self) -> bool {
        false
    }

    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Started, DriverError>> {
        Box::pin(async move {
            let record = self.local.all().unwrap().into_iter().next();
            let (pid, crash) = self.with(|i| {
                i.starts.push((Instant::now(), record));
                let crash = i.crash_next > 0;
                i.crash_next = i.crash_next.saturating_sub(1);
                (100 + i.starts.len() as u32, crash)
            });
            assert!(!launch.task_id.is_empty());
            if crash {
                self.exit(pid, Exit::Code(1));
            }
            Ok(Started {
                handle: handle(pid),
                warnings: Vec::new(),
            })
        })
    }

    fn adopt<'a>(&'a self, _handle: &'a Handle, _launch: &'a Launch) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Exit> {
        let mut rx = self.run(handle.pid.unwrap_or_default()).subscribe();
        Box::pin(async move {
            let exit = rx.wait_for(Option::is_some).await;
            exit.ok().and_then(|e| e.clone()).unwrap_or(Exit::Unknown)
        })
    }

    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let ignored = self.with(|i| {
                i.signals.push((signal, Instant::now()));
                i.ignored.contains(&signal)
            });
            if !ignored {
                let n = if signal == StopSignal::Kill { 9 } else { 15 };
                self.exit(handle.pid.unwrap_or_default(), Exit::Signal(n));
            }
            Ok(())
        })
    }

    fn alive<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Liveness> {
        let pid = handle.pid.unwrap_or_default();
        Box::pin(async move {
            self.with(|i| {
                let running = i.runs.get(&pid).is_some_and(|r| r.borrow().is_none());
                match &i.liveness {
                    Some(l) => l.clone(),
                    None if running => Liveness::Alive,
                    None => Liveness::Gone,
                }
            })
        })
    }

    fn cleanup<'a>(&'a self, _handle: &'a Handle) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn exec<'a>(
        &'a self,
        _handle: &'a Handle,
        _launch: &'a Launch,
        _argv: &'a [String],
        _timeout: Duration,
    ) -> BoxFuture<'a, Option<i32>> {
        Box::pin(async move { Some(if self.with(|i| i.exec_ok) { 0 } else { 1 }) })
    }

    fn memory_usage<'a>(&'a self, _h: &'a Handle, _task: &'a str) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async { None })
    }

    fn exec_streaming<'a>(
        &'a self,
        _h: &'a Handle,
        _launch: &'a Launch,
        _req: &'a api::ExecRequest,
        _input: crate::driver::ExecInputs,
        frames: mpsc::Sender<api::ExecFrame>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let end = api::ExecEnd {
                code: Some(0),
                error: None,
            };
            let _ = frames.send(api::ExecFrame::End(end)).await;
        })
    }
}

/// One supervised task over the fake driver, and what it reports.
struct Harness {
    fake: Arc<Fake>,
    updates: mpsc::UnboundedReceiver<Update>,
    control: watch::Sender<Control>,
    join: tokio::task::JoinHandle<String>,
    _dir: tempfile::TempDir,
}

/// How a harness is set up before the supervisor starts.
struct Setup {
    spec: ServiceSpec,
    handle: Option<Handle>,
    initial: Control,
    fake: Box<dyn FnOnce(&mut Inner)>,
}

fn setup(spec: ServiceSpec) -> Setup {
    Setup {
        spec,
        handle: None,
        initial: Control::Run,
        fake: Box::new(|_| {}),
    }
}

fn exec_probe() -> ProbeSpec {
    ProbeSpec::new(ProbeAction::Exec {
        command: vec!["check".into()],
    })
}

fn spec() -> ServiceSpec {
    let mut spec = ServiceSpec::process("web", &["app"]);
    spec.restart = RestartSpec {
        policy: RestartPolicy::Always,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        reset_after: Duration::from_secs(10),
    };
    spec.stop_grace = Duration::from_secs(2);
    spec
}

impl Setup {
    fn start(self) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalState::open(&dir.path().join("agent.redb")).unwrap());
        let fake = Arc::new(Fake::new(local.clone()));
        fake.with(self.fake);
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let shared = Supervision {
            node: "node".into(),
            drivers: BTreeMap::from([("process".to_string(), fake.clone() as Arc<dyn Driver>)]),
            logs: TaskLogs::new(dir.path().join("logs")),
            local: local.clone(),
            updates: updates_tx,
            default_workdir: None,
            ports: Arc::new(Ports::new(crate::ports::DEFAULT_RANGE)),
            files: None,
            mesh: crate::mesh::MeshView::default(),
            running: Default::default(),
        };
        let mut task = LocalTask::new(Assignment {
            task: "web.1.1".into(),
            service: "web".into(),
            slot: 1,
            version: 1,
            desired: DesiredState::Running,
            spec: self.spec,
        });
        task.handle = self.handle;
        local.put(&task).unwrap();
        let adopt = task.handle.is_some();
        let (control, join) = super::spawn(shared, task, adopt, self.initial);
        Harness {
            fake,
            updates,
            control,
            join,
            _dir: dir,
        }
    }
}

impl Harness {
    /// The next update whose status satisfies `want`, with the events of every update read.
    async fn status(&mut self, want: impl Fn(&TaskStatus) -> bool) -> (TaskStatus, Vec<String>) {
        let mut reasons = Vec::new();
        let found = tokio::time::timeout(NEVER, async {
            loop {
                let update = self.updates.recv().await.expect("the supervisor ended");
                reasons.extend(update.events.iter().map(|e| e.reason.clone()));
                if let Some(status) = update.status.filter(|s| want(s)) {
                    return status;
                }
            }
        })
        .await
        .expect("no such status");
        (found, reasons)
    }

    /// Reads updates until the `n`th start happened; gives the status that showed it.
    async fn until_starts(&mut self, n: usize) -> TaskStatus {
        let fake = self.fake.clone();
        self.status(|_| fake.starts().len() >= n).await.0
    }

    async fn stop(self) -> Harness {
        self.control.send_replace(Control::Stop);
        self
    }

    async fn ended(self) -> Vec<String> {
        let mut me = self;
        let id = tokio::time::timeout(NEVER, &mut me.join).await;
        assert_eq!(id.expect("the supervisor never ended").unwrap(), "web.1.1");
        let mut reasons = Vec::new();
        while let Ok(u) = me.updates.try_recv() {
            reasons.extend(u.events.into_iter().map(|e| e.reason));
        }
        reasons
    }
}

#[tokio::test(start_paused = true)]
async fn without_readiness_probe_a_started_task_is_ready_at_once() {
    let mut h = setup(spec()).start();
    let (status, reasons) = h.status(|s| s.state == TaskState::Running).await;
    assert!(status.ready);
    assert_eq!(status.pid, Some(101));
    assert_eq!(reasons, ["started"]);
}

#[tokio::test(start_paused = true)]
async fn the_record_is_saved_with_its_ports_before_the_process_starts() {
    let mut spec = spec();
    spec.ports = vec![PortSpec::named("http")];
    let mut h = setup(spec).start();
    h.until_starts(1).await;
    let saved = h.fake.with(|i| i.starts[0].1.clone()).unwrap();
    assert_eq!(
        saved.handle, None,
        "a handle from an earlier run would be trusted"
    );
    // Other agents on this machine may hold some of the range: any port of it will do.
    let port = saved.ports.get("http").copied().unwrap_or_default();
    assert!(crate::ports::DEFAULT_RANGE.contains(&port), "{saved:?}");
}

#[tokio::test(start_paused = true)]
async fn an_exec_readiness_probe_gates_ready() {
    let mut spec = spec();
    spec.readiness = Some(exec_probe());
    let mut h = setup(spec).start();
    let (status, _) = h.status(|s| s.state == TaskState::Starting).await;
    assert!(!status.ready);
    let failing_since = Instant::now();
    h.fake.with(|i| i.exec_ok = true);
    let (status, reasons) = h.status(|s| s.ready).await;
    assert_eq!(status.state, TaskState::Running);
    assert_eq!(reasons, ["ready"]);
    // Until first ready, the probe runs at the fast start-up pace, not its 1 s period.
    assert!(Instant::now() - failing_since <= STARTUP_PROBE_INTERVAL);
}

#[tokio::test(start_paused = true)]
async fn a_failing_exec_liveness_probe_restarts_the_task() {
    let mut spec = spec();
    let mut live = exec_probe();
    live.failure_threshold = 2;
    spec.liveness = Some(live);
    let t0 = Instant::now();
    let mut h = setup(spec).start();
    h.until_starts(2).await;
    let starts = h.fake.starts();
    let signals = h.fake.signals();
    // Failures at 0 s and 1 s (its period), SIGTERM then, restart 100 ms later.
    assert_eq!(signals, [(StopSignal::Term, t0 + Duration::from_secs(1))]);
    assert_eq!(starts[1] - signals[0].1, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_task_that_died_before_its_exit_was_collected_is_reported_exited_not_unhealthy() {
    let mut spec = spec();
    let mut live = exec_probe();
    live.failure_threshold = 1;
    spec.liveness = Some(live);
    let mut s = setup(spec);
    // Dead as far as /proc says, its exit status not yet collected.
    s.fake = Box::new(|i| i.liveness = Some(Liveness::Gone));
    let mut h = s.start();
    h.until_starts(1).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    h.fake.exit(101, Exit::Signal(9));
    let (status, reasons) = h.status(|s| s.state == TaskState::Failed).await;
    assert_eq!(status.exit_code, Some(137));
    assert!(reasons.contains(&"exited".to_string()), "{reasons:?}");
    assert!(!reasons.contains(&"unhealthy".to_string()), "{reasons:?}");
    assert!(h.fake.signals().is_empty(), "a dead task is not signalled");
}

#[tokio::test(start_paused = true)]
async fn restart_backoff_doubles_to_its_cap_and_resets_after_a_long_run() {
    let mut s = setup(spec());
    s.fake = Box::new(|i| i.crash_next = 5);
    let mut h = s.start();
    h.until_starts(6).await;
    let starts = h.fake.starts();
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400, 800, 1000]);
    // The sixth run stays up past `reset_after`: its crash is the first of a new streak.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let crashed = Instant::now();
    h.fake.exit(106, Exit::Code(1));
    let status = h.until_starts(7).await;
    assert_eq!(h.fake.starts()[6] - crashed, Duration::from_millis(100));
    assert_eq!((status.state, status.restarts), (TaskState::Running, 6));
}

#[tokio::test(start_paused = true)]
async fn stop_sends_sigterm_then_sigkill_after_the_grace() {
    let mut s = setup(spec());
    s.fake = Box::new(|i| i.ignored = vec![StopSignal::Term]);
    let mut h = s.start();
    h.status(|s| s.state == TaskState::Running).await;
    let t0 = Instant::now();
    let fake = h.fake.clone();
    let reasons = h.stop().await.ended().await;
    assert_eq!(reasons, ["killed", "stopped"]);
    assert_eq!(
        fake.signals(),
        [
            (StopSignal::Term, t0),
            (StopSignal::Kill, t0 + Duration::from_secs(2))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_that_survives_sigkill_is_never_restarted_beside_itself() {
    let mut spec = spec();
    spec.liveness = Some(exec_probe());
    let mut s = setup(spec);
    // As a process stuck in the kernel would: it takes every signal and keeps running.
    s.fake = Box::new(|i| i.ignored = vec![StopSignal::Term, StopSignal::Kill]);
    let mut h = s.start();
    h.until_starts(1).await;
    // Liveness fails at 0, 1 and 2 s; SIGTERM at 2 s, SIGKILL at 4 s, then every 5 s.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.fake.starts().len(), 1, "started beside a run still alive");
    let kills = h
        .fake
        .signals()
        .iter()
        .filter(|s| s.0 == StopSignal::Kill)
        .count();
    assert!(kills >= 10, "{kills} SIGKILLs");
    let (_, reasons) = h.status(|_| true).await;
    let mut all = reasons;
    while let Ok(u) = h.updates.try_recv() {
        all.extend(u.events.into_iter().map(|e| e.reason));
    }
    assert!(all.contains(&"not-stopped".to_string()), "{all:?}");
    h.fake.exit(101, Exit::Signal(9));
    h.until_starts(2).await;
}

#[tokio::test(start_paused = true)]
async fn a_readopted_task_without_readiness_probe_is_ready() {
    let mut s = setup(spec());
    s.handle = Some(handle(7));
    s.fake = Box::new(|i| i.liveness = Some(Liveness::Alive));
    let mut h = s.start();
    let (status, reasons) = h.status(|_| true).await;
    assert_eq!(reasons, ["adopted"]);
    assert_eq!((status.state, status.ready), (TaskState::Running, true));
    assert_eq!(status.pid, Some(7));
    assert!(h.fake.starts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_readopted_task_with_readiness_probe_is_probed_again() {
    let mut spec = spec();
    spec.readiness = Some(exec_probe());
    let mut s = setup(spec);
    s.handle = Some(handle(7));
    s.fake = Box::new(|i| i.liveness = Some(Liveness::Alive));
    let mut h = s.start();
    let (status, _) = h.status(|_| true).await;
    assert_eq!((status.state, status.ready), (TaskState::Starting, false));
    h.fake.with(|i| i.exec_ok = true);
    let (status, _) = h.status(|s| s.ready).await;
    assert_eq!(status.pid, Some(7));
    assert!(h.fake.starts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_task_of_unknown_liveness_is_readopted_not_started_again() {
    let mut s = setup(spec());
    s.handle = Some(handle(7));
    s.fake = Box::new(|i| i.liveness = Some(Liveness::Unknown("EMFILE".into())));
    let mut h = s.start();
    let (status, reasons) = h.status(|_| true).await;
    assert_eq!(reasons, ["adopted", "unknown"]);
    assert_eq!(status.pid, Some(7));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(h.fake.starts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_gone_task_is_started_afresh_instead_of_adopted() {
    let mut s = setup(spec());
    s.handle = Some(handle(7));
    let mut h = s.start();
    let (status, _) = h.status(|s| s.state == TaskState::Running).await;
    assert_eq!(status.pid, Some(101));
}

#[tokio::test(start_paused = true)]
async fn a_task_told_to_stop_from_the_start_never_starts() {
    let mut s = setup(spec());
    s.initial = Control::Stop;
    let h = s.start();
    let fake = h.fake.clone();
    let reasons = h.ended().await;
    assert_eq!(reasons, ["stopped"]);
    assert!(fake.starts().is_empty());
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let spec = RestartSpec {
        policy: RestartPolicy::Always,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        reset_after: Duration::from_secs(10),
    };
    let delays: Vec<u128> = (0..6).map(|n| backoff(&spec, n).as_millis()).collect();
    assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(backoff(&spec, 400), Duration::from_secs(1));
}

#[test]
fn expands_known_variables_only() {
    let vars = BTreeMap::from([("PORT".to_string(), "8080".to_string())]);
    assert_eq!(expand("--port=${PORT}", &vars), "--port=8080");
    assert_eq!(expand("${MISSING}:${PORT}", &vars), "${MISSING}:8080");
    assert_eq!(expand("${unterminated", &vars), "${unterminated");
    assert_eq!(expand("plain", &vars), "plain");
}
