//! The log's own file: what a new store, an older store (log inside the state file), a move cut
//! short by a crash and a lost state file each leave, seen through the stores openraft uses.

use std::path::Path;

use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use redb::{Database, ReadableTable, TableHandle};

use super::{log_path, new_path};
use crate::db::{self, LOG, LOG_META, SM};
use crate::raft::{LogId, Vote};
use crate::tables::{self, META, Meta, STORE_FORMAT};
use crate::tests::{PATIENCE, register, start, stop};
use crate::{StoreOptions, open};

/// A store written by a real one-member Raft (its vote, membership and three commands), closed;
/// returns the log ids and the vote that it holds.
async fn written(path: &Path) -> (Vec<LogId>, Option<Vote>) {
    let (raft, handle) = start(path).await;
    for name in ["edge-1", "edge-2", "edge-3"] {
        raft.client_write(register(name)).await.unwrap();
    }
    stop(raft, &handle).await;
    read_log(path).await
}

/// The ids of the entries and the vote the log store of `path` reads, through a fresh open.
async fn read_log(path: &Path) -> (Vec<LogId>, Option<Vote>) {
    let (mut log, sm, handle) = open(path, StoreOptions::default()).unwrap();
    let ids = log.try_get_log_entries(..).await.unwrap();
    let vote = log.read_vote().await.unwrap();
    drop((log, sm));
    tokio::time::timeout(PATIENCE, handle.closed())
        .await
        .unwrap();
    (ids.into_iter().map(|e| e.log_id).collect(), vote)
}

fn tables_of(path: &Path) -> Vec<String> {
    let file = Database::open(path).unwrap();
    let txn = file.begin_read().unwrap();
    txn.list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect()
}

fn format_of(path: &Path) -> u32 {
    let file = Database::open(path).unwrap();
    let txn = file.begin_read().unwrap();
    tables::read_meta(&txn).unwrap().unwrap().format
}

/// Puts the log back into the state file as formats 1 and 2 kept it (the meta row saying 2),
/// and deletes the log file, as an older outpost left a data dir. With `keep_log_file`, the log
/// file stays too: a move that crashed after its rename, before the state file's tables went.
fn as_older_format(path: &Path, keep_log_file: bool) {
    let log_file = log_path(path);
    {
        let log = Database::open(&log_file).unwrap();
        let state = Database::open(path).unwrap();
        let from = log.begin_read().unwrap();
        let to = state.begin_write().unwrap();
        {
            let mut entries = to.open_table(LOG).unwrap();
            for row in from.open_table(LOG).unwrap().iter().unwrap() {
                let (index, entry) = row.unwrap();
                entries.insert(index.value(), entry.value()).unwrap();
            }
            let mut meta = to.open_table(LOG_META).unwrap();
            for row in from.open_table(LOG_META).unwrap().iter().unwrap() {
                let (key, value) = row.unwrap();
                meta.insert(key.value(), value.value()).unwrap();
            }
        }
        let stored = {
            let table = to.open_table(SM).unwrap();
            let row = table.get(META).unwrap().unwrap();
            db::decode::<Meta>(SM.name(), META, row.value()).unwrap()
        };
        db::put(
            &to,
            SM,
            META,
            &Meta {
                format: 2,
                ..stored
            },
        )
        .unwrap();
        to.commit().unwrap();
    }
    if !keep_log_file {
        std::fs::remove_file(&log_file).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_keeps_its_log_in_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (ids, vote) = written(&path).await;

    assert_eq!(log_path(&path), dir.path().join("state-log.redb"));
    assert!(ids.len() >= 4, "membership and three commands: {ids:?}");
    assert!(vote.is_some());
    let state_tables = tables_of(&path);
    assert!(
        !state_tables.contains(&LOG.name().to_string()),
        "{state_tables:?}"
    );
    assert!(
        !state_tables.contains(&LOG_META.name().to_string()),
        "{state_tables:?}"
    );
    let log_tables = tables_of(&log_path(&path));
    assert_eq!(log_tables, [LOG.name(), LOG_META.name()]);
    assert_eq!(format_of(&path), STORE_FORMAT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_store_moves_its_log_to_its_own_file_once_and_keeps_every_entry_and_the_vote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let before = written(&path).await;
    as_older_format(&path, false);
    assert!(!log_path(&path).exists());

    assert_eq!(
        read_log(&path).await,
        before,
        "the log as the older store had it"
    );
    assert!(log_path(&path).exists());
    assert!(!tables_of(&path).contains(&LOG.name().to_string()));
    assert_eq!(
        format_of(&path),
        STORE_FORMAT,
        "an older outpost now refuses it"
    );
    assert_eq!(read_log(&path).await, before, "and again once moved");

    // The state and the log go on together: a restarted Raft continues the same log.
    let (raft, handle) = start(&path).await;
    let next = raft.client_write(register("edge-4")).await.unwrap().log_id;
    assert!(next.index > before.0.last().unwrap().index);
    assert_eq!(handle.read(|s| s.nodes.len()), 4);
    stop(raft, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_cut_short_by_a_crash_is_finished_at_the_next_open() {
    // Crashed while copying: a partial new file beside a state file that still has the log.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let before = written(&path).await;
    as_older_format(&path, false);
    std::fs::write(new_path(&log_path(&path)), b"half a redb file").unwrap();
    assert_eq!(read_log(&path).await, before);
    assert!(!new_path(&log_path(&path)).exists());

    // Crashed after the rename: both files hold the log; the log file's copy is the one kept.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let before = written(&path).await;
    as_older_format(&path, true);
    assert_eq!(read_log(&path).await, before);
    assert!(!tables_of(&path).contains(&LOG_META.name().to_string()));
    assert_eq!(format_of(&path), STORE_FORMAT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_whose_state_file_is_gone_is_removed_not_replayed_onto_an_empty_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (ids, _) = written(&path).await;
    assert!(!ids.is_empty());
    std::fs::remove_file(&path).unwrap();

    assert_eq!(read_log(&path).await, (vec![], None));
    let (raft, handle) = start(&path).await;
    assert_eq!(
        handle.read(|s| s.nodes.len()),
        0,
        "an empty state, as asked"
    );
    stop(raft, &handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_log_file_is_refused_naming_it_with_the_remedy() {
    for lose in [
        (|log: &Path| std::fs::remove_file(log).unwrap()) as fn(&Path),
        |log| std::fs::write(log, b"").unwrap(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        written(&path).await;
        let log = log_path(&path);
        lose(&log);

        let message = open(&path, StoreOptions::default())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(message.contains(&log.display().to_string()), "{message}");
        assert!(message.contains("is missing or empty"), "{message}");
        assert!(
            message.contains("restore the data dir from a backup"),
            "{message}"
        );
        assert!(message.contains("--reset"), "{message}");
        assert!(path.exists(), "the state file is left as it was");
    }
}
