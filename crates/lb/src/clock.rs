//! Time as the balancer sees it: nanoseconds since the balancer was made, on tokio's clock, so
//! tests run on paused time and the pure parts take `now` as a plain number.

use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds since a [`Clock`]'s start, plus one: never 0 for a time read from a clock, so 0
/// can mean "never" in atomics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nanos(pub u64);

impl Nanos {
    pub fn plus(self, d: Duration) -> Nanos {
        Nanos(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// Whole seconds, for the retry budget's buckets.
    pub fn secs(self) -> u64 {
        self.0 / 1_000_000_000
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Nanos {
        let since = self.start.elapsed().as_nanos();
        Nanos(u64::try_from(since).unwrap_or(u64::MAX).saturating_add(1))
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}
