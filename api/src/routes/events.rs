//! Replay of events over HTTP: every order change since a sequence number, read from the audit
//! log (which is the outbox, so nothing a consumer missed is ever gone). Portal backends and
//! consumers that fell behind NATS catch up here.

use super::ACCOUNT_ROLES;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::ApiState;
use axum::extract::{Query, State};
use orderd_actors::events;
use orderd_domain::account::Role;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Audit records one request reads at most: a caller whose account has few events among many
/// still gets an answer quickly, and continues from `next`.
pub const EVENTS_SCAN_MAX: usize = 10_000;
/// Events in one answer when `limit` is not given.
pub const EVENTS_PAGE_DEFAULT: usize = 100;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Only events after this sequence number (0: from the start); pass the `next` of the
    /// previous answer.
    pub after: Option<u64>,
    /// Most events in the answer (default 100, at most the API's page limit).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// `{seq, event}`: the event's position in orderd's log and the CloudEvents 1.0 document.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Where the next request continues (`after=next`); equal to `after` when nothing new.
    pub next: u64,
}

/// Events of the caller's account after a sequence number, oldest first (buyer, approver,
/// account_admin; operator: every account).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery), responses((status = 200, body = EventPage)), security(("bearer" = [])))]
async fn list(
    State(s): State<ApiState>,
    auth: Auth,
    Query(q): Query<EventsQuery>,
) -> ApiResult<axum::Json<EventPage>> {
    let operator = auth.0.has(Role::Operator);
    let account = if operator {
        None
    } else {
        auth.require(ACCOUNT_ROLES)?;
        Some(auth.account()?.clone())
    };
    let after = q.after.unwrap_or(0);
    let limit = q
        .limit
        .unwrap_or(EVENTS_PAGE_DEFAULT)
        .clamp(1, s.limits.page_max);
    let journal = s.engine.journal.clone();
    let page = tokio::task::spawn_blocking(move || -> Result<EventPage, ApiError> {
        // Only what is durable: a record past the last flush could still vanish in a crash.
        let durable = journal.audit_head().seq;
        let records = journal
            .audit_after(after, EVENTS_SCAN_MAX)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut page = EventPage {
            events: vec![],
            next: after,
        };
        for r in records.into_iter().take_while(|r| r.seq <= durable) {
            let event = events::from_audit(&r.payload)
                .map_err(|e| ApiError::Internal(format!("audit record {}: {e}", r.seq)))?;
            page.next = r.seq;
            let Some(ev) = event.filter(|ev| account.as_ref().is_none_or(|a| *a == ev.account))
            else {
                continue;
            };
            let rendered: serde_json::Value = serde_json::from_slice(&events::render(&ev))
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            page.events
                .push(serde_json::json!({ "seq": r.seq, "event": rendered }));
            if page.events.len() == limit {
                break;
            }
        }
        Ok(page)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(axum::Json(page))
}
