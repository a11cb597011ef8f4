//! `orderd`: parse the command line, set up logging and signals, call the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderd::config::Config;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// mimalloc instead of glibc's malloc: see "Memory allocator" in the README.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "orderd", version, about = "B2B order processing daemon")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Default)]
struct Common {
    /// Config file (TOML). Every setting can also be an ORDERD_* environment variable.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (journal, dev signing key).
    #[arg(long = "data")]
    data: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default with no arguments).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Listen address, e.g. 127.0.0.1:8080 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Also serve `GET /metrics` without authentication on this address (for Prometheus;
        /// keep it on loopback or a private network). Same as `metrics_listen`.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Do not load the demo data set into an empty store.
        #[arg(long)]
        no_demo: bool,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
        /// The identity provider (OIDC issuer URL) whose access tokens are accepted; turns the
        /// development sign-in off. Same as `oidc.issuer` in the config file.
        #[arg(long, requires = "oidc_audience")]
        oidc_issuer: Option<String>,
        /// The audience orderd's access tokens carry (`oidc.audience`).
        #[arg(long, requires = "oidc_issuer")]
        oidc_audience: Option<String>,
        /// NATS server for events (JetStream), e.g. nats://127.0.0.1:4222 (`nats.url`).
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// Import a CSV file of KIND (catalog, prices, accounts, ship_tos, users, warehouses, stock)
    /// into the data directory (the daemon must not be running on it).
    Import {
        kind: String,
        file: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Rebuild all state from the data directory and check the invariants (stock never
    /// over-allocated, credit within limits, audit chain intact, reaching --expect-head when
    /// given); exit 1 naming what is broken.
    Check {
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<orderd_storage::AuditHead>,
        #[command(flatten)]
        common: Common,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit 1 naming the first bad sequence number. Prints the head as
    /// SEQ:HASH: keep it (the daemon also logs it at start and shutdown) and pass it later as
    /// --expect-head, which also detects a tail cut off together with the store's own head.
    Verify {
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<orderd_storage::AuditHead>,
        #[command(flatten)]
        common: Common,
    },
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let text = match &common.config {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => String::new(),
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut config = Config::load(&text, &env)?;
    if let Some(d) = &common.data {
        config.data_dir = d.clone();
    }
    Ok(config)
}

/// The log filter without `ORDERD_LOG`. ractor's own per-actor spans are left out: with span
/// close events on, each would log a line whenever an idle account actor stops. The NATS
/// client's info lines repeat what the publisher logs of its connection.
const DEFAULT_LOG_FILTER: &str = "info,ractor=warn,async_nats=warn";

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERD_LOG")
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A span logs one line when it closes, with its time busy and idle: turning on the
        // per-order spans (`ORDERD_LOG=info,orderd::order=debug`) gives each order's path
        // (`order` > `journal.commit`) with order.id and account.id on every line.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("orderd: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Turns transparent huge pages off for this process: on a system that gives them to every
/// aligned mapping (`always`), the first touch of each 2 MiB clears it synchronously, on
/// whichever thread allocates, the capture path included (see "Memory allocator" in the README).
#[cfg(target_os = "linux")]
fn no_huge_pages() {
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(%error, "could not turn transparent huge pages off; capture latency may have spikes");
    }
}

/// Raises the soft limit of open files to the hard one. Each client connection holds a file,
/// and the usual soft limit (1,024) is far below what a spike of portal backends opens; at the
/// limit the listener cannot accept, and clients wait in the kernel's backlog instead of getting
/// an answer (`503` from the admission bounds, or their order). A service manager's
/// `LimitNOFILE=` sets both limits; this only lifts the soft one to what is allowed anyway.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        // No hard limit: leave the soft one as it is (raising it to "unlimited" is refused).
        return;
    };
    if limit.current.is_some_and(|soft| soft >= hard) {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(from = ?limit.current, to = hard, "open files limit raised"),
        Err(error) => {
            tracing::warn!(%error, soft = ?limit.current, hard, "could not raise the open files limit");
        }
    }
}

/// Transparent huge pages are a Linux feature.
#[cfg(not(target_os = "linux"))]
fn no_huge_pages() {}

fn real_main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command.unwrap_or(Command::Serve {
        common: Common::default(),
        listen: None,
        metrics_listen: None,
        no_demo: false,
        log_json: false,
        oidc_issuer: None,
        oidc_audience: None,
        nats_url: None,
    }) {
        Command::Serve {
            common,
            listen,
            metrics_listen,
            no_demo,
            log_json,
            oidc_issuer,
            oidc_audience,
            nats_url,
        } => {
            let mut config = load_config(&common)?;
            if let Some(l) = listen {
                config.listen = l;
            }
            if metrics_listen.is_some() {
                config.metrics_listen = metrics_listen;
                config.validate()?;
            }
            if let (Some(issuer), Some(audience)) = (oidc_issuer, oidc_audience) {
                config.oidc.issuer = issuer;
                config.oidc.audience = audience;
                config.validate()?;
            }
            if let Some(url) = nats_url {
                config.nats.url = url;
                config.validate()?;
            }
            config.demo_data &= !no_demo;
            init_logging(log_json || config.log_format == "json");
            no_huge_pages();
            raise_open_files_limit();
            let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
            let served = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("binding {}", config.listen))?;
                orderd::run(config, listener, shutdown_signal()).await
            });
            // A blocking read that hangs (a stalled relay) must not keep the process from
            // exiting, as dropping the runtime would. On success the journal is closed by now.
            rt.shutdown_timeout(grace);
            served?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Import { kind, file, common } => {
            let config = load_config(&common)?;
            init_logging(false);
            let kind = orderd_api::import_csv::Kind::parse(&kind).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown kind {kind:?}; known: {}",
                    orderd_api::import_csv::Kind::names()
                )
            })?;
            let csv =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            rt.block_on(async {
                let journal = orderd::open_journal(&config)?;
                let engine = orderd_actors::Engine::start(journal, config.limits.clone()).await?;
                let caller = orderd_actors::audit::Caller::system();
                let result = orderd_api::import_csv::import(
                    &engine,
                    &caller,
                    kind,
                    &csv,
                    config.api.import_rows_max,
                )
                .await;
                engine.shutdown().await?;
                match result {
                    Ok(n) => {
                        println!("imported {n} {} rows", kind.name());
                        Ok(std::process::ExitCode::SUCCESS)
                    }
                    Err(refusal) => {
                        if !refusal.stored.is_empty() {
                            eprintln!("{}", refusal.stored_note());
                        }
                        for e in refusal.errors {
                            eprintln!("{e}");
                        }
                        Ok(std::process::ExitCode::from(1))
                    }
                }
            })
        }
        Command::Check {
            expect_head,
            common,
        } => {
            let config = load_config(&common)?;
            init_logging(false);
            let report = rt.block_on(orderd::check(&config, expect_head))?;
            for n in &report.notes {
                println!("NOTE: {n}");
            }
            for p in &report.broken {
                println!("BROKEN: {p}");
            }
            if report.broken.is_empty() {
                println!("all invariants hold");
                Ok(std::process::ExitCode::SUCCESS)
            } else {
                Ok(std::process::ExitCode::from(1))
            }
        }
        Command::Audit {
            action:
                AuditCommand::Verify {
                    expect_head,
                    common,
                },
        } => {
            let config = load_config(&common)?;
            let dir = config.data_dir.join("journal");
            match orderd_storage::Journal::verify_dir(&dir, expect_head) {
                Ok(report) => {
                    println!(
                        "audit log intact: {} records, head seq {} (head {})",
                        report.records, report.head.seq, report.head
                    );
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Err(orderd_storage::StorageError::ChainBroken { seq, reason }) => {
                    println!("audit log BROKEN at seq {seq}: {reason}");
                    Ok(std::process::ExitCode::from(1))
                }
                Err(e) => Err(anyhow::anyhow!("verifying {}: {e}", dir.display())),
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}
