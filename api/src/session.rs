//! Browser sign-in and sessions. `/auth/login` starts the authorization code flow with PKCE at
//! the identity provider; `/auth/callback` redeems the code, verifies the access token (as any
//! bearer token) and the ID token (nonce), and starts a server-side session whose id travels in
//! the cookie `__Host-orderd_session` (Secure, HttpOnly, SameSite=Lax, Path=/). A new id is
//! issued at every sign-in (the old session ends), sessions end after `idle_timeout_ms` unused
//! and `absolute_timeout_ms` after sign-in, and `/auth/logout` ends them server-side.
//!
//! A session acts on the provider's word only while the access token of its sign-in holds.
//! Then it asks the provider again with the refresh token, if the provider gave one (one
//! refresh at a time per session), and goes on as the new token says; a provider that refuses
//! (the user was disabled, the grant revoked) ends it. Without a refresh token the session ends
//! with its access token.
//! State-changing requests authenticated by the cookie must come from orderd's own origin
//! (Origin header), which stops cross-site request forgery.

use crate::error::ApiError;
use crate::oauth::RefreshError;
use crate::ApiState;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use cookie::{Cookie, SameSite};
use orderd_actors::audit::Caller;
use orderd_domain::ids::AccountId;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    /// Until when the identity provider vouches for `caller`: the expiry of the access token of
    /// the sign-in or of the latest refresh.
    vouched_until: Instant,
    /// How to ask the provider again after `vouched_until`; `None` when it gave no refresh
    /// token, and the session then ends there.
    renewal: Option<Arc<Renewal>>,
}

impl Session {
    /// Marks the session used at `now` when its user did it (see [`Activity`]).
    fn used(&mut self, activity: Activity, now: Instant) {
        if activity == Activity::User {
            self.last_used = now;
        }
    }
}

/// What a sign-in or a refresh established: who, by which issuer, until when (the access
/// token's `exp`, Unix seconds), and the refresh token, if the provider gave one.
pub struct Vouched {
    pub caller: Caller,
    pub issuer: String,
    pub expires_at: u64,
    pub refresh_token: Option<String>,
}

/// After a refresh that got no answer (the provider unreachable), the session's requests in
/// this long are answered `503` at once instead of each waiting for its own attempt.
const REFRESH_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// A session's way back to its provider. The lock makes one session's refreshes go one at a
/// time: a provider that rotates refresh tokens takes a second use of one as theft, and
/// revokes the whole grant.
pub struct Renewal {
    /// The issuer that signed the session in.
    pub issuer: String,
    state: tokio::sync::Mutex<RenewalState>,
}

struct RenewalState {
    /// The latest refresh token (a secret: never logged).
    token: String,
    /// When and why the last refresh got no answer (see [`REFRESH_RETRY_PAUSE`]).
    failed: Option<(Instant, String)>,
}

/// Whether a request is its user's doing, or the page's own in the background. Only the
/// user's keep a session from ending after `idle_timeout_ms` unused: an unattended portal or
/// dashboard, its event stream reconnecting and its dashboard polling, is signed out like any
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    User,
    Background,
}

/// A live session, as [`Sessions::touch`] finds it.
pub enum Touched {
    /// Vouched for: its caller.
    Live(Caller),
    /// Its access token has expired: refresh through `renewal` before acting as `caller`.
    Stale {
        caller: Caller,
        renewal: Arc<Renewal>,
    },
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
    live: Mutex<Live>,
    pending: Mutex<PendingLogins>,
}

/// Live sessions by id, and how many each account has.
#[derive(Default)]
struct Live {
    by_id: HashMap<String, Session>,
    per_account: crate::per_account::PerAccount,
}

impl Live {
    fn insert(&mut self, id: String, s: Session) {
        if let Some(a) = &s.caller.account {
            self.per_account.add(a);
        }
        if let Some(replaced) = self.by_id.insert(id, s) {
            self.forget_account_of(&replaced);
        }
    }

    fn remove(&mut self, id: &str) -> Option<Session> {
        let s = self.by_id.remove(id)?;
        self.forget_account_of(&s);
        Some(s)
    }

    fn forget_account_of(&mut self, s: &Session) {
        if let Some(a) = &s.caller.account {
            self.per_account.sub(a);
        }
    }

    /// Ends the sessions of `account` (every account's when `None`) that `keep` refuses.
    fn end_where(&mut self, account: Option<&AccountId>, keep: impl Fn(&Session) -> bool) {
        let ending: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, s)| account.is_none_or(|a| s.caller.account.as_ref() == Some(a)))
            .filter(|(_, s)| !keep(s))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ending {
            self.remove(&id);
        }
    }

    /// Ends the earliest started session of `account` (of all when `None`).
    fn end_oldest(&mut self, account: Option<&AccountId>) {
        let oldest = self
            .by_id
            .iter()
            .filter(|(_, s)| account.is_none_or(|a| s.caller.account.as_ref() == Some(a)))
            .min_by_key(|(_, s)| s.created)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.remove(&id);
        }
    }
}

/// Sign-ins under way by state, and their states oldest first (finished ones leave the queue
/// when they reach its front, or when it is compacted).
#[derive(Default)]
struct PendingLogins {
    by_state: HashMap<String, Pending>,
    order: VecDeque<String>,
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
            live: Mutex::default(),
            pending: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// Whether `s` has not ended: within its timeouts, and vouched for or able to refresh.
    fn alive(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.created) < Duration::from_millis(self.settings.absolute_timeout_ms)
            && now.duration_since(s.last_used)
                < Duration::from_millis(self.settings.idle_timeout_ms)
            && (now < s.vouched_until || s.renewal.is_some())
    }

    /// Starts a session for `vouched.caller`, ending `previous` (rotation at sign-in); its id.
    ///
    /// Room is made first within the caller's account: at `sessions_per_account_max` its
    /// ended sessions go, then its earliest started one, so that one company signing in
    /// without end cannot sign another company's users out. Then in all: at `sessions_max` the
    /// ended sessions go, then the earliest started one.
    pub fn start(&self, vouched: Vouched, previous: Option<&str>) -> Result<String, ApiError> {
        let id = random_token()?;
        let now = Instant::now();
        let Vouched {
            caller,
            issuer,
            expires_at,
            refresh_token,
        } = vouched;
        let renewal = refresh_token.map(|token| {
            Arc::new(Renewal {
                issuer,
                state: tokio::sync::Mutex::new(RenewalState {
                    token,
                    failed: None,
                }),
            })
        });
        let mut live = lock(&self.live);
        if let Some(p) = previous {
            live.remove(p);
        }
        if let Some(a) = &caller.account {
            let max = self.settings.sessions_per_account_max;
            if live.per_account.of(a) >= max {
                live.end_where(Some(a), |s| self.alive(s, now));
            }
            if live.per_account.of(a) >= max {
                live.end_oldest(Some(a));
            }
        }
        if live.by_id.len() >= self.settings.sessions_max {
            live.end_where(None, |s| self.alive(s, now));
        }
        if live.by_id.len() >= self.settings.sessions_max {
            live.end_oldest(None);
        }
        live.insert(
            id.clone(),
            Session {
                caller,
                created: now,
                last_used: now,
                vouched_until: instant_of(now, expires_at),
                renewal,
            },
        );
        Ok(id)
    }

    /// A live session: vouched for (marked used, for the user's `activity`), or due for a
    /// refresh. `None` when it has ended, also when its access token expired and it has no
    /// refresh token.
    pub fn touch(&self, id: &str, activity: Activity) -> Option<Touched> {
        let now = Instant::now();
        let mut live = lock(&self.live);
        let alive = live.by_id.get(id).map(|s| self.alive(s, now))?;
        let s = live.by_id.get_mut(id).filter(|_| alive);
        let touched = match s {
            Some(s) if now < s.vouched_until => {
                s.used(activity, now);
                Touched::Live(s.caller.clone())
            }
            Some(Session {
                caller,
                renewal: Some(renewal),
                ..
            }) => Touched::Stale {
                caller: caller.clone(),
                renewal: renewal.clone(),
            },
            // Ended (`alive` also ends a session past its token without a refresh token).
            _ => {
                live.remove(id);
                return None;
            }
        };
        Some(touched)
    }

    /// The caller of session `id` while it lives and its access token vouches for it, without
    /// marking it used: what an open event stream asks, not its user.
    pub fn vouches(&self, id: &str) -> Option<Caller> {
        let now = Instant::now();
        let live = lock(&self.live);
        let s = live.by_id.get(id)?;
        (self.alive(s, now) && now < s.vouched_until).then(|| s.caller.clone())
    }

    /// Records a refresh of session `id` (if it still lives) for a request of `activity`: the
    /// caller as the new access token says, until it expires.
    pub fn renewed(&self, id: &str, caller: Caller, expires_at: u64, activity: Activity) {
        let now = Instant::now();
        if let Some(s) = lock(&self.live).by_id.get_mut(id) {
            s.caller = caller;
            s.vouched_until = instant_of(now, expires_at);
            s.used(activity, now);
        }
    }

    pub fn end(&self, id: &str) {
        lock(&self.live).remove(id);
    }

    /// Remembers a sign-in under way under its `state`. At `logins_pending_max` the timed-out
    /// ones go, then the oldest: anyone may start a sign-in, so a full table must not refuse
    /// new ones (that would lock every user out for as long as someone keeps it full); a
    /// user's sign-in takes seconds, far less than it takes to push it out.
    pub fn begin_login(
        &self,
        state: String,
        issuer: String,
        verifier: String,
        nonce: String,
        redirect_uri: String,
    ) {
        let max = self.settings.logins_pending_max;
        let ttl = Duration::from_millis(self.settings.login_pending_timeout_ms);
        let mut guard = lock(&self.pending);
        let p = &mut *guard;
        while let Some(oldest) = p.order.front() {
            let gone = match p.by_state.get(oldest) {
                None => true,
                Some(x) => x.created.elapsed() >= ttl || p.by_state.len() >= max,
            };
            if !gone {
                break;
            }
            if let Some(state) = p.order.pop_front() {
                p.by_state.remove(&state);
            }
        }
        p.by_state.insert(
            state.clone(),
            Pending {
                issuer,
                verifier,
                nonce,
                redirect_uri,
                created: Instant::now(),
            },
        );
        p.order.push_back(state);
        // Finished sign-ins leave the queue lazily; it never holds more than twice the live.
        if p.order.len() > 2 * max {
            let live = &p.by_state;
            p.order.retain(|s| live.contains_key(s));
        }
        assert!(p.by_state.len() <= max && p.order.len() <= 2 * max + 1);
    }

    /// Takes the sign-in of `state` (once), if it has not timed out.
    pub fn finish_login(&self, state: &str) -> Option<Pending> {
        let p = lock(&self.pending).by_state.remove(state)?;
        (p.created.elapsed() < Duration::from_millis(self.settings.login_pending_timeout_ms))
            .then_some(p)
    }
}

/// The instant (taken at `now`) at which Unix time reaches `unix_s`; `now` when it has passed.
/// An `exp` years away counts as a year: the session's own timeouts end it long before.
fn instant_of(now: Instant, unix_s: u64) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now + Duration::from_secs(unix_s)
        .saturating_sub(since_epoch)
        .min(FAR)
}

fn session_ended() -> ApiError {
    ApiError::Unauthorized("the session has ended; sign in again".into())
}

/// The caller of session `id`, refreshed at its provider when its access token has expired.
/// The provider refusing the refresh (or naming another user) ends the session; a provider
/// that cannot be reached leaves it for a later request to try again.
pub async fn resume(s: &ApiState, id: &str, activity: Activity) -> Result<Caller, ApiError> {
    let Touched::Stale { renewal, .. } =
        s.sessions.touch(id, activity).ok_or_else(session_ended)?
    else {
        return live(s, id, activity);
    };
    // A task of its own: a request that goes away midway (the browser gave up) must not lose
    // a refresh token the provider has already rotated.
    let (s, id) = (s.clone(), id.to_owned());
    tokio::spawn(async move { refresh(&s, &id, &renewal, activity).await })
        .await
        .map_err(|e| ApiError::Internal(format!("refreshing a session: {e}")))?
}

/// Refreshes session `id` through `renewal`, one refresh at a time.
async fn refresh(
    s: &ApiState,
    id: &str,
    renewal: &Renewal,
    activity: Activity,
) -> Result<Caller, ApiError> {
    let mut state = renewal.state.lock().await;
    // The request before this one may have refreshed the session while this one waited.
    let Touched::Stale { caller: was, .. } =
        s.sessions.touch(id, activity).ok_or_else(session_ended)?
    else {
        return live(s, id, activity);
    };
    let unavailable = |why: &str| {
        ApiError::Unavailable(format!(
            "the identity provider could not refresh this session: {why}"
        ))
    };
    if let Some((at, why)) = &state.failed {
        if at.elapsed() < REFRESH_RETRY_PAUSE {
            return Err(unavailable(why));
        }
    }
    match vouched_again(s, renewal, &state.token, &was).await {
        Ok(vouched) => {
            state.failed = None;
            if let Some(t) = vouched.refresh_token {
                state.token = t;
            }
            s.sessions
                .renewed(id, vouched.caller.clone(), vouched.expires_at, activity);
            Ok(vouched.caller)
        }
        Err(RefreshError::Refused(why)) => {
            s.sessions.end(id);
            tracing::info!(user = %was.user, reason = %why, "browser session ended: the identity provider refused to refresh it");
            Err(ApiError::Unauthorized(format!(
                "the identity provider no longer vouches for this session ({why}); sign in again"
            )))
        }
        Err(RefreshError::Unavailable(why)) => {
            let answer = unavailable(&why);
            state.failed = Some((Instant::now(), why));
            Err(answer)
        }
    }
}

/// Asks the issuer of `renewal` to vouch again for `was` with refresh token `token`.
async fn vouched_again(
    s: &ApiState,
    renewal: &Renewal,
    token: &str,
    was: &Caller,
) -> Result<Vouched, RefreshError> {
    let oidc = s
        .auth
        .identity_providers()
        .ok_or_else(|| RefreshError::Refused("no identity provider is configured".into()))?;
    let issuer = oidc.issuer(&renewal.issuer).ok_or_else(|| {
        RefreshError::Refused(format!("issuer {} is no longer configured", renewal.issuer))
    })?;
    let d = oidc
        .discovery(issuer)
        .await
        .map_err(|e| RefreshError::Unavailable(format!("the provider is unreachable: {e}")))?;
    let fresh = crate::oauth::refresh(oidc, issuer, &d, token).await?;
    let vouched = oidc
        .verify_vouched(&fresh.access_token, fresh.refresh_token)
        .await
        .map_err(|e| {
            RefreshError::Unavailable(format!("its new access token did not verify: {e}"))
        })?;
    let same = vouched.issuer == renewal.issuer
        && vouched.caller.user == was.user
        && vouched.caller.account == was.account;
    if !same {
        return Err(RefreshError::Refused(format!(
            "the refreshed token names user {} of issuer {}",
            vouched.caller.user, vouched.issuer
        )));
    }
    Ok(vouched)
}

/// The caller of session `id` once it is vouched for.
fn live(s: &ApiState, id: &str, activity: Activity) -> Result<Caller, ApiError> {
    match s.sessions.touch(id, activity) {
        Some(Touched::Live(caller)) => Ok(caller),
        _ => Err(session_ended()),
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
pub async fn caller_of(
    s: &ApiState,
    headers: &HeaderMap,
    method: &Method,
    ip: String,
    activity: Activity,
) -> Result<(Caller, String), ApiError> {
    let id = cookie(headers, SESSION_COOKIE).ok_or(ApiError::MissingToken)?;
    // Before the session is looked at: a cross-site request never refreshes (or ends) it.
    if crate::policy::changes_state(method) && !same_origin(s, headers) {
        return Err(ApiError::Forbidden(
            "cross-site request refused (Origin is not orderd's)".into(),
        ));
    }
    let mut caller = resume(s, &id, activity).await?;
    caller.ip = ip;
    Ok((
        caller,
        format!("session:{}", hex::encode(Sha256::digest(id.as_bytes()))),
    ))
}

/// The caller of the browser's session, if it has a live one (for pages that only read).
pub async fn signed_in(s: &ApiState, headers: &HeaderMap) -> Option<Caller> {
    resume(s, &cookie(headers, SESSION_COOKIE)?, Activity::User)
        .await
        .ok()
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
    /// Most live sessions; the earliest started is dropped for a new one.
    pub sessions_max: usize,
    /// Most live sessions of one account; its earliest started is dropped for a new one.
    pub sessions_per_account_max: usize,
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
            sessions_per_account_max: 10_000,
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
        if self.sessions_max == 0
            || self.sessions_per_account_max == 0
            || self.logins_pending_max == 0
        {
            errs.push("session.sessions_max, session.sessions_per_account_max and session.logins_pending_max must be above 0".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_domain::ids::UserId;
    use std::collections::BTreeMap;

    fn caller(account: &str, user: &str) -> Caller {
        Caller {
            account: Some(AccountId::parse(account).unwrap()),
            user: UserId::parse(user).unwrap(),
            roles: Default::default(),
            warehouse: None,
            ip: "10.0.0.1".into(),
        }
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// `caller` vouched for an hour, without a refresh token.
    fn hour(caller: Caller) -> Vouched {
        Vouched {
            caller,
            issuer: "issuer".into(),
            expires_at: unix_now() + 3600,
            refresh_token: None,
        }
    }

    fn begin(s: &Sessions, state: &str) {
        s.begin_login(
            state.into(),
            "issuer".into(),
            "verifier".into(),
            "nonce".into(),
            "https://orders.example.com/auth/callback".into(),
        );
    }

    // A full table of sign-ins under way takes a new one by pushing out the oldest, so whoever
    // keeps starting sign-ins cannot lock users out; finished ones leave it.
    #[test]
    fn a_full_sign_in_table_takes_new_sign_ins() {
        let s = Sessions::new(&SessionSettings {
            logins_pending_max: 3,
            ..SessionSettings::default()
        });
        for state in ["a", "b", "c", "d"] {
            begin(&s, state);
        }
        assert!(s.finish_login("a").is_none(), "the oldest made room");
        assert!(s.finish_login("c").is_some());
        for state in ["e", "f", "g", "h", "i", "j", "k"] {
            begin(&s, state);
        }
        assert!(s.finish_login("b").is_none() && s.finish_login("d").is_none());
        for state in ["i", "j", "k"] {
            assert!(s.finish_login(state).is_some(), "{state}");
        }
        let p = lock(&s.pending);
        assert!(
            p.by_state.is_empty() && p.order.len() <= 7,
            "{}",
            p.order.len()
        );
    }

    // Only the user's requests keep a session from idling out: one used in the background
    // alone (an event stream reconnecting) ends `idle_timeout_ms` after its user's last request.
    #[test]
    fn background_requests_do_not_keep_a_session_alive() {
        let idle = Duration::from_millis(1_500);
        let s = Sessions::new(&SessionSettings {
            idle_timeout_ms: 1_500,
            ..SessionSettings::default()
        });
        let used = s.start(hour(caller("ACME", "alice")), None).unwrap();
        let watched = s.start(hour(caller("ACME", "bob")), None).unwrap();
        let started = Instant::now();
        for _ in 0..2 {
            std::thread::sleep(idle * 2 / 3);
            assert!(s.touch(&used, Activity::User).is_some());
            if started.elapsed() < idle {
                assert!(s.touch(&watched, Activity::Background).is_some());
            }
        }
        assert!(started.elapsed() >= idle);
        assert!(
            s.touch(&watched, Activity::Background).is_none(),
            "background requests kept the session alive"
        );
        assert!(s.touch(&used, Activity::User).is_some());
    }

    // One account at its cap of sessions pushes out its own earliest, not another account's;
    // the cap in all still holds, and the counts follow every session that ends.
    #[test]
    fn an_account_at_its_cap_signs_out_its_own_earliest() {
        let s = Sessions::new(&SessionSettings {
            sessions_max: 4,
            sessions_per_account_max: 2,
            ..SessionSettings::default()
        });
        let bauhaus = s.start(hour(caller("BAUHAUS", "hans")), None).unwrap();
        let acme: Vec<String> = (0..5)
            .map(|i| {
                s.start(hour(caller("ACME", &format!("u{i}"))), None)
                    .unwrap()
            })
            .collect();
        assert!(
            s.touch(&bauhaus, Activity::User).is_some(),
            "another account's session stays"
        );
        let live: Vec<bool> = acme
            .iter()
            .map(|id| s.touch(id, Activity::User).is_some())
            .collect();
        assert_eq!(live, [false, false, false, true, true]);
        let others: Vec<String> = ["C1", "C2"]
            .iter()
            .map(|a| s.start(hour(caller(a, "x")), None).unwrap())
            .collect();
        assert!(
            s.touch(&bauhaus, Activity::User).is_none(),
            "the earliest in all made room"
        );
        assert!(others
            .iter()
            .all(|id| s.touch(id, Activity::User).is_some()));
        s.end(&acme[4]);
        let live = lock(&s.live);
        assert_eq!(live.by_id.len(), 3);
        let counts: BTreeMap<&str, usize> = live
            .per_account
            .counts()
            .iter()
            .map(|(a, n)| (a.as_str(), *n))
            .collect();
        assert_eq!(counts, BTreeMap::from([("ACME", 1), ("C1", 1), ("C2", 1)]));
    }

    // A session acts on its provider's word only while the access token holds: without a
    // refresh token it ends with it; with one it is due for a refresh (the caller it had is
    // not served), and a refresh makes it live again as the new token says.
    #[test]
    fn a_session_ends_or_refreshes_when_its_access_token_expires() {
        let s = Sessions::new(&SessionSettings::default());
        let expired = |refresh_token: Option<&str>| Vouched {
            caller: caller("ACME", "alice"),
            issuer: "issuer".into(),
            expires_at: unix_now().saturating_sub(1),
            refresh_token: refresh_token.map(str::to_owned),
        };
        let bare = s.start(expired(None), None).unwrap();
        assert!(
            s.touch(&bare, Activity::User).is_none(),
            "no refresh token: over"
        );
        assert!(!lock(&s.live).by_id.contains_key(&bare), "and gone");

        let id = s.start(expired(Some("rt-1")), None).unwrap();
        let Some(Touched::Stale {
            caller: was,
            renewal,
        }) = s.touch(&id, Activity::User)
        else {
            panic!("an expired session with a refresh token is due for a refresh");
        };
        assert_eq!(was.user.as_str(), "alice");
        assert_eq!(renewal.issuer, "issuer");
        assert_eq!(renewal.state.try_lock().unwrap().token, "rt-1");
        let mut now_approver = caller("ACME", "alice");
        now_approver.ip = "10.0.0.2".into();
        s.renewed(&id, now_approver.clone(), unix_now() + 60, Activity::User);
        match s.touch(&id, Activity::User) {
            Some(Touched::Live(c)) => assert_eq!(c, now_approver),
            _ => panic!("a refreshed session is live"),
        }
    }
}
