//! Smooth weighted round robin, as nginx does it: at each step every endpoint's current value
//! grows by its weight, the largest is picked and loses the total. Weights 5:1:1 give
//! `a a b a c a a`, not `a a a a a b c`. The sequence repeats after the sum of the weights, so it
//! is computed once per endpoint set and a pick is one step along it, without a lock.
//!
//! An endpoint of the schedule that may not be picked (ejected, tried) gives its step to one of
//! the eligible ones at random, by weight.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::rng::Rng;

/// Longest schedule: weights whose sum (over their greatest common divisor) is larger are scaled
/// down to fit, which keeps their ratios to within a part in a few thousand.
const MAX_SCHEDULE: u64 = 4_096;

#[derive(Debug)]
pub struct Schedule {
    steps: Vec<u32>,
}

impl Schedule {
    /// The schedule over `weights`; an endpoint of weight 0 (a draining one) has no step.
    pub fn new(weights: &[u32]) -> Schedule {
        let weights = fit(weights);
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut steps = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += i64::from(w);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            steps.push(u32::try_from(best).unwrap_or(u32::MAX));
        }
        Schedule { steps }
    }

    pub fn pick(
        &self,
        cursor: &AtomicUsize,
        rng: &Rng,
        weights: impl Fn(usize) -> u32,
        n: usize,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if !self.steps.is_empty() {
            let step = self.steps[cursor.fetch_add(1, Relaxed) % self.steps.len()] as usize;
            if step < n && eligible(step) {
                return Some(step);
            }
        }
        by_weight(n, rng, weights, eligible)
    }
}

/// One eligible endpoint at random, each as likely as its weight.
fn by_weight(
    n: usize,
    rng: &Rng,
    weight: impl Fn(usize) -> u32,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let total: u64 = (0..n)
        .filter(|&i| eligible(i))
        .map(|i| u64::from(weight(i)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut at = u64::try_from(rng.below(usize::try_from(total).unwrap_or(usize::MAX))).ok()?;
    for i in (0..n).filter(|&i| eligible(i)) {
        let w = u64::from(weight(i));
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    None
}

/// The weights divided by their greatest common divisor, and scaled down (none below 1) when
/// their sum would still exceed [`MAX_SCHEDULE`].
fn fit(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w / g)).collect();
    let sum: u64 = reduced.iter().sum();
    reduced
        .iter()
        .map(|&w| {
            let w = if sum > MAX_SCHEDULE {
                if w == 0 {
                    0
                } else {
                    (w * MAX_SCHEDULE / sum).max(1)
                }
            } else {
                w
            };
            u32::try_from(w).unwrap_or(u32::MAX)
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], n: usize) -> Vec<usize> {
        let s = Schedule::new(weights);
        let cursor = AtomicUsize::new(0);
        let rng = Rng::new(1);
        (0..n)
            .map(|_| {
                s.pick(&cursor, &rng, |i| weights[i], weights.len(), |_| true)
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn smooth_like_nginx() {
        // nginx's own example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(sequence(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn the_schedule_is_reduced_and_bounded() {
        assert_eq!(Schedule::new(&[30, 10]).steps.len(), 4);
        let big = Schedule::new(&[1_000; 100]);
        assert!(
            big.steps.len() as u64 <= MAX_SCHEDULE,
            "{}",
            big.steps.len()
        );
        assert_eq!(Schedule::new(&[0, 0]).steps.len(), 0);
    }

    #[test]
    fn a_draining_endpoint_has_no_step() {
        assert!(!sequence(&[2, 0, 1], 30).contains(&1));
    }

    #[test]
    fn an_ineligible_step_goes_to_another_by_weight() {
        let weights = [1, 3, 1];
        let s = Schedule::new(&weights);
        let cursor = AtomicUsize::new(0);
        let rng = Rng::new(9);
        let mut seen = [0; 3];
        for _ in 0..5_000 {
            seen[s
                .pick(&cursor, &rng, |i| weights[i], 3, |i| i != 1)
                .unwrap()] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!((2_300..2_700).contains(&seen[0]), "{seen:?}");
    }
}
