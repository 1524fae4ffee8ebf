//! The snapshot format: the state's tables in one compact, self-describing binary blob.
//!
//! A snapshot is [`MAGIC`], the format version as two big-endian bytes, then MessagePack values
//! one after another: a [`Head`] with the counters, then for each table a [`Section`] (its name
//! and row count) followed by its rows — `(key, value)` pairs for the maps of `State`, events for
//! `events`. Values are encoded with their field names (`rmp_serde::encode::write_named`), so a
//! field added later with `#[serde(default)]`, or left out by `skip_serializing_if`, reads as it
//! does in JSON: a newer binary reads an older snapshot. A table this binary does not know
//! refuses the snapshot rather than silently dropping it.
//!
//! It is built from a redb read transaction over the tables, so it is consistent with its own
//! meta row and takes no lock on the in-memory state. Snapshots of format 1 — the JSON of the
//! whole state, written before the tables — still install.

use std::collections::VecDeque;

use api::{Event, Timestamp};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, TableHandle};
use serde::{Deserialize, Serialize};

use crate::db::{self, DbError};
use crate::state::{Counters, State};
use crate::tables::{self, EVENTS, Meta};

#[cfg(test)]
mod tests;

/// The first bytes of every snapshot of format 2 and later.
pub(crate) const MAGIC: &[u8; 16] = b"outpost-snapshot";
/// The format this version writes; it reads every format up to this one.
pub(crate) const SNAPSHOT_FORMAT: u16 = 2;

/// What precedes the tables.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    counters: Counters,
    clock: Timestamp,
}

/// The start of one table's rows.
#[derive(Debug, Serialize, Deserialize)]
struct Section {
    table: String,
    rows: u64,
}

/// The snapshot of the tables as `txn` sees them, and the meta row it stands at.
pub(crate) fn build(txn: &ReadTransaction) -> Result<(Meta, Vec<u8>), DbError> {
    let meta = tables::read_meta(txn)?.unwrap_or_default();
    let mut out = envelope(SNAPSHOT_FORMAT);
    let head = Head {
        counters: meta.counters,
        clock: meta.clock,
    };
    rmp_serde::encode::write_named(&mut out, &head)?;
    // The maps of an empty state are used only for their types, to re-encode each table's rows.
    let mut types = State::default();
    for (name, map) in types.stored_maps() {
        let table = txn.open_table(tables::map_table(name))?;
        section(&mut out, name, table.len()?)?;
        for row in table.iter()? {
            let (key, value) = row?;
            map.transcode_row(name, key.value(), value.value(), &mut out)?;
        }
    }
    let events = txn.open_table(EVENTS)?;
    section(&mut out, EVENTS.name(), events.len()?)?;
    for row in events.iter()? {
        let (seq, value) = row?;
        let event: Event = db::decode(EVENTS.name(), seq.value(), value.value())?;
        rmp_serde::encode::write_named(&mut out, &event)?;
    }
    Ok((meta, out))
}

/// The first bytes of a snapshot of `format`.
pub(crate) fn envelope(format: u16) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&format.to_be_bytes());
    out
}

fn section(out: &mut Vec<u8>, table: &str, rows: u64) -> Result<(), DbError> {
    let section = Section {
        table: table.to_string(),
        rows,
    };
    rmp_serde::encode::write_named(out, &section)?;
    Ok(())
}

/// The state a snapshot holds and the cluster clock it was taken at (zero for format 1, which
/// did not record it).
pub(crate) fn read(data: &[u8]) -> Result<(State, Timestamp), DbError> {
    match data.strip_prefix(MAGIC.as_slice()) {
        Some(rest) => read_tables(rest),
        None => Ok((read_format_1(data)?, Timestamp::default())),
    }
}

fn read_tables(data: &[u8]) -> Result<(State, Timestamp), DbError> {
    let Some((version, mut input)) = data.split_first_chunk::<2>() else {
        return Err(DbError::Snapshot(
            "it ends before its format version".into(),
        ));
    };
    let version = u16::from_be_bytes(*version);
    if version > SNAPSHOT_FORMAT {
        return Err(DbError::Snapshot(format!(
            "its format {version} is newer than this outpost reads ({SNAPSHOT_FORMAT}); upgrade this server to the leader's version"
        )));
    }
    let head: Head = rmp_serde::from_read(&mut input)?;
    let mut state = State::default();
    state.set_counters(head.counters);
    while !input.is_empty() {
        let section: Section = rmp_serde::from_read(&mut input)?;
        read_section(&mut state, &section, &mut input)?;
    }
    Ok((state, head.clock))
}

fn read_section(state: &mut State, section: &Section, input: &mut &[u8]) -> Result<(), DbError> {
    if section.table == EVENTS.name() {
        let mut events = VecDeque::new();
        for _ in 0..section.rows {
            events.push_back(rmp_serde::from_read(&mut *input)?);
        }
        state.events = events;
        return Ok(());
    }
    let mut maps = state.stored_maps();
    let Some((_, map)) = maps.iter_mut().find(|(name, _)| *name == section.table) else {
        return Err(DbError::Snapshot(format!(
            "it holds a table {:?} this outpost does not know; upgrade this server to the leader's version",
            section.table
        )));
    };
    for _ in 0..section.rows {
        map.read_snapshot_row(input)?;
    }
    Ok(())
}

/// Format 1: the JSON of the whole state beside the snapshot's meta.
fn read_format_1(data: &[u8]) -> Result<State, DbError> {
    #[derive(Deserialize)]
    struct Format1 {
        state: State,
    }
    let snapshot: Format1 = serde_json::from_slice(data)?;
    Ok(snapshot.state)
}
