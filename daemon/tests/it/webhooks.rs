//! Webhooks against the real binary and an independent receiver (`ops/webhooks/receiver.py`)
//! that verifies every request with the Standard Webhooks reference library (PyPI
//! `standardwebhooks`, installed into .venv by ops/test) and answers scripted statuses.

use crate::env::{str_field, TestEnv};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long deliveries (with their retries) may take to show at the receiver.
const DELIVERY_MAX: Duration = Duration::from_secs(60);

struct Receiver {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

impl Receiver {
    fn start() -> Receiver {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: ops/test creates it and installs standardwebhooks (ops/webhooks/requirements.txt)",
            python.display()
        );
        let mut child = Command::new(python)
            .arg(root.join("ops/webhooks/receiver.py"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the receiver's port line");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the receiver did not start (standardwebhooks missing from .venv?): {line:?}"
                )
            });
        Receiver {
            child,
            port,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn put(&self, what: &str, path: &str, body: Value) {
        let r = self
            .http
            .put(self.url(&format!("/_control/{what}{path}")))
            .json(&body)
            .send()
            .await
            .expect("receiver control");
        assert_eq!(r.status(), 204);
    }

    async fn log(&self, path: &str) -> Vec<Value> {
        let all: Vec<Value> = self
            .http
            .get(self.url("/_control/log"))
            .send()
            .await
            .expect("receiver log")
            .json()
            .await
            .expect("log JSON");
        all.into_iter().filter(|e| e["path"] == path).collect()
    }

    /// Ids answered 2xx at `path`, in arrival order (a delayed answer came after orderd's
    /// request timeout: not delivered).
    async fn delivered(&self, path: &str) -> Vec<String> {
        self.log(path)
            .await
            .iter()
            .filter(|e| {
                e["status"]
                    .as_u64()
                    .is_some_and(|s| (200..300).contains(&s))
                    && e["delay_s"] == 0
            })
            .map(|e| str_field(e, "id").to_owned())
            .collect()
    }

    /// Waits until `path` got every id of `want` answered 2xx.
    async fn await_delivered(&self, path: &str, want: &[String]) -> Vec<String> {
        let deadline = Instant::now() + DELIVERY_MAX;
        loop {
            let got = self.delivered(path).await;
            if want.iter().all(|w| got.contains(w)) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: want {want:?}, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// A receiver that stalls while more of its account's events arrive than the in-process bus
// holds for one account: the endpoint falls behind the bus, catches up from the audit log, and
// every event still arrives once, in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_endpoint_catches_up_from_the_log() {
    // Placing the orders took 3.3 s in a debug build on an idle 2-core machine; CI runs other
    // tests beside it.
    const STALL_S: u64 = 25;
    const WORKERS: usize = 8;
    let orders = orderd_actors::events::BUS_ACCOUNT_CAPACITY + 200;
    let rx = Receiver::start();
    let unlimited = "1000000";
    let env = TestEnv::start_with(&[
        ("ORDERD_WEBHOOKS__ALLOW_PRIVATE", "true"),
        ("ORDERD_WEBHOOKS__POLL_MS", "50"),
        ("ORDERD_API__RATE_LIMIT__ACCOUNT_MUTATIONS_PER_S", unlimited),
        ("ORDERD_API__RATE_LIMIT__ACCOUNT_MUTATIONS_BURST", unlimited),
        ("ORDERD_API__RATE_LIMIT__TOKEN_MUTATIONS_PER_S", unlimited),
        ("ORDERD_API__RATE_LIMIT__TOKEN_MUTATIONS_BURST", unlimited),
    ])
    .await;
    let admin = env.token("ACME", "ada", &["account_admin"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let (_, secret) = register(&env, &admin, &rx.url("/slow")).await;
    rx.put("secrets", "/slow", json!([secret])).await;
    // One event delivered: the endpoint's task is caught up and takes events from the bus.
    let warm = place_one(&env, &bob, "stall-warm").await;
    rx.await_delivered("/slow", std::slice::from_ref(&warm))
        .await;
    // The next event waits out a Retry-After; everything after it is answered at once.
    rx.put(
        "script",
        "/slow",
        json!([{"status": 429, "retry_after": STALL_S.to_string()}, {"status": 200}]),
    )
    .await;
    let first = place_one(&env, &bob, "stall-first").await;
    wait_for("the first event refused", async || {
        (rx.log("/slow").await.len() > 1).then_some(())
    })
    .await;
    let stalled = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (api, token) = (env.api().clone(), bob.clone());
            tokio::spawn(async move {
                // The demo's three warehouses hold about 3,800 of it.
                let body = json!({"lines": [{"sku": "BOLT-0010", "qty": 1}], "ship_to": "BERLIN"});
                for i in (w..orders).step_by(WORKERS) {
                    let r = api.place(&token, &format!("stall-{i}"), &body).await;
                    let r = r.expect("request");
                    assert_eq!(r.status, 201, "{r}");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    assert!(
        stalled.elapsed() < Duration::from_secs(STALL_S),
        "placing {orders} orders took {:?}, longer than the receiver stalled: the test shows nothing",
        stalled.elapsed()
    );

    // The log's order of the account's events: what the endpoint must receive.
    let mut expected = vec![];
    let mut after = 0;
    loop {
        let page = env.get(&admin, &format!("/v1/events?after={after}")).await;
        assert_eq!(page.status, 200, "{page}");
        let events = page.body["events"].as_array().unwrap();
        expected.extend(
            events
                .iter()
                .map(|e| str_field(&e["event"], "id").to_owned()),
        );
        let next = page.body["next"].as_u64().unwrap();
        if next == after {
            break;
        }
        after = next;
    }
    assert_eq!(expected.len(), orders + 2);
    assert_eq!(expected[..2], [warm, first]);
    let got = rx.await_delivered("/slow", &expected).await;
    assert_eq!(got, expected, "each event once, in log order");
}

// An endpoint deleted while it waits out its receiver's pause (Retry-After: an hour) stops
// within a round, not after the pause: it no longer counts behind the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_endpoint_stops_waiting_out_its_pause() {
    let (rx, env, admin, bob) = with_receiver(&[]).await;
    let (stuck, _) = register(&env, &admin, &rx.url("/stuck")).await;
    rx.put(
        "script",
        "/stuck",
        json!([{"status": 200}, {"status": 429, "retry_after": "3600"}]),
    )
    .await;
    let asked = async |n: usize| {
        wait_for("/stuck's requests", async || {
            (rx.log("/stuck").await.len() >= n).then_some(())
        })
        .await
    };
    place_one(&env, &bob, "paused-0").await;
    asked(1).await;
    // A round later where the endpoint got to is known.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    place_one(&env, &bob, "paused-1").await;
    asked(2).await;
    let depth = async || {
        (env.metric(r#"orderd_outbox_depth{reader="webhooks"}"#)
            .await)
            .unwrap_or(0.0)
    };
    wait_for("the paused endpoint behind the log", async || {
        (depth().await > 0.0).then_some(())
    })
    .await;
    delete_endpoint(&env, &admin, &stuck).await;
    wait_for("the deleted endpoint's task ended", async || {
        (depth().await == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        rx.log("/stuck").await.len(),
        2,
        "nothing sent after the deletion"
    );
}

// An endpoint registered for one event type gets only events of that type: live from the bus,
// and again when it catches up from the audit log after kill -9 (its cursor was never stored,
// so everything since it was registered comes once more, all of it read from the log).
// Deliveries go direct: the proxy in orderd's environment (one that refuses every connection)
// is not used, as a proxy would resolve receivers' names past the guarded resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_gets_only_the_event_types_it_registered_for() {
    const ORDERS: usize = 3;
    const REFUSING_PROXY: &str = "http://127.0.0.1:9";
    let (rx, mut env, admin, bob) = with_receiver(&[
        ("ORDERD_WEBHOOKS__CURSOR_STORE_MS", "3600000"),
        ("HTTP_PROXY", REFUSING_PROXY),
        ("http_proxy", REFUSING_PROXY),
        ("ALL_PROXY", REFUSING_PROXY),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
    ])
    .await;
    let (_, secret) = register(&env, &admin, &rx.url("/all")).await;
    rx.put("secrets", "/all", json!([secret])).await;
    let (_, secret) = register_for(
        &env,
        &admin,
        &rx.url("/cancelled"),
        &["orderd.order.cancelled"],
    )
    .await;
    rx.put("secrets", "/cancelled", json!([secret])).await;

    // Each order: allocated at once (event 1), then cancelled (event 2).
    let (mut all, mut cancelled) = (vec![], vec![]);
    for i in 0..ORDERS {
        let allocated = place_one(&env, &bob, &format!("typed-{i}")).await;
        let order = allocated.trim_end_matches(".1").to_owned();
        let r = env
            .post(&bob, &format!("/v1/orders/{order}/cancel"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.body["state"], "cancelled", "{r}");
        all.extend([allocated, format!("{order}.2")]);
        cancelled.push(format!("{order}.2"));
    }
    rx.await_delivered("/all", &all).await;
    rx.await_delivered("/cancelled", &cancelled).await;
    let sent = |log: Vec<Value>| -> Vec<String> {
        log.iter().map(|e| str_field(e, "id").to_owned()).collect()
    };
    assert_eq!(
        sent(rx.log("/cancelled").await),
        cancelled,
        "live: only its type"
    );

    env.kill().await;
    env.restart().await;
    let twice = |ids: &[String]| [ids, ids].concat();
    let all_twice = twice(&all);
    wait_for("every event sent to /all again", async || {
        (rx.delivered("/all").await.len() >= all_twice.len()).then_some(())
    })
    .await;
    assert_eq!(
        rx.delivered("/all").await,
        all_twice,
        "caught up from the log, in order"
    );
    let want = twice(&cancelled);
    wait_for("the cancellations sent to /cancelled again", async || {
        (rx.delivered("/cancelled").await.len() >= want.len()).then_some(())
    })
    .await;
    assert_eq!(
        sent(rx.log("/cancelled").await),
        want,
        "caught up from the log: only its type"
    );
}

/// Deliveries across a crash: each event in log order, nothing lost. Delivery resumes at the
/// endpoint's stored cursor, so what was delivered after it was last written comes once more,
/// in order (`got` = `events[..k]` then `events[j..]` with `j <= k`); a receiver drops the
/// repeats by `webhook-id`.
fn assert_resumed(got: &[String], events: &[String]) {
    let k = (0..got.len())
        .find(|&i| got[..i].contains(&got[i]))
        .unwrap_or(got.len());
    assert!(k <= events.len(), "only these events: {got:?}");
    assert_eq!(got[..k], events[..k], "in log order before the crash");
    let j = if k == got.len() {
        k
    } else {
        events
            .iter()
            .position(|e| *e == got[k])
            .expect("a delivered event")
    };
    assert!(j <= k);
    assert_eq!(
        got[k..],
        events[j..],
        "nothing lost or reordered across the crash: {got:?}"
    );
}

// An event's failed attempts are counted across kill -9: with `attempts_max` 3, two made
// before the crash and one after make it a dead letter of 3 attempts, not 3 more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_attempts_count_across_a_crash() {
    let (rx, mut env, admin, bob) = with_receiver(&[
        ("ORDERD_WEBHOOKS__ATTEMPTS_MAX", "3"),
        ("ORDERD_WEBHOOKS__BACKOFF_BASE_MS", "1500"),
        ("ORDERD_WEBHOOKS__BACKOFF_MAX_MS", "1500"),
    ])
    .await;
    let (down, _) = register(&env, &admin, &rx.url("/down")).await;
    rx.put("script", "/down", json!([{"status": 500}])).await;
    let event = place_one(&env, &bob, "down-0").await;
    wait_for("two attempts", async || {
        (rx.log("/down").await.len() >= 2).then_some(())
    })
    .await;
    // The second failure's tries are stored; the third attempt is 750 ms or more away.
    failure_stored(&env, "\"attempt\":2").await;
    env.kill().await;
    assert_eq!(rx.log("/down").await.len(), 2, "killed before the third");
    env.restart().await;
    let admin = env.token("ACME", "ada", &["account_admin"]).await;
    let dl = wait_for("the event dead-lettered", async || {
        dead_letters(&env, &admin, &down).await.pop()
    })
    .await;
    assert_eq!(dl["event_id"], event.as_str(), "{dl}");
    assert_eq!(dl["attempts"], 3, "{dl}");
    let log = rx.log("/down").await;
    assert_eq!(log.len(), 3, "three attempts in all: {log:?}");
    assert!(log.iter().all(|e| e["id"] == event.as_str()), "{log:?}");
}

// A receiver's 410 disables its endpoint; once the receiver works again, its account's admin
// enables it: it gets every event it missed, in log order, and its dead letter can be replayed
// to it. Enabled with `skip_missed`, it gets only what comes after. Another account's admin
// cannot enable it, and an active endpoint cannot skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_endpoint_is_enabled_again() {
    let (rx, env, admin, bob) = with_receiver(&[]).await;
    let (ep, secret) = register(&env, &admin, &rx.url("/back")).await;
    rx.put("secrets", "/back", json!([secret])).await;
    rx.put("script", "/back", json!([{"status": 410}])).await;
    let enable = async |token: &str, body: Value| {
        (env.post(token, &format!("/v1/webhooks/{ep}/enable"), body)).await
    };
    let disabled = async || {
        let r = env.get(&admin, "/v1/webhooks").await;
        let eps = r.body["endpoints"].as_array().unwrap().clone();
        eps.iter()
            .any(|e| e["id"] == ep.as_str() && !e["disabled"].is_null())
    };
    let gone = place_one(&env, &bob, "back-0").await;
    wait_for("the endpoint disabled", async || {
        disabled().await.then_some(())
    })
    .await;
    let missed = vec![
        place_one(&env, &bob, "back-1").await,
        place_one(&env, &bob, "back-2").await,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.log("/back").await.len(),
        1,
        "nothing sent while disabled"
    );

    rx.put("script", "/back", json!([{"status": 200}])).await;
    let other = env.token("BAUHAUS", "otto", &["account_admin"]).await;
    assert_eq!(enable(&other, json!({})).await.status, 404);
    let r = enable(&admin, json!({})).await;
    assert_eq!(r.status, 200, "{r}");
    assert!(r.body["disabled"].is_null(), "{r}");
    assert!(r.body.get("secret").is_none(), "{r}");
    let got = rx.await_delivered("/back", &missed).await;
    assert_eq!(got, missed, "what it missed, in log order");
    let r = enable(&admin, json!({"skip_missed": true})).await;
    assert_eq!(r.status, 409, "{r}");
    let dl = dead_letters(&env, &admin, &ep).await;
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0]["event_id"], gone.as_str());
    let replay = format!(
        "/v1/webhooks/dead-letters/{}/replay",
        str_field(&dl[0], "id")
    );
    assert_eq!(env.post(&admin, &replay, json!({})).await.status, 202);
    let mut all = missed.clone();
    all.push(gone.clone());
    assert_eq!(rx.await_delivered("/back", &all).await, all);

    // Gone again; enabled skipping what it missed.
    rx.put("script", "/back", json!([{"status": 410}])).await;
    let gone_again = place_one(&env, &bob, "back-3").await;
    wait_for("the endpoint disabled again", async || {
        disabled().await.then_some(())
    })
    .await;
    let skipped = place_one(&env, &bob, "back-4").await;
    rx.put("script", "/back", json!([{"status": 200}])).await;
    let r = enable(&admin, json!({"skip_missed": true})).await;
    assert_eq!(r.status, 200, "{r}");
    let after = place_one(&env, &bob, "back-5").await;
    all.push(after.clone());
    let got = rx.await_delivered("/back", &all).await;
    assert_eq!(
        got, all,
        "not {gone_again} (a dead letter) nor {skipped} (skipped)"
    );
}

// A receiver that answers a replay `429 Retry-After: 8` gets nothing for 8 s, also across a
// kill -9 of orderd: the replay and the live event placed after the restart both wait (while a
// replay waits out a plain backoff, live events go on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_to_a_replay_holds_live_events_across_a_crash() {
    let (rx, mut env, admin, bob) = with_receiver(&[
        ("ORDERD_WEBHOOKS__ATTEMPTS_MAX", "2"),
        ("ORDERD_WEBHOOKS__BACKOFF_BASE_MS", "100"),
        ("ORDERD_WEBHOOKS__BACKOFF_MAX_MS", "100"),
    ])
    .await;
    let (ep, _) = register(&env, &admin, &rx.url("/hold")).await;
    rx.put(
        "script",
        "/hold",
        json!([{"status": 500}, {"status": 500}, {"status": 429, "retry_after": "8"}, {"status": 200}]),
    )
    .await;
    let first = place_one(&env, &bob, "hold-0").await;
    let dl = wait_for("the event dead-lettered", async || {
        dead_letters(&env, &admin, &ep).await.pop()
    })
    .await;
    let replay = format!("/v1/webhooks/dead-letters/{}/replay", str_field(&dl, "id"));
    assert_eq!(env.post(&admin, &replay, json!({})).await.status, 202);
    let refused_at = wait_for("the replay refused", async || {
        let log = rx.log("/hold").await;
        log.get(2).map(|e| e["at"].as_f64().unwrap())
    })
    .await;
    logged(&env, "dead letter replay failed", &first).await;
    env.kill().await;
    env.restart().await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let live = place_one(&env, &bob, "hold-1").await;
    let placed_at = unix_secs();
    assert!(
        placed_at - refused_at < 7.0,
        "restarted and placed {} s after the refusal: too late to tell",
        placed_at - refused_at
    );
    let got = rx
        .await_delivered("/hold", &[first.clone(), live.clone()])
        .await;
    assert_eq!(
        got,
        [first, live.clone()],
        "the replay first, then the live event"
    );
    let log = rx.log("/hold").await;
    assert_eq!(log.len(), 5, "nothing sent during the pause: {log:?}");
    for e in &log[3..] {
        let waited = e["at"].as_f64().unwrap() - refused_at;
        assert!(waited >= 7.9, "{} sent {waited} s after the 429", e["id"]);
    }
}

/// A receiver; orderd delivering webhooks to private addresses in rounds of 50 ms, with
/// `settings` (environment variables) besides; and tokens of ACME's account admin (ada) and of
/// a buyer and approver (bob).
async fn with_receiver(settings: &[(&str, &str)]) -> (Receiver, TestEnv, String, String) {
    let rx = Receiver::start();
    let mut all = vec![
        ("ORDERD_WEBHOOKS__ALLOW_PRIVATE", "true"),
        ("ORDERD_WEBHOOKS__POLL_MS", "50"),
    ];
    all.extend_from_slice(settings);
    let env = TestEnv::start_with(&all).await;
    let admin = env.token("ACME", "ada", &["account_admin"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    (rx, env, admin, bob)
}

/// Places a one-line order (one event: it is allocated at once); its event id.
async fn place_one(env: &TestEnv, token: &str, key: &str) -> String {
    let r = env.place(token, key, &[("BOLT-0010", 1)], "BERLIN").await;
    assert_eq!(r.status, 201, "{r}");
    format!("{}.1", str_field(&r.body, "id"))
}

async fn register(env: &TestEnv, admin: &str, url: &str) -> (String, String) {
    register_for(env, admin, url, &["*"]).await
}

/// Registers an endpoint for `event_types`; its id and secret.
async fn register_for(
    env: &TestEnv,
    admin: &str,
    url: &str,
    event_types: &[&str],
) -> (String, String) {
    let r = env
        .post(
            admin,
            "/v1/webhooks",
            json!({"url": url, "event_types": event_types}),
        )
        .await;
    assert_eq!(r.status, 201, "{r}");
    let secret = str_field(&r.body, "secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (str_field(&r.body, "id").to_owned(), secret)
}

/// The dead letters of `endpoint` the caller sees, read two at a time following the cursor.
async fn dead_letters(env: &TestEnv, token: &str, endpoint: &str) -> Vec<Value> {
    let (mut all, mut cursor) = (Vec::new(), String::new());
    loop {
        let r = env
            .get(token, &format!("/v1/webhooks/dead-letters?limit=2{cursor}"))
            .await;
        assert_eq!(r.status, 200, "{r}");
        let page = r.body["dead_letters"].as_array().unwrap();
        assert!(page.len() <= 2, "{r}");
        all.extend(page.iter().filter(|d| d["endpoint"] == endpoint).cloned());
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

/// Deletes endpoint `id` of the admin's account (204).
async fn delete_endpoint(env: &TestEnv, admin: &str, id: &str) {
    let path = format!("/v1/webhooks/{id}");
    let r = (env.api())
        .send(reqwest::Method::DELETE, &path, Some(admin), None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r}");
}

/// Waits until orderd logged a retried failure whose line holds `needle` (an event id): it logs
/// it once the event's tries are stored.
async fn failure_stored(env: &TestEnv, needle: &str) {
    logged(env, "webhook delivery failed", needle).await
}

/// Waits for orderd to log `message` on a line holding `needle`.
async fn logged(env: &TestEnv, message: &str, needle: &str) {
    wait_for(message, async || {
        (env.log_tail().lines())
            .any(|l| l.contains(message) && l.contains(needle))
            .then_some(())
    })
    .await
}

/// Now, as the receiver's `at` (Unix seconds).
fn unix_secs() -> f64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .unwrap()
        .as_secs_f64()
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DELIVERY_MAX;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// One account, three endpoints on a scripted receiver:
// - /flaky answers 500 then 200 (retried), then times out, then 429 with Retry-After: 2
//   (honoured), then 200: every event arrives once answered 2xx, in log order, every request
//   signed validly; after a secret rotation both the old and the new secret verify;
// - /gone answers 410: the endpoint is disabled after one request, its event is a dead letter,
//   which cannot be replayed there but is delivered by a new endpoint it is replayed to;
// - /dead always fails: its events become dead letters, and after the receiver recovers a
//   replay delivers each.
// orderd is killed -9 while an event waits on a Retry-After, and the event arrives after the
// restart. Another account's admin sees none of it (404); an operator sees every dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_ordered_retried_and_dead_lettered() {
    let (rx, mut env, admin, bob) = with_receiver(&[
        ("ORDERD_WEBHOOKS__BACKOFF_BASE_MS", "100"),
        ("ORDERD_WEBHOOKS__BACKOFF_MAX_MS", "300"),
        ("ORDERD_WEBHOOKS__ATTEMPTS_MAX", "4"),
        ("ORDERD_WEBHOOKS__REQUEST_TIMEOUT_MS", "2000"),
        ("ORDERD_WEBHOOKS__CONNECT_TIMEOUT_MS", "1000"),
    ])
    .await;
    let (flaky, old_secret) = register(&env, &admin, &rx.url("/flaky")).await;
    let (gone, gone_secret) = register(&env, &admin, &rx.url("/gone")).await;
    let (dead, dead_secret) = register(&env, &admin, &rx.url("/dead")).await;
    rx.put("secrets", "/flaky", json!([old_secret])).await;
    rx.put("secrets", "/gone", json!([gone_secret])).await;
    rx.put("secrets", "/dead", json!([dead_secret])).await;
    rx.put(
        "script",
        "/flaky",
        json!([{"status": 500}, {"status": 200}, {"status": 200, "delay_s": 3},
               {"status": 429, "retry_after": "2"}, {"status": 200}]),
    )
    .await;
    rx.put("script", "/gone", json!([{"status": 410}])).await;
    rx.put("script", "/dead", json!([{"status": 500}])).await;

    let mut events = vec![];
    for i in 0..4 {
        events.push(place_one(&env, &bob, &format!("o-{i}")).await);
    }
    let got = rx.await_delivered("/flaky", &events).await;
    assert_eq!(got, events, "each event once, in log order");
    let log = rx.log("/flaky").await;
    assert!(
        log.iter().all(|e| e["verified"] == json!([true])),
        "{log:?}"
    );
    let statuses: Vec<u64> = log.iter().map(|e| e["status"].as_u64().unwrap()).collect();
    assert_eq!(&statuses[..5], [500, 200, 200, 429, 200], "{log:?}");
    // 500 then 200: the same event again. The timed-out request and the 429 are retried too.
    assert_eq!(log[0]["id"], log[1]["id"]);
    assert_eq!(log[2]["id"], log[3]["id"]);
    assert_eq!(log[3]["id"], log[4]["id"]);
    let waited = log[4]["at"].as_f64().unwrap() - log[3]["at"].as_f64().unwrap();
    assert!(waited >= 1.9, "Retry-After: 2 honoured, waited {waited} s");

    // Rotation: both secrets sign (two signatures), and each verifies on its own.
    let r = env
        .post(&admin, &format!("/v1/webhooks/{flaky}/rotate"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{r}");
    let new_secret = str_field(&r.body, "secret").to_owned();
    assert_ne!(new_secret, old_secret);
    rx.put("secrets", "/flaky", json!([old_secret, new_secret]))
        .await;
    let rotated = place_one(&env, &bob, "o-rotated").await;
    events.push(rotated.clone());
    rx.await_delivered("/flaky", &events).await;
    let after: Vec<Value> = rx
        .log("/flaky")
        .await
        .into_iter()
        .filter(|e| e["id"] == rotated.as_str())
        .collect();
    assert!(!after.is_empty());
    for e in &after {
        assert_eq!(e["verified"], json!([true, true]), "{e}");
        assert_eq!(str_field(e, "signature").split(' ').count(), 2, "{e}");
    }

    // 410: one request, the endpoint is disabled, its event is a dead letter (not replayable
    // there).
    let list = wait_for("the 410 endpoint disabled", async || {
        let r = env.get(&admin, "/v1/webhooks").await;
        let eps = r.body["endpoints"].as_array().unwrap().clone();
        eps.iter()
            .any(|e| e["id"] == gone.as_str() && !e["disabled"].is_null())
            .then_some(eps)
    })
    .await;
    assert!(list.iter().all(|e| e.get("secret").is_none()), "{list:?}");
    assert_eq!(rx.log("/gone").await.len(), 1);
    let gone_dl = dead_letters(&env, &admin, &gone).await;
    assert_eq!(gone_dl.len(), 1, "{gone_dl:?}");
    assert_eq!(gone_dl[0]["event_id"], events[0].as_str());
    let r = env
        .post(
            &admin,
            &format!(
                "/v1/webhooks/dead-letters/{}/replay",
                str_field(&gone_dl[0], "id")
            ),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 409, "{r}");

    // A crash while an event waits on Retry-After: after the restart it is sent again, once
    // the pause the receiver asked for is over (it is stored with the event's tries).
    rx.put(
        "script",
        "/flaky",
        json!([{"status": 503, "retry_after": "6"}, {"status": 200}]),
    )
    .await;
    let crashed = place_one(&env, &bob, "o-crash").await;
    events.push(crashed.clone());
    failure_stored(&env, &crashed).await;
    env.kill().await;
    env.restart().await;
    let admin = env.token("ACME", "ada", &["account_admin"]).await;
    let got = rx.await_delivered("/flaky", &events).await;
    assert_resumed(&got, &events);
    let times: Vec<f64> = (rx.log("/flaky").await.iter())
        .filter(|e| e["id"] == crashed.as_str())
        .map(|e| e["at"].as_f64().unwrap())
        .collect();
    assert!(times.len() >= 2, "{times:?}");
    let waited = times[1] - times[0];
    assert!(
        waited >= 5.9,
        "Retry-After: 6 honoured across the crash, waited {waited} s"
    );

    // /dead: every event a dead letter (kept across the restart); the receiver recovers and
    // each replay delivers its event, validly signed.
    let dls = wait_for("every /dead event dead-lettered", async || {
        let d = dead_letters(&env, &admin, &dead).await;
        (d.len() == events.len()).then_some(d)
    })
    .await;
    let ids: Vec<&str> = dls.iter().map(|d| str_field(d, "event_id")).collect();
    assert_eq!(ids, events.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(dls.iter().all(|d| d["attempts"] == 4), "{dls:?}");

    // Operators see it: the dead letters ranked by endpoint on the live dashboard's data, and
    // in /metrics the dead letters stored, the attempts by outcome, the delivery lag, and no
    // endpoint left behind in the audit log once all is delivered or dead.
    let op = env.api().operator_token().await.expect("operator token");
    let live = env.get(&op, "/v1/ops/live").await;
    assert_eq!(live.status, 200, "{live}");
    let dl = &live.body["dead_letters"];
    assert_eq!(dl["total"], events.len() + 1, "{dl}");
    assert_eq!(dl["ranked"][0]["endpoint"], dead.as_str(), "{dl}");
    assert_eq!(dl["ranked"][0]["count"], events.len(), "{dl}");
    assert_eq!(dl["ranked"][1]["endpoint"], gone.as_str(), "{dl}");
    let metric = async |s: &str| env.metric(s).await.unwrap_or_else(|| panic!("no {s}"));
    assert_eq!(
        metric("orderd_webhook_dead_letters").await,
        (events.len() + 1) as f64
    );
    assert!(metric(r#"orderd_webhook_attempts_total{outcome="delivered"}"#).await >= 1.0);
    assert!(metric(r#"orderd_event_lag_seconds_count{stage="webhook"}"#).await >= 1.0);
    wait_for("no webhook endpoint behind", async || {
        (env.metric(r#"orderd_outbox_depth{reader="webhooks"}"#)
            .await
            == Some(0.0))
        .then_some(())
    })
    .await;

    // Tenancy: another account's admin sees and touches nothing of ACME's.
    let other = env.token("BAUHAUS", "otto", &["account_admin"]).await;
    let r = env.get(&other, "/v1/webhooks").await;
    assert_eq!(r.body["endpoints"], json!([]), "{r}");
    assert!(dead_letters(&env, &other, &dead).await.is_empty());
    let dl0 = str_field(&dls[0], "id").to_owned();
    for (path, method) in [
        (format!("/v1/webhooks/dead-letters/{dl0}/replay"), "POST"),
        (format!("/v1/webhooks/{flaky}/rotate"), "POST"),
        (format!("/v1/webhooks/{flaky}"), "DELETE"),
    ] {
        let r = env
            .api()
            .send(
                method.parse().unwrap(),
                &path,
                Some(&other),
                None,
                Some(&json!({})),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{method} {path}: {r}");
    }
    let operator = env.api().operator_token().await.unwrap();
    assert_eq!(
        dead_letters(&env, &operator, &dead).await.len(),
        events.len()
    );

    // The receiver recovers, but first asks for a pause: the replay it refuses stays asked
    // for, nothing goes to it for the Retry-After, then that replay is sent again, first.
    rx.put(
        "script",
        "/dead",
        json!([{"status": 429, "retry_after": "2"}, {"status": 200}]),
    )
    .await;
    let before_replays = rx.log("/dead").await.len();
    for d in &dls {
        let r = env
            .post(
                &operator,
                &format!("/v1/webhooks/dead-letters/{}/replay", str_field(d, "id")),
                json!({}),
            )
            .await;
        assert_eq!(r.status, 202, "{r}");
    }
    let got = rx.await_delivered("/dead", &events).await;
    assert_eq!(got, events);
    let log = rx.log("/dead").await;
    assert!(log.iter().all(|e| e["verified"] == json!([true])));
    let replayed = &log[before_replays..];
    assert_eq!(replayed[0]["status"], 429, "{replayed:?}");
    assert_eq!(replayed[1]["id"], replayed[0]["id"], "{replayed:?}");
    let waited = replayed[1]["at"].as_f64().unwrap() - replayed[0]["at"].as_f64().unwrap();
    assert!(
        waited >= 1.9,
        "Retry-After: 2 honoured by replays, waited {waited} s"
    );
    wait_for("replayed dead letters gone", async || {
        dead_letters(&env, &admin, &dead)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    delete_endpoint(&env, &admin, &dead).await;

    // The 410 endpoint's dead letter goes to a new endpoint of the account, which takes it
    // over, signed with the new endpoint's secret; a target that is no endpoint of the
    // account is refused.
    let gone_dl = dead_letters(&env, &admin, &gone).await;
    let replay_gone = format!(
        "/v1/webhooks/dead-letters/{}/replay",
        str_field(&gone_dl[0], "id")
    );
    let r = env
        .post(&admin, &replay_gone, json!({"endpoint": "wh_nope"}))
        .await;
    assert_eq!(r.status, 422, "{r}");
    let (again, again_secret) = register(&env, &admin, &rx.url("/gone-again")).await;
    rx.put("secrets", "/gone-again", json!([again_secret]))
        .await;
    let r = env
        .post(&admin, &replay_gone, json!({"endpoint": again}))
        .await;
    assert_eq!(r.status, 202, "{r}");
    assert_eq!(r.body["endpoint"], again.as_str(), "{r}");
    let got = rx.await_delivered("/gone-again", &events[..1]).await;
    assert_eq!(got, events[..1]);
    assert!(rx
        .log("/gone-again")
        .await
        .iter()
        .all(|e| e["verified"] == json!([true])));
    wait_for("the 410 endpoint's dead letter delivered", async || {
        let left = dead_letters(&env, &admin, &gone).await.len()
            + dead_letters(&env, &admin, &again).await.len();
        (left == 0).then_some(())
    })
    .await;
}
