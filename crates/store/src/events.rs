//! How long a server keeps the event history: [`Retention`], part of the [`StoreOptions`] that
//! [`open`](crate::open) takes.
//!
//! Events are a log of their own (the `events` table, keyed by `seq`), written once when they
//! are applied and deleted when they fall out of retention, in the same transaction as the batch
//! that pushed them out. The state keeps the same events in memory for `GET /v1/events`.

use std::collections::VecDeque;
use std::time::Duration;

use api::{Event, Timestamp};

/// What [`open`](crate::open) needs to know beyond the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    pub retention: Retention,
    pub checkpoint: Checkpoint,
}

/// How often the applied state is written to its tables.
///
/// Committed entries are durable in the Raft log before they are applied, so the tables are a
/// checkpoint of the applied state, not its only copy: after a crash, the entries applied since
/// the last checkpoint are applied again from the log. Writing the rows a burst of status
/// changes touched once per checkpoint, instead of once per applied batch, is what keeps the
/// bytes written per change small: a batch of a few thousand changes touches most leaf pages of
/// a large `tasks` table, and redb rewrites each touched page whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Longest time applied changes wait to be written (checked as entries are applied).
    pub every: Duration,
    /// Most bytes of encoded rows waiting; reaching it writes them at once. It bounds the
    /// memory the waiting rows take.
    pub max_bytes: usize,
}

/// 5 s: at most a few hundred entries to apply again after a crash, which takes well under a
/// second, while a steady stream of status changes over 100,000 tasks is written a few times a
/// minute instead of fifty times a second.
pub const DEFAULT_CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// 16 MiB: some 40,000 task rows, a small share of a server's memory.
pub const DEFAULT_CHECKPOINT_BYTES: usize = 16 << 20;

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            every: DEFAULT_CHECKPOINT_EVERY,
            max_bytes: DEFAULT_CHECKPOINT_BYTES,
        }
    }
}

impl Checkpoint {
    /// Every applied batch written at once: how the store behaved before checkpoints, for
    /// tests that read the file right after an apply.
    pub const EVERY_BATCH: Checkpoint = Checkpoint {
        every: Duration::ZERO,
        max_bytes: 0,
    };
}

/// How many events to keep and for how long; an event goes when it is past either bound.
///
/// Each server applies its own retention: the history is a record of what happened, not state
/// that other commands depend on, so servers may keep more or less of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_events: usize,
    pub max_age: Duration,
}

/// 50,000 events: a stored event is about 300 bytes of JSON, so the table stays near 15 MB on an
/// SD card and the copy in memory near 20 MB, a small share of a 1 GB edge server; that is a week
/// of a busy site's placements, restarts and node changes.
pub const DEFAULT_MAX_EVENTS: usize = 50_000;
/// 7 days: enough to look back over a weekend without anyone on site, short enough that a quiet
/// site does not keep months of history.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events: DEFAULT_MAX_EVENTS,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

impl Retention {
    /// Drops the oldest events past retention. `now` is the cluster's clock (the time of the
    /// newest applied command), so every server measures ages alike whatever its own clock says.
    ///
    /// Only the oldest are dropped, in `seq` order: an agent's event stamped with a skewed clock
    /// may stay a little longer than its age allows, but the kept events are always one run of
    /// consecutive `seq`s, which the store deletes from disk as one range.
    pub(crate) fn prune(&self, events: &mut VecDeque<Event>, now: Timestamp) {
        let max_age = u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX);
        let oldest = Timestamp(now.0.saturating_sub(max_age));
        while events.len() > self.max_events
            || events.front().is_some_and(|e| e.event.time < oldest)
        {
            events.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use api::{Level, NewEvent};

    use super::*;

    const HOUR: u64 = 60 * 60 * 1000;

    fn events(times: &[u64]) -> VecDeque<Event> {
        let event = |(i, time): (usize, &u64)| Event {
            seq: i as u64 + 1,
            event: NewEvent {
                time: Timestamp(*time),
                level: Level::Info,
                reason: "test".into(),
                service: None,
                task: None,
                node: None,
                message: String::new(),
            },
        };
        times.iter().enumerate().map(event).collect()
    }

    fn seqs(events: &VecDeque<Event>) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_at_most_the_newest_max_events() {
        let mut kept = events(&[1, 2, 3, 4, 5]);
        let retention = Retention {
            max_events: 2,
            ..Retention::default()
        };
        retention.prune(&mut kept, Timestamp(5));
        assert_eq!(seqs(&kept), [4, 5]);
    }

    #[test]
    fn drops_events_older_than_max_age_by_the_cluster_clock() {
        let mut kept = events(&[HOUR, 2 * HOUR, 5 * HOUR, 6 * HOUR]);
        let retention = Retention {
            max_age: Duration::from_secs(2 * 60 * 60),
            ..Retention::default()
        };
        retention.prune(&mut kept, Timestamp(6 * HOUR));
        assert_eq!(seqs(&kept), [3, 4]);
    }

    #[test]
    fn only_the_oldest_go_so_the_kept_events_stay_consecutive() {
        // Event 2 comes from an agent whose clock is behind: it goes no earlier than event 1.
        let mut kept = events(&[10 * HOUR, 0, 10 * HOUR]);
        let retention = Retention {
            max_age: Duration::from_secs(60 * 60),
            ..Retention::default()
        };
        retention.prune(&mut kept, Timestamp(10 * HOUR));
        assert_eq!(seqs(&kept), [1, 2, 3]);
    }
}
