//! The Raft log on redb: entries by index, the vote, the committed log id and the last purged log
//! id — openraft's [`RaftLogStorage`].
//!
//! Every write is one redb transaction that is committed (and so fsynced) before the call
//! returns, which also keeps writes in the order openraft issued them, as it requires.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use redb::{ReadableTable, TableHandle};
use serde::Serialize;

use crate::db::{self, COMMITTED, Db, DbError, LAST_PURGED, LOG, LOG_META, VOTE};
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The Raft log. Cheap to clone: clones share the file, which is how openraft's replication
/// tasks get their own reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> LogStore {
        LogStore { db }
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, DbError> {
        let txn = self.db.file.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range(range)? {
            let (index, value) = item?;
            entries.push(db::decode(LOG.name(), index.value(), value.value())?);
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, DbError> {
        let txn = self.db.file.begin_read()?;
        let table = txn.open_table(LOG)?;
        let Some((index, value)) = table.last()? else {
            return Ok(None);
        };
        let entry: Entry = db::decode(LOG.name(), index.value(), value.value())?;
        Ok(Some(entry.log_id))
    }

    /// Writes `entries` in one transaction: all of them are durable, or none.
    async fn insert(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), DbError> {
        let encode = |entry: Entry| Ok((entry.log_id.index, db::encode(&entry)?));
        let rows = entries
            .into_iter()
            .map(encode)
            .collect::<Result<Vec<(u64, Vec<u8>)>, DbError>>()?;
        db::write(&self.db, move |txn| {
            let mut table = txn.open_table(LOG)?;
            for (index, bytes) in &rows {
                table.insert(index, bytes.as_slice())?;
            }
            Ok(())
        })
        .await
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), DbError> {
        let bytes = db::encode(value)?;
        db::write(&self.db, move |txn| {
            db::put_encoded(txn, LOG_META, key, &bytes)
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range)
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || -> Result<LogState<TypeConfig>, DbError> {
            let last_purged_log_id: Option<LogId> = db::get(&self.db.file, LOG_META, LAST_PURGED)?;
            // With every entry purged, the last log id is the last purged one.
            let last_log_id = self.last_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        };
        read().map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
            .await
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        db::get(&self.db.file, LOG_META, VOTE)
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    // Saved so that a restart re-applies committed entries the state machine had not yet
    // persisted, instead of waiting for a leader to tell it what is committed.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(COMMITTED, &committed)
            .await
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = db::get(&self.db.file, LOG_META, COMMITTED)
            .map_err(|e| e.storage(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.insert(entries)
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        // The commit has fsynced: the entries are durable, which is what the callback promises.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        let change = move |txn: &redb::WriteTransaction| {
            txn.open_table(LOG)?.retain_in(since.., |_, _| false)?;
            Ok(())
        };
        db::write(&self.db, change)
            .await
            .map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        // The purged id and the deletion commit together, so a crash never leaves a hole
        // between the last purged id and the first entry.
        let change = move |txn: &redb::WriteTransaction| {
            db::put(txn, LOG_META, LAST_PURGED, &log_id)?;
            txn.open_table(LOG)?.retain_in(..=upto, |_, _| false)?;
            Ok(())
        };
        db::write(&self.db, change)
            .await
            .map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}
