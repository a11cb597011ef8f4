//! Open-loop HTTP load generator.
//!
//! Request `i` of a step is due at `start + i / rate`, whatever happened to earlier ones: the
//! scheduler spawns one task per request at its due time (it wakes on tokio's 1 ms timer and
//! sends every request that has come due), and the task takes a keep-alive HTTP/1.1
//! connection from a fixed pool, waiting in FIFO order when all are busy. Latency runs from
//! the INTENDED send time to the last byte of the response, so time spent queueing - in the
//! server, in the pool, or behind a late scheduler - is counted, never hidden (no coordinated
//! omission).
//!
//! The client is hyper's bare HTTP/1.1 connection API (no pooling layer, no redirects, no
//! decompression): it shares the machine with the server under test, so it must be cheap.
//! `StepResult::loadgen_cpu` says how cheap it was.

use crate::procstat::{self, CpuDelta};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub type Conn = SendRequest<Full<Bytes>>;

/// Highest latency the histograms hold (longer ones are clamped to it).
const LATENCY_MAX_US: u64 = 120_000_000;
/// Characters kept of the first error body per status, for the report.
const ERROR_SAMPLE_CHARS_MAX: usize = 300;

/// Opens one keep-alive HTTP/1.1 connection (TCP_NODELAY); its driver runs as a task.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the connection closes; an error here shows up at the sender too.
        let _ = conn.await;
    });
    Ok(send)
}

/// Sends one request on `conn` and reads the whole response.
pub async fn call(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    conn.ready().await?;
    let resp = conn.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Builds the requests of a step.
pub trait RequestSource: Send + Sync + 'static {
    /// Request number `seq` of the step and its size class (an index into `class_labels`).
    fn request(&self, seq: u64) -> (usize, Request<Full<Bytes>>);
    /// Names of the size classes, e.g. `1 line`.
    fn class_labels(&self) -> Vec<String>;
}

/// When a step counts as sustained.
#[derive(Debug, Clone, Serialize)]
pub struct Criteria {
    pub p99_max_ms: f64,
    /// Failed requests (any answer but the expected status, I/O errors, unfinished) over
    /// requests due in the window.
    pub error_max_ratio: f64,
    /// Successful completions per second inside the window over the target rate.
    pub achieved_min_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct StepConfig {
    pub rate: u64,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    /// After the last request is due, how long to wait for answers before giving up on the
    /// rest (they count as `unfinished`).
    pub drain_max: Duration,
    pub expect: StatusCode,
    /// Request `i` of the step is `seq_base + i` for the source: give every step its own
    /// range, so idempotency keys never repeat on one server.
    pub seq_base: u64,
    /// A path on the disk the server writes to: its device's writes are measured.
    pub disk: Option<std::path::PathBuf>,
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassLatency {
    pub class: String,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub pass: bool,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
}

/// Everything measured in one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub target_rate: u64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub connections: usize,
    /// Requests due inside the measurement window.
    pub scheduled: u64,
    /// Of those, answered with the expected status.
    pub ok: u64,
    /// Expected answers received inside the window, per second of window.
    pub achieved_rate: f64,
    /// Failures of requests due in the window, by HTTP status, `io` or `unfinished`.
    pub errors: BTreeMap<String, u64>,
    /// The first answer of each failing status (truncated).
    pub error_samples: BTreeMap<String, String>,
    /// Intended send time -> whole expected answer received.
    pub latency: Latency,
    pub classes: Vec<ClassLatency>,
    /// Intended send time -> a pooled connection was free (part of the latency).
    pub pool_wait: Latency,
    /// Worst delay between a request's due time and the scheduler sending it (part of the
    /// latency; tokio's timer wheel has 1 ms resolution).
    pub dispatch_lag_max_ms: f64,
    /// CPU of this process (the load generator) during the window.
    pub loadgen_cpu: Option<CpuDelta>,
    /// CPU of the server process during the window.
    pub server_cpu: Option<CpuDelta>,
    /// Cores busy on the whole machine during the window (every process).
    pub machine_busy_cores: Option<f64>,
    /// Cores busy with other processes than the server and the load generator: noise from
    /// whatever else runs on the machine.
    pub other_cores: Option<f64>,
    /// Cores the hypervisor stole during the window.
    pub steal_cores: Option<f64>,
    /// Bytes written to the server's disk during the window (the whole device: other
    /// processes' writes count too).
    pub device_written_bytes: Option<u64>,
    pub verdict: Verdict,
}

impl StepResult {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Server CPU microseconds per expected answer inside the window.
    pub fn server_cpu_us_per_ok(&self) -> Option<f64> {
        let cpu = self.server_cpu.as_ref()?;
        let ok = self.achieved_rate * cpu.wall_s;
        (ok > 0.0).then(|| cpu.cpu_s * 1e6 / ok)
    }

    /// Load-generator CPU microseconds per request sent.
    pub fn loadgen_cpu_us_per_request(&self) -> Option<f64> {
        let cpu = self.loadgen_cpu.as_ref()?;
        let sent = self.target_rate as f64 * cpu.wall_s;
        (sent > 0.0).then(|| cpu.cpu_s * 1e6 / sent)
    }

    fn judge(&mut self, c: &Criteria) {
        let mut reasons = vec![];
        if self.latency.p99_ms > c.p99_max_ms {
            reasons.push(format!(
                "p99 {:.1} ms > {} ms",
                self.latency.p99_ms, c.p99_max_ms
            ));
        }
        let errors = self.error_count();
        if errors as f64 > c.error_max_ratio * self.scheduled as f64 {
            reasons.push(format!(
                "{errors} failed of {} ({:.2}%)",
                self.scheduled,
                100.0 * errors as f64 / self.scheduled.max(1) as f64
            ));
        }
        if self.achieved_rate < c.achieved_min_ratio * self.target_rate as f64 {
            reasons.push(format!(
                "achieved {:.0}/s < {:.0}% of {}/s",
                self.achieved_rate,
                c.achieved_min_ratio * 100.0,
                self.target_rate
            ));
        }
        if self.ok == 0 {
            reasons.push("nothing succeeded".into());
        }
        self.verdict = Verdict {
            pass: reasons.is_empty(),
            reasons,
        };
    }
}

struct Recorder {
    overall: Histogram<u64>,
    classes: Vec<Histogram<u64>>,
    pool_wait: Histogram<u64>,
    scheduled: u64,
    ok: u64,
    ok_completed_in_window: u64,
    errors: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
}

impl Recorder {
    /// A request due in the window failed.
    fn error(&mut self, kind: String, sample: impl FnOnce() -> String) {
        self.scheduled += 1;
        *self.errors.entry(kind.clone()).or_insert(0) += 1;
        self.error_samples.entry(kind).or_insert_with(|| {
            let mut s = sample();
            if let Some((cut, _)) = s.char_indices().nth(ERROR_SAMPLE_CHARS_MAX) {
                s.truncate(cut);
            }
            s
        });
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, LATENCY_MAX_US)
}

struct Shared {
    addr: SocketAddr,
    source: Arc<dyn RequestSource>,
    expect: StatusCode,
    window_start: Instant,
    window_end: Instant,
    conns: Mutex<Vec<Conn>>,
    permits: Semaphore,
    rec: Mutex<Recorder>,
}

impl Shared {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.window_start && t < self.window_end
    }

    fn rec(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.rec
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts a request as `unfinished` if its task is dropped (aborted) before it ends.
struct Unfinished {
    shared: Arc<Shared>,
    counted: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.counted {
            self.shared.rec().error("unfinished".into(), || {
                "no answer before the drain deadline".into()
            });
        }
    }
}

async fn fire(shared: Arc<Shared>, seq: u64, intended: Instant) {
    let in_window = shared.in_window(intended);
    let mut guard = Unfinished {
        shared: shared.clone(),
        counted: in_window,
    };
    let (class, req) = shared.source.request(seq);
    let Ok(permit) = shared.permits.acquire().await else {
        return;
    };
    let got_conn = Instant::now();
    // A connection idle for longer than orderd's `api.header_read_timeout_ms` was closed by
    // orderd: that is not an error of the request about to be sent, so it gets a new one.
    let pooled = (shared.conns.lock())
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
        .filter(|c| !c.is_closed());
    let mut conn = match pooled {
        Some(c) => c,
        None => match connect(shared.addr).await {
            Ok(c) => c,
            Err(e) => {
                guard.counted = false;
                if in_window {
                    shared.rec().error("io".into(), || format!("connect: {e}"));
                }
                permit.forget(); // the pool is one connection smaller
                return;
            }
        },
    };
    let result = call(&mut conn, req).await;
    let done = Instant::now();
    // A broken connection is replaced so the pool keeps its size; if that fails too, the pool
    // is one connection smaller for the rest of the step.
    let keep = match &result {
        Ok(_) => Some(conn),
        Err(_) => connect(shared.addr).await.ok(),
    };
    match keep {
        Some(c) => {
            shared
                .conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(c);
            drop(permit);
        }
        None => permit.forget(),
    }
    guard.counted = false;
    let mut rec = shared.rec();
    let ok = matches!(&result, Ok((s, _)) if *s == shared.expect);
    if ok && shared.in_window(done) {
        rec.ok_completed_in_window += 1;
    }
    if !in_window {
        return;
    }
    match result {
        Ok((status, _)) if status == shared.expect => {
            rec.scheduled += 1;
            rec.ok += 1;
            let us = micros(done.duration_since(intended));
            rec.overall.saturating_record(us);
            if let Some(h) = rec.classes.get_mut(class) {
                h.saturating_record(us);
            }
            rec.pool_wait
                .saturating_record(micros(got_conn.duration_since(intended)));
        }
        Ok((status, body)) => rec.error(status.as_u16().to_string(), || {
            String::from_utf8_lossy(&body).into_owned()
        }),
        Err(e) => rec.error("io".into(), || e.to_string()),
    }
}

/// Runs one step at a fixed rate against `addr`: warm-up, then the measured window, then a
/// bounded drain. `server_pid` is sampled for CPU at the window's edges.
pub async fn run_step(
    addr: SocketAddr,
    source: Arc<dyn RequestSource>,
    cfg: &StepConfig,
    criteria: &Criteria,
    server_pid: Option<u32>,
) -> anyhow::Result<StepResult> {
    anyhow::ensure!(cfg.rate > 0, "the rate must be above 0");
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        conns.push(connect(addr).await?);
    }
    let classes = source.class_labels();
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + cfg.warmup;
    let window_end = window_start + cfg.duration;
    let shared = Arc::new(Shared {
        addr,
        source,
        expect: cfg.expect,
        window_start,
        window_end,
        conns: Mutex::new(conns),
        permits: Semaphore::new(cfg.connections),
        rec: Mutex::new(Recorder {
            overall: histogram(),
            classes: classes.iter().map(|_| histogram()).collect(),
            pool_wait: histogram(),
            scheduled: 0,
            ok: 0,
            ok_completed_in_window: 0,
            errors: BTreeMap::new(),
            error_samples: BTreeMap::new(),
        }),
    });
    let total_ns = u64::try_from((cfg.warmup + cfg.duration).as_nanos()).unwrap_or(u64::MAX);
    let total =
        total_ns / 1_000_000_000 * cfg.rate + (total_ns % 1_000_000_000) * cfg.rate / 1_000_000_000;
    let due = |i: u64| start + Duration::from_nanos(i.saturating_mul(1_000_000_000) / cfg.rate);
    let mut tasks = JoinSet::new();
    let mut lag_max = Duration::ZERO;
    let mut before = None;
    let mut i = 0;
    while i < total {
        let now = Instant::now();
        if before.is_none() && now >= window_start {
            before = Some((
                samples(server_pid),
                cfg.disk.as_deref().and_then(procstat::device_written_bytes),
            ));
        }
        while i < total {
            let intended = due(i);
            if intended > now {
                break;
            }
            if shared.in_window(intended) {
                lag_max = lag_max.max(now.duration_since(intended));
            }
            tasks.spawn(fire(shared.clone(), cfg.seq_base + i, intended));
            i += 1;
        }
        while tasks.try_join_next().is_some() {}
        if i < total {
            tokio::time::sleep_until(due(i).into()).await;
        }
    }
    // The last request is due just before the window's end.
    tokio::time::sleep_until(window_end.into()).await;
    let after = samples(server_pid);
    let disk_after = cfg.disk.as_deref().and_then(procstat::device_written_bytes);
    let (before, disk_before) = before.unwrap_or_else(|| (after.clone(), disk_after));
    let deadline = tokio::time::Instant::now() + cfg.drain_max;
    while !tasks.is_empty() {
        if tokio::time::timeout_at(deadline, tasks.join_next())
            .await
            .is_err()
        {
            tasks.shutdown().await; // drops the rest: each counts as unfinished
            break;
        }
    }
    let window = cfg.duration.as_secs_f64();
    let delta = |a: &Option<procstat::ProcSample>, b: &Option<procstat::ProcSample>| {
        a.as_ref()
            .zip(b.as_ref())
            .map(|(a, b)| procstat::delta(a, b))
    };
    let loadgen_cpu = delta(&before.0, &after.0);
    let server_cpu = delta(&before.1, &after.1);
    let machine = before
        .2
        .zip(after.2)
        .map(|(a, b)| procstat::machine_cores(&a, &b));
    let ours = |c: &Option<CpuDelta>| c.as_ref().map_or(0.0, CpuDelta::cores);
    let other_cores =
        machine.map(|(busy, _)| (busy - ours(&loadgen_cpu) - ours(&server_cpu)).max(0.0));
    let rec = shared.rec();
    let mut result = StepResult {
        target_rate: cfg.rate,
        warmup_s: cfg.warmup.as_secs_f64(),
        duration_s: window,
        connections: cfg.connections,
        scheduled: rec.scheduled,
        ok: rec.ok,
        achieved_rate: rec.ok_completed_in_window as f64 / window,
        errors: rec.errors.clone(),
        error_samples: rec.error_samples.clone(),
        latency: Latency::of(&rec.overall),
        classes: classes
            .into_iter()
            .zip(&rec.classes)
            .map(|(class, h)| ClassLatency {
                class,
                latency: Latency::of(h),
            })
            .collect(),
        pool_wait: Latency::of(&rec.pool_wait),
        dispatch_lag_max_ms: lag_max.as_secs_f64() * 1000.0,
        loadgen_cpu,
        server_cpu,
        machine_busy_cores: machine.map(|m| m.0),
        other_cores,
        steal_cores: machine.map(|m| m.1),
        device_written_bytes: disk_before
            .zip(disk_after)
            .map(|(a, b)| b.saturating_sub(a)),
        verdict: Verdict {
            pass: false,
            reasons: vec![],
        },
    };
    drop(rec);
    result.judge(criteria);
    Ok(result)
}

type ProcPair = (
    Option<procstat::ProcSample>,
    Option<procstat::ProcSample>,
    Option<procstat::MachineSample>,
);

fn samples(server_pid: Option<u32>) -> ProcPair {
    (
        procstat::sample(None).ok(),
        server_pid.and_then(|p| procstat::sample(Some(p)).ok()),
        procstat::machine().ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The verdict names every broken criterion and passes a clean step.
    #[test]
    fn verdict_names_every_broken_criterion() {
        let criteria = Criteria {
            p99_max_ms: 25.0,
            error_max_ratio: 0.001,
            achieved_min_ratio: 0.95,
        };
        let mut step = StepResult {
            target_rate: 1000,
            warmup_s: 1.0,
            duration_s: 10.0,
            connections: 8,
            scheduled: 10_000,
            ok: 9_990,
            achieved_rate: 999.0,
            errors: BTreeMap::from([("429".to_owned(), 10)]),
            error_samples: BTreeMap::new(),
            latency: Latency {
                p99_ms: 3.0,
                ..Latency::default()
            },
            classes: vec![],
            pool_wait: Latency::default(),
            dispatch_lag_max_ms: 0.0,
            loadgen_cpu: None,
            server_cpu: None,
            machine_busy_cores: None,
            other_cores: None,
            steal_cores: None,
            device_written_bytes: None,
            verdict: Verdict {
                pass: false,
                reasons: vec![],
            },
        };
        step.judge(&criteria);
        assert!(step.verdict.pass, "{:?}", step.verdict);
        step.errors.insert("io".into(), 1);
        step.latency.p99_ms = 30.0;
        step.achieved_rate = 900.0;
        step.judge(&criteria);
        assert!(!step.verdict.pass);
        assert_eq!(step.verdict.reasons.len(), 3, "{:?}", step.verdict.reasons);
    }
}
