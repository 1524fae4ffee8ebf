//! Damaged state files, through the real binary: `outpost dev` refuses to start on them with a
//! message naming the file and what to do, never a panic, and never serves a changed value nor
//! starts an empty cluster where one was.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Dev, PATIENCE, outpost_bin, wait_for};

/// Four replicas that do nothing but sleep: the state holds `"replicas":4`.
const SLEEPERS: &str = r#"
name: sleepers
replicas: 4
command: ["sleep", "3600"]
stop_grace: 1s
"#;

/// A data dir whose dev ran the sleepers and stopped cleanly.
fn used_data_dir() -> Dev {
    let mut dev = Dev::start(&[]);
    dev.deploy("sleepers.yaml", SLEEPERS);
    dev.wait_ready("sleepers", 4);
    dev.stop();
    dev
}

/// Runs `outpost dev` on `dir` (with `extra` flags) until it exits; returns its exit success and
/// everything it printed. Fails the test if it is still running after [`PATIENCE`].
fn dev_until_exit(dir: &Path, extra: &[&str]) -> (bool, String) {
    let _ = std::fs::remove_file(dir.join("api"));
    let mut child = Command::new(outpost_bin())
        .arg("--data-dir")
        .arg(dir)
        .args(["--api", "127.0.0.1:0", "dev"])
        .args(extra)
        .env("OUTPOST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "outpost dev kept running on a damaged data dir:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The refusal every damaged file must get: non-zero exit, the file named, a remedy, no panic.
fn assert_refused(dir: &Path, file: &Path, remedy: &str) -> String {
    let (ok, out) = dev_until_exit(dir, &[]);
    assert!(!ok, "outpost dev started on a damaged data dir:\n{out}");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert!(out.contains(remedy), "{out}");
    for bad in ["panicked at", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!out.contains(bad), "{bad:?} in:\n{out}");
    }
    assert!(!dir.join("api").exists(), "nothing is served");
    out
}

fn truncate(path: &Path, len: impl FnOnce(u64) -> u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = file.metadata().unwrap().len();
    file.set_len(len(size)).unwrap();
}

const BACKUP: &str = "restore the data dir from a backup";

#[test]
fn a_state_truncated_to_half_is_refused_naming_the_file_and_the_remedy() {
    let dev = used_data_dir();
    let state = dev.data_dir().join("state.redb");
    truncate(&state, |size| size / 2);
    assert_refused(dev.data_dir(), &state, BACKUP);
}

#[test]
fn a_state_truncated_to_4_kib_is_refused_naming_the_file_and_the_remedy() {
    let dev = used_data_dir();
    let state = dev.data_dir().join("state.redb");
    truncate(&state, |_| 4096);
    assert_refused(dev.data_dir(), &state, BACKUP);
}

#[test]
fn a_changed_byte_in_the_state_is_never_served() {
    let dev = used_data_dir();
    let state = dev.data_dir().join("state.redb");
    let mut bytes = std::fs::read(&state).unwrap();
    let (from, to) = (br#""replicas":4"#, br#""replicas":9"#);
    let mut changed = 0;
    for at in 0..=bytes.len() - from.len() {
        if &bytes[at..at + from.len()] == from {
            bytes[at..at + to.len()].copy_from_slice(to);
            changed += 1;
        }
    }
    assert!(changed > 0, "the spec is stored as JSON");
    std::fs::write(&state, bytes).unwrap();
    let out = assert_refused(dev.data_dir(), &state, BACKUP);
    assert!(out.contains("checksum does not match"), "{out}");
}

#[test]
fn an_emptied_state_is_not_taken_for_a_new_cluster_unless_reset() {
    let dev = used_data_dir();
    let state = dev.data_dir().join("state.redb");
    truncate(&state, |_| 0);
    assert_refused(dev.data_dir(), &state, "--reset");
    std::fs::remove_file(&state).unwrap();
    let out = assert_refused(dev.data_dir(), &state, "--reset");
    assert!(out.contains("missing"), "{out}");

    // Told to, it starts a new, empty cluster with the same token.
    let mut child = Command::new(outpost_bin())
        .arg("--data-dir")
        .arg(dev.data_dir())
        .args(["--api", "127.0.0.1:0", "dev", "--reset"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let services = wait_for("the reset dev to answer", || {
        let out = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(dev.data_dir())
            .args(["-o", "json", "services"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    assert_eq!(services.trim(), "[]");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for("dev to stop", || child.try_wait().unwrap());
}

#[test]
fn an_agent_state_truncated_to_half_is_refused_naming_the_file_and_the_remedy() {
    let dev = used_data_dir();
    let local = dev.data_dir().join("agent").join("agent.redb");
    truncate(&local, |size| size / 2);
    let (ok, out) = dev_until_exit(dev.data_dir(), &[]);
    assert!(!ok, "outpost dev ran without its agent:\n{out}");
    assert!(out.contains(&local.display().to_string()), "{out}");
    assert!(out.contains("move the file away"), "{out}");
    for bad in ["panicked at", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!out.contains(bad), "{bad:?} in:\n{out}");
    }
}
