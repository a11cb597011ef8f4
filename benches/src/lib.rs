//! orderd-benches: the capture benchmark of orderd. An open-loop HTTP load generator drives
//! the real `orderd` binary (a separate process on a fresh data directory, loaded through the
//! API) and, in the same run, a bare axum server that only parses the same JSON body (the HTTP
//! ceiling); it searches each one's highest sustained rate, measures latency percentiles at a
//! fraction of it, and reports where the CPU per order goes (`orderd-bench`, see `main.rs`).
//!
//! Nothing depends on this crate. It talks to orderd only over HTTP and through `/proc`; the
//! only crate of the workspace it uses is `orderd-storage`, for the storage ceiling (the same
//! group commit orderd uses, driven by a bare handler) and to read the records a real orderd
//! stored.

pub mod ceiling;
pub mod events;
pub mod issuer;
pub mod loadgen;
pub mod plots;
pub mod procstat;
pub mod report;
pub mod scale;
pub mod search;
pub mod server;
pub mod spike;
pub mod workload;

/// Rounds a float to the nearest integer: negative and NaN give 0, huge values saturate.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // range checked first
pub fn round_u64(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= u64::MAX as f64 {
        u64::MAX
    } else {
        x.round() as u64
    }
}
