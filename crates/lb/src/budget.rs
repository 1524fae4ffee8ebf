//! The retry budget: retries may add at most a ratio of the recent requests, plus a small floor
//! per second so a quiet listener can still retry. When every endpoint fails, retries cannot
//! multiply the load on them (Finagle's and Linkerd's scheme).
//!
//! Requests and retries are counted per second in a ring of buckets, each one atomic word (its
//! second and its count), so counting takes no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::clock::Nanos;

/// Seconds of history the budget looks at.
const WINDOW: usize = 10;

/// How many retries a listener may make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    /// Retries as a percentage of the requests of the last ten seconds.
    pub percent: u32,
    /// Retries allowed each second on top, however few the requests.
    pub per_second: u32,
}

impl Default for RetryBudget {
    /// 20% and 10 a second: Linkerd's defaults.
    fn default() -> RetryBudget {
        RetryBudget {
            percent: 20,
            per_second: 10,
        }
    }
}

/// Counts of the last [`WINDOW`] seconds.
#[derive(Debug, Default)]
pub(crate) struct Window {
    requests: Ring,
    retries: Ring,
}

impl Window {
    pub fn note_request(&self, now: Nanos) {
        self.requests.add(now.secs());
    }

    /// Takes a retry from the budget if there is one left.
    pub fn try_retry(&self, budget: &RetryBudget, now: Nanos) -> bool {
        let second = now.secs();
        let allowed = u64::from(budget.per_second) * WINDOW as u64
            + self.requests.sum(second) * u64::from(budget.percent) / 100;
        if self.retries.sum(second) >= allowed {
            return false;
        }
        self.retries.add(second);
        true
    }
}

#[derive(Debug, Default)]
struct Ring([AtomicU64; WINDOW]);

impl Ring {
    /// A bucket holds its second in the high 32 bits and its count in the low 32: 2^32 seconds
    /// is 136 years of uptime, 2^32 a second more requests than a node can take.
    fn add(&self, second: u64) {
        let bucket = &self.0[(second % WINDOW as u64) as usize];
        let _ = bucket.fetch_update(Relaxed, Relaxed, |word| {
            Some(if word >> 32 == second {
                word + 1
            } else {
                (second << 32) | 1
            })
        });
    }

    fn sum(&self, second: u64) -> u64 {
        self.0
            .iter()
            .map(|b| b.load(Relaxed))
            .filter(|word| {
                second.saturating_sub(word >> 32) < WINDOW as u64 && word >> 32 <= second
            })
            .map(|word| word & 0xffff_ffff)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Nanos {
        Nanos(secs * 1_000_000_000 + 1)
    }

    #[test]
    fn the_floor_allows_a_few_retries_without_requests() {
        let w = Window::default();
        let b = RetryBudget {
            percent: 20,
            per_second: 1,
        };
        let allowed = (0..100).filter(|_| w.try_retry(&b, at(5))).count();
        assert_eq!(allowed, WINDOW);
    }

    #[test]
    fn retries_are_a_share_of_requests() {
        let w = Window::default();
        let b = RetryBudget {
            percent: 20,
            per_second: 0,
        };
        for _ in 0..1_000 {
            w.note_request(at(3));
        }
        let allowed = (0..1_000).filter(|_| w.try_retry(&b, at(3))).count();
        assert_eq!(allowed, 200);
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let w = Window::default();
        let b = RetryBudget {
            percent: 100,
            per_second: 0,
        };
        for _ in 0..10 {
            w.note_request(at(1));
        }
        assert!(
            w.try_retry(&b, at(10)),
            "second 1 is still in the window at 10"
        );
        assert!(!w.try_retry(&b, at(11 + WINDOW as u64)), "and gone later");
        // The bucket of second 1 is reused by second 11 from scratch.
        w.note_request(at(11));
        assert_eq!(w.requests.sum(11), 1);
    }
}
