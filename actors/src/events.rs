//! The event of every order change.
//!
//! It is stored inside the change's audit record ([`crate::audit::AuditEntry::event`]), so the
//! audit log is the outbox: publishers read it from their own cursor and skip records without
//! an event. It holds what changed and no more ([`OrderChanged`]), because every stored byte is
//! written and flushed on the capture path; [`render`] turns it into a CloudEvents 1.0 JSON
//! document when it is handed on. The event id is `<order>.<sequence>`, where the per-order
//! `sequence` is the order's version, so the same change always renders with the same id and
//! consumers can order and deduplicate by it.

use orderd_domain::ids::{AccountId, OrderId, Sku, WarehouseId};
use orderd_domain::money::Money;
use orderd_domain::order::{Allocation, LineStatus, Order, OrderState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The stored form of an order event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderChanged {
    pub account: AccountId,
    pub order: OrderId,
    /// The state after the change.
    pub state: OrderState,
    /// The order's version after the change: 1 for a new order, +1 per change.
    pub sequence: u32,
    /// Every state the order moved through in this change, in order (empty: no move).
    pub transitions: Vec<String>,
    /// When the change was made (RFC 3339).
    pub time: String,
    pub total: Money,
    pub lines: Vec<LineChanged>,
}

/// A line as an event shows it: what a warehouse or a customer system acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineChanged {
    pub line_no: u32,
    pub sku: Sku,
    pub qty: u32,
    pub status: LineStatus,
    pub line_total: Money,
    pub allocations: Vec<Allocation>,
}

/// The event of a change of `order` (after the change).
pub fn order_event(order: &Order, transitions: &[&'static str]) -> OrderChanged {
    OrderChanged {
        account: order.account.clone(),
        order: order.id.clone(),
        state: order.state,
        sequence: order.version,
        transitions: transitions.iter().map(|t| (*t).to_owned()).collect(),
        time: order.updated_at.clone(),
        total: order.total,
        lines: order
            .lines
            .iter()
            .map(|l| LineChanged {
                line_no: l.line_no,
                sku: l.sku.clone(),
                qty: l.qty,
                status: l.status,
                line_total: l.line_total,
                allocations: l.allocations.clone(),
            })
            .collect(),
    }
}

/// Events the in-process bus buffers per subscriber to every account (an operator's stream);
/// one that falls further behind is told it lagged and catches up from the audit log.
pub const BUS_CAPACITY: usize = 16_384;
/// The same per subscriber to one account (a portal session, a webhook endpoint). One
/// account's share of the events is small, and every account with subscribers holds this many
/// slots.
pub const BUS_ACCOUNT_CAPACITY: usize = 1_024;

/// A durable event as handed on in-process, rendered once for every reader: its log position,
/// its account, order, id and state, the warehouses whose stock it moves, its CloudEvents JSON
/// and when the change was made (for the lag metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub account: AccountId,
    pub order: OrderId,
    /// The event id, `<order>.<sequence>`.
    pub id: String,
    pub state: OrderState,
    /// The warehouses whose stock this change allocates, ships or releases, each once, sorted
    /// (empty for a change that moves no stock).
    pub stock_warehouses: Vec<WarehouseId>,
    pub json: Vec<u8>,
    pub changed_at: Option<SystemTime>,
}

impl Published {
    /// The event stored at log position `seq`.
    pub fn of(seq: u64, event: &OrderChanged) -> Published {
        Published {
            seq,
            account: event.account.clone(),
            order: event.order.clone(),
            id: event_id(event),
            state: event.state,
            stock_warehouses: stock_warehouses(event),
            json: render(event),
            changed_at: changed_at(event),
        }
    }

    /// The CloudEvents `type`: `orderd.order.<state>`.
    pub fn kind(&self) -> String {
        event_type(self.state)
    }
}

/// The warehouses whose stock a change allocates (into `Allocated`), ships or releases
/// (cancelled, rejected), each once, sorted: where a change goes besides its order.
pub fn stock_warehouses(event: &OrderChanged) -> Vec<WarehouseId> {
    let moves_stock = matches!(
        event.state,
        OrderState::Allocated | OrderState::Shipped | OrderState::Cancelled | OrderState::Rejected
    );
    if !moves_stock {
        return Vec::new();
    }
    let mut out: Vec<WarehouseId> = event
        .lines
        .iter()
        .flat_map(|l| l.allocations.iter().map(|a| a.warehouse.clone()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// An event's id: `<order>.<sequence>`, the same wherever it is delivered.
pub fn event_id(event: &OrderChanged) -> String {
    format!("{}.{}", event.order, event.sequence)
}

/// The CloudEvents `type` of an event of an order now in `state`.
pub fn event_type(state: OrderState) -> String {
    format!("orderd.order.{}", state.as_str())
}

/// Where an event has got to, for [`record_lag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagStage {
    /// Acknowledged by NATS JetStream.
    Nats,
    /// Sent on a live server-sent-event stream.
    Sse,
    /// Accepted (2xx) by a webhook receiver.
    Webhook,
}

impl LagStage {
    pub fn as_str(self) -> &'static str {
        match self {
            LagStage::Nats => "nats",
            LagStage::Sse => "sse",
            LagStage::Webhook => "webhook",
        }
    }
}

/// When the change of `event` was made: its `time`, taken just before the change was submitted
/// for its durable commit (`None` for a time that does not parse).
pub fn changed_at(event: &OrderChanged) -> Option<SystemTime> {
    time::OffsetDateTime::parse(&event.time, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Records the event lag of one event at `stage`: now minus the change's time. It includes
/// the durable commit itself (a group flush, a few milliseconds), so it is the lag a consumer
/// sees from the moment the change was made. Replays of old events are not recorded.
pub fn record_lag(stage: LagStage, changed_at: Option<SystemTime>) {
    let Some(lag) = changed_at.and_then(|t| SystemTime::now().duration_since(t).ok()) else {
        return;
    };
    metrics::histogram!(crate::metric_names::EVENT_LAG_SECONDS, "stage" => stage.as_str())
        .record(lag.as_secs_f64());
}

/// The kinds of outbox reader, as the `reader` label of the outbox depth gauge.
pub const OUTBOX_READERS: [&str; 3] = ["nats", "bus", "webhooks"];

/// Where every outbox reader is in the audit log (the last seq it has handed on), so the
/// outbox depth of each kind can be read when metrics are scraped. Webhooks have one reader
/// per endpoint; the kind's depth is the one furthest behind.
#[derive(Debug, Clone, Default)]
pub struct OutboxReaders(Arc<Mutex<BTreeMap<(&'static str, String), u64>>>);

impl OutboxReaders {
    /// `reader` (one of [`OUTBOX_READERS`]), instance `instance`, has read up to `seq`.
    pub fn set(&self, reader: &'static str, instance: &str, seq: u64) {
        debug_assert!(OUTBOX_READERS.contains(&reader), "unknown reader {reader}");
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((reader, instance.to_owned()))
            .or_default() = seq;
    }

    /// Where `reader` instance `instance` has read up to, if it runs.
    pub fn position(&self, reader: &'static str, instance: &str) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(reader, instance.to_owned()))
            .copied()
    }

    /// The instance stopped reading (a deleted or disabled webhook endpoint).
    pub fn remove(&self, reader: &'static str, instance: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(reader, instance.to_owned()));
    }

    /// Per kind of reader, the most records one of its instances has yet to read up to `head`
    /// (0 for a kind with no instance running).
    pub fn depths(&self, head: u64) -> [(&'static str, u64); 3] {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        OUTBOX_READERS.map(|kind| {
            let depth = map
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, at)| head.saturating_sub(*at))
                .max()
                .unwrap_or(0);
            (kind, depth)
        })
    }
}

/// Waits until new audit records are durable, `max` has passed, or `stop` is set (then
/// `false`). Outbox readers call it when a round found nothing, instead of polling.
pub async fn wait_for_durable(
    changes: &mut watch::Receiver<u64>,
    max: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        // A closed journal (the sender gone) only ends the wait by time.
        Ok(()) = changes.changed() => true,
        _ = tokio::time::sleep(max) => true,
        _ = stop.changed() => false,
    }
}

/// A subscription to the bus.
pub type BusReceiver = tokio::sync::broadcast::Receiver<Arc<Published>>;
type BusSender = tokio::sync::broadcast::Sender<Arc<Published>>;

/// What a subscriber takes from the bus in one go: `first` (what `recv` gave it), then what is
/// already waiting, at most `max` events, keeping only those after log seq `after` (the bus may
/// repeat what a catch-up from the log already handed on). `true` with them when the
/// subscriber fell behind the bus or the bus is gone: it must go back to the log.
pub fn take_waiting(
    live: &mut BusReceiver,
    first: Result<Arc<Published>, tokio::sync::broadcast::error::RecvError>,
    max: usize,
    after: u64,
) -> (Vec<Arc<Published>>, bool) {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut behind = first.is_err();
    let mut got: Vec<Arc<Published>> = first.into_iter().collect();
    while !behind && got.len() < max {
        match live.try_recv() {
            Ok(ev) => got.push(ev),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => behind = true,
        }
    }
    got.retain(|ev| ev.seq > after);
    (got, behind)
}

/// The in-process event bus: the outbox relay, the one reader of the log for live delivery,
/// hands on every durable event in log order; server-sent-event streams, webhook endpoints and
/// the NATS publisher subscribe. A subscriber to one account gets only that account's events (one channel per
/// account with subscribers), so the cost of an event does not grow with the subscribers of
/// other accounts.
#[derive(Clone)]
pub struct EventBus(Arc<BusInner>);

struct BusInner {
    all: BusSender,
    accounts: Mutex<Accounts>,
    /// The last seq handed on; stored after the events up to it were sent.
    position: AtomicU64,
    /// True once the daemon shuts down: live streams end (clients reconnect and resume).
    closing: watch::Sender<bool>,
}

/// The channels of the accounts that have (or recently had) subscribers.
struct Accounts {
    channels: HashMap<AccountId, BusSender>,
    /// When channels without receivers were last dropped.
    swept: Instant,
}

/// How often [`EventBus::has_subscribers`] drops the channels of accounts whose subscribers are
/// all gone (`send` drops one as soon as an event of its account comes).
const BUS_SWEEP_EVERY: Duration = Duration::from_secs(1);

impl EventBus {
    pub fn new() -> EventBus {
        EventBus(Arc::new(BusInner {
            all: tokio::sync::broadcast::channel(BUS_CAPACITY).0,
            accounts: Mutex::new(Accounts {
                channels: HashMap::new(),
                swept: Instant::now(),
            }),
            position: AtomicU64::new(0),
            closing: watch::Sender::new(false),
        }))
    }

    /// Tells every live stream to end (at shutdown, so that open streams do not hold it up).
    pub fn close(&self) {
        self.0.closing.send_replace(true);
    }

    /// Resolves once [`EventBus::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.0.closing.subscribe();
        async move {
            let _ = closing.wait_for(|c| *c).await;
        }
    }

    /// Every account's events sent from now on.
    pub fn subscribe(&self) -> BusReceiver {
        self.0.all.subscribe()
    }

    /// The events of `account` sent from now on.
    pub fn subscribe_account(&self, account: &AccountId) -> BusReceiver {
        self.accounts()
            .channels
            .entry(account.clone())
            .or_insert_with(|| tokio::sync::broadcast::channel(BUS_ACCOUNT_CAPACITY).0)
            .subscribe()
    }

    /// Hands `event` to its subscribers (none is fine: the event stays in the audit log).
    /// Events are sent in log order.
    pub fn send(&self, event: Published) {
        let event = Arc::new(event);
        let channels = &mut self.accounts().channels;
        if let Some(tx) = channels.get(&event.account) {
            if tx.receiver_count() == 0 {
                channels.remove(&event.account);
            } else {
                let _ = tx.send(event.clone());
            }
        }
        let _ = self.0.all.send(event);
    }

    /// Whether anyone may listen: a subscriber to every account, or an account channel (one
    /// whose subscribers are all gone counts until it is swept, at most [`BUS_SWEEP_EVERY`]).
    pub fn has_subscribers(&self) -> bool {
        let mut accounts = self.accounts();
        if accounts.swept.elapsed() >= BUS_SWEEP_EVERY {
            accounts.channels.retain(|_, tx| tx.receiver_count() > 0);
            accounts.swept = Instant::now();
        }
        !accounts.channels.is_empty() || self.0.all.receiver_count() > 0
    }

    /// Whether an event of `account` has anyone to go to (so it is worth rendering).
    pub fn wants(&self, account: &AccountId) -> bool {
        self.0.all.receiver_count() > 0 || self.accounts().channels.contains_key(account)
    }

    /// Records that every event up to log seq `seq` was handed on (or had nobody to go to).
    pub fn advance(&self, seq: u64) {
        self.0.position.fetch_max(seq, Ordering::Release);
    }

    /// The last seq handed on. Read before looking at a subscription: when it then holds
    /// nothing, the subscriber has had every event up to this seq.
    pub fn position(&self) -> u64 {
        self.0.position.load(Ordering::Acquire)
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.0
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new()
    }
}

#[derive(Debug, Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: &'static str,
    #[serde(rename = "type")]
    kind: String,
    subject: String,
    time: &'a str,
    datacontenttype: &'static str,
    data: &'a OrderChanged,
}

/// The event an audit record carries, if any. Fails only for a payload that is not an audit
/// entry (a damaged store).
pub fn from_audit(payload: &[u8]) -> Result<Option<OrderChanged>, crate::audit::NotAnEntry> {
    crate::audit::AuditEntry::decode(payload).map(|e| e.event)
}

/// The event a record carries. Every reader of the log hands events on and must not stop for
/// good at a record it cannot read (only a damaged store has one; `orderd audit verify` names
/// it): such a record is logged and passed over, alike by the relay, the NATS publisher,
/// webhook catch-up and `GET /v1/events`.
pub fn event_or_skip(record: &orderd_storage::AuditRecord) -> Option<OrderChanged> {
    from_audit(&record.payload).unwrap_or_else(|error| {
        tracing::error!(seq = record.seq, %error, "audit record unreadable; its event is skipped");
        None
    })
}

/// Durable events read from the audit log: `(log seq, event)` oldest first, and the seq to
/// continue after (the last record read, whether it had an event for the caller or not).
#[derive(Debug, Default)]
pub struct EventsRead {
    pub events: Vec<(u64, OrderChanged)>,
    pub next: u64,
}

/// Up to `limit` durable events of `account` (every account when `None`) after log seq `after`,
/// reading at most `scan_max` records. Durable: nothing past the head of the last group flush,
/// which a crash could still take back. A record that cannot be read is passed over
/// ([`event_or_skip`]). Blocking (reads sled).
pub fn read_after(
    journal: &orderd_storage::Journal,
    after: u64,
    account: Option<&AccountId>,
    limit: usize,
    scan_max: usize,
) -> Result<EventsRead, orderd_storage::StorageError> {
    let mut out = EventsRead {
        events: vec![],
        next: after,
    };
    // Read one record at a time: a page that fills early reads no further.
    for r in journal.durable_audit_iter(after).take(scan_max) {
        let r = r?;
        out.next = r.seq;
        let event = event_or_skip(&r);
        if let Some(ev) = event.filter(|ev| account.is_none_or(|a| *a == ev.account)) {
            out.events.push((r.seq, ev));
            if out.events.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The CloudEvents 1.0 JSON document of a stored event.
pub fn render(event: &OrderChanged) -> Vec<u8> {
    let ev = CloudEvent {
        specversion: "1.0",
        id: event_id(event),
        source: "orderd",
        kind: event_type(event.state),
        subject: format!("orders/{}/{}", event.account, event.order),
        time: &event.time,
        datacontenttype: "application/json",
        data: event,
    };
    serde_json::to_vec(&ev).expect("plain data always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event of order o-1 of ACME, allocated through confirmed, with no lines and a zero
    /// total: tests change what they look at.
    fn allocated(sequence: u32) -> OrderChanged {
        OrderChanged {
            account: AccountId::parse("ACME").unwrap(),
            order: OrderId::parse("o-1").unwrap(),
            state: OrderState::Allocated,
            sequence,
            transitions: vec!["confirmed".into(), "allocated".into()],
            time: "2026-11-22T10:00:00Z".into(),
            total: Money::zero(orderd_domain::money::Currency::parse("EUR").unwrap()),
            lines: vec![],
        }
    }

    // The bus hands an event to its account's subscribers and to those of every account, in
    // the order sent; it forgets an account whose subscribers are gone, tells a subscriber that
    // fell behind, and its position says what was handed on.
    #[test]
    fn bus_routes_by_account() {
        use tokio::sync::broadcast::error::TryRecvError;
        let of = |account: &str, seq: u64| {
            let mut ev = allocated(1);
            ev.account = AccountId::parse(account).unwrap();
            Published::of(seq, &ev)
        };
        let bus = EventBus::new();
        assert!(!bus.has_subscribers());
        let acme = AccountId::parse("ACME").unwrap();
        let (mut a1, mut a2) = (bus.subscribe_account(&acme), bus.subscribe_account(&acme));
        let globex = bus.subscribe_account(&AccountId::parse("GLOBEX").unwrap());
        let mut all = bus.subscribe();
        for (account, seq) in [("ACME", 1), ("GLOBEX", 2), ("INITECH", 3), ("ACME", 4)] {
            bus.send(of(account, seq));
        }
        bus.advance(4);
        assert_eq!(bus.position(), 4);
        let seqs = |rx: &mut BusReceiver| -> Vec<u64> {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|p| p.seq)
                .collect()
        };
        assert_eq!(seqs(&mut a1), [1, 4]);
        assert_eq!(seqs(&mut a2), [1, 4]);
        assert_eq!(seqs(&mut all), [1, 2, 3, 4]);
        drop((globex, all));
        assert!(bus.wants(&acme));
        assert!(
            !bus.wants(&AccountId::parse("INITECH").unwrap()),
            "worth no rendering"
        );
        bus.send(of("GLOBEX", 5));
        assert_eq!(
            bus.accounts().channels.len(),
            1,
            "GLOBEX has no subscriber any more"
        );

        for seq in 0..=BUS_ACCOUNT_CAPACITY as u64 {
            bus.send(of("ACME", 10 + seq));
        }
        assert_eq!(a1.try_recv().unwrap_err(), TryRecvError::Lagged(1));
        drop((a1, a2));
        bus.accounts().swept = Instant::now();
        assert!(bus.has_subscribers(), "until the next sweep");
        bus.accounts().swept -= BUS_SWEEP_EVERY;
        assert!(!bus.has_subscribers());
    }

    // A subscriber takes the first event and what is waiting, at most `max`, without what a
    // catch-up already handed on; a subscriber that fell behind is told so, with what it got.
    #[tokio::test]
    async fn take_waiting_drains_up_to_max_and_reports_lag() {
        let bus = EventBus::new();
        let mut live = bus.subscribe();
        for seq in 1..=5 {
            bus.send(Published::of(seq, &allocated(1)));
        }
        let first = live.recv().await;
        let (got, behind) = take_waiting(&mut live, first, 3, 1);
        let seqs: Vec<u64> = got.iter().map(|p| p.seq).collect();
        assert_eq!(
            (seqs, behind),
            (vec![2, 3], false),
            "3 taken, seq 1 dropped"
        );
        let first = live.recv().await;
        let (got, behind) = take_waiting(&mut live, first, 10, 1);
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(!behind);

        for seq in 0..=BUS_CAPACITY as u64 {
            bus.send(Published::of(10 + seq, &allocated(1)));
        }
        let first = live.recv().await;
        let (got, behind) = take_waiting(&mut live, first, 10, 0);
        assert!(got.is_empty() && behind, "fell behind the bus");
    }

    // A record no reader can decode (a damaged store) is passed over, not a wall: the events on
    // either side of it are read, and reading goes on after it.
    #[tokio::test]
    async fn read_after_passes_over_an_unreadable_record() {
        let journal = orderd_storage::Journal::temporary(&Default::default()).unwrap();
        let acme = AccountId::parse("ACME").unwrap();
        let entry = |ev: OrderChanged| {
            let mut entry = crate::audit::AuditEntry::new(
                &crate::audit::Caller::system(),
                Some(&acme),
                "order.test",
                b"",
            );
            entry.event = Some(ev);
            entry.draft("o-1")
        };
        let damaged = orderd_storage::AuditDraft {
            subject: b"o-1".to_vec(),
            payload: b"not an entry".to_vec(),
            indexed: false,
        };
        for draft in [entry(allocated(1)), damaged, entry(allocated(2))] {
            let mut batch = orderd_storage::Batch::default();
            batch.audit.push(draft);
            journal.submit(batch).await.unwrap();
        }
        let read = read_after(&journal, 0, Some(&acme), 10, 10).unwrap();
        let got: Vec<(u64, u32)> = read
            .events
            .iter()
            .map(|(s, ev)| (*s, ev.sequence))
            .collect();
        assert_eq!((got, read.next), (vec![(1, 1), (3, 2)], 3));
        let read = read_after(&journal, 1, None, 10, 1).unwrap();
        assert!(read.events.is_empty());
        assert_eq!(
            read.next, 2,
            "the next read starts after the damaged record"
        );
    }

    // Each kind of reader reports its furthest-behind instance; a kind with none reports 0, and
    // a removed instance no longer counts.
    #[test]
    fn outbox_depth_per_reader_kind() {
        let readers = OutboxReaders::default();
        readers.set("nats", "", 90);
        readers.set("webhooks", "ep_a", 95);
        readers.set("webhooks", "ep_b", 40);
        assert_eq!(
            readers.depths(100),
            [("nats", 10), ("bus", 0), ("webhooks", 60)]
        );
        readers.remove("webhooks", "ep_b");
        readers.set("nats", "", 100);
        assert_eq!(
            readers.depths(100),
            [("nats", 0), ("bus", 0), ("webhooks", 5)]
        );
    }

    // The lag is measured from the change's RFC 3339 time; a time that does not parse has none.
    #[test]
    fn change_time_of_an_event() {
        let mut ev = OrderChanged {
            time: "2026-11-22T10:00:00.250Z".into(),
            ..allocated(1)
        };
        let t = changed_at(&ev).expect("parses");
        let unix = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(unix.as_millis(), 1_795_341_600_250);
        ev.time = "yesterday".into();
        assert_eq!(changed_at(&ev), None);
    }

    // The event travels inside the audit entry and renders with every field of the change; the
    // id is stable for the same change; an entry without an event has none.
    #[test]
    fn stored_event_renders_as_cloudevent() {
        let ev = allocated(3);
        let mut entry = crate::audit::AuditEntry::new(
            &crate::audit::Caller::system(),
            None,
            "order.place",
            b"",
        );
        entry.event = Some(ev.clone());
        let back = from_audit(&entry.draft("o-1").payload).unwrap().unwrap();
        assert_eq!(back, ev);
        entry.event = None;
        assert_eq!(from_audit(&entry.draft("o-1").payload).unwrap(), None);
        assert!(from_audit(b"not json").is_err());
        // Journals written before the compact payloads hold JSON: still read.
        entry.event = Some(ev.clone());
        let json_payload = serde_json::to_vec(&entry).unwrap();
        assert_eq!(from_audit(&json_payload).unwrap(), Some(ev.clone()));
        let json: serde_json::Value = serde_json::from_slice(&render(&back)).unwrap();
        assert_eq!(json["id"], "o-1.3");
        assert_eq!(json["type"], "orderd.order.allocated");
        assert_eq!(json["subject"], "orders/ACME/o-1");
        assert_eq!(json["data"]["sequence"], 3);
        assert_eq!(json["data"]["transitions"][1], "allocated");
        assert_eq!(render(&back), render(&ev));
    }

    // The stored payload of an order's change is compact: an event with ten allocated lines
    // takes well under half the bytes of the same entry in JSON, and reads back unchanged.
    #[test]
    fn compact_payload_is_small() {
        let eur = orderd_domain::money::Currency::parse("EUR").unwrap();
        let line = |n: u32| LineChanged {
            line_no: n,
            sku: Sku::parse(&format!("SKU-{n:05}")).unwrap(),
            qty: 12,
            status: LineStatus::Open,
            line_total: Money::parse("1234.56", eur, 2).unwrap(),
            allocations: vec![Allocation {
                warehouse: orderd_domain::ids::WarehouseId::parse("WH-NORTH").unwrap(),
                qty: 12,
                shipped: false,
            }],
        };
        let mut entry = crate::audit::AuditEntry::new(
            &crate::audit::Caller::system(),
            Some(&AccountId::parse("ACME").unwrap()),
            "order.place",
            b"the order record",
        );
        entry.event = Some(OrderChanged {
            total: Money::parse("12345.60", eur, 2).unwrap(),
            lines: (1..=10).map(line).collect(),
            ..allocated(1)
        });
        let compact = entry.draft("o-1").payload;
        let json = serde_json::to_vec(&entry).unwrap();
        assert!(
            compact.len() * 2 < json.len(),
            "compact {} B, JSON {} B",
            compact.len(),
            json.len()
        );
        assert_eq!(crate::audit::AuditEntry::decode(&compact).unwrap(), entry);
    }
}
