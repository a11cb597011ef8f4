//! A small HTTP client for orderd's API: development sign-in, JSON requests with an optional
//! Idempotency-Key, and replies reduced to what checks need (status, Retry-After, the replay
//! header and the JSON body).

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// Longest wait for one HTTP answer. Above the daemon's default call timeout (10 s), so a slow
/// answer is the daemon's 503, not a client give-up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One answer of the API.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The Retry-After header, if any.
    pub retry_after: Option<String>,
    /// `idempotent-replayed: true` was present.
    pub replayed: bool,
    /// The JSON body; `Value::Null` when empty, a string when not JSON.
    pub body: Value,
}

impl Reply {
    /// The problem+json `code`, if the body has one.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// Codes of every entry of `problems[]`.
    pub fn problem_codes(&self) -> Vec<String> {
        self.body
            .get("problems")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p.get("code").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `id` field of the body (orders).
    pub fn id(&self) -> Option<&str> {
        self.body.get("id").and_then(Value::as_str)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)
    }
}

/// The API of one running daemon.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A client for `base` (`http://host:port`).
    pub fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request. `Err` only for transport failures (refused, reset, timed out): the
    /// request may or may not have reached the daemon.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after");
        let replayed = header("idempotent-replayed").as_deref() == Some("true");
        let text = resp.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply {
            status,
            retry_after,
            replayed,
            body,
        })
    }

    pub async fn get(&self, token: &str, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, Some(token), None, None)
            .await
            .with_context(|| format!("GET {path}"))
    }

    pub async fn post(&self, token: &str, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(Method::POST, path, Some(token), None, Some(body))
            .await
            .with_context(|| format!("POST {path}"))
    }

    pub async fn patch(&self, token: &str, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(Method::PATCH, path, Some(token), None, Some(body))
            .await
            .with_context(|| format!("PATCH {path}"))
    }

    pub async fn put(&self, token: &str, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(Method::PUT, path, Some(token), None, Some(body))
            .await
            .with_context(|| format!("PUT {path}"))
    }

    /// `POST /v1/orders` with an Idempotency-Key.
    pub async fn place(&self, token: &str, key: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(
            Method::POST,
            "/v1/orders",
            Some(token),
            Some(key),
            Some(body),
        )
        .await
        .context("POST /v1/orders")
    }

    /// A development token (`POST /v1/dev/token`).
    pub async fn token(
        &self,
        account: Option<&str>,
        user: &str,
        roles: &[&str],
        warehouse: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut req = json!({ "user": user, "roles": roles });
        if let Some(a) = account {
            req["account"] = json!(a);
        }
        if let Some(w) = warehouse {
            req["warehouse"] = json!(w);
        }
        let reply = self
            .send(Method::POST, "/v1/dev/token", None, None, Some(&req))
            .await
            .context("POST /v1/dev/token")?;
        reply
            .body
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no token for {req}: {reply}"))
    }

    /// A token of an account's user with the given roles.
    pub async fn account_token(
        &self,
        account: &str,
        user: &str,
        roles: &[&str],
    ) -> anyhow::Result<String> {
        self.token(Some(account), user, roles, None).await
    }

    /// A token of a warehouse's staff.
    pub async fn warehouse_token(&self, warehouse: &str) -> anyhow::Result<String> {
        self.token(None, "picker", &["warehouse"], Some(warehouse))
            .await
    }

    /// An operator token (crosses accounts).
    pub async fn operator_token(&self) -> anyhow::Result<String> {
        self.token(None, "ops", &["operator"], None).await
    }

    /// Every order of the token's account, following `next_cursor` (at most `pages_max` pages
    /// of `page` orders; more is an error, not a silent cut).
    pub async fn list_all_orders(
        &self,
        token: &str,
        page: usize,
        pages_max: usize,
    ) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..pages_max {
            let path = match &cursor {
                None => format!("/v1/orders?limit={page}"),
                Some(c) => format!("/v1/orders?limit={page}&cursor={c}"),
            };
            let reply = self.get(token, &path).await?;
            if reply.status != 200 {
                return Err(anyhow!("GET {path}: {reply}"));
            }
            let orders = reply
                .body
                .get("orders")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("GET {path}: no orders array: {reply}"))?;
            out.extend(orders.iter().cloned());
            match reply.body.get("next_cursor").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(out),
            }
        }
        Err(anyhow!("more than {pages_max} pages of orders"))
    }
}
