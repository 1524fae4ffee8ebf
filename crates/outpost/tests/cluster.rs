//! Three `outpost server` processes on loopback form one Raft group, as an operator sets them
//! up: the first founds it, two join it. Any server answers; writes through a follower reach the
//! leader; a SIGKILLed leader is replaced under a steady write load without losing an
//! acknowledged write; the killed server rejoins on a plain restart, and on its own
//! `server join` command run again; a removed server leaves the group, which goes on with two.
//! Join tokens, shown and rotated on any leader, outlive the server that made them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use support::outpost_bin;
use support::servers::{CLUSTER_PATIENCE as PATIENCE, ServerProc, cli, wait_agreed, wait_long};

fn spec_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!("name: {name}\nreplicas: 1\ncommand: [\"sleep\", \"1000\"]\n"),
    )
    .unwrap();
    path
}

fn service_names(server: &ServerProc, token: &str) -> Vec<String> {
    server
        .json(token, &["services"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// Whether two server addresses name the same HOST:PORT, with or without a scheme.
fn same_addr(a: &str, b: &str) -> bool {
    let bare = |s: &str| s.trim().trim_start_matches("https://").to_string();
    bare(a) == bare(b)
}

/// Deploys a new service `w{n}` through every server the CLI is given, in a loop, and records
/// the ones the CLI acknowledged with the time each was.
struct Writer {
    acked: Arc<Mutex<Vec<(u32, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(apis: String, ca: PathBuf, token: String, dir: PathBuf) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let name = format!("w{n}");
                let file = spec_file(&dir, &name);
                let out = cli(
                    &apis,
                    &ca,
                    &token,
                    &["deploy", "-f", file.to_str().unwrap()],
                );
                if out.status.success() {
                    a.lock().unwrap().push((n, Instant::now()));
                }
            }
        });
        Writer {
            acked,
            stop,
            thread: Some(thread),
        }
    }

    fn acked_after(&self, t: Instant) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at > t)
            .count()
    }

    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at)| *at)
            .find(|at| *at > t)
    }

    fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().iter().map(|(n, _)| *n).collect()
    }
}

#[test]
fn three_servers_answer_alike_survive_a_leader_kill_without_losing_a_write_and_shrink_to_two() {
    let first = ServerProc::found();
    let token = first.token();
    let join = first.join_token("server");
    let second = ServerProc::join(&first.listen, &join);
    // The third joins through the second, a follower: the join is forwarded to the leader.
    let third = ServerProc::join(&second.listen, &join);
    let mut servers = [first, second, third];
    let all: Vec<&ServerProc> = servers.iter().collect();
    let leader = wait_agreed(&all, &token, &[1, 2, 3]);

    // A deploy through a follower is acknowledged, and every server shows it at once: reads
    // that must be current are answered by the leader after a read-index check.
    let follower = servers
        .iter()
        .position(|s| s.status(&token).unwrap()["node_id"] != leader);
    let follower = &servers[follower.expect("a follower")];
    let file = spec_file(follower.data_dir(), "web");
    let out = follower.cli(&token, &["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy through a follower: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in &servers {
        assert!(
            service_names(s, &token).contains(&"web".to_string()),
            "server at {} does not show the deploy acknowledged just before",
            s.listen
        );
    }

    // SIGKILL the leader under a steady write load through a CLI that knows all three.
    let apis: Vec<String> = servers.iter().map(ServerProc::api).collect();
    let writes = tempfile::tempdir().unwrap();
    let writer = Writer::start(
        apis.join(","),
        servers[0].ca(),
        token.clone(),
        writes.path().to_path_buf(),
    );
    wait_long("writes to be acknowledged before the kill", || {
        (writer.acked_after(Instant::now() - PATIENCE) >= 5).then_some(())
    });
    let killed = servers
        .iter()
        .position(|s| {
            s.status(&token)
                .is_some_and(|st| st["node_id"] == leader && st["leader"] == leader)
        })
        .expect("the leader among the servers");
    let victim_pid = servers[killed].pid();
    servers[killed].sigkill();
    let kill_time = Instant::now();
    assert!(!support::alive(u64::from(victim_pid)));
    wait_long(
        "writes to be acknowledged again after the leader's kill",
        || (writer.acked_after(kill_time) >= 5).then_some(()),
    );
    let answered = writer.first_after(kill_time).unwrap() - kill_time;
    println!(
        "figure: leader SIGKILL -> writes answered again through the others: {} ms",
        answered.as_millis()
    );
    let acked = writer.finish();

    // No acknowledged write is lost, as the surviving servers show.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    for i in &survivors {
        let names = service_names(&servers[*i], &token);
        let lost: Vec<&u32> = acked
            .iter()
            .filter(|n| !names.contains(&format!("w{n}")))
            .collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }

    // A plain restart: the killed server rejoins as a follower and catches up.
    servers[killed].restart();
    let all: Vec<&ServerProc> = servers.iter().collect();
    let new_leader = wait_agreed(&all, &token, &[1, 2, 3]);
    assert_ne!(
        new_leader, leader,
        "the killed server does not lead on its return"
    );
    let expected = service_names(&servers[survivors[0]], &token);
    let back = &servers[killed];
    assert_eq!(service_names(back, &token), expected);
    let leader_index = servers
        .iter()
        .find_map(|s| s.status(&token).filter(|st| st["node_id"] == new_leader))
        .unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    wait_long("the restarted server to apply what the leader had", || {
        let st = back.status(&token)?;
        (st["applied_index"].as_u64()? >= leader_index && st["leader"] == new_leader).then_some(())
    });

    // Remove a follower: the group goes on with two, and still takes writes.
    let gone = servers
        .iter()
        .position(|s| {
            s.status(&token)
                .is_some_and(|st| st["node_id"] != new_leader)
        })
        .unwrap();
    let gone_id = servers[gone].status(&token).unwrap()["node_id"]
        .as_u64()
        .unwrap();
    let keeper = (0..3).find(|i| *i != gone).unwrap();
    let out = servers[keeper].cli(&token, &["server", "leave", &gone_id.to_string()]);
    assert!(
        out.status.success(),
        "server leave: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    servers[gone].sigkill();
    let rest: Vec<&ServerProc> = (0..3).filter(|i| *i != gone).map(|i| &servers[i]).collect();
    let mut ids: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != gone_id).collect();
    ids.sort_unstable();
    wait_agreed(&rest, &token, &ids);
    let file = spec_file(writes.path(), "after-leave");
    wait_long("a write to the group of two", || {
        rest[0]
            .cli(&token, &["deploy", "-f", file.to_str().unwrap()])
            .status
            .success()
            .then_some(())
    });
    for s in &rest {
        assert!(service_names(s, &token).contains(&"after-leave".to_string()));
    }
}

#[test]
fn a_join_with_a_wrong_token_is_refused_and_leaves_nothing_behind() {
    let first = ServerProc::found();
    let mut joiner = ServerProc::new();
    let out = Command::new(outpost_bin())
        .arg("--data-dir")
        .arg(joiner.data_dir())
        .args(["--token", "not-the-token", "server", "join", &first.listen])
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong token joined");
    assert!(
        err.contains("cannot join the group of the server at") && err.contains("token"),
        "{err}"
    );
    for file in ["server-id", "token", "state.redb"] {
        assert!(
            !joiner.data_dir().join(file).exists(),
            "{file} was left behind"
        );
    }
    joiner.child = None;
    let (ids, _) = first.servers(&first.token());
    assert_eq!(ids, [1], "the group is unchanged");
}

/// An operator's CLI given one server of three, with a data dir of its own: a first command
/// remembers the group's servers there, so a later one given only that server, once it is dead,
/// still reaches the group, where the same command without the data dir cannot.
#[test]
fn a_cli_with_a_data_dir_remembers_the_servers_and_reaches_the_group_when_its_server_died() {
    let first = ServerProc::found();
    let token = first.token();
    let join = first.join_token("server");
    let second = ServerProc::join(&first.listen, &join);
    let third = ServerProc::join(&first.listen, &join);
    let mut servers = [first, second, third];
    let all: Vec<&ServerProc> = servers.iter().collect();
    let leader = wait_agreed(&all, &token, &[1, 2, 3]);
    let given = servers
        .iter()
        .position(|s| s.status(&token).unwrap()["node_id"] != leader)
        .expect("a follower");
    let address = servers[given].api();
    let ca = servers[given].ca();

    let client_dir = tempfile::tempdir().unwrap();
    let with_dir = |args: &[&str]| {
        Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(client_dir.path())
            .args(["--api", &address, "--token", &token, "--ca"])
            .arg(&ca)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run outpost")
    };
    let out = with_dir(&["services"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known = std::fs::read_to_string(client_dir.path().join("known-servers")).unwrap();
    for s in &servers {
        assert!(
            known.lines().any(|l| same_addr(l, &s.listen)),
            "{} not in {known:?}",
            s.listen
        );
    }

    servers[given].sigkill();
    let alone = cli(&address, &ca, &token, &["services"]);
    assert!(!alone.status.success(), "a dead server answered");
    let file = spec_file(client_dir.path(), "remembered");
    let out = with_dir(&["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy with the remembered servers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live: Vec<&ServerProc> = servers.iter().filter(|s| s.api() != address).collect();
    for s in live {
        assert!(service_names(s, &token).contains(&"remembered".to_string()));
    }
    // The file still names the dead server: it is still a member of the group.
    let known = std::fs::read_to_string(client_dir.path().join("known-servers")).unwrap();
    assert!(known.lines().any(|l| same_addr(l, &address)), "{known:?}");
}

/// `outpost agent` given one server of three, with its data dir under `dir/agent`.
struct AgentProc {
    dir: tempfile::TempDir,
    child: Child,
}

impl AgentProc {
    /// Joins the server at `api` (HOST:PORT) with the agent join token `token`.
    fn start(api: &str, token: &str, name: &str) -> AgentProc {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(outpost_bin())
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .args(["agent", "--join", api, "--token", token, "--name", name])
            .env("OUTPOST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        AgentProc { dir, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        support::stop_child(&mut self.child);
        support::remove_cgroups(self.dir.path());
    }
}

/// The task of `service` that runs on `node`, as `ps` on `server` shows it.
fn running_on(server: &ServerProc, token: &str, service: &str, node: &str) -> Option<()> {
    let tasks = server.json(token, &["ps", service]);
    tasks
        .as_array()?
        .iter()
        .any(|t| t["node"] == node && t["state"] == "running")
        .then_some(())
}

#[test]
fn an_agent_given_one_server_carries_on_through_the_others_when_it_dies() {
    let first = ServerProc::found();
    let token = first.token();
    let join = first.join_token("server");
    let second = ServerProc::join(&first.listen, &join);
    let third = ServerProc::join(&first.listen, &join);
    let leader = wait_agreed(&[&first, &second, &third], &token, &[1, 2, 3]);
    // The agent is given one follower only; it learns the others when it registers.
    let servers = [first, second, third];
    let given = servers
        .iter()
        .position(|s| s.status(&token).is_some_and(|st| st["node_id"] != leader))
        .unwrap();
    let agent_token = servers[given].join_token("agent");
    let _agent = AgentProc::start(&servers[given].listen, &agent_token, "edge1");
    let other = &servers[(given + 1) % 3];
    wait_long("the agent's node to be ready", || {
        let rows = other.json(&token, &["nodes"]);
        rows.as_array()?
            .iter()
            .any(|n| n["name"] == "edge1" && n["state"] == "ready" && n["role"] == "agent")
            .then_some(())
    });
    let specs = tempfile::tempdir().unwrap();
    let file = spec_file(specs.path(), "before");
    assert!(
        other
            .cli(&token, &["deploy", "-f", file.to_str().unwrap()])
            .status
            .success()
    );
    wait_long("the first service's task to run on the agent", || {
        running_on(other, &token, "before", "edge1")
    });

    // The server the agent was given dies; a service deployed afterwards still reaches it.
    let mut servers = servers;
    servers[given].sigkill();
    let rest: Vec<&ServerProc> = (0..3)
        .filter(|i| *i != given)
        .map(|i| &servers[i])
        .collect();
    let file = spec_file(specs.path(), "after");
    wait_long("a deploy after the server's death", || {
        rest[0]
            .cli(&token, &["deploy", "-f", file.to_str().unwrap()])
            .status
            .success()
            .then_some(())
    });
    support::wait_within(
        PATIENCE,
        "the service deployed after the server's death to run",
        || running_on(rest[0], &token, "after", "edge1"),
    );
    let rows = rest[1].json(&token, &["nodes"]);
    let edge = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "edge1")
        .cloned()
        .unwrap();
    assert_eq!(edge["state"], "ready", "{edge}");
}

#[test]
fn dev_is_one_node_that_is_both_server_and_agent_and_leads() {
    let dev = support::Dev::start(&[]);
    dev.node();
    let rows = dev.json(&["nodes"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "one row for the server and its agent: {rows:?}"
    );
    let local = &rows[0];
    assert_eq!(local["name"], "local");
    assert_eq!(local["role"], "both");
    assert_eq!(local["leader"], true);
    assert_eq!(local["server_id"], 1);
    assert_eq!(local["id"], "local");
    assert_eq!(local["state"], "ready");
    assert!(
        local["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("https://")),
        "{local}"
    );
    assert!(local["phi"].as_f64().is_some(), "{local}");
    assert_eq!(local["tasks"], 0, "nothing deployed yet: {local}");
    // The first heartbeat comes one period after the node registered.
    support::wait_for("the node's first heartbeat heard", || {
        let rows = dev.json(&["nodes"]);
        rows[0]["last_heartbeat_age_ms"].as_u64()
    });
    let table = dev.ok(&["nodes"]);
    assert!(table.contains("both (leader)"), "{table}");
    // The node counts the tasks placed on it that are wanted running.
    dev.deploy(
        "web.yaml",
        r#"
name: web
replicas: 2
command: ["DEMO_APP", "--port", "${PORT}"]
ports: [{ name: http }]
readiness: { tcp: { port: http }, period: 200ms }
"#,
    );
    dev.wait_ready("web", 2);
    let rows = dev.json(&["nodes"]);
    assert_eq!(rows[0]["tasks"], 2, "{rows}");
}

/// An agent's certificate through a follower: the follower forwards its report to the leader
/// naming the caller it checked, so the agent acts for its own node there as on the leader, and
/// for no other, whatever header it sends itself.
#[test]
fn an_agent_acts_through_a_follower_for_its_own_node_only() {
    let first = ServerProc::found();
    let token = first.token();
    let join = first.join_token("server");
    let second = ServerProc::join(&first.listen, &join);
    let third = ServerProc::join(&first.listen, &join);
    let servers = [first, second, third];
    let all: Vec<&ServerProc> = servers.iter().collect();
    let leader = wait_agreed(&all, &token, &[1, 2, 3]);
    let follower = servers
        .iter()
        .find(|s| s.status(&token).is_some_and(|st| st["node_id"] != leader))
        .expect("a follower");
    let agent_token = follower.join_token("agent");
    let a1 = AgentProc::start(&follower.listen, &agent_token, "a1");
    let _a2 = AgentProc::start(&follower.listen, &agent_token, "a2");
    let specs = tempfile::tempdir().unwrap();
    let file = specs.path().join("pair.yaml");
    std::fs::write(
        &file,
        "name: pair\nreplicas: 2\ncommand: [\"sleep\", \"1000\"]\n",
    )
    .unwrap();
    wait_long("both agents to be ready", || {
        let rows = follower.json(&token, &["nodes"]);
        let ready = rows.as_array()?.iter().filter(|n| n["state"] == "ready");
        (ready.filter(|n| n["role"] == "agent").count() == 2).then_some(())
    });
    let out = follower.cli(&token, &["deploy", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_long("a task of pair running on each agent", || {
        running_on(follower, &token, "pair", "a1")?;
        running_on(follower, &token, "pair", "a2")
    });
    let on_a2 = follower.json(&token, &["ps", "pair"]);
    let on_a2 = on_a2
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["node"] == "a2")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = cluster_view(&servers, &token);

    let (cert, key) = (
        a1.dir.path().join("agent/node.pem"),
        a1.dir.path().join("agent/node-key.pem"),
    );
    let me = support::ClientCert {
        cert: &cert,
        key: &key,
    };
    let call = |path: &str, headers: &[(&str, &str)], body: &str| {
        let (status, _, text) = support::request_as(
            Some(&me),
            "POST",
            &follower.api(),
            path,
            headers,
            Some(body),
        );
        (status, text)
    };
    let failed = serde_json::json!({
        "seq": 1_000_000,
        "tasks": [{"id": on_a2, "state": "failed", "ready": false, "restarts": 0, "exit_code": 1}],
        "events": [],
    })
    .to_string();
    let (status, text) = call("/v1/nodes/a2/status", &[], &failed);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("node a1 may not act for node a2"), "{text}");
    let (status, text) = call("/v1/nodes/a2/heartbeat", &[], "");
    assert_eq!(status, 403, "{text}");
    // The caller a follower names is believed from a server's certificate only.
    for claim in ["agent:a2", "admin", "server:1"] {
        let forged = [(server::access::ON_BEHALF, claim)];
        let (status, text) = call("/v1/nodes/a2/status", &forged, &failed);
        assert_eq!(status, 403, "{claim}: {text}");
    }
    // Its own node it heartbeats through the follower.
    let (status, text) = call("/v1/nodes/a1/heartbeat", &[], "");
    assert_eq!(status, 204, "{text}");
    assert_eq!(cluster_view(&servers, &token), before, "nothing changed");
    running_on(&servers[0], &token, "pair", "a2").expect("a2's task still runs");
}

/// Every task (id, node, desired, state) and agent node (name, address), as each server shows
/// them: the same on all.
fn cluster_view(servers: &[ServerProc], token: &str) -> Vec<Vec<String>> {
    let views: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            let tasks = s.json(token, &["ps", "--all"]);
            let nodes = s.json(token, &["nodes"]);
            let mut rows: Vec<String> = tasks
                .as_array()
                .unwrap()
                .iter()
                .map(|t| format!("{} {} {} {}", t["id"], t["node"], t["desired"], t["state"]))
                .chain(
                    nodes
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|n| n["role"] == "agent")
                        .map(|n| format!("{} {}", n["name"], n["address"])),
                )
                .collect();
            rows.sort();
            rows
        })
        .collect();
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:#?}");
    views
}

/// `outpost server join` with the AGENT join token is refused, and the joiner keeps nothing.
#[test]
fn an_agent_token_does_not_join_a_server() {
    let first = ServerProc::found();
    let agent_token = first.join_token("agent");
    let joiner = ServerProc::new();
    let out = Command::new(outpost_bin())
        .arg("--data-dir")
        .arg(joiner.data_dir())
        .args(["--token", &agent_token, "server", "join", &first.listen])
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an agent token joined a server");
    assert!(
        err.contains("cannot join the group of the server at")
            && err.contains("this is the agent join token")
            && err.contains("outpost token show server"),
        "{err}"
    );
    for file in ["server-id", "token", "state.redb", "node.pem", "ca-key.pem"] {
        assert!(
            !joiner.data_dir().join(file).exists(),
            "{file} was left behind"
        );
    }
    let (ids, _) = first.servers(&first.token());
    assert_eq!(ids, [1], "the group is unchanged");
}

/// Waits until `agent` exited; returns its log.
fn exited(agent: &mut AgentProc) -> String {
    wait_long("the agent to give up", || {
        agent.child.try_wait().unwrap().map(|_| ())
    });
    agent.log()
}

/// The join token is derived from the CA key every server holds and the generation in the
/// replicated state: after a rotation on the leader and the leader's death, another server
/// shows the new token (and the server token, never rotated, that only the dead founder kept
/// in a file), an agent joins with it, and the token from before the rotation stays refused.
#[test]
fn after_a_rotation_and_the_leaders_death_the_next_leader_shows_the_token_that_joins() {
    let first = ServerProc::found();
    let token = first.token();
    let join = first.join_token("server");
    let second = ServerProc::join(&first.listen, &join);
    let third = ServerProc::join(&first.listen, &join);
    let leader = wait_agreed(&[&first, &second, &third], &token, &[1, 2, 3]);
    let mut servers = [first, second, third];
    let at = servers
        .iter()
        .position(|s| s.status(&token).is_some_and(|st| st["node_id"] == leader))
        .unwrap();
    let old = servers[at].join_token("agent");
    let out = servers[at].cli(&token, &["token", "rotate", "agent"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(rotated, old);

    servers[at].sigkill();
    let rest: Vec<&ServerProc> = (0..3).filter(|i| *i != at).map(|i| &servers[i]).collect();
    let shown = wait_long("a server to show the agent token again", || {
        rest[0].try_join_token("agent").ok()
    });
    assert_eq!(shown, rotated, "the token shown is the rotated one");
    for s in &rest {
        assert_eq!(s.join_token("agent"), rotated);
        assert_eq!(s.join_token("server"), join);
    }

    let mut stale = AgentProc::start(&rest[1].listen, &old, "stale");
    let log = exited(&mut stale);
    assert!(
        log.contains("the agent join token is wrong or was rotated"),
        "{log}"
    );
    let _agent = AgentProc::start(&rest[1].listen, &shown, "edge1");
    wait_long(
        "the agent that joined with the shown token to be ready",
        || {
            let rows = rest[0].json(&token, &["nodes"]);
            let names: Vec<&str> = rows
                .as_array()?
                .iter()
                .filter(|n| n["role"] == "agent")
                .filter_map(|n| (n["state"] == "ready").then_some(n["name"].as_str()?))
                .collect();
            (names == ["edge1"]).then_some(())
        },
    );
}

/// `outpost server join` run again on a data dir that already joined (a service manager's
/// fixed command line) starts the server as `outpost server` would: the same Raft id, no new
/// member. A join token of another cluster is refused, naming the cluster the dir holds.
#[test]
fn a_server_join_run_again_on_its_data_dir_is_a_restart_that_adds_no_member() {
    let first = ServerProc::found();
    let token = first.token();
    let join = first.join_token("server");
    let mut second = ServerProc::join(&first.listen, &join);
    wait_agreed(&[&first, &second], &token, &[1, 2]);
    let dir = second.data_dir().to_path_buf();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let (id, ca) = (read("server-id"), read("ca.pem"));
    assert_eq!(id.trim(), "2");
    second.stop();

    let other = ServerProc::found();
    let foreign = other.join_token("server");
    let out = Command::new(outpost_bin())
        .arg("--data-dir")
        .arg(second.data_dir())
        .args(["--token", &foreign, "server", "join", &other.listen])
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("OUTPOST_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a token of another cluster was taken"
    );
    assert!(
        err.contains("belongs to another cluster than the join token names"),
        "{err}"
    );
    assert_eq!(
        (read("server-id"), read("ca.pem")),
        (id.clone(), ca.clone())
    );

    // The very command line of the first start.
    second.spawn(&["--token", &join], &["join", &first.listen]);
    let log = second.log();
    assert!(
        log.contains("already joined the group as server 2")
            && log.contains("the join token is not needed"),
        "{log}"
    );
    wait_agreed(&[&first, &second], &token, &[1, 2]);
    assert_eq!(second.status(&token).unwrap()["node_id"], 2);
    assert_eq!(read("server-id"), id);
}
