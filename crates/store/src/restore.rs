//! What a backup needs of the store: a snapshot read whole, to check it and say what it holds,
//! and a new store file made from one (a restore).
//!
//! A backup is the Raft snapshot a server would send a follower (`snapshot` for its format), so
//! a newer binary restores an older backup as it installs an older snapshot. A restore installs
//! it as a follower installs one, with the membership replaced by the one server that is to
//! start from it; the log stays empty (openraft takes the snapshot's last log id as purged).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;

use openraft::Membership;
use openraft::storage::{RaftLogStorage, RaftStateMachine};

use crate::raft::{Node, NodeId, SnapshotMeta, StoredMembership, Vote};
use crate::state::State;
use crate::{StoreError, StoreOptions, snapshot};

/// A snapshot that cannot be read whole: why, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSnapshot(String);

/// The state a snapshot holds, read and checked whole (every table, every row): what a backup
/// is checked with before anything is written.
pub fn read_snapshot(data: &[u8]) -> Result<State, BadSnapshot> {
    let (state, _) = snapshot::read(data).map_err(|e| BadSnapshot(e.to_string()))?;
    Ok(state)
}

/// Makes the store file `path` (which must not hold a state yet) from a snapshot, as server
/// `id` alone: the group's membership becomes that one server at `node`. The vote is set to
/// the term of the snapshot's last entry, so the first election of the restored server takes
/// a later term and its first entry comes after the snapshot's in log order.
pub async fn restore(
    path: &Path,
    meta: &SnapshotMeta,
    data: Vec<u8>,
    id: NodeId,
    node: Node,
) -> Result<(), StoreError> {
    let failed = |detail: String| StoreError::Unreadable {
        path: path.to_path_buf(),
        detail,
    };
    let (mut log, mut machine, handle) = crate::open(path, StoreOptions::default())?;
    if handle.read(|s| s.index) > 0 {
        return Err(failed("it holds a state already".into()));
    }
    let membership = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)]));
    let meta = SnapshotMeta {
        last_log_id: meta.last_log_id,
        last_membership: StoredMembership::new(
            meta.last_membership.log_id().to_owned(),
            membership,
        ),
        snapshot_id: format!("restored-{}", meta.snapshot_id),
    };
    machine
        .install_snapshot(&meta, Box::new(Cursor::new(data)))
        .await
        .map_err(|e| failed(format!("cannot install the backup: {e}")))?;
    let term = meta.last_log_id.map_or(0, |id| id.leader_id.term);
    log.save_vote(&Vote::new(term, id))
        .await
        .map_err(|e| failed(format!("cannot write the vote: {e}")))?;
    drop((log, machine));
    handle.closed().await;
    Ok(())
}
