//! `orderd-bench-events`: event lag under the capture benchmark's load, and what NATS costs.
//!
//! Runs orderd at a fixed open-loop rate (default 3,200 orders/s: 80% of the 4,000/s the full
//! capture benchmark sustained, see the README's speed table) with the same order mix, in two
//! variants, alternating `--runs` times (A B, B A, ...) so both see the same machine:
//!
//! - `plain`: orderd alone (the in-process event bus only);
//! - `nats`: orderd publishing to a fresh `nats-server` with JetStream.
//!
//! In both an operator's SSE client follows `GET /v1/events/stream` (every account's events);
//! in `nats` a NATS subscriber follows `orderd.orders.>` too. With `--webhooks N` the first N
//! accounts each register a webhook endpoint (every event type) that delivers to a receiver in
//! this process, in both variants. Each records the lag of every
//! event from its change (see `orderd_benches::events`). The report gives, as medians over the
//! runs, capture latency of both variants and their p99 ratio, and the lag percentiles at the
//! SSE client and the NATS subscriber, against the targets (lag p99 under 50 ms, capture p99
//! with NATS at most 10% above without). `--quick` checks that it all works in a few seconds.

use anyhow::Context;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use orderd_benches::events::{self, LagRecorder, NatsServer};
use orderd_benches::loadgen::{self, Criteria, Latency, StepConfig, StepResult};
use orderd_benches::report::median;
use orderd_benches::server::{self, Daemon};
use orderd_benches::workload::{BodyPool, Dataset, Mix};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Each of orderd's streams keeps at most this much in a run (a full run stores less).
const STREAM_BYTES_MAX: u64 = 256 << 20;
/// Event lag p99 the issue asks for, at the SSE client and the NATS subscriber.
const LAG_P99_TARGET_MS: f64 = 50.0;
/// Capture p99 with NATS over without, at most.
const CAPTURE_RATIO_TARGET: f64 = 1.10;
/// After the load stops, how long the listeners may take to receive the last events.
const DRAIN_MAX: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "orderd-bench-events",
    about = "Event lag (change to NATS subscriber and SSE client) under load, and capture latency with and without NATS"
)]
struct Args {
    /// The orderd binary (default: `orderd` next to this binary).
    #[arg(long)]
    orderd: Option<PathBuf>,
    /// The nats-server binary (Debian's package installs it on the PATH).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Where report.json and report.md go.
    #[arg(long, default_value = "target/bench-events")]
    out: PathBuf,
    /// Orders per second (open loop).
    #[arg(long, default_value_t = 3_200)]
    rate: u64,
    /// Measured seconds per run and variant.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    #[arg(long, default_value_t = 3)]
    warmup_secs: u64,
    /// Runs of each variant, alternating.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A few seconds at a low rate, one run: checks that everything works.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value = "1:70,10:25,100:5")]
    mix: String,
    #[arg(long, default_value_t = 2_000)]
    skus: usize,
    #[arg(long, default_value_t = 500)]
    accounts: usize,
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// Parent of the data directories (a real disk: fsync is part of the latency).
    #[arg(long)]
    data_root: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Webhook endpoints: one for each of the first N accounts, delivering to this process.
    #[arg(long, default_value_t = 0)]
    webhooks: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Variant {
    Plain,
    Nats,
}

/// One run of one variant.
#[derive(Debug, Serialize)]
struct RunResult {
    variant: Variant,
    capture: StepResult,
    sse_lag: Latency,
    sse_received: u64,
    nats_lag: Option<Latency>,
    nats_received: Option<u64>,
    webhook_lag: Option<Latency>,
    webhook_received: Option<u64>,
}

/// Medians over the runs of one variant.
#[derive(Debug, Serialize)]
struct Summary {
    variant: Variant,
    capture_p50_ms: f64,
    capture_p99_ms: f64,
    capture_p999_ms: f64,
    achieved_per_s: f64,
    failed: u64,
    server_cores: f64,
    sse_lag_p50_ms: f64,
    sse_lag_p99_ms: f64,
    sse_lag_p999_ms: f64,
    nats_lag_p50_ms: Option<f64>,
    nats_lag_p99_ms: Option<f64>,
    nats_lag_p999_ms: Option<f64>,
    webhook_lag_p50_ms: Option<f64>,
    webhook_lag_p99_ms: Option<f64>,
    webhook_lag_p999_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    rate: u64,
    secs: u64,
    runs: usize,
    mix: String,
    webhooks: usize,
    plain: Summary,
    nats: Summary,
    /// Median capture p99 with NATS over without.
    capture_p99_ratio: f64,
    lag_p99_target_ms: f64,
    capture_ratio_target: f64,
    targets_met: bool,
    all_runs: Vec<RunResult>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    if a.quick {
        (a.rate, a.secs, a.warmup_secs, a.runs) = (300, 3, 1, 1);
    }
    let bin = match &a.orderd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("orderd"),
    };
    anyhow::ensure!(bin.is_file(), "no orderd binary at {}", bin.display());
    let data_root = a.data_root.clone().unwrap_or_else(std::env::temp_dir);
    let dataset = Dataset {
        skus: a.skus,
        accounts: a.accounts.max(1),
        token_accounts: None,
    };
    let mix = Mix::parse(&a.mix, dataset.skus).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    let pool = Arc::new(BodyPool::build(&dataset, &mix, 2_048, a.seed));
    let mut all = vec![];
    for run in 0..a.runs {
        let order = if run % 2 == 0 {
            [Variant::Plain, Variant::Nats]
        } else {
            [Variant::Nats, Variant::Plain]
        };
        for v in order {
            let r = one_run(&a, v, &bin, &data_root, &dataset, pool.clone(), run).await?;
            eprintln!(
                "[{v:?} run {}] capture p50 {:.2} p99 {:.2} ms ({:.0}/s, {} failed); SSE lag p50 {:.2} p99 {:.2} ms ({} events){}{}",
                run + 1,
                r.capture.latency.p50_ms,
                r.capture.latency.p99_ms,
                r.capture.achieved_rate,
                r.capture.error_count(),
                r.sse_lag.p50_ms,
                r.sse_lag.p99_ms,
                r.sse_received,
                r.nats_lag.as_ref().map_or(String::new(), |l| format!(
                    "; NATS lag p50 {:.2} p99 {:.2} ms ({} events)",
                    l.p50_ms,
                    l.p99_ms,
                    r.nats_received.unwrap_or(0)
                )),
                r.webhook_lag.as_ref().map_or(String::new(), |l| format!(
                    "; webhook lag p50 {:.2} p99 {:.2} ms ({} events)",
                    l.p50_ms,
                    l.p99_ms,
                    r.webhook_received.unwrap_or(0)
                ))
            );
            all.push(r);
        }
    }
    let plain = summarize(Variant::Plain, &all);
    let nats = summarize(Variant::Nats, &all);
    let capture_p99_ratio = nats.capture_p99_ms / plain.capture_p99_ms.max(f64::EPSILON);
    let targets_met = nats.sse_lag_p99_ms < LAG_P99_TARGET_MS
        && plain.sse_lag_p99_ms < LAG_P99_TARGET_MS
        && nats.nats_lag_p99_ms.is_some_and(|l| l < LAG_P99_TARGET_MS)
        && capture_p99_ratio <= CAPTURE_RATIO_TARGET;
    let report = Report {
        rate: a.rate,
        secs: a.secs,
        runs: a.runs,
        mix: mix.describe(),
        webhooks: a.webhooks,
        plain,
        nats,
        capture_p99_ratio,
        lag_p99_target_ms: LAG_P99_TARGET_MS,
        capture_ratio_target: CAPTURE_RATIO_TARGET,
        targets_met,
        all_runs: all,
    };
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(
        a.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    let md = markdown(&report);
    std::fs::write(a.out.join("report.md"), &md)?;
    println!("{md}");
    // Quick mode checks that it works, not the figures: every event must have arrived.
    for r in &report.all_runs {
        anyhow::ensure!(
            r.sse_received >= r.capture.ok && r.nats_received.is_none_or(|n| n >= r.capture.ok),
            "events missing: {} orders accepted in the window, SSE got {}, NATS got {:?}",
            r.capture.ok,
            r.sse_received,
            r.nats_received
        );
    }
    Ok(())
}

async fn one_run(
    a: &Args,
    variant: Variant,
    bin: &std::path::Path,
    data_root: &std::path::Path,
    dataset: &Dataset,
    pool: Arc<BodyPool>,
    run: usize,
) -> anyhow::Result<RunResult> {
    let nats = match variant {
        Variant::Nats => Some(NatsServer::start(&a.nats_server, data_root)?),
        Variant::Plain => None,
    };
    let mut env = server::daemon_env(a.connections);
    if let Some(n) = &nats {
        env.push(("ORDERD_NATS__URL".to_owned(), n.url()));
        // JetStream reserves each stream's byte limit from the store's disk (at most 75% of
        // what is free): the default 1 GiB per stream fails to create on a nearly full disk,
        // and a run stores far less.
        env.push((
            "ORDERD_NATS__MAX_BYTES".to_owned(),
            STREAM_BYTES_MAX.to_string(),
        ));
    }
    if a.webhooks > 0 {
        // The receiver is on loopback.
        env.push((
            "ORDERD_WEBHOOKS__ALLOW_PRIVATE".to_owned(),
            "true".to_owned(),
        ));
    }
    let d = Daemon::start(bin, data_root, &env, dataset, None).await?;
    let operator = operator_token(d.addr).await?;
    let warmup = Duration::from_secs(a.warmup_secs);
    let from = SystemTime::now() + warmup;
    let hooks_rec = LagRecorder::new(from);
    let hooks_task = if a.webhooks > 0 {
        let (url, task) = events::webhook_receiver(hooks_rec.clone()).await?;
        server::register_webhooks(d.addr, a.webhooks, &url).await?;
        Some(task)
    } else {
        None
    };
    let sse = LagRecorder::new(from);
    let sse_task = events::follow_sse(d.addr, operator, sse.clone()).await?;
    let nats_rec = LagRecorder::new(from);
    let nats_task = match &nats {
        Some(n) => Some(events::follow_nats(&n.url(), nats_rec.clone()).await?),
        None => None,
    };
    let source = d.order_source(pool, &format!("e{run}"), a.seed)?;
    let cfg = StepConfig {
        rate: a.rate,
        warmup,
        duration: Duration::from_secs(a.secs),
        connections: a.connections,
        drain_max: Duration::from_secs(5),
        expect: StatusCode::CREATED,
        seq_base: 0,
        disk: Some(data_root.to_path_buf()),
    };
    let criteria = Criteria {
        p99_max_ms: 25.0,
        error_max_ratio: 0.001,
        achieved_min_ratio: 0.95,
    };
    let capture = loadgen::run_step(d.addr, Arc::new(source), &cfg, &criteria, Some(d.pid)).await?;
    // Let the last events arrive: until the counts stop growing, at most DRAIN_MAX.
    let count = |r: &Arc<Mutex<LagRecorder>>| r.lock().map(|r| r.received).unwrap_or(0);
    let deadline = Instant::now() + DRAIN_MAX;
    let mut last = (count(&sse), count(&nats_rec), count(&hooks_rec));
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = (count(&sse), count(&nats_rec), count(&hooks_rec));
        if now == last {
            break;
        }
        last = now;
    }
    sse_task.abort();
    for t in [nats_task, hooks_task].into_iter().flatten() {
        t.abort();
    }
    let take = |r: &Arc<Mutex<LagRecorder>>| {
        r.lock()
            .map(|r| (r.latency(), r.received))
            .unwrap_or_default()
    };
    let (sse_lag, sse_received) = take(&sse);
    let (nats_lag, nats_received) = take(&nats_rec);
    let (webhook_lag, webhook_received) = take(&hooks_rec);
    let with_nats = nats.is_some();
    let with_hooks = a.webhooks > 0;
    drop(d);
    Ok(RunResult {
        variant,
        capture,
        sse_lag,
        sse_received,
        nats_lag: with_nats.then_some(nats_lag),
        nats_received: with_nats.then_some(nats_received),
        webhook_lag: with_hooks.then_some(webhook_lag),
        webhook_received: with_hooks.then_some(webhook_received),
    })
}

async fn operator_token(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut conn = loadgen::connect(addr).await?;
    let req = Request::post("/v1/dev/token")
        .header(HOST, "orderd-bench")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({"user": "bench-events", "roles": ["operator"]}).to_string(),
        )))?;
    let (status, body) = loadgen::call(&mut conn, req).await?;
    anyhow::ensure!(status == StatusCode::OK, "POST /v1/dev/token: {status}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let token = v["access_token"].as_str().context("no access_token")?;
    Ok(format!("Bearer {token}"))
}

fn summarize(variant: Variant, all: &[RunResult]) -> Summary {
    let runs: Vec<&RunResult> = all.iter().filter(|r| r.variant == variant).collect();
    let m = |f: &dyn Fn(&RunResult) -> f64| median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
    // The median of `f` of a lag only some variants measure, when every run has it.
    let lag = |of: fn(&RunResult) -> Option<&Latency>, f: fn(&Latency) -> f64| {
        runs.iter()
            .all(|r| of(r).is_some())
            .then(|| m(&|r| of(r).map_or(0.0, f)))
    };
    let nats = |f| lag(|r| r.nats_lag.as_ref(), f);
    let hooks = |f| lag(|r| r.webhook_lag.as_ref(), f);
    Summary {
        variant,
        capture_p50_ms: m(&|r| r.capture.latency.p50_ms),
        capture_p99_ms: m(&|r| r.capture.latency.p99_ms),
        capture_p999_ms: m(&|r| r.capture.latency.p999_ms),
        achieved_per_s: m(&|r| r.capture.achieved_rate),
        failed: runs.iter().map(|r| r.capture.error_count()).sum(),
        server_cores: m(&|r| r.capture.server_cpu.as_ref().map_or(0.0, |c| c.cores())),
        sse_lag_p50_ms: m(&|r| r.sse_lag.p50_ms),
        sse_lag_p99_ms: m(&|r| r.sse_lag.p99_ms),
        sse_lag_p999_ms: m(&|r| r.sse_lag.p999_ms),
        nats_lag_p50_ms: nats(|l| l.p50_ms),
        nats_lag_p99_ms: nats(|l| l.p99_ms),
        nats_lag_p999_ms: nats(|l| l.p999_ms),
        webhook_lag_p50_ms: hooks(|l| l.p50_ms),
        webhook_lag_p99_ms: hooks(|l| l.p99_ms),
        webhook_lag_p999_ms: hooks(|l| l.p999_ms),
    }
}

fn markdown(r: &Report) -> String {
    let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}"));
    let row = |s: &Summary| {
        format!(
            "| {:?} | {:.0} | {:.2} / {:.2} / {:.2} | {} | {:.2} | {:.2} / {:.2} / {:.2} | {} / {} / {} | {} / {} / {} |\n",
            s.variant,
            s.achieved_per_s,
            s.capture_p50_ms,
            s.capture_p99_ms,
            s.capture_p999_ms,
            s.failed,
            s.server_cores,
            s.sse_lag_p50_ms,
            s.sse_lag_p99_ms,
            s.sse_lag_p999_ms,
            opt(s.nats_lag_p50_ms),
            opt(s.nats_lag_p99_ms),
            opt(s.nats_lag_p999_ms),
            opt(s.webhook_lag_p50_ms),
            opt(s.webhook_lag_p99_ms),
            opt(s.webhook_lag_p999_ms),
        )
    };
    let mut md = format!(
        "# Event lag and the cost of NATS\n\n{} orders/s open loop, mix {}, {} s measured per run, {} runs per variant (alternating); medians over the runs. Webhook endpoints: {} (one per account). Lag runs from the change's time (just before its durable commit) to the event's arrival.\n\n",
        r.rate, r.mix, r.secs, r.runs, r.webhooks
    );
    md.push_str("| variant | achieved/s | capture p50 / p99 / p99.9 ms | failed | orderd cores | SSE lag p50 / p99 / p99.9 ms | NATS lag p50 / p99 / p99.9 ms | webhook lag p50 / p99 / p99.9 ms |\n|---|---|---|---|---|---|---|---|\n");
    md.push_str(&row(&r.plain));
    md.push_str(&row(&r.nats));
    md.push_str(&format!(
        "\nCapture p99 with NATS / without: **{:.2}** (target at most {:.2}). Lag p99 target: under {:.0} ms. Targets met: **{}**.\n",
        r.capture_p99_ratio, r.capture_ratio_target, r.lag_p99_target_ms, r.targets_met
    ));
    md
}
