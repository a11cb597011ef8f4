//! The NATS JetStream publisher, on when `nats.url` is configured.
//!
//! The audit log is the outbox (see `orderd_storage`): every order change's audit record carries
//! its event. The publisher takes the events in log order from a durable cursor, publishes each
//! to JetStream with `Nats-Msg-Id` set to the event id, waits for every PubAck of the round, and
//! only then moves the cursor on (stored in the journal under [`CURSOR_KEY`] at most every
//! `nats.cursor_store_ms`: a cursor write is a journal batch, and one per round would add
//! writes to every group commit under load; when the publisher is idle, the cursor is stored
//! at its next poll).
//!
//! Where it takes them from: it subscribes to the in-process bus, reads the log itself up to
//! the durable head it sees then, and from there on publishes what the outbox relay hands on
//! (the relay reads and renders each durable event once for every reader). Whenever it fell
//! behind the bus or a round failed, it drops the subscription and starts over from the log at
//! its cursor; while it is far behind, it reads the log without a subscription. So:
//!
//! - while NATS is down, capture is unaffected: events simply wait in the log, and the publisher
//!   retries with capped exponential backoff;
//! - after a crash it resumes at the stored cursor, after an outage at the last acknowledged
//!   event, in log order, so per order the events arrive in order and without gaps; what was
//!   published after the stored cursor (at most `cursor_store_ms` of events, or a round not yet
//!   acknowledged) is published again, which JetStream drops inside its duplicate window and
//!   consumers drop by event id after it;
//! - only durable records go out (up to the head of the last group flush).
//!
//! Subjects (ids are subject tokens with `.` written as `%2E`):
//!
//! | subject                                       | stream                   | what |
//! |-----------------------------------------------|--------------------------|------|
//! | `orderd.orders.<account>.<order>.<state>`     | `nats.orders_stream`     | every order change |
//! | `orderd.allocations.<warehouse>.<order>`      | `nats.allocations_stream`| a change of an order holding stock there that allocates, ships or releases it |
//!
//! Both streams are created at start (when missing) with the age and size limits of the config.

use orderd_actors::events::{self, BusReceiver, EventBus, LagStage, OutboxReaders, Published};
use orderd_storage::{Batch, Journal, StorageError};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Journal key of the publisher's cursor: the last audit seq whose events are acknowledged.
pub const CURSOR_KEY: &[u8] = b"meta/nats_published";
/// The publisher's name among the outbox readers (`events::OUTBOX_READERS`).
const READER: &str = "nats";
/// Further behind the durable head than this many audit records, the publisher catches up
/// from the log without a subscription to the bus: a subscription would fill up and lag
/// before the catch-up reached it, and keep the bus holding events for it meanwhile.
const SUBSCRIBE_WITHIN: u64 = 4_096;
const _: () = assert!(SUBSCRIBE_WITHIN < events::BUS_CAPACITY as u64);

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL, e.g. `nats://127.0.0.1:4222`. Empty: no NATS (the in-process bus only).
    pub url: String,
    /// Stream of the order events (`orderd.orders.>`).
    pub orders_stream: String,
    /// Stream of the warehouse events (`orderd.allocations.>`).
    pub allocations_stream: String,
    /// Streams drop messages older than this.
    pub max_age_s: u64,
    /// Each stream keeps at most this many bytes (oldest dropped first).
    pub max_bytes: i64,
    /// JetStream's window for dropping a re-published `Nats-Msg-Id`.
    pub duplicate_window_s: u64,
    /// Per round: audit records read while catching up from the log, events taken from the
    /// bus once live.
    pub batch_max: usize,
    /// How long one round waits for its PubAcks before it is retried.
    pub ack_timeout_ms: u64,
    /// Longest pause between retries while NATS is unreachable.
    pub retry_max_ms: u64,
    /// Longest wait when there is nothing to publish: a new event from the bus wakes the
    /// publisher at once, this only bounds the wait.
    pub poll_ms: u64,
    /// Least time between two writes of the cursor while events keep coming (when idle, it
    /// is written at the next poll). After a crash, at most this much is published again.
    pub cursor_store_ms: u64,
}

impl Default for NatsSettings {
    fn default() -> NatsSettings {
        NatsSettings {
            url: String::new(),
            orders_stream: "ORDERD_ORDERS".into(),
            allocations_stream: "ORDERD_ALLOCATIONS".into(),
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            duplicate_window_s: 120,
            batch_max: 512,
            ack_timeout_ms: 5_000,
            retry_max_ms: 5_000,
            poll_ms: 500,
            cursor_store_ms: 250,
        }
    }
}

impl NatsSettings {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Every bad value, for `Config::validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.enabled() {
            return out;
        }
        let checks = [
            (
                self.orders_stream.is_empty(),
                "nats.orders_stream must not be empty",
            ),
            (
                self.allocations_stream.is_empty(),
                "nats.allocations_stream must not be empty",
            ),
            (
                self.orders_stream == self.allocations_stream,
                "nats.orders_stream and nats.allocations_stream must differ",
            ),
            (self.max_age_s == 0, "nats.max_age_s must be above 0"),
            (self.max_bytes <= 0, "nats.max_bytes must be above 0"),
            (
                self.duplicate_window_s == 0,
                "nats.duplicate_window_s must be above 0",
            ),
            (self.batch_max == 0, "nats.batch_max must be above 0"),
            (
                self.ack_timeout_ms == 0,
                "nats.ack_timeout_ms must be above 0",
            ),
            (self.retry_max_ms == 0, "nats.retry_max_ms must be above 0"),
            (self.poll_ms == 0, "nats.poll_ms must be above 0"),
            (
                self.cursor_store_ms == 0,
                "nats.cursor_store_ms must be above 0",
            ),
        ];
        out.extend(
            checks
                .iter()
                .filter(|(bad, _)| *bad)
                .map(|(_, m)| (*m).to_owned()),
        );
        out
    }
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub subject: String,
    pub msg_id: String,
    pub payload: bytes::Bytes,
}

/// A subject token for an id: NATS splits subjects at `.`.
fn token(id: &str) -> String {
    id.replace('.', "%2E")
}

/// The messages of one event: always its order subject, plus one per warehouse whose stock
/// the change allocates, ships or releases. They share one payload.
pub fn messages(ev: &Published) -> impl Iterator<Item = Outgoing> + '_ {
    let payload = bytes::Bytes::copy_from_slice(&ev.json);
    let order = token(ev.order.as_str());
    let to_order = format!(
        "orderd.orders.{}.{order}.{}",
        token(ev.account.as_str()),
        ev.state.as_str()
    );
    let to_warehouses = ev
        .stock_warehouses
        .iter()
        .map(move |w| format!("orderd.allocations.{}.{order}", token(w.as_str())));
    std::iter::once(to_order)
        .chain(to_warehouses)
        .map(move |subject| Outgoing {
            subject,
            msg_id: ev.id.clone(),
            payload: payload.clone(),
        })
}

/// The stored cursor (0 when nothing was ever published).
pub fn load_cursor(journal: &Journal) -> Result<u64, StorageError> {
    match journal.get(CURSOR_KEY)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StorageError::Corrupt {
                key: String::from_utf8_lossy(CURSOR_KEY).into_owned(),
                reason: format!("expected 8 bytes, found {}", v.len()),
            }),
    }
}

async fn store_cursor(journal: &Journal, seq: u64) -> Result<(), StorageError> {
    let mut batch = Batch::default();
    batch.put(CURSOR_KEY, seq.to_be_bytes().to_vec());
    journal.submit(batch).await.map(|_| ())
}

/// The durable events after `after`, reading at most `max` audit records, and the seq to
/// continue from: the last record read. Blocking (reads sled).
pub fn read_after(
    journal: &Journal,
    after: u64,
    max: usize,
) -> Result<(Vec<Arc<Published>>, u64), StorageError> {
    let read = events::read_after(journal, after, None, max, max)?;
    let events = read
        .events
        .iter()
        .map(|(seq, ev)| Arc::new(Published::of(*seq, ev)))
        .collect();
    Ok((events, read.next))
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("connecting to NATS: {0}")]
    Connect(String),
    #[error("creating stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("publishing {subject}: {reason}")]
    Publish { subject: String, reason: String },
    #[error("no PubAck within {0} ms")]
    AckTimeout(u64),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

async fn connect(s: &NatsSettings) -> Result<async_nats::jetstream::Context, PublishError> {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(s.url.as_str())
        .await
        .map_err(|e| PublishError::Connect(e.to_string()))?;
    let js = async_nats::jetstream::new(client);
    for (name, subjects) in [
        (&s.orders_stream, "orderd.orders.>"),
        (&s.allocations_stream, "orderd.allocations.>"),
    ] {
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subjects.to_owned()],
            max_age: Duration::from_secs(s.max_age_s),
            max_bytes: s.max_bytes,
            duplicate_window: Duration::from_secs(s.duplicate_window_s),
            ..Default::default()
        })
        .await
        .map_err(|e| PublishError::Stream {
            stream: name.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(js)
}

/// Publishes the messages of `events` in order, waits for every PubAck, and records each
/// event's lag.
async fn publish_all(
    js: &async_nats::jetstream::Context,
    events: &[Arc<Published>],
    ack_timeout: Duration,
) -> Result<(), PublishError> {
    let mut acks = Vec::with_capacity(events.len());
    for m in events.iter().flat_map(|ev| messages(ev)) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", m.msg_id.as_str());
        let ack = js
            .publish_with_headers(m.subject.clone(), headers, m.payload)
            .await
            .map_err(|e| PublishError::Publish {
                subject: m.subject.clone(),
                reason: e.to_string(),
            })?;
        acks.push((m.subject, ack));
    }
    let all = async {
        for (subject, ack) in acks {
            ack.await.map_err(|e| PublishError::Publish {
                subject,
                reason: e.to_string(),
            })?;
        }
        Ok::<(), PublishError>(())
    };
    let ms = u64::try_from(ack_timeout.as_millis()).unwrap_or(u64::MAX);
    tokio::time::timeout(ack_timeout, all)
        .await
        .map_err(|_| PublishError::AckTimeout(ms))??;
    for ev in events {
        events::record_lag(LagStage::Nats, ev.changed_at);
    }
    Ok(())
}

/// Runs until `stop` changes: connects (retrying), catches up from the log, then publishes
/// what the bus hands on. Tells `readers` where its cursor is (reader `nats`).
pub async fn run(
    journal: Journal,
    s: NatsSettings,
    bus: EventBus,
    readers: OutboxReaders,
    mut stop: watch::Receiver<bool>,
) {
    let retry_first = Duration::from_millis(50).min(Duration::from_millis(s.retry_max_ms));
    let mut backoff = retry_first;
    let mut p = Publisher {
        journal,
        s,
        bus,
        readers,
        js: None,
        cursor: None,
        live: None,
    };
    loop {
        let error = match p.step(&mut stop).await {
            Ok(true) => {
                backoff = retry_first;
                continue;
            }
            Ok(false) => break,
            Err(error) => error,
        };
        let retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        tracing::warn!(%error, retry_in_ms, "event publishing paused; events wait in the audit log");
        // What was not acknowledged is read from the log again.
        p.live = None;
        if matches!(
            error,
            PublishError::Connect(_) | PublishError::Stream { .. }
        ) {
            p.js = None;
        }
        let pause = backoff;
        backoff = (backoff * 2).min(Duration::from_millis(p.s.retry_max_ms));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => break,
        }
    }
    // A graceful stop stores what was acknowledged, so nothing is published twice.
    if let Some(c) = p.cursor.filter(|c| c.stored < c.at) {
        if let Err(error) = store_cursor(&p.journal, c.at).await {
            tracing::warn!(%error, "storing the NATS cursor at shutdown failed; the next start publishes the last events again");
        }
    }
}

/// The publisher's cursor: the last audit seq acknowledged, and what the journal holds.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    at: u64,
    stored: u64,
    stored_at: Instant,
}

struct Publisher {
    journal: Journal,
    s: NatsSettings,
    bus: EventBus,
    readers: OutboxReaders,
    js: Option<async_nats::jetstream::Context>,
    /// Loaded from the journal at the first step.
    cursor: Option<Cursor>,
    /// Subscribed to the bus, and caught up with the log when subscribing.
    live: Option<BusReceiver>,
}

impl Publisher {
    /// One step: connects if needed; when not live, subscribes to the bus and publishes what
    /// the log holds up to its durable head; when live, publishes what the bus hands on within
    /// `poll_ms`. `Ok(false)`: stop was asked for. On an error nothing unacknowledged is lost:
    /// the caller drops the subscription, and the next step reads the log from the cursor.
    async fn step(&mut self, stop: &mut watch::Receiver<bool>) -> Result<bool, PublishError> {
        if *stop.borrow() {
            return Ok(false);
        }
        if self.cursor.is_none() {
            let at = load_cursor(&self.journal)?;
            self.cursor = Some(Cursor {
                at,
                stored: at,
                stored_at: Instant::now(),
            });
            self.readers.set(READER, "", at);
        }
        if self.js.is_none() {
            self.js = Some(connect(&self.s).await?);
        }
        match self.live.take() {
            None => self.catch_up(stop).await,
            Some(live) => self.follow(live, stop).await,
        }
    }

    /// Far behind the durable head, publishes one batch from the log, without a subscription
    /// (it would only fill up and lag). Close to it, subscribes to the bus, then publishes what
    /// the log holds up to the durable head seen after subscribing: the relay hands on only
    /// durable records, and what it reads after the subscription comes to the subscription, so
    /// together they miss nothing. (The audit head, not the durable-changes signal: the
    /// committer moves the head first, and the relay may already read up to it.)
    async fn catch_up(&mut self, stop: &watch::Receiver<bool>) -> Result<bool, PublishError> {
        let head = self.journal.audit_head().seq;
        if head.saturating_sub(self.at()) > SUBSCRIBE_WITHIN {
            self.publish_from_log(head).await?;
            return Ok(true);
        }
        let live = self.bus.subscribe();
        let head = self.journal.audit_head().seq;
        while self.at() < head {
            if *stop.borrow() {
                return Ok(false);
            }
            self.publish_from_log(head).await?;
        }
        self.live = Some(live);
        Ok(true)
    }

    /// Publishes the events of the next `batch_max` durable audit records after the cursor;
    /// `head` is a durable head above the cursor.
    async fn publish_from_log(&mut self, head: u64) -> Result<(), PublishError> {
        let (j, after, max) = (self.journal.clone(), self.at(), self.s.batch_max);
        let (events, last) = tokio::task::spawn_blocking(move || read_after(&j, after, max))
            .await
            .map_err(|e| StorageError::Invalid {
                reason: e.to_string(),
            })??;
        if last == after {
            return Err(StorageError::Invalid {
                reason: format!("the audit log ends at {after}, below its durable head {head}"),
            }
            .into());
        }
        self.publish(&events).await?;
        self.advance(last).await
    }

    /// Publishes what the bus hands on within `poll_ms`, at most `batch_max` events at once.
    /// A subscription that fell behind the bus is dropped: the next step catches up from the
    /// log.
    async fn follow(
        &mut self,
        mut live: BusReceiver,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, PublishError> {
        // Nothing waiting: every event up to the bus's position was published (the position is
        // read first, and moves only after its events were sent).
        let position = self.bus.position();
        if live.is_empty() {
            self.advance(position).await?;
        }
        let first = tokio::select! {
            ev = live.recv() => ev,
            _ = tokio::time::sleep(Duration::from_millis(self.s.poll_ms)) => {
                self.live = Some(live);
                return Ok(true);
            }
            _ = stop.changed() => return Ok(false),
        };
        let (got, behind) = events::take_waiting(&mut live, first, self.s.batch_max, self.at());
        self.publish(&got).await?;
        if let Some(last) = got.last() {
            self.advance(last.seq).await?;
        }
        if !behind {
            self.live = Some(live);
        }
        Ok(true)
    }

    async fn publish(&self, events: &[Arc<Published>]) -> Result<(), PublishError> {
        let Some(js) = &self.js else {
            return Err(PublishError::Connect("not connected".into()));
        };
        if events.is_empty() {
            return Ok(());
        }
        publish_all(js, events, Duration::from_millis(self.s.ack_timeout_ms)).await
    }

    /// The last audit seq acknowledged (0 before the cursor is loaded).
    fn at(&self) -> u64 {
        self.cursor.map_or(0, |c| c.at)
    }

    /// Moves the cursor to `to` (everything up to it is acknowledged) and stores it when it
    /// was last stored at least `cursor_store_ms` ago.
    async fn advance(&mut self, to: u64) -> Result<(), PublishError> {
        let every = Duration::from_millis(self.s.cursor_store_ms);
        let Some(c) = self.cursor.as_mut() else {
            return Ok(());
        };
        c.at = c.at.max(to);
        self.readers.set(READER, "", c.at);
        if c.stored < c.at && c.stored_at.elapsed() >= every {
            store_cursor(&self.journal, c.at).await?;
            c.stored = c.at;
            c.stored_at = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_actors::events::{LineChanged, OrderChanged};
    use orderd_domain::ids::{AccountId, OrderId, Sku, WarehouseId};
    use orderd_domain::money::{Currency, Money};
    use orderd_domain::order::OrderState;
    use orderd_domain::order::{Allocation, LineStatus};

    fn event(state: OrderState, warehouses: &[&str]) -> OrderChanged {
        let eur = Money::zero(Currency::parse("EUR").unwrap());
        OrderChanged {
            account: AccountId::parse("ACME.DE").unwrap(),
            order: OrderId::parse("o-1").unwrap(),
            state,
            sequence: 4,
            transitions: vec![state.as_str().to_owned()],
            time: "2026-11-22T10:00:00Z".into(),
            total: eur,
            lines: warehouses
                .iter()
                .map(|w| LineChanged {
                    line_no: 1,
                    sku: Sku::parse("BOLT-1").unwrap(),
                    qty: 2,
                    status: LineStatus::Open,
                    line_total: eur,
                    allocations: vec![Allocation {
                        warehouse: WarehouseId::parse(w).unwrap(),
                        qty: 2,
                        shipped: false,
                    }],
                })
                .collect(),
        }
    }

    // Every change goes to its order subject (dots in ids escaped); stock changes also to each
    // warehouse involved, once, under the same message id and payload; other changes to no
    // warehouse.
    #[test]
    fn subjects_of_an_event() {
        let of = |state, warehouses: &[&str]| Published::of(7, &event(state, warehouses));
        let ev = of(OrderState::Allocated, &["MUC", "BER", "MUC"]);
        let m: Vec<Outgoing> = messages(&ev).collect();
        let subjects: Vec<&str> = m.iter().map(|o| o.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "orderd.orders.ACME%2EDE.o-1.allocated",
                "orderd.allocations.BER.o-1",
                "orderd.allocations.MUC.o-1"
            ]
        );
        assert!(m
            .iter()
            .all(|o| o.msg_id == "o-1.4" && o.payload.as_ref() == ev.json.as_slice()));
        for state in [
            OrderState::Shipped,
            OrderState::Cancelled,
            OrderState::Rejected,
        ] {
            assert_eq!(messages(&of(state, &["BER"])).count(), 2, "{state:?}");
        }
        for state in [
            OrderState::PendingApproval,
            OrderState::Confirmed,
            OrderState::Draft,
        ] {
            assert_eq!(messages(&of(state, &["BER"])).count(), 1, "{state:?}");
        }
    }

    // Off by default; once a URL is set, every bad limit is reported.
    #[test]
    fn settings_problems() {
        assert!(NatsSettings::default().problems().is_empty());
        let s = NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            allocations_stream: "ORDERD_ORDERS".into(),
            batch_max: 0,
            max_bytes: 0,
            ..NatsSettings::default()
        };
        assert_eq!(s.problems().len(), 3, "{:?}", s.problems());
    }
}
