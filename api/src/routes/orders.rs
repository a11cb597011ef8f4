//! Orders: place (from the cart or with lines), list, read, history, submit a draft, approve,
//! reject, cancel, amend, ship. The account is the token's; another account's order id gives
//! the same 404 as an id that does not exist.

use super::{known_warehouse, ACCOUNT_ROLES};
use crate::auth::Auth;
use crate::error::{echo, ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::json::{BadQuantity, Json, Quantity};
use crate::telemetry::{self, Outcome};
use crate::ApiState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use headers::{ETag, HeaderMapExt, IfMatch, IfNoneMatch};
use orderd_actors::account::{AccountMsg, Reply};
use orderd_actors::audit::AuditEntry;
use orderd_actors::audit::Caller;
use orderd_actors::order_reads::OrderFilter;
use orderd_actors::ordering::{Amendment, Preview, Target, VersionCheck};
use orderd_domain::account::Role;
use orderd_domain::ids::{AccountId, IdempotencyKey, OrderId};
use orderd_domain::order::{Channel, Order, OrderState};
use orderd_domain::validation::{LineRequest, OrderRequest, Problem, ProblemCode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(place, list))
        .routes(routes!(validate_order))
        .routes(routes!(get_order, amend))
        .routes(routes!(history))
        .routes(routes!(submit))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(cancel))
        .routes(routes!(ship))
}

/// The order fields besides its lines.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderHeader {
    pub ship_to: Option<String>,
    pub delivery_speed: Option<String>,
    pub customer_po: Option<String>,
    #[serde(default)]
    pub allow_split: bool,
}

impl OrderHeader {
    pub fn into_request(self, lines: Vec<LineRequest>) -> OrderRequest {
        OrderRequest {
            lines,
            ship_to: self.ship_to,
            delivery_speed: self.delivery_speed,
            customer_po: self.customer_po,
            allow_split: self.allow_split,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    pub sku: String,
    #[schema(value_type = u32)]
    pub qty: Quantity,
    pub note: Option<String>,
    pub warehouse: Option<String>,
    /// The unit price the buyer saw; refused as `price_changed` when it no longer holds.
    #[schema(value_type = Option<String>)]
    pub quoted_unit_price: Option<orderd_domain::Decimal>,
}

/// The lines of a body as the domain takes them. A line whose quantity is no whole number
/// (negative, fractional, above `u32`, not a number) goes as quantity 0, which the domain
/// refuses as `invalid_quantity` on that line along with every other problem of the order;
/// [`BadQuantities::explain`] then says what was sent.
fn line_requests(lines: Vec<LineBody>) -> (Vec<LineRequest>, BadQuantities) {
    let mut bad = BadQuantities::default();
    let requests = (1..)
        .zip(lines)
        .map(|(n, l)| LineRequest {
            sku: l.sku,
            qty: l.qty.get().unwrap_or_else(|sent| {
                bad.0.push((n, sent));
                0
            }),
            note: l.note,
            warehouse: l.warehouse,
            quoted_unit_price: l.quoted_unit_price,
        })
        .collect();
    (requests, bad)
}

/// The lines sent with a quantity that is no whole number, by line number (ascending).
#[derive(Default)]
struct BadQuantities(Vec<(u32, BadQuantity)>);

impl BadQuantities {
    /// `problems` with the domain's `invalid_quantity` of each such line (it saw a 0) saying
    /// what was sent instead.
    fn explain(&self, problems: &mut [Problem]) {
        for p in problems
            .iter_mut()
            .filter(|p| p.code == ProblemCode::InvalidQuantity)
        {
            // In line order, as `line_requests` found them.
            let at = p
                .line
                .and_then(|n| self.0.binary_search_by_key(&n, |(n, _)| *n).ok());
            if let Some((n, sent)) = at.map(|i| &self.0[i]) {
                *p = sent.problem().line(*n);
            }
        }
    }

    /// The same for a refusal.
    fn explain_error(&self, e: ApiError) -> ApiError {
        match e {
            ApiError::Invalid(mut problems) => {
                self.explain(&mut problems);
                ApiError::Invalid(problems)
            }
            other => other,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceBody {
    /// The lines; absent means "the cart".
    pub lines: Option<Vec<LineBody>>,
    pub ship_to: Option<String>,
    pub delivery_speed: Option<String>,
    pub customer_po: Option<String>,
    #[serde(default)]
    pub allow_split: bool,
    /// `false` saves a draft (no stock held, no credit used). Default `true`.
    pub submit: Option<bool>,
    /// Channel that produced the order (portal backends: `api`). Default `api`.
    #[schema(value_type = Option<String>)]
    pub channel: Option<Channel>,
}

/// An order as the API returns it.
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct OrderBody(pub Order);

#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct PreviewBody(pub Preview);

/// An order answered with its `ETag`, the order's version, which a client sends back as
/// `If-Match` so that its next change applies only to the order it read.
pub struct Versioned(pub Order);

impl IntoResponse for Versioned {
    fn into_response(self) -> Response {
        let tag = etag(self.0.version);
        let mut resp = axum::Json(OrderBody(self.0)).into_response();
        resp.headers_mut().typed_insert(tag);
        resp
    }
}

/// The entity tag of an order at `version`: `"<version>"`.
fn etag(version: u32) -> ETag {
    format!("\"{version}\"")
        .parse()
        .expect("a quoted number is an entity tag")
}

/// The versions a request's `If-Match` accepts (none: any). A tag that is not one of orderd's
/// (malformed, weak, another version) matches no version, so the change is refused with 412.
fn if_match(headers: &HeaderMap) -> Option<VersionCheck> {
    let accepts = headers.typed_get::<IfMatch>()?;
    Some(Arc::new(move |v| accepts.precondition_passes(&etag(v))))
}

fn order_id(s: &str) -> ApiResult<OrderId> {
    OrderId::parse(s).map_err(|_| ApiError::NotFound(format!("order {} not found", echo(s))))
}

/// Place an order with an `Idempotency-Key` header: 201 with the order, or 422 with every
/// problem (buyer, approver, account_admin).
#[utoipa::path(post, path = "/v1/orders", tag = "orders", request_body = PlaceBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "per user: same key + same body returns the first answer; a different body is refused")),
    responses((status = 201, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 200, description = "replayed: the key was used before with this body", body = OrderBody, headers(("ETag" = String))), (status = 422), (status = 429), (status = 503)),
    security(("bearer" = [])))]
async fn place(
    State(s): State<ApiState>,
    auth: Auth,
    headers: HeaderMap,
    Json(b): Json<PlaceBody>,
) -> ApiResult<Response> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| IdempotencyKey::parse(v).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 64 characters of A-Z a-z 0-9 . _ - :",
                    )
                })?,
        ),
    };
    let from_cart = b.lines.is_none();
    let (lines, bad) = line_requests(b.lines.unwrap_or_default());
    let req = OrderRequest {
        lines,
        ship_to: b.ship_to,
        delivery_speed: b.delivery_speed,
        customer_po: b.customer_po,
        allow_split: b.allow_split,
    };
    let (submit, channel) = (b.submit.unwrap_or(true), b.channel.unwrap_or(Channel::Api));
    let account = auth.account()?;
    let started = Instant::now();
    let span = order_span(account, channel, "place");
    let placed = s
        .engine
        .ask(account, |reply| AccountMsg::Place {
            span: span.clone(),
            caller,
            key,
            req,
            from_cart,
            channel,
            submit,
            reply,
        })
        .instrument(span.clone())
        .await
        .map_err(ApiError::from)
        .and_then(|r| r.map_err(ApiError::from))
        .map_err(|e| bad.explain_error(e));
    let order_id = placed.as_ref().ok().map(|p| &p.order.id);
    capture_done(
        &s,
        &span,
        account,
        order_id,
        channel,
        started,
        &placed,
        |p| p.replayed,
    );
    let placed = placed?;
    let status = if placed.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut resp = (status, Versioned(placed.order)).into_response();
    if placed.replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// The span of one order through the pipeline: this handler, the account actor (which records
/// `order.id` once it has made one) and its `journal.commit` child. DEBUG on the target
/// `orderd::order`, so it is free unless turned on (`ORDERD_LOG=info,orderd::order=debug`).
fn order_span(account: &AccountId, channel: Channel, route: &'static str) -> tracing::Span {
    tracing::debug_span!(
        target: orderd_actors::ORDER_SPAN_TARGET,
        "order",
        order.id = tracing::field::Empty,
        account.id = %account,
        channel = telemetry::channel_name(channel),
        route,
    )
}

/// Records a capture request's latency by channel and outcome, and logs it at WARN when it
/// took longer than `api.slow_order_log_ms`.
#[allow(clippy::too_many_arguments)]
fn capture_done<T>(
    s: &ApiState,
    span: &tracing::Span,
    account: &AccountId,
    order_id: Option<&OrderId>,
    channel: Channel,
    started: Instant,
    result: &ApiResult<T>,
    replayed: impl FnOnce(&T) -> bool,
) {
    let elapsed = started.elapsed();
    let outcome = Outcome::of(result, replayed);
    telemetry::global().record_capture(channel, outcome, elapsed);
    if let Some(id) = order_id {
        span.record("order.id", id.as_str());
    }
    let slow_ms = s.limits.slow_order_log_ms;
    if slow_ms > 0 && elapsed >= Duration::from_millis(slow_ms) {
        tracing::warn!(
            parent: span,
            order.id = order_id.map(OrderId::as_str),
            account.id = %account,
            channel = telemetry::channel_name(channel),
            outcome = outcome.as_str(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "slow order"
        );
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    pub lines: Vec<LineBody>,
    pub ship_to: Option<String>,
    pub delivery_speed: Option<String>,
    pub customer_po: Option<String>,
    #[serde(default)]
    pub allow_split: bool,
}

/// Validate an order without placing it: every problem, nothing changed (buyer, approver, account_admin).
#[utoipa::path(post, path = "/v1/orders/validate", tag = "orders", request_body = ValidateBody,
    responses((status = 200, body = PreviewBody)), security(("bearer" = [])))]
async fn validate_order(
    State(s): State<ApiState>,
    auth: Auth,
    Json(b): Json<ValidateBody>,
) -> ApiResult<axum::Json<PreviewBody>> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let (lines, bad) = line_requests(b.lines);
    let req = OrderRequest {
        lines,
        ship_to: b.ship_to,
        delivery_speed: b.delivery_speed,
        customer_po: b.customer_po,
        allow_split: b.allow_split,
    };
    let mut preview = s
        .engine
        .ask(auth.account()?, |reply| AccountMsg::Validate {
            caller,
            req,
            from_cart: false,
            reply,
        })
        .await??;
    bad.explain(&mut preview.problems);
    Ok(axum::Json(PreviewBody(preview)))
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    pub state: Option<String>,
    pub limit: Option<usize>,
    /// The last order id of the previous page (newest first).
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    #[schema(value_type = Vec<Object>)]
    pub orders: Vec<Order>,
    pub next_cursor: Option<String>,
}

/// The account's orders, newest first; a buyer who is not also an approver or account admin
/// sees the orders they placed (buyer, approver, account_admin).
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(ListQuery), responses((status = 200, body = OrderPage)), security(("bearer" = [])))]
async fn list(
    State(s): State<ApiState>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<OrderPage>> {
    let placed_by = auth.require(ACCOUNT_ROLES)?.placed_by_filter().cloned();
    let state = match q.state.as_deref() {
        None => None,
        Some(name) => Some(
            OrderState::ALL
                .into_iter()
                .find(|st| st.as_str() == name)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_state",
                        format!("unknown state {:?}", echo(name)),
                    )
                })?,
        ),
    };
    let before = q
        .cursor
        .as_deref()
        .map(OrderId::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_cursor", e.to_string()))?;
    let limit =
        crate::extract::page_limit(q.limit, crate::extract::PAGE_DEFAULT, s.limits.page_max)?;
    let filter = OrderFilter { placed_by, state };
    let list = s
        .engine
        .list_orders(auth.account()?, filter, before, limit)
        .await?;
    Ok(axum::Json(OrderPage {
        orders: list.orders,
        next_cursor: list.next.map(|id| id.to_string()),
    }))
}

/// Runs one change of an order of the caller's account, as a caller with one of `roles`, for
/// the versions the request's `If-Match` accepts, and answers with the changed order.
async fn change(
    s: &ApiState,
    auth: &Auth,
    roles: &[Role],
    id: &str,
    headers: &HeaderMap,
    build: impl FnOnce(Caller, Target, Reply<Order>) -> AccountMsg,
) -> ApiResult<Versioned> {
    let caller = auth.require(roles)?.clone();
    let target = target(id, headers)?;
    let changed = s
        .engine
        .ask(auth.account()?, |reply| build(caller, target, reply))
        .await??;
    Ok(Versioned(changed))
}

fn target(id: &str, headers: &HeaderMap) -> ApiResult<Target> {
    Ok(Target {
        id: order_id(id)?,
        if_match: if_match(headers),
    })
}

/// The order as `caller` may see it (a buyer who is not also an approver or account admin:
/// only their own).
async fn fetch(
    s: &ApiState,
    caller: &Caller,
    account: &AccountId,
    id: &OrderId,
) -> ApiResult<Order> {
    s.engine
        .order(account, id, caller.placed_by_filter())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))
}

/// One order (buyer, approver, account_admin).
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path), ("If-None-Match" = Option<String>, Header, description = "an ETag the client holds: 304 while the order is still at it")), responses((status = 200, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 304, description = "unchanged since the ETag sent"), (status = 404)), security(("bearer" = [])))]
async fn get_order(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = auth.require(ACCOUNT_ROLES)?;
    let order = fetch(&s, caller, auth.account()?, &order_id(&id)?).await?;
    let tag = etag(order.version);
    // A malformed If-None-Match is ignored, as RFC 9110 allows: the client gets the order.
    if let Some(held) = headers.typed_get::<IfNoneMatch>() {
        if !held.precondition_passes(&tag) {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut().typed_insert(tag);
            return Ok(resp);
        }
    }
    Ok(Versioned(order).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    pub seq: u64,
    #[schema(value_type = Object)]
    pub entry: AuditEntry,
}

#[derive(Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// Most entries in the answer (default and most: the API's page limit).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Where the next page starts (`cursor=`); null after the last page.
    pub next_cursor: Option<String>,
}

/// The order's audit trail, oldest first, a page at a time: who did what, from where, when
/// (buyer, approver, account_admin).
#[utoipa::path(get, path = "/v1/orders/{id}/history", tag = "orders", params(("id" = String, Path), HistoryQuery), responses((status = 200, body = HistoryPage), (status = 404)), security(("bearer" = [])))]
async fn history(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<axum::Json<HistoryPage>> {
    let caller = auth.require(ACCOUNT_ROLES)?;
    let id = order_id(&id)?;
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                format!(
                    "{:?} is not a cursor of this list (the next_cursor of a page)",
                    echo(c)
                ),
            )
        })?,
    };
    let limit = crate::extract::page_limit(q.limit, s.limits.page_max, s.limits.page_max)?;
    // Tenancy: the order must be this account's (and, for a buyer, their own).
    let account = auth.account()?;
    fetch(&s, caller, account, &id).await?;
    let engine = s.engine.clone();
    let account = account.clone();
    // One more than the page tells whether another page follows.
    let mut entries =
        tokio::task::spawn_blocking(move || engine.history(&account, &id, after, limit + 1))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
    let next_cursor = crate::extract::cut_page(&mut entries, limit, |(seq, _)| seq.to_string());
    Ok(axum::Json(HistoryPage {
        entries: entries
            .into_iter()
            .map(|(seq, entry)| HistoryEntry { seq, entry })
            .collect(),
        next_cursor,
    }))
}

/// Submit a draft (buyer, approver, account_admin).
#[utoipa::path(post, path = "/v1/orders/{id}/submit", tag = "orders", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "the ETag the order was read with: the change applies only to that version, else 412")), responses((status = 200, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 404), (status = 409), (status = 422), (status = 412)), security(("bearer" = [])))]
async fn submit(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Versioned> {
    let caller = auth.require(ACCOUNT_ROLES)?.clone();
    let target = target(&id, &headers)?;
    let order = target.id.clone();
    let account = auth.account()?;
    let started = Instant::now();
    // The draft's channel is known only from the answer; until then it counts as `api`.
    let span = order_span(account, Channel::Api, "submit");
    span.record("order.id", order.as_str());
    let submitted = s
        .engine
        .ask(account, |reply| AccountMsg::Submit {
            span: span.clone(),
            caller,
            order: target,
            reply,
        })
        .instrument(span.clone())
        .await
        .map_err(ApiError::from)
        .and_then(|r| r.map_err(ApiError::from));
    let channel = submitted.as_ref().map_or(Channel::Api, |o| o.channel);
    capture_done(
        &s,
        &span,
        account,
        Some(&order),
        channel,
        started,
        &submitted,
        |_| false,
    );
    Ok(Versioned(submitted?))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// Lines to drop while approving the rest.
    #[serde(default)]
    pub reject_lines: Vec<u32>,
}

/// Approve a pending order, optionally dropping some lines (approver).
#[utoipa::path(post, path = "/v1/orders/{id}/approve", tag = "orders", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "the ETag the order was read with: the change applies only to that version, else 412")), request_body = ApproveBody, responses((status = 200, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 403), (status = 404), (status = 409), (status = 412), (status = 422, description = "a line number that is no open line of the order")), security(("bearer" = [])))]
async fn approve(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<ApproveBody>>,
) -> ApiResult<Versioned> {
    let reject_lines = body.map(|Json(b)| b.reject_lines).unwrap_or_default();
    change(
        &s,
        &auth,
        &[Role::Approver],
        &id,
        &headers,
        |caller, order, reply| AccountMsg::Approve {
            caller,
            order,
            reject_lines,
            reply,
        },
    )
    .await
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// Lines to reject; empty or absent rejects the whole order.
    #[serde(default)]
    pub lines: Vec<u32>,
    pub reason: Option<String>,
}

/// Reject a pending order, or some of its lines (approver).
#[utoipa::path(post, path = "/v1/orders/{id}/reject", tag = "orders", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "the ETag the order was read with: the change applies only to that version, else 412")), request_body = RejectBody, responses((status = 200, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 403), (status = 404), (status = 409), (status = 412), (status = 422, description = "a line number that is no open line of the order")), security(("bearer" = [])))]
async fn reject(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<RejectBody>>,
) -> ApiResult<Versioned> {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    change(
        &s,
        &auth,
        &[Role::Approver],
        &id,
        &headers,
        |caller, order, reply| AccountMsg::Reject {
            caller,
            order,
            lines: b.lines,
            reason: b.reason,
            reply,
        },
    )
    .await
}

/// Cancel a draft, confirmed or allocated order with nothing shipped yet; releases its stock and
/// credit. An order pending approval is withdrawn: it ends `rejected` (the state machine has no
/// way from pending approval to cancelled), its reasons saying who withdrew it (buyer,
/// approver, account_admin).
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "the ETag the order was read with: the change applies only to that version, else 412")), responses((status = 200, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 404), (status = 409), (status = 412)), security(("bearer" = [])))]
async fn cancel(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Versioned> {
    change(
        &s,
        &auth,
        ACCOUNT_ROLES,
        &id,
        &headers,
        |caller, order, reply| AccountMsg::Cancel {
            caller,
            order,
            reply,
        },
    )
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendBody {
    /// Replaces all lines when present.
    pub lines: Option<Vec<LineBody>>,
    pub ship_to: Option<String>,
    /// Absent: kept; `null`: cleared (any speed).
    #[serde(default, deserialize_with = "crate::json::present")]
    #[schema(value_type = Option<String>, nullable)]
    pub delivery_speed: Option<Option<String>>,
    /// Absent: kept; `null`: cleared.
    #[serde(default, deserialize_with = "crate::json::present")]
    #[schema(value_type = Option<String>, nullable)]
    pub customer_po: Option<Option<String>>,
    pub allow_split: Option<bool>,
}

/// Amend an order before allocation; it is validated again in full (buyer, approver, account_admin).
#[utoipa::path(patch, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "the ETag the order was read with: the change applies only to that version, else 412")), request_body = AmendBody, responses((status = 200, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 404), (status = 409), (status = 422), (status = 412)), security(("bearer" = [])))]
async fn amend(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(b): Json<AmendBody>,
) -> ApiResult<Versioned> {
    let (lines, bad) = b.lines.map(line_requests).unzip();
    let bad = bad.unwrap_or_default();
    let patch = Amendment {
        lines,
        ship_to: b.ship_to,
        delivery_speed: b.delivery_speed,
        customer_po: b.customer_po,
        allow_split: b.allow_split,
    };
    change(
        &s,
        &auth,
        ACCOUNT_ROLES,
        &id,
        &headers,
        |caller, order, reply| AccountMsg::Amend {
            caller,
            order,
            patch,
            reply,
        },
    )
    .await
    .map_err(|e| bad.explain_error(e))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipBody {
    /// Operators only: the warehouse shipping (a warehouse token ships from its own).
    pub warehouse: Option<String>,
    /// Operators only: the order's account.
    pub account: Option<String>,
}

/// Confirm shipment of what one warehouse holds for the order (warehouse, operator).
#[utoipa::path(post, path = "/v1/orders/{id}/ship", tag = "orders", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "the ETag the order was read with: the change applies only to that version, else 412")), request_body = ShipBody, responses((status = 200, body = OrderBody, headers(("ETag" = String, description = "the order's version, for If-Match"))), (status = 404), (status = 409), (status = 412), (status = 422)), security(("bearer" = [])))]
async fn ship(
    State(s): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<ShipBody>>,
) -> ApiResult<Versioned> {
    let caller = auth.require(&[Role::Warehouse, Role::Operator])?.clone();
    let target = target(&id, &headers)?;
    let order = target.id.clone();
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let not_found = || ApiError::NotFound(format!("order {} not found", echo(&id)));
    let (warehouse, account) = if let (true, Some(w)) =
        (caller.has(Role::Warehouse), caller.warehouse.clone())
    {
        // A warehouse ships from its own warehouse; naming another one or an account is
        // refused, never silently ignored.
        if let Some(field) = [("warehouse", &b.warehouse), ("account", &b.account)]
            .into_iter()
            .find_map(|(f, v)| v.is_some().then_some(f))
        {
            return Err(ApiError::invalid_field(
                field,
                format!("a warehouse token cannot set {field:?}"),
            ));
        }
        // A warehouse sees only orders holding stock in it. The answer says so, so that a
        // client retrying a shipment that went through can tell (and nothing about other
        // warehouses' orders shows).
        let handle = s.engine.warehouse(&w).ok_or_else(not_found)?;
        let account = handle.owner(order.clone()).await?.ok_or_else(|| {
                ApiError::NotFound(format!(
                    "order {id} holds no stock in {w} (an order shipped in full from {w} no longer does)"
                ))
            })?;
        (w, account)
    } else {
        // An operator names both; every missing, malformed or unknown one is listed at once.
        let problem = |code, field: &str, message: String| Problem::new(code, message).field(field);
        let w = match b.warehouse.as_deref() {
            None => Err(problem(
                ProblemCode::InvalidField,
                "warehouse",
                "an operator names the warehouse shipping".into(),
            )),
            Some(w) => known_warehouse(&s, w)
                .map_err(|why| problem(ProblemCode::UnknownWarehouse, "warehouse", why)),
        };
        let a = match b.account.as_deref().map(AccountId::parse) {
            None => Err(problem(
                ProblemCode::InvalidField,
                "account",
                "an operator names the order's account".into(),
            )),
            Some(Err(e)) => Err(problem(ProblemCode::InvalidField, "account", e.to_string())),
            Some(Ok(a)) if !s.engine.accounts.exists(&a) => Err(problem(
                ProblemCode::InvalidField,
                "account",
                format!("account {a} does not exist"),
            )),
            Some(Ok(a)) => Ok(a),
        };
        match (w, a) {
            (Ok(w), Ok(a)) => (w, a),
            (w, a) => {
                let problems = [w.err(), a.err()].into_iter().flatten().collect();
                return Err(ApiError::Invalid(problems));
            }
        }
    };
    Ok(Versioned(
        s.engine
            .ask(&account, |reply| AccountMsg::Ship {
                caller,
                order: target,
                warehouse,
                reply,
            })
            .await??,
    ))
}
