//! What operators watch: `/metrics` (Prometheus text format), the live dashboard page
//! `/ops/dashboard` and its data `/v1/ops/live` (operator role). A separate, unauthenticated
//! metrics listener for Prometheus is [`crate::metrics_router`].

use crate::error::{ApiError, ApiResult};
use crate::telemetry::{self, live::LiveSnapshot};
use crate::ApiState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use orderd_actors::webhooks::DeadLetterGroup;
use orderd_actors::Engine;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The dashboard page: HTML, CSS and its own canvas charts in one file, no external resources.
const DASHBOARD_HTML: &str = include_str!("ops/dashboard.html");
/// The page runs only its own inline script (named by its SHA-256, so no other inline script
/// or event handler runs) and talks only to orderd.
static DASHBOARD_CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        script_hash(DASHBOARD_HTML)
    )
});

/// The CSP source of the one inline `<script>` of `page`: `sha256-` and the base64 of the
/// SHA-256 of its text.
fn script_hash(page: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(script, rest)| {
            assert!(
                !rest.contains("<script"),
                "the dashboard has one inline script"
            );
            script
        })
        .expect("the dashboard has an inline script");
    let digest = sha2::Sha256::digest(script.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}
/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(live))
        .routes(routes!(dashboard))
}

/// The Prometheus text exposition of every metric (operator). Also served without sign-in on
/// the separate `metrics_listen` address, if configured.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    security(("bearer" = [])))]
async fn metrics(State(s): State<ApiState>) -> Response {
    render_metrics(&s.engine)
}

/// `/metrics`' answer.
pub fn render_metrics(engine: &Engine) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        telemetry::global().render(engine),
    )
        .into_response()
}

/// Queue depths now, next to their limits.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queues {
    pub inflight_total: usize,
    /// State-changing API requests inside now, and the daemon-wide bound on them in force
    /// (see `limits.inflight_latency_target_ms`).
    pub changes_inflight: usize,
    pub inflight_bound: usize,
    /// Whether orderd is overloaded, so that the bound follows its throughput.
    pub overloaded: bool,
    pub inflight_total_max: usize,
    pub inflight_account_max: usize,
    pub account_inflight_max: usize,
    pub account_actors_running: usize,
    pub journal_queue: usize,
    pub commit_groups: u64,
    pub commit_batches: u64,
    pub commit_largest_group: u64,
    /// Audit records each outbox reader has yet to read (`nats`, `bus`, `webhooks`: the
    /// endpoint furthest behind).
    pub outbox_depth: std::collections::BTreeMap<&'static str, u64>,
}

/// Webhook dead letters now: the total and the endpoints with the most, first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    pub total: usize,
    /// At most [`DEAD_LETTER_GROUPS_MAX`] endpoints, most dead letters first.
    #[schema(value_type = Vec<Object>)]
    pub ranked: Vec<DeadLetterGroup>,
}

/// Endpoints the dashboard lists in its dead-letter ranking.
pub const DEAD_LETTER_GROUPS_MAX: usize = 10;

#[derive(Serialize, ToSchema)]
pub struct LiveBody {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub window: LiveSnapshot,
    pub queues: Queues,
    pub dead_letters: DeadLetters,
}

/// The live dashboard's data: per-second capture latency percentiles and throughput of the
/// last 5 minutes, rejections by code, source health, queue depths, outbox depths and webhook
/// dead letters ranked by endpoint (operator).
#[utoipa::path(get, path = "/v1/ops/live", tag = "operations",
    responses((status = 200, body = LiveBody)), security(("bearer" = [])))]
async fn live(State(s): State<ApiState>) -> ApiResult<axum::Json<LiveBody>> {
    let engine = &s.engine;
    let stats = engine.journal.stats();
    let queues = Queues {
        inflight_total: engine.accounts.inflight(),
        changes_inflight: engine.admission.inflight(),
        inflight_bound: engine.admission.bound(std::time::Instant::now()),
        overloaded: engine.admission.overloaded(),
        inflight_total_max: engine.limits.inflight_total_max,
        inflight_account_max: engine.accounts.inflight_account_max(),
        account_inflight_max: engine.limits.account_inflight_max,
        account_actors_running: engine.accounts.running(),
        journal_queue: engine.journal.queued(),
        commit_groups: stats.groups,
        commit_batches: stats.batches,
        commit_largest_group: stats.largest_group,
        outbox_depth: engine.outbox_depths().into_iter().collect(),
    };
    let (total, ranked) = s
        .webhooks
        .dead_letter_ranking(DEAD_LETTER_GROUPS_MAX)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(axum::Json(LiveBody {
        window: telemetry::global().live.snapshot(),
        queues,
        dead_letters: DeadLetters { total, ranked },
    }))
}

/// The live dashboard for operators: capture latency percentiles and throughput of the last
/// minutes, queue depths, rejections, source health (operator; HTML, no external resources).
#[utoipa::path(get, path = "/ops/dashboard", tag = "operations",
    responses((status = 200, description = "HTML page", content_type = "text/html")),
    security(("bearer" = [])))]
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}
