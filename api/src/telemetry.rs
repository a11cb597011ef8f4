//! Metrics of the HTTP layer and the process-wide Prometheus recorder.
//!
//! - [`global`] installs the `metrics` recorder (metrics-exporter-prometheus) once per process
//!   and keeps pre-registered handles for the request path: recording an observation is an
//!   atomic push into the exporter's histogram plus one short, per-second mutex of the
//!   [`live`] window. No allocation and no registry lookup per observation: every label set is
//!   fixed when the handles are made (channel x outcome, problem code, refusal kind).
//! - The storage and actor crates record through the `metrics` facade themselves (once per
//!   group commit, once per evaluation); their names are in `orderd_actors::metric_names` and
//!   `orderd_actors::metric_names`.
//! - Gauges (in-flight counts, running actors, journal queue) are read when scraped, so they
//!   cost the request path nothing.
//!
//! Labels never carry account, user or order ids.

pub mod live;

use crate::error::ApiError;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orderd_actors::engine::ImportRefusal;
use orderd_actors::Engine;
use orderd_domain::order::Channel;
use orderd_domain::validation::{Problem, ProblemCode};
use std::sync::OnceLock;
use std::time::Duration;

/// Histogram: seconds from the capture handler's start to its answer, labels `channel`, `outcome`.
pub const CAPTURE_SECONDS: &str = "orderd_capture_seconds";
/// Counter: problems of refused (422) requests, label `code` (the validation problem code).
pub const REJECTIONS: &str = "orderd_rejections_total";
/// Counter: answers 429 and 503, labels `status` and `code`.
pub const REFUSALS: &str = "orderd_http_refusals_total";
/// Gauge: requests in flight to account actors, in total.
pub const INFLIGHT: &str = "orderd_inflight_requests";
/// Gauge: 1 while orderd is overloaded (a standing queue: see `orderd_actors::admission`).
pub const OVERLOADED: &str = "orderd_overloaded";
/// Gauge: the bound on requests in flight in force now (`limits.inflight_total_max`, or while
/// overloaded measured throughput × latency target, at least `limits.inflight_total_min`).
pub const INFLIGHT_BOUND: &str = "orderd_inflight_bound";
/// Gauge: the most requests in flight for one account (the mailbox depth of the busiest actor).
pub const INFLIGHT_ACCOUNT_MAX: &str = "orderd_inflight_account_max";
/// Gauge: account actors running.
pub const ACCOUNT_ACTORS: &str = "orderd_account_actors_running";
/// Counter: bearer access tokens of an identity provider checked, label `result` (`verified`:
/// signature and claims checked in full; `cached`: served from the verified-token cache;
/// `refused`).
pub const TOKEN_CHECKS: &str = "orderd_token_checks_total";
/// Gauge: batches waiting for the journal's committer.
pub const JOURNAL_QUEUE: &str = "orderd_storage_commit_queue_depth";
/// How often the exporter's histogram samples are folded into their buckets even when nobody
/// scrapes, so unscraped samples never pile up.
pub const UPKEEP_INTERVAL_MS: u64 = 5_000;

/// Every channel, in the order of the label tables.
pub const CHANNELS: [Channel; 6] = [
    Channel::Portal,
    Channel::Api,
    Channel::Csv,
    Channel::Edi,
    Channel::Cxml,
    Channel::Nats,
];

pub fn channel_index(c: Channel) -> usize {
    match c {
        Channel::Portal => 0,
        Channel::Api => 1,
        Channel::Csv => 2,
        Channel::Edi => 3,
        Channel::Cxml => 4,
        Channel::Nats => 5,
    }
}

pub fn channel_name(c: Channel) -> &'static str {
    ["portal", "api", "csv", "edi", "cxml", "nats"][channel_index(c)]
}

/// Every validation problem code, in the order of the label table.
pub const PROBLEM_CODES: [ProblemCode; 16] = [
    ProblemCode::EmptyOrder,
    ProblemCode::TooManyLines,
    ProblemCode::UnknownSku,
    ProblemCode::NotVisible,
    ProblemCode::Discontinued,
    ProblemCode::Blocked,
    ProblemCode::InvalidQuantity,
    ProblemCode::BelowMinimum,
    ProblemCode::NotPackMultiple,
    ProblemCode::NoPrice,
    ProblemCode::PriceChanged,
    ProblemCode::OutOfStock,
    ProblemCode::CreditLimitExceeded,
    ProblemCode::UnknownShipTo,
    ProblemCode::UnknownWarehouse,
    ProblemCode::InvalidField,
];

fn problem_index(code: ProblemCode) -> usize {
    // 16 comparisons at most, no allocation.
    PROBLEM_CODES
        .iter()
        .position(|c| *c == code)
        .unwrap_or(PROBLEM_CODES.len() - 1)
}

/// How a capture request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new order was stored (201).
    Accepted,
    /// The Idempotency-Key named an earlier order (200).
    Replayed,
    /// Refused with problems (422).
    Rejected,
    /// Refused for load: 429 or 503.
    Refused,
    /// Anything else (400, 404, 409, 500).
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Accepted,
        Outcome::Replayed,
        Outcome::Rejected,
        Outcome::Refused,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Replayed => "replayed",
            Outcome::Rejected => "rejected",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The outcome of a capture handler's result (`replayed` from its `Ok` value).
    pub fn of<T>(result: &Result<T, ApiError>, replayed: impl FnOnce(&T) -> bool) -> Outcome {
        match result {
            Ok(t) if replayed(t) => Outcome::Replayed,
            Ok(_) => Outcome::Accepted,
            Err(ApiError::Invalid(_) | ApiError::IdempotencyMismatch(_)) => Outcome::Rejected,
            Err(
                ApiError::TooManyRequests
                | ApiError::RateLimited { .. }
                | ApiError::Overloaded
                | ApiError::Unavailable(_),
            ) => Outcome::Refused,
            Err(_) => Outcome::Failed,
        }
    }
}

/// The recorder's handle and the pre-registered metrics of the request path.
pub struct Telemetry {
    prometheus: PrometheusHandle,
    capture: [[Histogram; Outcome::ALL.len()]; CHANNELS.len()],
    rejections: [Counter; PROBLEM_CODES.len()],
    busy_429: Counter,
    rate_limited_429: Counter,
    unavailable_503: Counter,
    daemon_busy_503: Counter,
    reads_busy_503: Counter,
    /// Per-second figures of the last minutes, for the operators' dashboard.
    pub live: live::LiveWindow,
}

static GLOBAL: OnceLock<Telemetry> = OnceLock::new();

/// The process's telemetry, installing the Prometheus recorder on first use. If another
/// `metrics` recorder was installed first (an embedding program), orderd's handles still work
/// but `/metrics` shows only what reaches this recorder; that is logged once.
pub fn global() -> &'static Telemetry {
    GLOBAL.get_or_init(Telemetry::install)
}

const LATENCY_BUCKETS_S: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.015, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Event lag: like capture latency, plus minutes for events that waited out an outage.
const EVENT_LAG_BUCKETS_S: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];
const SHORT_BUCKETS_S: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];
const GROUP_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

impl Telemetry {
    fn install() -> Telemetry {
        let buckets = [
            (CAPTURE_SECONDS, LATENCY_BUCKETS_S),
            (
                orderd_actors::metric_names::EVENT_LAG_SECONDS,
                EVENT_LAG_BUCKETS_S,
            ),
            (
                orderd_actors::metric_names::VALIDATION_SECONDS,
                SHORT_BUCKETS_S,
            ),
            (
                orderd_actors::metric_names::COMMIT_FLUSH_SECONDS,
                SHORT_BUCKETS_S,
            ),
            (
                orderd_actors::metric_names::COMMIT_APPLY_SECONDS,
                SHORT_BUCKETS_S,
            ),
            (
                orderd_actors::metric_names::COMMIT_GROUP_SIZE,
                GROUP_SIZE_BUCKETS,
            ),
        ];
        let mut builder = PrometheusBuilder::new();
        for (name, values) in buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), values)
                .expect("bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        let prometheus = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; /metrics shows only orderd's own request metrics");
        }
        describe();
        // Handles are made once, here, after the recorder is installed.
        let capture = CHANNELS.map(|c| {
            Outcome::ALL.map(|o| {
                metrics::histogram!(CAPTURE_SECONDS, "channel" => channel_name(c), "outcome" => o.as_str())
            })
        });
        let rejections =
            PROBLEM_CODES.map(|code| metrics::counter!(REJECTIONS, "code" => code.as_str()));
        Telemetry {
            prometheus,
            capture,
            rejections,
            busy_429: metrics::counter!(REFUSALS, "status" => "429", "code" => "account_busy"),
            rate_limited_429: metrics::counter!(REFUSALS, "status" => "429", "code" => "rate_limited"),
            unavailable_503: metrics::counter!(REFUSALS, "status" => "503", "code" => "unavailable"),
            daemon_busy_503: metrics::counter!(REFUSALS, "status" => "503", "code" => "daemon_busy"),
            reads_busy_503: metrics::counter!(REFUSALS, "status" => "503", "code" => "event_reads_busy"),
            live: live::LiveWindow::new(),
        }
    }

    /// One capture request: its latency by channel and outcome.
    pub fn record_capture(&self, channel: Channel, outcome: Outcome, elapsed: Duration) {
        let ch = channel_index(channel);
        self.capture[ch][outcome.index()].record(elapsed.as_secs_f64());
        self.live.record_capture(ch, outcome, elapsed);
    }

    /// An error answer: 429/503 and the problems of a 422 are counted.
    pub fn record_error(&self, error: &ApiError) {
        match error {
            ApiError::TooManyRequests => {
                self.busy_429.increment(1);
                self.live.record_status(429);
            }
            ApiError::RateLimited { .. } => {
                self.rate_limited_429.increment(1);
                self.live.record_status(429);
            }
            ApiError::Unavailable(_) => {
                self.unavailable_503.increment(1);
                self.live.record_status(503);
            }
            ApiError::Overloaded => {
                self.daemon_busy_503.increment(1);
                self.live.record_status(503);
            }
            ApiError::ReadsBusy => {
                self.reads_busy_503.increment(1);
                self.live.record_status(503);
            }
            ApiError::Invalid(problems) => self.record_problems(problems),
            // Counted as the error that stopped it (a full queue as any other 503).
            ApiError::ImportRefused(ImportRefusal {
                interrupted: Some(i),
                ..
            }) => self.record_error(&crate::error::interrupted_as(i)),
            _ => {}
        }
    }

    fn record_problems(&self, problems: &[Problem]) {
        for p in problems {
            let i = problem_index(p.code);
            self.rejections[i].increment(1);
            self.live.record_problem(i);
        }
    }

    /// Folds histogram samples into their buckets (the exporter keeps raw samples until then).
    pub fn upkeep(&self) {
        self.prometheus.run_upkeep();
    }

    /// The Prometheus text exposition, with the gauges read from `engine` now.
    pub fn render(&self, engine: &Engine) -> String {
        let gauge = |name: &'static str, v: usize| {
            // Counts far below 2^52 are exact as f64.
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(name).set(v as f64);
        };
        gauge(INFLIGHT, engine.accounts.inflight());
        gauge(
            INFLIGHT_BOUND,
            engine.admission.bound(std::time::Instant::now()),
        );
        gauge(OVERLOADED, usize::from(engine.admission.overloaded()));
        gauge(INFLIGHT_ACCOUNT_MAX, engine.accounts.inflight_account_max());
        gauge(ACCOUNT_ACTORS, engine.accounts.running());
        gauge(JOURNAL_QUEUE, engine.journal.queued());
        for (reader, depth) in engine.outbox_depths() {
            // Depths far below 2^52 are exact as f64.
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!(orderd_actors::metric_names::OUTBOX_DEPTH, "reader" => reader)
                .set(depth as f64);
        }
        self.upkeep();
        self.prometheus.render()
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        CAPTURE_SECONDS,
        Unit::Seconds,
        "capture handler latency (POST /v1/orders, draft submit) by channel and outcome"
    );
    describe_counter!(
        REJECTIONS,
        "problems of refused (422) requests by validation code"
    );
    describe_counter!(REFUSALS, "429 and 503 answers");
    describe_counter!(
        TOKEN_CHECKS,
        "identity-provider access tokens checked: verified in full, served from the verified-token cache, or refused"
    );
    describe_gauge!(INFLIGHT, "requests in flight to account actors");
    describe_gauge!(
        INFLIGHT_BOUND,
        "bound on requests in flight now: the maximum, or while overloaded measured throughput times the latency target (above: 503)"
    );
    describe_gauge!(
        OVERLOADED,
        "1 while orderd is overloaded (a standing queue of requests)"
    );
    describe_gauge!(
        INFLIGHT_ACCOUNT_MAX,
        "most requests in flight for one account (busiest actor's queue)"
    );
    describe_gauge!(ACCOUNT_ACTORS, "account actors running");
    describe_gauge!(JOURNAL_QUEUE, "batches waiting for the group committer");
    describe_histogram!(
        orderd_actors::metric_names::VALIDATION_SECONDS,
        Unit::Seconds,
        "one order evaluation: catalog, prices, stock plan, credit, approval"
    );
    describe_counter!(
        orderd_actors::metric_names::ORDER_TRANSITIONS,
        "orders that durably entered a state"
    );
    describe_histogram!(
        orderd_actors::metric_names::COMMIT_GROUP_SIZE,
        Unit::Count,
        "batches per group commit"
    );
    describe_histogram!(
        orderd_actors::metric_names::COMMIT_FLUSH_SECONDS,
        Unit::Seconds,
        "group commit flush plus fdatasync"
    );
    describe_histogram!(
        orderd_actors::metric_names::COMMIT_APPLY_SECONDS,
        Unit::Seconds,
        "group commit sled apply_batch"
    );
    describe_counter!(
        orderd_actors::metric_names::COMMIT_FAILURES,
        "group commits that failed"
    );
    describe_histogram!(
        orderd_actors::metric_names::EVENT_LAG_SECONDS,
        Unit::Seconds,
        "order change to its event acknowledged by NATS, sent on a live SSE stream, or accepted by a webhook receiver (label stage)"
    );
    describe_gauge!(
        orderd_actors::metric_names::OUTBOX_DEPTH,
        "audit records an outbox reader has yet to read (label reader: nats, bus, webhooks = furthest-behind endpoint)"
    );
    describe_counter!(
        orderd_actors::metric_names::NATS_DUPLICATES,
        "messages JetStream acknowledged as duplicates (expected only for messages sent again after a failed round or a restart)"
    );
    describe_counter!(
        orderd_actors::metric_names::NATS_EVENTS_TRIMMED,
        "events published cut (without their lines; to a warehouse, with only its own), being larger than the NATS server takes (each attempt counts)"
    );
    describe_counter!(
        orderd_actors::metric_names::NATS_CONSUMER_FAILURES,
        "failed attempts to create or check a warehouse's durable consumer on NATS (label warehouse); its events still go to the stream"
    );
    describe_counter!(
        orderd_actors::metric_names::WEBHOOK_ATTEMPTS,
        "webhook delivery attempts by outcome (delivered, failed, gone)"
    );
    describe_counter!(
        orderd_actors::metric_names::WEBHOOK_DEAD_LETTERED,
        "webhook events that became dead letters"
    );
    describe_gauge!(
        orderd_actors::metric_names::WEBHOOK_DEAD_LETTERS,
        "webhook dead letters stored now"
    );
}
