//! The OAuth 2.0 client side of the browser sign-in, through the `oauth2` crate: the
//! authorization URL with PKCE (S256), state, nonce and resource indicator, and the exchange of
//! the code for tokens. ID-token and access-token verification stay in `oidc.rs`.
//!
//! `oauth2` talks through orderd's own reqwest client (rustls with ring, the configured
//! timeout, no redirects followed) via [`bounded_http`], which also bounds the answer to
//! `oidc.document_bytes_max` (oauth2's bundled reqwest adapter reads any length).

use crate::error::ApiError;
use crate::oidc::{Discovery, Issuer, Oidc};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// The OpenID Connect part of the token answer (a refresh's answer may lack it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdToken {
    #[serde(default)]
    pub id_token: Option<String>,
}
impl ExtraTokenFields for IdToken {}

type TokenAnswer = StandardTokenResponse<IdToken, BasicTokenType>;

/// An OAuth client with an authorization and a token endpoint.
type SignInClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Where to send the browser, and the PKCE verifier to keep until the callback.
pub struct Authorization {
    pub url: String,
    pub verifier: String,
}

/// The tokens a redeemed code gave.
pub struct Tokens {
    pub access_token: String,
    pub id_token: String,
    /// When the provider gives one (see `oidc.scopes`: many want `offline_access`).
    pub refresh_token: Option<String>,
}

/// The tokens a refresh gave: a new access token, and a new refresh token when the provider
/// rotates them.
pub struct Refreshed {
    pub access_token: String,
    pub refresh_token: Option<String>,
}

/// Why a refresh failed.
#[derive(Debug)]
pub enum RefreshError {
    /// The provider refused it (`invalid_grant`: the user disabled, the grant revoked or
    /// expired): the session is over.
    Refused(String),
    /// The provider could not be asked, or answered what is not a token answer.
    Unavailable(String),
}

fn client(
    issuer: &Issuer,
    d: &Discovery,
    redirect_uri: Option<&str>,
) -> Result<SignInClient, ApiError> {
    let bad = |what: &str, e: String| ApiError::Unavailable(format!("bad {what}: {e}"));
    let auth = d.authorization_endpoint.clone().ok_or_else(|| {
        ApiError::Unavailable("the identity provider has no authorization endpoint".into())
    })?;
    let token = d.token_endpoint.clone().ok_or_else(|| {
        ApiError::Unavailable("the identity provider has no token endpoint".into())
    })?;
    let client = oauth2::Client::new(ClientId::new(issuer.settings.client_id.clone()))
        .set_client_secret(ClientSecret::new(issuer.settings.client_secret.0.clone()))
        .set_auth_uri(AuthUrl::new(auth).map_err(|e| bad("authorization endpoint", e.to_string()))?)
        .set_token_uri(TokenUrl::new(token).map_err(|e| bad("token endpoint", e.to_string()))?);
    Ok(match redirect_uri {
        None => client,
        Some(uri) => client.set_redirect_uri(
            RedirectUrl::new(uri.to_owned())
                .map_err(|e| ApiError::bad_request("no_host", e.to_string()))?,
        ),
    })
}

/// The authorization URL of a sign-in with this `state` and `nonce` (code flow, PKCE S256,
/// resource = the issuer's audience, so the access token is a JWT for orderd).
pub fn authorize(
    issuer: &Issuer,
    d: &Discovery,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
) -> Result<Authorization, ApiError> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let client = client(issuer, d, Some(redirect_uri))?;
    let (url, _) = client
        .authorize_url(|| CsrfToken::new(state.to_owned()))
        .add_scopes(issuer.settings.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .add_extra_param("nonce", nonce)
        .add_extra_param("resource", &issuer.settings.audience)
        .url();
    Ok(Authorization {
        url: url.to_string(),
        verifier: verifier.secret().clone(),
    })
}

/// Redeems `code` at the token endpoint (client authentication: HTTP Basic).
pub async fn redeem(
    oidc: &Oidc,
    issuer: &Issuer,
    d: &Discovery,
    redirect_uri: &str,
    code: &str,
    verifier: String,
) -> Result<Tokens, ApiError> {
    let client = client(issuer, d, Some(redirect_uri))?;
    let http = Bounded(oidc);
    let answer = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .add_extra_param("resource", &issuer.settings.audience)
        .request_async(&http)
        .await
        .map_err(|e| match e {
            RequestTokenError::Request(e) => ApiError::Unavailable(format!("token endpoint: {e}")),
            RequestTokenError::ServerResponse(e) => {
                ApiError::Unauthorized(format!("the code was not redeemed: {e}"))
            }
            other => ApiError::Unauthorized(format!("unexpected token answer: {other}")),
        })?;
    Ok(Tokens {
        access_token: answer.access_token().secret().clone(),
        id_token: answer.extra_fields().id_token.clone().ok_or_else(|| {
            ApiError::Unauthorized("the token answer has no id_token (is openid a scope?)".into())
        })?,
        refresh_token: answer.refresh_token().map(|t| t.secret().clone()),
    })
}

/// Asks the token endpoint for a new access token with `refresh_token` (client
/// authentication: HTTP Basic; resource = the issuer's audience, as at sign-in).
pub async fn refresh(
    oidc: &Oidc,
    issuer: &Issuer,
    d: &Discovery,
    refresh_token: &str,
) -> Result<Refreshed, RefreshError> {
    let client = client(issuer, d, None).map_err(|e| RefreshError::Unavailable(e.to_string()))?;
    let http = Bounded(oidc);
    let answer = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
        .add_extra_param("resource", &issuer.settings.audience)
        .request_async(&http)
        .await
        .map_err(|e| match e {
            // Only `invalid_grant` says the grant is over; `temporarily_unavailable` and the
            // like say nothing about the user.
            RequestTokenError::ServerResponse(e)
                if *e.error() == BasicErrorResponseType::InvalidGrant =>
            {
                RefreshError::Refused(e.to_string())
            }
            RequestTokenError::ServerResponse(e) => {
                RefreshError::Unavailable(format!("the token endpoint answered {e}"))
            }
            RequestTokenError::Request(e) => {
                RefreshError::Unavailable(format!("token endpoint: {e}"))
            }
            other => RefreshError::Unavailable(format!("unexpected token answer: {other}")),
        })?;
    Ok(Refreshed {
        access_token: answer.access_token().secret().clone(),
        refresh_token: answer.refresh_token().map(|t| t.secret().clone()),
    })
}

/// A request to the identity provider failed or answered too much.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// orderd's HTTP client for oauth2's requests.
struct Bounded<'a>(&'a Oidc);

impl<'c> AsyncHttpClient<'c> for Bounded<'_> {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, req: HttpRequest) -> Self::Future {
        Box::pin(bounded_http(self.0, req))
    }
}

/// Runs one of oauth2's requests with orderd's reqwest client, reading at most
/// `oidc.document_bytes_max` bytes of the answer.
async fn bounded_http(oidc: &Oidc, req: HttpRequest) -> Result<HttpResponse, HttpError> {
    let req = reqwest::Request::try_from(req).map_err(|e| HttpError(e.to_string()))?;
    let mut resp = oidc
        .http()
        .execute(req)
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    let max = oidc.document_bytes_max();
    let mut builder = oauth2::http::Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        builder = builder.header(name.as_str(), value.as_bytes());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| HttpError(e.to_string()))? {
        if body.len() + chunk.len() > max {
            return Err(HttpError(format!(
                "the answer is longer than oidc.document_bytes_max ({max}) bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    builder.body(body).map_err(|e| HttpError(e.to_string()))
}
