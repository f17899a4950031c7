//! The accept loop: hyper's HTTP/1 server under the limits a reverse proxy would
//! otherwise give (a Jetson usually has none in front): at most `max_connections` open
//! connections and `max_connections_per_peer` from one address, and a header timeout
//! that also bounds idle keep-alive. A connection is *busy* from a request's arrival to
//! the end of its response body; one that is not (waiting for headers, idle between
//! requests, or closed by its client and not yet noticed) gives its place up to a new
//! one when there is none left: the oldest goes first, from the address holding the
//! most. So a client trickling headers on many sockets cannot lock the others out, and
//! a health check always finds a place (the configuration keeps room beyond the
//! admitted requests and event streams). The listener keeps accepting while the service
//! drains, so that `/readyz` can say so; it stops when the process exits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::{AppState, ServeConfig};

/// One open connection.
struct Conn {
    peer: IpAddr,
    accepted: Instant,
    /// Requests in progress on it (their response bodies not yet dropped).
    busy: AtomicUsize,
    /// Told to close, to make room.
    evict: Notify,
}

/// The open connections, by number.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
}

/// A connection younger than this is not evicted: its request is on its way.
const GRACE: Duration = Duration::from_millis(100);

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `peer`, making room by evicting an idle connection
    /// when a limit is reached; None when every connection in the way is busy.
    fn admit(&self, peer: IpAddr, max: usize, max_per_peer: usize) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.lock();
        let evictable = |c: &Conn| c.busy.load(Ordering::SeqCst) == 0 && c.accepted.elapsed() >= GRACE;
        let from_peer = conns.values().filter(|c| c.peer == peer).count();
        if from_peer >= max_per_peer {
            let oldest = conns.iter().filter(|(_, c)| c.peer == peer && evictable(c)).min_by_key(|(_, c)| c.accepted);
            let id = *oldest?.0;
            conns.remove(&id)?.evict.notify_one();
        } else if conns.len() >= max {
            let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
            for c in conns.values() {
                *per_peer.entry(c.peer).or_default() += 1;
            }
            let victim = conns
                .iter()
                .filter(|(_, c)| evictable(c))
                .max_by_key(|(_, c)| (per_peer[&c.peer], std::cmp::Reverse(c.accepted)))
                .map(|(id, _)| *id)?;
            conns.remove(&victim)?.evict.notify_one();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn { peer, accepted: Instant::now(), busy: AtomicUsize::new(0), evict: Notify::new() });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }
}

/// A connection's place and the service's count, released when it ends.
struct Held {
    registry: Arc<Registry>,
    id: u64,
    state: Arc<AppState>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.state.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request in progress on a connection, until its response body is dropped.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
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
    let registry = Arc::new(Registry::default());
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
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = registry.admit(peer.ip(), state.config.max_connections, state.config.max_connections_per_peer);
        let Some((id, conn)) = admitted else {
            state.metrics().connection_refused();
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::SeqCst);
        let held = Held { registry: registry.clone(), id, state: state.clone() };
        let app = app.clone();
        let marked = conn.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            marked.busy.fetch_add(1, Ordering::SeqCst);
            let busy = Busy(marked.clone());
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(Body::new)).await?;
                // The body holds the mark: a streamed response keeps its connection busy.
                Ok::<_, std::convert::Infallible>(resp.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &busy;
                        frame
                    }))
                }))
            }
        });
        let conn_fut = http.serve_connection(TokioIo::new(stream), service);
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let _held = held;
            let mut conn_fut = std::pin::pin!(conn_fut);
            let result = tokio::select! {
                r = conn_fut.as_mut() => r,
                _ = conn.evict.notified() => return, // dropped: the socket closes
                _ = closed(&mut closing) => {
                    conn_fut.as_mut().graceful_shutdown();
                    conn_fut.await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_makes_room_a_busy_one_does_not() {
        let r = Registry::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let (_, first) = r.admit(a, 2, 8).unwrap();
        let (_, second) = r.admit(b, 2, 8).unwrap();
        first.busy.fetch_add(1, Ordering::SeqCst);
        assert!(r.admit(b, 2, 8).is_none(), "within the grace time nothing is evicted");
        std::thread::sleep(GRACE);
        let (_, third) = r.admit(b, 2, 8).unwrap();
        assert_eq!(r.lock().len(), 2, "the idle one gave its place");
        assert!(r.lock().values().any(|c| Arc::ptr_eq(c, &first)), "the busy one stays");
        assert!(!r.lock().values().any(|c| Arc::ptr_eq(c, &second)));
        third.busy.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(GRACE);
        assert!(r.admit(a, 2, 8).is_none(), "every connection busy: refused");
        // One peer's limit: its own oldest idle connection goes.
        let r = Registry::default();
        let (_, one) = r.admit(a, 8, 2).unwrap();
        let (_, _two) = r.admit(a, 8, 2).unwrap();
        let (_, _other) = r.admit(b, 8, 2).unwrap();
        std::thread::sleep(GRACE);
        assert!(r.admit(a, 8, 2).is_some());
        assert!(!r.lock().values().any(|c| Arc::ptr_eq(c, &one)), "the peer's oldest went");
        assert_eq!(r.lock().values().filter(|c| c.peer == b).count(), 1, "another peer is untouched");
    }
}
