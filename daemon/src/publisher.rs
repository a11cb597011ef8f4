//! The NATS JetStream publisher, on when `nats.url` is configured.
//!
//! The audit log is the outbox (see `orderd_storage`): every order change's audit record carries
//! its event. The publisher takes the events in log order from a durable cursor, publishes each
//! to JetStream with `Nats-Msg-Id` set to the event id, and moves the cursor past a round only
//! when every PubAck of that round and of all rounds before it is in (while live, up to
//! `nats.rounds_in_flight` rounds wait for their PubAcks at once, so an event does not wait for
//! the acknowledgements of the round before it to be sent; together they hold at most
//! `nats.acks_in_flight_max` messages, the NATS client's own bound). The cursor is stored in the
//! journal under [`CURSOR_KEY`] at most every `nats.cursor_store_ms` (a cursor write is a
//! journal batch, and one per round would add writes to every group commit under load; when
//! the publisher is idle, the cursor is stored at its next poll).
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
//!   published after the stored cursor (at most `cursor_store_ms` of events, and the rounds not
//!   yet acknowledged) is published again, which JetStream drops inside its duplicate window and
//!   consumers drop by event id after it;
//! - only durable records go out (up to the head of the last group flush);
//! - at most one event of an order waits for its PubAck at a time (see [`waves`]): a broken
//!   connection loses what is still in the client's write buffer, while the publishes queued
//!   behind it go out on the new connection, and an order's later event would land in the
//!   stream ahead of its earlier one.
//!
//! Subjects (ids are subject tokens with `.` written as `%2E`):
//!
//! | subject                                       | stream                   | what |
//! |-----------------------------------------------|--------------------------|------|
//! | `orderd.orders.<account>.<order>.<state>`     | `nats.orders_stream`     | every order change |
//! | `orderd.allocations.<warehouse>.<order>`      | `nats.allocations_stream`| a change of an order holding stock there that allocates, ships or releases it |
//!
//! Both streams are created at start (when missing) with the age and size limits of the config.
//! With `nats.warehouse_consumers`, each warehouse also gets a durable pull consumer on the
//! allocations stream, `warehouse-<warehouse>`, filtered to its subject and created before its
//! first event goes out: a warehouse client then needs no right to create consumers, only to
//! fetch from and acknowledge its own (`ops/nats/nats-server.conf`).
//!
//! Signing in: `nats.user` and `nats.password`, TLS with `nats.tls_ca_file` (and a client
//! certificate for servers that verify clients). What the connection goes through (connected,
//! disconnected, refused sign-in) is logged, never the password.

use orderd_actors::events::{self, BusReceiver, EventBus, LagStage, OutboxReaders, Published};
use orderd_api::oidc::Secret;
use orderd_domain::ids::OrderId;
use orderd_storage::{Batch, Journal, StorageError};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
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
    /// The NATS user orderd signs in as, with `password`. Empty: no user.
    pub user: String,
    /// That user's password (its Debug is redacted; `ORDERD_NATS__PASSWORD` keeps it out of
    /// the config file).
    pub password: Secret,
    /// PEM file of the certificate authorities the server's certificate must chain to. Empty:
    /// the system's roots.
    pub tls_ca_file: String,
    /// orderd's client certificate and its key (PEM), for a server that verifies clients.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Insist on TLS also with a `nats://` URL (a `tls://` URL always does, and so does a
    /// server that requires it).
    pub tls_required: bool,
    /// Create a durable pull consumer `warehouse-<warehouse>` on the allocations stream for
    /// every warehouse, filtered to its subject, before its first event goes out.
    pub warehouse_consumers: bool,
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
    /// Rounds from the bus published and waiting for their PubAcks at once: the next round
    /// goes out while earlier ones wait (1: each round waits for the one before).
    pub rounds_in_flight: usize,
    /// Messages published and waiting for their PubAck at once, over all rounds: the NATS
    /// client refuses to hold more, so a round that would go above waits for older rounds
    /// first, and a round larger than this waits for its own first messages part way.
    pub acks_in_flight_max: usize,
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
            user: String::new(),
            password: Secret::default(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_required: false,
            warehouse_consumers: true,
            orders_stream: "ORDERD_ORDERS".into(),
            allocations_stream: "ORDERD_ALLOCATIONS".into(),
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            duplicate_window_s: 120,
            batch_max: 512,
            ack_timeout_ms: 5_000,
            rounds_in_flight: 4,
            acks_in_flight_max: 8_192,
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
            (
                self.rounds_in_flight == 0,
                "nats.rounds_in_flight must be above 0",
            ),
            (
                self.acks_in_flight_max == 0,
                "nats.acks_in_flight_max must be above 0",
            ),
            (self.retry_max_ms == 0, "nats.retry_max_ms must be above 0"),
            (self.poll_ms == 0, "nats.poll_ms must be above 0"),
            (
                self.cursor_store_ms == 0,
                "nats.cursor_store_ms must be above 0",
            ),
            (
                self.user.is_empty() != self.password.0.is_empty(),
                "nats.user and nats.password go together",
            ),
            (
                self.url.contains('@'),
                "nats.url must not carry a user or password (it is logged): use nats.user and nats.password",
            ),
            (
                self.tls_cert_file.is_empty() != self.tls_key_file.is_empty(),
                "nats.tls_cert_file and nats.tls_key_file go together",
            ),
        ];
        out.extend(
            checks
                .iter()
                .filter(|(bad, _)| *bad)
                .map(|(_, m)| (*m).to_owned()),
        );
        for (key, file) in [
            ("nats.tls_ca_file", &self.tls_ca_file),
            ("nats.tls_cert_file", &self.tls_cert_file),
            ("nats.tls_key_file", &self.tls_key_file),
        ] {
            if !file.is_empty() && !std::path::Path::new(file).is_file() {
                out.push(format!("{key}: no such file {file:?}"));
            }
        }
        out
    }

    /// How the client signs in and what TLS it speaks.
    fn connect_options(&self) -> async_nats::ConnectOptions {
        let mut o = async_nats::ConnectOptions::new()
            .name("orderd")
            .retry_on_initial_connect()
            .require_tls(self.tls_required)
            .event_callback({
                let last = Arc::new(std::sync::Mutex::new(None));
                move |event| {
                    let last = Arc::clone(&last);
                    async move { log_connection(&event, &last) }
                }
            });
        if !self.user.is_empty() {
            o = o.user_and_password(self.user.clone(), self.password.0.clone());
        }
        if !self.tls_ca_file.is_empty() {
            o = o.add_root_certificates(self.tls_ca_file.clone().into());
        }
        if !self.tls_cert_file.is_empty() {
            o = o.add_client_certificate(
                self.tls_cert_file.clone().into(),
                self.tls_key_file.clone().into(),
            );
        }
        o
    }
}

/// Logs what the NATS connection goes through: the client reconnects by itself, so this is
/// where an operator sees why events wait (a refused sign-in, a TLS failure, NATS down). An
/// error is logged when it differs from the last one logged (the client retries every few
/// seconds); connecting again clears it.
fn log_connection(event: &async_nats::Event, last: &std::sync::Mutex<Option<String>>) {
    use async_nats::Event;
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (what, error) = match event {
        Event::Connected => {
            *last = None;
            tracing::info!("connected to NATS");
            return;
        }
        Event::Disconnected => {
            tracing::warn!("disconnected from NATS; reconnecting");
            return;
        }
        Event::LameDuckMode => {
            tracing::warn!("NATS server is shutting down (lame duck mode)");
            return;
        }
        Event::ServerError(e) => ("NATS refused orderd", e.to_string()),
        Event::ClientError(e) => ("NATS connection failed", e.to_string()),
        other => {
            tracing::debug!(event = %other, "NATS connection event");
            return;
        }
    };
    if last.as_deref() == Some(error.as_str()) {
        tracing::debug!(%error, "{what} (again)");
    } else {
        tracing::error!(%error, "{what}");
        *last = Some(error);
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

/// Room a message leaves for its headers (`Nats-Msg-Id` and NATS's header line) besides its
/// payload, when checked against the server's `max_payload`.
const HEADER_ROOM: usize = 512;

/// The messages of one event to a server that takes messages of at most `max_payload` bytes
/// (headers included): always its order subject, plus one per warehouse whose stock the change
/// allocates, ships or releases. JetStream drops a message whose `Nats-Msg-Id` its stream
/// already holds, whatever the subject, so each message of the allocations stream carries its
/// own: the event id, `@`, the warehouse (ids never hold `@`).
///
/// They share the event's JSON when the server takes it, as it does unless set below its
/// default 1 MiB (an event's line is about 300 bytes and 60 per allocation). Sent whole, an
/// event too large would be refused by every attempt and hold up every later event of every
/// account, so it is cut instead ([`cut`]): on the order subject, to the event without its
/// lines; on a warehouse's subject, to the lines with stock in that warehouse, or to none if
/// even those are too many. `data.lines_omitted` says how many lines a cut message leaves out.
/// The audit log, `GET /v1/events` and SSE keep the whole event.
pub fn messages(ev: &Published, max_payload: usize) -> Vec<Outgoing> {
    let order = token(ev.order.as_str());
    let to_order = Outgoing {
        subject: format!(
            "orderd.orders.{}.{order}.{}",
            token(ev.account.as_str()),
            ev.state.as_str()
        ),
        msg_id: ev.id.clone(),
        payload: bytes::Bytes::new(),
    };
    let to_warehouses = ev.stock_warehouses.iter().map(|w| Outgoing {
        subject: format!("orderd.allocations.{}.{order}", token(w.as_str())),
        msg_id: format!("{}@{w}", ev.id),
        payload: bytes::Bytes::new(),
    });
    let mut out: Vec<Outgoing> = std::iter::once(to_order).chain(to_warehouses).collect();
    if fits(ev.json.len(), max_payload) {
        let whole = bytes::Bytes::copy_from_slice(&ev.json);
        for m in &mut out {
            m.payload = whole.clone();
        }
        return out;
    }
    let mut event: serde_json::Value =
        serde_json::from_slice(&ev.json).expect("orderd renders its events as JSON");
    let lines = match event["data"]
        .as_object_mut()
        .and_then(|d| d.remove("lines"))
    {
        Some(serde_json::Value::Array(lines)) => lines,
        _ => Vec::new(),
    };
    let none = cut(&event, &lines, |_| false);
    let mut sent = vec![none.len()];
    for (m, w) in out.iter_mut().skip(1).zip(&ev.stock_warehouses) {
        let own = cut(&event, &lines, |line| {
            line["allocations"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["warehouse"] == w.as_str()))
        });
        m.payload = if fits(own.len(), max_payload) {
            own
        } else {
            none.clone()
        };
        sent.push(m.payload.len());
    }
    out[0].payload = none;
    tracing::warn!(
        event = %ev.id,
        bytes = ev.json.len(),
        ?sent,
        max_payload,
        "an event is larger than the NATS server takes: it goes out without its lines, to a warehouse with its own lines if they fit (the audit log, GET /v1/events and SSE have it whole)"
    );
    metrics::counter!(orderd_actors::metric_names::NATS_EVENTS_TRIMMED).increment(1);
    out
}

/// Whether a payload of `len` bytes and its headers fit in `max_payload`.
fn fits(len: usize, max_payload: usize) -> bool {
    len.saturating_add(HEADER_ROOM) <= max_payload
}

/// `event` (CloudEvents JSON, its `data.lines` taken out as `lines`) with only the lines
/// `keep` accepts, and `data.lines_omitted`: how many it left out. Only the event's head and
/// the kept lines are copied.
fn cut(
    event: &serde_json::Value,
    lines: &[serde_json::Value],
    keep: impl Fn(&serde_json::Value) -> bool,
) -> bytes::Bytes {
    let mut event = event.clone();
    let data = event
        .get_mut("data")
        .and_then(serde_json::Value::as_object_mut)
        .expect("an event has its data");
    let kept: Vec<serde_json::Value> = lines.iter().filter(|l| keep(l)).cloned().collect();
    data.insert("lines_omitted".into(), (lines.len() - kept.len()).into());
    if !kept.is_empty() {
        data.insert("lines".into(), kept.into());
    }
    bytes::Bytes::from(serde_json::to_vec(&event).expect("JSON values encode"))
}

/// The stored cursor (0 when nothing was ever published).
pub fn load_cursor(journal: &Journal) -> Result<u64, StorageError> {
    Ok(journal.get_u64(CURSOR_KEY)?.unwrap_or(0))
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
    #[error("creating the warehouse consumer {name}: {reason}")]
    Consumer { name: String, reason: String },
    #[error("publishing {subject}: {reason}")]
    Publish { subject: String, reason: String },
    #[error("no PubAck within {0} ms")]
    AckTimeout(u64),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The publisher's one NATS client for its whole run: it reconnects by itself (also when NATS
/// is not up at start), so a failed round never needs a new one. (A dropped client's task goes
/// on dialling for as long as NATS is down.)
async fn connect(s: &NatsSettings) -> Result<async_nats::Client, PublishError> {
    s.connect_options()
        .connect(s.url.as_str())
        .await
        .map_err(|e| PublishError::Connect(e.to_string()))
}

/// A JetStream context on `client`, with orderd's streams created if missing.
async fn jetstream(
    client: async_nats::Client,
    s: &NatsSettings,
) -> Result<async_nats::jetstream::Context, PublishError> {
    // The client holds at most `acks_in_flight_max` messages waiting for their PubAck, and the
    // publisher's own count keeps it below. With backpressure, a publish above the bound would
    // wait for a PubAck future that only this task polls: for good. Without, it fails (and the
    // round is retried), so a miscount shows as an error, never as a hang. The futures of a
    // failed round, dropped, hold their place until their PubAck comes or for the ack timeout
    // after the drop; a retry meanwhile may fail the same way (`max ack pending`) until they
    // are released. The same timeout bounds each publish, PubAck and stream request.
    let ack_timeout = Duration::from_millis(s.ack_timeout_ms);
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(ack_timeout)
        .max_ack_inflight(s.acks_in_flight_max)
        .backpressure_on_inflight(false)
        .ack_timeout(ack_timeout)
        .build(client);
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

/// Creates the durable pull consumer `warehouse-<warehouse>` on `stream` unless it exists: it
/// delivers every message of the warehouse's subject, from the stream's first, and wants each
/// acknowledged. An existing consumer of that name is checked, never changed: made with
/// another filter or other acks, it is an error.
async fn warehouse_consumer(
    js: &async_nats::jetstream::Context,
    stream: &str,
    warehouse: &str,
) -> Result<(), PublishError> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let name = format!("warehouse-{}", token(warehouse));
    let failed = |e: &dyn std::fmt::Display| PublishError::Consumer {
        name: name.clone(),
        reason: e.to_string(),
    };
    let filter = format!("orderd.allocations.{}.>", token(warehouse));
    let stream = js.get_stream(stream).await.map_err(|e| failed(&e))?;
    let consumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| failed(&e))?;
    // One found under that name may have been made otherwise (by hand, or by an older setup):
    // with another filter it would show the warehouse other warehouses' events. (The info is
    // the one the lookup or the creation answered.)
    let info = consumer.cached_info();
    if info.config.filter_subject != filter || info.config.ack_policy != AckPolicy::Explicit {
        return Err(failed(&format!(
            "a consumer of that name exists with filter {:?} and {:?} acks, not {filter:?} and explicit ones; delete it (orderd makes it again)",
            info.config.filter_subject, info.config.ack_policy
        )));
    }
    tracing::info!(consumer = %name, "warehouse consumer ready on NATS");
    Ok(())
}

/// What a published round waits for: every PubAck of its messages, within the ack timeout.
type Acks = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// How many messages `events` go out as (what [`messages`] yields for each, without
/// building them).
fn message_count(events: &[Arc<Published>]) -> usize {
    events.iter().map(|ev| 1 + ev.stock_warehouses.len()).sum()
}

/// `events` (in log order) cut into consecutive waves in which no order has two events: a
/// wave is published only once every PubAck of the wave before it is in, so at most one event
/// of an order waits for its PubAck. (When a connection breaks, the client drops what is
/// still in its write buffer and sends the publishes queued behind it on the new connection:
/// two events of one order in flight at once could be stored in the wrong order.)
fn waves(events: &[Arc<Published>]) -> Vec<&[Arc<Published>]> {
    let mut out = vec![];
    let (mut start, mut orders) = (0, std::collections::HashSet::new());
    for (i, ev) in events.iter().enumerate() {
        if !orders.insert(&ev.order) {
            out.push(&events[start..i]);
            start = i;
            orders.clear();
            orders.insert(&ev.order);
        }
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

/// Publishes the messages of `events` in order and returns the wait for their PubAcks, all
/// within `ack_timeout` from now. `room`: how many more messages the client may hold waiting
/// for a PubAck (at least 1); once that many of this round wait, their PubAcks are awaited
/// before it goes on. So are they before an event of an order that has one waiting ([`waves`]).
async fn send(
    js: &async_nats::jetstream::Context,
    events: &[Arc<Published>],
    ack_timeout: Duration,
    room: usize,
) -> Result<Acks, PublishError> {
    assert!(room > 0, "a round is sent only with room for a message");
    let ms = u64::try_from(ack_timeout.as_millis()).unwrap_or(u64::MAX);
    let deadline = tokio::time::Instant::now() + ack_timeout;
    let mut acks = Vec::with_capacity(events.len().min(room));
    let max_payload = js.client().max_payload();
    let acked = |acks: Vec<_>| async move {
        tokio::time::timeout_at(deadline, all_acked(acks))
            .await
            .map_err(|_| PublishError::AckTimeout(ms))?
    };
    for wave in waves(events) {
        // The wave before is acknowledged in full first.
        if !acks.is_empty() {
            acked(std::mem::take(&mut acks)).await?;
        }
        for m in wave.iter().flat_map(|ev| messages(ev, max_payload)) {
            if acks.len() == room {
                acked(std::mem::take(&mut acks)).await?;
            }
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
    }
    // From the start of the round, not from when it becomes the oldest waiting.
    Ok(Box::pin(acked(acks)))
}

/// Every PubAck of `acks`, in order. Counts the ones JetStream marks as duplicates: expected
/// for messages sent again (after a failed round or a restart), a lost message otherwise.
async fn all_acked(
    acks: Vec<(String, async_nats::jetstream::context::PublishAckFuture)>,
) -> Result<(), PublishError> {
    for (subject, ack) in acks {
        let ack = ack.await.map_err(|e| PublishError::Publish {
            subject,
            reason: e.to_string(),
        })?;
        if ack.duplicate {
            metrics::counter!(orderd_actors::metric_names::NATS_DUPLICATES).increment(1);
        }
    }
    Ok(())
}

/// Records the lag of acknowledged events.
fn record_lags(events: &[Arc<Published>]) {
    for ev in events {
        events::record_lag(LagStage::Nats, ev.changed_at);
    }
}

/// A round taken from the bus, published, waiting for its PubAcks.
struct Round {
    events: Vec<Arc<Published>>,
    /// Its messages (an event goes out on one subject or more).
    messages: usize,
    acks: Acks,
}

impl Round {
    /// The audit seq of its last event.
    fn last(&self) -> u64 {
        self.events.last().map_or(0, |ev| ev.seq)
    }

    /// Whether it has an event of one of `orders`.
    fn has_any(&self, orders: &std::collections::HashSet<&OrderId>) -> bool {
        self.events.iter().any(|ev| orders.contains(&ev.order))
    }
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
        client: None,
        js: None,
        cursor: None,
        live: None,
        in_flight: VecDeque::new(),
        in_flight_messages: 0,
        consumers: HashMap::new(),
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
        p.drop_in_flight();
        // NATS may have come back without its store (or someone deleted a stream or a
        // consumer): the next round makes sure of the streams and consumers again.
        p.js = None;
        p.consumers.clear();
        let pause = backoff;
        backoff = (backoff * 2).min(Duration::from_millis(p.s.retry_max_ms));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => break,
        }
    }
    // A graceful stop waits for the rounds in flight (each within its ack timeout) and stores
    // what was acknowledged, so nothing is published twice.
    if let Err(error) = p.settle_all().await {
        tracing::warn!(%error, "rounds in flight at shutdown were not acknowledged; the next start publishes them again");
    }
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
    /// Made at the first step, kept for the whole run (see [`connect`]).
    client: Option<async_nats::Client>,
    /// Made again on the client after a stream could not be created.
    js: Option<async_nats::jetstream::Context>,
    /// Loaded from the journal at the first step.
    cursor: Option<Cursor>,
    /// Subscribed to the bus, and caught up with the log when subscribing.
    live: Option<BusReceiver>,
    /// Rounds from the bus published and not yet acknowledged, oldest first (at most
    /// `rounds_in_flight`); the cursor moves past a round when its PubAcks and those of every
    /// round before it are in.
    in_flight: VecDeque<Round>,
    /// The messages of the rounds in flight (at most `acks_in_flight_max`, unless a lone round
    /// larger than that is out, in parts).
    in_flight_messages: usize,
    /// With `nats.warehouse_consumers`: the warehouses whose durable consumer was created or
    /// checked since the JetStream context was made, or whose last attempt failed.
    consumers: HashMap<String, ConsumerState>,
}

/// Where a warehouse's durable consumer stands.
#[derive(Debug, Clone, Copy)]
enum ConsumerState {
    Ready,
    /// The last attempt failed then; the next comes `retry_max_ms` later.
    FailedAt(Instant),
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
            let client = match &self.client {
                Some(c) => c.clone(),
                None => self.client.insert(connect(&self.s).await?).clone(),
            };
            self.js = Some(jetstream(client, &self.s).await?);
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
        // The rounds a dropped subscription left in flight are sound: wait for their PubAcks
        // (dropping them would keep their place in the client taken for up to the ack timeout
        // and publish them again).
        self.settle_all().await?;
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
        let acks = self.send(&events).await?;
        acks.await?;
        record_lags(&events);
        self.advance(last).await
    }

    /// One move with the bus: takes what it hands on (at most `batch_max` events) and
    /// publishes it as a round while fewer than `rounds_in_flight` wait for their PubAcks, or
    /// moves the cursor past the oldest round once its PubAcks are in; waits at most
    /// `poll_ms` for either. A subscription that fell behind the bus is dropped: the next step
    /// catches up from the log.
    async fn follow(
        &mut self,
        mut live: BusReceiver,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, PublishError> {
        // Nothing waiting and nothing in flight: every event up to the bus's position was
        // published (the position is read first, and moves only after its events were sent).
        let position = self.bus.position();
        if live.is_empty() && self.in_flight.is_empty() {
            self.advance(position).await?;
        }
        let room = self.in_flight.len() < self.s.rounds_in_flight
            && self.in_flight_messages < self.s.acks_in_flight_max;
        let poll = Duration::from_millis(self.s.poll_ms);
        let oldest = self.in_flight.front_mut().map(|r| r.acks.as_mut());
        let first = tokio::select! {
            ev = live.recv(), if room => ev,
            acked = async { oldest.expect("guarded").await }, if oldest.is_some() => {
                acked?;
                self.acknowledged().await?;
                self.live = Some(live);
                return Ok(true);
            }
            _ = tokio::time::sleep(poll) => {
                self.live = Some(live);
                return Ok(true);
            }
            _ = stop.changed() => return Ok(false),
        };
        let published = self.in_flight.back().map_or(self.at(), Round::last);
        let (got, behind) = events::take_waiting(&mut live, first, self.s.batch_max, published);
        if !got.is_empty() {
            let messages = message_count(&got);
            // Older rounds settle first while this one would take the client above its bound,
            // and while one has an event of an order this one has (one event of an order
            // waits for its PubAck at a time, see `waves`).
            let orders: std::collections::HashSet<&OrderId> =
                got.iter().map(|ev| &ev.order).collect();
            while self.in_flight.iter().any(|r| r.has_any(&orders))
                || (!self.in_flight.is_empty()
                    && self.in_flight_messages + messages > self.s.acks_in_flight_max)
            {
                self.settle_oldest().await?;
            }
            let acks = self.send(&got).await?;
            self.in_flight_messages += messages;
            self.in_flight.push_back(Round {
                events: got,
                messages,
                acks,
            });
        }
        assert!(
            self.in_flight.len() <= self.s.rounds_in_flight,
            "at most rounds_in_flight rounds wait for PubAcks"
        );
        assert!(
            self.in_flight.len() == 1 || self.in_flight_messages <= self.s.acks_in_flight_max,
            "only a lone round takes more than acks_in_flight_max messages (in parts)"
        );
        if !behind {
            self.live = Some(live);
        }
        Ok(true)
    }

    /// Publishes `events` as one round (see [`send`]), in the room the rounds in flight leave.
    async fn send(&mut self, events: &[Arc<Published>]) -> Result<Acks, PublishError> {
        let Some(js) = &self.js else {
            return Err(PublishError::Connect("not connected".into()));
        };
        if self.s.warehouse_consumers {
            let retry = Duration::from_millis(self.s.retry_max_ms);
            for w in events.iter().flat_map(|ev| &ev.stock_warehouses) {
                let due = match self.consumers.get(w.as_str()) {
                    Some(ConsumerState::Ready) => false,
                    Some(ConsumerState::FailedAt(at)) => at.elapsed() >= retry,
                    None => true,
                };
                if !due {
                    continue;
                }
                // A warehouse without its consumer must not hold up every other event: the
                // failure is logged and counted, the events go to the stream (a consumer made
                // later still delivers what the stream holds), and it is tried again after
                // `retry_max_ms`.
                let state = match warehouse_consumer(js, &self.s.allocations_stream, w.as_str())
                    .await
                {
                    Ok(()) => ConsumerState::Ready,
                    Err(error) => {
                        tracing::error!(%error, warehouse = %w, "the warehouse's NATS consumer is not ready; its events still go to the stream");
                        metrics::counter!(
                            orderd_actors::metric_names::NATS_CONSUMER_FAILURES,
                            "warehouse" => w.to_string()
                        )
                        .increment(1);
                        ConsumerState::FailedAt(Instant::now())
                    }
                };
                self.consumers.insert(w.as_str().to_owned(), state);
            }
        }
        let room = self.s.acks_in_flight_max - self.in_flight_messages;
        send(
            js,
            events,
            Duration::from_millis(self.s.ack_timeout_ms),
            room,
        )
        .await
    }

    /// Waits for the oldest round's PubAcks, then moves the cursor past it.
    async fn settle_oldest(&mut self) -> Result<(), PublishError> {
        let Some(oldest) = self.in_flight.front_mut() else {
            return Ok(());
        };
        (&mut oldest.acks).await?;
        self.acknowledged().await
    }

    /// Waits for the PubAcks of every round in flight, oldest first, moving the cursor past
    /// each; stops at the first that fails.
    async fn settle_all(&mut self) -> Result<(), PublishError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// The oldest round's PubAcks are in: it leaves the rounds in flight, and the cursor moves
    /// past it.
    async fn acknowledged(&mut self) -> Result<(), PublishError> {
        let round = self
            .in_flight
            .pop_front()
            .expect("a round was acknowledged");
        self.in_flight_messages -= round.messages;
        record_lags(&round.events);
        self.advance(round.last()).await
    }

    /// Forgets the rounds in flight: what they held goes out again from the log.
    fn drop_in_flight(&mut self) {
        self.in_flight.clear();
        self.in_flight_messages = 0;
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
            match store_cursor(&self.journal, c.at).await {
                Ok(()) => {
                    c.stored = c.at;
                    c.stored_at = Instant::now();
                }
                // A full commit queue is load, not an outage: the cursor stays in memory and
                // is written at the next move (failing the round would publish it again).
                Err(StorageError::Overloaded) => {
                    tracing::debug!(at = c.at, "the NATS cursor waits for room in the journal")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_actors::events::{LineChanged, OrderChanged};
    use orderd_domain::ids::{AccountId, Sku, WarehouseId};
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

    /// NATS's default `max_payload`.
    const MIB: usize = 1 << 20;

    /// What a message carries: its lines' warehouses (in order) and `data.lines_omitted`.
    type Carried = (Vec<String>, Option<u64>);

    /// What `m` carries, after checking that everything else is `ev`'s.
    fn carried(m: &Outgoing, ev: &Published) -> Carried {
        let mut sent: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let mut whole: serde_json::Value = serde_json::from_slice(&ev.json).unwrap();
        let data = sent["data"].as_object_mut().unwrap();
        let lines = data.remove("lines").unwrap_or_default();
        let omitted = data.remove("lines_omitted").map(|n| n.as_u64().unwrap());
        whole["data"].as_object_mut().unwrap().remove("lines");
        assert_eq!(sent, whole, "{}: everything else is the event's", m.subject);
        let warehouses = lines
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|l| {
                        l["allocations"][0]["warehouse"]
                            .as_str()
                            .unwrap()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default();
        (warehouses, omitted)
    }

    // A round is published in waves with one event of an order each, in log order: a second
    // event of an order starts a new wave, which goes out once the one before is acknowledged.
    #[test]
    fn a_round_goes_out_in_waves_of_one_event_per_order() {
        let of = |seq: u64, order: &str| {
            let mut ev = event(OrderState::Allocated, &["BER"]);
            ev.order = OrderId::parse(order).unwrap();
            Arc::new(Published::of(seq, &ev))
        };
        let round = [
            of(1, "a"),
            of(2, "b"),
            of(3, "a"),
            of(4, "c"),
            of(5, "b"),
            of(6, "b"),
        ];
        let seqs = |waves: Vec<&[Arc<Published>]>| -> Vec<Vec<u64>> {
            waves
                .iter()
                .map(|w| w.iter().map(|ev| ev.seq).collect())
                .collect()
        };
        assert_eq!(seqs(waves(&round)), [vec![1, 2], vec![3, 4, 5], vec![6]]);
        assert_eq!(seqs(waves(&round[..2])), [vec![1, 2]]);
        assert!(waves(&[]).is_empty());
    }

    // An event goes out whole on every subject when the server takes it. One the server would
    // refuse is cut instead of holding every later event up: the order subject gets it without
    // lines, a warehouse its own lines when they fit and none when they do not, each saying
    // how many lines it leaves out.
    #[test]
    fn an_event_too_large_for_the_server_is_cut_per_subject() {
        let ev = Published::of(7, &event(OrderState::Allocated, &["BER", "MUC", "MUC"]));
        let max = ev.json.len() + HEADER_ROOM;
        for max in [MIB, max] {
            let m = messages(&ev, max);
            assert_eq!(m.len(), 3);
            for m in &m {
                assert_eq!(m.payload.as_ref(), ev.json.as_slice(), "{}", m.subject);
            }
        }
        // MUC's two lines do not fit (one byte short), BER's one does.
        let mut head: serde_json::Value = serde_json::from_slice(&ev.json).unwrap();
        let lines = head["data"]["lines"].take();
        head["data"].as_object_mut().unwrap().remove("lines");
        let lines = lines.as_array().unwrap();
        let muc_only = cut(&head, lines, |l| l["allocations"][0]["warehouse"] == "MUC");
        let m = messages(&ev, muc_only.len() + HEADER_ROOM - 1);
        let got: Vec<(&str, Carried)> = m
            .iter()
            .map(|m| (m.subject.as_str(), carried(m, &ev)))
            .collect();
        assert_eq!(
            got,
            [
                ("orderd.orders.ACME%2EDE.o-1.allocated", (vec![], Some(3))),
                ("orderd.allocations.BER.o-1", (vec!["BER".into()], Some(2))),
                ("orderd.allocations.MUC.o-1", (vec![], Some(3))),
            ]
        );
        assert!(m
            .iter()
            .all(|m| fits(m.payload.len(), muc_only.len() + HEADER_ROOM - 1)));
        // With room for MUC's lines, MUC gets them.
        let m = messages(&ev, muc_only.len() + HEADER_ROOM);
        let muc = carried(&m[2], &ev);
        assert_eq!(muc, (vec!["MUC".into(), "MUC".into()], Some(1)));
        assert_eq!(m[2].payload, muc_only);
    }

    // Every change goes to its order subject (dots in ids escaped); stock changes also to each
    // warehouse involved, once, with the same payload and a message id of its own (JetStream
    // would drop a second message of one stream with the same id); other changes to no
    // warehouse.
    #[test]
    fn subjects_of_an_event() {
        let of = |state, warehouses: &[&str]| Published::of(7, &event(state, warehouses));
        let ev = of(OrderState::Allocated, &["MUC", "BER", "MUC"]);
        let m = messages(&ev, MIB);
        let subjects: Vec<&str> = m.iter().map(|o| o.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "orderd.orders.ACME%2EDE.o-1.allocated",
                "orderd.allocations.BER.o-1",
                "orderd.allocations.MUC.o-1"
            ]
        );
        let ids: Vec<&str> = m.iter().map(|o| o.msg_id.as_str()).collect();
        assert_eq!(ids, ["o-1.4", "o-1.4@BER", "o-1.4@MUC"]);
        assert!(m.iter().all(|o| o.payload.as_ref() == ev.json.as_slice()));
        for state in [
            OrderState::Shipped,
            OrderState::Cancelled,
            OrderState::Rejected,
        ] {
            let ev = of(state, &["BER"]);
            assert_eq!(messages(&ev, MIB).len(), 2, "{state:?}");
        }
        for state in [
            OrderState::PendingApproval,
            OrderState::Confirmed,
            OrderState::Draft,
        ] {
            let ev = of(state, &["BER"]);
            assert_eq!(messages(&ev, MIB).len(), 1, "{state:?}");
        }
        // The publisher's count of messages in flight is what `messages` yields.
        let mixed: Vec<Arc<Published>> = [
            of(OrderState::Allocated, &["MUC", "BER", "MUC"]),
            of(OrderState::Shipped, &["BER"]),
            of(OrderState::Confirmed, &["BER"]),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let built: usize = mixed.iter().map(|ev| messages(ev, MIB).len()).sum();
        assert_eq!((built, message_count(&mixed)), (6, 6));
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
            rounds_in_flight: 0,
            acks_in_flight_max: 0,
            ..NatsSettings::default()
        };
        assert_eq!(s.problems().len(), 5, "{:?}", s.problems());
    }
}
