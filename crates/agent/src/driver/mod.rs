//! The one seam for runtimes. A driver starts a task from a [`Launch`], waits for it to exit,
//! signals it, runs commands beside it (exec probes) and re-adopts it after an agent restart.
//! Everything above this trait — backoff, probes, logs, reporting — is the same for every driver.

pub mod docker;
pub mod process;

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
    pub container_id: Option<String>,
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
    fn alive<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, bool>;
    /// Releases what a finished task still holds (a stopped container).
    fn cleanup<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, ()>;
    /// Runs `argv` beside the task (in its container, for container drivers) and gives the exit
    /// code; `None` when it could not run or timed out.
    fn exec<'a>(
        &'a self,
        handle: &'a Handle,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Option<i32>>;
}
