//! The orderd daemon: configuration, startup wiring (journal -> engine -> API), the outbox relay,
//! the development sign-in key, demo data, and graceful shutdown. `main.rs` only parses the
//! command line, sets up logging and signals, and calls into here.
//!
//! May depend on every other crate of the workspace; nothing depends on it.

pub mod config;
pub mod critical;
pub mod demo;
pub mod http;
pub mod outbox;
pub mod publisher;
pub mod systemd;
pub mod webhooks;

use anyhow::Context;
use config::Config;
use orderd_actors::Engine;
use orderd_api::auth::Authenticator;
use orderd_api::oidc::Oidc;
use orderd_api::ApiState;
use orderd_storage::{Journal, StorageError};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Length of the development signing key.
pub const DEV_KEY_LEN: usize = 32;

/// Opens the journal under `data_dir/journal`.
pub fn open_journal(config: &Config) -> anyhow::Result<Journal> {
    let dir = config.data_dir.join("journal");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Journal::open(&dir, &config.storage.journal())
        .with_context(|| format!("opening the journal at {}", dir.display()))
}

/// Starts the engine on the journal, loading demo data into an empty store when configured.
pub async fn start_engine(config: &Config, journal: Journal) -> anyhow::Result<Engine> {
    let engine = Engine::start(journal, config.limits.clone())
        .await
        .context("rebuilding state from the journal")?;
    if config.demo_data {
        demo::load_if_wanted(&engine)
            .await
            .context("loading demo data")?;
    }
    Ok(engine)
}

/// Serves until `shutdown` resolves, then drains requests, flushes and closes the journal.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Before anything records a metric, so nothing misses the recorder.
    let telemetry = orderd_api::telemetry::global();
    let upkeep = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(
            orderd_api::telemetry::UPKEEP_INTERVAL_MS,
        ));
        loop {
            every.tick().await;
            telemetry.upkeep();
        }
    });
    let journal = open_journal(&config)?;
    // The audit head, logged to be kept outside the store (see `orderd audit verify --expect-head`).
    tracing::info!(audit_head = %journal.audit_head(), "journal opened");
    outbox::rewind_cursors_past_head(&journal)
        .await
        .context("checking the readers' cursors against the audit head")?;
    let engine = start_engine(&config, journal.clone()).await?;
    let header_read_timeout = Duration::from_millis(config.api.header_read_timeout_ms);
    let metrics_server = match config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, engine.clone(), header_read_timeout).await?),
        None => None,
    };
    let auth = if config.oidc.enabled() {
        let oidc = Arc::new(Oidc::new(&config.oidc).map_err(anyhow::Error::msg)?);
        for i in oidc.issuers() {
            tracing::info!(issuer = %i.settings.issuer, accounts = ?i.settings.accounts, roles = ?i.settings.roles, "trusting identity provider");
        }
        for (a, b, accounts) in config.oidc.shared_accounts() {
            tracing::warn!(issuer = %a, other = %b, %accounts, "two identity providers may sign in users of the same accounts, and user ids are not keyed by issuer: both providers' users with the same user_claim are one user there (give them claims that cannot collide, such as e-mail addresses)");
        }
        // Keys are fetched now and kept fresh in the background; a provider that is down is
        // retried (rate-limited) while the cached keys stay in use.
        tokio::spawn(oidc.clone().keep_keys_fresh());
        Authenticator::oidc(oidc)
    } else if config.dev_signin_on() {
        tracing::warn!("DEVELOPMENT SIGN-IN IS ON: POST /v1/dev/token signs a token for any account, user and role. Never expose this daemon like this.");
        Authenticator::dev(&dev_key(&config.data_dir)?)
    } else {
        tracing::warn!("no sign-in is configured: every request that needs a role is refused");
        Authenticator::none()
    };
    let state = ApiState::new(
        engine.clone(),
        auth,
        config.trusted_proxies.clone(),
        config.api.clone(),
        config.dev_signin_on(),
    )
    .with_sessions(&config.session)
    .with_webhooks(orderd_actors::webhooks::Webhooks::new(
        journal.clone(),
        config.webhooks.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut critical = critical::Critical::new(stop_rx.clone());
    let relay = critical.spawn(
        "outbox relay",
        outbox::relay(
            journal.clone(),
            state.bus.clone(),
            outbox::start(&journal, &state.bus),
            engine.outbox.clone(),
            Duration::from_millis(config.outbox_poll_ms),
            stop_rx.clone(),
        ),
    );
    // Returns (stopping the daemon like a dead relay) if the relay stalls.
    critical.spawn(
        "outbox relay's stall watch",
        outbox::watch_relay(
            journal.clone(),
            engine.outbox.clone(),
            Duration::from_millis(config.outbox_stall_ms),
            stop_rx.clone(),
        ),
    );
    // A failed group commit (a disk error) stops the journal taking writes (see
    // `Journal::failed`): stop orderd too, non-zero, so that its supervisor restarts it and
    // every actor is rebuilt from what is on disk.
    let failing = journal.clone();
    critical.on_fault("journal (a group commit failed)", async move {
        failing.failed().await
    });
    // A warehouse actor that stopped on its own (a panic) lost its stock in memory: stop too,
    // so that the restart rebuilds it from the journal.
    let lost = engine.lost_warehouses.clone();
    critical.on_fault("warehouse actor", async move { lost.first().await });
    if config.webhooks.allow_private {
        tracing::warn!("webhooks.allow_private is on: webhooks may target loopback, link-local and private addresses");
    }
    let hooks = critical.spawn(
        "webhook delivery",
        webhooks::run(
            state.webhooks.clone(),
            state.bus.clone(),
            engine.outbox.clone(),
            stop_rx.clone(),
        ),
    );
    let publisher = config.nats.enabled().then(|| {
        tracing::info!(url = %config.nats.url, "publishing events to NATS JetStream");
        critical.spawn(
            "NATS publisher",
            publisher::run(
                journal.clone(),
                config.nats.clone(),
                state.bus.clone(),
                engine.outbox.clone(),
                stop_rx,
            ),
        )
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "orderd listening");
    // Open event streams would hold the graceful shutdown up for as long as they last: end them.
    let bus = state.bus.clone();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    // Everything is up; connections wait in the listen backlog until `server` runs, just below.
    let notifier = systemd::Notifier::ready(addr);
    let watchdog = tokio::spawn(notifier.clone().watchdog(journal.clone()));
    let shutdown = async move {
        let ended = tokio::select! {
            _ = shutdown => None,
            name = critical.first_ended() => Some(name),
        };
        notifier.stopping();
        let _ = ended_tx.send(ended);
        bus.close();
        let _ = stopping_tx.send(());
    };
    let server = http::serve(
        listener,
        orderd_api::router(state),
        header_read_timeout,
        shutdown,
    );
    // Requests under way get `shutdown_grace_ms` to finish. A request still arriving (its
    // read timeouts are longer by default) or a long CSV import must not hold the shutdown,
    // nor the restart after a fault, past it.
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    // (`stopping` fails only once the server future dropped its shutdown future: it is done.)
    let overdue = async move {
        let _ = stopping.await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = server => {}
        () = overdue => {
            tracing::warn!(grace_ms = config.shutdown_grace_ms, "requests still under way after the shutdown grace period; orderd stops without waiting for them (their connections close as it exits)");
        }
    }
    tracing::info!("shutting down: stopping actors and flushing the journal");
    upkeep.abort();
    watchdog.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(config.shutdown_grace_ms), relay).await;
    // An event in flight to a webhook is sent again after the next start (same webhook-id).
    let _ = tokio::time::timeout(Duration::from_millis(config.shutdown_grace_ms), hooks).await;
    if let Some(p) = publisher {
        // Whatever is not published yet stays in the audit log for the next start.
        let _ = tokio::time::timeout(Duration::from_millis(config.shutdown_grace_ms), p).await;
    }
    engine.shutdown().await.context("closing the journal")?;
    if journal.has_failed() {
        // Also when the failure came after a signal had started the shutdown.
        anyhow::bail!("a journal commit failed; restart orderd to recover from the disk");
    }
    tracing::info!(audit_head = %journal.audit_head(), "shutdown complete");
    if let Ok(Some(task)) = ended.await {
        anyhow::bail!(
            "the {task} stopped unexpectedly; restart orderd (events resume from the audit log)"
        );
    }
    Ok(())
}

/// Binds `addr` and serves the unauthenticated `GET /metrics` there until aborted.
async fn serve_metrics(
    addr: SocketAddr,
    engine: Engine,
    header_read_timeout: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics_listen {addr}"))?;
    let bound = listener.local_addr()?;
    if bound.ip().is_loopback() {
        tracing::info!(addr = %bound, "serving /metrics without authentication");
    } else {
        tracing::warn!(addr = %bound, "serving /metrics WITHOUT AUTHENTICATION on a non-loopback address: make sure only Prometheus can reach it");
    }
    let app = orderd_api::metrics_router(engine);
    Ok(tokio::spawn(http::serve(
        listener,
        app,
        header_read_timeout,
        std::future::pending(),
    )))
}

/// What `orderd check` found: broken invariants, and states that hold but deserve a look.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub broken: Vec<String>,
    pub notes: Vec<String>,
}

/// Rebuilds state from the data directory (the daemon must not be running on it) and lists
/// every broken invariant: 2 (stock), 5 (audit chain), and anything the rebuild refuses. An
/// account above its credit limit is a note, not a break: invariant 3 bounds submissions, and
/// an operator may lower the limit (or raise receivables) below what is already open. A
/// journal that cannot be read at all (another process holds it, a disk error) is an error,
/// not a finding.
pub async fn check(
    config: &Config,
    expect_head: Option<orderd_storage::AuditHead>,
) -> anyhow::Result<CheckReport> {
    let dir = config.data_dir.join("journal");
    let mut report = CheckReport::default();
    match Journal::verify_dir(&dir, expect_head) {
        Ok(_) => {}
        Err(e @ (StorageError::ChainBroken { .. } | StorageError::Corrupt { .. })) => {
            report.broken.push(format!("audit chain: {e}"));
            return Ok(report);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "reading {} (is orderd running on it?)",
                dir.display()
            )))
        }
    }
    let journal = open_journal(config)?;
    // Starting rebuilds every warehouse from the orders and refuses over-allocated stock.
    let engine = match Engine::start(journal.clone(), config.limits.clone()).await {
        Ok(e) => e,
        Err(e) => {
            report.broken.push(format!("rebuild: {e}"));
            journal.close()?;
            return Ok(report);
        }
    };
    if let Err(e) = engine.check_stock().await {
        report.broken.push(format!("stock: {e}"));
    }
    for account in engine.accounts.accounts() {
        // Its first message loads the account from its records: one that cannot be loaded is
        // broken (the daemon would answer its every request with an error).
        let credit = engine
            .account(&account, |reply| {
                orderd_actors::account::AccountMsg::Credit { reply }
            })
            .await;
        use orderd_actors::ActorError;
        let credit = match credit {
            Ok(credit) => credit,
            // What its records hold is wrong; anything else (a disk error, a load slower than
            // the call timeout) is a failure of the tool, not a finding.
            Err(
                e @ (ActorError::Start(_)
                | ActorError::Invariant(_)
                | ActorError::Storage(StorageError::Corrupt { .. })),
            ) => {
                report.broken.push(format!("account {account}: {e}"));
                continue;
            }
            Err(e) => {
                engine.shutdown().await?;
                return Err(anyhow::Error::new(e).context(format!("checking account {account}")));
            }
        };
        if credit.exposure.amount > credit.credit_limit.amount {
            report.notes.push(format!(
                "credit: account {account} exposure {} is above its limit {} (the limit was lowered or receivables raised after its orders; new orders are refused until it is back under)",
                credit.exposure, credit.credit_limit
            ));
        }
    }
    engine.shutdown().await?;
    Ok(report)
}

/// The development signing key, created on first start (mode 0600) so tokens survive restarts.
fn dev_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("dev-signing.key");
    if let Ok(key) = std::fs::read(&path) {
        anyhow::ensure!(
            key.len() == DEV_KEY_LEN,
            "{} is damaged: delete it to make a new one",
            path.display()
        );
        return Ok(key);
    }
    let key = random_key()?;
    // Whole or not at all: written to a temporary file, synced, then renamed into place, so a
    // crash cannot leave a short key that every later start refuses.
    let tmp = data_dir.join("dev-signing.key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    std::io::Write::write_all(&mut file, &key)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(key)
}

fn random_key() -> anyhow::Result<Vec<u8>> {
    let mut key = vec![0u8; DEV_KEY_LEN];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("no randomness for the signing key: {e}"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The development key is made once (0600, whole), read back the same on every later start,
    // and a temporary file a crash left behind is no obstacle.
    #[test]
    fn the_dev_key_is_made_whole_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dev-signing.key.tmp"), b"short").unwrap();
        let key = dev_key(dir.path()).unwrap();
        assert_eq!(key.len(), DEV_KEY_LEN);
        assert_eq!(dev_key(dir.path()).unwrap(), key);
        assert!(!dir.path().join("dev-signing.key.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join("dev-signing.key")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
    }
}
