//! The Raft log's own redb file, beside the state file: where it is, how it is opened, and how
//! a store that kept its log in the state file (formats 1 and 2) moves it out, once.
//!
//! The log has a file of its own because redb has one write transaction per file at a time: in
//! the state file, every append (and so every commit, and every read-index round of a current
//! read, which Raft's core answers between appends) waited behind a checkpoint or a snapshot
//! being written, for a second or more at 100,000 tasks. Apart, an append waits only for the
//! log's own fsync.
//!
//! The two files are opened, and closed, together ([`crate::db::Db`]); a log is never used
//! without the state it continues. The move is crash-safe: the log is copied to a new file that
//! is renamed into place only once complete, and the old tables are deleted from the state file
//! afterwards, in the transaction that marks it as laid out by this format (so an older outpost
//! refuses it rather than starting without its log). A crash in between leaves both copies, and
//! the next open finishes the move from the renamed file.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableHandle};

use crate::db::{self, DbError, LOG, LOG_META, StoreError};
use crate::tables;

#[cfg(test)]
mod tests;

/// The log file of the store whose state file is `state`: `state.redb` keeps its log in
/// `state-log.redb`, in the same directory.
pub fn log_path(state: &Path) -> PathBuf {
    let stem = state.file_stem().unwrap_or_default().to_string_lossy();
    state.with_file_name(format!("{stem}-log.redb"))
}

/// Where the log is copied before it is renamed into place.
fn new_path(log: &Path) -> PathBuf {
    log.with_extension("redb.new")
}

/// Opens the log file of the state file `state_path` (already open as `state`), making it (from
/// the state file's own log tables, if it has any) when it is missing. `fresh` says the state
/// file was just made: a log left beside it continues a state that is gone, and is removed.
pub(crate) fn open(
    state: &Database,
    state_path: &Path,
    fresh: bool,
) -> Result<Database, StoreError> {
    let path = log_path(state_path);
    let io = |error: std::io::Error| DbError::from(redb::Error::Io(error));
    if fresh && path.exists() {
        tracing::warn!(
            "removing {}: the state file {} it belongs to was missing or empty",
            path.display(),
            state_path.display()
        );
        std::fs::remove_file(&path).map_err(|e| io(e).store(&path, "Raft log"))?;
    }
    let missing = std::fs::metadata(&path).map_or(true, |meta| meta.len() == 0);
    if missing {
        let fail = |e: DbError| e.store(state_path, "Raft log");
        if holds_state_without_log(state).map_err(fail)? {
            return Err(StoreError::LogLost {
                path,
                state: state_path.to_path_buf(),
            });
        }
        make(state, &path).map_err(|e| e.store(&path, "Raft log"))?;
    }
    let log = db::create_file(&path, db::LOG_CACHE_BYTES)?;
    create_tables(&log).map_err(|e| e.store(&path, "table list"))?;
    verify(&log).map_err(|e| e.store(&path, "record"))?;
    forget_moved_log(state).map_err(|e| e.store(state_path, "Raft log"))?;
    Ok(log)
}

/// Whether the state file has applied entries but no log tables of its own: then its log file
/// was lost, not never made (a new store has no meta row yet; an older one has the tables).
fn holds_state_without_log(state: &Database) -> Result<bool, DbError> {
    let txn = state.begin_read()?;
    let older = existing(txn.open_table(LOG))?.is_some();
    Ok(!older && tables::read_meta(&txn)?.is_some())
}

/// Makes the log file at `path`: a copy of the state file's log tables (none in a new store),
/// written aside and renamed into place once it is durable.
fn make(state: &Database, path: &Path) -> Result<(), DbError> {
    let io = |error: std::io::Error| DbError::from(redb::Error::Io(error));
    let new = new_path(path);
    if new.exists() {
        // Left by a crash while it was copied: the state file still has the whole log.
        std::fs::remove_file(&new).map_err(io)?;
    }
    {
        let log = Database::builder()
            .set_cache_size(db::LOG_CACHE_BYTES)
            .create(&new)?;
        let from = state.begin_read()?;
        let to = log.begin_write()?;
        // Two loops, not one generic copy: the tables differ in their key type.
        if let Some(rows) = existing(from.open_table(LOG))? {
            let mut copied = to.open_table(LOG)?;
            for row in rows.iter()? {
                let (index, entry) = row?;
                copied.insert(index.value(), entry.value())?;
            }
        }
        if let Some(rows) = existing(from.open_table(LOG_META))? {
            let mut copied = to.open_table(LOG_META)?;
            for row in rows.iter()? {
                let (key, value) = row?;
                copied.insert(key.value(), value.value())?;
            }
        }
        to.commit()?;
    }
    std::fs::rename(&new, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// The table just opened, `None` if the file has no such table.
fn existing<T>(opened: Result<T, redb::TableError>) -> Result<Option<T>, DbError> {
    match opened {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn create_tables(log: &Database) -> Result<(), DbError> {
    let txn = log.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(LOG_META)?;
    txn.commit()?;
    Ok(())
}

/// Reads every record and checks its seal, as [`db::open_state`] does for the state file.
fn verify(log: &Database) -> Result<(), DbError> {
    let txn = log.begin_read()?;
    for row in txn.open_table(LOG)?.iter()? {
        let (key, value) = row?;
        db::open_record(LOG.name(), key.value(), value.value())?;
    }
    for row in txn.open_table(LOG_META)?.iter()? {
        let (key, value) = row?;
        db::open_record(LOG_META.name(), key.value(), value.value())?;
    }
    Ok(())
}

/// Deletes the log tables of a state file whose log now has its own file, and marks the file
/// as laid out by this format in the same transaction. Does nothing to a file without them.
fn forget_moved_log(state: &Database) -> Result<(), DbError> {
    let txn = state.begin_write()?;
    let had_log = txn.delete_table(LOG)?;
    let had_meta = txn.delete_table(LOG_META)?;
    if !(had_log || had_meta) {
        txn.abort()?;
        return Ok(());
    }
    tables::mark_format(&txn)?;
    txn.commit()?;
    Ok(())
}
