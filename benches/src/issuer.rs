//! `--oidc`: the benchmark's own identity provider, so orderd validates real signed tokens
//! instead of its development tokens. It serves a discovery document and a JWKS with one RSA
//! key on loopback, and mints RS256 `at+jwt` access tokens (RFC 9068) with jsonwebtoken. orderd
//! is started with `ORDERD_OIDC__ISSUER`/`ORDERD_OIDC__AUDIENCE` pointing at it, which also
//! turns orderd's development sign-in off.

use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// The audience orderd is configured with.
pub const AUDIENCE: &str = "urn:orderd-bench";
/// RSA modulus size: what identity providers use by default.
const RSA_BITS: usize = 2048;
const KID: &str = "bench-1";
/// Lifetime of a minted token: longer than any benchmark run.
const TOKEN_TTL_S: u64 = 12 * 3600;

/// A running issuer; its server task ends with the benchmark's runtime.
pub struct BenchIssuer {
    pub url: String,
    key: EncodingKey,
}

impl BenchIssuer {
    /// Generates a key and serves discovery and JWKS on 127.0.0.1 (free port).
    pub async fn start() -> anyhow::Result<BenchIssuer> {
        let private =
            tokio::task::spawn_blocking(|| RsaPrivateKey::new(&mut rand_core::OsRng, RSA_BITS))
                .await?
                .context("generating the RSA key")?;
        let der = private.to_pkcs1_der().context("encoding the RSA key")?;
        let key = EncodingKey::from_rsa_der(der.as_bytes());
        let public = private.to_public_key();
        let jwk = json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KID,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let discovery = json!({
            "issuer": url,
            "jwks_uri": format!("{url}/jwks"),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let jwks = json!({ "keys": [jwk] });
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { Json(discovery) }),
            )
            .route("/jwks", get(move || async move { Json(jwks) }));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("the benchmark's issuer stopped: {e}");
            }
        });
        Ok(BenchIssuer { url, key })
    }

    /// orderd's settings for this issuer (environment variables).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ORDERD_OIDC__ISSUER".to_owned(), self.url.clone()),
            ("ORDERD_OIDC__AUDIENCE".to_owned(), AUDIENCE.to_owned()),
        ]
    }

    /// A signed access token (`Bearer ...`) for `user` with `roles`, of `account` if any.
    pub fn token(
        &self,
        account: Option<&str>,
        user: &str,
        roles: &[&str],
    ) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut claims = json!({
            "iss": self.url, "aud": AUDIENCE, "sub": user, "roles": roles,
            "iat": now, "nbf": now, "exp": now + TOKEN_TTL_S,
            "client_id": "orderd-bench", "jti": format!("{user}-{}", account.unwrap_or("-")),
        });
        if let (Some(a), Value::Object(m)) = (account, &mut claims) {
            m.insert("account_id".into(), Value::String(a.to_owned()));
        }
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(KID.into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        Ok(format!("Bearer {token}"))
    }
}
