//! The spike profile: an open-loop load whose rate steps through phases (e.g. 50 % of the
//! sustained rate, then 300 % for 30 s, then 50 % again), recorded per second.
//!
//! Same rules as `loadgen::run_step`: request `i` of a phase is due at the phase's start plus
//! `i / rate`, whatever happened to earlier ones, and latency runs from that due time to the
//! last byte of the answer (queueing in the pool or the server is counted, no coordinated
//! omission). Unlike a step, a request the client has waited `timeout` for is given up and
//! counted as `timeout`, as a caller with a deadline would. Each second of the profile (by due
//! time) records the requests due, the accepted ones (the expected status) with their latency
//! percentiles, and the refused ones by kind (HTTP status, `io`, `timeout`).
//!
//! The pool opens `connections` at the start and more on demand, up to `connections_max` in
//! flight: a spike comes from many callers, so its excess must reach the server, whose admission
//! bounds decide what to refuse. With a fixed pool the excess would wait in this process, and
//! the oldest waiter would get each freed connection with almost none of its deadline left:
//! sent, then given up in flight (its connection dropped, the server's work wasted), so that
//! hardly anything is answered in time however fast the server refuses.

use crate::loadgen::{call, connect, Conn, RequestSource};
use hdrhistogram::Histogram;
use hyper::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Highest latency recorded (the timeout caps it anyway).
const LATENCY_MAX_US: u64 = 120_000_000;

/// One phase of the profile.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub rate: u64,
    pub secs: u64,
}

#[derive(Debug, Clone)]
pub struct ProfileConfig {
    pub phases: Vec<Phase>,
    /// Connections opened before the profile starts.
    pub connections: usize,
    /// Most requests in flight, each on a connection of its own (at least `connections`).
    pub connections_max: usize,
    /// A request not answered this long after its due time is given up (`timeout`).
    pub timeout: Duration,
    pub expect: StatusCode,
    pub seq_base: u64,
}

/// The figures of one second of the profile (requests by due time).
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the profile started.
    pub t_s: u64,
    pub phase: String,
    pub offered_rate: u64,
    /// Requests due in this second.
    pub sent: u64,
    /// Of those, answered with the expected status.
    pub accepted: u64,
    /// Expected answers that arrived in this second (throughput as the caller sees it).
    pub accepted_completed: u64,
    /// Failed requests by kind: HTTP status, `io` or `timeout`.
    pub refused: BTreeMap<String, u64>,
    /// Refused over sent.
    pub refused_share: f64,
    /// Latency of the accepted requests, due time to answer.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The whole profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileResult {
    pub phases: Vec<Phase>,
    pub connections: usize,
    pub connections_max: usize,
    pub timeout_ms: f64,
    pub seconds: Vec<Second>,
}

struct Bucket {
    sent: u64,
    accepted: u64,
    accepted_completed: u64,
    refused: BTreeMap<String, u64>,
    latency: Histogram<u64>,
}

struct Shared {
    addr: SocketAddr,
    source: Arc<dyn RequestSource>,
    expect: StatusCode,
    start: Instant,
    timeout: Duration,
    conns: Mutex<Vec<Conn>>,
    permits: Semaphore,
    buckets: Mutex<Vec<Bucket>>,
}

impl Shared {
    fn second(&self, t: Instant) -> usize {
        usize::try_from(t.saturating_duration_since(self.start).as_secs()).unwrap_or(usize::MAX)
    }

    fn with_bucket(&self, second: usize, f: impl FnOnce(&mut Bucket)) {
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = b.get_mut(second) {
            f(b);
        }
    }

    fn refuse(&self, second: usize, kind: String) {
        self.with_bucket(second, |b| *b.refused.entry(kind).or_insert(0) += 1);
    }
}

/// Takes a pooled connection (or opens one), sends, and puts it back when the exchange ended
/// cleanly. Dropped midway (timeout), the connection is dropped with it and the pool refills
/// on a later request.
async fn exchange(
    shared: &Shared,
    req: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> Result<StatusCode, String> {
    let _permit = shared.permits.acquire().await.map_err(|e| e.to_string())?;
    let pooled = shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let mut conn = match pooled {
        Some(c) => c,
        None => connect(shared.addr).await.map_err(|e| e.to_string())?,
    };
    let (status, _) = call(&mut conn, req).await.map_err(|e| e.to_string())?;
    shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(conn);
    Ok(status)
}

async fn fire(shared: Arc<Shared>, seq: u64, intended: Instant) {
    let second = shared.second(intended);
    let (_, req) = shared.source.request(seq);
    let deadline = tokio::time::Instant::from_std(intended + shared.timeout);
    let result = tokio::time::timeout_at(deadline, exchange(&shared, req)).await;
    let done = Instant::now();
    match result {
        Ok(Ok(status)) if status == shared.expect => {
            let us = u64::try_from(done.duration_since(intended).as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, LATENCY_MAX_US);
            shared.with_bucket(second, |b| {
                b.accepted += 1;
                b.latency.saturating_record(us);
            });
            shared.with_bucket(shared.second(done), |b| b.accepted_completed += 1);
        }
        Ok(Ok(status)) => shared.refuse(second, status.as_u16().to_string()),
        Ok(Err(_)) => shared.refuse(second, "io".into()),
        Err(_) => shared.refuse(second, "timeout".into()),
    }
}

/// Runs the phases back to back against `addr` and returns one [`Second`] per second.
pub async fn run_profile(
    addr: SocketAddr,
    source: Arc<dyn RequestSource>,
    cfg: &ProfileConfig,
) -> anyhow::Result<ProfileResult> {
    anyhow::ensure!(
        cfg.phases.iter().all(|p| p.rate > 0 && p.secs > 0),
        "every phase needs a rate and a length"
    );
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        conns.push(connect(addr).await?);
    }
    let total_secs: u64 = cfg.phases.iter().map(|p| p.secs).sum();
    let start = Instant::now() + Duration::from_millis(20);
    let shared = Arc::new(Shared {
        addr,
        source,
        expect: cfg.expect,
        start,
        timeout: cfg.timeout,
        conns: Mutex::new(conns),
        permits: Semaphore::new(cfg.connections_max.max(cfg.connections)),
        buckets: Mutex::new(
            (0..total_secs)
                .map(|_| Bucket {
                    sent: 0,
                    accepted: 0,
                    accepted_completed: 0,
                    refused: BTreeMap::new(),
                    latency: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                        .expect("valid histogram bounds"),
                })
                .collect(),
        ),
    });
    let mut tasks = JoinSet::new();
    let mut seq = cfg.seq_base;
    let mut phase_start = start;
    for phase in &cfg.phases {
        let n = phase.rate.saturating_mul(phase.secs);
        let due = |i: u64| {
            phase_start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / phase.rate)
        };
        let mut i = 0;
        while i < n {
            let now = Instant::now();
            while i < n && due(i) <= now {
                let intended = due(i);
                shared.with_bucket(shared.second(intended), |b| b.sent += 1);
                tasks.spawn(fire(shared.clone(), seq, intended));
                seq += 1;
                i += 1;
            }
            while tasks.try_join_next().is_some() {}
            if i < n {
                tokio::time::sleep_until(due(i).into()).await;
            }
        }
        phase_start += Duration::from_secs(phase.secs);
    }
    // Every request ends by its timeout at the latest.
    while tasks.join_next().await.is_some() {}
    let buckets = shared
        .buckets
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut seconds = vec![];
    let mut t = 0;
    for phase in &cfg.phases {
        for _ in 0..phase.secs {
            let Some(b) = buckets.get(usize::try_from(t).unwrap_or(usize::MAX)) else {
                break;
            };
            let refused: u64 = b.refused.values().sum();
            let ms = |q: f64| b.latency.value_at_quantile(q) as f64 / 1000.0;
            let empty = b.latency.is_empty();
            seconds.push(Second {
                t_s: t,
                phase: phase.name.clone(),
                offered_rate: phase.rate,
                sent: b.sent,
                accepted: b.accepted,
                accepted_completed: b.accepted_completed,
                refused: b.refused.clone(),
                refused_share: refused as f64 / b.sent.max(1) as f64,
                p50_ms: if empty { 0.0 } else { ms(0.5) },
                p99_ms: if empty { 0.0 } else { ms(0.99) },
                max_ms: if empty {
                    0.0
                } else {
                    b.latency.max() as f64 / 1000.0
                },
            });
            t += 1;
        }
    }
    Ok(ProfileResult {
        phases: cfg.phases.clone(),
        connections: cfg.connections,
        connections_max: cfg.connections_max.max(cfg.connections),
        timeout_ms: cfg.timeout.as_secs_f64() * 1000.0,
        seconds,
    })
}

impl ProfileResult {
    /// Accepted-latency p99 (worst second) and refused share of the requests due in the phase
    /// named `name`.
    pub fn phase_summary(&self, name: &str) -> Option<(f64, f64)> {
        let secs: Vec<&Second> = self.seconds.iter().filter(|s| s.phase == name).collect();
        if secs.is_empty() {
            return None;
        }
        let worst_p99 = secs.iter().map(|s| s.p99_ms).fold(0.0, f64::max);
        let sent: u64 = secs.iter().map(|s| s.sent).sum();
        let refused: u64 = secs.iter().map(|s| s.refused.values().sum::<u64>()).sum();
        Some((worst_p99, refused as f64 / sent.max(1) as f64))
    }
}
