//! `bench/scale` at a small size, so it cannot rot: the real `outpost server` binary on loopback,
//! the real `outpost-loadgen` against it, and the figures it prints read back as a script reads
//! them. Every wait polls with a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for anything waited on; far above what a healthy run on a loaded machine needs.
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

fn loadgen_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost-loadgen"))
}

/// The server binary, built beside the load generator by `cargo test --workspace`.
fn outpost_bin() -> PathBuf {
    let path = loadgen_bin().with_file_name("outpost");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// `outpost server` in a data dir of its own, stopped (SIGTERM) when dropped.
struct Server {
    dir: tempfile::TempDir,
    child: Child,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--api", "127.0.0.1:0", "server"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server { dir, child };
        wait_for("the server to write its API address", || {
            server.data_dir().join("api").exists().then_some(())
        });
        server
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + PATIENCE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load generator to its end and returns its stdout lines.
fn loadgen(server: &Server, args: &[&str]) -> Vec<String> {
    let mut child = Command::new(loadgen_bin())
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("the load generator to finish", || child.try_wait().unwrap());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        status.success(),
        "outpost-loadgen failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    stdout.lines().map(str::to_string).collect()
}

#[test]
fn a_small_load_places_and_runs_every_task_and_prints_figures_a_script_can_read() {
    let server = Server::start();
    let lines = loadgen(
        &server,
        &[
            "--nodes",
            "20",
            "--services",
            "10",
            "--replicas",
            "10",
            "--seconds",
            "2",
            "--patience",
            "30",
        ],
    );
    let phases: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("phase="))
        .collect();
    assert_eq!(phases, ["steady", "settled"], "{lines:#?}");
    let figures: BTreeMap<&str, &str> = lines
        .iter()
        .filter(|l| !l.starts_with("phase="))
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l:?}"))
        })
        .collect();
    let number = |key: &str| -> f64 {
        let text = figures
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {figures:#?}"));
        text.parse()
            .unwrap_or_else(|_| panic!("{key}={text} is not a number"))
    };
    for key in figures.keys().filter(|k| **k != "ps_service") {
        number(key);
    }
    assert_eq!(number("tasks"), 100.0);
    assert_eq!(number("placed_tasks"), 100.0, "every task reached its node");
    assert_eq!(
        number("running_tasks"),
        100.0,
        "every task was reported running"
    );
    assert_eq!(
        number("settled_nodes"),
        20.0,
        "every agent's last report got through"
    );
    assert_eq!(
        number("confirmed_running"),
        100.0,
        "the server counts every task running"
    );
    assert_eq!(number("confirmed_ready"), 100.0);
    assert_eq!(
        (number("verified_tasks"), number("mismatched_tasks")),
        (100.0, 0.0),
        "after the steady phase the server holds what every agent last had acknowledged"
    );
    for positive in [
        "placed_s",
        "placements_per_s",
        "running_s",
        "steady_changes",
        "changes_per_s",
        "steady_entries",
        "ps_samples",
        "ps_p50_ms",
    ] {
        assert!(number(positive) > 0.0, "{positive} in {figures:#?}");
    }
    assert!(number("running_s") >= number("placed_s"));
    assert!(number("ps_p99_ms") >= number("ps_p50_ms"));
    assert_eq!(number("ps_errors"), 0.0);
}
