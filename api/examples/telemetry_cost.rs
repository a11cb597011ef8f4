//! What one capture observation costs on the request path: `record_capture` (the exporter's
//! histogram plus the live window) and a 429 through `record_error`, timed over many calls.
//!
//! Run: `cargo run --release -p orderd-api --example telemetry_cost`

use orderd_api::error::ApiError;
use orderd_api::telemetry::{self, Outcome};
use orderd_domain::order::Channel;
use std::time::{Duration, Instant};

/// Observations per measurement.
const CALLS: u32 = 2_000_000;

fn main() {
    let t = telemetry::global();
    let per_call = |f: &dyn Fn(u32)| {
        let started = Instant::now();
        for i in 0..CALLS {
            f(i);
        }
        started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS)
    };
    // Warm up: the first observation of a second resets its slot.
    t.record_capture(Channel::Api, Outcome::Accepted, Duration::from_micros(1));
    let capture = per_call(&|i| {
        t.record_capture(
            Channel::Api,
            Outcome::Accepted,
            Duration::from_micros(u64::from(i % 20_000)),
        )
    });
    t.upkeep();
    let busy = ApiError::TooManyRequests;
    let refusal = per_call(&|_| t.record_error(&busy));
    t.upkeep();
    println!("record_capture: {capture:.0} ns per call; record_error (429): {refusal:.0} ns per call ({CALLS} calls each, one thread)");
}
