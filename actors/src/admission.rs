//! The daemon-wide admission bound: how many state-changing API requests may be inside orderd
//! at once. The API's access guard refuses a change at once when there is no room
//! ([`Admission::has_room`]), before it checks the credential; once the caller is
//! authenticated, allowed and within its rate limits and the whole body has arrived, it lets
//! the request in through [`Admission::enter`], and the [`Ticket`] it holds until its answer
//! is ready measures its time inside: orderd's work, not the client's upload nor the identity
//! provider's answer.
//!
//! A fixed bound (`limits.inflight_total_max`) protects memory (of requests let in; the bodies
//! still arriving have the API's byte budget, `api.body_buffer_bytes_max`), not latency: during a spike
//! three times above what orderd can serve, requests queued for CPU (the runtime's run queue,
//! actor mailboxes), each waited seconds, clients gave up on them, and orderd still did their
//! work, so almost nothing was answered in time (the benchmark's spike profile). So when
//! orderd is *overloaded* it takes
//! at most `throughput × latency target` requests at once: by Little's law (requests in flight
//! = throughput × time in the daemon) that keeps the mean time of an admitted request near the
//! target, and everything above is refused at once (HTTP 503 with Retry-After), costing a few
//! microseconds instead of an order's work.
//!
//! Time is cut into windows of [`WINDOW_MS`]. At the end of each:
//!
//! - **throughput** is the best completions per second of recent windows, forgotten slowly (it
//!   halves in [`HALF_LIFE_MS`] without a better window), so the bound follows the machine and
//!   the order mix;
//! - orderd **becomes overloaded** when the requests that finished in the window spent at least
//!   the target inside on average (a queue: below capacity they take a few milliseconds);
//! - it **stops being overloaded** after a window in which the bound refused nothing and the
//!   average was under the target again: demand fell below what orderd serves.
//!
//! When not overloaded the bound is `limits.inflight_total_max`: a daemon below its capacity
//! absorbs bursts and stalls without refusing anything. When overloaded it is the throughput ×
//! target, never below `limits.inflight_total_min` nor above the maximum.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Length of one measurement window.
pub const WINDOW_MS: u64 = 100;
/// Time in which the remembered best throughput halves when no window matches it.
pub const HALF_LIFE_MS: u64 = 10_000;

/// The bounds of [`Admission`], from `Limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Lowest bound on requests in flight.
    pub min: usize,
    /// Highest bound on requests in flight (the bound when not overloaded).
    pub max: usize,
    /// The time in the daemon the bound aims at when overloaded.
    pub latency_target: Duration,
}

/// Measures the requests that finish and keeps the bound in force; shared by every caller of
/// the directory.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    /// Requests let in and not yet answered.
    inflight: AtomicUsize,
    bound: AtomicUsize,
    completed: AtomicU64,
    /// The time inside of the requests finished in the current window, summed, in ns.
    inside_ns: AtomicU64,
    /// Whether the bound refused a request in the current window.
    refused: AtomicBool,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    completed_at_start: u64,
    /// The best completions per second of recent windows, decayed by [`HALF_LIFE_MS`].
    best_per_s: f64,
    overloaded: bool,
}

impl Admission {
    pub fn new(limits: AdmissionLimits, now: Instant) -> Admission {
        assert!(
            limits.min >= 1 && limits.min <= limits.max,
            "admission bounds must satisfy 1 <= min <= max (checked by Limits::validate)"
        );
        Admission {
            limits,
            inflight: AtomicUsize::new(0),
            bound: AtomicUsize::new(limits.max),
            completed: AtomicU64::new(0),
            inside_ns: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            window: Mutex::new(Window {
                started: now,
                completed_at_start: 0,
                best_per_s: 0.0,
                overloaded: false,
            }),
        }
    }

    /// Lets a request in, or refuses it (`None`, counted) when the requests inside have reached
    /// the bound. The ticket records the request's time inside when it is dropped.
    pub fn enter(self: &Arc<Self>, now: Instant) -> Option<Ticket> {
        let bound = self.bound(now);
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= bound {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            self.refused.store(true, Ordering::Release);
            return None;
        }
        Some(Ticket {
            admission: Arc::clone(self),
            entered: now,
        })
    }

    /// Whether [`Admission::enter`] would let a request in now; when not, the refusal is
    /// counted as `enter`'s is. The API asks this before it authenticates a change and reads
    /// its body, so that during a spike its refusal costs far less than the work it turns
    /// away, and takes the ticket only once the body is in: a slow upload holds no place
    /// inside and its time on the wire is not counted as time inside.
    pub fn has_room(&self, now: Instant) -> bool {
        let room = self.inflight.load(Ordering::Acquire) < self.bound(now);
        if !room {
            self.refused.store(true, Ordering::Release);
        }
        room
    }

    /// Requests inside now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// The bound on requests in flight in force now (after closing a window that has ended).
    pub fn bound(&self, now: Instant) -> usize {
        self.roll(now);
        self.bound.load(Ordering::Acquire)
    }

    /// Whether orderd is overloaded now (see the module doc).
    pub fn overloaded(&self) -> bool {
        self.window.lock().is_ok_and(|w| w.overloaded)
    }

    /// Records one finished request (answered or failed: either way it left the daemon) and
    /// the time it spent inside.
    fn completed(&self, inside: Duration) {
        let ns = u64::try_from(inside.as_nanos()).unwrap_or(u64::MAX);
        self.inside_ns.fetch_add(ns, Ordering::AcqRel);
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
        let inside_ns = self.inside_ns.swap(0, Ordering::AcqRel);
        let refused = self.refused.swap(false, Ordering::AcqRel);
        let in_window = completed.saturating_sub(w.completed_at_start);
        // Counts per window are far below 2^52, so the conversions are exact.
        #[allow(clippy::cast_precision_loss)]
        let newest = in_window as f64 / elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let decay = 0.5f64.powf(elapsed.as_secs_f64() / (HALF_LIFE_MS as f64 / 1000.0));
        let target_ns = u64::try_from(self.limits.latency_target.as_nanos()).unwrap_or(u64::MAX);
        // No request finished: nothing learned about the queue, the state stays.
        // Requests finished in the window may have started in an earlier one, so the two
        // counters can disagree by a request or two; the average only needs to be close.
        let mean_ns = inside_ns / in_window.max(1);
        let overloaded = match (in_window, w.overloaded) {
            (0, was) => was,
            (_, false) => mean_ns >= target_ns,
            (_, true) => refused || mean_ns >= target_ns,
        };
        if overloaded != w.overloaded {
            tracing::warn!(
                overloaded,
                per_s = newest.round(),
                mean_ms = mean_ns / 1_000_000,
                "daemon-wide admission: {}",
                if overloaded {
                    "overloaded, in-flight requests now bounded by throughput × latency target"
                } else {
                    "no longer overloaded"
                }
            );
        }
        *w = Window {
            started: now,
            completed_at_start: completed,
            best_per_s: newest.max(w.best_per_s * decay),
            overloaded,
        };
        let bound = if overloaded {
            bound_for(w.best_per_s, self.limits)
        } else {
            self.limits.max
        };
        self.bound.store(bound, Ordering::Release);
    }
}

/// A request let in by [`Admission::enter`]; dropping it lets the request out.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    entered: Instant,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.inflight.fetch_sub(1, Ordering::AcqRel);
        self.admission.completed(self.entered.elapsed());
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

    const TARGET: Duration = Duration::from_millis(50);

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            min: 16,
            max: 1000,
            latency_target: TARGET,
        }
    }

    fn complete(a: &Admission, n: u64, inside: Duration) {
        for _ in 0..n {
            a.completed(inside);
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    const QUICK: Duration = Duration::from_millis(2);
    const SLOW: Duration = Duration::from_millis(80);

    // Below capacity nothing is bounded but the maximum, also in a window where a few requests
    // queued behind a stall (the average decides), and a window that is not over leaves
    // everything alone.
    #[test]
    fn below_capacity_the_bound_is_the_maximum() {
        let t0 = Instant::now();
        let a = Admission::new(limits(), t0);
        assert_eq!(a.bound(t0), 1000);
        complete(&a, 400, QUICK);
        assert_eq!(a.bound(at(t0, WINDOW_MS - 1)), 1000);
        assert_eq!(a.bound(at(t0, 100)), 1000);
        complete(&a, 20, SLOW);
        complete(&a, 380, QUICK);
        assert_eq!(a.bound(at(t0, 200)), 1000);
        assert!(!a.overloaded());
    }

    // A window in which requests spent the target inside on average means a queue: the bound
    // becomes the best throughput × target (400 in 100 ms = 4,000/s, × 50 ms = 200). It stays
    // while the bound refuses, or while requests stay slow; a window without refusals and
    // with quick requests ends it.
    #[test]
    fn overload_bounds_by_throughput_until_demand_falls() {
        let t0 = Instant::now();
        let a = Arc::new(Admission::new(limits(), t0));
        complete(&a, 400, QUICK);
        assert_eq!(a.bound(at(t0, 100)), 1000);
        complete(&a, 300, SLOW);
        let bound = a.bound(at(t0, 200));
        assert!((198..=200).contains(&bound), "{bound}");
        assert!(a.overloaded());
        complete(&a, 300, QUICK);
        a.refused.store(true, Ordering::Release);
        let bound = a.bound(at(t0, 300));
        assert!((196..=200).contains(&bound), "{bound}");
        complete(&a, 300, SLOW);
        assert!(
            a.bound(at(t0, 400)) < 1000,
            "slow requests keep the overload"
        );
        // Nothing finished: nothing learned, the state stays.
        assert!(a.bound(at(t0, 500)) < 1000);
        complete(&a, 100, QUICK);
        assert_eq!(a.bound(at(t0, 600)), 1000);
        assert!(!a.overloaded());
    }

    // While overloaded, the remembered throughput fades by half in HALF_LIFE_MS without a
    // better window, never below the minimum.
    #[test]
    fn remembered_throughput_fades() {
        let t0 = Instant::now();
        let a = Admission::new(limits(), t0);
        complete(&a, 400, SLOW);
        assert_eq!(a.bound(at(t0, 100)), 200);
        let mut t = 100;
        while t < 100 + HALF_LIFE_MS {
            t += WINDOW_MS;
            complete(&a, 1, SLOW);
            a.bound(at(t0, t));
        }
        let halved = a.bound(at(t0, t));
        assert!((99..=101).contains(&halved), "{halved}");
        for _ in 0..1000 {
            t += WINDOW_MS;
            complete(&a, 1, SLOW);
            a.bound(at(t0, t));
        }
        assert_eq!(a.bound(at(t0, t)), 16);
    }

    // enter counts requests inside against the bound and refuses above it; a dropped ticket
    // lets its request out, and a refusal keeps the overload going. has_room answers what
    // enter would, counting its refusal the same way, and lets nothing in.
    #[test]
    fn tickets_count_against_the_bound() {
        let t0 = Instant::now();
        let a = Arc::new(Admission::new(
            AdmissionLimits {
                min: 1,
                max: 2,
                latency_target: TARGET,
            },
            t0,
        ));
        assert!(a.has_room(t0));
        let first = a.enter(t0).expect("room for two");
        assert!(a.has_room(t0));
        assert!(!a.refused.load(Ordering::Acquire), "nothing refused yet");
        let second = a.enter(t0).expect("room for two");
        assert!(!a.has_room(t0), "no room for a third");
        assert!(
            a.refused.swap(false, Ordering::AcqRel),
            "counted as refused"
        );
        assert!(a.enter(t0).is_none(), "a third is refused");
        assert_eq!(a.inflight(), 2);
        drop(first);
        assert_eq!(a.inflight(), 1);
        assert!(a.enter(t0).is_some(), "room again (dropped at once)");
        drop(second);
        assert_eq!(a.inflight(), 0);
        assert!(a.refused.load(Ordering::Acquire));
    }

    // The maximum caps the bound however fast the daemon is; no throughput gives the minimum.
    #[test]
    fn bound_stays_within_the_limits() {
        assert_eq!(bound_for(1e9, limits()), 1000);
        assert_eq!(bound_for(0.0, limits()), 16);
        assert_eq!(bound_for(f64::NAN, limits()), 16);
        assert_eq!(bound_for(f64::INFINITY, limits()), 1000);
    }
}
