//! The thread that writes checkpoints, one after another in the order they are handed over, so
//! that applying entries never waits for the disk.
//!
//! A checkpoint of a busy 100,000-task state is tens of megabytes of rows and takes most of a
//! second to write. While the state machine awaited it, no entry was applied, and every read
//! that waits for the applied index (any `ps` on the leader) waited with it (`bench/scale`: `ps`
//! p50 338 ms, p99 3.6 s). The tables still stand at exactly the index their meta row says:
//! each checkpoint is one transaction, and checkpoints commit in order.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::db::{Db, DbError};
use crate::tables::Changes;

/// The thread's name, as `/proc/PID/task/*/comm` shows it.
const NAME: &str = "outpost-store";

type Job = (Changes, oneshot::Sender<Result<(), DbError>>);

/// The checkpoint writer. Dropping it waits for what was handed over to be written.
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(db: Arc<Db>) -> Result<Writer, DbError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(NAME.into())
            .spawn(move || {
                // After a failed write none may follow: a later checkpoint would move the meta
                // row past rows that were never written. The state machine stops on the error,
                // and the next start applies again from the log what the tables lack.
                let mut failed = false;
                for (changes, done) in queue {
                    let result = match failed {
                        true => Err(DbError::WriterGone),
                        false => write(&db, changes),
                    };
                    failed |= result.is_err();
                    let _ = done.send(result);
                }
            })
            .map_err(DbError::Thread)?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Hands `changes` over. The answer comes once they, and everything handed over before
    /// them, are written.
    pub(crate) fn write(&self, changes: Changes) -> oneshot::Receiver<Result<(), DbError>> {
        let (done, written) = oneshot::channel();
        let sent = (self.jobs.as_ref()).map(|jobs| jobs.send((changes, done)));
        if let Some(Err(mpsc::SendError((_, done)))) = sent {
            let _ = done.send(Err(DbError::WriterGone));
        }
        written
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The thread ends once the queue is empty and closed.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write(db: &Db, changes: Changes) -> Result<(), DbError> {
    let (index, bytes) = (changes.index, changes.bytes());
    let started = Instant::now();
    let txn = db.file.begin_write()?;
    changes.write(&txn)?;
    txn.commit()?;
    let ms = started.elapsed().as_millis();
    tracing::debug!(index, bytes, ms, "wrote a checkpoint");
    Ok(())
}

/// Waits for `written`, which `Writer::write` gave.
pub(crate) async fn written(
    written: oneshot::Receiver<Result<(), DbError>>,
) -> Result<(), DbError> {
    written.await.unwrap_or(Err(DbError::WriterGone))
}
