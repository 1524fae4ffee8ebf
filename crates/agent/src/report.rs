//! The reporter: gathers supervisors' updates and sends them to the server in batches. While the
//! server is unreachable it keeps the latest status of each task and a bounded backlog of events,
//! and delivers them when the server answers again: nothing the node saw while cut off is lost
//! but the oldest events past the bound.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use api::{NewEvent, StatusReport, TaskStatus};
use client::Client;
use tokio::sync::{mpsc, watch};

use crate::supervisor::Update;

/// Updates arriving this close together go in one request (one Raft entry).
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Events kept while the server is unreachable; beyond this the oldest are dropped.
const EVENT_BACKLOG: usize = 5_000;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Pending {
    tasks: BTreeMap<String, TaskStatus>,
    events: VecDeque<NewEvent>,
    memory_pressure: Option<bool>,
}

impl Pending {
    fn add(&mut self, update: Update) {
        if let Some(status) = update.status {
            self.tasks.insert(status.id.clone(), status);
        }
        if update.memory_pressure.is_some() {
            self.memory_pressure = update.memory_pressure;
        }
        self.events.extend(update.events);
        while self.events.len() > EVENT_BACKLOG {
            self.events.pop_front();
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.events.is_empty() && self.memory_pressure.is_none()
    }

    fn take(&mut self) -> StatusReport {
        let tasks = std::mem::take(&mut self.tasks).into_values().collect();
        let events = std::mem::take(&mut self.events).into_iter().collect();
        StatusReport {
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

pub async fn run(
    client: Client,
    node: String,
    mut updates: mpsc::UnboundedReceiver<Update>,
    mut registered: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    let mut retry = RETRY_MIN;
    loop {
        if pending.is_empty() {
            match updates.recv().await {
                Some(u) => pending.add(u),
                None => return,
            }
        }
        tokio::time::sleep(BATCH_WINDOW).await;
        while let Ok(u) = updates.try_recv() {
            pending.add(u);
        }
        if registered.wait_for(|r| *r).await.is_err() {
            return;
        }
        let report = pending.take();
        match client.report(&node, &report).await {
            Ok(()) => retry = RETRY_MIN,
            Err(e) => {
                tracing::debug!(
                    "cannot report to the server: {e}; keeping {} task states",
                    report.tasks.len()
                );
                pending.restore(report);
                // Wait, but keep collecting so the backlog stays current.
                let deadline = tokio::time::Instant::now() + retry;
                while let Ok(Some(u)) = tokio::time::timeout_at(deadline, updates.recv()).await {
                    pending.add(u);
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
