//! NATS JetStream: every committed order change reaches the stream, in per-order order and
//! without gaps, as seen by an independent consumer (the Python client nats-py,
//! `ops/nats/consume.py`); warehouses get their allocation, shipment and release events on
//! their own subjects. Stopping NATS under load, and killing orderd during the outage, loses
//! nothing: capture goes on, events wait in the audit log and follow once NATS is back. A
//! connection broken at an order's publish keeps the order's events in order.
//!
//! Each test starts its own `nats-server` (Debian's package; `ops/test` installs it) with
//! JetStream on a free port and a temporary store, and stops it afterwards.

use crate::env::{str_field, warehouses_of, TestEnv};
use orderd_chaos::Reply;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a started nats-server may take to accept connections.
const NATS_START_MAX: Duration = Duration::from_secs(10);
/// orderd's streams' byte limit in the tests: JetStream reserves it from the store's disk, and
/// the default (1 GiB per stream) cannot be created on a nearly full disk.
const STREAM_BYTES: (&str, &str) = ("ORDERD_NATS__MAX_BYTES", "67108864");
/// How long events may take to reach the stream once NATS is reachable.
const DELIVERY_MAX: Duration = Duration::from_secs(30);

/// Passwords of the users of `ops/nats/nats-server.conf` in the tests, by the environment
/// variable the file reads each from.
const PASSWORDS: [(&str, &str); 4] = [
    ("ORDERD_NATS_PASSWORD", "orderd-test-password"),
    ("WAREHOUSE_BER_NATS_PASSWORD", "ber-test-password"),
    ("WAREHOUSE_MUC_NATS_PASSWORD", "muc-test-password"),
    ("WAREHOUSE_HAM_NATS_PASSWORD", "ham-test-password"),
];

/// The test password of a user of the shipped config.
fn password(var: &str) -> &'static str {
    PASSWORDS
        .iter()
        .find(|(v, _)| *v == var)
        .map(|(_, p)| *p)
        .expect("a user of ops/nats/nats-server.conf")
}

pub struct NatsServer {
    child: Option<Child>,
    /// 0 until the first start has picked one.
    port: u16,
    store: TempDir,
    /// The server's config file: the shipped one with its store in `store`, or none (no users).
    config: Option<PathBuf>,
    /// More arguments of nats-server (TLS).
    extra: Vec<String>,
}

/// The client port in a nats-server ports file (`{"nats":["nats://127.0.0.1:PORT"], ...}`);
/// `None` while it is missing or not completely written.
fn client_port(ports_file: &std::path::Path) -> Option<u16> {
    let ports: Value = serde_json::from_slice(&std::fs::read(ports_file).ok()?).ok()?;
    let url = ports["nats"].get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl NatsServer {
    /// A JetStream server without users on a free port with an empty store.
    pub fn start() -> NatsServer {
        NatsServer::started(false, Vec::new())
    }

    /// The same with the shipped `ops/nats/nats-server.conf`, its users' passwords from
    /// [`PASSWORDS`] (only the store directory differs from the file).
    pub fn start_shipped() -> NatsServer {
        NatsServer::started(true, Vec::new())
    }

    /// A server without users that speaks only TLS, with the certificate `certs` made for
    /// 127.0.0.1, and takes only clients with a certificate signed by `certs`' CA.
    pub fn start_tls(certs: &Certificates) -> NatsServer {
        NatsServer::started(false, certs.server_args())
    }

    /// A JetStream server without users that takes messages of at most `bytes` (NATS's
    /// `max_payload`; its default is 1 MiB).
    pub fn start_with_max_payload(bytes: usize) -> NatsServer {
        let mut server = NatsServer::started(false, Vec::new());
        server.stop();
        let path = server.store.path().join("nats-server.conf");
        let store_dir = server.store.path().join("js");
        std::fs::write(
            &path,
            format!("max_payload: {bytes}\njetstream {{\n  store_dir: {store_dir:?}\n}}\n"),
        )
        .expect("config");
        server.config = Some(path);
        server.resume();
        server
    }

    fn started(shipped: bool, extra: Vec<String>) -> NatsServer {
        let store = tempfile::Builder::new()
            .prefix("orderd-nats-")
            .tempdir()
            .expect("a temporary store");
        let config = shipped.then(|| {
            let file = workspace().join("ops/nats/nats-server.conf");
            let text = std::fs::read_to_string(&file).expect("ops/nats/nats-server.conf");
            let shipped_store = "store_dir: /var/lib/nats";
            assert!(
                text.contains(shipped_store),
                "{} moved its store",
                file.display()
            );
            let path = store.path().join("nats-server.conf");
            let store_dir = format!("store_dir: {:?}", store.path().join("js"));
            std::fs::write(&path, text.replace(shipped_store, &store_dir)).expect("config");
            path
        });
        let mut server = NatsServer {
            child: None,
            port: 0,
            store,
            config,
            extra,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same store and port. The first start lets nats-server
    /// pick a free port itself (`-p -1`) and reads it from the ports file nats-server writes
    /// once it listens, so no other process can take the port between choosing and binding it.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let ports_dir = self.store.path().join("ports");
        std::fs::create_dir_all(&ports_dir).expect("the ports file directory");
        let port = match self.port {
            0 => "-1".to_owned(),
            p => p.to_string(),
        };
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port])
            .arg("--ports_file_dir")
            .arg(&ports_dir);
        match &self.config {
            Some(config) => cmd.arg("-c").arg(config).envs(PASSWORDS),
            None => cmd.arg("-js").arg("-sd").arg(self.store.path()),
        };
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting nats-server ({e}); ops/test installs Debian's nats-server package")
            });
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        let child = self.child.insert(child);
        let deadline = Instant::now() + NATS_START_MAX;
        let listening = loop {
            if let Some(port) = client_port(&ports_file) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nats-server exited at start ({status}); asked for port {port} (-1: any free one)"
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            self.port == 0 || listening == self.port,
            "nats-server listens on {listening}, not on {}",
            self.port
        );
        self.port = listening;
    }

    /// Stops the server with SIGTERM (a clean shutdown, which writes its store out) and waits
    /// for it; SIGKILL after `NATS_START_MAX`. A SIGKILL can lose messages NATS already
    /// acknowledged (Debian's 2.9 syncs its store only periodically): that is why orderd's
    /// audit log, not NATS, is the source of truth for events.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + NATS_START_MAX;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, made with
/// openssl(1) into a temporary directory (PEM; keys in PKCS#8).
pub struct Certificates {
    dir: TempDir,
}

impl Certificates {
    pub fn make() -> Certificates {
        let dir = tempfile::Builder::new()
            .prefix("orderd-nats-tls-")
            .tempdir()
            .expect("a temporary directory");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("running openssl ({e}); ops/test installs it"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-days", "1", "-subj", "/CN=orderd test CA"][..],
                &key,
                &["-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat(),
        );
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.path().join(format!("{name}.ext")), ext).expect("extensions");
            let (csr, k, crt, extfile) = (
                format!("{name}.csr"),
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let subject = format!("/CN=orderd test {name}");
            openssl(
                &[
                    &["req", "-subj", &subject][..],
                    &key,
                    &["-keyout", &k, "-out", &csr],
                ]
                .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &extfile,
                "-out",
                &crt,
            ]);
        }
        Certificates { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_string_lossy().into_owned()
    }

    fn server_args(&self) -> Vec<String> {
        [
            ("--tlscert", "server.crt"),
            ("--tlskey", "server.key"),
            ("--tlscacert", "ca.crt"),
        ]
        .into_iter()
        .flat_map(|(flag, file)| [flag.to_owned(), self.path(file)])
        .chain(["--tls".to_owned(), "--tlsverify".to_owned()])
        .collect()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `ops/nats/consume.py` saw on `stream`, read with the durable consumer `durable`: only
/// what earlier reads did not see, checked against them (their state is kept in the store's
/// directory, so it lives as long as the consumer's own position).
fn consume(nats: &NatsServer, stream: &str, durable: &str, any_sequence: bool) -> Value {
    let mut cmd = consume_py(nats, stream, durable);
    cmd.arg("--state").arg(
        nats.store
            .path()
            .join(format!("consume-{stream}-{durable}.json")),
    );
    if any_sequence {
        cmd.arg("--any-sequence");
    }
    let out = cmd.output().expect("running the nats-py consumer");
    assert!(
        out.status.success(),
        "consume.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("consume.py prints JSON")
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `ops/nats/consume.py` reading `durable` on `stream` (see its usage).
fn consume_py(nats: &NatsServer, stream: &str, durable: &str) -> Command {
    let python = workspace().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: ops/test creates it and installs nats-py (ops/nats/requirements.txt)",
        python.display()
    );
    let mut cmd = Command::new(python);
    cmd.arg(workspace().join("ops/nats/consume.py"))
        .args([nats.url().as_str(), stream, durable]);
    cmd
}

/// What warehouse `wh` reads from `durable` on `stream`, signed in as its user of the shipped
/// config, with replies on its own inbox prefix; `bind`: read an existing consumer. Ok: what
/// consume.py printed; Err: why NATS refused.
fn consume_as(
    nats: &NatsServer,
    wh: &str,
    stream: &str,
    durable: &str,
    bind: bool,
) -> Result<Value, String> {
    let more: &[&str] = if bind { &["--bind"] } else { &[] };
    consume_py_as(nats, wh, &format!("_INBOX_{wh}"), stream, durable, more)
}

/// The same with replies on `inbox` and `more` arguments of consume.py.
fn consume_py_as(
    nats: &NatsServer,
    wh: &str,
    inbox: &str,
    stream: &str,
    durable: &str,
    more: &[&str],
) -> Result<Value, String> {
    let mut cmd = consume_py(nats, stream, durable);
    cmd.args(more);
    cmd.args(["--idle", "1", "--any-sequence", "--user"])
        .arg(format!("warehouse-{wh}"))
        .args(["--inbox-prefix", inbox])
        .env(
            "NATS_PASSWORD",
            password(&format!("WAREHOUSE_{wh}_NATS_PASSWORD")),
        );
    let out = cmd.output().expect("running the nats-py consumer");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "consume.py printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    match out.status.code() {
        Some(0) => Ok(printed),
        Some(3) => Err(printed["error"].as_str().unwrap_or_default().to_owned()),
        _ => panic!(
            "consume.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Reads the order stream until every order of `want` (order id -> its version) has all its
/// events, or fails after `DELIVERY_MAX`. Returns the orders and events seen.
fn await_orders(nats: &NatsServer, want: &BTreeMap<String, u64>) -> BTreeMap<String, Vec<u64>> {
    let deadline = Instant::now() + DELIVERY_MAX;
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    loop {
        let got = consume(nats, "ORDERD_ORDERS", "test-orders", false);
        assert_eq!(got["problems"], json!([]), "{got}");
        for (order, seqs) in got["orders"].as_object().expect("orders") {
            let seqs = seqs
                .as_array()
                .expect("seqs")
                .iter()
                .map(|s| s.as_u64().expect("seq"));
            seen.entry(order.clone()).or_default().extend(seqs);
        }
        let complete = want
            .iter()
            .all(|(o, v)| seen.get(o).is_some_and(|s| s.len() as u64 >= *v));
        if complete {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "events missing after {DELIVERY_MAX:?}: want {want:?}, seen {seen:?}"
        );
    }
}

// Orders placed, approved, shipped and cancelled through orderd: the order stream carries
// every change of every order with sequences 1..=version in order (checked per message by
// nats-py), with Nats-Msg-Id equal to the event id; the allocation stream carries, on each
// warehouse's subject, the allocation, the shipment and the release, also for a change that
// moves stock in two warehouses at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_jetstream_in_order() {
    let nats = NatsServer::start();
    let env = TestEnv::start_with(&[("ORDERD_NATS__URL", &nats.url()), STREAM_BYTES]).await;
    let alice = env.token("ACME", "alice", &["buyer"]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;

    let mut want = BTreeMap::new();
    let r = env
        .place(&alice, "n-1", &[("BOLT-0010", 700)], "BERLIN")
        .await;
    assert_eq!(str_field(&r.body, "state"), "pending_approval", "{r}");
    let big = str_field(&r.body, "id").to_owned();
    let r = env
        .post(&bob, &format!("/v1/orders/{big}/approve"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    let shipped_from = warehouses_of(&r.body);
    let r = env
        .post(
            &env.warehouse_token(&shipped_from[0]).await,
            &format!("/v1/orders/{big}/ship"),
            json!({}),
        )
        .await;
    assert_eq!(str_field(&r.body, "state"), "shipped", "{r}");
    want.insert(big.clone(), 3);

    let r = env
        .place(&alice, "n-2", &[("BOLT-0010", 5)], "BERLIN")
        .await;
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    let cancelled = str_field(&r.body, "id").to_owned();
    let cancelled_from = warehouses_of(&r.body);
    let r = env
        .post(&alice, &format!("/v1/orders/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");
    want.insert(cancelled.clone(), 2);
    // Stock from two warehouses in one change: each warehouse's subject gets it.
    let two = place_in_ber_and_muc(&env, &bob, "n-two").await;
    want.insert(two.clone(), 1);
    for i in 0..20 {
        want.insert(place_one(&env, &bob, &format!("n-more-{i}")).await, 1);
    }
    assert_all_delivered(&nats, &want);

    let alloc = consume(&nats, "ORDERD_ALLOCATIONS", "test-alloc", true);
    assert_eq!(alloc["problems"], json!([]), "{alloc}");
    let subjects = alloc["subjects"].as_object().expect("subjects");
    // The approved order: allocated, then shipped, both on its warehouse's subject.
    let big_subject = format!("orderd.allocations.{}.{big}", shipped_from[0]);
    assert_eq!(subjects.get(&big_subject), Some(&json!(2)), "{alloc}");
    // The cancelled one: allocated at once, then released.
    let cancel_subject = format!("orderd.allocations.{}.{cancelled}", cancelled_from[0]);
    assert_eq!(subjects.get(&cancel_subject), Some(&json!(2)), "{alloc}");
    assert_eq!(alloc["orders"][&big], json!([2, 3]), "{alloc}");
    for w in ["BER", "MUC"] {
        let subject = format!("orderd.allocations.{w}.{two}");
        assert_eq!(
            subjects.get(&subject),
            Some(&json!(1)),
            "{subject}: {alloc}"
        );
    }
    // Nothing went out twice here, so JetStream took no message for a duplicate.
    let duplicates = env.metric("orderd_nats_duplicates_total").await;
    assert!(duplicates.unwrap_or(0.0) == 0.0, "{duplicates:?}");
}

// A server that takes smaller messages than an event: the event goes out cut (saying how many
// lines each message leaves out), and every event after it still follows, instead of the
// publisher trying the one it cannot send for good. The order subject gets it without lines;
// a warehouse gets the lines it holds stock for when they fit (MUC's 10), none when they do
// not (BER's 50). The HTTP replay keeps the whole event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_nats_takes_holds_nothing_up() {
    const MAX_PAYLOAD: usize = 8 << 10;
    let nats = NatsServer::start_with_max_payload(MAX_PAYLOAD);
    let env = TestEnv::start_with(&[("ORDERD_NATS__URL", &nats.url()), STREAM_BYTES]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    // 60 lines of items any account may order one of, 50 held in BER and 10 in MUC: an event
    // of about 20 KB, MUC's part about 4 KB.
    let page = env.get(&bob, "/v1/catalog?limit=200").await;
    let in_stock = |view: &Value, w: &str| view["available"][w].as_u64().is_some_and(|n| n > 0);
    let orderable: Vec<&Value> = page.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|v| {
            let item = &v["item"];
            item["status"] == "active" && item["min_qty"] == 1 && item["pack_size"] == 1
        })
        .collect();
    let take = |w: &'static str, n: usize, skip: &[String]| -> Vec<String> {
        orderable
            .iter()
            .filter(|i| in_stock(i, w))
            .map(|v| str_field(&v["item"], "sku").to_owned())
            .filter(|s| !skip.contains(s))
            .take(n)
            .collect()
    };
    let ber = take("BER", 50, &[]);
    let muc = take("MUC", 10, &ber);
    assert_eq!((ber.len(), muc.len()), (50, 10), "{page}");
    let lines: Vec<Value> = [("BER", &ber), ("MUC", &muc)]
        .iter()
        .flat_map(|(w, skus)| {
            skus.iter()
                .map(move |s| json!({"sku": s, "qty": 1, "warehouse": w}))
        })
        .collect();
    let (big, _) = place_allocated(&env, &bob, "big-1", Value::from(lines)).await;
    let mut want = BTreeMap::from([(big.clone(), 1)]);
    for i in 0..3 {
        want.insert(place_one(&env, &bob, &format!("small-{i}")).await, 1);
    }
    assert_all_delivered(&nats, &want);
    let trimmed = env.metric("orderd_nats_events_trimmed_total").await;
    assert!(trimmed.is_some_and(|n| n >= 1.0), "{trimmed:?}");
    // What each subject carried of the big order.
    let lines_on = |stream: &str| -> Value {
        let out = consume_py(&nats, stream, &format!("test-lines-{stream}"))
            .arg("--lines")
            .output()
            .expect("running the nats-py consumer");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: Value = serde_json::from_slice(&out.stdout).expect("consume.py prints JSON");
        read["lines"].clone()
    };
    let none = json!({"lines": 0, "omitted": 60, "warehouses": []});
    let orders = lines_on("ORDERD_ORDERS");
    assert_eq!(
        orders[format!("orderd.orders.ACME.{big}.allocated")],
        none,
        "{orders}"
    );
    let warehouses = lines_on("ORDERD_ALLOCATIONS");
    assert_eq!(
        warehouses[format!("orderd.allocations.MUC.{big}")],
        json!({"lines": 10, "omitted": 50, "warehouses": ["MUC"]}),
        "{warehouses}"
    );
    assert_eq!(
        warehouses[format!("orderd.allocations.BER.{big}")],
        none,
        "{warehouses}"
    );
    // The whole event stays readable over HTTP.
    let replay = env.get(&bob, "/v1/events?after=0&limit=100").await;
    let whole = replay.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event"]["data"]["order"] == big.as_str())
        .unwrap_or_else(|| panic!("{big} in {replay}"));
    assert_eq!(
        whole["event"]["data"]["lines"].as_array().map(Vec::len),
        Some(60)
    );
    assert!(
        whole["event"].to_string().len() > MAX_PAYLOAD,
        "the event must be larger than the server takes for this test to mean anything"
    );
}

// With the shipped server config (`ops/nats/nats-server.conf`): orderd signs in as its user,
// creates its streams and a durable consumer per warehouse. A warehouse, signed in as its own
// user, reads its consumer's events (only its own subject) and acknowledges them, so a second
// read gets nothing. It is refused another warehouse's consumer, a consumer of its own on the
// order stream, and replies on anyone's inbox but its own (where other clients' answers go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouses_read_only_their_own_events() {
    let nats = NatsServer::start_shipped();
    let env = TestEnv::start_with(&[
        ("ORDERD_NATS__URL", &nats.url()),
        STREAM_BYTES,
        ("ORDERD_NATS__USER", "orderd"),
        ("ORDERD_NATS__PASSWORD", password("ORDERD_NATS_PASSWORD")),
    ])
    .await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let both = place_in_ber_and_muc(&env, &bob, "both").await;
    let lines = json!([{"sku": "NUT-0021", "qty": 2, "warehouse": "MUC"}]);
    let (muc, _) = place_allocated(&env, &bob, "muc", lines).await;
    let r = env
        .post(&bob, &format!("/v1/orders/{muc}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");
    await_published(&env).await;

    let subjects = |got: &Value| -> BTreeMap<String, u64> {
        assert_eq!(got["problems"], json!([]), "{got}");
        let s = got["subjects"].as_object().expect("subjects");
        s.iter()
            .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
            .collect()
    };
    let read = consume_as(&nats, "MUC", "ORDERD_ALLOCATIONS", "warehouse-MUC", true)
        .expect("MUC reads its consumer");
    let want = BTreeMap::from([
        (format!("orderd.allocations.MUC.{both}"), 1),
        (format!("orderd.allocations.MUC.{muc}"), 2),
    ]);
    assert_eq!(subjects(&read), want, "{read}");
    let read = consume_as(&nats, "BER", "ORDERD_ALLOCATIONS", "warehouse-BER", true)
        .expect("BER reads its consumer");
    let want = BTreeMap::from([(format!("orderd.allocations.BER.{both}"), 1)]);
    assert_eq!(subjects(&read), want, "{read}");
    // Acknowledged: read again, nothing is left.
    let again = consume_as(&nats, "MUC", "ORDERD_ALLOCATIONS", "warehouse-MUC", true)
        .expect("MUC reads its consumer");
    assert_eq!(again["messages"], json!(0), "{again}");

    // (nats-py reports the server's refusal in lower case.)
    let refused = [
        (
            consume_as(&nats, "MUC", "ORDERD_ALLOCATIONS", "warehouse-BER", true),
            "publish to \"$js.api.consumer.msg.next.orderd_allocations.warehouse-ber\"",
        ),
        (
            consume_as(&nats, "MUC", "ORDERD_ORDERS", "muc-orders", false),
            "publish to \"$js.api.consumer.info.orderd_orders.muc-orders\"",
        ),
        // Making a consumer of its own, even over its own subject, or reading the stream
        // directly.
        (
            consume_py_as(
                &nats,
                "MUC",
                "_INBOX_MUC",
                "ORDERD_ALLOCATIONS",
                "muc-own",
                &["--create", "orderd.allocations.MUC.>"],
            ),
            "publish to \"$js.api.consumer.durable.create.orderd_allocations.muc-own\"",
        ),
        (
            consume_py_as(
                &nats,
                "MUC",
                "_INBOX_MUC",
                "ORDERD_ALLOCATIONS",
                "warehouse-MUC",
                &["--get", "1"],
            ),
            "publish to \"$js.api.stream.msg.get.orderd_allocations\"",
        ),
        (
            consume_py_as(
                &nats,
                "MUC",
                "_INBOX",
                "ORDERD_ALLOCATIONS",
                "warehouse-MUC",
                &["--bind"],
            ),
            "subscription to \"_inbox.",
        ),
    ];
    for (r, what) in refused {
        let why = r.expect_err("NATS refuses it").to_lowercase();
        assert!(why.contains("permissions violation"), "{why}");
        assert!(why.contains(what), "{why}");
    }
}

// A consumer named like a warehouse's but made otherwise (here: by a client, over the whole
// stream) is not taken for it: orderd logs and counts the failure for that warehouse, and
// still publishes every event, also that warehouse's, and the other warehouses' consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_consumer_made_otherwise_holds_up_nothing() {
    let nats = NatsServer::start();
    let env = TestEnv::start_with(&[("ORDERD_NATS__URL", &nats.url()), STREAM_BYTES]).await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    place_one(&env, &bob, "first").await;
    await_published(&env).await;
    // The streams exist now; this read makes "warehouse-MUC" without a filter.
    let all = consume(&nats, "ORDERD_ALLOCATIONS", "warehouse-MUC", true);
    assert_eq!(all["problems"], json!([]), "{all}");
    let both = place_in_ber_and_muc(&env, &bob, "both").await;
    await_published(&env).await;
    let failures = env
        .metric(r#"orderd_nats_consumer_failures_total{warehouse="MUC"}"#)
        .await;
    assert!(failures.is_some_and(|n| n >= 1.0), "{failures:?}");
    assert!(
        env.log_tail()
            .lines()
            .any(|l| l.contains("consumer is not ready") && l.contains("MUC")),
        "{}",
        env.log_tail()
    );
    // BER's consumer was made, and both warehouses' events are on the stream.
    let ber = consume(&nats, "ORDERD_ALLOCATIONS", "warehouse-BER", true);
    let subjects = ber["subjects"].as_object().expect("subjects");
    assert!(
        subjects.contains_key(&format!("orderd.allocations.BER.{both}"))
            && subjects
                .keys()
                .all(|s| s.starts_with("orderd.allocations.BER.")),
        "{ber}"
    );
    let all = consume(&nats, "ORDERD_ALLOCATIONS", "warehouse-MUC", true);
    let subjects = all["subjects"].as_object().expect("subjects");
    assert!(
        subjects.contains_key(&format!("orderd.allocations.MUC.{both}")),
        "{all}"
    );
}

// orderd with a wrong NATS password: capture goes on, the events wait in the audit log, and
// the log says that NATS refused the sign-in, without the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_nats_sign_in_is_logged_without_the_password() {
    let nats = NatsServer::start_shipped();
    let wrong = "not-the-orderd-test-password";
    let env = TestEnv::start_with(&[
        ("ORDERD_NATS__URL", &nats.url()),
        STREAM_BYTES,
        ("ORDERD_NATS__USER", "orderd"),
        ("ORDERD_NATS__PASSWORD", wrong),
    ])
    .await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    place_one(&env, &bob, "refused-0").await;
    logged_while_events_wait(&env, "authorization violation").await;
    assert!(!env.log_tail().contains(wrong), "{}", env.log_tail());
}

/// Waits until orderd's publisher (not only the NATS client) logged a line containing `what`,
/// then checks that the events wait in the audit log.
async fn logged_while_events_wait(env: &TestEnv, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let logged = |line: &str| line.contains("orderd::publisher") && line.contains(what);
    while !env.log_tail().lines().any(logged) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} logged: {}",
            env.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let depth = env.metric(r#"orderd_outbox_depth{reader="nats"}"#).await;
    assert!(depth.is_some_and(|d| d >= 1.0), "outbox depth {depth:?}");
}

// A NATS that speaks only TLS and verifies its clients' certificates: orderd, given the CA
// and its client certificate, publishes (every event acknowledged by JetStream). Without its
// certificate it is refused, capture goes on, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderd_publishes_over_tls_with_its_client_certificate() {
    let certs = Certificates::make();
    let nats = NatsServer::start_tls(&certs);
    let (ca, cert, key) = (
        certs.path("ca.crt"),
        certs.path("client.crt"),
        certs.path("client.key"),
    );
    let env = TestEnv::start_with(&[
        ("ORDERD_NATS__URL", &nats.url()),
        STREAM_BYTES,
        ("ORDERD_NATS__TLS_CA_FILE", &ca),
        ("ORDERD_NATS__TLS_CERT_FILE", &cert),
        ("ORDERD_NATS__TLS_KEY_FILE", &key),
    ])
    .await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    place_one(&env, &bob, "tls-0").await;
    await_published(&env).await;
    let published = env
        .metric(r#"orderd_event_lag_seconds_count{stage="nats"}"#)
        .await;
    assert!(published.is_some_and(|n| n >= 1.0), "{published:?}");

    let without = TestEnv::start_with(&[
        ("ORDERD_NATS__URL", &nats.url()),
        STREAM_BYTES,
        ("ORDERD_NATS__TLS_CA_FILE", &ca),
    ])
    .await;
    let bob = without.token("ACME", "bob", &["buyer", "approver"]).await;
    place_one(&without, &bob, "tls-1").await;
    logged_while_events_wait(&without, "NATS connection failed").await;
}

// NATS is stopped while clients keep ordering, for longer than a round waits for its PubAcks
// (so rounds fail), and comes back (with room for only 3 messages waiting for PubAcks: a
// publisher that held more would fail every round): orderd publishes what waited in the log,
// then live again, an order whose events straddle the outage complete and in order. NATS is stopped a second
// time: capture goes on (every order is acknowledged). Then orderd is killed too, both come
// back, and every acknowledged order's events reach the stream, complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_and_a_crash_lose_no_event() {
    let mut nats = NatsServer::start();
    let mut env = TestEnv::start_with(&[
        ("ORDERD_NATS__URL", &nats.url()),
        STREAM_BYTES,
        ("ORDERD_NATS__RETRY_MAX_MS", "200"),
        ("ORDERD_NATS__ACK_TIMEOUT_MS", "500"),
        // Far below a catch-up round's messages: rounds go out in parts and wait for each other.
        ("ORDERD_NATS__ACKS_IN_FLIGHT_MAX", "3"),
    ])
    .await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    // Each check reads what the durable consumer has not read yet.
    let mut first = BTreeMap::new();
    let straddling = place_one(&env, &bob, "before-0").await;
    first.insert(straddling.clone(), 1);
    for i in 1..10 {
        first.insert(place_one(&env, &bob, &format!("before-{i}")).await, 1);
    }
    await_published(&env).await;
    nats.stop();
    for i in 0..10 {
        first.insert(place_one(&env, &bob, &format!("first-outage-{i}")).await, 1);
    }
    // Its first event went out before the outage, its second waits in the log.
    let r = env
        .post(&bob, &format!("/v1/orders/{straddling}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");
    first.insert(straddling, 2);
    // Longer than a round waits for its PubAcks (and a retry pause): the publisher's rounds
    // fail and it goes back to the log, instead of the client's reconnect carrying them.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let failed = env.metric(r#"orderd_outbox_depth{reader="nats"}"#).await;
    assert!(failed.is_some_and(|d| d >= 11.0), "outbox depth {failed:?}");
    nats.resume();
    // Without a restart of orderd: what waited, then what comes after.
    assert_all_delivered(&nats, &first);
    let mut between = BTreeMap::new();
    for i in 0..5 {
        between.insert(place_one(&env, &bob, &format!("between-{i}")).await, 1);
    }
    assert_all_delivered(&nats, &between);
    let mut want = BTreeMap::new();
    nats.stop();
    let started = Instant::now();
    for i in 0..30 {
        want.insert(place_one(&env, &bob, &format!("during-{i}")).await, 1);
    }
    let during = started.elapsed();
    // Capture does not wait for NATS (30 orders, far below any publish timeout each).
    assert!(
        during < Duration::from_secs(10),
        "capture slowed down: {during:?}"
    );
    // The events wait in the audit log, and operators see how many.
    let depth = env.metric(r#"orderd_outbox_depth{reader="nats"}"#).await;
    assert!(depth.is_some_and(|d| d >= 30.0), "outbox depth {depth:?}");
    env.kill().await;
    nats.resume();
    env.restart().await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    want.insert(place_one(&env, &bob, "after-0").await, 1);
    assert_all_delivered(&nats, &want);
    // Caught up: nothing waits, and the lag of what was published is measured.
    await_published(&env).await;
    let published = env
        .metric(r#"orderd_event_lag_seconds_count{stage="nats"}"#)
        .await;
    assert!(published.is_some_and(|n| n >= 1.0), "{published:?}");
}

/// A TCP proxy in front of nats-server that breaks orderd's connection once, when armed, at
/// the next publish to the order stream, which it does not pass on: what a broken connection
/// does to the message still in the client's write buffer.
struct CuttingProxy {
    port: u16,
    armed: Arc<AtomicBool>,
    /// Connections accepted so far (a reconnect makes one more).
    connections: Arc<AtomicUsize>,
    accepting: tokio::task::JoinHandle<()>,
}

/// What the proxy cuts at: a publish to the order stream.
const CUT_AT: &[u8] = b"HPUB orderd.orders.";

impl CuttingProxy {
    async fn start(upstream: u16) -> CuttingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let armed = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepting = tokio::spawn({
            let (armed, connections) = (armed.clone(), connections.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(Self::relay(client, upstream, armed.clone()));
                }
            }
        });
        CuttingProxy {
            port,
            armed,
            connections,
            accepting,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Breaks the connection at the next publish to the order stream.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn has_cut(&self) -> bool {
        !self.armed.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    async fn relay(client: tokio::net::TcpStream, upstream: u16, armed: Arc<AtomicBool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
            return;
        };
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        });
        let (mut buf, mut window) = (vec![0u8; 64 * 1024], Vec::new());
        while let Ok(n) = from_client.read(&mut buf).await {
            if n == 0 {
                break;
            }
            // The end of the read before, so that a line split across two reads is seen
            // whole, but not so much that a publish passed on before is seen again.
            window.extend_from_slice(&buf[..n]);
            let publish = window.windows(CUT_AT.len()).any(|w| w == CUT_AT);
            if publish && armed.swap(false, Ordering::SeqCst) {
                break;
            }
            if to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let keep = window.len().saturating_sub(CUT_AT.len() - 1);
            window.drain(..keep);
        }
        // Both directions close: the client sees its connection end.
        down.abort();
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// How long orderd waits for a PubAck in the reconnect test: the order's next change must
/// come within it.
const ACK_TIMEOUT: Duration = Duration::from_secs(8);

// The case `waves` in the publisher guards against. A connection breaks with an order's event
// in the client's write buffer: the event is lost, the client reconnects at once, and the
// order's next change comes while the lost event still waits for its PubAck. Were the next
// event published then, JetStream would store it first and the lost one after it, once its
// PubAck timed out and it went again. nats-py sees each order's events in order, without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_lost_in_a_reconnect_stays_ahead_of_its_order_next() {
    let nats = NatsServer::start();
    let proxy = CuttingProxy::start(nats.port).await;
    let env = TestEnv::start_with(&[
        ("ORDERD_NATS__URL", &proxy.url()),
        STREAM_BYTES,
        ("ORDERD_NATS__RETRY_MAX_MS", "200"),
        (
            "ORDERD_NATS__ACK_TIMEOUT_MS",
            &ACK_TIMEOUT.as_millis().to_string(),
        ),
    ])
    .await;
    let bob = env.token("ACME", "bob", &["buyer", "approver"]).await;
    let mut want = BTreeMap::new();
    want.insert(place_one(&env, &bob, "before").await, 1);
    await_published(&env).await;
    let before = proxy.connections();

    proxy.arm();
    let placed = Instant::now();
    let cut = place_one(&env, &bob, "cut").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(proxy.has_cut() && proxy.connections() > before) {
        assert!(
            Instant::now() < deadline,
            "the connection was not cut and made again"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // On the new connection, before the lost event's PubAck times out.
    let r = env
        .post(&bob, &format!("/v1/orders/{cut}/cancel"), json!({}))
        .await;
    assert_eq!(str_field(&r.body, "state"), "cancelled", "{r}");
    // Otherwise the lost event went again before the next one came, and this tests nothing.
    assert!(
        placed.elapsed() < ACK_TIMEOUT,
        "the next change came {:?} after the lost event, past its PubAck timeout",
        placed.elapsed()
    );
    want.insert(cut, 2);
    assert_all_delivered(&nats, &want);
}

/// Waits until the publisher has every event acknowledged (its outbox depth is 0).
async fn await_published(env: &TestEnv) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.metric(r#"orderd_outbox_depth{reader="nats"}"#).await != Some(0.0) {
        assert!(Instant::now() < deadline, "the publisher did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every order of `want` has exactly its events 1..=version on the order stream, in order.
fn assert_all_delivered(nats: &NatsServer, want: &BTreeMap<String, u64>) {
    let seen = await_orders(nats, want);
    for (order, version) in want {
        assert_eq!(seen[order], (1..=*version).collect::<Vec<_>>(), "{order}");
    }
}

/// Places an order with one line held in BER and one in MUC, allocated at once; its id.
async fn place_in_ber_and_muc(env: &TestEnv, token: &str, key: &str) -> String {
    let lines = json!([
        {"sku": "BOLT-0010", "qty": 1, "warehouse": "BER"},
        {"sku": "NUT-0021", "qty": 1, "warehouse": "MUC"},
    ]);
    let (id, r) = place_allocated(env, token, key, lines).await;
    assert_eq!(warehouses_of(&r.body), ["BER", "MUC"], "{r}");
    id
}

/// Places an order of `lines` (JSON, each naming its warehouse) to BERLIN, which must be
/// allocated at once; its id and the answer.
async fn place_allocated(env: &TestEnv, token: &str, key: &str, lines: Value) -> (String, Reply) {
    let r = env
        .api()
        .place(token, key, &json!({"lines": lines, "ship_to": "BERLIN"}))
        .await
        .expect("request");
    assert_eq!(str_field(&r.body, "state"), "allocated", "{r}");
    (str_field(&r.body, "id").to_owned(), r)
}

/// Places a one-line order that must be acknowledged; its id.
async fn place_one(env: &TestEnv, token: &str, key: &str) -> String {
    let r = env.place(token, key, &[("BOLT-0010", 1)], "BERLIN").await;
    assert_eq!(r.status, 201, "capture must go on: {r}");
    str_field(&r.body, "id").to_owned()
}
