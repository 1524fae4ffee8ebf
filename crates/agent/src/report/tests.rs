//! The reporter against a real HTTP server on loopback: batches under the body limit, sequence
//! numbers, flushing; and the batching rules on their own.

use std::sync::{Arc, Mutex};

use api::{Level, TaskState, Timestamp};
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;

use super::*;

/// Generous: only a hung test waits this long, a loaded 2-core machine still passes.
const PATIENCE: Duration = Duration::from_secs(60);

/// 8 MiB: the server's default body limit.
const SERVER_LIMIT: usize = 8 << 20;

fn event(n: usize) -> NewEvent {
    NewEvent {
        time: Timestamp(n as u64),
        level: Level::Warning,
        reason: "not-ready".into(),
        service: Some("web".into()),
        task: Some(format!("web.{}.1", n % 7)),
        node: Some("edge".into()),
        // ~240 bytes of JSON each: 50,000 of them are ~12 MB, past the server's limit.
        message: format!("readiness probe failed: http GET /healthz answered 503 ({n:06})"),
    }
}

fn events(n: usize) -> Update {
    Update {
        events: (0..n).map(event).collect(),
        ..Update::default()
    }
}

const WIDE: Limits = Limits {
    backlog: 50_000,
    ..LIMITS
};

#[test]
fn a_backlog_of_50000_events_leaves_in_bounded_batches_in_order() {
    let mut pending = Pending::new(WIDE);
    pending.add(events(50_000));
    let mut seen = Vec::new();
    let mut batches = 0;
    while !pending.is_empty() {
        let batch = pending.take_batch();
        let size = serde_json::to_vec(&batch).unwrap().len();
        assert!(size <= BATCH_BYTES, "batch {batches} is {size} bytes");
        assert!(batch.events.len() <= BATCH_ITEMS);
        seen.extend(batch.events.into_iter().map(|e| e.time));
        batches += 1;
    }
    assert_eq!(seen.len(), 50_000);
    assert!(seen.is_sorted(), "events keep their order");
    assert!(batches >= 50, "{batches} batches");
}

#[test]
fn a_huge_message_is_clipped_so_it_still_fits_a_batch() {
    let mut pending = Pending::new(LIMITS);
    let mut big = event(1);
    big.message = "é".repeat(BATCH_BYTES);
    pending.add(Update {
        events: vec![big],
        ..Update::default()
    });
    let batch = pending.take_batch();
    assert!(batch.events[0].message.len() <= MAX_MESSAGE + 8);
    assert!(batch.events[0].message.ends_with("[…]"));
}

/// An update of task `id` to `state`.
fn status(id: &str, state: TaskState) -> Update {
    Update {
        status: Some(TaskStatus {
            seq: 0,
            id: id.into(),
            state,
            evicted: false,
            ready: state == TaskState::Running,
            restarts: 0,
            pid: Some(7),
            container_id: None,
            ports: BTreeMap::new(),
            started_at: Some(Timestamp(1)),
            exit_code: None,
            message: None,
            last_exit: None,
            next_start: None,
        }),
        ..Update::default()
    }
}

/// The tasks of a report with their states.
fn states(report: &StatusReport) -> Vec<(&str, TaskState)> {
    report
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.state))
        .collect()
}

#[test]
fn an_undelivered_report_goes_again_with_only_the_latest_status_of_each_task() {
    let mut pending = Pending::new(LIMITS);
    pending.add(status("a", TaskState::Starting));
    pending.add(status("a", TaskState::Running));
    pending.add(status("b", TaskState::Starting));
    let failed = pending.take_batch();
    assert_eq!(
        states(&failed),
        [("a", TaskState::Running), ("b", TaskState::Starting)],
        "one status per task, the latest"
    );
    // While the server is away, b moves on; what was not delivered goes back under it.
    pending.add(status("b", TaskState::Running));
    pending.restore(failed);
    let again = pending.take_batch();
    assert_eq!(
        states(&again),
        [("a", TaskState::Running), ("b", TaskState::Running)]
    );
    assert!(pending.is_empty());
    // Each status carries its own number, in the order the agent saw them: a's resent one
    // keeps the number it had, b's newer one is above everything before it.
    let seqs: Vec<u64> = again.tasks.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, [2, 4]);
}

/// What the test server saw: each request's body size and report.
#[derive(Default)]
struct Seen {
    reports: Vec<(usize, StatusReport)>,
}

type Supervision = Arc<Mutex<Seen>>;

async fn receive(State(seen): State<Supervision>, body: axum::body::Bytes) -> &'static str {
    let report: StatusReport = serde_json::from_slice(&body).unwrap();
    seen.lock().unwrap().reports.push((body.len(), report));
    "{}"
}

/// A server on loopback that takes reports up to the real server's body limit (and answers 413
/// past it, as the real one does).
async fn server() -> (String, Supervision) {
    let seen = Supervision::default();
    let app = axum::Router::new()
        .route("/v1/nodes/{node}/status", post(receive))
        .layer(DefaultBodyLimit::max(SERVER_LIMIT))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn outbox(base: &str, seq: u64) -> Outbox {
    Outbox {
        client: Client::new(base, "token"),
        node: "edge".into(),
        seq,
    }
}

/// Polls `done` until it holds, failing after [`PATIENCE`].
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_backlog_reaches_the_server_in_requests_under_its_limit() {
    let (base, seen) = server().await;
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let (_flush, flushes) = mpsc::unbounded_channel();
    let (registered_tx, registered) = watch::channel(false);
    tokio::spawn(run(
        outbox(&base, 7 << 32),
        updates,
        flushes,
        registered,
        WIDE,
    ));
    // Cut off: everything piles up until the node is registered.
    for chunk in 0..50 {
        let mut update = events(1_000);
        for e in &mut update.events {
            e.time = Timestamp(e.time.0 + chunk * 1_000);
        }
        updates_tx.send(update).unwrap();
    }
    registered_tx.send(true).unwrap();
    let delivered = || -> usize {
        let seen = seen.lock().unwrap();
        seen.reports.iter().map(|(_, r)| r.events.len()).sum()
    };
    until("all 50,000 events delivered", || delivered() == 50_000).await;
    let seen = seen.lock().unwrap();
    assert!(seen.reports.len() >= 50, "{} requests", seen.reports.len());
    assert!(seen.reports.iter().all(|(len, _)| *len <= BATCH_BYTES));
    let seqs: Vec<u64> = seen.reports.iter().map(|(_, r)| r.seq).collect();
    assert!(seqs[0] > 7 << 32 && seqs.is_sorted(), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_answers_once_earlier_updates_are_delivered() {
    let (base, seen) = server().await;
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let (flush, flushes) = mpsc::unbounded_channel();
    let (_registered_tx, registered) = watch::channel(true);
    tokio::spawn(run(outbox(&base, 0), updates, flushes, registered, LIMITS));
    let reporter = Reporter { flush };
    updates_tx.send(events(3)).unwrap();
    assert!(reporter.flushed(PATIENCE).await);
    let delivered: usize = seen
        .lock()
        .unwrap()
        .reports
        .iter()
        .map(|(_, r)| r.events.len())
        .sum();
    assert_eq!(delivered, 3, "everything sent before the flush is there");
    assert!(reporter.flushed(PATIENCE).await, "nothing pending: at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_gives_up_at_its_deadline_when_the_server_is_away() {
    // A port nothing listens on: bind one, then let it go.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let (flush, flushes) = mpsc::unbounded_channel();
    let (_registered_tx, registered) = watch::channel(true);
    tokio::spawn(run(
        outbox(&format!("http://{addr}"), 0),
        updates,
        flushes,
        registered,
        LIMITS,
    ));
    let reporter = Reporter { flush };
    updates_tx.send(events(1)).unwrap();
    let started = tokio::time::Instant::now();
    assert!(!reporter.flushed(Duration::from_millis(500)).await);
    assert!(started.elapsed() < PATIENCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_carries_only_what_changed_since_the_last_delivered_one() {
    let (base, seen) = server().await;
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let (flush, flushes) = mpsc::unbounded_channel();
    let (_registered_tx, registered) = watch::channel(true);
    tokio::spawn(run(outbox(&base, 0), updates, flushes, registered, LIMITS));
    let reporter = Reporter { flush };
    updates_tx.send(status("a", TaskState::Starting)).unwrap();
    updates_tx.send(status("a", TaskState::Running)).unwrap();
    updates_tx.send(events(2)).unwrap();
    assert!(reporter.flushed(PATIENCE).await);
    updates_tx.send(status("b", TaskState::Starting)).unwrap();
    assert!(reporter.flushed(PATIENCE).await);
    let seen = seen.lock().unwrap();
    let (last, earlier) = seen.reports.split_last().unwrap();
    assert_eq!(states(&last.1), [("b", TaskState::Starting)]);
    assert!(
        last.1.events.is_empty(),
        "delivered events are not sent again"
    );
    let a: Vec<(&str, TaskState)> = earlier.iter().flat_map(|(_, r)| states(r)).collect();
    assert_eq!(a.last(), Some(&("a", TaskState::Running)));
    assert!(a.iter().all(|(id, _)| *id == "a"), "{a:?}");
    let delivered: usize = earlier.iter().map(|(_, r)| r.events.len()).sum();
    assert_eq!(delivered, 2);
}
