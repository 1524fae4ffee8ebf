//! The state machine on redb — openraft's [`RaftStateMachine`] and [`RaftSnapshotBuilder`].
//!
//! Committed entries are applied to the in-memory [`State`] through `State::apply`; then the
//! state, the last applied log id and the membership are written in one transaction, once per
//! batch. Because they commit together, a restart resumes exactly where apply stopped and an
//! entry is never applied twice to the persisted state. Readers see the state through
//! [`StateHandle`](crate::StateHandle), which is told the applied index after each batch is
//! durable.
//!
//! A snapshot is the JSON of the state and its [`SnapshotMeta`]; the latest one is kept in the
//! same file so that a leader can send it to a lagging follower after a restart.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use redb::{ReadableTable, TableHandle};
use serde::{Deserialize, Serialize};

use crate::db::{self, Db, DbError, MACHINE, SM, SNAPSHOT, SNAPSHOT_META};
use crate::raft::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::state::{Response, State};

/// Everything the state machine persists: the state and where in the log it stands.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

impl Machine {
    fn apply(&mut self, entry: Entry) -> Response {
        let log_id = entry.log_id;
        self.last_applied = Some(log_id);
        let response = match entry.payload {
            EntryPayload::Normal(command) => self.state.apply(log_id.index, &command),
            // Raft's own entries change no cluster state, but `State::index` counts every applied
            // entry so that it always equals the applied index readers wait on.
            EntryPayload::Blank => {
                self.state.index = log_id.index;
                Response::Ok
            }
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                self.state.index = log_id.index;
                Response::Ok
            }
        };
        debug_assert_eq!(
            self.state.check(),
            Ok(()),
            "state invariant broken by entry {log_id}"
        );
        response
    }
}

/// A snapshot as written: the state with the meta that says where in the log it was taken.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    meta: &'a SnapshotMeta,
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapshotFile {
    state: State,
}

/// The applied state, shared by the state machine (the only writer) and every [`StateHandle`]
/// (readers).
///
/// [`StateHandle`]: crate::StateHandle
pub(crate) type SharedMachine = Arc<RwLock<Machine>>;

// A panic while the lock is held can only come from a broken invariant in a debug build; the
// state is still the best there is to read, so readers carry on rather than cascade the panic.
pub(crate) fn read(machine: &RwLock<Machine>) -> RwLockReadGuard<'_, Machine> {
    machine.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(machine: &RwLock<Machine>) -> RwLockWriteGuard<'_, Machine> {
    machine.write().unwrap_or_else(PoisonError::into_inner)
}

/// The state machine openraft drives; built by [`open`](crate::open).
pub struct StateMachineStore {
    db: Arc<Db>,
    machine: SharedMachine,
    snapshots: Arc<AtomicU64>,
}

impl StateMachineStore {
    pub(crate) fn new(db: Arc<Db>, machine: SharedMachine) -> StateMachineStore {
        StateMachineStore {
            db,
            machine,
            snapshots: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes the applied state, then tells readers: what a blocking query sees is durable.
    async fn persist(&self) -> Result<(), StorageError> {
        let encoded = {
            let machine = read(&self.machine);
            db::encode(&*machine).map(|bytes| (bytes, machine.state.index))
        };
        let (bytes, index) =
            encoded.map_err(|e| e.storage(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        db::write(&self.db, move |txn| {
            db::put_encoded(txn, SM, MACHINE, &bytes)
        })
        .await
        .map_err(|e| e.storage(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        self.db.applied.send_replace(index);
        Ok(())
    }

    async fn install(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), DbError> {
        let file: SnapshotFile = serde_json::from_slice(&data)?;
        let machine = Machine {
            state: file.state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let machine_bytes = db::encode(&machine)?;
        let meta_bytes = db::encode(meta)?;
        let data_bytes = seal::seal(&data);
        db::write(&self.db, move |txn| {
            db::put_encoded(txn, SM, MACHINE, &machine_bytes)?;
            db::put_encoded(txn, SM, SNAPSHOT_META, &meta_bytes)?;
            db::put_encoded(txn, SM, SNAPSHOT, &data_bytes)
        })
        .await?;
        let index = machine.state.index;
        *write(&self.machine) = machine;
        self.db.applied.send_replace(index);
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, DbError> {
        let txn = self.db.file.begin_read()?;
        let table = txn.open_table(SM)?;
        let (Some(meta), Some(data)) = (table.get(SNAPSHOT_META)?, table.get(SNAPSHOT)?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta = db::decode(SM.name(), SNAPSHOT_META, meta.value())?;
        let data = db::open_record(SM.name(), SNAPSHOT, data.value())?;
        let data = Box::new(Cursor::new(data.to_vec()));
        Ok(Some(Snapshot {
            meta,
            snapshot: data,
        }))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let machine = read(&self.machine);
        Ok((machine.last_applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let responses: Vec<Response> = {
            let mut machine = write(&self.machine);
            entries
                .into_iter()
                .map(|entry| machine.apply(entry))
                .collect()
        };
        if !responses.is_empty() {
            self.persist().await?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            db: Arc::clone(&self.db),
            machine: Arc::clone(&self.machine),
            snapshots: Arc::clone(&self.snapshots),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| {
                e.storage(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                )
            })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current_snapshot()
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))
    }
}

/// Builds a snapshot from the applied state while the state machine goes on applying.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    machine: SharedMachine,
    snapshots: Arc<AtomicU64>,
}

impl SnapshotBuilder {
    /// The meta and JSON of the applied state, taken under one read lock so they agree.
    fn encode(&self) -> Result<(SnapshotMeta, Vec<u8>), DbError> {
        let machine = read(&self.machine);
        let last = machine
            .last_applied
            .map_or_else(|| "none".to_string(), |id| id.to_string());
        // The id only has to tell this snapshot from others while one is being streamed to a
        // follower; the counter makes it unique within this process.
        let n = self.snapshots.fetch_add(1, Ordering::Relaxed) + 1;
        let meta = SnapshotMeta {
            last_log_id: machine.last_applied,
            last_membership: machine.membership.clone(),
            snapshot_id: format!("{last}-{n}"),
        };
        let bytes = serde_json::to_vec(&SnapshotRef {
            meta: &meta,
            state: &machine.state,
        })?;
        Ok((meta, bytes))
    }

    async fn save(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), DbError> {
        let meta = meta.clone();
        let data = seal::seal(&data);
        db::write(&self.db, move |txn| {
            // A snapshot installed from the leader while this one was built may be newer; keep it.
            let saved: Option<SnapshotMeta> = saved_meta(txn)?;
            if saved.is_some_and(|saved| saved.last_log_id > meta.last_log_id) {
                return Ok(());
            }
            db::put(txn, SM, SNAPSHOT_META, &meta)?;
            db::put_encoded(txn, SM, SNAPSHOT, &data)
        })
        .await
    }
}

fn saved_meta(txn: &redb::WriteTransaction) -> Result<Option<SnapshotMeta>, DbError> {
    let table = txn.open_table(SM)?;
    let Some(value) = table.get(SNAPSHOT_META)? else {
        return Ok(None);
    };
    Ok(Some(db::decode(SM.name(), SNAPSHOT_META, value.value())?))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let build = async {
            let (meta, bytes) = self.encode()?;
            self.save(&meta, bytes.clone()).await?;
            Ok::<_, DbError>(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            })
        };
        build
            .await
            .map_err(|e| e.storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))
    }
}
