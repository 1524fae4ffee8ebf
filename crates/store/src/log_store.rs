//! The Raft log on redb: entries by index, the vote, the committed log id and the last purged log
//! id — openraft's [`RaftLogStorage`].
//!
//! Every write goes to the log's writer thread (`log_writer`), which makes them in the order
//! openraft issued them, as it requires. An append returns once its entries are queued; they
//! are readable from then on, from memory ([`Recent`], which keeps the newest entries as
//! appended and every entry not yet written), and openraft is told through its callback when
//! they are durable. The vote, a truncation and a purge are waited for; the committed log id is
//! not, as openraft allows (it only spares a restart the wait for a leader).
//!
//! Keeping the newest entries also spares Raft's core the decoding of each entry it reads back
//! to apply soon after appending it: a batch of many agents' reports is a large entry.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader};
use redb::{ReadableTable, TableHandle};
use serde::Serialize;

use crate::db::{self, COMMITTED, Db, DbError, LAST_PURGED, LOG, LOG_META, VOTE};
use crate::log_writer::{Change, LogWriter};
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};

/// How many written entries are kept in memory besides those not written yet: enough for the
/// state machine to apply what was just appended, small enough not to matter beside the state
/// (a batch of reports is some 100 KB).
const RECENT: usize = 32;

/// The Raft log. Cheap to clone: clones share the file, the writer and the newest entries,
/// which is how openraft's replication tasks get their own reader.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    recent: Arc<Mutex<Recent>>,
    writer: LogWriter,
}

/// The newest entries as appended: always a run at the end of the log (every append,
/// truncation and purge changes it as it changes the file), holding every entry not yet
/// written, so that what is below its first index is on disk.
#[derive(Default)]
pub(crate) struct Recent {
    entries: VecDeque<Entry>,
    /// The newest log id written to the file. An entry appended again after a truncation
    /// comes from a newer leader, so its id is greater than any written before it: comparing
    /// ids, never indexes alone, no unwritten entry is taken for a written one.
    written: Option<LogId>,
}

impl Recent {
    fn appended(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let follows = |last: &Entry| last.log_id.index + 1 == first.log_id.index;
        if !self.entries.back().is_none_or(follows) {
            // Cannot happen while openraft keeps the log without holes; what is not here is
            // then read from the file.
            self.entries.clear();
        }
        self.entries.extend(entries);
        self.forget_written();
    }

    /// Entries up to `log_id` are durable in the file.
    pub(crate) fn written(&mut self, log_id: LogId) {
        self.written = self.written.max(Some(log_id));
        self.forget_written();
    }

    fn forget_written(&mut self) {
        while self.entries.len() > RECENT
            && (self.entries.front()).is_some_and(|e| Some(e.log_id) <= self.written)
        {
            self.entries.pop_front();
        }
    }

    fn truncated(&mut self, since: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= since) {
            self.entries.pop_back();
        }
    }

    fn purged(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= upto) {
            self.entries.pop_front();
        }
    }

    /// The first index held, and the held entries of `range`.
    fn get(&self, range: &impl RangeBounds<u64>) -> (Option<u64>, Vec<Entry>) {
        let first = self.entries.front().map(|e| e.log_id.index);
        let wanted = self
            .entries
            .iter()
            .filter(|e| range.contains(&e.log_id.index));
        (first, wanted.cloned().collect())
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|e| e.log_id)
    }
}

/// Where the part of `range` below `first` ends.
fn end_below(range: &impl RangeBounds<u64>, first: u64) -> Bound<u64> {
    match range.end_bound() {
        Bound::Included(&i) if i < first => Bound::Included(i),
        Bound::Excluded(&i) if i < first => Bound::Excluded(i),
        _ => Bound::Excluded(first),
    }
}

/// The first index of `range`.
fn start_of(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> Result<LogStore, DbError> {
        let recent = Arc::default();
        let writer = LogWriter::start(Arc::clone(&db), Arc::clone(&recent))?;
        Ok(LogStore { db, recent, writer })
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entries of `range`: those below the first one held in memory from the file, the rest
    /// from memory.
    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, DbError> {
        let (first_held, held) = self.recent().get(&range);
        let start = start_of(&range);
        let below = match first_held {
            Some(first) if start >= first => return Ok(held),
            Some(first) => (range.start_bound().cloned(), end_below(&range, first)),
            None => (range.start_bound().cloned(), range.end_bound().cloned()),
        };
        let txn = self.db.log.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for item in table.range::<u64>(below)? {
            let (index, value) = item?;
            if range.contains(&index.value()) {
                entries.push(db::decode(LOG.name(), index.value(), value.value())?);
            }
        }
        entries.extend(held);
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, DbError> {
        if let Some(last) = self.recent().last_log_id() {
            return Ok(Some(last));
        }
        let txn = self.db.log.begin_read()?;
        let table = txn.open_table(LOG)?;
        let Some((index, value)) = table.last()? else {
            return Ok(None);
        };
        let entry: Entry = db::decode(LOG.name(), index.value(), value.value())?;
        Ok(Some(entry.log_id))
    }

    fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<Change, DbError> {
        let bytes = db::encode(value)?;
        Ok(Box::new(move |txn| {
            db::put_encoded(txn, LOG_META, key, &bytes)
        }))
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
        let error = |e: DbError| e.storage(ErrorSubject::Vote, ErrorVerb::Write);
        let change = self.put_meta(VOTE, vote).map_err(error)?;
        self.writer.change(change).await.map_err(error)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        db::get(&self.db.log, LOG_META, VOTE)
            .map_err(|e| e.storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    // Saved so that a restart re-applies committed entries the state machine had not yet
    // persisted, instead of waiting for a leader to tell it what is committed.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let error = |e: DbError| e.storage(ErrorSubject::Store, ErrorVerb::Write);
        let change = self.put_meta(COMMITTED, &committed).map_err(error)?;
        self.writer.change_later(change).map_err(error)
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Readable once this returns, as openraft requires: held in memory until written.
        self.recent().appended(entries.clone());
        self.writer
            .append(entries, callback)
            .map_err(|e| e.storage(ErrorSubject::Logs, ErrorVerb::Write))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        self.recent().truncated(since);
        let change: Change = Box::new(move |txn| {
            txn.open_table(LOG)?.retain_in(since.., |_, _| false)?;
            Ok(())
        });
        self.writer
            .change(change)
            .await
            .map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        self.recent().purged(upto);
        // The purged id and the deletion commit together, so a crash never leaves a hole
        // between the last purged id and the first entry.
        let change: Change = Box::new(move |txn| {
            db::put(txn, LOG_META, LAST_PURGED, &log_id)?;
            txn.open_table(LOG)?.retain_in(..=upto, |_, _| false)?;
            Ok(())
        });
        self.writer
            .change(change)
            .await
            .map_err(|e| e.storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::{RECENT, Recent};
    use crate::raft::LogId;
    use crate::tests::{entry, register};

    /// The id `entry` gives index `i`.
    fn id(i: u64) -> LogId {
        entry(i, register("a")).log_id
    }

    fn appended(recent: &mut Recent, indexes: std::ops::RangeInclusive<u64>) {
        recent.appended(indexes.map(|i| entry(i, register("a"))).collect());
    }

    fn held(recent: &Recent, range: impl std::ops::RangeBounds<u64>) -> (Option<u64>, Vec<u64>) {
        let (first, entries) = recent.get(&range);
        (first, entries.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_newest_entries_and_every_unwritten_one_are_held_in_order() {
        let mut recent = Recent::default();
        assert_eq!(held(&recent, 1..), (None, vec![]), "nothing appended yet");
        appended(&mut recent, 5..=9);
        assert_eq!(held(&recent, 6..8), (Some(5), vec![6, 7]));
        assert_eq!(held(&recent, 9..=20), (Some(5), vec![9]));

        // Not written, nothing is let go, however many.
        appended(&mut recent, 10..=49);
        assert_eq!(held(&recent, ..).1.len(), 45);
        // Written, the oldest go past RECENT.
        recent.written(id(30));
        assert_eq!(held(&recent, ..).1.len(), RECENT);
        assert_eq!(held(&recent, ..).0, Some(50 - RECENT as u64));
        recent.written(id(49));
        assert_eq!(held(&recent, ..).1.len(), RECENT);

        // A truncation drops the end, and what is appended there again, by a newer leader, is
        // not written.
        recent.truncated(40);
        assert_eq!(held(&recent, 38..).1, vec![38, 39]);
        let newer = (40..=60).map(|i| crate::raft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), i),
            ..entry(i, register("b"))
        });
        recent.appended(newer.collect());
        assert_eq!(
            held(&recent, 40..).1,
            (40..=60).collect::<Vec<_>>(),
            "unwritten"
        );
        assert_eq!(held(&recent, ..).0, Some(61 - RECENT as u64));
        recent.purged(35);
        assert_eq!(held(&recent, ..).0, Some(36));

        // A run that does not follow starts the memory anew.
        appended(&mut recent, 100..=100);
        assert_eq!(held(&recent, ..), (Some(100), vec![100]));
    }
}
