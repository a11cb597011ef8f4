//! The outbox relay of the embedded default: reads committed events from the journal in order,
//! renders them as CloudEvents JSON, hands them to the in-process bus and then removes them. At least once: a crash between the
//! hand-over and the removal delivers the event again, and consumers deduplicate by event id.
//! (The NATS JetStream publisher replaces the in-process bus when `nats_url` is configured.)

use orderd_storage::Journal;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Events handed over per round.
pub const RELAY_BATCH_MAX: usize = 1_000;
/// Events the in-process bus buffers for slow subscribers (they then skip and catch up).
pub const BUS_CAPACITY: usize = 16_384;

#[derive(Clone)]
pub struct Bus(broadcast::Sender<Arc<Vec<u8>>>);

impl Bus {
    pub fn new() -> Bus {
        Bus(broadcast::channel(BUS_CAPACITY).0)
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<u8>>> {
        self.0.subscribe()
    }
}

impl Default for Bus {
    fn default() -> Bus {
        Bus::new()
    }
}

/// Runs until `stop` changes.
pub async fn relay(journal: Journal, bus: Bus, poll: Duration, mut stop: watch::Receiver<bool>) {
    let mut after = 0;
    loop {
        let (j, b) = (journal.clone(), bus.clone());
        let round =
            tokio::task::spawn_blocking(move || -> Result<u64, orderd_storage::StorageError> {
                let events = j.outbox_after(after, RELAY_BATCH_MAX)?;
                let Some(last) = events.last().map(|e| e.seq) else {
                    return Ok(after);
                };
                for e in events {
                    match orderd_actors::events::decode(&e.payload) {
                        // No subscriber is not an error: the change is durable in the audit log.
                        Ok(ev) => {
                            let _ = b.0.send(Arc::new(orderd_actors::events::render(&ev)));
                        }
                        // Only a damaged store gets here; the audit log still has the change.
                        Err(err) => tracing::error!(seq = e.seq, error = %err, "outbox event unreadable; skipped"),
                    }
                }
                j.outbox_remove_through(last)?;
                Ok(last)
            })
            .await;
        match round {
            Ok(Ok(last)) if last > after => {
                after = last;
                continue; // more may be waiting
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "outbox relay failed; retrying"),
            Err(e) => tracing::error!(error = %e, "outbox relay task failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => return,
        }
    }
}
