//! Who is calling: a bearer token verified here becomes a `Caller` (account, user, roles,
//! warehouse) plus the client IP. The account comes only from the verified token, never from
//! the path or body.
//!
//! Tokens come from the configured identity providers (OIDC, see `oidc.rs`) or, in the embedded
//! default only, from orderd's development sign-in (HS256 with a key generated per data
//! directory). Configuring an issuer turns the development sign-in off.

use crate::error::ApiError;
use crate::oidc::Oidc;
use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orderd_actors::audit::Caller;
use orderd_domain::account::Role;
use orderd_domain::ids::{AccountId, UserId, WarehouseId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

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

/// Verifies bearer tokens: the development sign-in's own (HS256, embedded default only) or
/// those of the configured identity providers (OIDC). Never both: configuring an issuer turns
/// the development sign-in off.
#[derive(Clone)]
pub struct Authenticator {
    dev: Option<DevSigner>,
    oidc: Option<Arc<Oidc>>,
}

#[derive(Clone)]
struct DevSigner {
    decoding: DecodingKey,
    encoding: EncodingKey,
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
            dev: Some(DevSigner {
                decoding: DecodingKey::from_secret(key),
                encoding: EncodingKey::from_secret(key),
                validation,
            }),
            oidc: None,
        }
    }

    /// Tokens of the configured identity providers only.
    pub fn oidc(oidc: Arc<Oidc>) -> Authenticator {
        Authenticator {
            dev: None,
            oidc: Some(oidc),
        }
    }

    /// Refuses every token (no sign-in configured).
    pub fn none() -> Authenticator {
        Authenticator {
            dev: None,
            oidc: None,
        }
    }

    pub fn can_issue(&self) -> bool {
        self.dev.is_some()
    }

    /// The identity providers, when configured.
    pub fn identity_providers(&self) -> Option<&Arc<Oidc>> {
        self.oidc.as_ref()
    }

    pub fn issue(&self, claims: &Claims) -> Result<String, ApiError> {
        let dev = self
            .dev
            .as_ref()
            .ok_or_else(|| ApiError::NotFound("development sign-in is off".into()))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &dev.encoding)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Verifies a development token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let dev = self
            .dev
            .as_ref()
            .ok_or_else(|| ApiError::Unauthorized("invalid bearer token".into()))?;
        jsonwebtoken::decode::<Claims>(token, &dev.decoding, &dev.validation)
            .map(|d| d.claims)
            .map_err(|e| ApiError::Unauthorized(refused_token(&e)))
    }

    /// The caller a bearer token still stands for, asked by an open event stream (not a
    /// request: the token-check counter is left alone).
    pub async fn recheck(&self, token: &str) -> Result<Caller, ApiError> {
        match (&self.oidc, &self.dev) {
            (Some(oidc), _) => oidc.recheck(token).await,
            _ => self.authenticate(token, String::new()).await,
        }
    }

    /// The caller a bearer token stands for (401 when it is not acceptable).
    pub async fn authenticate(&self, token: &str, ip: String) -> Result<Caller, ApiError> {
        match (&self.oidc, &self.dev) {
            (Some(oidc), _) => oidc.verify(token, ip).await,
            (None, Some(_)) => caller_from_claims(&self.verify(token)?, ip),
            (None, None) => Err(ApiError::Unauthorized(
                "no sign-in is configured: every token is refused".into(),
            )),
        }
    }
}

/// Who a verified token names, before it is checked and parsed into a caller.
pub struct CallerClaims {
    pub user: String,
    pub account: Option<String>,
    pub roles: Vec<String>,
    pub warehouse: Option<String>,
}

/// Turns verified development claims into a caller.
pub fn caller_from_claims(c: &Claims, ip: String) -> Result<Caller, ApiError> {
    caller_from_parts(
        &CallerClaims {
            user: c.sub.clone(),
            account: c.account_id.clone(),
            roles: c.roles.clone(),
            warehouse: c.warehouse_id.clone(),
        },
        ip,
    )
}

/// Turns verified claims into a caller; unknown roles or malformed ids refuse the token.
pub fn caller_from_parts(c: &CallerClaims, ip: String) -> Result<Caller, ApiError> {
    let bad = |what: &str| ApiError::Unauthorized(format!("token has an invalid {what}"));
    let roles = c
        .roles
        .iter()
        .map(|r| Role::parse(r).ok_or_else(|| bad("role")))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let account = c
        .account
        .as_deref()
        .map(AccountId::parse)
        .transpose()
        .map_err(|_| bad("account"))?;
    let warehouse = c
        .warehouse
        .as_deref()
        .map(WarehouseId::parse)
        .transpose()
        .map_err(|_| bad("warehouse"))?;
    let user = UserId::parse(&c.user).map_err(|_| bad("subject"))?;
    if roles.is_empty() {
        return Err(bad("role list (it grants no orderd role)"));
    }
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

/// The bearer token of a request, if it has an Authorization header (`Err` when malformed).
pub fn bearer(parts: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(header) = parts.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let header = header
        .to_str()
        .map_err(|_| ApiError::Unauthorized("Authorization must be a Bearer token".into()))?;
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(ApiError::Unauthorized(
            "Authorization must be a Bearer token".into(),
        )),
    }
}

/// Extractor: the verified caller of this request.
pub struct Auth(pub Caller);

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    /// The caller the access guard (`policy::guard`) verified for this request.
    async fn from_request_parts(parts: &mut Parts, _state: &ApiState) -> Result<Auth, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Auth)
            .ok_or(ApiError::MissingToken)
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

/// Why a bearer token was refused, in words (jsonwebtoken's own Display names its enum).
pub(crate) fn refused_token(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    let why = match e.kind() {
        K::InvalidToken | K::Base64(_) | K::Utf8(_) => "it is not a well-formed JWT".to_owned(),
        K::Json(e) => format!("its header or claims do not fit ({e})"),
        K::InvalidSignature => "its signature does not verify".to_owned(),
        K::ExpiredSignature => "it has expired".to_owned(),
        K::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        K::InvalidAudience => "it is not meant for orderd (aud)".to_owned(),
        K::InvalidIssuer => "its issuer is not accepted".to_owned(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "its algorithm is not accepted".to_owned(),
        K::MissingRequiredClaim(c) => format!("it lacks the claim {c}"),
        _ => e.to_string(),
    };
    format!("invalid bearer token: {why}")
}
