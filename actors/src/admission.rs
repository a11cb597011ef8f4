//! The daemon-wide admission bound: how many requests may be in flight to account actors at once.
//!
//! A fixed bound (`limits.inflight_total_max`) protects memory, not latency: during a spike
//! three times above what orderd can serve, thousands of requests sat in actor mailboxes, each
//! waited seconds, clients gave up on them, and orderd still did their work, so almost nothing
//! was answered in time (the benchmark's spike profile). By Little's law the requests in flight
//! are `throughput × time in the daemon`, so bounding them at `throughput × latency target`
//! keeps the mean time of an admitted request near the target, and everything above the bound
//! is refused at once (HTTP 503 with Retry-After), costing a few microseconds instead of an
//! order's work.
//!
//! The throughput is measured, not configured: completions are counted per window of
//! [`WINDOW_MS`], and the bound uses the best recent window, forgotten slowly (it halves in
//! [`HALF_LIFE_MS`] without a better window). So the bound follows the machine and the order
//! mix, and a short stall (a slow fsync, a busy neighbour) does not shrink it just when the
//! requests that queued behind the stall need room. It never goes below
//! `limits.inflight_total_min` (a quiet daemon still takes a burst, and when that bound is too
//! tight the next window's throughput raises it) nor above `limits.inflight_total_max`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one throughput measurement window.
pub const WINDOW_MS: u64 = 100;
/// Time in which the remembered best throughput halves when no window matches it.
pub const HALF_LIFE_MS: u64 = 10_000;

/// The bounds of [`Admission`], from `Limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Lowest bound on requests in flight.
    pub min: usize,
    /// Highest bound on requests in flight.
    pub max: usize,
    /// The time in the daemon the bound aims at.
    pub latency_target: Duration,
}

/// Counts completions and keeps the current bound; shared by every caller of the directory.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    bound: AtomicUsize,
    completed: AtomicU64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    completed_at_start: u64,
    /// The best completions per second of recent windows, decayed by [`HALF_LIFE_MS`].
    best_per_s: f64,
}

impl Admission {
    pub fn new(limits: AdmissionLimits, now: Instant) -> Admission {
        assert!(
            limits.min >= 1 && limits.min <= limits.max,
            "admission bounds must satisfy 1 <= min <= max (checked by Limits::validate)"
        );
        Admission {
            limits,
            bound: AtomicUsize::new(limits.min),
            completed: AtomicU64::new(0),
            window: Mutex::new(Window {
                started: now,
                completed_at_start: 0,
                best_per_s: 0.0,
            }),
        }
    }

    /// The current bound on requests in flight (after closing a window that has ended).
    pub fn bound(&self, now: Instant) -> usize {
        self.roll(now);
        self.bound.load(Ordering::Acquire)
    }

    /// Records one finished request (answered or failed: either way it left the daemon).
    pub fn completed(&self) {
        self.completed.fetch_add(1, Ordering::AcqRel);
    }

    /// Closes the window when it has lasted [`WINDOW_MS`] and recomputes the bound. Callers
    /// that find another caller doing it go on with the current bound instead of waiting.
    fn roll(&self, now: Instant) {
        let Ok(mut w) = self.window.try_lock() else {
            return;
        };
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed < Duration::from_millis(WINDOW_MS) {
            return;
        }
        let completed = self.completed.load(Ordering::Acquire);
        let in_window = completed.saturating_sub(w.completed_at_start);
        // Counts per window are far below 2^52, so the conversion is exact.
        #[allow(clippy::cast_precision_loss)]
        let newest = in_window as f64 / elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let decay = 0.5f64.powf(elapsed.as_secs_f64() / (HALF_LIFE_MS as f64 / 1000.0));
        let best_per_s = newest.max(w.best_per_s * decay);
        *w = Window {
            started: now,
            completed_at_start: completed,
            best_per_s,
        };
        self.bound
            .store(bound_for(best_per_s, self.limits), Ordering::Release);
    }
}

/// `throughput × latency target`, clamped to the limits.
fn bound_for(per_s: f64, limits: AdmissionLimits) -> usize {
    let wanted = (per_s * limits.latency_target.as_secs_f64()).ceil();
    // A positive float at most `max` converts to the integer it holds (NaN is not positive);
    // the clamp keeps the result inside the limits either way.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let wanted = if wanted > 0.0 {
        wanted.min(limits.max as f64) as usize
    } else {
        0
    };
    wanted.clamp(limits.min, limits.max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            min: 16,
            max: 1000,
            latency_target: Duration::from_millis(50),
        }
    }

    fn complete(a: &Admission, n: u64) {
        for _ in 0..n {
            a.completed();
        }
    }

    // Before any window has ended the bound is the minimum; a window that has not lasted
    // WINDOW_MS leaves it alone.
    #[test]
    fn starts_at_the_minimum_and_waits_for_a_full_window() {
        let t0 = Instant::now();
        let a = Admission::new(limits(), t0);
        assert_eq!(a.bound(t0), 16);
        complete(&a, 400);
        assert_eq!(a.bound(t0 + Duration::from_millis(WINDOW_MS - 1)), 16);
    }

    // 400 completions in 100 ms is 4,000/s; with a 50 ms target the bound is 200 in flight.
    #[test]
    fn bound_is_throughput_times_target() {
        let t0 = Instant::now();
        let a = Admission::new(limits(), t0);
        complete(&a, 400);
        assert_eq!(a.bound(t0 + Duration::from_millis(100)), 200);
    }

    // A better window raises the bound at once; worse windows (down to none at all, a stall)
    // only let the best one fade: by half in HALF_LIFE_MS, never below the minimum.
    #[test]
    fn bound_keeps_the_best_recent_throughput() {
        let t0 = Instant::now();
        let a = Admission::new(limits(), t0);
        complete(&a, 200);
        assert_eq!(a.bound(t0 + Duration::from_millis(100)), 100);
        complete(&a, 400);
        assert_eq!(a.bound(t0 + Duration::from_millis(200)), 200);
        let after_stall = a.bound(t0 + Duration::from_millis(300));
        assert!((198..=200).contains(&after_stall), "{after_stall}");
        let half_life_later = t0 + Duration::from_millis(200 + HALF_LIFE_MS);
        let halved = a.bound(half_life_later);
        assert!((100..=101).contains(&halved), "{halved}");
        assert_eq!(a.bound(half_life_later + Duration::from_secs(60)), 16);
    }

    // The maximum caps the bound however fast the daemon is, and a stalled daemon (nothing
    // completes for a long time) gets the minimum.
    #[test]
    fn bound_stays_within_the_limits() {
        assert_eq!(bound_for(1e9, limits()), 1000);
        assert_eq!(bound_for(0.0, limits()), 16);
        assert_eq!(bound_for(f64::NAN, limits()), 16);
        assert_eq!(bound_for(f64::INFINITY, limits()), 1000);
    }
}
