//! Browser sign-in and sessions. `/auth/login` starts the authorization code flow with PKCE at
//! the identity provider; `/auth/callback` redeems the code, verifies the access token (as any
//! bearer token) and the ID token (nonce), and starts a server-side session whose id travels in
//! the cookie `__Host-orderd_session` (Secure, HttpOnly, SameSite=Lax, Path=/). A new id is
//! issued at every sign-in (the old session ends), sessions end after `idle_timeout_ms` unused
//! and `absolute_timeout_ms` after sign-in, and `/auth/logout` ends them server-side.
//! State-changing requests authenticated by the cookie must come from orderd's own origin
//! (Origin header), which stops cross-site request forgery.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use cookie::{Cookie, SameSite};
use orderd_actors::audit::Caller;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie (the `__Host-` prefix: Secure, Path=/, no Domain).
pub const SESSION_COOKIE: &str = "__Host-orderd_session";
/// The cookie binding a sign-in under way to this browser.
pub const LOGIN_COOKIE: &str = "__Host-orderd_login";
/// Random bytes in a session id, a state or a nonce.
const RANDOM_BYTES: usize = 32;

struct Session {
    caller: Caller,
    created: Instant,
    last_used: Instant,
}

/// A sign-in between `/auth/login` and `/auth/callback`.
pub struct Pending {
    pub issuer: String,
    pub verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
    created: Instant,
}

/// Live sessions and sign-ins under way, in memory (a restart signs everyone out).
pub struct Sessions {
    settings: SessionSettings,
    live: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, Pending>>,
}

/// A random URL-safe token.
pub fn random_token() -> Result<String, ApiError> {
    let mut b = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    pub fn new(settings: &SessionSettings) -> Sessions {
        Sessions {
            settings: settings.clone(),
            live: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.created) < Duration::from_millis(self.settings.absolute_timeout_ms)
            && now.duration_since(s.last_used)
                < Duration::from_millis(self.settings.idle_timeout_ms)
    }

    /// Starts a session for `caller`, ending `previous` (rotation at sign-in); its id.
    pub fn start(&self, caller: Caller, previous: Option<&str>) -> Result<String, ApiError> {
        let id = random_token()?;
        let now = Instant::now();
        let mut live = lock(&self.live);
        if let Some(p) = previous {
            live.remove(p);
        }
        if live.len() >= self.settings.sessions_max {
            live.retain(|_, s| self.alive(s, now));
        }
        if live.len() >= self.settings.sessions_max {
            // Still full: the oldest session makes room.
            if let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        live.insert(
            id.clone(),
            Session {
                caller,
                created: now,
                last_used: now,
            },
        );
        Ok(id)
    }

    /// The caller of a live session, marking it used.
    pub fn touch(&self, id: &str) -> Option<Caller> {
        let now = Instant::now();
        let mut live = lock(&self.live);
        let alive = live.get(id).map(|s| self.alive(s, now))?;
        if !alive {
            live.remove(id);
            return None;
        }
        let s = live.get_mut(id)?;
        s.last_used = now;
        Some(s.caller.clone())
    }

    pub fn end(&self, id: &str) {
        lock(&self.live).remove(id);
    }

    /// Remembers a sign-in under way under its `state`.
    pub fn begin_login(
        &self,
        state: String,
        issuer: String,
        verifier: String,
        nonce: String,
        redirect_uri: String,
    ) -> Result<(), ApiError> {
        let mut pending = lock(&self.pending);
        let ttl = Duration::from_millis(self.settings.login_pending_timeout_ms);
        if pending.len() >= self.settings.logins_pending_max {
            pending.retain(|_, p| p.created.elapsed() < ttl);
        }
        if pending.len() >= self.settings.logins_pending_max {
            return Err(ApiError::Unavailable(
                "too many sign-ins under way; retry shortly".into(),
            ));
        }
        pending.insert(
            state,
            Pending {
                issuer,
                verifier,
                nonce,
                redirect_uri,
                created: Instant::now(),
            },
        );
        Ok(())
    }

    /// Takes the sign-in of `state` (once), if it has not timed out.
    pub fn finish_login(&self, state: &str) -> Option<Pending> {
        let p = lock(&self.pending).remove(state)?;
        (p.created.elapsed() < Duration::from_millis(self.settings.login_pending_timeout_ms))
            .then_some(p)
    }
}

/// A cookie of the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value: `__Host-` rules (Secure, Path=/), HttpOnly, SameSite=Lax.
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let mut c = Cookie::build((name.to_owned(), value.to_owned()))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax);
    if let Some(age) = max_age {
        c = c.max_age(cookie::time::Duration::seconds(
            i64::try_from(age.as_secs()).unwrap_or(i64::MAX),
        ));
    }
    HeaderValue::from_str(&c.build().to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", Some(Duration::ZERO))
}

/// orderd's origin as the browser sees it: `session.public_url`, else from the Host header
/// (https, or http on a loopback address).
pub fn origin(s: &ApiState, headers: &HeaderMap) -> Option<String> {
    let configured = &s.sessions.settings.public_url;
    if !configured.is_empty() {
        return reqwest::Url::parse(configured)
            .ok()
            .map(|u| u.origin().ascii_serialization());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let loopback =
        host.starts_with("127.0.0.1") || host.starts_with("localhost") || host.starts_with("[::1]");
    Some(format!(
        "{}://{host}",
        if loopback { "http" } else { "https" }
    ))
}

/// Whether a state-changing request with a session cookie comes from orderd's own pages.
pub fn same_origin(s: &ApiState, headers: &HeaderMap) -> bool {
    let sent = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    matches!((sent, origin(s, headers)), (Some(a), Some(b)) if a == b)
}

/// The caller of a request without a bearer token: its browser session, if it has one. A
/// state-changing request must come from orderd's origin.
pub fn caller_of(s: &ApiState, req: &Request, ip: String) -> Result<(Caller, String), ApiError> {
    let id = cookie(req.headers(), SESSION_COOKIE).ok_or(ApiError::MissingToken)?;
    let mut caller = s
        .sessions
        .touch(&id)
        .ok_or_else(|| ApiError::Unauthorized("the session has ended; sign in again".into()))?;
    if crate::policy::changes_state(req.method()) && !same_origin(s, req.headers()) {
        return Err(ApiError::Forbidden(
            "cross-site request refused (Origin is not orderd's)".into(),
        ));
    }
    caller.ip = ip;
    Ok((
        caller,
        format!("session:{}", hex::encode(Sha256::digest(id.as_bytes()))),
    ))
}

/// The caller of the browser's session, if it has a live one (for pages that only read).
pub fn signed_in(s: &ApiState, headers: &HeaderMap) -> Option<Caller> {
    s.sessions.touch(&cookie(headers, SESSION_COOKIE)?)
}

/// Limits of browser sessions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// orderd's public origin (`https://orders.example.com`): the sign-in's redirect URI and
    /// the origin state-changing browser requests must come from. Empty: taken from the
    /// request's Host (https, or http on a loopback address).
    pub public_url: String,
    /// A session unused this long ends.
    pub idle_timeout_ms: u64,
    /// A session ends this long after sign-in, used or not.
    pub absolute_timeout_ms: u64,
    /// Most live sessions; the one closest to its end is dropped for a new one.
    pub sessions_max: usize,
    /// Most sign-ins under way (between `/auth/login` and `/auth/callback`).
    pub logins_pending_max: usize,
    /// How long a sign-in may stay under way.
    pub login_pending_timeout_ms: u64,
}

impl Default for SessionSettings {
    fn default() -> SessionSettings {
        SessionSettings {
            public_url: String::new(),
            idle_timeout_ms: 30 * 60 * 1000,
            absolute_timeout_ms: 12 * 3600 * 1000,
            sessions_max: 100_000,
            logins_pending_max: 10_000,
            login_pending_timeout_ms: 10 * 60 * 1000,
        }
    }
}

impl SessionSettings {
    pub fn validate(&self) -> Vec<String> {
        let mut errs = vec![];
        for (name, v) in [
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("absolute_timeout_ms", self.absolute_timeout_ms),
            ("login_pending_timeout_ms", self.login_pending_timeout_ms),
        ] {
            if v == 0 {
                errs.push(format!("session.{name} must be above 0"));
            }
        }
        if self.idle_timeout_ms > self.absolute_timeout_ms {
            errs.push("session.idle_timeout_ms must not exceed session.absolute_timeout_ms".into());
        }
        if self.sessions_max == 0 || self.logins_pending_max == 0 {
            errs.push("session.sessions_max and session.logins_pending_max must be above 0".into());
        }
        if !self.public_url.is_empty() && reqwest::Url::parse(&self.public_url).is_err() {
            errs.push(format!(
                "session.public_url {:?} is not a URL",
                self.public_url
            ));
        }
        errs
    }
}
