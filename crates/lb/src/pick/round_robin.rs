//! Round robin: each pick takes the next turn; an endpoint that may not be picked passes its turn
//! on, and the pick takes the turn after, so the others still share evenly (scanning on from a
//! skipped endpoint would give its whole share to the one after it).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub fn pick(n: usize, cursor: &AtomicUsize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..n {
        let i = cursor.fetch_add(1, Relaxed) % n;
        if eligible(i) {
            return Some(i);
        }
    }
    // Concurrent picks took turns in between: look at every endpoint once.
    (0..n).find(|&i| eligible(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_turns_and_skips_the_ineligible() {
        let cursor = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(3, &cursor, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let picks: Vec<_> = (0..3)
            .map(|_| pick(3, &cursor, |i| i != 1).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 0]);
        assert_eq!(pick(3, &cursor, |_| false), None);
        assert_eq!(pick(0, &cursor, |_| true), None);
    }

    #[test]
    fn the_others_share_a_skipped_turn_evenly() {
        let cursor = AtomicUsize::new(0);
        let mut seen = [0; 4];
        for _ in 0..300 {
            seen[pick(4, &cursor, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(seen, [100, 0, 100, 100]);
    }
}
