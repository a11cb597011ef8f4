//! The NATS JetStream publisher, on when `nats.url` is configured.
//!
//! The audit log is the outbox (see `orderd_storage`): every order change's audit record carries
//! its event. The publisher reads the log in order from a durable cursor, publishes each event to
//! JetStream with `Nats-Msg-Id` set to the event id, waits for every PubAck of the round, and
//! only then moves the cursor on (stored in the journal under [`CURSOR_KEY`] at most every
//! `nats.cursor_store_ms`: a cursor write is a journal batch, and one per round would add
//! writes to every group commit under load; when the publisher is idle, the cursor is stored
//! at its next poll). So:
//!
//! - while NATS is down, capture is unaffected: events simply wait in the log, and the publisher
//!   retries with capped exponential backoff;
//! - after a crash or an outage it resumes at the stored cursor, in log order, so per order the
//!   events arrive in order and without gaps; what was published after the stored cursor (at
//!   most `cursor_store_ms` of events, or a round not yet acknowledged) is published again,
//!   which JetStream drops inside its duplicate window and consumers drop by event id after it;
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

use orderd_actors::events::{self, LagStage, OrderChanged, OutboxReaders};
use orderd_domain::order::OrderState;
use orderd_storage::{Batch, Journal, StorageError};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Journal key of the publisher's cursor: the last audit seq whose events are acknowledged.
pub const CURSOR_KEY: &[u8] = b"meta/nats_published";

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
    /// Audit records read (and their events published) per round.
    pub batch_max: usize,
    /// How long one round waits for its PubAcks before it is retried.
    pub ack_timeout_ms: u64,
    /// Longest pause between retries while NATS is unreachable.
    pub retry_max_ms: u64,
    /// Longest wait when there is nothing to publish: new durable records wake the publisher
    /// at once, this only bounds the wait.
    pub poll_ms: u64,
    /// Least time between two writes of the cursor while events keep coming (it is also
    /// written whenever the publisher catches up). After a crash, at most this much is
    /// published again.
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
    pub payload: Vec<u8>,
}

/// A subject token for an id: NATS splits subjects at `.`.
fn token(id: &str) -> String {
    id.replace('.', "%2E")
}

/// The messages of one event: always its order subject, plus one per warehouse whose stock
/// the change allocates, ships or releases.
pub fn messages(ev: &OrderChanged) -> Vec<Outgoing> {
    let payload = events::render(ev);
    let msg_id = format!("{}.{}", ev.order, ev.sequence);
    let mut out = vec![Outgoing {
        subject: format!(
            "orderd.orders.{}.{}.{}",
            token(ev.account.as_str()),
            token(ev.order.as_str()),
            ev.state.as_str()
        ),
        msg_id: msg_id.clone(),
        payload: payload.clone(),
    }];
    let touches_stock = matches!(
        ev.state,
        OrderState::Allocated | OrderState::Shipped | OrderState::Cancelled | OrderState::Rejected
    );
    if touches_stock {
        let warehouses: BTreeSet<&str> = ev
            .lines
            .iter()
            .flat_map(|l| l.allocations.iter().map(|a| a.warehouse.as_str()))
            .collect();
        for w in warehouses {
            out.push(Outgoing {
                subject: format!(
                    "orderd.allocations.{}.{}",
                    token(w),
                    token(ev.order.as_str())
                ),
                msg_id: msg_id.clone(),
                payload: payload.clone(),
            });
        }
    }
    out
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

/// What one round publishes.
#[derive(Debug, Default)]
pub struct Round {
    pub messages: Vec<Outgoing>,
    /// When each of the round's changes was made (for the event lag metric).
    pub changed_at: Vec<Option<SystemTime>>,
    /// The seq to continue from: the last record read.
    pub last: u64,
}

/// The durable records after `after` with their messages. Blocking (reads sled).
pub fn next_round(journal: &Journal, after: u64, max: usize) -> Result<Round, StorageError> {
    let records = journal.durable_audit_after(after, max)?;
    let mut round = Round {
        last: records.last().map_or(after, |r| r.seq),
        ..Round::default()
    };
    for ev in records.iter().filter_map(events::event_or_skip) {
        round.changed_at.push(events::changed_at(&ev));
        round.messages.extend(messages(&ev));
    }
    Ok(round)
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

/// Publishes one round and waits for every PubAck.
async fn publish_round(
    js: &async_nats::jetstream::Context,
    messages: Vec<Outgoing>,
    ack_timeout: Duration,
) -> Result<(), PublishError> {
    let mut acks = Vec::with_capacity(messages.len());
    for m in messages {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", m.msg_id.as_str());
        let publish_failed = |e: &dyn std::fmt::Display| PublishError::Publish {
            subject: m.subject.clone(),
            reason: e.to_string(),
        };
        let ack = js
            .publish_with_headers(m.subject.clone(), headers, m.payload.into())
            .await
            .map_err(|e| publish_failed(&e))?;
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
        .map_err(|_| PublishError::AckTimeout(ms))?
}

/// Runs until `stop` changes: connects (retrying), then publishes round after round; when
/// there is nothing to publish it waits for the next durable audit records (at most
/// `poll_ms`). Tells `readers` where its cursor is (reader `nats`).
pub async fn run(
    journal: Journal,
    s: NatsSettings,
    readers: OutboxReaders,
    mut stop: watch::Receiver<bool>,
) {
    let retry_first = Duration::from_millis(50).min(Duration::from_millis(s.retry_max_ms));
    let mut backoff = retry_first;
    let mut js = None;
    let mut cursor = None;
    let mut changes = journal.durable_changes();
    loop {
        // What is durable now, marked as seen before reading: a flush after this point ends
        // the wait below.
        let durable = *changes.borrow_and_update();
        let result = round(&journal, &s, &mut js, &mut cursor).await;
        if let Some(c) = cursor {
            readers.set("nats", "", c.at);
        }
        let pause = match result {
            Ok(true) if cursor.is_some_and(|c| c.at < durable) => {
                backoff = retry_first;
                continue; // a round reads at most `batch_max` records
            }
            Ok(published) => {
                if published {
                    backoff = retry_first;
                }
                let poll = Duration::from_millis(s.poll_ms);
                if !events::wait_for_durable(&mut changes, poll, &mut stop).await {
                    break;
                }
                continue;
            }
            Err(error) => {
                let retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(%error, retry_in_ms, "event publishing paused; events wait in the audit log");
                if matches!(
                    error,
                    PublishError::Connect(_) | PublishError::Stream { .. }
                ) {
                    js = None;
                }
                let pause = backoff;
                backoff = (backoff * 2).min(Duration::from_millis(s.retry_max_ms));
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => break,
        }
    }
    // A graceful stop stores what was acknowledged, so nothing is published twice.
    if let Some(c) = cursor.filter(|c| c.stored < c.at) {
        if let Err(error) = store_cursor(&journal, c.at).await {
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

/// One round; `Ok(false)` when there was nothing to publish. The cursor is stored when it moved
/// and was last stored at least `cursor_store_ms` ago.
async fn round(
    journal: &Journal,
    s: &NatsSettings,
    js: &mut Option<async_nats::jetstream::Context>,
    cursor: &mut Option<Cursor>,
) -> Result<bool, PublishError> {
    let mut c = match *cursor {
        Some(c) => c,
        None => {
            let at = load_cursor(journal)?;
            *cursor.insert(Cursor {
                at,
                stored: at,
                stored_at: Instant::now(),
            })
        }
    };
    let after = c.at;
    let ctx = match js {
        Some(ctx) => ctx,
        None => js.insert(connect(s).await?),
    };
    let (j, max) = (journal.clone(), s.batch_max);
    let Round {
        messages,
        changed_at,
        last,
    } = tokio::task::spawn_blocking(move || next_round(&j, after, max))
        .await
        .map_err(|e| StorageError::Invalid {
            reason: e.to_string(),
        })??;
    let idle = last == after;
    if !idle {
        publish_round(ctx, messages, Duration::from_millis(s.ack_timeout_ms)).await?;
        for t in changed_at {
            events::record_lag(LagStage::Nats, t);
        }
        c.at = last;
        *cursor = Some(c);
    }
    let due = c.stored_at.elapsed() >= Duration::from_millis(s.cursor_store_ms);
    if c.stored < c.at && due {
        store_cursor(journal, c.at).await?;
        c.stored = c.at;
        c.stored_at = Instant::now();
        *cursor = Some(c);
    }
    Ok(!idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_actors::events::LineChanged;
    use orderd_domain::ids::{AccountId, OrderId, Sku, WarehouseId};
    use orderd_domain::money::{Currency, Money};
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
    // warehouse involved, once, under the same message id; other changes to no warehouse.
    #[test]
    fn subjects_of_an_event() {
        let m = messages(&event(OrderState::Allocated, &["MUC", "BER", "MUC"]));
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
            .all(|o| o.msg_id == "o-1.4" && o.payload == m[0].payload));
        for state in [
            OrderState::Shipped,
            OrderState::Cancelled,
            OrderState::Rejected,
        ] {
            assert_eq!(messages(&event(state, &["BER"])).len(), 2, "{state:?}");
        }
        for state in [
            OrderState::PendingApproval,
            OrderState::Confirmed,
            OrderState::Draft,
        ] {
            assert_eq!(messages(&event(state, &["BER"])).len(), 1, "{state:?}");
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
