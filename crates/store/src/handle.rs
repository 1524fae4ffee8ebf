//! How the rest of a server reads the replicated state: [`StateHandle`].
//!
//! Reads are local and never go through Raft: a handler sees what this server has applied, which
//! a follower may have applied a little later than the leader. Blocking queries (an agent waiting
//! for its assignments to change, like Consul's and Nomad's `?index=N`) re-read the state each
//! time the applied index moves ([`StateHandle::subscribe`]).

use tokio::sync::watch;

use crate::state::State;
use crate::state_machine::{self, SharedMachine};

/// A read-only view of the applied state. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct StateHandle {
    machine: SharedMachine,
    applied: watch::Receiver<u64>,
}

impl StateHandle {
    pub(crate) fn new(machine: SharedMachine, applied: watch::Receiver<u64>) -> StateHandle {
        StateHandle { machine, applied }
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
