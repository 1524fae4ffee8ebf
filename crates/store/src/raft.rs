//! openraft's type configuration for Outpost, short names for the types built from it, and the
//! Raft settings and start-up step every server uses.
//!
//! The server's network layer and HTTP handlers name these aliases (`store::raft::Raft`,
//! `store::raft::AppendEntriesRequest`, …) instead of spelling out openraft's generics.

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::error::{InitializeError, RaftError};

use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// Outpost's Raft: a log of [`Command`]s that the state machine answers with [`Response`]s.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A server's id in the Raft group; stable across restarts.
pub type NodeId = u64;
/// A server as the membership records it: where to reach it and what it is called.
///
/// Field for field a superset of openraft's `BasicNode` (`addr`), so memberships written before
/// servers had names still decode, with an empty name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// The server's advertised `host:port`: its API and its Raft RPCs.
    pub addr: String,
    /// The server's name; an agent of the same name is the same machine (`role: both`).
    #[serde(default)]
    pub name: String,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.name, self.addr)
    }
}
pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

// What the Raft network between servers carries.
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;

/// 100 ms: five heartbeats fit in the shortest election timeout ([`ELECTION_TIMEOUT_MS`]).
///
/// openraft 0.9 adds a leader lease of the longest election timeout: a follower that heard
/// from its leader starts an election only after the lease and its own timeout, 1.5 to 2 s of
/// silence (15 heartbeats or more), so a loaded 2-core box or a slow SD-card fsync that delays
/// a few heartbeats causes no needless election. A dead leader is replaced within about 2 s, and
/// the API answers writes again within the 3 s the project aims at.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Election timeouts are drawn from this range; the spread makes split votes rare.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (500, 1_000);
/// 10 s: a snapshot of a busy site is a few MB (10,000 tasks are about 2.3 MB of MessagePack);
/// openraft's 200 ms default is too short for an edge uplink.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;

/// 1 MiB: a snapshot goes to a follower in chunks of this size, each its own request. The Raft
/// RPCs are JSON, where a byte array costs up to four bytes a byte, so a chunk stays well under
/// the API's default 8 MiB body limit (openraft's 3 MiB default would not); a 100,000-task
/// snapshot of some 25 MB is a few dozen requests, each within the install timeout on a slow link.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1 << 20;

/// 1,000 entries between snapshots, against openraft's 5,000: with batches of reports of up to
/// 1 MiB the log stays around a GiB under the heaviest load, and a few MB on a quiet site.
pub const SNAPSHOT_EVERY: u64 = 1_000;
/// 500 entries kept behind a snapshot.
pub const LOG_KEPT: u64 = 500;

/// 8 entries at most in one AppendEntries request, against openraft's 300: an entry can be as
/// large as the API's body limit (a deploy), and 300 of them would be far over any body limit a
/// peer's Raft route could take; a peer that refused the request would be sent the same one
/// again and again. With 8, [`raft_body_limit`] stays a bounded multiple of the entry size.
pub const MAX_PAYLOAD_ENTRIES: u64 = 8;

/// The body limit of a server's Raft routes, from the largest entry one may carry
/// (`max_entry_bytes`, as JSON): a full AppendEntries request of [`MAX_PAYLOAD_ENTRIES`] such
/// entries, and a snapshot chunk of [`SNAPSHOT_CHUNK_BYTES`] as JSON (up to four bytes a
/// byte), each with room for the envelope. The servers of one group must agree on
/// `max_entry_bytes` (they take the same `--max-body-size`).
pub fn raft_body_limit(max_entry_bytes: usize) -> usize {
    const ENVELOPE: usize = 64 << 10;
    let entries = usize::try_from(MAX_PAYLOAD_ENTRIES).unwrap_or(usize::MAX);
    let append = max_entry_bytes
        .saturating_add(ENVELOPE)
        .saturating_mul(entries);
    let chunk = usize::try_from(SNAPSHOT_CHUNK_BYTES).unwrap_or(usize::MAX);
    append.max(chunk.saturating_mul(4).saturating_add(ENVELOPE))
}

/// Raft settings for Outpost servers, whether the group has one member or five. They pass
/// `Config::validate` (a test checks it), so the server can use them as they are.
///
/// An entry can be large (a batch of reports is up to 1 MiB, a single report or deploy up to the
/// API's body limit), so the log is kept short: a snapshot every
/// [`SNAPSHOT_EVERY`] entries and [`LOG_KEPT`] entries behind it for followers that lag a
/// little; a follower further behind gets the snapshot.
pub fn config(cluster_name: &str) -> openraft::Config {
    openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: LOG_KEPT,
        replication_lag_threshold: SNAPSHOT_EVERY + LOG_KEPT,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..openraft::Config::default()
    }
}

/// Makes `members` the group's first membership unless this server's store already has one.
///
/// Returns whether it initialized. Call it on every start of a server that founds a group: the
/// first start writes the membership entry, later starts find it in the log and do nothing.
pub async fn initialize_once(
    raft: &Raft,
    members: BTreeMap<NodeId, Node>,
) -> Result<bool, RaftError<NodeId, InitializeError<NodeId, Node>>> {
    if raft.is_initialized().await? {
        return Ok(false);
    }
    match raft.initialize(members).await {
        Ok(()) => Ok(true),
        // Another caller initialized it between the check and here: the same outcome.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_written_with_openraft_basic_nodes_decodes_with_empty_names() {
        let old = openraft::StoredMembership::<NodeId, openraft::BasicNode>::new(
            None,
            openraft::Membership::new(
                vec![std::collections::BTreeSet::from([1])],
                BTreeMap::from([(1, openraft::BasicNode::new("127.0.0.1:7400"))]),
            ),
        );
        let mut named = Vec::new();
        rmp_serde::encode::write_named(&mut named, &old).unwrap();
        let json = serde_json::to_vec(&old).unwrap();
        let from_named: StoredMembership = rmp_serde::from_slice(&named).unwrap();
        let from_json: StoredMembership = serde_json::from_slice(&json).unwrap();
        for decoded in [from_named, from_json] {
            let node = decoded.membership().get_node(&1).unwrap().clone();
            assert_eq!(
                node,
                Node {
                    addr: "127.0.0.1:7400".into(),
                    name: String::new()
                }
            );
        }
    }

    #[test]
    fn the_raft_routes_take_a_full_append_of_the_largest_entries_and_a_snapshot_chunk() {
        let entry = 16 << 20;
        let limit = raft_body_limit(entry);
        assert!(limit >= entry * MAX_PAYLOAD_ENTRIES as usize);
        assert!(raft_body_limit(0) >= 4 * SNAPSHOT_CHUNK_BYTES as usize);
        assert_eq!(config("t").max_payload_entries, MAX_PAYLOAD_ENTRIES);
    }
}
