//! Who may call what, denied by default: [`RULES`] names the access of every route, and
//! [`guard`] enforces it before any handler runs. A route without a rule answers 403 (and a
//! test that walks the OpenAPI document fails the build). The guard also authenticates the
//! caller (bearer token, or the browser session with an Origin check), applies the rate
//! limits of sign-ins and state-changing requests, and reads a change's body, in time, before
//! it lets the change into the daemon-wide in-flight bound.
//!
//! The roles a caller acts with are the token's (or session's) narrowed by the account's user
//! records ([`effective_caller`], rule in [`orderd_domain::grant`]): a record keeps only the
//! account roles it also has, a removed user keeps none, no record keeps the token's. Handlers,
//! the approval rules, spending limits and the audit log all see these effective roles, since
//! they all read the one `Caller` the guard stores in the request. The check reads a shared
//! view ([`orderd_actors::grants::Grants`]), never the account actor.

use crate::client_ip::client_ip;
use crate::error::ApiError;
use crate::ApiState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use orderd_actors::admission::Ticket;
use orderd_actors::audit::Caller;
use orderd_domain::account::Role;
use orderd_domain::grant::NotGranted;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// The access a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, the OpenAPI document, the portal page).
    Public,
    /// Anyone, counted against the per-address sign-in limit.
    SignIn,
    /// A caller with at least one of these roles.
    Roles(&'static [Role]),
}

const ACCOUNT: Access = Access::Roles(crate::routes::ACCOUNT_ROLES);
const APPROVER: Access = Access::Roles(&[Role::Approver]);
const ACCOUNT_ADMIN: Access = Access::Roles(&[Role::AccountAdmin]);
const SHIPPING: Access = Access::Roles(&[Role::Warehouse, Role::Operator]);
const OPERATOR: Access = Access::Roles(&[Role::Operator]);
/// The account's own events, or every account's for an operator.
const EVENTS: Access = Access::Roles(&[
    Role::Buyer,
    Role::Approver,
    Role::AccountAdmin,
    Role::Operator,
]);
/// The account's own webhook endpoints.
const HOOKS: Access = Access::Roles(&[Role::AccountAdmin]);
/// The account's own dead letters, or every account's for an operator.
const DEAD_LETTERS: Access = Access::Roles(&[Role::AccountAdmin, Role::Operator]);
const ANY_ROLE: Access = Access::Roles(&Role::ALL);

/// Every route and its access: (method, path as in the OpenAPI document, access).
pub const RULES: &[(&str, &str, Access)] = &[
    ("GET", "/", Access::Public),
    ("GET", "/healthz", Access::Public),
    ("GET", "/readyz", Access::Public),
    ("GET", "/openapi.json", Access::Public),
    ("POST", "/v1/dev/token", Access::SignIn),
    ("GET", "/auth/login", Access::SignIn),
    ("GET", "/auth/callback", Access::SignIn),
    ("POST", "/auth/logout", Access::Public),
    ("GET", "/v1/me", ANY_ROLE),
    ("GET", "/v1/catalog", ACCOUNT),
    ("GET", "/v1/catalog/{sku}", ACCOUNT),
    ("GET", "/v1/cart", ACCOUNT),
    ("POST", "/v1/cart/lines", ACCOUNT),
    ("PATCH", "/v1/cart/lines/{line}", ACCOUNT),
    ("DELETE", "/v1/cart/lines/{line}", ACCOUNT),
    ("POST", "/v1/cart/reprice", ACCOUNT),
    ("POST", "/v1/cart/validate", ACCOUNT),
    ("GET", "/v1/orders", ACCOUNT),
    ("POST", "/v1/orders", ACCOUNT),
    ("POST", "/v1/orders/validate", ACCOUNT),
    ("GET", "/v1/orders/{id}", ACCOUNT),
    ("PATCH", "/v1/orders/{id}", ACCOUNT),
    ("GET", "/v1/orders/{id}/history", ACCOUNT),
    ("POST", "/v1/orders/{id}/submit", ACCOUNT),
    ("POST", "/v1/orders/{id}/cancel", ACCOUNT),
    ("POST", "/v1/orders/{id}/approve", APPROVER),
    ("POST", "/v1/orders/{id}/reject", APPROVER),
    ("POST", "/v1/orders/{id}/ship", SHIPPING),
    ("GET", "/v1/credit", ACCOUNT),
    ("GET", "/v1/events", EVENTS),
    ("GET", "/v1/events/stream", EVENTS),
    ("POST", "/v1/webhooks", HOOKS),
    ("GET", "/v1/webhooks", HOOKS),
    ("DELETE", "/v1/webhooks/{id}", HOOKS),
    ("POST", "/v1/webhooks/{id}/rotate", HOOKS),
    ("POST", "/v1/webhooks/{id}/enable", HOOKS),
    ("GET", "/v1/webhooks/dead-letters", DEAD_LETTERS),
    (
        "POST",
        "/v1/webhooks/dead-letters/{id}/replay",
        DEAD_LETTERS,
    ),
    ("GET", "/v1/account/users", ACCOUNT_ADMIN),
    ("POST", "/v1/account/users", ACCOUNT_ADMIN),
    ("PUT", "/v1/account/users/{user}", ACCOUNT_ADMIN),
    ("DELETE", "/v1/account/users/{user}", ACCOUNT_ADMIN),
    ("POST", "/v1/admin/import/{kind}", OPERATOR),
    ("PUT", "/v1/admin/accounts/{account}/credit", OPERATOR),
    ("GET", "/v1/admin/accounts", OPERATOR),
    // Operations. Prometheus without a token scrapes the separate `metrics_listen` address.
    ("GET", "/metrics", OPERATOR),
    ("GET", "/v1/ops/live", OPERATOR),
    ("GET", "/ops/dashboard", OPERATOR),
];

/// Routes a page calls by itself rather than its user (the portal's event stream, reconnecting;
/// the dashboard's poll): a browser session's use of them does not keep it from ending after
/// `session.idle_timeout_ms` unused (see [`crate::session::Activity`]).
pub const BACKGROUND: &[&str] = &["/v1/events/stream", "/v1/ops/live"];

/// The rule of a route, if it has one. HEAD, which axum answers with a route's GET handler,
/// has the GET rule.
pub fn rule(method: &str, path: &str) -> Option<Access> {
    let method = if method.eq_ignore_ascii_case("HEAD") {
        "GET"
    } else {
        method
    };
    RULES
        .iter()
        .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && *p == path)
        .map(|(_, _, a)| *a)
}

/// Methods that change state (rate-limited; with a session cookie they need a same-origin
/// request).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Middleware on every matched route: rule lookup, authentication, role check; for a change
/// also its rate limits, its whole body read in time, and the daemon-wide in-flight bound
/// (see [`orderd_actors::admission`]).
pub async fn guard(State(s): State<ApiState>, mut req: Request, next: Next) -> Response {
    match admit(&s, &mut req).await {
        Ok(inside) => {
            let response = next.run(req).await;
            // The change is answered: it leaves the daemon-wide bound with its time inside,
            // and its body's bytes go back to the budget.
            drop(inside);
            response
        }
        Err(e) => e.into_response(),
    }
}

/// What a change that got in holds until it is answered.
struct Inside {
    _ticket: Ticket,
    _body: Option<OwnedSemaphorePermit>,
}

/// Checks a request against its route's rule; a change that gets in, with its body read,
/// holds a ticket of the daemon-wide bound until it is answered.
async fn admit(s: &ApiState, req: &mut Request) -> Result<Option<Inside>, ApiError> {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    let Some(access) = rule(method.as_str(), &path) else {
        tracing::error!(%method, %path, "route has no access rule: denied");
        return Err(ApiError::Forbidden("this route has no access rule".into()));
    };
    let (parts, body) = std::mem::take(req).into_parts();
    let ip = client_ip(&parts, &s.trusted_proxies);
    *req = Request::from_parts(parts, body);
    match access {
        Access::Public => Ok(None),
        Access::SignIn => s.rate.login(&ip).map(|()| None),
        Access::Roles(roles) => {
            let changes = changes_state(&method);
            // Refused before the credential is checked and the body read: during a spike this
            // answer must cost far less than the work it turns away.
            if changes && !s.engine.admission.has_room(Instant::now()) {
                return Err(ApiError::Overloaded);
            }
            let (caller, credential) = match crate::auth::bearer(req.headers())? {
                Some(token) => (
                    s.auth.authenticate(token, ip).await?,
                    hex::encode(Sha256::digest(token.as_bytes())),
                ),
                None => {
                    // A lookup, unless the session's access token expired and the identity
                    // provider refreshes it.
                    let activity = match BACKGROUND.contains(&path.as_str()) {
                        true => crate::session::Activity::Background,
                        false => crate::session::Activity::User,
                    };
                    crate::session::caller_of(s, req.headers(), &method, ip, activity).await?
                }
            };
            let (caller, withheld) = effective_caller(s, caller)?;
            if !roles.iter().any(|r| caller.has(*r)) {
                let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
                let mut why = format!("this needs one of the roles: {}", names.join(", "));
                let not_granted: Vec<&str> = roles
                    .iter()
                    .filter(|r| withheld.contains(r))
                    .map(|r| r.as_str())
                    .collect();
                if !not_granted.is_empty() {
                    why.push_str(&format!(
                        "; the account admin has not granted {} to user {}",
                        not_granted.join(", "),
                        caller.user
                    ));
                }
                return Err(ApiError::Forbidden(why));
            }
            if changes {
                let who = match &caller.account {
                    Some(a) => format!("account:{a}"),
                    None => format!("user:{}", caller.user),
                };
                s.rate.mutation(&who, &credential)?;
            }
            req.extensions_mut().insert(caller);
            if !changes {
                return Ok(None);
            }
            // The ticket is taken with the whole body in: a slow or stalled upload holds no
            // place inside, and its time on the wire does not read as an overloaded orderd.
            let body = buffer_body(s, req).await?;
            let ticket = s.engine.admission.enter(Instant::now());
            let ticket = ticket.ok_or(ApiError::Overloaded)?;
            Ok(Some(Inside {
                _ticket: ticket,
                _body: body,
            }))
        }
    }
}

/// Reads the whole body of a change into memory, within `api.body_read_timeout_ms` (`408
/// body_read_timeout` after it). Its size is already bounded by the route's limit
/// ([`crate::json::limit_body`]); first it takes that many bytes of the daemon-wide budget
/// of bodies in memory (its declared length, or the route's limit when it declares none;
/// `503 daemon_busy` at once when they are not free), held until the change is answered.
async fn buffer_body(
    s: &ApiState,
    req: &mut Request,
) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    let route_max = crate::json::body_max(req.uri().path(), &s.limits);
    // Its Content-Length (hyper's size hint of a request that declared one), if any.
    let declared = axum::body::HttpBody::size_hint(req.body()).upper();
    let declared = declared.map_or(route_max, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let reserved = declared.min(route_max);
    let permit = match u32::try_from(reserved.div_ceil(1024)) {
        Ok(0) => None,
        Ok(kib) => Some(
            (s.body_budget.clone().try_acquire_many_owned(kib))
                .map_err(|_| ApiError::Overloaded)?,
        ),
        Err(_) => return Err(ApiError::Overloaded),
    };
    let (parts, body) = std::mem::take(req).into_parts();
    let wait = Duration::from_millis(s.limits.body_read_timeout_ms);
    let read = tokio::time::timeout(wait, axum::body::to_bytes(body, usize::MAX));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let max = crate::json::body_max(parts.uri.path(), &s.limits);
            return Err(crate::json::read_error(&e, max));
        }
        Err(_) => {
            return Err(ApiError::BodyTimeout(format!(
                "the body did not arrive within {} ms (api.body_read_timeout_ms)",
                s.limits.body_read_timeout_ms
            )))
        }
    };
    *req = Request::from_parts(parts, axum::body::Body::from(bytes));
    Ok(permit)
}

/// The caller with the roles its account's user records grant (see the module doc), and the
/// token roles that were withheld. 403 when no role is left: the user was removed, or their
/// record grants none of the token's roles.
pub fn effective_caller(
    s: &ApiState,
    mut caller: Caller,
) -> Result<(Caller, BTreeSet<Role>), ApiError> {
    match s.engine.grants.narrow(&mut caller) {
        Ok(withheld) => Ok((caller, withheld)),
        Err(why) => Err(ApiError::Forbidden(not_granted(&caller, &why))),
    }
}

/// Whether the credential of a request that opened a long answer (an event stream) still
/// admits the caller it admitted then: its bearer token still verifies (not expired, its key
/// still published) or its browser session is still vouched for (not signed out, expired or
/// ended), and the account's user records still grant the same roles.
pub async fn still_admits(s: &ApiState, headers: &HeaderMap, opened: &Caller) -> bool {
    let claimed = match crate::auth::bearer(headers) {
        Ok(Some(token)) => s.auth.recheck(token).await.ok(),
        Ok(None) => crate::session::cookie(headers, crate::session::SESSION_COOKIE)
            .and_then(|id| s.sessions.vouches(&id)),
        Err(_) => None,
    };
    let Some(claimed) = claimed else {
        return false;
    };
    match effective_caller(s, claimed) {
        Ok((now, _)) => {
            (&now.user, &now.account, &now.roles, &now.warehouse)
                == (
                    &opened.user,
                    &opened.account,
                    &opened.roles,
                    &opened.warehouse,
                )
        }
        Err(_) => false,
    }
}

/// Why a caller has no role left, for the 403 answer.
pub fn not_granted(caller: &Caller, why: &NotGranted) -> String {
    let account = caller.account.as_ref().map(|a| a.as_str()).unwrap_or("");
    match why {
        NotGranted::Removed => format!(
            "user {} was removed from account {account} by its account admin; an account admin must add them again",
            caller.user
        ),
        NotGranted::NoneOf(asked) => {
            let names: Vec<&str> = asked.iter().map(|r| r.as_str()).collect();
            format!(
                "the account admin of account {account} has not granted user {} any of the roles {}",
                caller.user,
                names.join(", ")
            )
        }
    }
}
