//! Liveness and readiness.

use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use orderd_actors::Unhealthy;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Ready for traffic: the journal takes writes (no group commit failed, none stuck past
/// `storage.commit_stall_ms`) and answers reads.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready"), (status = 503, description = "not ready: the journal failed, is stalled or cannot be read")))]
async fn readyz(State(s): State<ApiState>) -> (StatusCode, &'static str) {
    match s.engine.journal.health() {
        Err(Unhealthy::Failed) => return (StatusCode::SERVICE_UNAVAILABLE, "journal failed"),
        Err(Unhealthy::Stalled { .. }) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "journal commit stalled")
        }
        Ok(()) => {}
    }
    match s.engine.journal.get(b"meta/ready-probe") {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable"),
    }
}
