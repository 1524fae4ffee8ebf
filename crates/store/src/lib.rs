//! The replicated store: the cluster state, the commands that change it, and openraft's storage
//! for both on one redb file.
//!
//! - [`state`]: `State`, `Command`, `Response` and the deterministic `State::apply`.
//! - [`raft`]: openraft's type configuration (`TypeConfig`), aliases such as `Raft` and the RPC
//!   types, the recommended Raft `config` and `initialize_once`.
//! - `log_store`: [`LogStore`], the Raft log, vote and committed log id (`RaftLogStorage`).
//! - `state_machine`: [`StateMachineStore`], which applies committed entries to `State` and builds
//!   and installs snapshots (`RaftStateMachine`, [`SnapshotBuilder`]).
//! - `handle`: [`StateHandle`], how handlers and controllers read the state and wait for it to
//!   change.
//! - `db`: the file's tables, [`open`] and [`StoreError`].
//!
//! **Architecture invariants:**
//! - `State::apply` is deterministic: no clock, no randomness, no I/O; anything that varies
//!   arrives inside the `Command`. Every server therefore computes the same state, and a restart
//!   may re-apply committed entries safely.
//! - Heartbeats are never entries: liveness is kept in the leader's memory and only node state
//!   transitions (`Command::SetNodeState`) are written to the log.
//! - One redb file holds the log and the state; it is opened once per process by [`open`] and
//!   shared by both stores. The state, last applied log id and membership are written in the same
//!   transaction, once per applied batch, so the persisted state never runs ahead of or behind
//!   its own applied index.
//! - The store knows nothing about HTTP or the network: the server owns the Raft RPC transport.

mod db;
mod handle;
mod log_store;
pub mod raft;
pub mod state;
mod state_machine;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use db::StoreError;
pub use handle::StateHandle;
pub use log_store::LogStore;
pub use state::{Command, Response, State};
pub use state_machine::{SnapshotBuilder, StateMachineStore};

use crate::db::{MACHINE, SM};
use crate::state_machine::Machine;

/// Opens the store at `path`, creating it if missing, checks every record's seal, and loads the
/// applied state so that a restarted server resumes where it stopped.
///
/// Hand the two stores to `Raft::new`; keep the handle for reads. Only one open per file at a
/// time: a second one fails with [`StoreError::Locked`] until everything the first returned
/// (and the Raft using it) is dropped — [`StateHandle::closed`] says when. A damaged file fails
/// with [`StoreError::Unreadable`] or [`StoreError::Damaged`], whose messages name the file and
/// what to do; never with a panic.
pub fn open(path: &Path) -> Result<(LogStore, StateMachineStore, StateHandle), StoreError> {
    let opened = seal::unpanicked(|| {
        let db = db::open_database(path)?;
        let machine: Machine =
            db::load(&db.file, path, (SM, MACHINE), "applied state")?.unwrap_or_default();
        Ok((db, machine))
    });
    let (db, machine) = opened.unwrap_or_else(|detail| {
        Err(StoreError::Unreadable {
            path: path.to_path_buf(),
            detail: format!("the storage library gave up on it: {detail}"),
        })
    })?;
    db.applied.send_replace(machine.state.index);
    let machine = Arc::new(RwLock::new(machine));
    let handle = StateHandle::new(Arc::clone(&machine), db.applied.subscribe());
    let state_machine = StateMachineStore::new(Arc::clone(&db), machine);
    Ok((LogStore::new(db), state_machine, handle))
}
