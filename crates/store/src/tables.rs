//! The applied state as tables of the store file, and how an applied batch reaches them.
//!
//! Layout, every value a sealed JSON row ([`db::encode`]) that a human can read with any redb
//! tool:
//! - one table per map of `State`, named as in `State::stored_maps` (`services`, `tasks`,
//!   `nodes`, `node_index`, `pending`, `report_seq`, `placement_index`, `trust`), keyed by the
//!   map's key;
//! - [`EVENTS`]: the kept events by `seq`, appended as they are applied, the oldest deleted past
//!   retention;
//! - the [`Meta`] row, `meta` in the `state_machine` table: the layout's format, the applied
//!   index and log id, the membership, the event and task counters and the cluster clock.
//!
//! A batch's [`Changes`] — the rows it touched and the meta row — are written in one
//! transaction, so the tables never stand at another index than the meta row says. A store of
//! the first format (the whole state as one JSON value under `state_machine`/`machine`) is
//! rewritten into tables once, in one transaction, when it is opened ([`load_or_migrate`]).

use std::collections::{BTreeMap, BTreeSet};

use api::{Event, Timestamp};
use redb::{
    Database, ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::db::{self, DbError, MACHINE, SM};
use crate::events::Retention;
use crate::raft::{LogId, StoredMembership};
use crate::state::{Counters, State};
use crate::state_machine::Machine;
use crate::tracked::TrackedMap;

#[cfg(test)]
mod tests;

/// The layout written by this version: 1 was the whole state as one JSON value, 2 is tables.
pub(crate) const STORE_FORMAT: u32 = 2;

/// Events by `seq`.
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// The table of each node's assignment index (`State::node_index`).
pub(crate) const NODE_INDEX: &str = "node_index";
/// The key of the [`Meta`] row in the `state_machine` table.
pub(crate) const META: &str = "meta";

/// The table of one map of `State`.
pub(crate) fn map_table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// The names of the tables that hold the maps of `State`.
pub(crate) fn map_names() -> Vec<&'static str> {
    let mut state = State::default();
    state
        .stored_maps()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Where the stored state stands: written with every batch, alongside its rows.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) format: u32,
    pub(crate) counters: Counters,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// The time of the newest applied command: what event ages are measured against.
    pub(crate) clock: Timestamp,
}

/// A changed row: its key and its sealed value, `None` when it was removed.
pub(crate) type Row = (String, Option<Vec<u8>>);

/// A map of `State` kept as a table of its own. Object-safe, so that `State::stored_maps` can
/// list maps of different value types and every step below handles them in one loop.
pub(crate) trait StoredMap {
    /// Encodes the rows changed since the last call and forgets the changes.
    fn take_changes(&mut self) -> Result<Vec<Row>, DbError>;
    /// Records every row as changed: the next [`take_changes`](Self::take_changes) has them all.
    fn mark_all_changed(&mut self);
    /// Forgets the recorded changes: the map now matches its table.
    fn forget_changes(&mut self);
    /// Adds a row read from the table named `table`.
    fn load_row(&mut self, table: &str, key: &str, stored: &[u8]) -> Result<(), DbError>;
    /// Appends a stored row to `out` as a snapshot row (MessagePack).
    fn transcode_row(
        &self,
        table: &str,
        key: &str,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DbError>;
    /// Adds a row read from a snapshot, consuming it from the front of `input`.
    fn read_snapshot_row(&mut self, input: &mut &[u8]) -> Result<(), DbError>;
}

impl<V: Serialize + DeserializeOwned> StoredMap for TrackedMap<String, V> {
    fn take_changes(&mut self) -> Result<Vec<Row>, DbError> {
        let encode =
            |(key, value): (String, Option<&V>)| Ok((key, value.map(db::encode).transpose()?));
        TrackedMap::take_changes(self).map(encode).collect()
    }

    fn mark_all_changed(&mut self) {
        TrackedMap::mark_all_changed(self);
    }

    fn forget_changes(&mut self) {
        TrackedMap::forget_changes(self);
    }

    fn load_row(&mut self, table: &str, key: &str, stored: &[u8]) -> Result<(), DbError> {
        let value: V = db::decode(table, key, stored)?;
        self.insert(key.to_string(), value);
        Ok(())
    }

    fn transcode_row(
        &self,
        table: &str,
        key: &str,
        stored: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DbError> {
        let value: V = db::decode(table, key, stored)?;
        rmp_serde::encode::write_named(out, &(key, value))?;
        Ok(())
    }

    fn read_snapshot_row(&mut self, input: &mut &[u8]) -> Result<(), DbError> {
        let (key, value): (String, V) = rmp_serde::from_read(input)?;
        self.insert(key, value);
        Ok(())
    }
}

/// The writes of one batch (or of a whole state), encoded under the state lock and written
/// after it is released.
#[derive(Debug)]
pub(crate) struct Changes {
    /// The rows are the whole state: every table is emptied first (migration, snapshot install).
    pub(crate) replace: bool,
    pub(crate) maps: Vec<(&'static str, Vec<Row>)>,
    pub(crate) events: Vec<(u64, Vec<u8>)>,
    /// The `seq` of the oldest event kept: older rows are past retention and deleted.
    pub(crate) first_event: u64,
    pub(crate) meta: Vec<u8>,
    /// The applied index the tables stand at once these are written.
    pub(crate) index: u64,
}

/// Each key's last value among `rows`, in key order: merged batches change the same rows again
/// and again (a task's readiness flips, a node reports anew), and a B-tree takes rows in order
/// along one path of pages instead of jumping across the whole table for each.
fn latest(rows: &[Row]) -> BTreeMap<&str, &Option<Vec<u8>>> {
    let mut latest = BTreeMap::new();
    for (key, value) in rows {
        latest.insert(key.as_str(), value);
    }
    latest
}

impl Changes {
    /// Writes the changes inside `txn`.
    pub(crate) fn write(&self, txn: &WriteTransaction) -> Result<(), DbError> {
        for (name, rows) in &self.maps {
            if self.replace {
                txn.delete_table(map_table(name))?;
            }
            let mut table = txn.open_table(map_table(name))?;
            for (key, value) in latest(rows) {
                match value {
                    Some(bytes) => table.insert(key, bytes.as_slice())?,
                    None => table.remove(key)?,
                };
            }
        }
        if self.replace {
            txn.delete_table(EVENTS)?;
            txn.open_table(SM)?.remove(MACHINE)?;
        }
        let mut events = txn.open_table(EVENTS)?;
        for (seq, bytes) in &self.events {
            events.insert(seq, bytes.as_slice())?;
        }
        events.retain_in(..self.first_event, |_, _| false)?;
        db::put_encoded(txn, SM, META, &self.meta)
    }

    /// Adds the changes of a later batch: its rows are written after these, so where both
    /// changed a row the later value is the one that stays, and the meta row becomes the later
    /// one.
    pub(crate) fn merge(&mut self, later: Changes) {
        for (name, rows) in later.maps {
            match self.maps.iter_mut().find(|(n, _)| *n == name) {
                Some((_, mine)) => mine.extend(rows),
                None => self.maps.push((name, rows)),
            }
        }
        self.replace |= later.replace;
        self.events.extend(later.events);
        self.first_event = later.first_event;
        self.meta = later.meta;
        self.index = later.index;
    }

    /// The nodes whose assignment index this batch moved, each with the batch's index: every
    /// change to a node's assignments moves its row of `node_index` to the applying entry.
    pub(crate) fn moved_nodes(&self) -> impl Iterator<Item = (&str, u64)> {
        let rows = self.maps.iter().filter(|(name, _)| *name == NODE_INDEX);
        rows.flat_map(|(_, rows)| rows.iter().map(|(node, _)| (node.as_str(), self.index)))
    }

    /// The services whose rows or whose tasks' rows this batch changed (a task's id starts
    /// with its service's name and a dot), and whether any node's row changed.
    pub(crate) fn touched_services(&self) -> (BTreeSet<&str>, bool) {
        let mut services = BTreeSet::new();
        let mut nodes = self.replace;
        for (name, rows) in &self.maps {
            match *name {
                "services" => services.extend(rows.iter().map(|(key, _)| key.as_str())),
                "tasks" => {
                    let ids = rows.iter().map(|(id, _)| id.as_str());
                    services.extend(ids.filter_map(|id| id.split('.').next()));
                }
                "nodes" => nodes |= !rows.is_empty(),
                _ => {}
            }
        }
        (services, nodes)
    }

    /// How many bytes of rows this writes: what one batch costs the disk, before redb's pages.
    pub(crate) fn bytes(&self) -> usize {
        let maps = self.maps.iter().flat_map(|(_, rows)| rows);
        let rows: usize = maps
            .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        let events: usize = self.events.iter().map(|(_, bytes)| 8 + bytes.len()).sum();
        rows + events + self.meta.len()
    }
}

/// The state as the file holds it: read from the tables, or migrated from the first format
/// (then written as tables before this returns), or empty for a new file.
pub(crate) fn load_or_migrate(db: &Database, retention: &Retention) -> Result<Machine, DbError> {
    let txn = db.begin_read()?;
    if let Some(machine) = load(&txn)? {
        return Ok(machine);
    }
    let Some(legacy) = legacy(&txn)? else {
        return Ok(Machine::default());
    };
    drop(txn);
    let mut machine = Machine::new(legacy.state, legacy.last_applied, legacy.membership);
    let changes = machine.changes(retention, true)?;
    let txn = db.begin_write()?;
    changes.write(&txn)?;
    txn.commit()?;
    Ok(machine)
}

/// The state machine as the first format stored it.
#[derive(Deserialize)]
struct LegacyMachine {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

fn legacy(txn: &ReadTransaction) -> Result<Option<LegacyMachine>, DbError> {
    let table = txn.open_table(SM)?;
    let Some(value) = table.get(MACHINE)? else {
        return Ok(None);
    };
    Ok(Some(db::decode(SM.name(), MACHINE, value.value())?))
}

/// The meta row, `None` in a file that has none yet.
pub(crate) fn read_meta(txn: &ReadTransaction) -> Result<Option<Meta>, DbError> {
    let table = txn.open_table(SM)?;
    let Some(value) = table.get(META)? else {
        return Ok(None);
    };
    let meta: Meta = db::decode(SM.name(), META, value.value())?;
    if meta.format > STORE_FORMAT {
        return Err(DbError::Format { found: meta.format });
    }
    Ok(Some(meta))
}

/// Reads the whole state from the tables; `None` if the file has no meta row.
fn load(txn: &ReadTransaction) -> Result<Option<Machine>, DbError> {
    let Some(meta) = read_meta(txn)? else {
        return Ok(None);
    };
    let mut state = State::default();
    for (name, map) in state.stored_maps() {
        for row in txn.open_table(map_table(name))?.iter()? {
            let (key, value) = row?;
            map.load_row(name, key.value(), value.value())?;
        }
        map.forget_changes();
    }
    for row in txn.open_table(EVENTS)?.iter()? {
        let (seq, value) = row?;
        let event: Event = db::decode(EVENTS.name(), seq.value(), value.value())?;
        state.events.push_back(event);
    }
    state.set_counters(meta.counters);
    let mut machine = Machine::new(state, meta.last_applied, meta.membership);
    machine.clock = meta.clock;
    Ok(Some(machine))
}
