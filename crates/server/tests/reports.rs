//! Agents' status reports against a real server on loopback, through the same client agents
//! use: a burst from many nodes at once commits in far fewer entries than requests, and every
//! report's effect is there once its request is answered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use api::{
    Capacity, DeployRequest, Level, NewEvent, RegisterRequest, StatusReport, TaskState, TaskStatus,
    Timestamp,
};
use client::Client;
use futures_util::future::join_all;

/// Far above what any wait here needs on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// Nodes reporting at once: well under the listener's 512 connections.
const NODES: usize = 200;

/// Heartbeats keep the nodes ready while the test runs (a node is suspect after 1.5 s).
const BEAT: Duration = Duration::from_millis(250);

struct Running {
    server: server::ServerHandle,
    client: Client,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = server::ServerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = server::start(config).await.unwrap();
    let client = Client::new(&format!("http://{}", server.addr), &server.token);
    Running {
        server,
        client,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Running {
    async fn applied_index(&self) -> u64 {
        let status: serde_json::Value = self
            .http
            .get(format!("http://{}/v1/status", self.server.addr))
            .bearer_auth(&self.server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status["applied_index"].as_u64().unwrap()
    }
}

/// Polls `check` until it returns `Some`, or panics after [`PATIENCE`].
async fn wait_for<T, F: Future<Output = Option<T>>>(what: &str, check: impl Fn() -> F) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names() -> Vec<String> {
    (0..NODES).map(|i| format!("n{i:03}")).collect()
}

fn registration(name: &str) -> RegisterRequest {
    let room = Capacity {
        cpu_millis: 4_000,
        memory_bytes: 8 << 30,
    };
    RegisterRequest {
        name: name.into(),
        address: "http://127.0.0.1:9".into(),
        capacity: room.clone(),
        allocatable: room,
        drivers: vec!["process".into()],
        notes: Vec::new(),
        version: "test".into(),
    }
}

/// What an agent reports once its tasks run and pass readiness, with one event of its own.
fn running(node: &str, tasks: &[String]) -> StatusReport {
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let status = |id: &String| TaskStatus {
        seq: 0,
        id: id.clone(),
        state: TaskState::Running,
        evicted: false,
        ready: true,
        restarts: 0,
        pid: Some(4242),
        container_id: None,
        ports: BTreeMap::new(),
        started_at: Some(now),
        exit_code: None,
        message: None,
        last_exit: None,
        next_start: None,
    };
    StatusReport {
        seq: 1,
        tasks: tasks.iter().map(status).collect(),
        events: vec![NewEvent {
            time: now,
            level: Level::Info,
            reason: "burst".into(),
            service: None,
            task: None,
            node: None,
            message: format!("{node} is up"),
        }],
        memory_pressure: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reports_from_many_nodes_commits_in_few_entries_and_every_one_applies() {
    let s = start().await;
    let nodes = names();
    let registrations: Vec<RegisterRequest> = nodes.iter().map(|n| registration(n)).collect();
    for result in join_all(registrations.iter().map(|r| s.client.register(r))).await {
        result.unwrap();
    }
    let beats = {
        let (client, nodes) = (s.client.clone(), nodes.clone());
        tokio::spawn(async move {
            loop {
                join_all(nodes.iter().map(|n| client.heartbeat(n))).await;
                tokio::time::sleep(BEAT).await;
            }
        })
    };
    let yaml = format!("name: web\nreplicas: {NODES}\ncommand: [\"sleep\", \"1000\"]\n");
    let services = spec::parse_file("web.yaml", &yaml, &BTreeMap::new(), None)
        .unwrap()
        .services;
    s.client
        .deploy(&DeployRequest {
            services,
            dry_run: false,
            objects: Vec::new(),
            force: false,
        })
        .await
        .unwrap();
    let placed = wait_for("every replica placed", || async {
        let tasks = s.client.tasks(Some("web")).await.ok()?;
        let placed: Vec<_> = tasks.into_iter().filter(|t| t.node.is_some()).collect();
        (placed.len() == NODES).then_some(placed)
    })
    .await;
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in placed {
        by_node.entry(t.node.unwrap()).or_default().push(t.id);
    }
    let reports: Vec<(String, StatusReport)> = nodes
        .iter()
        .map(|n| {
            let tasks = by_node.get(n).cloned().unwrap_or_default();
            (n.clone(), running(n, &tasks))
        })
        .collect();

    let before = s.applied_index().await;
    let began = Instant::now();
    let answers = join_all(reports.iter().map(|(n, r)| s.client.report(n, r))).await;
    let took = began.elapsed();
    let entries = s.applied_index().await - before;
    for answer in answers {
        answer.unwrap();
    }
    println!("{NODES} reports at once committed in {entries} entries within {took:?}");
    // Heartbeats and plans are not entries here, so every entry is a batch of reports; a
    // loaded machine spreads the burst over a few more ticks, never over one per report.
    assert!(
        entries > 0 && entries * 4 <= NODES as u64,
        "{NODES} reports took {entries} entries"
    );

    // Answered means committed: everything is there at once, with no wait.
    let tasks = s.client.tasks(Some("web")).await.unwrap();
    let up = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running && t.ready)
        .count();
    assert_eq!(up, NODES, "every task reported running and ready is so");
    let events = s
        .client
        .events(0, None, &client::EventFilter::default())
        .await
        .unwrap()
        .events;
    let mut seen: Vec<&str> = events
        .iter()
        .filter(|e| e.event.reason == "burst")
        .filter_map(|e| e.event.node.as_deref())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen, nodes,
        "one event from every node, each under its node"
    );
    beats.abort();
    s.server.shutdown().await;
}
