//! The thread that writes the Raft log (`outpost-log`): every change to the log's file, in the
//! order the log store handed it over, with what is queued together committed as one
//! transaction, so one fsync makes several appends durable.
//!
//! openraft's core runs the log store's calls inline: while an append awaited its own fsync
//! (50-150 ms on a loaded disk), the core answered nothing else, and a current read's
//! read-index round queued behind every append ahead of it (`bench/scale`: `ps` p99 in
//! seconds). An append now returns once its entries are queued and readable (the log store
//! keeps them in memory until they are written), and openraft is told through its callback
//! when they are durable, which is when it counts them towards a commit.
//!
//! After a failed write no later one is made: a hole in the log is worse than a stopped server,
//! and openraft stops on the error.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use openraft::storage::LogFlushed;
use redb::WriteTransaction;
use tokio::sync::oneshot;

use crate::db::{self, Db, DbError, LOG};
use crate::log_store::Recent;
use crate::raft::{Entry, TypeConfig};

/// The thread's name, as `/proc/PID/task/*/comm` shows it.
const NAME: &str = "outpost-log";
/// At most this many queued changes go into one transaction.
const GROUP: usize = 256;
/// A transaction that takes this long is logged (at debug), with its size.
const SLOW_MS: u128 = 50;

/// A change to the log's file other than an append, run inside the transaction.
pub(crate) type Change = Box<dyn FnOnce(&WriteTransaction) -> Result<(), DbError> + Send>;

enum Write {
    Entries(Vec<Entry>),
    Change(Change),
}

/// Who hears that a change is durable.
enum Done {
    Flushed(LogFlushed<TypeConfig>),
    Answer(oneshot::Sender<Result<(), DbError>>),
    Nobody,
}

/// Hands changes to the writer thread. Cheap to clone; the thread ends once every clone is
/// dropped and what they handed over is written.
#[derive(Clone)]
pub(crate) struct LogWriter {
    jobs: mpsc::Sender<(Write, Done)>,
}

impl LogWriter {
    pub(crate) fn start(db: Arc<Db>, recent: Arc<Mutex<Recent>>) -> Result<LogWriter, DbError> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(NAME.into())
            .spawn(move || run(&db, &recent, &queue))
            .map_err(DbError::Thread)?;
        Ok(LogWriter { jobs })
    }

    /// Queues `entries`; `flushed` is told once they are durable.
    pub(crate) fn append(
        &self,
        entries: Vec<Entry>,
        flushed: LogFlushed<TypeConfig>,
    ) -> Result<(), DbError> {
        self.send(Write::Entries(entries), Done::Flushed(flushed))
    }

    /// Queues `change` and waits until it, and everything queued before it, is durable.
    pub(crate) async fn change(&self, change: Change) -> Result<(), DbError> {
        let (done, written) = oneshot::channel();
        self.send(Write::Change(change), Done::Answer(done))?;
        written.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Queues `change` without waiting for it: for what may be lost in a crash.
    pub(crate) fn change_later(&self, change: Change) -> Result<(), DbError> {
        self.send(Write::Change(change), Done::Nobody)
    }

    fn send(&self, write: Write, done: Done) -> Result<(), DbError> {
        self.jobs.send((write, done)).map_err(|_| gone())
    }
}

fn gone() -> DbError {
    DbError::LogWrite("the thread that writes it has stopped".into())
}

fn run(db: &Db, recent: &Mutex<Recent>, queue: &mpsc::Receiver<(Write, Done)>) {
    let mut failed = false;
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (writes, dones): (Vec<Write>, Vec<Done>) = jobs.into_iter().unzip();
        let last = writes.iter().rev().find_map(|write| match write {
            Write::Entries(entries) => entries.last().map(|e| e.log_id),
            Write::Change(_) => None,
        });
        let result = match failed {
            true => Err(DbError::LogWrite(
                "no write is made after an earlier one failed".into(),
            )),
            false => write(db, writes),
        };
        failed |= result.is_err();
        if let (Ok(()), Some(last)) = (&result, last) {
            let mut recent = recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.written(last);
        }
        for done in dones {
            tell(done, &result);
        }
    }
}

/// Runs `writes` in one transaction and commits it (an fsync).
fn write(db: &Db, writes: Vec<Write>) -> Result<(), DbError> {
    let started = Instant::now();
    let (count, mut entries) = (writes.len(), 0);
    let txn = db.log.begin_write()?;
    for write in writes {
        match write {
            Write::Entries(batch) => {
                let mut table = txn.open_table(LOG)?;
                for entry in &batch {
                    table.insert(entry.log_id.index, db::encode(entry)?.as_slice())?;
                }
                entries += batch.len();
            }
            Write::Change(change) => change(&txn)?,
        }
    }
    txn.commit()?;
    let ms = started.elapsed().as_millis();
    if ms >= SLOW_MS {
        tracing::debug!(ms, count, entries, "wrote to the log");
    }
    Ok(())
}

fn tell(done: Done, result: &Result<(), DbError>) {
    match done {
        Done::Flushed(flushed) => {
            let result = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string()));
            flushed.log_io_completed(result);
        }
        Done::Answer(answer) => {
            let result = match result {
                Ok(()) => Ok(()),
                Err(e) => Err(DbError::LogWrite(e.to_string())),
            };
            let _ = answer.send(result);
        }
        Done::Nobody => {}
    }
}
