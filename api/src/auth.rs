//! Who is calling: a bearer token verified here becomes a `Caller` (account, user, roles,
//! warehouse) plus the client IP. The account comes only from the verified token, never from
//! the path or body.
//!
//! Today tokens are signed by orderd's development sign-in (HS256 with a key generated per data
//! directory). An OIDC issuer replaces it in production; the dev sign-in is then off.

use crate::client_ip::client_ip;
use crate::error::ApiError;
use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orderd_actors::audit::Caller;
use orderd_domain::account::Role;
use orderd_domain::ids::{AccountId, UserId, WarehouseId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

pub const DEV_ISSUER: &str = "orderd-dev";
pub const AUDIENCE: &str = "orderd";
/// Lifetime of a dev token.
pub const DEV_TOKEN_TTL_S: u64 = 12 * 3600;
/// Clock skew tolerated on exp/nbf.
pub const LEEWAY_S: u64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse_id: Option<String>,
}

/// Verifies (and, in development, issues) tokens.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
}

impl Authenticator {
    /// The development authenticator: HS256 with `key` (at least 32 bytes).
    pub fn dev(key: &[u8]) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[DEV_ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = LEEWAY_S;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Authenticator {
            decoding: DecodingKey::from_secret(key),
            encoding: Some(EncodingKey::from_secret(key)),
            validation,
        }
    }

    pub fn can_issue(&self) -> bool {
        self.encoding.is_some()
    }

    pub fn issue(&self, claims: &Claims) -> Result<String, ApiError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or_else(|| ApiError::NotFound("development sign-in is off".into()))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| ApiError::Unauthorized(format!("invalid bearer token: {e}")))
    }
}

/// Turns verified claims into a caller; unknown roles or malformed ids refuse the token.
pub fn caller_from_claims(c: &Claims, ip: String) -> Result<Caller, ApiError> {
    let bad = |what: &str| ApiError::Unauthorized(format!("token has an invalid {what}"));
    let roles = c
        .roles
        .iter()
        .map(|r| Role::parse(r).ok_or_else(|| bad("role")))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let account = c
        .account_id
        .as_deref()
        .map(AccountId::parse)
        .transpose()
        .map_err(|_| bad("account"))?;
    let warehouse = c
        .warehouse_id
        .as_deref()
        .map(WarehouseId::parse)
        .transpose()
        .map_err(|_| bad("warehouse"))?;
    let user = UserId::parse(&c.sub).map_err(|_| bad("subject"))?;
    if account.is_none()
        && !roles
            .iter()
            .any(|r| matches!(r, Role::Operator | Role::Warehouse))
    {
        return Err(bad(
            "account (only operators and warehouses act without one)",
        ));
    }
    if roles.contains(&Role::Warehouse) && warehouse.is_none() {
        return Err(bad("warehouse (the warehouse role needs one)"));
    }
    Ok(Caller {
        account,
        user,
        roles,
        warehouse,
        ip,
    })
}

/// Extractor: the verified caller of this request.
pub struct Auth(pub Caller);

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Auth, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be a Bearer token".into()))?;
        let claims = state.auth.verify(token.trim())?;
        let ip = client_ip(parts, &state.trusted_proxies);
        caller_from_claims(&claims, ip).map(Auth)
    }
}

impl Auth {
    /// Refuses with 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<&Caller, ApiError> {
        if roles.iter().any(|r| self.0.has(*r)) {
            Ok(&self.0)
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::Forbidden(format!(
                "this needs one of the roles: {}",
                names.join(", ")
            )))
        }
    }

    /// The caller's account, for account-scoped routes.
    pub fn account(&self) -> Result<&AccountId, ApiError> {
        self.0.account.as_ref().ok_or_else(|| {
            ApiError::Forbidden("this route acts on the token's account; the token has none".into())
        })
    }
}
