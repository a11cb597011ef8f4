//! Background tasks the daemon cannot do its job without: the outbox relay (live portal
//! streams and webhooks), webhook delivery and the NATS publisher. Each runs until the daemon
//! stops. If one ends before that (a panic, or a bug that returns early), events would silently
//! stop flowing while orders are still taken. So the daemon shuts down instead, gracefully, and
//! exits non-zero: its supervisor (systemd) restarts it, and every reader resumes from the
//! audit log, where nothing is lost.
//!
//! Faults without a task of their own (a failed group commit, a warehouse actor lost) stop it
//! the same way, through a watch ([`Critical::on_fault`]).

use std::future::Future;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Spawns critical tasks and reports the first that ends before `stop` is set.
pub struct Critical {
    died_tx: mpsc::UnboundedSender<&'static str>,
    died: mpsc::UnboundedReceiver<&'static str>,
    stop: watch::Receiver<bool>,
}

impl Critical {
    /// Tasks ending after `stop` turns true are stopping as asked.
    pub fn new(stop: watch::Receiver<bool>) -> Critical {
        let (died_tx, died) = mpsc::unbounded_channel();
        Critical {
            died_tx,
            died,
            stop,
        }
    }

    /// Spawns `task` as the critical task `name`.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let watch = Watch {
            name,
            died: self.died_tx.clone(),
            stop: self.stop.clone(),
        };
        tokio::spawn(async move {
            // Dropped when the task returns or unwinds from a panic.
            let _watch = watch;
            task.await;
        })
    }

    /// Spawns the critical task `name` that ends, stopping the daemon, once `fault` resolves
    /// before `stop` (a failed commit, a lost warehouse): a watch over a fault that has no task
    /// of its own.
    pub fn on_fault<F>(&self, name: &'static str, fault: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
    {
        let mut stop = self.stop.clone();
        self.spawn(name, async move {
            tokio::select! {
                _ = fault => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        })
    }

    /// The name of the first critical task that ended before `stop`; pending while all run.
    pub async fn first_ended(&mut self) -> &'static str {
        match self.died.recv().await {
            Some(name) => name,
            // `self` holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }
}

struct Watch {
    name: &'static str,
    died: mpsc::UnboundedSender<&'static str>,
    stop: watch::Receiver<bool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !*self.stop.borrow() {
            tracing::error!(
                task = self.name,
                "a critical background task stopped; shutting orderd down"
            );
            let _ = self.died.send(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reports_a_task_that_panics_or_returns_early_but_not_one_asked_to_stop() {
        let (stop_tx, stop) = watch::channel(false);
        let mut critical = Critical::new(stop.clone());
        let mut stopping = stop.clone();
        let polite = critical.spawn("polite", async move {
            let _ = stopping.changed().await;
        });
        critical.spawn("panics", async { panic!("relay bug") });
        assert_eq!(critical.first_ended().await, "panics");
        critical.spawn("returns", async {});
        assert_eq!(critical.first_ended().await, "returns");
        let (fault_tx, fault) = tokio::sync::oneshot::channel::<()>();
        critical.on_fault("fault", fault);
        let quiet = tokio::time::timeout(Duration::from_millis(50), critical.first_ended()).await;
        assert!(quiet.is_err(), "a fault watch ended before its fault");
        fault_tx.send(()).unwrap();
        assert_eq!(critical.first_ended().await, "fault");
        // A fault watch still waiting when orderd stops ends as asked.
        let (_no_fault, never) = tokio::sync::oneshot::channel::<()>();
        let watching = critical.on_fault("never", never);
        // Nothing else has ended: the polite task is still running.
        let quiet = tokio::time::timeout(Duration::from_millis(50), critical.first_ended()).await;
        assert!(quiet.is_err(), "a running task was reported");
        stop_tx.send(true).unwrap();
        polite.await.unwrap();
        watching.await.unwrap();
        let after_stop =
            tokio::time::timeout(Duration::from_millis(50), critical.first_ended()).await;
        assert!(
            after_stop.is_err(),
            "a task that stopped on request was reported"
        );
    }
}
