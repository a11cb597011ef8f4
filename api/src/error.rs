//! `ApiError`: every failure a client can see, as RFC 9457 problem+json with a stable `code`.
//! The internal cause of a 5xx is logged once, here, and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orderd_actors::engine::{ImportRefusal, Interrupted, Interruption};
use orderd_actors::StorageError;
use orderd_actors::{ActorError, BusyScope};
use orderd_domain::rejection::Rejection;
use orderd_domain::validation::{Problem, ProblemCode};
use serde::Serialize;

/// Seconds a client should wait after 429/503.
pub const RETRY_AFTER_S: u32 = 1;
/// `Retry-After` of `event_reads_busy`: its requests waited `api.event_read_wait_ms` already,
/// and a reconnect storm should not come straight back.
pub const READS_BUSY_RETRY_AFTER_S: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request carries no credentials at all.
    #[error("missing bearer token")]
    MissingToken,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0} is not allowed on this path")]
    MethodNotAllowed(String),
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// The body is above the route's limit (413 Content Too Large).
    #[error("{0}")]
    TooLarge(String),
    /// The body did not arrive within `api.body_read_timeout_ms` (408; the connection is
    /// closed).
    #[error("{0}")]
    BodyTimeout(String),
    /// The body is not of the media type the route reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request has {} problem(s)", .0.len())]
    Invalid(Vec<Problem>),
    /// An import refused, perhaps after storing part of its file: its errors become the
    /// `problems`, and the accounts or warehouses it stored the body's `stored`. One that
    /// orderd's state interrupted (load, a shutdown, a fault) answers as that would, 503 or
    /// 500, with its `stored` all the same.
    #[error("{}", import_detail(.0))]
    ImportRefused(ImportRefusal),
    #[error("{0}")]
    IdempotencyMismatch(String),
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` named a version the order is no longer at.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("too many requests for this account")]
    TooManyRequests,
    /// The account has as many event streams open as it may.
    #[error("{0}")]
    TooManyStreams(String),
    /// The daemon-wide in-flight bound refused the request. Not logged one by one: during a
    /// spike there are thousands a second (`orderd_http_refusals_total` counts them).
    #[error("orderd is serving all the requests it can within its latency target; retry shortly")]
    Overloaded,
    /// No turn to read the event log came within `api.event_read_wait_ms`. Not logged one by
    /// one either: a reconnect storm makes many.
    #[error("every turn to read the event log is taken (api.event_reads_max); retry shortly")]
    ReadsBusy,
    #[error("rate limit of this {} reached; retry after {retry_after_s} s", scope.noun())]
    RateLimited {
        scope: crate::rate_limit::Scope,
        retry_after_s: u32,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub problems: Vec<Problem>,
    /// An import refused after storing part of its file: the accounts or warehouses stored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<String>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    /// A `422` with one `invalid_field` problem naming `field`.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![
            Problem::new(ProblemCode::InvalidField, message).field(field)
        ])
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MissingToken | ApiError::Unauthorized(_) => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_read_timeout"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::ImportRefused(r) => match r.interrupted.as_ref().map(interrupted_as) {
                None => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
                Some(same) => same.parts(),
            },
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::IdempotencyMismatch(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "order_changed"),
            ApiError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "account_busy"),
            ApiError::TooManyStreams(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "daemon_busy"),
            ApiError::ReadsBusy => (StatusCode::SERVICE_UNAVAILABLE, "event_reads_busy"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::telemetry::global().record_error(&self);
        let (status, code) = self.parts();
        let missing_token = matches!(self, ApiError::MissingToken);
        let detail = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                "an internal error occurred; it has been logged".to_owned()
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(reason = %cause, "answering 503");
                cause.clone()
            }
            ApiError::ImportRefused(r) if r.interruption() == Some(Interruption::Failed) => {
                tracing::error!(error = %r, "import failed");
                format!(
                    "an internal error occurred; it has been logged; {}",
                    r.stored_note()
                )
            }
            other => other.to_string(),
        };
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_s, .. } => *retry_after_s,
            ApiError::ReadsBusy => READS_BUSY_RETRY_AFTER_S,
            _ => RETRY_AFTER_S,
        };
        let (problems, stored) = match self {
            ApiError::Invalid(p) => (p, vec![]),
            // What interrupted an import is in the detail; the problems are its rows'.
            ApiError::ImportRefused(r) => (
                r.errors
                    .into_iter()
                    .map(|e| Problem::new(ProblemCode::InvalidField, e))
                    .collect(),
                r.stored,
            ),
            _ => (vec![], vec![]),
        };
        let body = ProblemBody {
            kind: format!("urn:orderd:problem:{code}"),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            problems,
            stored,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // RFC 9110 section 15.5.9: the rest of the body may still come; the connection
            // cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 section 3: a request without credentials gets the challenge alone.
            let challenge = if missing_token {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        resp
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        match r {
            Rejection::Invalid(p) => ApiError::Invalid(p),
            Rejection::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            Rejection::Transition(t) => ApiError::Conflict(t.to_string()),
            Rejection::Forbidden(why) => ApiError::Forbidden(why),
            Rejection::IdempotencyMismatch(k) => ApiError::IdempotencyMismatch(format!(
                "Idempotency-Key {k} was already used with a different request body"
            )),
            Rejection::Cart(e) => {
                use orderd_domain::cart::CartError;
                let problem = match e {
                    CartError::NoSuchLine(_) => return ApiError::NotFound(e.to_string()),
                    CartError::Full => Problem::new(ProblemCode::TooManyLines, e.to_string()),
                    CartError::Quantity => {
                        Problem::new(ProblemCode::InvalidQuantity, e.to_string()).field("qty")
                    }
                    CartError::Note => return ApiError::invalid_field("note", e.to_string()),
                };
                ApiError::Invalid(vec![problem])
            }
            Rejection::Conflict(why) => ApiError::Conflict(why),
            Rejection::Stale(why) => ApiError::PreconditionFailed(why),
        }
    }
}

impl From<ActorError> for ApiError {
    fn from(e: ActorError) -> ApiError {
        match e {
            ActorError::Busy(BusyScope::Account) => ApiError::TooManyRequests,
            ActorError::Busy(BusyScope::Daemon) => ApiError::Overloaded,
            ActorError::NoSuchAccount => ApiError::NotFound("account not found".into()),
            // Said for every route: only an order placed with an Idempotency-Key is safe to
            // send again as it is; any other change (a cart line added) may have applied.
            ActorError::Timeout => ApiError::Unavailable("no answer within the call timeout; the change may still apply: read the current state before retrying (an order with the same Idempotency-Key may be sent again)".into()),
            ActorError::Gone => ApiError::Unavailable("the account was restarting; the change may have applied: read the current state before retrying (an order with the same Idempotency-Key may be sent again)".into()),
            ActorError::Storage(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> ApiError {
        match e {
            // A full commit queue is load, like the in-flight bound; a closed journal is a
            // daemon shutting down. Neither is a fault of the server: the client retries.
            StorageError::Overloaded => ApiError::Overloaded,
            StorageError::Closed => ApiError::Unavailable(
                "orderd is shutting down; retry shortly (an order with the same Idempotency-Key)"
                    .into(),
            ),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The answer an import interrupted by `i` gives, as any other request stopped by the same:
/// its status, code and counters (the import keeps its own detail and `stored`).
pub fn interrupted_as(i: &Interrupted) -> ApiError {
    match i.kind {
        Interruption::Busy => ApiError::Overloaded,
        Interruption::AccountBusy => ApiError::TooManyRequests,
        Interruption::Unavailable => ApiError::Unavailable(i.cause.clone()),
        Interruption::Failed => ApiError::Internal(i.cause.clone()),
    }
}

/// The detail of a refused import: how many problems its rows had, or what interrupted it;
/// then what it stored.
fn import_detail(r: &ImportRefusal) -> String {
    match &r.interrupted {
        None => format!(
            "the import has {} problem(s); {}",
            r.errors.len(),
            r.stored_note()
        ),
        Some(i) => format!(
            "the import stopped before its end: {}; {}",
            i.cause,
            r.stored_note()
        ),
    }
}

pub use orderd_domain::ids::echo;

/// Lets handlers write `engine_call.await??`.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: ActorError) -> (StatusCode, Option<HeaderValue>) {
        let resp = ApiError::from(e).into_response();
        (
            resp.status(),
            resp.headers().get(header::RETRY_AFTER).cloned(),
        )
    }

    #[test]
    fn load_and_shutdown_answer_503_with_retry_after_and_faults_500() {
        for (error, status) in [
            (ActorError::Busy(BusyScope::Account), 429),
            (ActorError::Busy(BusyScope::Daemon), 503),
            (ActorError::Storage(StorageError::Overloaded), 503),
            (ActorError::Storage(StorageError::Closed), 503),
            (ActorError::Timeout, 503),
        ] {
            let shown = format!("{error:?}");
            let (got, retry_after) = answer(error);
            assert_eq!(got.as_u16(), status, "{shown}");
            assert!(retry_after.is_some(), "{shown} says when to retry");
        }
        let corrupt = StorageError::Corrupt {
            key: "ord/x".into(),
            reason: "bad".into(),
        };
        let (got, retry_after) = answer(ActorError::Storage(corrupt));
        assert_eq!(got, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(retry_after.is_none());
    }
}
