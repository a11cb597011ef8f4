//! Webhook endpoints and dead letters.
//!
//! - An account_admin registers, lists, rotates, enables again (after a 410 disabled it) and
//!   deletes its own account's endpoints. The secret is in the answer of the registration or
//!   rotation only.
//! - An account_admin lists and replays its own account's dead letters; an operator every
//!   account's.
//!
//! A URL must be `http` or `https` and must not resolve to a loopback, link-local or private
//! address unless `webhooks.allow_private` is set (the delivery task checks again before every
//! request, since DNS can change). Another account's endpoint or dead letter is a 404.

use crate::auth::Auth;
use crate::error::{echo, ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::json::Json;
use crate::ApiState;
use axum::extract::State;
use axum::http::StatusCode;
use orderd_actors::webhooks::{self, DeadLetter, EndpointView, WebhookError};
use orderd_domain::account::Role;
use orderd_domain::ids::AccountId;
use orderd_domain::validation::{Problem, ProblemCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// How long resolving an endpoint's host may take at registration.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(register, list))
        .routes(routes!(delete))
        .routes(routes!(rotate))
        .routes(routes!(enable))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> ApiError {
        match e {
            WebhookError::NotFound => ApiError::NotFound("not found".into()),
            WebhookError::Limit(why) => {
                ApiError::Invalid(vec![Problem::new(ProblemCode::InvalidField, why)])
            }
            WebhookError::Conflict(why) => ApiError::Conflict(why),
            WebhookError::BadTarget(why) => ApiError::invalid_field("endpoint", why),
            WebhookError::Storage(e) => e.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// Where deliveries go (`http` or `https`).
    pub url: String,
    /// `*` or event types such as `orderd.order.allocated`.
    pub event_types: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointOut {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub endpoint: EndpointView,
    /// `whsec_...`: shown only in this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    #[schema(value_type = Vec<Object>)]
    pub endpoints: Vec<EndpointView>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    #[schema(value_type = Vec<Object>)]
    pub dead_letters: Vec<DeadLetter>,
    /// Where the next page starts (`cursor=`); null after the last page.
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
pub struct DeadLetterQuery {
    /// Most dead letters in the answer (default 50, at most the API's page limit).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Checks a URL and where it resolves to now; the message names what is wrong.
pub async fn check_url(url: &str, s: &webhooks::WebhookSettings) -> Result<(), String> {
    if url.len() > s.url_bytes_max {
        return Err(format!(
            "the URL is longer than {} bytes (webhooks.url_bytes_max)",
            s.url_bytes_max
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the URL must be http or https".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    let host = parsed
        .host_str()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    if s.allow_private {
        return Ok(());
    }
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("resolving {host} took too long"))?
    .map_err(|e| format!("{host} does not resolve: {e}"))?
    .collect();
    for a in &addrs {
        if let Some(why) = webhooks::refused_address(a.ip()) {
            return Err(format!(
                "{host} resolves to {}, a {why} address; such targets are refused unless webhooks.allow_private is set",
                a.ip()
            ));
        }
    }
    if addrs.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    Ok(())
}

fn own_account(auth: &Auth) -> ApiResult<AccountId> {
    auth.require(&[Role::AccountAdmin])?;
    Ok(auth.account()?.clone())
}

/// Register a webhook endpoint of the caller's account; the answer holds its secret, shown
/// only here (account_admin).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewEndpoint,
    responses((status = 201, body = EndpointOut), (status = 422)), security(("bearer" = [])))]
async fn register(
    State(s): State<ApiState>,
    auth: Auth,
    Json(body): Json<NewEndpoint>,
) -> ApiResult<(StatusCode, axum::Json<EndpointOut>)> {
    let account = own_account(&auth)?;
    let settings = s.webhooks.settings();
    let mut types = body.event_types;
    // Bounded before sorting: the body limit alone would let a list of 100,000 names through.
    if types.len() <= settings.event_types_max {
        types.sort();
        types.dedup();
    }
    if types.is_empty() || types.len() > settings.event_types_max {
        return Err(ApiError::invalid_field(
            "event_types",
            format!(
                "name 1 to {} event types (webhooks.event_types_max)",
                settings.event_types_max
            ),
        ));
    }
    if let Some(t) = types.iter().find(|t| !webhooks::event_type_known(t)) {
        return Err(ApiError::invalid_field(
            "event_types",
            format!(
                "unknown event type {:?}: use \"*\" or orderd.order.<state>",
                echo(t)
            ),
        ));
    }
    check_url(&body.url, settings)
        .await
        .map_err(|why| ApiError::invalid_field("url", why))?;
    let (endpoint, secret) = s
        .webhooks
        .register(&auth.0, &account, body.url, types)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(EndpointOut {
            endpoint,
            secret: Some(secret.expose().to_owned()),
        }),
    ))
}

/// The caller's account's endpoints, without secrets (account_admin).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = EndpointList)), security(("bearer" = [])))]
async fn list(State(s): State<ApiState>, auth: Auth) -> ApiResult<axum::Json<EndpointList>> {
    let account = own_account(&auth)?;
    let endpoints = s.webhooks.list(Some(&account)).await?;
    Ok(axum::Json(EndpointList { endpoints }))
}

/// Delete an endpoint of the caller's account, with its dead letters (account_admin).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204), (status = 404)), security(("bearer" = [])))]
async fn delete(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let account = own_account(&auth)?;
    s.webhooks.delete(&auth.0, &account, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret for an endpoint; the previous one keeps signing (both signatures are sent)
/// for `webhooks.secret_overlap_ms` (account_admin).
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = EndpointOut), (status = 404)), security(("bearer" = [])))]
async fn rotate(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<EndpointOut>> {
    let account = own_account(&auth)?;
    let (endpoint, secret) = s.webhooks.rotate(&auth.0, &account, &id).await?;
    Ok(axum::Json(EndpointOut {
        endpoint,
        secret: Some(secret.expose().to_owned()),
    }))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnableBody {
    /// Resume from the head of the log: the events committed while the endpoint was disabled
    /// are not sent (default: they are, in log order, before any new one).
    #[serde(default)]
    pub skip_missed: bool,
}

/// Resume deliveries to an endpoint a receiver's 410 disabled (its URL works again): from
/// where they stopped, every event since in log order, or with `skip_missed` from now on.
/// Its dead letters stay and can be replayed to it. Enabling an active endpoint changes
/// nothing (account_admin).
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks",
    params(("id" = String, Path)), request_body = EnableBody,
    responses((status = 200, body = EndpointOut), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn enable(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Option<Json<EnableBody>>,
) -> ApiResult<axum::Json<EndpointOut>> {
    let account = own_account(&auth)?;
    let skip_missed = body.is_some_and(|Json(b)| b.skip_missed);
    let ep = s
        .webhooks
        .endpoint(&id)
        .await?
        .filter(|e| e.account == account)
        .ok_or_else(|| ApiError::NotFound("not found".into()))?;
    // Checked again as at registration (DNS may have moved since, or the range be refused
    // now), when there is something to enable.
    if ep.disabled.is_some() {
        check_url(&ep.url, s.webhooks.settings())
            .await
            .map_err(|why| ApiError::invalid_field("url", why))?;
    }
    let endpoint = s
        .webhooks
        .enable(&auth.0, &account, &id, skip_missed)
        .await?;
    Ok(axum::Json(EndpointOut {
        endpoint,
        secret: None,
    }))
}

/// The account whose dead letters the caller sees (`None`: every account, for an operator).
fn dead_letter_scope(auth: &Auth) -> ApiResult<Option<AccountId>> {
    if auth.0.has(Role::Operator) {
        return Ok(None);
    }
    own_account(auth).map(Some)
}

/// Events that could not be delivered, oldest first, a page at a time (account_admin: own
/// account; operator: every account).
#[utoipa::path(get, path = "/v1/webhooks/dead-letters", tag = "webhooks", params(DeadLetterQuery),
    responses((status = 200, body = DeadLetterList)), security(("bearer" = [])))]
async fn dead_letters(
    State(s): State<ApiState>,
    auth: Auth,
    Query(q): Query<DeadLetterQuery>,
) -> ApiResult<axum::Json<DeadLetterList>> {
    let account = dead_letter_scope(&auth)?;
    let limit =
        crate::extract::page_limit(q.limit, crate::extract::PAGE_DEFAULT, s.limits.page_max)?;
    // One more than the page tells whether another page follows.
    let mut dead_letters = s
        .webhooks
        .dead_letters(account.as_ref(), q.cursor.as_deref(), limit + 1)
        .await?;
    let next_cursor = crate::extract::cut_page(&mut dead_letters, limit, |d| d.id.clone());
    Ok(axum::Json(DeadLetterList {
        dead_letters,
        next_cursor,
    }))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Another endpoint of the dead letter's account to send it to (it then belongs to that
    /// endpoint); absent: its own endpoint, which must still be active.
    pub endpoint: Option<String>,
}

/// Send a dead letter again, before the endpoint's next event and with a live event's
/// retries (live events go on while it waits out a failed attempt); delivered, it leaves the
/// list. A dead letter of a disabled endpoint (e.g. by a 410) is replayed to it once it is
/// enabled again, or to another active endpoint of its account that takes its event type,
/// named in the body; one whose replay
/// already waits at an endpoint stays there (409) (account_admin: own account; operator: any).
#[utoipa::path(post, path = "/v1/webhooks/dead-letters/{id}/replay", tag = "webhooks",
    params(("id" = String, Path)), request_body = ReplayBody,
    responses((status = 202), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
async fn replay(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    body: Option<Json<ReplayBody>>,
) -> ApiResult<(StatusCode, axum::Json<DeadLetter>)> {
    let account = dead_letter_scope(&auth)?;
    let to = body.and_then(|Json(b)| b.endpoint);
    let dl = s
        .webhooks
        .request_replay(&auth.0, account.as_ref(), &id, to.as_deref())
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(dl)))
}
