//! The operators' live dashboard (`/ops/dashboard`) in headless Chromium: Debian's `chromium`
//! driven by `ops/browser/dashboard.mjs` (the pinned playwright-core, installed by `ops/test`
//! with `npm ci`). The page loads with an operator's token, shows live figures that change while
//! orders go through, and logs no console error. Also: `--metrics-listen` serves `/metrics`
//! without a token, and the per-order spans can be turned on in the JSON log.

use crate::env::TestEnv;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// Each wait inside the page (load, first data, figures changing).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// From a request to the driver to its answer line (Chromium's start included).
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the driver may take to close Chromium (which deletes its temporary profile) before
/// it is killed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Orders put through while the page watches.
const ORDERS: usize = 20;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/browser/dashboard.mjs")
}

/// The browser: Debian's package installs it as `chromium`. Missing is a failure, not a skip.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("chromium is not installed: run ops/test (it installs Debian's chromium package)")
    })
}

struct Driver {
    child: Child,
    /// Closed on drop: the driver then closes the browser and exits.
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Driver {
    fn start(base: &str, token: &str) -> Driver {
        let modules = script()
            .with_file_name("node_modules")
            .join("playwright-core");
        assert!(
            modules.is_dir(),
            "{} is missing: run ops/test (it installs the pinned playwright-core with npm ci)",
            modules.display()
        );
        let mut child = Command::new("node")
            .arg(script())
            .env("ORDERD_URL", base)
            .env("ORDERD_TOKEN", token)
            .env("CHROMIUM", chromium())
            .env("STEP_TIMEOUT_MS", STEP_TIMEOUT.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting node (install Node.js; ops/test does): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver {
            child,
            stdin: Some(stdin),
            lines,
        }
    }

    /// The next JSON line of the driver, which must be of `phase`.
    fn next(&mut self, phase: &str) -> Value {
        let line = match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => panic!("no {phase} line from the browser driver"),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                panic!("the browser driver ended before its {phase} line ({status:?}); see its stderr above")
            }
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the driver printed {line:?}: {e}"));
        assert_eq!(v["phase"], phase, "{v}");
        v
    }

    /// Tells the driver the load is done: `orders` placed, `rejected` refused.
    fn go_on(&mut self, orders: usize, rejected: usize) {
        let stdin = self.stdin.as_mut().expect("stdin is open until drop");
        let load = serde_json::json!({"orders": orders, "rejected": rejected});
        writeln!(stdin, "{load}").expect("writing to the browser driver");
        stdin.flush().expect("flushing to the browser driver");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Let the driver close Chromium itself (its temporary profile is removed then), and
        // kill it only when it does not finish in time.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + CLOSE_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn no_console_errors(v: &Value) {
    let errors = v["console_errors"].as_array().expect("console_errors");
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
}

fn texts(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_owned())
        .collect()
}

// An operator opens the dashboard on an idle daemon: no orders yet. Orders go through (and one
// is refused); the page then shows them: more orders in the last minute, latency percentiles
// and chart points, the refusal's code, the api channel healthy, and never a console error.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_live_figures_under_load() {
    let env = TestEnv::start().await;
    let operator = env.api().operator_token().await.expect("operator token");
    let buyer = env.token("ACME", "carol", &["buyer"]).await;
    let base = env.api().base().to_owned();
    let (mut driver, before) = tokio::task::spawn_blocking(move || {
        let mut d = Driver::start(&base, &operator);
        let before = d.next("before");
        (d, before)
    })
    .await
    .expect("driver task");
    no_console_errors(&before);
    assert_eq!(before["orders_last_minute"], 0, "{before}");
    assert_eq!(before["p99"], "–", "no latency without orders: {before}");
    // Six queues (the daemon-wide bound on changes among them) and the three outbox readers;
    // no dead letters.
    assert_eq!(before["queue_rows"], 9, "{before}");
    assert_eq!(before["dead_letters"], "0", "{before}");
    assert_eq!(
        before["dead_letter_rows"],
        serde_json::json!(["none"]),
        "{before}"
    );

    for i in 0..ORDERS {
        let r = env
            .place(&buyer, &format!("dash-{i}"), &[("BOLT-0000", 10)], "BERLIN")
            .await;
        assert_eq!(r.status, 201, "{r}");
    }
    let refused = env
        .place(&buyer, "dash-bad", &[("NOPE-0000", 1)], "BERLIN")
        .await;
    assert_eq!(refused.status, 422, "{refused}");

    let after = tokio::task::spawn_blocking(move || {
        driver.go_on(ORDERS, 1);
        driver.next("after")
    })
    .await
    .expect("driver task");
    no_console_errors(&after);
    assert!(
        after["status"].as_str().unwrap().starts_with("updated"),
        "{after}"
    );
    let orders = after["orders_last_minute"].as_u64().expect("a number");
    assert!(
        orders >= ORDERS as u64,
        "the page shows {orders} orders: {after}"
    );
    assert!(after["rejected"].as_u64().unwrap() >= 1, "{after}");
    for f in ["p50", "p99", "p999"] {
        let v: f64 = after[f]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{f} is not a figure: {after}"));
        assert!(v > 0.0, "{f}: {after}");
    }
    assert!(after["latency_points"].as_u64().unwrap() > 0, "{after}");
    assert!(after["throughput_points"].as_u64().unwrap() > 0, "{after}");
    assert!(
        texts(&after, "rejection_codes")
            .iter()
            .any(|r| r.starts_with("unknown_sku")),
        "{after}"
    );
    assert!(
        texts(&after, "sources")
            .iter()
            .any(|r| r.starts_with("api") && r.ends_with("ok")),
        "{after}"
    );
}

/// The JSON log lines of the daemon that satisfy `pred`, polled until one does or `STEP_TIMEOUT`.
async fn log_lines(env: &TestEnv, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let found: Vec<Value> = env
            .log_tail()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| pred(v))
            .collect();
        if !found.is_empty() || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// With the per-order spans turned on, one order can be followed through the JSON log: the
// `order` span (handler and account actor) and its `journal.commit` child close with their
// times and carry the order id and account. `--metrics-listen` serves /metrics without a token.
#[tokio::test]
async fn an_order_can_be_followed_in_the_log_and_metrics_scraped_without_a_token() {
    let env = TestEnv::start_with_args(
        &[("ORDERD_LOG", "info,orderd::order=debug")],
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let buyer = env.token("ACME", "carol", &["buyer"]).await;
    let r = env
        .place(&buyer, "trace-1", &[("BOLT-0000", 10)], "BERLIN")
        .await;
    assert_eq!(r.status, 201, "{r}");
    let id = r.id().expect("order id").to_owned();

    let of_order = |v: &Value, name: &str| {
        let span = &v["span"];
        let order = if name == "order" {
            span
        } else {
            &v["spans"][0]
        };
        v["target"] == "orderd::order"
            && v["fields"]["message"] == "close"
            && span["name"] == name
            && order["order.id"] == id.as_str()
            && order["account.id"] == "ACME"
    };
    let closed = log_lines(&env, |v| of_order(v, "order")).await;
    assert_eq!(closed.len(), 1, "{}", env.log_tail());
    assert_eq!(closed[0]["span"]["channel"], "api");
    assert!(
        closed[0]["fields"]["time.busy"].is_string(),
        "{}",
        closed[0]
    );
    let commit = log_lines(&env, |v| of_order(v, "journal.commit")).await;
    assert_eq!(commit.len(), 1, "{}", env.log_tail());

    let bound = log_lines(&env, |v| {
        v["fields"]["message"] == "serving /metrics without authentication"
    })
    .await;
    let addr = bound
        .first()
        .and_then(|v| v["fields"]["addr"].as_str())
        .unwrap_or_else(|| panic!("no metrics listener in the log: {}", env.log_tail()))
        .to_owned();
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains(r#"orderd_capture_seconds_count{channel="api",outcome="accepted"} 1"#),
        "{text}"
    );
    assert!(!text.contains(&id), "no order id in labels");
}
