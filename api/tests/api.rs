//! The HTTP API driven through `router()` with `tower::ServiceExt::oneshot`: no sockets. Each
//! test builds an engine on a temporary journal and seeds it through the CSV imports.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use orderd_actors::account::AccountMsg;
use orderd_actors::audit::{AuditEntry, Caller};
use orderd_actors::{Engine, Limits};
use orderd_api::auth::Authenticator;
use orderd_api::import_csv::{import, Kind};
use orderd_api::{router, ApiLimits, ApiState};
use orderd_domain::ids::{AccountId, Sku, UserId};
use orderd_storage::{Journal, JournalConfig};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tower::ServiceExt;

const CATALOG: &str = "sku,description,uom,pack_size,min_qty,status,segments,kit
BOLT,Hex bolt M8,EA,1,1,active,,
NUT,Hex nut M8,EA,10,10,active,,
PIPE,Copper pipe,M,1,1,active,wholesale,
OLD,Old bolt,EA,1,1,discontinued,,
KIT,Bolt kit,KIT,1,1,active,,BOLT*2;NUT*2
";
const PRICES: &str = "level,owner,sku,currency,valid_from,valid_to,tiers
list,,BOLT,EUR,,,1:10.00;10:9.00
list,,NUT,EUR,,,1:1.00
list,,PIPE,EUR,,,1:5.00
list,,OLD,EUR,,,1:1.00
list,,KIT,EUR,,,1:30.00
contract,A,BOLT,EUR,,,1:8.00
";
const WAREHOUSES: &str = "id,name,lat,lon,speeds
BER,Berlin,52.5,13.4,express:300:1;standard:2000:3
MUC,Munich,48.1,11.6,express:300:1;standard:2000:3
";
const STOCK: &str = "warehouse,sku,on_hand
BER,BOLT,100
MUC,BOLT,100
BER,NUT,1000
BER,PIPE,10
";
const ACCOUNTS: &str = "id,name,segment,currency,credit_limit,open_receivables,payment_terms,buyer_limit,approver_limit,restricted_skus,approve_new_ship_to
A,Alpha,retail,EUR,5000.00,0.00,NET30,500.00,,,false
B,Beta,retail,EUR,5000.00,0.00,NET30,,,,false
";
const SHIP_TOS: &str = "account,id,address,lat,lon
A,HQ,Berlin,52.52,13.40
B,HQ,Munich,48.14,11.58
";

struct Api {
    state: ApiState,
}

async fn api() -> Api {
    api_with(ApiLimits::default()).await
}

/// An API whose rate limits let one token and one account make `changes` changes at once
/// (tests that make more of them than a client would).
async fn api_allowing_bursts_of(changes: usize) -> Api {
    let burst = u32::try_from(changes).unwrap();
    let rate_limit = orderd_api::rate_limit::RateLimits {
        token_mutations_burst: burst,
        account_mutations_burst: burst,
        ..Default::default()
    };
    api_with(ApiLimits {
        rate_limit,
        ..ApiLimits::default()
    })
    .await
}

async fn api_with(limits: ApiLimits) -> Api {
    let journal = Journal::temporary(&JournalConfig::default()).unwrap();
    let engine = Engine::start(journal, Limits::default()).await.unwrap();
    let sys = Caller::system();
    for (kind, csv) in [
        (Kind::Catalog, CATALOG),
        (Kind::Warehouses, WAREHOUSES),
        (Kind::Stock, STOCK),
        (Kind::Accounts, ACCOUNTS),
        (Kind::ShipTos, SHIP_TOS),
        (Kind::Prices, PRICES),
    ] {
        import(&engine, &sys, kind, csv.as_bytes(), 1000)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
    }
    let state = ApiState::new(engine, Authenticator::dev(&[7u8; 32]), vec![], limits, true);
    Api { state }
}

/// Where [`Api::trickle`]'s body comes from, and its answer with how long it took.
type BodySender = tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>;
type Answer = tokio::task::JoinHandle<(axum::response::Response, std::time::Duration)>;

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    /// `POST /v1/admin/import/{kind}` with `csv` as its `text/csv` body.
    async fn import_csv(&self, token: &str, kind: &str, csv: &str) -> Resp {
        let req = Request::builder()
            .method("POST")
            .uri(format!("/v1/admin/import/{kind}"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "text/csv")
            .body(Body::from(csv.to_owned()))
            .unwrap();
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        // An event stream does not end by itself: its status and headers are the answer.
        let streaming = parts
            .headers
            .get("content-type")
            .is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream"));
        let bytes = if streaming {
            Default::default()
        } else {
            body.collect().await.unwrap().to_bytes()
        };
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `POST /v1/cart/lines` as `token`, on its own task, its body (of no declared length)
    /// `first` and then what is sent on the returned sender until it is dropped. The task
    /// answers the response and how long it took.
    fn trickle(&self, token: &str, first: &'static str) -> (BodySender, Answer) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let req = Request::builder()
            .method("POST")
            .uri("/v1/cart/lines")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from_stream(chunks))
            .unwrap();
        tx.try_send(Ok(axum::body::Bytes::from_static(first.as_bytes())))
            .unwrap();
        let state = self.state.clone();
        let answer = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resp = router(state).oneshot(req).await.unwrap();
            (resp, started.elapsed())
        });
        (tx, answer)
    }

    async fn token(
        &self,
        account: Option<&str>,
        user: &str,
        roles: &[&str],
        warehouse: Option<&str>,
    ) -> String {
        let r = self.call("POST", "/v1/dev/token", None, Some(json!({"account": account, "user": user, "roles": roles, "warehouse": warehouse})), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    /// The audit entries of order `id`, oldest first, as `token` reads them: in one page, and
    /// two at a time following the cursor, which must give the same.
    async fn history(&self, token: &str, id: &str) -> Vec<Value> {
        let page = |query: String| async move {
            let uri = format!("/v1/orders/{id}/history{query}");
            let r = self.call("GET", &uri, Some(token), None, &[]).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let entries = r.body["entries"].as_array().expect("a list").clone();
            let next = r.body["next_cursor"].as_str().map(str::to_owned);
            (entries, next)
        };
        let (whole, next) = page(String::new()).await;
        assert_eq!(next, None, "one page holds a short history");
        let (mut paged, mut next) = page("?limit=2".into()).await;
        while let Some(cursor) = next {
            let (more, after) = page(format!("?limit=2&cursor={cursor}")).await;
            assert!(!more.is_empty() && more.len() <= 2, "{more:?}");
            paged.extend(more);
            next = after;
        }
        assert_eq!(paged, whole);
        let seqs: Vec<u64> = whole.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        whole.iter().map(|e| e["entry"].clone()).collect()
    }

    async fn place(&self, token: &str, key: &str, body: Value) -> Resp {
        self.call(
            "POST",
            "/v1/orders",
            Some(token),
            Some(body),
            &[("idempotency-key", key)],
        )
        .await
    }
}

fn codes(r: &Resp) -> Vec<String> {
    r.body["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["code"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// Every /v1 route refuses a missing or forged token with 401 and WWW-Authenticate.
#[tokio::test]
async fn tokens_are_required_and_verified() {
    let api = api().await;
    for (m, uri) in [
        ("GET", "/v1/cart"),
        ("GET", "/v1/orders"),
        ("GET", "/v1/credit"),
        ("GET", "/v1/catalog"),
        ("POST", "/v1/orders"),
    ] {
        let r = api.call(m, uri, None, None, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m} {uri}");
        // No credentials: the challenge without an error code (RFC 6750 section 3).
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{m} {uri}");
        assert_eq!(r.headers["content-type"], "application/problem+json");
    }
    let good = api.token(Some("A"), "ann", &["buyer"], None).await;
    let forged = format!("{}x", &good[..good.len() - 1]);
    let r = api.call("GET", "/v1/cart", Some(&forged), None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let r = api.call("GET", "/v1/cart", Some("x.y"), None, &[]).await;
    assert_eq!(
        r.body["detail"],
        "invalid bearer token: it is not a well-formed JWT"
    );
    let other_key = Authenticator::dev(&[9u8; 32]);
    let claims = orderd_api::auth::Claims {
        iss: "orderd-dev".into(),
        aud: "orderd".into(),
        sub: "ann".into(),
        exp: u64::MAX / 2,
        iat: 0,
        account_id: Some("A".into()),
        roles: vec!["buyer".into()],
        warehouse_id: None,
    };
    let foreign = other_key.issue(&claims).unwrap();
    let r = api.call("GET", "/v1/cart", Some(&foreign), None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.body["detail"],
        "invalid bearer token: its signature does not verify"
    );
    // The dev sign-in refuses unknown accounts and roles.
    let r = api
        .call(
            "POST",
            "/v1/dev/token",
            None,
            Some(json!({"account":"NOPE","user":"x","roles":["buyer"]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call(
            "POST",
            "/v1/dev/token",
            None,
            Some(json!({"account":"A","user":"x","roles":["king"]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

// A token of account B gets 404 for every order, cart and credit route of account A.
#[tokio::test]
async fn tenancy_cannot_be_crossed() {
    let api = api().await;
    let a = api
        .token(Some("A"), "ann", &["buyer", "approver"], None)
        .await;
    let b = api
        .token(
            Some("B"),
            "bea",
            &["buyer", "approver", "account_admin"],
            None,
        )
        .await;
    let r = api
        .place(&a, "k1", json!({"lines":[{"sku":"BOLT","qty":1}]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    api.call(
        "POST",
        "/v1/cart/lines",
        Some(&a),
        Some(json!({"sku":"BOLT","qty":3})),
        &[],
    )
    .await;
    for (m, path, body) in [
        ("GET", format!("/v1/orders/{id}"), None),
        ("GET", format!("/v1/orders/{id}/history"), None),
        ("POST", format!("/v1/orders/{id}/approve"), None),
        ("POST", format!("/v1/orders/{id}/reject"), None),
        ("POST", format!("/v1/orders/{id}/cancel"), None),
        ("POST", format!("/v1/orders/{id}/submit"), None),
        (
            "PATCH",
            format!("/v1/orders/{id}"),
            Some(json!({"customer_po":"x"})),
        ),
        ("PATCH", "/v1/cart/lines/1".into(), Some(json!({"qty":9}))),
        ("DELETE", "/v1/cart/lines/1".into(), None),
    ] {
        let r = api.call(m, &path, Some(&b), body, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {path}: {:?}", r.body);
    }
    let list = api.call("GET", "/v1/orders", Some(&b), None, &[]).await;
    assert!(list.body["orders"].as_array().unwrap().is_empty());
    let cart = api.call("GET", "/v1/cart", Some(&b), None, &[]).await;
    assert!(cart.body["lines"].as_array().unwrap().is_empty());
    let credit_b = api.call("GET", "/v1/credit", Some(&b), None, &[]).await;
    assert_eq!(credit_b.body["exposure"]["amount"], "0.00");
    // A still sees its own order and cart untouched.
    assert_eq!(
        api.call("GET", &format!("/v1/orders/{id}"), Some(&a), None, &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "/v1/cart", Some(&a), None, &[]).await.body["lines"][0]["qty"],
        3
    );
}

// A read of the event log waits at most `event_read_wait_ms` for its turn: with the one turn
// taken, a page of /v1/events and a stream's replay are `503 event_reads_busy` with
// Retry-After; once the turn is free, both are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_the_event_log_waits_for_its_turn_no_longer_than_the_bound() {
    let api = api_with(ApiLimits {
        event_reads_max: 1,
        event_read_wait_ms: 200,
        ..ApiLimits::default()
    })
    .await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let r = api
        .place(&a, "w-1", json!({"lines":[{"sku":"BOLT","qty":2}]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let held = api.state.event_reads.clone().acquire_owned().await.unwrap();
    let resume = [("last-event-id", "0")];
    for (uri, extra) in [("/v1/events", &[][..]), ("/v1/events/stream", &resume[..])] {
        let started = std::time::Instant::now();
        let r = api.call("GET", uri, Some(&a), None, extra).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{uri}: {:?}",
            r.body
        );
        assert_eq!(r.body["code"], "event_reads_busy", "{uri}");
        assert!(r.headers.contains_key("retry-after"), "{uri}");
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(200),
            "{uri} waited"
        );
    }
    drop(held);
    for (uri, extra) in [("/v1/events", &[][..]), ("/v1/events/stream", &resume[..])] {
        let r = api.call("GET", uri, Some(&a), None, extra).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
    }
}

// A change takes its place in the daemon-wide in-flight bound only once its whole body is in:
// while its body stalls, nothing is inside. A body that comes in time is served; one that does
// not come within `body_read_timeout_ms` is `408 body_read_timeout`, with `Connection: close`,
// and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_holds_no_place_inside_and_has_a_time_limit() {
    use axum::body::Bytes;
    use std::time::Duration;
    const READ_MS: u64 = 500;
    let api = api_with(ApiLimits {
        body_read_timeout_ms: READ_MS,
        ..ApiLimits::default()
    })
    .await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let admission = api.state.engine.admission.clone();
    let (tx, answer) = api.trickle(&a, r#"{"sku":"BOLT","#);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(admission.inflight(), 0, "a stalled body holds no ticket");
    tx.send(Ok(Bytes::from_static(br#""qty":3}"#)))
        .await
        .unwrap();
    drop(tx);
    let (resp, _) = answer.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (tx, answer) = api.trickle(&a, r#"{"sku":"NUT","#);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(admission.inflight(), 0);
    let (resp, waited) = answer.await.unwrap();
    drop(tx);
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(waited >= Duration::from_millis(READ_MS), "{waited:?}");
    assert_eq!(resp.headers()["connection"], "close");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "body_read_timeout", "{body}");
    let cart = api.call("GET", "/v1/cart", Some(&a), None, &[]).await;
    let lines = cart.body["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{}", cart.body);
    assert_eq!(lines[0]["sku"], "BOLT", "{}", cart.body);
    assert_eq!(lines[0]["qty"], 3, "{}", cart.body);
}

// Bodies being read or held take their bytes of `body_buffer_bytes_max` (a chunked one its
// route's limit) until their change is answered: one that does not fit is `503 daemon_busy`
// at once, before it is read; one that fits goes on; and the bytes come back with the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_memory_are_bounded_in_bytes() {
    use axum::body::Bytes;
    let api = api_with(ApiLimits {
        body_buffer_bytes_max: (1 << 20) + 2048,
        ..ApiLimits::default()
    })
    .await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let budget = || api.state.body_budget.available_permits();
    let (tx, stalled) = api.trickle(&a, r#"{"sku":"BOLT","#);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(budget(), 2, "a chunked body holds its route's limit (KiB)");
    // 2,500 bytes (a valid line, padded) do not fit in the 2 KiB left.
    let padded = format!(r#"{{"sku":"NUT","qty":10}}{}"#, " ".repeat(2500));
    let req = Request::builder()
        .method("POST")
        .uri("/v1/cart/lines")
        .header("authorization", format!("Bearer {a}"))
        .header("content-type", "application/json")
        .body(Body::from(padded))
        .unwrap();
    let refused = api.send(req).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.body["code"], "daemon_busy", "{:?}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    let small = api
        .call(
            "POST",
            "/v1/cart/lines",
            Some(&a),
            Some(json!({"sku":"NUT","qty":10})),
            &[],
        )
        .await;
    assert_eq!(small.status, StatusCode::OK, "{:?}", small.body);
    tx.send(Ok(Bytes::from_static(br#""qty":3}"#)))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(stalled.await.unwrap().0.status(), StatusCode::OK);
    assert_eq!(budget(), 1026, "every byte back");
}

// GET /v1/events replays the caller's account's events only, oldest first, each with its log
// seq; `next` continues where the page ended; an operator sees every account's. With one turn
// to read the log (`event_reads_max = 1`), requests made at once all complete, each whole: no
// read waits for a second turn while holding one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_per_account() {
    let api = api_with(ApiLimits {
        event_reads_max: 1,
        ..ApiLimits::default()
    })
    .await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let b = api.token(Some("B"), "bea", &["buyer"], None).await;
    let op = api.token(None, "olga", &["operator"], None).await;
    let mut placed = vec![];
    for (token, key) in [(&a, "e-1"), (&b, "e-2"), (&a, "e-3")] {
        let r = api
            .place(token, key, json!({"lines":[{"sku":"BOLT","qty":2}]}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        placed.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let cancel = format!("/v1/orders/{}/cancel", placed[0]);
    assert_eq!(
        api.call("POST", &cancel, Some(&a), Some(json!({})), &[])
            .await
            .status,
        StatusCode::OK
    );

    let page = api.call("GET", "/v1/events", Some(&a), None, &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    let seen: Vec<(String, u64, String)> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let ev = &e["event"];
            assert_eq!(ev["specversion"], "1.0");
            assert_eq!(
                ev["id"],
                format!(
                    "{}.{}",
                    ev["data"]["order"].as_str().unwrap(),
                    ev["data"]["sequence"]
                )
            );
            (
                ev["data"]["order"].as_str().unwrap().to_owned(),
                ev["data"]["sequence"].as_u64().unwrap(),
                ev["data"]["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (placed[0].clone(), 1, "allocated".to_owned()),
            (placed[2].clone(), 1, "allocated".to_owned()),
            (placed[0].clone(), 2, "cancelled".to_owned()),
        ]
    );
    let seqs: Vec<u64> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let next = page.body["next"].as_u64().unwrap();
    assert!(next >= *seqs.last().unwrap());

    // Paging: one at a time, continuing from `next`, gives the same events.
    let first = api
        .call("GET", "/v1/events?limit=1", Some(&a), None, &[])
        .await;
    assert_eq!(first.body["events"].as_array().unwrap().len(), 1);
    let rest = api
        .call(
            "GET",
            &format!("/v1/events?after={}", first.body["next"]),
            Some(&a),
            None,
            &[],
        )
        .await;
    assert_eq!(
        rest.body["events"].as_array().unwrap().len(),
        2,
        "{:?}",
        rest.body
    );
    let none = api
        .call(
            "GET",
            &format!("/v1/events?after={next}"),
            Some(&a),
            None,
            &[],
        )
        .await;
    assert!(none.body["events"].as_array().unwrap().is_empty());
    assert_eq!(none.body["next"], next);
    // Past the head (another data directory's cursor): read from the head, not skipped ahead.
    let beyond = (api.call("GET", "/v1/events?after=999999", Some(&a), None, &[])).await;
    assert_eq!(beyond.status, StatusCode::OK);
    assert!(
        beyond.body["next"].as_u64().unwrap() <= next,
        "{:?}",
        beyond.body
    );
    // The scheme of Authorization is case-insensitive.
    let bearer = format!("BEARER {a}");
    let shouted = api
        .call(
            "GET",
            "/v1/events",
            None,
            None,
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(shouted.status, StatusCode::OK, "{:?}", shouted.body);

    let only_b = api.call("GET", "/v1/events", Some(&b), None, &[]).await;
    let b_orders: Vec<&str> = only_b.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["data"]["order"].as_str().unwrap())
        .collect();
    assert_eq!(b_orders, [placed[1].as_str()]);
    let all = api.call("GET", "/v1/events", Some(&op), None, &[]).await;
    assert_eq!(
        all.body["events"].as_array().unwrap().len(),
        4,
        "{:?}",
        all.body
    );

    let at_once = (0..8).map(|i| {
        let token = [&a, &b, &op][i % 3];
        api.call("GET", "/v1/events?limit=1", Some(token), None, &[])
    });
    for (i, r) in futures_util::future::join_all(at_once)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let first = &r.body["events"][0]["event"]["data"]["order"];
        assert_eq!(first, [&placed[0], &placed[1], &placed[0]][i % 3].as_str());
    }
}

// One account's event streams are bounded (429, with Retry-After) without touching another
// account's; a stream that ends frees its slot. A stream ends at its longest time also while it
// still replays: here one event a page, read slower than the stream may live.
#[tokio::test]
async fn event_streams_are_bounded_per_account_and_in_time() {
    let api = api_with(ApiLimits {
        page_max: 1,
        event_streams_per_account_max: 2,
        event_stream_max_ms: 500,
        ..ApiLimits::default()
    })
    .await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let b = api.token(Some("B"), "bea", &["buyer"], None).await;
    for key in ["s-1", "s-2", "s-3"] {
        let r = api
            .place(&a, key, json!({"lines":[{"sku":"BOLT","qty":1}]}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let open = |token: &str, last_event_id: &str| {
        let req = Request::builder()
            .uri("/v1/events/stream")
            .header("authorization", format!("Bearer {token}"))
            .header("last-event-id", last_event_id)
            .body(Body::empty())
            .unwrap();
        router(api.state.clone()).oneshot(req)
    };
    let replaying = open(&a, "0").await.unwrap();
    assert_eq!(replaying.status(), StatusCode::OK);
    let second = open(&a, "0").await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    let refused = api
        .call("GET", "/v1/events/stream", Some(&a), None, &[])
        .await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.body["code"], "too_many_streams");
    assert!(refused.headers.contains_key("retry-after"));
    let other = open(&b, "0").await.unwrap();
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another account is not held back"
    );
    drop(second);
    let again = open(&a, "0").await.unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "a closed stream frees its slot"
    );

    // The first event, then a pause past the stream's longest time: the stream ends without
    // replaying the rest (the client resumes from the event it has).
    let mut body = replaying.into_body();
    let mut text = String::new();
    while !text.contains("data:") {
        let frame = body.frame().await.expect("an event").unwrap();
        text.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), body.collect())
        .await
        .expect("the stream ended")
        .unwrap()
        .to_bytes();
    text.push_str(&String::from_utf8_lossy(&rest));
    assert_eq!(text.matches("data:").count(), 1, "{text}");
}

// An open stream ends once what admitted it no longer does: the account admin narrows one
// user's roles, then removes another; until then each stream stays open.
#[tokio::test]
async fn event_streams_end_when_their_caller_is_no_longer_admitted() {
    use std::time::Duration;
    let api = api_with(ApiLimits {
        event_stream_recheck_ms: 50,
        ..ApiLimits::default()
    })
    .await;
    let admin = api
        .token(Some("A"), "carol", &["account_admin"], None)
        .await;
    for (id, roles) in [
        ("ann", json!(["buyer", "approver"])),
        ("abe", json!(["buyer"])),
    ] {
        let user = json!({"id": id, "name": id, "roles": roles});
        let r = api
            .call("POST", "/v1/account/users", Some(&admin), Some(user), &[])
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let ann = api
        .token(Some("A"), "ann", &["buyer", "approver"], None)
        .await;
    let abe = api.token(Some("A"), "abe", &["buyer"], None).await;
    let open = |token: &str| {
        let req = Request::builder()
            .uri("/v1/events/stream")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let app = router(api.state.clone());
        async move {
            let r = app.oneshot(req).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.into_body()
        }
    };
    // The next frame within `wait`: `Some(None)` when the stream ended, `None` when it is
    // still open with nothing to send.
    async fn next_frame(body: &mut Body, wait: Duration) -> Option<Option<String>> {
        let frame = tokio::time::timeout(wait, body.frame()).await.ok()?;
        Some(frame.map(|f| String::from_utf8_lossy(&f.unwrap().into_data().unwrap()).into()))
    }
    let (mut ann_stream, mut abe_stream) = (open(&ann).await, open(&abe).await);
    let narrowed = json!({"name": "ann", "roles": ["buyer"]});
    let r = api
        .call(
            "PUT",
            "/v1/account/users/ann",
            Some(&admin),
            Some(narrowed),
            &[],
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let ended = async |body: &mut Body, who: &str| loop {
        match next_frame(body, Duration::from_secs(5)).await {
            Some(None) => break,
            Some(Some(_)) => continue, // an event or a keep-alive before the end
            None => panic!("{who}'s stream is still open"),
        }
    };
    ended(&mut ann_stream, "ann").await;
    assert_eq!(
        next_frame(&mut abe_stream, Duration::from_millis(300)).await,
        None,
        "abe's stream stays open while abe is admitted as before"
    );
    let r = api
        .call("DELETE", "/v1/account/users/abe", Some(&admin), None, &[])
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    ended(&mut abe_stream, "abe").await;
}

// Same key + same body replays the first answer; a different body is refused with 422.
#[tokio::test]
async fn idempotency_keys() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let body = json!({"lines":[{"sku":"BOLT","qty":2}],"customer_po":"PO-1"});
    let first = api.place(&a, "same", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = api.place(&a, "same", body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    let other = api
        .place(&a, "same", json!({"lines":[{"sku":"BOLT","qty":3}]}))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["code"], "idempotency_key_reused");
    let list = api.call("GET", "/v1/orders", Some(&a), None, &[]).await;
    assert_eq!(
        list.body["orders"].as_array().unwrap().len(),
        1,
        "only one order was created"
    );
    let bad = api
        .place(&a, "has space", json!({"lines":[{"sku":"BOLT","qty":1}]}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

// A bad order lists every problem at once, each on its line, and changes nothing.
#[tokio::test]
async fn validation_lists_every_problem() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let before = api
        .call("GET", "/v1/catalog/BOLT", Some(&a), None, &[])
        .await
        .body["available"]
        .clone();
    let r = api
        .place(&a, "v1", json!({"lines":[{"sku":"BOLT","qty":1},{"sku":"NOPE","qty":1},{"sku":"NUT","qty":15},{"sku":"OLD","qty":1},{"sku":"PIPE","qty":1},{"sku":"BOLT","qty":1000}],"ship_to":"HQ"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    // 1000 x 8.00 also exceeds the 5000.00 limit: credit is checked too, on no line.
    assert_eq!(
        codes(&r),
        [
            "unknown_sku",
            "not_pack_multiple",
            "discontinued",
            "not_visible",
            "out_of_stock",
            "credit_limit_exceeded"
        ],
        "{:?}",
        r.body
    );
    let lines: Vec<Option<u64>> = r.body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64())
        .collect();
    assert_eq!(lines, [Some(2), Some(3), Some(4), Some(5), Some(6), None]);
    let oos = &r.body["problems"][4]["available"];
    assert_eq!(
        oos.as_array().unwrap().len(),
        2,
        "availability per warehouse: {oos:?}"
    );
    assert_eq!(
        api.call("GET", "/v1/catalog/BOLT", Some(&a), None, &[])
            .await
            .body["available"],
        before
    );
    let empty = api.place(&a, "v2", json!({"lines":[]})).await;
    assert_eq!(codes(&empty), ["empty_order"]);
    let malformed = api
        .call(
            "POST",
            "/v1/orders",
            Some(&a),
            Some(json!({"lines":"nope"})),
            &[],
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.body["code"], "malformed_body");
    // A quantity no line can hold is a problem of its line, each one named, listed with the
    // order's other problems, not a bad body; `2.0` is the whole number 2.
    let lines = json!([
        {"sku":"BOLT","qty":-1},
        {"sku":"BOLT","qty":2.0},
        {"sku":"BOLT","qty":1.5},
        {"sku":"BOLT","qty":5_000_000_000u64},
        {"sku":"BOLT","qty":null},
        {"sku":"NOPE","qty":1},
    ]);
    let named = |body: &Value| -> Vec<(String, u64)> {
        body["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["code"].as_str().unwrap().to_owned(),
                    p["line"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let expected: Vec<(String, u64)> = [
        ("invalid_quantity", 1),
        ("invalid_quantity", 3),
        ("invalid_quantity", 4),
        ("invalid_quantity", 5),
        ("unknown_sku", 6),
    ]
    .into_iter()
    .map(|(c, l)| (c.to_owned(), l))
    .collect();
    let bad = api.place(&a, "v3", json!({ "lines": lines })).await;
    assert_eq!(
        bad.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        bad.body
    );
    assert_eq!(named(&bad.body), expected);
    let said = bad.body["problems"][0]["message"].as_str().unwrap();
    assert!(said.ends_with("got -1"), "{said}");
    assert_eq!(bad.body["problems"][0]["field"], "qty");
    let said = bad.body["problems"][2]["message"].as_str().unwrap();
    assert!(said.ends_with("got 5000000000"), "{said}");
    // Validate says the same as a preview.
    let v = api
        .call(
            "POST",
            "/v1/orders/validate",
            Some(&a),
            Some(json!({ "lines": lines })),
            &[],
        )
        .await;
    assert_eq!(v.status, StatusCode::OK, "{:?}", v.body);
    assert_eq!(v.body["valid"], false);
    assert_eq!(named(&v.body), expected);
    assert_eq!(
        v.body["problems"][1]["message"],
        bad.body["problems"][1]["message"]
    );
    // Validate says the same without placing anything.
    let v = api
        .call(
            "POST",
            "/v1/orders/validate",
            Some(&a),
            Some(json!({"lines":[{"sku":"NOPE","qty":1}]})),
            &[],
        )
        .await;
    assert_eq!(v.body["valid"], false);
    assert_eq!(v.body["problems"][0]["code"], "unknown_sku");
}

// Cart -> validate -> order from cart (contract price) -> cart emptied; credit follows.
#[tokio::test]
async fn cart_to_order_with_contract_price() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let r = api
        .call(
            "POST",
            "/v1/cart/lines",
            Some(&a),
            Some(json!({"sku":"BOLT","qty":5})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = api
        .call(
            "POST",
            "/v1/cart/lines",
            Some(&a),
            Some(json!({"sku":"NOPE","qty":5})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A field the caller may not set is named (also inside a line); a value that merely reads
    // like serde's message about one is a malformed body, not a field.
    for (path, body, status, field) in [
        (
            "/v1/cart/lines",
            json!({"sku":"BOLT","qty":1,"price":"1.00"}),
            422,
            "price",
        ),
        (
            "/v1/orders",
            json!({"lines":[{"sku":"BOLT","qty":1,"unit_price":"1"}]}),
            422,
            "unit_price",
        ),
        (
            "/v1/orders",
            json!({"lines":[{"sku":"BOLT","qty":1}],"channel":"unknown field `price"}),
            400,
            "",
        ),
    ] {
        let r = api
            .call(
                "POST",
                path,
                Some(&a),
                Some(body),
                &[("idempotency-key", "f-1")],
            )
            .await;
        assert_eq!(r.status.as_u16(), status, "{path}: {:?}", r.body);
        if status == 422 {
            assert_eq!(r.body["problems"][0]["field"], field, "{:?}", r.body);
        }
    }
    // An id from the path is repeated only in part.
    let r = api
        .call(
            "GET",
            &format!("/v1/orders/{}", "x".repeat(300)),
            Some(&a),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.chars().count() < 100, "{detail}");
    // A cart change refused for its quantity or note says so with the README's codes.
    for (body, code, field) in [
        (json!({"sku":"BOLT","qty":0}), "invalid_quantity", "qty"),
        (json!({"sku":"BOLT","qty":-1}), "invalid_quantity", "qty"),
        (json!({"sku":"BOLT","qty":1.5}), "invalid_quantity", "qty"),
        (json!({"sku":"BOLT","qty":"2"}), "invalid_quantity", "qty"),
        (
            json!({"sku":"BOLT","qty":1,"note":"n".repeat(501)}),
            "invalid_field",
            "note",
        ),
    ] {
        let r = api
            .call("POST", "/v1/cart/lines", Some(&a), Some(body), &[])
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
        assert_eq!(r.body["problems"][0]["code"], code, "{:?}", r.body);
        assert_eq!(r.body["problems"][0]["field"], field, "{:?}", r.body);
    }
    let line = api.call("GET", "/v1/cart", Some(&a), None, &[]).await.body["lines"][0]["id"]
        .as_u64()
        .unwrap();
    let r = api
        .call(
            "PATCH",
            &format!("/v1/cart/lines/{line}"),
            Some(&a),
            Some(json!({"qty":-3})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["problems"][0]["code"], "invalid_quantity");
    let r = api
        .call(
            "PATCH",
            &format!("/v1/cart/lines/{line}"),
            Some(&a),
            Some(json!({"qty":10,"note":"urgent"})),
            &[],
        )
        .await;
    assert_eq!(r.body["lines"][0]["qty"], 10);
    let v = api
        .call("POST", "/v1/cart/validate", Some(&a), None, &[])
        .await;
    assert_eq!(v.body["valid"], true, "{:?}", v.body);
    assert_eq!(
        v.body["total"]["amount"], "80.00",
        "contract price 8.00 beats list tiers"
    );
    assert_eq!(v.body["lines"][0]["price_source"]["level"], "contract");
    let o = api.place(&a, "c1", json!({"ship_to":"HQ"})).await;
    assert_eq!(o.status, StatusCode::CREATED, "{:?}", o.body);
    assert_eq!(o.body["state"], "allocated");
    assert_eq!(o.body["lines"][0]["note"], "urgent");
    assert!(
        api.call("GET", "/v1/cart", Some(&a), None, &[]).await.body["lines"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let credit = api.call("GET", "/v1/credit", Some(&a), None, &[]).await;
    assert_eq!(credit.body["exposure"]["amount"], "80.00");
    assert_eq!(credit.body["available"], "4920.00");
}

/// Replaces the price book with the test's, its row `from` replaced by `to` (may be empty).
async fn change_prices(api: &Api, from: &str, to: &str) {
    let csv = PRICES.replace(from, to);
    assert_ne!(csv, PRICES);
    import(
        &api.state.engine,
        &Caller::system(),
        Kind::Prices,
        csv.as_bytes(),
        100,
    )
    .await
    .unwrap();
}

/// Imports accounts A and B as `csv` has them.
async fn import_accounts(api: &Api, csv: &str) {
    let sys = Caller::system();
    let r = import(&api.state.engine, &sys, Kind::Accounts, csv.as_bytes(), 10).await;
    assert_eq!(r, Ok(2));
}

/// Account A's contract price for BOLT (8.00 in the test's price book) becomes `price`.
async fn set_contract_price(api: &Api, price: &str) {
    let to = format!("contract,A,BOLT,EUR,,,1:{price}\n");
    change_prices(api, "contract,A,BOLT,EUR,,,1:8.00\n", &to).await;
}

/// Asserts that `r` is refused for a price the buyer did not see, on line `line`, and that its
/// message contains `says`. When `says` is a price, it is today's, which the problem also
/// carries as `unit_price`; otherwise the line had no quote, and the problem has no price.
fn price_changed(r: &Resp, line: u32, says: &str) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let p = &r.body["problems"][0];
    assert_eq!(p["code"], "price_changed", "{:?}", r.body);
    assert_eq!(p["line"], line, "{:?}", r.body);
    match says.parse::<f64>() {
        Ok(_) => assert_eq!(p["unit_price"]["amount"], says, "{:?}", r.body),
        Err(_) => assert_eq!(p.get("unit_price"), None, "{:?}", r.body),
    }
    let message = p["message"].as_str().unwrap();
    assert!(message.contains(says), "{:?}", r.body);
}

// No price changes in the cart unseen. A line keeps the price it was quoted when added; after a
// price change, validation and submission name it (by its cart line id) as `price_changed` with
// today's price, and the cart keeps its lines; a note does not requote it, repricing does, and
// the order is placed at the new price. A line added while its SKU had no price is not ordered
// before the buyer has seen one.
#[tokio::test]
async fn a_cart_orders_only_the_prices_it_showed() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let add = |body: Value| api.call("POST", "/v1/cart/lines", Some(&a), Some(body), &[]);
    add(json!({"sku":"NUT","qty":10})).await;
    let r = api
        .call("DELETE", "/v1/cart/lines/1", Some(&a), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = add(json!({"sku":"BOLT","qty":5})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let line = &r.body["lines"][0];
    assert_eq!(line["id"], 2);
    assert_eq!(
        line["quote"]["unit_price"]["amount"], "8.00",
        "{:?}",
        r.body
    );
    assert_eq!(line["quote"]["source"]["level"], "contract");

    set_contract_price(&api, "8.50").await;
    let r = api.call("GET", "/v1/cart", Some(&a), None, &[]).await;
    assert_eq!(r.body["lines"][0]["quote"]["unit_price"]["amount"], "8.00");
    let validate = || api.call("POST", "/v1/cart/validate", Some(&a), None, &[]);
    let mut v = validate().await;
    assert_eq!(v.body["valid"], false);
    v.status = StatusCode::UNPROCESSABLE_ENTITY;
    price_changed(&v, 2, "8.50");
    let o = api.place(&a, "p1", json!({"ship_to":"HQ"})).await;
    price_changed(&o, 2, "8.50");
    let note = json!({"note":"gate 4"});
    let r = api
        .call("PATCH", "/v1/cart/lines/2", Some(&a), Some(note), &[])
        .await;
    assert_eq!(r.body["lines"][0]["quote"]["unit_price"]["amount"], "8.00");
    let r = api
        .call("POST", "/v1/cart/reprice", Some(&a), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["lines"][0]["quote"]["unit_price"]["amount"], "8.50");
    assert_eq!(r.body["lines"][0]["note"], "gate 4");
    let o = api.place(&a, "p2", json!({"ship_to":"HQ"})).await;
    assert_eq!(o.status, StatusCode::CREATED, "{:?}", o.body);
    assert_eq!(o.body["total"]["amount"], "42.50");

    // KIT has no price for a while: its line is added without a quote and not ordered until
    // the buyer has seen the price that came meanwhile.
    change_prices(&api, "list,,KIT,EUR,,,1:30.00\n", "").await;
    let r = add(json!({"sku":"KIT","qty":1})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["lines"][0]["quote"], Value::Null, "{:?}", r.body);
    // While it has no price, that is its one problem.
    let v = validate().await;
    let codes: Vec<_> = v.body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["code"], &p["line"]))
        .collect();
    assert_eq!(codes, [(&json!("no_price"), &json!(3))], "{:?}", v.body);
    change_prices(
        &api,
        "list,,KIT,EUR,,,1:30.00\n",
        "list,,KIT,EUR,,,1:31.00\n",
    )
    .await;
    let mut v = validate().await;
    v.status = StatusCode::UNPROCESSABLE_ENTITY;
    price_changed(&v, 3, "shows no price in EUR");
    price_changed(
        &api.place(&a, "p3", json!({"ship_to":"HQ"})).await,
        3,
        "reprice",
    );
    let r = api
        .call("POST", "/v1/cart/reprice", Some(&a), None, &[])
        .await;
    assert_eq!(r.body["lines"][0]["quote"]["unit_price"]["amount"], "31.00");
    let o = api.place(&a, "p4", json!({"ship_to":"HQ"})).await;
    assert_eq!(o.status, StatusCode::CREATED, "{:?}", o.body);
    assert_eq!(o.body["total"]["amount"], "31.00");
}

// An order keeps the prices it shows. A draft is submitted only at them, and an amendment that
// leaves the lines as they are is refused when one changed, naming the order's line number
// (after a line was rejected, not the line's position); sending the lines again accepts
// today's price. An amendment without lines keeps the lines' numbers and the rejected ones.
#[tokio::test]
async fn an_order_keeps_its_prices_until_its_lines_are_sent() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let lines = json!([{"sku":"BOLT","qty":2}]);
    let body = json!({"lines": lines, "ship_to":"HQ", "submit": false});
    let draft = api.place(&a, "d1", body).await;
    assert_eq!(draft.body["lines"][0]["unit_price"]["amount"], "8.00");
    let path = format!("/v1/orders/{}", draft.body["id"].as_str().unwrap());
    let submit = format!("{path}/submit");
    // The account moves to CHF, where its contract price is 8.00 too: the draft's 8.00 EUR is no
    // quote of that.
    import_accounts(
        &api,
        &ACCOUNTS.replace("A,Alpha,retail,EUR", "A,Alpha,retail,CHF"),
    )
    .await;
    let chf = "contract,A,BOLT,EUR,,,1:8.00\ncontract,A,BOLT,CHF,,,1:8.00\n";
    change_prices(&api, "contract,A,BOLT,EUR,,,1:8.00\n", chf).await;
    let r = api.call("POST", &submit, Some(&a), None, &[]).await;
    price_changed(&r, 1, "the account now buys in CHF");
    import_accounts(&api, ACCOUNTS).await;
    set_contract_price(&api, "9.00").await;
    let r = api.call("POST", &submit, Some(&a), None, &[]).await;
    price_changed(&r, 1, "9.00");
    let po = json!({"customer_po":"PO-7"});
    let r = api.call("PATCH", &path, Some(&a), Some(po), &[]).await;
    price_changed(&r, 1, "9.00");
    let r = api.call("GET", &path, Some(&a), None, &[]).await;
    assert_eq!(r.body["lines"][0]["unit_price"]["amount"], "8.00");
    assert_eq!(r.body["customer_po"], Value::Null);
    let r = api
        .call("PATCH", &path, Some(&a), Some(json!({"lines": lines})), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["lines"][0]["unit_price"]["amount"], "9.00");
    let r = api.call("POST", &submit, Some(&a), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["state"], "allocated");
    assert_eq!(r.body["total"]["amount"], "18.00");

    // A pending order (above ann's 500 EUR limit) loses its line 1 to the approver; BOLT's
    // price changes; a new PO alone is refused for line 2, as the order numbers it.
    let lines = json!([{"sku":"NUT","qty":10},{"sku":"BOLT","qty":60}]);
    let o = api.place(&a, "p1", json!({"lines": lines})).await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    let path = format!("/v1/orders/{}", o.body["id"].as_str().unwrap());
    let approver = api.token(Some("A"), "pat", &["approver"], None).await;
    let reject = json!({"lines":[1],"reason":"no nuts"});
    let r = api
        .call(
            "POST",
            &format!("{path}/reject"),
            Some(&approver),
            Some(reject),
            &[],
        )
        .await;
    assert_eq!(r.body["state"], "pending_approval", "{:?}", r.body);
    set_contract_price(&api, "9.50").await;
    let po = json!({"customer_po":"PO-8"});
    let r = api
        .call("PATCH", &path, Some(&a), Some(po.clone()), &[])
        .await;
    price_changed(&r, 2, "9.50");
    // At the order's price again, the new PO applies and the lines stay as they were: the
    // rejected NUT line 1, BOLT line 2.
    set_contract_price(&api, "9.00").await;
    let r = api.call("PATCH", &path, Some(&a), Some(po), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["customer_po"], "PO-8");
    let lines: Vec<_> = (r.body["lines"].as_array().unwrap().iter())
        .map(|l| (l["line_no"].clone(), l["sku"].clone(), l["status"].clone()))
        .collect();
    let want = [(1, "NUT", "rejected"), (2, "BOLT", "open")]
        .map(|(n, sku, status)| (json!(n), json!(sku), json!(status)));
    assert_eq!(lines, want, "{:?}", r.body);
    assert_eq!(r.body["total"]["amount"], "540.00");
}

// A cart line whose SKU the account can no longer see (a catalog import moved it to another
// segment) does not block the rest of the cart: other lines can still be added and changed,
// validation names the line, and removing it makes the cart valid again.
#[tokio::test]
async fn a_cart_line_hidden_later_blocks_only_itself() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let add = |sku: &'static str, qty: u32| {
        let a = a.clone();
        let api = &api;
        async move {
            api.call(
                "POST",
                "/v1/cart/lines",
                Some(&a),
                Some(json!({"sku":sku,"qty":qty})),
                &[],
            )
            .await
        }
    };
    assert_eq!(add("BOLT", 5).await.status, StatusCode::OK);
    let hidden = CATALOG.replace(
        "BOLT,Hex bolt M8,EA,1,1,active,,",
        "BOLT,Hex bolt M8,EA,1,1,active,wholesale,",
    );
    import(
        &api.state.engine,
        &Caller::system(),
        Kind::Catalog,
        hidden.as_bytes(),
        1000,
    )
    .await
    .expect("the catalog import");
    let patch = |line: u32, qty: u32| {
        let a = a.clone();
        let api = &api;
        async move {
            let path = format!("/v1/cart/lines/{line}");
            api.call("PATCH", &path, Some(&a), Some(json!({"qty":qty})), &[])
                .await
        }
    };
    let r = add("NUT", 10).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // BOLT (line 1) may not grow, by adding more or by a larger quantity.
    for r in [add("BOLT", 1).await, patch(1, 6).await] {
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a hidden SKU does not grow: {:?}",
            r.body
        );
    }
    let r = patch(1, 4).await;
    assert_eq!(r.body["lines"][0]["qty"], 4, "it may shrink: {:?}", r.body);
    let r = patch(2, 20).await;
    assert_eq!(r.body["lines"][1]["qty"], 20, "{:?}", r.body);
    let v = api
        .call("POST", "/v1/cart/validate", Some(&a), None, &[])
        .await;
    assert_eq!(v.body["valid"], false, "{:?}", v.body);
    assert_eq!(v.body["problems"][0]["line"], 1, "{:?}", v.body);
    let r = api
        .call("DELETE", "/v1/cart/lines/1", Some(&a), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = api
        .call("POST", "/v1/cart/validate", Some(&a), None, &[])
        .await;
    assert_eq!(v.body["valid"], true, "{:?}", v.body);
}

// Approval: above the buyer's limit -> pending; only an approver approves; a warehouse ships;
// shipped value moves to receivables; the history records each step.
#[tokio::test]
async fn approval_and_shipment() {
    let api = api().await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let approver = api.token(Some("A"), "pat", &["approver"], None).await;
    // 70 x 8.00 + 20 x 1.00 = 580.00, above the buyer role's 500.00.
    let o = api
        .place(
            &buyer,
            "p1",
            json!({"lines":[{"sku":"BOLT","qty":70},{"sku":"NUT","qty":20}]}),
        )
        .await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    let id = o.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call(
            "POST",
            &format!("/v1/orders/{id}/approve"),
            Some(&buyer),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    // Four eyes: the buyer who placed it may not approve it, even as an approver.
    let ann_approver = api
        .token(Some("A"), "ann", &["buyer", "approver"], None)
        .await;
    let own = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/approve"),
            Some(&ann_approver),
            None,
            &[],
        )
        .await;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{:?}", own.body);
    assert!(
        own.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("placed by ann")),
        "{:?}",
        own.body
    );
    // Nor may an approver who changed it: vic amends ann's order (it still waits), then may
    // not approve what he wrote.
    let vic = api.token(Some("A"), "vic", &["approver"], None).await;
    let amended = api
        .call(
            "PATCH",
            &format!("/v1/orders/{id}"),
            Some(&vic),
            Some(json!({"customer_po": "PO-VIC"})),
            &[],
        )
        .await;
    assert_eq!(amended.status, StatusCode::OK, "{:?}", amended.body);
    assert_eq!(
        amended.body["state"], "pending_approval",
        "{:?}",
        amended.body
    );
    let his = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/approve"),
            Some(&vic),
            None,
            &[],
        )
        .await;
    assert_eq!(his.status, StatusCode::FORBIDDEN, "{:?}", his.body);
    assert!(
        his.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("vic changed order") && d.contains("order.amend")),
        "{:?}",
        his.body
    );
    // Nor one who submitted a colleague's draft: what it holds went in under his name.
    let lines = json!({"lines":[{"sku":"BOLT","qty":60},{"sku":"NUT","qty":100}], "submit": false});
    let draft = api.place(&buyer, "four-eyes-draft", lines).await;
    assert_eq!(draft.body["state"], "draft", "{:?}", draft.body);
    let draft_path = format!("/v1/orders/{}", draft.body["id"].as_str().unwrap());
    let r = api
        .call(
            "POST",
            &format!("{draft_path}/submit"),
            Some(&vic),
            None,
            &[],
        )
        .await;
    assert_eq!(r.body["state"], "pending_approval", "{:?}", r.body);
    let r = api
        .call(
            "POST",
            &format!("{draft_path}/approve"),
            Some(&vic),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("vic changed order") && d.contains("order.submit")),
        "{:?}",
        r.body
    );
    let r = api
        .call(
            "POST",
            &format!("{draft_path}/approve"),
            Some(&approver),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Lines that are not the order's open ones refuse the approval, each named.
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/approve"),
            Some(&approver),
            Some(json!({"reject_lines":[2, 5, 9]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let named: Vec<(&Value, &Value, &Value)> = r.body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["code"], &p["line"], &p["field"]))
        .collect();
    assert_eq!(
        named,
        [
            (&json!("invalid_field"), &json!(5), &json!("reject_lines")),
            (&json!("invalid_field"), &json!(9), &json!("reject_lines")),
        ],
        "{:?}",
        r.body
    );
    let many: Vec<u32> = (1..=1_001).collect();
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/approve"),
            Some(&approver),
            Some(json!({ "reject_lines": many })),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(
        r.body["problems"][0]["message"], "at most 1000 line numbers, 1001 given",
        "{:?}",
        r.body
    );
    // An optional body is JSON too, when there is one.
    let req = Request::builder()
        .method("POST")
        .uri(format!("/v1/orders/{id}/approve"))
        .header("authorization", format!("Bearer {approver}"))
        .header("content-type", "text/plain")
        .body(Body::from(r#"{"reject_lines":[2]}"#))
        .unwrap();
    let resp = router(api.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/approve"),
            Some(&approver),
            Some(json!({"reject_lines":[2, 2]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["state"], "allocated");
    assert_eq!(r.body["lines"][1]["status"], "rejected");
    assert_eq!(r.body["total"]["amount"], "560.00");
    let wh = r.body["lines"][0]["allocations"][0]["warehouse"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_wh = if wh == "BER" { "MUC" } else { "BER" };
    let wrong = api.token(None, "w2", &["warehouse"], Some(other_wh)).await;
    assert_eq!(
        api.call(
            "POST",
            &format!("/v1/orders/{id}/ship"),
            Some(&wrong),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    // An operator names the warehouse and the account; each one missing, malformed or
    // unknown is a problem of its field, all at once.
    let op = api.token(None, "ops", &["operator"], None).await;
    for (body, named) in [
        (
            json!({}),
            vec![("invalid_field", "warehouse"), ("invalid_field", "account")],
        ),
        (
            json!({"warehouse":"NOPE","account":"bad account"}),
            vec![
                ("unknown_warehouse", "warehouse"),
                ("invalid_field", "account"),
            ],
        ),
        (
            json!({"warehouse":"no such!","account":"A"}),
            vec![("unknown_warehouse", "warehouse")],
        ),
        (
            json!({"warehouse":"BER","account":"NOBODY"}),
            vec![("invalid_field", "account")],
        ),
    ] {
        let r = api
            .call(
                "POST",
                &format!("/v1/orders/{id}/ship"),
                Some(&op),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
        let got: Vec<_> = r.body["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["code"].as_str().unwrap(), p["field"].as_str().unwrap()))
            .collect();
        assert_eq!(got, named, "{:?}", r.body);
    }
    let warehouse = api.token(None, "w1", &["warehouse"], Some(&wh)).await;
    let before = api
        .call("GET", "/v1/credit", Some(&buyer), None, &[])
        .await
        .body;
    let s = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/ship"),
            Some(&warehouse),
            None,
            &[],
        )
        .await;
    assert_eq!(s.body["state"], "shipped", "{:?}", s.body);
    // A retried shipment: the warehouse no longer holds the order, and is told so.
    let again = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/ship"),
            Some(&warehouse),
            None,
            &[],
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(
        again.body["detail"],
        format!(
            "order {id} holds no stock in {wh} (an order shipped in full from {wh} no longer does)"
        )
    );
    let after = api
        .call("GET", "/v1/credit", Some(&buyer), None, &[])
        .await
        .body;
    assert_eq!(
        before["exposure"], after["exposure"],
        "shipping moves value from orders to receivables"
    );
    assert_eq!(after["open_receivables"]["amount"], "560.00");
    let late = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(&buyer),
            None,
            &[],
        )
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(
        late.body["detail"],
        format!("order {id} is shipped and can no longer be cancelled")
    );
    let h = api.history(&buyer, &id).await;
    let actions: Vec<&str> = h.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["order.place", "order.amend", "order.approve", "order.ship"]
    );
    assert_eq!(
        (&h[1]["user"], &h[2]["user"]),
        (&json!("vic"), &json!("pat"))
    );
    assert_eq!(h[3]["to"], "shipped");
}

// A buyer who placed an order that waits for approval withdraws it with cancel: it ends
// rejected (the state machine's only way out besides approval), saying who withdrew it, and
// its stock and credit are free again. Another buyer of the account cannot see it to withdraw.
#[tokio::test]
async fn a_buyer_withdraws_a_pending_order() {
    let api = api().await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let other = api.token(Some("A"), "ari", &["buyer"], None).await;
    let available = || async {
        api.call("GET", "/v1/catalog/BOLT", Some(&buyer), None, &[])
            .await
            .body["available"]["BER"]
            .clone()
    };
    let before = available().await;
    let o = api
        .place(&buyer, "w1", json!({"lines":[{"sku":"BOLT","qty":80}]}))
        .await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    let id = o.body["id"].as_str().unwrap().to_owned();
    assert_ne!(available().await, before, "the pending order holds stock");
    let cancel = format!("/v1/orders/{id}/cancel");
    let r = api.call("POST", &cancel, Some(&other), None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    let r = api.call("POST", &cancel, Some(&buyer), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["state"], "rejected");
    assert_eq!(
        r.body["approval_reasons"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        "withdrawn by ann"
    );
    // The warehouse frees it after the answer (a message it handles in turn): wait for it.
    let mut freed = available().await;
    for _ in 0..200 {
        if freed == before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        freed = available().await;
    }
    assert_eq!(freed, before, "its stock is free again");
    let credit = api.call("GET", "/v1/credit", Some(&buyer), None, &[]).await;
    assert_eq!(
        credit.body["exposure"]["amount"], "0.00",
        "{:?}",
        credit.body
    );
    let last = api.history(&buyer, &id).await.pop().unwrap();
    assert_eq!(
        (&last["action"], &last["user"], &last["from"], &last["to"]),
        (
            &json!("order.cancel"),
            &json!("ann"),
            &json!("pending_approval"),
            &json!("rejected")
        )
    );
    let again = api.call("POST", &cancel, Some(&buyer), None, &[]).await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "a closed order stays closed"
    );
}

// Amending one order in a loop stops at ORDER_CHANGES_MAX changes (the record of an order
// holds the seq of each of its changes); the order can still be cancelled.
#[tokio::test]
async fn an_order_takes_a_bounded_number_of_amendments() {
    use orderd_actors::ordering::ORDER_CHANGES_MAX;
    let api = api_allowing_bursts_of(2 * ORDER_CHANGES_MAX).await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let o = api
        .place(
            &buyer,
            "d1",
            json!({"lines":[{"sku":"BOLT","qty":1}],"submit":false}),
        )
        .await;
    assert_eq!(o.body["state"], "draft", "{:?}", o.body);
    let path = format!("/v1/orders/{}", o.body["id"].as_str().unwrap());
    let amend = |po: String| {
        api.call(
            "PATCH",
            &path,
            Some(&buyer),
            Some(json!({ "customer_po": po })),
            &[],
        )
    };
    // The placement was the first change.
    for i in 1..ORDER_CHANGES_MAX {
        let r = amend(format!("po-{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "amendment {i}: {:?}", r.body);
    }
    let refused = amend("one too many".into()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("cancel it and place a new one"), "{detail}");
    let read = api.call("GET", &path, Some(&buyer), None, &[]).await;
    assert_eq!(
        read.body["customer_po"],
        format!("po-{}", ORDER_CHANGES_MAX - 1)
    );
    let cancelled = api
        .call("POST", &format!("{path}/cancel"), Some(&buyer), None, &[])
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
}

// Rejection per line keeps the order pending; rejecting the rest rejects it; amendments are
// re-validated and refused after allocation.
#[tokio::test]
async fn reject_and_amend() {
    let api = api().await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let approver = api.token(Some("A"), "pat", &["approver"], None).await;
    let o = api
        .place(
            &buyer,
            "r1",
            json!({"lines":[{"sku":"BOLT","qty":40},{"sku":"BOLT","qty":40}]}),
        )
        .await;
    assert_eq!(o.body["state"], "pending_approval");
    let id = o.body["id"].as_str().unwrap().to_owned();
    let am = api
        .call(
            "PATCH",
            &format!("/v1/orders/{id}"),
            Some(&buyer),
            Some(json!({"lines":[{"sku":"BOLT","qty":1000}]})),
            &[],
        )
        .await;
    assert_eq!(
        am.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "more than all stock: {:?}",
        am.body
    );
    let am = api.call("PATCH", &format!("/v1/orders/{id}"), Some(&buyer), Some(json!({"lines":[{"sku":"BOLT","qty":60},{"sku":"BOLT","qty":40}],"customer_po":"PO-9"})), &[]).await;
    assert_eq!(am.status, StatusCode::OK, "{:?}", am.body);
    assert_eq!(am.body["customer_po"], "PO-9");
    assert_eq!(am.body["version"], 2);
    // A reason longer than the limit is refused, not cut short.
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/reject"),
            Some(&approver),
            Some(json!({"lines":[1],"reason":"r".repeat(201)})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["problems"][0]["field"], "reason", "{:?}", r.body);
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/reject"),
            Some(&approver),
            Some(json!({"lines":[1],"reason":"too many"})),
            &[],
        )
        .await;
    assert_eq!(r.body["state"], "pending_approval");
    assert_eq!(r.body["total"]["amount"], "320.00");
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/reject"),
            Some(&approver),
            None,
            &[],
        )
        .await;
    assert_eq!(r.body["state"], "rejected");
    let small = api
        .place(&buyer, "r2", json!({"lines":[{"sku":"BOLT","qty":1}]}))
        .await;
    let sid = small.body["id"].as_str().unwrap();
    let am = api
        .call(
            "PATCH",
            &format!("/v1/orders/{sid}"),
            Some(&buyer),
            Some(json!({"customer_po":"x"})),
            &[],
        )
        .await;
    assert_eq!(am.status, StatusCode::CONFLICT);
    let c = api
        .call(
            "POST",
            &format!("/v1/orders/{sid}/cancel"),
            Some(&buyer),
            None,
            &[],
        )
        .await;
    assert_eq!(c.body["state"], "cancelled");
    let credit = api.call("GET", "/v1/credit", Some(&buyer), None, &[]).await;
    assert_eq!(
        credit.body["exposure"]["amount"], "0.00",
        "rejected and cancelled orders hold no credit: {:?}",
        credit.body
    );
}

// Rejecting line by line with reasons stops at APPROVAL_REASONS_MAX reasons (the order's
// record holds them all): a further partial rejection must come without a reason, and the
// rejection that ends the order may still give one.
#[tokio::test]
async fn an_order_keeps_a_bounded_number_of_rejection_notes() {
    use orderd_actors::ordering::APPROVAL_REASONS_MAX;
    let lines = APPROVAL_REASONS_MAX + 3;
    let api = api_allowing_bursts_of(2 * lines).await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let approver = api.token(Some("A"), "pat", &["approver"], None).await;
    let body: Vec<_> = (0..lines)
        .map(|_| json!({"sku": "BOLT", "qty": 1}))
        .collect();
    let o = api.place(&buyer, "many", json!({ "lines": body })).await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    let path = format!("/v1/orders/{}", o.body["id"].as_str().unwrap());
    let reject = format!("{path}/reject");
    let reject = |body: Value| api.call("POST", &reject, Some(&approver), Some(body), &[]);
    let mut line = 1;
    let mut kept = o.body["approval_reasons"].as_array().unwrap().len();
    assert!(kept > 0, "the rule that made it pending says why");
    while kept < APPROVAL_REASONS_MAX {
        let r = reject(json!({"lines": [line], "reason": format!("line {line}")})).await;
        assert_eq!(r.status, StatusCode::OK, "line {line}: {:?}", r.body);
        kept = r.body["approval_reasons"].as_array().unwrap().len();
        line += 1;
    }
    let version = api.call("GET", &path, Some(&buyer), None, &[]).await.body["version"].clone();
    let r = reject(json!({"lines": [line], "reason": "one too many"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("without a reason"), "{detail}");
    let read = api.call("GET", &path, Some(&buyer), None, &[]).await;
    assert_eq!(read.body["version"], version, "a refusal changes nothing");
    // A line that is no open line is still named as such, reason or not.
    let r = reject(json!({"lines": [line, 9999], "reason": "which line?"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["problems"][0]["line"], 9999, "{:?}", r.body);
    let r = reject(json!({"lines": [line]})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["state"], "pending_approval");
    // Naming every open line ends the order, so its reason is kept.
    let rest: Vec<usize> = (line + 1..=lines).collect();
    let r = reject(json!({"lines": rest, "reason": "the rest"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["state"], "rejected");
    let reasons = r.body["approval_reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), APPROVAL_REASONS_MAX + 1);
    assert_eq!(reasons.last().unwrap(), "rejected: the rest");
}

// An order is answered with its version as ETag. A change sent with If-Match applies only to
// that version: an approver who read the order before the buyer amended it gets 412 and
// nothing changes; with the current ETag (or `*`) the approval goes through. A stale If-Match
// on an order the caller cannot see is still 404.
#[tokio::test]
async fn a_change_with_if_match_applies_only_to_the_version_read() {
    let api = api().await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let other = api.token(Some("A"), "ari", &["buyer"], None).await;
    let approver = api.token(Some("A"), "pat", &["approver"], None).await;
    let etag = |r: &Resp| r.headers["etag"].to_str().unwrap().to_owned();
    let o = api
        .place(&buyer, "v1", json!({"lines":[{"sku":"BOLT","qty":80}]}))
        .await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    let id = o.body["id"].as_str().unwrap().to_owned();
    let (path, approve) = (
        format!("/v1/orders/{id}"),
        format!("/v1/orders/{id}/approve"),
    );
    // The approver's requests, with one precondition header each.
    let as_approver = |method: &'static str, uri: String, header: &'static str, tag: String| {
        let (api, approver) = (&api, &approver);
        async move {
            api.call(method, &uri, Some(approver), None, &[(header, &tag)])
                .await
        }
    };
    let read_if_none = |tag: &str| as_approver("GET", path.clone(), "if-none-match", tag.into());
    let approve_if = |tag: &str| as_approver("POST", approve.clone(), "if-match", tag.into());
    let read = api.call("GET", &path, Some(&approver), None, &[]).await;
    assert_eq!(etag(&read), format!("\"{}\"", read.body["version"]));
    assert_eq!(
        etag(&read),
        etag(&o),
        "the placement answered the same version"
    );
    let seen = etag(&read);
    let again = read_if_none(&seen).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(etag(&again), seen);

    // The buyer grows the order after the approver read it.
    let am = api
        .call(
            "PATCH",
            &path,
            Some(&buyer),
            Some(json!({"lines":[{"sku":"BOLT","qty":95}]})),
            &[("if-match", &seen)],
        )
        .await;
    assert_eq!(am.status, StatusCode::OK, "{:?}", am.body);
    let current = etag(&am);
    assert_ne!(current, seen);
    let stale = approve_if(&seen).await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{:?}",
        stale.body
    );
    assert_eq!(stale.body["code"], "order_changed");
    assert_eq!(
        stale.headers["content-type"], "application/problem+json",
        "{:?}",
        stale.headers
    );
    let unchanged = api.call("GET", &path, Some(&approver), None, &[]).await;
    assert_eq!(
        (&unchanged.body["state"], etag(&unchanged)),
        (&json!("pending_approval"), current.clone()),
        "a refused approval changes nothing"
    );
    let changed = read_if_none(&seen).await;
    assert_eq!(
        changed.status,
        StatusCode::OK,
        "a newer version is sent in full"
    );

    // Tenancy first: another buyer's stale If-Match finds nothing, as without one.
    let r = api
        .call(
            "POST",
            &format!("{path}/cancel"),
            Some(&other),
            None,
            &[("if-match", &seen)],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    // A malformed (unquoted) tag names no version either; the answer says which one is current.
    let r = approve_if("2").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{:?}", r.body);
    assert!(
        detail(&r).contains(&format!("ETag {current}")),
        "{:?}",
        r.body
    );
    // A weak tag never matches (If-Match compares strongly).
    let weak = format!("W/{current}");
    let r = approve_if(&weak).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED, "{:?}", r.body);

    let ok = approve_if(&format!("{seen}, {current}")).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(ok.body["state"], "allocated");
    assert_eq!(
        ok.body["total"], am.body["total"],
        "what was approved is what was read"
    );
    assert_ne!(etag(&ok), current);
    let cancel = api
        .call(
            "POST",
            &format!("{path}/cancel"),
            Some(&buyer),
            None,
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(cancel.body["state"], "cancelled", "{:?}", cancel.body);
}

// An amended pending order is judged again by the approval rules, as its placer would submit
// it: its reasons follow the new total, an admin whose own limit is higher does not wave it
// through, and once no rule holds it back it is confirmed and allocated like a new order.
#[tokio::test]
async fn an_amended_pending_order_is_routed_again() {
    let api = api().await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let admin = api
        .token(Some("A"), "carol", &["account_admin"], None)
        .await;
    let max = json!({"id": "max", "name": "Max", "roles": ["account_admin"], "spending_limit": "5000.00", "ship_tos": []});
    let r = api
        .call("POST", "/v1/account/users", Some(&admin), Some(max), &[])
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let max = api.token(Some("A"), "max", &["account_admin"], None).await;
    let reasons = |r: &Resp| r.body["approval_reasons"].clone();
    let o = api
        .place(&buyer, "p1", json!({"lines":[{"sku":"BOLT","qty":80}]}))
        .await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    assert_eq!(
        reasons(&o),
        json!(["order total 640.00 EUR is above the spending limit of 500.00 EUR"])
    );
    let id = o.body["id"].as_str().unwrap();
    let path = format!("/v1/orders/{id}");
    let amend = |token: &str, qty: u32| {
        let body = json!({"lines":[{"sku":"BOLT","qty":qty}]});
        let (path, token) = (path.clone(), token.to_owned());
        let api = &api;
        async move {
            let r = api
                .call("PATCH", &path, Some(&token), Some(body), &[])
                .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            r
        }
    };
    let r = amend(&buyer, 95).await;
    assert_eq!(
        (&r.body["state"], reasons(&r)),
        (
            &json!("pending_approval"),
            json!(["order total 760.00 EUR is above the spending limit of 500.00 EUR"])
        )
    );
    // Max's own limit covers 720 EUR, ann's does not: the order still waits.
    let r = amend(&max, 90).await;
    assert_eq!(
        (&r.body["state"], reasons(&r)),
        (
            &json!("pending_approval"),
            json!(["order total 720.00 EUR is above the spending limit of 500.00 EUR"])
        )
    );
    let r = amend(&buyer, 50).await;
    assert_eq!(r.body["state"], "allocated", "{:?}", r.body);
    assert_eq!(reasons(&r), json!([]));
    assert_eq!(r.body["lines"][0]["allocations"][0]["qty"], 50);
    let last = api.history(&buyer, id).await.pop().unwrap();
    assert_eq!(
        (&last["action"], &last["from"], &last["to"], &last["path"]),
        (
            &json!("order.amend"),
            &json!("pending_approval"),
            &json!("allocated"),
            &json!(["confirmed", "allocated"])
        ),
        "{last}"
    );
    // It now holds 50 allocated (no longer reserved) in its warehouse: shipping takes them.
    let wh = r.body["lines"][0]["allocations"][0]["warehouse"]
        .as_str()
        .unwrap()
        .to_owned();
    let warehouse = api.token(None, "dock", &["warehouse"], Some(&wh)).await;
    let shipped = api
        .call("POST", &format!("{path}/ship"), Some(&warehouse), None, &[])
        .await;
    assert_eq!(shipped.body["state"], "shipped", "{:?}", shipped.body);
}

// Whoever submits a draft or amends a pending order, its placer's rules apply: their spending
// limit and their assigned ship-tos. Once the account removed the placer, the order waits for
// an approver whatever its total.
#[tokio::test]
async fn the_placers_rules_hold_whoever_changes_the_order() {
    let api = api().await;
    let sys = Caller::system();
    let users = "account,id,name,roles,spending_limit,currency,ship_tos
A,una,Una,buyer,100.00,EUR,HQ
A,max,Max,account_admin,5000.00,EUR,
";
    for (kind, csv) in [
        (
            Kind::ShipTos,
            "account,id,address,lat,lon\nA,PLANT,Potsdam,52.39,13.06\n",
        ),
        (Kind::Users, users),
    ] {
        import(&api.state.engine, &sys, kind, csv.as_bytes(), 10)
            .await
            .unwrap();
    }
    let una = api.token(Some("A"), "una", &["buyer"], None).await;
    let max = api.token(Some("A"), "max", &["account_admin"], None).await;
    let draft = api
        .place(
            &una,
            "d1",
            json!({"lines":[{"sku":"BOLT","qty":30}], "submit": false}),
        )
        .await;
    assert_eq!(draft.body["state"], "draft", "{:?}", draft.body);
    let path = format!("/v1/orders/{}", draft.body["id"].as_str().unwrap());
    let r = api
        .call("POST", &format!("{path}/submit"), Some(&max), None, &[])
        .await;
    assert_eq!(
        (&r.body["state"], &r.body["approval_reasons"]),
        (
            &json!("pending_approval"),
            &json!(["order total 240.00 EUR is above the spending limit of 100.00 EUR"])
        ),
        "max's own limit does not cover una's order"
    );
    let r = api
        .call(
            "PATCH",
            &path,
            Some(&max),
            Some(json!({"ship_to": "PLANT"})),
            &[],
        )
        .await;
    assert_eq!(codes(&r), ["ship_to_not_assigned"], "{:?}", r.body);
    let carol = api
        .token(Some("A"), "carol", &["account_admin"], None)
        .await;
    let r = api
        .call("DELETE", "/v1/account/users/una", Some(&carol), None, &[])
        .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    // Without una's own limit the buyer role's 500 EUR would cover it: it waits all the same.
    let r = api
        .call(
            "PATCH",
            &path,
            Some(&max),
            Some(json!({"customer_po": "PO-1"})),
            &[],
        )
        .await;
    assert_eq!(
        (&r.body["state"], &r.body["approval_reasons"]),
        (
            &json!("pending_approval"),
            &json!(["placed by una, who is no longer a user of the account"])
        ),
        "{:?}",
        r.body
    );
}

// Credit: the operator lowers the limit; the next order is refused with the figures.
#[tokio::test]
async fn credit_limit_is_enforced() {
    let api = api().await;
    let buyer = api.token(Some("B"), "bea", &["buyer"], None).await;
    let op = api.token(None, "ops", &["operator"], None).await;
    assert_eq!(
        api.call(
            "PUT",
            "/v1/admin/accounts/B/credit",
            Some(&buyer),
            Some(json!({"credit_limit":"1"})),
            &[]
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let r = api
        .call(
            "PUT",
            "/v1/admin/accounts/B/credit",
            Some(&op),
            Some(json!({"credit_limit":"100.00","open_receivables":"50.00"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let o = api
        .place(&buyer, "c1", json!({"lines":[{"sku":"BOLT","qty":6}]}))
        .await;
    assert_eq!(codes(&o), ["credit_limit_exceeded"]);
    let c = &o.body["problems"][0]["credit"];
    assert_eq!(
        (
            c["limit"]["amount"].as_str(),
            c["exposure"]["amount"].as_str(),
            c["order_amount"]["amount"].as_str()
        ),
        (Some("100.00"), Some("50.00"), Some("60.00"))
    );
    assert_eq!(
        api.place(&buyer, "c2", json!({"lines":[{"sku":"BOLT","qty":5}]}))
            .await
            .status,
        StatusCode::CREATED,
        "exactly at the limit"
    );
    let bad = api
        .call(
            "PUT",
            "/v1/admin/accounts/B/credit",
            Some(&op),
            Some(json!({"credit_limit":"-5"})),
            &[],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        api.call(
            "PUT",
            "/v1/admin/accounts/NOPE/credit",
            Some(&op),
            Some(json!({"credit_limit":"5"})),
            &[]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

// Catalog search: only what the segment sees, with the caller's tiers and availability.
#[tokio::test]
async fn catalog_search_and_visibility() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let r = api
        .call("GET", "/v1/catalog?q=bolt", Some(&a), None, &[])
        .await;
    let skus: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item"]["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["BOLT", "KIT", "OLD"]);
    let bolt = &r.body["items"][0];
    assert_eq!(bolt["price_level"], "contract");
    assert_eq!(bolt["available"]["BER"], 100);
    assert_eq!(
        r.body["items"][1]["available"]["BER"], 50,
        "kits: whole kits from components"
    );
    assert_eq!(
        api.call("GET", "/v1/catalog/PIPE", Some(&a), None, &[])
            .await
            .status,
        StatusCode::NOT_FOUND,
        "wholesale only"
    );
    let page = api
        .call("GET", "/v1/catalog?limit=2", Some(&a), None, &[])
        .await;
    assert_eq!(page.body["next_cursor"], "KIT");
    let next = api
        .call("GET", "/v1/catalog?limit=2&cursor=KIT", Some(&a), None, &[])
        .await;
    assert_eq!(next.body["items"][0]["item"]["sku"], "NUT");
}

// Imports are operator-only, all-or-nothing, and list every bad row.
#[tokio::test]
async fn csv_imports() {
    let api = api().await;
    let op = api.token(None, "ops", &["operator"], None).await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    assert_eq!(
        api.import_csv(&buyer, "stock", STOCK).await.status,
        StatusCode::FORBIDDEN
    );
    let bad = api
        .import_csv(
            &op,
            "stock",
            "warehouse,sku,on_hand\nBER,BOLT,x\nNOWH,BOLT,1\nBER,BOLT,5\n",
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = bad.body;
    assert_eq!(
        body["problems"].as_array().unwrap().len(),
        1,
        "parse errors first: {body:?}"
    );
    assert!(body["problems"][0]["message"]
        .as_str()
        .unwrap()
        .starts_with("line 2:"));
    // Only a CSV body is an import; a JSON route takes only JSON.
    for (path, content_type) in [
        ("/v1/admin/import/stock", Some("application/json")),
        ("/v1/admin/import/stock", None),
        ("/v1/cart/lines", None),
        ("/v1/cart/lines", Some("text/plain")),
    ] {
        let token = if path.starts_with("/v1/cart") {
            &buyer
        } else {
            &op
        };
        let mut req = Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let body = if path.starts_with("/v1/cart") {
            r#"{"sku":"BOLT","qty":1}"#
        } else {
            "warehouse,sku,on_hand\nBER,BOLT,7\n"
        };
        let resp = router(api.state.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path} {content_type:?}"
        );
        let problem: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(problem["code"], "unsupported_media_type", "{problem}");
    }
    let ok = api
        .import_csv(&op, "stock", "warehouse,sku,on_hand\nBER,BOLT,7\n")
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let r = api
        .call("GET", "/v1/catalog/BOLT", Some(&buyer), None, &[])
        .await;
    assert_eq!(r.body["available"]["BER"], 7);
    assert_eq!(
        api.import_csv(&op, "nonsense", "a\n1\n").await.status,
        StatusCode::NOT_FOUND
    );
}

// The OpenAPI document lists every route with its methods.
#[tokio::test]
async fn openapi_lists_routes() {
    let api = api().await;
    let r = api.call("GET", "/openapi.json", None, None, &[]).await;
    let paths = r.body["paths"].as_object().unwrap();
    for p in [
        "/v1/orders",
        "/v1/orders/{id}",
        "/v1/orders/{id}/approve",
        "/v1/orders/{id}/ship",
        "/v1/cart/lines/{line}",
        "/v1/catalog",
        "/v1/credit",
        "/v1/admin/import/{kind}",
        "/v1/dev/token",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert!(paths["/v1/orders/{id}"].get("patch").is_some());
    // Every scheme an operation names is declared; the /v1 routes take a bearer token or the
    // portal's session cookie.
    let schemes = r.body["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["type"], "http", "{schemes:?}");
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes:?}");
    assert_eq!(schemes["session"]["in"], "cookie", "{schemes:?}");
    let mut secured = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let Some(security) = op.get("security").and_then(Value::as_array) else {
                continue;
            };
            secured += 1;
            let names: Vec<&str> = security
                .iter()
                .flat_map(|req| req.as_object().unwrap().keys())
                .map(String::as_str)
                .collect();
            for name in &names {
                assert!(schemes.contains_key(*name), "{method} {path}: {name}");
            }
            assert_eq!(names, ["bearer", "session"], "{method} {path}");
        }
    }
    assert!(secured > 30, "{secured} operations name a scheme");
    assert_eq!(
        api.call("GET", "/healthz", None, None, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "/readyz", None, None, &[]).await.status,
        StatusCode::OK
    );
    // HEAD follows GET's rule (a load balancer's probe is no denied route).
    assert_eq!(
        api.call("HEAD", "/healthz", None, None, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("HEAD", "/v1/credit", None, None, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Unknown paths and methods, and path or query values of the wrong type, are
    // problem+json too.
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let bad = StatusCode::BAD_REQUEST;
    let long_query = format!("/v1/catalog?q={}", "a".repeat(201));
    for (method, path, status, code) in [
        ("GET", "/v1/nope", StatusCode::NOT_FOUND, "not_found"),
        (
            "PUT",
            "/healthz",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        ("DELETE", "/v1/cart/lines/abc", bad, "invalid_path"),
        ("GET", "/v1/orders?limit=x", bad, "invalid_query"),
        ("GET", "/v1/orders?limit=0", bad, "invalid_query"),
        ("GET", "/v1/catalog?limit=0", bad, "invalid_query"),
        (
            "GET",
            "/v1/catalog?q=a+b+c+d+e+f+g+h+i",
            bad,
            "invalid_query",
        ),
        ("GET", &long_query, bad, "invalid_query"),
        ("GET", "/v1/events?limit=0", bad, "invalid_query"),
        (
            "GET",
            "/v1/orders/01900000-0000-7000-8000-000000000000/history?cursor=x",
            bad,
            "invalid_cursor",
        ),
    ] {
        let r = api.call(method, path, Some(&buyer), None, &[]).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert_eq!(r.body["code"], code, "{method} {path}: {}", r.body);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{method} {path}"
        );
    }
}

// A JSON body above the limit is refused whether it declares its length or streams without one.
#[tokio::test]
async fn oversized_json_bodies_are_refused() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let big = format!(
        "{{\"lines\":[],\"customer_po\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let declared = api
        .call(
            "POST",
            "/v1/orders",
            Some(&a),
            Some(serde_json::from_str(&big).unwrap()),
            &[],
        )
        .await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(declared.body["code"], "body_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .into_bytes()
        .chunks(64 << 10)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let req = Request::builder()
        .method("POST")
        .uri("/v1/orders")
        .header("authorization", format!("Bearer {a}"))
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_stream(chunks)))
        .unwrap();
    assert!(req.headers().get("content-length").is_none());
    let resp = router(api.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "body_too_large", "{body:?}");
}

/// A body stream of the given chunks, without a declared length.
fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter(chunks)
}

/// A value for each path parameter of the OpenAPI document (ids that exist nowhere, so a
/// request that passes the access check does nothing).
pub fn path_with_params(path: &str) -> String {
    path.replace("{id}", "01900000-0000-7000-8000-000000000000")
        .replace("{line}", "1")
        .replace("{sku}", "BOLT")
        .replace("{kind}", "catalog")
        .replace("{account}", "B")
        .replace("{user}", "nobody")
}

// Every operation of the OpenAPI document has an access rule, and every rule names a real
// route: a new route without a rule fails here (and is denied at run time).
#[test]
fn every_route_has_an_access_rule() {
    let doc = serde_json::to_value(orderd_api::openapi()).unwrap();
    let mut operations = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.to_ascii_uppercase(), path.clone()));
            assert!(
                orderd_api::policy::rule(method, path).is_some(),
                "{method} {path} has no rule in policy::RULES"
            );
        }
    }
    for (method, path, _) in orderd_api::policy::RULES {
        assert!(
            *path == "/openapi.json"
                || operations.contains(&(method.to_string(), path.to_string())),
            "rule {method} {path} names no route of the OpenAPI document"
        );
    }
    for path in orderd_api::policy::BACKGROUND {
        assert!(
            operations.contains(&("GET".to_owned(), path.to_string())),
            "background route {path} is no GET route of the OpenAPI document"
        );
    }
}

// Each role (and no token) against every route of the OpenAPI document: a role the rule does
// not name gets 403 before the handler runs, no token gets 401, and a role it names passes
// the check (whatever the handler then answers for made-up ids).
#[tokio::test]
async fn role_route_matrix() {
    use orderd_api::policy::Access;
    use orderd_domain::account::Role;
    let api = api().await;
    let mut tokens = vec![];
    for role in Role::ALL {
        let req = match role {
            Role::Warehouse => json!({"user": "w", "roles": ["warehouse"], "warehouse": "BER"}),
            Role::Operator => json!({"user": "o", "roles": ["operator"]}),
            r => json!({"user": "u", "account": "A", "roles": [r.as_str()]}),
        };
        let r = api
            .call("POST", "/v1/dev/token", None, Some(req), &[])
            .await;
        tokens.push((role, r.body["access_token"].as_str().unwrap().to_owned()));
    }
    let doc = serde_json::to_value(orderd_api::openapi()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let m = method.to_ascii_uppercase();
            let uri = path_with_params(path);
            let body = (m != "GET" && m != "DELETE").then(|| json!({}));
            let rule = orderd_api::policy::rule(method, path).unwrap();
            let Access::Roles(allowed) = rule else {
                let r = api.call(&m, &uri, None, body.clone(), &[]).await;
                assert!(
                    r.status != 401 && r.status != 403,
                    "{m} {path} is public: {}",
                    r.body
                );
                continue;
            };
            let r = api.call(&m, &uri, None, body.clone(), &[]).await;
            assert_eq!(r.status, 401, "{m} {path} without a token: {}", r.body);
            assert!(r.headers.contains_key("www-authenticate"));
            for (role, token) in &tokens {
                let r = api.call(&m, &uri, Some(token), body.clone(), &[]).await;
                if allowed.contains(role) {
                    assert!(
                        r.status != 401 && r.status != 403,
                        "{m} {path} as {role:?} should pass: {} {}",
                        r.status,
                        r.body
                    );
                } else {
                    assert_eq!(r.status, 403, "{m} {path} as {role:?}: {}", r.body);
                }
            }
        }
    }
}

// Setting a field the route does not let the caller set is a 422 naming the field, never
// silently ignored: an account, a state or a price on an order, a credit limit on the cart,
// an account or warehouse on a warehouse's shipment.
#[tokio::test]
async fn fields_a_caller_may_not_set_are_refused_with_422() {
    let api = api().await;
    let buyer = api
        .call(
            "POST",
            "/v1/dev/token",
            None,
            Some(json!({"user": "u", "account": "A", "roles": ["buyer"]})),
            &[],
        )
        .await
        .body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let line = json!({"sku": "BOLT", "qty": 1});
    for (method, uri, body, field) in [
        (
            "POST",
            "/v1/orders",
            json!({"lines": [line], "ship_to": "HQ", "account": "B"}),
            "account",
        ),
        (
            "POST",
            "/v1/orders",
            json!({"lines": [line], "ship_to": "HQ", "state": "confirmed"}),
            "state",
        ),
        (
            "POST",
            "/v1/orders",
            json!({"lines": [{"sku": "BOLT", "qty": 1, "unit_price": "0.01"}], "ship_to": "HQ"}),
            "unit_price",
        ),
        (
            "POST",
            "/v1/cart/lines",
            json!({"sku": "BOLT", "qty": 1, "credit_limit": "1000000"}),
            "credit_limit",
        ),
    ] {
        let r = api.call(method, uri, Some(&buyer), Some(body), &[]).await;
        assert_eq!(r.status, 422, "{uri} with {field}: {}", r.body);
        assert_eq!(r.body["problems"][0]["field"], field, "{}", r.body);
    }
    let wh = api
        .call(
            "POST",
            "/v1/dev/token",
            None,
            Some(json!({"user": "w", "roles": ["warehouse"], "warehouse": "BER"})),
            &[],
        )
        .await
        .body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = api
        .call(
            "POST",
            "/v1/orders/01900000-0000-7000-8000-000000000000/ship",
            Some(&wh),
            Some(json!({"account": "A"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["problems"][0]["field"], "account", "{}", r.body);
}

// Webhook registration: a URL resolving to loopback is refused with 422 naming the reason (the
// default config does not allow private targets), unknown event types too; a public address
// registers and the secret is shown once; another account's admin gets 404 for it, and only an
// account_admin manages endpoints.
#[tokio::test]
async fn webhook_registration_checks_and_tenancy() {
    let api = api().await;
    let token = |account: &'static str, role: &'static str| {
        let api = &api;
        async move {
            api.call(
                "POST",
                "/v1/dev/token",
                None,
                Some(json!({"user": "u", "account": account, "roles": [role]})),
                &[],
            )
            .await
            .body["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (a, b, buyer) = (
        token("A", "account_admin").await,
        token("B", "account_admin").await,
        token("A", "buyer").await,
    );
    for (url, types, field, says) in [
        ("http://127.0.0.1:9/h", json!(["*"]), "url", "loopback"),
        (
            "http://169.254.169.254/h",
            json!(["*"]),
            "url",
            "link-local",
        ),
        ("http://[::1]/h", json!(["*"]), "url", "loopback"),
        ("ftp://93.184.215.14/h", json!(["*"]), "url", "http"),
        (
            "https://93.184.215.14/h",
            json!(["orderd.order.nope"]),
            "event_types",
            "unknown",
        ),
    ] {
        let r = api
            .call(
                "POST",
                "/v1/webhooks",
                Some(&a),
                Some(json!({"url": url, "event_types": types})),
                &[],
            )
            .await;
        assert_eq!(r.status, 422, "{url}: {}", r.body);
        assert_eq!(r.body["problems"][0]["field"], field, "{}", r.body);
        assert!(
            r.body["problems"][0]["message"]
                .as_str()
                .unwrap()
                .contains(says),
            "{}",
            r.body
        );
    }
    let body = json!({"url": "https://93.184.215.14/h", "event_types": ["orderd.order.allocated"]});
    let r = api
        .call(
            "POST",
            "/v1/webhooks",
            Some(&buyer),
            Some(body.clone()),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = api
        .call("POST", "/v1/webhooks", Some(&a), Some(body), &[])
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = api.call("GET", "/v1/webhooks", Some(&a), None, &[]).await;
    assert_eq!(r.body["endpoints"][0]["id"], id.as_str(), "{}", r.body);
    assert!(r.body["endpoints"][0].get("secret").is_none());
    let r = api.call("GET", "/v1/webhooks", Some(&b), None, &[]).await;
    assert_eq!(r.body["endpoints"], json!([]), "{}", r.body);
    for (m, uri) in [
        ("DELETE", format!("/v1/webhooks/{id}")),
        ("POST", format!("/v1/webhooks/{id}/rotate")),
        ("POST", format!("/v1/webhooks/{id}/enable")),
    ] {
        let r = api.call(m, &uri, Some(&b), None, &[]).await;
        assert_eq!(r.status, 404, "{m} {uri}: {}", r.body);
    }
    // Enabling an active endpoint changes nothing; skipping what it missed is only for a
    // disabled one.
    let enable = format!("/v1/webhooks/{id}/enable");
    let r = api.call("POST", &enable, Some(&a), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["disabled"].is_null() && r.body.get("secret").is_none());
    let skip = json!({"skip_missed": true});
    let r = (api.call("POST", &enable, Some(&a), Some(skip.clone()), &[])).await;
    assert_eq!(r.status, 409, "{}", r.body);
    api.state.webhooks.disable(&id, "410 Gone").await.unwrap();
    // A write the journal turns away (a full commit queue) is load, not a fault: 503 with
    // Retry-After, and nothing changed.
    let journal = &api.state.engine.journal;
    journal.refuse_writes(true);
    let another = json!({"url": "https://93.184.215.15/h", "event_types": ["*"]});
    for (m, uri, body) in [
        ("DELETE", format!("/v1/webhooks/{id}"), None),
        ("POST", format!("/v1/webhooks/{id}/rotate"), None),
        ("POST", "/v1/webhooks".to_owned(), Some(another)),
        ("POST", enable.clone(), Some(skip.clone())),
    ] {
        let r = api.call(m, &uri, Some(&a), body, &[]).await;
        assert_eq!(r.status, 503, "{m} {uri}: {}", r.body);
        assert_eq!(r.body["code"], "daemon_busy", "{}", r.body);
        assert!(r.headers.contains_key("retry-after"), "{m} {uri}");
    }
    journal.refuse_writes(false);
    let r = api.call("GET", "/v1/webhooks", Some(&a), None, &[]).await;
    assert_eq!(r.body["endpoints"][0]["id"], id.as_str(), "{}", r.body);
    assert_eq!(r.body["endpoints"][0]["disabled"], "410 Gone", "{}", r.body);
    assert_eq!(
        r.body["endpoints"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    let r = api.call("POST", &enable, Some(&a), Some(skip), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["disabled"].is_null(), "{}", r.body);
    let r = api
        .call("DELETE", &format!("/v1/webhooks/{id}"), Some(&a), None, &[])
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
}

/// The value of the first exposition line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

// Orders put through the API show up in /metrics (capture latency by channel and outcome,
// rejections by code, states entered, group commits, in-flight gauges) and in the dashboard's
// live window; both need the operator role. Other tests share the process's recorder, so the
// figures are checked as lower bounds.
#[tokio::test]
async fn metrics_and_the_live_window_follow_orders() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let op = api.token(None, "olga", &["operator"], None).await;
    let ok = api
        .place(
            &a,
            "m-1",
            json!({"lines":[{"sku":"BOLT","qty":1}],"channel":"edi"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let bad = api
        .place(&a, "m-2", json!({"lines":[{"sku":"NOPE","qty":1}]}))
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);

    let r = api.call("GET", "/metrics", Some(&a), None, &[]).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a buyer may not read metrics"
    );
    let r = api.call("GET", "/metrics", Some(&op), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.body.as_str().expect("text body");
    let series = [
        r#"orderd_capture_seconds_count{channel="edi",outcome="accepted"}"#,
        r#"orderd_capture_seconds_count{channel="api",outcome="rejected"}"#,
        r#"orderd_rejections_total{code="unknown_sku"}"#,
        r#"orderd_order_transitions_total{to="allocated"}"#,
        "orderd_storage_commit_group_size_count",
        "orderd_storage_commit_flush_seconds_count",
        "orderd_validation_seconds_count",
    ];
    for s in series {
        assert!(sample(text, s) >= 1.0, "{s} should count the orders");
    }
    // Gauges are present, and no label carries an account or order id.
    sample(text, "orderd_inflight_requests");
    sample(text, "orderd_account_actors_running");
    let id = ok.body["id"].as_str().unwrap();
    assert!(!text.contains(id) && !text.contains("\"A\""), "{text}");

    let r = api.call("GET", "/v1/ops/live", Some(&a), None, &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api.call("GET", "/v1/ops/live", Some(&op), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["seconds"].as_array().unwrap().len(), 300);
    assert!(r.body["last_minute"]["orders"].as_u64().unwrap() >= 1);
    assert!(r.body["last_minute"]["p99_ms"].as_f64().unwrap() > 0.0);
    let edi = &r.body["sources"][3];
    assert_eq!(edi["channel"], "edi");
    assert!(edi["accepted"].as_u64().unwrap() >= 1);
    assert!(r.body["queues"]["commit_groups"].as_u64().unwrap() >= 1);

    let r = api
        .call("GET", "/ops/dashboard", Some(&op), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // Only the page's own script runs: it is named by its hash (which Chromium checks in the
    // dashboard test), not allowed as any inline script.
    let script = csp
        .split(';')
        .find_map(|d| d.trim().strip_prefix("script-src "))
        .expect("a script-src");
    assert!(
        script.starts_with("'sha256-") && !script.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(r.body.as_str().unwrap().contains("/v1/ops/live"));
}

// A body of the wrong JSON shape is told what to send, in JSON's words, not Rust's.
#[tokio::test]
async fn a_body_that_is_no_object_is_told_so() {
    let api = api().await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let r = api.place(&a, "arr", json!([])).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("expected a JSON object"), "{detail}");
    assert!(!detail.contains("PlaceBody"), "{detail}");
}

// Without an identity provider the start page says how to sign in (the development sign-in),
// instead of linking to a browser sign-in that is not there.
#[tokio::test]
async fn the_start_page_names_the_development_sign_in() {
    let api = api().await;
    let r = api.call("GET", "/", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let page = r.body.as_str().unwrap();
    assert!(page.contains("development sign-in"), "{page}");
    assert!(!page.contains("/auth/login"), "{page}");
    let login = api.call("GET", "/auth/login", None, None, &[]).await;
    assert_eq!(login.status, StatusCode::NOT_FOUND);
}

// The separate metrics listener answers /metrics without a token, and nothing else.
#[tokio::test]
async fn the_metrics_router_serves_only_metrics() {
    let api = api().await;
    for (uri, status) in [
        ("/metrics", StatusCode::OK),
        ("/v1/orders", StatusCode::NOT_FOUND),
    ] {
        let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let resp = orderd_api::metrics_router(api.state.engine.clone())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{uri}");
    }
}

/// A dev token for account `account`, user `user` with `roles`.
async fn token_for(api: &Api, account: &str, user: &str, roles: &[&str]) -> String {
    api.token(Some(account), user, roles, None).await
}

fn field(r: &Resp) -> String {
    r.body["problems"][0]["field"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// An account admin adds, lists, changes and removes the account's users. Roles beyond the
// account's own, fields an admin may not set, and bad values are 422 naming the field; users
// of another account are 404 like ones that do not exist; an admin cannot lock themselves
// out. Every change is stored and audited with who changed which user.
#[tokio::test]
async fn account_admin_manages_the_accounts_users() {
    let api = api().await;
    let admin = token_for(&api, "A", "carol", &["account_admin"]).await;
    let b_admin = token_for(&api, "B", "bert", &["account_admin"]).await;
    let ann = json!({"id": "ann", "name": "Ann", "roles": ["buyer"], "spending_limit": "100.00", "ship_tos": ["HQ"]});
    let r = api
        .call(
            "POST",
            "/v1/account/users",
            Some(&admin),
            Some(ann.clone()),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["ship_tos"], json!(["HQ"]));
    assert_eq!(r.body["spending_limit"], "100.00");
    let r = api
        .call("POST", "/v1/account/users", Some(&admin), Some(ann), &[])
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = api
        .call("GET", "/v1/account/users", Some(&admin), None, &[])
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{}", r.body);
    assert_eq!(r.body[0]["id"], "ann");

    let ok = json!({"name": "Ann Berg", "roles": ["buyer", "approver"], "spending_limit": null, "ship_tos": []});
    let r = api
        .call(
            "PUT",
            "/v1/account/users/ann",
            Some(&admin),
            Some(ok.clone()),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["roles"], json!(["buyer", "approver"]));
    assert_eq!(r.body["spending_limit"], Value::Null);

    for (body, want) in [
        (json!({"name": "A", "roles": ["operator"]}), "roles"),
        (
            json!({"name": "A", "roles": ["buyer", "warehouse"]}),
            "roles",
        ),
        (json!({"name": "A", "roles": ["king"]}), "roles"),
        (json!({"name": "A", "roles": []}), "roles"),
        (json!({"name": "", "roles": ["buyer"]}), "name"),
        (
            json!({"name": "A", "roles": ["buyer"], "spending_limit": "-5"}),
            "spending_limit",
        ),
        (
            json!({"name": "A", "roles": ["buyer"], "ship_tos": ["NOWHERE"]}),
            "ship_tos",
        ),
        (
            json!({"name": "A", "roles": ["buyer"], "credit_limit": "9999999"}),
            "credit_limit",
        ),
        (
            json!({"name": "A", "roles": ["buyer"], "account": "B"}),
            "account",
        ),
        (
            json!({"name": "A", "roles": ["buyer"], "id": "other"}),
            "id",
        ),
    ] {
        let r = api
            .call(
                "PUT",
                "/v1/account/users/ann",
                Some(&admin),
                Some(body.clone()),
                &[],
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(field(&r), want, "{body}: {}", r.body);
    }

    // Another account's user is answered like one that does not exist, and stays unchanged.
    for (m, body) in [("PUT", Some(ok.clone())), ("DELETE", None)] {
        let theirs = api
            .call(
                m,
                "/v1/account/users/ann",
                Some(&b_admin),
                body.clone(),
                &[],
            )
            .await;
        let ghost = api
            .call(m, "/v1/account/users/ghost", Some(&b_admin), body, &[])
            .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{m}: {}", theirs.body);
        assert_eq!(
            (theirs.status, &theirs.body["code"]),
            (ghost.status, &ghost.body["code"])
        );
    }
    let r = api
        .call("GET", "/v1/account/users", Some(&b_admin), None, &[])
        .await;
    assert_eq!(r.body, json!([]));

    // No lock-out: an admin keeps their own account_admin role and cannot remove themselves.
    let me = json!({"id": "carol", "name": "Carol", "roles": ["account_admin"]});
    let r = api
        .call("POST", "/v1/account/users", Some(&admin), Some(me), &[])
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .call(
            "PUT",
            "/v1/account/users/carol",
            Some(&admin),
            Some(json!({"name": "Carol", "roles": ["buyer"]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let r = api
        .call("DELETE", "/v1/account/users/carol", Some(&admin), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);

    let r = api
        .call("DELETE", "/v1/account/users/ann", Some(&admin), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = api
        .call("DELETE", "/v1/account/users/ann", Some(&admin), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // Stored (read back from the journal, not the actor's memory) and audited.
    let engine = &api.state.engine;
    let a = orderd_domain::ids::AccountId::parse("A").unwrap();
    let stored = orderd_actors::records::load_account(&engine.journal, &a)
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = stored.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["carol"]);
    let audit: Vec<Value> = engine
        .journal
        .audit_for_subject(b"account:A", 100)
        .unwrap()
        .into_iter()
        .map(|r| serde_json::to_value(AuditEntry::decode(&r.payload).unwrap()).unwrap())
        .filter(|e: &Value| e["action"].as_str().unwrap().starts_with("user."))
        .collect();
    let trail: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["user"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            ("user.create", "ann", "carol"),
            ("user.update", "ann", "carol"),
            ("user.create", "carol", "carol"),
            ("user.delete", "ann", "carol"),
        ]
    );
}

// A user with assigned ship-tos orders only to those: another ship-to of the account is 422
// ship_to_not_assigned naming the field (when placing, validating and amending), and without
// a ship-to in the request their only assigned one is used. Once unassigned, all are open.
#[tokio::test]
async fn assigned_ship_tos_bound_where_a_user_orders() {
    let api = api().await;
    import(
        &api.state.engine,
        &Caller::system(),
        Kind::ShipTos,
        b"account,id,address,lat,lon\nA,PLANT,Potsdam,52.39,13.06\n",
        10,
    )
    .await
    .unwrap();
    let admin = token_for(&api, "A", "carol", &["account_admin"]).await;
    let r = api
        .call(
            "POST",
            "/v1/account/users",
            Some(&admin),
            Some(json!({"id": "ann", "name": "Ann", "roles": ["buyer"], "ship_tos": ["PLANT"]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let ann = token_for(&api, "A", "ann", &["buyer"]).await;
    let line = json!([{"sku": "BOLT", "qty": 1}]);
    let r = api
        .place(&ann, "s1", json!({"lines": line, "ship_to": "HQ"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(codes(&r), ["ship_to_not_assigned"]);
    assert_eq!(field(&r), "ship_to");
    let r = api
        .call(
            "POST",
            "/v1/orders/validate",
            Some(&ann),
            Some(json!({"lines": line, "ship_to": "HQ"})),
            &[],
        )
        .await;
    assert_eq!(r.body["valid"], false, "{}", r.body);
    assert_eq!(r.body["problems"][0]["code"], "ship_to_not_assigned");
    let r = api
        .place(&ann, "s2", json!({"lines": line, "submit": false}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["ship_to"], "PLANT");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = api
        .call(
            "PATCH",
            &format!("/v1/orders/{id}"),
            Some(&ann),
            Some(json!({"ship_to": "HQ"})),
            &[],
        )
        .await;
    assert_eq!(codes(&r), ["ship_to_not_assigned"], "{}", r.body);
    // Others of the account are not bound by Ann's assignment.
    let ben = token_for(&api, "A", "ben", &["buyer"]).await;
    let r = api
        .place(&ben, "s3", json!({"lines": line, "ship_to": "HQ"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .call(
            "PUT",
            "/v1/account/users/ann",
            Some(&admin),
            Some(json!({"name": "Ann", "roles": ["buyer"], "ship_tos": []})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api
        .place(&ann, "s4", json!({"lines": line, "ship_to": "HQ"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

// A buyer who is not also an approver or account admin (also one who ships for a warehouse)
// sees and changes only the orders they placed: another buyer's order gets the same 404 as an
// id that does not exist on every order route, and the list and the events hold only their
// own. Approvers and account admins see every order of the account.
#[tokio::test]
async fn a_buyer_sees_only_their_own_orders() {
    let api = api().await;
    let ann = token_for(&api, "A", "ann", &["buyer"]).await;
    let ben = token_for(&api, "A", "ben", &["buyer"]).await;
    let line = json!([{"sku": "BOLT", "qty": 1}]);
    let r = api.place(&ann, "o1", json!({"lines": line})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let anns = r.body["id"].as_str().unwrap().to_owned();
    let r = api
        .place(&ann, "o2", json!({"lines": line, "submit": false}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let anns_draft = r.body["id"].as_str().unwrap().to_owned();
    let r = api.place(&ben, "o3", json!({"lines": line})).await;
    let bens = r.body["id"].as_str().unwrap().to_owned();
    let ghost = "01900000-0000-7000-8000-000000000000";
    // Ben also shipping for a warehouse is still a buyer on the account's routes.
    let ben_shipping = api
        .token(Some("A"), "ben", &["buyer", "warehouse"], Some("BER"))
        .await;
    for (m, path, body) in [
        ("GET", "/v1/orders/{id}", None),
        ("GET", "/v1/orders/{id}/history", None),
        (
            "PATCH",
            "/v1/orders/{id}",
            Some(json!({"customer_po": "x"})),
        ),
        ("POST", "/v1/orders/{id}/cancel", None),
        ("POST", "/v1/orders/{id}/submit", None),
    ] {
        for (id, ben) in [&anns, &anns_draft]
            .into_iter()
            .flat_map(|id| [(id, &ben), (id, &ben_shipping)])
        {
            let theirs = api
                .call(m, &path.replace("{id}", id), Some(ben), body.clone(), &[])
                .await;
            let none = api
                .call(
                    m,
                    &path.replace("{id}", ghost),
                    Some(ben),
                    body.clone(),
                    &[],
                )
                .await;
            assert_eq!(
                theirs.status,
                StatusCode::NOT_FOUND,
                "{m} {path}: {}",
                theirs.body
            );
            assert_eq!(
                (theirs.status, &theirs.body["code"]),
                (none.status, &none.body["code"]),
                "{m} {path}"
            );
        }
    }
    let ids = |r: &Resp| -> Vec<String> {
        r.body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let orders_in_events = |r: &Resp| -> BTreeSet<String> {
        r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["data"]["order"].as_str().unwrap().to_owned())
            .collect()
    };
    for ben in [&ben, &ben_shipping] {
        let r = api.call("GET", "/v1/orders", Some(ben), None, &[]).await;
        assert_eq!(ids(&r), [bens.as_str()]);
        let r = api.call("GET", "/v1/events", Some(ben), None, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(orders_in_events(&r), BTreeSet::from([bens.clone()]));
    }
    let r = api.call("GET", "/v1/orders", Some(&ann), None, &[]).await;
    assert_eq!(ids(&r), [anns_draft.clone(), anns.clone()]);
    // Ann's orders are untouched and hers to change.
    let r = api
        .call("GET", &format!("/v1/orders/{anns}"), Some(&ann), None, &[])
        .await;
    assert_eq!(r.body["state"], "allocated", "{}", r.body);
    assert_eq!(r.body["version"], 1);
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{anns}/cancel"),
            Some(&ann),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for roles in [
        &["approver"][..],
        &["account_admin"],
        &["buyer", "approver"],
    ] {
        let t = token_for(&api, "A", "zoe", roles).await;
        let r = api.call("GET", "/v1/orders", Some(&t), None, &[]).await;
        assert_eq!(ids(&r).len(), 3, "{roles:?}: {}", r.body);
        let r = api
            .call(
                "GET",
                &format!("/v1/orders/{bens}/history"),
                Some(&t),
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{roles:?}: {}", r.body);
    }
    // Shipping for BER, Ben reaches Ann's order holding stock there, and only through that.
    let r = api
        .place(
            &ann,
            "o4",
            json!({"lines": [{"sku": "BOLT", "qty": 1, "warehouse": "BER"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let from_ber = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/orders/{from_ber}");
    let r = api.call("GET", &path, Some(&ben_shipping), None, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = api
        .call(
            "POST",
            &format!("{path}/ship"),
            Some(&ben_shipping),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "shipped", "{}", r.body);
}

fn detail(r: &Resp) -> &str {
    r.body["detail"].as_str().unwrap_or_default()
}

/// Every account route `token` tries answers 403 naming the removal.
async fn assert_removed(api: &Api, token: &str) {
    for (m, uri, body) in [
        ("GET", "/v1/cart", None),
        (
            "POST",
            "/v1/cart/lines",
            Some(json!({"sku": "BOLT", "qty": 1})),
        ),
        ("GET", "/v1/orders", None),
        (
            "POST",
            "/v1/orders",
            Some(json!({ "lines": [{"sku": "BOLT", "qty": 1}] })),
        ),
        ("GET", "/v1/credit", None),
        ("GET", "/v1/me", None),
    ] {
        let r = api
            .call(m, uri, Some(token), body, &[("idempotency-key", "g2")])
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri}: {}", r.body);
        assert!(detail(&r).contains("was removed"), "{m} {uri}: {}", r.body);
    }
}

// The roles an account admin stores for a user govern what the user's tokens may do, whatever
// the token claims. With a record, a token acts with the roles both have (/v1/me, the route
// rules, the approval and the audit log see only those); an approver whose approver role the
// admin revokes gets 403 and the order stays pending, until the admin grants it again. A token
// whose roles the record grants none of, and every token of a removed user, get 403 on every
// route; the removal survives an operator's account import and ends only when the user is
// created again (by the admin, or by an operator's user import). Users without a record keep
// their token's roles.
#[tokio::test]
async fn stored_user_roles_govern_what_a_token_may_do() {
    let api = api().await;
    let admin = token_for(&api, "A", "carol", &["account_admin"]).await;
    let ann = token_for(&api, "A", "ann", &["buyer"]).await;
    let r = api
        .call(
            "POST",
            "/v1/account/users",
            Some(&admin),
            Some(json!({"id": "pat", "name": "Pat", "roles": ["buyer", "approver"]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // The IdP says more than the admin granted.
    let pat = token_for(&api, "A", "pat", &["buyer", "approver", "account_admin"]).await;
    let r = api.call("GET", "/v1/me", Some(&pat), None, &[]).await;
    assert_eq!(r.body["roles"], json!(["buyer", "approver"]), "{}", r.body);
    let r = api
        .call("GET", "/v1/account/users", Some(&pat), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(
        detail(&r).contains("has not granted account_admin to user pat"),
        "{}",
        r.body
    );

    // 70 x 8.00 + 20 x 1.00 = 580.00, above the buyer role's 500.00.
    let lines = json!([{"sku": "BOLT", "qty": 70}, {"sku": "NUT", "qty": 20}]);
    let o = api.place(&ann, "g1", json!({ "lines": lines })).await;
    assert_eq!(o.body["state"], "pending_approval", "{}", o.body);
    let id = o.body["id"].as_str().unwrap().to_owned();
    let approve = format!("/v1/orders/{id}/approve");
    let set_roles = |roles: &[&str]| {
        api.call(
            "PUT",
            "/v1/account/users/pat",
            Some(&admin),
            Some(json!({"name": "Pat", "roles": roles})),
            &[],
        )
    };

    // Revoked: 403 at the guard, the order unchanged.
    let r = set_roles(&["buyer"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api.call("POST", &approve, Some(&pat), None, &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(
        detail(&r).contains("has not granted approver to user pat"),
        "{}",
        r.body
    );
    let r = api
        .call("GET", &format!("/v1/orders/{id}"), Some(&ann), None, &[])
        .await;
    assert_eq!(r.body["state"], "pending_approval", "{}", r.body);
    assert_eq!(r.body["version"], o.body["version"]);
    // A buyer only: Ann's order is not Pat's to see any more.
    let r = api
        .call("GET", &format!("/v1/orders/{id}"), Some(&pat), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // Granted again: the same token approves, and the audit log holds the effective roles.
    let r = set_roles(&["buyer", "approver"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = api.call("POST", &approve, Some(&pat), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["state"], "allocated");
    let h = api.history(&ann, &id).await;
    let entry = &h[1];
    assert_eq!(entry["action"], "order.approve", "{h:?}");
    assert_eq!(entry["user"], "pat");
    assert_eq!(entry["roles"], json!(["buyer", "approver"]));

    // A record that grants none of the token's roles: 403 on every route.
    let r = set_roles(&["buyer"]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let approver_only = token_for(&api, "A", "pat", &["approver"]).await;
    for uri in ["/v1/orders", "/v1/me"] {
        let r = api.call("GET", uri, Some(&approver_only), None, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {}", r.body);
        assert!(
            detail(&r).contains("has not granted user pat any of the roles approver"),
            "{}",
            r.body
        );
    }

    // Removed: every token of Pat's is refused on the account's routes.
    let r = api
        .call("DELETE", "/v1/account/users/pat", Some(&admin), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_removed(&api, &pat).await;
    // Others of the account, and a user of the same id at another account, are not affected.
    let r = api.call("GET", "/v1/cart", Some(&ann), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let pat_at_b = token_for(&api, "B", "pat", &["buyer"]).await;
    let r = api
        .call("GET", "/v1/cart", Some(&pat_at_b), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // An operator's account import replaces the master data but keeps the removal.
    import_accounts(&api, ACCOUNTS).await;
    assert_removed(&api, &pat).await;
    // ... and the account's other users and its ship-tos, as its actor holds them.
    let r = api.call("GET", "/v1/cart", Some(&ann), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let a = stored_account(&api, "A").await;
    let ship_tos: Vec<&str> = a.ship_tos.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ship_tos, ["HQ"]);

    // Created again by the admin: exactly the new record's roles.
    let r = api
        .call(
            "POST",
            "/v1/account/users",
            Some(&admin),
            Some(json!({"id": "pat", "name": "Pat", "roles": ["buyer"]})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api.call("GET", "/v1/me", Some(&pat), None, &[]).await;
    assert_eq!(r.body["roles"], json!(["buyer"]), "{}", r.body);
    // An operator's user import replaces the record, and with it the roles.
    import(
        &api.state.engine,
        &Caller::system(),
        Kind::Users,
        b"account,id,name,roles,spending_limit,currency,ship_tos\nA,pat,Pat,buyer;approver,,,\n",
        10,
    )
    .await
    .unwrap();
    let r = api.call("GET", "/v1/me", Some(&pat), None, &[]).await;
    assert_eq!(r.body["roles"], json!(["buyer", "approver"]), "{}", r.body);
    // ... and a removal it follows is over, too.
    let r = api
        .call("DELETE", "/v1/account/users/pat", Some(&admin), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_removed(&api, &pat).await;
    import(
        &api.state.engine,
        &Caller::system(),
        Kind::Users,
        b"account,id,name,roles,spending_limit,currency,ship_tos\nA,pat,Pat,buyer,,,\n",
        10,
    )
    .await
    .unwrap();
    let r = api.call("GET", "/v1/cart", Some(&pat), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

// An import stored account by account: a row refused as its account is stored (a user naming a
// ship-to the account does not have) reports what it refused, with the detail, and the
// accounts stored before it; importing the corrected file again stores the rest.
#[tokio::test]
async fn an_import_refused_midway_names_what_was_stored() {
    let api = api().await;
    let sys = Caller::system();
    let header = "account,id,name,roles,spending_limit,currency,ship_tos\n";
    let bad = format!("{header}A,amy,Amy,buyer,,,HQ\nB,ben,Ben,buyer,,,NOPE\n");
    let refusal = import(&api.state.engine, &sys, Kind::Users, bad.as_bytes(), 10)
        .await
        .unwrap_err();
    assert_eq!(refusal.stored, ["A"], "{refusal:?}");
    assert_eq!(refusal.errors.len(), 1, "{refusal:?}");
    assert!(refusal.errors[0].contains("NOPE"), "{refusal:?}");
    let users = |id: &'static str| {
        let api = &api;
        async move {
            let a = stored_account(api, id).await;
            a.users.iter().map(|u| u.id.to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(users("A").await, ["amy"]);
    assert!(users("B").await.is_empty());
    let fixed = format!("{header}A,amy,Amy,buyer,,,HQ\nB,ben,Ben,buyer,,,HQ\n");
    let rows = import(&api.state.engine, &sys, Kind::Users, fixed.as_bytes(), 10)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    assert_eq!(users("A").await, ["amy"]);
    assert_eq!(users("B").await, ["ben"]);
    // Imported users get the checks an account admin's do: a role of the account, at least one.
    for (row, why) in [
        ("A,olga,Olga,operator,,,", "roles"),
        ("A,nora,Nora,,,,", "at least one role"),
        ("A,ugo,Ugo,buyer,100.00,USD,", "not in the account currency"),
    ] {
        let csv = format!("{header}{row}\n");
        let errors = import(&api.state.engine, &sys, Kind::Users, csv.as_bytes(), 10)
            .await
            .unwrap_err()
            .errors;
        assert!(errors.iter().any(|e| e.contains(why)), "{row}: {errors:?}");
    }
    assert_eq!(users("A").await, ["amy"]);
    // A spending limit without a currency is in the account's.
    let usd = "id,name,segment,currency,credit_limit,open_receivables,payment_terms,buyer_limit,approver_limit,restricted_skus,approve_new_ship_to\nU,Uni,retail,USD,5000.00,0.00,NET30,,,,false\n";
    import(&api.state.engine, &sys, Kind::Accounts, usd.as_bytes(), 10)
        .await
        .unwrap();
    let una = format!("{header}U,una,Una,buyer,100.00,,\n");
    import(&api.state.engine, &sys, Kind::Users, una.as_bytes(), 10)
        .await
        .unwrap();
    let u = stored_account(&api, "U").await;
    let limit = u.users[0].spending_limit.expect("a limit");
    assert_eq!(limit.to_string(), "100.00 USD");
}

// An import body above `api.import_body_max_bytes` is a problem+json answer like any other,
// also when the import limit is below the JSON bodies' limit, and also when it comes without
// a Content-Length (chunked): then it is cut off where it passes the limit.
#[tokio::test]
async fn an_oversized_import_is_refused_as_a_problem() {
    let api = api().await;
    for body_max_bytes in [512, 100_000] {
        let limits = ApiLimits {
            body_max_bytes,
            import_body_max_bytes: 1024,
            ..ApiLimits::default()
        };
        let small = Api {
            state: ApiState::new(
                api.state.engine.clone(),
                Authenticator::dev(&[7u8; 32]),
                vec![],
                limits,
                true,
            ),
        };
        let op = small.token(None, "olga", &["operator"], None).await;
        let csv = format!("warehouse,sku,on_hand\n{}", "W1,S1,1\n".repeat(300));
        let resp = small.import_csv(&op, "stock", &csv).await;
        assert_eq!(
            resp.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{body_max_bytes}"
        );
        assert_eq!(resp.headers["content-type"], "application/problem+json");
        assert_eq!(resp.body["code"], "body_too_large", "{:?}", resp.body);
        let chunks = csv
            .into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>();
        let req = Request::builder()
            .method("POST")
            .uri("/v1/admin/import/stock")
            .header("authorization", format!("Bearer {op}"))
            .header("content-type", "text/csv")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
        assert!(!req.headers().contains_key("content-length"));
        let resp = small.send(req).await;
        assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE, "chunked");
        assert_eq!(resp.body["code"], "body_too_large", "{:?}", resp.body);
        assert!(
            resp.body["detail"].as_str().unwrap().contains("1024 bytes"),
            "{:?}",
            resp.body
        );
    }
}

// Master data an import cannot store as given is refused with its reason: stock of a SKU the
// catalog does not have, or of a kit (its stock is its components'); a speed band whose
// distance is no number of km; a price written with an exponent.
#[tokio::test]
async fn imports_refuse_what_cannot_be_stored_as_written() {
    let api = api().await;
    let sys = Caller::system();
    let engine = &api.state.engine;
    for (kind, csv, why) in [
        (Kind::Stock, "warehouse,sku,on_hand\nBER,NOPE,5\n", "not in the catalog"),
        (Kind::Stock, "warehouse,sku,on_hand\nBER,KIT,5\n", "is a kit"),
        (
            Kind::Warehouses,
            "id,name,lat,lon,speeds\nHAM,Hamburg,53.5,10.0,express:NaN:1\n",
            "not a number of km",
        ),
        (
            Kind::Prices,
            "level,owner,sku,currency,valid_from,valid_to,tiers\nlist,,PIPE,EUR,2030-01-01,,1:1e1\n",
            "1e1",
        ),
    ] {
        let errors = import(engine, &sys, kind, csv.as_bytes(), 10)
            .await
            .unwrap_err().errors;
        assert!(errors.iter().any(|e| e.contains(why)), "{kind:?}: {errors:?}");
    }
    // A count of 0 clears what an item left in the catalog before: not refused.
    let clear = "warehouse,sku,on_hand\nBER,GONE,0\n";
    assert_eq!(
        import(engine, &sys, Kind::Stock, clear.as_bytes(), 10).await,
        Ok(1)
    );
}

// A stock import stores each warehouse's rows or none of them. When one warehouse refuses
// (below what orders hold) and another's rows were stored, the problem answer names the stored
// ones in `stored`, apart from the problems (which a long list cuts).
#[tokio::test]
async fn a_stock_import_says_first_which_warehouses_it_stored() {
    let api = api().await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let o = api
        .place(
            &buyer,
            "held",
            json!({"lines":[{"sku":"BOLT","qty":10,"warehouse":"BER"}]}),
        )
        .await;
    assert_eq!(o.status, StatusCode::CREATED, "{:?}", o.body);
    let op = api.token(None, "ops", &["operator"], None).await;
    let csv = "warehouse,sku,on_hand\nBER,BOLT,0\nMUC,NUT,5\n";
    let r = api.import_csv(&op, "stock", csv).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["code"], "validation_failed", "{:?}", r.body);
    assert_eq!(r.body["stored"], json!(["MUC"]), "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("stored all the same: MUC"), "{detail}");
    let problems = r.body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let message = problems[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("BER: BOLT: on hand 0 would be below"),
        "{message}"
    );
    let nut = api
        .call("GET", "/v1/catalog/NUT", Some(&buyer), None, &[])
        .await;
    assert_eq!(nut.body["available"]["MUC"], 5, "MUC's rows were stored");
    // A refusal that stored nothing has no `stored`.
    let r = api
        .import_csv(&op, "stock", "warehouse,sku,on_hand\nBER,BOLT,0\n")
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert!(r.body.get("stored").is_none(), "{:?}", r.body);
    assert!(r.body["detail"]
        .as_str()
        .unwrap()
        .ends_with("nothing was stored"));
}

// An import that orderd's load interrupts is not the file's fault: 503 daemon_busy with
// Retry-After (not 422), what it stored before in `stored`, and no problems of its rows.
// Sending the file again completes it. One turned away at its first write stored nothing.
#[tokio::test]
async fn an_import_interrupted_by_load_answers_503_with_what_it_stored() {
    let api = api().await;
    let op = api.token(None, "ops", &["operator"], None).await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let available = async |sku: &str, wh: &str| {
        let r = api
            .call(
                "GET",
                &format!("/v1/catalog/{sku}"),
                Some(&buyer),
                None,
                &[],
            )
            .await;
        r.body["available"][wh].clone()
    };
    let journal = &api.state.engine.journal;
    let csv = "warehouse,sku,on_hand\nBER,BOLT,70\nMUC,BOLT,50\n";
    // BER's write is accepted, MUC's turned away.
    journal.refuse_writes_after(1);
    let r = api.import_csv(&op, "stock", csv).await;
    journal.refuse_writes(false);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.body["code"], "daemon_busy", "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.body["stored"], json!(["BER"]), "{:?}", r.body);
    assert!(r.body.get("problems").is_none(), "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("stopped before its end: MUC:"), "{detail}");
    assert!(
        detail.ends_with("stored all the same: BER (importing the file again is safe)"),
        "{detail}"
    );
    assert_eq!(available("BOLT", "BER").await, 70);
    assert_eq!(
        available("BOLT", "MUC").await,
        100,
        "MUC's row was not stored"
    );
    let r = api.import_csv(&op, "stock", csv).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(available("BOLT", "MUC").await, 50);

    journal.refuse_writes(true);
    let r = api.import_csv(&op, "catalog", CATALOG).await;
    journal.refuse_writes(false);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.body["code"], "daemon_busy", "{:?}", r.body);
    assert!(r.body.get("stored").is_none(), "{:?}", r.body);
    assert!(r.body["detail"]
        .as_str()
        .unwrap()
        .ends_with("nothing was stored"));
}

// The identity provider's refusal is repeated in the answer cut to a bounded echo: the
// callback's query is anyone's to write.
#[tokio::test]
async fn a_refused_sign_in_repeats_a_bounded_reason() {
    let api = api().await;
    let long = "x".repeat(5_000);
    let r = api
        .call(
            "GET",
            &format!("/auth/callback?error={long}"),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("refused the sign-in: \"xxx"), "{detail}");
    assert!(detail.len() < 200, "{detail}");
}

// An amendment keeps what it does not name, and `null` clears the delivery speed or the PO
// number (a JSON merge patch): a buyer who asked for express can go back to any speed.
#[tokio::test]
async fn an_amendment_clears_what_it_sends_as_null() {
    let api = api().await;
    let ann = api.token(Some("A"), "ann", &["buyer"], None).await;
    let lines = json!({"lines":[{"sku":"BOLT","qty":60},{"sku":"NUT","qty":100}],
        "delivery_speed":"express","customer_po":"PO-1"});
    let r = api.place(&ann, "clear-1", lines).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["state"], "pending_approval", "{:?}", r.body);
    let path = format!("/v1/orders/{}", r.body["id"].as_str().unwrap());
    let amend = async |body: Value| {
        let r = api.call("PATCH", &path, Some(&ann), Some(body), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        (
            r.body["delivery_speed"].clone(),
            r.body["customer_po"].clone(),
        )
    };
    assert_eq!(
        amend(json!({"customer_po":"PO-2"})).await,
        (json!("express"), json!("PO-2"))
    );
    assert_eq!(
        amend(json!({"delivery_speed":null})).await,
        (Value::Null, json!("PO-2"))
    );
    assert_eq!(
        amend(json!({"customer_po":null})).await,
        (Value::Null, Value::Null)
    );
}

// An item blocked while an order waits for approval (a recall) holds the approval back: the
// approver is told which line, and approves the rest by rejecting it. A kit whose component
// was blocked is held back the same way.
#[tokio::test]
async fn approval_refuses_lines_blocked_since_the_order_was_placed() {
    let api = api().await;
    let ann = api.token(Some("A"), "ann", &["buyer"], None).await;
    let bea = api.token(Some("A"), "bea", &["approver"], None).await;
    // 60 x 8.00 + 100 x 1.00 = 580.00, above ann's 500.00: it waits for an approver.
    let lines =
        json!({"lines":[{"sku":"BOLT","qty":60},{"sku":"NUT","qty":100},{"sku":"KIT","qty":1}]});
    let r = api.place(&ann, "blocked-1", lines).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["state"], "pending_approval", "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let blocked = CATALOG.replace(
        "BOLT,Hex bolt M8,EA,1,1,active",
        "BOLT,Hex bolt M8,EA,1,1,blocked",
    );
    let sys = Caller::system();
    import(
        &api.state.engine,
        &sys,
        Kind::Catalog,
        blocked.as_bytes(),
        100,
    )
    .await
    .unwrap();
    let approve = async |body: Option<Value>| {
        let uri = format!("/v1/orders/{id}/approve");
        api.call("POST", &uri, Some(&bea), body, &[]).await
    };
    let r = approve(None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    let named: Vec<(&Value, &Value)> = r.body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (&p["code"], &p["line"]))
        .collect();
    assert_eq!(
        named,
        [
            (&json!("blocked"), &json!(1)),
            (&json!("blocked"), &json!(3))
        ],
        "{:?}",
        r.body
    );
    assert!(
        r.body["problems"][1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("KIT: its component BOLT")),
        "{:?}",
        r.body
    );
    let r = api
        .call("GET", &format!("/v1/orders/{id}"), Some(&ann), None, &[])
        .await;
    assert_eq!(
        r.body["state"], "pending_approval",
        "unchanged: {:?}",
        r.body
    );
    let r = approve(Some(json!({"reject_lines":[1, 3]}))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_ne!(r.body["state"], "pending_approval", "{:?}", r.body);
    assert_eq!(r.body["total"]["amount"], "100.00", "{:?}", r.body);
}

// A price book names only what exists: a misspelt SKU, contract account or segment refuses the
// file, each named once with how many rows name it, and the book in force stays (it would
// otherwise be replaced by one without those prices). So do an account's restricted SKUs: a
// restriction of a SKU not in the catalog would hold nothing back. A segment that only a
// catalog item names is known.
#[tokio::test]
async fn imports_refuse_references_to_nothing() {
    let api = api().await;
    let sys = Caller::system();
    let engine = &api.state.engine;
    let run = async |kind: Kind, csv: &str| import(engine, &sys, kind, csv.as_bytes(), 1000).await;
    let a = api.token(Some("A"), "ann", &["buyer"], None).await;
    let bolt_price = async || {
        let r = api
            .call("GET", "/v1/catalog/BOLT", Some(&a), None, &[])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body["tiers"][0]["unit_price"]["amount"].clone()
    };
    assert_eq!(bolt_price().await, "8.00", "account A's contract price");
    let typos = format!(
        "{PRICES}contract,A0,BOLT,EUR,,,1:7.00\ncontract,A0,NUT,EUR,,,1:0.50\n\
         segment,retial,BOLT,EUR,,,1:9.00\nlist,,BOTL,EUR,,,1:1.00\n"
    );
    let errors = run(Kind::Prices, &typos).await.unwrap_err().errors;
    assert_eq!(
        errors,
        [
            "SKU BOTL is not in the catalog: 1 price row names it",
            "contract account A0 does not exist (import accounts before the prices that name them): 2 price rows name it",
            "segment retial has no account and no catalog item (a misspelt segment?): 1 price row names it",
        ]
    );
    assert_eq!(bolt_price().await, "8.00", "the book in force stays");
    let wholesale = format!("{PRICES}segment,wholesale,PIPE,EUR,,,1:4.00\n");
    assert_eq!(
        run(Kind::Prices, &wholesale).await,
        Ok(7),
        "a catalog segment"
    );

    let head =
        "id,name,segment,currency,credit_limit,open_receivables,payment_terms,restricted_skus";
    let accounts = format!(
        "{head}\nA,Alpha,retail,EUR,5000.00,0.00,NET30,PIPE;PIEP\nB,Beta,retail,EUR,5000.00,0.00,NET30,NUTT\n"
    );
    let errors = run(Kind::Accounts, &accounts).await.unwrap_err().errors;
    assert_eq!(
        errors,
        [
            "account A: restricted SKU PIEP is not in the catalog",
            "account B: restricted SKU NUTT is not in the catalog",
        ]
    );
    let fixed = accounts.replace(";PIEP", "").replace("NUTT", "NUT");
    assert_eq!(run(Kind::Accounts, &fixed).await, Ok(2));
}

// What an import refuses is said row by row with its line, also a price or item that only a
// check of the whole entry finds; no import answers with more than 100 problems; texts and
// speed names are bounded; a warehouses import counts the rows it applied.
#[tokio::test]
async fn import_problems_name_their_line_and_stay_bounded() {
    let api = api().await;
    let sys = Caller::system();
    let engine = &api.state.engine;
    let run =
        async |kind: Kind, csv: String| import(engine, &sys, kind, csv.as_bytes(), 1000).await;
    let prices = "level,owner,sku,currency,valid_from,valid_to,tiers\n\
                  list,,PIPE,EUR,,,1:2.00\nlist,,PIPE,EUR,2030-01-01,,2:1.50\n";
    assert_eq!(
        run(Kind::Prices, prices.into()).await,
        Err(vec!["line 3: the first tier must start at quantity 1".to_owned()].into())
    );
    let catalog = "sku,description,uom,pack_size,min_qty,status\nX,x,pc,0,1,active\n";
    assert_eq!(
        run(Kind::Catalog, catalog.into()).await,
        Err(vec!["line 2: pack size and minimum quantity must be at least 1".to_owned()].into())
    );
    // 150 kits of a component the catalog lacks: found only once the whole catalog is built.
    let kits: String = (0..150)
        .map(|i| format!("K{i},kit,pc,1,1,active,NOPE*1\n"))
        .collect();
    let errors = run(
        Kind::Catalog,
        format!("sku,description,uom,pack_size,min_qty,status,kit\n{kits}"),
    )
    .await
    .unwrap_err()
    .errors;
    assert_eq!(errors.len(), 101, "{errors:?}");
    assert!(
        errors[0].contains("kit component NOPE is not in the catalog"),
        "{errors:?}"
    );
    assert_eq!(errors[100], "stopping after 100 errors");
    let stock: String = (0..150).map(|i| format!("BER,NOPE{i},1\n")).collect();
    let errors = run(Kind::Stock, format!("warehouse,sku,on_hand\n{stock}"))
        .await
        .unwrap_err()
        .errors;
    assert_eq!(errors.len(), 101, "{errors:?}");
    assert_eq!(errors[100], "stopping after 100 errors");
    let users: String = (0..150).map(|i| format!("NOBODY{i},u,U,buyer\n")).collect();
    let errors = run(Kind::Users, format!("account,id,name,roles\n{users}"))
        .await
        .unwrap_err()
        .errors;
    assert_eq!(errors.len(), 101, "{errors:?}");
    assert_eq!(errors[100], "stopping after 100 errors");

    let long = "x".repeat(201);
    let head = "id,name,segment,currency,credit_limit,open_receivables,payment_terms";
    let errors = run(
        Kind::Accounts,
        format!("{head}\nL,{long},retail,EUR,1.00,0.00,NET30\n"),
    )
    .await
    .unwrap_err()
    .errors;
    assert_eq!(errors, ["line 2: column name: at most 200 characters"]);
    let speed = "s".repeat(33);
    let errors = run(
        Kind::Warehouses,
        format!("id,name,lat,lon,speeds\nHAM,Hamburg,53.5,10.0,{speed}:300:1\n"),
    )
    .await
    .unwrap_err()
    .errors;
    assert_eq!(errors, [format!("line 2: speed {speed:?}: 1 to 32 bytes")]);
    let before = engine.catalog.load().warehouses.len();
    assert!(before > 0);
    let one = "id,name,lat,lon,speeds\nHAM,Hamburg,53.5,10.0,standard:900:2\n";
    assert_eq!(run(Kind::Warehouses, one.into()).await, Ok(1));
    assert_eq!(engine.catalog.load().warehouses.len(), before + 1);
}

/// Account `id` as its actor holds it.
async fn stored_account(api: &Api, id: &str) -> orderd_domain::account::Account {
    api.state
        .engine
        .account(&AccountId::parse(id).unwrap(), |reply| {
            AccountMsg::GetAccount { reply }
        })
        .await
        .unwrap()
}

// An accounts or users import sets what its columns name: an optional column the file does not
// have leaves an existing account's rules and a user's limit and ship-tos as they are, an empty
// value in a column it has clears them, and a column no kind has refuses the file.
#[tokio::test]
async fn imports_set_only_the_columns_they_have() {
    let api = api().await;
    let engine = &api.state.engine;
    let run = async |kind: Kind, csv: &str| {
        import(engine, &Caller::system(), kind, csv.as_bytes(), 10).await
    };
    let limits = |a: &orderd_domain::account::Account| -> Vec<String> {
        a.rules
            .role_limits
            .iter()
            .map(|(role, m)| format!("{role:?} {m}"))
            .collect()
    };
    let head = "id,name,segment,currency,credit_limit,open_receivables,payment_terms";
    let rules = format!(
        "{head},buyer_limit,approver_limit,restricted_skus,approve_new_ship_to\n\
         A,Alpha,retail,EUR,5000.00,0.00,NET30,500.00,900.00,BOLT,true\n"
    );
    assert_eq!(run(Kind::Accounts, &rules).await, Ok(1));

    // Only the required columns: the credit limit changes, every approval rule stays.
    let plain = format!("{head}\nA,Alpha,retail,EUR,7000.00,0.00,NET30\n");
    assert_eq!(run(Kind::Accounts, &plain).await, Ok(1));
    let a = stored_account(&api, "A").await;
    assert_eq!(a.credit_limit.amount.to_string(), "7000.00");
    assert_eq!(limits(&a), ["Buyer 500.00 EUR", "Approver 900.00 EUR"]);
    let restricted: Vec<&str> = a.rules.restricted_skus.iter().map(Sku::as_str).collect();
    assert_eq!(restricted, ["BOLT"]);
    assert!(a.rules.approve_new_ship_to);
    assert_eq!(a.ship_tos.len(), 1, "ship-tos are kept: {:?}", a.ship_tos);

    // A column the file has, left empty, clears what it names; the others stay.
    let cleared =
        format!("{head},buyer_limit,restricted_skus\nA,Alpha,retail,EUR,7000.00,0.00,NET30,,\n");
    assert_eq!(run(Kind::Accounts, &cleared).await, Ok(1));
    let a = stored_account(&api, "A").await;
    assert_eq!(limits(&a), ["Approver 900.00 EUR"]);
    assert!(a.rules.restricted_skus.is_empty());
    assert!(a.rules.approve_new_ship_to);

    // A misspelled or repeated column refuses the file before anything is stored.
    let typo = format!("{head},restricted_sku\nA,Alpha,retail,EUR,1.00,0.00,NET30,BOLT\n");
    let errors = run(Kind::Accounts, &typo).await.unwrap_err().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("line 1: unknown column \"restricted_sku\" (the columns are id, "),
        "{errors:?}"
    );
    let twice = format!("{head},name\nA,Alpha,retail,EUR,1.00,0.00,NET30,Alpha\n");
    let errors = run(Kind::Accounts, &twice).await.unwrap_err().errors;
    assert_eq!(errors, ["line 1: column \"name\" appears twice"]);
    let typo = "sku,description,uom,pack_size,min_qty,status,segment\nX,x,pc,1,1,active,a\n";
    let errors = run(Kind::Catalog, typo).await.unwrap_err().errors;
    assert!(
        errors[0].contains("unknown column \"segment\""),
        "{errors:?}"
    );
    assert_eq!(
        stored_account(&api, "A")
            .await
            .credit_limit
            .amount
            .to_string(),
        "7000.00"
    );

    // Users: without the optional columns a user keeps its limit and ship-tos.
    let full =
        "account,id,name,roles,spending_limit,currency,ship_tos\nA,una,Una,buyer,100.00,,HQ\n";
    assert_eq!(run(Kind::Users, full).await, Ok(1));
    let roles_only = "account,id,name,roles\nA,una,Una R.,buyer;approver\n";
    assert_eq!(run(Kind::Users, roles_only).await, Ok(1));
    let a = stored_account(&api, "A").await;
    let una = a.user(&UserId::parse("una").unwrap()).unwrap();
    assert_eq!(una.name, "Una R.");
    assert_eq!(una.roles.len(), 2);
    assert_eq!(
        una.spending_limit
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("100.00 EUR")
    );
    let ship_tos: Vec<&str> = una.ship_tos.iter().map(|s| s.as_str()).collect();
    assert_eq!(ship_tos, ["HQ"]);
    // ... and with them, empty, both are cleared.
    let cleared = "account,id,name,roles,spending_limit,ship_tos\nA,una,Una,buyer,,\n";
    assert_eq!(run(Kind::Users, cleared).await, Ok(1));
    let a = stored_account(&api, "A").await;
    let una = a.user(&UserId::parse("una").unwrap()).unwrap();
    assert_eq!((una.spending_limit.as_ref(), una.ship_tos.len()), (None, 0));
}

// Approval compares an order's total with the spending limits, so every limit stays in the
// account's currency: a currency change that would keep a limit in the old one is refused,
// naming each, until the file sets the role limits and the users' own limits are cleared.
#[tokio::test]
async fn a_currency_change_takes_every_limit_with_it() {
    let api = api().await;
    let engine = &api.state.engine;
    let run = async |kind: Kind, csv: &str| {
        import(engine, &Caller::system(), kind, csv.as_bytes(), 10).await
    };
    let head = "id,name,segment,currency,credit_limit,open_receivables,payment_terms";
    let eur = format!("{head},buyer_limit\nA,Alpha,retail,EUR,5000.00,0.00,NET30,500.00\n");
    assert_eq!(run(Kind::Accounts, &eur).await, Ok(1));
    let una = "account,id,name,roles,spending_limit\nA,una,Una,buyer,100.00\n";
    assert_eq!(run(Kind::Users, una).await, Ok(1));

    let usd = format!("{head}\nA,Alpha,retail,USD,5000.00,0.00,NET30\n");
    let errors = run(Kind::Accounts, &usd).await.unwrap_err().errors;
    let joined = errors.join("\n");
    assert!(
        joined.contains("the buyer limit 500.00 EUR is not in the account currency USD")
            && joined.contains(
                "user una's spending limit 100.00 EUR is not in the account currency USD"
            ),
        "{errors:?}"
    );
    assert_eq!(stored_account(&api, "A").await.currency.to_string(), "EUR");

    // Clearing una's limit, then an accounts file with the role limits, pass; the users file
    // then sets una's limit in the new currency.
    let cleared = "account,id,name,roles,spending_limit\nA,una,Una,buyer,\n";
    assert_eq!(run(Kind::Users, cleared).await, Ok(1));
    let usd = format!("{head},buyer_limit\nA,Alpha,retail,USD,5000.00,0.00,NET30,600.00\n");
    assert_eq!(run(Kind::Accounts, &usd).await, Ok(1));
    assert_eq!(run(Kind::Users, una).await, Ok(1));
    let a = stored_account(&api, "A").await;
    let una = a.user(&UserId::parse("una").unwrap()).unwrap();
    let limits: Vec<String> = a
        .rules
        .role_limits
        .values()
        .map(ToString::to_string)
        .collect();
    assert_eq!(limits, ["600.00 USD"]);
    assert_eq!(
        una.spending_limit.map(|m| m.to_string()).as_deref(),
        Some("100.00 USD")
    );
}

// A value a client sent is repeated in an error message only in part (the first 80
// characters, then `…`), however long it was: a state filter, a role, a user or account in the
// path, an import kind, an event type.
#[tokio::test]
async fn errors_repeat_only_the_start_of_what_was_sent() {
    use orderd_domain::ids::ECHO_CHARS_MAX;
    let api = api().await;
    let buyer = api.token(Some("A"), "ann", &["buyer"], None).await;
    let admin = api.token(Some("A"), "max", &["account_admin"], None).await;
    let op = api.token(None, "ops", &["operator"], None).await;
    let long = "x".repeat(20_000);
    let user = json!({"name": "Long", "roles": ["buyer"]});
    let cases = [
        ("GET", format!("/v1/orders?state={long}"), &buyer, None, 400),
        (
            "POST",
            "/v1/account/users".into(),
            &admin,
            Some(json!({"id": "lou", "name": "Lou", "roles": [long.clone()]})),
            422,
        ),
        (
            "PUT",
            format!("/v1/account/users/{long}"),
            &admin,
            Some(user),
            404,
        ),
        (
            "DELETE",
            format!("/v1/account/users/{long}"),
            &admin,
            None,
            404,
        ),
        (
            "PUT",
            format!("/v1/admin/accounts/{long}/credit"),
            &op,
            Some(json!({"credit_limit": "1.00"})),
            404,
        ),
        (
            "POST",
            "/v1/webhooks".into(),
            &admin,
            Some(json!({"url": "https://93.184.215.14/h", "event_types": [long.clone()]})),
            422,
        ),
    ];
    for (m, uri, token, body, status) in cases {
        let r = api.call(m, &uri, Some(token), body, &[]).await;
        let uri: String = uri.chars().take(40).collect();
        assert_eq!(r.status.as_u16(), status, "{m} {}: {}", uri, r.body);
        let said = format!("{}{}", detail(&r), r.body["problems"]);
        assert!(said.contains('…'), "{m} {}: {said}", uri);
        assert!(
            said.len() < 2 * ECHO_CHARS_MAX + 200,
            "{m} {}: {} bytes",
            uri,
            said.len()
        );
    }
    let r = api.import_csv(&op, &long, "a\n1\n").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(detail(&r).len() < ECHO_CHARS_MAX + 200, "{}", detail(&r));
}

// Once an approver rejected lines of a pending order, no amendment confirms it unseen: not a
// new PO number on what is left (now under the buyer's limit), nor the rejected lines amended
// back in under the limit. It waits for an approver, who sees why and approves it.
#[tokio::test]
async fn an_amendment_after_a_partial_rejection_still_needs_an_approver() {
    let api = api().await;
    let ann = api.token(Some("A"), "ann", &["buyer"], None).await;
    let approver = api.token(Some("A"), "apu", &["approver"], None).await;
    // 50 × 8.00 + 200 × 1.00 = 600.00, above ann's limit of 500.00.
    let o = api
        .place(
            &ann,
            "partly-rejected",
            json!({"lines":[{"sku":"BOLT","qty":50},{"sku":"NUT","qty":200}]}),
        )
        .await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    let path = format!("/v1/orders/{}", o.body["id"].as_str().unwrap());
    let r = api
        .call(
            "POST",
            &format!("{path}/reject"),
            Some(&approver),
            Some(json!({"lines":[2],"reason":"no nuts this month"})),
            &[],
        )
        .await;
    assert_eq!(r.body["state"], "pending_approval", "{:?}", r.body);
    assert_eq!(r.body["total"]["amount"], "400.00", "{:?}", r.body);
    let amend = |body: Value| api.call("PATCH", &path, Some(&ann), Some(body), &[]);
    for body in [
        json!({"customer_po": "PO-1"}),
        json!({"lines":[{"sku":"BOLT","qty":50},{"sku":"NUT","qty":10}]}),
        json!({"customer_po": "PO-2"}),
    ] {
        let r = amend(body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{body}: {:?}", r.body);
        assert_eq!(r.body["state"], "pending_approval", "{body}: {:?}", r.body);
        let reasons = r.body["approval_reasons"].to_string();
        assert!(reasons.contains("needs an approver again"), "{reasons}");
        assert!(
            reasons.contains("rejected: no nuts this month"),
            "{reasons}"
        );
    }
    let r = api
        .call(
            "POST",
            &format!("{path}/approve"),
            Some(&approver),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_ne!(r.body["state"], "pending_approval", "{:?}", r.body);
}

// An operator lowers the credit limit below what a pending order holds. The buyer may still
// shrink the order or change its PO (no new credit), but not grow it back above the limit.
#[tokio::test]
async fn an_amendment_that_adds_no_credit_passes_a_lowered_limit() {
    let api = api().await;
    let ann = api.token(Some("A"), "ann", &["buyer"], None).await;
    let op = api.token(None, "ops", &["operator"], None).await;
    let o = api
        .place(&ann, "big", json!({"lines":[{"sku":"BOLT","qty":80}]}))
        .await;
    assert_eq!(o.body["state"], "pending_approval", "{:?}", o.body);
    assert_eq!(o.body["total"]["amount"], "640.00", "{:?}", o.body);
    let path = format!("/v1/orders/{}", o.body["id"].as_str().unwrap());
    let r = api
        .call(
            "PUT",
            "/v1/admin/accounts/A/credit",
            Some(&op),
            Some(json!({"credit_limit": "100.00"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let amend = |body: Value| api.call("PATCH", &path, Some(&ann), Some(body), &[]);
    let r = amend(json!({"lines":[{"sku":"BOLT","qty":70}]})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["total"]["amount"], "560.00", "{:?}", r.body);
    let r = amend(json!({"customer_po": "PO-7"})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = amend(json!({"lines":[{"sku":"BOLT","qty":71}]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(
        r.body["problems"][0]["code"], "credit_limit_exceeded",
        "{:?}",
        r.body
    );
    let credit = api.call("GET", "/v1/credit", Some(&ann), None, &[]).await;
    assert_eq!(
        credit.body["exposure"]["amount"], "560.00",
        "{:?}",
        credit.body
    );
}
