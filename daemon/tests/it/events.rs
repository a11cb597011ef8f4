//! Events over HTTP against the real binary: a portal session's server-sent-event stream shows
//! its own account's changes live and never another account's, and reconnecting with
//! Last-Event-ID replays exactly what came after it.

use crate::env::{str_field, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long the stream may take to show an event.
const EVENT_WAIT_MAX: Duration = Duration::from_secs(10);

/// One server-sent event: its id and its JSON data.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: u64,
    data: Value,
}

/// An open event stream, read frame by frame.
struct Stream {
    resp: reqwest::Response,
    buf: String,
    /// The ids of the progress marks read so far (an id without data).
    marks: Vec<u64>,
}

impl Stream {
    async fn open(env: &TestEnv, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .get(format!("{}/v1/events/stream", env.api().base()))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        req.send().await.expect("request")
    }

    async fn connect(env: &TestEnv, token: &str, last_event_id: Option<&str>) -> Stream {
        let resp = Stream::open(env, token, last_event_id).await;
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Stream {
            resp,
            buf: String::new(),
            marks: vec![],
        }
    }

    /// The next `n` events (keep-alive comments skipped, progress marks kept in `marks`), or a
    /// failure after `EVENT_WAIT_MAX`.
    async fn next(&mut self, n: usize) -> Vec<Sse> {
        self.read_until(n, 0).await
    }

    /// Reads until a progress mark at or past `seq` has come (events are dropped).
    async fn read_marks_until(&mut self, seq: u64) {
        while self.marks.last().is_none_or(|m| *m < seq) {
            self.read_until(0, self.marks.len() + 1).await;
        }
    }

    /// Reads until `n` events and `marks` progress marks in all have come.
    async fn read_until(&mut self, n: usize, marks: usize) -> Vec<Sse> {
        let mut out = vec![];
        let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
        while out.len() < n || self.marks.len() < marks {
            while let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<u64>().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(v.trim()).expect("JSON data"));
                    }
                }
                match (id, data) {
                    (Some(id), Some(data)) => out.push(Sse { id, data }),
                    (Some(id), None) => self.marks.push(id),
                    _ => {}
                }
            }
            if out.len() >= n && self.marks.len() >= marks {
                break;
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {n} events and {:?} of {marks} progress marks arrived: {out:?}",
                        out.len(),
                        self.marks
                    )
                })
                .expect("reading the stream")
                .expect("the stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        out
    }
}

fn order_and_seq(e: &Sse) -> (String, u64) {
    (
        e.data["data"]["order"].as_str().unwrap().to_owned(),
        e.data["data"]["sequence"].as_u64().unwrap(),
    )
}

// Alice's stream shows ACME's three changes in order with increasing ids, not BAUHAUS's order
// placed in between; resuming after the first id replays the other two, the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_is_per_account_and_resumes() {
    // One event per page: the replay after a reconnect reads the log a page at a time.
    let mut env = TestEnv::start_with(&[("ORDERD_API__PAGE_MAX", "1")]).await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let hans = env.token("BAUHAUS", "hans", &["buyer"]).await;
    let mut stream = Stream::connect(&env, &alice, None).await;

    let r = env
        .place(&alice, "sse-1", &[("BOLT-0010", 2)], "BERLIN")
        .await;
    let first = str_field(&r.body, "id").to_owned();
    let r = env
        .place(&hans, "sse-2", &[("BOLT-0010", 2)], "HAMBURG")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let r = env
        .place(&alice, "sse-3", &[("BOLT-0010", 3)], "BERLIN")
        .await;
    let second = str_field(&r.body, "id").to_owned();
    let r = env
        .post(&alice, &format!("/v1/orders/{first}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");

    let live = stream.next(3).await;
    let seen: Vec<(String, u64)> = live.iter().map(order_and_seq).collect();
    assert_eq!(
        seen,
        [(first.clone(), 1), (second.clone(), 1), (first.clone(), 2)]
    );
    assert!(live.windows(2).all(|w| w[0].id < w[1].id), "{live:?}");
    assert!(live.iter().all(|e| e.data["data"]["account"] == "ACME"));
    drop(stream);

    let mut resumed = Stream::connect(&env, &alice, Some(&live[0].id.to_string())).await;
    assert_eq!(resumed.next(2).await, live[1..].to_vec());
    // The lag metric counts the three events sent live, not BAUHAUS's (never sent to Alice)
    // nor the two replayed from the log.
    assert_eq!(
        env.metric(r#"orderd_event_lag_seconds_count{stage="sse"}"#)
            .await,
        Some(3.0)
    );

    // A Last-Event-ID past the log's head (of another data directory, or made up) resumes
    // from the head: the next change still comes.
    let mut ahead = Stream::connect(&env, &alice, Some(&u64::MAX.to_string())).await;
    let r = env
        .post(&alice, &format!("/v1/orders/{second}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");
    assert_eq!(order_and_seq(&ahead.next(1).await[0]), (second.clone(), 2));
    drop(ahead);

    let bad = Stream::open(&env, &alice, Some("yesterday")).await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("problem");
    assert_eq!(body["code"], "invalid_last_event_id", "{body}");

    // An open stream does not hold up a graceful shutdown: it ends, and orderd exits 0.
    let started = Instant::now();
    let status = env.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with a stream open",
        started.elapsed()
    );
    drop(resumed);
}

// A caller who is only a buyer sees the events of the orders they placed, as with
// `GET /v1/orders/{id}`: Alice's stream and replay skip Bob's order, placed before hers; Bob
// (buyer and approver) sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_sees_only_the_events_of_their_own_orders() {
    let env = TestEnv::start().await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let mut stream = Stream::connect(&env, &alice, None).await;
    let r = env
        .place(&bob, "own-1", &[("BOLT-0010", 2)], "BERLIN")
        .await;
    let bobs = str_field(&r.body, "id").to_owned();
    let r = env
        .place(&alice, "own-2", &[("BOLT-0010", 2)], "BERLIN")
        .await;
    let alices = str_field(&r.body, "id").to_owned();

    let live = stream.next(1).await;
    assert_eq!(order_and_seq(&live[0]), (alices.clone(), 1));
    let orders_in = |r: &orderd_chaos::Reply| -> Vec<String> {
        r.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["event"]["data"]["order"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = env.get(&alice, "/v1/events?after=0").await;
    assert_eq!(orders_in(&r), std::slice::from_ref(&alices), "{r}");
    let r = env.get(&bob, "/v1/events?after=0").await;
    assert_eq!(orders_in(&r), [bobs.clone(), alices.clone()], "{r}");
    // Bob's next order is not shown either, but the stream moves past it with a progress mark
    // (an id without data).
    let r = env
        .place(&bob, "own-3", &[("BOLT-0010", 1)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let r = env.get(&bob, "/v1/events?after=0").await;
    let seq_of = |r: &orderd_chaos::Reply, i: usize| r.body["events"][i]["seq"].as_u64().unwrap();
    stream.read_marks_until(seq_of(&r, 2)).await;
    assert_eq!(stream.marks.last(), Some(&seq_of(&r, 2)));
    // A reconnect replaying from the log skips Bob's orders too, and ends its page with a
    // progress mark past Bob's second order, so that the next reconnect starts after it.
    let mut resumed = Stream::connect(&env, &alice, Some("0")).await;
    assert_eq!(resumed.read_until(1, 1).await, live);
    assert_eq!(resumed.marks, [seq_of(&r, 2)]);
}

// A stream moves on past what it is not shown: Alice's stream on a quiet ACME gets progress
// marks up to BAUHAUS's last order (within about a second), so that her next reconnect does
// not replay the daemon's whole log since ACME's last event, and a reconnect from the last
// mark replays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_quiet_account_moves_on_with_progress_marks() {
    let env = TestEnv::start().await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let hans = env.token("BAUHAUS", "hans", &["buyer"]).await;
    let mut stream = Stream::connect(&env, &alice, None).await;
    for key in ["quiet-1", "quiet-2"] {
        let r = env.place(&hans, key, &[("BOLT-0010", 2)], "HAMBURG").await;
        assert_eq!(r.status, 201, "{r}");
    }
    let r = env.get(&hans, "/v1/events?after=0").await;
    let seqs: Vec<u64> = r.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs.len(), 2, "{r}");
    stream.read_marks_until(seqs[1]).await;
    assert_eq!(stream.marks.last(), Some(&seqs[1]), "{:?}", stream.marks);
    assert!(
        stream.marks.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        stream.marks
    );
    drop(stream);
    let mut resumed = Stream::connect(&env, &alice, Some(&seqs[1].to_string())).await;
    let r = env
        .place(&alice, "quiet-3", &[("BOLT-0010", 1)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let shown = resumed.next(1).await;
    assert_eq!(shown[0].data["data"]["order"], r.body["id"], "{shown:?}");
    assert!(resumed.marks.is_empty(), "{:?}", resumed.marks);
}

// A stream ends after `api.event_stream_max_ms` (here 3 s: room for the first placement to
// reach it on a loaded machine), so that it cannot outlive its token or its user's removal for
// long (both are checked when a stream opens); the client reconnects with Last-Event-ID and
// misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_after_its_longest_time_and_resumes() {
    const STREAM_MAX: Duration = Duration::from_secs(3);
    let env = TestEnv::start_with(&[(
        "ORDERD_API__EVENT_STREAM_MAX_MS",
        &STREAM_MAX.as_millis().to_string(),
    )])
    .await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let opened = Instant::now();
    let mut stream = Stream::connect(&env, &alice, None).await;
    let r = env
        .place(&alice, "short-1", &[("BOLT-0010", 1)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let first = stream.next(1).await;
    let ended = tokio::time::timeout(EVENT_WAIT_MAX, async {
        while let Some(chunk) = stream.resp.chunk().await.expect("reading the stream") {
            stream.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream was still open after {EVENT_WAIT_MAX:?}"
    );
    assert!(
        opened.elapsed() >= STREAM_MAX,
        "ended after {:?}",
        opened.elapsed()
    );
    let r = env
        .place(&alice, "short-2", &[("BOLT-0010", 1)], "BERLIN")
        .await;
    let mut resumed = Stream::connect(&env, &alice, Some(&first[0].id.to_string())).await;
    let next = resumed.next(1).await;
    assert_eq!(next[0].data["data"]["order"], r.body["id"], "{next:?}");
}
