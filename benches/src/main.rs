//! `orderd-bench`: the capture benchmark suite. One command runs all of it and writes
//! `report.json` (machine-readable), `report.md` (readable) and SVG plots to `--out`.
//!
//! 1. Measures what orderd stores per order of each size (one order per size on a daemon of
//!    its own, read back from its journal after `kill -9`), for the storage ceiling.
//! 2. Searches the highest rate of `POST /v1/orders` that orderd sustains (p99 capture latency
//!    within the limit, almost no failures, the target rate achieved), open loop, with a mix of
//!    order sizes; and the same for two ceilings of this machine, driven by the same load
//!    generator: the HTTP ceiling (a bare axum server that only parses the body) and the
//!    storage ceiling (`sled-ceiling`: the same server that then commits the same records
//!    through orderd's own journal, group commit and fdatasync included, before answering).
//!    Searches are interleaved so all see the same machine.
//! 3. Runs each at `--load-pct` % of its sustained max, several times, and the ceilings also at
//!    orderd's rate; reports medians and orderd's sustained max and p99 as ratios of both
//!    ceilings.
//! 4. Measures CPU per order for 1-line and 100-line orders at fixed rates, per thread group of
//!    the daemon, and runs the same daemon repeatedly to show the effect of stored state.
//! 5. Spike profile: orderd at `--spike-base-pct` % of its sustained max, then
//!    `--spike-pct` % for `--spike-secs` s, then back; per second: accepted throughput,
//!    p50/p99 of accepted orders, share refused (HTTP status, I/O error, client timeout).
//! 6. Scale: a generated data set of `--scale-accounts` accounts and `--scale-skus` SKUs:
//!    load time, start-up time, memory idle and per account actor, and recovery time after
//!    `kill -9` at growing store sizes.
//! 7. Writes `report.json`, `report.md`, `spike-latency.svg`, `spike-refused.svg` and
//!    `latency-vs-rate.svg` to `--out`.
//!
//! Every order goes through the one HTTP capture channel orderd has (`POST /v1/orders`, JSON;
//! its `channel` field only labels the order), so the mix is a mix of order sizes.
//!
//! `--oidc` does the same with real signed tokens (RS256 at+jwt from the benchmark's own issuer
//! on loopback) instead of orderd's development tokens, to show what token validation costs.
//!
//! `--quick` does all of it with short steps, one search and a small scale test in about two
//! minutes, so the test script can keep the benchmark from rotting. `orderd-bench ceiling`
//! (hidden) is the ceiling server the benchmark spawns.

mod findings;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hyper::header::HeaderValue;
use hyper::StatusCode;
use orderd_benches::issuer::BenchIssuer;
use orderd_benches::loadgen::{self, Criteria, RequestSource, StepConfig, StepResult};
use orderd_benches::report::{
    self, AgingPoint, CeilingRatio, CostRow, IssueCheck, Machine, Report, RunFigures, Setup,
    StepRecord, TargetSummary, Timings,
};
use orderd_benches::scale::{self, ScaleConfig, ScaleResult};
use orderd_benches::search::RateSearch;
use orderd_benches::server::{self, Ceiling, Daemon};
use orderd_benches::spike::{self, Phase, ProfileConfig, ProfileResult};
use orderd_benches::workload::{BodyPool, Dataset, Mix, OrderSource};
use orderd_benches::{ceiling, round_u64};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the issue asks of orderd.
pub const SUSTAINED_REQUIRED: u64 = 10_000;
/// Bodies built per order size before the run.
const BODIES_PER_CLASS: usize = 2_048;
/// Length of the ceiling's stand-in bearer header until an orderd token is seen (a dev token
/// with its `Bearer ` prefix is about this long).
const FAKE_TOKEN_LEN: usize = 300;
/// Lowest and highest rate a search tries.
const RATE_MIN: u64 = 100;
const RATE_MAX: u64 = 400_000;

#[derive(Parser)]
#[command(
    name = "orderd-bench",
    about = "Open-loop capture benchmark of orderd against the bare-HTTP ceiling",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP ceiling (the benchmark starts this itself) and print `listening ADDR`.
    #[command(hide = true)]
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Storage ceiling: also commit each order's records to orderd's journal in this
        /// directory before answering.
        #[arg(long, requires = "records")]
        sled: Option<PathBuf>,
        /// The record shapes (JSON list of `ceiling::RecordShape`) for --sled.
        #[arg(long)]
        records: Option<String>,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The orderd binary (default: `orderd` next to this binary).
    #[arg(long)]
    orderd: Option<PathBuf>,
    /// Where report.json and report.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Short steps, one search, one run: well under two minutes.
    #[arg(long)]
    quick: bool,
    /// Parent of the daemons' data directories (must be a real disk: fsync is measured).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Order sizes and their weights: LINES:PERCENT,...
    #[arg(long, default_value = "1:70,10:25,100:5")]
    mix: String,
    #[arg(long, default_value_t = 2_000)]
    skus: usize,
    #[arg(long, default_value_t = 500)]
    accounts: usize,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// Threads of the load generator's runtime (1: a current-thread runtime). With one
    /// thread the generator itself tops out near 25,000 requests/s on two cores and would
    /// cap the ceiling; with two it reaches about 40,000.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    #[arg(long, default_value_t = 25.0)]
    p99_max_ms: f64,
    #[arg(long, default_value_t = 0.1)]
    error_max_pct: f64,
    #[arg(long, default_value_t = 95.0)]
    achieved_min_pct: f64,
    /// The runs' rate, in percent of the sustained max.
    #[arg(long, default_value_t = 80)]
    load_pct: u32,
    /// Searches per target (default: 3; quick: 1).
    #[arg(long)]
    searches: Option<usize>,
    /// Runs per target at the load rate (default: 3; quick: 1).
    #[arg(long)]
    runs: Option<usize>,
    /// Extra runs on the last run's daemon, to show the effect of stored orders (default: 2;
    /// quick: 0).
    #[arg(long)]
    aging_runs: Option<usize>,
    /// First rate of the first search.
    #[arg(long, default_value_t = 2_000)]
    start_rate: u64,
    /// Use one orderd for every step instead of a fresh one per step (quick: always).
    #[arg(long)]
    reuse_daemon: bool,
    /// Only orderd (no ceiling).
    #[arg(long)]
    skip_ceiling: bool,
    /// Other processes may use this many cores during a step; a failing step above it is
    /// repeated (up to --noise-retries times) once the machine is quiet again.
    #[arg(long, default_value_t = 0.25)]
    noise_max_cores: f64,
    /// (default: 2; quick: 0)
    #[arg(long)]
    noise_retries: Option<usize>,
    /// Instead of the benchmark: run orderd at this rate with the mix for --fixed-secs (for
    /// profiling the daemon from outside, e.g. with perf).
    #[arg(long)]
    fixed_rate: Option<u64>,
    #[arg(long, default_value_t = 30)]
    fixed_secs: u64,
    /// The target of --fixed-rate: orderd or ceiling.
    #[arg(long, default_value = "orderd")]
    fixed_target: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The spike profile's base rate and spike rate, in percent of orderd's sustained max.
    #[arg(long, default_value_t = 50)]
    spike_base_pct: u32,
    #[arg(long, default_value_t = 300)]
    spike_pct: u32,
    /// Seconds of the spike itself (default: 30; quick: 4); the base phases before and after
    /// keep their mode's lengths.
    #[arg(long)]
    spike_secs: Option<u64>,
    /// During the spike profile a request not answered this long after its due time is given
    /// up and counted as refused (`timeout`), as a caller with a deadline would.
    #[arg(long, default_value_t = 2_000)]
    spike_timeout_ms: u64,
    /// During the spike profile, most requests in flight: the pool grows beyond --connections
    /// on demand, as many callers would (see `spike.rs`).
    #[arg(long, default_value_t = 4_096)]
    spike_connections_max: usize,
    /// Skip the spike profile.
    #[arg(long)]
    skip_spike: bool,
    /// Scale test: accounts and SKUs of the generated data set (default: 100,000 and
    /// 1,000,000; quick: 2,000 and 20,000), accounts given an actor (default 2,000; quick
    /// 100), and store sizes at which recovery after kill -9 is timed (default 4; quick 2).
    #[arg(long)]
    scale_accounts: Option<usize>,
    #[arg(long)]
    scale_skus: Option<usize>,
    #[arg(long)]
    scale_touch: Option<usize>,
    #[arg(long)]
    scale_points: Option<usize>,
    /// Skip the scale test.
    #[arg(long)]
    skip_scale: bool,
    /// Real signed tokens instead of orderd's development tokens: the benchmark serves its own
    /// OIDC discovery document and JWKS on loopback, configures orderd with that issuer and
    /// sends RS256 at+jwt access tokens it minted, one per account.
    #[arg(long)]
    oidc: bool,
}

/// Durations and search shape of a mode.
struct Profile {
    search_warmup: Duration,
    search_window: Duration,
    run_warmup: Duration,
    run_window: Duration,
    cost_window: Duration,
    drain_max: Duration,
    settle_max: Duration,
    resolution: f64,
    steps_max: usize,
    searches: usize,
    runs: usize,
    aging_runs: usize,
    noise_retries: usize,
    /// The spike profile: seconds at the base rate, at the spike rate, and at the base rate
    /// again.
    spike_secs: [u64; 3],
    scale: ScaleConfig,
    /// Seconds of order placement between two recovery points.
    scale_growth_secs: u64,
}

impl Profile {
    fn of(a: &RunArgs) -> Profile {
        let s = Duration::from_secs;
        let base = if a.quick {
            Profile {
                search_warmup: s(1),
                search_window: s(2),
                run_warmup: s(1),
                run_window: s(2),
                cost_window: s(2),
                drain_max: s(2),
                settle_max: s(1),
                resolution: 0.3,
                steps_max: 5,
                searches: 1,
                runs: 1,
                aging_runs: 0,
                noise_retries: 0,
                spike_secs: [2, 3, 3],
                scale: ScaleConfig {
                    accounts: 2_000,
                    skus: 20_000,
                    touch: 100,
                    growth_points: 2,
                    growth_rate: 0,
                    growth_secs: 2,
                },
                scale_growth_secs: 2,
            }
        } else {
            Profile {
                search_warmup: s(2),
                search_window: s(6),
                run_warmup: s(2),
                run_window: s(10),
                cost_window: s(6),
                drain_max: s(5),
                settle_max: s(10),
                resolution: 0.05,
                steps_max: 14,
                searches: 3,
                runs: 3,
                aging_runs: 2,
                noise_retries: 2,
                spike_secs: [20, 30, 40],
                scale: ScaleConfig {
                    accounts: 100_000,
                    skus: 1_000_000,
                    touch: 2_000,
                    growth_points: 4,
                    growth_rate: 0,
                    growth_secs: 20,
                },
                scale_growth_secs: 20,
            }
        };
        Profile {
            searches: a.searches.unwrap_or(base.searches).max(1),
            runs: a.runs.unwrap_or(base.runs).max(1),
            aging_runs: a.aging_runs.unwrap_or(base.aging_runs),
            noise_retries: a.noise_retries.unwrap_or(base.noise_retries),
            spike_secs: [
                base.spike_secs[0],
                a.spike_secs.unwrap_or(base.spike_secs[1]).max(1),
                base.spike_secs[2],
            ],
            scale: ScaleConfig {
                accounts: a.scale_accounts.unwrap_or(base.scale.accounts).max(1),
                skus: a.scale_skus.unwrap_or(base.scale.skus).max(1),
                touch: a.scale_touch.unwrap_or(base.scale.touch),
                growth_points: a.scale_points.unwrap_or(base.scale.growth_points),
                ..base.scale.clone()
            },
            ..base
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Orderd,
    /// The HTTP ceiling: bare axum, parse only.
    Ceiling,
    /// The storage ceiling: bare axum, parse, then orderd's group commit of the same records.
    Sled,
}

impl Which {
    const ALL: [Which; 3] = [Which::Orderd, Which::Ceiling, Which::Sled];

    fn name(self) -> &'static str {
        match self {
            Which::Orderd => "orderd",
            Which::Ceiling => "ceiling",
            Which::Sled => "sled-ceiling",
        }
    }
}

struct Bench {
    args: RunArgs,
    profile: Profile,
    bin: PathBuf,
    data_root: PathBuf,
    dataset: Dataset,
    pool: Arc<BodyPool>,
    criteria: Criteria,
    env: Vec<(String, String)>,
    /// `--oidc`: the issuer orderd trusts and whose tokens the load carries.
    issuer: Option<BenchIssuer>,
    ceiling: Option<Ceiling>,
    sled_ceiling: Option<Ceiling>,
    /// What orderd stores per order of each size class (measured, for the storage ceiling).
    record_shapes: Vec<ceiling::RecordShape>,
    /// Each ceiling's runs at orderd's load rate (median).
    at_orderd_rate: BTreeMap<String, RunFigures>,
    spike: Option<ProfileResult>,
    scale: Option<ScaleResult>,
    shared_daemon: Option<Daemon>,
    /// Tokens of the same length as orderd's, for the ceiling (which ignores them).
    ceiling_tokens: Vec<HeaderValue>,
    steps: Vec<StepRecord>,
    step_no: u64,
    setup_times: Vec<f64>,
    log_warnings: u64,
    log_errors: u64,
}

/// The spike profile opens up to `--spike-connections-max` connections: lifts the soft limit of
/// open files to the hard one (usually 1,024 -> far more), as orderd does for its side.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(hard), Some(soft)) = (limit.maximum, limit.current) {
        if soft < hard {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                eprintln!("could not raise the open files limit from {soft} to {hard}: {e}");
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Ceiling {
        listen,
        sled,
        records,
    }) = cli.command
    {
        return serve_ceiling(listen, sled, records.as_deref());
    }
    let args = cli.run;
    raise_open_files_limit();
    let rt = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args))
}

fn serve_ceiling(
    listen: SocketAddr,
    sled: Option<PathBuf>,
    records: Option<&str>,
) -> anyhow::Result<()> {
    // The benchmark holds our stdin open; end with it (see `server::Ceiling`).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    // Same runtime shape as orderd's: multi-threaded, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sink = match (sled, records) {
        (Some(dir), Some(json)) => {
            let shapes: Vec<ceiling::RecordShape> =
                serde_json::from_str(json).context("--records")?;
            Some(Arc::new(ceiling::SledSink::open(&dir, shapes)?))
        }
        _ => None,
    };
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening {}", listener.local_addr()?);
        std::io::Write::flush(&mut std::io::stdout())?;
        ceiling::serve(listener, sink).await?;
        Ok(())
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let profile = Profile::of(&args);
    let bin = match &args.orderd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("orderd"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "no orderd binary at {} (build it with `cargo build --release -p orderd`, or pass --orderd)",
        bin.display()
    );
    let dataset = Dataset {
        skus: args.skus,
        accounts: args.accounts.max(1),
        token_accounts: None,
    };
    let mix = Mix::parse(&args.mix, dataset.skus).map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    let pool = Arc::new(BodyPool::build(&dataset, &mix, BODIES_PER_CLASS, args.seed));
    let criteria = Criteria {
        p99_max_ms: args.p99_max_ms,
        error_max_ratio: args.error_max_pct / 100.0,
        achieved_min_ratio: args.achieved_min_pct / 100.0,
    };
    let issuer = match args.oidc {
        true => Some(BenchIssuer::start().await?),
        false => None,
    };
    let mut env = server::daemon_env(args.connections);
    if let Some(i) = &issuer {
        env.extend(i.env());
    }
    // Not ORDERD_LOG: `Config::load` reads every ORDERD_* variable as a setting and refuses
    // `log`, so the daemon would not start (the default filter is info, which is what we need).
    let data_root = args.data_root.clone().unwrap_or_else(std::env::temp_dir);
    let mut bench = Bench {
        profile,
        bin,
        data_root,
        dataset,
        pool,
        criteria,
        env,
        issuer,
        ceiling: None,
        sled_ceiling: None,
        record_shapes: vec![],
        at_orderd_rate: BTreeMap::new(),
        spike: None,
        scale: None,
        shared_daemon: None,
        ceiling_tokens: fake_tokens(FAKE_TOKEN_LEN),
        steps: vec![],
        step_no: 0,
        setup_times: vec![],
        log_warnings: 0,
        log_errors: 0,
        args,
    };
    let mut report = bench.all(started).await?;
    std::fs::create_dir_all(&bench.args.out)?;
    report.plots =
        orderd_benches::plots::write_all(&bench.args.out, &report.steps, report.spike.as_ref());
    report.write(&bench.args.out)?;
    println!("{}", report.markdown());
    eprintln!(
        "wrote {} and {}",
        bench.args.out.join("report.json").display(),
        bench.args.out.join("report.md").display()
    );
    Ok(())
}

impl Bench {
    fn fresh_daemons(&self) -> bool {
        !(self.args.quick || self.args.reuse_daemon)
    }

    async fn all(&mut self, started: Instant) -> anyhow::Result<Report> {
        if let Some(rate) = self.args.fixed_rate {
            let pool = self.pool.clone();
            let window = Duration::from_secs(self.args.fixed_secs);
            let warmup = self.profile.search_warmup;
            eprintln!("load generator pid {}", std::process::id());
            if self.args.fixed_target == "ceiling" || self.args.fixed_target == "sled-ceiling" {
                let which = self
                    .start_ceilings(self.args.fixed_target == "sled-ceiling")
                    .await?;
                let c = self.ceiling_of(which)?;
                eprintln!("{} pid {} listening on {}", which.name(), c.1, c.0);
                self.step(which, "fixed", rate, pool, warmup, window)
                    .await?;
            } else {
                let mut d = self.take_daemon().await?;
                eprintln!("orderd pid {} listening on {}", d.pid, d.addr);
                let r = self
                    .run_on(&mut d, "fixed", rate, pool, warmup, window)
                    .await;
                self.retire(d);
                r?;
            }
            return Ok(self.report(started, BTreeMap::new(), vec![], vec![]));
        }
        let with_ceiling = !self.args.skip_ceiling;
        if with_ceiling {
            self.start_ceilings(true).await?;
        }
        // Searches, interleaved so both targets see the same machine. Later searches start
        // near the first result and grow more gently.
        let mut found: BTreeMap<&str, Vec<Option<u64>>> = BTreeMap::new();
        for n in 1..=self.profile.searches {
            for which in Which::ALL {
                if which != Which::Orderd && !with_ceiling {
                    continue;
                }
                let first = found
                    .get(which.name())
                    .and_then(|v| v.first().copied().flatten());
                let orderd_first = found
                    .get(Which::Orderd.name())
                    .and_then(|v| v.first().copied().flatten());
                let (start, growth) = match (first, which, orderd_first) {
                    (Some(f), ..) => (round_u64(f as f64 * 0.85), 1.1),
                    // Quick mode: the storage ceiling starts from orderd's result, coarser.
                    (None, Which::Sled, Some(o)) if self.args.quick => (o, 1.5),
                    (None, ..) => (self.args.start_rate, 2.0),
                };
                let best = self
                    .search(which, &format!("search {n}"), start, growth)
                    .await?;
                eprintln!("== {} search {n}: sustained max {best:?}", which.name());
                found.entry(which.name()).or_default().push(best);
            }
        }
        let mut targets = BTreeMap::new();
        for (name, searches) in &found {
            let values: Vec<f64> = searches.iter().map(|s| s.unwrap_or(0) as f64).collect();
            let sustained_max = Some(round_u64(report::median(&values))).filter(|m| *m > 0);
            let load_rate = round_u64(
                sustained_max.unwrap_or(RATE_MIN) as f64 * f64::from(self.args.load_pct) / 100.0,
            )
            .max(1);
            targets.insert(
                (*name).to_owned(),
                TargetSummary {
                    searches: searches.clone(),
                    sustained_max,
                    load_rate,
                    runs: vec![],
                    median: RunFigures::default(),
                },
            );
        }
        // Runs at the load rate; the last orderd daemon is kept for the aging runs.
        let mut aging = vec![];
        let mut at_orderd_rate: BTreeMap<String, Vec<RunFigures>> = BTreeMap::new();
        let mut kept: Option<Daemon> = None;
        for r in 1..=self.profile.runs {
            for which in Which::ALL {
                let Some(rate) = targets.get(which.name()).map(|t| t.load_rate) else {
                    continue;
                };
                let phase = format!("run {r} at {}%", self.args.load_pct);
                let pool = self.pool.clone();
                let (warmup, window) = (self.profile.run_warmup, self.profile.run_window);
                let result = if which == Which::Orderd && r == self.profile.runs {
                    let mut d = self.take_daemon().await?;
                    let res = self
                        .run_on(&mut d, &phase, rate, pool, warmup, window)
                        .await;
                    kept = Some(d);
                    res?
                } else {
                    self.step(which, &phase, rate, pool, warmup, window).await?
                };
                if let Some(t) = targets.get_mut(which.name()) {
                    t.runs.push(RunFigures::of(&result));
                }
            }
            // The ceilings again at orderd's rate: latency ratios at the same offered load.
            let orderd_rate = targets.get("orderd").map(|t| t.load_rate);
            for which in [Which::Ceiling, Which::Sled] {
                let Some(rate) = orderd_rate.filter(|_| self.ceiling_of(which).is_ok()) else {
                    continue;
                };
                let phase = format!("run {r} at orderd's rate");
                let pool = self.pool.clone();
                let (warmup, window) = (self.profile.run_warmup, self.profile.run_window);
                let result = self.step(which, &phase, rate, pool, warmup, window).await?;
                at_orderd_rate
                    .entry(which.name().to_owned())
                    .or_default()
                    .push(RunFigures::of(&result));
            }
        }
        if let Some(mut d) = kept.take() {
            let rate = targets.get("orderd").map_or(RATE_MIN, |t| t.load_rate);
            for a in 1..=self.profile.aging_runs {
                let before = d.orders_stored;
                let pool = self.pool.clone();
                let (warmup, window) = (self.profile.run_warmup, self.profile.run_window);
                let r = self
                    .run_on(&mut d, &format!("aging {a}"), rate, pool, warmup, window)
                    .await?;
                aging.push(AgingPoint {
                    orders_stored_before: before,
                    figures: RunFigures::of(&r),
                });
            }
            self.give_back(d);
        }
        for t in targets.values_mut() {
            t.median = RunFigures::median(&t.runs);
        }
        self.at_orderd_rate = at_orderd_rate
            .into_iter()
            .map(|(k, runs)| (k, RunFigures::median(&runs)))
            .collect();
        let costs = self.costs(&targets).await?;
        if !self.args.skip_spike {
            let sustained = targets.get("orderd").and_then(|t| t.sustained_max);
            self.spike = Some(self.spike(sustained.unwrap_or(RATE_MIN)).await?);
        }
        if !self.args.skip_scale {
            // Growth at half the sustained max: fast, without queueing.
            let sustained = targets.get("orderd").and_then(|t| t.sustained_max);
            let cfg = ScaleConfig {
                growth_rate: (sustained.unwrap_or(RATE_MIN) / 2).max(RATE_MIN),
                growth_secs: self.profile.scale_growth_secs,
                ..self.profile.scale.clone()
            };
            if let Some(d) = self.shared_daemon.take() {
                self.retire(d); // one daemon at a time: the scale test measures memory
            }
            self.scale = Some(
                scale::run(&self.bin, &self.data_root, &self.env, &cfg, self.args.seed)
                    .await
                    .context("the scale test")?,
            );
        }
        if let Some(d) = self.shared_daemon.take() {
            self.retire(d);
        }
        Ok(self.report(started, targets, costs, aging))
    }

    /// The spike profile on orderd: base rate, spike rate, base rate, per second.
    async fn spike(&mut self, sustained: u64) -> anyhow::Result<ProfileResult> {
        let pct = |p: u32| round_u64(sustained as f64 * f64::from(p) / 100.0).max(1);
        let (base, peak) = (pct(self.args.spike_base_pct), pct(self.args.spike_pct));
        let [before, during, after] = self.profile.spike_secs;
        let phases = vec![
            Phase {
                name: "before".into(),
                rate: base,
                secs: before,
            },
            Phase {
                name: "spike".into(),
                rate: peak,
                secs: during,
            },
            Phase {
                name: "after".into(),
                rate: base,
                secs: after,
            },
        ];
        let mut d = self.take_daemon().await?;
        let source = d.order_source(self.pool.clone(), "b", self.args.seed)?;
        self.step_no += 1;
        let cfg = ProfileConfig {
            phases,
            connections: self.args.connections,
            connections_max: self.args.spike_connections_max,
            timeout: Duration::from_millis(self.args.spike_timeout_ms),
            expect: StatusCode::CREATED,
            seq_base: self.step_no << 32,
        };
        server::settle(d.pid, self.args.noise_max_cores, self.profile.settle_max).await;
        let r = spike::run_profile(d.addr, Arc::new(source), &cfg).await;
        if let Ok(r) = &r {
            let accepted: u64 = r.seconds.iter().map(|s| s.accepted).sum();
            d.orders_stored += accepted;
            for name in ["before", "spike", "after"] {
                if let Some((p99, refused)) = r.phase_summary(name) {
                    eprintln!(
                        "[orderd spike] {name}: worst second p99 {p99:.1} ms, refused {:.1}%",
                        refused * 100.0
                    );
                }
            }
        }
        self.give_back(d);
        r
    }

    async fn search(
        &mut self,
        which: Which,
        phase: &str,
        start: u64,
        growth: f64,
    ) -> anyhow::Result<Option<u64>> {
        let mut s = RateSearch::new(start, growth, RATE_MIN, RATE_MAX, self.profile.resolution);
        s.steps_max = self.profile.steps_max;
        while let Some(rate) = s.next() {
            let pool = self.pool.clone();
            let (warmup, window) = (self.profile.search_warmup, self.profile.search_window);
            let r = self.step(which, phase, rate, pool, warmup, window).await?;
            s.record(rate, r.verdict.pass);
        }
        Ok(s.best())
    }

    /// Fixed-rate runs with only 1-line and only N-line orders (N: the largest size of the
    /// mix), against both targets at the same rates: CPU per order, per thread group.
    async fn costs(
        &mut self,
        targets: &BTreeMap<String, TargetSummary>,
    ) -> anyhow::Result<Vec<CostRow>> {
        let sustained = targets
            .get("orderd")
            .and_then(|t| t.sustained_max)
            .unwrap_or(1_000) as f64;
        let mean_lines = self.pool.mix.mean_lines();
        let largest = self
            .pool
            .mix
            .classes
            .iter()
            .map(|c| c.lines)
            .max()
            .unwrap_or(1);
        let mut sizes = vec![1];
        if largest > 1 {
            sizes.push(largest);
        }
        let mut rows = vec![];
        for lines in sizes {
            // Half the sustained max, scaled so both sizes carry about the same lines per second.
            let rate = round_u64(0.5 * sustained * mean_lines.max(1.0) / lines as f64)
                .max(50)
                .min(round_u64(0.5 * sustained).max(50));
            let pool = Arc::new(BodyPool::build(
                &self.dataset,
                &Mix::single(lines),
                BODIES_PER_CLASS / 4,
                self.args.seed ^ 0xC057,
            ));
            let body_bytes = pool.mean_body_bytes();
            for which in Which::ALL {
                if which != Which::Orderd && self.ceiling_of(which).is_err() {
                    continue;
                }
                // Quick mode keeps within its two minutes: the storage ceiling's costs are
                // measured in full runs only.
                if which == Which::Sled && self.args.quick {
                    continue;
                }
                let (warmup, window) = (self.profile.search_warmup, self.profile.cost_window);
                let r = self
                    .step(
                        which,
                        &format!("cost {lines}-line"),
                        rate,
                        pool.clone(),
                        warmup,
                        window,
                    )
                    .await?;
                rows.push(findings::cost_row(which.name(), lines, body_bytes, &r));
            }
        }
        Ok(rows)
    }

    /// Starts the HTTP ceiling, and with `sled` also the storage ceiling (after measuring what
    /// orderd stores per order on a daemon of its own). Returns the last one started.
    async fn start_ceilings(&mut self, sled: bool) -> anyhow::Result<Which> {
        self.ceiling = Some(Ceiling::start(None)?);
        if !sled {
            return Ok(Which::Ceiling);
        }
        let mut d = self.start_daemon().await?;
        let shapes = server::record_shapes(&mut d, &self.pool).await;
        self.retire(d);
        self.record_shapes = shapes.context("measuring what orderd stores per order")?;
        for s in &self.record_shapes {
            eprintln!(
                "orderd stores per {}-line order: puts (key, value bytes) {:?}, audit records (subject, payload bytes) {:?}",
                s.lines, s.puts, s.audits
            );
        }
        self.sled_ceiling = Some(Ceiling::start(Some((
            &self.data_root,
            &self.record_shapes,
        )))?);
        Ok(Which::Sled)
    }

    /// Address and pid of a running ceiling.
    fn ceiling_of(&self, which: Which) -> anyhow::Result<(SocketAddr, u32)> {
        let c = match which {
            Which::Ceiling => self.ceiling.as_ref(),
            Which::Sled => self.sled_ceiling.as_ref(),
            Which::Orderd => None,
        };
        c.map(|c| (c.addr, c.pid))
            .with_context(|| format!("no {} server", which.name()))
    }

    async fn start_daemon(&mut self) -> anyhow::Result<Daemon> {
        let d = Daemon::start(
            &self.bin,
            &self.data_root,
            &self.env,
            &self.dataset,
            self.issuer.as_ref(),
        )
        .await?;
        self.setup_times.push(d.setup_s);
        if let Some(len) = d.tokens.first().map(String::len) {
            self.ceiling_tokens = fake_tokens(len);
        }
        Ok(d)
    }

    /// The shared daemon (reuse mode) or a fresh one.
    async fn take_daemon(&mut self) -> anyhow::Result<Daemon> {
        match self.shared_daemon.take() {
            Some(d) if !self.fresh_daemons() => Ok(d),
            Some(d) => {
                self.retire(d);
                self.start_daemon().await
            }
            None => self.start_daemon().await,
        }
    }

    /// Keeps the daemon for the next step (reuse mode) or stops it.
    fn give_back(&mut self, d: Daemon) {
        if self.fresh_daemons() {
            self.retire(d);
        } else {
            self.shared_daemon = Some(d);
        }
    }

    fn retire(&mut self, d: Daemon) {
        let log = d.log();
        self.log_warnings += log.warnings;
        self.log_errors += log.errors;
        if log.errors > 0 {
            eprintln!("orderd logged errors; last lines:");
            for l in log.lines.iter().rev().take(5).rev() {
                eprintln!("  {l}");
            }
        }
    }

    async fn step(
        &mut self,
        which: Which,
        phase: &str,
        rate: u64,
        pool: Arc<BodyPool>,
        warmup: Duration,
        window: Duration,
    ) -> anyhow::Result<StepResult> {
        match which {
            Which::Orderd => {
                let mut d = self.take_daemon().await?;
                let r = self.run_on(&mut d, phase, rate, pool, warmup, window).await;
                self.give_back(d);
                r
            }
            Which::Ceiling | Which::Sled => {
                let (addr, pid) = self.ceiling_of(which)?;
                let source = OrderSource {
                    pool,
                    tokens: self.ceiling_tokens.clone(),
                    key_prefix: "b".to_owned(),
                    seed: self.args.seed,
                };
                self.measure(
                    which,
                    phase,
                    addr,
                    pid,
                    Arc::new(source),
                    rate,
                    warmup,
                    window,
                )
                .await
            }
        }
    }

    async fn run_on(
        &mut self,
        d: &mut Daemon,
        phase: &str,
        rate: u64,
        pool: Arc<BodyPool>,
        warmup: Duration,
        window: Duration,
    ) -> anyhow::Result<StepResult> {
        let source = d.order_source(pool, "b", self.args.seed)?;
        let r = self
            .measure(
                Which::Orderd,
                phase,
                d.addr,
                d.pid,
                Arc::new(source),
                rate,
                warmup,
                window,
            )
            .await?;
        // Everything sent that did not fail was stored (warm-up included).
        let sent = round_u64(rate as f64 * (warmup + window).as_secs_f64());
        d.orders_stored += sent.saturating_sub(r.error_count());
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)] // one step's whole description; a struct would only rename it
    async fn measure(
        &mut self,
        which: Which,
        phase: &str,
        addr: SocketAddr,
        pid: u32,
        source: Arc<dyn RequestSource>,
        rate: u64,
        warmup: Duration,
        window: Duration,
    ) -> anyhow::Result<StepResult> {
        let mix = source.class_labels().join("+");
        let cfg = StepConfig {
            rate,
            warmup,
            duration: window,
            connections: self.args.connections,
            drain_max: self.profile.drain_max,
            expect: StatusCode::CREATED,
            seq_base: 0,
            disk: Some(self.data_root.clone()),
        };
        let mut attempt = 0;
        let r = loop {
            self.step_no += 1;
            attempt += 1;
            // Every attempt has its own numbers: a repeated step must not replay its keys.
            let cfg = StepConfig {
                seq_base: self.step_no << 32,
                ..cfg.clone()
            };
            let (waited, quiet) =
                server::settle(pid, self.args.noise_max_cores, self.profile.settle_max).await;
            if !quiet {
                eprintln!(
                    "machine not quiet after {:.1} s (other processes busy); measuring anyway",
                    waited.as_secs_f64()
                );
            }
            let r =
                loadgen::run_step(addr, source.clone(), &cfg, &self.criteria, Some(pid)).await?;
            let noisy = r.other_cores.unwrap_or(0.0) > self.args.noise_max_cores;
            if r.verdict.pass || !noisy || attempt > self.profile.noise_retries {
                break r;
            }
            eprintln!(
                "[{} {phase}] {rate}/s failed with {:.2} cores of other processes; repeating",
                which.name(),
                r.other_cores.unwrap_or(0.0)
            );
            self.steps.push(StepRecord {
                target: which.name().to_owned(),
                phase: format!("{phase} (noisy, repeated)"),
                mix: label(&mix),
                result: r,
            });
        };
        eprintln!(
            "[{} {phase}] {rate}/s: achieved {:.0}/s, p50 {:.2} p99 {:.2} p999 {:.2} ms, failed {}, server {:.2} cores, loadgen {:.2} cores, others {:.2} cores -> {}",
            which.name(),
            r.achieved_rate,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.error_count(),
            r.server_cpu.as_ref().map_or(0.0, |c| c.cores()),
            r.loadgen_cpu.as_ref().map_or(0.0, |c| c.cores()),
            r.other_cores.unwrap_or(0.0),
            if r.verdict.pass {
                "pass".to_owned()
            } else {
                format!("FAIL ({})", r.verdict.reasons.join("; "))
            }
        );
        self.steps.push(StepRecord {
            target: which.name().to_owned(),
            phase: phase.to_owned(),
            mix: label(&mix),
            result: r.clone(),
        });
        Ok(r)
    }

    fn report(
        &self,
        started: Instant,
        targets: BTreeMap<String, TargetSummary>,
        costs: Vec<CostRow>,
        aging: Vec<AgingPoint>,
    ) -> Report {
        let p = &self.profile;
        let orderd_max = targets.get("orderd").and_then(|t| t.sustained_max);
        let ceiling_max = targets.get("ceiling").and_then(|t| t.sustained_max);
        let issue = IssueCheck {
            sustained_required: SUSTAINED_REQUIRED,
            p99_required_ms: self.args.p99_max_ms,
            sustained_met: orderd_max.is_some_and(|m| m >= SUSTAINED_REQUIRED),
            p99_at_load_met: targets.get("orderd").is_some_and(|t| {
                !t.runs.is_empty() && t.median.p99_ms < self.args.p99_max_ms && t.median.errors == 0
            }),
            ceiling_goal_rate: ceiling_max.map(|c| c as f64 / 2.0),
        };
        let cost_fits = findings::fits(&costs);
        let mut report = Report {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            mode: format!(
                "{}{}",
                if self.args.quick { "quick" } else { "full" },
                if self.args.oidc { "+oidc" } else { "" }
            ),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            elapsed_s: started.elapsed().as_secs_f64(),
            machine: Machine::read(),
            setup: Setup {
                dataset: self.dataset.clone(),
                mix: self.pool.mix.clone(),
                mix_description: self.pool.mix.describe(),
                mean_lines_per_order: self.pool.mix.mean_lines(),
                body_bytes_per_class: self
                    .pool
                    .mix
                    .classes
                    .iter()
                    .map(|c| c.lines)
                    .zip(self.pool.class_body_bytes())
                    .collect(),
                mean_body_bytes: self.pool.mean_body_bytes(),
                connections: self.args.connections,
                client_threads: self.args.client_threads.max(1),
                daemon_env: self.env.clone(),
                fresh_daemon_per_step: self.fresh_daemons(),
                daemon_setup_s: report::median(&self.setup_times),
                ceiling: "separate process (this binary's `ceiling` subcommand), multi-threaded tokio runtime with one worker per core like orderd; axum 0.8, `Json<PlaceBody>` with orderd's body shape, answers 201 + a small JSON body; the sled-ceiling is the same server that, after parsing, submits the order's records (sizes measured from orderd's journal) to `orderd_storage::Journal` with orderd's default settings (one committer thread, one sled batch + flush + fdatasync per group) on the same disk as orderd's data, and answers once durable".to_owned(),
                timings: Timings {
                    search_warmup_s: p.search_warmup.as_secs_f64(),
                    search_window_s: p.search_window.as_secs_f64(),
                    run_warmup_s: p.run_warmup.as_secs_f64(),
                    run_window_s: p.run_window.as_secs_f64(),
                    drain_max_s: p.drain_max.as_secs_f64(),
                },
                criteria: self.criteria.clone(),
                load_pct: self.args.load_pct,
            },
            sustained_ratio: orderd_max
                .zip(ceiling_max)
                .map(|(o, c)| o as f64 / c.max(1) as f64),
            ratios: ["ceiling", "sled-ceiling"]
                .into_iter()
                .filter_map(|c| CeilingRatio::of(&targets, c, self.at_orderd_rate.get(c)))
                .collect(),
            record_shapes: self.record_shapes.clone(),
            ceilings_at_orderd_rate: self.at_orderd_rate.clone(),
            spike: self.spike.clone(),
            scale: self.scale.clone(),
            plots: vec![],
            issue,
            costs,
            cost_fits,
            aging,
            findings: vec![],
            daemon_log_warnings: self.log_warnings,
            daemon_log_errors: self.log_errors,
            steps: self.steps.clone(),
            targets,
        };
        report.findings = findings::findings(&report, &self.steps);
        report
    }
}

/// `Bearer xxx...` values of `len` characters: the ceiling ignores them, but the requests it
/// gets are as large as orderd's.
fn fake_tokens(len: usize) -> Vec<HeaderValue> {
    let fake = format!("Bearer {}", "x".repeat(len.saturating_sub(7)));
    vec![HeaderValue::from_str(&fake).expect("ASCII is a valid header value"); 16]
}

fn label(classes: &str) -> String {
    if classes.contains('+') {
        "mix".to_owned()
    } else {
        classes.to_owned()
    }
}
