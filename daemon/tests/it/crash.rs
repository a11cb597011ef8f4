//! The crash test of DESIGN invariant 1, with the chaos harness (`orderd-chaos` runs the same
//! scenario for many more rounds).

use crate::env::{open_journal, str_field, TestEnv, BIN};
use orderd_chaos::{Harness, RoundEnd, Scenario, SEED_ENV};
use orderd_storage::layout;
use serde_json::{json, Value};
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

/// How far past the journal's current sled segment the daemon may write in
/// `a_failed_commit_stops_orderd_and_loses_no_acknowledged_order`: room for some drafts.
const WRITE_ROOM_BYTES: u64 = 256 << 10;
/// Most drafts that test writes before it gives up waiting for the disk to refuse.
const DRAFTS_MAX: usize = 3_000;

// A disk that refuses a write: orderd runs under a file-size limit (RLIMIT_FSIZE, with
// SIGXFSZ ignored so a write past it fails with EFBIG instead of killing the process) a little
// past its journal's current sled segment, and takes 100-line drafts until a group commit
// fails. That request is not acknowledged, orderd shuts itself down with a non-zero exit
// (fail-stop: sled's memory then holds a group the disk does not), and on a restart without
// the limit every acknowledged draft is there, `orderd check` and `orderd audit verify` pass,
// and the unacknowledged request sent again with its key is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_stops_orderd_and_loses_no_acknowledged_order() {
    let prlimit = std::process::Command::new("prlimit")
        .arg("--version")
        .output();
    assert!(
        prlimit.is_ok_and(|o| o.status.success()),
        "this test needs prlimit (Debian's util-linux; ops/test installs it)"
    );
    let mut env = TestEnv::start().await;
    let buyer = env.token("ACME", "alice", &["buyer"]).await;
    let draft = hundred_line_draft(&env, &buyer).await;
    assert!(env.terminate().await.success());
    // sled zero-fills the rest of the segment it recovers into, so the limit lies past that.
    let segment = orderd_storage::SLED_SEGMENT_BYTES as u64;
    let used = std::fs::metadata(env.data_dir().join("journal/db"))
        .expect("the journal's data file")
        .len();
    let limit = (used / segment + 1) * segment + WRITE_ROOM_BYTES;
    env.spec.launcher = vec![
        "sh".into(),
        "-c".into(),
        format!("trap '' XFSZ; exec prlimit --fsize={limit} -- \"$@\""),
        "sh".into(),
    ];
    env.restart().await;

    let mut acknowledged = Vec::new();
    let refused = loop {
        assert!(
            acknowledged.len() < DRAFTS_MAX,
            "{DRAFTS_MAX} drafts written under a {limit}-byte file limit"
        );
        let key = format!("draft-{}", acknowledged.len());
        let r = env
            .api()
            .place(&buyer, &key, &draft)
            .await
            .expect("orderd answers until the failed commit");
        if r.status != 201 {
            break (key, r);
        }
        acknowledged.push((key, str_field(&r.body, "id").to_owned()));
    };
    let (refused_key, r) = refused;
    assert_eq!(r.status, 500, "the write the disk refused: {r}");
    assert!(!acknowledged.is_empty(), "no draft fitted under the limit");
    let status = env.wait_for_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "orderd exited {status} after a failed commit"
    );

    env.spec.launcher.clear();
    let verified = env.audit_verify().await;
    assert_eq!(verified.code(), Some(0), "{verified}");
    let checked = env.check().await;
    assert_eq!(checked.code(), Some(0), "{checked}");
    env.restart().await;
    for (key, id) in &acknowledged {
        let r = env.get(&buyer, &format!("/v1/orders/{id}")).await;
        assert_eq!(r.status, 200, "acknowledged draft {id} ({key}): {r}");
        assert_eq!(str_field(&r.body, "state"), "draft", "{r}");
    }
    let (last_key, last_id) = acknowledged.last().expect("one draft");
    let again = env
        .api()
        .place(&buyer, last_key, &draft)
        .await
        .expect("request");
    assert_eq!(
        (again.status, str_field(&again.body, "id")),
        (200, last_id.as_str())
    );
    let again = env
        .api()
        .place(&buyer, &refused_key, &draft)
        .await
        .expect("request");
    assert_eq!(again.status, 201, "{again}");
}

/// A draft (`submit: false`) of the first 100 active catalog items ACME sees, each at its
/// smallest valid quantity: about 12 KB of order record and audit per draft.
async fn hundred_line_draft(env: &TestEnv, token: &str) -> Value {
    let r = env.get(token, "/v1/catalog?limit=200").await;
    assert_eq!(r.status, 200, "{r}");
    let lines: Vec<Value> = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| &i["item"])
        .filter(|i| i["status"] == "active")
        .take(100)
        .map(|i| {
            let qty = i["min_qty"].as_u64().max(i["pack_size"].as_u64());
            json!({"sku": i["sku"], "qty": qty.expect("a quantity")})
        })
        .collect();
    assert_eq!(lines.len(), 100, "{}", r.body);
    json!({"submit": false, "ship_to": "MUNICH", "lines": lines})
}
