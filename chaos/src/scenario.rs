//! The crash scenario: load, SIGKILL at a seeded random moment, restart on the same data
//! directory, check the acknowledged set, repeat; at checkpoints also SIGTERM under load (exit
//! 0 expected), run the offline checks (`orderd check`, `orderd audit verify`), restart and
//! check again.

use crate::client::Api;
use crate::ledger::{check_survivor, Placement, Seen};
use crate::load::{Stats, Tokens, Worker, APPROVER, DEMO_SEATS, DEMO_SKUS};
use crate::process::{Daemon, DaemonSpec, ToolOutput};
use anyhow::{anyhow, Context};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable that overrides the seed, to replay a failed run.
pub const SEED_ENV: &str = "ORDERD_CHAOS_SEED";
/// Orders per page when listing an account's orders.
const LIST_PAGE: usize = 200;
/// Most pages listed per account (200 000 orders).
const LIST_PAGES_MAX: usize = 1_000;
/// Acknowledged placements per worker and round whose key is sent again to check the replay.
const REPLAY_SAMPLE_MAX: usize = 3;
/// How long a request sent again after a restart may keep getting 429/503 or no answer.
const RESEND_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between such attempts.
const RESEND_PAUSE: Duration = Duration::from_millis(50);

/// What to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub bin: PathBuf,
    /// Should be empty or hold only data of earlier harness runs (its orders are ignored).
    pub data_dir: PathBuf,
    pub seed: u64,
    /// Number of SIGKILLs.
    pub rounds: usize,
    /// Concurrent load clients.
    pub workers: usize,
    /// Load lasts a random time in this range (ms) before the kill.
    pub load_ms: (u64, u64),
    /// After every this many rounds (and always after the last), also SIGTERM under load, run
    /// the offline checks, restart and check again.
    pub check_every: usize,
    /// Extra daemon environment.
    pub env: Vec<(String, String)>,
}

impl Scenario {
    pub fn new(bin: impl Into<PathBuf>, data_dir: impl Into<PathBuf>, seed: u64) -> Scenario {
        Scenario {
            bin: bin.into(),
            data_dir: data_dir.into(),
            seed,
            rounds: 4,
            workers: 8,
            load_ms: (1_000, 3_000),
            check_every: 10,
            env: vec![],
        }
    }
}

/// `ORDERD_CHAOS_SEED` when set (an error when it is not a number), else one from the clock.
pub fn seed_from_env() -> anyhow::Result<u64> {
    match std::env::var(SEED_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("{SEED_ENV}={s:?} is not a u64")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // Wraps after ~584 years of nanoseconds; any value is a fine seed.
            .map(|d| u64::try_from(d.as_nanos() % u128::from(u64::MAX)).unwrap_or(0))
            .unwrap_or(0)),
    }
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub rounds: usize,
    pub kills: usize,
    pub stats: Stats,
    /// In-flight placements sent again after a restart: already applied (replayed), applied
    /// only now (fresh), or refused by business rules now.
    pub resent_replayed: u64,
    pub resent_fresh: u64,
    pub resent_refused: u64,
    /// Acknowledged placements whose key was sent again and replayed correctly.
    pub replays_checked: u64,
    /// Orders checked against the acknowledged set, over all verifications.
    pub orders_verified: u64,
    /// Audit records at the last `audit verify`.
    pub audit_records: u64,
    /// Everything that broke a rule. Empty means the run passed.
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "seed {} ({} rounds, {} kills): {} requests, {} orders placed, {} changes acknowledged {:?}",
            self.seed, self.rounds, self.kills, s.requests, s.placed, s.changed, s.changed_by
        )?;
        writeln!(
            f,
            "  refused {:?}, conflicts {}, busy {}, unanswered {}",
            s.refused, s.conflicts, s.busy, s.uncertain
        )?;
        writeln!(
            f,
            "  resent after restart: {} replayed, {} fresh, {} refused; {} replays checked; {} order checks; {} audit records",
            self.resent_replayed,
            self.resent_fresh,
            self.resent_refused,
            self.replays_checked,
            self.orders_verified,
            self.audit_records
        )?;
        if self.violations.is_empty() {
            write!(f, "  no violations")
        } else {
            write!(f, "  {} VIOLATIONS:", self.violations.len())?;
            for v in &self.violations {
                write!(f, "\n  - {v}")?;
            }
            Ok(())
        }
    }
}

/// How a load round ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEnd {
    /// SIGKILL while requests are in flight.
    Kill,
    /// SIGTERM while the workers keep sending: requests in flight must be answered and kept,
    /// and the daemon must exit 0.
    Terminate,
    /// Let the workers finish their current request; the daemon keeps running.
    Stop,
}

/// The daemon, the workers and everything they were told.
pub struct Harness {
    pub spec: DaemonSpec,
    daemon: Option<Daemon>,
    rng: fastrand::Rng,
    workers: Vec<Worker>,
    tokens: Arc<Tokens>,
    accounts: BTreeSet<String>,
    /// Orders that existed before this harness started; not checked.
    preexisting: BTreeSet<String>,
    pub report: Report,
}

impl Harness {
    /// Starts the daemon, issues tokens and notes the orders already there.
    pub async fn start(sc: &Scenario) -> anyhow::Result<Harness> {
        let mut spec = DaemonSpec::new(&sc.bin, &sc.data_dir);
        spec.env.clone_from(&sc.env);
        let mut rng = fastrand::Rng::with_seed(sc.seed);
        let run_id = format!("c{:x}.{:x}", sc.seed, rng.u32(..));
        let skus: Arc<Vec<String>> = Arc::new(DEMO_SKUS.iter().map(|s| s.to_string()).collect());
        let workers: Vec<Worker> = (0..sc.workers)
            .map(|i| {
                let (account, ship_to) = DEMO_SEATS[i % DEMO_SEATS.len()];
                Worker::new(i, account, ship_to, rng.u64(..), &run_id, skus.clone())
            })
            .collect();
        let accounts: BTreeSet<String> = workers.iter().map(|w| w.account.clone()).collect();
        let mut h = Harness {
            spec,
            daemon: None,
            rng,
            workers,
            tokens: Arc::default(),
            accounts,
            preexisting: BTreeSet::new(),
            report: Report {
                seed: sc.seed,
                ..Report::default()
            },
        };
        h.restart().await?;
        let api = h.api()?;
        h.tokens = Arc::new(Tokens::issue(&api, &h.accounts).await?);
        for (_, orders) in h.list_orders(&api).await? {
            h.preexisting.extend(orders.into_keys());
        }
        Ok(h)
    }

    /// The API of the running daemon.
    pub fn api(&self) -> anyhow::Result<Api> {
        let d = self
            .daemon
            .as_ref()
            .ok_or_else(|| anyhow!("the daemon is not running"))?;
        Api::new(&d.base_url())
    }

    pub fn daemon(&self) -> Option<&Daemon> {
        self.daemon.as_ref()
    }

    /// Starts the daemon on the data directory (stopping a running one first with SIGKILL).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(d) = self.daemon.take() {
            blocking(move || d.kill()).await?;
        }
        let spec = self.spec.clone();
        self.daemon = Some(blocking(move || spec.start()).await?);
        Ok(())
    }

    /// SIGTERM; the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let d = self
            .daemon
            .take()
            .ok_or_else(|| anyhow!("the daemon is not running"))?;
        blocking(move || d.terminate()).await
    }

    /// Runs every worker for `duration`, then ends the round as `end` says. With
    /// [`RoundEnd::Terminate`], the daemon's exit status.
    pub async fn run_load(
        &mut self,
        duration: Duration,
        end: RoundEnd,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let api = self.api()?;
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = std::mem::take(&mut self.workers)
            .into_iter()
            .map(|w| tokio::spawn(w.run(api.clone(), self.tokens.clone(), stop.clone())))
            .collect();
        // The moment of the kill is the point of the test, not a wait for something.
        tokio::time::sleep(duration).await;
        let mut status = None;
        match end {
            RoundEnd::Kill => {
                // Workers stop after their current request, which the kill cuts off.
                stop.store(true, Ordering::Release);
                let d = self
                    .daemon
                    .take()
                    .ok_or_else(|| anyhow!("the daemon is not running"))?;
                blocking(move || d.kill()).await?;
                self.report.kills += 1;
            }
            RoundEnd::Terminate => {
                // Workers keep sending while the daemon drains; later requests find it gone.
                status = Some(self.terminate().await?);
                stop.store(true, Ordering::Release);
            }
            RoundEnd::Stop => stop.store(true, Ordering::Release),
        }
        for h in handles {
            let mut w = h.await.context("a load worker panicked")?;
            self.report.violations.append(&mut w.violations);
            self.workers.push(w);
        }
        Ok(status)
    }

    /// Every order of every loaded account, as the daemon has them now.
    async fn list_orders(
        &self,
        api: &Api,
    ) -> anyhow::Result<BTreeMap<String, BTreeMap<String, Value>>> {
        let mut out = BTreeMap::new();
        for account in &self.accounts {
            let token = self
                .tokens
                .user(account, APPROVER)
                .ok_or_else(|| anyhow!("no token for {account}"))?;
            let orders = api
                .list_all_orders(token, LIST_PAGE, LIST_PAGES_MAX)
                .await?;
            let mut by_id = BTreeMap::new();
            for o in orders {
                let id = o
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("order without id: {o}"))?;
                by_id.insert(id.to_owned(), o);
            }
            out.insert(account.clone(), by_id);
        }
        Ok(out)
    }

    /// Checks the running daemon against the acknowledged set: every acknowledged order is
    /// there as told (or, with a change in flight, fully before or after it); every in-flight
    /// placement sent again with its key gives the same order or a fresh one; no order exists
    /// that nobody placed; acknowledged keys still replay. Findings go to `report.violations`.
    pub async fn verify(&mut self) -> anyhow::Result<()> {
        let api = self.api()?;
        let listed = self.list_orders(&api).await?;
        let mut found: BTreeMap<String, Seen> = BTreeMap::new();
        for (account, orders) in &listed {
            for (id, o) in orders {
                if o.get("account").and_then(Value::as_str) != Some(account) {
                    self.report.violations.push(format!(
                        "listing {account}'s orders returned {id} of another account"
                    ));
                }
                match Seen::from_order(o) {
                    Some(s) => {
                        found.insert(id.clone(), s);
                    }
                    None => self
                        .report
                        .violations
                        .push(format!("order {id} is malformed: {o}")),
                }
            }
        }
        let mut violations = Vec::new();
        let mut tracked = BTreeSet::new();
        for w in &mut self.workers {
            let ids: Vec<String> = w.orders.keys().cloned().collect();
            for id in ids {
                let t = &w.orders[&id];
                if let Err(v) = check_survivor(&id, t, found.get(&id)) {
                    violations.push(v);
                }
                self.report.orders_verified += 1;
                if let Some(seen) = found.get(&id) {
                    w.set_acked(&id, seen.clone(), None);
                }
                if let Some(t) = w.orders.get_mut(&id) {
                    t.pending = None;
                }
                tracked.insert(id);
            }
        }
        let unknown: BTreeSet<&String> = found
            .keys()
            .filter(|id| !tracked.contains(*id) && !self.preexisting.contains(*id))
            .collect();
        let mut claimed = BTreeSet::new();
        for wi in 0..self.workers.len() {
            for p in std::mem::take(&mut self.workers[wi].uncertain) {
                let outcome = self.resend(&api, wi, &p).await?;
                match outcome {
                    Resent::Replayed(id, seen) => {
                        self.report.resent_replayed += 1;
                        if !unknown.contains(&id) || found.get(&id) != Some(&seen) {
                            violations.push(format!(
                                "in-flight placement {} replayed as {id} ({seen}), which is not an unclaimed order as listed",
                                p.key
                            ));
                        }
                        claimed.insert(id.clone());
                        self.workers[wi].set_acked(&id, seen, Some(p));
                    }
                    Resent::Fresh(id, seen) => {
                        self.report.resent_fresh += 1;
                        self.workers[wi].set_acked(&id, seen, Some(p));
                    }
                    Resent::Refused => self.report.resent_refused += 1,
                    Resent::Bad(why) => violations.push(why),
                }
            }
        }
        for id in unknown.iter().filter(|id| !claimed.contains(**id)) {
            violations.push(format!(
                "order {id} exists, but no acknowledged or re-sent placement accounts for it"
            ));
        }
        self.check_replays(&api, &mut violations).await?;
        self.report.violations.append(&mut violations);
        Ok(())
    }

    /// Sends acknowledged placements of the last round again: each must replay its order.
    async fn check_replays(
        &mut self,
        api: &Api,
        violations: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        for wi in 0..self.workers.len() {
            let mut recent = std::mem::take(&mut self.workers[wi].recent);
            self.rng.shuffle(&mut recent);
            for id in recent.into_iter().take(REPLAY_SAMPLE_MAX) {
                let Some(t) = self.workers[wi].orders.get(&id) else {
                    continue;
                };
                let p = t.placement.clone();
                match self.resend(api, wi, &p).await? {
                    Resent::Replayed(got, _) if got == id => self.report.replays_checked += 1,
                    Resent::Replayed(got, _) | Resent::Fresh(got, _) => violations.push(format!(
                        "key {} of acknowledged order {id} now gives order {got}",
                        p.key
                    )),
                    Resent::Refused => violations.push(format!(
                        "key {} of acknowledged order {id} is now refused",
                        p.key
                    )),
                    Resent::Bad(why) => violations.push(why),
                }
            }
        }
        Ok(())
    }

    /// Sends a placement again with its key, retrying while the daemon is busy or unreachable.
    async fn resend(&self, api: &Api, wi: usize, p: &Placement) -> anyhow::Result<Resent> {
        let w = &self.workers[wi];
        let token = self
            .tokens
            .user(&w.account, p.user)
            .ok_or_else(|| anyhow!("no token for {}", w.account))?;
        let deadline = Instant::now() + RESEND_TIMEOUT;
        loop {
            let reply = api
                .send(
                    reqwest::Method::POST,
                    "/v1/orders",
                    Some(token),
                    Some(&p.key),
                    Some(&p.body),
                )
                .await;
            let retry = match &reply {
                Err(_) => true,
                Ok(r) => matches!(r.status, 429 | 503),
            };
            if retry && Instant::now() < deadline {
                tokio::time::sleep(RESEND_PAUSE).await;
                continue;
            }
            let r = reply.with_context(|| format!("sending {} again", p.key))?;
            let order = || -> Option<(String, Seen)> {
                Some((r.id()?.to_owned(), Seen::from_order(&r.body)?))
            };
            return Ok(match (r.status, order()) {
                (200, Some((id, seen))) if r.replayed => Resent::Replayed(id, seen),
                (201, Some((id, seen))) if !r.replayed => Resent::Fresh(id, seen),
                (422, _) if r.code() != Some("idempotency_key_reused") => Resent::Refused,
                _ => Resent::Bad(format!("placement {} sent again with its key: {r}", p.key)),
            });
        }
    }

    /// With the daemon stopped: `orderd check` and `orderd audit verify` must pass.
    pub async fn offline_checks(&mut self) -> anyhow::Result<()> {
        let spec = self.spec.clone();
        let check = blocking(move || spec.check()).await?;
        if check.code() != Some(0) || !check.stdout.contains("all invariants hold") {
            self.report
                .violations
                .push(format!("orderd check failed: {check}"));
        }
        let spec = self.spec.clone();
        let audit = blocking(move || spec.audit_verify()).await?;
        match (audit.code(), parse_intact(&audit)) {
            (Some(0), Some((records, head))) if records == head && records > 0 => {
                self.report.audit_records = records;
            }
            _ => self
                .report
                .violations
                .push(format!("orderd audit verify failed: {audit}")),
        }
        Ok(())
    }

    /// `(account, order id, idempotency key)` of every acknowledged order.
    pub fn acknowledged_orders(&self) -> Vec<(String, String, String)> {
        self.workers
            .iter()
            .flat_map(|w| {
                w.orders
                    .iter()
                    .map(|(id, t)| (w.account.clone(), id.clone(), t.placement.key.clone()))
            })
            .collect()
    }

    /// Records a violation unless `status` is a clean exit.
    pub fn expect_clean_exit(&mut self, status: Option<ExitStatus>) {
        match status {
            Some(s) if s.success() => {}
            other => self
                .report
                .violations
                .push(format!("orderd exited with {other:?} after SIGTERM")),
        }
    }

    /// Counts of every worker.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for w in &self.workers {
            s.add(&w.stats);
        }
        s
    }
}

enum Resent {
    Replayed(String, Seen),
    Fresh(String, Seen),
    Refused,
    Bad(String),
}

/// `(records, head seq)` from "audit log intact: N records, head seq S (head S:HASH)".
pub fn parse_intact(out: &ToolOutput) -> Option<(u64, u64)> {
    let rest = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("audit log intact: "))?;
    let (records, head) = rest.split_once(" records, head seq ")?;
    let head = head.split_whitespace().next()?;
    Some((records.trim().parse().ok()?, head.parse().ok()?))
}

/// Runs blocking process work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task panicked")?
}

/// The whole scenario. `progress` gets one line per step. Stops early after a round with
/// violations, leaving the data directory as it was for inspection.
pub async fn run(sc: &Scenario, mut progress: impl FnMut(&str)) -> anyhow::Result<Report> {
    anyhow::ensure!(
        sc.rounds > 0 && sc.workers > 0 && sc.check_every > 0,
        "rounds, workers and check_every must be above 0"
    );
    anyhow::ensure!(sc.load_ms.0 <= sc.load_ms.1, "load_ms must be (min, max)");
    let mut h = Harness::start(sc).await?;
    h.report.rounds = sc.rounds;
    for round in 1..=sc.rounds {
        let ms = h.rng.u64(sc.load_ms.0..=sc.load_ms.1);
        progress(&format!(
            "round {round}/{}: load for {ms} ms, then SIGKILL",
            sc.rounds
        ));
        h.run_load(Duration::from_millis(ms), RoundEnd::Kill)
            .await?;
        h.restart().await?;
        h.verify().await?;
        if round % sc.check_every == 0 || round == sc.rounds {
            let ms = h.rng.u64(sc.load_ms.0..=sc.load_ms.1);
            progress(&format!(
                "round {round}: load for {ms} ms, then SIGTERM, orderd check, orderd audit verify"
            ));
            let status = h
                .run_load(Duration::from_millis(ms), RoundEnd::Terminate)
                .await?;
            h.expect_clean_exit(status);
            h.offline_checks().await?;
            h.restart().await?;
            h.verify().await?;
            if round == sc.rounds {
                let status = h.terminate().await?;
                h.expect_clean_exit(Some(status));
            }
        }
        if !h.report.violations.is_empty() {
            h.report.rounds = round;
            break;
        }
    }
    h.report.stats = h.stats();
    Ok(h.report)
}
