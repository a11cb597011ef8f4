//! Scale: orderd with a large generated data set (e.g. 100,000 accounts and 1,000,000 SKUs,
//! imported through the API like the benchmark's small one): how long loading and start-up
//! take, the daemon's memory idle and per account actor, and how recovery after `kill -9`
//! grows with the store.
//!
//! 1. Start orderd on a fresh directory and import the data set (`load_s`).
//! 2. `kill -9` and start again: `startup_s` is spawn to `orderd listening` with the loaded
//!    store (all state rebuilt from the journal). `rss_idle_bytes` right after.
//! 3. Place one 1-line order for each of `touch` accounts (each gets an account actor, which
//!    stays for `limits.account_idle_ms`): `bytes_per_account_actor` is the growth of the
//!    resident set over `touch`.
//! 4. Repeatedly place orders open loop at `growth_rate` for `growth_secs` over those
//!    accounts, then `kill -9` and restart: each point gives the store's size and the
//!    recovery time.

use crate::loadgen::{self, Criteria, StepConfig};
use crate::procstat;
use crate::server::{self, Daemon};
use crate::workload::{BodyPool, Dataset, Mix};
use hyper::StatusCode;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct ScaleConfig {
    pub accounts: usize,
    pub skus: usize,
    /// Accounts given an actor (and driven in the growth phases).
    pub touch: usize,
    pub growth_points: usize,
    pub growth_rate: u64,
    pub growth_secs: u64,
}

/// One size of the store and how long recovery took at it.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryPoint {
    /// Orders accepted so far (the touch orders included).
    pub orders_stored: u64,
    /// Bytes under the data directory.
    pub data_bytes: u64,
    /// `kill -9` to `orderd listening` again.
    pub recovery_s: f64,
    pub rss_after_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub config: ScaleConfig,
    /// Start, import of the data set and tokens for the touched accounts.
    pub load_s: f64,
    pub data_bytes_loaded: u64,
    /// Start-up to ready on the loaded store (after `kill -9`).
    pub startup_s: f64,
    pub rss_idle_bytes: Option<u64>,
    pub touched: usize,
    pub rss_touched_bytes: Option<u64>,
    pub bytes_per_account_actor: Option<f64>,
    pub points: Vec<RecoveryPoint>,
}

/// Runs the scale test with orderd `bin` under `data_root`.
pub async fn run(
    bin: &Path,
    data_root: &Path,
    env: &[(String, String)],
    cfg: &ScaleConfig,
    seed: u64,
) -> anyhow::Result<ScaleResult> {
    let dataset = Dataset {
        skus: cfg.skus,
        accounts: cfg.accounts,
        token_accounts: Some(cfg.touch.min(cfg.accounts)),
    };
    let started = Instant::now();
    let mut d = Daemon::start(bin, data_root, env, &dataset, None).await?;
    let load_s = started.elapsed().as_secs_f64();
    let data_bytes_loaded = procstat::dir_bytes(d.data_dir());
    eprintln!(
        "[scale] {} accounts, {} SKUs loaded in {load_s:.1} s ({:.1} MB on disk)",
        cfg.accounts,
        cfg.skus,
        data_bytes_loaded as f64 / 1e6
    );
    let startup_s = d.restart(bin, env).await?;
    let rss_idle_bytes = settled_rss(&d).await;
    let pool = Arc::new(BodyPool::build(&dataset, &Mix::single(1), 64, seed));
    let body = pool.bodies[0][0].clone();
    let touched = server::touch_accounts(&d, body).await?;
    let rss_touched_bytes = settled_rss(&d).await;
    let bytes_per_account_actor = rss_idle_bytes
        .zip(rss_touched_bytes)
        .filter(|_| touched > 0)
        .map(|(a, b)| (b as f64 - a as f64) / touched as f64);
    eprintln!(
        "[scale] start-up {startup_s:.2} s; RSS idle {:.1} MB, after {touched} account actors {:.1} MB",
        rss_idle_bytes.unwrap_or(0) as f64 / 1e6,
        rss_touched_bytes.unwrap_or(0) as f64 / 1e6
    );
    let mut orders_stored = touched as u64;
    let mut points = vec![];
    let mix = Mix::parse("1:70,10:25,100:5", cfg.skus).unwrap_or_else(|_| Mix::single(1));
    let pool = Arc::new(BodyPool::build(&dataset, &mix, 256, seed));
    for p in 0..cfg.growth_points {
        let source = d.order_source(pool.clone(), &format!("scale{p}"), seed)?;
        let step = StepConfig {
            rate: cfg.growth_rate,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(cfg.growth_secs),
            connections: 64,
            drain_max: Duration::from_secs(5),
            expect: StatusCode::CREATED,
            seq_base: (p as u64 + 1) << 32,
            disk: None,
        };
        let lenient = Criteria {
            p99_max_ms: f64::MAX,
            error_max_ratio: 1.0,
            achieved_min_ratio: 0.0,
        };
        let r = loadgen::run_step(d.addr, Arc::new(source), &step, &lenient, None).await?;
        orders_stored += r.ok;
        let recovery_s = d.restart(bin, env).await?;
        let point = RecoveryPoint {
            orders_stored,
            data_bytes: procstat::dir_bytes(d.data_dir()),
            recovery_s,
            rss_after_bytes: procstat::rss_bytes(d.pid),
        };
        eprintln!(
            "[scale] {} orders stored, {:.1} MB: recovery after kill -9 {recovery_s:.2} s",
            point.orders_stored,
            point.data_bytes as f64 / 1e6
        );
        points.push(point);
    }
    Ok(ScaleResult {
        config: cfg.clone(),
        load_s,
        data_bytes_loaded,
        startup_s,
        rss_idle_bytes,
        touched,
        rss_touched_bytes,
        bytes_per_account_actor,
        points,
    })
}

/// The daemon's resident set once it has been idle for a moment (background work after
/// start-up or a burst of requests done).
async fn settled_rss(d: &Daemon) -> Option<u64> {
    server::settle(d.pid, f64::MAX, Duration::from_secs(5)).await;
    procstat::rss_bytes(d.pid)
}
