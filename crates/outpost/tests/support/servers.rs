//! `outpost server` processes on loopback as an operator runs them over mutual TLS: the first
//! founds a cluster (its data dir gets the CA, the admin token and both join tokens), others
//! `server join ADDR --token SERVER_TOKEN`; the CLI reaches them with `--api` + `--ca` + the
//! admin `--token`, as from another machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{outpost_bin, request, trust_ca};

/// Far above what elections, joins and catch-up take on a loaded 2-core machine.
pub const CLUSTER_PATIENCE: Duration = Duration::from_secs(90);

/// [`super::wait_within`] with [`CLUSTER_PATIENCE`].
pub fn wait_long<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    super::wait_within(CLUSTER_PATIENCE, what, check)
}

/// One `outpost server` process and its data dir.
pub struct ServerProc {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// HOST:PORT it listens on; port 0 until the first start picked one, kept across restarts
    /// (the group knows the server by this address).
    pub listen: String,
}

impl ServerProc {
    /// Founds a cluster: `outpost server` on a fresh data dir creates its CA and tokens.
    pub fn found() -> ServerProc {
        let mut s = ServerProc::new();
        s.spawn(&[], &[]);
        s
    }

    /// Joins the group of the server at `target` (HOST:PORT) with the server join token.
    pub fn join(target: &str, server_token: &str) -> ServerProc {
        let mut s = ServerProc::new();
        s.spawn(&["--token", server_token], &["join", target]);
        s
    }

    pub fn new() -> ServerProc {
        ServerProc {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            listen: "127.0.0.1:0".into(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://HOST:PORT`.
    pub fn api(&self) -> String {
        format!("https://{}", self.listen)
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("ca.pem")
    }

    /// Starts the server (`server [join ADDR] --listen …`) and waits until its `api` file says
    /// it is up (written once it serves, and for a join once it is a voter).
    pub fn spawn(&mut self, global: &[&str], action: &[&str]) {
        let _ = std::fs::remove_file(self.data_dir().join("api"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir().join("server.log"))
            .unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(global)
            .arg("server")
            .args(action)
            .args(["--listen", &self.listen])
            .env("OUTPOST_LOG", "info")
            .env_remove("OUTPOST_TOKEN")
            .env_remove("OUTPOST_API")
            .env_remove("OUTPOST_CA")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let api = wait_long("the server to answer", || {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the server exited with {status}:\n{}", self.log());
            }
            (std::fs::read_to_string(self.data_dir().join("api")).ok())
                .filter(|a| !a.trim().is_empty())
        });
        let api = api.trim();
        self.listen = api.trim_start_matches("https://").to_string();
        trust_ca(api, &self.ca());
    }

    /// A plain restart: `outpost server --data-dir D --listen ADDR`, no join.
    pub fn restart(&mut self) {
        self.spawn(&[], &[]);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops the server as an operator or a service manager does: SIGTERM, then waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::stop_child(&mut child);
        }
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("server.log")).unwrap_or_default()
    }

    /// The admin token, as this server keeps it in its data dir.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `outpost token show ROLE` (server, agent, admin) through this server's data dir.
    pub fn join_token(&self, role: &str) -> String {
        self.try_join_token(role)
            .unwrap_or_else(|err| panic!("token show {role}: {err}"))
    }

    /// [`ServerProc::join_token`], or what the CLI said when it failed (no leader yet, say).
    pub fn try_join_token(&self, role: &str) -> Result<String, String> {
        let out = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["token", "show", role])
            .env_remove("OUTPOST_TOKEN")
            .env_remove("OUTPOST_API")
            .env_remove("OUTPOST_CA")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The CLI against this server only, with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        cli(&self.api(), &self.ca(), token, args)
    }

    pub fn json(&self, token: &str, args: &[&str]) -> Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.cli(token, &full);
        assert!(
            out.status.success(),
            "outpost {args:?} against {} failed: {}\n--- server log ---\n{}",
            self.listen,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Raft ids of the servers `nodes` shows, and the leader's, as this server answers.
    pub fn servers(&self, token: &str) -> (Vec<u64>, Vec<u64>) {
        let rows = self.json(token, &["nodes"]);
        let servers: Vec<&Value> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["role"] == "server")
            .collect();
        let ids = servers
            .iter()
            .filter_map(|r| r["server_id"].as_u64())
            .collect();
        let leaders = servers
            .iter()
            .filter(|r| r["leader"] == true)
            .filter_map(|r| r["server_id"].as_u64())
            .collect();
        (ids, leaders)
    }

    /// `GET /v1/status` of this server over TLS: its id, the leader it knows, its applied index.
    pub fn status(&self, token: &str) -> Option<Value> {
        std::net::TcpStream::connect(&self.listen).ok()?;
        let auth = format!("Bearer {token}");
        let (code, body) = request(
            "GET",
            &self.api(),
            "/v1/status",
            &[("Authorization", &auth)],
            None,
        );
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::stop_child(&mut child);
        }
    }
}

/// The CLI against `api` (one address or several, comma-separated), checking the servers
/// against `ca`, with `token`.
pub fn cli(api: &str, ca: &Path, token: &str, args: &[&str]) -> Output {
    Command::new(outpost_bin())
        .args(["--api", api, "--token", token, "--ca"])
        .arg(ca)
        .args(args)
        .env_remove("OUTPOST_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run outpost")
}

/// Waits until every server in `servers` shows the same `expected` servers and one leader
/// among them; returns the leader's id.
pub fn wait_agreed(servers: &[&ServerProc], token: &str, expected: &[u64]) -> u64 {
    wait_long(
        "every server to show the same members and one leader",
        || {
            let mut leader = None;
            for s in servers {
                let (mut ids, leaders) = s.servers(token);
                ids.sort_unstable();
                if ids != expected || leaders.len() != 1 {
                    return None;
                }
                if leader.is_some_and(|l| l != leaders[0]) {
                    return None;
                }
                leader = Some(leaders[0]);
            }
            leader
        },
    )
}
