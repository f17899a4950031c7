//! The accept loop: hyper's HTTP/1 server under the limits a reverse proxy would
//! otherwise give (a Jetson usually has none in front): at most `max_connections` open
//! connections (the next one gets a 503 and is closed without being read), and a header
//! timeout that also bounds idle keep-alive, so a slowloris client needs more than one
//! socket per `header_timeout_s` to hold anything. The listener keeps accepting while
//! the service drains, so that `/readyz` can say so; it stops when the process exits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::{AppState, ServeConfig};

/// Connection slots, released when a connection ends.
struct Counted(Arc<AppState>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serve connections until `closing` turns true; then each connection finishes the
/// response it is writing and closes (hyper's graceful shutdown), and no new one is
/// accepted.
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: Arc<AppState>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ServeConfig::duration(state.config.header_timeout_s))
        .keep_alive(true)
        .max_buf_size(64 << 10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closed(&mut closing) => return,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.metrics().connection_refused();
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::SeqCst);
        let counted = Counted(state.clone());
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let _held = (permit, counted);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = closed(&mut closing) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

/// Resolves once the service is closing (its `Ref` guard is not held across awaits).
async fn closed(closing: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Answer 503 without reading the request, then close (a best-effort write: a client
/// that does not read gets a reset, which is what a full server owes it).
fn refuse(stream: TcpStream) {
    let body = r#"{"error":{"code":"too_many_connections","message":"the server is at max_connections"}}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(reply.as_bytes());
}
