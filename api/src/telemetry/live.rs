//! The rolling window behind the operators' dashboard: one slot per second for the last
//! [`WINDOW_S`] seconds, each with an HDR histogram of capture latency and counts by channel,
//! outcome, problem code and refusal status. Fed by the same recording points as `/metrics`.
//!
//! Each second has its own mutex, so a recorder only ever waits for another request of the same
//! second, and a reader walking the window holds one slot at a time. Slots and their histograms
//! are allocated once, at start (about 3 MB for 300 slots); a slot is reset in place when its
//! second comes round again.

use super::{channel_name, Outcome, CHANNELS, PROBLEM_CODES};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds the window covers.
pub const WINDOW_S: u64 = 300;
/// Seconds summarised as "the last minute".
pub const RECENT_S: u64 = 60;
const _: () = assert!(RECENT_S <= WINDOW_S);
/// Largest latency the histograms track (longer ones count as this): 60 s, in microseconds.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant digits of the latency histograms (1% resolution).
pub const LATENCY_SIGFIG: u8 = 2;

const CH: usize = CHANNELS.len();
const PC: usize = PROBLEM_CODES.len();

struct Second {
    /// The unix second this slot holds; another value means the slot is stale.
    sec: u64,
    /// Capture latency of accepted and replayed orders, in microseconds.
    latency_us: Histogram<u32>,
    accepted: [u32; CH],
    rejected: [u32; CH],
    /// Capture requests refused for load or failed.
    failed: [u32; CH],
    /// 429 and 503 answers of every route.
    status_429: u32,
    status_503: u32,
    problems: [u32; PC],
}

impl Second {
    fn new() -> Second {
        Second {
            sec: 0,
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
                .expect("valid histogram bounds"),
            accepted: [0; CH],
            rejected: [0; CH],
            failed: [0; CH],
            status_429: 0,
            status_503: 0,
            problems: [0; PC],
        }
    }

    /// Makes the slot hold `sec`, clearing what an earlier second left.
    fn at(&mut self, sec: u64) -> &mut Second {
        if self.sec != sec {
            self.sec = sec;
            self.latency_us.reset();
            self.accepted = [0; CH];
            self.rejected = [0; CH];
            self.failed = [0; CH];
            self.status_429 = 0;
            self.status_503 = 0;
            self.problems = [0; PC];
        }
        self
    }
}

pub struct LiveWindow {
    slots: Box<[Mutex<Second>]>,
}

impl Default for LiveWindow {
    fn default() -> LiveWindow {
        LiveWindow::new()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bump(n: &mut u32) {
    *n = n.saturating_add(1);
}

impl LiveWindow {
    pub fn new() -> LiveWindow {
        LiveWindow {
            slots: (0..WINDOW_S).map(|_| Mutex::new(Second::new())).collect(),
        }
    }

    fn with_now(&self, f: impl FnOnce(&mut Second)) {
        let now = unix_now();
        let i = usize::try_from(now % WINDOW_S).expect("below WINDOW_S");
        let mut slot = self.slots[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(slot.at(now));
    }

    pub(super) fn record_capture(&self, channel: usize, outcome: Outcome, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.with_now(|s| match outcome {
            Outcome::Accepted | Outcome::Replayed => {
                s.latency_us.saturating_record(us.clamp(1, LATENCY_US_MAX));
                bump(&mut s.accepted[channel]);
            }
            Outcome::Rejected => bump(&mut s.rejected[channel]),
            Outcome::Refused | Outcome::Failed => bump(&mut s.failed[channel]),
        });
    }

    pub(super) fn record_status(&self, status: u16) {
        self.with_now(|s| match status {
            429 => bump(&mut s.status_429),
            _ => bump(&mut s.status_503),
        });
    }

    pub(super) fn record_problem(&self, code: usize) {
        self.with_now(|s| bump(&mut s.problems[code]));
    }

    /// The window as the dashboard shows it: the seconds oldest first (the current one last),
    /// the last minute summed up, rejections by code and the health of every channel.
    pub fn snapshot(&self) -> LiveSnapshot {
        let now = unix_now();
        let mut recent = Histogram::<u32>::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
            .expect("valid histogram bounds");
        let mut seconds = Vec::with_capacity(usize::try_from(WINDOW_S).unwrap_or(0));
        let mut problems = [0u64; PC];
        let mut sources: Vec<SourceHealth> = CHANNELS
            .iter()
            .map(|c| SourceHealth::new(channel_name(*c)))
            .collect();
        let mut minute = Totals::default();
        for t in now + 1 - WINDOW_S..=now {
            let i = usize::try_from(t % WINDOW_S).expect("below WINDOW_S");
            let slot = self.slots[i]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.sec != t {
                seconds.push(SecondView::empty(t));
                continue;
            }
            let is_recent = now - t < RECENT_S;
            if is_recent {
                // Same bounds, so adding cannot fail.
                let _ = recent.add(&slot.latency_us);
            }
            for (sum, n) in problems.iter_mut().zip(slot.problems) {
                *sum += u64::from(n);
            }
            for (ch, src) in sources.iter_mut().enumerate() {
                let seen = slot.accepted[ch] + slot.rejected[ch] + slot.failed[ch];
                if seen > 0 {
                    src.last_seen_s_ago = Some(now - t);
                }
                if is_recent {
                    src.accepted += u64::from(slot.accepted[ch]);
                    src.rejected += u64::from(slot.rejected[ch]);
                    src.failed += u64::from(slot.failed[ch]);
                }
            }
            let view = SecondView::of(t, &slot);
            drop(slot);
            if is_recent {
                minute.add(&view);
            }
            seconds.push(view);
        }
        for s in &mut sources {
            s.judge();
        }
        LiveSnapshot {
            now,
            window_s: WINDOW_S,
            recent_s: RECENT_S,
            channels: CHANNELS.iter().map(|c| channel_name(*c)).collect(),
            last_minute: LastMinute {
                orders: minute.orders,
                orders_per_s: ratio(minute.orders, RECENT_S),
                rejected: minute.rejected,
                failed: minute.failed,
                status_429: minute.status_429,
                status_503: minute.status_503,
                p50_ms: quantile_ms(&recent, 0.5),
                p99_ms: quantile_ms(&recent, 0.99),
                p999_ms: quantile_ms(&recent, 0.999),
                max_ms: (!recent.is_empty()).then(|| ms(recent.max())),
            },
            rejections_by_code: PROBLEM_CODES
                .iter()
                .zip(problems)
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| CodeCount {
                    code: c.as_str(),
                    count: n,
                })
                .collect(),
            sources,
            seconds,
        }
    }
}

// Latencies in µs up to 6e7 and counts per minute are exact as f64.
#[allow(clippy::cast_precision_loss)]
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[allow(clippy::cast_precision_loss)]
fn ratio(n: u64, d: u64) -> f64 {
    n as f64 / d as f64
}

fn quantile_ms(h: &Histogram<u32>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| ms(h.value_at_quantile(q)))
}

#[derive(Default)]
struct Totals {
    orders: u64,
    rejected: u64,
    failed: u64,
    status_429: u64,
    status_503: u64,
}

impl Totals {
    fn add(&mut self, s: &SecondView) {
        self.orders += s.orders;
        self.rejected += s.rejected;
        self.failed += s.failed;
        self.status_429 += s.status_429;
        self.status_503 += s.status_503;
    }
}

/// The dashboard's data (`GET /v1/ops/live`).
#[derive(Debug, Serialize)]
pub struct LiveSnapshot {
    /// Unix seconds of the newest slot.
    pub now: u64,
    pub window_s: u64,
    pub recent_s: u64,
    /// Channel names, in the order of `SecondView::by_channel`.
    pub channels: Vec<&'static str>,
    pub last_minute: LastMinute,
    /// Problems of 422 answers in the whole window, most first is up to the reader.
    pub rejections_by_code: Vec<CodeCount>,
    pub sources: Vec<SourceHealth>,
    /// One entry per second of the window, oldest first.
    pub seconds: Vec<SecondView>,
}

#[derive(Debug, Serialize)]
pub struct LastMinute {
    pub orders: u64,
    pub orders_per_s: f64,
    pub rejected: u64,
    pub failed: u64,
    pub status_429: u64,
    pub status_503: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct CodeCount {
    pub code: &'static str,
    pub count: u64,
}

/// How one intake channel fares over the last minute.
#[derive(Debug, Serialize)]
pub struct SourceHealth {
    pub channel: &'static str,
    pub accepted: u64,
    pub rejected: u64,
    pub failed: u64,
    /// Seconds since its last capture request in the window; none when it sent nothing.
    pub last_seen_s_ago: Option<u64>,
    /// `idle` (nothing in the last minute), `ok`, `degraded` (at least 10% of its requests
    /// refused for load or failed) or `failing` (all of them).
    pub status: &'static str,
}

impl SourceHealth {
    fn new(channel: &'static str) -> SourceHealth {
        SourceHealth {
            channel,
            accepted: 0,
            rejected: 0,
            failed: 0,
            last_seen_s_ago: None,
            status: "idle",
        }
    }

    fn judge(&mut self) {
        let total = self.accepted + self.rejected + self.failed;
        self.status = if total == 0 {
            "idle"
        } else if self.failed == total {
            "failing"
        } else if self.failed * 10 >= total {
            "degraded"
        } else {
            "ok"
        };
    }
}

#[derive(Debug, Serialize)]
pub struct SecondView {
    pub t: u64,
    /// Accepted and replayed orders.
    pub orders: u64,
    pub by_channel: [u32; CH],
    pub rejected: u64,
    pub failed: u64,
    pub status_429: u64,
    pub status_503: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
}

impl SecondView {
    fn empty(t: u64) -> SecondView {
        SecondView {
            t,
            orders: 0,
            by_channel: [0; CH],
            rejected: 0,
            failed: 0,
            status_429: 0,
            status_503: 0,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
        }
    }

    fn of(t: u64, s: &Second) -> SecondView {
        let sum = |a: &[u32; CH]| a.iter().map(|n| u64::from(*n)).sum();
        SecondView {
            t,
            orders: sum(&s.accepted),
            by_channel: s.accepted,
            rejected: sum(&s.rejected),
            failed: sum(&s.failed),
            status_429: u64::from(s.status_429),
            status_503: u64::from(s.status_503),
            p50_ms: quantile_ms(&s.latency_us, 0.5),
            p99_ms: quantile_ms(&s.latency_us, 0.99),
            p999_ms: quantile_ms(&s.latency_us, 0.999),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captures recorded now show up in the current second and in the last minute, with
    // percentiles from their latencies, and only the channel that sent them is healthy.
    #[test]
    fn records_show_in_the_current_second_and_the_last_minute() {
        let w = LiveWindow::new();
        for ms in 1..=100u64 {
            w.record_capture(1, Outcome::Accepted, Duration::from_millis(ms));
        }
        w.record_capture(1, Outcome::Rejected, Duration::from_millis(1));
        w.record_status(429);
        w.record_problem(11);
        let s = w.snapshot();
        assert_eq!(s.seconds.len(), 300);
        let last = s.seconds.last().expect("a current second");
        // The second may have turned between recording and reading: look at the minute.
        assert!(last.t == s.now);
        assert_eq!(s.last_minute.orders, 100);
        assert_eq!(s.last_minute.rejected, 1);
        assert_eq!(s.last_minute.status_429, 1);
        let p50 = s.last_minute.p50_ms.expect("p50");
        assert!((49.0..=51.0).contains(&p50), "p50 {p50}");
        let p99 = s.last_minute.p99_ms.expect("p99");
        assert!((98.0..=100.5).contains(&p99), "p99 {p99}");
        assert_eq!(s.rejections_by_code.len(), 1);
        assert_eq!(s.rejections_by_code[0].code, "out_of_stock");
        assert_eq!(s.sources[1].channel, "api");
        assert_eq!(s.sources[1].status, "ok");
        assert_eq!(s.sources[0].status, "idle");
    }

    // A slot is reset when its second comes round again, so old figures never leak into a new
    // second.
    #[test]
    fn a_slot_forgets_its_old_second() {
        let mut s = Second::new();
        s.at(10).accepted[0] = 5;
        s.at(10).latency_us.record(100).expect("in range");
        assert_eq!(s.at(10).accepted[0], 5);
        let fresh = s.at(10 + WINDOW_S);
        assert_eq!(fresh.accepted[0], 0);
        assert!(fresh.latency_us.is_empty());
    }
}
