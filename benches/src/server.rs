//! The processes under test: the real `orderd serve` binary on a fresh data directory (loaded
//! with the benchmark's data set through the API), and the ceiling server (this binary's
//! hidden `ceiling` subcommand). Both listen on 127.0.0.1 port 0 and report the bound address.

use crate::ceiling::RecordShape;
use crate::issuer::BenchIssuer;
use crate::loadgen::{self, Conn};
use crate::procstat;
use crate::workload::{BodyPool, Dataset, OrderSource};
use anyhow::{bail, Context};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use std::collections::VecDeque;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to report its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines of the daemon kept for error messages.
const LOG_TAIL_MAX: usize = 50;

/// What the daemon logged, beyond the start line.
#[derive(Debug, Default, Clone)]
pub struct LogTail {
    pub lines: VecDeque<String>,
    pub warnings: u64,
    pub errors: u64,
}

/// The settings every benchmark gives orderd (as `ORDERD_*` variables), for a load generator
/// with `connections` keep-alive connections.
pub fn daemon_env(connections: usize) -> Vec<(String, String)> {
    // Generous bounds: the benchmark measures latency, not admission control. The open loop
    // never has more than `connections` requests in flight anyway.
    let inflight_total = (connections * 8).max(8_192).to_string();
    [
        ("ORDERD_LIMITS__INFLIGHT_TOTAL_MAX", inflight_total.as_str()),
        (
            "ORDERD_LIMITS__ACCOUNT_INFLIGHT_MAX",
            inflight_total.as_str(),
        ),
        // Setting up signs in once per account, far above the per-address sign-in limit that
        // protects a real deployment. The mutation limits stay as configured: the mix is
        // spread over the data set's accounts, well below them.
        ("ORDERD_API__RATE_LIMIT__LOGINS_PER_MIN", "1000000"),
        ("ORDERD_API__RATE_LIMIT__LOGINS_BURST", "100000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A running `orderd serve`; killed (and its data directory deleted) on drop.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<LogTail>>,
    /// Buyer bearer tokens (`Bearer ...`), one per account, in account order.
    pub tokens: Vec<String>,
    /// Orders this daemon has stored so far (estimated by the benchmark).
    pub orders_stored: u64,
    /// Seconds from spawn to the data set loaded and tokens issued.
    pub setup_s: f64,
    _data: tempfile::TempDir,
}

impl Daemon {
    /// Starts `bin` on a new directory under `data_root` with `env` added (every inherited
    /// `ORDERD_*` variable is removed first), then imports `dataset` and issues tokens: with
    /// `issuer`, tokens it signed (orderd must be configured with it); otherwise orderd's
    /// development tokens.
    pub async fn start(
        bin: &Path,
        data_root: &Path,
        env: &[(String, String)],
        dataset: &Dataset,
        issuer: Option<&BenchIssuer>,
    ) -> anyhow::Result<Daemon> {
        let started = Instant::now();
        let data = tempfile::Builder::new()
            .prefix("orderd-bench-")
            .tempdir_in(data_root)
            .with_context(|| format!("creating a data directory under {}", data_root.display()))?;
        let (child, addr, log) = spawn(bin, data.path(), env).await?;
        let mut daemon = Daemon {
            pid: child.id(),
            child,
            addr,
            log,
            tokens: vec![],
            orders_stored: 0,
            setup_s: 0.0,
            _data: data,
        };
        daemon.tokens = load_dataset(addr, dataset, issuer)
            .await
            .with_context(|| format!("loading the data set into orderd at {addr}"))?;
        daemon.setup_s = started.elapsed().as_secs_f64();
        Ok(daemon)
    }

    /// The daemon's data directory (its journal is in `journal/` under it).
    pub fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// SIGKILL, like a crash: nothing is flushed or closed. The data directory stays.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts `bin` again on this daemon's data directory (after [`Daemon::kill9`]) and
    /// returns the seconds until it reported `orderd listening`: start-up including the
    /// rebuild of all state from the journal.
    pub async fn restart(&mut self, bin: &Path, env: &[(String, String)]) -> anyhow::Result<f64> {
        self.kill9();
        let started = Instant::now();
        let (child, addr, log) = spawn(bin, self._data.path(), env).await?;
        let took = started.elapsed().as_secs_f64();
        self.pid = child.id();
        self.child = child;
        self.addr = addr;
        self.log = log;
        Ok(took)
    }

    pub fn log(&self) -> LogTail {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Orders from `pool`, each signed with one of this daemon's buyer tokens; idempotency keys
    /// start with `key_prefix`.
    pub fn order_source(
        &self,
        pool: Arc<BodyPool>,
        key_prefix: &str,
        seed: u64,
    ) -> anyhow::Result<OrderSource> {
        let tokens = self
            .tokens
            .iter()
            .map(|t| hyper::header::HeaderValue::from_str(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OrderSource {
            pool,
            tokens,
            key_prefix: key_prefix.to_owned(),
            seed,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL: the data directory is thrown away anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `orderd serve` on `data` and waits until it reports its address.
async fn spawn(
    bin: &Path,
    data: &Path,
    env: &[(String, String)],
) -> anyhow::Result<(Child, SocketAddr, Arc<Mutex<LogTail>>)> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--log-json", "--no-demo"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ORDERD_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let log = Arc::new(Mutex::new(LogTail::default()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tail = log.clone();
    std::thread::spawn(move || read_log(stderr, &tail, tx));
    match tokio::time::timeout(START_TIMEOUT, rx).await {
        Ok(Ok(addr)) => Ok((child, addr, log)),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let lines = log.lock().map(|l| l.lines.clone()).unwrap_or_default();
            bail!(
                "{} did not report `orderd listening` within {START_TIMEOUT:?}; its log:\n{}",
                bin.display(),
                lines.into_iter().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Follows the daemon's JSON log: sends the bound address once, keeps a tail, counts
/// warnings and errors.
fn read_log(
    stderr: std::process::ChildStderr,
    tail: &Mutex<LogTail>,
    tx: tokio::sync::oneshot::Sender<SocketAddr>,
) {
    let mut tx = Some(tx);
    // Warnings before the start line (the dev sign-in warning) are expected: not counted.
    let mut listening = false;
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        if let Some(v) = &parsed {
            if v["fields"]["message"] == "orderd listening" {
                listening = true;
                if let Some(addr) = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok()) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        }
        let level = parsed
            .as_ref()
            .and_then(|v| v["level"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let Ok(mut t) = tail.lock() else { break };
        match level.as_str() {
            "WARN" if listening => t.warnings += 1,
            "ERROR" => t.errors += 1,
            _ => {}
        }
        t.lines.push_back(line);
        if t.lines.len() > LOG_TAIL_MAX {
            t.lines.pop_front();
        }
    }
}

async fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "orderd-bench")
        .header(CONTENT_TYPE, content_type);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, t);
    }
    Ok(loadgen::call(conn, req.body(Full::new(body))?).await?)
}

async fn dev_token(conn: &mut Conn, claims: serde_json::Value) -> anyhow::Result<String> {
    let (status, body) = request(
        conn,
        "POST",
        "/v1/dev/token",
        None,
        "application/json",
        Bytes::from(claims.to_string()),
    )
    .await?;
    if status != StatusCode::OK {
        bail!(
            "POST /v1/dev/token {claims}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let token = v["access_token"]
        .as_str()
        .context("no access_token in the answer")?;
    Ok(format!("Bearer {token}"))
}

/// Registers one webhook endpoint for each of the first `n` accounts of the data set (as that
/// account's admin, every event type), all delivering to `url`.
pub async fn register_webhooks(addr: SocketAddr, n: usize, url: &str) -> anyhow::Result<()> {
    let mut conn = loadgen::connect(addr).await?;
    let endpoint = Bytes::from(serde_json::json!({"url": url, "event_types": ["*"]}).to_string());
    for i in 0..n {
        let claims = serde_json::json!({
            "account": Dataset::account(i), "user": "bench-admin", "roles": ["account_admin"]
        });
        let admin = dev_token(&mut conn, claims).await?;
        let (status, body) = request(
            &mut conn,
            "POST",
            "/v1/webhooks",
            Some(&admin),
            "application/json",
            endpoint.clone(),
        )
        .await?;
        if status != StatusCode::CREATED {
            bail!(
                "POST /v1/webhooks: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(())
}

/// Imports the data set as an operator and returns one buyer token per account.
async fn load_dataset(
    addr: SocketAddr,
    dataset: &Dataset,
    issuer: Option<&BenchIssuer>,
) -> anyhow::Result<Vec<String>> {
    let mut conn = loadgen::connect(addr).await?;
    let operator = match issuer {
        Some(i) => i.token(None, "bench", &["operator"])?,
        None => {
            dev_token(
                &mut conn,
                serde_json::json!({"user": "bench", "roles": ["operator"]}),
            )
            .await?
        }
    };
    for (kind, csv) in dataset.imports() {
        let path = format!("/v1/admin/import/{kind}");
        let (status, body) = request(
            &mut conn,
            "POST",
            &path,
            Some(&operator),
            "text/csv",
            Bytes::from(csv),
        )
        .await?;
        if status != StatusCode::OK {
            bail!("POST {path}: {status} {}", String::from_utf8_lossy(&body));
        }
    }
    let token_accounts = dataset
        .token_accounts
        .unwrap_or(dataset.accounts)
        .min(dataset.accounts);
    let mut tokens = Vec::with_capacity(token_accounts);
    for i in 0..token_accounts {
        let account = Dataset::account(i);
        tokens.push(match issuer {
            Some(s) => s.token(Some(&account), "bench-buyer", &["buyer"])?,
            None => {
                let claims = serde_json::json!({
                    "account": account, "user": "bench-buyer", "roles": ["buyer"]
                });
                dev_token(&mut conn, claims).await?
            }
        });
    }
    Ok(tokens)
}

/// The ceiling server as a child process of this binary; killed on drop (and its data
/// directory, if it has one, deleted).
pub struct Ceiling {
    child: Child,
    _stdin: Option<std::process::ChildStdin>,
    pub pid: u32,
    pub addr: SocketAddr,
    _data: Option<tempfile::TempDir>,
}

impl Ceiling {
    /// The HTTP ceiling (parse only); with `sled` (a parent directory on the disk orderd uses,
    /// and the shapes of orderd's records), the storage ceiling on a new directory under it.
    pub fn start(sled: Option<(&Path, &[RecordShape])>) -> anyhow::Result<Ceiling> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["ceiling", "--listen", "127.0.0.1:0"]);
        let data = match sled {
            Some((root, shapes)) => {
                let dir = tempfile::Builder::new()
                    .prefix("orderd-bench-sled-")
                    .tempdir_in(root)
                    .with_context(|| format!("creating a directory under {}", root.display()))?;
                cmd.arg("--sled")
                    .arg(dir.path())
                    .arg("--records")
                    .arg(serde_json::to_string(shapes)?);
                Some(dir)
            }
            None => None,
        };
        // Its stdin is a pipe it watches: when this process ends, however it ends, the pipe
        // closes and the ceiling exits instead of lingering.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the ceiling server")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let Some(addr) = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the ceiling server did not report its address (got {line:?})");
        };
        Ok(Ceiling {
            pid: child.id(),
            _stdin: child.stdin.take(),
            child,
            addr,
            _data: data,
        })
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `pid` uses under 5 % of a core over 500 ms (work left from an earlier step is
/// done) and every other process together uses under `others_max` cores (the machine is
/// quiet), at most `max`. Returns how long it took and whether it got quiet.
pub async fn settle(pid: u32, others_max: f64, max: Duration) -> (Duration, bool) {
    let started = Instant::now();
    while started.elapsed() < max {
        let (Ok(a), Ok(ma)) = (procstat::sample(Some(pid)), procstat::machine()) else {
            break;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (Ok(b), Ok(mb)) = (procstat::sample(Some(pid)), procstat::machine()) else {
            break;
        };
        let server = procstat::delta(&a, &b).cores();
        let busy = procstat::machine_cores(&ma, &mb).0;
        if server < 0.05 && busy - server < others_max {
            return (started.elapsed(), true);
        }
    }
    (started.elapsed(), false)
}

/// What orderd stored for one order of each size class of `pool`: places one order per class
/// on `daemon`, kills it (SIGKILL: the records are durable once acknowledged) and reads the
/// order's record and its audit records back from its journal. The daemon is dead afterwards.
pub async fn record_shapes(
    daemon: &mut Daemon,
    pool: &crate::workload::BodyPool,
) -> anyhow::Result<Vec<RecordShape>> {
    let token = daemon.tokens.first().context("no account token")?.clone();
    let mut conn = loadgen::connect(daemon.addr).await?;
    let mut placed = vec![];
    for (class, bodies) in pool.mix.classes.iter().zip(&pool.bodies) {
        let body = bodies.first().context("an empty body pool")?.clone();
        let (status, answer) = request(
            &mut conn,
            "POST",
            "/v1/orders",
            Some(&token),
            "application/json",
            body,
        )
        .await?;
        if status != StatusCode::CREATED {
            bail!(
                "placing a {}-line order: {status} {}",
                class.lines,
                String::from_utf8_lossy(&answer)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&answer)?;
        let field = |name: &str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no {name} in the answer"))
        };
        placed.push((class.lines, field("account")?, field("id")?));
    }
    drop(conn);
    daemon.kill9();
    let journal = orderd_storage::Journal::open(
        &daemon.data_dir().join("journal"),
        &orderd_storage::JournalConfig::default(),
    )?;
    let mut shapes = vec![];
    for (lines, account, id) in placed {
        // The key layout of `orderd_actors::records::order_key`.
        let key = format!("ord/{account}/{id}");
        let value = journal
            .get(key.as_bytes())?
            .with_context(|| format!("no record {key} in the journal"))?;
        // The record ends with the seq of its audit record (`Batch::put_stamped`).
        let (_, seq) = orderd_storage::layout::split_stamp(&value)
            .with_context(|| format!("record {key} has no audit stamp"))?;
        let audit = journal
            .audit_record(seq)?
            .with_context(|| format!("no audit record {seq} about {id}"))?;
        anyhow::ensure!(
            audit.subject == id.as_bytes(),
            "audit record {seq} is not about {id}"
        );
        let audits = vec![(audit.subject.len(), audit.payload.len())];
        shapes.push(RecordShape {
            lines,
            puts: vec![(key.len(), value.len())],
            audits,
        });
    }
    journal.close()?;
    Ok(shapes)
}

/// Places one 1-line order for each account the daemon holds a token for, one after the
/// other: every such account then has a running account actor. Returns how many succeeded.
pub async fn touch_accounts(daemon: &Daemon, body: Bytes) -> anyhow::Result<usize> {
    let mut conn = loadgen::connect(daemon.addr).await?;
    let mut placed = 0;
    for token in &daemon.tokens {
        let (status, _) = request(
            &mut conn,
            "POST",
            "/v1/orders",
            Some(token),
            "application/json",
            body.clone(),
        )
        .await?;
        if status == StatusCode::CREATED {
            placed += 1;
        }
    }
    Ok(placed)
}
