//! The crash test of DESIGN invariant 1, with the chaos harness (`orderd-chaos` runs the same
//! scenario for many more rounds).

use crate::env::{open_journal, BIN};
use orderd_chaos::{Harness, RoundEnd, Scenario, SEED_ENV};
use orderd_storage::layout;
use std::time::Duration;

/// SIGKILLs in one run: enough for kills at different points of the load, small enough to
/// stay well under a minute in a debug build.
const KILL_ROUNDS: usize = 4;
/// Concurrent load clients (over six accounts).
const WORKERS: usize = 8;
/// Load before each kill, in ms (the exact moment is drawn from the seed).
const LOAD_MS: (u64, u64) = (1_000, 3_000);
/// Load before the kill in the test of the check itself.
const LOST_ORDER_LOAD: Duration = Duration::from_millis(600);

// Eight clients over six accounts place orders (unique Idempotency-Keys), approve, reject,
// ship and cancel them, while orderd is SIGKILLed at four seeded random moments and restarted
// on the same directory. After each restart every acknowledged order must be there with the
// acknowledged state and version (or wholly after a change that was in flight), every
// unanswered placement sent again with its key must give the same order or a fresh one, and
// no order may exist that nobody placed. At the end a SIGTERM under load must exit 0,
// `orderd check` and `orderd audit verify` must pass, and a restart must show the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_orders_survive_sigkill() {
    let seed = orderd_chaos::seed_from_env().expect("a valid seed");
    eprintln!("crash test seed {seed} (replay with {SEED_ENV}={seed})");
    let dir = tempfile::Builder::new()
        .prefix("orderd-crash-")
        .tempdir()
        .expect("temporary directory");
    let mut sc = Scenario::new(BIN, dir.path(), seed);
    sc.rounds = KILL_ROUNDS;
    sc.workers = WORKERS;
    sc.load_ms = LOAD_MS;
    sc.check_every = KILL_ROUNDS;
    let report = orderd_chaos::run(&sc, |line| eprintln!("crash: {line}"))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the harness failed: {e:#}"));
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "seed {seed}: {report}");
    assert_eq!(report.kills, KILL_ROUNDS, "seed {seed}: {report}");
    // The checks above are only worth something if the load did all kinds of work.
    let s = &report.stats;
    assert!(s.placed > 0, "seed {seed}: nothing placed: {report}");
    for action in ["approve", "reject", "ship", "cancel"] {
        assert!(
            s.changed_by.get(action).copied().unwrap_or(0) > 0,
            "seed {seed}: no {action} acknowledged: {report}"
        );
    }
    assert!(report.orders_verified >= s.placed, "seed {seed}: {report}");
    assert!(report.audit_records > 0, "seed {seed}: {report}");
}

// The crash check must be able to fail. After a kill, one acknowledged order is removed from
// the journal (its record, which also holds its idempotency key), as if the daemon had
// acknowledged a write it then lost; after the restart the harness must report exactly that
// order as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_reports_a_lost_acknowledged_order() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut sc = Scenario::new(BIN, dir.path(), 5);
    sc.workers = 2;
    let mut h = Harness::start(&sc).await.expect("starting");
    h.run_load(LOST_ORDER_LOAD, RoundEnd::Kill)
        .await
        .expect("load");
    let (account, id, _key) = h
        .acknowledged_orders()
        .into_iter()
        .next()
        .expect("an acknowledged order");
    {
        let db = open_journal(dir.path());
        // Open or closed (the load cancels some orders).
        let removed = [
            format!("ord/{account}/{id}"),
            format!("closed/{account}/{id}"),
        ]
        .iter()
        .filter(|record| {
            let k = layout::data_key(record.as_bytes());
            db.remove(k).expect("removing").is_some()
        })
        .count();
        assert_eq!(removed, 1, "order {id} of {account} has one record");
        db.flush().expect("flushing");
    }
    h.restart().await.expect("restarting");
    h.verify().await.expect("verifying");
    let lost: Vec<&String> = h
        .report
        .violations
        .iter()
        .filter(|v| v.contains("lost"))
        .collect();
    assert_eq!(lost.len(), 1, "{:#?}", h.report.violations);
    assert!(lost[0].contains(&id), "{lost:?}");
}
