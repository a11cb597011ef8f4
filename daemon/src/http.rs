//! orderd's HTTP/1.1 server: accepts connections and serves a router on each, as axum's
//! `serve` does, with two things it cannot do:
//!
//! - a **header read timeout** (`api.header_read_timeout_ms`): a connection whose request
//!   headers do not arrive in time is closed, also one kept alive and idle that sends no next
//!   request. Without it, a client that opens connections and sends nothing (or a byte now and
//!   then) holds each open for as long as it likes, with no credential asked;
//! - **TCP_NODELAY** on every connection: without it, the small writes of a server-sent-event
//!   stream wait for the client's delayed ACK (Nagle's algorithm), up to 40 ms per event on
//!   Linux.
//!
//! Each request carries its peer's address as axum's `ConnectInfo<SocketAddr>` (the audit
//! log's client IP). A body's own time limit is the API's (`api.body_read_timeout_ms`).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// How long accepting waits after an error other than a connection's own (too many open
/// files, most likely) before it tries again, instead of spinning.
const ACCEPT_RETRY_MS: u64 = 1_000;

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets each
/// connection finish the request it is serving (an idle one closes at once; one whose headers
/// are still arriving waits for them or for its header read timeout), and returns when every
/// connection has closed. Bounding that wait is the caller's part (`shutdown_grace_ms`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    // Connections watch `stop`; each holds a clone of `open`, so `open_tx.closed()` tells when
    // the last one is gone.
    let (stop_tx, stop) = watch::channel(false);
    let (open_tx, open) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::warn!(%error, retry_ms = ACCEPT_RETRY_MS, "accepting a connection failed");
                    let pause = tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS));
                    tokio::select! {
                        () = pause => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "could not set TCP_NODELAY on a connection");
        }
        tokio::spawn(connection(
            tcp,
            peer,
            app.clone(),
            header_read_timeout,
            stop.clone(),
            open.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open);
    open_tx.closed().await;
}

/// Serves one connection until it closes, or until `stop` turns true and the request under
/// way, if any, is answered. `_open` is dropped with it.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _open: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = http1.serve_connection(TokioIo::new(tcp), service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    // A client gone, a header timeout, a malformed request: the client's part.
                    tracing::debug!(%error, %peer, "connection ended");
                }
                return;
            }
            changed = stop.wait_for(|s| *s), if !stopping => {
                // The sender is dropped only after it sent `true`: either way, stop.
                let _ = changed;
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Errors of one connection that came and went before it was accepted: accept the next.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
