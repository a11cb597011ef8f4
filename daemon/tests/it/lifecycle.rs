//! The daemon's life from the outside: graceful shutdown and restart, refusing bad
//! configuration, tenancy (DESIGN invariant 7), the approval flow with credit, and admission
//! control (429 and 503 with Retry-After).

use crate::env::{decimal, str_field, warehouses_of, TestEnv, BIN};
use orderd_chaos::{DaemonSpec, Harness, Reply, RoundEnd, Scenario};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Load before the graceful stop.
const LOAD_BEFORE_SIGTERM: Duration = Duration::from_millis(1_500);
/// How long a daemon with a bad configuration may take to give up.
const BAD_CONFIG_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent placements per burst in the 429 and 503 tests.
const BURST_REQUESTS: usize = 24;
/// How long the 429 and 503 tests keep sending bursts before they give up on seeing one.
const BUSY_DEADLINE: Duration = Duration::from_secs(20);
/// The open-files limits orderd is started with in `more_clients_than_the_soft_open_files_limit`.
const NOFILE_SOFT: usize = 128;
const NOFILE_HARD: usize = 2_048;
/// Connections held open at once there: well past the soft limit.
const CONNECTIONS_HELD: usize = 3 * NOFILE_SOFT;

// Four clients place, approve, reject, ship and cancel; SIGTERM arrives while they keep
// sending. The daemon must answer what it accepted and exit 0; after a restart every
// acknowledged order must be there as acknowledged and no order may exist that nobody placed.
// Then, with nothing in flight, a second SIGTERM and restart must change nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_everything() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut sc = Scenario::new(BIN, dir.path(), 11);
    sc.workers = 4;
    let mut h = Harness::start(&sc).await.expect("starting");
    let status = h
        .run_load(LOAD_BEFORE_SIGTERM, RoundEnd::Terminate)
        .await
        .expect("load");
    assert!(
        matches!(status, Some(s) if s.success()),
        "SIGTERM gave {status:?}"
    );
    h.restart().await.expect("restarting");
    h.verify().await.expect("verifying");
    assert!(h.report.violations.is_empty(), "{:#?}", h.report.violations);
    let stats = h.stats();
    assert!(stats.placed > 0, "nothing placed: {stats:?}");
    let verified = h.report.orders_verified;
    assert!(verified >= stats.placed);
    let resent = h.report.resent_fresh + h.report.resent_replayed + h.report.resent_refused;

    let status = h.terminate().await.expect("stopping");
    assert!(status.success(), "SIGTERM gave {status}");
    h.restart().await.expect("restarting");
    h.verify().await.expect("verifying");
    assert!(h.report.violations.is_empty(), "{:#?}", h.report.violations);
    let resent_again = h.report.resent_fresh + h.report.resent_replayed + h.report.resent_refused;
    assert_eq!(resent_again, resent, "nothing was left to send again");
    assert!(h.report.orders_verified > verified);
}

// A request that never ends (its headers sent in part, and its connection kept open) does not
// hold up SIGTERM: the daemon waits `shutdown_grace_ms` for it, then exits 0 all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_ends_does_not_hold_the_shutdown() {
    use tokio::io::AsyncWriteExt;
    let mut env = TestEnv::start_with(&[("ORDERD_SHUTDOWN_GRACE_MS", "1000")]).await;
    let mut stalled = tokio::net::TcpStream::connect(env.daemon().addr())
        .await
        .expect("connecting");
    stalled
        .write_all(b"POST /v1/cart/lines HTTP/1.1\r\nHost: orderd\r\nContent-Length: 40\r\n")
        .await
        .expect("sending part of a request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let status = env.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?} with a request under way",
        started.elapsed()
    );
    drop(stalled);
}

// A connection whose request headers do not all come within `api.header_read_timeout_ms` is
// closed: one that sends part of its headers, one that sends nothing, and one kept alive
// after its answer that sends no next request. A change whose body does not come within
// `api.body_read_timeout_ms` is answered `408` and its connection closed. orderd still
// answers every request sent in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_in_time_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TIMEOUT_MS: u64 = 500;
    let timeout = TIMEOUT_MS.to_string();
    let env = TestEnv::start_with(&[
        ("ORDERD_API__HEADER_READ_TIMEOUT_MS", &timeout),
        ("ORDERD_API__BODY_READ_TIMEOUT_MS", &timeout),
    ])
    .await;
    let token = env.token("ACME", "bob", &["buyer"]).await;
    let connect = || async {
        tokio::net::TcpStream::connect(env.daemon().addr())
            .await
            .expect("connecting")
    };
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: orderd\r\n\r\n";
    let mut partial = connect().await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: orderd\r\n")
        .await
        .expect("sending part of the headers");
    let silent = connect().await;
    let mut kept = connect().await;
    kept.write_all(healthz).await.expect("sending a request");
    let mut body = connect().await;
    let head = format!(
        "POST /v1/cart/lines HTTP/1.1\r\nHost: orderd\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"sku\":"
    );
    body.write_all(head.as_bytes())
        .await
        .expect("sending part of a body");
    let started = Instant::now();
    let connections = [
        ("partial", partial),
        ("silent", silent),
        ("kept", kept),
        ("body", body),
    ];
    for (name, mut tcp) in connections {
        // Everything until orderd closes the connection (a reset counts as closed).
        let mut got = vec![];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "{name}: still open after 10 s");
        let got = String::from_utf8_lossy(&got);
        match name {
            "kept" => assert!(got.starts_with("HTTP/1.1 200"), "{name}: {got}"),
            "body" => assert!(
                got.starts_with("HTTP/1.1 408") && got.contains("body_read_timeout"),
                "{name}: {got}"
            ),
            _ => assert!(!got.contains(" 200 "), "{name}: {got}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(TIMEOUT_MS),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    let mut fresh = connect().await;
    fresh.write_all(healthz).await.expect("sending a request");
    let mut buf = [0u8; 64];
    let n = fresh.read(&mut buf).await.expect("an answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}

// A zero call timeout and an unknown log format are both reported, by name, before the daemon
// binds anything, and it exits non-zero; so is an unknown setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let spec = DaemonSpec::new(BIN, dir.path())
        .with_env("ORDERD_LIMITS__CALL_TIMEOUT_MS", "0")
        .with_env("ORDERD_LOG_FORMAT", "xml");
    let unknown = DaemonSpec::new(BIN, dir.path()).with_env("ORDERD_LIMITS__NO_SUCH_LIMIT", "3");
    let (bad, unknown) = tokio::task::spawn_blocking(move || {
        let args = ["serve", "--listen", "127.0.0.1:0"];
        (
            spec.run(args, BAD_CONFIG_EXIT_TIMEOUT),
            unknown.run(args, BAD_CONFIG_EXIT_TIMEOUT),
        )
    })
    .await
    .expect("tool task");
    let bad = bad.expect("orderd should exit by itself");
    assert!(matches!(bad.code(), Some(c) if c != 0), "{bad}");
    assert!(
        bad.stderr
            .contains("limits.call_timeout_ms must be above 0"),
        "{bad}"
    );
    assert!(
        bad.stderr.contains("log_format must be text or json"),
        "{bad}"
    );
    let unknown = unknown.expect("orderd should exit by itself");
    assert!(matches!(unknown.code(), Some(c) if c != 0), "{unknown}");
    assert!(unknown.stderr.contains("no_such_limit"), "{unknown}");
}

fn is_not_found(r: &Reply) -> bool {
    r.status == 404 && r.code() == Some("not_found")
}

// ACME has an order and a cart line. Tokens of BAUHAUS (buyer, approver, account admin) get the
// same 404 as for a made-up id when they read, approve, reject, cancel, submit, amend or ask for
// the history of ACME's order, whatever they put in the query string; their lists, cart and
// credit only ever show BAUHAUS. An operator naming the wrong account cannot ship it either.
// ACME's order is unchanged by all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_order_is_invisible_and_untouchable() {
    let env = TestEnv::start().await;
    let acme = env.token("ACME", "alice", &["buyer"]).await;
    // A user BAUHAUS holds no record of, so the token's roles count as they are (a demo user's
    // record would narrow them).
    let intruder = env
        .token("BAUHAUS", "ida", &["buyer", "approver", "account_admin"])
        .await;
    let r = env
        .place(&acme, "tenancy-1", &[("BOLT-0010", 3)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let order = r.body.clone();
    let id = str_field(&order, "id").to_owned();
    let r = env
        .post(
            &acme,
            "/v1/cart/lines",
            json!({"sku": "BOLT-0010", "qty": 2}),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");

    // The same answer as for an order that does not exist at all.
    let made_up = "01900000-0000-7000-8000-000000000000";
    let ghost = env.get(&intruder, &format!("/v1/orders/{made_up}")).await;
    assert!(is_not_found(&ghost), "{ghost}");
    let api = env.api();
    let attempts = [
        api.get(&intruder, &format!("/v1/orders/{id}")).await,
        api.get(&intruder, &format!("/v1/orders/{id}?account=ACME"))
            .await,
        api.get(&intruder, &format!("/v1/orders/{id}/history"))
            .await,
        api.post(&intruder, &format!("/v1/orders/{id}/approve"), &json!({}))
            .await,
        api.post(&intruder, &format!("/v1/orders/{id}/reject"), &json!({}))
            .await,
        api.post(&intruder, &format!("/v1/orders/{id}/cancel"), &json!({}))
            .await,
        api.post(&intruder, &format!("/v1/orders/{id}/submit"), &json!({}))
            .await,
        api.patch(
            &intruder,
            &format!("/v1/orders/{id}"),
            &json!({"customer_po": "mine now"}),
        )
        .await,
    ];
    for r in attempts {
        let r = r.expect("request");
        assert!(is_not_found(&r), "{r}");
    }
    let operator = api.operator_token().await.expect("token");
    let r = env
        .post(
            &operator,
            &format!("/v1/orders/{id}/ship"),
            json!({"warehouse": "BER", "account": "BAUHAUS"}),
        )
        .await;
    assert!(is_not_found(&r), "{r}");

    for path in ["/v1/orders?limit=200", "/v1/orders?limit=200&account=ACME"] {
        let r = env.get(&intruder, path).await;
        assert_eq!(r.status, 200, "{r}");
        let orders = r.body["orders"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(
            orders.iter().all(|o| o["account"] == "BAUHAUS"),
            "{path}: {r}"
        );
    }
    let r = env.get(&intruder, "/v1/cart").await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["lines"], json!([]), "BAUHAUS sees ACME's cart: {r}");
    let r = env
        .post(
            &intruder,
            "/v1/cart/lines",
            json!({"sku": "NUT-0021", "qty": 7}),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    let r = env.get(&acme, "/v1/cart").await;
    let skus: Vec<&Value> = r.body["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|l| &l["sku"])
        .collect();
    assert_eq!(skus, [&json!("BOLT-0010")], "ACME's cart changed: {r}");

    let credit = env.get(&intruder, "/v1/credit").await;
    assert_eq!(credit.status, 200, "{credit}");
    assert_eq!(
        decimal(&credit.body["credit_limit"]),
        "100000".parse().unwrap()
    );
    // BAUHAUS has no orders: its exposure is its receivables, untouched by ACME's order.
    assert_eq!(
        decimal(&credit.body["exposure"]),
        decimal(&credit.body["open_receivables"]),
        "{credit}"
    );
    let after = env.get(&acme, &format!("/v1/orders/{id}")).await;
    assert_eq!(after.status, 200, "{after}");
    assert_eq!(after.body, order, "ACME's order changed");
}

// Alice (spending limit 2000 EUR) places a 700-unit order: it waits for approval and already
// counts towards credit exposure. Bob approves it (allocated), the Munich warehouse cannot see
// it, the warehouse holding it ships it (shipped). Exposure stays the same after shipment
// because the value moves to open receivables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_order_is_approved_then_shipped_and_credit_follows() {
    let env = TestEnv::start().await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let before = env.get(&alice, "/v1/credit").await.body;

    let r = env
        .place(&alice, "big-1", &[("BOLT-0010", 700)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(str_field(&r.body, "state"), "pending_approval", "{r}");
    assert!(
        !r.body["approval_reasons"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{r}"
    );
    let id = str_field(&r.body, "id").to_owned();
    let total = decimal(&r.body["total"]);
    assert!(total > "2000".parse().unwrap(), "{r}");
    let placed = env.get(&alice, "/v1/credit").await.body;
    assert_eq!(
        decimal(&placed["exposure"]),
        decimal(&before["exposure"]) + total,
        "{placed}"
    );

    // Alice is not an approver.
    let r = env
        .post(&alice, &format!("/v1/orders/{id}/approve"), json!({}))
        .await;
    assert_eq!(r.status, 403, "{r}");
    let r = env
        .post(&bob, &format!("/v1/orders/{id}/approve"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    assert_eq!(r.body["version"], 2, "{r}");
    let approved = env.get(&alice, "/v1/credit").await.body;
    assert_eq!(approved["exposure"], placed["exposure"], "{approved}");

    let warehouses = warehouses_of(&r.body);
    assert_eq!(warehouses.len(), 1, "{r}");
    let other = if warehouses[0] == "MUC" { "HAM" } else { "MUC" };
    let r = env
        .post(
            &env.warehouse_token(other).await,
            &format!("/v1/orders/{id}/ship"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 404, "{other} holds nothing of it: {r}");
    let r = env
        .post(
            &env.warehouse_token(&warehouses[0]).await,
            &format!("/v1/orders/{id}/ship"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(str_field(&r.body, "state"), "shipped", "{r}");
    assert_eq!(r.body["version"], 3, "{r}");

    let shipped = env.get(&alice, "/v1/credit").await.body;
    assert_eq!(
        decimal(&shipped["exposure"]),
        decimal(&placed["exposure"]),
        "{shipped}"
    );
    assert_eq!(
        decimal(&shipped["open_receivables"]),
        decimal(&before["open_receivables"]) + total,
        "{shipped}"
    );
    let r = env.get(&alice, &format!("/v1/orders/{id}")).await;
    assert_eq!(str_field(&r.body, "state"), "shipped", "{r}");
}

// With at most one request in flight per account, bursts of concurrent placements for one
// account get some 429s, each with Retry-After and the account_busy code. Every 201 is a real
// order, and the 429s created nothing: the account's orders are exactly the 201s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_over_its_inflight_limit_gets_429() {
    let env = TestEnv::start_with(&[("ORDERD_LIMITS__ACCOUNT_INFLIGHT_MAX", "1")]).await;
    bursts_until_refused(&env, 429, "account_busy").await;
}

// The daemon-wide bound pinned to one request in flight (minimum = maximum = 1): bursts get
// 503s with Retry-After and the daemon_busy code, and, as above, only the 201s created orders.
// /v1/ops/live reports the bound in force. (How the bound follows throughput is unit-tested in
// orderd_actors::admission.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_over_its_inflight_bound_gets_503() {
    let env = TestEnv::start_with(&[
        ("ORDERD_LIMITS__INFLIGHT_TOTAL_MIN", "1"),
        ("ORDERD_LIMITS__INFLIGHT_TOTAL_MAX", "1"),
        ("ORDERD_LIMITS__ACCOUNT_INFLIGHT_MAX", "1"),
    ])
    .await;
    bursts_until_refused(&env, 503, "daemon_busy").await;
    let operator = env.api().operator_token().await.expect("operator token");
    let live = env.get(&operator, "/v1/ops/live").await;
    assert_eq!(live.status, 200, "{live}");
    assert_eq!(live.body["queues"]["inflight_bound"], json!(1), "{live}");
}

/// Sends bursts of concurrent placements for one account until one is refused with `status`
/// and `code` (each refusal must carry Retry-After), then checks that the account's orders are
/// exactly the 201s: a refusal created nothing and lost nothing.
async fn bursts_until_refused(env: &TestEnv, status: u16, code: &str) {
    let token = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let body = json!({"lines": [{"sku": "NUT-0021", "qty": 1}], "ship_to": "BERLIN"});
    let mut created = BTreeSet::new();
    let mut refused = 0;
    let deadline = Instant::now() + BUSY_DEADLINE;
    let mut burst = 0;
    while refused == 0 && Instant::now() < deadline {
        burst += 1;
        let tasks: Vec<_> = (0..BURST_REQUESTS)
            .map(|i| {
                let (api, token, body) = (env.api().clone(), token.clone(), body.clone());
                tokio::spawn(
                    async move { api.place(&token, &format!("busy-{burst}-{i}"), &body).await },
                )
            })
            .collect();
        for t in tasks {
            let r = t.await.expect("task").expect("request");
            match r.status {
                201 => {
                    created.insert(str_field(&r.body, "id").to_owned());
                }
                s if s == status => {
                    refused += 1;
                    assert!(r.retry_after.is_some(), "{status} without Retry-After: {r}");
                    assert_eq!(r.code(), Some(code), "{r}");
                }
                _ => panic!("unexpected answer: {r}"),
            }
        }
    }
    assert!(
        refused > 0,
        "no {status} in {burst} bursts of {BURST_REQUESTS}"
    );
    assert!(!created.is_empty(), "nothing got through");
    let listed: BTreeSet<String> = env
        .api()
        .list_all_orders(&token, 200, 100)
        .await
        .expect("listing")
        .iter()
        .map(|o| str_field(o, "id").to_owned())
        .collect();
    assert_eq!(listed, created, "orders differ from the 201s");
    for id in &created {
        let r = env.get(&token, &format!("/v1/orders/{id}")).await;
        assert_eq!(r.status, 200, "{r}");
    }
}

// Started with a soft open-files limit of 128 (hard: 2,048), orderd lifts the soft one to the
// hard one, so that it still answers when more clients are connected at once than 128 files
// allow: every one of 384 connections held open together gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_clients_than_the_soft_open_files_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut env = TestEnv::start().await;
    env.spec.launcher = vec![
        "prlimit".into(),
        format!("--nofile={NOFILE_SOFT}:{NOFILE_HARD}"),
        "--".into(),
    ];
    env.restart().await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", env.daemon().pid()))
        .expect("the daemon's /proc limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3..5],
        [NOFILE_HARD.to_string(), NOFILE_HARD.to_string()],
        "{limits}"
    );

    let addr = env.daemon().addr();
    let mut held = Vec::with_capacity(CONNECTIONS_HELD);
    for _ in 0..CONNECTIONS_HELD {
        held.push(
            tokio::net::TcpStream::connect(addr)
                .await
                .expect("connecting"),
        );
    }
    for stream in &mut held {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: orderd\r\n\r\n")
            .await
            .expect("sending");
    }
    for (i, stream) in held.iter_mut().enumerate() {
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("connection {i} got no answer"))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(&head, b"HTTP/1.1 200", "connection {i}");
    }
}

// `orderd import` into a stopped daemon's data directory: a stock file refused after one
// warehouse's rows were stored exits 1, naming on stderr the warehouse stored and why the
// other was refused; after a restart the stored rows are there and the refused warehouse is
// unchanged. The corrected file exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_says_what_it_stored_and_why_it_stopped() {
    let mut env = TestEnv::start().await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let body =
        json!({"lines": [{"sku": "BOLT-0010", "qty": 5, "warehouse": "BER"}], "ship_to": "BERLIN"});
    let r = env
        .api()
        .place(&alice, "held", &body)
        .await
        .expect("request");
    assert_eq!(r.status, 201, "{r}");
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    let (ber, _) = bolt_available(&env).await;
    assert!(env.terminate().await.success());

    let refused = env
        .import(
            "stock",
            "warehouse,sku,on_hand\nBER,BOLT-0010,0\nMUC,BOLT-0010,42\n",
        )
        .await;
    assert_eq!(refused.code(), Some(1), "{refused}");
    assert!(
        refused.stderr.contains("stored all the same: MUC"),
        "{refused}"
    );
    assert!(
        refused
            .stderr
            .contains("BER: BOLT-0010: on hand 0 would be below"),
        "{refused}"
    );
    env.restart().await;
    assert_eq!(bolt_available(&env).await, (ber, json!(42)));
    assert!(env.terminate().await.success());

    let fixed = env
        .import("stock", "warehouse,sku,on_hand\nBER,BOLT-0010,5\n")
        .await;
    assert_eq!(fixed.code(), Some(0), "{fixed}");
    assert!(fixed.stdout.contains("imported 1 stock rows"), "{fixed}");
    env.restart().await;
    assert_eq!(bolt_available(&env).await, (json!(0), json!(42)));
}

/// What a buyer of ACME sees available of BOLT-0010 in BER and MUC.
async fn bolt_available(env: &TestEnv) -> (Value, Value) {
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let r = env.get(&alice, "/v1/catalog/BOLT-0010").await;
    assert_eq!(r.status, 200, "{r}");
    let available = &r.body["available"];
    (available["BER"].clone(), available["MUC"].clone())
}
