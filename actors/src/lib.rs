//! orderd's actors: one AccountActor per customer account (cart, orders, credit, its users),
//! one WarehouseActor per warehouse (stock), the directory that starts, bounds and supervises
//! accounts, the shared views they publish (free stock, the roles user records grant), and the
//! `Engine` that rebuilds all of it from the journal at start.
//!
//! Depends on the domain (rules) and storage (journal). Must not depend on axum, HTTP or NATS:
//! other crates use the typed handles here and never build actor messages themselves.

pub mod account;
pub mod admission;
pub mod audit;
pub mod catalog;
pub mod directory;
pub mod engine;
pub mod events;
pub mod grants;
pub mod order_book;
pub mod order_reads;
pub mod ordering;
pub mod records;
pub mod users;
pub mod warehouse;
pub mod webhooks;

pub use engine::Engine;

/// The tracing target of the per-order spans (`order` from the API handler through the account
/// actor, and its child `journal.commit`). They are DEBUG, so they cost nothing unless turned
/// on, e.g. `ORDERD_LOG=info,orderd::order=debug`.
pub const ORDER_SPAN_TARGET: &str = "orderd::order";

/// The metrics the actors record through the `metrics` facade (static label sets only), and
/// the journal's, re-exported so the API need not depend on storage.
pub mod metric_names {
    pub use orderd_storage::metric_names::*;
    /// Histogram: seconds of one order evaluation (catalog, prices, stock plan, credit, approval).
    pub const VALIDATION_SECONDS: &str = "orderd_validation_seconds";
    /// Counter: orders that durably entered a state, label `to` (the state).
    pub const ORDER_TRANSITIONS: &str = "orderd_order_transitions_total";
    /// Histogram: seconds from an order change to its event reaching a stage, label `stage`
    /// (`nats`: acknowledged by JetStream; `sse`: sent on a live event stream; `webhook`:
    /// accepted by the receiver). See [`crate::events::record_lag`].
    pub const EVENT_LAG_SECONDS: &str = "orderd_event_lag_seconds";
    /// Gauge: audit records an outbox reader has yet to read, label `reader` (`nats`, `bus`,
    /// `webhooks`: the endpoint furthest behind).
    pub const OUTBOX_DEPTH: &str = "orderd_outbox_depth";
    /// Counter: messages JetStream acknowledged as duplicates of ones its stream holds.
    pub const NATS_DUPLICATES: &str = "orderd_nats_duplicates_total";
    /// Counter: events published cut (without their lines; to a warehouse, with only its
    /// own), being larger than the NATS server takes (each attempt counts).
    pub const NATS_EVENTS_TRIMMED: &str = "orderd_nats_events_trimmed_total";
    /// Counter: failed attempts to create or check a warehouse's durable consumer on NATS,
    /// label `warehouse`.
    pub const NATS_CONSUMER_FAILURES: &str = "orderd_nats_consumer_failures_total";
    /// Counter: webhook delivery attempts, label `outcome` (`delivered`, `failed`, `gone`).
    pub const WEBHOOK_ATTEMPTS: &str = "orderd_webhook_attempts_total";
    /// Counter: webhook events that became dead letters.
    pub const WEBHOOK_DEAD_LETTERED: &str = "orderd_webhook_dead_lettered_total";
    /// Gauge: webhook dead letters stored now (waiting for a replay or a look).
    pub const WEBHOOK_DEAD_LETTERS: &str = "orderd_webhook_dead_letters";
}

/// Carried by [`ActorError::Storage`].
pub use orderd_storage::{StorageError, Unhealthy};
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Every bound of the actor layer, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// How long a caller waits for an actor's answer.
    pub call_timeout_ms: u64,
    /// How long an account's actor waits for the warehouses, all asked at once, to hold an
    /// order's stock (below `call_timeout_ms`, so that the account gives up and undoes the hold
    /// before its own caller gives up on it). Other warehouse calls wait `call_timeout_ms`, and
    /// a shipment waits for its answer (see `WarehouseHandle::ship`).
    pub warehouse_call_timeout_ms: u64,
    /// Requests in flight for one account; above it: busy (HTTP 429).
    pub account_inflight_max: usize,
    /// Requests in flight to account actors in the whole daemon, and state-changing API
    /// requests inside it, each at most this; above it: busy (HTTP 503). While the daemon is
    /// overloaded the bound on changes follows its measured throughput (see [`admission`]).
    pub inflight_total_max: usize,
    /// The lowest bound on changes inside while overloaded.
    pub inflight_total_min: usize,
    /// The time inside the bound on changes aims at while overloaded: the bound is the
    /// measured throughput times this (Little's law), and a window whose changes took this
    /// long on average means a queue.
    pub inflight_latency_target_ms: u64,
    /// An account actor idle this long stops; it is rebuilt on its next message.
    pub account_idle_ms: u64,
    /// Lines per order (at most `orderd_domain::validation::ORDER_LINES_MAX`).
    pub order_lines_max: usize,
    /// Idempotency-Keys are remembered for an account's newest this many orders (placed with a
    /// key or not). A started account actor reads its open orders and this many of its newest
    /// closed ones.
    pub idempotency_keys_max: usize,
    /// Closed order records one page of an order list reads at most: a filter that matches few
    /// of them ends the page early, with a cursor to go on from.
    pub list_scan_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            call_timeout_ms: 10_000,
            warehouse_call_timeout_ms: 2_000,
            account_inflight_max: 64,
            inflight_total_max: 8_192,
            inflight_total_min: 128,
            inflight_latency_target_ms: 50,
            account_idle_ms: 300_000,
            order_lines_max: 500,
            idempotency_keys_max: 10_000,
            list_scan_max: 2_000,
        }
    }
}

impl Limits {
    /// The bounds of the daemon-wide admission bound.
    pub fn admission(&self) -> admission::AdmissionLimits {
        admission::AdmissionLimits {
            min: self.inflight_total_min,
            max: self.inflight_total_max,
            latency_target: Duration::from_millis(self.inflight_latency_target_ms),
        }
    }

    /// Every bad value, not only the first.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = vec![];
        let max = orderd_domain::validation::ORDER_LINES_MAX;
        if self.order_lines_max == 0 || self.order_lines_max > max {
            errs.push(format!("limits.order_lines_max must be 1 to {max}"));
        }
        for (name, zero) in [
            ("call_timeout_ms", self.call_timeout_ms == 0),
            (
                "warehouse_call_timeout_ms",
                self.warehouse_call_timeout_ms == 0,
            ),
            ("account_inflight_max", self.account_inflight_max == 0),
            ("inflight_total_max", self.inflight_total_max == 0),
            ("inflight_total_min", self.inflight_total_min == 0),
            (
                "inflight_latency_target_ms",
                self.inflight_latency_target_ms == 0,
            ),
            ("account_idle_ms", self.account_idle_ms == 0),
            ("idempotency_keys_max", self.idempotency_keys_max == 0),
            ("list_scan_max", self.list_scan_max == 0),
        ] {
            if zero {
                errs.push(format!("limits.{name} must be above 0"));
            }
        }
        if self.warehouse_call_timeout_ms >= self.call_timeout_ms {
            errs.push(
                "limits.warehouse_call_timeout_ms must be below limits.call_timeout_ms".into(),
            );
        }
        if self.inflight_total_min > self.inflight_total_max {
            errs.push("limits.inflight_total_min must not exceed limits.inflight_total_max".into());
        }
        if self.account_inflight_max > self.inflight_total_max {
            errs.push(
                "limits.account_inflight_max must not exceed limits.inflight_total_max".into(),
            );
        }
        errs
    }
}

/// Which bound refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyScope {
    Account,
    Daemon,
}

/// Real failures of the actor layer (business refusals are `Rejection` values instead).
#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("too many requests in flight ({0:?})")]
    Busy(BusyScope),
    #[error("no answer within the call timeout")]
    Timeout,
    #[error("the actor stopped before answering")]
    Gone,
    #[error("no such account")]
    NoSuchAccount,
    #[error("starting an actor failed: {0}")]
    Start(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("invariant broken: {0}")]
    Invariant(String),
}

/// `call` with a timeout, mapping ractor's outcomes to ours.
pub(crate) async fn call<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, ActorError> {
    call_within(actor, Some(timeout), build).await
}

/// `call` that waits for the answer however long it takes: for a request whose effect the
/// caller must know before it goes on (an actor that stops answers `Gone` at once).
pub(crate) async fn call_to_the_end<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, ActorError> {
    call_within(actor, None, build).await
}

async fn call_within<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    timeout: Option<Duration>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, ActorError> {
    match actor.call(build, timeout).await {
        Ok(CallResult::Success(t)) => Ok(t),
        Ok(CallResult::Timeout) => Err(ActorError::Timeout),
        Ok(CallResult::SenderError) | Err(_) => Err(ActorError::Gone),
    }
}
