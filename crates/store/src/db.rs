//! The store's redb file: its tables, how it is opened, and the small read/write helpers the log
//! store and the state machine share.
//!
//! One file holds both halves of Raft's storage because redb lets a process open a file only
//! once; both stores hold the same [`Db`]. The log store's tables are [`LOG`] and [`LOG_META`];
//! the state machine's are [`SM`] (its meta row and the latest snapshot) and the state's own
//! tables, one per map of `State` plus the events (laid out in `tables`). Values are JSON so
//! that a human can inspect a data dir with any redb tool and so that adding a field to a record
//! stays backward compatible.
//!
//! Every value is [`seal`]ed with a checksum ([`encode`], [`decode`]), and [`open_database`]
//! reads every record once at start: a damaged file is refused with the file, table and key
//! before anything is served from it. redb asserts (panics) on some damaged files; opening runs
//! under [`seal::unpanicked`], so the operator gets an error saying what to do, never a
//! backtrace.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use redb::{Database, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::raft::StorageError;
use crate::tables::{self, EVENTS, STORE_FORMAT};

/// Raft log entries by index.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The log store's single values: [`VOTE`], [`COMMITTED`], [`LAST_PURGED`].
pub(crate) const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The state machine's single values: the meta row (`tables::META`), [`SNAPSHOT`],
/// [`SNAPSHOT_META`], and in a file of the first format [`MACHINE`].
pub(crate) const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

pub(crate) const VOTE: &str = "vote";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const LAST_PURGED: &str = "last_purged";
/// The first format's whole applied state, last applied log id and membership as one value;
/// rewritten into tables, then deleted, the first time such a file is opened.
pub(crate) const MACHINE: &str = "machine";
pub(crate) const SNAPSHOT: &str = "snapshot";
pub(crate) const SNAPSHOT_META: &str = "snapshot_meta";

/// The open store file, shared by the log store, the state machine and snapshot builders;
/// dropping the last reference closes it.
pub(crate) struct Db {
    pub(crate) file: Database,
    /// The applied index that `StateHandle`s watch. It lives here, declared after `file`, so that
    /// it closes only once the file is released: a closed channel means the file can be opened
    /// again.
    pub(crate) applied: watch::Sender<u64>,
}

/// What an operator can do about a store file that cannot be trusted.
const REMEDY: &str = "restore the data dir from a backup, or move the file away and start again with --reset to begin with an empty state";

/// Why the store could not be opened. Each message names the file and what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open store {path}: it is already open (is another outpost using this data dir?)"
    )]
    Locked { path: PathBuf },
    #[error(
        "cannot open store {path}: {error} (check that the data dir exists, is writable and holds an outpost store)"
    )]
    Open {
        path: PathBuf,
        error: Box<redb::DatabaseError>,
    },
    #[error("store {path} is damaged and cannot be read ({detail}): {REMEDY}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("store {path}: record {key:?} of table {table} is damaged ({why}): {REMEDY}")]
    Damaged {
        path: PathBuf,
        table: String,
        key: String,
        why: seal::Damage,
    },
    #[error(
        "cannot read or write store {path}: {error} (check free disk space and the file's permissions)"
    )]
    Io {
        path: PathBuf,
        error: Box<redb::Error>,
    },
    #[error(
        "store {path} holds an unreadable {what}: {error} (was it written by a newer outpost? restore the data dir from a backup)"
    )]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        error: serde_json::Error,
    },
    #[error(
        "store {path} is laid out in format {found}, newer than this outpost reads ({supported}): run the newer outpost, or restore a backup made by this version"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
}

/// An error inside the store, before it is given the shape its caller needs (openraft's
/// [`StorageError`] at run time, [`StoreError`] at open).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error(transparent)]
    Redb(Box<redb::Error>),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("record {key:?} of table {table} is damaged: {why}")]
    Damaged {
        table: String,
        key: String,
        why: seal::Damage,
    },
    #[error("storage task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot encode a snapshot: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode a snapshot: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("the snapshot cannot be installed: {0}")]
    Snapshot(String),
    #[error("laid out in format {found}, newer than this outpost reads ({STORE_FORMAT})")]
    Format { found: u32 },
    #[error("cannot start the thread that writes checkpoints: {0}")]
    Thread(std::io::Error),
    #[error("checkpoints are no longer written, after an earlier one failed")]
    WriterGone,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Redb(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl DbError {
    /// openraft's form of this error: what was being done to what.
    pub(crate) fn storage(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> StorageError {
        StorageIOError::new(subject, verb, &self).into()
    }

    pub(crate) fn store(self, path: &Path, what: &'static str) -> StoreError {
        let path = path.to_path_buf();
        match self {
            DbError::Redb(error) => match *error {
                redb::Error::Corrupted(detail) => StoreError::Unreadable { path, detail },
                error => StoreError::Io {
                    path,
                    error: Box::new(error),
                },
            },
            DbError::Json(error) => StoreError::Corrupt { path, what, error },
            DbError::Damaged { table, key, why } => StoreError::Damaged {
                path,
                table,
                key,
                why,
            },
            DbError::Task(e) => StoreError::Io {
                path,
                error: Box::new(redb::Error::Io(std::io::Error::other(e))),
            },
            DbError::Thread(e) => StoreError::Io {
                path,
                error: Box::new(redb::Error::Io(e)),
            },
            DbError::WriterGone => StoreError::Io {
                path,
                error: Box::new(redb::Error::Io(std::io::Error::other(DbError::WriterGone))),
            },
            DbError::Format { found } => StoreError::NewerFormat {
                path,
                found,
                supported: STORE_FORMAT,
            },
            e @ (DbError::Encode(_) | DbError::Decode(_) | DbError::Snapshot(_)) => {
                StoreError::Unreadable {
                    path,
                    detail: e.to_string(),
                }
            }
        }
    }
}

/// 64 MiB of redb's page cache, against its 1 GiB default: reads are served from the state in
/// memory, so the cache only speeds up the B-tree pages a batch rewrites, and a server must fit
/// on a small edge box.
const CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) the store file, makes sure every table exists, so that readers never meet
/// a missing table, and checks every record's seal.
pub(crate) fn open_database(path: &Path) -> Result<Arc<Db>, StoreError> {
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_path_buf(),
            },
            redb::DatabaseError::Storage(redb::StorageError::Io(e))
                if e.kind() != std::io::ErrorKind::UnexpectedEof =>
            {
                StoreError::Open {
                    path: path.to_path_buf(),
                    error: Box::new(redb::DatabaseError::Storage(redb::StorageError::Io(e))),
                }
            }
            error => StoreError::Unreadable {
                path: path.to_path_buf(),
                detail: error.to_string(),
            },
        })?;
    create_tables(&db).map_err(|e| e.store(path, "table list"))?;
    verify(&db).map_err(|e| e.store(path, "record"))?;
    Ok(Arc::new(Db {
        file: db,
        applied: watch::Sender::new(0),
    }))
}

/// Reads every record of every table and checks its seal: damage is found at start, before
/// anything is served, rather than when a follower first asks for an old log entry.
fn verify(db: &Database) -> Result<(), DbError> {
    let txn = db.begin_read()?;
    for table in [LOG, EVENTS] {
        for row in txn.open_table(table)?.iter()? {
            let (key, value) = row?;
            open_record(table.name(), key.value(), value.value())?;
        }
    }
    for table in keyed_by_name() {
        for row in txn.open_table(table)?.iter()? {
            let (key, value) = row?;
            open_record(table.name(), key.value(), value.value())?;
        }
    }
    Ok(())
}

/// Every table keyed by a name: the log's and state machine's single values, and the state's maps.
fn keyed_by_name() -> Vec<TableDefinition<'static, &'static str, &'static [u8]>> {
    let maps = tables::map_names().into_iter().map(tables::map_table);
    [LOG_META, SM].into_iter().chain(maps).collect()
}

fn create_tables(db: &Database) -> Result<(), DbError> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(EVENTS)?;
    for table in keyed_by_name() {
        txn.open_table(table)?;
    }
    txn.commit()?;
    Ok(())
}

/// Reads and decodes the value under `key`, `None` if it was never written.
pub(crate) fn get<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, DbError> {
    let txn = db.begin_read()?;
    let opened = txn.open_table(table)?;
    let Some(value) = opened.get(key)? else {
        return Ok(None);
    };
    decode(table.name(), key, value.value()).map(Some)
}

/// The bytes to store for `value`: its JSON, sealed.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DbError> {
    Ok(seal::seal(&serde_json::to_vec(value)?))
}

/// The value stored under `key` of `table`, once its seal checks out.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &str,
    key: impl Display,
    bytes: &[u8],
) -> Result<T, DbError> {
    Ok(serde_json::from_slice(open_record(table, key, bytes)?)?)
}

/// The payload of a stored record, or an error naming its table and key.
pub(crate) fn open_record<'a>(
    table: &str,
    key: impl Display,
    bytes: &'a [u8],
) -> Result<&'a [u8], DbError> {
    seal::open(bytes).map_err(|why| DbError::Damaged {
        table: table.to_string(),
        key: key.to_string(),
        why,
    })
}

/// Writes `value` under `key` inside `txn`.
pub(crate) fn put<T: Serialize + ?Sized>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), DbError> {
    txn.open_table(table)?
        .insert(key, encode(value)?.as_slice())?;
    Ok(())
}

/// Writes bytes that are already [`encode`]d (sealed) under `key` inside `txn`.
pub(crate) fn put_encoded(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    bytes: &[u8],
) -> Result<(), DbError> {
    txn.open_table(table)?.insert(key, bytes)?;
    Ok(())
}

/// Runs `change` in one write transaction and commits it; the commit fsyncs, so the change is
/// durable when this returns.
///
/// It runs on tokio's blocking pool: an fsync on a slow SD card takes tens of milliseconds and
/// must not stall one of the runtime's two workers.
pub(crate) async fn write<F>(db: &Arc<Db>, change: F) -> Result<(), DbError>
where
    F: FnOnce(&WriteTransaction) -> Result<(), DbError> + Send + 'static,
{
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || {
        let txn = db.file.begin_write()?;
        change(&txn)?;
        txn.commit()?;
        Ok(())
    })
    .await?
}
