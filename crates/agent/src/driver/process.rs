//! The process driver: a task is a local process in its own process group and, where cgroups are
//! usable, its own cgroup, which it joins before it execs (so nothing it forks escapes). Its
//! output is appended to the task's log file (mode 0600: spec `env` values may hold secrets).
//!
//! A run is over only when nothing of it is left: when the main process exits, whatever it
//! forked is killed, and [`Driver::wait`] resolves only once the cgroup and the process group are
//! empty, so the next run never meets a leftover holding its port.
//!
//! A clean agent stop stops every task; only an agent crash leaves tasks running, and the
//! restarted agent re-adopts them by pid, start time and boot id, after [`ProcessDriver::sweep`]
//! killed every process of this agent that no task record owns. A process whose `/proc` entry
//! cannot be read is "unknown", never "dead": it is neither restarted nor reported gone.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::{BoxFuture, Driver, DriverError, Exit, Handle, Launch, Liveness, Started, StopSignal};
use crate::cgroup::{Cgroups, Limits};
use crate::procfs;

/// How often an adopted process (not our child, so no exit notification) is checked for life.
/// 100 ms keeps crash detection of adopted tasks well inside the recovery target.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// How often what is left of a finished run is killed again until none is left.
const CLEAR_POLL: Duration = Duration::from_millis(20);

/// How long a process's identity may stay unreadable (a `/proc` read failing, as under fd
/// exhaustion) before signalling or starting gives up with an error. 5 s outlasts a burst of
/// exhaustion without holding a stop up for long.
const IDENTITY_PATIENCE: Duration = Duration::from_secs(5);
const IDENTITY_RETRY: Duration = Duration::from_millis(50);

/// Variables a process inherits from the agent; everything else comes from the spec, so a task
/// behaves the same whoever started the agent, and never sees the agent's secrets.
const INHERITED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER"];

/// Marks every process the agent starts with the agent's id, so that a restarted agent finds
/// its orphans in `/proc` even without cgroups.
pub const AGENT_ID_VAR: &str = "OUTPOST_AGENT_ID";
/// The task a marked process belongs to (set by the supervisor for every task).
pub const TASK_ID_VAR: &str = "OUTPOST_TASK_ID";

pub struct ProcessDriver {
    /// What we know of each task process by pid: its task, and for our own children the exit
    /// status their reaper publishes once nothing of the run is left.
    runs: Arc<Mutex<HashMap<u32, Run>>>,
    /// Where tasks' resource limits are enforced; `None` falls back to an address-space rlimit.
    cgroups: Option<Cgroups>,
    agent_id: String,
    /// This boot's id, read once: a `/proc` read may fail later, the boot cannot change.
    boot_id: Option<String>,
}

#[derive(Clone)]
struct Run {
    task: String,
    exit: Option<watch::Receiver<Option<Exit>>>,
}

/// With no cgroup to enforce a memory limit, the task runs under `prlimit --as`, which caps
/// its address space: cruder (it counts mappings, not resident memory) but still a bound.
pub fn rlimit_argv(argv: Vec<String>, limits: &Limits) -> Vec<String> {
    match limits.memory_max {
        Some(bytes) => {
            let mut wrapped = vec![
                "prlimit".to_string(),
                format!("--as={bytes}"),
                "--".to_string(),
            ];
            wrapped.extend(argv);
            wrapped
        }
        None => argv,
    }
}

/// Liveness of the process `handle` names, given what reading its `/proc/PID/stat` gave and this
/// boot's id. A handle without a start time never names a live task (any process may have taken
/// its pid), nor does one from another boot; only a missing process is gone, an unreadable one
/// is unknown.
pub fn liveness(handle: &Handle, read: io::Result<procfs::Stat>, boot: Option<&str>) -> Liveness {
    let (Some(pid), Some(ticks)) = (handle.pid, handle.start_ticks) else {
        return Liveness::Gone;
    };
    if let (Some(then), Some(now)) = (handle.boot_id.as_deref(), boot)
        && then != now
    {
        return Liveness::Gone;
    }
    match read {
        Ok(stat) if stat.is_dead() || stat.start_ticks != ticks => Liveness::Gone,
        Ok(_) => Liveness::Alive,
        Err(e) if procfs::is_gone(&e) => Liveness::Gone,
        Err(e) => Liveness::Unknown(format!("cannot read /proc/{pid}/stat: {e}")),
    }
}

impl ProcessDriver {
    pub fn new(cgroups: Option<Cgroups>, agent_id: &str) -> ProcessDriver {
        ProcessDriver {
            runs: Arc::default(),
            cgroups,
            agent_id: agent_id.to_string(),
            boot_id: procfs::boot_id(),
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn liveness_of(&self, handle: &Handle) -> Liveness {
        let Some(pid) = handle.pid else {
            return Liveness::Gone;
        };
        liveness(handle, procfs::stat(pid), self.boot_id.as_deref())
    }

    /// Whether `handle` still names the task, asking again while that cannot be told, for up to
    /// [`IDENTITY_PATIENCE`].
    async fn confirm(&self, handle: &Handle) -> Result<bool, String> {
        let deadline = Instant::now() + IDENTITY_PATIENCE;
        loop {
            match self.liveness_of(handle) {
                Liveness::Alive => return Ok(true),
                Liveness::Gone => return Ok(false),
                Liveness::Unknown(why) if Instant::now() >= deadline => return Err(why),
                Liveness::Unknown(_) => sleep(IDENTITY_RETRY).await,
            }
        }
    }

    /// The environment of the task's processes, exec probes included: a few of the agent's
    /// variables, the agent's mark, then the task's own.
    /// `argv` as the task would run it, beside it: its environment and workdir, in its cgroup
    /// (so it counts against the task's limits; where the cgroup cannot be opened it still
    /// runs), resolving names as the task does; killed when dropped.
    /// With `ctty`, a pty's slave end, the command leads a session of its own whose controlling
    /// terminal that is.
    fn beside(
        &self,
        argv: &[String],
        launch: &Launch,
        ctty: Option<OwnedFd>,
    ) -> tokio::process::Command {
        let mut cmd = self.command(argv, launch);
        cmd.kill_on_drop(true);
        let procs = (self.cgroups.as_ref())
            .and_then(|cg| cg.open_procs(&launch.task_id).ok())
            .unwrap_or_default();
        // The task's start wrote its resolv.conf (the log dir outlives an agent restart);
        // this only reads it.
        let path = resolv_conf_path(launch);
        let resolv_conf = (launch.dns.is_some() && path.exists())
            .then(|| CString::new(path.into_os_string().into_vec()).ok())
            .flatten();
        before_exec(&mut cmd, procs, resolv_conf, ctty);
        cmd
    }

    fn command(&self, argv: &[String], launch: &Launch) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(argv.first().map_or("", String::as_str));
        cmd.args(argv.iter().skip(1))
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .env(AGENT_ID_VAR, &self.agent_id)
            .envs(&launch.env)
            .stdin(Stdio::null());
        if let Some(dir) = &launch.workdir {
            cmd.current_dir(dir);
        }
        cmd
    }

    async fn spawn(&self, launch: &Launch) -> Result<Started, DriverError> {
        let limits = Limits::from_resources(&launch.spec.resources);
        let argv = match &self.cgroups {
            Some(_) => launch.argv(),
            None => rlimit_argv(launch.argv(), &limits),
        };
        let program = argv.first().cloned().unwrap_or_default();
        let fail = |reason: String| DriverError::Start {
            program: program.clone(),
            reason,
        };
        let mut warnings = Vec::new();
        let procs = self
            .prepare_cgroup(&launch.task_id, &limits, &mut warnings)
            .await
            .map_err(fail)?;
        let (log, log_err) = open_log(&launch.log_path).map_err(fail)?;
        let mut cmd = self.command(&argv, launch);
        cmd.stdout(log)
            .stderr(log_err)
            // Its own group: a stop reaches every process the task forked, and a Ctrl-C aimed at
            // the agent's terminal does not reach the task.
            .process_group(0)
            .kill_on_drop(false);
        let resolv_conf = match &launch.dns {
            Some(dns) => Some(write_resolv_conf(launch, dns).map_err(fail)?),
            None => None,
        };
        before_exec(&mut cmd, procs, resolv_conf, None);
        let child = cmd.spawn().map_err(|e| fail(start_error(&e)))?;
        let handle = self.identify(&child).await.map_err(fail)?;
        self.reap(child, &launch.task_id, &handle);
        Ok(Started { handle, warnings })
    }

    /// Makes the task's cgroup ready for a new run and opens its `cgroup.procs` files. Anything
    /// left in it from an earlier run is killed first: a run never shares its cgroup. Without a
    /// usable cgroup the task runs unlimited, with a warning.
    async fn prepare_cgroup(
        &self,
        task: &str,
        limits: &Limits,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<File>, String> {
        let Some(cg) = &self.cgroups else {
            return Ok(Vec::new());
        };
        clear_cgroup(cg, task, IDENTITY_PATIENCE).await?;
        // A cgroup left by an earlier run would carry its OOM count over.
        let _ = cg.remove(task);
        let opened = cg.create(task, limits).and_then(|w| {
            warnings.extend(w);
            cg.open_procs(task)
        });
        Ok(opened.unwrap_or_else(|e| {
            warnings.push(format!("resource limits not enforced: {e}"));
            Vec::new()
        }))
    }

    /// The handle of a child just spawned. It is not reaped yet, so its pid is still its own and
    /// its `/proc` entry exists (as a zombie if it already exited): the start time is always
    /// there to read, unless `/proc` stays unreadable, in which case the child is killed.
    async fn identify(&self, child: &tokio::process::Child) -> Result<Handle, String> {
        let pid = child
            .id()
            .ok_or("exited before it could be watched".to_string())?;
        let deadline = Instant::now() + IDENTITY_PATIENCE;
        let stat = loop {
            match procfs::stat(pid) {
                Ok(stat) => break stat,
                Err(e) if Instant::now() >= deadline => {
                    // Still our unreaped child: the pid and its group cannot be anyone else's.
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    return Err(format!("cannot read /proc/{pid}/stat to identify it: {e}"));
                }
                Err(_) => sleep(IDENTITY_RETRY).await,
            }
        };
        Ok(Handle {
            pid: Some(pid),
            start_ticks: Some(stat.start_ticks),
            boot_id: self.boot_id.clone(),
            container_id: None,
        })
    }

    /// Waits for the child in the background; once it exited and nothing of its run is left,
    /// publishes how it ended and releases its cgroup.
    fn reap(&self, mut child: tokio::process::Child, task: &str, handle: &Handle) {
        let Some(pid) = handle.pid else { return };
        let (tx, rx) = watch::channel(None);
        let run = Run {
            task: task.to_string(),
            exit: Some(rx),
        };
        self.runs().insert(pid, run);
        let cgroups = self.cgroups.clone();
        let task = task.to_string();
        tokio::spawn(async move {
            let mut exit = match child.wait().await {
                Ok(status) => exit_of(status),
                Err(_) => Exit::Unknown,
            };
            clear(cgroups.as_ref(), &task, pid).await;
            if let Some(cg) = &cgroups {
                if cg.oom_kills(&task).unwrap_or(0) > 0 {
                    exit = Exit::OutOfMemory;
                }
                let _ = cg.remove(&task);
            }
            let _ = tx.send(Some(exit));
        });
    }

    /// Waits for an adopted process (not our child) to be gone, then for its leftovers to be.
    /// While its liveness is unknown it is still running, as far as anyone may act on.
    async fn wait_adopted(&self, handle: &Handle, pid: u32) -> Exit {
        while self.liveness_of(handle) != Liveness::Gone {
            sleep(ADOPTED_POLL).await;
        }
        let task = self.runs().get(&pid).map(|r| r.task.clone());
        clear(self.cgroups.as_ref(), task.as_deref().unwrap_or(""), pid).await;
        Exit::Unknown
    }

    /// Signals the task's whole process group, once its identity is confirmed: a pid whose
    /// `/proc` entry cannot be read might be anyone's, so it is asked again until known.
    async fn signal_group(&self, handle: &Handle, signal: StopSignal) -> Result<(), DriverError> {
        let Some(pid) = handle.pid else { return Ok(()) };
        match self.confirm(handle).await {
            // Gone: its reaper (or `wait`) kills what it left behind.
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(why) => {
                return Err(DriverError::Other(format!(
                    "process group {pid} not signalled: cannot tell whether it is still the \
                     task ({why}); will retry"
                )));
            }
        }
        let sig = match signal {
            StopSignal::Term => Signal::SIGTERM,
            StopSignal::Kill => Signal::SIGKILL,
        };
        match killpg(Pid::from_raw(pid as i32), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(DriverError::Other(format!(
                "cannot signal process group {pid}: {e}"
            ))),
        }
    }

    /// The task's memory: its cgroup's count, or else the resident memory of its process group.
    fn memory(&self, handle: &Handle, task: &str) -> Option<u64> {
        if let Some(usage) = self.cgroups.as_ref().and_then(|cg| cg.memory_usage(task)) {
            return Some(usage);
        }
        let pid = handle.pid?;
        if self.liveness_of(handle) != Liveness::Alive {
            return None;
        }
        let members = procfs::group_members(pid).ok()?;
        Some(
            members
                .into_iter()
                .filter_map(procfs::resident_memory)
                .sum(),
        )
    }
}

/// Kills what is left of a run whose main process `pgid` is gone, and waits until nothing is: no
/// process in the task's cgroup, none alive in its process group. The group id cannot be reused
/// while any member lives, so signalling it reaches only the task's processes. Never gives up:
/// a run is not over while any of it lives.
async fn clear(cgroups: Option<&Cgroups>, task: &str, pgid: u32) {
    let mut warned = false;
    loop {
        let left = kill_leftovers(cgroups, task, pgid);
        match left {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(task, "cannot tell whether the task left processes: {e}");
            }
            Err(_) => {}
        }
        sleep(CLEAR_POLL).await;
    }
}

/// One round of [`clear`]: SIGKILLs the cgroup's and the group's processes, returns how many
/// there were.
fn kill_leftovers(cgroups: Option<&Cgroups>, task: &str, pgid: u32) -> io::Result<usize> {
    let mut found = 0;
    if let Some(cg) = cgroups
        && !task.is_empty()
    {
        found += cg.kill_all(task)?;
    }
    let members = procfs::group_members(pgid)?;
    if !members.is_empty() {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    }
    Ok(found + members.len())
}

/// Kills everything in the task's cgroup until it is empty, for up to `patience`.
async fn clear_cgroup(cg: &Cgroups, task: &str, patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    loop {
        match cg.kill_all(task) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(_) if Instant::now() >= deadline => {
                let pids = cg.pids(task).unwrap_or_default();
                return Err(format!(
                    "cgroup of task {task} still holds processes {pids:?} after SIGKILL; \
                     not starting beside them"
                ));
            }
            _ => sleep(CLEAR_POLL).await,
        }
    }
}

/// Opens the task's log for appending, readable by the agent's user only.
fn open_log(path: &std::path::Path) -> Result<(File, File), String> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    Ok((log, log_err))
}

/// The resolver a task's processes see as /etc/resolv.conf: the node's DNS server and the
/// task's search domains, written beside its log.
fn write_resolv_conf(launch: &Launch, dns: &crate::driver::TaskDns) -> Result<CString, String> {
    let path = resolv_conf_path(launch);
    let text = format!(
        "# Written by the outpost agent for task {}: the node's DNS server.\n\
         nameserver {}\nsearch {}\n",
        launch.task_id,
        dns.server,
        dns.search.join(" ")
    );
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    CString::new(path.into_os_string().into_vec()).map_err(|e| e.to_string())
}

fn resolv_conf_path(launch: &Launch) -> std::path::PathBuf {
    launch.log_path.with_extension("resolv.conf")
}

/// What the child does between fork and exec:
/// - joins the task's cgroup, by writing `0` ("myself") to each `cgroup.procs` file opened
///   beforehand: the task is in its cgroup before its first instruction, so nothing it forks
///   escapes the limits;
/// - with `resolv_conf`, enters a mount namespace of its own (mounts of the host still reach
///   it) where that file is /etc/resolv.conf, so names resolve through the node's DNS server.
///
/// - with `ctty` (a pty's slave end, for `exec -t`), starts a session of its own (setsid) and
///   makes that terminal its controlling one (TIOCSCTTY), so the shell gets job control and
///   Ctrl-C reaches what runs in the foreground.
///
/// A failed step fails the spawn.
///
/// The workspace denies `unsafe_code`; this is its one use: `pre_exec` is unsafe because the
/// hook runs in the forked child, where only async-signal-safe calls are sound.
#[allow(unsafe_code)]
fn before_exec(
    cmd: &mut tokio::process::Command,
    procs: Vec<File>,
    resolv_conf: Option<CString>,
    ctty: Option<OwnedFd>,
) {
    use nix::mount::{MsFlags, mount};
    if procs.is_empty() && resolv_conf.is_none() && ctty.is_none() {
        return;
    }
    // SAFETY: the hook only calls write(2), unshare(2), mount(2), setsid(2) and ioctl(2),
    // which are async-signal-safe, on file descriptors opened and C strings made before the
    // fork; it allocates nothing, takes no lock, and builds its errors from the raw errno
    // without allocating.
    unsafe {
        cmd.pre_exec(move || {
            for file in &procs {
                nix::unistd::write(file, b"0").map_err(io::Error::from)?;
            }
            if let Some(source) = &resolv_conf {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
                let none: Option<&CStr> = None;
                let root = c"/";
                mount(none, root, none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)?;
                let target = c"/etc/resolv.conf";
                mount(
                    Some(source.as_c_str()),
                    target,
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?;
            }
            if let Some(tty) = &ctty {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(tty)?;
            }
            Ok(())
        });
    }
}

fn start_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "no such file or directory (check the command path and the workdir)".into()
        }
        io::ErrorKind::PermissionDenied => "permission denied (is the file executable?)".into(),
        _ => e.to_string(),
    }
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        _ => Exit::Unknown,
    }
}

/// An exit status as a code: 128 + the signal for a signal.
fn code_of(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

fn cannot_start(argv: &[String], e: &io::Error) -> String {
    format!("cannot start {:?}: {e}", argv.first().map_or("", |a| a))
}

/// Writes the caller's stdin into the command's, and closes it at its end (or once the caller's
/// input ends). A command that stopped reading ends the feeding; its output still flows.
async fn feed_pipe(stdin: Option<tokio::process::ChildStdin>, mut input: super::ExecInputs) {
    use tokio::io::AsyncWriteExt;
    let Some(mut stdin) = stdin else { return };
    while let Some(next) = input.recv().await {
        match next {
            api::ExecInput::Stdin(bytes) => {
                if stdin.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            api::ExecInput::StdinClosed => return,
            api::ExecInput::Start(_) | api::ExecInput::Resize(_) => {}
        }
    }
}

/// Types the caller's keystrokes into the terminal and passes its size changes on. The end of
/// the caller's stdin changes nothing: a terminal's user ends input with its own ^D.
async fn feed_pty(mut keys: super::pty::PtyInput, mut input: super::ExecInputs) {
    while let Some(next) = input.recv().await {
        let fed = match next {
            api::ExecInput::Stdin(bytes) => keys.write_all(&bytes).await,
            api::ExecInput::Resize(size) => keys.resize(size),
            api::ExecInput::StdinClosed | api::ExecInput::Start(_) => Ok(()),
        };
        if fed.is_err() {
            return;
        }
    }
}

/// Start time of `pid` in clock ticks since boot, or `None` if it is gone, a zombie, or cannot be
/// read.
pub fn start_ticks(pid: u32) -> Option<u64> {
    procfs::stat(pid)
        .ok()
        .filter(|s| !s.is_dead())
        .map(|s| s.start_ticks)
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn outlives_agent(&self) -> bool {
        false
    }

    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Started, DriverError>> {
        Box::pin(self.spawn(launch))
    }

    fn adopt<'a>(&'a self, handle: &'a Handle, launch: &'a Launch) -> BoxFuture<'a, ()> {
        // The process still writes to its log file itself: only remember whose it is.
        Box::pin(async move {
            if let Some(pid) = handle.pid {
                let run = Run {
                    task: launch.task_id.clone(),
                    exit: None,
                };
                self.runs().entry(pid).or_insert(run);
            }
        })
    }

    fn cleanup<'a>(&'a self, _handle: &'a Handle) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Exit> {
        Box::pin(async move {
            let Some(pid) = handle.pid else {
                return Exit::Unknown;
            };
            let rx = self.runs().get(&pid).and_then(|r| r.exit.clone());
            let exit = match rx {
                Some(mut rx) => match rx.wait_for(Option::is_some).await {
                    Ok(exit) => exit.clone().unwrap_or(Exit::Unknown),
                    Err(_) => Exit::Unknown,
                },
                None => self.wait_adopted(handle, pid).await,
            };
            self.runs().remove(&pid);
            exit
        })
    }

    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.signal_group(handle, signal))
    }

    fn alive<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Liveness> {
        Box::pin(async move { self.liveness_of(handle) })
    }

    fn exec<'a>(
        &'a self,
        _handle: &'a Handle,
        launch: &'a Launch,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Option<i32>> {
        Box::pin(async move {
            if argv.is_empty() {
                return None;
            }
            let mut cmd = self.beside(argv, launch, None);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let mut child = cmd.spawn().ok()?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) => status.code(),
                _ => None,
            }
        })
    }

    fn exec_streaming<'a>(
        &'a self,
        _handle: &'a Handle,
        launch: &'a Launch,
        req: &'a api::ExecRequest,
        input: super::ExecInputs,
        frames: tokio::sync::mpsc::Sender<api::ExecFrame>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let code = match req.tty {
                Some(size) => self.exec_tty(launch, req, size, input, &frames).await,
                None => self.exec_piped(launch, req, input, &frames).await,
            };
            let end = match code {
                Ok(Some(code)) => super::exec_end(code, None),
                Ok(None) => return,
                Err(why) => super::exec_end(None, Some(why)),
            };
            let _ = frames.send(end).await;
        })
    }

    fn memory_usage<'a>(&'a self, handle: &'a Handle, task: &'a str) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move { self.memory(handle, task) })
    }

    /// From the task's cgroup where it counts (CPU, disk on v2), else summed over its
    /// processes from `/proc`; a process shares the node's network, so it has no counters.
    fn usage<'a>(&'a self, handle: &'a Handle, task: &'a str) -> BoxFuture<'a, api::Usage> {
        Box::pin(async move {
            let cgroups = self.cgroups.as_ref();
            let pids = (cgroups.and_then(|cg| cg.pids(task).ok()))
                .or_else(|| handle.pid.and_then(|pid| procfs::group_members(pid).ok()))
                .unwrap_or_default();
            let cpu_ns = (cgroups.and_then(|cg| cg.cpu_ns(task)))
                .or_else(|| (!pids.is_empty()).then(|| procfs::cpu_ns(&pids)));
            let disk = (cgroups.and_then(|cg| cg.disk_bytes(task)))
                .or_else(|| (!pids.is_empty()).then(|| procfs::disk_bytes(&pids)));
            api::Usage {
                cpu_ns,
                memory_bytes: self.memory(handle, task),
                net_rx_bytes: None,
                net_tx_bytes: None,
                disk_read_bytes: disk.map(|d| d.0),
                disk_write_bytes: disk.map(|d| d.1),
            }
        })
    }
}

impl ProcessDriver {
    /// `exec` with pipes: stdout and stderr apart, stdin the caller's with `req.interactive`.
    /// The exit code (`None` inside for no status), `Ok(None)` once the caller has gone, or why
    /// it could not run.
    async fn exec_piped(
        &self,
        launch: &Launch,
        req: &api::ExecRequest,
        input: super::ExecInputs,
        frames: &tokio::sync::mpsc::Sender<api::ExecFrame>,
    ) -> Result<Option<Option<i32>>, String> {
        let mut cmd = self.beside(&req.argv, launch, None);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if req.interactive {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|e| cannot_start(&req.argv, &e))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let pumps = async {
            tokio::join!(
                super::pump(stdout, api::ExecFrame::Stdout, frames),
                super::pump(stderr, api::ExecFrame::Stderr, frames)
            )
        };
        let (out, err) = super::while_feeding(pumps, feed_pipe(child.stdin.take(), input)).await;
        if !(out && err) {
            // Whoever asked has gone: the command goes too (killed on drop).
            return Ok(None);
        }
        Ok(Some(child.wait().await.ok().and_then(code_of)))
    }

    /// `exec` on a pty of `size`, in a session of its own: its output one stream, the caller's
    /// keystrokes typed into it, resized as the caller's terminal is.
    async fn exec_tty(
        &self,
        launch: &Launch,
        req: &api::ExecRequest,
        size: api::WindowSize,
        input: super::ExecInputs,
        frames: &tokio::sync::mpsc::Sender<api::ExecFrame>,
    ) -> Result<Option<Option<i32>>, String> {
        let (mut output, keys, slave) =
            super::pty::open(size).map_err(|e| format!("cannot open a terminal for it: {e}"))?;
        let stdio = || slave.try_clone().map(Stdio::from);
        let ctty = slave.try_clone();
        let (Ok(stdin), Ok(stdout), Ok(stderr), Ok(ctty)) = (stdio(), stdio(), stdio(), ctty)
        else {
            return Err("cannot hand its terminal to it: out of file descriptors".into());
        };
        let mut cmd = self.beside(&req.argv, launch, Some(ctty));
        cmd.stdin(stdin).stdout(stdout).stderr(stderr);
        let spawned = cmd.spawn();
        // Only the command may hold the slave end now: the master reads its end of file once
        // the command and whatever it started have closed it.
        drop((cmd, slave));
        let mut child = spawned.map_err(|e| cannot_start(&req.argv, &e))?;
        let relay = async {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match output.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        let frame = api::ExecFrame::Stdout(buf[..n].to_vec());
                        if frames.send(frame).await.is_err() {
                            return false;
                        }
                    }
                }
            }
        };
        if !super::while_feeding(relay, feed_pty(keys, input)).await {
            return Ok(None);
        }
        Ok(Some(child.wait().await.ok().and_then(code_of)))
    }

    /// Kills every process of this agent that no task record owns, before the records' tasks
    /// are re-adopted: a process spawned just before an agent crash, whose handle was never
    /// saved, would otherwise run untracked, keep its port and survive `rm`. `records` maps each
    /// remembered task to its saved handle. With cgroups this is exact: every task cgroup that no
    /// record owns, or whose record's process is not in it, is emptied. Processes marked with
    /// this agent's id are swept too (the only way without cgroups). Returns what was done, for
    /// the log.
    pub async fn sweep(&self, records: &HashMap<String, Option<Handle>>) -> Vec<String> {
        let mut done = Vec::new();
        if let Some(cg) = &self.cgroups {
            self.sweep_cgroups(cg, records, &mut done).await;
        }
        self.sweep_marked(records, &mut done);
        done
    }

    /// The record's process, alive and confirmed (an unknown one is kept, never killed).
    fn owned(&self, records: &HashMap<String, Option<Handle>>, task: &str) -> Option<Handle> {
        let handle = records.get(task)?.clone()?;
        (self.liveness_of(&handle) != Liveness::Gone).then_some(handle)
    }

    async fn sweep_cgroups(
        &self,
        cg: &Cgroups,
        records: &HashMap<String, Option<Handle>>,
        done: &mut Vec<String>,
    ) {
        let tasks = match cg.tasks() {
            Ok(tasks) => tasks,
            Err(e) => return done.push(format!("cannot list task cgroups: {e}")),
        };
        for task in tasks {
            let inside = cg.pids(&task).unwrap_or_default();
            let kept = self
                .owned(records, &task)
                .is_some_and(|h| h.pid.is_some_and(|p| inside.contains(&p)));
            if kept {
                continue;
            }
            if !inside.is_empty() {
                done.push(format!(
                    "killed processes {inside:?} of task {task}: no saved task owns them"
                ));
            }
            if let Err(e) = clear_cgroup(cg, &task, IDENTITY_PATIENCE).await {
                done.push(e);
            }
            let _ = cg.remove(&task);
        }
    }

    fn sweep_marked(&self, records: &HashMap<String, Option<Handle>>, done: &mut Vec<String>) {
        let marked = match procfs::marked(AGENT_ID_VAR, &self.agent_id) {
            Ok(marked) => marked,
            Err(e) => return done.push(format!("cannot scan /proc for this agent's tasks: {e}")),
        };
        for (pid, environ) in marked {
            let task = procfs::env_value(&environ, TASK_ID_VAR).unwrap_or("");
            let group = procfs::stat(pid).map(|s| s.pgrp).ok();
            let in_cgroup = |cg: &Cgroups| cg.pids(task).is_ok_and(|p| p.contains(&pid));
            let kept = self.owned(records, task).is_some_and(|h| {
                (h.pid.is_some() && h.pid == group) || self.cgroups.as_ref().is_some_and(in_cgroup)
            });
            if !kept {
                // Its environment carries this agent's id: it is ours, and nothing tracks it.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                done.push(format!(
                    "killed process {pid} of task {task:?}: no saved task owns it"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
