//! How the rest of a server reads the replicated state: [`StateHandle`].
//!
//! Reads are local and never go through Raft: a handler sees what this server has applied, which
//! a follower may have applied a little later than the leader. Blocking queries (an agent waiting
//! for its assignments to change, like Consul's and Nomad's `?index=N`) re-read the state each
//! time the applied index moves ([`StateHandle::subscribe`]), or, for one node's assignments,
//! only when that node's assignment index moves ([`StateHandle::watch_node`]): with thousands of
//! agents each holding one, waking them all for every entry would cost a lock and a lookup per
//! agent per entry.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::directory::Directory;
use crate::state::State;
use crate::state_machine::{self, SharedMachine};
use crate::tables::Changes;

/// Who waits on what, told by the state machine after each applied batch.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    nodes: NodeWatches,
    services: ServiceChanges,
}

impl Watches {
    /// Tells the waiters what a batch changed.
    pub(crate) fn notify(&self, changes: &Changes) {
        self.nodes.notify(changes.moved_nodes());
        self.services.note(changes);
    }

    /// Wakes every waiter: the whole state was replaced (a snapshot was installed).
    pub(crate) fn notify_all(&self, index: u64) {
        self.nodes.notify_all(index);
        self.services.note_all(index);
    }
}

/// The nodes whose assignments someone waits on, each with a channel of its assignment index.
#[derive(Debug, Default)]
struct NodeWatches(Mutex<HashMap<String, watch::Sender<u64>>>);

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
    fn notify<'a>(&self, moved: impl IntoIterator<Item = (&'a str, u64)>) {
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

    fn notify_all(&self, index: u64) {
        let mut watches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        watches.retain(|_, sender| sender.receiver_count() > 0);
        for sender in watches.values() {
            sender.send_replace(index);
        }
    }
}

/// The services whose rows, or whose tasks' rows, changed since they were last taken
/// ([`StateHandle::take_changed_services`]): what a server's endpoint list recomputes, so
/// that a report of one task costs one service's endpoints, not every service's.
#[derive(Debug)]
struct ServiceChanges {
    changed: Mutex<ChangedServices>,
    index: watch::Sender<u64>,
}

impl Default for ServiceChanges {
    fn default() -> ServiceChanges {
        ServiceChanges {
            changed: Mutex::default(),
            index: watch::channel(0).0,
        }
    }
}

/// What changed: some services, or everything (a node's row changed, which may change every
/// service with a task there, or the state was replaced).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangedServices {
    pub all: bool,
    pub services: BTreeSet<String>,
}

impl ServiceChanges {
    fn note(&self, changes: &Changes) {
        let (services, nodes) = changes.touched_services();
        if services.is_empty() && !nodes {
            return;
        }
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        changed.all |= nodes;
        if !changed.all {
            changed
                .services
                .extend(services.into_iter().map(str::to_string));
        }
        drop(changed);
        self.index.send_replace(changes.index);
    }

    fn note_all(&self, index: u64) {
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        changed.all = true;
        changed.services.clear();
        drop(changed);
        self.index.send_replace(index);
    }

    fn take(&self) -> ChangedServices {
        let mut changed = self.changed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken = std::mem::take(&mut *changed);
        if taken.all {
            taken.services.clear();
        }
        taken
    }
}

/// A read-only view of the applied state. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct StateHandle {
    machine: SharedMachine,
    applied: watch::Receiver<u64>,
    watches: Arc<Watches>,
    directory: Arc<Directory>,
}

impl StateHandle {
    pub(crate) fn new(
        machine: SharedMachine,
        applied: watch::Receiver<u64>,
        watches: Arc<Watches>,
        directory: Arc<Directory>,
    ) -> StateHandle {
        StateHandle {
            machine,
            applied,
            watches,
            directory,
        }
    }

    /// Whether the applied state holds node `name`, read without the state's lock
    /// (`directory.rs` says why).
    pub fn knows_node(&self, name: &str) -> bool {
        self.directory.knows_node(name)
    }

    /// The role and node of the certificate with `fingerprint`, if the cluster knows it; read
    /// without the state's lock.
    pub fn certificate(&self, fingerprint: &str) -> Option<(String, String)> {
        self.directory.certificate(fingerprint)
    }

    /// Whether any node certificate is known ([`State::knows_certificates`]); read without the
    /// state's lock.
    pub fn knows_certificates(&self) -> bool {
        self.directory.knows_certificates()
    }

    /// A receiver that changes when `node`'s assignments may have changed (its entry of
    /// `State::node_index` moved, or the state was replaced). Subscribe first, then read the
    /// state, then wait: a change in between is not missed.
    pub fn watch_node(&self, node: &str) -> watch::Receiver<u64> {
        self.watches.nodes.subscribe(node)
    }

    /// A receiver that moves, to the index of the batch, whenever services or their tasks
    /// changed; [`take_changed_services`](Self::take_changed_services) says which. Meant for
    /// one consumer per server (its endpoint list).
    pub fn watch_services(&self) -> watch::Receiver<u64> {
        self.watches.services.index.subscribe()
    }

    /// The services changed since the last call: take them, then read the state, so that a
    /// change in between is taken next time and not lost.
    pub fn take_changed_services(&self) -> ChangedServices {
        self.watches.services.take()
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
