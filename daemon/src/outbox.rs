//! The outbox relay to the in-process event bus, which feeds the portal's server-sent-event
//! streams, the webhook endpoints and the NATS publisher once they have caught up. The audit log is the outbox: every
//! order change's audit record carries its event. The relay reads the log in order from its
//! cursor, renders each event that someone listens to as CloudEvents JSON and hands it to the
//! bus. Nothing is deleted: the events stay in the audit log, where a reader that fell behind
//! (or reconnects) finds them again.
//!
//! What the relay skips (nobody listening to it) is always at or below the head a later
//! subscriber sees once subscribed, and that subscriber reads up to that head from the log
//! itself: so the relay reads the head (or the records) *before* it looks for subscribers.
//!
//! The in-process bus has no subscriber that outlives the process, so the cursor starts at the
//! head of the log and is not stored. (The NATS JetStream publisher keeps a durable cursor.)
//!
//! The relay never waits for anything outside the process, so it never has a reason to stay
//! behind the durable head for long. [`watch_relay`] checks that from outside: a relay that stalls
//! (a sled read that hangs, an error on every retry) stops the daemon like a relay that died.

use orderd_actors::events::{self, EventBus, OutboxReaders, Published};
use orderd_storage::{Batch, Journal, StorageError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Audit records read per round.
pub const RELAY_BATCH_MAX: usize = 1_000;
/// The relay's name among the outbox readers (`events::OUTBOX_READERS`).
const READER: &str = "bus";

/// Where the relay starts: the audit head now, which the bus takes as handed on. Called before
/// the first subscription, so that a subscriber's own catch-up from the log (up to the head it
/// sees after subscribing) and the relay's sends leave no gap.
pub fn start(journal: &Journal, bus: &EventBus) -> u64 {
    let head = journal.audit_head().seq;
    bus.advance(head);
    head
}

/// Sets every stored reader cursor beyond the audit head back to the head, at start before any
/// reader runs; the keys it set back. Records past a cursor can only be missing after the
/// log's tail was lost (a damaged or restored-by-hand store: the cursors are written through
/// the same journal, after the records they pass). Left alone, the NATS publisher and each
/// webhook endpoint would take the new records written at the reused seqs as sent and skip
/// their events. Logged as an error: check the log (`orderd audit verify --expect-head`).
pub async fn rewind_cursors_past_head(journal: &Journal) -> Result<Vec<String>, StorageError> {
    let head = journal.audit_head().seq;
    let j = journal.clone();
    let beyond = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
        let mut stored = j.scan_prefix(orderd_actors::webhooks::CURSOR.as_bytes())?;
        let nats = crate::publisher::CURSOR_KEY;
        stored.extend(j.get(nats)?.map(|v| (nats.to_vec(), v)));
        let mut beyond = vec![];
        for (k, v) in stored {
            match Journal::decode_u64(&k, &v) {
                Ok(at) if at > head => beyond.push((k, at)),
                Ok(_) => {}
                // Its reader meets the same error and reports it; the others start.
                Err(error) => {
                    tracing::error!(key = %String::from_utf8_lossy(&k), %error, "a reader's cursor does not decode; left as it is");
                }
            }
        }
        Ok(beyond)
    })
    .await
    .map_err(|e| StorageError::Invalid {
        reason: e.to_string(),
    })??;
    if beyond.is_empty() {
        return Ok(vec![]);
    }
    let mut batch = Batch::default();
    let mut named = vec![];
    for (k, at) in beyond {
        let key = String::from_utf8_lossy(&k).into_owned();
        tracing::error!(key = %key, cursor = at, audit_head = head, "a reader's cursor is beyond the audit log's head (its tail is missing); set back to the head");
        batch.put(k, head.to_be_bytes().to_vec());
        named.push(key);
    }
    journal.submit(batch).await?;
    Ok(named)
}

/// With nobody subscribed there is nothing to hand on: the head to move the cursor to without
/// reading (taken before looking for subscribers, see the module doc). `None`: someone listens.
fn skip_unheard(journal: &Journal, bus: &EventBus, after: u64) -> Option<u64> {
    let head = journal.audit_head().seq.max(after);
    if bus.has_subscribers() {
        return None;
    }
    bus.advance(head);
    Some(head)
}

/// Hands on every event committed after `after` (an audit seq); returns the seq to continue
/// from. Only durable records go out (up to the head of the last flush): a record sled has
/// applied but not yet flushed could still vanish in a crash. With nobody subscribed there is
/// nothing to hand on, and the cursor moves to the head without reading. Blocking (reads sled).
pub fn relay_round(
    journal: &Journal,
    bus: &EventBus,
    after: u64,
) -> Result<u64, orderd_storage::StorageError> {
    if let Some(head) = skip_unheard(journal, bus, after) {
        return Ok(head);
    }
    let records = journal.durable_audit_after(after, RELAY_BATCH_MAX)?;
    let Some(last) = records.last().map(|r| r.seq) else {
        return Ok(after);
    };
    for r in records {
        if let Some(ev) = events::event_or_skip(&r) {
            // Rendered only for an account someone listens to.
            if bus.wants(&ev.account) {
                bus.send(Published::of(r.seq, &ev));
            }
        }
    }
    bus.advance(last);
    Ok(last)
}

/// Runs until `stop` changes, starting after log seq `after`, which the caller takes from the
/// audit head (with [`start`]) before anyone subscribes to `bus`. Between rounds it waits for
/// the next flush that makes audit records durable (at most `poll`), and tells `readers` where
/// it is (reader `bus`).
pub async fn relay(
    journal: Journal,
    bus: EventBus,
    mut after: u64,
    readers: OutboxReaders,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = journal.durable_changes();
    loop {
        readers.set(READER, "", after);
        // What is durable now, marked as seen before reading: a flush after this point ends
        // the wait below.
        let durable = *changes.borrow_and_update();
        // Nothing to hand on: skipping the records here saves a trip to the blocking pool (a
        // thread wake-up) per group commit.
        let skipped = (after < durable)
            .then(|| skip_unheard(&journal, &bus, after))
            .flatten();
        if let Some(head) = skipped {
            after = head;
        } else if after < durable {
            let (j, b) = (journal.clone(), bus.clone());
            let round = tokio::select! {
                round = tokio::task::spawn_blocking(move || relay_round(&j, &b, after)) => round,
                // A round that hangs (see `watch_relay`) must not hold the shutdown up.
                _ = stop.changed() => return,
            };
            let error = match round {
                Ok(Ok(last)) => {
                    after = after.max(last);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = error {
                tracing::error!(%error, "outbox relay failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(poll) => continue,
                    _ = stop.changed() => return,
                }
            }
            if after < durable {
                continue; // a round reads at most RELAY_BATCH_MAX records
            }
        }
        // Where it is before it waits: a watch must not take an idle relay for a stalled one.
        readers.set(READER, "", after);
        if !events::wait_for_durable(&mut changes, poll, &mut stop).await {
            return;
        }
    }
}

/// How often [`watch_relay`] looks at the relay's cursor.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// One reader's progress as seen from outside.
#[derive(Debug)]
struct Progress {
    at: u64,
    /// Since when the reader has been at `at` while behind.
    since: Instant,
    last_look: Instant,
}

impl Progress {
    fn new(at: u64, now: Instant) -> Progress {
        Progress {
            at,
            since: now,
            last_look: now,
        }
    }

    /// Notes that the reader is `at` while the head is `head`, and returns for how long it has
    /// been behind without moving. A reader that moved or is caught up starts the clock again,
    /// and so does a look more than two intervals after the one before: the process did not
    /// run in between (paused, frozen), so neither could the reader.
    fn observe(&mut self, now: Instant, at: u64, head: u64) -> Duration {
        let gap = now.duration_since(self.last_look);
        self.last_look = now;
        if at != self.at || at >= head || gap > 2 * WATCH_INTERVAL {
            self.at = at;
            self.since = now;
        }
        now.duration_since(self.since)
    }
}

/// Runs until `stop` changes, or returns early (which stops the daemon, see `critical`) once
/// the relay has stayed behind the durable audit head without moving for `limit`.
pub async fn watch_relay(
    journal: Journal,
    readers: OutboxReaders,
    limit: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut progress: Option<Progress> = None;
    let mut every = tokio::time::interval(WATCH_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        // The relay registers its cursor once it runs.
        let Some(at) = readers.position(READER, "") else {
            continue;
        };
        let head = journal.audit_head().seq;
        let now = Instant::now();
        let behind = progress
            .get_or_insert_with(|| Progress::new(at, now))
            .observe(now, at, head);
        if behind >= limit {
            tracing::error!(
                relay_at = at,
                durable_head = head,
                unmoved_s = behind.as_secs_f64(),
                "the outbox relay has not moved while behind the audit log; stopping orderd"
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_actors::audit::{AuditEntry, Caller};
    use orderd_actors::events::OrderChanged;
    use orderd_domain::ids::{AccountId, OrderId};
    use orderd_domain::money::{Currency, Money};
    use orderd_domain::order::OrderState;
    use orderd_storage::JournalConfig;

    fn entry(event: Option<(&str, u32)>) -> Batch {
        let mut e = AuditEntry::new(&Caller::system(), None, "test", b"");
        e.event = event.map(|(order, sequence)| OrderChanged {
            account: AccountId::parse("ACME").unwrap(),
            order: OrderId::parse(order).unwrap(),
            state: OrderState::Confirmed,
            sequence,
            transitions: vec!["confirmed".into()],
            time: "2026-11-22T10:00:00Z".into(),
            total: Money::zero(Currency::parse("EUR").unwrap()),
            lines: vec![],
        });
        let mut b = Batch::default();
        b.audit.push(e.draft(event.map_or("other", |(o, _)| o)));
        b
    }

    // Cursors beyond the audit head (its tail lost) are set back to it; those at or below it,
    // and the relay's (never stored), are left alone.
    #[tokio::test]
    async fn cursors_past_the_head_are_set_back() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        for _ in 0..3 {
            journal.submit(entry(None)).await.unwrap();
        }
        let head = journal.audit_head().seq;
        assert_eq!(head, 3);
        let mut batch = Batch::default();
        let hook = |id: &str| format!("{}{id}", orderd_actors::webhooks::CURSOR);
        batch.put(crate::publisher::CURSOR_KEY, 9u64.to_be_bytes().to_vec());
        batch.put(hook("wh_ahead"), 7u64.to_be_bytes().to_vec());
        batch.put(hook("wh_behind"), 2u64.to_be_bytes().to_vec());
        journal.submit(batch).await.unwrap();
        let mut named = rewind_cursors_past_head(&journal).await.unwrap();
        named.sort();
        assert_eq!(named, [hook("wh_ahead"), "meta/nats_published".to_owned()]);
        let at = |k: &str| journal.get_u64(k.as_bytes()).unwrap();
        assert_eq!(at("meta/nats_published"), Some(3));
        assert_eq!(at(&hook("wh_ahead")), Some(3));
        assert_eq!(at(&hook("wh_behind")), Some(2));
        assert!(rewind_cursors_past_head(&journal).await.unwrap().is_empty());
    }

    // Events go out in log order, records without one are passed over, and the next round
    // continues after the last record read.
    #[tokio::test]
    async fn relays_events_in_log_order_from_the_cursor() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        for batch in [
            entry(Some(("o-1", 1))),
            entry(None),
            entry(Some(("o-1", 2))),
        ] {
            journal.submit(batch).await.unwrap();
        }
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        assert_eq!(relay_round(&journal, &bus, 0).unwrap(), 3);
        assert!(journal.audit_head().seq >= 3, "relayed records are durable");
        let ids: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|p| {
                assert_eq!(p.account.as_str(), "ACME");
                let v: serde_json::Value = serde_json::from_slice(&p.json).unwrap();
                v["id"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(ids, ["o-1.1", "o-1.2"]);
        assert_eq!(relay_round(&journal, &bus, 3).unwrap(), 3);
        journal.submit(entry(Some(("o-2", 1)))).await.unwrap();
        assert_eq!(relay_round(&journal, &bus, 3).unwrap(), 4);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        // Nobody listening: the cursor jumps to the head and nothing is read.
        drop(rx);
        journal.submit(entry(Some(("o-3", 1)))).await.unwrap();
        assert_eq!(relay_round(&journal, &bus, 4).unwrap(), 5);
    }

    // A reader counts as unmoved only while it is behind, does not move, and the watch looked
    // at it at every interval.
    #[test]
    fn a_reader_is_unmoved_only_while_behind() {
        let i = WATCH_INTERVAL;
        let t0 = Instant::now();
        let mut p = Progress::new(5, t0);
        assert_eq!(p.observe(t0 + i, 5, 8), i, "behind and unmoved");
        assert_eq!(p.observe(t0 + i * 2, 5, 8), i * 2);
        assert_eq!(p.observe(t0 + i * 3, 6, 8), Duration::ZERO, "it moved");
        assert_eq!(p.observe(t0 + i * 4, 6, 8), i);
        assert_eq!(p.observe(t0 + i * 5, 8, 8), Duration::ZERO, "caught up");
        assert_eq!(
            p.observe(t0 + i * 6, 8, 8),
            Duration::ZERO,
            "idle at the head"
        );
        assert_eq!(
            p.observe(t0 + i * 7, 8, 9),
            i,
            "behind since the look before"
        );
        assert_eq!(
            p.observe(t0 + i * 10, 8, 9),
            Duration::ZERO,
            "no look for three intervals: the process was paused, not the reader"
        );
        assert_eq!(p.observe(t0 + i * 11, 8, 9), i);
    }

    // The watch ends (stopping the daemon) when the relay stays behind, runs on while it is
    // caught up, and ends when asked to stop.
    #[tokio::test]
    async fn the_watch_ends_when_the_relay_stays_behind() {
        let journal = Journal::temporary(&JournalConfig::default()).unwrap();
        journal.submit(entry(Some(("o-1", 1)))).await.unwrap();
        let head = journal.audit_head().seq;
        let readers = OutboxReaders::default();
        let limit = Duration::from_millis(300);
        let (stop_tx, stop) = watch::channel(false);

        readers.set(READER, "", head);
        let caught_up = tokio::spawn(watch_relay(
            journal.clone(),
            readers.clone(),
            limit,
            stop.clone(),
        ));
        tokio::time::sleep(limit * 4).await;
        assert!(
            !caught_up.is_finished(),
            "a relay at the head is not stalled"
        );
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), caught_up)
            .await
            .expect("the watch stops when asked")
            .unwrap();

        let (_stop_tx, stop) = watch::channel(false);
        readers.set(READER, "", head - 1);
        tokio::time::timeout(
            Duration::from_secs(5),
            watch_relay(journal, readers, limit, stop),
        )
        .await
        .expect("a relay behind the head that does not move is reported");
    }
}
