//! The search for the highest sustained rate: grow geometrically from a start rate until a
//! step fails, then bisect between the best pass and the lowest failure until they are within
//! a resolution of each other. A start rate that fails shrinks geometrically instead.
//!
//! Noise can make a rate pass above one that failed; the failure is then forgotten and the
//! search goes on upward. `steps_max` bounds it in every case.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RateSearch {
    pub start: u64,
    /// Factor between steps while no failure (or no pass) has been seen; above 1.
    pub growth: f64,
    pub min: u64,
    pub max: u64,
    /// Stop when the gap between best pass and lowest failure is at most this fraction of
    /// the best pass.
    pub resolution: f64,
    /// Rates are multiples of this.
    pub granularity: u64,
    pub steps_max: usize,
    best_pass: Option<u64>,
    lowest_fail: Option<u64>,
    steps: usize,
}

impl RateSearch {
    pub fn new(start: u64, growth: f64, min: u64, max: u64, resolution: f64) -> RateSearch {
        RateSearch {
            start,
            growth: growth.max(1.05),
            min: min.max(1),
            max: max.max(min.max(1)),
            resolution,
            granularity: 100,
            steps_max: 30,
            best_pass: None,
            lowest_fail: None,
            steps: 0,
        }
    }

    fn round(&self, rate: f64) -> u64 {
        let g = self.granularity.max(1);
        let r = crate::round_u64(rate / g as f64).max(1) * g;
        r.clamp(self.min, self.max)
    }

    /// The next rate to try, or `None` when the search is done.
    pub fn next(&self) -> Option<u64> {
        if self.steps >= self.steps_max {
            return None;
        }
        let next = match (self.best_pass, self.lowest_fail) {
            (None, None) => self.round(self.start as f64),
            (Some(p), None) => {
                if p >= self.max {
                    return None;
                }
                self.round(p as f64 * self.growth)
            }
            (None, Some(f)) => {
                if f <= self.min {
                    return None;
                }
                self.round(f as f64 / self.growth)
            }
            (Some(p), Some(f)) => {
                let gap = f.saturating_sub(p);
                if gap as f64 <= self.resolution * p as f64 || gap <= self.granularity {
                    return None;
                }
                self.round((p + f) as f64 / 2.0)
            }
        };
        // Rounding may land on a rate already decided: then there is nothing left between.
        let decided = Some(next) == self.best_pass || Some(next) == self.lowest_fail;
        (!decided).then_some(next)
    }

    pub fn record(&mut self, rate: u64, pass: bool) {
        self.steps += 1;
        if pass {
            self.best_pass = Some(self.best_pass.map_or(rate, |p| p.max(rate)));
            if self.lowest_fail.is_some_and(|f| f <= rate) {
                self.lowest_fail = None;
            }
        } else {
            self.lowest_fail = Some(self.lowest_fail.map_or(rate, |f| f.min(rate)));
        }
    }

    /// The highest rate that passed.
    pub fn best(&self) -> Option<u64> {
        self.best_pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(search: &mut RateSearch, capacity: u64) -> Vec<u64> {
        let mut tried = vec![];
        while let Some(rate) = search.next() {
            tried.push(rate);
            search.record(rate, rate <= capacity);
        }
        tried
    }

    // Against a server that passes exactly up to a capacity, the search ends within its
    // resolution below it, in few steps, without trying a rate twice.
    #[test]
    fn converges_to_the_capacity() {
        for capacity in [700, 12_345, 31_000, 48_000] {
            let mut s = RateSearch::new(2_000, 2.0, 100, 200_000, 0.05);
            let tried = run(&mut s, capacity);
            let best = s.best().unwrap_or(0);
            assert!(best <= capacity, "{capacity}: {best} {tried:?}");
            assert!(
                best as f64 >= capacity as f64 * 0.94 - 100.0,
                "{capacity}: {best} {tried:?}"
            );
            assert!(tried.len() <= 12, "{capacity}: {tried:?}");
            let mut dedup = tried.clone();
            dedup.sort();
            dedup.dedup();
            assert_eq!(dedup.len(), tried.len(), "{tried:?}");
        }
    }

    // Nothing passes: the search walks down to the minimum and reports nothing.
    #[test]
    fn nothing_passes() {
        let mut s = RateSearch::new(1_000, 2.0, 100, 10_000, 0.05);
        let tried = run(&mut s, 0);
        assert_eq!(s.best(), None);
        assert_eq!(tried.last(), Some(&100));
    }

    // A noisy pass above an earlier failure forgets the failure and keeps going; the step
    // bound holds.
    #[test]
    fn noise_and_bounds() {
        let mut s = RateSearch::new(1_000, 2.0, 100, 1_000_000, 0.05);
        s.record(1_000, false);
        s.record(2_000, true);
        assert_eq!(s.next(), Some(4_000));
        s.steps_max = 3;
        s.record(4_000, true);
        assert_eq!(s.next(), None);
    }
}
