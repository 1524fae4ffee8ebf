//! Passive outlier detection: an endpoint whose request fails (no connection, a reset, a reply
//! that is not HTTP, a 5xx) is ejected at once, for a base time that doubles with each ejection
//! in a row (until a request to it succeeds) up to a cap. At most a share of the ready endpoints
//! is ejected at a time, and never all of them: when every endpoint fails, the fault is more
//! likely in front of them than in each one, and sending to one beats sending to none.

use std::time::Duration;

/// How ejection works for one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// The first ejection's length.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
    /// Percentage of the ready endpoints that may be ejected at once, rounded up; at least one
    /// endpoint always stays.
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    /// 2 s, doubling to 1 min; half the endpoints. A dead endpoint gets one request (retried
    /// elsewhere) every ejection, so the base is short enough for a restarted task to get
    /// traffic within seconds and long enough that a dead one costs little.
    fn default() -> Outlier {
        Outlier {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            max_ejected_percent: 50,
        }
    }
}

impl Outlier {
    /// How long the ejection after `in_a_row` earlier ones lasts.
    pub fn duration(&self, in_a_row: u32) -> Duration {
        let factor = 1u32.checked_shl(in_a_row).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Whether one more of `ready` endpoints may be ejected while `ejected` are.
    pub fn may_eject(&self, ejected: usize, ready: usize) -> bool {
        let share = (ready * self.max_ejected_percent as usize).div_ceil(100);
        ejected < share.min(ready.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_double_up_to_the_cap() {
        let o = Outlier::default();
        let secs: Vec<u64> = (0..8).map(|n| o.duration(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(o.duration(u32::MAX), o.max);
    }

    #[test]
    fn never_more_than_the_share_and_never_the_last() {
        let o = Outlier::default();
        assert!(!o.may_eject(0, 1), "the only endpoint stays");
        assert!(o.may_eject(0, 2));
        assert!(!o.may_eject(1, 2));
        assert!(o.may_eject(1, 3), "half of 3 rounds up to 2");
        assert!(!o.may_eject(2, 3));
        let all = Outlier {
            max_ejected_percent: 100,
            ..o
        };
        assert!(all.may_eject(3, 5));
        assert!(!all.may_eject(4, 5), "one stays even at 100%");
        assert!(!all.may_eject(0, 0));
    }
}
