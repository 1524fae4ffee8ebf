//! A server that joins late catches up from a snapshot sent over the real Raft transport, in
//! chunks: the leader's log behind the snapshot is purged, so the snapshot is the only way, and
//! it is several times larger than one chunk and than what a single request of the old 3 MiB
//! chunks could carry under the API's body limit.

use std::time::{Duration, Instant};

use api::DeployRequest;
use client::Client;
use spec::ServiceSpec;
use store::raft::{Node, SNAPSHOT_CHUNK_BYTES};

/// Far above what any wait here needs on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

/// 100 services of 200 replicas, none placeable (no node has registered): 20,000 waiting tasks,
/// each with its reason, and the events of their creation.
const SERVICES: usize = 100;
const REPLICAS: u32 = 200;

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn specs() -> Vec<ServiceSpec> {
    (0..SERVICES)
        .map(|i| {
            let mut spec = ServiceSpec::process(&format!("svc{i:03}"), &["app", "--port", "1"]);
            spec.replicas = REPLICAS;
            spec
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_server_installs_a_large_snapshot_sent_in_chunks_and_has_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let first = server::ServerConfig::new(dir.path().join("a"), "127.0.0.1:0".parse().unwrap());
    let a = server::start(first).await.unwrap();
    let client = Client::new(&format!("http://{}", a.addr), &a.token);
    client
        .deploy(&DeployRequest {
            services: specs(),
            dry_run: false,
            objects: Vec::new(),
            force: false,
        })
        .await
        .unwrap();
    let tasks = SERVICES * REPLICAS as usize;
    wait_until("every replica waiting as a task", async || {
        a.ctx.state.read(|s| s.tasks.len()) == tasks
    })
    .await;

    // Snapshot, then drop the log behind it: a new member can only catch up from the snapshot.
    a.ctx.raft.trigger().snapshot().await.unwrap();
    let snapshot = wait_for_snapshot(&a.ctx.raft).await;
    a.ctx.raft.trigger().purge_log(snapshot).await.unwrap();
    let size = snapshot_size(&a.ctx.raft).await;
    assert!(
        size > 3 * SNAPSHOT_CHUNK_BYTES,
        "the snapshot ({size} bytes) takes several chunks"
    );

    // The second server shares the cluster's token and founds nothing: the leader adds it.
    let b_dir = dir.path().join("b");
    seal::files::private_dir(&b_dir).unwrap();
    std::fs::copy(dir.path().join("a").join("token"), b_dir.join("token")).unwrap();
    let second = server::ServerConfig {
        id: 2,
        found: false,
        ..server::ServerConfig::new(b_dir, "127.0.0.1:0".parse().unwrap())
    };
    let b = server::start(second).await.unwrap();
    let node = Node {
        addr: b.addr.to_string(),
        name: "b".into(),
    };
    a.ctx.raft.add_learner(2, node, true).await.unwrap();
    let applied = a.ctx.state.applied_index();
    wait_until("the learner to apply the leader's index", async || {
        b.ctx.state.applied_index() >= applied
    })
    .await;

    let installed = b.ctx.raft.metrics().borrow().snapshot;
    assert!(
        installed.is_some_and(|id| id.index >= snapshot),
        "the learner caught up through the snapshot: {installed:?}"
    );
    let view = |s: &store::State| {
        (
            s.services.keys().cloned().collect::<Vec<_>>(),
            s.tasks
                .values()
                .map(|t| (t.id.clone(), t.state, t.message.clone()))
                .collect::<Vec<_>>(),
            s.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        )
    };
    let (theirs, ours) = (a.ctx.state.read(view), b.ctx.state.read(view));
    assert_eq!(ours.1.len(), tasks);
    assert!(
        theirs == ours,
        "the learner's state differs from the leader's"
    );
    b.shutdown().await;
    a.shutdown().await;
}

/// Waits until a snapshot is built and returns the index it stands at.
async fn wait_for_snapshot(raft: &store::raft::Raft) -> u64 {
    let mut index = 0;
    wait_until("a snapshot", async || {
        index = raft.metrics().borrow().snapshot.map_or(0, |id| id.index);
        index > 0
    })
    .await;
    index
}

async fn snapshot_size(raft: &store::raft::Raft) -> u64 {
    let snapshot = raft.get_snapshot().await.unwrap().expect("a snapshot");
    snapshot.snapshot.get_ref().len() as u64
}
