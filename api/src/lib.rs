//! orderd's HTTP API: axum routes under `/v1`, authentication (OIDC bearer tokens, browser
//! sessions, the development sign-in), the access policy every route passes (roles, denied by
//! default), rate limits, the tenancy guard (the account always comes from the token), RFC 9457
//! errors, CSV imports and the OpenAPI document generated from the route annotations.
//!
//! Talks to the actors' typed handles only: never to storage, never builds actor messages
//! beyond the handle's closures.

pub mod auth;
pub mod client_ip;
pub mod error;
pub mod extract;
pub mod import_csv;
pub mod json;
pub mod oauth;
pub mod oidc;
mod per_account;
pub mod policy;
pub mod rate_limit;
pub mod routes;
pub mod session;
pub mod telemetry;
pub mod token_cache;

use auth::Authenticator;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use orderd_actors::Engine;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

/// Longest `event_stream_max_ms`: a stream holds its slot no longer than an hour.
pub const EVENT_STREAM_MAX_MS: u64 = 3_600_000;
/// Longest `event_stream_recheck_ms`: a stream outlives what admitted it by at most a minute.
pub const EVENT_STREAM_RECHECK_MAX_MS: u64 = 60_000;

/// Most `event_reads_max`: half of tokio's blocking threads (512), so that reads of the event
/// log never take them all.
pub const EVENT_READS_MAX: usize = 256;

/// Longest `event_read_wait_ms`: a request waits at most a minute for its turn to read.
pub const EVENT_READ_WAIT_MAX_MS: u64 = 60_000;

/// Longest `header_read_timeout_ms` and `body_read_timeout_ms`.
pub const READ_TIMEOUT_MAX_MS: u64 = 600_000;

/// A random number for jitter (spreading retries and periodic checks over time). Without
/// randomness it is 0: a pause it spreads then starts its range, still bounded.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Bounds of the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiLimits {
    /// Largest JSON body.
    pub body_max_bytes: usize,
    /// Largest CSV import body.
    pub import_body_max_bytes: usize,
    /// Most rows in one CSV import.
    pub import_rows_max: usize,
    /// Largest page of a list.
    pub page_max: usize,
    /// Rate limits of sign-ins and state-changing requests.
    pub rate_limit: rate_limit::RateLimits,
    /// Server-sent-event streams open at once (above: 503).
    pub event_streams_max: usize,
    /// Server-sent-event streams of one account open at once (above: 429), so that one
    /// account's sessions cannot take the slots of every other.
    pub event_streams_per_account_max: usize,
    /// An event stream ends after this long (at most [`EVENT_STREAM_MAX_MS`]); the client
    /// reconnects with Last-Event-ID and misses nothing.
    pub event_stream_max_ms: u64,
    /// How often an open event stream checks that its credential still admits its caller
    /// (token not expired, session not ended, roles not changed); it ends when not. At most
    /// [`EVENT_STREAM_RECHECK_MAX_MS`].
    pub event_stream_recheck_ms: u64,
    /// Keep-alive comment interval of an idle event stream.
    pub event_stream_keepalive_ms: u64,
    /// Reads of the event log running at once (pages of `/v1/events`, stream replays and
    /// buyer streams' lookups of who placed a page's orders); more wait their turn. A reconnect storm
    /// after a restart then leaves the blocking threads to the accounts' loads. At most
    /// [`EVENT_READS_MAX`].
    pub event_reads_max: usize,
    /// How long a read waits for its turn before the request is answered `503
    /// event_reads_busy` (or, in the middle of a stream's replay, the stream ends for the
    /// client to resume). At most [`EVENT_READ_WAIT_MAX_MS`].
    pub event_read_wait_ms: u64,
    /// A connection's request headers must arrive within this long, also the next request's
    /// on a kept-alive connection: a connection that sends none, or sends them byte by byte,
    /// is closed after it (at most [`READ_TIMEOUT_MAX_MS`]).
    pub header_read_timeout_ms: u64,
    /// A state-changing request's whole body must arrive within this long after its headers
    /// were checked (`408 body_read_timeout` after it). Its time on the wire does not count as
    /// time inside orderd: it takes its place in the daemon-wide in-flight bound only once its
    /// body is in. At most [`READ_TIMEOUT_MAX_MS`].
    pub body_read_timeout_ms: u64,
    /// The most bytes of state-changing requests' bodies held in memory at once, from the
    /// moment a body starts to arrive until its request is answered. A body takes its
    /// declared length (without one, its route's limit) before it is read; when that does not
    /// fit, the request is refused at once (`503 daemon_busy`). At least the larger of
    /// `body_max_bytes` and `import_body_max_bytes`.
    pub body_buffer_bytes_max: usize,
    /// A capture request slower than this is logged at WARN with its order id, account and
    /// latency (0: never).
    pub slow_order_log_ms: u64,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            body_max_bytes: 1 << 20,
            import_body_max_bytes: 64 << 20,
            import_rows_max: 1_000_000,
            page_max: 200,
            rate_limit: rate_limit::RateLimits::default(),
            event_streams_max: 10_000,
            event_streams_per_account_max: 200,
            event_stream_max_ms: 300_000,
            event_stream_recheck_ms: 5_000,
            event_stream_keepalive_ms: 15_000,
            event_reads_max: 4,
            event_read_wait_ms: 10_000,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 60_000,
            body_buffer_bytes_max: 256 << 20,
            slow_order_log_ms: 1_000,
        }
    }
}

/// What every handler and middleware reads. Cloned per request and per middleware layer, so
/// it is one `Arc` (one count to bump) around [`ApiShared`], which it derefs to.
#[derive(Clone)]
pub struct ApiState(Arc<ApiShared>);

impl std::ops::Deref for ApiState {
    type Target = ApiShared;
    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

#[derive(Clone)]
pub struct ApiShared {
    pub engine: Engine,
    pub auth: Arc<Authenticator>,
    /// Peers whose X-Forwarded-For we believe.
    pub trusted_proxies: Arc<Vec<IpAddr>>,
    pub limits: ApiLimits,
    /// The development sign-in (`POST /v1/dev/token`) is mounted only when true.
    pub dev_signin: bool,
    pub rate: Arc<rate_limit::RateLimiter>,
    pub sessions: Arc<session::Sessions>,
    /// Durable events in log order, fed by the daemon's outbox relay (for event streams).
    pub bus: orderd_actors::events::EventBus,
    /// Event streams open now (bounded by `limits.event_streams_max` and
    /// `limits.event_streams_per_account_max`).
    pub event_streams: Arc<routes::events::OpenStreams>,
    /// Who placed which order, for buyers' event streams.
    pub placers: Arc<routes::events::Placers>,
    /// Turns to read the event log (`limits.event_reads_max` at once).
    pub event_reads: Arc<tokio::sync::Semaphore>,
    /// The bodies being read or held (`limits.body_buffer_bytes_max`), in KiB.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Webhook endpoints and dead letters (the daemon delivers).
    pub webhooks: orderd_actors::webhooks::Webhooks,
}

impl ApiState {
    /// State with the rate limiters of `limits`.
    pub fn new(
        engine: Engine,
        auth: Authenticator,
        trusted_proxies: Vec<IpAddr>,
        limits: ApiLimits,
        dev_signin: bool,
    ) -> ApiState {
        ApiState(Arc::new(ApiShared {
            webhooks: orderd_actors::webhooks::Webhooks::new(
                engine.journal.clone(),
                Default::default(),
            ),
            engine,
            auth: Arc::new(auth),
            trusted_proxies: Arc::new(trusted_proxies),
            rate: Arc::new(rate_limit::RateLimiter::new(&limits.rate_limit)),
            event_reads: Arc::new(tokio::sync::Semaphore::new(
                limits.event_reads_max.clamp(1, EVENT_READS_MAX),
            )),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                limits
                    .body_buffer_bytes_max
                    .div_ceil(1024)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            sessions: Arc::new(session::Sessions::new(&session::SessionSettings::default())),
            limits,
            dev_signin,
            bus: Default::default(),
            event_streams: Default::default(),
            placers: Default::default(),
        }))
    }

    /// The webhook registry the daemon delivers from (with its settings).
    pub fn with_webhooks(mut self, webhooks: orderd_actors::webhooks::Webhooks) -> ApiState {
        Arc::make_mut(&mut self.0).webhooks = webhooks;
        self
    }

    /// Browser sessions with these limits.
    pub fn with_sessions(mut self, settings: &session::SessionSettings) -> ApiState {
        Arc::make_mut(&mut self.0).sessions = Arc::new(session::Sessions::new(settings));
        self
    }
}

/// The API's routes with their OpenAPI description.
pub fn api_routes(dev_signin: bool) -> OpenApiRouter<ApiState> {
    let r = OpenApiRouter::new()
        .merge(routes::health::routes())
        .merge(routes::catalog::routes())
        .merge(routes::cart::routes())
        .merge(routes::orders::routes())
        .merge(routes::credit::routes())
        .merge(routes::events::routes())
        .merge(routes::webhooks::routes())
        .merge(routes::admin::routes())
        .merge(routes::users::routes())
        .merge(routes::portal::routes())
        .merge(routes::ops::routes());
    if dev_signin {
        r.merge(routes::dev::routes())
    } else {
        r
    }
}

/// The OpenAPI document of every route (the dev sign-in included, marked as such).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_routes(true).split_for_parts();
    doc.info.title = "orderd".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "B2B order processing: catalog, cart, orders, credit. Errors are RFC 9457 problem+json."
            .into(),
    );
    declare_security(&mut doc);
    doc
}

/// Declares the schemes the operations name (`bearer`) and the browser session that every
/// bearer-authenticated route accepts as well (`session`), so that clients generated from the
/// document send credentials.
fn declare_security(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An access token of the identity provider, or of POST /v1/dev/token in \
                     development mode",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            session::SESSION_COOKIE,
            "The portal's browser session (GET /auth/login); a state-changing request must \
             come from orderd's own origin",
        ))),
    );
    let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
    let session = SecurityRequirement::new("session", Vec::<String>::new());
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            if let Some(security) = &mut op.security {
                if security.contains(&bearer) && !security.contains(&session) {
                    security.push(session.clone());
                }
            }
        }
    }
}

/// `GET /metrics` alone, without authentication: for a separate listen address that only
/// Prometheus can reach (`metrics_listen`). Anything else there is 404.
pub fn metrics_router(engine: Engine) -> Router {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let engine = engine.clone();
            async move { routes::ops::render_metrics(&engine) }
        }),
    )
}

pub fn router(state: ApiState) -> Router {
    let (router, _) = api_routes(state.dev_signin).split_for_parts();
    let doc = Arc::new(openapi());
    let limits = state.limits.clone();
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json((*doc).clone()) }),
        )
        // Deny by default: every matched route passes the access guard first.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            policy::guard,
        ))
        // Each route's body limit is `json::limit_body`'s (below); axum's own default (2 MB)
        // would cut imports short.
        .route_layer(DefaultBodyLimit::disable())
        // Unknown paths and methods get problem+json like every other error.
        .fallback(|uri: axum::http::Uri| async move {
            error::ApiError::NotFound(format!("no route {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error::ApiError::MethodNotAllowed(method.to_string())
        })
        .layer(axum::middleware::from_fn(move |req, next| {
            let limits = limits.clone();
            async move { json::limit_body(req, next, &limits).await }
        }))
        .with_state(state)
}
