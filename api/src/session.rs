//! Browser sessions (server-side, cookie `__Host-orderd_session`).

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::Request;
use orderd_actors::audit::Caller;

/// The caller of a request without a bearer token: its browser session, if it has one.
pub fn caller_of(_s: &ApiState, _req: &Request, _ip: String) -> Result<(Caller, String), ApiError> {
    Err(ApiError::Unauthorized("missing bearer token".into()))
}

/// The caller of the browser's session, if it has a live one (no CSRF check: read-only use).
pub fn signed_in(_s: &ApiState, _headers: &axum::http::HeaderMap) -> Option<Caller> {
    None
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
