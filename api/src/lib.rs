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
pub mod import_csv;
pub mod json;
pub mod oauth;
pub mod oidc;
pub mod policy;
pub mod rate_limit;
pub mod routes;
pub mod session;

use auth::Authenticator;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use orderd_actors::Engine;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

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
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            body_max_bytes: 1 << 20,
            import_body_max_bytes: 64 << 20,
            import_rows_max: 1_000_000,
            page_max: 200,
            rate_limit: rate_limit::RateLimits::default(),
        }
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub engine: Engine,
    pub auth: Arc<Authenticator>,
    /// Peers whose X-Forwarded-For we believe.
    pub trusted_proxies: Arc<Vec<IpAddr>>,
    pub limits: ApiLimits,
    /// The development sign-in (`POST /v1/dev/token`) is mounted only when true.
    pub dev_signin: bool,
    pub rate: Arc<rate_limit::RateLimiter>,
    pub sessions: Arc<session::Sessions>,
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
        ApiState {
            engine,
            auth: Arc::new(auth),
            trusted_proxies: Arc::new(trusted_proxies),
            rate: Arc::new(rate_limit::RateLimiter::new(&limits.rate_limit)),
            sessions: Arc::new(session::Sessions::new(&session::SessionSettings::default())),
            limits,
            dev_signin,
        }
    }

    /// Browser sessions with these limits.
    pub fn with_sessions(mut self, settings: &session::SessionSettings) -> ApiState {
        self.sessions = Arc::new(session::Sessions::new(settings));
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
        .merge(routes::admin::routes())
        .merge(routes::users::routes())
        .merge(routes::portal::routes());
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
    doc
}

pub fn router(state: ApiState) -> Router {
    let (router, _) = api_routes(state.dev_signin).split_for_parts();
    let doc = Arc::new(openapi());
    let import_limit = state.limits.import_body_max_bytes;
    let body_limit = state.limits.body_max_bytes;
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
        .route_layer(DefaultBodyLimit::max(body_limit.max(import_limit)))
        .layer(axum::middleware::from_fn(move |req, next| {
            json::limit_json_body(req, next, body_limit)
        }))
        .with_state(state)
}
