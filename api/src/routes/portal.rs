//! Who is signed in: `GET /v1/me` for programs and the small page at `/` for people (until the
//! portal exists), plus the browser sign-in routes (`/auth/...`, see `session.rs`).

use crate::auth::Auth;
use crate::error::ApiResult;
use crate::ApiState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use orderd_actors::audit::Caller;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(page))
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
    let who = crate::session::signed_in(&s, &headers);
    // Every shown value is an id already parsed to [A-Za-z0-9._:-], so nothing needs escaping.
    let body = match who {
        Some(c) => {
            let me = Me::from(&c);
            format!(
                "<p>Signed in as <b id=\"user\">{}</b> for account <b id=\"account\">{}</b> with roles <b id=\"roles\">{}</b>.</p>\
                 <form method=\"post\" action=\"/auth/logout\"><button type=\"submit\">Sign out</button></form>",
                me.user,
                me.account.as_deref().unwrap_or("(none)"),
                me.roles.join(", ")
            )
        }
        None => {
            "<p>Not signed in. <a href=\"/auth/login\">Sign in with your company account</a></p>"
                .to_owned()
        }
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>orderd</title></head><body><h1>orderd</h1>{body}</body></html>"
    ))
}
