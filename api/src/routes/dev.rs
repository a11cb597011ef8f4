//! Development sign-in: issues tokens for demo users. Mounted only in development mode, never
//! when an identity provider is configured.

use crate::auth::{Claims, AUDIENCE, DEV_ISSUER, DEV_TOKEN_TTL_S};
use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::ApiState;
use axum::extract::State;
use orderd_domain::account::Role;
use orderd_domain::ids::{AccountId, UserId, WarehouseId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(dev_token))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Account to act for (not needed for operator or warehouse).
    pub account: Option<String>,
    pub user: String,
    pub roles: Vec<String>,
    /// For the warehouse role.
    pub warehouse: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// DEVELOPMENT ONLY: a signed bearer token for an account, user and roles.
#[utoipa::path(post, path = "/v1/dev/token", tag = "dev", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 404, description = "unknown account or dev sign-in off")))]
async fn dev_token(
    State(s): State<ApiState>,
    Json(req): Json<TokenRequest>,
) -> ApiResult<axum::Json<TokenResponse>> {
    let bad = |f: &str, e: String| ApiError::bad_request("invalid_field", format!("{f}: {e}"));
    let user = UserId::parse(&req.user).map_err(|e| bad("user", e.to_string()))?;
    let roles: Vec<Role> = req
        .roles
        .iter()
        .map(|r| Role::parse(r).ok_or_else(|| bad("roles", format!("unknown role {r:?}"))))
        .collect::<Result<_, _>>()?;
    if roles.is_empty() {
        return Err(bad("roles", "at least one role".into()));
    }
    let account = req
        .account
        .as_deref()
        .map(AccountId::parse)
        .transpose()
        .map_err(|e| bad("account", e.to_string()))?;
    if let Some(a) = &account {
        if !s.engine.accounts.exists(a) {
            return Err(ApiError::NotFound(format!("account {a} not found")));
        }
    }
    let warehouse = req
        .warehouse
        .as_deref()
        .map(WarehouseId::parse)
        .transpose()
        .map_err(|e| bad("warehouse", e.to_string()))?;
    if let Some(w) = &warehouse {
        if s.engine.warehouse(w).is_none() {
            return Err(ApiError::NotFound(format!("warehouse {w} not found")));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        iss: DEV_ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: user.to_string(),
        exp: now + DEV_TOKEN_TTL_S,
        iat: now,
        account_id: account.map(|a| a.to_string()),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        warehouse_id: warehouse.map(|w| w.to_string()),
    };
    // Validate the same way a request would, so a token we issue is always usable.
    crate::auth::caller_from_claims(&claims, String::new())
        .map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))?;
    Ok(axum::Json(TokenResponse {
        access_token: s.auth.issue(&claims)?,
        token_type: "Bearer",
        expires_in: DEV_TOKEN_TTL_S,
    }))
}
