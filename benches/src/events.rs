//! Event lag under load: how long after an order change its event reaches a NATS subscriber, a
//! server-sent-event client and a webhook receiver (`orderd-bench-events`, see `src/bin/orderd-bench-events.rs`).
//!
//! Each listener parses the CloudEvents `time` of every event it receives (the moment orderd
//! made the change, taken just before the durable commit) and records `now - time` in an HDR
//! histogram: the listeners run on the same machine and clock as orderd. The lag therefore
//! includes the commit itself (a group flush) and is an upper bound of "durable commit to
//! arrival". Events changed before `from` (the warm-up) are counted but not recorded.

use crate::loadgen::Latency;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::Request;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Highest lag the histograms hold (longer ones are clamped to it).
const LAG_MAX_US: u64 = 60_000_000;
/// How long nats-server may take to accept connections.
const NATS_START_MAX: Duration = Duration::from_secs(10);

/// Lags of the events one listener received.
#[derive(Debug)]
pub struct LagRecorder {
    from: SystemTime,
    hist: Histogram<u64>,
    /// Every event received, warm-up included.
    pub received: u64,
    /// Events whose `time` did not parse.
    pub unparsable: u64,
}

impl LagRecorder {
    /// Records events changed at or after `from`.
    pub fn new(from: SystemTime) -> Arc<Mutex<LagRecorder>> {
        Arc::new(Mutex::new(LagRecorder {
            from,
            hist: Histogram::new_with_bounds(1, LAG_MAX_US, 3).expect("static bounds are valid"),
            received: 0,
            unparsable: 0,
        }))
    }

    /// One event's CloudEvents JSON, received now.
    pub fn event(&mut self, json: &[u8]) {
        self.received += 1;
        let Some(changed) = change_time(json) else {
            self.unparsable += 1;
            return;
        };
        if changed < self.from {
            return;
        }
        let lag = SystemTime::now()
            .duration_since(changed)
            .unwrap_or_default();
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.clamp(1, LAG_MAX_US));
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.hist)
    }
}

/// The CloudEvents `time` of an event document.
pub fn change_time(json: &[u8]) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Time<'a> {
        #[serde(borrow)]
        time: &'a str,
    }
    let t: Time = serde_json::from_slice(json).ok()?;
    time::OffsetDateTime::parse(t.time, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Follows `GET /v1/events/stream` of the orderd at `addr` with `token` (an operator's: every
/// account) and records each event into `rec` until the stream ends or the task is aborted.
pub async fn follow_sse(
    addr: SocketAddr,
    token: String,
    rec: Arc<Mutex<LagRecorder>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/v1/events/stream")
        .header(HOST, "orderd-bench")
        .header(ACCEPT, "text/event-stream")
        .header(AUTHORIZATION, token)
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("GET /v1/events/stream: {}", resp.status());
    }
    let mut body = resp.into_body();
    Ok(tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            // Events end with a blank line; `data:` lines carry the JSON.
            while let Some(end) = find(&buf, b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                for line in event.split(|b| *b == b'\n') {
                    if let Some(json) = line.strip_prefix(b"data:") {
                        let json = json.strip_prefix(b" ").unwrap_or(json);
                        if let Ok(mut r) = rec.lock() {
                            r.event(json);
                        }
                    }
                }
            }
        }
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A webhook receiver on loopback: answers 204 to every `POST /hook` and records the event in
/// its body into `rec`. Returns the URL to register and the server's task.
pub async fn webhook_receiver(
    rec: Arc<Mutex<LagRecorder>>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| async move {
            if let Ok(mut r) = rec.lock() {
                r.event(&body);
            }
            hyper::StatusCode::NO_CONTENT
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// Subscribes to every order subject (`orderd.orders.>`) at `url` and records each message
/// into `rec` until the task is aborted. A plain subscriber: it gets each message as the
/// server accepts it into the stream, as a warehouse's push consumer would.
pub async fn follow_nats(
    url: &str,
    rec: Arc<Mutex<LagRecorder>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut sub = client.subscribe("orderd.orders.>").await?;
    // The subscription is in place once the server has seen it.
    client.flush().await?;
    Ok(tokio::spawn(async move {
        let _client = client;
        while let Some(msg) = futures_util::StreamExt::next(&mut sub).await {
            if let Ok(mut r) = rec.lock() {
                r.event(&msg.payload);
            }
        }
    }))
}

/// A `nats-server` with JetStream on a free loopback port and a temporary store; killed (and
/// the store deleted) on drop.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    _store: tempfile::TempDir,
}

/// The client port in a nats-server ports file (`{"nats":["nats://127.0.0.1:PORT"]}`); `None`
/// while it is missing or not completely written.
fn client_port(ports_file: &Path) -> Option<u16> {
    let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(ports_file).ok()?).ok()?;
    let url = ports["nats"].get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl NatsServer {
    /// Starts `bin` (e.g. `nats-server` from Debian's package) under `data_root`.
    pub fn start(bin: &Path, data_root: &Path) -> anyhow::Result<NatsServer> {
        let store = tempfile::Builder::new()
            .prefix("orderd-bench-nats-")
            .tempdir_in(data_root)?;
        // nats-server picks a free port itself and names it in its ports file once it
        // listens: nothing else can take the port between choosing and binding it.
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(store.path())
            .arg("-sd")
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install Debian's nats-server, or pass --nats-server)",
                    bin.display()
                )
            })?;
        let ports_file = store.path().join(format!(
            "{}_{}.ports",
            bin.file_name().unwrap_or_default().to_string_lossy(),
            child.id()
        ));
        let mut server = NatsServer {
            child,
            port: 0,
            _store: store,
        };
        let started = Instant::now();
        server.port = loop {
            if let Some(port) = client_port(&ports_file) {
                break port;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("nats-server exited at start: {status}");
            }
            if started.elapsed() > NATS_START_MAX {
                bail!("nats-server did not listen within {NATS_START_MAX:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lags are recorded from the event's time; events before `from` and unparsable ones are
    // counted, not recorded.
    #[test]
    fn records_lag_from_the_event_time() {
        let now = SystemTime::now();
        let fmt = |t: SystemTime| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let rec = LagRecorder::new(now - Duration::from_secs(1));
        let mut r = rec.lock().unwrap();
        let recent = format!(
            r#"{{"id":"o-1.1","time":"{}"}}"#,
            fmt(now - Duration::from_millis(20))
        );
        let old = format!(
            r#"{{"id":"o-1.1","time":"{}"}}"#,
            fmt(now - Duration::from_secs(5))
        );
        r.event(recent.as_bytes());
        r.event(old.as_bytes());
        r.event(b"{}");
        assert_eq!((r.received, r.unparsable), (3, 1));
        let l = r.latency();
        assert_eq!(l.count, 1);
        assert!(l.p50_ms >= 20.0 && l.p50_ms < 5_000.0, "{l:?}");
    }
}
