//! Telling the service manager how orderd is doing, through systemd's notify protocol
//! (`sd_notify`, what `Type=notify` in `ops/systemd/orderd.service` waits for): `READY=1` once
//! every actor is rebuilt and the API listens, `STOPPING=1` when a shutdown starts, and
//! `WATCHDOG=1` pings while the journal is healthy, never after `STOPPING=1` (a ping would arm
//! the watchdog again, and a long shutdown would then be aborted). Outside systemd (no
//! `NOTIFY_SOCKET`) nothing is sent.

use orderd_storage::{Journal, Unhealthy};
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The daemon's side of the protocol; clones share whether it is stopping.
#[derive(Clone)]
pub struct Notifier {
    /// What `STATUS=` says while healthy.
    serving: Arc<str>,
    /// Set by [`Notifier::stopping`]; held while a message goes out, so no ping can follow
    /// `STOPPING=1`.
    stopping: Arc<Mutex<bool>>,
}

impl Notifier {
    /// Start-up is complete: state rebuilt, demo data loaded, the listener bound at `addr`.
    pub fn ready(addr: SocketAddr) -> Notifier {
        let notifier = Notifier {
            serving: format!("serving on {addr}").into(),
            stopping: Arc::default(),
        };
        send(&[NotifyState::Ready, NotifyState::Status(&notifier.serving)]);
        notifier
    }

    /// A shutdown has started (a signal, or a critical task that ended). Also turns the
    /// watchdog off (`WATCHDOG_USEC=0`), as a late ping could otherwise not.
    pub fn stopping(&self) {
        let mut stopping = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
        *stopping = true;
        send(&[
            NotifyState::Stopping,
            NotifyState::WatchdogUsec(0),
            NotifyState::Status("shutting down: draining requests, flushing the journal"),
        ]);
    }

    /// Sends `states` unless stopping; false once stopping.
    fn unless_stopping(&self, states: &[NotifyState]) -> bool {
        let stopping = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
        if !*stopping {
            send(states);
        }
        !*stopping
    }

    /// When systemd asked for a watchdog (`WatchdogSec=`, seen as `WATCHDOG_USEC`), pings it
    /// every half of its timeout for as long as the journal is healthy ([`Journal::health`]).
    /// A group commit stuck past `storage.commit_stall_ms`, or a runtime too wedged to run
    /// this task, stops the pings; systemd then kills orderd (SIGABRT) `WatchdogSec` after the
    /// last one and restarts it. Returns once stopping.
    pub async fn watchdog(self, journal: Journal) {
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
        self.ping_while_healthy(
            every,
            || journal.health(),
            |states| self.unless_stopping(states),
        )
        .await;
    }

    /// The watchdog's loop: every `every`, `send`s a ping if `health` is Ok and otherwise a
    /// status saying why not; returns when `send` reports stopping. Both passed in for tests.
    async fn ping_while_healthy(
        &self,
        every: Duration,
        health: impl Fn() -> Result<(), Unhealthy>,
        send: impl Fn(&[NotifyState]) -> bool,
    ) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut withheld = false;
        loop {
            ticks.tick().await;
            let sent = match health() {
                Ok(()) if withheld => {
                    tracing::warn!("the journal is healthy again: pinging the systemd watchdog");
                    withheld = false;
                    send(&[NotifyState::Watchdog, NotifyState::Status(&self.serving)])
                }
                Ok(()) => send(&[NotifyState::Watchdog]),
                Err(why) => {
                    if !withheld {
                        tracing::error!(%why, "withholding the systemd watchdog ping: systemd will restart orderd if this lasts");
                        withheld = true;
                    }
                    send(&[NotifyState::Status(&format!("unhealthy: {why}"))])
                }
            };
            if !sent {
                return;
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
    use std::sync::atomic::{AtomicBool, Ordering};

    const EVERY: Duration = Duration::from_millis(10);
    const WAIT_MAX: Duration = Duration::from_secs(10);
    const WATCHDOG: &str = "WATCHDOG=1";

    type Sent = Arc<Mutex<Vec<Vec<String>>>>;

    fn pings(sent: &[Vec<String>]) -> usize {
        sent.iter()
            .filter(|m| m.iter().any(|s| s == WATCHDOG))
            .count()
    }

    async fn until(what: &str, sent: &Sent, done: impl Fn(&[Vec<String>]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        while !done(&sent.lock().unwrap()) {
            assert!(tokio::time::Instant::now() < deadline, "never {what}");
            tokio::time::sleep(EVERY).await;
        }
    }

    // Pings go out while the journal is healthy; while it is not, only a status saying why (so
    // systemd's timer runs out); once it is healthy again, pings and the serving status resume.
    // Once stopping, the loop ends and sends nothing more.
    #[tokio::test]
    async fn the_watchdog_is_pinged_only_while_the_journal_is_healthy() {
        let notifier = Notifier {
            serving: "serving on test".into(),
            stopping: Arc::default(),
        };
        let stalled = Arc::new(AtomicBool::new(false));
        let sent: Sent = Arc::default();
        let (n, st, s) = (notifier.clone(), stalled.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let health = || match st.load(Ordering::SeqCst) {
                true => Err(Unhealthy::Stalled {
                    running: Duration::from_secs(11),
                    limit: Duration::from_secs(10),
                }),
                false => Ok(()),
            };
            n.ping_while_healthy(EVERY, health, |states| {
                let stopping = *n.stopping.lock().unwrap();
                if !stopping {
                    s.lock()
                        .unwrap()
                        .push(states.iter().map(|st| st.to_string()).collect());
                }
                !stopping
            })
            .await;
        });
        until("pinged", &sent, |m| m.len() >= 3).await;
        assert!(sent.lock().unwrap().iter().all(|m| m == &[WATCHDOG]));

        stalled.store(true, Ordering::SeqCst);
        let says_why = "STATUS=unhealthy: a group commit has been running for 11s";
        until("reported the stall", &sent, |m| {
            m.iter().any(|m| m[0].starts_with(says_why))
        })
        .await;
        let while_stalled = pings(&sent.lock().unwrap());
        tokio::time::sleep(EVERY * 10).await;
        assert_eq!(
            pings(&sent.lock().unwrap()),
            while_stalled,
            "pinged while stalled"
        );

        stalled.store(false, Ordering::SeqCst);
        until("pinged again", &sent, |m| pings(m) > while_stalled).await;
        let resumed = sent.lock().unwrap().iter().find(|m| m.len() == 2).cloned();
        assert_eq!(
            resumed,
            Some(vec![
                WATCHDOG.to_owned(),
                "STATUS=serving on test".to_owned()
            ])
        );

        *notifier.stopping.lock().unwrap() = true;
        tokio::time::timeout(WAIT_MAX, task)
            .await
            .expect("ends once stopping")
            .expect("no panic");
    }
}
