//! Power of two choices: two distinct eligible endpoints at random, the one with fewer requests
//! in flight wins. Nearly as good as least connections, without a scan's herding onto one idle
//! endpoint when many pick at once.

use crate::rng::Rng;

pub fn pick(
    n: usize,
    rng: &Rng,
    in_flight: impl Fn(usize) -> u64,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let count = (0..n).filter(|&i| eligible(i)).count();
    let nth = |k: usize| (0..n).filter(|&i| eligible(i)).nth(k);
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let a = rng.below(count);
            let mut b = rng.below(count - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if in_flight(b) < in_flight(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_is_never_picked_of_three() {
        // Of any two of {0, 1, 2}, 2 always loses.
        let rng = Rng::new(3);
        let loads = [0, 1, 9];
        for _ in 0..200 {
            assert_ne!(pick(3, &rng, |i| loads[i], |_| true), Some(2));
        }
    }

    #[test]
    fn only_eligible_ones() {
        let rng = Rng::new(3);
        for _ in 0..50 {
            assert_eq!(pick(4, &rng, |_| 0, |i| i == 3), Some(3));
        }
        assert_eq!(pick(4, &rng, |_| 0, |_| false), None);
    }
}
