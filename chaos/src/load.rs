//! Load clients. A worker acts for one account: it places orders with unique Idempotency-Keys
//! and approves, rejects, ships and cancels its own orders, recording every acknowledged answer
//! in its part of the acknowledged set. Only a worker changes its own orders, so what it was
//! told is the whole truth about them.

use crate::client::{Api, Reply};
use crate::ledger::{check_ack, Op, Placement, Seen, Tracked};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The users a worker acts as, by index: `(user, roles)` of the demo accounts. Alice has a
/// spending limit of 2000 EUR, Carol (acting as a buyer) the buyer role's 5000 EUR; Bob may
/// approve. Orders are placed by the first [`PLACERS`] only: nobody approves their own order.
pub const USERS: [(&str, &[&str]); 3] = [
    ("alice", &["buyer"]),
    ("carol", &["buyer"]),
    ("bob", &["buyer", "approver"]),
];
/// How many of [`USERS`], from the first, place orders.
pub const PLACERS: usize = 2;
/// Index into [`USERS`] of the user who approves and cancels.
pub const APPROVER: usize = 2;
const _: () = assert!(APPROVER >= PLACERS, "the approver must not place orders");

/// `(account, ship-to)` of each worker, cycled when there are more workers. Accounts with large
/// and small credit limits, so some load runs into `credit_limit_exceeded`.
pub const DEMO_SEATS: [(&str, &str); 8] = [
    ("ACME", "BERLIN"),
    ("ACME", "MUNICH"),
    ("STADTWERK", "HAMBURG"),
    ("STADTWERK", "BERLIN"),
    ("BAUHAUS", "HAMBURG"),
    ("KLEMPNER", "COLOGNE"),
    ("ELEKTRO", "LEIPZIG"),
    ("HANDWERK", "MUNICH"),
];
/// Demo SKUs every account may order in any quantity from 1 (no pack size, minimum, segment or
/// status rule). NUT-0001 and PIPE-0023 have only 3 units in Berlin, so concurrent orders
/// compete for them (invariant 2).
pub const DEMO_SKUS: &[&str] = &[
    "BOLT-0010",
    "CABL-0014",
    "DRIL-0017",
    "TAPE-0018",
    "NUT-0021",
    "CABL-0024",
    "GLOV-0025",
    "TAPE-0028",
    "VALV-0029",
    "GLOV-0035",
    "VALV-0039",
    "BOLT-0040",
    "PIPE-0043",
    "DRIL-0047",
    "NUT-0051",
    "TAPE-0058",
    "NUT-0061",
    "VALV-0069",
    "PIPE-0073",
    "BOLT-0080",
    "NUT-0001",
    "PIPE-0023",
];
/// A demo SKU every order of which needs approval (a restricted item), so approvals happen.
pub const DEMO_RESTRICTED_SKU: &str = "HELM-0006";
/// The demo warehouses (one token each, for shipping).
pub const DEMO_WAREHOUSES: [&str; 3] = ["BER", "MUC", "HAM"];

/// Most lines in one generated order.
const ORDER_LINES_MAX: usize = 3;
/// Most units per generated line.
const LINE_QTY_MAX: u32 = 10;
/// Percent of placements that include the restricted SKU (and so wait for approval).
const RESTRICTED_PERCENT: u32 = 25;
/// Percent of steps that approve / reject / ship / cancel, when there is something to act on;
/// the rest place orders.
const APPROVE_PERCENT: u32 = 12;
const REJECT_PERCENT: u32 = 4;
const SHIP_PERCENT: u32 = 12;
const CANCEL_PERCENT: u32 = 8;
/// Pause after a request that got no answer (refused or cut connection).
const UNREACHABLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Every token the workers use, issued once: the dev signing key lives in the data directory,
/// so they stay valid across restarts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Per account, one token per entry of [`USERS`].
    pub accounts: BTreeMap<String, Vec<String>>,
    pub warehouses: BTreeMap<String, String>,
}

impl Tokens {
    /// Issues the tokens of `accounts` and of the demo warehouses.
    pub async fn issue(api: &Api, accounts: &BTreeSet<String>) -> anyhow::Result<Tokens> {
        let mut t = Tokens::default();
        for a in accounts {
            let mut users = Vec::new();
            for (user, roles) in USERS {
                users.push(api.account_token(a, user, roles).await?);
            }
            t.accounts.insert(a.clone(), users);
        }
        for w in DEMO_WAREHOUSES {
            t.warehouses
                .insert(w.to_owned(), api.warehouse_token(w).await?);
        }
        Ok(t)
    }

    /// The token of `user` (an index into [`USERS`]) of `account`.
    pub fn user(&self, account: &str, user: usize) -> Option<&str> {
        self.accounts
            .get(account)
            .and_then(|u| u.get(user))
            .map(String::as_str)
    }
}

/// Counts of what the load saw.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: u64,
    /// Orders acknowledged with 201.
    pub placed: u64,
    /// Approvals, shipments and cancellations acknowledged with 200.
    pub changed: u64,
    /// The same by action (`approve`, `ship`, `cancel`).
    pub changed_by: BTreeMap<String, u64>,
    /// 422 answers by problem code (business refusals: out of stock, credit, ...).
    pub refused: BTreeMap<String, u64>,
    /// 409 answers (a change no longer possible).
    pub conflicts: u64,
    /// 429 answers.
    pub busy: u64,
    /// Requests without an answer (transport error or 503): outcome unknown until verified.
    pub uncertain: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.placed += o.placed;
        self.changed += o.changed;
        self.conflicts += o.conflicts;
        self.busy += o.busy;
        self.uncertain += o.uncertain;
        for (k, v) in &o.refused {
            *self.refused.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.changed_by {
            *self.changed_by.entry(k.clone()).or_default() += v;
        }
    }

    fn refusal(&mut self, r: &Reply) {
        let codes = r.problem_codes();
        if codes.is_empty() {
            *self
                .refused
                .entry(r.code().unwrap_or("unknown").to_owned())
                .or_default() += 1;
        }
        for c in codes {
            *self.refused.entry(c).or_default() += 1;
        }
    }
}

/// One load client and its part of the acknowledged set.
pub struct Worker {
    pub idx: usize,
    pub account: String,
    pub ship_to: String,
    rng: fastrand::Rng,
    key_prefix: String,
    next_key: u64,
    skus: Arc<Vec<String>>,
    /// Every order this worker placed and was told about.
    pub orders: BTreeMap<String, Tracked>,
    /// Orders that are not finished (pending approval or allocated): candidates for changes.
    open: BTreeSet<String>,
    /// Placements without an answer; sent again with the same key after the next restart.
    pub uncertain: Vec<Placement>,
    /// Orders placed since the last verification (their keys are surely still remembered).
    pub recent: Vec<String>,
    pub stats: Stats,
    /// Answers that break a rule, in words.
    pub violations: Vec<String>,
    /// The last request got no answer at all.
    unreachable: bool,
}

impl Worker {
    /// A worker whose choices follow from `seed`. `run_id` makes keys unique per harness run,
    /// so two runs on one data directory never share a key.
    pub fn new(
        idx: usize,
        account: &str,
        ship_to: &str,
        seed: u64,
        run_id: &str,
        skus: Arc<Vec<String>>,
    ) -> Worker {
        Worker {
            idx,
            account: account.to_owned(),
            ship_to: ship_to.to_owned(),
            rng: fastrand::Rng::with_seed(seed),
            key_prefix: format!("{run_id}.w{idx}"),
            next_key: 0,
            skus,
            orders: BTreeMap::new(),
            open: BTreeSet::new(),
            uncertain: Vec::new(),
            recent: Vec::new(),
            stats: Stats::default(),
            violations: Vec::new(),
            unreachable: false,
        }
    }

    /// Works until `stop` is set, then hands itself back (with what it learned).
    pub async fn run(mut self, api: Api, tokens: Arc<Tokens>, stop: Arc<AtomicBool>) -> Worker {
        while !stop.load(Ordering::Acquire) {
            self.step(&api, &tokens).await;
            if std::mem::take(&mut self.unreachable) {
                // A daemon that is shutting down refuses connections at once; without a pause
                // the worker would pile up thousands of unanswered placements to send again.
                tokio::time::sleep(UNREACHABLE_PAUSE).await;
            }
        }
        self
    }

    /// Records what the daemon now says about an order and keeps the open set in step.
    pub fn set_acked(&mut self, id: &str, seen: Seen, placement: Option<Placement>) {
        if matches!(seen.state.as_str(), "pending_approval" | "allocated") {
            self.open.insert(id.to_owned());
        } else {
            self.open.remove(id);
        }
        match self.orders.get_mut(id) {
            Some(t) => {
                t.acked = seen;
                t.pending = None;
            }
            None => {
                if let Some(placement) = placement {
                    self.orders.insert(
                        id.to_owned(),
                        Tracked {
                            acked: seen,
                            pending: None,
                            placement,
                        },
                    );
                }
            }
        }
    }

    async fn step(&mut self, api: &Api, tokens: &Tokens) {
        let roll = self.rng.u32(0..100);
        let candidates = |f: &dyn Fn(&Tracked) -> bool| -> Vec<String> {
            self.open
                .iter()
                .filter(|id| {
                    self.orders
                        .get(*id)
                        .is_some_and(|t| t.pending.is_none() && f(t))
                })
                .cloned()
                .collect()
        };
        let pending = candidates(&|t| t.acked.state == "pending_approval");
        let shippable =
            candidates(&|t| t.acked.state == "allocated" && !t.acked.unshipped.is_empty());
        // The state machine cancels only confirmed or allocated orders; a pending one is rejected.
        let cancellable = candidates(&|t| t.acked.state == "allocated");
        let pick = |rng: &mut fastrand::Rng, v: &[String]| v[rng.usize(..v.len())].clone();
        const REJECT_UNDER: u32 = APPROVE_PERCENT + REJECT_PERCENT;
        if roll < APPROVE_PERCENT && !pending.is_empty() {
            let id = pick(&mut self.rng, &pending);
            self.change(api, tokens, &id, Op::Approve).await;
        } else if roll < REJECT_UNDER && !pending.is_empty() {
            let id = pick(&mut self.rng, &pending);
            self.change(api, tokens, &id, Op::Reject).await;
        } else if roll < REJECT_UNDER + SHIP_PERCENT && !shippable.is_empty() {
            let id = pick(&mut self.rng, &shippable);
            let warehouses: Vec<String> =
                self.orders[&id].acked.unshipped.iter().cloned().collect();
            let w = pick(&mut self.rng, &warehouses);
            self.change(api, tokens, &id, Op::Ship(w)).await;
        } else if roll < REJECT_UNDER + SHIP_PERCENT + CANCEL_PERCENT && !cancellable.is_empty() {
            let id = pick(&mut self.rng, &cancellable);
            self.change(api, tokens, &id, Op::Cancel).await;
        } else {
            self.place(api, tokens).await;
        }
    }

    fn placement(&mut self) -> Placement {
        let mut skus: Vec<&str> = Vec::new();
        let lines = self.rng.usize(1..=ORDER_LINES_MAX);
        for _ in 0..lines {
            let s = &self.skus[self.rng.usize(..self.skus.len())];
            if !skus.contains(&s.as_str()) {
                skus.push(s);
            }
        }
        if self.rng.u32(0..100) < RESTRICTED_PERCENT {
            skus.push(DEMO_RESTRICTED_SKU);
        }
        let lines: Vec<Value> = skus
            .iter()
            .map(|s| json!({"sku": s, "qty": self.rng.u32(1..=LINE_QTY_MAX)}))
            .collect();
        let key = format!("{}.{}", self.key_prefix, self.next_key);
        self.next_key += 1;
        Placement {
            key,
            body: json!({"lines": lines, "ship_to": self.ship_to}),
            user: self.rng.usize(..PLACERS),
        }
    }

    async fn place(&mut self, api: &Api, tokens: &Tokens) {
        let p = self.placement();
        let Some(token) = tokens.user(&self.account, p.user) else {
            self.violations
                .push(format!("no token for account {}", self.account));
            return;
        };
        self.stats.requests += 1;
        let reply = match api
            .send(
                Method::POST,
                "/v1/orders",
                Some(token),
                Some(&p.key),
                Some(&p.body),
            )
            .await
        {
            Ok(r) => r,
            Err(_) => {
                self.stats.uncertain += 1;
                self.uncertain.push(p);
                self.unreachable = true;
                return;
            }
        };
        match reply.status {
            201 => match (reply.id(), Seen::from_order(&reply.body)) {
                (Some(id), Some(seen))
                    if seen.version >= 1
                        && matches!(seen.state.as_str(), "allocated" | "pending_approval") =>
                {
                    let id = id.to_owned();
                    self.stats.placed += 1;
                    self.recent.push(id.clone());
                    self.set_acked(&id, seen, Some(p));
                }
                _ => self
                    .violations
                    .push(format!("placing {}: malformed 201: {reply}", p.key)),
            },
            200 => self.violations.push(format!(
                "a fresh Idempotency-Key {} was answered as a replay: {reply}",
                p.key
            )),
            422 if reply.code() == Some("idempotency_key_reused") => self.violations.push(format!(
                "a fresh Idempotency-Key {} was called reused",
                p.key
            )),
            422 => self.stats.refusal(&reply),
            429 => {
                self.stats.busy += 1;
                self.need_retry_after(&reply);
            }
            503 => {
                self.need_retry_after(&reply);
                self.stats.uncertain += 1;
                self.uncertain.push(p);
            }
            _ => self
                .violations
                .push(format!("placing {}: unexpected {reply}", p.key)),
        }
    }

    async fn change(&mut self, api: &Api, tokens: &Tokens, id: &str, op: Op) {
        let token = match &op {
            Op::Ship(w) => tokens.warehouses.get(w).map(String::as_str),
            Op::Approve | Op::Reject | Op::Cancel => tokens.user(&self.account, APPROVER),
        };
        let (Some(token), Some(t)) = (token, self.orders.get_mut(id)) else {
            return;
        };
        // From here until an answer arrives the order may be before or after the change.
        t.pending = Some(op.clone());
        let before = t.acked.clone();
        self.stats.requests += 1;
        let path = format!("/v1/orders/{id}/{}", op.action());
        let reply = match api.send(Method::POST, &path, Some(token), None, None).await {
            Ok(r) => r,
            Err(_) => {
                self.stats.uncertain += 1;
                self.unreachable = true;
                return;
            }
        };
        let not_applied = |w: &mut Worker| {
            if let Some(t) = w.orders.get_mut(id) {
                t.pending = None;
            }
        };
        match reply.status {
            200 => match Seen::from_order(&reply.body) {
                Some(after) => {
                    if let Err(v) = check_ack(id, &op, &before, &after) {
                        self.violations.push(v);
                    }
                    self.stats.changed += 1;
                    *self
                        .stats
                        .changed_by
                        .entry(op.action().to_owned())
                        .or_default() += 1;
                    self.set_acked(id, after, None);
                }
                None => self
                    .violations
                    .push(format!("{path}: malformed 200: {reply}")),
            },
            409 => {
                self.stats.conflicts += 1;
                not_applied(self);
            }
            422 => {
                self.stats.refusal(&reply);
                not_applied(self);
            }
            429 => {
                self.stats.busy += 1;
                self.need_retry_after(&reply);
                not_applied(self);
            }
            503 => {
                self.need_retry_after(&reply);
                self.stats.uncertain += 1;
            }
            _ => self
                .violations
                .push(format!("{path} on {before}: unexpected {reply}")),
        }
    }

    fn need_retry_after(&mut self, reply: &Reply) {
        if reply.retry_after.is_none() {
            self.violations
                .push(format!("HTTP {} without Retry-After", reply.status));
        }
    }
}
