//! Servers join a group through `ServerConfig::join`, in process, over the real HTTP transport.
//! A server that was down while large entries were committed catches up on a plain restart:
//! AppendEntries carry at most `MAX_PAYLOAD_ENTRIES` entries, each at most twice the API's body
//! limit, within the Raft routes' own limit. Membership changes that would break the group are
//! refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use api::DeployRequest;
use client::Client;
use server::{ApiLimits, ServerConfig, ServerHandle};
use spec::ServiceSpec;

/// Far above what any wait here needs on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes the leader, server `id`, as an operator would: the leader may step down before it
/// answers, and the answer then says the removal may or may not have been applied and to retry;
/// asked again, "no server with id" means the first call took.
async fn remove_leader(client: &Client, id: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let Err(e) = client.remove_server(id).await else {
            return;
        };
        let e = e.to_string();
        if e.contains(&format!("no server with id {id}")) {
            return;
        }
        assert!(e.contains("retry shortly"), "removing server {id}: {e}");
        assert!(Instant::now() < deadline, "removing server {id}: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 256 KiB bodies: entries of some 200 KiB are near the limit, and the old AppendEntries of up
/// to 300 of them (or even two) would have been far over the Raft routes' limit.
fn limits() -> ApiLimits {
    let mut limits = ApiLimits::default();
    limits.listener.body_limit = 256 << 10;
    limits
}

fn config(dir: &Path, name: &str, listen: SocketAddr) -> ServerConfig {
    ServerConfig {
        limits: limits(),
        name: name.into(),
        ..ServerConfig::new(dir.join(name), listen)
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn join(dir: &Path, name: &str, through: &ServerHandle) -> ServerHandle {
    server::start(ServerConfig {
        join: Some(through.addr.to_string()),
        token: Some(through.token.clone()),
        ..config(dir, name, any_port())
    })
    .await
    .unwrap()
}

/// A service whose spec is about 200 KiB: its deploy is one entry of that size.
fn big(i: usize) -> ServiceSpec {
    let mut spec = ServiceSpec::process(&format!("big{i:02}"), &["sleep", "1000"]);
    spec.env.insert("BLOB".into(), "x".repeat(200 << 10));
    spec
}

async fn voters(handle: &ServerHandle) -> Vec<u64> {
    let metrics = handle.ctx.raft.metrics().borrow().clone();
    metrics.membership_config.membership().voter_ids().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_while_large_entries_commit_catches_up_on_a_plain_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = server::start(config(dir.path(), "a", any_port()))
        .await
        .unwrap();
    wait_until("the founder to lead", || a.ctx.is_leader()).await;
    let b = join(dir.path(), "b", &a).await;
    // Through a follower: the join is forwarded to the leader.
    let c = join(dir.path(), "c", &b).await;
    assert_eq!(voters(&a).await, [1, 2, 3]);
    assert_eq!((b.ctx.id, c.ctx.id), (2, 3), "ids are given in turn");

    let c_addr = c.addr;
    c.shutdown().await;
    let client = Client::new(&format!("http://{}", b.addr), &a.token);
    let deploys = 40;
    for i in 0..deploys {
        client
            .deploy(&DeployRequest {
                services: vec![big(i)],
                dry_run: false,
                objects: Vec::new(),
                force: false,
            })
            .await
            .unwrap_or_else(|e| panic!("deploy {i} through a follower: {e}"));
    }
    let committed = a.ctx.state.applied_index();

    // A plain restart: the data dir says who it is; the leader sends what it missed.
    let c = server::start(config(dir.path(), "c", c_addr))
        .await
        .unwrap();
    assert_eq!(c.ctx.id, 3);
    wait_until("the restarted server to apply what it missed", || {
        c.ctx.state.applied_index() >= committed
    })
    .await;
    let services = c.ctx.state.read(|s| s.services.len());
    assert_eq!(services, deploys);
    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_voter_cannot_leave_and_an_unknown_server_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = server::start(config(dir.path(), "a", any_port()))
        .await
        .unwrap();
    wait_until("the founder to lead", || a.ctx.is_leader()).await;
    let client = Client::new(&format!("http://{}", a.addr), &a.token);

    let last = client.remove_server(1).await.unwrap_err().to_string();
    assert!(
        last.contains("server 1 is the group's last voter"),
        "{last}"
    );
    let unknown = client.remove_server(9).await.unwrap_err().to_string();
    assert!(unknown.contains("no server with id 9"), "{unknown}");
    assert_eq!(voters(&a).await, [1], "nothing changed");

    // A second server joins and leaves again: the group is back to one.
    let b = join(dir.path(), "b", &a).await;
    assert_eq!(voters(&a).await, [1, 2]);
    let info = client.remove_server(2).await.unwrap();
    assert_eq!(info.servers.iter().map(|s| s.id).collect::<Vec<_>>(), [1]);
    b.shutdown().await;

    // Its data dir still says it was server 2, which the group no longer has: joining again
    // from it is refused by name.
    let again = server::start(ServerConfig {
        join: Some(a.addr.to_string()),
        token: Some(a.token.clone()),
        ..config(dir.path(), "b", any_port())
    })
    .await
    .err()
    .expect("a second join from the same data dir is refused")
    .to_string();
    assert!(
        again.contains("is of server 2, which the group") && again.contains("no longer has"),
        "{again}"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_before_it_could_vote_asks_again_on_a_plain_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = server::start(config(dir.path(), "a", any_port()))
        .await
        .unwrap();
    wait_until("the founder to lead", || a.ctx.is_leader()).await;
    // The first half of a join, as a joiner that then stopped would have left it: a learner
    // with an id, its data dir holding that id and the token.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let http = reqwest::Client::new();
    let answer: api::MemberResponse = http
        .post(format!("http://{}/v1/cluster/servers", a.addr))
        .bearer_auth(&a.token)
        .json(&api::MemberRequest {
            address: listen.to_string(),
            name: "b".into(),
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer.id, 2);
    assert_eq!(voters(&a).await, [1], "a learner does not vote");
    let b_dir = dir.path().join("b");
    seal::files::private_dir(&b_dir).unwrap();
    std::fs::write(b_dir.join("server-id"), "2\n").unwrap();
    std::fs::write(b_dir.join("token"), &a.token).unwrap();

    let b = server::start(config(dir.path(), "b", listen))
        .await
        .unwrap();
    wait_until("the restarted learner to be made a voter", || {
        let metrics = a.ctx.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == 2)
    })
    .await;
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_can_leave_and_the_two_left_elect_another_and_take_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = server::start(config(dir.path(), "a", any_port()))
        .await
        .unwrap();
    wait_until("the founder to lead", || a.ctx.is_leader()).await;
    let b = join(dir.path(), "b", &a).await;
    let c = join(dir.path(), "c", &a).await;
    // Asked through a follower, which forwards it to the leader that is leaving.
    let through_b = Client::new(&format!("http://{}", b.addr), &a.token);
    let info = through_b.remove_server(1).await.unwrap();
    assert_eq!(
        info.servers.iter().map(|s| s.id).collect::<Vec<_>>(),
        [2, 3]
    );
    wait_until("another leader among the two left", || {
        let leader = b.ctx.raft.metrics().borrow().current_leader;
        leader.is_some_and(|l| l != 1) && c.ctx.raft.metrics().borrow().current_leader == leader
    })
    .await;
    a.shutdown().await;
    let mut spec = ServiceSpec::process("after", &["sleep", "1000"]);
    spec.replicas = 1;
    through_b
        .deploy(&DeployRequest {
            services: vec![spec],
            dry_run: false,
            objects: Vec::new(),
            force: false,
        })
        .await
        .unwrap();
    let through_c = Client::new(&format!("http://{}", c.addr), &c.token);
    let names: Vec<String> = through_c
        .services()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["after"]);
    c.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_servers_id_is_never_given_again_by_any_leader_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = server::start(config(dir.path(), "a", any_port()))
        .await
        .unwrap();
    wait_until("the founder to lead", || a.ctx.is_leader()).await;
    let b = join(dir.path(), "b", &a).await;
    let c = join(dir.path(), "c", &a).await;
    assert_eq!((b.ctx.id, c.ctx.id), (2, 3));

    // The highest id leaves, then the leader that gave it out: only server 2 is left.
    let client = Client::new(&format!("http://{}", b.addr), &a.token);
    client.remove_server(3).await.unwrap();
    c.shutdown().await;
    remove_leader(&client, 1).await;
    a.shutdown().await;
    wait_until("server 2 to lead alone", || b.ctx.is_leader()).await;

    // Server 2 restarts: what it knows of the ids given comes from its own file.
    let b_addr = b.addr;
    b.shutdown().await;
    let b = server::start(config(dir.path(), "b", b_addr))
        .await
        .unwrap();
    wait_until("the restarted server 2 to lead", || b.ctx.is_leader()).await;

    let d = join(dir.path(), "d", &b).await;
    assert_eq!(
        d.ctx.id, 4,
        "ids 1 and 3 were given before, whoever gave them"
    );
    let ids: Vec<u64> = d
        .ctx
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids, [2, 4]);
    d.shutdown().await;
    b.shutdown().await;
}
