//! `TestEnv`: the built `orderd` binary serving a fresh temporary data directory, with its API
//! client; restart, SIGKILL and SIGTERM; the offline tools. Dropping it kills the daemon and
//! deletes the directory.

use orderd_chaos::{Api, Daemon, DaemonSpec, Reply, ToolOutput};
use serde_json::{json, Value};
use std::path::Path;
use std::process::ExitStatus;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_orderd");

pub struct TestEnv {
    // Declared before `dir` so that, should `Drop` change, the daemon still dies first.
    daemon: Option<Daemon>,
    api: Option<Api>,
    /// An operator's token for `/metrics`, taken once per start: polling a metric must not
    /// spend the sign-in rate limit.
    operator: tokio::sync::OnceCell<String>,
    pub spec: DaemonSpec,
    dir: TempDir,
}

impl TestEnv {
    /// The daemon on a fresh directory with the demo data.
    pub async fn start() -> TestEnv {
        TestEnv::start_with(&[]).await
    }

    /// Same, with extra environment (e.g. `ORDERD_LIMITS__ACCOUNT_INFLIGHT_MAX=1`).
    pub async fn start_with(env: &[(&str, &str)]) -> TestEnv {
        TestEnv::start_with_args(env, &[]).await
    }

    /// Same, with extra `serve` arguments (e.g. `--oidc-issuer URL`).
    pub async fn start_with_args(env: &[(&str, &str)], args: &[&str]) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("orderd-it-")
            .tempdir()
            .expect("creating a temporary directory");
        let mut spec = DaemonSpec::new(BIN, dir.path());
        for (k, v) in env {
            spec = spec.with_env(k, v);
        }
        spec.serve_args = args.iter().map(|a| a.to_string()).collect();
        let mut env = TestEnv {
            daemon: None,
            api: None,
            operator: tokio::sync::OnceCell::new(),
            spec,
            dir,
        };
        env.restart().await;
        env
    }

    /// The running daemon's last log lines (JSON).
    pub fn log_tail(&self) -> String {
        self.daemon
            .as_ref()
            .expect("the daemon is not running")
            .log_tail()
    }

    /// The running daemon's process.
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon is not running")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The client of the running daemon.
    pub fn api(&self) -> &Api {
        self.api.as_ref().expect("the daemon is not running")
    }

    /// (Re)starts the daemon on the same directory; a running one is killed first.
    pub async fn restart(&mut self) {
        self.kill().await;
        let spec = self.spec.clone();
        let daemon = tokio::task::spawn_blocking(move || spec.start())
            .await
            .expect("start task")
            .unwrap_or_else(|e| panic!("starting orderd: {e:#}"));
        self.api = Some(Api::new(&daemon.base_url()).expect("HTTP client"));
        self.operator = tokio::sync::OnceCell::new();
        self.daemon = Some(daemon);
    }

    /// SIGKILL, if running.
    pub async fn kill(&mut self) {
        self.api = None;
        if let Some(d) = self.daemon.take() {
            tokio::task::spawn_blocking(move || d.kill())
                .await
                .expect("kill task")
                .expect("killing orderd");
        }
    }

    /// SIGTERM; the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.api = None;
        let d = self.daemon.take().expect("the daemon is not running");
        tokio::task::spawn_blocking(move || d.terminate())
            .await
            .expect("terminate task")
            .unwrap_or_else(|e| panic!("stopping orderd: {e:#}"))
    }

    /// The exit status of a daemon that stops on its own within `timeout` (panics otherwise).
    pub async fn wait_for_exit(&mut self, timeout: std::time::Duration) -> ExitStatus {
        self.api = None;
        let mut d = self.daemon.take().expect("the daemon is not running");
        let (status, log) =
            tokio::task::spawn_blocking(move || (d.wait_for_exit(timeout), d.log_tail()))
                .await
                .expect("wait task");
        status.unwrap_or_else(|| panic!("orderd still runs after {timeout:?}; log:\n{log}"))
    }

    /// `orderd audit verify` on this directory (stop the daemon first).
    pub async fn audit_verify(&self) -> ToolOutput {
        let spec = self.spec.clone();
        tokio::task::spawn_blocking(move || spec.audit_verify())
            .await
            .expect("tool task")
            .expect("running orderd audit verify")
    }

    /// `orderd check` on this directory (stop the daemon first).
    pub async fn check(&self) -> ToolOutput {
        let spec = self.spec.clone();
        tokio::task::spawn_blocking(move || spec.check())
            .await
            .expect("tool task")
            .expect("running orderd check")
    }

    /// `orderd import KIND` of `csv` into this directory (stop the daemon first).
    pub async fn import(&self, kind: &str, csv: &str) -> ToolOutput {
        let file = self.data_dir().join(format!("import-{kind}.csv"));
        std::fs::write(&file, csv).expect("writing the import file");
        let (spec, kind) = (self.spec.clone(), kind.to_owned());
        tokio::task::spawn_blocking(move || spec.import(&kind, &file))
            .await
            .expect("tool task")
            .expect("running orderd import")
    }

    /// A token of `user` of `account` with `roles`.
    pub async fn token(&self, account: &str, user: &str, roles: &[&str]) -> String {
        self.api()
            .account_token(account, user, roles)
            .await
            .expect("dev token")
    }

    /// A warehouse token.
    pub async fn warehouse_token(&self, warehouse: &str) -> String {
        self.api()
            .warehouse_token(warehouse)
            .await
            .expect("dev token")
    }

    pub async fn get(&self, token: &str, path: &str) -> Reply {
        self.api().get(token, path).await.expect("request")
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> Reply {
        self.api().post(token, path, &body).await.expect("request")
    }

    /// An account admin creates (or creates again) a user of their account: must be 201.
    pub async fn create_user(&self, admin: &str, user: Value) {
        let r = self.post(admin, "/v1/account/users", user).await;
        assert_eq!(r.status, 201, "{r}");
    }

    /// The value of one series of `/metrics` (e.g. `orderd_outbox_depth{reader="nats"}`), read
    /// with an operator's token; `None` when the series is not there (yet).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let op = (self.operator)
            .get_or_init(async || self.api().operator_token().await.expect("operator token"))
            .await;
        let r = self.get(op, "/metrics").await;
        assert_eq!(r.status, 200, "{r:?}");
        let text = r.body.as_str().expect("the metrics text");
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Places an order of `lines` (`(sku, qty)`) to `ship_to`.
    pub async fn place(
        &self,
        token: &str,
        key: &str,
        lines: &[(&str, u32)],
        ship_to: &str,
    ) -> Reply {
        let lines: Vec<Value> = lines
            .iter()
            .map(|(sku, qty)| json!({"sku": sku, "qty": qty}))
            .collect();
        self.api()
            .place(token, key, &json!({"lines": lines, "ship_to": ship_to}))
            .await
            .expect("request")
    }
}

/// Opens a stopped daemon's journal with sled directly, with the settings it was created with.
pub fn open_journal(data_dir: &Path) -> sled::Db {
    orderd_storage::Journal::open_raw(&data_dir.join("journal"))
        .expect("opening the journal with sled")
}

/// A field of a JSON body as a string (panics naming the body when absent).
pub fn str_field<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {field:?} in {v}"))
}

/// A money amount (`{"amount":"12.50","currency":"EUR"}`) or a bare decimal string.
pub fn decimal(v: &Value) -> rust_decimal::Decimal {
    let s = v
        .get("amount")
        .and_then(Value::as_str)
        .or_else(|| v.as_str())
        .unwrap_or_else(|| panic!("not an amount: {v}"));
    s.parse()
        .unwrap_or_else(|e| panic!("amount {s:?} does not parse: {e}"))
}

/// The warehouses holding allocations of an order.
pub fn warehouses_of(order: &Value) -> Vec<String> {
    let mut out: Vec<String> = order["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["allocations"].as_array().into_iter().flatten())
        .filter_map(|a| a["warehouse"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}
