//! Events over HTTP, read from the audit log (which is the outbox, so nothing a consumer missed
//! is ever gone):
//!
//! - `GET /v1/events?after=SEQ`: every event since a log seq, a page at a time. Portal backends
//!   and consumers that fell behind NATS catch up here.
//! - `GET /v1/events/stream`: the same as server-sent events, live. With `Last-Event-ID` (the
//!   seq of the last event received) it first replays what was missed from the log, a page at
//!   a time as the client reads it, then follows the in-process bus; a subscriber that lags
//!   behind the bus is cut off and simply reconnects. A stream ends after
//!   `api.event_stream_max_ms`, replay included, or once its credential no longer admits its
//!   caller with the same roles (see [`revoked`]); at most `api.event_streams_max` are open at
//!   once (above: 503), and `api.event_streams_per_account_max` of one account (above: 429).
//!
//! Both show the caller's account (an operator: every account); a buyer who is not also an
//! approver or account admin sees the events of the orders they placed, like `GET /v1/orders`.

use super::ACCOUNT_ROLES;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::ApiState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use orderd_actors::audit::Caller;
use orderd_actors::{events, ActorError, StorageError};
use orderd_domain::account::Role;
use orderd_domain::ids::{AccountId, OrderId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Audit records one request reads at most: a caller whose account has few events among many
/// still gets an answer quickly, and continues from `next`.
pub const EVENTS_SCAN_MAX: usize = 10_000;
/// Events in one answer when `limit` is not given.
pub const EVENTS_PAGE_DEFAULT: usize = 100;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(stream_events))
}

#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Only events after this sequence number (0: from the start); pass the `next` of the
    /// previous answer.
    pub after: Option<u64>,
    /// Most events in the answer (default 100, at most the API's page limit).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// `{seq, event}`: the event's position in orderd's log and the CloudEvents 1.0 document.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Where the next request continues (`after=next`); equal to `after` when nothing new.
    pub next: u64,
}

/// What a caller sees of the events.
#[derive(Clone)]
struct Scope {
    /// The caller's account (`None`: every account, for an operator).
    account: Option<AccountId>,
    /// For a buyer who is not also an approver or account admin: the orders they placed, as `GET /v1/orders` shows.
    own: Option<Arc<OwnOrders>>,
}

fn scope(s: &ApiState, auth: &Auth) -> ApiResult<Scope> {
    if auth.0.has(Role::Operator) {
        return Ok(Scope {
            account: None,
            own: None,
        });
    }
    let caller = auth.require(ACCOUNT_ROLES)?;
    let account = auth.account()?.clone();
    let own = caller.placed_by_filter().map(|user| {
        Arc::new(OwnOrders {
            state: s.clone(),
            account: account.clone(),
            user: user.clone(),
        })
    });
    Ok(Scope {
        account: Some(account),
        own,
    })
}

impl Scope {
    /// For each of `orders`, whether the caller sees its events.
    async fn shows(&self, orders: Vec<OrderId>) -> Result<Vec<bool>, ApiError> {
        match &self.own {
            None => Ok(vec![true; orders.len()]),
            Some(own) => own.placed(orders).await,
        }
    }

    /// [`Scope::shows`] for one order; without a lookup (or a copy) when the caller sees all.
    async fn shows_one(&self, order: &OrderId) -> Result<bool, ApiError> {
        match &self.own {
            None => Ok(true),
            Some(own) => Ok(own.placed(vec![order.clone()]).await?[0]),
        }
    }
}

/// Which orders of an account one user placed, as [`Placers`] knows or the orders' records say.
struct OwnOrders {
    state: ApiState,
    account: AccountId,
    user: UserId,
}

/// Orders whose placer the event streams remember, all streams together.
pub const PLACERS_KNOWN_MAX: usize = 100_000;

/// Who placed which order, read from the orders' records (not from the account's actor: an
/// event stream never queues behind the account's captures or takes its permits). Who placed
/// an order never changes, so one cache serves every buyer stream: its memory is bounded
/// daemon-wide, at most [`PLACERS_KNOWN_MAX`] entries (about 100 bytes each, order ids being
/// unique across accounts), whatever the number of streams, and the streams of one account
/// replaying the same log read each record once. Emptied when full.
#[derive(Default)]
pub struct Placers(Mutex<HashMap<OrderId, Option<UserId>>>);

impl OwnOrders {
    /// Whether the user placed each of `orders`: the ones not known yet are read in one
    /// blocking task. An order with an event has a durable record (the record and its event
    /// are one write), so a missing one is not the user's.
    async fn placed(&self, orders: Vec<OrderId>) -> Result<Vec<bool>, ApiError> {
        let placers = &self.state.placers.0;
        let mine = |placer: &Option<UserId>| placer.as_ref() == Some(&self.user);
        // The answer for what is known is taken now: another stream may empty the cache
        // before this lookup is done.
        let mut answer: Vec<Option<bool>> = {
            let known = placers.lock().unwrap_or_else(PoisonError::into_inner);
            orders.iter().map(|o| known.get(o).map(mine)).collect()
        };
        let mut unknown: Vec<OrderId> = (orders.iter().zip(&answer))
            .filter(|(_, a)| a.is_none())
            .map(|(o, _)| o.clone())
            .collect();
        if unknown.is_empty() {
            return Ok(answer.into_iter().map(|a| a.unwrap_or(false)).collect());
        }
        unknown.sort_unstable();
        unknown.dedup();
        let (state, account) = (self.state.clone(), self.account.clone());
        // A page's orders take a turn; a live stream's one order (one record) does not, so that
        // live streams never queue behind replays.
        let turn = match unknown.len() {
            1 => None,
            _ => Some(read_turn(&self.state).await?),
        };
        let found = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let mut found = HashMap::with_capacity(unknown.len());
            for o in unknown {
                let placer = match state.engine.placed_by_blocking(&account, &o) {
                    Ok(placer) => placer,
                    // A disk error ends the answer; an unreadable record only hides its
                    // order (as the event readers pass over an unreadable audit record), or
                    // every reconnect would stop at it again.
                    Err(e @ ActorError::Storage(StorageError::Io(_))) => return Err(e),
                    Err(error) => {
                        tracing::error!(%error, order = %o, "order record unreadable; its events are not shown to the buyer");
                        None
                    }
                };
                found.insert(o, placer);
            }
            Ok::<_, ActorError>(found)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        for (o, a) in orders.iter().zip(&mut answer) {
            if a.is_none() {
                *a = found.get(o).map(mine);
            }
        }
        let mut known = placers.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() + found.len() > PLACERS_KNOWN_MAX {
            known.clear();
        }
        known.extend(found);
        Ok(answer.into_iter().map(|a| a.unwrap_or(false)).collect())
    }
}

/// A turn to read the event log: at most `api.event_reads_max` reads run at once, and none
/// waits for its turn longer than `api.event_read_wait_ms` ([`ApiError::ReadsBusy`]). The
/// read's blocking task holds it: a request that goes away (a stream that ended) does not free
/// the turn while its read still runs.
async fn read_turn(s: &ApiState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let wait = Duration::from_millis(s.limits.event_read_wait_ms);
    match tokio::time::timeout(wait, s.event_reads.clone().acquire_owned()).await {
        Ok(turn) => turn.map_err(|e| ApiError::Internal(e.to_string())),
        Err(_) => Err(ApiError::ReadsBusy),
    }
}

/// Up to `limit` events of the scope's account after log seq `after`, read on the blocking
/// pool (the orders a buyer may not see are left out later, by [`Scope::shows`]).
async fn read_after_async(
    s: &ApiState,
    after: u64,
    scope: &Scope,
    limit: usize,
) -> Result<events::EventsRead, ApiError> {
    let journal = s.engine.journal.clone();
    let account = scope.account.clone();
    let turn = read_turn(s).await?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        events::read_after(&journal, after, account.as_ref(), limit, EVENTS_SCAN_MAX)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// [`read_after_async`] less the events of orders the caller may not see ([`Scope::shows`]);
/// `next` still says how far the log was read.
async fn read_shown_async(
    s: &ApiState,
    after: u64,
    scope: &Scope,
    limit: usize,
) -> Result<events::EventsRead, ApiError> {
    let mut read = read_after_async(s, after, scope, limit).await?;
    let shown = scope
        .shows(read.events.iter().map(|(_, ev)| ev.order.clone()).collect())
        .await?;
    let mut shown = shown.into_iter();
    read.events.retain(|_| shown.next().unwrap_or(false));
    Ok(read)
}

async fn read_events_async(
    s: &ApiState,
    after: u64,
    scope: &Scope,
    limit: usize,
) -> Result<EventPage, ApiError> {
    let read = read_shown_async(s, after, scope, limit).await?;
    let mut page = EventPage {
        events: Vec::with_capacity(read.events.len()),
        next: read.next,
    };
    for (seq, ev) in read.events {
        let rendered: serde_json::Value = serde_json::from_slice(&events::render(&ev))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        page.events
            .push(serde_json::json!({ "seq": seq, "event": rendered }));
    }
    Ok(page)
}

/// Events of the caller's account after a sequence number, oldest first (buyer, approver,
/// account_admin; operator: every account).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery), responses((status = 200, body = EventPage)), security(("bearer" = [])))]
async fn list(
    State(s): State<ApiState>,
    auth: Auth,
    Query(q): Query<EventsQuery>,
) -> ApiResult<axum::Json<EventPage>> {
    let scope = scope(&s, &auth)?;
    // An `after` past the head (another data directory's, or made up) reads from the head, as
    // a stream's Last-Event-ID does: taken as is, `next` would skip every event until the log
    // got that far.
    let after = (q.after.unwrap_or(0)).min(s.engine.journal.audit_head().seq);
    let limit = crate::extract::page_limit(q.limit, EVENTS_PAGE_DEFAULT, s.limits.page_max)?;
    let page = read_events_async(&s, after, &scope, limit).await?;
    Ok(axum::Json(page))
}

/// The event streams open now: in all, and per account (an operator's count in all only).
#[derive(Default)]
pub struct OpenStreams(Mutex<OpenCounts>);

#[derive(Default)]
struct OpenCounts {
    all: usize,
    by_account: crate::per_account::PerAccount,
}

impl OpenStreams {
    /// A slot for one more stream of `account`, or why there is none: 503 when
    /// `api.event_streams_max` are open, 429 when the account has
    /// `api.event_streams_per_account_max` (one account's sessions cannot take every slot).
    fn open(
        self: &Arc<Self>,
        account: Option<&AccountId>,
        limits: &crate::ApiLimits,
    ) -> Result<StreamSlot, ApiError> {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if c.all >= limits.event_streams_max {
            return Err(ApiError::Unavailable(format!(
                "{} event streams are open, the most allowed (api.event_streams_max)",
                c.all
            )));
        }
        if let Some(a) = account {
            let mine = c.by_account.of(a);
            if mine >= limits.event_streams_per_account_max {
                return Err(ApiError::TooManyStreams(format!(
                    "account {a} has {mine} event streams open, the most allowed (api.event_streams_per_account_max); close one or retry later"
                )));
            }
            c.by_account.add(a);
        }
        c.all += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            account: account.cloned(),
        })
    }

    fn close(&self, account: Option<&AccountId>) {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(c.all > 0, "an event stream closed that was never counted");
        c.all -= 1;
        if let Some(a) = account {
            c.by_account.sub(a);
        }
    }
}

/// Counts an open event stream; dropping it (the stream ended) frees the slot.
struct StreamSlot {
    streams: Arc<OpenStreams>,
    account: Option<AccountId>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.close(self.account.as_ref());
    }
}

/// Server-sent events: the caller's account's events as they become durable (operator: every
/// account), each with `id` = its log seq; send `Last-Event-ID` to resume after it (buyer,
/// approver, account_admin, operator). A frame with an `id` and no data is a resume point
/// past events the caller is not shown: browsers' EventSource take it as Last-Event-ID;
/// other clients should too.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(("Last-Event-ID" = Option<u64>, Header, description = "resume after this log seq")), responses((status = 200, description = "text/event-stream of CloudEvents")), security(("bearer" = [])))]
async fn stream_events(
    State(s): State<ApiState>,
    auth: Auth,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let scope = scope(&s, &auth)?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be the seq of an event (an unsigned integer)",
                    )
                })?,
        ),
    };
    let slot = s.event_streams.open(scope.account.as_ref(), &s.limits)?;
    // Subscribe before reading the log, so nothing falls between the replay and the live part.
    let live = match &scope.account {
        Some(a) => s.bus.subscribe_account(a),
        None => s.bus.subscribe(),
    };
    let head = s.engine.journal.audit_head().seq;
    // A Last-Event-ID past the head (of another data directory, or made up) resumes from the
    // head: taken as is, the stream would skip every event until the log got that far.
    let resume = resume.map(|after| after.min(head));
    // Where the replay from the log got to: the live part sends only what comes after it.
    let replayed_to = Arc::new(AtomicU64::new(resume.unwrap_or(head)));
    let replayed = match resume {
        Some(after) if after < head => {
            // The first page now, so that a failure is an error answer; the rest as the client
            // takes them.
            let first = read_shown_async(&s, after, &scope, s.limits.page_max).await?;
            let pages = Replay {
                state: s.clone(),
                scope: scope.clone(),
                head,
                to: replayed_to.clone(),
            };
            pages.stream(first, after).boxed()
        }
        _ => stream::empty().boxed(),
    };
    let follow = follow_bus(live, s.bus.clone(), scope, replayed_to).map(|f| Ok(f.into_sse()));
    // The longest time covers the replay too: a client reading a long gap slowly holds its
    // slot no longer than any other. At shutdown the stream ends, replay or not. Either way
    // the client resumes from its last event.
    let max = Duration::from_millis(s.limits.event_stream_max_ms);
    let all = replayed
        .chain(follow)
        .take_until(tokio::time::sleep(max))
        .take_until(s.bus.closed())
        .take_until(revoked(s.clone(), headers, auth.0))
        .map(move |e| {
            let _ = &slot; // held for as long as the stream lives
            e
        });
    Ok(Sse::new(all).keep_alive(
        KeepAlive::new().interval(Duration::from_millis(s.limits.event_stream_keepalive_ms)),
    ))
}

/// Resolves once the credential that opened a stream no longer admits its caller as it did
/// (checked every `api.event_stream_recheck_ms`): its token expired, its session ended, or the
/// account admin removed the user or changed their roles. The stream then ends; a reconnect
/// is answered as any new request would be.
async fn revoked(s: ApiState, headers: HeaderMap, opened: Caller) {
    let every = Duration::from_millis(s.limits.event_stream_recheck_ms);
    // The first check at a random point of the interval: streams opened together (a reconnect
    // storm after a restart) do not all check in the same instant.
    let offset = crate::random_u64() % s.limits.event_stream_recheck_ms.max(1);
    let mut wait = Duration::from_millis(offset);
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        if !crate::policy::still_admits(&s, &headers, &opened).await {
            tracing::debug!(user = %opened.user, "event stream ended: its credential no longer admits it");
            return;
        }
    }
}

/// One event on the stream: `id` is its log seq, the data its CloudEvents JSON.
fn sse_event(seq: u64, json: &[u8]) -> Event {
    Event::default()
        .id(seq.to_string())
        .event("order")
        .data(String::from_utf8_lossy(json))
}

/// A progress mark: an `id` without data moves the client's Last-Event-ID past events it was
/// not shown, and dispatches nothing (HTML's event-stream interpretation).
fn progress(seq: u64) -> Event {
    Event::default().id(seq.to_string())
}

/// Progress marks of the live part come at most this often (see [`follow_bus`]).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Marks a replay that failed: the stream ends, and the client resumes from its last event.
const REPLAY_FAILED: u64 = u64::MAX;

/// The replay of a stream from the log, up to the head as of its subscription.
struct Replay {
    state: ApiState,
    scope: Scope,
    head: u64,
    /// How far the replay got ([`REPLAY_FAILED`] when a read failed).
    to: Arc<AtomicU64>,
}

impl Replay {
    /// `first` (read after `from`), then one page at a time, each read only when the client has
    /// taken the one before: a long gap is never held in memory whole.
    fn stream(
        self,
        first: events::EventsRead,
        from: u64,
    ) -> impl Stream<Item = Result<Event, Infallible>> {
        let this = Arc::new(self);
        stream::unfold(Some((Some(first), from)), move |next| {
            let this = this.clone();
            async move {
                let (page, from) = next?;
                let page = match page {
                    Some(page) => page,
                    None => {
                        let limit = this.state.limits.page_max;
                        match read_shown_async(&this.state, from, &this.scope, limit).await {
                            Ok(page) => page,
                            // No turn to read: counted, not logged one by one (a storm).
                            Err(error @ ApiError::ReadsBusy) => {
                                crate::telemetry::global().record_error(&error);
                                this.to.store(REPLAY_FAILED, Ordering::Release);
                                return None;
                            }
                            Err(error) => {
                                tracing::warn!(%error, "event stream replay failed; the stream ends");
                                this.to.store(REPLAY_FAILED, Ordering::Release);
                                return None;
                            }
                        }
                    }
                };
                if page.next == from {
                    return None;
                }
                let mut events: Vec<_> = page
                    .events
                    .iter()
                    .map(|(seq, ev)| Ok(sse_event(*seq, &events::render(ev))))
                    .collect();
                // The page read past its last shown event (records of other accounts, or
                // orders the caller may not see): say so, so that a reconnect resumes after
                // what was read, not after the last event shown.
                if page.events.last().map(|(seq, _)| *seq) != Some(page.next) {
                    events.push(Ok(progress(page.next)));
                }
                this.to.store(page.next, Ordering::Release);
                let next = (page.next < this.head).then_some((None, page.next));
                Some((stream::iter(events), next))
            }
        })
        .flatten()
    }
}

/// The live part: events of `account` from the bus after where the replay got to (read when
/// the live part starts, after the replay), ending when the subscriber lagged (the client
/// reconnects with Last-Event-ID and replays from the log) or the replay failed.
///
/// Once per [`PROGRESS_INTERVAL`] a stream that is behind sends a progress mark: up to the
/// bus's position when nothing of its own waits (the records it was not shown, of other
/// accounts or without an event, are behind the client), else up to the last event it skipped
/// (another buyer's order; its channel delivers in log order). So a reconnect replays at most
/// about an interval of the log it was not shown, also on a quiet account of a busy daemon.
fn follow_bus(
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<events::Published>>,
    bus: events::EventBus,
    scope: Scope,
    replayed_to: Arc<AtomicU64>,
) -> impl Stream<Item = Live> {
    let mut ticks = tokio::time::interval(PROGRESS_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Follow {
        rx,
        ticks,
        after: None,
        skipped: 0,
    };
    stream::unfold(start, move |mut f: Follow| {
        let (bus, scope, replayed_to) = (bus.clone(), scope.clone(), replayed_to.clone());
        async move {
            let after = *f
                .after
                .get_or_insert_with(|| replayed_to.load(Ordering::Acquire));
            if after == REPLAY_FAILED {
                return None;
            }
            loop {
                let p = tokio::select! {
                    received = f.rx.recv() => match received {
                        Ok(p) if p.seq <= after => continue,
                        Ok(p) => p,
                        Err(_) => return None,
                    },
                    _ = f.ticks.tick() => {
                        // The bus stores its position after sending the events up to it, so
                        // with none waiting here every one of this stream's is behind it.
                        let at = bus.position();
                        let to = if f.rx.is_empty() { at.max(f.skipped) } else { f.skipped };
                        if to > after {
                            f.after = Some(to);
                            return Some((Live::Progress(to), f));
                        }
                        continue;
                    }
                };
                if scope.account.as_ref().is_some_and(|a| *a != p.account) {
                    continue;
                }
                match scope.shows_one(&p.order).await {
                    Ok(true) => {
                        events::record_lag(events::LagStage::Sse, p.changed_at);
                        f.after = Some(p.seq);
                        return Some((Live::Event(p), f));
                    }
                    Ok(false) => f.skipped = p.seq,
                    Err(error) => {
                        tracing::warn!(%error, "event stream lookup failed; the stream ends");
                        return None;
                    }
                }
            }
        }
    })
}

/// What the live part sends.
#[derive(Debug)]
enum Live {
    Event(std::sync::Arc<events::Published>),
    /// A progress mark up to this seq.
    Progress(u64),
}

impl Live {
    fn into_sse(self) -> Event {
        match self {
            Live::Event(p) => sse_event(p.seq, &p.json),
            Live::Progress(seq) => progress(seq),
        }
    }
}

/// [`follow_bus`]'s state.
struct Follow {
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<events::Published>>,
    /// When the next progress mark may go out.
    ticks: tokio::time::Interval,
    /// The seq last sent (event or progress mark); `None` until the replay's end is read.
    after: Option<u64>,
    /// The seq of the last event received and not shown (0: none).
    skipped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_domain::order::OrderState;

    // A progress mark never passes an event of the stream's own that still waits in its
    // channel: here an own event (seq 50) waits while the bus has moved on to 100 with other
    // accounts' events. Whichever of the event and the first tick the stream takes first, it
    // sends the event, then a mark up to 100. (A mark up to 100 first would make the stream
    // drop the event as already sent.) `select!` picks at random among ready branches, so
    // every round is a fresh stream.
    #[tokio::test(start_paused = true)]
    async fn a_progress_mark_never_passes_a_waiting_event() {
        const ROUNDS: usize = 64;
        let account = AccountId::parse("ACME").expect("id");
        for round in 0..ROUNDS {
            let bus = events::EventBus::new();
            let rx = bus.subscribe_account(&account);
            bus.send(events::Published {
                seq: 50,
                account: account.clone(),
                order: OrderId::parse("o-1").expect("id"),
                id: "o-1.1".into(),
                state: OrderState::Confirmed,
                stock_warehouses: vec![],
                json: b"{}".to_vec(),
                changed_at: None,
            });
            bus.advance(100);
            let scope = Scope {
                account: Some(account.clone()),
                own: None,
            };
            let replayed_to = Arc::new(AtomicU64::new(10));
            let live = follow_bus(rx, bus.clone(), scope, replayed_to);
            let sent: Vec<_> = tokio::time::timeout(PROGRESS_INTERVAL * 5, live.take(2).collect())
                .await
                .unwrap_or_else(|_| panic!("round {round}: fewer than 2 frames"));
            let sent: Vec<_> = sent
                .into_iter()
                .map(|l| match l {
                    Live::Event(p) => format!("event {}", p.seq),
                    Live::Progress(seq) => format!("mark {seq}"),
                })
                .collect();
            assert_eq!(sent, ["event 50", "mark 100"], "round {round}");
        }
    }

    // The buyer streams share one cache of placers: what is in it answers a stream (here an
    // order with no record, which a read would say nobody placed). The lookup that
    // takes the cache over its bound empties it, and still answers for an order it held: the
    // buyer's own order is shown, not dropped (which would move the stream's Last-Event-ID
    // past it for good).
    #[tokio::test]
    async fn one_bounded_cache_of_placers_serves_every_buyer_stream() {
        let journal = orderd_storage::Journal::temporary(&Default::default()).expect("journal");
        let engine = orderd_actors::Engine::start(journal, Default::default())
            .await
            .expect("engine");
        let auth = crate::auth::Authenticator::dev(&[7u8; 32]);
        let state = ApiState::new(engine, auth, vec![], Default::default(), true);
        let id = |s: &str| OrderId::parse(s).expect("id");
        let user = |s: &str| UserId::parse(s).expect("id");
        let stream_of = |u: &str| OwnOrders {
            state: state.clone(),
            account: AccountId::parse("ACME").expect("id"),
            user: user(u),
        };
        {
            let mut known = state.placers.0.lock().expect("lock");
            for i in 1..PLACERS_KNOWN_MAX {
                known.insert(id(&format!("filler-{i}")), None);
            }
            known.insert(id("bobs"), Some(user("bob")));
        }
        assert_eq!(
            (stream_of("bob")
                .placed(vec![id("bobs"), id("new-1"), id("new-2")])
                .await)
                .expect("placed"),
            [true, false, false]
        );
        let known = state.placers.0.lock().expect("lock");
        assert_eq!(known.len(), 2, "emptied, then the orders just read");
        assert_eq!(known.get(&id("new-1")), Some(&None));
    }
}
