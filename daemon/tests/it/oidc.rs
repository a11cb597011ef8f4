//! orderd as an OIDC resource server, against a real OpenID Provider (`oidc-provider`, started
//! per test on a free port) and the real binary.

use crate::env::{str_field, TestEnv};
use crate::provider::{user, Provider, Tokens, AUDIENCE};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a test waits for orderd to pick up a provider's new key.
const ROTATION_DEADLINE: Duration = Duration::from_secs(30);
/// The JWKS refetch interval the tests configure.
const REFETCH_INTERVAL_MS: u64 = 1_500;
/// Tokens with unknown keys sent in one burst.
const UNKNOWN_KID_BURST: usize = 20;
/// Interval between polls.
const POLL: Duration = Duration::from_millis(200);

/// One answer of orderd.
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: Value,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)
    }
}

/// A request to orderd with a bearer token.
pub async fn call(
    env: &TestEnv,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Answer {
    let http = reqwest::Client::new();
    let mut req = http
        .request(method, format!("{}{path}", env.api().base()))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let www_authenticate = header("www-authenticate");
    let status = r.status().as_u16();
    // An event stream does not end by itself: its status is the answer.
    if header("content-type").is_some_and(|c| c.starts_with("text/event-stream")) {
        return Answer {
            status,
            www_authenticate,
            body: Value::Null,
        };
    }
    let text = r.text().await.expect("body");
    Answer {
        status,
        www_authenticate,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

pub async fn me(env: &TestEnv, token: &str) -> Answer {
    call(env, Method::GET, "/v1/me", token, None).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// orderd trusting one provider through the command-line flags.
async fn orderd_for(p: &Provider, env: &[(&str, &str)]) -> TestEnv {
    TestEnv::start_with_args(
        env,
        &["--oidc-issuer", &p.issuer, "--oidc-audience", AUDIENCE],
    )
    .await
}

fn assert_refused(what: &str, a: &Answer) {
    assert_eq!(a.status, 401, "{what}: {a}");
    assert_eq!(a.body["code"], "unauthorized", "{what}: {a}");
    assert!(
        a.www_authenticate
            .as_deref()
            .is_some_and(|h| h.starts_with("Bearer")),
        "{what}: no WWW-Authenticate: {a}"
    );
}

// A buyer signs in at the provider (code flow with PKCE) and calls orderd with the RS256
// at+jwt access token: orderd knows the user, account and roles, and the order goes through.
// The development sign-in is not mounted. Then every kind of forged or broken token gets 401
// with WWW-Authenticate, while a control token signed the same way with valid claims passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_work_and_forged_tokens_are_refused() {
    let p = Provider::start(
        &json!({"acme-alice": user(Some("ACME"), &["buyer"], None)}),
        &[],
    );
    let env = orderd_for(&p, &[]).await;
    let Tokens {
        access_token,
        id_token,
    } = p.tokens("acme-alice").await;
    let a = me(&env, &access_token).await;
    assert_eq!(a.status, 200, "{a}");
    assert_eq!(
        a.body,
        json!({"user": "acme-alice", "account": "ACME", "roles": ["buyer"], "warehouse": null})
    );
    let r = env
        .place(&access_token, "oidc-1", &[("BOLT-0010", 2)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let dev = env
        .api()
        .send(
            Method::POST,
            "/v1/dev/token",
            None,
            None,
            Some(&json!({"user": "x", "account": "ACME", "roles": ["operator"]})),
        )
        .await
        .expect("request");
    assert_eq!(dev.status, 404, "the dev sign-in must be off: {dev}");

    let valid = json!({"iss": p.issuer, "aud": AUDIENCE, "sub": "acme-alice", "account_id": "ACME",
                       "roles": ["buyer"], "iat": now(), "exp": now() + 300});
    let with = |k: &str, v: Value| {
        let mut c = valid.clone();
        c[k] = v;
        c
    };
    let at = json!({"typ": "at+jwt"});
    let control = p.sign(at.clone(), valid.clone(), false).await;
    assert_eq!(
        me(&env, &control).await.status,
        200,
        "the control token must pass"
    );

    let jwks = p.jwks().await;
    let kid = jwks["keys"][0]["kid"].as_str().expect("kid").to_owned();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.typ = Some("at+jwt".into());
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &valid,
        &jsonwebtoken::EncodingKey::from_secret(jwks["keys"][0].to_string().as_bytes()),
    )
    .expect("HS256");
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt"})),
        b64(&valid)
    );
    let parts: Vec<&str> = access_token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("payload")).expect("JSON");
    claims["account_id"] = json!("BAUHAUS");
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    let elsewhere = "http://127.0.0.1:9/keys.json";

    let forged = [
        ("alg none", none),
        ("HS256 signed with the public key", hs256),
        (
            "wrong issuer",
            p.sign(at.clone(), with("iss", json!("http://127.0.0.1:9")), false)
                .await,
        ),
        (
            "wrong audience",
            p.sign(at.clone(), with("aud", json!("urn:someone-else")), false)
                .await,
        ),
        (
            "expired beyond the leeway",
            p.sign(at.clone(), with("exp", json!(now() - 120)), false)
                .await,
        ),
        (
            "not yet valid beyond the leeway",
            p.sign(at.clone(), with("nbf", json!(now() + 120)), false)
                .await,
        ),
        ("unknown key", p.sign(at.clone(), valid.clone(), true).await),
        ("ID token as access token", id_token),
        (
            "typ JWT",
            p.sign(json!({"typ": "JWT"}), valid.clone(), false).await,
        ),
        (
            "jku elsewhere, unknown key",
            p.sign(
                json!({"typ": "at+jwt", "jku": elsewhere}),
                valid.clone(),
                true,
            )
            .await,
        ),
        (
            "x5u elsewhere, unknown key",
            p.sign(
                json!({"typ": "at+jwt", "x5u": elsewhere}),
                valid.clone(),
                true,
            )
            .await,
        ),
        (
            "jku elsewhere, known key",
            p.sign(
                json!({"typ": "at+jwt", "jku": elsewhere}),
                valid.clone(),
                false,
            )
            .await,
        ),
        ("tampered payload", tampered),
        ("no token at all", "not-a-jwt".to_owned()),
    ];
    for (what, token) in &forged {
        assert_refused(what, &me(&env, token).await);
        // A state change with it does nothing either.
        let r = call(
            &env,
            Method::POST,
            "/v1/cart/lines",
            token,
            Some(json!({"sku": "BOLT-0010", "qty": 1})),
        )
        .await;
        assert_refused(what, &r);
    }
    assert_eq!(me(&env, &access_token).await.status, 200);
}

/// Polls until `token` is accepted; panics at the deadline.
async fn until_accepted(env: &TestEnv, token: &str, what: &str) {
    let deadline = Instant::now() + ROTATION_DEADLINE;
    loop {
        let a = me(env, token).await;
        if a.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {a}");
        tokio::time::sleep(POLL).await;
    }
}

// The provider rotates its signing key: orderd accepts tokens of the new key without a
// restart, and the old key's tokens keep working while it is published. A burst of tokens
// with unknown keys costs at most one JWKS fetch. While the JWKS endpoint is down, cached keys
// keep working and a token of a key orderd has never seen is refused until it is back. When
// the provider stops publishing the old keys, their tokens are refused although orderd had
// verified and cached them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_picked_up_and_cached_keys_survive_an_outage() {
    let p = Provider::start(
        &json!({"acme-bob": user(Some("ACME"), &["buyer", "approver"], None)}),
        &[],
    );
    let interval = REFETCH_INTERVAL_MS.to_string();
    let env = orderd_for(
        &p,
        &[("ORDERD_OIDC__JWKS_REFETCH_INTERVAL_MIN_MS", &interval)],
    )
    .await;
    let old = p.access_token("acme-bob").await;
    until_accepted(&env, &old, "first key").await;

    tokio::time::sleep(Duration::from_millis(REFETCH_INTERVAL_MS)).await;
    let before = p.jwks_requests().await;
    let valid = json!({"iss": p.issuer, "aud": AUDIENCE, "sub": "acme-bob", "account_id": "ACME",
                       "roles": ["buyer"], "iat": now(), "exp": now() + 300});
    let stranger = p.sign(json!({"typ": "at+jwt"}), valid, true).await;
    let burst: Vec<_> = (0..UNKNOWN_KID_BURST)
        .map(|_| {
            let (base, t) = (env.api().base().to_owned(), stranger.clone());
            tokio::spawn(async move {
                reqwest::Client::new()
                    .get(format!("{base}/v1/me"))
                    .bearer_auth(t)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    for t in burst {
        assert_eq!(t.await.expect("task").expect("request"), 401);
    }
    let fetched = p.jwks_requests().await - before;
    assert!(
        fetched <= 1,
        "{UNKNOWN_KID_BURST} unknown-kid tokens fetched the JWKS {fetched} times"
    );

    p.rotate(false).await;
    let new = p.access_token("acme-bob").await;
    assert_ne!(new.split('.').next(), old.split('.').next(), "a new kid");
    until_accepted(&env, &new, "rotated key").await;
    assert_eq!(
        me(&env, &old).await.status,
        200,
        "the old key is still published"
    );

    // The JWKS goes down and the provider rotates again: the cached keys keep working, the key
    // orderd cannot fetch validates nothing, also after the refetch interval.
    p.set_jwks_down(true).await;
    p.rotate(false).await;
    let unseen = p.access_token("acme-bob").await;
    for _ in 0..2 {
        assert_refused("a key orderd could not fetch", &me(&env, &unseen).await);
        assert_eq!(
            me(&env, &new).await.status,
            200,
            "cached key while the JWKS is down"
        );
        assert_eq!(
            me(&env, &old).await.status,
            200,
            "cached key while the JWKS is down"
        );
        tokio::time::sleep(Duration::from_millis(REFETCH_INTERVAL_MS + 100)).await;
    }
    p.set_jwks_down(false).await;
    until_accepted(&env, &unseen, "the JWKS is back").await;

    // The provider drops every older key. Once orderd has refetched the JWKS (a token of the
    // newest key makes it), tokens it verified and cached before are refused: their keys are
    // no longer published.
    for t in [&old, &new, &unseen] {
        assert_eq!(me(&env, t).await.status, 200, "cached before the keys go");
    }
    p.rotate(true).await;
    let newest = p.access_token("acme-bob").await;
    until_accepted(&env, &newest, "only the newest key published").await;
    for (what, t) in [("first", &old), ("second", &new), ("third", &unseen)] {
        assert_refused(
            &format!("a cached token of the {what} key, no longer published"),
            &me(&env, t).await,
        );
    }
}

// Two companies, two identity providers, each bound to its own account; the second names
// its claims differently (tenant, groups, preferred_username). A token of company X naming
// company Y's account is refused, and so is a role X may not grant (operator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_issuer_speaks_only_for_its_accounts() {
    let x = Provider::start(
        &json!({
            "x-alice": user(Some("ACME"), &["buyer"], None),
            "x-intruder": user(Some("BAUHAUS"), &["buyer", "approver"], None),
            "x-operator": user(None, &["operator"], None),
        }),
        &[],
    );
    let y = Provider::start(
        &json!({"y-user": {"tenant": "BAUHAUS", "groups": "buyer approver", "preferred_username": "yvonne"}}),
        &[],
    );
    let issuers = format!(
        "[{{issuer = \"{}\", audience = \"{AUDIENCE}\", accounts = [\"ACME\"]}}, \
          {{issuer = \"{}\", audience = \"{AUDIENCE}\", accounts = [\"BAUHAUS\"], account_claim = \"tenant\", \
            roles_claim = \"groups\", user_claim = \"preferred_username\"}}]",
        x.issuer, y.issuer
    );
    let env = TestEnv::start_with(&[("ORDERD_OIDC__ISSUERS", &issuers)]).await;
    let a = me(&env, &x.access_token("x-alice").await).await;
    assert_eq!(a.status, 200, "{a}");
    assert_eq!(a.body["account"], "ACME");
    let a = me(&env, &y.access_token("y-user").await).await;
    assert_eq!(a.status, 200, "{a}");
    assert_eq!(
        a.body,
        json!({"user": "yvonne", "account": "BAUHAUS", "roles": ["buyer", "approver"], "warehouse": null})
    );
    let intruder = x.access_token("x-intruder").await;
    assert_refused("X speaking for BAUHAUS", &me(&env, &intruder).await);
    let r = env.get(&intruder, "/v1/orders").await;
    assert_eq!(r.status, 401, "{r}");
    assert_refused(
        "X granting operator",
        &me(&env, &x.access_token("x-operator").await).await,
    );
}

const ORDER_ID_PARAM: &str = "{id}";

/// A user id nobody has.
const NO_USER: &str = "nobody";

fn concrete(path: &str, id: &str) -> String {
    concrete_for(path, id, NO_USER)
}

/// `path` with the order `id` and the user `user`.
fn concrete_for(path: &str, id: &str, user: &str) -> String {
    path.replace(ORDER_ID_PARAM, id)
        .replace("{user}", user)
        .replace("{line}", "1")
        .replace("{sku}", "BOLT-0010")
        .replace("{kind}", "catalog")
        .replace("{account}", "ACME")
}

// With real tokens for every role, every route of orderd's own /openapi.json answers 403 to a
// role its rule does not name and 401 without a token, and lets a named role through. Then
// the cross-account matrix: BAUHAUS callers with every role get the same 404 for ACME's order
// on every order route as for an id that does not exist, also for a cart line, a user and a
// ship-to of ACME's; a warehouse holding nothing of the order and an operator naming the wrong
// account get 404 too. ACME's order and cart are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_route_and_cross_account_matrices_with_real_tokens() {
    let roles = [
        "buyer",
        "approver",
        "account_admin",
        "warehouse",
        "operator",
    ];
    let mut users = serde_json::Map::new();
    for account in ["ACME", "BAUHAUS"] {
        for r in &roles[..3] {
            users.insert(format!("{account}-{r}"), user(Some(account), &[r], None));
        }
        users.insert(
            format!("{account}-all"),
            user(Some(account), &roles[..3], None),
        );
    }
    users.insert("wh-muc".into(), user(None, &["warehouse"], Some("MUC")));
    users.insert("wh-ber".into(), user(None, &["warehouse"], Some("BER")));
    users.insert("ops".into(), user(None, &["operator"], None));
    let p = Provider::start(&Value::Object(users), &[]);
    let env = orderd_for(&p, &[]).await;
    let mut tokens = vec![];
    for (role, login) in roles.iter().zip([
        "ACME-buyer",
        "ACME-approver",
        "ACME-account_admin",
        "wh-ber",
        "ops",
    ]) {
        tokens.push((*role, p.access_token(login).await));
    }
    let doc = env
        .api()
        .send(Method::GET, "/openapi.json", None, None, None)
        .await
        .expect("doc")
        .body;
    let made_up = "01900000-0000-7000-8000-000000000000";
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        for method in item.as_object().expect("operations").keys() {
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            let uri = concrete(path, made_up);
            let body = (m != Method::GET && m != Method::DELETE).then(|| json!({}));
            let anonymous = call(&env, m.clone(), &uri, "", body.clone()).await;
            let public = anonymous.status != 401;
            for (role, token) in &tokens {
                let a = call(&env, m.clone(), &uri, token, body.clone()).await;
                let allowed = orderd_api::policy::rule(method, path)
                    .map(|rule| match rule {
                        orderd_api::policy::Access::Roles(rs) => {
                            rs.iter().any(|r| r.as_str() == *role)
                        }
                        _ => true,
                    })
                    .unwrap_or(false);
                if allowed {
                    assert!(
                        a.status != 401 && a.status != 403,
                        "{m} {path} as {role}: {a}"
                    );
                } else {
                    assert!(!public, "{m} {path} is public but its rule says otherwise");
                    assert_eq!(a.status, 403, "{m} {path} as {role}: {a}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 5 * 25, "only {checked} checks");

    // Cross-account: ACME's order, cart line and ship-to.
    let acme = p.access_token("ACME-all").await;
    let r = env
        .place(&acme, "x-acct-1", &[("BOLT-0010", 2)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let order = r.body.clone();
    let id = str_field(&order, "id").to_owned();
    let r = env
        .post(
            &acme,
            "/v1/cart/lines",
            json!({"sku": "BOLT-0010", "qty": 3}),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    let cart = env.get(&acme, "/v1/cart").await.body;
    // A user only ACME has.
    let admin = p.access_token("ACME-account_admin").await;
    env.create_user(
        &admin,
        json!({"id": "acme-only", "name": "Only at ACME", "roles": ["buyer"]}),
    )
    .await;
    let acme_users = env.get(&admin, "/v1/account/users").await.body;
    for login in [
        "BAUHAUS-buyer",
        "BAUHAUS-approver",
        "BAUHAUS-account_admin",
        "BAUHAUS-all",
    ] {
        let t = p.access_token(login).await;
        for (path, item) in paths {
            if ![ORDER_ID_PARAM, "{line}", "{user}"]
                .iter()
                .any(|p| path.contains(p))
            {
                continue;
            }
            for method in item.as_object().expect("operations").keys() {
                let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
                let sent = if path.contains("{line}") {
                    json!({"qty": 1})
                } else if path.contains("{user}") {
                    json!({"name": "Taken over", "roles": ["buyer"]})
                } else {
                    json!({})
                };
                let body = (m != Method::GET && m != Method::DELETE).then(|| sent.clone());
                let theirs = call(
                    &env,
                    m.clone(),
                    &concrete_for(path, &id, "acme-only"),
                    &t,
                    body.clone(),
                )
                .await;
                if theirs.status == 403 {
                    continue; // the role may not use the route at all
                }
                let body = (m != Method::GET && m != Method::DELETE).then(|| sent.clone());
                let ghost = call(&env, m.clone(), &concrete(path, made_up), &t, body).await;
                assert_eq!(
                    theirs.status, 404,
                    "{login}: {m} {path} on ACME's: {theirs}"
                );
                assert_eq!(
                    (theirs.status, &theirs.body["code"]),
                    (ghost.status, &ghost.body["code"]),
                    "{login}: {m} {path}"
                );
            }
        }
        // A ship-to of ACME's is answered like one that does not exist.
        let lines = json!([{"sku": "BOLT-0010", "qty": 1}]);
        let theirs = call(
            &env,
            Method::POST,
            "/v1/orders/validate",
            &t,
            Some(json!({"lines": lines, "ship_to": "BERLIN"})),
        )
        .await;
        let ghost = call(
            &env,
            Method::POST,
            "/v1/orders/validate",
            &t,
            Some(json!({"lines": lines, "ship_to": "NOWHERE"})),
        )
        .await;
        if theirs.status != 403 {
            assert_eq!(theirs.status, ghost.status, "{login}: {theirs} vs {ghost}");
            let codes = |a: &Answer| a.body.to_string().contains("unknown_ship_to");
            assert!(
                codes(&theirs) && codes(&ghost),
                "{login}: {theirs} vs {ghost}"
            );
        }
    }
    let wh = p.access_token("wh-muc").await;
    let holder = crate::env::warehouses_of(&order);
    if !holder.contains(&"MUC".to_owned()) {
        let r = call(
            &env,
            Method::POST,
            &format!("/v1/orders/{id}/ship"),
            &wh,
            None,
        )
        .await;
        assert_eq!(r.status, 404, "{r}");
    }
    let ops = p.access_token("ops").await;
    let r = call(
        &env,
        Method::POST,
        &format!("/v1/orders/{id}/ship"),
        &ops,
        Some(json!({"warehouse": "BER", "account": "BAUHAUS"})),
    )
    .await;
    assert_eq!(r.status, 404, "{r}");
    assert_eq!(
        env.get(&acme, &format!("/v1/orders/{id}")).await.body,
        order,
        "ACME's order changed"
    );
    assert_eq!(
        env.get(&acme, "/v1/cart").await.body,
        cart,
        "ACME's cart changed"
    );
    assert_eq!(
        env.get(&admin, "/v1/account/users").await.body,
        acme_users,
        "ACME's users changed"
    );
}

// Mutations are limited per account and per token: a burst above the configured allowance
// gets 429 with Retry-After and the rate_limited code, reads are not limited, and another
// account is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_are_rate_limited_per_account_and_token() {
    let p = Provider::start(
        &json!({"acme-a": user(Some("ACME"), &["buyer"], None), "acme-b": user(Some("ACME"), &["buyer"], None),
                "bauhaus-a": user(Some("BAUHAUS"), &["buyer"], None)}),
        &[],
    );
    let env = orderd_for(
        &p,
        &[
            ("ORDERD_API__RATE_LIMIT__ACCOUNT_MUTATIONS_PER_S", "1"),
            ("ORDERD_API__RATE_LIMIT__ACCOUNT_MUTATIONS_BURST", "5"),
            ("ORDERD_API__RATE_LIMIT__TOKEN_MUTATIONS_PER_S", "1"),
            ("ORDERD_API__RATE_LIMIT__TOKEN_MUTATIONS_BURST", "3"),
        ],
    )
    .await;
    let (a, b, other) = (
        p.access_token("acme-a").await,
        p.access_token("acme-b").await,
        p.access_token("bauhaus-a").await,
    );
    let add = |t: String| {
        let env_base = env.api().base().to_owned();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{env_base}/v1/cart/lines"))
                .bearer_auth(t)
                .json(&json!({"sku": "BOLT-0010", "qty": 1}))
                .send()
                .await
                .expect("request");
            let retry = r.headers().get("retry-after").is_some();
            (
                r.status().as_u16(),
                retry,
                r.text().await.unwrap_or_default(),
            )
        }
    };
    // Each burst is sent at once, so that it is checked well within the second that would
    // refill the allowance by one (sent one after another, each waiting for its durable write,
    // a loaded machine could take that long).
    let burst = |t: &String, n: usize| {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(add(t.clone()));
        }
        set.join_all()
    };
    // Token a: its own burst of 3, then 429 (per token).
    let statuses = burst(&a, 4).await;
    assert_eq!(
        statuses.iter().filter(|s| s.0 == 200).count(),
        3,
        "{statuses:?}"
    );
    let limited = statuses.iter().find(|s| s.0 != 200).expect("one");
    assert_eq!(limited.0, 429, "{statuses:?}");
    assert!(
        limited.1 && limited.2.contains("rate_limited"),
        "{limited:?}"
    );
    // Token b of the same account.
    let statuses = burst(&b, 3).await;
    let b_ok = statuses.iter().filter(|s| s.0 == 200).count();
    for s in statuses.iter().filter(|s| s.0 != 200) {
        assert_eq!(s.0, 429, "{s:?}");
        assert!(s.1, "{s:?}");
    }
    // The account's burst is shared: a's 3 left 2 of it. a's refused 4th did not use one.
    assert_eq!(b_ok, 2, "{statuses:?}");
    // Reads are not limited; another account is not affected.
    for _ in 0..10 {
        assert_eq!(
            call(&env, Method::GET, "/v1/cart", &a, None).await.status,
            200
        );
    }
    assert_eq!(add(other).await.0, 200);
}

/// Idle timeout of browser sessions in the sign-in test.
const SESSION_IDLE_MS: u64 = 4_000;
/// Absolute timeout of browser sessions in the sign-in test (above the idle one).
const SESSION_ABSOLUTE_MS: u64 = 9_000;
/// How often the test uses a session to keep it from idling out (well below the idle timeout).
const SESSION_KEEPALIVE: Duration = Duration::from_millis(1_000);

/// A `Set-Cookie` header of `name` in an answer, if any.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// orderd's client at the provider for the browser sign-in.
const PORTAL: &str = "portal";
const PORTAL_SECRET: &str = "portal-secret-portal-secret-portal-secret";

/// orderd trusting `p` with browser sign-in through the client [`PORTAL`] (plus `env`), and
/// that client registered at `p` (with refresh tokens when `refresh`).
async fn orderd_with_portal(p: &Provider, env: &[(&str, &str)], refresh: bool) -> TestEnv {
    let mut all = vec![
        ("ORDERD_OIDC__CLIENT_ID", PORTAL),
        ("ORDERD_OIDC__CLIENT_SECRET", PORTAL_SECRET),
        ("ORDERD_OIDC__SCOPES", "[\"openid\", \"orders\"]"),
    ];
    all.extend_from_slice(env);
    let orderd = orderd_for(p, &all).await;
    p.set_clients(&[portal_client(&orderd, refresh)]).await;
    orderd
}

/// The provider's record of orderd's client, redirecting to `env`.
fn portal_client(env: &TestEnv, refresh: bool) -> Value {
    json!({"client_id": PORTAL, "client_secret": PORTAL_SECRET,
           "redirect_uris": [format!("{}/auth/callback", env.api().base())], "refresh": refresh})
}

/// Waits for an open event stream to end (within a few rechecks), because its session `why`.
async fn ended_soon(stream: reqwest::Response, why: &str) {
    tokio::time::timeout(Duration::from_secs(2), stream.bytes())
        .await
        .unwrap_or_else(|_| panic!("a stream outlived its session ({why})"))
        .expect("a stream that ends cleanly");
}

/// Signs `login` in through orderd's `/auth/login` as a browser would; the session cookie.
async fn browser_sign_in(env: &TestEnv, login: &str, session: Option<&str>) -> String {
    let base = env.api().base().to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .get(format!("{base}/auth/login"))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    let login_cookie = set_cookie(&r, "__Host-orderd_login").expect("login cookie");
    let to = r.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    let callback = crate::provider::sign_in_at_provider(
        reqwest::Url::parse(&to).expect("URL"),
        login,
        &format!("{base}/auth/callback"),
    )
    .await;
    let mut cookies = format!("__Host-orderd_login={}", cookie_value(&login_cookie));
    if let Some(s) = session {
        cookies.push_str(&format!("; __Host-orderd_session={s}"));
    }
    let r = http
        .get(callback.clone())
        .header("cookie", &cookies)
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let session = set_cookie(&r, "__Host-orderd_session").expect("session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    // The same answer of the provider cannot be used twice.
    let again = http
        .get(callback)
        .header("cookie", &cookies)
        .send()
        .await
        .expect("replay");
    assert_eq!(again.status(), 400);
    cookie_value(&session)
}

// A person signs in through orderd's portal: orderd sends the browser to the provider (code
// flow with PKCE), the provider's login and consent forms are submitted, and orderd's
// callback starts a session in a __Host- cookie (Secure, HttpOnly, SameSite=Lax). The page at
// / shows who is signed in; a state-changing request with the cookie needs orderd's Origin; a
// new sign-in issues a new session id and ends the old one; logout ends the session
// server-side; an idle session ends by itself, and one in constant use ends at the absolute
// timeout after its sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_with_sessions() {
    let p = Provider::start(
        &json!({"acme-carol": user(Some("ACME"), &["buyer", "account_admin"], None)}),
        &[],
    );
    let idle = SESSION_IDLE_MS.to_string();
    let absolute = SESSION_ABSOLUTE_MS.to_string();
    let timeouts = [
        ("ORDERD_SESSION__IDLE_TIMEOUT_MS", idle.as_str()),
        ("ORDERD_SESSION__ABSOLUTE_TIMEOUT_MS", absolute.as_str()),
        ("ORDERD_API__EVENT_STREAM_RECHECK_MS", "200"),
    ];
    let env = orderd_with_portal(&p, &timeouts, false).await;
    let base = env.api().base().to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let session = browser_sign_in(&env, "acme-carol", None).await;
    let with = |s: &str| format!("__Host-orderd_session={s}");
    let page = |cookie: Option<String>| {
        let mut req = http.get(format!("{base}/"));
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        async move { req.send().await.expect("page").text().await.expect("html") }
    };
    let html = page(Some(with(&session))).await;
    assert!(
        html.contains("acme-carol")
            && html.contains("ACME")
            && html.contains("buyer, account_admin"),
        "{html}"
    );
    let anonymous = page(None).await;
    assert!(anonymous.contains("Not signed in"), "{anonymous}");
    let me = http
        .get(format!("{base}/v1/me"))
        .header("cookie", with(&session))
        .send()
        .await
        .expect("me");
    assert_eq!(me.status(), 200);

    let add = |origin: Option<&str>, s: &str| {
        let mut req = http
            .post(format!("{base}/v1/cart/lines"))
            .header("cookie", with(s))
            .json(&json!({"sku": "BOLT-0010", "qty": 1}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.expect("add").status().as_u16() }
    };
    assert_eq!(add(None, &session).await, 403, "no Origin");
    assert_eq!(
        add(Some("http://evil.example"), &session).await,
        403,
        "foreign Origin"
    );
    assert_eq!(add(Some(&base), &session).await, 200, "orderd's own Origin");

    // Signing in again rotates the session id; the old one is over.
    let second = browser_sign_in(&env, "acme-carol", Some(&session)).await;
    assert_ne!(second, session);
    let status = |s: String| {
        let req = http.get(format!("{base}/v1/me")).header("cookie", with(&s));
        async move { req.send().await.expect("me").status().as_u16() }
    };
    assert_eq!(
        status(session.clone()).await,
        401,
        "the old session must be over"
    );
    assert_eq!(status(second.clone()).await, 200);

    // Logout needs orderd's Origin too, then ends the session on the server, and with it the
    // session's event stream.
    let stream = |s: &str| {
        let req = http
            .get(format!("{base}/v1/events/stream"))
            .header("cookie", with(s));
        async move { req.send().await.expect("event stream") }
    };
    let open = stream(&second).await;
    assert_eq!(open.status(), 200);
    let out = |origin: &str| {
        http.post(format!("{base}/auth/logout"))
            .header("cookie", with(&second))
            .header("origin", origin)
            .send()
    };
    assert_eq!(
        out("http://evil.example").await.expect("logout").status(),
        403
    );
    let r = out(&base).await.expect("logout");
    assert_eq!(r.status(), 303);
    assert!(set_cookie(&r, "__Host-orderd_session").is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(
        status(second).await,
        401,
        "logout must end the session server-side"
    );
    ended_soon(open, "signed out").await;

    // An idle session ends by itself. Event streams are the page's doing, not its user's:
    // reconnecting them does not keep the session alive, and the open one ends with it.
    let third = browser_sign_in(&env, "acme-carol", None).await;
    let used = Instant::now();
    assert_eq!(status(third.clone()).await, 200);
    let open = stream(&third).await;
    assert_eq!(open.status(), 200);
    while used.elapsed() < Duration::from_millis(SESSION_IDLE_MS + 500) {
        let again = stream(&third).await.status().as_u16();
        assert!(
            again == 200 || used.elapsed() >= Duration::from_millis(SESSION_IDLE_MS),
            "reconnect {:?} after the last use answered {again}",
            used.elapsed()
        );
        tokio::time::sleep(SESSION_KEEPALIVE).await;
    }
    assert_eq!(
        status(third).await,
        401,
        "an idle session (its reconnecting streams kept it alive)"
    );
    ended_soon(open, "idle").await;

    // A session in constant use still ends the absolute timeout after its sign-in.
    let before = Instant::now();
    let fourth = browser_sign_in(&env, "acme-carol", None).await;
    let after = Instant::now();
    let absolute = Duration::from_millis(SESSION_ABSOLUTE_MS);
    // The session started between `before` and `after`: alive until before + absolute at
    // least, over by after + absolute at the latest (plus a margin for this loop).
    let margin = Duration::from_millis(500);
    let mut ended = None;
    while after.elapsed() < absolute + margin + SESSION_KEEPALIVE {
        let asked = Instant::now();
        let s = status(fourth.clone()).await;
        if s == 401 {
            ended = Some(asked);
            break;
        }
        assert_eq!(s, 200);
        tokio::time::sleep(SESSION_KEEPALIVE).await;
    }
    let ended = ended.expect("the session outlived the absolute timeout");
    assert!(
        ended + margin >= before + absolute,
        "the session ended {:?} after sign-in, before the absolute timeout {absolute:?}",
        ended - before
    );
    assert!(ended <= after + absolute + margin + SESSION_KEEPALIVE);
}

/// Lifetime of the provider's tokens in the refresh test: short, so that sessions outlive it.
const SHORT_TOKEN_TTL_S: u64 = 5;

// A browser session acts on the provider's word only while its access token holds. Without a
// refresh token it ends with the token. With one, orderd refreshes it at the provider once the
// token has expired, one refresh at a time (the provider rotates refresh tokens and revokes the
// grant when a used one comes back), and keeps the rotated token for the next refresh. Once
// the provider disables the user, the next refresh fails and the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sessions_last_as_long_as_the_provider_vouches() {
    let p = Provider::start_with_token_ttl(
        &json!({"acme-dana": user(Some("ACME"), &["buyer"], None)}),
        &[],
        SHORT_TOKEN_TTL_S,
    );
    // No clock leeway: a bearer token's stream ends at its exp, like a session's.
    let env = orderd_with_portal(
        &p,
        &[
            ("ORDERD_API__EVENT_STREAM_RECHECK_MS", "200"),
            ("ORDERD_OIDC__LEEWAY_S", "0"),
        ],
        false,
    )
    .await;
    let base = env.api().base().to_owned();
    let http = reqwest::Client::new();
    let me = |session: &str| {
        let req = http
            .get(format!("{base}/v1/me"))
            .header("cookie", format!("__Host-orderd_session={session}"));
        async move {
            let r = req.send().await.expect("me");
            let status = r.status().as_u16();
            (status, r.text().await.expect("body"))
        }
    };
    // Past the expiry of every token issued before (exp is in whole seconds).
    let outlive_tokens =
        || tokio::time::sleep(Duration::from_millis(SHORT_TOKEN_TTL_S * 1_000 + 1_200));

    // No refresh token: the session ends with its access token, and so does its event stream;
    // a stream opened with an access token (served from the token cache) ends with it too.
    let bare = browser_sign_in(&env, "acme-dana", None).await;
    assert_eq!(me(&bare).await.0, 200);
    let stream = |credential: reqwest::RequestBuilder| async move {
        let r = credential.send().await.expect("event stream");
        assert_eq!(r.status(), 200);
        r
    };
    let events = format!("{base}/v1/events/stream");
    let by_session = stream(
        http.get(&events)
            .header("cookie", format!("__Host-orderd_session={bare}")),
    )
    .await;
    let token = p.access_token("acme-dana").await;
    let by_token = stream(http.get(&events).bearer_auth(&token)).await;
    outlive_tokens().await;
    ended_soon(by_session, "its access token expired").await;
    ended_soon(by_token, "the bearer token expired").await;
    let (status, body) = me(&bare).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("the session has ended"), "{body}");

    // With one, expired sessions are refreshed: a burst of requests after the expiry all pass.
    p.set_clients(&[portal_client(&env, true)]).await;
    let session = browser_sign_in(&env, "acme-dana", None).await;
    assert_eq!(me(&session).await.0, 200);
    let before = p.refreshes().await;
    for round in 1..=2 {
        outlive_tokens().await;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            set.spawn(me(&session));
        }
        let burst = set.join_all().await;
        for (status, body) in &burst {
            assert_eq!(*status, 200, "round {round}: {body}");
            assert!(body.contains("acme-dana"), "{body}");
        }
        // A second refresh with the rotated-away token would have revoked the grant, so every
        // round refreshed with the token the one before it got.
        let refreshes = p.refreshes().await - before;
        assert!(refreshes >= round, "round {round}: {refreshes} refreshes");
    }

    // The stream of a session whose access token expired ends (it does not refresh the
    // session), and its reconnect refreshes the session like any request.
    let refreshed = p.refreshes().await;
    let open = stream(
        http.get(&events)
            .header("cookie", format!("__Host-orderd_session={session}")),
    )
    .await;
    outlive_tokens().await;
    ended_soon(open, "its access token expired").await;
    let reopened = stream(
        http.get(&events)
            .header("cookie", format!("__Host-orderd_session={session}")),
    )
    .await;
    assert!(p.refreshes().await > refreshed, "the reconnect refreshed");

    // The provider disables the user: the next refresh fails, and the session is over.
    p.set_disabled("acme-dana", true).await;
    outlive_tokens().await;
    ended_soon(reopened, "its access token expired").await;
    let (status, body) = me(&session).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no longer vouches"), "{body}");
    let (status, body) = me(&session).await;
    assert_eq!(status, 401);
    assert!(body.contains("the session has ended"), "{body}");
}

// The roles ACME's account admin stores narrow real provider tokens and browser sessions
// alike. The provider says acme-pat is a buyer and an approver; the admin stores acme-pat as a
// buyer only. Pat's access token and Pat's session act as a buyer (/v1/me, the page at /, 403
// on approving); once the admin removes acme-pat, both are refused on the account's routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_roles_narrow_provider_tokens_and_sessions() {
    let p = Provider::start(
        &json!({"acme-admin": user(Some("ACME"), &["account_admin"], None),
                "acme-pat": user(Some("ACME"), &["buyer", "approver"], None)}),
        &[],
    );
    let env = orderd_with_portal(&p, &[], false).await;
    let base = env.api().base().to_owned();
    let admin = p.access_token("acme-admin").await;
    env.create_user(
        &admin,
        json!({"id": "acme-pat", "name": "Pat", "roles": ["buyer"]}),
    )
    .await;

    let pat = p.access_token("acme-pat").await;
    let a = me(&env, &pat).await;
    assert_eq!(a.body["roles"], json!(["buyer"]), "{a}");
    let made_up = "01900000-0000-7000-8000-000000000000";
    let approve = format!("/v1/orders/{made_up}/approve");
    let a = call(&env, Method::POST, &approve, &pat, Some(json!({}))).await;
    assert_eq!(a.status, 403, "{a}");
    let session = browser_sign_in(&env, "acme-pat", None).await;
    let http = reqwest::Client::new();
    let with_session = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", format!("__Host-orderd_session={session}"))
            .send()
    };
    let html = with_session("/")
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(html.contains("<b id=\"roles\">buyer</b>"), "{html}");
    let r = with_session("/v1/me").await.expect("me");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["roles"], json!(["buyer"]), "{body}");

    let r = call(
        &env,
        Method::DELETE,
        "/v1/account/users/acme-pat",
        &admin,
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{r}");
    let a = me(&env, &pat).await;
    assert_eq!(a.status, 403, "{a}");
    assert!(a.body["detail"].to_string().contains("was removed"), "{a}");
    let a = call(&env, Method::GET, "/v1/cart", &pat, None).await;
    assert_eq!(a.status, 403, "{a}");
    let r = with_session("/v1/cart").await.expect("cart");
    assert_eq!(r.status(), 403);
    let html = with_session("/")
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("<b id=\"roles\">(none)</b>") && html.contains("was removed"),
        "{html}"
    );
}
