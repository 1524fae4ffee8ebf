//! Tests of the table layout: what was applied is what a reopened store (and a snapshot of it)
//! holds, nothing acknowledged is lost in a crash, one status change costs bytes in proportion
//! to itself, events past retention leave memory and disk alike, and a file of the first format
//! still opens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::{
    DesiredState, NewEvent, NodeState, Placement, StatusReport, Task, TaskState, TaskStatus,
    Timestamp,
};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, RaftSnapshotBuilder};
use proptest::prelude::*;
use redb::{Database, ReadableTableMetadata};
use spec::ServiceSpec;
use tempfile::TempDir;

use super::{EVENTS, META, Meta, read_meta};
use crate::db::{self, LOG, LOG_META, MACHINE, SM};
use crate::events::{Checkpoint, Retention, StoreOptions};
use crate::raft::{LogId, StoredMembership};
use crate::state::{Command, State};
use crate::state_machine::Machine;
use crate::tests::{PATIENCE, entry, register, start, stop};
use crate::{ChangedServices, LogStore, StateHandle, StateMachineStore, StoreError, open};

/// A state of the first format (one JSON value), written by `outpost` before the tables: two
/// nodes, two services, three placed tasks, one reported running, eight events.
const FIRST_FORMAT_STATE: &str = include_str!("first-format-state.json");

const BASE: u64 = 1_700_000_000_000;
const HOUR: u64 = 60 * 60 * 1000;

fn at(hours: u64) -> Timestamp {
    Timestamp(BASE + hours * HOUR)
}

type Stores = (LogStore, StateMachineStore, StateHandle);

/// Drops the stores as a stopping server does, waits for the file to close, and opens it again.
async fn reopen(path: &Path, stores: Stores, options: StoreOptions) -> Stores {
    let (log, sm, handle) = stores;
    drop((log, sm));
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
    open(path, options).unwrap()
}

fn new_store(options: StoreOptions) -> (TempDir, PathBuf, Stores) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let stores = open(&path, options).unwrap();
    (dir, path, stores)
}

/// Applies each batch as one call, as openraft does, numbering entries from `first`.
async fn apply_batches(sm: &mut StateMachineStore, first: u64, batches: Vec<Vec<Command>>) -> u64 {
    let mut index = first;
    for batch in batches {
        let entries: Vec<_> = batch
            .into_iter()
            .map(|c| {
                index += 1;
                entry(index, c)
            })
            .collect();
        sm.apply(entries).await.unwrap();
    }
    index
}

fn register_at(name: &str, time: Timestamp) -> Command {
    let Command::RegisterNode { node, .. } = register(name) else {
        unreachable!("register builds a registration")
    };
    Command::RegisterNode { node, time }
}

fn spec(name: &str, replicas: u32, variant: bool) -> ServiceSpec {
    let mut spec = ServiceSpec::process(name, &["app"]);
    spec.replicas = replicas;
    if variant {
        spec.env.insert("VARIANT".into(), "1".into());
        // A policy that is not the default goes to disk and back too.
        spec.on_node_lost = spec::OnNodeLost::Keep(spec::KeepTasks::Keep);
    }
    spec
}

fn status(id: &str, state: TaskState, restarts: u32, evicted: bool) -> TaskStatus {
    TaskStatus {
        seq: 0,
        id: id.to_string(),
        state,
        evicted,
        ready: state == TaskState::Running,
        restarts,
        pid: Some(100 + restarts),
        container_id: None,
        ports: BTreeMap::new(),
        started_at: Some(at(u64::from(restarts))),
        exit_code: None,
        message: None,
        last_exit: None,
        next_start: None,
    }
}

fn seen(reason: &str, time: Timestamp) -> NewEvent {
    NewEvent {
        time,
        level: api::Level::Info,
        reason: reason.to_string(),
        service: None,
        task: None,
        node: None,
        message: format!("{reason} seen by the agent"),
    }
}

fn node_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from)
}

fn service_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["web", "db"]).prop_map(String::from)
}

/// Ids as the state makes them (`service.slot.counter`), from a range small enough that many
/// name a task that exists.
fn task_id() -> impl Strategy<Value = String> {
    (service_name(), 1..4u32, 1..16u64).prop_map(|(s, slot, n)| format!("{s}.{slot}.{n}"))
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(vec![
        TaskState::Pending,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Exited,
        TaskState::Failed,
    ])
}

fn time() -> impl Strategy<Value = Timestamp> {
    (0..48u64).prop_map(at)
}

fn report() -> impl Strategy<Value = Command> {
    let statuses = prop::collection::vec((task_id(), task_state(), 0..3u32, any::<bool>()), 0..3);
    let events = prop::collection::vec("[a-z]{1,8}", 0..3);
    (
        node_name(),
        0..6u64,
        statuses,
        events,
        prop::option::of(any::<bool>()),
        time(),
    )
        .prop_map(
            |(node, seq, statuses, events, pressure, time)| Command::Report {
                node,
                report: StatusReport {
                    seq,
                    tasks: statuses
                        .into_iter()
                        .map(|(id, state, restarts, evicted)| status(&id, state, restarts, evicted))
                        .collect(),
                    events: events.iter().map(|r| seen(r, time)).collect(),
                    memory_pressure: pressure,
                },
                time,
            },
        )
}

fn reconcile() -> impl Strategy<Value = Command> {
    let place = prop::collection::vec((service_name(), 1..4u32, node_name()), 0..4);
    let stop = prop::collection::vec(task_id(), 0..2);
    let pending = prop::collection::vec((service_name(), "[a-z ]{1,12}"), 0..2);
    (place, stop, pending, time()).prop_map(|(place, stop, pending, time)| Command::Reconcile {
        place: place
            .into_iter()
            .map(|(service, slot, node)| Placement {
                service,
                slot,
                node,
            })
            .collect(),
        stop,
        pending,
        time,
        completed: Vec::new(),
        stalled: Vec::new(),
    })
}

/// Anything an operator, the leader's controllers or an agent could commit, on a few names so
/// that commands meet the same services, nodes and tasks.
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        1 => (node_name(), time()).prop_map(|(n, t)| register_at(&n, t)),
        1 => (service_name(), 0..4u32, any::<bool>(), time()).prop_map(|(s, r, v, time)| {
            Command::Deploy {
                services: vec![spec(&s, r, v)],
                time,
            }
        }),
        1 => (service_name(), 0..4u32, time()).prop_map(|(service, replicas, time)| Command::Scale {
            service,
            replicas,
            time
        }),
        1 => (service_name(), time()).prop_map(|(service, time)| Command::Remove { service, time }),
        1 => (
            node_name(),
            prop::sample::select(vec![NodeState::Ready, NodeState::Suspect, NodeState::Down]),
            time()
        )
            .prop_map(|(node, state, time)| Command::SetNodeState { node, state, time, silent_since: None }),
        3 => reconcile(),
        3 => report(),
    ]
}

/// Small bounds, so that random runs push events out by count and by age.
const SMALL: Retention = Retention {
    max_events: 8,
    max_age: Duration::from_secs(12 * 60 * 60),
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn a_reopened_store_and_a_snapshot_of_it_hold_exactly_the_state_that_was_applied(
        batches in prop::collection::vec(prop::collection::vec(command(), 1..6), 1..8)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (applied, reopened, installed) = runtime.block_on(async {
            let options = StoreOptions {
                retention: SMALL,
                ..StoreOptions::default()
            };
            let (_dir, path, (log, mut sm, handle)) = new_store(options.clone());
            apply_batches(&mut sm, 0, batches).await;
            let applied = handle.read(State::clone);
            let (_log, mut sm, handle) = reopen(&path, (log, sm, handle), options.clone()).await;
            let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            let (_other, _, (_log, mut follower, installed)) = new_store(options);
            let data = Box::new(std::io::Cursor::new(snapshot.snapshot.into_inner()));
            follower.install_snapshot(&snapshot.meta, data).await.unwrap();
            (applied, handle.read(State::clone), installed.read(State::clone))
        });
        prop_assert_eq!(&reopened, &applied);
        prop_assert_eq!(&installed, &applied);
        for state in [&reopened, &installed] {
            prop_assert_eq!(state.check(), Ok(()));
            for node in ["a", "b", "c"] {
                prop_assert_eq!(state.assignments(node), applied.assignments(node));
            }
        }
        prop_assert!(applied.events.len() <= SMALL.max_events);
    }
}

#[tokio::test]
async fn a_crash_right_after_a_checkpoint_finds_the_tables_at_its_index() {
    let every_batch = StoreOptions {
        checkpoint: Checkpoint::EVERY_BATCH,
        ..StoreOptions::default()
    };
    let (dir, path, (_log, mut sm, handle)) = new_store(every_batch);
    // A copy of the file taken while the store is open is what a power cut leaves on disk: the
    // file was never closed, and redb recovers it on the next open. Checkpoints are written
    // while applying goes on, so the copy is taken again until it holds the batch's.
    let crash_image = async |name: &str, index: u64| {
        let image = dir.path().join(name);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            std::fs::copy(&path, &image).unwrap();
            let (_log, mut sm, handle) = open(&image, StoreOptions::default()).unwrap();
            let (last_applied, _) = sm.applied_state().await.unwrap();
            if last_applied.map(|id| id.index) == Some(index) {
                return handle.read(State::clone);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint at {index}"
            );
            drop((sm, handle));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    apply_batches(&mut sm, 0, vec![vec![register_at("edge-1", at(0))]]).await;
    let acknowledged = handle.read(State::clone);
    assert_eq!(crash_image("after-1.redb", 1).await, acknowledged);
    let deploy = Command::Deploy {
        services: vec![spec("web", 2, false)],
        time: at(1),
    };
    apply_batches(&mut sm, 1, vec![vec![deploy, register_at("edge-2", at(1))]]).await;
    let acknowledged = handle.read(State::clone);
    assert_eq!(crash_image("after-2.redb", 3).await, acknowledged);
}

/// A one-server group on `path` that has acknowledged registering `names`.
async fn start_with_nodes(path: &Path, names: &[&str]) -> (crate::raft::Raft, StateHandle) {
    let (raft, handle) = start(path).await;
    for name in names {
        raft.client_write(register(name)).await.unwrap();
    }
    (raft, handle)
}

/// Between checkpoints the tables stand behind the log: a power cut then leaves acknowledged
/// writes only in the log, and the next start applies them again from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_checkpoints_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let names = ["edge-1", "edge-2", "edge-3"];
    let (raft, handle) = start_with_nodes(&path, &names).await;
    // The file as a power cut leaves it: copied while open, never closed.
    let image = dir.path().join("crash.redb");
    std::fs::copy(&path, &image).unwrap();
    stop(raft, &handle).await;

    let tables_at = {
        let file = Database::open(&image).unwrap();
        let meta = read_meta(&file.begin_read().unwrap()).unwrap();
        // No meta row yet: no checkpoint was due, the tables hold nothing.
        meta.and_then(|m| m.last_applied).map_or(0, |id| id.index)
    };
    let (raft, handle) = start(&image).await;
    let applied = handle.read(|s| s.index);
    assert!(
        tables_at < applied,
        "the tables stood at {tables_at}, the log at {applied}: nothing was left to apply again"
    );
    assert_eq!(
        handle.read(|s| s.nodes.keys().cloned().collect::<Vec<_>>()),
        names
    );
    stop(raft, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_dropped_without_shutdown_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let names = ["edge-1", "edge-2", "edge-3"];
    let (raft, handle) = start_with_nodes(&path, &names).await;
    drop(raft);
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();

    let (raft, handle) = start(&path).await;
    assert_eq!(
        handle.read(|s| s.nodes.keys().cloned().collect::<Vec<_>>()),
        names
    );
    stop(raft, &handle).await;
}

/// 10,000 tasks of 100 services on 100 nodes, as a busy site holds them; the last of them is
/// `svc-99.100.10000` on `node-99`.
fn large_state() -> Machine {
    let mut state = State::default();
    for n in 0..100 {
        state.apply(state.index + 1, &register_at(&format!("node-{n}"), at(0)));
    }
    let services = (0..100)
        .map(|s| spec(&format!("svc-{s}"), 100, false))
        .collect();
    let deploy = Command::Deploy {
        services,
        time: at(0),
    };
    state.apply(state.index + 1, &deploy);
    // Placed directly rather than through `Reconcile`: the fixture is about the size of the
    // state, not how it was reached.
    for s in 0..100 {
        for slot in 1..=100 {
            state.next_task += 1;
            let task = placed_task(&format!("svc-{s}"), slot, state.next_task, s);
            state.tasks.insert(task.id.clone(), task);
        }
    }
    state.reindex();
    assert_eq!((state.tasks.len(), state.check()), (10_000, Ok(())));
    Machine::new(state, None, StoredMembership::default())
}

fn placed_task(service: &str, slot: u32, n: u64, node: usize) -> Task {
    Task {
        id: format!("{service}.{slot}.{n}"),
        service: service.to_string(),
        slot,
        version: 1,
        node: Some(format!("node-{node}")),
        desired: DesiredState::Running,
        state: TaskState::Starting,
        ready: false,
        restarts: 0,
        qos: spec::QosClass::BestEffort,
        pid: None,
        container_id: None,
        ports: BTreeMap::new(),
        started_at: None,
        ready_since: None,
        status_seq: 0,
        exit_code: None,
        message: None,
        last_exit: None,
        next_start: None,
        created_at: at(0),
        updated_at: at(0),
        node_state: None,
    }
}

#[test]
fn one_status_change_writes_bytes_in_proportion_to_it_not_to_the_state() {
    let mut machine = large_state();
    let retention = Retention::default();
    let whole = machine.changes(&retention, true).unwrap().bytes();
    let report = Command::Report {
        node: "node-99".into(),
        report: StatusReport {
            seq: 1,
            tasks: vec![status("svc-99.100.10000", TaskState::Running, 0, false)],
            events: vec![],
            memory_pressure: None,
        },
        time: at(1),
    };
    machine.apply(entry(machine.state.index + 1, report));
    assert!(machine.state.tasks["svc-99.100.10000"].ready);

    let changes = machine.changes(&retention, false).unwrap();
    let changed: Vec<(&str, usize)> = changes
        .maps
        .iter()
        .map(|(name, rows)| (*name, rows.len()))
        .filter(|(_, rows)| *rows > 0)
        .collect();
    assert_eq!(changed, [("tasks", 1), ("report_seq", 1)]);
    let one = changes.bytes();
    assert!(one < 8 * 1024, "one status change writes {one} bytes");
    assert!(
        one * 1_000 < whole,
        "one status change writes {one} bytes, the whole state {whole}"
    );
}

#[tokio::test]
async fn events_past_retention_leave_memory_and_disk_alike() {
    let options = StoreOptions {
        retention: Retention {
            max_events: 3,
            max_age: Duration::from_secs(60 * 60),
        },
        ..StoreOptions::default()
    };
    let (_dir, path, (log, mut sm, handle)) = new_store(options.clone());
    let seqs = |handle: &StateHandle| {
        handle.read(|s| s.events.iter().map(|e| e.seq).collect::<Vec<u64>>())
    };
    let nodes = ["a", "b", "c", "d", "e"].map(|n| register_at(n, at(0)));
    apply_batches(&mut sm, 0, vec![nodes.to_vec()]).await;
    assert_eq!(seqs(&handle), vec![3, 4, 5], "by count");
    let down = Command::SetNodeState {
        node: "a".into(),
        state: NodeState::Down,
        time: at(2),
        silent_since: None,
    };
    apply_batches(&mut sm, 5, vec![vec![down]]).await;
    assert_eq!(
        seqs(&handle),
        vec![6],
        "by age, as the cluster's clock tells it"
    );

    let stores = reopen(&path, (log, sm, handle), options).await;
    assert_eq!(seqs(&stores.2), vec![6]);
    let handle = stores.2.clone();
    drop(stores);
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
    let file = Database::open(&path).unwrap();
    let rows = file.begin_read().unwrap().open_table(EVENTS).unwrap().len();
    assert_eq!(rows.unwrap(), 1, "the older rows are deleted");
}

/// Writes a file as the first format did: the log's tables and the whole state machine as one
/// sealed JSON value.
fn write_first_format(path: &Path, last_applied: LogId) -> State {
    let state: serde_json::Value = serde_json::from_str(FIRST_FORMAT_STATE).unwrap();
    let machine = serde_json::json!({
        "state": state,
        "last_applied": last_applied,
        "membership": StoredMembership::default(),
    });
    let file = Database::create(path).unwrap();
    let txn = file.begin_write().unwrap();
    txn.open_table(LOG).unwrap();
    txn.open_table(LOG_META).unwrap();
    db::put(&txn, SM, MACHINE, &machine).unwrap();
    txn.commit().unwrap();
    let mut expected: State = serde_json::from_value(state).unwrap();
    expected.reindex();
    expected
}

#[tokio::test]
async fn a_store_of_the_first_format_is_migrated_once_and_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let last_applied = LogId::new(CommittedLeaderId::new(1, 1), 6);
    let expected = write_first_format(&path, last_applied);

    let (log, mut sm, handle) = open(&path, StoreOptions::default()).unwrap();
    assert_eq!(handle.read(State::clone), expected);
    assert_eq!(handle.applied_index(), 6);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(last_applied));
    assert_eq!(handle.read(|s| s.assignments("a").len()), 2);
    assert_eq!(handle.read(|s| s.events.len()), 8);

    let (log, sm, handle) = reopen(&path, (log, sm, handle), StoreOptions::default()).await;
    assert_eq!(handle.read(State::clone), expected, "read from the tables");
    drop((log, sm));
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
    let file = Database::open(&path).unwrap();
    let txn = file.begin_read().unwrap();
    let sm = txn.open_table(SM).unwrap();
    assert!(sm.get(MACHINE).unwrap().is_none(), "the old value is gone");
    assert!(sm.get(META).unwrap().is_some());
    assert_eq!(txn.open_table(EVENTS).unwrap().len().unwrap(), 8);
}

#[tokio::test]
async fn a_store_of_a_newer_format_is_refused_with_what_to_do() {
    let (_dir, path, (log, mut sm, handle)) = new_store(StoreOptions::default());
    apply_batches(&mut sm, 0, vec![vec![register("edge-1")]]).await;
    drop((log, sm));
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
    {
        let file = Database::open(&path).unwrap();
        let txn = file.begin_write().unwrap();
        let newer = Meta {
            format: 99,
            ..Meta::default()
        };
        db::put(&txn, SM, META, &newer).unwrap();
        txn.commit().unwrap();
    }

    let err = open(&path, StoreOptions::default())
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NewerFormat { found: 99, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("run the newer outpost"), "{message}");
}

#[tokio::test]
async fn a_node_watch_wakes_for_its_own_node_only() {
    let (_dir, _path, (_log, mut sm, handle)) = new_store(StoreOptions::default());
    apply_batches(&mut sm, 0, vec![vec![register_at("a", at(0))]]).await;
    let mut a = handle.watch_node("a");
    apply_batches(&mut sm, 1, vec![vec![register_at("b", at(1))]]).await;
    assert!(!a.has_changed().unwrap(), "woken by another node's change");
    apply_batches(&mut sm, 2, vec![vec![register_at("a", at(2))]]).await;
    assert!(
        a.has_changed().unwrap(),
        "not woken by its own node's change"
    );
    assert_eq!(*a.borrow_and_update(), 3);
}

#[tokio::test]
async fn the_services_a_batch_touched_are_taken_once() {
    let (_dir, _path, (_log, mut sm, handle)) = new_store(StoreOptions::default());
    let mut services = handle.watch_services();
    let deploy = Command::Deploy {
        services: vec![spec("web", 0, false), spec("db", 0, false)],
        time: at(0),
    };
    apply_batches(&mut sm, 0, vec![vec![deploy]]).await;
    assert!(services.has_changed().unwrap(), "a deploy is a change");
    services.mark_unchanged();
    let changed = handle.take_changed_services();
    assert!(!changed.all);
    assert_eq!(
        changed.services.into_iter().collect::<Vec<_>>(),
        ["db", "web"]
    );
    assert_eq!(handle.take_changed_services(), ChangedServices::default());

    apply_batches(&mut sm, 1, vec![vec![register_at("a", at(1))]]).await;
    assert!(services.has_changed().unwrap());
    assert!(
        handle.take_changed_services().all,
        "a node's row may change every service with a task there"
    );
}

#[test]
fn merged_rows_are_written_once_each_with_their_last_value_in_key_order() {
    let row = |key: &str, value: Option<&[u8]>| (key.to_string(), value.map(<[u8]>::to_vec));
    let rows = vec![
        row("web.2.1", Some(b"starting")),
        row("api.1.1", Some(b"running")),
        row("web.2.1", Some(b"ready")),
        row("api.1.1", None),
        row("db.1.1", None),
        row("db.1.1", Some(b"back")),
    ];
    let written: Vec<(&str, Option<&[u8]>)> = super::latest(&rows)
        .into_iter()
        .map(|(key, value)| (key, value.as_deref()))
        .collect();
    assert_eq!(
        written,
        vec![
            ("api.1.1", None),
            ("db.1.1", Some(&b"back"[..])),
            ("web.2.1", Some(&b"ready"[..])),
        ]
    );
}
