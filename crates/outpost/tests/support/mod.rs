//! Starts the real `outpost dev` on loopback with its own data dir and drives it through the real
//! CLI. Every wait polls with a deadline; deadlines are generous for a loaded 2-core machine.

#![allow(dead_code)]

pub mod hosts;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod servers;

/// Upper bound for anything the tests wait on; far above what a healthy run needs.
pub const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

pub fn outpost_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_outpost"))
}

/// The demo app, built beside `outpost` by `cargo test --workspace`.
pub fn demo_app() -> PathBuf {
    let path = outpost_bin().with_file_name("demo-app");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_within(PATIENCE, what, check)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `patience`.
pub fn wait_within<T>(patience: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    poll_within(patience, check)
        .unwrap_or_else(|| panic!("timed out after {patience:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`; `None` once `patience` has passed, for a caller
/// that says itself what it saw.
pub fn poll_within<T>(patience: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

pub struct Dev {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// `dev`, or `server` for a control plane whose agents run as processes of their own.
    role: &'static str,
}

impl Dev {
    /// Starts `outpost dev` with `files` and waits until its API answers.
    pub fn start(files: &[&Path]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Dev {
            dir,
            child: None,
            role: "dev",
        };
        dev.spawn(files);
        dev
    }

    /// Starts `outpost dev` with one spec file, written before it starts, so the deploy runs
    /// inside dev's own start-up.
    pub fn start_with_spec(name: &str, text: &str) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Dev {
            dir,
            child: None,
            role: "dev",
        };
        let path = dev.spec_file(name, text);
        dev.spawn(&[&path]);
        dev
    }

    /// Sends `outpost dev` a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        signal(
            self.child.as_ref().expect("dev is running").id() as u64,
            sig,
        );
    }

    /// Sends `outpost dev` a signal and waits for it to exit; returns whether it exited with
    /// success.
    pub fn signal_and_wait(&mut self, sig: nix::sys::signal::Signal) -> bool {
        let mut child = self.child.take().expect("dev is running");
        signal(child.id() as u64, sig);
        wait_for(&format!("outpost dev to exit after {sig}"), || {
            child.try_wait().unwrap()
        })
        .success()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, files: &[&Path]) {
        self.spawn_with(files, &[]);
    }

    fn spawn_with(&mut self, files: &[&Path], env: &[(&str, &str)]) {
        self.spawn_dev(files.iter().map(|f| f.as_os_str()), env);
    }

    /// Starts `outpost dev` with `args` (spec files, flags of its own) and `env`.
    fn spawn_dev<'a>(
        &mut self,
        args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
        env: &[(&str, &str)],
    ) {
        self.launch_dev(args, env);
        self.wait_started();
    }

    /// Starts `outpost dev` with `args` and `env`, without waiting for it.
    fn launch_dev<'a>(
        &mut self,
        args: impl IntoIterator<Item = &'a std::ffi::OsStr>,
        env: &[(&str, &str)],
    ) {
        let _ = std::fs::remove_file(self.data_dir().join("api"));
        let log = std::fs::File::create(self.data_dir().join("dev.log")).unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--api", "127.0.0.1:0", self.role])
            // dev's own log goes to stderr, so `dev.log` holds it after what dev prints.
            .args(if self.role == "dev" { &["-v"][..] } else { &[] })
            .args(args)
            .env("OUTPOST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits until `dev` answers and leads its group.
    pub fn wait_started(&self) {
        wait_for("the dev API to answer", || {
            self.try_cli(&["nodes"]).filter(|o| o.status.success())
        });
        let api = std::fs::read_to_string(self.data_dir().join("api")).unwrap();
        trust_ca(&api, &self.data_dir().join("ca.pem"));
        // Reads answer before the one-member group has elected itself; a write would then be
        // refused with "retry shortly". Tests start writing at once, so wait for the leader.
        wait_for("the dev server to lead its group", || {
            let token = std::fs::read_to_string(self.data_dir().join("token")).ok()?;
            let api = std::fs::read_to_string(self.data_dir().join("api")).ok()?;
            let auth = format!("Bearer {}", token.trim());
            let (status, body) =
                request("GET", &api, "/v1/status", &[("Authorization", &auth)], None);
            let leader = serde_json::from_str::<Value>(&body).ok()?["leader"].clone();
            (status == 200 && !leader.is_null()).then_some(())
        });
    }

    /// Starts `outpost server` alone on loopback, and waits until it answers and leads: a
    /// control plane for [`AgentNode`]s. Client commands and waits work as on `dev`.
    pub fn start_server() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Dev {
            dir,
            child: None,
            role: "server",
        };
        dev.spawn(&[]);
        dev
    }

    /// Starts `outpost server` on a data dir made beforehand (a restore's), with `flags`
    /// (`--listen ADDR`), and waits until it answers and leads.
    pub fn start_server_in(dir: tempfile::TempDir, flags: &[&str]) -> Dev {
        let mut dev = Dev {
            dir,
            child: None,
            role: "server",
        };
        dev.spawn_dev(flags.iter().map(std::ffi::OsStr::new), &[]);
        dev
    }

    /// [`Dev::start_server`] with extra environment variables.
    pub fn start_server_with_env(env: &[(&str, &str)]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Dev {
            dir,
            child: None,
            role: "server",
        };
        dev.spawn_with(&[], env);
        dev
    }

    /// The server's API address and token, for an agent to join it.
    pub fn api_and_token(&self) -> (String, String) {
        let read = |name: &str| {
            let text = std::fs::read_to_string(self.data_dir().join(name)).unwrap();
            text.trim().to_string()
        };
        (read("api"), read("token"))
    }

    /// The node named `name` as `outpost nodes -o json` shows it.
    pub fn node_named(&self, name: &str) -> Option<Value> {
        let nodes = self.json(&["nodes"]);
        nodes
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
    }

    /// Waits until node `name` is in `state`.
    pub fn wait_node_state(&self, name: &str, state: &str) -> Value {
        wait_for(&format!("node {name} to be {state}"), || {
            self.node_named(name).filter(|n| n["state"] == state)
        })
    }

    /// The agent's node, once it is registered and ready.
    pub fn node(&self) -> Value {
        wait_for("the node to be registered and ready", || {
            self.json(&["nodes"])
                .as_array()?
                .iter()
                .find(|n| n["state"] == "ready")
                .cloned()
        })
    }

    /// Stops `dev` with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as u64, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + PATIENCE;
            while child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "outpost dev did not exit after SIGTERM"
                );
                std::thread::sleep(POLL);
            }
        }
    }

    /// Kills `dev` with SIGKILL: no chance to stop its tasks.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn(&[]);
    }

    pub fn restart_after_kill(&mut self) {
        self.kill();
        self.spawn(&[]);
    }

    /// Starts `dev` again on its data dir (after [`Dev::kill`]) without waiting for it; then
    /// [`Dev::wait_started`].
    pub fn launch_again(&mut self) {
        self.launch_dev(std::iter::empty(), &[]);
    }

    /// Kills `dev` and starts it again with extra environment variables.
    pub fn restart_after_kill_with(&mut self, env: &[(&str, &str)]) {
        self.kill();
        self.spawn_with(&[], env);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("dev.log")).unwrap_or_default()
    }

    pub fn try_cli(&self, args: &[&str]) -> Option<Output> {
        Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()
    }

    /// Runs a CLI command; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.try_cli(args).expect("cannot run outpost");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Runs a CLI command that must succeed, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(
            ok,
            "outpost {args:?} failed:\n{err}\n--- dev log ---\n{}",
            self.log()
        );
        out
    }

    /// Runs a CLI command that must fail, returning stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(
            !ok,
            "outpost {args:?} should have failed but printed:\n{out}"
        );
        err
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).unwrap()
    }

    /// Tasks of `service` the control plane wants running.
    pub fn tasks(&self, service: &str) -> Vec<Value> {
        let all = self.json(&["ps", service]);
        all.as_array()
            .unwrap()
            .iter()
            .filter(|t| t["desired"] == "running")
            .cloned()
            .collect()
    }

    /// Waits until `service` has exactly `n` running, ready tasks and returns them.
    pub fn wait_ready(&self, service: &str, n: usize) -> Vec<Value> {
        wait_for(&format!("{n} ready tasks of {service}"), || {
            let tasks = self.tasks(service);
            let ready = tasks
                .iter()
                .filter(|t| t["ready"] == true && t["state"] == "running")
                .count();
            (ready == n && tasks.len() == n).then_some(tasks)
        })
    }

    pub fn events(&self) -> Vec<Value> {
        self.json(&["events"]).as_array().unwrap().clone()
    }

    /// Waits for an event of `task` with `reason`.
    pub fn wait_event(&self, task: &str, reason: &str) -> Value {
        wait_for(&format!("event {reason} of {task}"), || {
            self.events()
                .into_iter()
                .find(|e| e["task"] == task && e["reason"] == reason)
        })
    }

    /// Writes a spec file into the data dir and returns its path.
    pub fn spec_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.data_dir().join(name);
        std::fs::write(
            &path,
            text.replace("DEMO_APP", &demo_app().display().to_string()),
        )
        .unwrap();
        path
    }

    pub fn deploy(&self, name: &str, text: &str) -> String {
        let path = self.spec_file(name, text);
        self.ok(&["deploy", "-f", path.to_str().unwrap()])
    }
}

/// Stops a process of a test the way an operator would, SIGTERM, and waits for it to exit (up
/// to [`PATIENCE`]); one that does not is killed. A frozen one is thawed first: it would never
/// act on SIGTERM.
pub fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + PATIENCE;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes the agent's empty cgroup folders, so test runs leave nothing under /sys/fs/cgroup.
pub fn remove_cgroups(data_dir: &Path) {
    remove_agent_cgroups(&data_dir.join("agent"));
}

/// Removes the empty cgroup folders of the agent whose data dir is `agent_dir`.
pub fn remove_agent_cgroups(agent_dir: &Path) {
    let Ok(agent) = std::fs::read_to_string(agent_dir.join("agent-id")) else {
        return;
    };
    let name = format!("outpost-{}", agent.trim());
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/pids",
    ] {
        let _ = std::fs::remove_dir(Path::new(root).join(&name));
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        remove_cgroups(self.dir.path());
        remove_containers(&self.dir.path().join("agent"));
    }
}

/// Containers outlive their agent by design, so a finished test removes those of the agent
/// whose data dir is `agent_dir`.
fn remove_containers(agent_dir: &Path) {
    let Ok(agent) = std::fs::read_to_string(agent_dir.join("agent-id")) else {
        return;
    };
    let filter = format!("label=outpost.agent={}", agent.trim());
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// Is a process with this pid alive (and not a zombie)?
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

pub fn sigkill(pid: u64) {
    signal(pid, nix::sys::signal::Signal::SIGKILL);
}

fn signal(pid: u64, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("kill {sig} {pid}: {e}"));
}

/// The CA certificate of each `https://` API a test started, by address, so that raw
/// requests check the server as the CLI does.
static CAS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Trust `ca` (a PEM file) for raw requests to `base`.
pub fn trust_ca(base: &str, ca: &Path) {
    let addr = bare(base).to_string();
    CAS.lock().unwrap().push((addr, ca.to_path_buf()));
}

fn bare(base: &str) -> &str {
    base.trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
}

/// A client certificate and key (PEM files) to present.
pub struct ClientCert<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// The rustls configuration for `base`: `None` for `http://`.
fn tls_for(base: &str, me: Option<&ClientCert>) -> Option<std::sync::Arc<rustls::ClientConfig>> {
    if !base.trim().starts_with("https://") {
        return None;
    }
    let addr = bare(base);
    let ca = CAS
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(a, _)| a == addr)
        .map(|(_, ca)| ca.clone())
        .unwrap_or_else(|| panic!("no CA known for {base}: call support::trust_ca first"));
    let ca = std::fs::read_to_string(ca).unwrap();
    let me = me.map(|c| pki::Identity {
        cert_pem: std::fs::read_to_string(c.cert).unwrap(),
        key_pem: std::fs::read_to_string(c.key).unwrap(),
    });
    let mut config = pki::tls::client_config(&ca, me.as_ref()).unwrap();
    // These requests are written by hand as HTTP/1.1: do not let the server pick HTTP/2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(std::sync::Arc::new(config))
}

/// A raw HTTP/1.1 request to `base` (`http://` or `https://127.0.0.1:PORT`); returns
/// (status, body).
pub fn request(
    method: &str,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let (status, _, body) = request_as(None, method, base, path, headers, body);
    (status, body)
}

/// [`request`] presenting a client certificate; returns (status, head, body).
pub fn request_as(
    me: Option<&ClientCert>,
    method: &str,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = bare(base);
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut stream: Box<dyn ReadWrite> = match tls_for(base, me) {
        None => Box::new(tcp),
        Some(config) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
            let conn = rustls::ClientConnection::new(config, name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(head.as_bytes()).unwrap();
    // Read to the end; a TLS peer that closes without close_notify still sent its answer.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&raw).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    (status, head, body)
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// A client of the API in `data_dir` (its `api`, `token` and `ca.pem`), as the CLI makes one.
pub fn api_client(data_dir: &Path) -> client::Client {
    let read = |f: &str| std::fs::read_to_string(data_dir.join(f)).unwrap();
    let ca = read("ca.pem");
    pki::install_default();
    client::Client::with_tls(
        read("api").trim(),
        read("token").trim(),
        pki::tls::client_config(&ca, None).unwrap(),
    )
}

/// A GET on loopback; `None` when nothing answers.
pub fn http_get(port: u64, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port as u16)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The local test image: the demo app, linked statically, in a `FROM scratch` image built here
/// (no registry is ever needed). `None` (with the reason printed) when no Docker Engine answers
/// on a developer machine; under CI a missing engine fails the test instead.
pub fn docker_image() -> Option<&'static str> {
    static IMAGE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    match IMAGE.get_or_init(build_image) {
        Ok(()) => Some(TEST_IMAGE),
        Err(reason) if std::env::var_os("CI").is_some() => {
            panic!("Docker tests must run under CI: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping a Docker test: {reason}");
            None
        }
    }
}

pub const TEST_IMAGE: &str = "outpost-demo:test";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The folder holding `outpost` and the demo app linked statically, to run in an empty
/// (`FROM scratch`) image: the binaries under test themselves, which the repository's cargo
/// config links statically (`.cargo/static-bins`). Where they are not (a `RUSTC_WRAPPER` of
/// one's own replaces that script), both are built with glibc's `crt-static` into
/// `target/static`, once per test binary.
pub fn static_binaries() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let here = outpost_bin();
            if is_static(&here)? && is_static(&demo_app())? {
                return Ok(here.parent().unwrap_or(&here).to_path_buf());
            }
            let root = workspace_root();
            let target = root.join("target").join("static");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(Command::new(cargo)
                .current_dir(&root)
                .args(["build", "--quiet", "-p", "outpost", "-p", "demo-app"])
                .args(["--target", "x86_64-unknown-linux-gnu"])
                .env("CARGO_TARGET_DIR", &target)
                .env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
            Ok(target.join("x86_64-unknown-linux-gnu").join("debug"))
        })
        .clone()
}

/// Whether the ELF executable at `path` needs no dynamic loader (it has no `PT_INTERP`
/// program header).
pub fn is_static(path: &Path) -> Result<bool, String> {
    let elf = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |at: usize| {
        (elf.get(at..at + 8)).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
    };
    let header = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let (Some(table), Some(size), Some(count), true) = (
        header.0,
        header.1,
        header.2,
        elf.starts_with(b"\x7fELF\x02\x01"),
    ) else {
        return Err(format!(
            "{} is not a 64-bit little-endian ELF file",
            path.display()
        ));
    };
    const PT_INTERP: u32 = 3;
    Ok((0..count).all(|i| {
        let at = table + i * size;
        elf.get(at..at + 4)
            .is_none_or(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
    }))
}

fn build_image() -> Result<(), String> {
    run(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
        .map_err(|e| format!("no Docker Engine answers ({e})"))?;
    let bin = static_binaries()?;
    let context = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy(bin.join("demo-app"), context.path().join("demo-app"))
        .map_err(|e| format!("cannot copy the static demo-app: {e}"))?;
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY demo-app /demo-app\nUSER 65534\nENTRYPOINT [\"/demo-app\"]\nCMD [\"--port\", \"8080\"]\n",
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("docker")
        .args(["build", "-q", "-t", TEST_IMAGE])
        .arg(context.path()))?;
    Ok(())
}

/// `docker inspect` of a container, as JSON.
pub fn docker_inspect(id: &str) -> Value {
    let out = run(Command::new("docker").args(["inspect", id])).unwrap();
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

/// Ids of every container (running or not) labelled with this agent's id.
pub fn agent_containers(dev: &Dev) -> Vec<String> {
    let agent = std::fs::read_to_string(dev.data_dir().join("agent").join("agent-id")).unwrap();
    let out = run(Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label=outpost.agent={}", agent.trim())))
    .unwrap();
    out.lines().map(str::to_string).collect()
}

impl Dev {
    /// Starts `outpost dev` with extra environment variables (as an operator's shell might
    /// hold secrets), and waits until its API answers.
    pub fn start_with_env(env: &[(&str, &str)]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Dev {
            dir,
            child: None,
            role: "dev",
        };
        dev.spawn_with(&[], env);
        dev
    }

    /// Starts `outpost dev` with flags of its own (`--max-replicas 5`), and waits until its
    /// API answers.
    pub fn start_with_flags(flags: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Dev {
            dir,
            child: None,
            role: "dev",
        };
        dev.spawn_dev(flags.iter().map(std::ffi::OsStr::new), &[]);
        dev
    }

    /// Stops dev cleanly and starts it again on the same data dir with `flags`.
    pub fn restart_with_flags(&mut self, flags: &[&str]) {
        self.stop();
        self.spawn_dev(flags.iter().map(std::ffi::OsStr::new), &[]);
    }

    /// This dev's agent id, which marks every process its agent starts.
    pub fn agent_id(&self) -> String {
        let path = self.data_dir().join("agent").join("agent-id");
        wait_for("the agent id", || std::fs::read_to_string(&path).ok())
            .trim()
            .to_string()
    }

    /// Every live process this dev's agent started (marked with its agent id), tasks' forks
    /// included.
    pub fn task_processes(&self) -> Vec<TaskProcess> {
        marked_processes(&self.agent_id())
    }
}

/// A live process found by the agent's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskProcess {
    pub pid: u64,
    pub pgrp: u64,
    /// Its `OUTPOST_TASK_ID`.
    pub task: String,
}

/// Live processes whose environment holds `OUTPOST_AGENT_ID=<agent_id>`.
pub fn marked_processes(agent_id: &str) -> Vec<TaskProcess> {
    let mark = format!("OUTPOST_AGENT_ID={agent_id}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if !vars.contains(&mark) || !alive(pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let pgrp = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(2))
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let task = vars
            .iter()
            .find_map(|v| v.strip_prefix("OUTPOST_TASK_ID="))
            .unwrap_or_default()
            .to_string();
        out.push(TaskProcess { pid, pgrp, task });
    }
    out
}

impl Dev {
    /// The pid of the running `outpost dev`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("dev is running").id()
    }
}

/// An `outpost agent` process of its own, joined to a server started with
/// [`Dev::start_server`], with its own data dir. Its tasks are processes of their own too: a
/// crash of the agent (SIGKILL) leaves them running unless the test kills them as well.
pub struct AgentNode {
    pub name: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Host ports this agent hands its tasks, apart from every other agent's in the test.
    task_ports: String,
    /// The server's address and the agent join token, read at the first start.
    join: (String, String),
}

impl AgentNode {
    /// Starts agent `name` against `server`, handing its tasks ports from `task_ports`
    /// (`FIRST-LAST`), and waits until its node is ready.
    pub fn start(server: &Dev, name: &str, task_ports: &str) -> AgentNode {
        let mut agent = AgentNode {
            name: name.to_string(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            task_ports: task_ports.to_string(),
            join: (String::new(), String::new()),
        };
        let (api, _) = server.api_and_token();
        agent.join = (
            api.trim_start_matches("https://").to_string(),
            server.ok(&["token", "show", "agent"]).trim().to_string(),
        );
        agent.spawn(server);
        agent
    }

    fn spawn(&mut self, server: &Dev) {
        self.launch();
        server.wait_node_state(&self.name, "ready");
    }

    /// Starts the agent process without waiting for a server to see it.
    fn launch(&mut self) {
        // The first start joins with the agent join token; later ones reconnect with the
        // certificate kept in the data dir, which `--join` and `--token` do not override.
        let (join, token) = &self.join;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["agent", "--join", join, "--token", token])
            .args(["--name", &self.name])
            .args(["--task-ports", &self.task_ports])
            .env("OUTPOST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The agent's id, which marks every process it starts.
    pub fn agent_id(&self) -> String {
        let path = self.dir.path().join("agent-id");
        wait_for("the agent id", || std::fs::read_to_string(&path).ok())
            .trim()
            .to_string()
    }

    /// Every live process this agent started.
    pub fn task_processes(&self) -> Vec<TaskProcess> {
        marked_processes(&self.agent_id())
    }

    /// A crash of the node: SIGKILL of the agent, then of every process it started. Returns
    /// the processes killed.
    pub fn crash(&mut self) -> Vec<TaskProcess> {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let killed = self.task_processes();
        for p in &killed {
            sigkill(p.pid);
        }
        wait_for("the crashed node's processes to be gone", || {
            self.task_processes().is_empty().then_some(())
        });
        killed
    }

    /// Starts the agent again on the same data dir, as a node that reboots and comes back.
    pub fn restart(&mut self, server: &Dev) {
        assert!(self.child.is_none(), "crash the agent first");
        self.spawn(server);
    }

    /// Starts the agent again on the same data dir while no server answers, as a node that
    /// reboots cut off.
    pub fn restart_cut_off(&mut self) {
        assert!(self.child.is_none(), "crash the agent first");
        self.launch();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        // Whatever a failed test left running of this node goes with it.
        if let Ok(id) = std::fs::read_to_string(self.dir.path().join("agent-id")) {
            for p in marked_processes(id.trim()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        remove_agent_cgroups(self.dir.path());
        remove_containers(self.dir.path());
    }
}

/// Whether this process may make mount namespaces (root, util-linux `unshare`), as process
/// tasks' own resolver needs; skipped with the reason printed, but failed under CI.
pub fn root_with_unshare() -> bool {
    let works = Command::new("unshare")
        .args(["--mount", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    match works {
        true => true,
        false if std::env::var_os("CI").is_some() => {
            panic!("tests of a task's own resolver must run under CI, as root with unshare")
        }
        false => {
            eprintln!("skipping: not root, or no util-linux unshare");
            false
        }
    }
}
