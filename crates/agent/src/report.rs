//! The reporter: gathers supervisors' updates and sends them to the server in batches. While the
//! server is unreachable it keeps the latest status of each task and a bounded backlog of events,
//! and delivers them when the server answers again: nothing the node saw while cut off is lost
//! but the oldest events past the bound.
//!
//! - Every report carries a sequence number, and every task status one of its own, both
//!   increasing across agent restarts (the base is kept in local state), so the control plane
//!   can ignore a report that committed late and a task's status older than one it applied.
//! - A backlog goes out in bounded batches, each its own request, so it always fits under the
//!   server's body limit.
//! - [`Reporter::flushed`] waits until what was sent before it is delivered: a stopping agent
//!   uses it so the final states reach the server.
//! - A report carries only what changed since the last one the server acknowledged: the latest
//!   status of each task that changed and the events seen since. A report that was not
//!   acknowledged is put back under anything newer and sent again; the state machine ignores a
//!   status that would move a task back, so a resend is harmless. There is no periodic full
//!   report: the server's view is the sum of acknowledged deltas. The one resync is a task's
//!   first status after an agent restart (a supervisor reports the task it re-adopts or
//!   starts), because what was pending in memory when the agent died is gone.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use api::{NewEvent, StatusReport, TaskStatus};
use client::{Client, ClientError};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::local::{LocalError, LocalState};
use crate::retry::Retry;
use crate::supervisor::Update;

/// Updates arriving this close together go in one request (one Raft entry).
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Events kept while the server is unreachable; beyond this the oldest are dropped.
const EVENT_BACKLOG: usize = 5_000;

/// 1 MiB: an eighth of the server's default 8 MiB body limit, so a batch fits under any limit an
/// operator is likely to set, and one Raft entry stays small.
const BATCH_BYTES: usize = 1 << 20;

/// 1,000 statuses and events per batch (`api::REPORT_ITEMS`, which every server accepts): each
/// becomes part of one Raft entry, which stays quick to apply.
const BATCH_ITEMS: usize = api::REPORT_ITEMS;

/// 4 KiB: the longest message kept in a status or event. No single item can then outgrow a
/// batch, and a runaway error text cannot jam the reporter.
const MAX_MESSAGE: usize = 4 << 10;

/// What the JSON around the lists of a report costs, roughly; counted against [`BATCH_BYTES`].
const ENVELOPE: usize = 128;

/// How the reporter bounds what it holds and sends.
#[derive(Debug, Clone, Copy)]
struct Limits {
    backlog: usize,
    batch_items: usize,
    batch_bytes: usize,
}

const LIMITS: Limits = Limits {
    backlog: EVENT_BACKLOG,
    batch_items: BATCH_ITEMS,
    batch_bytes: BATCH_BYTES,
};

struct Pending {
    tasks: BTreeMap<String, TaskStatus>,
    /// The last `TaskStatus::seq` given: statuses are numbered as they arrive, from the same
    /// base as this run's reports, so they grow across agent restarts.
    status_seq: u64,
    events: VecDeque<NewEvent>,
    memory_pressure: Option<bool>,
    limits: Limits,
}

impl Pending {
    fn new(limits: Limits) -> Pending {
        Pending {
            tasks: BTreeMap::new(),
            status_seq: 0,
            events: VecDeque::new(),
            memory_pressure: None,
            limits,
        }
    }

    fn add(&mut self, update: Update) {
        if let Some(mut status) = update.status {
            if let Some(message) = &mut status.message {
                clip(message);
            }
            self.status_seq += 1;
            status.seq = self.status_seq;
            self.tasks.insert(status.id.clone(), status);
        }
        if update.memory_pressure.is_some() {
            self.memory_pressure = update.memory_pressure;
        }
        for mut event in update.events {
            clip(&mut event.message);
            self.events.push_back(event);
        }
        while self.events.len() > self.limits.backlog {
            self.events.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.events.is_empty() && self.memory_pressure.is_none()
    }

    /// The next report to send: task statuses first, then the oldest events, as many as fit in
    /// the batch limits (at least one item, so a batch always makes progress).
    fn take_batch(&mut self) -> StatusReport {
        let mut batch = Batch::new(self.limits);
        let mut tasks = Vec::new();
        while let Some(entry) = self.tasks.first_entry() {
            if !batch.fits(entry.get()) {
                break;
            }
            tasks.push(entry.remove());
        }
        let mut events = Vec::new();
        while let Some(event) = self.events.front() {
            if !batch.fits(event) {
                break;
            }
            events.extend(self.events.pop_front());
        }
        StatusReport {
            seq: 0,
            tasks,
            events,
            memory_pressure: self.memory_pressure.take(),
        }
    }

    /// Puts back a report that could not be sent, under anything newer that arrived since.
    fn restore(&mut self, report: StatusReport) {
        if self.memory_pressure.is_none() {
            self.memory_pressure = report.memory_pressure;
        }
        for status in report.tasks {
            self.tasks.entry(status.id.clone()).or_insert(status);
        }
        for (i, e) in report.events.into_iter().enumerate() {
            self.events.insert(i, e);
        }
    }
}

/// Counts what goes into one batch against its limits.
struct Batch {
    limits: Limits,
    items: usize,
    bytes: usize,
}

impl Batch {
    fn new(limits: Limits) -> Batch {
        Batch {
            limits,
            items: 0,
            bytes: ENVELOPE,
        }
    }

    /// Whether `item` still fits; if so it is counted in.
    fn fits(&mut self, item: &impl Serialize) -> bool {
        let len = serde_json::to_vec(item).map_or(0, |v| v.len()) + 1;
        let full =
            self.items >= self.limits.batch_items || self.bytes + len > self.limits.batch_bytes;
        if full && self.items > 0 {
            return false;
        }
        self.items += 1;
        self.bytes += len;
        true
    }
}

/// Cuts an over-long message at a character boundary, saying so.
fn clip(text: &mut String) {
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" […]");
    }
}

/// Sends reports for one node, numbering them.
struct Outbox {
    client: Client,
    node: String,
    /// The last sequence number used.
    seq: u64,
}

impl Outbox {
    /// Sends everything pending, batch by batch; on failure the unsent rest stays pending.
    async fn send_all(&mut self, pending: &mut Pending) -> Result<(), ClientError> {
        while !pending.is_empty() {
            let mut batch = pending.take_batch();
            self.seq += 1;
            batch.seq = self.seq;
            if let Err(e) = self.client.report(&self.node, &batch).await {
                tracing::debug!(
                    "cannot report to the server: {e}; keeping {} task states",
                    batch.tasks.len()
                );
                pending.restore(batch);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The running reporter, as the agent holds it.
pub struct Reporter {
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Reporter {
    /// Waits until every update sent before this call is delivered to the server, or `within`
    /// passes; returns whether it was delivered.
    pub async fn flushed(&self, within: Duration) -> bool {
        let (done, delivered) = oneshot::channel();
        if self.flush.send(done).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, delivered).await, Ok(Ok(())))
    }
}

/// Starts the reporter for `node`. Its sequence numbers start above every earlier run's: the
/// base is the time in seconds (or one more than the last run's, if the clock is behind),
/// shifted past the 2^32 reports one run could ever send.
pub fn spawn(
    client: Client,
    node: String,
    updates: mpsc::UnboundedReceiver<Update>,
    registered: watch::Receiver<bool>,
    local: &LocalState,
) -> Result<Reporter, LocalError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let epoch = local.next_report_epoch(now)?;
    let outbox = Outbox {
        client,
        node,
        seq: epoch << 32,
    };
    let (flush, flushes) = mpsc::unbounded_channel();
    tokio::spawn(run(outbox, updates, flushes, registered, LIMITS));
    Ok(Reporter { flush })
}

async fn run(
    mut outbox: Outbox,
    mut updates: mpsc::UnboundedReceiver<Update>,
    mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    mut registered: watch::Receiver<bool>,
    limits: Limits,
) {
    let mut pending = Pending::new(limits);
    pending.status_seq = outbox.seq;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut retry = Retry::default();
    loop {
        if pending.is_empty() {
            // Nothing left to send: whoever waited for a flush has it.
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            tokio::select! {
                update = updates.recv() => match update {
                    Some(u) => pending.add(u),
                    None => return,
                },
                Some(done) = flushes.recv() => waiting.push(done),
            }
            if waiting.is_empty() {
                tokio::time::sleep(BATCH_WINDOW).await;
            }
        }
        // A flush covers every update sent before it, all of which are queued by now.
        while let Ok(done) = flushes.try_recv() {
            waiting.push(done);
        }
        while let Ok(u) = updates.try_recv() {
            pending.add(u);
        }
        if pending.is_empty() {
            continue;
        }
        if registered.wait_for(|r| *r).await.is_err() {
            return;
        }
        if outbox.send_all(&mut pending).await.is_ok() {
            retry.reset();
            continue;
        }
        // Wait, but keep collecting so the backlog stays current.
        let deadline = tokio::time::Instant::now() + retry.next_delay();
        while let Ok(Some(u)) = tokio::time::timeout_at(deadline, updates.recv()).await {
            pending.add(u);
        }
    }
}

#[cfg(test)]
mod tests;
