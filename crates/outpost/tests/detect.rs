//! Node failure detection through the real binary: one `outpost server` and three
//! `outpost agent` processes on loopback, each on its own ports. An operator kills, freezes or
//! cuts off an agent and watches `outpost nodes`: a killed or frozen agent is `down`, a thawed
//! one `ready` again, and one whose heartbeats cannot reach the server while its API answers
//! is `unreachable`. The others stay as they were.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{outpost_bin, wait_for};

/// How long agents beat before a fault: ten beats at the default pace.
const HISTORY: Duration = Duration::from_secs(5);

/// A process of the cluster, with its own data dir and log.
struct Proc {
    child: Child,
    dir: tempfile::TempDir,
}

impl Proc {
    fn spawn(args: &[&str], dir: tempfile::TempDir, data_dir: &Path) -> Proc {
        let log = std::fs::File::create(dir.path().join("out.log")).unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("OUTPOST_LOG", "info,server::controller=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc { child, dir }
    }

    fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("{sig} {pid}: {e}"));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        support::stop_child(&mut self.child);
        support::remove_cgroups(self.dir.path());
    }
}

struct Cluster {
    server: Proc,
    /// HOST:PORT of the server's API, as `agent --join` takes it.
    api: String,
    /// The agent join token (`outpost token show agent`).
    token: String,
    agents: Vec<(String, Proc)>,
}

impl Cluster {
    /// A server and agents `a1`, `a2`, `a3`, all ready.
    fn start() -> Cluster {
        let mut cluster = Cluster::server();
        cluster.agents(&[]);
        cluster
    }

    /// A server alone, its API answering.
    fn server() -> Cluster {
        Cluster::server_with(&[])
    }

    /// A server alone started with `extra` flags (`--advertise ADDR`), its API answering.
    fn server_with(extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let mut args = vec!["--api", "127.0.0.1:0", "server"];
        args.extend_from_slice(extra);
        let server = Proc::spawn(&args, dir, &data);
        // Whole once it ends its line: it may be read while being written.
        let api = wait_for("the server's API file", || {
            std::fs::read_to_string(data.join("api"))
                .ok()
                .filter(|a| a.ends_with('\n'))
        })
        .trim()
        .trim_start_matches("https://")
        .to_string();
        let token = agent_token(&data);
        Cluster {
            server,
            api,
            token,
            agents: vec![],
        }
    }

    /// Agents `a1`, `a2`, `a3`, once all are ready. `through` maps an agent to the address it
    /// is to reach the server at instead (a proxy).
    fn agents(&mut self, through: &[(&str, String)]) {
        for name in ["a1", "a2", "a3"] {
            let api = (through.iter())
                .find(|(n, _)| *n == name)
                .map_or(self.api.clone(), |(_, a)| a.clone());
            self.add_agent(name, &api);
        }
        wait_for("three ready nodes", || {
            let nodes = self.nodes();
            (nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "ready")).then_some(())
        });
        // Faults strike a cluster that has run a while: the leader has learned each node's
        // pace from a few seconds of beats, rather than judging by its prior for a node just met.
        wait_for("a few seconds of heartbeats", || {
            let nodes = self.nodes();
            let old = |n: &Value| {
                let registered = n["registered_at"].as_str()?;
                let at = humantime::parse_rfc3339_weak(registered).ok()?;
                let age = SystemTime::now().duration_since(at).ok()?;
                (age >= HISTORY).then_some(())
            };
            nodes.iter().all(|n| old(n).is_some()).then_some(())
        });
    }

    fn add_agent(&mut self, name: &str, api: &str) {
        let dir = tempfile::tempdir().unwrap();
        // `<dir>/agent`, where the support's clean-up finds the agent id.
        let data = dir.path().join("agent");
        let args = [
            "agent",
            "--join",
            api,
            "--token",
            &self.token,
            "--name",
            name,
            "--agent-listen",
            "127.0.0.1:0",
        ];
        let agent = Proc::spawn(&args, dir, &data);
        self.agents.push((name.to_string(), agent));
    }

    fn agent(&self, name: &str) -> &Proc {
        &self.agents.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn server_dir(&self) -> PathBuf {
        self.server.dir.path().to_path_buf()
    }

    /// `outpost -o json nodes`, as an operator on the server's host runs it.
    /// The agents' nodes (the server has a row of its own, `role: server`).
    fn nodes(&self) -> Vec<Value> {
        let out = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.server_dir())
            .args(["-o", "json", "nodes"])
            .output()
            .unwrap();
        if !out.status.success() {
            return vec![];
        }
        let nodes: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = nodes.as_array().cloned().unwrap_or_default();
        rows.into_iter().filter(|n| n["role"] != "server").collect()
    }

    fn node(&self, name: &str) -> Option<Value> {
        self.nodes().into_iter().find(|n| n["name"] == name)
    }

    /// Waits until `name` is in `state`, and returns its record.
    fn wait_state(&self, name: &str, state: &str) -> Value {
        let what = format!("{name} to be {state}");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(&what, || self.node(name).filter(|n| n["state"] == state))
        }));
        found.unwrap_or_else(|_| {
            panic!(
                "{what}: nodes {:#?}\n--- server log ---\n{}",
                self.nodes(),
                self.server.log()
            )
        })
    }

    /// The node-state changes of `name` the server recorded, as event messages.
    fn state_events(&self, name: &str) -> Vec<String> {
        let out = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.server_dir())
            .args(["-o", "json", "events", "--node", name])
            .output()
            .unwrap();
        let events: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (events.as_array().cloned().unwrap_or_default().iter())
            .filter(|e| e["reason"] == "node-state")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The other agents never went down and are ready.
    fn others_fine(&self, faulted: &str) {
        for (name, _) in self.agents.iter().filter(|(n, _)| n != faulted) {
            self.wait_state(name, "ready");
            let downs: Vec<String> = (self.state_events(name).into_iter())
                .filter(|m| m.contains("is down"))
                .collect();
            assert!(downs.is_empty(), "{name} was never faulted: {downs:?}");
        }
    }
}

/// The agent join token of the server whose data dir is `data`, once it leads and has
/// committed it.
fn agent_token(data: &Path) -> String {
    wait_for("the agent join token", || {
        let out = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(data)
            .args(["token", "show", "agent"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
}

/// How long after `at` the node's current state began (its `state_since`).
fn since(node: &Value, at: SystemTime) -> Duration {
    let state_since = node["state_since"].as_str().unwrap();
    let t = humantime::parse_rfc3339_weak(state_since).unwrap();
    t.duration_since(at).unwrap_or_default()
}

#[test]
fn a_killed_agent_is_down_and_the_others_stay_ready() {
    let cluster = Cluster::start();
    let ready = cluster.node("a2").unwrap();
    let age = ready["last_heartbeat_age_ms"].as_u64().expect("an age");
    assert!(age < 5_000, "a live node beats: {ready}");
    assert!(ready["phi"].as_f64().expect("a phi") < 3.0, "{ready}");
    let table = String::from_utf8(
        Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(cluster.server_dir())
            .arg("nodes")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        table.contains("HEARTBEAT") && table.contains("s ago"),
        "{table}"
    );

    let killed = SystemTime::now();
    cluster.agent("a2").signal(Signal::SIGKILL);
    let down = cluster.wait_state("a2", "down");
    let took = since(&down, killed);
    println!("kill -9 of an agent → down in {} ms", took.as_millis());
    assert!(down["phi"].as_f64().unwrap() >= 8.0, "{down}");
    assert!(
        cluster
            .state_events("a2")
            .iter()
            .any(|m| m.contains("suspect")),
        "suspect first: {:?}",
        cluster.state_events("a2")
    );
    // The route the leader asks peers with: a3 reaches a1's agent API, not the dead a2's.
    let address = |name: &str| {
        cluster.node(name).unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Over mutual TLS, as the leader asks: with the server's certificate.
    let ca = cluster.server_dir().join("ca.pem");
    support::trust_ca(&address("a3"), &ca);
    let (server_cert, server_key) = (
        cluster.server_dir().join("node.pem"),
        cluster.server_dir().join("node-key.pem"),
    );
    let as_server = support::ClientCert {
        cert: &server_cert,
        key: &server_key,
    };
    let a1_dir = cluster.agent("a1").dir.path().join("agent");
    let (a1_cert, a1_key) = (a1_dir.join("node.pem"), a1_dir.join("node-key.pem"));
    let as_agent = support::ClientCert {
        cert: &a1_cert,
        key: &a1_key,
    };
    let probe = |target: &str, me: &support::ClientCert| {
        let body = serde_json::json!({ "address": target }).to_string();
        let (status, _, text) = support::request_as(
            Some(me),
            "POST",
            &address("a3"),
            "/v1/agent/probe",
            &[],
            Some(&body),
        );
        (status, text)
    };
    let (status, body) = probe(&address("a1"), &as_server);
    assert_eq!((status, body.as_str()), (200, r#"{"reached":true}"#));
    let (status, body) = probe(&address("a2"), &as_server);
    assert_eq!((status, body.as_str()), (200, r#"{"reached":false}"#));
    let (status, body) = probe(&address("a1"), &as_agent);
    assert_eq!(
        status, 403,
        "only servers may ask an agent to probe: {body}"
    );
    let (status, _) = support::request("POST", &address("a3"), "/v1/agent/probe", &[], Some("{}"));
    assert_eq!(status, 0, "no answer without a client certificate");
    let (status, body) = probe("ftp://somewhere", &as_server);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("address"), "{body}");
    cluster.others_fine("a2");
}

#[test]
fn a_heartbeat_outside_its_bounds_is_refused_before_the_agent_starts() {
    for (every, needle) in [
        ("5s", "--heartbeat \"5s\" is outside 100ms to 2s"),
        ("10ms", "--heartbeat \"10ms\" is outside 100ms to 2s"),
        (
            "often",
            "--heartbeat \"often\" is not a duration like 500ms",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--api", "http://127.0.0.1:9", "--token", "t", "agent"])
            .args(["--heartbeat", every])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{every}: {err}"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{every}: refused before anything was made"
        );
    }
}

#[test]
fn a_frozen_agent_is_down_and_ready_again_once_thawed() {
    let cluster = Cluster::start();
    let frozen = SystemTime::now();
    cluster.agent("a3").signal(Signal::SIGSTOP);
    let down = cluster.wait_state("a3", "down");
    println!(
        "SIGSTOP of an agent → down in {} ms",
        since(&down, frozen).as_millis()
    );
    let thawed = SystemTime::now();
    cluster.agent("a3").signal(Signal::SIGCONT);
    let ready = cluster.wait_state("a3", "ready");
    println!(
        "SIGCONT → ready in {} ms",
        since(&ready, thawed).as_millis()
    );
    cluster.others_fine("a3");
}

#[test]
fn an_agent_whose_heartbeats_are_cut_but_whose_api_answers_is_unreachable() {
    // The server advertises the proxy's address: the group's servers an agent learns (to
    // carry on through another) are all behind the proxy for a1, as for a node cut off from
    // every server. The others were given the server's own address and keep to it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let advertised = listener.local_addr().unwrap().to_string();
    let mut cluster = Cluster::server_with(&["--advertise", &advertised]);
    let server: SocketAddr = cluster.api.parse().unwrap();
    let proxy = Proxy::start(listener, server);
    // The agent joins through the proxy too: it checks the server's certificate by its role,
    // not by the address dialled, and its heartbeats and reports go over mutual TLS.
    cluster.agents(&[("a1", proxy.addr.to_string())]);
    let cut = SystemTime::now();
    proxy.cut(true);
    let unreachable = cluster.wait_state("a1", "unreachable");
    println!(
        "heartbeats cut → unreachable in {} ms",
        since(&unreachable, cut).as_millis()
    );
    let downs: Vec<String> = (cluster.state_events("a1").into_iter())
        .filter(|m| m.contains("is down"))
        .collect();
    assert!(downs.is_empty(), "its API answered all along: {downs:?}");
    proxy.cut(false);
    cluster.wait_state("a1", "ready");
    cluster.others_fine("a1");
}

/// A userspace TCP proxy in front of the server, for one agent: it forwards both ways until
/// cut, then closes what it carries and every connection it is offered, until restored.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards what `listener` (a port of its own) is offered to `target`.
    fn start(listener: TcpListener, target: SocketAddr) -> Proxy {
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                pump(&client, &server, &flag);
                pump(&server, &client, &flag);
            }
        });
        Proxy { addr, cut }
    }

    fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread of its own until either end closes or the proxy is cut.
fn pump(from: &TcpStream, to: &TcpStream, cut: &Arc<AtomicBool>) {
    let (mut from, mut to, cut) = (
        from.try_clone().unwrap(),
        to.try_clone().unwrap(),
        cut.clone(),
    );
    std::thread::spawn(move || {
        from.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if cut.load(Ordering::SeqCst) {
                break;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
