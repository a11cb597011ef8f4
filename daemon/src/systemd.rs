//! Telling the service manager how orderd is doing, through systemd's notify protocol
//! (`sd_notify`, what `Type=notify` in `ops/systemd/orderd.service` waits for): `READY=1` once
//! every actor is rebuilt and the API listens, `STOPPING=1` when a shutdown starts, and
//! `WATCHDOG=1` pings while the journal is healthy. Outside systemd (no `NOTIFY_SOCKET`)
//! nothing is sent.

use orderd_storage::Journal;
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// Start-up is complete: state rebuilt, demo data loaded, the listener bound.
pub fn ready(addr: SocketAddr) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving on {addr}")),
    ]);
}

/// A shutdown has started (a signal, or a critical task that ended).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("shutting down: draining requests, flushing the journal"),
    ]);
}

/// When systemd asked for a watchdog (`WatchdogSec=`, seen as `WATCHDOG_USEC`), pings it every
/// half of its timeout for as long as the journal is healthy ([`Journal::health`]). A group
/// commit stuck past `storage.commit_stall_ms`, or a runtime too wedged to run this task, stops
/// the pings, and systemd then kills and restarts orderd. Returns when `stop` turns true.
pub async fn watchdog(journal: Journal, stop: watch::Receiver<bool>) {
    // 0 means no watchdog (and a zero interval would panic).
    let Some(timeout) = sd_notify::watchdog_enabled().filter(|t| !t.is_zero()) else {
        return;
    };
    // Half the timeout, as systemd advises.
    let every = (timeout / 2).max(Duration::from_millis(1));
    tracing::info!(
        timeout_ms = timeout.as_millis(),
        every_ms = every.as_millis(),
        "pinging the systemd watchdog while the journal is healthy"
    );
    ping_while_healthy(&journal, every, stop, send).await;
}

/// The watchdog's loop, with the sending passed in for tests.
async fn ping_while_healthy(
    journal: &Journal,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    send: impl Fn(&[NotifyState]),
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match journal.health() {
            Ok(()) => {
                if withheld {
                    tracing::warn!("the journal is healthy again: pinging the systemd watchdog");
                    withheld = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            Err(why) => {
                if !withheld {
                    tracing::error!(%why, "withholding the systemd watchdog ping: systemd will restart orderd if this lasts");
                    withheld = true;
                }
                send(&[NotifyState::Status(&format!("unhealthy: {why}"))]);
            }
        }
    }
}

fn send(states: &[NotifyState]) {
    // Without NOTIFY_SOCKET this does nothing and succeeds.
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "could not notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orderd_storage::{Batch, JournalConfig};
    use std::sync::{Arc, Mutex};

    const STALL_MS: u64 = 50;
    const EVERY: Duration = Duration::from_millis(10);
    const WAIT_MAX: Duration = Duration::from_secs(10);
    const WATCHDOG: &str = "WATCHDOG=1";

    type Sent = Arc<Mutex<Vec<String>>>;

    fn pings(sent: &[String]) -> usize {
        sent.iter().filter(|m| *m == WATCHDOG).count()
    }

    async fn until(what: &str, sent: &Sent, done: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while !done(&sent.lock().unwrap()) {
            assert!(tokio::time::Instant::now() < deadline, "never {what}");
            tokio::time::sleep(EVERY).await;
        }
    }

    // Pings go out while the journal commits; a group commit stuck past commit_stall_ms stops
    // them (the status says why), and they resume once it completes.
    #[tokio::test]
    async fn the_watchdog_is_pinged_only_while_the_journal_commits() {
        let journal = Journal::temporary(&JournalConfig {
            commit_stall_ms: STALL_MS,
            ..JournalConfig::default()
        })
        .expect("journal");
        let sent: Sent = Arc::default();
        let (stop_tx, stop) = watch::channel(false);
        let (j, s) = (journal.clone(), sent.clone());
        let task = tokio::spawn(async move {
            ping_while_healthy(&j, EVERY, stop, |states| {
                s.lock()
                    .unwrap()
                    .extend(states.iter().map(|st| st.to_string()));
            })
            .await;
        });
        until("pinged", &sent, |m| m.len() >= 3).await;
        assert!(sent.lock().unwrap().iter().all(|m| m == WATCHDOG));

        // Released on every way out, or dropping the journal would wait for the held commit.
        struct Held(Journal);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.hold_commits(false);
            }
        }
        let held = Held(journal.clone());
        journal.hold_commits(true);
        let mut batch = Batch::default();
        batch.put(b"k".to_vec(), b"v".to_vec());
        let ticket = journal.submit(batch);
        until("reported the stall", &sent, |m| {
            m.iter()
                .any(|m| m.starts_with("STATUS=unhealthy: a group commit has been running"))
        })
        .await;
        let while_stuck = pings(&sent.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10 * STALL_MS)).await;
        assert_eq!(
            pings(&sent.lock().unwrap()),
            while_stuck,
            "pinged while the commit was stuck"
        );

        drop(held);
        ticket.await.expect("committed once released");
        until("pinged again", &sent, |m| pings(m) > while_stuck).await;
        stop_tx.send_replace(true);
        tokio::time::timeout(WAIT_MAX, task)
            .await
            .expect("stops when asked")
            .expect("no panic");
    }
}
