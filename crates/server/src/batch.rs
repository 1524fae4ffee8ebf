//! Coalesced status reports and registrations. Every entry costs a log append and its fsyncs,
//! and openraft appends each client write it is handed on its own; thousands of agents
//! reporting (or registering, when a site's servers come back) at once would spend the disk on
//! bookkeeping and wait in line. So the agents' calls that arrive within one tick of each other
//! are committed together, as one `Command::FromAgents` applied in arrival order, and each
//! request is answered once that entry commits (or with its error).
//!
//! - A batch opens with its first report and closes one tick after that report arrived, or
//!   as soon as it is full (items or bytes), so an entry stays small and no report waits much
//!   more than a tick plus one commit.
//! - One batch commits at a time, in arrival order; a report that does not fit opens the next
//!   batch. Reports of one node therefore apply in the order they arrived, within a batch and
//!   across batches.
//! - A call whose request gave up (its client timed out) before its batch formed is skipped:
//!   the agent sends it again.
//! - The queue in front of the batcher is bounded: a burst of reports waits in its requests
//!   (themselves capped by the listener's connection limit), not in a growing buffer.
//! - What waits is bounded too, in statuses and events ([`BatchConfig::max_queued_items`]): a
//!   call that would go over is answered at once that the server is busy (503), and the agent
//!   sends it again after its retry pause. Without it, thousands of agents starting at once
//!   queue more than commits within their request timeout: every answer comes too late, every
//!   agent sends its report again, and the server applies each report many times while no agent
//!   hears of one (measured with `bench/scale`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use api::{RegisterRequest, StatusReport};
use store::FromAgent;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// 20 ms: a burst of agents reporting the same change (a node came back, a service rolled)
/// lands in a handful of entries instead of one each, while a single report still commits well
/// within a heartbeat.
pub const DEFAULT_TICK: Duration = Duration::from_millis(20);

/// 5,000 statuses and events: five agents' largest reports (`api::REPORT_ITEMS`), so a burst of
/// small reports coalesces well while one entry stays quick to apply under the state lock.
pub const DEFAULT_BATCH_ITEMS: usize = 5_000;

/// 1 MiB of JSON: as large as one agent's largest report, an eighth of the default body limit,
/// so an entry stays small on disk and on its way to other servers.
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;

/// 20,000 statuses and events waiting at most: four full batches, about a second of commits
/// on a small server (`bench/scale` committed 13,000-18,000 a second on two cores), far within
/// the agents' 10 s request timeout.
pub const DEFAULT_MAX_QUEUED_ITEMS: usize = 20_000;

/// Reports queued in front of the batcher; past this, requests wait to be queued.
const QUEUE: usize = 4_096;

/// What an answer says when the batcher is gone: the server is shutting down.
const STOPPING: &str = "the server is stopping";

/// How reports are coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// How long a batch stays open after its first report arrived.
    pub tick: Duration,
    /// Most statuses and events in one batch; a single larger report goes alone.
    pub max_items: usize,
    /// Most bytes of JSON in one batch; a single larger report goes alone.
    pub max_bytes: usize,
    /// Most statuses and events waiting to be committed; a call that would go over is refused
    /// as busy, unless nothing waits.
    pub max_queued_items: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            tick: DEFAULT_TICK,
            max_items: DEFAULT_BATCH_ITEMS,
            max_bytes: DEFAULT_BATCH_BYTES,
            max_queued_items: DEFAULT_MAX_QUEUED_ITEMS,
        }
    }
}

/// The agents' calls of one entry, in arrival order.
pub type Items = Vec<FromAgent>;

/// What a report costs a batch.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    items: usize,
    bytes: usize,
}

impl Size {
    fn of(item: &FromAgent) -> Size {
        let mut bytes = Counter(0);
        // Writing to a counter cannot fail; a call that would not serialize counts as empty.
        let _ = serde_json::to_writer(&mut bytes, item);
        let items = match item {
            FromAgent::Report { report, .. } => report.tasks.len() + report.events.len(),
            FromAgent::Register(_) => 1,
        };
        Size {
            items,
            bytes: bytes.0,
        }
    }
}

/// Counts the bytes written to it: a report's JSON size without building the JSON.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A call's statuses and events, counted as waiting for as long as this lives: from its
/// admission until it is answered, or skipped.
struct Admitted {
    queued: Arc<AtomicUsize>,
    items: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.items, Relaxed);
    }
}

/// A call waiting for its entry to commit.
struct Waiting {
    item: FromAgent,
    size: Size,
    arrived: Instant,
    done: oneshot::Sender<Result<(), String>>,
    admitted: Admitted,
}

impl Waiting {
    /// Whether its request is gone (its client gave up waiting): the agent sends the report
    /// again, numbered anew, so committing this copy too would only queue work behind it. Under
    /// a burst, copies of timed-out reports otherwise fill the queue and each waits behind the
    /// others, a storm that feeds itself.
    fn abandoned(&self) -> bool {
        self.done.is_closed()
    }

    /// The call, counted in `queued`, with how many statuses and events waited before it.
    fn new(
        item: FromAgent,
        queued: &Arc<AtomicUsize>,
    ) -> (Waiting, oneshot::Receiver<Result<(), String>>, usize) {
        let (done, answer) = oneshot::channel();
        let size = Size::of(&item);
        let before = queued.fetch_add(size.items, Relaxed);
        let admitted = Admitted {
            queued: Arc::clone(queued),
            items: size.items,
        };
        let waiting = Waiting {
            size,
            item,
            arrived: Instant::now(),
            done,
            admitted,
        };
        (waiting, answer, before)
    }
}

/// Where handlers hand in reports. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Waiting>,
    /// Statuses and events admitted and not yet answered.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl Batcher {
    /// Starts the batcher: `commit` proposes one batch as one entry. It runs until `stop` is
    /// set, or every `Batcher` is dropped.
    pub fn spawn<C, F>(config: BatchConfig, commit: C, stop: watch::Receiver<bool>) -> Batcher
    where
        C: FnMut(Items) -> F + Send + 'static,
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (queue, queued) = mpsc::channel(QUEUE);
        tokio::spawn(run(queued, config, commit, stop));
        Batcher {
            queue,
            queued: Arc::default(),
            max_queued: config.max_queued_items,
        }
    }

    /// Submits `node`'s report and waits until the entry holding it commits.
    pub async fn submit(&self, node: String, report: StatusReport) -> Result<(), String> {
        self.call(FromAgent::Report { node, report }).await
    }

    /// Submits a registration and waits until the entry holding it commits.
    pub async fn register(&self, node: RegisterRequest) -> Result<(), String> {
        self.call(FromAgent::Register(node)).await
    }

    /// Whether fewer statuses and events wait than may; when as many wait, a report is refused
    /// before its body is even read, since it could not be admitted (the error says why).
    pub fn room(&self) -> Result<(), String> {
        let queued = self.queued.load(Relaxed);
        match queued >= self.max_queued {
            true => Err(self.busy(queued, "report")),
            false => Ok(()),
        }
    }

    fn busy(&self, queued: usize, what: &str) -> String {
        format!(
            "the server is busy: {queued} statuses and events from agents wait to be \
             committed, and this {what} would take that past {} \
             (--max-queued-report-items); the agent sends it again shortly",
            self.max_queued
        )
    }

    async fn call(&self, item: FromAgent) -> Result<(), String> {
        let (waiting, answer, before) = Waiting::new(item, &self.queued);
        if before > 0 && before + waiting.size.items > self.max_queued {
            let what = match waiting.item {
                FromAgent::Report { .. } => "report",
                FromAgent::Register(_) => "registration",
            };
            return Err(self.busy(before, what));
        }
        self.queue
            .send(waiting)
            .await
            .map_err(|_| STOPPING.to_string())?;
        answer.await.unwrap_or_else(|_| Err(STOPPING.to_string()))
    }
}

/// The calls of one entry and whom to answer.
struct Batch {
    items: Items,
    answers: Vec<oneshot::Sender<Result<(), String>>>,
    /// Counted as waiting until the batch is answered.
    admitted: Vec<Admitted>,
    size: Size,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            items: Vec::new(),
            answers: Vec::new(),
            admitted: Vec::new(),
            size: Size::default(),
        }
    }

    fn full(&self, config: BatchConfig) -> bool {
        self.size.items >= config.max_items || self.size.bytes >= config.max_bytes
    }

    /// Whether `w` still fits; an empty batch takes anything, so every report goes somewhere.
    fn fits(&self, w: &Waiting, config: BatchConfig) -> bool {
        self.items.is_empty()
            || (self.size.items + w.size.items <= config.max_items
                && self.size.bytes + w.size.bytes <= config.max_bytes)
    }

    fn push(&mut self, w: Waiting) {
        self.size.items += w.size.items;
        self.size.bytes += w.size.bytes;
        self.items.push(w.item);
        self.answers.push(w.done);
        self.admitted.push(w.admitted);
    }

    /// Commits the batch as one entry and answers each of its requests with the outcome.
    async fn commit<F>(self, commit: impl FnOnce(Items) -> F)
    where
        F: Future<Output = Result<(), String>>,
    {
        let result = commit(self.items).await;
        for done in self.answers {
            // A request that gave up (its client left) needs no answer.
            let _ = done.send(result.clone());
        }
    }
}

async fn run<C, F>(
    mut queued: mpsc::Receiver<Waiting>,
    config: BatchConfig,
    mut commit: C,
    mut stop: watch::Receiver<bool>,
) where
    C: FnMut(Items) -> F,
    F: Future<Output = Result<(), String>>,
{
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(w) => w,
            None => tokio::select! {
                // A stopping server commits nothing more, even what is already queued.
                biased;
                () = stopped(&mut stop) => return,
                w = queued.recv() => match w {
                    Some(w) => w,
                    None => return,
                },
            },
        };
        if first.abandoned() {
            continue;
        }
        let (batch, rest) = collect(first, &mut queued, config).await;
        next = rest;
        batch.commit(&mut commit).await;
    }
}

/// Resolves once `stop` is set. A handle dropped without stopping leaves the server running,
/// so a sender that is gone never resolves it: the batcher then ends with its last `Batcher`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Gathers reports until one tick after `first` arrived or until the batch is full. The report
/// that did not fit comes back, to open the next batch.
async fn collect(
    first: Waiting,
    queued: &mut mpsc::Receiver<Waiting>,
    config: BatchConfig,
) -> (Batch, Option<Waiting>) {
    let deadline = first.arrived + config.tick;
    let mut batch = Batch::new();
    batch.push(first);
    while !batch.full(config) {
        // A deadline already past still takes what is queued: `timeout_at` polls first.
        let Ok(Some(w)) = tokio::time::timeout_at(deadline, queued.recv()).await else {
            break;
        };
        if w.abandoned() {
            continue;
        }
        if !batch.fits(&w, config) {
            return (batch, Some(w));
        }
        batch.push(w);
    }
    (batch, None)
}

#[cfg(test)]
mod tests;
