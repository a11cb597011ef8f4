//! Webhook endpoints and their dead letters: the registry every change goes through.
//!
//! A dedicated owner rather than the AccountActor: endpoints are not part of any order's
//! decision, and the delivery task (in the daemon) reads them constantly. Every change is
//! serialized by one async lock and queued to the journal with its audit record in one batch;
//! memory then changes at once, and the caller is answered after the flush
//! (`with_queued`), so nobody is told of a change the journal does not hold.
//!
//! | key                 | value                                            |
//! |---------------------|--------------------------------------------------|
//! | `hook/<id>`         | [`Endpoint`] (JSON, with its secrets)            |
//! | `hookcur/<id>`      | the endpoint's delivery cursor: audit seq u64 BE |
//! | `hooktry/<id>`      | the event being retried and its [`Tries`] (JSON) |
//! | `hookdl/<id>`       | [`DeadLetter`] (JSON)                            |
//!
//! Secrets are `whsec_` + base64 of 32 random bytes (Standard Webhooks). They are shown once at
//! registration or rotation, never logged ([`Secret`]'s `Debug` is redacted) and never put in an
//! audit record.

use crate::audit::{AuditEntry, Caller};
use base64::Engine as _;
use orderd_domain::ids::AccountId;
use orderd_domain::order::OrderState;
use orderd_storage::{Batch, Journal, StorageError, Ticket};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::Arc;

const ENDPOINT: &str = "hook/";
/// Prefix of the endpoints' delivery cursors (`hookcur/<id>`: an audit seq, u64 BE).
pub const CURSOR: &str = "hookcur/";
const DEAD: &str = "hookdl/";
const TRIES: &str = "hooktry/";
/// Random bytes of a secret (Standard Webhooks: 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// Every bound of webhooks, from the configuration (`webhooks.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Accept URLs that resolve to loopback, link-local or private addresses (tests, labs).
    pub allow_private: bool,
    /// Endpoints one account may register.
    pub endpoints_per_account_max: usize,
    /// Event types one endpoint may name.
    pub event_types_max: usize,
    /// Longest endpoint URL.
    pub url_bytes_max: usize,
    /// After a rotation the previous secret still signs for this long.
    pub secret_overlap_ms: u64,
    /// Connecting to a receiver.
    pub connect_timeout_ms: u64,
    /// One whole request (connect, send, answer headers).
    pub request_timeout_ms: u64,
    /// Attempts of one event before it becomes a dead letter.
    pub attempts_max: u32,
    /// An event still failing this long after its first attempt becomes a dead letter.
    pub attempt_age_max_ms: u64,
    /// First retry pause; doubled per attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest retry pause from the backoff.
    pub backoff_max_ms: u64,
    /// Longest `Retry-After` honoured (a longer one is cut to this).
    pub retry_after_max_ms: u64,
    /// Dead letters kept per account (the oldest is dropped beyond it, with a warning).
    pub dead_letters_per_account_max: usize,
    /// Largest body sent; a larger event goes straight to the dead letters.
    pub payload_bytes_max: usize,
    /// Events read from the log per round of one endpoint.
    pub batch_max: usize,
    /// Audit records one round reads at most.
    pub scan_max: usize,
    /// How often an endpoint's task looks at the endpoint again (deleted, disabled, dead
    /// letters to replay); also the longest wait of an idle reader of the log.
    pub poll_ms: u64,
    /// Least time between two writes of an endpoint's cursor (and at the end of its task).
    /// After a crash, what was delivered since the last write is sent again.
    pub cursor_store_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> WebhookSettings {
        WebhookSettings {
            allow_private: false,
            endpoints_per_account_max: 10,
            event_types_max: 16,
            url_bytes_max: 2_048,
            secret_overlap_ms: 24 * 3_600_000,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            attempts_max: 10,
            attempt_age_max_ms: 24 * 3_600_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 600_000,
            retry_after_max_ms: 3_600_000,
            dead_letters_per_account_max: 10_000,
            payload_bytes_max: 256 << 10,
            batch_max: 100,
            scan_max: 10_000,
            poll_ms: 100,
            cursor_store_ms: 250,
        }
    }
}

impl WebhookSettings {
    /// Every bad value, for the configuration check.
    pub fn problems(&self) -> Vec<String> {
        let zero = [
            (
                "endpoints_per_account_max",
                self.endpoints_per_account_max == 0,
            ),
            ("event_types_max", self.event_types_max == 0),
            ("url_bytes_max", self.url_bytes_max == 0),
            ("connect_timeout_ms", self.connect_timeout_ms == 0),
            ("request_timeout_ms", self.request_timeout_ms == 0),
            ("attempts_max", self.attempts_max == 0),
            ("attempt_age_max_ms", self.attempt_age_max_ms == 0),
            ("backoff_base_ms", self.backoff_base_ms == 0),
            ("backoff_max_ms", self.backoff_max_ms == 0),
            (
                "dead_letters_per_account_max",
                self.dead_letters_per_account_max == 0,
            ),
            ("payload_bytes_max", self.payload_bytes_max == 0),
            ("batch_max", self.batch_max == 0),
            ("scan_max", self.scan_max == 0),
            ("poll_ms", self.poll_ms == 0),
            ("cursor_store_ms", self.cursor_store_ms == 0),
        ];
        let mut out: Vec<String> = zero
            .iter()
            .filter(|(_, bad)| *bad)
            .map(|(n, _)| format!("webhooks.{n} must be above 0"))
            .collect();
        if self.backoff_base_ms > self.backoff_max_ms {
            out.push("webhooks.backoff_base_ms must not exceed webhooks.backoff_max_ms".into());
        }
        out
    }
}

/// Why an address is refused as a webhook target (`None`: a public address). An IPv6 address
/// that carries an IPv4 address a gateway may forward to is judged by that IPv4 address.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        // Local-use NAT64 (RFC 8215): translated to addresses of the local network.
        IpAddr::V6(a) if a.segments()[..3] == [0x64, 0xff9b, 1] => Some("private"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.is_private() => Some("private"),
        // 100.64.0.0/10 (carrier-grade NAT) is private in practice.
        IpAddr::V4(a) if a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64 => Some("private"),
        IpAddr::V4(a) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
            Some("not unicast")
        }
        // 0.0.0.0/8 ("this network": Linux connects 0.x.y.z to the host itself), 192.0.0.0/24
        // (protocol assignments), 198.18.0.0/15 (benchmarking) and 240.0.0.0/4 (reserved):
        // none is a receiver on the internet.
        IpAddr::V4(a)
            if a.octets()[0] == 0
                || a.octets()[..3] == [192, 0, 0]
                || (a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18)
                || a.octets()[0] >= 240 =>
        {
            Some("reserved")
        }
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_unspecified() || a.is_multicast() => Some("not unicast"),
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local"),
        IpAddr::V6(a) if (a.segments()[0] & 0xfe00) == 0xfc00 => Some("private"),
        // Site-local (fec0::/10, deprecated but still routed inside some sites).
        IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfec0 => Some("private"),
        _ => None,
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// well-known-prefix NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::/48`) address.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    };
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(v4(hi, lo)),
        // IPv4-translated (SIIT, `::ffff:0:a.b.c.d`).
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(v4(hi, lo)),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) > (0, 1) => Some(v4(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

/// Event types an endpoint may name: `*` or `orderd.order.<state>`.
pub fn event_type_known(t: &str) -> bool {
    t == "*"
        || t.strip_prefix("orderd.order.")
            .is_some_and(|s| OrderState::ALL.iter().any(|st| st.as_str() == s))
}

/// A signing secret. `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// A new random secret.
    fn generate() -> Result<Secret, WebhookError> {
        let mut key = [0u8; SECRET_BYTES];
        getrandom::fill(&mut key).map_err(|e| WebhookError::Random(e.to_string()))?;
        Ok(Secret(format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        )))
    }
    /// The `whsec_...` text (shown to the account admin once; used to sign).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A secret that signs deliveries, until `until_ms` (Unix ms) when it was rotated out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub secret: Secret,
    pub until_ms: Option<u64>,
}

/// One registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub account: AccountId,
    pub url: String,
    pub event_types: Vec<String>,
    pub created: String,
    /// The current secret first, then any previous one still in its overlap.
    pub keys: Vec<SigningKey>,
    /// Why deliveries stopped (e.g. the receiver answered 410); `None` while active.
    pub disabled: Option<String>,
}

impl Endpoint {
    /// Whether events of `kind` (e.g. `orderd.order.allocated`) go to this endpoint.
    pub fn wants(&self, kind: &str) -> bool {
        self.event_types.iter().any(|t| t == "*" || t == kind)
    }
    /// The secrets that sign now.
    pub fn signing_secrets(&self, now_ms: u64) -> Vec<&Secret> {
        self.keys
            .iter()
            .filter(|k| k.until_ms.is_none_or(|u| u > now_ms))
            .map(|k| &k.secret)
            .collect()
    }
    /// What the API shows (no secret).
    pub fn view(&self) -> EndpointView {
        EndpointView {
            id: self.id.clone(),
            account: self.account.clone(),
            url: self.url.clone(),
            event_types: self.event_types.clone(),
            created: self.created.clone(),
            previous_secret_until_ms: self.keys.iter().skip(1).filter_map(|k| k.until_ms).max(),
            disabled: self.disabled.clone(),
        }
    }
}

/// An endpoint without its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    pub account: AccountId,
    pub url: String,
    pub event_types: Vec<String>,
    pub created: String,
    /// Until when (Unix ms) the previous secret still signs, after a rotation.
    pub previous_secret_until_ms: Option<u64>,
    pub disabled: Option<String>,
}

/// An event that could not be delivered to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub endpoint: String,
    pub account: AccountId,
    /// The event id (`webhook-id`).
    pub event_id: String,
    pub event_type: String,
    /// Its audit log seq.
    pub seq: u64,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: String,
    /// A replay was asked for and has not yet succeeded or been given up.
    pub replay: bool,
    /// The failed attempts of the replay asked for last (also counted in `attempts`), none
    /// before its first: a replay is retried like a live event, and this survives a restart
    /// of orderd. Given up, it keeps its count and age (`next_ms` 0, nothing asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_tries: Option<Tries>,
    /// The body as sent: the event's CloudEvents JSON. Rendered again from the event in the
    /// audit log (at `seq`) when the dead letter is listed or replayed, and held neither in
    /// memory nor in its record: an account's dead letters would otherwise hold up to
    /// `dead_letters_per_account_max` x `payload_bytes_max` (2.5 GiB by default) in memory.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// The failed attempts at one event (the live event an endpoint is retrying, or a dead
/// letter's replay), stored after each failure so that a restart of orderd goes on counting
/// (`webhooks.attempts_max`) and ageing (`webhooks.attempt_age_max_ms`) rather than starting
/// again: a receiver answering `Retry-After: 3600` to an orderd that restarts every hour would
/// otherwise hold its endpoint for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tries {
    pub attempts: u32,
    /// When (Unix ms) the first attempt was made.
    pub first_ms: u64,
    /// No attempt before this (Unix ms): the backoff, or the receiver's `Retry-After`.
    pub next_ms: u64,
    /// Until when (Unix ms) the receiver asked for nothing (`Retry-After` to the last
    /// attempt). A replay's holds the endpoint's live events too; a live event's holds
    /// everything anyway, as nothing passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_until_ms: Option<u64>,
}

impl Tries {
    /// Before the first attempt, made now.
    pub fn first() -> Tries {
        Tries {
            attempts: 0,
            first_ms: unix_ms(),
            next_ms: 0,
            asked_until_ms: None,
        }
    }
}

/// The tries of the live event an endpoint is retrying, as stored at `hooktry/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EventTries {
    /// The event (`webhook-id`).
    event_id: String,
    #[serde(flatten)]
    tries: Tries,
}

/// What became of a replay's attempt ([`Webhooks::replayed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Delivered: the dead letter goes.
    Delivered,
    /// The receiver refused it (or was not reached): `tries` are the replay's with this
    /// attempt; it stays asked for until `tries.next_ms`, unless `given_up`.
    Refused {
        error: String,
        tries: Tries,
        given_up: bool,
    },
    /// Not sent (its event cannot be read from the log, or is too large): given up without an
    /// attempt.
    NotSent { error: String },
}

/// The dead letters piling up at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterGroup {
    pub account: AccountId,
    pub endpoint: String,
    pub count: usize,
    /// When the oldest of them failed (RFC 3339).
    pub oldest_failed_at: String,
    /// The error of the most recent one.
    pub last_error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Conflict(String),
    /// A replay to an endpoint that cannot take the dead letter.
    #[error("{0}")]
    BadTarget(String),
    #[error("no randomness for a secret: {0}")]
    Random(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Default)]
struct State {
    endpoints: BTreeMap<String, Endpoint>,
    /// Each endpoint's cursor as last queued (the journal holds it once flushed): read and
    /// moved here, under the lock, so that no change can act on a value a queued one replaces.
    cursors: BTreeMap<String, u64>,
    /// The tries of the event each endpoint is retrying, as last queued.
    tries: BTreeMap<String, EventTries>,
    dead: DeadLetters,
}

impl State {
    /// Whether `seq` moves `endpoint`'s cursor forward. A cursor never moves back: an endpoint
    /// re-enabled from the head of the log is not set back by the last write of its previous
    /// task, nor by a dead letter that task still makes.
    fn moves_cursor(&self, endpoint: &str, seq: u64) -> bool {
        self.cursors.get(endpoint).is_none_or(|at| *at < seq)
    }
}

/// A stored dead letter. One written before replays kept [`Tries`] has its replay's tries in
/// three fields (`replay_attempts`, `replay_first_ms`, `replay_next_ms`): they become its
/// `replay_tries`, so a replay under way at an upgrade goes on with its count, age and pause.
fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetter, serde_json::Error> {
    #[derive(Deserialize)]
    struct Earlier {
        #[serde(flatten)]
        dead_letter: DeadLetter,
        #[serde(default)]
        replay_attempts: u32,
        replay_first_ms: Option<u64>,
        replay_next_ms: Option<u64>,
    }
    let e: Earlier = serde_json::from_slice(bytes)?;
    let mut dl = e.dead_letter;
    if let (None, Some(first_ms)) = (&dl.replay_tries, e.replay_first_ms) {
        dl.replay_tries = Some(Tries {
            attempts: e.replay_attempts,
            first_ms,
            next_ms: e.replay_next_ms.unwrap_or(0),
            asked_until_ms: None,
        });
    }
    Ok(dl)
}

fn put_cursor(batch: &mut Batch, endpoint: &str, seq: u64) {
    batch.put(format!("{CURSOR}{endpoint}"), seq.to_be_bytes().to_vec());
}

/// The dead letters by id, which wait for a replay by endpoint (every endpoint's delivery task
/// asks for its own several times a second), by account (an account's page, and its cap, are
/// found without scanning every account's) and by endpoint and failure time (the operators'
/// ranking reads one entry per endpoint, not every dead letter, while the registry waits).
/// Ids are time-ordered (UUIDv7), so each index is oldest first.
#[derive(Default)]
struct DeadLetters {
    all: BTreeMap<String, DeadLetter>,
    /// (endpoint, id) of each dead letter with `replay` set.
    replays: BTreeSet<(String, String)>,
    /// (account, id) of each dead letter.
    by_account: BTreeSet<(AccountId, String)>,
    /// Per endpoint with dead letters: (failed_at, id) of each.
    by_endpoint: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl DeadLetters {
    /// Adds `dl` (without its body), or replaces the dead letter with its id.
    fn insert(&mut self, mut dl: DeadLetter) {
        dl.body = String::new();
        self.remove(&dl.id);
        if dl.replay {
            self.replays.insert((dl.endpoint.clone(), dl.id.clone()));
        }
        self.by_account.insert((dl.account.clone(), dl.id.clone()));
        self.by_endpoint
            .entry(dl.endpoint.clone())
            .or_default()
            .insert((dl.failed_at.clone(), dl.id.clone()));
        self.all.insert(dl.id.clone(), dl);
        self.debug_check();
    }

    /// Every index holds each dead letter once (debug builds).
    fn debug_check(&self) {
        debug_assert_eq!(self.by_account.len(), self.all.len());
        debug_assert_eq!(
            self.by_endpoint.values().map(BTreeSet::len).sum::<usize>(),
            self.all.len()
        );
    }

    fn remove(&mut self, id: &str) -> Option<DeadLetter> {
        let dl = self.all.remove(id)?;
        self.replays.remove(&(dl.endpoint.clone(), dl.id.clone()));
        self.by_account.remove(&(dl.account.clone(), dl.id.clone()));
        if let Some(times) = self.by_endpoint.get_mut(&dl.endpoint) {
            times.remove(&(dl.failed_at.clone(), dl.id.clone()));
            if times.is_empty() {
                self.by_endpoint.remove(&dl.endpoint);
            }
        }
        self.debug_check();
        Some(dl)
    }

    /// The ids of `endpoint`'s dead letters.
    fn of_endpoint<'a>(&'a self, endpoint: &str) -> impl Iterator<Item = &'a String> {
        self.by_endpoint
            .get(endpoint)
            .into_iter()
            .flat_map(|times| times.iter().map(|(_, id)| id))
    }

    /// Dead letters grouped by endpoint and ranked by impact: most dead letters (events a
    /// customer system has not received) first, then the oldest; at most `max` groups.
    fn ranking(&self, max: usize) -> Vec<DeadLetterGroup> {
        let mut ranked: Vec<DeadLetterGroup> = self
            .by_endpoint
            .iter()
            .filter_map(|(endpoint, times)| {
                let (oldest, _) = times.first()?;
                let (_, latest) = times.last()?;
                let latest = self.all.get(latest)?;
                Some(DeadLetterGroup {
                    account: latest.account.clone(),
                    endpoint: endpoint.clone(),
                    count: times.len(),
                    oldest_failed_at: oldest.clone(),
                    last_error: latest.last_error.clone(),
                })
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.oldest_failed_at.cmp(&b.oldest_failed_at))
        });
        ranked.truncate(max);
        ranked
    }

    /// The ids of `account`'s dead letters after `after`, oldest first.
    fn ids_of<'a>(
        &'a self,
        account: &'a AccountId,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'a String> {
        let from = (account.clone(), after.unwrap_or_default().to_owned());
        self.by_account
            .range((Bound::Excluded(from), Bound::Unbounded))
            .take_while(move |(a, _)| a == account)
            .map(|(_, id)| id)
    }

    /// The ids of the dead letters of `account` to drop so that one more fits under `cap`:
    /// the oldest, those not waiting for a replay first. A replay someone asked for and was
    /// told would happen is dropped only when every dead letter of the account waits for one.
    fn beyond_cap(&self, account: &AccountId, cap: usize) -> Vec<String> {
        let mine: Vec<&DeadLetter> = self
            .ids_of(account, None)
            .filter_map(|id| self.all.get(id))
            .collect();
        let over = (mine.len() + 1).saturating_sub(cap);
        let (waiting, idle): (Vec<&DeadLetter>, Vec<&DeadLetter>) =
            mine.into_iter().partition(|d| d.replay);
        idle.into_iter()
            .chain(waiting)
            .take(over)
            .map(|d| d.id.clone())
            .collect()
    }

    /// A page of dead letters after `after` (an id), oldest first: `account`'s, or every
    /// account's when `None`.
    fn page(
        &self,
        account: Option<&AccountId>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<DeadLetter> {
        match account {
            Some(a) => self
                .ids_of(a, after)
                .filter_map(|id| self.all.get(id))
                .take(limit)
                .cloned()
                .collect(),
            None => self
                .all
                .range::<str, _>((
                    after.map_or(Bound::Unbounded, Bound::Excluded),
                    Bound::Unbounded,
                ))
                .map(|(_, d)| d)
                .take(limit)
                .cloned()
                .collect(),
        }
    }

    fn get(&self, id: &str) -> Option<&DeadLetter> {
        self.all.get(id)
    }

    fn len(&self) -> usize {
        self.all.len()
    }

    /// The dead letters of `endpoint` waiting for a replay, oldest first (ids are time-ordered).
    fn replays_of<'a>(&'a self, endpoint: &'a str) -> impl Iterator<Item = &'a DeadLetter> {
        self.replays
            .range((endpoint.to_owned(), String::new())..)
            .take_while(move |(e, _)| e == endpoint)
            .filter_map(|(_, id)| self.all.get(id))
    }
}

struct Inner {
    journal: Journal,
    settings: WebhookSettings,
    /// Loaded on first use; every change queues its journal write and changes it under the lock
    /// (see [`Webhooks::with_queued`]).
    state: tokio::sync::Mutex<Option<State>>,
}

/// The handle of the registry (cheap to clone).
#[derive(Clone)]
pub struct Webhooks(Arc<Inner>);

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data always encodes")
}

fn load(journal: &Journal) -> Result<State, StorageError> {
    let mut st = State::default();
    let corrupt = |k: &[u8], e: serde_json::Error| StorageError::corrupt(k, e.to_string());
    for (k, v) in journal.scan_prefix(ENDPOINT.as_bytes())? {
        let e: Endpoint = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
        st.endpoints.insert(e.id.clone(), e);
    }
    for (k, v) in journal.scan_prefix(DEAD.as_bytes())? {
        st.dead
            .insert(decode_dead_letter(&v).map_err(|e| corrupt(&k, e))?);
    }
    for (k, v) in journal.scan_prefix(CURSOR.as_bytes())? {
        let id = String::from_utf8_lossy(&k[CURSOR.len()..]).into_owned();
        st.cursors.insert(id, Journal::decode_u64(&k, &v)?);
    }
    for (k, v) in journal.scan_prefix(TRIES.as_bytes())? {
        let t: EventTries = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
        st.tries
            .insert(String::from_utf8_lossy(&k[TRIES.len()..]).into_owned(), t);
    }
    Ok(st)
}

impl Webhooks {
    /// The registry on `journal`; nothing is read until first use.
    pub fn new(journal: Journal, settings: WebhookSettings) -> Webhooks {
        Webhooks(Arc::new(Inner {
            journal,
            settings,
            state: tokio::sync::Mutex::new(None),
        }))
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.0.settings
    }

    pub fn journal(&self) -> &Journal {
        &self.0.journal
    }

    /// Runs `f` on the loaded state, under the lock.
    async fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Inner, &mut State) -> Result<T, WebhookError>,
    ) -> Result<T, WebhookError> {
        let mut guard = self.0.state.lock().await;
        if guard.is_none() {
            let j = self.0.journal.clone();
            let st = tokio::task::spawn_blocking(move || load(&j))
                .await
                .map_err(|e| StorageError::Invalid {
                    reason: e.to_string(),
                })??;
            *guard = Some(st);
        }
        let st = guard.as_mut().expect("loaded above");
        let out = f(&self.0, st).await;
        // Counts far below 2^52 are exact as f64.
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(crate::metric_names::WEBHOOK_DEAD_LETTERS).set(st.dead.len() as f64);
        out
    }

    /// [`Webhooks::with`] for a change, which every change of the registry goes through: `f`
    /// queues its write with `try_submit` (in journal order with every other change) and
    /// changes memory at once, with no await in between; the flush is awaited after the lock
    /// is released.
    ///
    /// - Nobody waits for another's flush: not endpoints' delivery tasks, not an account
    ///   admin's change.
    /// - A caller that goes away (a client disconnecting from a registration) cannot leave the
    ///   write queued and memory without it: both happen, or neither.
    /// - Memory is ahead of the disk only until that flush, and the journal applies writes in
    ///   order and stops at a failed one: nothing acknowledged later can rest on a change that
    ///   was lost.
    async fn with_queued<T>(
        &self,
        f: impl AsyncFnOnce(&Inner, &mut State) -> Result<(T, Option<Ticket>), WebhookError>,
    ) -> Result<T, WebhookError> {
        let (out, ticket) = self.with(f).await?;
        if let Some(ticket) = ticket {
            ticket.await?;
        }
        Ok(out)
    }

    /// Registers an endpoint of `account`; returns it with its new secret. The URL and event
    /// types are checked by the caller (the API), the per-account limit here. Delivery starts
    /// with the events committed after this call.
    pub async fn register(
        &self,
        caller: &Caller,
        account: &AccountId,
        url: String,
        event_types: Vec<String>,
    ) -> Result<(EndpointView, Secret), WebhookError> {
        self.with_queued(async |inner, st| {
            let have = st
                .endpoints
                .values()
                .filter(|e| e.account == *account)
                .count();
            let max = inner.settings.endpoints_per_account_max;
            if have >= max {
                return Err(WebhookError::Limit(format!(
                    "an account may register at most {max} endpoints (webhooks.endpoints_per_account_max)"
                )));
            }
            let secret = Secret::generate()?;
            let ep = Endpoint {
                id: new_id("wh"),
                account: account.clone(),
                url,
                event_types,
                created: crate::audit::now_rfc3339(),
                keys: vec![SigningKey {
                    secret: secret.clone(),
                    until_ms: None,
                }],
                disabled: None,
            };
            let mut batch = Batch::default();
            batch.put(format!("{ENDPOINT}{}", ep.id), json(&ep));
            let head = inner.journal.audit_head().seq;
            put_cursor(&mut batch, &ep.id, head);
            audit(&mut batch, caller, &ep, "webhook.register");
            let ticket = inner.journal.try_submit(batch)?;
            let view = ep.view();
            st.cursors.insert(ep.id.clone(), head);
            st.endpoints.insert(ep.id.clone(), ep);
            Ok(((view, secret), Some(ticket)))
        })
        .await
    }

    /// The endpoints of `account` (every account's when `None`), without secrets.
    pub async fn list(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<EndpointView>, WebhookError> {
        self.with(async |_, st| {
            Ok(st
                .endpoints
                .values()
                .filter(|e| account.is_none_or(|a| *a == e.account))
                .map(Endpoint::view)
                .collect())
        })
        .await
    }

    /// Every endpoint with its secrets (for the delivery task).
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, WebhookError> {
        self.with(async |_, st| Ok(st.endpoints.values().cloned().collect()))
            .await
    }

    pub async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, WebhookError> {
        self.with(async |_, st| Ok(st.endpoints.get(id).cloned()))
            .await
    }

    fn owned<'a>(
        st: &'a mut State,
        account: Option<&AccountId>,
        id: &str,
    ) -> Result<&'a mut Endpoint, WebhookError> {
        st.endpoints
            .get_mut(id)
            .filter(|e| account.is_none_or(|a| *a == e.account))
            .ok_or(WebhookError::NotFound)
    }

    /// Deletes an endpoint of `account`, with its cursor and dead letters.
    pub async fn delete(
        &self,
        caller: &Caller,
        account: &AccountId,
        id: &str,
    ) -> Result<(), WebhookError> {
        self.with_queued(async |inner, st| {
            let ep = Self::owned(st, Some(account), id)?.clone();
            let mut batch = Batch::default();
            batch.remove(format!("{ENDPOINT}{id}"));
            batch.remove(format!("{CURSOR}{id}"));
            batch.remove(format!("{TRIES}{id}"));
            // Only the endpoint's dead letters (its index), not every account's.
            let dead: Vec<String> = st.dead.of_endpoint(id).cloned().collect();
            for d in &dead {
                batch.remove(format!("{DEAD}{d}"));
            }
            audit(&mut batch, caller, &ep, "webhook.delete");
            let ticket = inner.journal.try_submit(batch)?;
            st.endpoints.remove(id);
            st.cursors.remove(id);
            st.tries.remove(id);
            for d in dead {
                st.dead.remove(&d);
            }
            Ok(((), Some(ticket)))
        })
        .await
    }

    /// A new secret for an endpoint of `account`; the previous one keeps signing for
    /// `webhooks.secret_overlap_ms` (older ones stop now).
    pub async fn rotate(
        &self,
        caller: &Caller,
        account: &AccountId,
        id: &str,
    ) -> Result<(EndpointView, Secret), WebhookError> {
        self.with_queued(async |inner, st| {
            let mut ep = Self::owned(st, Some(account), id)?.clone();
            let secret = Secret::generate()?;
            let now = now_ms();
            let previous = ep.keys.first().map(|k| SigningKey {
                secret: k.secret.clone(),
                until_ms: Some(now.saturating_add(inner.settings.secret_overlap_ms)),
            });
            ep.keys = std::iter::once(SigningKey {
                secret: secret.clone(),
                until_ms: None,
            })
            .chain(previous)
            .collect();
            let mut batch = Batch::default();
            batch.put(format!("{ENDPOINT}{id}"), json(&ep));
            audit(&mut batch, caller, &ep, "webhook.rotate_secret");
            let ticket = inner.journal.try_submit(batch)?;
            let view = ep.view();
            st.endpoints.insert(ep.id.clone(), ep);
            Ok(((view, secret), Some(ticket)))
        })
        .await
    }

    /// Stops deliveries to an endpoint (the receiver answered 410 Gone). Replays waiting there
    /// will not run: they stop waiting, so that they can be replayed to another endpoint.
    pub async fn disable(&self, id: &str, reason: &str) -> Result<(), WebhookError> {
        self.with_queued(async |inner, st| {
            let mut ep = Self::owned(st, None, id)?.clone();
            ep.disabled = Some(reason.to_owned());
            let mut batch = Batch::default();
            batch.put(format!("{ENDPOINT}{id}"), json(&ep));
            let stranded: Vec<DeadLetter> = st
                .dead
                .replays_of(id)
                .map(|dl| DeadLetter {
                    replay: false,
                    last_error: format!("not replayed: endpoint {id} was disabled ({reason})"),
                    ..dl.clone()
                })
                .collect();
            for dl in &stranded {
                batch.put(format!("{DEAD}{}", dl.id), json(dl));
            }
            audit(&mut batch, &Caller::system(), &ep, "webhook.disable");
            let ticket = inner.journal.try_submit(batch)?;
            st.endpoints.insert(ep.id.clone(), ep);
            for dl in stranded {
                st.dead.insert(dl);
            }
            Ok(((), Some(ticket)))
        })
        .await
    }

    /// Resumes deliveries to a disabled endpoint of `account` (e.g. after its receiver answered
    /// 410 and was fixed): from where they stopped, so every event since comes from the log in
    /// order; or, with `skip_missed`, from the head of the log, the events in between not sent.
    /// Enabling an active endpoint changes nothing; skipping on one is a conflict (its events
    /// are under way).
    pub async fn enable(
        &self,
        caller: &Caller,
        account: &AccountId,
        id: &str,
        skip_missed: bool,
    ) -> Result<EndpointView, WebhookError> {
        self.with_queued(async |inner, st| {
            let mut ep = Self::owned(st, Some(account), id)?.clone();
            if ep.disabled.is_none() {
                if skip_missed {
                    return Err(WebhookError::Conflict(format!(
                        "endpoint {id} is active: only a disabled endpoint can skip the events it missed"
                    )));
                }
                return Ok((ep.view(), None));
            }
            ep.disabled = None;
            let mut batch = Batch::default();
            batch.put(format!("{ENDPOINT}{id}"), json(&ep));
            // Tries left from before (a shutdown mid-retry) would age the first event it sends.
            batch.remove(format!("{TRIES}{id}"));
            let head = inner.journal.audit_head().seq;
            let skip = skip_missed && st.moves_cursor(id, head);
            if skip {
                put_cursor(&mut batch, id, head);
            }
            let action = if skip_missed {
                "webhook.enable_skipping_missed"
            } else {
                "webhook.enable"
            };
            audit(&mut batch, caller, &ep, action);
            let ticket = inner.journal.try_submit(batch)?;
            let view = ep.view();
            st.tries.remove(id);
            if skip {
                st.cursors.insert(id.to_owned(), head);
            }
            st.endpoints.insert(ep.id.clone(), ep);
            Ok((view, Some(ticket)))
        })
        .await
    }

    /// The endpoint's cursor: the last audit seq it is done with (as last queued). `None` for
    /// an endpoint that is not registered.
    pub async fn cursor(&self, id: &str) -> Result<Option<u64>, WebhookError> {
        self.with(async |_, st| Ok(st.cursors.get(id).copied()))
            .await
    }

    /// Moves the endpoint's cursor forward to `seq` (ignored for a deleted endpoint, or when
    /// the cursor is already there: see [`State::moves_cursor`]).
    pub async fn store_cursor(&self, id: &str, seq: u64) -> Result<(), WebhookError> {
        // Queued under the lock, so it is ordered before a deletion that removes the cursor.
        self.with_queued(async |inner, st| {
            if !st.endpoints.contains_key(id) || !st.moves_cursor(id, seq) {
                return Ok(((), None));
            }
            let mut batch = Batch::default();
            put_cursor(&mut batch, id, seq);
            let ticket = inner.journal.try_submit(batch)?;
            st.cursors.insert(id.to_owned(), seq);
            Ok(((), Some(ticket)))
        })
        .await
    }

    /// Stores a dead letter and moves its endpoint's cursor past it, atomically. Beyond
    /// `webhooks.dead_letters_per_account_max` the account's oldest dead letter is dropped,
    /// one waiting for a replay only when every other is.
    pub async fn dead_letter(&self, mut dl: DeadLetter) -> Result<String, WebhookError> {
        self.with_queued(async |inner, st| {
            if !st.endpoints.contains_key(&dl.endpoint) {
                return Err(WebhookError::NotFound);
            }
            dl.id = new_id("dl");
            dl.body = String::new();
            let mut batch = Batch::default();
            batch.put(format!("{DEAD}{}", dl.id), json(&dl));
            let moves = st.moves_cursor(&dl.endpoint, dl.seq);
            if moves {
                put_cursor(&mut batch, &dl.endpoint, dl.seq);
            }
            // Its tries are over with it.
            batch.remove(format!("{TRIES}{}", dl.endpoint));
            let dropped = st
                .dead
                .beyond_cap(&dl.account, inner.settings.dead_letters_per_account_max);
            for d in &dropped {
                tracing::warn!(dead_letter.id = %d, account.id = %dl.account, "dead letter dropped: webhooks.dead_letters_per_account_max reached");
                batch.remove(format!("{DEAD}{d}"));
            }
            let mut entry = AuditEntry::new(
                &Caller::system(),
                Some(&dl.account),
                "webhook.dead_letter",
                dl.event_id.as_bytes(),
            );
            entry.order = dl.event_id.rsplit_once('.').map(|(o, _)| o.to_owned());
            batch.audit.push(entry.draft(&format!("webhook:{}", dl.endpoint)));
            let ticket = inner.journal.try_submit(batch)?;
            for d in dropped {
                st.dead.remove(&d);
            }
            metrics::counter!(crate::metric_names::WEBHOOK_DEAD_LETTERED).increment(1);
            if moves {
                st.cursors.insert(dl.endpoint.clone(), dl.seq);
            }
            st.tries.remove(&dl.endpoint);
            let id = dl.id.clone();
            st.dead.insert(dl);
            Ok((id, Some(ticket)))
        })
        .await
    }

    /// At most `limit` dead letters after the one with id `after`, oldest first: `account`'s,
    /// or every account's when `None`.
    pub async fn dead_letters(
        &self,
        account: Option<&AccountId>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        let page = self
            .with(async |_, st| Ok(st.dead.page(account, after, limit)))
            .await?;
        page.into_iter().map(|dl| self.with_body(dl)).collect()
    }

    /// `dl` with its body, rendered again from its event in the audit log (read after the
    /// registry's lock is released: a dead letter's event is durable before it exists). The
    /// body stays empty when the record cannot be read (logged); an error when it is missing
    /// or holds another event.
    pub fn with_body(&self, mut dl: DeadLetter) -> Result<DeadLetter, WebhookError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            key: format!("audit seq {}", dl.seq),
            reason,
        };
        let record = self.0.journal.audit_record(dl.seq)?.ok_or_else(|| {
            corrupt(format!(
                "dead letter {} names a missing audit record",
                dl.id
            ))
        })?;
        // An unreadable record (a damaged store) is logged and leaves the body empty.
        let Some(event) = crate::events::event_or_skip(&record) else {
            return Ok(dl);
        };
        let id = crate::events::event_id(&event);
        if id != dl.event_id {
            return Err(corrupt(format!(
                "dead letter {} is of event {}, the record holds {id}",
                dl.id, dl.event_id
            ))
            .into());
        }
        dl.body = String::from_utf8_lossy(&crate::events::render(&event)).into_owned();
        Ok(dl)
    }

    /// Every account's dead letters: how many, and the `max` endpoints with the most, each
    /// with when its oldest failed and the error of its latest.
    pub async fn dead_letter_ranking(
        &self,
        max: usize,
    ) -> Result<(usize, Vec<DeadLetterGroup>), WebhookError> {
        self.with(async |_, st| Ok((st.dead.len(), st.dead.ranking(max))))
            .await
    }

    /// Asks for a dead letter of `account` (any account when `None`) to be sent again: to its
    /// endpoint, or to `to`, another endpoint of the dead letter's account that takes its event
    /// type (the dead letter then belongs to it): for one whose endpoint was disabled, e.g. by
    /// a 410, and is not to be enabled again.
    pub async fn request_replay(
        &self,
        caller: &Caller,
        account: Option<&AccountId>,
        id: &str,
        to: Option<&str>,
    ) -> Result<DeadLetter, WebhookError> {
        self.with_queued(async |inner, st| {
            let mut dl = st
                .dead
                .get(id)
                .filter(|d| account.is_none_or(|a| *a == d.account))
                .cloned()
                .ok_or(WebhookError::NotFound)?;
            let target = to.unwrap_or(&dl.endpoint);
            let Some(ep) = st.endpoints.get(target).filter(|e| e.account == dl.account) else {
                return Err(match to {
                    Some(_) => WebhookError::BadTarget(format!(
                        "no endpoint {target} of account {}",
                        dl.account
                    )),
                    // Deleting an endpoint deletes its dead letters.
                    None => WebhookError::NotFound,
                });
            };
            if let Some(why) = &ep.disabled {
                return Err(WebhookError::Conflict(format!(
                    "endpoint {target} is disabled ({why}); enable it again (POST /v1/webhooks/{target}/enable) or replay to another endpoint"
                )));
            }
            if !ep.wants(&dl.event_type) {
                return Err(WebhookError::BadTarget(format!(
                    "endpoint {target} does not take {} events",
                    dl.event_type
                )));
            }
            // A replay waiting (or under way) at one endpoint is not moved to another: both
            // could deliver it, or the first one's failure could cancel the second.
            if dl.replay && dl.endpoint != ep.id {
                return Err(WebhookError::Conflict(format!(
                    "a replay of {id} is already waiting at endpoint {}",
                    dl.endpoint
                )));
            }
            if !dl.replay {
                dl.replay_tries = None;
            }
            dl.endpoint = ep.id.clone();
            dl.replay = true;
            let mut batch = Batch::default();
            batch.put(format!("{DEAD}{id}"), json(&dl));
            let entry = AuditEntry::new(caller, Some(&dl.account), "webhook.replay", id.as_bytes());
            batch
                .audit
                .push(entry.draft(&format!("webhook:{}", dl.endpoint)));
            let ticket = inner.journal.try_submit(batch)?;
            st.dead.insert(dl.clone());
            Ok((dl, Some(ticket)))
        })
        .await
        .and_then(|dl| self.with_body(dl))
    }

    /// Dead letters of an endpoint waiting to be replayed, oldest first, at most `max`, without
    /// their bodies: the sender renders each in turn ([`Webhooks::with_body`]), so that a
    /// thousand replays never hold a thousand bodies.
    pub async fn replays(
        &self,
        endpoint: &str,
        max: usize,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        self.with(async |_, st| Ok(st.dead.replays_of(endpoint).take(max).cloned().collect()))
            .await
    }

    /// The outcome of a replay's attempt at `endpoint` ([`Replayed`]). A failed one adds its
    /// attempts to the dead letter's, with its error; one given up stops waiting. Ignored when
    /// the dead letter no longer waits there.
    pub async fn replayed(
        &self,
        id: &str,
        endpoint: &str,
        outcome: Replayed,
    ) -> Result<(), WebhookError> {
        self.with_queued(async |inner, st| {
            let Some(mut dl) = st.dead.get(id).cloned() else {
                return Ok(((), None));
            };
            if dl.endpoint != endpoint || !dl.replay {
                return Ok(((), None));
            }
            let mut batch = Batch::default();
            let delivered = outcome == Replayed::Delivered;
            let error = match outcome {
                Replayed::Delivered => None,
                Replayed::Refused {
                    error,
                    mut tries,
                    given_up,
                } => {
                    dl.replay = !given_up;
                    dl.attempts = dl.attempts.saturating_add(1);
                    if given_up {
                        // No next attempt, and no pause asked for that a restart would keep.
                        tries.next_ms = 0;
                        tries.asked_until_ms = None;
                    }
                    dl.replay_tries = Some(tries);
                    Some(error)
                }
                Replayed::NotSent { error } => {
                    dl.replay = false;
                    Some(error)
                }
            };
            match error {
                None => batch.remove(format!("{DEAD}{id}")),
                Some(error) => {
                    dl.last_error = error;
                    dl.failed_at = crate::audit::now_rfc3339();
                    batch.put(format!("{DEAD}{id}"), json(&dl));
                }
            }
            let ticket = inner.journal.try_submit(batch)?;
            if delivered {
                st.dead.remove(id);
            } else {
                st.dead.insert(dl);
            }
            Ok(((), Some(ticket)))
        })
        .await
    }

    /// The tries of `endpoint`, if they are of `event_id`.
    pub async fn tries(
        &self,
        endpoint: &str,
        event_id: &str,
    ) -> Result<Option<Tries>, WebhookError> {
        self.with(async |_, st| {
            Ok((st.tries.get(endpoint))
                .filter(|t| t.event_id == event_id)
                .map(|t| t.tries.clone()))
        })
        .await
    }

    /// Stores the tries of the event `event_id` that `endpoint` is retrying (ignored for a
    /// deleted endpoint).
    pub async fn store_tries(
        &self,
        endpoint: &str,
        event_id: &str,
        tries: &Tries,
    ) -> Result<(), WebhookError> {
        self.with_queued(async |inner, st| {
            if !st.endpoints.contains_key(endpoint) {
                return Ok(((), None));
            }
            let stored = EventTries {
                event_id: event_id.to_owned(),
                tries: tries.clone(),
            };
            let mut batch = Batch::default();
            batch.put(format!("{TRIES}{endpoint}"), json(&stored));
            let ticket = inner.journal.try_submit(batch)?;
            st.tries.insert(endpoint.to_owned(), stored);
            Ok(((), Some(ticket)))
        })
        .await
    }

    /// Forgets the tries of `endpoint` (its event was delivered after failures).
    pub async fn clear_tries(&self, endpoint: &str) -> Result<(), WebhookError> {
        self.with_queued(async |inner, st| {
            if st.tries.remove(endpoint).is_none() {
                return Ok(((), None));
            }
            let mut batch = Batch::default();
            batch.remove(format!("{TRIES}{endpoint}"));
            Ok(((), Some(inner.journal.try_submit(batch)?)))
        })
        .await
    }
}

/// The audit record of a change of `ep` (its view: never a secret).
fn audit(batch: &mut Batch, caller: &Caller, ep: &Endpoint, action: &str) {
    let entry = AuditEntry::new(caller, Some(&ep.account), action, &json(&ep.view()));
    batch.audit.push(entry.draft(&format!("webhook:{}", ep.id)));
}

/// Unix ms now (for signing-secret expiry).
pub fn unix_ms() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::OrderChanged;
    use orderd_storage::JournalConfig;

    fn acct(a: &str) -> AccountId {
        AccountId::parse(a).unwrap()
    }

    /// A dead letter of `account`'s event `o-<seq>.1` at audit seq `seq`, failed with a 500 and
    /// not waiting for a replay; tests set what they look at.
    fn dead(endpoint: &str, account: &str, seq: u64) -> DeadLetter {
        DeadLetter {
            id: String::new(),
            endpoint: endpoint.into(),
            account: acct(account),
            event_id: format!("o-{seq}.1"),
            event_type: "orderd.order.confirmed".into(),
            seq,
            attempts: 1,
            last_error: "500".into(),
            failed_at: String::new(),
            replay: false,
            replay_tries: None,
            body: String::new(),
        }
    }

    /// A replay's first attempt, refused; given up or retried at `next_ms`.
    fn refused(next_ms: Option<u64>) -> Replayed {
        Replayed::Refused {
            error: "late".into(),
            tries: Tries {
                attempts: 1,
                first_ms: 1_000,
                next_ms: next_ms.unwrap_or(0),
                asked_until_ms: None,
            },
            given_up: next_ms.is_none(),
        }
    }

    // Dead letters group by endpoint, the endpoint with the most first (ties: the oldest),
    // each group with its oldest time and its latest error; `max` bounds the list. Removing
    // dead letters (replayed, or the account's oldest beyond its cap) updates the groups.
    #[test]
    fn dead_letters_rank_by_endpoint() {
        let dl = |id: &str, endpoint: &str, account: &str, at: &str, error: &str| DeadLetter {
            id: id.into(),
            last_error: error.into(),
            failed_at: at.into(),
            ..dead(endpoint, account, 1)
        };
        let mut dead = DeadLetters::default();
        assert!(dead.ranking(10).is_empty());
        for d in [
            dl("1", "ep_a", "A", "2026-11-22T10:00:02Z", "a2"),
            dl("2", "ep_b", "B", "2026-11-22T10:00:01Z", "b1"),
            dl("3", "ep_a", "A", "2026-11-22T10:00:03Z", "a3"),
            dl("4", "ep_c", "C", "2026-11-22T10:00:00Z", "c0"),
            dl("5", "ep_a", "A", "2026-11-22T10:00:01Z", "a1"),
        ] {
            dead.insert(d);
        }
        let order = |ranked: &[DeadLetterGroup]| -> Vec<(String, usize)> {
            ranked
                .iter()
                .map(|g| (g.endpoint.clone(), g.count))
                .collect()
        };
        let ranked = dead.ranking(10);
        let want = |w: &[(&str, usize)]| -> Vec<(String, usize)> {
            w.iter().map(|(e, n)| ((*e).to_owned(), *n)).collect()
        };
        assert_eq!(
            order(&ranked),
            want(&[("ep_a", 3), ("ep_c", 1), ("ep_b", 1)])
        );
        assert_eq!(ranked[0].oldest_failed_at, "2026-11-22T10:00:01Z");
        assert_eq!(ranked[0].last_error, "a3");
        assert_eq!(ranked[0].account, acct("A"));
        assert_eq!(dead.ranking(1).len(), 1);
        // The latest and the oldest of ep_a go, and all of ep_c.
        for id in ["3", "5", "4"] {
            assert!(dead.remove(id).is_some(), "{id}");
        }
        let ranked = dead.ranking(10);
        assert_eq!(order(&ranked), want(&[("ep_b", 1), ("ep_a", 1)]));
        assert_eq!(ranked[1].oldest_failed_at, "2026-11-22T10:00:02Z");
        assert_eq!(ranked[1].last_error, "a2");
        assert!(
            !dead.by_endpoint.contains_key("ep_c"),
            "no empty group stays"
        );
        assert_eq!(dead.of_endpoint("ep_a").collect::<Vec<_>>(), ["1"]);
        assert_eq!(dead.of_endpoint("ep_c").count(), 0);
        // A dead letter stored again (a replay that failed, or one sent to another endpoint)
        // moves in the groups: here ep_b's goes to ep_a, failing later.
        dead.insert(dl("2", "ep_a", "A", "2026-11-22T10:00:09Z", "moved"));
        let ranked = dead.ranking(10);
        assert_eq!(order(&ranked), want(&[("ep_a", 2)]));
        assert_eq!(ranked[0].last_error, "moved");
        assert_eq!(ranked[0].oldest_failed_at, "2026-11-22T10:00:02Z");
    }

    // The replay index follows every insert, replacement and removal, endpoint by endpoint
    // (also one whose id starts with another's), oldest first.
    #[test]
    fn dead_letters_index_their_replays() {
        let dl = |id: &str, endpoint: &str, replay: bool| DeadLetter {
            id: id.into(),
            replay,
            ..dead(endpoint, "A", 1)
        };
        let mut dead = DeadLetters::default();
        dead.insert(dl("dl_2", "ep_a", true));
        dead.insert(dl("dl_1", "ep_a", true));
        dead.insert(dl("dl_3", "ep_ab", true));
        dead.insert(dl("dl_4", "ep_a", false));
        let replays = |d: &DeadLetters, ep: &'static str| -> Vec<String> {
            d.replays_of(ep).map(|x| x.id.clone()).collect()
        };
        assert_eq!(replays(&dead, "ep_a"), ["dl_1", "dl_2"]);
        assert_eq!(replays(&dead, "ep_ab"), ["dl_3"]);
        // Replayed and failed again: no longer waiting. Moved to another endpoint: waits there.
        dead.insert(dl("dl_1", "ep_a", false));
        dead.insert(dl("dl_2", "ep_b", true));
        assert!(replays(&dead, "ep_a").is_empty());
        assert_eq!(replays(&dead, "ep_b"), ["dl_2"]);
        assert_eq!(dead.remove("dl_3").map(|d| d.id), Some("dl_3".to_owned()));
        assert!(replays(&dead, "ep_ab").is_empty());
        assert_eq!(dead.len(), 3);
    }

    /// Commits an audit record carrying an event of order `order` of `account`: its seq and
    /// the event.
    async fn logged_event(journal: &Journal, account: &str, order: &str) -> (u64, OrderChanged) {
        let event = OrderChanged {
            account: acct(account),
            order: orderd_domain::ids::OrderId::parse(order).unwrap(),
            state: OrderState::Confirmed,
            sequence: 1,
            transitions: vec!["confirmed".into()],
            time: "2026-11-24T10:00:00Z".into(),
            total: orderd_domain::money::Money::zero(
                orderd_domain::money::Currency::parse("EUR").unwrap(),
            ),
            lines: vec![],
        };
        let mut entry =
            AuditEntry::new(&Caller::system(), Some(&acct(account)), "order.place", b"");
        entry.event = Some(event.clone());
        let mut batch = Batch::default();
        batch.audit.push(entry.draft(&format!("order:{order}")));
        let committed = journal.submit(batch).await.unwrap();
        (committed.audit_seqs.start, event)
    }

    /// Two endpoints of account A taking every event, and a dead letter of the first.
    async fn two_endpoints_and_a_dead_letter(hooks: &Webhooks) -> ([String; 2], String) {
        let sys = Caller::system();
        let mut endpoints = vec![];
        for url in ["https://x.example/h", "https://y.example/h"] {
            let (ep, _) = hooks
                .register(&sys, &acct("A"), url.into(), vec!["*".into()])
                .await
                .unwrap();
            endpoints.push(ep.id);
        }
        let (seq, event) = logged_event(hooks.journal(), "A", "o-1").await;
        let id = hooks
            .dead_letter(DeadLetter {
                event_id: crate::events::event_id(&event),
                attempts: 3,
                body: String::from_utf8(crate::events::render(&event)).unwrap(),
                ..dead(&endpoints[0], "A", seq)
            })
            .await
            .unwrap();
        (endpoints.try_into().expect("two endpoints"), id)
    }

    // A change whose caller goes away before its flush (a client disconnecting during a
    // registration) is not half done: polled once and dropped, the endpoint is in memory, and
    // on disk after the flush, as a reopened registry shows.
    #[tokio::test]
    async fn a_change_whose_caller_left_is_whole() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal.clone(), WebhookSettings::default());
        let sys = Caller::system();
        assert!(
            hooks.list(None).await.unwrap().is_empty(),
            "loads the registry"
        );
        let a = acct("A");
        let register = hooks.register(&sys, &a, "https://x.example/h".into(), vec!["*".into()]);
        drop(futures_util::FutureExt::now_or_never(register));
        let listed = hooks.list(None).await.unwrap();
        assert_eq!(listed.len(), 1, "the queued registration is in memory");
        // Writes are applied in order: once a later one is flushed, so is the registration.
        hooks.store_cursor(&listed[0].id, 1).await.unwrap();
        let reopened = Webhooks::new(journal, WebhookSettings::default());
        assert_eq!(reopened.list(None).await.unwrap(), listed);
    }

    // A new endpoint is in memory once its registration is queued, before the write is
    // applied, and so is its cursor: the audit head at its registration (not 0, from which a
    // delivery would send the account's whole history). The journal holds the same once
    // applied.
    #[tokio::test]
    async fn a_new_endpoint_has_its_cursor_once_its_registration_is_queued() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal.clone(), WebhookSettings::default());
        let (sys, a) = (Caller::system(), acct("A"));
        let url = |u: &str| u.to_owned();
        let first = hooks
            .register(&sys, &a, url("https://x.example/h"), vec!["*".into()])
            .await
            .unwrap()
            .0;
        let head = journal.audit_head().seq;
        assert!(head > 0, "the first registration is in the log");
        assert_eq!(hooks.cursor(&first.id).await.unwrap(), Some(head - 1));
        journal.hold_commits(true);
        let registering = tokio::spawn({
            let (hooks, sys, a) = (hooks.clone(), sys.clone(), a.clone());
            async move {
                hooks
                    .register(&sys, &a, url("https://y.example/h"), vec!["*".into()])
                    .await
            }
        });
        let second = loop {
            let listed = hooks.list(None).await.unwrap();
            if let Some(e) = listed.into_iter().find(|e| e.id != first.id) {
                break e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        let key = format!("{CURSOR}{}", second.id);
        assert_eq!(
            journal.get_u64(key.as_bytes()).unwrap(),
            None,
            "not applied yet"
        );
        assert_eq!(hooks.cursor(&second.id).await.unwrap(), Some(head));
        journal.hold_commits(false);
        registering.await.unwrap().unwrap();
        assert_eq!(journal.get_u64(key.as_bytes()).unwrap(), Some(head));
        let reopened = Webhooks::new(journal, WebhookSettings::default());
        assert_eq!(reopened.cursor(&second.id).await.unwrap(), Some(head));
    }

    // Dead letters come a page at a time, oldest first, an account's without another's; the
    // per-account cap drops the account's oldest only.
    #[tokio::test]
    async fn dead_letters_page_by_account() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let settings = WebhookSettings {
            dead_letters_per_account_max: 4,
            ..WebhookSettings::default()
        };
        let hooks = Webhooks::new(journal, settings);
        let sys = Caller::system();
        let mut made: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut endpoints: BTreeMap<&str, String> = BTreeMap::new();
        for account in ["A", "B"] {
            let (ep, _) = hooks
                .register(
                    &sys,
                    &acct(account),
                    "https://x.example/h".into(),
                    vec!["*".into()],
                )
                .await
                .unwrap();
            for seq in 1..=5 {
                let id = hooks.dead_letter(dead(&ep.id, account, seq)).await.unwrap();
                made.entry(account).or_default().push(id);
            }
            endpoints.insert(account, ep.id);
        }
        // Read a page at a time, as a client following the cursor does.
        let read = |account: Option<AccountId>| {
            let hooks = hooks.clone();
            async move {
                let (mut all, mut after) = (Vec::new(), None::<String>);
                loop {
                    let page = hooks
                        .dead_letters(account.as_ref(), after.as_deref(), 3)
                        .await
                        .unwrap();
                    assert!(page.len() <= 3);
                    let Some(last) = page.last() else { break };
                    after = Some(last.id.clone());
                    all.extend(page.into_iter().map(|d| (d.account, d.id)));
                }
                all
            }
        };
        for account in ["A", "B"] {
            let kept: Vec<(AccountId, String)> = made[account][1..]
                .iter()
                .map(|id| (acct(account), id.clone()))
                .collect();
            assert_eq!(
                read(Some(acct(account))).await,
                kept,
                "the oldest of {account} dropped"
            );
        }
        let mut everyone = read(Some(acct("A"))).await;
        everyone.extend(read(Some(acct("B"))).await);
        everyone.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(read(None).await, everyone);
        assert!(read(Some(acct("C"))).await.is_empty());
        // Deleting A's endpoint deletes its dead letters, and no other account's.
        let b = read(Some(acct("B"))).await;
        hooks
            .delete(&sys, &acct("A"), &endpoints["A"])
            .await
            .unwrap();
        assert!(read(Some(acct("A"))).await.is_empty());
        assert_eq!(read(None).await, b);
    }

    // At the per-account cap, a dead letter waiting for the replay someone asked for stays
    // while one not waiting can go instead; only when all wait does the oldest of them go.
    #[tokio::test]
    async fn the_cap_spares_dead_letters_waiting_for_a_replay() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let settings = WebhookSettings {
            dead_letters_per_account_max: 3,
            ..WebhookSettings::default()
        };
        let hooks = Webhooks::new(journal, settings);
        let (sys, a) = (Caller::system(), acct("A"));
        let (ep, _) = hooks
            .register(&sys, &a, "https://x.example/h".into(), vec!["*".into()])
            .await
            .unwrap();
        let dead_letter =
            async |seq: u64| -> String { hooks.dead_letter(dead(&ep.id, "A", seq)).await.unwrap() };
        let replay = async |id: &str| {
            hooks.request_replay(&sys, None, id, None).await.unwrap();
        };
        let kept = async || -> Vec<String> {
            let page = hooks.dead_letters(Some(&a), None, 10).await.unwrap();
            page.into_iter().map(|d| d.id).collect()
        };
        let mut d = Vec::new();
        for seq in 1..=3 {
            d.push(dead_letter(seq).await);
        }
        replay(&d[0]).await;
        d.push(dead_letter(4).await);
        assert_eq!(
            kept().await,
            [&*d[0], &d[2], &d[3]],
            "the oldest idle one went"
        );
        replay(&d[2]).await;
        replay(&d[3]).await;
        d.push(dead_letter(5).await);
        assert_eq!(
            kept().await,
            [&*d[2], &d[3], &d[4]],
            "with every one waiting, the oldest went"
        );
        let waiting: Vec<String> = hooks
            .replays(&ep.id, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(waiting, [&*d[2], &d[3]]);
    }

    // A dead letter's body is its event as rendered for delivery, read again from the audit
    // log when it is listed or replayed: neither memory nor its record holds it.
    #[tokio::test]
    async fn dead_letter_bodies_come_from_the_log() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal.clone(), WebhookSettings::default());
        let ([a, _], id) = two_endpoints_and_a_dead_letter(&hooks).await;
        let listed = hooks.dead_letters(None, None, 10).await.unwrap();
        let event = crate::events::from_audit(
            &journal
                .audit_record(listed[0].seq)
                .unwrap()
                .unwrap()
                .payload,
        )
        .unwrap()
        .unwrap();
        let body = String::from_utf8(crate::events::render(&event)).unwrap();
        assert!(body.contains("\"o-1\""), "{body}");
        assert_eq!(listed[0].body, body);
        let replay = hooks
            .request_replay(&Caller::system(), None, &id, None)
            .await
            .unwrap();
        assert_eq!(replay.body, body);
        let waiting = hooks.replays(&a, 10).await.unwrap();
        assert_eq!(waiting[0].body, "", "a replay comes without its body");
        assert_eq!(hooks.with_body(waiting[0].clone()).unwrap().body, body);
        let stored = journal
            .get(format!("{DEAD}{id}").as_bytes())
            .unwrap()
            .unwrap();
        let stored: DeadLetter = serde_json::from_slice(&stored).unwrap();
        assert_eq!((stored.body.as_str(), stored.replay), ("", true));
        let state = hooks.0.state.lock().await;
        assert!(state
            .as_ref()
            .unwrap()
            .dead
            .all
            .values()
            .all(|d| d.body.is_empty()));
    }

    // A replay waiting at one endpoint is not moved to another, and an outcome reported from
    // an endpoint the dead letter does not wait at changes nothing.
    #[tokio::test]
    async fn a_waiting_replay_stays_where_it_waits() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal, WebhookSettings::default());
        let sys = Caller::system();
        let ([a, b], id) = two_endpoints_and_a_dead_letter(&hooks).await;
        let (a, b) = (&a, &b);
        hooks.request_replay(&sys, None, &id, None).await.unwrap();
        assert!(matches!(
            hooks
                .request_replay(&sys, None, &id, Some(b.as_str()))
                .await,
            Err(WebhookError::Conflict(_))
        ));
        hooks.replayed(&id, b, refused(None)).await.unwrap();
        let waiting = hooks.replays(a, 10).await.unwrap();
        assert_eq!(waiting.len(), 1, "still waiting at its endpoint");
        assert!(hooks.replays(a, 0).await.unwrap().is_empty(), "at most 0");
        hooks.replayed(&id, a, Replayed::Delivered).await.unwrap();
        assert!(hooks.replays(a, 10).await.unwrap().is_empty());
        assert!(hooks.dead_letters(None, None, 10).await.unwrap().is_empty());
    }

    // A replay's failed attempts are kept with its dead letter, across a restart: it stays
    // asked for while retried, with its tries as last counted; given up, it stops waiting; one
    // not sent counts no attempt; a new replay counts afresh.
    #[tokio::test]
    async fn a_replays_tries_survive_a_restart() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal.clone(), WebhookSettings::default());
        let sys = Caller::system();
        let ([a, _], id) = two_endpoints_and_a_dead_letter(&hooks).await;
        let before = hooks.request_replay(&sys, None, &id, None).await.unwrap();
        let n = before.attempts;
        hooks.replayed(&id, &a, refused(Some(5_000))).await.unwrap();
        let second = Tries {
            attempts: 2,
            first_ms: 1_000,
            next_ms: 7_000,
            asked_until_ms: Some(6_000),
        };
        let refused_again = Replayed::Refused {
            error: "answered 503".into(),
            tries: second.clone(),
            given_up: false,
        };
        hooks.replayed(&id, &a, refused_again).await.unwrap();
        let reopened = Webhooks::new(journal, WebhookSettings::default());
        let waiting = reopened.replays(&a, 10).await.unwrap();
        assert_eq!(waiting.len(), 1, "still asked for");
        let dl = &waiting[0];
        assert_eq!((dl.attempts, &dl.replay_tries), (n + 2, &Some(second)));
        assert_eq!(dl.last_error, "answered 503");
        reopened.replayed(&id, &a, refused(None)).await.unwrap();
        assert!(reopened.replays(&a, 10).await.unwrap().is_empty());
        let not_sent = Replayed::NotSent {
            error: "too large".into(),
        };
        reopened
            .request_replay(&sys, None, &id, None)
            .await
            .unwrap();
        reopened.replayed(&id, &a, not_sent).await.unwrap();
        let dl = reopened
            .request_replay(&sys, None, &id, None)
            .await
            .unwrap();
        assert_eq!(
            (dl.attempts, dl.replay_tries, dl.last_error.as_str()),
            (n + 3, None, "too large"),
            "not sent: no attempt; a new replay counts afresh"
        );
    }

    // A dead letter stored before replays kept `Tries` reads with its replay's tries in them;
    // one with none, and one of today's shape, read as they are.
    #[test]
    fn earlier_dead_letters_keep_their_replays_tries() {
        let mut dl = dead("wh_1", "A", 3);
        dl.replay = true;
        let mut earlier = serde_json::to_value(&dl).unwrap();
        earlier["replay_attempts"] = 2.into();
        earlier["replay_first_ms"] = 1_000.into();
        earlier["replay_next_ms"] = 5_000.into();
        let read = decode_dead_letter(earlier.to_string().as_bytes()).unwrap();
        let tries = Tries {
            attempts: 2,
            first_ms: 1_000,
            next_ms: 5_000,
            asked_until_ms: None,
        };
        assert_eq!(read.replay_tries, Some(tries.clone()));
        assert_eq!(
            read,
            DeadLetter {
                replay_tries: Some(tries),
                ..dl.clone()
            }
        );
        assert_eq!(decode_dead_letter(&json(&dl)).unwrap(), dl);
    }

    // An endpoint's tries are of one event: read back for it only, gone with the dead letter
    // it becomes or with the endpoint, and not stored for a deleted endpoint.
    #[tokio::test]
    async fn tries_belong_to_one_event_of_one_endpoint() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal, WebhookSettings::default());
        let (sys, acme) = (Caller::system(), acct("A"));
        let (ep, _) = hooks
            .register(&sys, &acme, "https://x.example/h".into(), vec!["*".into()])
            .await
            .unwrap();
        let tries = Tries {
            attempts: 2,
            first_ms: 1_000,
            next_ms: 2_000,
            asked_until_ms: Some(1_500),
        };
        hooks.store_tries(&ep.id, "o-1.1", &tries).await.unwrap();
        assert_eq!(
            hooks.tries(&ep.id, "o-1.1").await.unwrap(),
            Some(tries.clone())
        );
        assert_eq!(hooks.tries(&ep.id, "o-2.1").await.unwrap(), None);
        hooks.clear_tries(&ep.id).await.unwrap();
        assert_eq!(hooks.tries(&ep.id, "o-1.1").await.unwrap(), None);
        hooks.store_tries(&ep.id, "o-1.1", &tries).await.unwrap();
        hooks.dead_letter(dead(&ep.id, "A", 1)).await.unwrap();
        assert_eq!(
            hooks.tries(&ep.id, "o-1.1").await.unwrap(),
            None,
            "a dead letter now"
        );
        hooks.store_tries(&ep.id, "o-1.1", &tries).await.unwrap();
        hooks.delete(&sys, &acme, &ep.id).await.unwrap();
        assert_eq!(hooks.tries(&ep.id, "o-1.1").await.unwrap(), None);
        hooks.store_tries(&ep.id, "o-1.1", &tries).await.unwrap();
        assert_eq!(hooks.tries(&ep.id, "o-1.1").await.unwrap(), None, "deleted");
    }

    // A disabled endpoint is enabled again by its account's admin only: resuming where it
    // stopped, or from the head of the log; enabling an active one changes nothing, and
    // skipping on it is a conflict. The cursor never moves back, so the last write of the
    // disabled endpoint's task cannot undo a skip.
    #[tokio::test]
    async fn a_disabled_endpoint_is_enabled_again() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal.clone(), WebhookSettings::default());
        let (sys, acme) = (Caller::system(), acct("A"));
        let (ep, _) = hooks
            .register(&sys, &acme, "https://x.example/h".into(), vec!["*".into()])
            .await
            .unwrap();
        let id = ep.id.as_str();
        let at = hooks.cursor(id).await.unwrap().unwrap();
        hooks.disable(id, "410 Gone").await.unwrap();
        assert!(matches!(
            hooks.enable(&sys, &acct("B"), id, false).await,
            Err(WebhookError::NotFound)
        ));
        let view = hooks.enable(&sys, &acme, id, false).await.unwrap();
        assert_eq!(view.disabled, None);
        assert_eq!(
            hooks.cursor(id).await.unwrap(),
            Some(at),
            "resumes where it stopped"
        );
        assert_eq!(hooks.enable(&sys, &acme, id, false).await.unwrap(), view);
        assert!(matches!(
            hooks.enable(&sys, &acme, id, true).await,
            Err(WebhookError::Conflict(_))
        ));
        hooks.disable(id, "410 Gone").await.unwrap();
        let head = journal.audit_head().seq;
        assert!(
            head > at,
            "the registration, disabling and enabling are audited"
        );
        // Before the skip is flushed, a delivery task started for the enabled endpoint reads
        // the skipped-to cursor, and the old task's last write cannot set it back.
        journal.hold_commits(true);
        let enabling = tokio::spawn({
            let (hooks, sys, acme, id) = (hooks.clone(), sys.clone(), acme.clone(), ep.id.clone());
            async move { hooks.enable(&sys, &acme, &id, true).await }
        });
        while hooks
            .endpoint(id)
            .await
            .unwrap()
            .unwrap()
            .disabled
            .is_some()
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(
            hooks.cursor(id).await.unwrap(),
            Some(head),
            "skipped, not yet flushed"
        );
        hooks.store_cursor(id, at).await.unwrap();
        assert_eq!(hooks.cursor(id).await.unwrap(), Some(head), "never back");
        journal.hold_commits(false);
        enabling.await.unwrap().unwrap();
        // Nor does a dead letter the old task still makes of an event before the skip.
        hooks.dead_letter(dead(id, "A", at + 1)).await.unwrap();
        assert_eq!(hooks.cursor(id).await.unwrap(), Some(head));
        hooks.store_cursor(id, head + 1).await.unwrap();
        assert_eq!(hooks.cursor(id).await.unwrap(), Some(head + 1));
        let reopened = Webhooks::new(journal, WebhookSettings::default());
        assert_eq!(reopened.endpoint(id).await.unwrap().unwrap().disabled, None);
        assert_eq!(reopened.cursor(id).await.unwrap(), Some(head + 1));
    }

    // A replay waiting at an endpoint that is then disabled (its receiver answered 410) stops
    // waiting, says why, and can be replayed to another endpoint; after a restart too.
    #[tokio::test]
    async fn a_replay_waiting_at_a_disabled_endpoint_can_move() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let hooks = Webhooks::new(journal.clone(), WebhookSettings::default());
        let sys = Caller::system();
        let ([a, b], id) = two_endpoints_and_a_dead_letter(&hooks).await;
        let (a, b) = (&a, &b);
        hooks.request_replay(&sys, None, &id, None).await.unwrap();
        hooks.disable(a, "410 Gone").await.unwrap();
        assert!(hooks.replays(a, 10).await.unwrap().is_empty());
        let reopened = Webhooks::new(journal, WebhookSettings::default());
        for h in [&hooks, &reopened] {
            let dl = h.dead_letters(None, None, 10).await.unwrap();
            assert_eq!(dl.len(), 1);
            assert!(!dl[0].replay);
            assert!(dl[0].last_error.contains("disabled (410 Gone)"), "{dl:?}");
        }
        let moved = hooks
            .request_replay(&sys, None, &id, Some(b.as_str()))
            .await
            .unwrap();
        assert_eq!((&moved.endpoint, moved.replay), (b, true));
        assert_eq!(hooks.replays(b, 10).await.unwrap().len(), 1);
    }

    // Register, rotate, limits and tenancy, and all of it back after reopening the journal;
    // secrets never show in Debug output.
    #[tokio::test]
    async fn registry_persists_rotates_and_bounds() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        let settings = WebhookSettings {
            endpoints_per_account_max: 2,
            secret_overlap_ms: 60_000,
            ..WebhookSettings::default()
        };
        let hooks = Webhooks::new(journal.clone(), settings.clone());
        let sys = Caller::system();
        let (a, secret) = hooks
            .register(
                &sys,
                &acct("A"),
                "https://x.example/h".into(),
                vec!["*".into()],
            )
            .await
            .unwrap();
        assert!(secret.expose().starts_with("whsec_"));
        assert!(!format!("{secret:?}").contains("whsec_"));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&secret.expose()["whsec_".len()..])
            .unwrap();
        assert_eq!(decoded.len(), SECRET_BYTES);
        hooks
            .register(
                &sys,
                &acct("A"),
                "https://y.example/h".into(),
                vec!["*".into()],
            )
            .await
            .unwrap();
        assert!(matches!(
            hooks
                .register(
                    &sys,
                    &acct("A"),
                    "https://z.example/h".into(),
                    vec!["*".into()]
                )
                .await,
            Err(WebhookError::Limit(_))
        ));
        assert!(matches!(
            hooks.rotate(&sys, &acct("B"), &a.id).await,
            Err(WebhookError::NotFound)
        ));
        let (view, new) = hooks.rotate(&sys, &acct("A"), &a.id).await.unwrap();
        assert!(view.previous_secret_until_ms.is_some());
        let ep = hooks.endpoint(&a.id).await.unwrap().unwrap();
        let now = unix_ms();
        let signing: Vec<&str> = ep.signing_secrets(now).iter().map(|s| s.expose()).collect();
        assert_eq!(signing, [new.expose(), secret.expose()]);
        assert_eq!(ep.signing_secrets(now + 61_000).len(), 1);
        assert!(!format!("{ep:?}").contains("whsec_"));
        let reopened = Webhooks::new(journal, settings);
        assert_eq!(reopened.list(Some(&acct("A"))).await.unwrap().len(), 2);
        assert!(reopened.list(Some(&acct("B"))).await.unwrap().is_empty());
        assert_eq!(reopened.endpoint(&a.id).await.unwrap().unwrap(), ep);
        reopened.delete(&sys, &acct("A"), &a.id).await.unwrap();
        assert_eq!(reopened.list(None).await.unwrap().len(), 1);
    }

    // Loopback, link-local and private ranges (also inside IPv6 addresses that carry IPv4 ones)
    // are refused; public ones not.
    #[test]
    fn refused_addresses() {
        for (ip, why) in [
            ("127.0.0.1", Some("loopback")),
            ("::1", Some("loopback")),
            ("169.254.169.254", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("private")),
            ("fd00::1", Some("private")),
            ("::ffff:127.0.0.1", Some("loopback")),
            // NAT64, 6to4 and IPv4-compatible addresses are judged by their IPv4 address.
            ("64:ff9b::10.0.0.1", Some("private")),
            ("64:ff9b::169.254.169.254", Some("link-local")),
            ("64:ff9b:1::a00:1", Some("private")),
            ("2002:c0a8:101::1", Some("private")),
            ("2002:7f00:1::", Some("loopback")),
            ("::10.0.0.1", Some("private")),
            ("::", Some("not unicast")),
            ("64:ff9b::93.184.215.14", None),
            ("2002:5db8:d70e::1", None),
            ("0.0.0.0", Some("not unicast")),
            ("0.1.2.3", Some("reserved")),
            ("192.0.0.8", Some("reserved")),
            ("198.19.255.1", Some("reserved")),
            ("240.0.0.1", Some("reserved")),
            ("fec0::1", Some("private")),
            ("::ffff:0:127.0.0.1", Some("loopback")),
            ("::ffff:0:10.0.0.1", Some("private")),
            ("198.20.0.1", None),
            ("192.0.1.1", None),
            ("93.184.215.14", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(refused_address(ip.parse().unwrap()), why, "{ip}");
        }
        assert!(event_type_known("*"));
        assert!(event_type_known("orderd.order.allocated"));
        assert!(!event_type_known("orderd.order.nope"));
    }
}
