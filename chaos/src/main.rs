//! `orderd-chaos`: the crash scenario for long runs.
//!
//! `orderd-chaos --orderd target/release/orderd --iterations 200 --seed 42` kills the daemon
//! 200 times under load and exits 1 when any check failed (the data directory is then kept).

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "orderd-chaos",
    about = "SIGKILL orderd under load and check what survives"
)]
struct Cli {
    /// The orderd binary.
    #[arg(long)]
    orderd: PathBuf,
    /// Number of SIGKILL rounds.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Seed of every random choice (default: ORDERD_CHAOS_SEED, else the clock). Printed.
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent load clients.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Shortest load before a kill, in ms.
    #[arg(long, default_value_t = 500)]
    load_ms_min: u64,
    /// Longest load before a kill, in ms.
    #[arg(long, default_value_t = 3_000)]
    load_ms_max: u64,
    /// Every N rounds also SIGTERM under load and run `orderd check` and `orderd audit verify`.
    #[arg(long, default_value_t = 10)]
    check_every: usize,
    /// Data directory (default: a fresh temporary one, deleted unless the run fails or --keep).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Keep the temporary data directory.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("orderd-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Ok(true) when every check passed.
fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let seed = match cli.seed {
        Some(s) => s,
        None => orderd_chaos::seed_from_env()?,
    };
    let (data_dir, temp) = match &cli.data {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("orderd-chaos-").tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    eprintln!(
        "orderd-chaos: seed {seed} (replay with --seed {seed}), data {}",
        data_dir.display()
    );
    let mut sc = orderd_chaos::Scenario::new(&cli.orderd, &data_dir, seed);
    sc.rounds = cli.iterations;
    sc.workers = cli.workers;
    sc.load_ms = (cli.load_ms_min, cli.load_ms_max);
    sc.check_every = cli.check_every;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(orderd_chaos::run(&sc, |line| {
        eprintln!("orderd-chaos: {line}")
    }))?;
    println!("{report}");
    let passed = report.violations.is_empty();
    if let Some(t) = temp {
        if !passed || cli.keep {
            let kept = t.keep();
            eprintln!("orderd-chaos: data kept in {}", kept.display());
        }
    }
    Ok(passed)
}
