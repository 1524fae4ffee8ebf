//! The batcher's tick and bounds on paused time: when a batch closes, what goes in it, in what
//! order, and who hears what.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use api::{Level, NewEvent, Timestamp};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const CONFIG: BatchConfig = BatchConfig {
    tick: Duration::from_millis(20),
    max_items: 1_000,
    max_bytes: 1 << 20,
    max_queued_items: 100_000,
};

/// A report numbered `seq` with `items` events.
fn report(seq: u64, items: usize) -> StatusReport {
    let event = NewEvent {
        time: Timestamp(seq),
        level: Level::Info,
        reason: "seen".into(),
        service: None,
        task: None,
        node: None,
        message: String::new(),
    };
    StatusReport {
        seq,
        events: vec![event; items],
        ..StatusReport::default()
    }
}

/// One committed entry: when (after the test began) and which reports, as `node/seq`.
type Entry = (Duration, Vec<String>);

/// What was committed.
#[derive(Clone)]
struct Entries {
    began: Instant,
    committed: Arc<Mutex<Vec<Entry>>>,
    /// Outcomes of the next commits; once empty, every commit succeeds.
    outcomes: Arc<Mutex<VecDeque<Result<(), String>>>>,
}

impl Entries {
    fn new() -> Entries {
        Entries {
            began: Instant::now(),
            committed: Arc::default(),
            outcomes: Arc::default(),
        }
    }

    /// The commit a server does with Raft, recorded instead of proposed.
    fn commit(&self) -> impl FnMut(Items) -> std::future::Ready<Result<(), String>> + use<> {
        let entries = self.clone();
        move |items| {
            let names = (items.iter())
                .map(|item| match item {
                    FromAgent::Report { node, report } => format!("{node}/{}", report.seq),
                    FromAgent::Register(node) => format!("{}/register", node.name),
                })
                .collect();
            let at = entries.began.elapsed();
            entries.committed.lock().unwrap().push((at, names));
            let outcome = entries.outcomes.lock().unwrap().pop_front();
            std::future::ready(outcome.unwrap_or(Ok(())))
        }
    }

    fn batches(&self) -> Vec<Entry> {
        self.committed.lock().unwrap().clone()
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A batcher fed in order by the test itself, so what arrives when is exact.
fn fed(config: BatchConfig, entries: &Entries) -> (mpsc::Sender<Waiting>, watch::Sender<bool>) {
    let (queue, queued) = mpsc::channel(QUEUE);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(run(queued, config, entries.commit(), stopped));
    (queue, stop)
}

async fn feed(
    queue: &mpsc::Sender<Waiting>,
    node: &str,
    report: StatusReport,
) -> oneshot::Receiver<Result<(), String>> {
    let (waiting, answer, _) = Waiting::new(
        FromAgent::Report {
            node: node.into(),
            report,
        },
        &Arc::default(),
    );
    queue.send(waiting).await.unwrap();
    answer
}

#[tokio::test(start_paused = true)]
async fn reports_within_one_tick_share_one_entry_committed_when_the_tick_ends() {
    let entries = Entries::new();
    let (_stop, stopped) = watch::channel(false);
    let batcher = Batcher::spawn(CONFIG, entries.commit(), stopped);
    let mut answers = Vec::new();
    for (at, node) in [(0, "a"), (5, "b"), (19, "c"), (25, "d")] {
        tokio::time::sleep_until(entries.began + ms(at)).await;
        let batcher = batcher.clone();
        answers.push(tokio::spawn(async move {
            let answer = batcher.submit(node.into(), report(1, 1)).await;
            (answer, Instant::now())
        }));
        tokio::task::yield_now().await;
    }
    let mut answered = Vec::new();
    for a in answers {
        let (answer, at) = a.await.unwrap();
        assert_eq!(answer, Ok(()));
        answered.push(at - entries.began);
    }
    assert_eq!(
        entries.batches(),
        vec![
            (ms(20), names(&["a/1", "b/1", "c/1"])),
            (ms(45), names(&["d/1"]))
        ],
        "a tick runs from a batch's first report"
    );
    assert_eq!(
        answered,
        vec![ms(20), ms(20), ms(20), ms(45)],
        "each request is answered when its entry commits"
    );
}

#[tokio::test(start_paused = true)]
async fn registrations_share_the_entry_of_the_reports_around_them_in_arrival_order() {
    let entries = Entries::new();
    let (_stop, stopped) = watch::channel(false);
    let batcher = Batcher::spawn(CONFIG, entries.commit(), stopped);
    let register = |name: &str| RegisterRequest {
        name: name.into(),
        address: format!("https://{name}:7001"),
        capacity: Default::default(),
        allocatable: Default::default(),
        drivers: vec!["process".into()],
        notes: Vec::new(),
        version: "test".into(),
    };
    let mut answers = Vec::new();
    for (at, node, registers) in [
        (0, "a", false),
        (2, "b", true),
        (4, "b", false),
        (6, "c", true),
    ] {
        tokio::time::sleep_until(entries.began + ms(at)).await;
        let batcher = batcher.clone();
        let request = register(node);
        answers.push(tokio::spawn(async move {
            match registers {
                true => batcher.register(request).await,
                false => batcher.submit(request.name, report(1, 1)).await,
            }
        }));
        tokio::task::yield_now().await;
    }
    for a in answers {
        assert_eq!(a.await.unwrap(), Ok(()));
    }
    assert_eq!(
        entries.batches(),
        vec![(ms(20), names(&["a/1", "b/register", "b/1", "c/register"]))],
        "one entry, in the order the calls came"
    );
}

#[tokio::test(start_paused = true)]
async fn a_report_whose_request_gave_up_is_not_committed() {
    let entries = Entries::new();
    let (queue, _stop) = fed(CONFIG, &entries);
    // Queued while a batch is open, then abandoned by its client before the batch closes.
    let kept = feed(&queue, "a", report(1, 1)).await;
    drop(feed(&queue, "b", report(1, 1)).await);
    let resent = feed(&queue, "b", report(2, 1)).await;
    assert_eq!(kept.await.unwrap(), Ok(()));
    assert_eq!(resent.await.unwrap(), Ok(()));
    // First in the queue and already abandoned: skipped too.
    drop(feed(&queue, "c", report(1, 1)).await);
    let after = feed(&queue, "c", report(2, 1)).await;
    assert_eq!(after.await.unwrap(), Ok(()));
    assert_eq!(
        entries.batches(),
        vec![(ms(20), names(&["a/1", "b/2"])), (ms(40), names(&["c/2"]))],
        "only the copies someone still waits for"
    );
}

#[tokio::test(start_paused = true)]
async fn a_report_that_does_not_fit_closes_the_batch_and_opens_the_next_keeping_node_order() {
    let entries = Entries::new();
    let config = BatchConfig {
        max_items: 4,
        ..CONFIG
    };
    let (queue, _stop) = fed(config, &entries);
    let mut answers = Vec::new();
    for (node, seq, items) in [
        ("a", 1, 2),
        ("b", 1, 1),
        ("a", 2, 2),
        ("b", 2, 1),
        ("a", 3, 3),
        ("b", 3, 0),
    ] {
        answers.push(feed(&queue, node, report(seq, items)).await);
    }
    for a in answers {
        assert_eq!(a.await.unwrap(), Ok(()));
    }
    assert_eq!(
        entries.batches(),
        vec![
            (ms(0), names(&["a/1", "b/1"])),
            (ms(0), names(&["a/2", "b/2"])),
            (ms(20), names(&["a/3", "b/3"])),
        ],
        "a closed batch commits at once; the last one waits out its tick"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_commits_at_once_and_a_report_over_the_bounds_goes_alone() {
    let entries = Entries::new();
    let one = Size::of(&FromAgent::Report {
        node: "a".into(),
        report: report(1, 1),
    })
    .bytes;
    let config = BatchConfig {
        max_bytes: 2 * one,
        ..CONFIG
    };
    let (queue, _stop) = fed(config, &entries);
    let mut answers = Vec::new();
    for (node, seq, items) in [("a", 1, 1), ("b", 1, 1), ("c", 1, 50), ("d", 1, 1)] {
        answers.push(feed(&queue, node, report(seq, items)).await);
    }
    for a in answers {
        assert_eq!(a.await.unwrap(), Ok(()));
    }
    assert_eq!(
        entries.batches(),
        vec![
            (ms(0), names(&["a/1", "b/1"])),
            (ms(0), names(&["c/1"])),
            (ms(20), names(&["d/1"])),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_is_the_answer_of_every_report_in_its_batch_and_only_theirs() {
    let entries = Entries::new();
    entries
        .outcomes
        .lock()
        .unwrap()
        .push_back(Err("no leader".into()));
    let (queue, _stop) = fed(CONFIG, &entries);
    let first = [
        feed(&queue, "a", report(1, 1)).await,
        feed(&queue, "b", report(1, 1)).await,
    ];
    for a in first {
        assert_eq!(a.await.unwrap(), Err("no leader".to_string()));
    }
    let retried = feed(&queue, "a", report(2, 1)).await;
    assert_eq!(retried.await.unwrap(), Ok(()));
    assert_eq!(entries.batches().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_batcher_answers_that_the_server_is_stopping() {
    let entries = Entries::new();
    let (stop, stopped) = watch::channel(false);
    let batcher = Batcher::spawn(CONFIG, entries.commit(), stopped);
    stop.send(true).unwrap();
    let answer = batcher.submit("a".into(), report(1, 1)).await;
    assert_eq!(answer, Err(STOPPING.to_string()));
    assert!(entries.batches().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_batcher_whose_stop_handle_is_dropped_keeps_committing() {
    let entries = Entries::new();
    let (stop, stopped) = watch::channel(false);
    let batcher = Batcher::spawn(CONFIG, entries.commit(), stopped);
    drop(stop);
    assert_eq!(batcher.submit("a".into(), report(1, 1)).await, Ok(()));
    assert_eq!(entries.batches(), vec![(ms(20), names(&["a/1"]))]);
}

#[tokio::test(start_paused = true)]
async fn a_call_past_the_queued_bound_is_refused_as_busy_at_once_and_admitted_once_answers_go() {
    // Every commit waits until the test lets it go, so what was admitted stays waiting.
    let (release, released) = watch::channel(false);
    let commit = move |_: Items| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            Ok(())
        }
    };
    let config = BatchConfig {
        max_queued_items: 10,
        ..CONFIG
    };
    let (_stop, stopped) = watch::channel(false);
    let batcher = Batcher::spawn(config, commit, stopped);
    let submit = |node: &str, items: usize| {
        let batcher = batcher.clone();
        let node = node.to_string();
        tokio::spawn(async move { batcher.submit(node, report(1, items)).await })
    };
    let waiting = |n: usize| {
        let queued = Arc::clone(&batcher.queued);
        async move {
            for _ in 0..100 {
                if queued.load(Relaxed) == n {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("{} waiting, not {n}", queued.load(Relaxed));
        }
    };

    assert_eq!(batcher.room(), Ok(()), "nothing waits");
    let first = submit("a", 6);
    waiting(6).await;
    assert_eq!(
        batcher.room(),
        Ok(()),
        "6 of 10 wait: a small report still fits"
    );
    // Answered at once, not after the commit in the way.
    let refused = tokio::time::timeout(ms(1), batcher.submit("b".into(), report(1, 6))).await;
    let why = refused
        .expect("a busy answer comes at once")
        .expect_err("6 more than the 10 allowed");
    assert!(why.contains("busy"), "{why}");
    assert!(why.contains("--max-queued-report-items"), "{why}");
    waiting(6).await;
    // Up to the bound is admitted.
    let second = submit("c", 4);
    waiting(10).await;
    // Full: a report is refused before its body is read.
    let why = batcher.room().expect_err("10 of 10 wait");
    assert!(why.contains("busy") && why.contains("10 statuses"), "{why}");

    release.send(true).unwrap();
    assert_eq!(first.await.unwrap(), Ok(()));
    assert_eq!(second.await.unwrap(), Ok(()));
    waiting(0).await;
    assert_eq!(batcher.room(), Ok(()), "answered, so no longer waiting");
    // With nothing waiting, even a report larger than the bound goes.
    assert_eq!(batcher.submit("d".into(), report(2, 12)).await, Ok(()));
    waiting(0).await;
}
