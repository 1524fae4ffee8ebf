//! Least connections: the eligible endpoint with the fewest requests in flight. The scan starts
//! one further along at each pick, so ties go round robin rather than always to the first.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub fn pick(
    n: usize,
    cursor: &AtomicUsize,
    in_flight: impl Fn(usize) -> u64,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Relaxed) % n;
    let mut best: Option<(usize, u64)> = None;
    for i in (0..n).map(|i| (start + i) % n) {
        if !eligible(i) {
            continue;
        }
        let load = in_flight(i);
        if best.is_none_or(|(_, fewest)| load < fewest) {
            best = Some((i, load));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewest_in_flight_wins() {
        let cursor = AtomicUsize::new(0);
        let loads = [3, 1, 2];
        for _ in 0..5 {
            assert_eq!(pick(3, &cursor, |i| loads[i], |_| true), Some(1));
        }
        assert_eq!(pick(3, &cursor, |i| loads[i], |i| i != 1), Some(2));
    }

    #[test]
    fn ties_go_round_robin() {
        let cursor = AtomicUsize::new(0);
        let picks: Vec<_> = (0..4)
            .map(|_| pick(2, &cursor, |_| 0, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }
}
