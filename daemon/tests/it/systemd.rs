//! orderd under systemd: the notify protocol spoken by the real binary (to a socket standing in
//! for systemd's), the unit file as systemd-analyze reads it, and `ops/setup` installing into
//! a staging root.

use crate::env::{TestEnv, BIN};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The watchdog timeout orderd is given: it pings every half of it.
const WATCHDOG_USEC: u64 = 200_000;
/// Pings wanted before the test is satisfied: a second's worth at one per 100 ms, with slack.
const PINGS_MIN: u32 = 5;
/// The shortest gap between pings the test accepts: half the timeout, less slack for a tick
/// that came late and the next that came on time.
const PINGS_GAP_MIN: Duration = Duration::from_micros(WATCHDOG_USEC / 2 - 12_500);
/// The longest a notification may take to arrive.
const NOTIFY_WAIT_MAX: Duration = Duration::from_secs(20);
/// The highest exposure `systemd-analyze security` may give the unit, in its tenths (2.0: "OK").
const EXPOSURE_MAX: &str = "20";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The datagrams on `socket` (one notification each) until `done` holds for all received so
/// far; panics after [`NOTIFY_WAIT_MAX`].
fn receive_until(socket: &UnixDatagram, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + NOTIFY_WAIT_MAX;
    let mut received = vec![];
    let mut buf = vec![0u8; 4096];
    while !done(&received) {
        assert!(
            Instant::now() < deadline,
            "notifications so far: {received:?}"
        );
        match socket.recv(&mut buf) {
            Ok(n) => received.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }
    received
}

fn pings(received: &[String]) -> usize {
    received
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

// As under `Type=notify` with `WatchdogSec=`: orderd first says READY=1 with where it serves
// (and then answers there), pings the watchdog every half timeout while it runs, says
// STOPPING=1 and turns the watchdog off when SIGTERM arrives, pings no more, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_when_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let mut env = TestEnv::start_with(&[
        ("NOTIFY_SOCKET", path.to_str().expect("a UTF-8 path")),
        ("WATCHDOG_USEC", &WATCHDOG_USEC.to_string()),
    ])
    .await;
    let base = env.daemon().base_url();
    let addr = base
        .strip_prefix("http://")
        .expect("an http URL")
        .to_owned();

    let ready = receive_until(&socket, |r| !r.is_empty());
    let first: Vec<&str> = ready[0].lines().collect();
    assert_eq!(
        first,
        ["READY=1", &format!("STATUS=serving on {addr}")],
        "the first notification"
    );
    let readyz = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("GET /readyz");
    assert_eq!(readyz.status(), 200);

    // What arrived since READY, then pings from now on.
    socket.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 4096];
    let mut since_ready = vec![];
    while let Ok(n) = socket.recv(&mut buf) {
        since_ready.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    socket.set_nonblocking(false).expect("blocking");
    let first = receive_until(&socket, |r| pings(r) >= 1);
    let first_at = Instant::now();
    let more = receive_until(&socket, |r| pings(r) >= PINGS_MIN as usize - 1);
    let elapsed = first_at.elapsed();
    let running: Vec<&String> = since_ready.iter().chain(&first).chain(&more).collect();
    assert!(
        running.iter().all(|m| m.lines().eq(["WATCHDOG=1"])),
        "only pings while running: {running:?}"
    );
    // Pings every 100 ms (a tick may come up to 5 ms late and the next on time): after one
    // arrived, four more take at least 4 x 87.5 ms.
    assert!(
        elapsed >= PINGS_GAP_MIN * (PINGS_MIN - 1),
        "{PINGS_MIN} pings in {elapsed:?}"
    );

    let status = env.terminate().await;
    assert!(status.success(), "SIGTERM gave {status}");
    // orderd has exited: everything it sent is on the socket.
    socket.set_nonblocking(true).expect("non-blocking");
    let mut last = vec![];
    while let Ok(n) = socket.recv(&mut buf) {
        last.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let at = last
        .iter()
        .position(|m| m.starts_with("STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1 in {last:?}"));
    let said: Vec<&str> = last[at].lines().collect();
    assert_eq!(
        said,
        [
            "STOPPING=1",
            "WATCHDOG_USEC=0",
            "STATUS=shutting down: draining requests, flushing the journal"
        ]
    );
    assert_eq!(pings(&last[at..]), 0, "pinged after STOPPING=1: {last:?}");
}

// The unit file as systemd reads it: no unknown or malformed setting (systemd-analyze verify
// prints nothing), and hardened to an exposure of 2.0 ("OK") or better.
#[test]
fn the_unit_file_is_valid_and_hardened() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let unit = std::fs::read_to_string(repo().join("ops/systemd/orderd.service")).expect("unit");
    let exec = "ExecStart=/usr/local/bin/orderd serve --config /etc/orderd/orderd.toml";
    assert!(unit.lines().any(|l| l == exec), "{exec} in the unit");
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let file = dir.path().join("orderd.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/orderd", BIN)).expect("writing");
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .expect("running systemd-analyze (ops/test installs Debian's systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success() && said.is_empty(), "{said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={EXPOSURE_MAX}"))
        .arg(&file)
        .output()
        .expect("running systemd-analyze security");
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

fn setup(root: &Path) {
    let out = Command::new(repo().join("ops/setup"))
        .arg("--root")
        .arg(root)
        .arg("--binary")
        .arg(BIN)
        .output()
        .expect("running ops/setup");
    assert!(
        out.status.success(),
        "ops/setup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ops/setup puts the binary, the unit, the config and the secrets file where the unit looks for
// them, with modes that keep secrets to root; a second run replaces the binary and the unit
// but keeps the edited config and secrets. The installed binary reads the installed config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_installs_what_the_unit_runs() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path().join("root");
    setup(&root);
    let bin = root.join("usr/local/bin/orderd");
    let unit = root.join("etc/systemd/system/orderd.service");
    let config = root.join("etc/orderd/orderd.toml");
    let secrets = root.join("etc/orderd/orderd.env");
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(read(&bin), read(Path::new(BIN)));
    assert_eq!(
        read(&unit),
        read(&repo().join("ops/systemd/orderd.service"))
    );
    assert_eq!(read(&config), read(&repo().join("ops/orderd.example.toml")));
    assert_eq!(
        [mode(&bin), mode(&unit), mode(&config), mode(&secrets)],
        [0o755, 0o644, 0o640, 0o600]
    );
    let unit_text = String::from_utf8(read(&unit)).expect("text");
    assert!(unit_text.contains("EnvironmentFile=-/etc/orderd/orderd.env"));

    std::fs::write(&config, [read(&config), b"# edited\n".to_vec()].concat()).expect("edit");
    let filled = "ORDERD_NATS__PASSWORD=nats-secret\nORDERD_OIDC__CLIENT_SECRET=oidc-secret\n";
    std::fs::write(&secrets, filled).expect("edit");
    std::fs::write(&bin, "stale").expect("edit");
    setup(&root);
    assert!(String::from_utf8(read(&config))
        .expect("text")
        .ends_with("# edited\n"));
    assert_eq!(read(&secrets), filled.as_bytes());
    assert_eq!(read(&bin), read(Path::new(BIN)), "the binary is replaced");

    // The installed binary serves with the installed config and the secrets as systemd passes
    // them (its identity provider and NATS are unreachable here, which delays neither
    // start-up nor shutdown).
    let mut spec = orderd_chaos::DaemonSpec::new(&bin, dir.path().join("data"));
    for line in filled.lines() {
        let (name, value) = line.split_once('=').expect("NAME=value");
        spec = spec.with_env(name, value);
    }
    spec.serve_args = [
        "--config",
        config.to_str().expect("a UTF-8 path"),
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    let daemon = tokio::task::spawn_blocking(move || spec.start())
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("starting the installed orderd: {e:#}"));
    let readyz = reqwest::get(format!("{}/readyz", daemon.base_url()))
        .await
        .expect("GET /readyz");
    assert_eq!(readyz.status(), 200);
    let status = tokio::task::spawn_blocking(move || daemon.terminate())
        .await
        .expect("terminate task")
        .expect("stopping the installed orderd");
    assert!(status.success(), "SIGTERM gave {status}");
}
