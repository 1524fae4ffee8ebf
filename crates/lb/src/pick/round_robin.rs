//! Round robin: each pick starts one further along; an endpoint that may not be picked is
//! skipped, so its turn goes to the next one.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub fn pick(n: usize, cursor: &AtomicUsize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Relaxed) % n;
    (0..n).map(|i| (start + i) % n).find(|&i| eligible(i))
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
        assert_eq!(picks, [0, 2, 2]);
        assert_eq!(pick(3, &cursor, |_| false), None);
        assert_eq!(pick(0, &cursor, |_| true), None);
    }
}
