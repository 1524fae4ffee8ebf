//! Joining securely, as an operator does it with the real binary on loopback: `server init`,
//! `token show`, agents joining with the agent token over TLS, and every refusal the cluster
//! owes them — each with its error text and no change to what `nodes` and `ps` show.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use support::{ClientCert, demo_app, outpost_bin, request, request_as, trust_ca, wait_for};

/// `outpost server` in a data dir made by `outpost server init`.
struct Cluster {
    root: tempfile::TempDir,
    server: Option<Child>,
}

impl Cluster {
    fn start() -> Cluster {
        let cluster = Cluster {
            root: tempfile::tempdir().unwrap(),
            server: None,
        };
        let init = cluster.run(&[
            "--data-dir",
            cluster.dir().to_str().unwrap(),
            "server",
            "init",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(init.status.success(), "{}", utf8(&init.stderr));
        cluster.spawn()
    }

    fn spawn(mut self) -> Cluster {
        let _ = std::fs::remove_file(self.dir().join("api"));
        let log = std::fs::File::create(self.root.path().join("server.log")).unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(self.dir())
            .args(["server", "--listen", "127.0.0.1:0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        let api = wait_for("the server to write its address", || {
            std::fs::read_to_string(self.dir().join("api")).ok()
        });
        trust_ca(&api, &self.dir().join("ca.pem"));
        wait_for("the server to answer and lead", || {
            let out = self.cli(&["-o", "json", "nodes"]);
            out.status.success().then_some(())
        });
        self
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("server")
    }

    fn api(&self) -> String {
        std::fs::read_to_string(self.dir().join("api"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// HOST:PORT of the API, as `--join` takes it.
    fn addr(&self) -> String {
        self.api().trim_start_matches("https://").to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(outpost_bin())
            .args(args)
            .current_dir(self.root.path())
            .env_remove("OUTPOST_TOKEN")
            .env_remove("OUTPOST_API")
            .env_remove("OUTPOST_CA")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A CLI command against this server through its data dir.
    fn cli(&self, args: &[&str]) -> Output {
        let dir = self.dir();
        let mut full = vec!["--data-dir", dir.to_str().unwrap()];
        full.extend_from_slice(args);
        self.run(&full)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "outpost {args:?} failed:\n{}\n--- server log ---\n{}",
            utf8(&out.stderr),
            self.log()
        );
        utf8(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).unwrap()
    }

    fn token(&self, role: &str) -> String {
        self.ok(&["token", "show", role]).trim().to_string()
    }

    /// The agents' node names and addresses, which a refused request must leave as they were
    /// (the server's own row, `role: server`, is not an agent's).
    fn nodes(&self) -> Vec<(String, String)> {
        let nodes = self.json(&["nodes"]);
        let mut out: Vec<(String, String)> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["role"] != "server")
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_string(),
                    n["address"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Task ids and their nodes.
    fn tasks(&self) -> Vec<(String, String)> {
        let tasks = self.json(&["ps", "--all"]);
        tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    t["node"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn wait_node(&self, name: &str) {
        wait_for(&format!("node {name} to be ready"), || {
            let nodes = self.json(&["nodes"]);
            nodes
                .as_array()?
                .iter()
                .any(|n| n["name"] == name && n["state"] == "ready")
                .then_some(())
        });
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// Starts `outpost agent` named `name` in its own data dir with `args` (`--join`, `--token`).
    fn agent(&self, name: &str, args: &[&str]) -> Agent {
        let dir = self.root.path().join(name);
        Agent::spawn(dir, name, args)
    }

    /// An agent joined with the agent token and registered.
    fn joined_agent(&self, name: &str) -> Agent {
        let token = self.token("agent");
        let agent = self.agent(name, &["--join", &self.addr(), "--token", &token]);
        self.wait_node(name);
        agent
    }

    fn admin_auth(&self) -> String {
        format!("Bearer {}", self.token("admin"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            support::stop_child(&mut child);
        }
    }
}

struct Agent {
    dir: PathBuf,
    name: String,
    child: Option<Child>,
}

impl Agent {
    fn spawn(dir: PathBuf, name: &str, args: &[&str]) -> Agent {
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(&dir)
            .args(["agent", "--name", name, "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("OUTPOST_TOKEN")
            .env_remove("OUTPOST_API")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent {
            dir,
            name: name.to_string(),
            child: Some(child),
        }
    }

    /// Waits for the agent to exit; returns whether it succeeded and what it logged.
    fn exit(&mut self) -> (bool, String) {
        let mut child = self.child.take().unwrap();
        let status = wait_for(&format!("agent {} to exit", self.name), || {
            child.try_wait().unwrap()
        });
        (status.success(), self.log())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    fn cert(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("node.pem"), self.dir.join("node-key.pem"))
    }

    /// Stops it (SIGTERM) and starts it again with `args`.
    fn restart(&mut self, args: &[&str]) {
        if let Some(mut child) = self.child.take() {
            support::stop_child(&mut child);
        }
        *self = Agent::spawn(self.dir.clone(), &self.name.clone(), args);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            support::stop_child(&mut child);
        }
        support::remove_agent_cgroups(&self.dir);
    }
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const WEB: &str = r#"
name: web
replicas: 4
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
readiness: { http: { path: /healthz, port: http }, period: 200ms }
"#;

fn deploy(cluster: &Cluster, spec: &str) {
    let file = cluster.root.path().join("web.yaml");
    std::fs::write(
        &file,
        spec.replace("DEMO_APP", &demo_app().display().to_string()),
    )
    .unwrap();
    cluster.ok(&["deploy", "-f", file.to_str().unwrap()]);
}

fn ready_on(cluster: &Cluster, service: &str) -> Vec<String> {
    let tasks = cluster.json(&["ps", service]);
    let mut nodes: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ready"] == true && t["desired"] == "running")
        .map(|t| t["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn agents_join_with_the_agent_token_and_run_what_is_deployed() {
    let cluster = Cluster::start();
    let token = cluster.token("agent");
    let digest =
        pki::ca_digest(&std::fs::read_to_string(cluster.dir().join("ca.pem")).unwrap()).unwrap();
    assert!(
        token.starts_with(&format!("OUTPOST-1-{digest}-")),
        "the token names the CA: {token}"
    );
    let shown = cluster.ok(&["token", "show", "agent"]);
    assert_eq!(shown, format!("{token}\n"), "the token alone on stdout");
    assert_ne!(cluster.token("server"), token);
    let admin = std::fs::read_to_string(cluster.dir().join("token")).unwrap();
    assert_eq!(cluster.token("admin"), admin.trim());

    let a1 = cluster.joined_agent("a1");
    let _a2 = cluster.joined_agent("a2");
    deploy(&cluster, WEB);
    wait_for("4 ready replicas, 2 on each agent", || {
        (ready_on(&cluster, "web") == ["a1", "a1", "a2", "a2"]).then_some(())
    });
    // Logs come from the agents over mutual TLS.
    let logs = cluster.ok(&["logs", "web"]);
    assert!(logs.contains("listening on port"), "{logs}");
    for addr in cluster.nodes().iter().map(|(_, a)| a) {
        assert!(addr.starts_with("https://"), "{addr}");
    }
    // Owner-only files on both sides.
    for file in [
        "ca.pem",
        "ca-key.pem",
        "node.pem",
        "node-key.pem",
        "token",
        "join-agent",
        "join-server",
    ] {
        assert_eq!(mode(&cluster.dir().join(file)), 0o600, "{file}");
    }
    for file in ["ca.pem", "node.pem", "node-key.pem", "server"] {
        assert_eq!(mode(&a1.dir.join(file)), 0o600, "agent's {file}");
    }
    assert_eq!(mode(&a1.dir), 0o700);
    assert!(
        !a1.dir.join("ca-key.pem").exists(),
        "an agent never holds the CA key"
    );
}

#[test]
fn a_wrong_token_is_refused_and_nothing_changes() {
    let cluster = Cluster::start();
    let good = cluster.token("agent");
    let (head, _) = good.rsplit_once('-').unwrap();
    let wrong = format!("{head}-{}", "0".repeat(48));
    let mut agent = cluster.agent("a1", &["--join", &cluster.addr(), "--token", &wrong]);
    let (ok, log) = agent.exit();
    assert!(!ok);
    assert!(
        log.contains("the agent join token is wrong or was rotated"),
        "{log}"
    );
    assert!(log.contains("outpost token show agent"), "{log}");
    assert!(!agent.dir.join("node.pem").exists());
    assert!(cluster.nodes().is_empty());

    let mut agent = cluster.agent("a2", &["--join", &cluster.addr(), "--token", "SWMTKN-1-x"]);
    let (ok, log) = agent.exit();
    assert!(!ok);
    assert!(log.contains("does not start with OUTPOST-1-"), "{log}");
    assert!(cluster.nodes().is_empty());
}

#[test]
fn a_token_of_another_cluster_is_refused_before_its_secret_is_sent() {
    let cluster = Cluster::start();
    let other = Cluster::start();
    let foreign = other.token("agent");
    let mut agent = cluster.agent("a1", &["--join", &cluster.addr(), "--token", &foreign]);
    let (ok, log) = agent.exit();
    assert!(!ok);
    assert!(log.contains("not the one the token names"), "{log}");
    assert!(log.contains("the secret was not sent"), "{log}");
    assert!(cluster.nodes().is_empty());
}

#[test]
fn an_agent_token_does_not_join_a_server() {
    let cluster = Cluster::start();
    let agent_token = pki::JoinToken::parse(&cluster.token("agent")).unwrap();
    let body = serde_json::json!({
        "role": "server", "name": "s2", "secret": agent_token.secret, "hosts": ["127.0.0.1"],
    })
    .to_string();
    // A new cluster commits its tokens once it leads; until then a joiner hears 503.
    let (status, text) = wait_for("the tokens to be committed", || {
        let answer = request("POST", &cluster.api(), "/v1/join", &[], Some(&body));
        (answer.0 != 503).then_some(answer)
    });
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("this is the agent join token"), "{text}");
    assert!(text.contains("outpost token show server"), "{text}");
    // The server token does join as a server (its membership is another matter).
    let server_token = pki::JoinToken::parse(&cluster.token("server")).unwrap();
    let body = body.replace(&agent_token.secret, &server_token.secret);
    let (status, text) = request("POST", &cluster.api(), "/v1/join", &[], Some(&body));
    assert_eq!(status, 200, "{text}");
    let joined: Value = serde_json::from_str(&text).unwrap();
    assert!(
        joined["cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        joined["ca_key"].is_string(),
        "a server gets the CA key to sign in turn"
    );
    assert!(cluster.nodes().is_empty());
}

#[test]
fn a_rotated_token_no_longer_joins_and_the_new_one_does() {
    let cluster = Cluster::start();
    let old = cluster.token("agent");
    let new = cluster.ok(&["token", "rotate", "agent"]).trim().to_string();
    assert_ne!(old, new);
    assert_eq!(cluster.token("agent"), new);
    let mut agent = cluster.agent("a1", &["--join", &cluster.addr(), "--token", &old]);
    let (ok, log) = agent.exit();
    assert!(!ok);
    assert!(log.contains("wrong or was rotated"), "{log}");
    assert!(cluster.nodes().is_empty());

    let _agent = cluster.agent("a1", &["--join", &cluster.addr(), "--token", &new]);
    cluster.wait_node("a1");
    let err = utf8(&cluster.cli(&["token", "rotate", "admin"]).stderr);
    assert!(
        err.contains("\"admin\" is not one of server, agent"),
        "{err}"
    );
}

#[test]
fn an_agent_restarted_without_a_token_reconnects_with_its_certificate() {
    let cluster = Cluster::start();
    let mut agent = cluster.joined_agent("a1");
    // No token, no --join: the data dir holds the certificate and the server's address.
    agent.restart(&[]);
    deploy(&cluster, &WEB.replace("replicas: 4", "replicas: 2"));
    wait_for("2 ready replicas on the restarted agent", || {
        (ready_on(&cluster, "web") == ["a1", "a1"]).then_some(())
    });
    assert!(!agent.log().contains("error"), "{}", agent.log());
}

#[test]
fn a_removed_nodes_certificate_is_refused() {
    let cluster = Cluster::start();
    let agent = cluster.joined_agent("a1");
    let _other = cluster.joined_agent("a2");
    deploy(&cluster, &WEB.replace("replicas: 4", "replicas: 2"));
    wait_for("2 ready replicas", || {
        (ready_on(&cluster, "web").len() == 2).then_some(())
    });
    let out = cluster.ok(&["node", "rm", "a1"]);
    assert!(out.contains("node a1 removed"), "{out}");
    // Its replica is placed on the node that is left.
    wait_for("both replicas on a2", || {
        (ready_on(&cluster, "web") == ["a2", "a2"]).then_some(())
    });
    // The agent keeps trying, and is refused by its certificate; it never comes back.
    wait_for("the agent to be refused", || {
        agent
            .log()
            .contains("not one the cluster knows")
            .then_some(())
    });
    let (cert, key) = agent.cert();
    let me = ClientCert {
        cert: &cert,
        key: &key,
    };
    let (status, _, body) = request_as(
        Some(&me),
        "POST",
        &cluster.api(),
        "/v1/nodes/a1/heartbeat",
        &[],
        None,
    );
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked (`outpost node rm`)"), "{body}");
    assert_eq!(
        cluster
            .nodes()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["a2"]
    );
    let err = utf8(&cluster.cli(&["node", "rm", "a1"]).stderr);
    assert!(err.contains("no node named \"a1\""), "{err}");
}

#[test]
fn an_agent_acts_only_for_its_own_node_and_never_as_a_server() {
    let cluster = Cluster::start();
    let a1 = cluster.joined_agent("a1");
    let _a2 = cluster.joined_agent("a2");
    deploy(&cluster, &WEB.replace("replicas: 4", "replicas: 2"));
    wait_for("2 ready replicas", || {
        (ready_on(&cluster, "web").len() == 2).then_some(())
    });
    let (nodes, tasks) = (cluster.nodes(), cluster.tasks());
    let (cert, key) = a1.cert();
    let me = ClientCert {
        cert: &cert,
        key: &key,
    };
    let api = cluster.api();
    let call = |method: &str, path: &str, body: &str| {
        let (status, _, text) = request_as(Some(&me), method, &api, path, &[], Some(body));
        (status, text)
    };
    let report = r#"{"seq":99,"tasks":[],"events":[]}"#;
    let (status, text) = call("POST", "/v1/nodes/a2/status", report);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("node a1 may not act for node a2"), "{text}");
    let (status, text) = call("POST", "/v1/nodes/a2/heartbeat", "");
    assert_eq!(status, 403, "{text}");
    let (status, text) = call("GET", "/v1/nodes/a2/assignments", "");
    assert_eq!(status, 403, "{text}");
    let register = serde_json::json!({
        "name": "a2", "address": "https://127.0.0.1:1", "capacity": {"cpu_millis": 1000, "memory_bytes": 1 << 30},
        "allocatable": {"cpu_millis": 1000, "memory_bytes": 1 << 30}, "drivers": ["process"], "version": "x",
    })
    .to_string();
    let (status, text) = call("POST", "/v1/nodes", &register);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("may not register node a2"), "{text}");
    // Services are the admin's.
    let (status, text) = call("DELETE", "/v1/services/web", "");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("needs the admin token"), "{text}");
    // Raft is the servers': neither an agent nor the admin token may call it.
    let (status, text) = call("POST", "/v1/raft/vote", "{}");
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("only servers may call the Raft RPCs"),
        "{text}"
    );
    let auth = cluster.admin_auth();
    let (status, text) = request(
        "POST",
        &api,
        "/v1/raft/vote",
        &[("Authorization", &auth)],
        Some("{}"),
    );
    assert_eq!(status, 403, "{text}");
    // Its own node it may heartbeat.
    assert_eq!(call("POST", "/v1/nodes/a1/heartbeat", "").0, 204);
    assert_eq!(cluster.nodes(), nodes);
    assert_eq!(cluster.tasks(), tasks);
    assert_eq!(ready_on(&cluster, "web").len(), 2);
}

#[test]
fn plain_http_and_a_foreign_ca_are_refused() {
    let cluster = Cluster::start();
    let a1 = cluster.joined_agent("a1");
    let plain = cluster.api().replace("https://", "http://");
    let (status, text) = request("GET", &plain, "/v1/services", &[], None);
    assert_eq!(status, 0, "no HTTP answer on the TLS port: {text}");

    // The CLI checks the server against the CA it is given.
    let other = tempfile::tempdir().unwrap();
    let init = cluster.run(&[
        "--data-dir",
        other.path().join("c").to_str().unwrap(),
        "server",
        "init",
    ]);
    assert!(init.status.success(), "{}", text_of(&init));
    let foreign_ca = other.path().join("c").join("ca.pem");
    let token = cluster.token("admin");
    let args = [
        "--api",
        &cluster.api(),
        "--token",
        &token,
        "--ca",
        foreign_ca.to_str().unwrap(),
        "services",
    ];
    let out = cluster.run(&args);
    assert!(!out.status.success());
    let err = utf8(&out.stderr);
    assert!(err.contains("is not trusted"), "{err}");
    assert!(err.contains("--ca"), "{err}");
    // The right CA works from anywhere, and without one the CLI says what is missing.
    let ca = cluster.dir().join("ca.pem");
    let mut good = args;
    good[5] = ca.to_str().unwrap();
    assert!(cluster.run(&good).status.success());
    let out = cluster.run(&["--api", &cluster.api(), "--token", &token, "services"]);
    assert!(utf8(&out.stderr).contains("speaks TLS: give the cluster CA certificate with --ca"));

    // The agent's own API answers only servers: not plain HTTP, not another agent.
    let agent_api = cluster.nodes()[0].1.clone();
    trust_ca(&agent_api, &ca);
    let (status, _) = request(
        "GET",
        &agent_api.replace("https://", "http://"),
        "/v1/agent/logs/x",
        &[],
        None,
    );
    assert_eq!(status, 0);
    let (cert, key) = a1.cert();
    let me = ClientCert {
        cert: &cert,
        key: &key,
    };
    let (status, _, body) = request_as(Some(&me), "GET", &agent_api, "/v1/agent/logs/x", &[], None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only the cluster's servers"), "{body}");
}

fn text_of(out: &Output) -> String {
    utf8(&out.stderr)
}
