//! The process driver against real processes, and against this machine's real cgroups where the
//! agent could use them (skipped, with the reason printed, where it could not).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::driver::test_launch;

/// Far above what a healthy run needs, for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

static CGROUP_TESTS: AtomicU32 = AtomicU32::new(0);

fn driver(cgroups: Option<Cgroups>, name: &str) -> ProcessDriver {
    ProcessDriver::new(cgroups, &agent_id(name))
}

/// A marker unique to this test run, so a sweep never touches another test's processes.
fn agent_id(name: &str) -> String {
    format!("test-{}-{name}", std::process::id())
}

/// This machine's cgroups under a prefix of the test's own, with that prefix's name.
fn real_cgroups() -> Option<(Cgroups, String)> {
    let n = CGROUP_TESTS.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("outpost-driver-test-{}-{n}", std::process::id());
    match Cgroups::detect(Path::new(crate::cgroup::DEFAULT_ROOT), &prefix) {
        Ok(cg) => Some((cg, prefix)),
        Err(reason) => {
            eprintln!("skipped: cgroups unusable here: {reason}");
            None
        }
    }
}

fn handle(pid: u32, start_ticks: Option<u64>, boot_id: Option<&str>) -> Handle {
    Handle {
        pid: Some(pid),
        start_ticks,
        boot_id: boot_id.map(str::to_string),
        container_id: None,
    }
}

fn gone(pid: u32) -> bool {
    procfs::stat(pid).map_or(true, |s| s.is_dead())
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

async fn pid_file(path: &Path) -> u32 {
    let mut pid = None;
    eventually("the pid file", || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap_or_default()
}

/// Kills a test task's process group when the test ends, passed or not, so a failed assertion
/// leaves nothing running.
struct KillOnDrop(Handle);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.pid {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

async fn wait(driver: &ProcessDriver, h: &Handle) -> Exit {
    tokio::time::timeout(PATIENCE, driver.wait(h))
        .await
        .expect("the run did not end")
}

#[test]
fn an_unreadable_proc_entry_is_unknown_not_gone() {
    let h = handle(42, Some(7), Some("boot-1"));
    let stat = |start_ticks, state| {
        Ok(procfs::Stat {
            state,
            pgrp: 42,
            start_ticks,
            cpu_ticks: 0,
        })
    };
    let boot = Some("boot-1");
    assert_eq!(liveness(&h, stat(7, 'S'), boot), Liveness::Alive);
    // File descriptors exhausted: the process may well be running.
    let emfile = io::Error::from_raw_os_error(nix::libc::EMFILE);
    assert!(matches!(
        liveness(&h, Err(emfile), boot),
        Liveness::Unknown(why) if why.contains("/proc/42/stat")
    ));
    let eacces = io::Error::from_raw_os_error(nix::libc::EACCES);
    assert!(matches!(
        liveness(&h, Err(eacces), boot),
        Liveness::Unknown(_)
    ));
    // Only a missing process, a zombie or another start time is gone.
    let enoent = io::Error::from(io::ErrorKind::NotFound);
    assert_eq!(liveness(&h, Err(enoent), boot), Liveness::Gone);
    let esrch = io::Error::from_raw_os_error(nix::libc::ESRCH);
    assert_eq!(liveness(&h, Err(esrch), boot), Liveness::Gone);
    assert_eq!(liveness(&h, stat(7, 'Z'), boot), Liveness::Gone);
    assert_eq!(liveness(&h, stat(8, 'S'), boot), Liveness::Gone);
}

#[test]
fn a_handle_without_start_time_or_from_another_boot_is_never_alive() {
    let me = std::process::id();
    let ticks = procfs::stat(me).unwrap().start_ticks;
    let boot = procfs::boot_id();
    let boot = boot.as_deref();
    let check = |h: &Handle| liveness(h, procfs::stat(me), boot);
    // This process is alive, but a handle without a start time could name anyone on its pid.
    assert_eq!(check(&handle(me, None, boot)), Liveness::Gone);
    assert_eq!(
        check(&handle(me, Some(ticks), Some("another-boot"))),
        Liveness::Gone
    );
    assert_eq!(check(&handle(me, Some(ticks), boot)), Liveness::Alive);
    // Records from before the boot id was kept still re-adopt.
    assert_eq!(check(&handle(me, Some(ticks), None)), Liveness::Alive);
}

#[tokio::test]
async fn a_started_task_has_a_full_identity() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(None, "identity");
    // Exits at once: its start time must still be read (from the unreaped child).
    let launch = test_launch("quick.1.1", &["true"], dir.path());
    let h = d.start(&launch).await.unwrap().handle;
    let _guard = KillOnDrop(h.clone());
    assert!(h.start_ticks.is_some(), "{h:?}");
    assert_eq!(h.boot_id, procfs::boot_id());
    assert_eq!(wait(&d, &h).await, Exit::Code(0));
}

#[tokio::test]
async fn a_run_ends_only_when_everything_it_forked_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(None, "fork");
    let script = "sleep 1000 & echo $! > child.pid; exit 3";
    let launch = test_launch("fork.1.1", &["sh", "-c", script], dir.path());
    let h = d.start(&launch).await.unwrap().handle;
    let _guard = KillOnDrop(h.clone());
    let child = pid_file(&dir.path().join("child.pid")).await;
    assert_eq!(wait(&d, &h).await, Exit::Code(3));
    assert!(
        gone(child),
        "process {child} forked by the task outlived its run"
    );
}

#[tokio::test]
async fn task_logs_are_readable_by_the_agent_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = driver(None, "log-mode");
    let launch = test_launch("log.1.1", &["true"], dir.path());
    let h = d.start(&launch).await.unwrap().handle;
    let _guard = KillOnDrop(h.clone());
    wait(&d, &h).await;
    let mode = std::fs::metadata(&launch.log_path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// Every frame of an exec's output until `until` shows in its stdout, or until its end; the
/// stdout so far and the end, if it came.
async fn exec_output(
    frames: &mut tokio::sync::mpsc::Receiver<api::ExecFrame>,
    out: &mut String,
    until: &str,
) -> Option<api::ExecEnd> {
    while !out.contains(until) {
        let next = tokio::time::timeout(PATIENCE, frames.recv()).await;
        match next.expect("no output within the patience") {
            Some(api::ExecFrame::Stdout(b)) => out.push_str(&String::from_utf8_lossy(&b)),
            Some(api::ExecFrame::Stderr(b)) => panic!("stderr apart on a tty: {b:?}"),
            Some(api::ExecFrame::End(end)) => return Some(end),
            None => return None,
        }
    }
    None
}

#[tokio::test]
async fn exec_with_a_tty_runs_on_a_pty_of_its_own_sized_and_typed_into() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(None, "exec-tty");
    let launch = test_launch("tty.1.1", &["true"], dir.path());
    // Opening /dev/tty works only for a process with a controlling terminal.
    let script = "stty size; tty; exec 3</dev/tty && echo has-ctty; read a; echo got-$a; \
                  stty size >&2; exit 4";
    let req = api::ExecRequest {
        argv: ["sh", "-c", script].map(String::from).to_vec(),
        interactive: true,
        tty: Some(api::WindowSize { rows: 30, cols: 90 }),
    };
    let (input, inputs) = tokio::sync::mpsc::channel(4);
    let (tx, mut frames) = tokio::sync::mpsc::channel(16);
    let handle = handle(1, None, None);
    let run = d.exec_streaming(&handle, &launch, &req, inputs, tx);
    let check = async {
        let mut out = String::new();
        assert_eq!(exec_output(&mut frames, &mut out, "has-ctty").await, None);
        assert!(out.starts_with("30 90\r\n/dev/pts/"), "{out:?}");
        // In order: the size changes before the line is typed.
        let size = api::WindowSize {
            rows: 50,
            cols: 120,
        };
        input.send(api::ExecInput::Resize(size)).await.unwrap();
        input
            .send(api::ExecInput::Stdin(b"one\n".to_vec()))
            .await
            .unwrap();
        let end = exec_output(&mut frames, &mut out, "never printed").await;
        assert_eq!(end.and_then(|e| e.code), Some(4), "{out:?}");
        assert!(out.contains("got-one\r\n50 120\r\n"), "{out:?}");
    };
    tokio::join!(run, check);
}

#[tokio::test]
async fn exec_runs_with_the_task_environment_and_workdir_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(None, "exec-env");
    let mut launch = test_launch("env.1.1", &["true"], dir.path());
    launch.env.insert("GREETING".into(), "hello".into());
    let argv: Vec<String> = ["sh", "-c", "env > env.txt; pwd > pwd.txt"]
        .map(String::from)
        .to_vec();
    let code = d
        .exec(&handle(1, None, None), &launch, &argv, PATIENCE)
        .await;
    assert_eq!(code, Some(0));
    let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    assert!(env.lines().any(|l| l == "GREETING=hello"), "{env}");
    // The shell adds its own few; nothing else of the agent's (here the test runner's, with
    // its CARGO_* variables) may show.
    let allowed: Vec<&str> = INHERITED_ENV
        .iter()
        .copied()
        .chain([AGENT_ID_VAR, "PWD", "OLDPWD", "SHLVL", "_"])
        .chain(launch.env.keys().map(String::as_str))
        .collect();
    for line in env.lines() {
        let name = line.split('=').next().unwrap_or_default();
        assert!(
            allowed.contains(&name),
            "{name} leaked into the probe: {env}"
        );
    }
    let pwd = std::fs::read_to_string(dir.path().join("pwd.txt")).unwrap();
    assert_eq!(Path::new(pwd.trim()), dir.path().canonicalize().unwrap());
}

#[tokio::test]
async fn sweep_kills_this_agents_processes_that_no_record_owns() {
    let dir = tempfile::tempdir().unwrap();
    let before_crash = driver(None, "sweep");
    let sleeper = |task| test_launch(task, &["sleep", "1000"], dir.path());
    let kept = before_crash
        .start(&sleeper("kept.1.1"))
        .await
        .unwrap()
        .handle;
    let orphan = before_crash
        .start(&sleeper("orphan.1.1"))
        .await
        .unwrap()
        .handle;
    // As after a crash: the second task's record was saved without a handle (intent first).
    let records = HashMap::from([
        ("kept.1.1".to_string(), Some(kept.clone())),
        ("orphan.1.1".to_string(), None),
    ]);
    let after_restart = driver(None, "sweep");
    let done = after_restart.sweep(&records).await;
    let orphan_pid = orphan.pid.unwrap();
    assert!(
        done.iter().any(|d| d.contains(&orphan_pid.to_string())),
        "{done:?}"
    );
    eventually("the orphan to be killed", || gone(orphan_pid)).await;
    assert_eq!(after_restart.liveness_of(&kept), Liveness::Alive);
    // Another agent's sweep never touches them.
    driver(None, "someone-else").sweep(&HashMap::new()).await;
    assert_eq!(after_restart.liveness_of(&kept), Liveness::Alive);
    before_crash.signal(&kept, StopSignal::Kill).await.unwrap();
    wait(&before_crash, &kept).await;
}

#[tokio::test]
async fn memory_counts_every_process_of_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let d = driver(None, "memory");
    // A child holds ~40 MB in a shell variable (the trailing `:` keeps the shell from exec-ing
    // `sleep` in its place); the main process holds next to nothing.
    let script = "(x=$(yes | head -c 40000000); echo held > held; sleep 1000; :) & sleep 1000";
    let launch = test_launch("mem.1.1", &["sh", "-c", script], dir.path());
    let h = d.start(&launch).await.unwrap().handle;
    let _guard = KillOnDrop(h.clone());
    eventually("the child to hold its memory", || {
        dir.path().join("held").exists()
    })
    .await;
    let usage = d.memory_usage(&h, "mem.1.1").await.unwrap();
    let main = procfs::resident_memory(h.pid.unwrap()).unwrap();
    assert!(usage >= 30_000_000, "usage {usage}");
    assert!(main < 10_000_000, "main process {main}");
    d.signal(&h, StopSignal::Kill).await.unwrap();
    wait(&d, &h).await;
}

#[tokio::test]
async fn real_cgroup_holds_the_task_from_its_first_instruction() {
    let Some((cg, prefix)) = real_cgroups() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = driver(Some(cg.clone()), "cgroup-first");
    let launch = test_launch("first.1.1", &["cat", "/proc/self/cgroup"], dir.path());
    let h = d.start(&launch).await.unwrap().handle;
    let _guard = KillOnDrop(h.clone());
    assert_eq!(wait(&d, &h).await, Exit::Code(0));
    let log = std::fs::read_to_string(&launch.log_path).unwrap();
    let inside = format!("/{prefix}/first.1.1");
    let memory = log
        .lines()
        .find(|l| l.contains(":memory:") || l.starts_with("0::"));
    assert!(
        memory.is_some_and(|l| l.ends_with(&inside)),
        "not in its cgroup from the start: {log}"
    );
    cg.remove_prefix().unwrap();
}

#[tokio::test]
async fn real_cgroup_kills_what_left_the_process_group() {
    let Some((cg, _)) = real_cgroups() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = driver(Some(cg.clone()), "cgroup-escape");
    // `setsid` takes the child out of the task's process group: only its cgroup still holds it.
    let script = "setsid sleep 1000 & echo $! > child.pid; exit 0";
    let launch = test_launch("escape.1.1", &["sh", "-c", script], dir.path());
    let h = d.start(&launch).await.unwrap().handle;
    let _guard = KillOnDrop(h.clone());
    let child = pid_file(&dir.path().join("child.pid")).await;
    assert_eq!(wait(&d, &h).await, Exit::Code(0));
    assert!(gone(child), "process {child} escaped its task's end");
    assert!(cg.tasks().unwrap().is_empty(), "the task's cgroup is left");
    cg.remove_prefix().unwrap();
}

#[tokio::test]
async fn real_cgroup_with_leftovers_is_emptied_before_a_start_and_measured() {
    use std::io::Write;
    let Some((cg, _)) = real_cgroups() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = driver(Some(cg.clone()), "cgroup-reuse");
    // A leftover of an earlier run, still in the task's cgroup.
    cg.create("reuse.1.1", &Limits::default()).unwrap();
    let mut leftover = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    for mut f in cg.open_procs("reuse.1.1").unwrap() {
        f.write_all(leftover.id().to_string().as_bytes()).unwrap();
    }
    let script = "x=$(yes | head -c 40000000); echo held > held; sleep 1000; :";
    let launch = test_launch("reuse.1.1", &["sh", "-c", script], dir.path());
    let h = d.start(&launch).await.unwrap().handle;
    let _guard = KillOnDrop(h.clone());
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(status) = leftover.try_wait().unwrap() {
                return status;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the leftover was not killed");
    assert!(!status.success());
    let inside = cg.pids("reuse.1.1").unwrap();
    assert!(inside.contains(&h.pid.unwrap()), "{inside:?}");
    assert!(!inside.contains(&leftover.id()), "{inside:?}");
    eventually("the task to hold its memory", || {
        dir.path().join("held").exists()
    })
    .await;
    let usage = d.memory_usage(&h, "reuse.1.1").await.unwrap();
    assert!(usage >= 30_000_000, "cgroup usage {usage}");
    d.signal(&h, StopSignal::Kill).await.unwrap();
    wait(&d, &h).await;
    cg.remove_prefix().unwrap();
}
