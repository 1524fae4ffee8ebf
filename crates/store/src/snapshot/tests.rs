//! Tests of snapshots as a follower meets them: one from a leader replaces everything it held,
//! one of the first format still installs, and one it cannot read is refused saying why.

use std::io::Cursor;
use std::path::Path;

use api::{Placement, StatusReport, TaskState, TaskStatus, Timestamp};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, RaftSnapshotBuilder};
use redb::{Database, ReadableTable};
use spec::ServiceSpec;

use super::{Head, MAGIC, SNAPSHOT_FORMAT, Section, envelope};
use crate::raft::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::state::{Command, Counters, State};
use crate::tables::{self, EVENTS};
use crate::tests::{PATIENCE, entry, register};
use crate::{LogStore, StateHandle, StateMachineStore, StoreOptions, open};

const T: Timestamp = Timestamp(1_700_000_000_000);

fn deploy(name: &str, replicas: u32) -> Command {
    let mut spec = ServiceSpec::process(name, &["app"]);
    spec.replicas = replicas;
    Command::Deploy {
        services: vec![spec],
        time: T,
    }
}

fn place(service: &str, slots: u32, node: &str) -> Command {
    Command::Reconcile {
        place: (1..=slots)
            .map(|slot| Placement {
                service: service.into(),
                slot,
                node: node.into(),
            })
            .collect(),
        stop: vec![],
        completed: Vec::new(),
        stalled: Vec::new(),
        pending: vec![(service.into(), "testing".into())],
        time: T,
    }
}

fn running(node: &str, id: &str) -> Command {
    let status = TaskStatus {
        seq: 0,
        id: id.into(),
        state: TaskState::Running,
        evicted: false,
        ready: true,
        restarts: 0,
        pid: Some(7),
        container_id: None,
        ports: [("http".to_string(), 20_000)].into(),
        started_at: Some(T),
        exit_code: None,
        message: None,
        last_exit: None,
        next_start: None,
    };
    Command::Report {
        node: node.into(),
        report: StatusReport {
            seq: 3,
            tasks: vec![status],
            events: vec![],
            memory_pressure: Some(true),
        },
        time: T,
    }
}

type Stores = (LogStore, StateMachineStore, StateHandle);

/// A store at `path` with `commands` applied as one batch.
async fn store_with(path: &Path, commands: Vec<Command>) -> Stores {
    let (log, mut sm, handle) = open(path, StoreOptions::default()).unwrap();
    let entries: Vec<_> = (1..).zip(commands).map(|(i, c)| entry(i, c)).collect();
    sm.apply(entries).await.unwrap();
    (log, sm, handle)
}

async fn close(stores: Stores) {
    let handle = stores.2.clone();
    drop(stores);
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
}

async fn install(sm: &mut StateMachineStore, meta: &SnapshotMeta, data: Vec<u8>) -> String {
    match sm.install_snapshot(meta, Box::new(Cursor::new(data))).await {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn meta_at(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
        last_membership: StoredMembership::default(),
        snapshot_id: format!("test-{index}"),
    }
}

/// The keys of a table of the closed store at `path`.
fn stored_keys(path: &Path, table: &str) -> Vec<String> {
    let file = Database::open(path).unwrap();
    let txn = file.begin_read().unwrap();
    let table = txn.open_table(tables::map_table(table)).unwrap();
    let keys = table
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value().to_string());
    keys.collect()
}

fn stored_events(path: &Path) -> Vec<u64> {
    let file = Database::open(path).unwrap();
    let txn = file.begin_read().unwrap();
    let table = txn.open_table(EVENTS).unwrap();
    table
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value())
        .collect()
}

async fn leader_snapshot() -> (tempfile::TempDir, State, Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    let commands = vec![
        register("edge-1"),
        register("edge-2"),
        deploy("web", 2),
        place("web", 2, "edge-1"),
        running("edge-1", "web.1.1"),
    ];
    let (log, mut sm, handle) = store_with(&dir.path().join("state.redb"), commands).await;
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let state = handle.read(State::clone);
    close((log, sm, handle)).await;
    (dir, state, snapshot)
}

#[tokio::test]
async fn a_snapshot_replaces_every_table_of_the_follower() {
    let (_leader, leader_state, snapshot) = leader_snapshot().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    // The follower holds rows the leader never had, and more events than it.
    let mut stale = vec![
        register("stale"),
        deploy("old", 1),
        place("old", 1, "stale"),
    ];
    stale.extend((0..4).map(|_| register("stale")));
    let (log, mut sm, handle) = store_with(&path, stale).await;

    let data = snapshot.snapshot.get_ref().clone();
    assert_eq!(install(&mut sm, &snapshot.meta, data).await, "");

    assert_eq!(handle.read(State::clone), leader_state);
    assert_eq!(handle.read(|s| s.assignments("edge-1").len()), 2);
    assert_eq!(handle.applied_index(), 5);
    close((log, sm, handle)).await;
    assert_eq!(stored_keys(&path, "nodes"), ["edge-1", "edge-2"]);
    assert_eq!(stored_keys(&path, "tasks"), ["web.1.1", "web.2.2"]);
    assert_eq!(stored_keys(&path, "services"), ["web"]);
    let leader_seqs: Vec<u64> = leader_state.events.iter().map(|e| e.seq).collect();
    assert_eq!(stored_events(&path), leader_seqs);

    let (_log, mut sm, handle) = open(&path, StoreOptions::default()).unwrap();
    assert_eq!(
        handle.read(State::clone),
        leader_state,
        "after a restart too"
    );
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
}

#[tokio::test]
async fn a_snapshot_is_smaller_than_the_json_of_its_state() {
    let (_leader, state, snapshot) = leader_snapshot().await;
    let data = snapshot.snapshot.get_ref();
    assert!(data.starts_with(MAGIC));
    let json = serde_json::to_vec(&state).unwrap();
    assert!(
        data.len() < json.len(),
        "snapshot {} bytes, JSON {} bytes",
        data.len(),
        json.len()
    );
}

#[tokio::test]
async fn a_snapshot_of_the_first_format_still_installs() {
    let state: State =
        serde_json::from_str(include_str!("../tables/first-format-state.json")).unwrap();
    let meta = meta_at(state.index);
    let data = serde_json::to_vec(&serde_json::json!({ "meta": meta, "state": state })).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, handle) =
        store_with(&dir.path().join("state.redb"), vec![register("stale")]).await;

    assert_eq!(install(&mut sm, &meta, data).await, "");

    assert_eq!(handle.read(State::clone), state);
    assert_eq!(handle.read(|s| s.assignments("a").len()), 2);
    assert!(handle.read(|s| !s.nodes.contains_key("stale")));
}

/// Installs `data` into a store holding one node and returns the error and what is left.
async fn refused(data: Vec<u8>) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, handle) =
        store_with(&dir.path().join("state.redb"), vec![register("kept")]).await;
    let error = install(&mut sm, &meta_at(9), data).await;
    let nodes = handle.read(|s| s.nodes.keys().cloned().collect());
    (error, nodes)
}

fn head() -> Head {
    Head {
        counters: Counters {
            index: 9,
            ..Counters::default()
        },
        clock: T,
    }
}

#[tokio::test]
async fn a_snapshot_of_a_newer_format_is_refused_and_changes_nothing() {
    let mut data = envelope(SNAPSHOT_FORMAT + 1);
    rmp_serde::encode::write_named(&mut data, &head()).unwrap();

    let (error, nodes) = refused(data).await;

    let newer = SNAPSHOT_FORMAT + 1;
    assert!(
        error.contains(&format!(
            "its format {newer} is newer than this outpost reads"
        )),
        "{error}"
    );
    assert!(error.contains("upgrade this server"), "{error}");
    assert_eq!(nodes, ["kept"]);
}

#[tokio::test]
async fn a_snapshot_with_a_table_this_version_does_not_know_is_refused() {
    let mut data = envelope(SNAPSHOT_FORMAT);
    rmp_serde::encode::write_named(&mut data, &head()).unwrap();
    let section = Section {
        table: "no_such_table".into(),
        rows: 0,
    };
    rmp_serde::encode::write_named(&mut data, &section).unwrap();

    let (error, nodes) = refused(data).await;

    assert!(error.contains("\"no_such_table\""), "{error}");
    assert_eq!(nodes, ["kept"]);
}

#[test]
fn a_snapshot_written_without_the_newest_tables_reads_them_as_empty() {
    // What an older binary of this format wrote before a table was added: only some sections.
    let mut data = envelope(SNAPSHOT_FORMAT);
    rmp_serde::encode::write_named(&mut data, &head()).unwrap();
    let section = Section {
        table: "report_seq".into(),
        rows: 1,
    };
    rmp_serde::encode::write_named(&mut data, &section).unwrap();
    rmp_serde::encode::write_named(&mut data, &("edge-1", 4u64)).unwrap();

    let (state, clock) = super::read(&data).unwrap();

    assert_eq!((state.index, clock), (9, T));
    assert_eq!(state.report_seq.get("edge-1"), Some(&4));
    assert!(state.tasks.is_empty() && state.events.is_empty());
}

#[tokio::test]
async fn every_field_of_the_example_specs_survives_a_snapshot() {
    // Probes (a flattened enum, a port by name or number), ports, resources, restart policies
    // and compose-mapped fields: everything a spec can hold, through MessagePack and back.
    let mut services = Vec::new();
    for (name, text) in [
        ("web.yaml", include_str!("../../../../examples/web.yaml")),
        (
            "compose.yaml",
            include_str!("../../../../examples/compose.yaml"),
        ),
    ] {
        let parsed = spec::parse_file(name, text, &Default::default(), None).unwrap();
        services.extend(parsed.services);
    }
    assert!(
        services
            .iter()
            .any(|s| s.liveness.is_some() && !s.ports.is_empty())
    );
    let deploy = Command::Deploy { services, time: T };
    let leader = tempfile::tempdir().unwrap();
    let (log, mut sm, handle) = store_with(&leader.path().join("state.redb"), vec![deploy]).await;
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let leader_state = handle.read(State::clone);
    close((log, sm, handle)).await;

    let follower = tempfile::tempdir().unwrap();
    let (_log, mut sm, handle) =
        open(&follower.path().join("state.redb"), StoreOptions::default()).unwrap();
    let data = snapshot.snapshot.get_ref().clone();
    assert_eq!(install(&mut sm, &snapshot.meta, data).await, "");

    assert_eq!(handle.read(|s| s.services.clone()), leader_state.services);
}
