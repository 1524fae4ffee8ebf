//! The leader's controllers. Followers run the same loops but do nothing until they lead.
//!
//! - [`services`]: after every applied change (and every second, to retry), diffs desired
//!   against actual through the pure scheduler and commits the plan as one `Reconcile` entry.
//! - [`nodes`]: keeps each node's last heartbeat in memory and commits only transitions
//!   (ready → suspect → down, and back to ready).

use std::time::Duration;

use api::NodeState;
use store::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Server, now};

/// A node whose heartbeats (every 500 ms) stop for 1.5 s is suspect: three beats missed.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(1_500);
/// Down after 5 s of silence. Its work stays put for now: moving it is a per-service policy.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);
const NODE_CHECK: Duration = Duration::from_millis(250);
/// Retry pace for plans that could not be committed or placed.
const RESYNC: Duration = Duration::from_secs(1);

pub async fn services(ctx: Server, mut stop: watch::Receiver<bool>) {
    let mut applied = ctx.state.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        if ctx.is_leader() {
            reconcile(&ctx).await;
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn reconcile(ctx: &Server) {
    let (plan, pending_now) = ctx.state.read(|s| {
        (
            scheduler::plan(&s.services, &s.tasks, &s.nodes),
            s.pending.clone(),
        )
    });
    let pending_changed = plan
        .pending
        .iter()
        .cloned()
        .collect::<std::collections::BTreeMap<_, _>>()
        != pending_now;
    if plan.is_empty() && !pending_changed {
        return;
    }
    let command = Command::Reconcile {
        place: plan.place,
        stop: plan.stop,
        pending: plan.pending,
        time: now(),
    };
    if let Err(e) = ctx.propose(command).await {
        tracing::warn!("cannot commit a placement plan: {e}");
    }
}

pub async fn nodes(ctx: Server, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(NODE_CHECK) => {}
            _ = stop.changed() => return,
        }
        let leader = ctx.is_leader();
        if leader && !was_leader {
            // A new leader knows no heartbeat yet: every node starts with a fresh grace period.
            let names: Vec<String> = ctx.state.read(|s| s.nodes.keys().cloned().collect());
            let mut beats = ctx.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
            for name in names {
                beats.insert(name, Instant::now());
            }
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        for (name, state) in transitions(&ctx) {
            let command = Command::SetNodeState {
                node: name,
                state,
                time: now(),
            };
            if let Err(e) = ctx.propose(command).await {
                tracing::warn!("cannot record a node state change: {e}");
            }
        }
    }
}

fn transitions(ctx: &Server) -> Vec<(String, NodeState)> {
    let nodes: Vec<(String, NodeState)> = ctx.state.read(|s| {
        s.nodes
            .values()
            .map(|n| (n.name.clone(), n.state))
            .collect()
    });
    let mut beats = ctx.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
    nodes
        .into_iter()
        .filter_map(|(name, current)| {
            let last = *beats.entry(name.clone()).or_insert_with(Instant::now);
            let silent = last.elapsed();
            let next = if silent >= DOWN_AFTER {
                NodeState::Down
            } else if silent >= SUSPECT_AFTER {
                NodeState::Suspect
            } else {
                NodeState::Ready
            };
            (next != current).then_some((name, next))
        })
        .collect()
}
