//! How the journal's CPU per order changes as the store fills: orderd's records for the
//! benchmark's order mix, written through `orderd_storage::Journal` (group commit, flush and
//! `fdatasync` per group) by many concurrent writers, with the journal's CPU per order printed
//! for every window of orders. No HTTP and no actors: only storage.
//!
//! Each order writes what orderd writes when it takes an order: its record (keyed by account, as
//! `ord/<account>/<order>`, so writes spread over the accounts like orderd's) and its audit
//! record. Sizes are those measured from orderd's journal for 1-, 10- and 100-line orders
//! (`benches/results/full-ccaf3a0/report.json`, `record_shapes`). With `--index`, each audit
//! record also gets a subject index key, as orderd wrote until the order record named its audit
//! records (`Batch::put_stamped`): run both to compare.
//!
//! ```sh
//! target/release/orderd-bench-journal --orders 200000            # orderd's layout now
//! target/release/orderd-bench-journal --orders 200000 --index    # plus an index key per change
//! ```

use clap::Parser;
use orderd_benches::procstat;
use orderd_storage::{AuditDraft, Batch, Journal, JournalConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "The journal's CPU per order as the store fills (storage only)")]
struct Args {
    /// Orders to write.
    #[arg(long, default_value_t = 200_000)]
    orders: u64,
    /// Accounts the order records spread over.
    #[arg(long, default_value_t = 500)]
    accounts: u64,
    /// Concurrent writers (each waits for its order to be durable before the next).
    #[arg(long, default_value_t = 32)]
    writers: u64,
    /// Orders per printed window.
    #[arg(long, default_value_t = 25_000)]
    window: u64,
    /// Also index each audit record by its order id (one more key per order).
    #[arg(long)]
    index: bool,
    /// Where the journal goes (a temporary directory inside it, removed at the end).
    #[arg(long, default_value = "target")]
    dir: std::path::PathBuf,
}

/// (order record, audit payload) bytes measured for 1-, 10- and 100-line orders, in the
/// benchmark's mix: 70%, 25% and 5%.
fn sizes(n: u64) -> (usize, usize) {
    match n % 20 {
        0 => (5714, 3541),
        1..=5 => (699, 649),
        _ => (194, 356),
    }
}

/// Incompressible filler the values are cut from.
const FILLER_BYTES: usize = 1 << 20;

fn batch(args: &Args, filler: &[u8], n: u64) -> Batch {
    let (record, payload) = sizes(n);
    let at = usize::try_from(n.wrapping_mul(7_919)).unwrap_or(0) % (FILLER_BYTES - 8_192);
    let account = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % args.accounts.max(1);
    // Order ids are time-ordered (UUIDv7) in orderd: increasing here.
    let order = format!("{n:036}");
    let mut b = Batch::default();
    b.put_stamped(
        format!("ord/A{account:05}/{order}"),
        filler[at..at + record - orderd_storage::layout::SEQ_LEN].to_vec(),
    );
    b.audit.push(AuditDraft {
        subject: order.into_bytes(),
        payload: filler[at + 1..at + 1 + payload].to_vec(),
        indexed: args.index,
    });
    b
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let journal = Journal::open(dir.path(), &JournalConfig::default())?;
    let mut x = 0x5EED_u64;
    let filler: Arc<Vec<u8>> = Arc::new(
        (0..FILLER_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect(),
    );
    let (next, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut writers = vec![];
    for _ in 0..args.writers {
        let (args, journal, filler) = (args.clone(), journal.clone(), filler.clone());
        let (next, done) = (next.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= args.orders {
                    return Ok::<(), orderd_storage::StorageError>(());
                }
                journal.submit(batch(&args, &filler, n)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    println!(
        "{} orders, {} accounts, {} writers, index key per change: {}",
        args.orders, args.accounts, args.writers, args.index
    );
    println!("| orders stored | orders/s | journal CPU per order (µs) | cores |");
    println!("|---|---|---|---|");
    let (mut from, mut stored_from) = (procstat::sample(None)?, 0);
    let mut per_order = vec![];
    while stored_from < args.orders {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stored = done.load(Ordering::Relaxed);
        if stored - stored_from < args.window && stored < args.orders {
            continue;
        }
        let to = procstat::sample(None)?;
        let d = procstat::delta(&from, &to);
        let n = (stored - stored_from) as f64;
        per_order.push(d.cpu_s * 1e6 / n);
        println!(
            "| {stored} | {:.0} | {:.1} | {:.2} |",
            n / d.wall_s,
            d.cpu_s * 1e6 / n,
            d.cores()
        );
        (from, stored_from) = (to, stored);
    }
    for w in writers {
        w.await??;
    }
    if let (Some(first), Some(last)) = (per_order.first(), per_order.last()) {
        println!("last window / first: {:.2}", last / first);
    }
    journal.close()?;
    Ok(())
}
