//! Tests of the redb storage as a whole: openraft's conformance suite, a real one-member Raft
//! across a restart, snapshots, and the errors an operator sees.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::{Capacity, RegisterRequest, Timestamp};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, EntryPayload, RaftNetwork, RaftNetworkFactory, RaftSnapshotBuilder,
    StorageIOError,
};
use tempfile::TempDir;

use crate::raft::{
    AppendEntriesRequest, AppendEntriesResponse, Entry, InstallSnapshotRequest,
    InstallSnapshotResponse, LogId, Node, NodeId, Raft, StorageError, TypeConfig, VoteRequest,
    VoteResponse,
};
use crate::{
    Command, LogStore, Response, StateHandle, StateMachineStore, StoreError, StoreOptions, open,
};

/// Generous: only a hung test waits this long, a loaded 2-core machine still passes.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn register(name: &str) -> Command {
    Command::RegisterNode {
        node: RegisterRequest {
            name: name.to_string(),
            address: format!("http://{name}:7001"),
            capacity: Capacity {
                cpu_millis: 2_000,
                memory_bytes: 1 << 30,
            },
            allocatable: Capacity::default(),
            drivers: vec!["process".to_string()],
            notes: vec![],
            version: "test".to_string(),
        },
        time: Timestamp(1_700_000_000_000),
    }
}

pub(crate) fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Builds a fresh pair of stores in their own directory for each suite case; the directory is
/// the guard that keeps the file alive until the case ends.
struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, state_machine, _) = open(&dir.path().join("store.redb"), StoreOptions::default())
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn redb_store_passes_openraft_conformance_suite() {
    Suite::test_all(FreshStore).unwrap();
}

#[test]
fn recommended_config_is_valid() {
    crate::raft::config("outpost").validate().unwrap();
}

#[test]
fn second_open_of_a_file_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let _first = open(&path, StoreOptions::default()).unwrap();
    let err = open(&path, StoreOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("is another outpost using this data dir?"),
        "{message}"
    );
}

#[test]
fn missing_data_dir_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("state.redb");
    let message = open(&path, StoreOptions::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!("cannot open store {}", path.display())),
        "{message}"
    );
}

/// Waits until the applied index is greater than `index` and returns it; `None` if the store
/// closed first.
async fn wait_past(handle: &StateHandle, index: u64) -> Option<u64> {
    let mut applied = handle.subscribe();
    let result = applied.wait_for(|applied| *applied > index).await;
    result.ok().map(|applied| *applied)
}

#[tokio::test]
async fn applied_state_survives_reopen_and_wakes_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (_log, mut sm, handle) = open(&path, StoreOptions::default()).unwrap();
    let waiter = tokio::spawn({
        let handle = handle.clone();
        async move { wait_past(&handle, 0).await }
    });

    let responses = sm
        .apply([entry(1, register("edge-1")), entry(2, register("edge-2"))])
        .await
        .unwrap();

    assert_eq!(responses, vec![Response::Ok, Response::Ok]);
    assert_eq!(
        tokio::time::timeout(PATIENCE, waiter)
            .await
            .unwrap()
            .unwrap(),
        Some(2)
    );
    drop((_log, sm));
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
    let (_log, mut sm, handle) = open(&path, StoreOptions::default()).unwrap();
    assert_eq!(handle.applied_index(), 2);
    assert_eq!(
        handle.read(|s| s.nodes.keys().cloned().collect::<Vec<_>>()),
        ["edge-1", "edge-2"]
    );
    assert_eq!(
        sm.applied_state().await.unwrap().0,
        Some(LogId::new(CommittedLeaderId::new(1, 1), 2))
    );
}

#[tokio::test]
async fn installed_snapshot_replaces_state_and_survives_reopen() {
    let leader_dir = tempfile::tempdir().unwrap();
    let (_leader_log, mut leader, _) = open(
        &leader_dir.path().join("state.redb"),
        StoreOptions::default(),
    )
    .unwrap();
    leader
        .apply([entry(1, register("edge-1")), entry(2, register("edge-2"))])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (log, mut follower, handle) = open(&path, StoreOptions::default()).unwrap();
    follower.apply([entry(1, register("stale"))]).await.unwrap();
    let data = Box::new(Cursor::new(snapshot.snapshot.get_ref().clone()));
    follower
        .install_snapshot(&snapshot.meta, data)
        .await
        .unwrap();

    assert_eq!(handle.applied_index(), 2);
    assert_eq!(
        handle.read(|s| s.nodes.keys().cloned().collect::<Vec<_>>()),
        ["edge-1", "edge-2"]
    );
    drop((log, follower));
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
    let (_log, mut follower, handle) = open(&path, StoreOptions::default()).unwrap();
    assert_eq!(handle.read(|s| s.nodes.len()), 2);
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

/// A one-member group never sends a message; if openraft ever tried, the peer is unreachable.
struct NoPeers;

fn no_peer<E: std::error::Error>() -> RPCError<NodeId, Node, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "a one-member test group has no peers",
    )))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: NodeId, _node: &Node) -> NoPeers {
        NoPeers
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(no_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(no_peer())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest,
        _option: RPCOption,
    ) -> Result<VoteResponse, RPCError<NodeId, Node, RaftError<NodeId>>> {
        Err(no_peer())
    }
}

const SELF: NodeId = 1;

pub(crate) async fn start(path: &Path) -> (Raft, StateHandle) {
    let (log, state_machine, handle) = open(path, StoreOptions::default()).unwrap();
    let config = Arc::new(crate::raft::config("test"));
    let raft = Raft::new(SELF, config, NoPeers, log, state_machine)
        .await
        .unwrap();
    let members = BTreeMap::from([(
        SELF,
        Node {
            addr: "127.0.0.1:7000".into(),
            name: String::new(),
        },
    )]);
    crate::raft::initialize_once(&raft, members).await.unwrap();
    raft.wait(Some(PATIENCE))
        .current_leader(SELF, "single member leads")
        .await
        .unwrap();
    (raft, handle)
}

pub(crate) async fn stop(raft: Raft, handle: &StateHandle) {
    raft.shutdown().await.unwrap();
    drop(raft);
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_member_raft_keeps_state_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (raft, handle) = start(&path).await;
    let mut applied = handle.subscribe();

    let written = raft.client_write(register("edge-1")).await.unwrap();

    assert_eq!(written.data, Response::Ok);
    let index = written.log_id.index;
    tokio::time::timeout(PATIENCE, applied.wait_for(|i| *i >= index))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        handle.read(|s| (s.index, s.nodes.contains_key("edge-1"))),
        (index, true)
    );
    stop(raft, &handle).await;

    let (raft, handle) = start(&path).await;
    assert!(
        !crate::raft::initialize_once(&raft, BTreeMap::new())
            .await
            .unwrap(),
        "already initialized"
    );
    assert!(
        handle.read(|s| s.nodes.contains_key("edge-1")),
        "state survived the restart"
    );
    let written = raft.client_write(register("edge-2")).await.unwrap();
    assert!(
        written.log_id.index > index,
        "the log continues where it stopped"
    );
    assert_eq!(
        wait_past(&handle, index).await,
        Some(handle.applied_index())
    );
    assert_eq!(handle.read(|s| s.nodes.len()), 2);
    stop(raft, &handle).await;
}

/// A store written by a real one-member Raft (log, vote, membership, state), closed, then changed
/// on disk by `damage`; returns the error opening it gives.
async fn open_after(damage: impl FnOnce(&Path)) -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (raft, handle) = start(&path).await;
    for name in ["edge-1", "edge-2", "edge-3"] {
        raft.client_write(register(name)).await.unwrap();
    }
    stop(raft, &handle).await;
    damage(&path);
    let err = open(&path, StoreOptions::default())
        .map(|_| ())
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains("restore the data dir from a backup")
            && message.contains("--reset")
            && !message.contains("panicked"),
        "{message}"
    );
    (dir, message)
}

fn truncate(path: &Path, len: impl FnOnce(u64) -> u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = file.metadata().unwrap().len();
    file.set_len(len(size)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_truncated_to_half_is_refused_with_the_file_and_the_remedy() {
    let (_dir, message) = open_after(|p| truncate(p, |size| size / 2)).await;
    assert!(message.contains("is damaged"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_truncated_to_4_kib_is_refused_with_the_file_and_the_remedy() {
    let (_dir, message) = open_after(|p| truncate(p, |_| 4096)).await;
    assert!(message.contains("is damaged"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_in_a_stored_record_is_refused_naming_table_and_key() {
    let (_dir, message) = open_after(|path| {
        let mut bytes = std::fs::read(path).unwrap();
        let needle = b"edge-3";
        let mut changed = 0;
        for at in 0..bytes.len().saturating_sub(needle.len()) {
            if &bytes[at..at + needle.len()] == needle {
                bytes[at + 5] = b'9';
                changed += 1;
            }
        }
        assert!(changed > 0, "the record is stored as JSON");
        std::fs::write(path, bytes).unwrap();
    })
    .await;
    assert!(
        message.contains("table raft_log") || message.contains("table state_machine"),
        "{message}"
    );
    assert!(message.contains("checksum does not match"), "{message}");
}
