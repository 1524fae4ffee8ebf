//! The replicated store: the cluster state, the commands that change it, and openraft's storage
//! for both on one redb file.
//!
//! - [`state`]: `State`, `Command`, `Response` and the deterministic `State::apply`.
//! - [`raft`]: openraft's type configuration (`TypeConfig`), aliases such as `Raft` and the RPC
//!   types, the recommended Raft `config` and `initialize_once`.
//! - `log_store`: [`LogStore`], the Raft log, vote and committed log id (`RaftLogStorage`).
//! - `state_machine`: [`StateMachineStore`], which applies committed entries to `State`, writes
//!   the rows they changed, and builds and installs snapshots (`RaftStateMachine`,
//!   [`SnapshotBuilder`]).
//! - `tracked`: [`TrackedMap`], the map type of `State` that records which keys changed.
//! - `tables`: the state's tables in the file — one per map, the events log, a meta row — and
//!   the upgrade from the first format; `snapshot`: the snapshot format (MessagePack rows).
//! - `events`: [`Retention`] of the event history, part of [`StoreOptions`].
//! - `handle`: [`StateHandle`], how handlers and controllers read the state and wait for it to
//!   change.
//! - `restore`: [`read_snapshot`] (a backup checked whole) and [`restore`] (a store file made
//!   from one, for a single server).
//! - `db`: the file, [`open`]'s checks and [`StoreError`].
//!
//! **Architecture invariants:**
//! - `State::apply` is deterministic: no clock, no randomness, no I/O; anything that varies
//!   arrives inside the `Command`. Every server therefore computes the same state, and a restart
//!   may re-apply committed entries safely.
//! - Heartbeats are never entries: liveness is kept in the leader's memory and only node state
//!   transitions (`Command::SetNodeState`) are written to the log.
//! - One redb file holds the log and the state; it is opened once per process by [`open`] and
//!   shared by both stores. The state lives in tables keyed by id; each applied batch writes only
//!   the rows it changed, in the same transaction as the last applied log id and membership, so
//!   the persisted state never runs ahead of or behind its own applied index, and the cost of a
//!   change is proportional to the change, not to the state.
//! - Reads never touch the disk: the in-memory `State`, loaded from the tables at open, is the
//!   read path. The state lock is held to apply and encode a batch, never across I/O.
//! - Every map of `State` is a [`TrackedMap`] listed in `State::stored_maps`; anything derived
//!   from them (the index of tasks by node and by service slot) is rebuilt at load, never stored.
//! - The events kept are one run of consecutive `seq`s, the same in memory and on disk; each
//!   server drops the oldest by its own [`Retention`], measuring age by the cluster's clock (the
//!   newest command's time).
//! - A snapshot is read from the tables in one read transaction; installing one replaces every
//!   table in one write transaction. A newer binary reads older snapshots and older files.
//! - The store knows nothing about HTTP or the network: the server owns the Raft RPC transport.

mod db;
mod directory;
mod events;
mod handle;
mod log_store;
pub mod raft;
mod restore;
mod snapshot;
pub mod state;
mod state_machine;
mod tables;
mod tracked;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use db::StoreError;
pub use events::{
    Checkpoint, DEFAULT_CHECKPOINT_BYTES, DEFAULT_CHECKPOINT_EVERY, DEFAULT_MAX_AGE,
    DEFAULT_MAX_EVENTS, Retention, StoreOptions,
};
pub use handle::{ChangedServices, StateHandle};
pub use log_store::LogStore;
pub use restore::{BadSnapshot, read_snapshot, restore};
pub use state::{Command, FromAgent, Loss, Response, RolloutAction, State};
pub use state_machine::{SnapshotBuilder, StateMachineStore};
pub use tracked::TrackedMap;

/// Opens the store at `path`, creating it if missing, checks every record's seal, and loads the
/// applied state so that a restarted server resumes where it stopped. A file of the first format
/// is rewritten into tables first, once.
///
/// Hand the two stores to `Raft::new`; keep the handle for reads. Only one open per file at a
/// time: a second one fails with [`StoreError::Locked`] until everything the first returned
/// (and the Raft using it) is dropped — [`StateHandle::closed`] says when. A damaged file fails
/// with [`StoreError::Unreadable`] or [`StoreError::Damaged`], whose messages name the file and
/// what to do; never with a panic.
pub fn open(
    path: &Path,
    options: StoreOptions,
) -> Result<(LogStore, StateMachineStore, StateHandle), StoreError> {
    let opened = seal::unpanicked(|| {
        let db = db::open_database(path)?;
        let machine = tables::load_or_migrate(&db.file, &options.retention)
            .map_err(|e| e.store(path, "applied state"))?;
        Ok((db, machine))
    });
    let (db, machine) = opened.unwrap_or_else(|detail| {
        Err(StoreError::Unreadable {
            path: path.to_path_buf(),
            detail: format!("the storage library gave up on it: {detail}"),
        })
    })?;
    db.applied.send_replace(machine.state.index);
    let directory = Arc::new(directory::Directory::default());
    directory.reset(&machine.state);
    let machine = Arc::new(RwLock::new(machine));
    let watches = Arc::new(handle::Watches::default());
    let handle = StateHandle::new(
        Arc::clone(&machine),
        db.applied.subscribe(),
        Arc::clone(&watches),
        Arc::clone(&directory),
    );
    let state_machine =
        StateMachineStore::new(Arc::clone(&db), machine, watches, directory, options);
    Ok((LogStore::new(db), state_machine, handle))
}
