//! NATS JetStream: every committed order change reaches the stream, in per-order order and
//! without gaps, as seen by an independent consumer (the Python client nats-py,
//! `ops/nats/consume.py`); warehouses get their allocation, shipment and release events on
//! their own subjects. Stopping NATS under load, and killing orderd during the outage, loses
//! nothing: capture goes on, events wait in the audit log and follow once NATS is back.
//!
//! Each test starts its own `nats-server` (Debian's package; `ops/test` installs it) with
//! JetStream on a free port and a temporary store, and stops it afterwards.

use crate::env::{str_field, warehouses_of, TestEnv};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a started nats-server may take to accept connections.
const NATS_START_MAX: Duration = Duration::from_secs(10);
/// How long events may take to reach the stream once NATS is reachable.
const DELIVERY_MAX: Duration = Duration::from_secs(30);

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: TempDir,
}

impl NatsServer {
    /// A JetStream server on a free port with an empty store.
    pub fn start() -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store = tempfile::Builder::new()
            .prefix("orderd-nats-")
            .tempdir()
            .expect("a temporary store");
        let mut server = NatsServer {
            child: None,
            port,
            store,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and store.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting nats-server ({e}); ops/test installs Debian's nats-server package")
            });
        self.child = Some(child);
        let deadline = Instant::now() + NATS_START_MAX;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown, which writes its store out) and waits
    /// for it; SIGKILL after `NATS_START_MAX`. A SIGKILL can lose messages NATS already
    /// acknowledged (Debian's 2.9 syncs its store only periodically): that is why orderd's
    /// audit log, not NATS, is the source of truth for events.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + NATS_START_MAX;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `ops/nats/consume.py` saw on `stream`, read with the durable consumer `durable`: only
/// what earlier reads did not see, checked against them (their state is kept in the store's
/// directory, so it lives as long as the consumer's own position).
fn consume(nats: &NatsServer, stream: &str, durable: &str, any_sequence: bool) -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: ops/test creates it and installs nats-py (ops/nats/requirements.txt)",
        python.display()
    );
    let mut cmd = Command::new(python);
    cmd.arg(root.join("ops/nats/consume.py"))
        .args([nats.url().as_str(), stream, durable])
        .arg("--state")
        .arg(
            nats.store
                .path()
                .join(format!("consume-{stream}-{durable}.json")),
        );
    if any_sequence {
        cmd.arg("--any-sequence");
    }
    let out = cmd.output().expect("running the nats-py consumer");
    assert!(
        out.status.success(),
        "consume.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("consume.py prints JSON")
}

/// Reads the order stream until every order of `want` (order id -> its version) has all its
/// events, or fails after `DELIVERY_MAX`. Returns the orders and events seen.
fn await_orders(nats: &NatsServer, want: &BTreeMap<String, u64>) -> BTreeMap<String, Vec<u64>> {
    let deadline = Instant::now() + DELIVERY_MAX;
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    loop {
        let got = consume(nats, "ORDERD_ORDERS", "test-orders", false);
        assert_eq!(got["problems"], json!([]), "{got}");
        for (order, seqs) in got["orders"].as_object().expect("orders") {
            let seqs = seqs
                .as_array()
                .expect("seqs")
                .iter()
                .map(|s| s.as_u64().expect("seq"));
            seen.entry(order.clone()).or_default().extend(seqs);
        }
        let complete = want
            .iter()
            .all(|(o, v)| seen.get(o).is_some_and(|s| s.len() as u64 >= *v));
        if complete {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "events missing after {DELIVERY_MAX:?}: want {want:?}, seen {seen:?}"
        );
    }
}

// Orders placed, approved, shipped and cancelled through orderd: the order stream carries
// every change of every order with sequences 1..=version in order (checked per message by
// nats-py), with Nats-Msg-Id equal to the event id; the allocation stream carries, on each
// warehouse's subject, the allocation, the shipment and the release, also for a change that
// moves stock in two warehouses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_jetstream_in_order() {
    let nats = NatsServer::start();
    let env = TestEnv::start_with(&[("ORDERD_NATS__URL", &nats.url())]).await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;

    let mut want = BTreeMap::new();
    let r = env
        .place(&alice, "n-1", &[("BOLT-0010", 700)], "BERLIN")
        .await;
    assert_eq!(str_field(&r.body, "state"), "pending_approval", "{r}");
    let big = str_field(&r.body, "id").to_owned();
    let r = env
        .post(&bob, &format!("/v1/orders/{big}/approve"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    let shipped_from = warehouses_of(&r.body);
    let r = env
        .post(
            &env.warehouse_token(&shipped_from[0]).await,
            &format!("/v1/orders/{big}/ship"),
            json!({}),
        )
        .await;
    assert_eq!(str_field(&r.body, "state"), "shipped", "{r}");
    want.insert(big.clone(), 3);

    let r = env
        .place(&alice, "n-2", &[("BOLT-0010", 5)], "BERLIN")
        .await;
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    let cancelled = str_field(&r.body, "id").to_owned();
    let cancelled_from = warehouses_of(&r.body);
    let r = env
        .post(&alice, &format!("/v1/orders/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");
    want.insert(cancelled.clone(), 2);
    // Stock from two warehouses in one change: each warehouse's subject gets it.
    let lines = json!([
        {"sku": "BOLT-0010", "qty": 1, "warehouse": "BER"},
        {"sku": "NUT-0021", "qty": 1, "warehouse": "MUC"},
    ]);
    let r = env
        .api()
        .place(&bob, "n-two", &json!({"lines": lines, "ship_to": "BERLIN"}))
        .await
        .expect("request");
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    assert_eq!(warehouses_of(&r.body), ["BER", "MUC"], "{r}");
    let two = str_field(&r.body, "id").to_owned();
    want.insert(two.clone(), 1);
    for i in 0..20 {
        want.insert(place_one(&env, &bob, &format!("n-more-{i}")).await, 1);
    }
    assert_all_delivered(&nats, &want);

    let alloc = consume(&nats, "ORDERD_ALLOCATIONS", "test-alloc", true);
    assert_eq!(alloc["problems"], json!([]), "{alloc}");
    let subjects = alloc["subjects"].as_object().expect("subjects");
    // The approved order: allocated, then shipped, both on its warehouse's subject.
    let big_subject = format!("orderd.allocations.{}.{big}", shipped_from[0]);
    assert_eq!(subjects.get(&big_subject), Some(&json!(2)), "{alloc}");
    // The cancelled one: allocated at once, then released.
    let cancel_subject = format!("orderd.allocations.{}.{cancelled}", cancelled_from[0]);
    assert_eq!(subjects.get(&cancel_subject), Some(&json!(2)), "{alloc}");
    assert_eq!(alloc["orders"][&big], json!([2, 3]), "{alloc}");
    for w in ["BER", "MUC"] {
        let subject = format!("orderd.allocations.{w}.{two}");
        assert_eq!(
            subjects.get(&subject),
            Some(&json!(1)),
            "{subject}: {alloc}"
        );
    }
    // Nothing went out twice here, so JetStream took no message for a duplicate.
    let duplicates = env.metric("orderd_nats_duplicates_total").await;
    assert!(duplicates.unwrap_or(0.0) == 0.0, "{duplicates:?}");
}

// NATS is stopped while clients keep ordering, for longer than a round waits for its PubAcks
// (so rounds fail), and comes back (with room for only 3 messages waiting for PubAcks: a
// publisher that held more would fail every round): orderd publishes what waited in the log,
// then live again, an order whose events straddle the outage complete and in order. NATS is stopped a second
// time: capture goes on (every order is acknowledged). Then orderd is killed too, both come
// back, and every acknowledged order's events reach the stream, complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_and_a_crash_lose_no_event() {
    let mut nats = NatsServer::start();
    let mut env = TestEnv::start_with(&[
        ("ORDERD_NATS__URL", &nats.url()),
        ("ORDERD_NATS__RETRY_MAX_MS", "200"),
        ("ORDERD_NATS__ACK_TIMEOUT_MS", "500"),
        // Far below a catch-up round's messages: rounds go out in parts and wait for each other.
        ("ORDERD_NATS__ACKS_IN_FLIGHT_MAX", "3"),
    ])
    .await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    // Each check reads what the durable consumer has not read yet.
    let mut first = BTreeMap::new();
    let straddling = place_one(&env, &bob, "before-0").await;
    first.insert(straddling.clone(), 1);
    for i in 1..10 {
        first.insert(place_one(&env, &bob, &format!("before-{i}")).await, 1);
    }
    await_published(&env).await;
    nats.stop();
    for i in 0..10 {
        first.insert(place_one(&env, &bob, &format!("first-outage-{i}")).await, 1);
    }
    // Its first event went out before the outage, its second waits in the log.
    let r = env
        .post(&bob, &format!("/v1/orders/{straddling}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");
    first.insert(straddling, 2);
    // Longer than a round waits for its PubAcks (and a retry pause): the publisher's rounds
    // fail and it goes back to the log, instead of the client's reconnect carrying them.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let failed = env.metric(r#"orderd_outbox_depth{reader="nats"}"#).await;
    assert!(failed.is_some_and(|d| d >= 11.0), "outbox depth {failed:?}");
    nats.resume();
    // Without a restart of orderd: what waited, then what comes after.
    assert_all_delivered(&nats, &first);
    let mut between = BTreeMap::new();
    for i in 0..5 {
        between.insert(place_one(&env, &bob, &format!("between-{i}")).await, 1);
    }
    assert_all_delivered(&nats, &between);
    let mut want = BTreeMap::new();
    nats.stop();
    let started = Instant::now();
    for i in 0..30 {
        want.insert(place_one(&env, &bob, &format!("during-{i}")).await, 1);
    }
    let during = started.elapsed();
    // Capture does not wait for NATS (30 orders, far below any publish timeout each).
    assert!(
        during < Duration::from_secs(10),
        "capture slowed down: {during:?}"
    );
    // The events wait in the audit log, and operators see how many.
    let depth = env.metric(r#"orderd_outbox_depth{reader="nats"}"#).await;
    assert!(depth.is_some_and(|d| d >= 30.0), "outbox depth {depth:?}");
    env.kill().await;
    nats.resume();
    env.restart().await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    want.insert(place_one(&env, &bob, "after-0").await, 1);
    assert_all_delivered(&nats, &want);
    // Caught up: nothing waits, and the lag of what was published is measured.
    await_published(&env).await;
    let published = env
        .metric(r#"orderd_event_lag_seconds_count{stage="nats"}"#)
        .await;
    assert!(published.is_some_and(|n| n >= 1.0), "{published:?}");
}

/// Waits until the publisher has every event acknowledged (its outbox depth is 0).
async fn await_published(env: &TestEnv) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.metric(r#"orderd_outbox_depth{reader="nats"}"#).await != Some(0.0) {
        assert!(Instant::now() < deadline, "the publisher did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every order of `want` has exactly its events 1..=version on the order stream, in order.
fn assert_all_delivered(nats: &NatsServer, want: &BTreeMap<String, u64>) {
    let seen = await_orders(nats, want);
    for (order, version) in want {
        assert_eq!(seen[order], (1..=*version).collect::<Vec<_>>(), "{order}");
    }
}

/// Places a one-line order that must be acknowledged; its id.
async fn place_one(env: &TestEnv, token: &str, key: &str) -> String {
    let r = env.place(token, key, &[("BOLT-0010", 1)], "BERLIN").await;
    assert_eq!(r.status, 201, "capture must go on: {r}");
    str_field(&r.body, "id").to_owned()
}
