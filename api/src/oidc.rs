//! OIDC resource server: bearer access tokens of configured identity providers become callers.
//!
//! Per issuer, orderd reads the discovery document and the JWKS it names, and keeps the keys in
//! memory. A token is accepted only when all of this holds:
//! - its header names an allowed algorithm (RS256, ES256, EdDSA: never `none`, never HMAC) and
//!   no key source of its own (`jku`, `x5u`, `jwk`, `x5c`): keys come only from the JWKS;
//! - `typ`, when present, is `at+jwt` (RFC 9068), so ID tokens and other JWTs are refused;
//! - the signature verifies with the issuer's key of that `kid` (jsonwebtoken does the work);
//! - `iss` is exactly the configured issuer, `aud` contains the configured audience, `exp` and
//!   `nbf` hold within the configured leeway (at most [`LEEWAY_MAX_S`]);
//! - the account it names is one the issuer is bound to, and every role it grants is one the
//!   issuer may grant.
//!
//! An unknown `kid` triggers at most one JWKS refetch per `jwks_refetch_interval_min_ms` (all
//! requests waiting meanwhile share it), so rotation at the provider needs no restart. When the
//! JWKS endpoint is down the cached keys keep working; without a key nothing validates.
//!
//! A token that passed all of this is remembered in a bounded cache (`oidc.token_cache_max`
//! entries, 0: off; see `token_cache.rs`), so its signature, the costly part, is checked once
//! rather than on every request. The key is the token's SHA-256 (the token is never stored);
//! the entry holds the caller without the request's IP, `exp`, `nbf`, the issuer and the
//! `kid`. A hit is served only while `exp`/`nbf` hold now within the same leeway and the
//! issuer's current JWKS still publishes the very key (same `kid`, same key material) that
//! verified it, so a key removed at the provider ends its tokens at the next JWKS refresh, as
//! without the cache. Any other hit is dropped and the token is checked in full again.
//! Refusals are never cached, and a changed token is another key.

use crate::auth::{caller_from_parts, CallerClaims};
use crate::error::ApiError;
use crate::token_cache::{TokenCache, TokenDigest, Verified};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use orderd_actors::audit::Caller;
use orderd_domain::account::Role;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The only signature algorithms accepted.
pub const ALLOWED_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// The most clock skew that may be configured for `exp` and `nbf`.
pub const LEEWAY_MAX_S: u64 = 60;
/// The largest `token_cache_max` accepted (about a few hundred MB of entries at most).
pub const TOKEN_CACHE_MAX_LIMIT: usize = 1_000_000;
/// Account list entry meaning "any account".
pub const ANY_ACCOUNT: &str = "*";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// A secret setting: its Debug output is redacted, so printing the configuration never shows it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

/// One identity provider and what it may speak for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerSettings {
    /// The issuer URL, compared exactly with `iss` (https, or http on a loopback address).
    pub issuer: String,
    /// Must be among the token's `aud`.
    pub audience: String,
    /// Accounts this issuer may speak for; `"*"` is any account.
    pub accounts: Vec<String>,
    /// Roles this issuer may grant; a token with any other known role is refused.
    pub roles: Vec<String>,
    pub account_claim: String,
    pub user_claim: String,
    pub roles_claim: String,
    pub warehouse_claim: String,
    /// Browser sign-in (code flow with PKCE): orderd's client at this issuer. Empty: no sign-in.
    pub client_id: String,
    /// The client's secret (never logged: its Debug is redacted).
    pub client_secret: Secret,
    /// Scopes asked for at sign-in.
    pub scopes: Vec<String>,
}

impl IssuerSettings {
    /// Whether this issuer signs in users of accounts (grants an account role), and then
    /// whether for any account, and the accounts it names.
    fn account_users(&self) -> Option<(bool, BTreeSet<&str>)> {
        let users = (self.roles.iter())
            .filter_map(|r| Role::parse(r))
            .any(|r| crate::routes::ACCOUNT_ROLES.contains(&r));
        users.then(|| {
            let any = self.accounts.iter().any(|a| a == ANY_ACCOUNT);
            (any, self.accounts.iter().map(String::as_str).collect())
        })
    }
}

impl Default for IssuerSettings {
    fn default() -> IssuerSettings {
        IssuerSettings {
            issuer: String::new(),
            audience: String::new(),
            accounts: vec![],
            roles: ["buyer", "approver", "account_admin"]
                .map(String::from)
                .to_vec(),
            account_claim: "account_id".into(),
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            warehouse_claim: "warehouse_id".into(),
            client_id: String::new(),
            client_secret: Secret::default(),
            scopes: vec!["openid".into()],
        }
    }
}

/// The `[oidc]` settings: one issuer in short form (`--oidc-issuer`, `--oidc-audience`, bound
/// to every account and role) and/or a list of issuers each bound to its accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcSettings {
    /// Short form: the one identity provider (any account, any role). Empty: none.
    pub issuer: String,
    pub audience: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub account_claim: String,
    pub user_claim: String,
    pub roles_claim: String,
    pub warehouse_claim: String,
    pub scopes: Vec<String>,
    /// One entry per customer company's identity provider.
    pub issuers: Vec<IssuerSettings>,
    /// Clock skew tolerated on `exp` and `nbf` (at most 60).
    pub leeway_s: u64,
    /// Timeout of one request to a provider (discovery, JWKS, token endpoint).
    pub http_timeout_ms: u64,
    /// An unknown `kid` refetches the JWKS at most once per this interval.
    pub jwks_refetch_interval_min_ms: u64,
    /// Keys are refreshed in the background once half this old (removed keys stop working);
    /// while the provider is unreachable, the cached keys stay in use.
    pub jwks_max_age_ms: u64,
    /// Most keys kept per issuer; a larger JWKS is refused (the cached keys stay).
    pub jwks_keys_max: usize,
    /// Largest discovery document, JWKS or token response read.
    pub document_bytes_max: usize,
    /// Most verified access tokens remembered, so a token's signature is checked once rather
    /// than on every request (a few hundred bytes each). 0: no cache, every request verifies.
    pub token_cache_max: usize,
}

impl Default for OidcSettings {
    fn default() -> OidcSettings {
        let d = IssuerSettings::default();
        OidcSettings {
            issuer: String::new(),
            audience: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            account_claim: d.account_claim,
            user_claim: d.user_claim,
            roles_claim: d.roles_claim,
            warehouse_claim: d.warehouse_claim,
            scopes: d.scopes,
            issuers: vec![],
            leeway_s: LEEWAY_MAX_S,
            http_timeout_ms: 5_000,
            jwks_refetch_interval_min_ms: 10_000,
            jwks_max_age_ms: 3_600_000,
            jwks_keys_max: 32,
            document_bytes_max: 256 * 1024,
            token_cache_max: 10_000,
        }
    }
}

impl OidcSettings {
    /// Whether any identity provider is configured.
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty() || !self.issuers.is_empty()
    }

    /// Every issuer, the short form first (bound to every account and role).
    pub fn all_issuers(&self) -> Vec<IssuerSettings> {
        let mut out = vec![];
        if !self.issuer.is_empty() {
            out.push(IssuerSettings {
                issuer: self.issuer.clone(),
                audience: self.audience.clone(),
                accounts: vec![ANY_ACCOUNT.into()],
                roles: Role::ALL.iter().map(|r| r.as_str().to_owned()).collect(),
                account_claim: self.account_claim.clone(),
                user_claim: self.user_claim.clone(),
                roles_claim: self.roles_claim.clone(),
                warehouse_claim: self.warehouse_claim.clone(),
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
                scopes: self.scopes.clone(),
            });
        }
        out.extend(self.issuers.iter().cloned());
        out
    }

    /// Pairs of issuers that may both sign in users of the same account (both grant an
    /// account role, and their accounts overlap, `"*"` overlapping every account), each with
    /// what they share: user ids are the issuers' `user_claim` as is, not keyed by issuer, so
    /// both issuers' `alice` are one user of that account. Worth a warning at start, not a
    /// refusal: two providers of one company (or a provider for everyone) are legitimate.
    pub fn shared_accounts(&self) -> Vec<(String, String, String)> {
        let issuers = self.all_issuers();
        let mut out = vec![];
        for (i, a) in issuers.iter().enumerate() {
            for b in &issuers[i + 1..] {
                let (Some((a_any, a_named)), Some((b_any, b_named))) =
                    (a.account_users(), b.account_users())
                else {
                    continue;
                };
                let shared: Vec<&str> = match (a_any, b_any) {
                    (true, true) => vec![ANY_ACCOUNT],
                    (true, false) => b_named.into_iter().collect(),
                    (false, true) => a_named.into_iter().collect(),
                    (false, false) => a_named.intersection(&b_named).copied().collect(),
                };
                if !shared.is_empty() {
                    let shared = if shared == [ANY_ACCOUNT] {
                        "every account".to_owned()
                    } else {
                        shared.join(", ")
                    };
                    out.push((a.issuer.clone(), b.issuer.clone(), shared));
                }
            }
        }
        out
    }

    /// Every bad value, named.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = vec![];
        if self.leeway_s > LEEWAY_MAX_S {
            errs.push(format!("oidc.leeway_s must be at most {LEEWAY_MAX_S}"));
        }
        for (name, v) in [
            ("http_timeout_ms", self.http_timeout_ms),
            (
                "jwks_refetch_interval_min_ms",
                self.jwks_refetch_interval_min_ms,
            ),
            ("jwks_max_age_ms", self.jwks_max_age_ms),
        ] {
            if v == 0 {
                errs.push(format!("oidc.{name} must be above 0"));
            }
        }
        if self.jwks_keys_max == 0 || self.document_bytes_max == 0 {
            errs.push("oidc.jwks_keys_max and oidc.document_bytes_max must be above 0".into());
        }
        if self.token_cache_max > TOKEN_CACHE_MAX_LIMIT {
            errs.push(format!(
                "oidc.token_cache_max must be at most {TOKEN_CACHE_MAX_LIMIT} (0 turns the cache off)"
            ));
        }
        if self.issuer.is_empty() != self.audience.is_empty() {
            errs.push(
                "oidc.issuer and oidc.audience go together (--oidc-issuer, --oidc-audience)".into(),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.all_issuers().iter().enumerate() {
            let at = if s.issuer.is_empty() {
                format!("oidc issuer #{i}")
            } else {
                format!("oidc issuer {}", s.issuer)
            };
            if !seen.insert(s.issuer.clone()) {
                errs.push(format!("{at} is configured twice"));
            }
            if let Err(e) = check_issuer_url(&s.issuer) {
                errs.push(format!("{at}: {e}"));
            }
            if s.audience.is_empty() {
                errs.push(format!("{at}: audience is empty"));
            }
            if s.accounts.is_empty() {
                errs.push(format!(
                    "{at}: accounts must list the accounts it may speak for (or \"*\")"
                ));
            }
            for r in &s.roles {
                if Role::parse(r).is_none() {
                    errs.push(format!("{at}: unknown role {r:?}"));
                }
            }
            // Operators and warehouses act across accounts: an issuer bound to some accounts
            // must not make one (its tokens would speak for accounts it was not bound to).
            let global = (s.roles.iter())
                .filter(|r| matches!(Role::parse(r), Some(Role::Operator | Role::Warehouse)))
                .collect::<Vec<_>>();
            if !global.is_empty() && !s.accounts.iter().any(|a| a == ANY_ACCOUNT) {
                errs.push(format!(
                    "{at}: may grant {global:?} only with accounts = [\"*\"]: those roles act across accounts"
                ));
            }
            for (name, v) in [
                ("account_claim", &s.account_claim),
                ("user_claim", &s.user_claim),
                ("roles_claim", &s.roles_claim),
                ("warehouse_claim", &s.warehouse_claim),
            ] {
                if v.is_empty() {
                    errs.push(format!("{at}: {name} is empty"));
                }
            }
            if s.client_id.is_empty() != s.client_secret.0.is_empty() {
                errs.push(format!("{at}: client_id and client_secret go together"));
            }
        }
        errs
    }
}

/// https, or plain http on a loopback address (tests, a provider on the same host).
fn check_issuer_url(issuer: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(issuer).map_err(|e| format!("not a URL: {e}"))?;
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be https (http only on a loopback address)".into()),
    }
}

/// One verification key of an issuer.
struct Key {
    alg: Algorithm,
    key: DecodingKey,
    /// SHA-256 of the JWK as published: a cached token is served only while its issuer still
    /// publishes the very key that verified it (not merely a key of the same `kid`).
    fingerprint: [u8; 32],
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    fetched: Option<Instant>,
}

impl KeySet {
    /// The key a token's `kid` names; without a kid, only an issuer with a single key is
    /// unambiguous.
    fn find(&self, kid: Option<&str>) -> Option<&Arc<Key>> {
        match kid {
            Some(k) => self.by_kid.get(k),
            None if self.by_kid.len() == 1 => self.by_kid.values().next(),
            None => None,
        }
    }
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    jwks_uri: Option<String>,
}

/// What orderd learned from an issuer's discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
}

/// One configured issuer with its cached keys.
pub struct Issuer {
    pub settings: IssuerSettings,
    roles: BTreeSet<Role>,
    any_account: bool,
    accounts: BTreeSet<String>,
    validation: Validation,
    keys: ArcSwap<KeySet>,
    refresh: tokio::sync::Mutex<RefreshState>,
    discovery: ArcSwap<Option<Discovery>>,
}

/// The identity providers orderd trusts.
pub struct Oidc {
    issuers: HashMap<String, Arc<Issuer>>,
    order: Vec<String>,
    http: reqwest::Client,
    limits: OidcSettings,
    /// Verified access tokens; `None` when `token_cache_max` is 0.
    token_cache: Option<TokenCache>,
    /// Access tokens whose signature was checked (those not served from the cache).
    signature_checks: AtomicU64,
}

#[derive(Deserialize)]
struct IssOnly {
    iss: Option<String>,
}

fn unauthorized(why: impl Into<String>) -> ApiError {
    ApiError::Unauthorized(why.into())
}

impl Oidc {
    /// From validated settings; no network yet (see [`Oidc::warm_up`]).
    pub fn new(settings: &OidcSettings) -> Result<Oidc, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.http_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let mut issuers = HashMap::new();
        let mut order = vec![];
        for s in settings.all_issuers() {
            let mut validation = Validation::new(Algorithm::RS256);
            validation.set_issuer(&[&s.issuer]);
            validation.set_audience(&[&s.audience]);
            validation.leeway = settings.leeway_s.min(LEEWAY_MAX_S);
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            let issuer = Issuer {
                roles: s.roles.iter().filter_map(|r| Role::parse(r)).collect(),
                any_account: s.accounts.iter().any(|a| a == ANY_ACCOUNT),
                accounts: s.accounts.iter().cloned().collect(),
                validation,
                keys: ArcSwap::from_pointee(KeySet::default()),
                refresh: tokio::sync::Mutex::new(RefreshState::default()),
                discovery: ArcSwap::from_pointee(None),
                settings: s.clone(),
            };
            order.push(s.issuer.clone());
            issuers.insert(s.issuer.clone(), Arc::new(issuer));
        }
        Ok(Oidc {
            issuers,
            order,
            http,
            limits: settings.clone(),
            token_cache: TokenCache::new(settings.token_cache_max),
            signature_checks: AtomicU64::new(0),
        })
    }

    /// Keeps every issuer's keys fresh for as long as the process runs, in the background, so
    /// that no request waits for a provider while there are keys to check with: at once (the
    /// start-up fetch of discovery and keys), then each issuer's again once half of
    /// `jwks_max_age_ms` has passed since its keys were fetched, and after a failure once
    /// `jwks_refetch_interval_min_ms` has passed (the cached keys stay in use meanwhile).
    /// Issuers are refreshed side by side: a provider that hangs delays no other. Spawn it
    /// once.
    pub async fn keep_keys_fresh(self: Arc<Self>) {
        let refresh_after = Duration::from_millis(self.limits.jwks_max_age_ms / 2);
        let retry = Duration::from_millis(self.limits.jwks_refetch_interval_min_ms);
        loop {
            let waits = futures_util::future::join_all(self.order.iter().filter_map(|name| {
                let issuer = self.issuers.get(name)?;
                Some(async {
                    if let Some(left) = issuer.fresh_left(refresh_after) {
                        return left;
                    }
                    self.refresh(
                        issuer,
                        "keys missing or half their oidc.jwks_max_age_ms old",
                    )
                    .await;
                    issuer.fresh_left(refresh_after).unwrap_or(retry)
                })
            }))
            .await;
            let Some(next) = waits.into_iter().min() else {
                return;
            };
            // Never spin, whatever the settings.
            tokio::time::sleep(next.max(Duration::from_millis(100))).await;
        }
    }

    /// The issuer configured as `name`.
    pub fn issuer(&self, name: &str) -> Option<&Arc<Issuer>> {
        self.issuers.get(name)
    }

    /// Verifies an ID token of a browser sign-in: signature by the issuer's key, `iss`, `aud`
    /// = our client id, `exp`, and the `nonce` of this sign-in.
    pub async fn verify_id_token(
        &self,
        issuer: &Issuer,
        token: &str,
        nonce: &str,
    ) -> Result<(), ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("malformed ID token: {e}")))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg)
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
        {
            return Err(unauthorized(
                "the ID token's algorithm or key source is not accepted",
            ));
        }
        let key = self.key(issuer, header.kid.as_deref(), header.alg).await?;
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&issuer.settings.issuer]);
        v.set_audience(&[&issuer.settings.client_id]);
        v.leeway = self.limits.leeway_s.min(LEEWAY_MAX_S);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &v)
            .map_err(|e| unauthorized(format!("invalid ID token: {e}")))?
            .claims;
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(unauthorized("the ID token's nonce is not this sign-in's"));
        }
        Ok(())
    }

    /// The issuers in configuration order.
    pub fn issuers(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.order.iter().filter_map(|n| self.issuers.get(n))
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The issuer's discovery document, fetched when not known yet.
    pub async fn discovery(&self, issuer: &Issuer) -> Result<Discovery, String> {
        if let Some(d) = issuer.discovery.load().as_ref() {
            return Ok(d.clone());
        }
        let d = self.fetch_discovery(&issuer.settings.issuer).await?;
        issuer.discovery.store(Arc::new(Some(d.clone())));
        Ok(d)
    }

    /// Verifies a bearer access token and maps it to a caller.
    ///
    /// A token verified before is served from the token cache while its `exp`/`nbf` still hold
    /// (same leeway) and its issuer still publishes the key that verified it; otherwise the
    /// entry is dropped and the token is verified in full again, which gives the same answer
    /// and error as without a cache. Only successes are cached.
    pub async fn verify(&self, token: &str, ip: String) -> Result<Caller, ApiError> {
        self.verify_counted(token, ip, true).await
    }

    /// [`Oidc::verify`] for an open event stream's recheck: not counted in
    /// `orderd_token_checks_total`, which counts the tokens of requests (a token that expires
    /// under an open stream is no refusal).
    pub async fn recheck(&self, token: &str) -> Result<Caller, ApiError> {
        self.verify_counted(token, String::new(), false).await
    }

    async fn verify_counted(
        &self,
        token: &str,
        ip: String,
        counted: bool,
    ) -> Result<Caller, ApiError> {
        let count = |result: &'static str| {
            if counted {
                metrics::counter!(crate::telemetry::TOKEN_CHECKS, "result" => result).increment(1);
            }
        };
        let Some(cache) = &self.token_cache else {
            let verified = self
                .verify_signed(token)
                .await
                .inspect_err(|_| count("refused"))?;
            count("verified");
            return Ok(verified.caller_at(ip));
        };
        let digest = TokenDigest::of(token);
        if let Some(hit) = cache.get(&digest) {
            if self.still_valid(&hit).await {
                count("cached");
                return Ok(hit.caller_at(ip));
            }
            cache.remove(&digest);
        }
        let verified = self
            .verify_signed(token)
            .await
            .inspect_err(|_| count("refused"))?;
        count("verified");
        let caller = verified.caller_at(ip);
        cache.insert(digest, verified);
        Ok(caller)
    }

    /// Verifies the access token of a browser sign-in or of a session's refresh, in full (no
    /// cache): the caller it names and until when, with `refresh_token` to keep.
    pub async fn verify_vouched(
        &self,
        token: &str,
        refresh_token: Option<String>,
    ) -> Result<crate::session::Vouched, ApiError> {
        let verified = self.verify_signed(token).await;
        let result = if verified.is_ok() {
            "verified"
        } else {
            "refused"
        };
        metrics::counter!(crate::telemetry::TOKEN_CHECKS, "result" => result).increment(1);
        let verified = verified?;
        Ok(crate::session::Vouched {
            caller: verified.caller_at(String::new()),
            issuer: verified.issuer,
            expires_at: verified.exp,
            refresh_token,
        })
    }

    /// Access tokens whose signature was checked so far (every request without the cache;
    /// with it, the first request of each token and those after an entry was dropped).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Entries in the token cache (0 when it is off).
    pub fn token_cache_len(&self) -> usize {
        self.token_cache.as_ref().map_or(0, TokenCache::len)
    }

    /// Whether a cached token may still be served: its time claims hold now, and its issuer's
    /// current keys (see [`Oidc::keep_keys_fresh`]) still hold the key that verified it.
    async fn still_valid(&self, hit: &Verified) -> bool {
        let Some(issuer) = self.issuers.get(&hit.issuer) else {
            return false;
        };
        if !hit.in_time(now_s(), issuer.validation.leeway) {
            return false;
        }
        self.current_keys(issuer)
            .await
            .find(hit.kid.as_deref())
            .is_some_and(|k| k.fingerprint == hit.key_fingerprint)
    }

    /// The full check of an access token: header, issuer, key, signature, claims, caller.
    async fn verify_signed(&self, token: &str) -> Result<Verified, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("malformed token: {e}")))?;
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.x5c.is_some()
        {
            return Err(unauthorized(
                "the token names its own key (jku, x5u, jwk or x5c); keys come only from the issuer's JWKS",
            ));
        }
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(unauthorized(format!(
                "algorithm {:?} is not accepted (RS256, ES256, EdDSA)",
                header.alg
            )));
        }
        if let Some(typ) = &header.typ {
            let t = typ.to_ascii_lowercase();
            if t != "at+jwt" && t != "application/at+jwt" {
                return Err(unauthorized(format!(
                    "token type {typ:?} is not an access token (at+jwt)"
                )));
            }
        }
        // Only to pick the issuer's keys; everything is verified below against that issuer.
        let iss = jsonwebtoken::dangerous::insecure_decode::<IssOnly>(token)
            .ok()
            .and_then(|d| d.claims.iss)
            .ok_or_else(|| unauthorized("the token has no issuer"))?;
        let issuer = self
            .issuers
            .get(&iss)
            .ok_or_else(|| unauthorized("the token's issuer is not trusted"))?;
        let key = self.key(issuer, header.kid.as_deref(), header.alg).await?;
        let mut validation = issuer.validation.clone();
        validation.algorithms = vec![key.alg];
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| unauthorized(crate::auth::refused_token(&e)))?
            .claims;
        // jsonwebtoken has checked both (exp is required), so neither error happens in practice.
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or_else(|| unauthorized("the token's exp is not a time"))?;
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => {
                Some(numeric_date(v).ok_or_else(|| unauthorized("the token's nbf is not a time"))?)
            }
        };
        Ok(Verified {
            caller: issuer.caller(&claims, String::new())?,
            exp,
            nbf,
            issuer: iss,
            kid: header.kid,
            key_fingerprint: key.fingerprint,
        })
    }

    /// The key for `kid`, refetching the JWKS once (rate-limited) when it is unknown.
    async fn key(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<Key>, ApiError> {
        let key = match self.current_keys(issuer).await.find(kid) {
            Some(k) => k.clone(),
            None => {
                self.refresh(issuer, "unknown kid").await;
                issuer
                    .keys
                    .load()
                    .find(kid)
                    .cloned()
                    .ok_or_else(|| unauthorized("the token's signing key is not known"))?
            }
        };
        if key.alg != alg {
            return Err(unauthorized("the token's algorithm does not match its key"));
        }
        Ok(key)
    }

    /// The issuer's keys. Only when there are none yet (the provider was unreachable so far)
    /// does a request fetch them itself (rate-limited); keys that aged are refreshed by
    /// [`Oidc::keep_keys_fresh`] in the background, so that a slow or hanging provider never
    /// holds up requests whose keys are known.
    async fn current_keys(&self, issuer: &Issuer) -> Arc<KeySet> {
        if issuer.keys.load().fetched.is_none() {
            self.refresh(issuer, "no keys yet").await;
        }
        issuer.keys.load_full()
    }

    /// Refetches discovery and JWKS unless another attempt happened within the minimum
    /// interval; concurrent callers wait for the one attempt. A failure keeps the cached keys.
    async fn refresh(&self, issuer: &Issuer, reason: &str) {
        let mut state = issuer.refresh.lock().await;
        let min = Duration::from_millis(self.limits.jwks_refetch_interval_min_ms);
        if state.last_attempt.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        state.last_attempt = Some(Instant::now());
        let result = async {
            let uri = match &state.jwks_uri {
                Some(u) => u.clone(),
                None => {
                    let d = self.discovery(issuer).await?;
                    state.jwks_uri = Some(d.jwks_uri.clone());
                    d.jwks_uri
                }
            };
            self.fetch_keys(&uri).await
        }
        .await;
        match result {
            Ok(set) => {
                tracing::info!(issuer = %issuer.settings.issuer, keys = set.by_kid.len(), reason, "JWKS loaded");
                issuer.keys.store(Arc::new(set));
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.settings.issuer, error = %e, reason, "JWKS refresh failed; the cached keys stay in use")
            }
        }
    }

    async fn fetch_discovery(&self, issuer: &str) -> Result<Discovery, String> {
        let url = format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'));
        let d: Discovery = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|e| format!("discovery document: {e}"))?;
        if d.issuer != issuer {
            return Err(format!(
                "discovery names issuer {:?}, expected {issuer:?}",
                d.issuer
            ));
        }
        Ok(d)
    }

    async fn fetch_keys(&self, uri: &str) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(&self.get(uri).await?).map_err(|e| format!("JWKS: {e}"))?;
        self.key_set(&set)
    }

    /// The signing keys of a JWKS (at most `jwks_keys_max`), fetched now.
    fn key_set(&self, set: &JwkSet) -> Result<KeySet, String> {
        if set.keys.len() > self.limits.jwks_keys_max {
            return Err(format!(
                "JWKS has {} keys, above oidc.jwks_keys_max {}",
                set.keys.len(),
                self.limits.jwks_keys_max
            ));
        }
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            if let Some(k) = key_of(jwk) {
                by_kid.insert(jwk.common.key_id.clone().unwrap_or_default(), Arc::new(k));
            }
        }
        Ok(KeySet {
            by_kid,
            fetched: Some(Instant::now()),
        })
    }

    /// GET with the size limit; any status but 200 is an error.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        read_limited(resp, self.limits.document_bytes_max).await
    }

    pub fn document_bytes_max(&self) -> usize {
        self.limits.document_bytes_max
    }

    /// Tests: `jwks` becomes `issuer`'s key set as if just fetched, and the refetch interval
    /// starts now (so no test reaches the network).
    #[cfg(test)]
    fn install_keys(&self, issuer: &str, jwks: &JwkSet) {
        let i = &self.issuers[issuer];
        i.keys.store(Arc::new(self.key_set(jwks).expect("key set")));
        i.refresh
            .try_lock()
            .expect("no refresh under way")
            .last_attempt = Some(Instant::now());
    }
}

/// The body of a 200 answer, at most `max` bytes.
pub async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let url = resp.url().to_string();
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > max {
            return Err(format!(
                "{url}: more than oidc.document_bytes_max ({max}) bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A signing key of an allowed algorithm, or `None` (skipped: encryption keys, HMAC, unknown).
fn key_of(jwk: &Jwk) -> Option<Key> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let inferred = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => inferred,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
    };
    if alg != inferred {
        return None;
    }
    let fingerprint = Sha256::digest(serde_json::to_vec(jwk).ok()?).into();
    DecodingKey::from_jwk(jwk).ok().map(|key| Key {
        alg,
        key,
        fingerprint,
    })
}

/// A NumericDate claim in whole seconds, coerced as jsonwebtoken's validation does (integers
/// as they are, fractions rounded), so a cache hit applies the same `exp`/`nbf` rules.
// The casts: the value is checked to be finite and within u64 first, as jsonwebtoken does.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

/// Now in Unix seconds, the clock jsonwebtoken checks `exp` and `nbf` against.
fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issuer {
    /// How long until its keys are due, when keys are refreshed `refresh_after` their fetch
    /// (`None`: no keys yet, or due now).
    fn fresh_left(&self, refresh_after: Duration) -> Option<Duration> {
        let fetched = self.keys.load().fetched?;
        refresh_after
            .checked_sub(fetched.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// Maps verified claims to a caller, within what this issuer may speak for.
    fn caller(&self, claims: &Map<String, Value>, ip: String) -> Result<Caller, ApiError> {
        let s = &self.settings;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let roles: Vec<String> = match claims.get(&s.roles_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(list)) => list.split_whitespace().map(str::to_owned).collect(),
            _ => vec![],
        };
        // Names that are not orderd roles grant nothing (a corporate token carries other groups).
        let roles: Vec<String> = roles
            .into_iter()
            .filter(|r| Role::parse(r).is_some())
            .collect();
        if let Some(r) = roles
            .iter()
            .find(|r| Role::parse(r).is_some_and(|r| !self.roles.contains(&r)))
        {
            return Err(unauthorized(format!(
                "this issuer may not grant the role {r}"
            )));
        }
        let account = text(&s.account_claim);
        if let Some(a) = &account {
            if !self.any_account && !self.accounts.contains(a) {
                return Err(unauthorized(
                    "this issuer may not speak for the token's account",
                ));
            }
        }
        let user = text(&s.user_claim)
            .ok_or_else(|| unauthorized(format!("the token has no {} claim", s.user_claim)))?;
        caller_from_parts(
            &CallerClaims {
                user,
                account,
                roles,
                warehouse: text(&s.warehouse_claim),
            },
            ip,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISSUER: &str = "http://127.0.0.1:9";
    const AUDIENCE: &str = "urn:orderd-test";
    /// Two Ed25519 test keys (PKCS#8 DER, hex) and their public `x` (JWK, base64url). Test
    /// material only: EdDSA keeps signing and checking cheap.
    const KEYS: [(&str, &str); 2] = [
        (
            "302e020100300506032b657004220420235c487f10ac37bf77cdd9f7da0e83fcad031f1fd5cca2be717a95d28e094b22",
            "5mYNob1OHFG2Zcupjw9-XBg5dotDkLKpC52BvCLcl3k",
        ),
        (
            "302e020100300506032b657004220420e78435a9e4db16fbc20d396f09b440f92f27a4828bf117ddb72bef1f6e3c30ae",
            "JS1f4Ud97qSWhe43o6uphkPaj7858e5dtwH0bk1IKLk",
        ),
    ];

    /// orderd trusting [`ISSUER`], with no clock leeway and `token_cache_max` entries.
    fn oidc(token_cache_max: usize) -> Oidc {
        oidc_with(OidcSettings {
            token_cache_max,
            ..settings(ISSUER)
        })
    }

    /// Settings trusting `issuer`, with no clock leeway and no refetch for an hour.
    fn settings(issuer: &str) -> OidcSettings {
        OidcSettings {
            issuer: issuer.into(),
            audience: AUDIENCE.into(),
            leeway_s: 0,
            jwks_refetch_interval_min_ms: 3_600_000,
            ..OidcSettings::default()
        }
    }

    fn oidc_with(settings: OidcSettings) -> Oidc {
        assert_eq!(settings.validate(), Vec::<String>::new());
        Oidc::new(&settings).expect("oidc")
    }

    /// A JWKS publishing `keys` as (kid, index into [`KEYS`]).
    fn jwks(keys: &[(&str, usize)]) -> JwkSet {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(kid, i)| {
                json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                       "kid": kid, "x": KEYS[*i].1})
            })
            .collect();
        serde_json::from_value(json!({ "keys": keys })).expect("jwks")
    }

    /// An access token of [`ISSUER`] for buyer `user` of ACME, signed with key `key` and naming
    /// `kid`.
    fn token(kid: &str, key: usize, user: &str, exp: u64) -> String {
        token_of(ISSUER, kid, key, user, exp)
    }

    /// [`token`] of `issuer`.
    fn token_of(issuer: &str, kid: &str, key: usize, user: &str, exp: u64) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.into());
        let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": user, "account_id": "ACME",
                            "roles": ["buyer"], "iat": now_s(), "exp": exp});
        let der = hex::decode(KEYS[key].0).expect("hex");
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).expect("sign")
    }

    fn in_an_hour() -> u64 {
        now_s() + 3_600
    }

    // The same token twice from two addresses: the second request is served without a
    // signature check, and each caller carries its own request's IP. Without the cache, every
    // request checks the signature.
    #[tokio::test]
    async fn a_verified_token_is_not_verified_again() {
        let o = oidc(100);
        o.install_keys(ISSUER, &jwks(&[("k1", 0)]));
        let t = token("k1", 0, "bob", in_an_hour());
        let first = o.verify(&t, "10.0.0.1".into()).await.expect("first");
        let second = o.verify(&t, "10.0.0.2".into()).await.expect("second");
        assert_eq!(o.signature_checks(), 1);
        assert_eq!(
            (first.ip.as_str(), second.ip.as_str()),
            ("10.0.0.1", "10.0.0.2")
        );
        assert_eq!(
            Caller {
                ip: first.ip.clone(),
                ..second
            },
            first
        );
        assert_eq!(first.user.as_str(), "bob");

        let off = oidc(0);
        off.install_keys(ISSUER, &jwks(&[("k1", 0)]));
        for _ in 0..3 {
            off.verify(&t, "10.0.0.1".into()).await.expect("uncached");
        }
        assert_eq!(off.signature_checks(), 3);
        assert_eq!(off.token_cache_len(), 0);
    }

    // Keys older than `jwks_max_age_ms` while the provider hangs (it accepts connections and
    // never answers) hold no request up: tokens of a known key are answered at once, cached
    // or not. Refreshing is the background task's.
    #[tokio::test]
    async fn aged_keys_do_not_wait_for_a_hanging_provider() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let hang = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        for cache in [100, 0] {
            let o = oidc_with(OidcSettings {
                http_timeout_ms: 2_000,
                jwks_max_age_ms: 1,
                jwks_refetch_interval_min_ms: 1,
                token_cache_max: cache,
                ..settings(&issuer)
            });
            o.install_keys(&issuer, &jwks(&[("k1", 0)]));
            let t = token_of(&issuer, "k1", 0, "bob", in_an_hour());
            o.verify(&t, "ip".into()).await.expect("fresh keys");
            tokio::time::sleep(Duration::from_millis(5)).await;
            let again = tokio::time::timeout(Duration::from_millis(500), o.verify(&t, "ip".into()))
                .await
                .unwrap_or_else(|_| panic!("cache {cache}: the request waited for the provider"));
            again.expect("aged keys still check");
        }
        hang.abort();
    }

    // The background task refetches aged keys by itself: a key the provider stopped publishing
    // stops verifying without any request asking for a refetch (none names an unknown key).
    #[tokio::test]
    async fn the_background_task_retires_unpublished_keys() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let published = Arc::new(std::sync::Mutex::new(
            serde_json::to_value(jwks(&[("k1", 0)])).unwrap(),
        ));
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
        let keys = published.clone();
        let app = axum::Router::new()
            .route(
                DISCOVERY_PATH,
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || async move { axum::Json(keys.lock().unwrap().clone()) }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let o = Arc::new(oidc_with(OidcSettings {
            jwks_max_age_ms: 400,
            jwks_refetch_interval_min_ms: 100,
            token_cache_max: 100,
            ..settings(&issuer)
        }));
        let fresh = tokio::spawn(o.clone().keep_keys_fresh());
        let t = token_of(&issuer, "k1", 0, "bob", in_an_hour());
        let deadline = Instant::now() + Duration::from_secs(10);
        while o.verify(&t, "ip".into()).await.is_err() {
            assert!(Instant::now() < deadline, "the first fetch never came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *published.lock().unwrap() = serde_json::to_value(jwks(&[("k2", 1)])).unwrap();
        while o.verify(&t, "ip".into()).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the unpublished key still verifies"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let newer = token_of(&issuer, "k2", 1, "bob", in_an_hour());
        o.verify(&newer, "ip".into())
            .await
            .expect("the published key");
        fresh.abort();
        server.abort();
    }

    // A cached token whose exp passes (no leeway here) is refused, and its entry is gone.
    #[tokio::test]
    async fn an_expired_cached_token_is_refused() {
        let o = oidc(100);
        o.install_keys(ISSUER, &jwks(&[("k1", 0)]));
        let exp = now_s() + 1;
        let t = token("k1", 0, "bob", exp);
        o.verify(&t, "ip".into()).await.expect("valid until exp");
        o.verify(&t, "ip".into()).await.expect("cached");
        assert_eq!((o.signature_checks(), o.token_cache_len()), (1, 1));
        let deadline = Instant::now() + Duration::from_secs(5);
        while now_s() <= exp {
            assert!(Instant::now() < deadline, "the clock does not move");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = o.verify(&t, "ip".into()).await.expect_err("expired");
        assert!(e.to_string().ends_with("it has expired"), "{e:?}");
        assert_eq!(o.token_cache_len(), 0, "the expired entry is dropped");
    }

    // After a JWKS refresh without the key that verified a cached token, that token is
    // refused; so is one whose kid now names a different key. Tokens of the new key pass.
    #[tokio::test]
    async fn a_cached_token_whose_key_left_the_jwks_is_refused() {
        let o = oidc(100);
        o.install_keys(ISSUER, &jwks(&[("k1", 0)]));
        let old = token("k1", 0, "bob", in_an_hour());
        o.verify(&old, "ip".into()).await.expect("old key");
        o.verify(&old, "ip".into()).await.expect("cached");

        // Rotation: k1 leaves, k2 arrives.
        o.install_keys(ISSUER, &jwks(&[("k2", 1)]));
        let e = o.verify(&old, "ip".into()).await.expect_err("k1 is gone");
        assert!(format!("{e:?}").contains("not known"), "{e:?}");
        let new = token("k2", 1, "bob", in_an_hour());
        o.verify(&new, "ip".into()).await.expect("new key");

        // The same kid, another key: a token cached under the old key is not served.
        let o = oidc(100);
        o.install_keys(ISSUER, &jwks(&[("k1", 0)]));
        o.verify(&old, "ip".into()).await.expect("old key");
        o.install_keys(ISSUER, &jwks(&[("k1", 1)]));
        o.verify(&old, "ip".into())
            .await
            .expect_err("k1 is now another key");
        assert_eq!(o.signature_checks(), 2);
    }

    // More distinct tokens than the capacity: all verify, the cache stays within its bound.
    #[tokio::test]
    async fn the_cache_holds_at_most_token_cache_max() {
        let o = oidc(5);
        o.install_keys(ISSUER, &jwks(&[("k1", 0)]));
        for i in 0..50 {
            let t = token("k1", 0, &format!("user{i}"), in_an_hour());
            o.verify(&t, "ip".into()).await.expect("valid");
            assert!(o.token_cache_len() <= 5, "{} entries", o.token_cache_len());
        }
        assert_eq!(o.signature_checks(), 50);
    }

    // A cached token changed in its payload or signature (another string) is never a hit: it
    // is checked in full and refused. Failures are not cached: each try is checked again.
    #[tokio::test]
    async fn a_tampered_token_is_never_a_hit() {
        let o = oidc(100);
        o.install_keys(ISSUER, &jwks(&[("k1", 0)]));
        let t = token("k1", 0, "bob", in_an_hour());
        o.verify(&t, "ip".into()).await.expect("valid");
        let other = token("k1", 0, "eve", in_an_hour());
        let parts: Vec<&str> = t.split('.').collect();
        let payload_swapped = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).expect("payload"),
            parts[2]
        );
        let mut sig = parts[2].to_owned();
        let last = if sig.ends_with('A') { "Q" } else { "A" };
        sig.replace_range(sig.len() - 1.., last);
        let sig_changed = format!("{}.{}.{sig}", parts[0], parts[1]);
        for (what, bad) in [("payload", &payload_swapped), ("signature", &sig_changed)] {
            for _ in 0..2 {
                o.verify(bad, "ip".into()).await.expect_err(what);
            }
        }
        assert_eq!(
            o.signature_checks(),
            5,
            "1 valid + 2 x 2 refused, each checked"
        );
        assert_eq!(o.token_cache_len(), 1, "only the valid token");
    }

    // Issuers that may both sign in an account's users are named with what they share; an
    // issuer of operators only shares nobody's users.
    #[test]
    fn issuers_sharing_an_accounts_users_are_named() {
        let issuer = |name: &str, accounts: &[&str], roles: &[&str]| IssuerSettings {
            issuer: format!("https://{name}.example"),
            audience: "orderd".into(),
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..IssuerSettings::default()
        };
        let settings = OidcSettings {
            issuers: vec![
                issuer("acme", &["ACME", "ACME-2"], &["buyer"]),
                issuer("bau", &["BAUHAUS"], &["buyer", "account_admin"]),
                issuer("acme-admins", &["ACME-2", "BAUHAUS"], &["account_admin"]),
                issuer("ops", &["*"], &["operator", "warehouse"]),
            ],
            ..OidcSettings::default()
        };
        let pair = |a: &str, b: &str, shared: &str| {
            (
                format!("https://{a}.example"),
                format!("https://{b}.example"),
                shared.to_owned(),
            )
        };
        assert_eq!(
            settings.shared_accounts(),
            [
                pair("acme", "acme-admins", "ACME-2"),
                pair("bau", "acme-admins", "BAUHAUS"),
            ]
        );
        let mut everyone = settings.clone();
        everyone.issuers[3].roles.push("buyer".into());
        let shared = everyone.shared_accounts();
        assert_eq!(shared.len(), 5, "{shared:?}");
        assert!(shared.contains(&pair("acme", "ops", "ACME, ACME-2")));
        let mut two_stars = everyone.clone();
        two_stars.issuers[0].accounts = vec!["*".into()];
        assert!(two_stars
            .shared_accounts()
            .contains(&pair("acme", "ops", "every account")));
    }

    // An issuer bound to some accounts cannot grant the roles that act across accounts.
    #[test]
    fn only_an_issuer_of_every_account_grants_operator_or_warehouse() {
        let bound = |accounts: &[&str], roles: &[&str]| OidcSettings {
            issuers: vec![IssuerSettings {
                issuer: "https://idp.example".into(),
                audience: AUDIENCE.into(),
                accounts: accounts.iter().map(|a| a.to_string()).collect(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                ..IssuerSettings::default()
            }],
            ..OidcSettings::default()
        };
        assert!(bound(&["ACME"], &["buyer", "account_admin"])
            .validate()
            .is_empty());
        assert!(bound(&["*"], &["operator", "warehouse"])
            .validate()
            .is_empty());
        for roles in [&["buyer", "operator"][..], &["warehouse"]] {
            let errs = bound(&["ACME", "BETA"], roles).validate();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].contains("act across accounts"), "{errs:?}");
        }
    }

    // The capacity is a limit like the others: too large is reported, 0 is allowed (off).
    #[test]
    fn token_cache_max_is_validated() {
        let s = |token_cache_max| OidcSettings {
            token_cache_max,
            ..OidcSettings::default()
        };
        assert!(s(0).validate().is_empty());
        assert!(s(TOKEN_CACHE_MAX_LIMIT).validate().is_empty());
        let errs = s(TOKEN_CACHE_MAX_LIMIT + 1).validate();
        assert!(
            errs.iter().any(|e| e.contains("token_cache_max")),
            "{errs:?}"
        );
    }
}
