//! Threads with an event loop of their own (a current-thread tokio runtime), for work that must
//! not wait behind the requests of thousands of agents on the API's runtime:
//!
//! - [`RAFT`]: openraft's core, its log and state machine workers, replication to the other
//!   servers, and the batcher that turns agents' reports into entries. A commit hops between
//!   several of these tasks (batcher, core, log append, apply, answer). On the runtime that
//!   serves the API, each hop waits behind every request ready to run: with 5,000 agents that
//!   is hundreds of milliseconds a hop, so an entry took most of a second to commit while the
//!   state machine itself was idle (`bench/scale`). Here a hop waits only for the few tasks of
//!   Raft; the API's requests reach Raft through channels, from any runtime.
//! - [`FRONT`]: the API's listener, TLS handshakes, and the connections of operators and other
//!   servers; agents' connections are handed to the API's runtime after their handshake
//!   (`httpd::Lane`). A `ps` during a storm of agents' reports waited up to 2 s there, queued
//!   behind them, while the state it reads was free.

use std::future::Future;

use tokio::runtime::{EnterGuard, Handle};
use tokio::sync::oneshot;

/// The threads' names, as `top -H` and `/proc/PID/task/*/comm` show them.
pub const RAFT: &str = "outpost-raft";
pub const FRONT: &str = "outpost-front";

/// A thread with its event loop; dropping it ends the thread and drops every task still on it.
#[derive(Debug)]
pub struct LoopThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl LoopThread {
    pub fn start(name: &str) -> std::io::Result<LoopThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Either a stop or the sender dropped: both end the thread.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(LoopThread {
            handle,
            stop: Some(stop),
        })
    }

    /// Runs `work` on this thread, so that whatever it spawns stays here, and waits for it
    /// from any runtime. `None` if the thread ended first.
    pub async fn run<F>(&self, work: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(work).await.ok()
    }

    /// While the guard lives, `tokio::spawn` spawns on this thread.
    pub fn enter(&self) -> EnterGuard<'_> {
        self.handle.enter()
    }

    /// The thread's runtime, to spawn on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for LoopThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_thread_and_what_it_spawns_stays_there() {
        let core = LoopThread::start(RAFT).unwrap();
        let names = core
            .run(async {
                let spawned =
                    tokio::spawn(async { std::thread::current().name().map(str::to_string) });
                (
                    std::thread::current().name().map(str::to_string),
                    spawned.await.unwrap(),
                )
            })
            .await
            .unwrap();
        assert_eq!(names, (Some(RAFT.into()), Some(RAFT.into())));
        let entered = {
            let _in = core.enter();
            tokio::spawn(async { std::thread::current().name().map(str::to_string) })
        };
        assert_eq!(entered.await.unwrap().as_deref(), Some(RAFT));
    }

    #[tokio::test]
    async fn dropping_it_drops_what_still_runs_there() {
        let core = LoopThread::start(RAFT).unwrap();
        let (held, dropped) = oneshot::channel::<()>();
        {
            let _in = core.enter();
            tokio::spawn(async move {
                let _held = held;
                std::future::pending::<()>().await;
            });
        }
        drop(core);
        // The task's end drops its sender: the receiver hears the channel closed.
        assert!(dropped.await.is_err());
    }
}
