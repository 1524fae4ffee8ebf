//! The Raft log on redb: entries by index, the vote, the committed log id and the last purged log
//! id — openraft's [`RaftLogStorage`].
//!
//! Every write is one redb transaction that is committed (and so fsynced) before the call
//! returns, which also keeps writes in the order openraft issued them, as it requires.
//!
//! The newest entries are also kept in memory as appended ([`Recent`]): Raft's core reads each
//! entry back to apply it soon after appending it, and decoding a large entry (a batch of many
//! agents' reports) again would cost its thread as much as encoding it did.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use redb::{ReadableTable, TableHandle};
use serde::Serialize;

use crate::db::{self, COMMITTED, Db, DbError, LAST_PURGED, LOG, LOG_META, VOTE};
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};

/// An append that takes this long is logged (at debug): Raft's core waits for it.
const SLOW_APPEND_MS: u128 = 50;

/// How many of the newest entries are kept in memory: enough for the state machine to apply
/// what was just appended, small enough not to matter beside the state (a batch of reports
/// is some 100 KB).
const RECENT: usize = 32;

/// The Raft log. Cheap to clone: clones share the file and the newest entries, which is how
/// openraft's replication tasks get their own reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    recent: Arc<Mutex<Recent>>,
}

/// The newest entries as appended: always a run at the end of the log (every append, truncation
/// and purge changes it as it changes the file), so a range from its first index on is all here.
#[derive(Default)]
struct Recent(VecDeque<Entry>);

impl Recent {
    fn appended(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let follows = |last: &Entry| last.log_id.index + 1 == first.log_id.index;
        if !self.0.back().is_none_or(follows) {
            self.0.clear();
        }
        self.0.extend(entries);
        while self.0.len() > RECENT {
            self.0.pop_front();
        }
    }

    fn truncated(&mut self, since: u64) {
        while self.0.back().is_some_and(|e| e.log_id.index >= since) {
            self.0.pop_back();
        }
    }

    fn purged(&mut self, upto: u64) {
        while self.0.front().is_some_and(|e| e.log_id.index <= upto) {
            self.0.pop_front();
        }
    }

    /// The entries of `range`, if the run holds every entry of the log in it.
    fn get(&self, range: &impl RangeBounds<u64>) -> Option<Vec<Entry>> {
        let first = self.0.front()?.log_id.index;
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        if start < first {
            return None;
        }
        let wanted = self.0.iter().filter(|e| range.contains(&e.log_id.index));
        Some(wanted.cloned().collect())
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> LogStore {
        LogStore {
            db,
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, DbError> {
        if let Some(entries) = self.recent().get(&range) {
            return Ok(entries);
        }
        let txn = self.db.log.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range(range)? {
            let (index, value) = item?;
            entries.push(db::decode(LOG.name(), index.value(), value.value())?);
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, DbError> {
        let txn = self.db.log.begin_read()?;
        let table = txn.open_table(LOG)?;
        let Some((index, value)) = table.last()? else {
            return Ok(None);
        };
        let entry: Entry = db::decode(LOG.name(), index.value(), value.value())?;
        Ok(Some(entry.log_id))
    }

    /// Writes `entries` in one transaction: all of them are durable, or none. They are encoded
    /// on the blocking pool too: a batch of many agents' reports is a large entry, and Raft's
    /// core waits for this on its own thread.
    async fn insert(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), DbError> {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let written = db::write(&self.db, |db| &db.log, move |txn| {
            let mut table = txn.open_table(LOG)?;
            for entry in &entries {
                table.insert(entry.log_id.index, db::encode(entry)?.as_slice())?;
            }
            Ok(entries)
        })
        .await?;
        self.recent().appended(written);
        Ok(())
    }

    async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), DbError> {
        let bytes = db::encode(value)?;
        db::write(&self.db, |db| &db.log, move |txn| {
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
            let last_purged_log_id: Option<LogId> = db::get(&self.db.log, LOG_META, LAST_PURGED)?;
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
        db::get(&self.db.log, LOG_META, VOTE)
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
        let committed: Option<Option<LogId>> = db::get(&self.db.log, LOG_META, COMMITTED)
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
        let start = std::time::Instant::now();
        self.insert(entries)
            .await
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Write))?;
        let ms = start.elapsed().as_millis();
        if ms >= SLOW_APPEND_MS {
            tracing::debug!(ms, "appending to the log took");
        }
        // The commit has fsynced: the entries are durable, which is what the callback promises.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        self.recent().truncated(since);
        let change = move |txn: &redb::WriteTransaction| {
            txn.open_table(LOG)?.retain_in(since.., |_, _| false)?;
            Ok(())
        };
        db::write(&self.db, |db| &db.log, change)
            .await
            .map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        self.recent().purged(upto);
        // The purged id and the deletion commit together, so a crash never leaves a hole
        // between the last purged id and the first entry.
        let change = move |txn: &redb::WriteTransaction| {
            db::put(txn, LOG_META, LAST_PURGED, &log_id)?;
            txn.open_table(LOG)?.retain_in(..=upto, |_, _| false)?;
            Ok(())
        };
        db::write(&self.db, |db| &db.log, change)
            .await
            .map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod tests {
    use super::{RECENT, Recent};
    use crate::tests::{entry, register};

    fn indexes(entries: Option<Vec<crate::raft::Entry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_newest_entries_answer_only_ranges_they_hold_whole() {
        let mut recent = Recent::default();
        assert_eq!(indexes(recent.get(&(1..))), None, "nothing appended yet");
        recent.appended((5..=9).map(|i| entry(i, register("a"))).collect());
        assert_eq!(indexes(recent.get(&(6..8))), Some(vec![6, 7]));
        assert_eq!(indexes(recent.get(&(7..))), Some(vec![7, 8, 9]));
        assert_eq!(indexes(recent.get(&(9..=20))), Some(vec![9]));
        assert_eq!(indexes(recent.get(&(4..8))), None, "4 is only on disk");
        assert_eq!(indexes(recent.get(&(..))), None);

        recent.truncated(8);
        assert_eq!(indexes(recent.get(&(5..))), Some(vec![5, 6, 7]));
        recent.appended(vec![entry(8, register("b"))]);
        assert_eq!(indexes(recent.get(&(7..))), Some(vec![7, 8]));
        recent.purged(6);
        assert_eq!(indexes(recent.get(&(6..))), None, "6 is purged");
        assert_eq!(indexes(recent.get(&(7..))), Some(vec![7, 8]));

        // A run that does not follow (a snapshot installed, say) starts the memory anew.
        recent.appended(vec![entry(20, register("c"))]);
        assert_eq!(indexes(recent.get(&(8..))), None);
        assert_eq!(indexes(recent.get(&(20..))), Some(vec![20]));

        recent.appended((21..21 + RECENT as u64).map(|i| entry(i, register("d"))).collect());
        assert_eq!(recent.0.len(), RECENT, "bounded");
        assert_eq!(indexes(recent.get(&(20..))), None, "the oldest went first");
        assert_eq!(indexes(recent.get(&(52..))), Some(vec![52]));
    }
}
