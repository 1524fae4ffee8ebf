//! The process driver: a task is a local process in its own process group, its output appended
//! to the task's log file. Stopping signals the whole group, so nothing the task forked survives
//! it. Tasks outlive the agent (they are not its session's children in any way that would kill
//! them), and a restarted agent re-adopts them by pid and start time.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::{BoxFuture, Driver, DriverError, Exit, Handle, Launch, Started, StopSignal};
use crate::cgroup::{Cgroups, Limits};

/// How often an adopted process (not our child, so no exit notification) is checked for life.
/// 100 ms keeps crash detection of adopted tasks well inside the recovery target.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// Variables a process inherits from the agent; everything else comes from the spec, so a task
/// behaves the same whoever started the agent.
const INHERITED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER"];

#[derive(Default)]
pub struct ProcessDriver {
    /// Exit status of the children we spawned, by pid, published by their reaper task.
    exits: Arc<Mutex<HashMap<u32, watch::Receiver<Option<Exit>>>>>,
    /// Where tasks' resource limits are enforced; `None` falls back to an address-space rlimit.
    cgroups: Option<Cgroups>,
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

impl ProcessDriver {
    pub fn new(cgroups: Option<Cgroups>) -> ProcessDriver {
        ProcessDriver {
            exits: Arc::default(),
            cgroups,
        }
    }

    fn spawn(&self, launch: &Launch) -> Result<Started, DriverError> {
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
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log_path)
            .map_err(|e| {
                fail(format!(
                    "cannot open log file {}: {e}",
                    launch.log_path.display()
                ))
            })?;
        let log_err = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(argv.iter().skip(1))
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(&launch.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group: a stop reaches every process the task forked, and a Ctrl-C aimed at
            // the agent's terminal does not reach the task.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &launch.workdir {
            cmd.current_dir(dir);
        }
        let mut warnings = Vec::new();
        if let Some(cg) = &self.cgroups {
            // A cgroup left by an earlier run would carry its OOM count over.
            let _ = cg.remove(&launch.task_id);
            match cg.create(&launch.task_id, &limits) {
                Ok(w) => warnings.extend(w),
                Err(e) => warnings.push(format!("resource limits not enforced: {e}")),
            }
        }
        let mut child = cmd.spawn().map_err(|e| fail(start_error(&e)))?;
        let pid = child
            .id()
            .ok_or_else(|| fail("exited before it could be watched".into()))?;
        if let Some(cg) = &self.cgroups
            && let Err(e) = cg.add(&launch.task_id, pid)
        {
            warnings.push(format!("resource limits not enforced: {e}"));
        }
        let cgroup = self.cgroups.clone().map(|cg| (cg, launch.task_id.clone()));
        let (tx, rx) = watch::channel(None);
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, rx);
        tokio::spawn(async move {
            let mut exit = match child.wait().await {
                Ok(status) => exit_of(status),
                Err(_) => Exit::Unknown,
            };
            if let Some((cg, task)) = cgroup {
                if cg.oom_kills(&task).unwrap_or(0) > 0 {
                    exit = Exit::OutOfMemory;
                }
                // Fails while a forked child lingers; the next start or stop retries.
                let _ = cg.remove(&task);
            }
            let _ = tx.send(Some(exit));
        });
        let handle = Handle {
            pid: Some(pid),
            start_ticks: start_ticks(pid),
            container_id: None,
        };
        Ok(Started { handle, warnings })
    }
}

impl ProcessDriver {
    /// Signals the task's whole process group, if the task is still the process we started.
    fn signal_group(&self, handle: &Handle, signal: StopSignal) -> Result<(), DriverError> {
        let Some(pid) = handle.pid else { return Ok(()) };
        if !self.is_alive(handle) {
            return Ok(());
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

    fn is_alive(&self, handle: &Handle) -> bool {
        match (handle.pid, handle.start_ticks) {
            (Some(pid), Some(ticks)) => start_ticks(pid) == Some(ticks),
            (Some(pid), None) => start_ticks(pid).is_some(),
            _ => false,
        }
    }
}

fn start_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "no such file or directory (check the command path and the workdir)".into()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (is the file executable?)".into()
        }
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

/// Start time of `pid` in clock ticks since boot, or `None` if it is gone or a zombie.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn outlives_agent(&self) -> bool {
        false
    }

    fn start<'a>(&'a self, launch: &'a Launch) -> BoxFuture<'a, Result<Started, DriverError>> {
        Box::pin(async move { self.spawn(launch) })
    }

    fn adopt<'a>(&'a self, _handle: &'a Handle, _launch: &'a Launch) -> BoxFuture<'a, ()> {
        // The process still writes to its log file itself: nothing to re-attach.
        Box::pin(async {})
    }

    fn cleanup<'a>(&'a self, _handle: &'a Handle) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn wait<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, Exit> {
        Box::pin(async move {
            let Some(pid) = handle.pid else {
                return Exit::Unknown;
            };
            let rx = self
                .exits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&pid)
                .cloned();
            match rx {
                Some(mut rx) => {
                    let exit = match rx.wait_for(Option::is_some).await {
                        Ok(exit) => exit.clone().unwrap_or(Exit::Unknown),
                        Err(_) => Exit::Unknown,
                    };
                    self.exits
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&pid);
                    exit
                }
                None => {
                    while self.is_alive(handle) {
                        tokio::time::sleep(ADOPTED_POLL).await;
                    }
                    Exit::Unknown
                }
            }
        })
    }

    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move { self.signal_group(handle, signal) })
    }

    fn alive<'a>(&'a self, handle: &'a Handle) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.is_alive(handle) })
    }

    fn exec<'a>(
        &'a self,
        _handle: &'a Handle,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Option<i32>> {
        Box::pin(async move {
            let (program, args) = argv.split_first()?;
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .ok()?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) => status.code(),
                _ => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_cgroups_a_memory_limit_becomes_an_address_space_rlimit() {
        let argv = vec!["app".to_string(), "--x".to_string()];
        let limited = Limits {
            memory_max: Some(64 << 20),
            ..Limits::default()
        };
        assert_eq!(
            rlimit_argv(argv.clone(), &limited),
            ["prlimit", "--as=67108864", "--", "app", "--x"]
        );
        assert_eq!(rlimit_argv(argv.clone(), &Limits::default()), argv);
    }
}
