//! The state machine on redb — openraft's [`RaftStateMachine`] and [`RaftSnapshotBuilder`].
//!
//! Committed entries are applied to the in-memory [`State`] through `State::apply`. Under the
//! same lock, the rows the batch changed are encoded ([`Machine::changes`]: cost in proportion to
//! the change, not to the state). Readers see the batch at once (through
//! [`StateHandle`](crate::StateHandle), told the applied index): its entries are committed, so
//! they are durable in the Raft log already. The encoded rows wait with those of later batches
//! until a checkpoint is due ([`Checkpoint`]), then are written with the last applied log id and
//! the membership in one transaction, by the writer's thread while applying goes on (`writer`;
//! see `tables` for the layout). Because
//! rows and applied index commit together, the tables always hold the state at exactly the index
//! they say, and a restart resumes from there: openraft applies the committed entries after it
//! again from the log. Dropping the state machine (the server stopping) writes what waits.
//!
//! A snapshot is built from a read transaction over the tables (`snapshot` for its format), so
//! it stands at the last checkpoint; installing one drops what waits and replaces every table in
//! one transaction. The latest one is kept in the same file so that a leader can send it to a
//! lagging follower after a restart.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use api::Timestamp;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use redb::{ReadableTable, TableHandle};
use std::time::Instant;

use crate::StoreOptions;
use crate::db::{self, Db, DbError, SM, SNAPSHOT, SNAPSHOT_META};
use crate::directory::Directory;
use crate::events::{Checkpoint, Retention};
use crate::handle::Watches;
use crate::raft::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::snapshot;
use crate::state::{Response, State};
use crate::tables::{Changes, Meta, STORE_FORMAT};
use crate::writer::{self, Writer};
use tokio::sync::oneshot;

/// Everything the state machine persists: the state and where in the log it stands.
#[derive(Debug, Default)]
pub(crate) struct Machine {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// The time of the newest applied command: the cluster's clock for event retention.
    pub(crate) clock: Timestamp,
    /// `next_event` when the events were last written: the events above it are new.
    written_events: u64,
}

impl Machine {
    /// A machine whose state was just loaded (from its tables, a snapshot or the first format);
    /// what is derived from the state is rebuilt.
    pub(crate) fn new(
        mut state: State,
        last_applied: Option<LogId>,
        membership: StoredMembership,
    ) -> Machine {
        state.reindex();
        let written_events = state.next_event;
        Machine {
            state,
            last_applied,
            membership,
            clock: Timestamp::default(),
            written_events,
        }
    }

    pub(crate) fn apply(&mut self, entry: Entry) -> Response {
        let log_id = entry.log_id;
        self.last_applied = Some(log_id);
        let response = match entry.payload {
            EntryPayload::Normal(command) => {
                self.clock = self.clock.max(command.time());
                self.state.apply(log_id.index, &command)
            }
            // Raft's own entries change no cluster state, but `State::index` counts every applied
            // entry so that it always equals the applied index readers wait on.
            EntryPayload::Blank => {
                self.state.index = log_id.index;
                Response::Ok
            }
            EntryPayload::Membership(membership) => {
                self.state
                    .note_servers(membership.nodes().map(|(id, _)| *id));
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

    /// Drops the events past `retention` and encodes what changed since the last call, or with
    /// `replace` the whole state, with the meta row that says where it stands.
    pub(crate) fn changes(
        &mut self,
        retention: &Retention,
        replace: bool,
    ) -> Result<Changes, DbError> {
        retention.prune(&mut self.state.events, self.clock);
        let mut maps = Vec::new();
        for (name, map) in self.state.stored_maps() {
            if replace {
                map.mark_all_changed();
            }
            maps.push((name, map.take_changes()?));
        }
        let written = if replace { 0 } else { self.written_events };
        let new = self
            .state
            .events
            .iter()
            .rev()
            .take_while(|e| e.seq > written);
        let events = new
            .map(|e| Ok((e.seq, db::encode(e)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        self.written_events = self.state.next_event;
        let first_event = self
            .state
            .events
            .front()
            .map_or(self.state.next_event + 1, |e| e.seq);
        Ok(Changes {
            replace,
            maps,
            events,
            first_event,
            meta: db::encode(&self.meta())?,
            index: self.state.index,
        })
    }

    fn meta(&self) -> Meta {
        Meta {
            format: STORE_FORMAT,
            counters: self.state.counters(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            clock: self.clock,
        }
    }
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
    /// Nodes and certificates, kept beside the state for reads that must not wait for its lock.
    directory: Arc<Directory>,
    retention: Retention,
    checkpoint: Checkpoint,
    watches: Arc<Watches>,
    /// Changes applied since the tables were last written, and since when they wait.
    pending: Option<(Changes, Instant)>,
    /// Writes checkpoints off the apply path; started with the first.
    writer: Option<Writer>,
    /// The answer of the checkpoint being written, if one is.
    in_flight: Option<oneshot::Receiver<Result<(), DbError>>>,
    snapshots: Arc<AtomicU64>,
}

impl StateMachineStore {
    pub(crate) fn new(
        db: Arc<Db>,
        machine: SharedMachine,
        watches: Arc<Watches>,
        directory: Arc<Directory>,
        options: StoreOptions,
    ) -> StateMachineStore {
        StateMachineStore {
            db,
            machine,
            directory,
            retention: options.retention,
            checkpoint: options.checkpoint,
            watches,
            pending: None,
            writer: None,
            in_flight: None,
            snapshots: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Adds a batch's changes to those waiting, and hands them all to the writer once they are
    /// due: older than the checkpoint interval, or larger than its bytes. One checkpoint is
    /// written at a time; what falls due meanwhile goes with the next, and only when that
    /// grows past twice the bytes (a disk far slower than the changes) does applying wait.
    ///
    /// If a write fails, the in-memory state is ahead of the file; openraft treats the storage
    /// error as fatal and stops this server, and the next start re-applies from the log.
    async fn checkpoint(&mut self, changes: Changes) -> Result<(), DbError> {
        let (changes, since) = match self.pending.take() {
            Some((mut waiting, since)) => {
                waiting.merge(changes);
                (waiting, since)
            }
            None => (changes, Instant::now()),
        };
        self.collect_written()?;
        let due = since.elapsed() >= self.checkpoint.every
            || changes.bytes() >= self.checkpoint.max_bytes;
        let far_behind = changes.bytes() >= self.checkpoint.max_bytes.saturating_mul(2);
        if !due || (self.in_flight.is_some() && !far_behind) {
            self.pending = Some((changes, since));
            return Ok(());
        }
        self.finish_writing().await?;
        self.in_flight = Some(self.writer()?.write(changes));
        Ok(())
    }

    fn writer(&mut self) -> Result<&Writer, DbError> {
        let writer = match self.writer.take() {
            Some(writer) => writer,
            None => Writer::start(Arc::clone(&self.db))?,
        };
        Ok(self.writer.insert(writer))
    }

    /// The answer of the checkpoint in flight, if it has come.
    fn collect_written(&mut self) -> Result<(), DbError> {
        let Some(in_flight) = &mut self.in_flight else {
            return Ok(());
        };
        let answer = match in_flight.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => return Ok(()),
            Err(oneshot::error::TryRecvError::Closed) => Err(DbError::WriterGone),
            Ok(answer) => answer,
        };
        self.in_flight = None;
        answer
    }

    /// Hands what waits to the writer and waits until every checkpoint is written.
    async fn write_all(&mut self) -> Result<(), DbError> {
        self.finish_writing().await?;
        if let Some((changes, _)) = self.pending.take() {
            self.in_flight = Some(self.writer()?.write(changes));
        }
        self.finish_writing().await
    }

    /// Waits for the checkpoint in flight, if there is one.
    async fn finish_writing(&mut self) -> Result<(), DbError> {
        match self.in_flight.take() {
            Some(in_flight) => writer::written(in_flight).await,
            None => Ok(()),
        }
    }

    /// Writes what waits and waits for every checkpoint to be written, synchronously: when the
    /// state machine is dropped with the server.
    fn write_pending(&mut self) {
        let unwritten = |e: &DbError| {
            tracing::warn!(
                "cannot write the last applied changes; they are applied again from the log at the next start: {e}"
            );
        };
        let last = match (self.pending.take(), self.writer()) {
            (Some((changes, _)), Ok(writer)) => Some(writer.write(changes)),
            (Some(_), Err(e)) => {
                unwritten(&e);
                None
            }
            (None, _) => None,
        };
        // Dropping the writer waits until its thread has written everything handed over.
        drop(self.writer.take());
        for mut answer in [self.in_flight.take(), last].into_iter().flatten() {
            if let Ok(Err(e)) = answer.try_recv() {
                unwritten(&e);
            }
        }
    }

    /// Applies `entries` and encodes their changes, all under the lock; `None` if there were
    /// none.
    fn apply_all(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(Vec<Response>, Option<Changes>), DbError> {
        let mut machine = write(&self.machine);
        let responses: Vec<Response> = entries
            .into_iter()
            .map(|entry| machine.apply(entry))
            .collect();
        if responses.is_empty() {
            return Ok((responses, None));
        }
        self.directory.apply(&machine.state);
        let changes = machine.changes(&self.retention, false)?;
        Ok((responses, Some(changes)))
    }

    /// Replaces the state with the snapshot's: decoding, re-encoding and writing every table run
    /// on the blocking pool, and the lock is taken only to swap the result in.
    async fn install(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), DbError> {
        // What waits is older than the snapshot, which replaces every table; a checkpoint
        // being written must be done first, or it could land after the snapshot's tables.
        self.pending = None;
        self.finish_writing().await?;
        let db = Arc::clone(&self.db);
        let meta = meta.clone();
        let retention = self.retention;
        let machine = tokio::task::spawn_blocking(move || {
            let (state, clock) = snapshot::read(&data)?;
            let mut machine = Machine::new(state, meta.last_log_id, meta.last_membership.clone());
            machine.clock = clock;
            let changes = machine.changes(&retention, true)?;
            let meta_bytes = db::encode(&meta)?;
            let data_bytes = seal::seal(&data);
            let txn = db.file.begin_write()?;
            changes.write(&txn)?;
            db::put_encoded(&txn, SM, SNAPSHOT_META, &meta_bytes)?;
            db::put_encoded(&txn, SM, SNAPSHOT, &data_bytes)?;
            txn.commit()?;
            Ok::<_, DbError>(machine)
        })
        .await??;
        let index = machine.state.index;
        let mut installed = write(&self.machine);
        *installed = machine;
        self.directory.reset(&installed.state);
        drop(installed);
        self.db.applied.send_replace(index);
        self.watches.notify_all(index);
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

impl Drop for StateMachineStore {
    fn drop(&mut self) {
        self.write_pending();
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
        let write_error = |e: DbError| e.storage(ErrorSubject::StateMachine, ErrorVerb::Write);
        let started = Instant::now();
        let (responses, changes) = self.apply_all(entries).map_err(write_error)?;
        let (entries, ms) = (responses.len(), started.elapsed().as_millis());
        tracing::trace!(entries, ms, "applied under the state lock");
        if let Some(changes) = changes {
            // Readers may see the batch now: its entries are committed, so durable in the log
            // whether or not the checkpoint below writes them yet.
            self.db.applied.send_replace(changes.index);
            self.watches.notify(&changes);
            self.checkpoint(changes).await.map_err(write_error)?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // A snapshot is read from the tables: write what waits first, so it stands at the last
        // applied entry. After a failed write the snapshot is as old as the last checkpoint,
        // and the next checkpoint fails too, which stops the state machine.
        if let Err(e) = self.write_all().await {
            tracing::warn!("cannot write the applied state before a snapshot: {e}");
        }
        SnapshotBuilder {
            db: Arc::clone(&self.db),
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

/// Builds a snapshot from the stored tables while the state machine goes on applying.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    snapshots: Arc<AtomicU64>,
}

impl SnapshotBuilder {
    /// The meta and bytes of the stored state, from one read transaction so they agree. Runs on
    /// the blocking pool: a large state takes a while to encode.
    async fn encode(&self) -> Result<(SnapshotMeta, Vec<u8>), DbError> {
        let db = Arc::clone(&self.db);
        let (stored, bytes) =
            tokio::task::spawn_blocking(move || snapshot::build(&db.file.begin_read()?)).await??;
        let last = stored
            .last_applied
            .map_or_else(|| "none".to_string(), |id| id.to_string());
        // The id only has to tell this snapshot from others while one is being streamed to a
        // follower; the counter makes it unique within this process.
        let n = self.snapshots.fetch_add(1, Ordering::Relaxed) + 1;
        let meta = SnapshotMeta {
            last_log_id: stored.last_applied,
            last_membership: stored.membership,
            snapshot_id: format!("{last}-{n}"),
        };
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
            let started = Instant::now();
            let (meta, bytes) = self.encode().await?;
            let encoded = started.elapsed().as_millis();
            self.save(&meta, bytes.clone()).await?;
            let ms = started.elapsed().as_millis();
            tracing::debug!(bytes = bytes.len(), encoded, ms, "built a snapshot");
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
