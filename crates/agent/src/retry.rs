//! The one retry policy of the agent's loops that talk to a server — registering, watching
//! assignments, reporting: exponential backoff with jitter, so that agents cut off together do
//! not all reconnect in the same instant when the server comes back.
//!
//! The delays come from `backon`'s exponential iterator; the loops sleep themselves, because
//! the reporter keeps collecting updates while it waits.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// 200 ms: the first retry comes quickly after a blip.
const FIRST: Duration = Duration::from_millis(200);
/// 5 s: a server that is back is found within seconds, while a cut-off node asks at most a few
/// times a minute per loop.
const CAP: Duration = Duration::from_secs(5);

/// Delays for one run of failures: the k-th is drawn from `[d, 2d)` with `d` doubling from half
/// of [`FIRST`] up to half of [`CAP`], so each delay lies in `[FIRST / 2, CAP)`.
/// [`Retry::reset`] after a success starts again from the shortest.
#[derive(Debug)]
pub(crate) struct Retry {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Default for Retry {
    fn default() -> Self {
        // backon's jitter adds up to the delay again: halve both ends to keep within `CAP`.
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(FIRST / 2)
            .with_max_delay(CAP / 2)
            .without_max_times();
        Retry {
            builder,
            delays: builder.build(),
        }
    }
}

impl Retry {
    /// How long to wait before the next try.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // Without a limit on tries the iterator never ends; the cap is the fallback regardless.
        self.delays.next().unwrap_or(CAP)
    }

    /// After a success: the next failure waits the shortest delay again.
    pub(crate) fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(retry: &mut Retry, n: usize) -> Vec<Duration> {
        (0..n).map(|_| retry.next_delay()).collect()
    }

    #[test]
    fn delays_grow_and_stay_within_bounds() {
        let mut retry = Retry::default();
        let all = delays(&mut retry, 200);
        assert!(all.iter().all(|d| *d >= FIRST / 2 && *d < CAP), "{all:?}");
        assert!(all[0] < FIRST, "the first retry is quick: {:?}", all[0]);
        // From the 6th on the base is capped at 2.5 s, so every delay is in [2.5 s, 5 s).
        assert!(all[6..].iter().all(|d| *d >= CAP / 2), "{all:?}");
    }

    #[test]
    fn two_agents_do_not_retry_in_lockstep() {
        let a = delays(&mut Retry::default(), 10);
        let b = delays(&mut Retry::default(), 10);
        assert_ne!(a, b, "jitter differs between policies");
        let mut same = Retry::default();
        let spread: Vec<Duration> = (0..50)
            .map(|_| {
                same.reset();
                same.next_delay()
            })
            .collect();
        let distinct: std::collections::BTreeSet<_> = spread.iter().collect();
        assert!(distinct.len() > 25, "first delays spread out: {spread:?}");
    }

    #[test]
    fn reset_starts_again_from_the_shortest_delay() {
        let mut retry = Retry::default();
        delays(&mut retry, 20);
        assert!(retry.next_delay() >= CAP / 2);
        retry.reset();
        assert!(retry.next_delay() < FIRST);
    }
}
