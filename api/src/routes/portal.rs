//! Who is signed in: `GET /v1/me` for programs and the small page at `/` for people (until the
//! portal exists), plus the browser sign-in routes (`/auth/...`, see `session.rs`).

use crate::auth::Auth;
use crate::client_ip::client_ip;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::oauth;
use crate::session::{
    clear_cookie, cookie, origin, random_token, same_origin, set_cookie, LOGIN_COOKIE,
    SESSION_COOKIE,
};
use crate::ApiState;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use orderd_actors::audit::Caller;
use serde::Deserialize;
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(page))
        .routes(routes!(login))
        .routes(routes!(callback))
        .routes(routes!(logout))
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user: String,
    pub account: Option<String>,
    pub roles: Vec<String>,
    pub warehouse: Option<String>,
}

impl From<&Caller> for Me {
    fn from(c: &Caller) -> Me {
        Me {
            user: c.user.to_string(),
            account: c.account.as_ref().map(|a| a.to_string()),
            roles: c.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            warehouse: c.warehouse.as_ref().map(|w| w.to_string()),
        }
    }
}

/// The caller: user, account, roles, warehouse (any role).
#[utoipa::path(get, path = "/v1/me", tag = "session", responses((status = 200, body = Me)), security(("bearer" = [])))]
async fn me(auth: Auth) -> ApiResult<axum::Json<Me>> {
    Ok(axum::Json(Me::from(&auth.0)))
}

/// The portal's start page: who is signed in, for which account, with which roles (public).
#[utoipa::path(get, path = "/", tag = "session", responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn page(State(s): State<ApiState>, headers: HeaderMap) -> Html<String> {
    let who = crate::session::signed_in(&s, &headers).await;
    // Every shown value is an id already parsed to [A-Za-z0-9._:-], so nothing needs escaping.
    let body = match who {
        Some(mut c) => {
            // The roles the account's user records grant, as the guard applies them; the
            // refusal names only ids and roles, too.
            let narrowed = s.engine.grants.narrow(&mut c);
            let me = Me::from(&c);
            let (roles, refused) = match narrowed {
                Ok(_) => (me.roles.join(", "), String::new()),
                Err(why) => (
                    "(none)".to_owned(),
                    format!(" {}.", crate::policy::not_granted(&c, &why)),
                ),
            };
            format!(
                "<p>Signed in as <b id=\"user\">{}</b> for account <b id=\"account\">{}</b> with roles <b id=\"roles\">{roles}</b>.{refused}</p>\
                 <form method=\"post\" action=\"/auth/logout\"><button type=\"submit\">Sign out</button></form>",
                me.user,
                me.account.as_deref().unwrap_or("(none)"),
            )
        }
        None if browser_sign_in(&s) => {
            "<p>Not signed in. <a href=\"/auth/login\">Sign in with your company account</a></p>"
                .to_owned()
        }
        None if s.auth.can_issue() => "<p>Not signed in. No identity provider is configured: \
             this orderd runs with the development sign-in, whose tokens \
             (<code>POST /v1/dev/token</code>) API clients send as a bearer token.</p>"
            .to_owned(),
        None => {
            "<p>Not signed in. No identity provider offers browser sign-in here.</p>".to_owned()
        }
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>orderd</title></head><body><h1>orderd</h1>{body}</body></html>"
    ))
}

/// Whether some identity provider has a client for the browser sign-in (`/auth/login`).
fn browser_sign_in(s: &ApiState) -> bool {
    s.auth
        .identity_providers()
        .is_some_and(|o| o.issuers().any(|i| !i.settings.client_id.is_empty()))
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct LoginQuery {
    /// The identity provider to sign in with (its issuer URL); default: the first with a client.
    pub issuer: Option<String>,
}

/// Start a browser sign-in: redirects to the identity provider (code flow with PKCE) (public).
#[utoipa::path(get, path = "/auth/login", tag = "session", params(LoginQuery), responses((status = 303, description = "to the identity provider"), (status = 404, description = "no sign-in configured")))]
async fn login(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> ApiResult<Response> {
    let oidc = s
        .auth
        .identity_providers()
        .ok_or_else(|| ApiError::NotFound("no identity provider is configured".into()))?;
    let issuer = oidc
        .issuers()
        .find(|i| {
            !i.settings.client_id.is_empty()
                && q.issuer.as_ref().is_none_or(|w| *w == i.settings.issuer)
        })
        .ok_or_else(|| ApiError::NotFound("no identity provider with browser sign-in".into()))?;
    let d = oidc
        .discovery(issuer)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the identity provider is unreachable: {e}")))?;
    let base = origin(&s, &headers)
        .ok_or_else(|| ApiError::bad_request("no_host", "the request has no Host"))?;
    let redirect_uri = format!("{base}/auth/callback");
    let (state, nonce) = (random_token()?, random_token()?);
    let auth = oauth::authorize(issuer, &d, &redirect_uri, &state, &nonce)?;
    let ttl = Duration::from_millis(s.sessions.settings().login_pending_timeout_ms);
    s.sessions.begin_login(
        state.clone(),
        issuer.settings.issuer.clone(),
        auth.verifier,
        nonce,
        redirect_uri,
    );
    let mut resp = redirect(&auth.url);
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &state, Some(ttl)),
    );
    Ok(resp)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// The identity provider's answer: redeems the code, starts a session, back to `/` (public).
#[utoipa::path(get, path = "/auth/callback", tag = "session", params(CallbackQuery), responses((status = 303, description = "signed in, to /"), (status = 400), (status = 401)))]
async fn callback(
    State(s): State<ApiState>,
    parts: Parts,
    Query(q): Query<CallbackQuery>,
) -> ApiResult<Response> {
    let headers = &parts.headers;
    if let Some(e) = &q.error {
        return Err(ApiError::Unauthorized(format!(
            "the identity provider refused the sign-in: {:?}",
            crate::error::echo(e)
        )));
    }
    let (Some(code), Some(state)) = (&q.code, &q.state) else {
        return Err(ApiError::bad_request(
            "invalid_callback",
            "code and state are required",
        ));
    };
    // The state must be this browser's sign-in (login CSRF), and usable once.
    if cookie(headers, LOGIN_COOKIE).as_deref() != Some(state.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_callback",
            "this sign-in was not started in this browser",
        ));
    }
    let pending = s.sessions.finish_login(state).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_callback",
            "unknown or expired sign-in; start again",
        )
    })?;
    let oidc = s
        .auth
        .identity_providers()
        .ok_or_else(|| ApiError::NotFound("no identity provider is configured".into()))?;
    let issuer = oidc
        .issuer(&pending.issuer)
        .ok_or_else(|| ApiError::bad_request("invalid_callback", "unknown identity provider"))?;
    let d = oidc
        .discovery(issuer)
        .await
        .map_err(|e| ApiError::Unavailable(format!("the identity provider is unreachable: {e}")))?;
    let tokens = oauth::redeem(
        oidc,
        issuer,
        &d,
        &pending.redirect_uri,
        code,
        pending.verifier.clone(),
    )
    .await?;
    oidc.verify_id_token(issuer, &tokens.id_token, &pending.nonce)
        .await?;
    let ip = client_ip(&parts, &s.trusted_proxies);
    let mut vouched = oidc
        .verify_vouched(&tokens.access_token, tokens.refresh_token)
        .await?;
    vouched.caller.ip = ip;
    let caller = &vouched.caller;
    tracing::info!(user = %caller.user, account = ?caller.account.as_ref().map(|a| a.to_string()), refresh = vouched.refresh_token.is_some(), "browser sign-in");
    let previous = cookie(headers, SESSION_COOKIE);
    let id = s.sessions.start(vouched, previous.as_deref())?;
    let mut resp = redirect("/");
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, None));
    h.append(header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
    Ok(resp)
}

/// Sign out: ends the session server-side and removes the cookie; same-origin only (public).
#[utoipa::path(post, path = "/auth/logout", tag = "session", responses((status = 303, description = "signed out, to /"), (status = 403, description = "cross-site request")))]
async fn logout(State(s): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        if !same_origin(&s, &headers) {
            return Err(ApiError::Forbidden(
                "cross-site request refused (Origin is not orderd's)".into(),
            ));
        }
        s.sessions.end(&id);
    }
    let mut resp = redirect("/");
    resp.headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE));
    Ok(resp)
}
