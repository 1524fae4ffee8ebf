//! How the rest of a server reads the replicated state: [`StateHandle`].
//!
//! Reads are local and never go through Raft: a handler sees what this server has applied, which
//! a follower may have applied a little later than the leader. Blocking queries (an agent waiting
//! for its assignments to change, like Consul's and Nomad's `?index=N`) re-read the state each
//! time the applied index moves ([`StateHandle::subscribe`]), or, for one node's assignments,
//! only when that node's assignment index moves ([`StateHandle::watch_node`]): with thousands of
//! agents each holding one, waking them all for every entry would cost a lock and a lookup per
//! agent per entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::state::State;
use crate::state_machine::{self, SharedMachine};

/// The nodes whose assignments someone waits on, each with a channel of its assignment index.
#[derive(Debug, Default)]
pub(crate) struct NodeWatches(Mutex<HashMap<String, watch::Sender<u64>>>);

impl NodeWatches {
    fn subscribe(&self, node: &str) -> watch::Receiver<u64> {
        let mut watches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match watches.get(node) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                watches.insert(node.to_string(), sender);
                receiver
            }
        }
    }

    /// Tells those waiting on each node that its assignment index moved; nodes nobody waits on
    /// any more are forgotten.
    pub(crate) fn notify<'a>(&self, moved: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut watches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (node, index) in moved {
            if let Some(sender) = watches.get(node) {
                if sender.receiver_count() == 0 {
                    watches.remove(node);
                } else {
                    sender.send_replace(index);
                }
            }
        }
    }

    /// Wakes every waiter: the whole state was replaced (a snapshot was installed).
    pub(crate) fn notify_all(&self, index: u64) {
        let mut watches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        watches.retain(|_, sender| sender.receiver_count() > 0);
        for sender in watches.values() {
            sender.send_replace(index);
        }
    }
}

/// A read-only view of the applied state. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct StateHandle {
    machine: SharedMachine,
    applied: watch::Receiver<u64>,
    nodes: Arc<NodeWatches>,
}

impl StateHandle {
    pub(crate) fn new(
        machine: SharedMachine,
        applied: watch::Receiver<u64>,
        nodes: Arc<NodeWatches>,
    ) -> StateHandle {
        StateHandle {
            machine,
            applied,
            nodes,
        }
    }

    /// A receiver that changes when `node`'s assignments may have changed (its entry of
    /// `State::node_index` moved, or the state was replaced). Subscribe first, then read the
    /// state, then wait: a change in between is not missed.
    pub fn watch_node(&self, node: &str) -> watch::Receiver<u64> {
        self.nodes.subscribe(node)
    }

    /// Runs `f` on the applied state. Keep `f` short: it holds a lock that the next apply waits
    /// for; clone what you need out of it instead of doing I/O inside.
    ///
    /// The state may already include a batch that is still being written; the watch channel
    /// ([`subscribe`](Self::subscribe)) only moves once it is durable.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&state_machine::read(&self.machine).state)
    }

    /// The index of the last applied entry whose state is durable.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver of the applied index, updated after every applied batch (and snapshot install)
    /// once it is durable. It closes when the store file does (see [`closed`](Self::closed)).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Waits until the store file is closed — every log store, state machine and snapshot
    /// builder using it is dropped — so that it can be opened again. After `Raft::shutdown`
    /// the state machine task ends on its own, shortly after.
    pub async fn closed(&self) {
        let mut applied = self.applied.clone();
        while applied.changed().await.is_ok() {}
    }
}

impl std::fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHandle")
            .field("applied_index", &self.applied_index())
            .finish()
    }
}
