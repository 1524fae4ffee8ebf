//! The one seam for runtimes. A driver starts a task from a [`Launch`], waits for it to exit,
//! signals it, runs commands beside it (exec probes), measures its memory and re-adopts it after
//! an agent restart.
//! Everything above this trait — backoff, probes, logs, reporting — is the same for every driver.

pub mod docker;
pub mod process;
mod pty;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spec::ServiceSpec;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a driver needs to start one task, with variables already expanded.
#[derive(Debug, Clone)]
pub struct Launch {
    pub task_id: String,
    pub service: String,
    /// The service spec version the task runs (labels containers as their revision).
    pub version: u64,
    /// The task's spec, for driver-specific fields (image, capabilities, limits, …).
    pub spec: ServiceSpec,
    pub entrypoint: Vec<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    /// Port name → host port chosen for this task.
    pub ports: BTreeMap<String, u16>,
    /// Where the task's stdout and stderr go (appended).
    pub log_path: PathBuf,
    /// The node's DNS server for the task, when it serves one.
    pub dns: Option<TaskDns>,
    /// The file (on a tmpfs) holding the value of the spec's `pull_secret`, when it names one.
    pub pull_secret: Option<PathBuf>,
}

/// The resolver a task is given: the node's DNS server, and the search domains that let it
/// name the services of its own stack by their short names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDns {
    pub server: std::net::Ipv4Addr,
    pub search: Vec<String>,
}

impl Launch {
    /// The full argv of a process: entrypoint then command.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .chain(&self.command)
            .cloned()
            .collect()
    }
}

/// A process task's launch for tests: `argv` run in `dir`, its log there too.
#[cfg(test)]
pub(crate) fn test_launch(task: &str, argv: &[&str], dir: &std::path::Path) -> Launch {
    Launch {
        task_id: task.to_string(),
        service: task.split('.').next().unwrap_or(task).to_string(),
        version: 1,
        spec: ServiceSpec::process("test", argv),
        entrypoint: Vec::new(),
        command: argv.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::from([("OUTPOST_TASK_ID".to_string(), task.to_string())]),
        workdir: Some(dir.to_path_buf()),
        ports: BTreeMap::new(),
        log_path: dir.join(format!("{task}.log")),
        dns: None,
        pull_secret: None,
    }
}

/// A started task, with anything the driver wants the operator to know (as warning events).
#[derive(Debug, Clone)]
pub struct Started {
    pub handle: Handle,
    pub warnings: Vec<String>,
}

/// How to find a started task again, persisted in the agent's local state so a restarted agent
/// can re-adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    pub pid: Option<u32>,
    /// Process start time in clock ticks since boot (`/proc/PID/stat` field 22): tells our
    /// process from an unrelated one that reused its pid.
    pub start_ticks: Option<u64>,
    /// The kernel's boot id when the task started (`/proc/sys/kernel/random/boot_id`): pid and
    /// start ticks only name a process within one boot. `None` in records from before it was kept.
    #[serde(default)]
    pub boot_id: Option<String>,
    pub container_id: Option<String>,
}

/// Whether the task a handle names still runs, as far as the driver can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Certainly gone: no such process (or container), a zombie, another start time or boot.
    Gone,
    /// Could not be told (e.g. `/proc` unreadable while file descriptors run out): the task must
    /// not be treated as dead, so ask again later.
    Unknown(String),
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed by the kernel for going over its memory limit.
    OutOfMemory,
    /// The task was adopted after an agent restart, so its exit status could not be collected.
    Unknown,
}

impl Exit {
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }

    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(*c),
            Exit::Signal(s) => Some(128 + s),
            Exit::OutOfMemory => Some(137),
            Exit::Unknown => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Exit::Code(c) => format!("exited with status {c}"),
            Exit::Signal(s) => format!("killed by signal {s}{}", signal_name(*s)),
            Exit::OutOfMemory => "killed: out of memory (over its memory limit)".into(),
            Exit::Unknown => "exited (status unknown: adopted after an agent restart)".into(),
        }
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        9 => " (SIGKILL)",
        15 => " (SIGTERM)",
        6 => " (SIGABRT)",
        11 => " (SIGSEGV)",
        2 => " (SIGINT)",
        _ => "",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Kill,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot start {program:?}: {reason}")]
    Start { program: String, reason: String },
    #[error("{0}")]
    Other(String),
}

pub trait Driver: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Whether tasks keep running when the agent stops. Containers do (an agent restart must
    /// never restart a healthy workload); processes are stopped with the agent so none is
    /// orphaned.
    fn outlives_agent(&self) -> bool;
    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Started, DriverError>>;
    /// Re-attaches to a task found running after an agent restart (e.g. resumes its log stream).
    fn adopt<'a>(&'a self, handle: &'a Handle, launch: &'a Launch) -> BoxFuture<'a, ()>;
    /// Resolves when the task exits. Must be cancel-safe: dropping it and calling again waits on.
    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Exit>;
    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Is the task this handle names still running? Used to re-adopt after an agent restart.
    fn alive<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Liveness>;
    /// Releases what a finished task still holds (a stopped container).
    fn cleanup<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, ()>;
    /// Runs `argv` beside the task (in its container, for container drivers; with the task's
    /// environment and workdir, never the agent's, for processes) and gives the exit code;
    /// `None` when it could not run or timed out.
    fn exec<'a>(
        &'a self,
        handle: &'a Handle,
        launch: &'a Launch,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Option<i32>>;
    /// Runs `req.argv` beside the task as [`Driver::exec`] does, for an operator: its output is
    /// sent on `frames` as it comes, then how it ended (always the last frame). The command is
    /// killed once `frames` closes: whoever asked has gone. With `req.interactive` what comes
    /// on `input` is its stdin (its end, or `input` closing, closes it); with `req.tty` it runs
    /// on a terminal of that size, resized as `input` says, its stdout and stderr one stream.
    fn exec_streaming<'a>(
        &'a self,
        handle: &'a Handle,
        launch: &'a Launch,
        req: &'a api::ExecRequest,
        input: ExecInputs,
        frames: tokio::sync::mpsc::Sender<api::ExecFrame>,
    ) -> BoxFuture<'a, ()>;
    /// What the task uses, as cumulative counters, for `outpost stats`; what cannot be read is
    /// `None`.
    fn usage<'a>(&'a self, _handle: &'a Handle, _task: &'a str) -> BoxFuture<'a, api::Usage> {
        Box::pin(async { api::Usage::default() })
    }
    /// The TCP ports the task listens on inside its own network namespace, where its open
    /// connections are counted while it drains. A process listens on its host ports.
    /// `ports` are the task's host ports by name.
    fn serving_ports(&self, spec: &ServiceSpec, ports: &BTreeMap<String, u16>) -> Vec<u16> {
        (spec.ports.iter())
            .filter(|p| !p.protocol.is_udp())
            .filter_map(|p| ports.get(&p.name).copied())
            .collect()
    }
    /// The task's memory use in bytes (its cgroup's count, or the container's), for eviction;
    /// `None` when it cannot be measured.
    fn memory_usage<'a>(&'a self, handle: &'a Handle, task: &'a str) -> BoxFuture<'a, Option<u64>>;
}

/// What follows an exec's start: the caller's stdin, its end, and its terminal's new sizes.
pub type ExecInputs = tokio::sync::mpsc::Receiver<api::ExecInput>;

/// Runs `main` to its end while `feed` runs beside it: `feed` (passing the caller's input on)
/// may end first, or be dropped unfinished once `main` (the output) is done.
async fn while_feeding<T>(main: impl Future<Output = T>, feed: impl Future<Output = ()>) -> T {
    tokio::pin!(main);
    tokio::select! {
        biased;
        done = &mut main => done,
        () = feed => main.await,
    }
}

/// The last frame of an exec.
fn exec_end(code: Option<i32>, error: Option<String>) -> api::ExecFrame {
    api::ExecFrame::End(api::ExecEnd { code, error })
}

/// Sends what `from` gives, as frames made by `frame`, until it ends; `false` once `frames`
/// is closed.
async fn pump<R: tokio::io::AsyncRead + Unpin>(
    from: Option<R>,
    frame: fn(Vec<u8>) -> api::ExecFrame,
    frames: &tokio::sync::mpsc::Sender<api::ExecFrame>,
) -> bool {
    use tokio::io::AsyncReadExt;
    let Some(mut from) = from else {
        return true;
    };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => {
                if frames.send(frame(buf[..n].to_vec())).await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_saved_before_the_boot_id_was_kept_still_load() {
        let old = r#"{"pid":42,"start_ticks":7,"container_id":null}"#;
        let handle: Handle = serde_json::from_str(old).unwrap();
        assert_eq!(handle.boot_id, None);
        assert_eq!(handle.start_ticks, Some(7));
    }
}
