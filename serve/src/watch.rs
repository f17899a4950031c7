//! The service's `[[watch]]` sources: each is watched on a thread of its own once the
//! pipeline is ready (`emollama_commands::watch`), its events go to the subscribers of
//! `GET /v1/watch/events` (Server-Sent Events), to the per-source series of `/metrics`,
//! and, when configured, to a webhook (POSTed with retries from a bounded queue: a slow
//! or dead receiver costs events, never memory).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use emollama_commands::watch::{watch, WatchEvent, WatchOptions, DEFAULT_HOP_S, DEFAULT_WINDOW_S};
use emollama_engines::CancelToken;
use emollama_runtime::prompt::Task;
use emollama_runtime::{AnalyzeRequest, Mode, Pipeline, Preset};
use serde::{Deserialize, Serialize};

/// One `[[watch]]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// The source's name in events and metrics (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// `/dev/video0`, `rtsp://…`, `http://…`, `udp://@:5000`, or a file.
    pub source: String,
    #[serde(default = "default_window")]
    pub window_s: f64,
    #[serde(default = "default_hop")]
    pub hop_s: f64,
    #[serde(default = "default_preset")]
    pub preset: Preset,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub six_labels: bool,
    /// Play a file at its own pace, as if live.
    #[serde(default)]
    pub realtime: bool,
    #[serde(default = "default_stall")]
    pub stall_timeout_s: f64,
    /// Each result is POSTed here as JSON (`http://host:port/path`).
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default = "default_retries")]
    pub webhook_retries: u32,
    /// Results waiting for the webhook; beyond it the oldest is dropped (and counted).
    #[serde(default = "default_queue")]
    pub webhook_queue: usize,
}

fn default_window() -> f64 {
    DEFAULT_WINDOW_S
}
fn default_hop() -> f64 {
    DEFAULT_HOP_S
}
fn default_preset() -> Preset {
    Preset::Fast
}
fn default_mode() -> Mode {
    Mode::Full
}
fn default_stall() -> f64 {
    5.0
}
fn default_retries() -> u32 {
    3
}
fn default_queue() -> usize {
    64
}

impl WatchConfig {
    pub fn options(&self) -> WatchOptions {
        let request = AnalyzeRequest {
            task: Task::Emotion { six_labels: self.six_labels },
            preset: self.preset,
            mode: self.mode,
            ..AnalyzeRequest::new(self.source.clone())
        };
        let mut o = WatchOptions::new(self.source.clone(), request);
        o.name = self.name.clone();
        o.window_s = self.window_s;
        o.hop_s = self.hop_s;
        o.realtime = self.realtime;
        o.stall_timeout_s = self.stall_timeout_s;
        // Under systemd a source is followed for good: a file that ends is played again.
        o.reconnect = true;
        o
    }

    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("name {:?}: use letters, digits, '-', '_', '.'", self.name));
        }
        self.options().check()?;
        if let Some(url) = &self.webhook {
            WebhookUrl::parse(url)?;
        }
        if !(1..=100_000).contains(&self.webhook_queue) {
            return Err(format!("webhook_queue {}: use 1-100000", self.webhook_queue));
        }
        if self.webhook_retries > MAX_WEBHOOK_RETRIES {
            return Err(format!("webhook_retries {}: use 0-{MAX_WEBHOOK_RETRIES}", self.webhook_retries));
        }
        Ok(())
    }
}

/// Retries of one result beyond which a dead receiver only delays the queue.
const MAX_WEBHOOK_RETRIES: u32 = 20;

/// An `http://host[:port]/path` URL (TLS is for a proxy in front); the host a name or an
/// IP address (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq)]
struct WebhookUrl {
    host: String,
    port: u16,
    path: String,
}

impl WebhookUrl {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("webhook {url:?}: only http:// URLs"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
        let (host, port) = crate::urls::split_host_port(authority).map_err(|e| format!("webhook {url:?}: {e}"))?;
        // The host goes into the request line and the log: a name or an address, nothing else.
        let name_ok = host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !(name_ok || host.parse::<std::net::IpAddr>().is_ok()) {
            return Err(format!("webhook {url:?}: the host must be a name or an IP address"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("webhook {url:?}: a path with spaces or control characters"));
        }
        Ok(Self { host, port: port.unwrap_or(80), path })
    }

    /// POST `body`; Ok when the answer is 2xx.
    fn post(&self, body: &str) -> Result<(), String> {
        let addr =
            (self.host.as_str(), self.port).to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.path,
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).map_err(|e| e.to_string())?;
        let mut status = [0u8; 12];
        s.read_exact(&mut status).map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&status);
        match line.get(9..12) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(format!("answered {}", line.trim())),
        }
    }
}

/// A source's numbers for `/metrics`.
#[derive(Debug, Default, Clone)]
struct SourceStats {
    connected: bool,
    windows: u64,
    dropped: u64,
    failed: u64,
    reconnects: u64,
    latency_s: f64,
    labels: BTreeMap<String, f64>,
    webhook_sent: u64,
    webhook_failed: u64,
    webhook_dropped: u64,
    /// Why the source stopped for good (its thread ended or panicked, or what it is
    /// cannot be watched), while the service goes on.
    failure: Option<String>,
    /// What the console shows: `connecting`, `connected`, `reconnecting`, `ended`, and
    /// the stream's description or the error.
    state: &'static str,
    detail: String,
    /// The last windows' events (JSON), oldest first, at most [`RECENT_WINDOWS`].
    recent: VecDeque<String>,
    /// The last window's preview (its number and the JPEG).
    frame: Option<(u64, Arc<Vec<u8>>)>,
}

/// Windows kept per source for a console that opens later: the timeline's 10 minutes at
/// the default 2 s hop (about 1.5 kB each).
pub const RECENT_WINDOWS: usize = 300;

/// A source as `GET /v1/status` shows it.
#[derive(Debug, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub state: &'static str,
    pub detail: String,
    pub windows: u64,
    pub dropped: u64,
    pub failed: u64,
    /// The number of the window whose preview `GET /v1/watch/frame` serves.
    pub frame_index: Option<u64>,
    pub recent: Vec<Box<serde_json::value::RawValue>>,
}

/// A per-source series of `/metrics`: name, type, help, and its value.
type Series = (&'static str, &'static str, &'static str, fn(&SourceStats) -> f64);

/// One event as the subscribers get it.
#[derive(Debug, Clone)]
pub struct Published {
    pub source: String,
    pub kind: &'static str,
    pub json: String,
}

/// The open event streams, by number.
type Subscribers = Arc<Mutex<BTreeMap<u64, tokio::sync::mpsc::Sender<Published>>>>;

/// One event stream's receiving end; it leaves the subscribers when dropped (the client
/// went away, or the stream ended), whether or not anything was ever published to it.
pub struct Subscription {
    rx: tokio::sync::mpsc::Receiver<Published>,
    id: u64,
    subscribers: Subscribers,
}

impl futures_util::Stream for Subscription {
    type Item = Published;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Published>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// Every watched source's events and numbers.
pub struct WatchHub {
    sources: Vec<WatchConfig>,
    stats: Mutex<BTreeMap<String, SourceStats>>,
    subscribers: Subscribers,
    next_subscriber: std::sync::atomic::AtomicU64,
    /// Stop after the window each source is analysing (the first signal).
    pub stop: CancelToken,
    /// Cancel the windows being analysed (the drain deadline).
    pub abort: CancelToken,
    /// The sources' threads: the service exits only once they have returned (each
    /// touches the engines) or the drain deadline has passed.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Events a slow subscriber may have waiting before it misses some.
const SUBSCRIBER_BUFFER: usize = 256;

impl WatchHub {
    pub fn new(sources: Vec<WatchConfig>) -> Self {
        let stats = sources.iter().map(|s| (s.name.clone(), SourceStats::default())).collect();
        Self {
            sources,
            stats: Mutex::new(stats),
            subscribers: Arc::new(Mutex::new(BTreeMap::new())),
            next_subscriber: std::sync::atomic::AtomicU64::new(0),
            stop: CancelToken::new(),
            abort: CancelToken::new(),
            threads: Mutex::new(Vec::new()),
        }
    }

    fn stats(&self) -> MutexGuard<'_, BTreeMap<String, SourceStats>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn has(&self, name: &str) -> bool {
        self.sources.iter().any(|s| s.name == name)
    }

    pub fn names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.clone()).collect()
    }

    /// End every event stream (shutdown).
    pub fn close_subscribers(&self) {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A receiver of every event from now on, or None when `max` streams are open.
    pub fn subscribe(&self, max: usize) -> Option<Subscription> {
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBER_BUFFER);
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if subscribers.len() >= max {
            return None;
        }
        let id = self.next_subscriber.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        subscribers.insert(id, tx);
        Some(Subscription { rx, id, subscribers: self.subscribers.clone() })
    }

    /// Event streams open.
    pub fn subscribers(&self) -> usize {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn publish(&self, source: &str, event: &WatchEvent) -> String {
        let kind = match event {
            WatchEvent::Connected { .. } => "connected",
            WatchEvent::Window(_) => "window",
            WatchEvent::WindowFailed { .. } => "window_failed",
            WatchEvent::Reconnecting { .. } => "reconnecting",
            WatchEvent::Ended { .. } => "ended",
        };
        {
            let mut stats = self.stats();
            let s = stats.entry(source.to_string()).or_default();
            match event {
                WatchEvent::Connected { video, audio, .. } => {
                    s.connected = true;
                    s.state = "connected";
                    s.detail =
                        [Some(video.as_str()), audio.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(", ");
                }
                WatchEvent::Window(w) => {
                    s.windows += 1;
                    s.dropped = w.dropped;
                    s.latency_s = w.latency_ms / 1e3;
                    s.labels = w.label_scores.clone().unwrap_or_default();
                }
                WatchEvent::WindowFailed { .. } => s.failed += 1,
                WatchEvent::Reconnecting { error, .. } => {
                    s.connected = false;
                    s.reconnects += 1;
                    s.state = "reconnecting";
                    s.detail = error.clone();
                }
                WatchEvent::Ended { reason, .. } => {
                    s.connected = false;
                    s.state = "ended";
                    s.detail = reason.clone();
                    if !["stopped", "end of the source", "max windows"].contains(&reason.as_str()) {
                        s.failure = Some(reason.clone());
                    }
                }
            }
        }
        let json = serde_json::to_string(event).unwrap_or_default();
        if let WatchEvent::Window(w) = event {
            // Encoded here, on the source's thread, once per window (a few milliseconds),
            // not per console that asks.
            let frame = w.first_frame.as_deref().and_then(|f| match crate::preview::preview_jpeg(f, w.face_box) {
                Ok(jpeg) => Some((w.index, Arc::new(jpeg))),
                Err(e) => {
                    tracing::warn!(source, "window {}: {e}", w.index);
                    None
                }
            });
            let mut stats = self.stats();
            let s = stats.entry(source.to_string()).or_default();
            if s.recent.len() == RECENT_WINDOWS {
                s.recent.pop_front();
            }
            s.recent.push_back(json.clone());
            if frame.is_some() {
                s.frame = frame;
            }
        }
        let published = Published { source: source.to_string(), kind, json: json.clone() };
        // A subscriber that is gone is removed; one that is full misses this event.
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, tx| {
            !matches!(tx.try_send(published.clone()), Err(tokio::sync::mpsc::error::TrySendError::Closed(_)))
        });
        json
    }

    /// Watch every source on its own thread (the service's pipeline, shared).
    pub fn start(self: &Arc<Self>, pipeline: Arc<Pipeline>) {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for config in self.sources.clone() {
            let hub = self.clone();
            let pipeline = pipeline.clone();
            let thread = std::thread::Builder::new()
                .name(format!("watch-{}", config.name))
                .spawn(move || hub.run_source(&pipeline, &config))
                .expect("a thread for a watch source");
            threads.push(thread);
        }
    }

    /// Whether every source's thread has returned (none touches an engine any more).
    pub fn finished(&self) -> bool {
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).iter().all(|t| t.is_finished())
    }

    fn run_source(self: &Arc<Self>, pipeline: &Pipeline, config: &WatchConfig) {
        let webhook = config.webhook.as_ref().and_then(|u| WebhookUrl::parse(u).ok()).map(|url| {
            let queue = Arc::new(WebhookQueue::new(config.webhook_queue));
            let (hub, q, name, retries) = (self.clone(), queue.clone(), config.name.clone(), config.webhook_retries);
            std::thread::spawn(move || q.send_all(&url, retries, &hub, &name));
            queue
        });
        let opts = config.options();
        // A panic in a source's thread must not pass silently: it is the source's failure.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            watch(pipeline, &opts, &self.stop, &self.abort, |event| {
                let json = self.publish(&config.name, event);
                if let (Some(q), WatchEvent::Window(_)) = (&webhook, event) {
                    if q.push(json) {
                        self.stats().entry(config.name.clone()).or_default().webhook_dropped += 1;
                    }
                }
            })
        }));
        let failure = match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(format!(
                "the source's thread panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or(panic.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            )),
        };
        if let Some(why) = failure.filter(|_| !self.stop.is_cancelled()) {
            tracing::error!(source = %config.name, "watch stopped: {why}");
            self.stats().entry(config.name.clone()).or_default().failure = Some(why);
        }
        if let Some(q) = webhook {
            q.close();
        }
    }

    /// Windows analysed, all sources together.
    pub fn windows(&self) -> u64 {
        self.stats().values().map(|s| s.windows).sum()
    }

    /// Every source for the console: its state, numbers and last windows.
    pub fn status(&self) -> Vec<SourceStatus> {
        let stats = self.stats();
        let none = SourceStats::default();
        self.sources
            .iter()
            .map(|c| {
                let s = stats.get(&c.name).unwrap_or(&none);
                SourceStatus {
                    name: c.name.clone(),
                    state: if s.state.is_empty() { "connecting" } else { s.state },
                    detail: s.failure.clone().unwrap_or_else(|| s.detail.clone()),
                    windows: s.windows,
                    dropped: s.dropped,
                    failed: s.failed,
                    frame_index: s.frame.as_ref().map(|(i, _)| *i),
                    recent: s
                        .recent
                        .iter()
                        .filter_map(|j| serde_json::value::RawValue::from_string(j.clone()).ok())
                        .collect(),
                }
            })
            .collect()
    }

    /// The last window's preview of `source` (its number and JPEG), if there is one yet.
    pub fn frame(&self, source: &str) -> Option<(u64, Arc<Vec<u8>>)> {
        self.stats().get(source).and_then(|s| s.frame.clone())
    }

    /// The sources that stopped for good, and why.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.stats().iter().filter_map(|(name, s)| Some((name.clone(), s.failure.clone()?))).collect()
    }

    /// The per-source series of `/metrics`.
    pub fn render(&self) -> String {
        let stats = self.stats();
        if stats.is_empty() {
            return String::new();
        }
        let mut s = String::new();
        let series: [Series; 10] = [
            ("emollama_watch_connected", "gauge", "1 while the source delivers.", |x| f64::from(u8::from(x.connected))),
            ("emollama_watch_failed", "gauge", "1 once the source stopped for good (see /readyz).", |x| {
                f64::from(u8::from(x.failure.is_some()))
            }),
            ("emollama_watch_windows_total", "counter", "Windows analysed.", |x| x.windows as f64),
            ("emollama_watch_dropped_total", "counter", "Windows skipped while analysis was busy.", |x| {
                x.dropped as f64
            }),
            ("emollama_watch_failed_total", "counter", "Windows that could not be analysed.", |x| x.failed as f64),
            ("emollama_watch_reconnects_total", "counter", "Reconnections of a lost source.", |x| x.reconnects as f64),
            ("emollama_watch_latency_seconds", "gauge", "Last window: from its last packet to its result.", |x| {
                x.latency_s
            }),
            ("emollama_watch_webhook_sent_total", "counter", "Results the webhook accepted.", |x| {
                x.webhook_sent as f64
            }),
            ("emollama_watch_webhook_failed_total", "counter", "Results the webhook refused after every retry.", |x| {
                x.webhook_failed as f64
            }),
            ("emollama_watch_webhook_dropped_total", "counter", "Results dropped from a full webhook queue.", |x| {
                x.webhook_dropped as f64
            }),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (source, x) in stats.iter() {
                let _ = writeln!(s, "{name}{{source=\"{source}\"}} {}", value(x));
            }
        }
        let name = "emollama_watch_label_probability";
        let _ = writeln!(s, "# HELP {name} The last window's label probabilities.\n# TYPE {name} gauge");
        for (source, x) in stats.iter() {
            for (label, p) in &x.labels {
                let _ = writeln!(s, "{name}{{source=\"{source}\",label=\"{label}\"}} {p}");
            }
        }
        s
    }
}

/// Results waiting for a webhook: bounded, the oldest dropped when full.
struct WebhookQueue {
    items: Mutex<(VecDeque<String>, bool)>,
    ready: Condvar,
    cap: usize,
}

impl WebhookQueue {
    fn new(cap: usize) -> Self {
        Self { items: Mutex::new((VecDeque::new(), false)), ready: Condvar::new(), cap }
    }

    /// Queue `json`; true when the oldest had to be dropped for it.
    fn push(&self, json: String) -> bool {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = q.0.len() >= self.cap && q.0.pop_front().is_some();
        q.0.push_back(json);
        self.ready.notify_one();
        dropped
    }

    fn close(&self) {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.ready.notify_one();
    }

    /// POST each result in turn, retrying with backoff; until closed and empty.
    fn send_all(&self, url: &WebhookUrl, retries: u32, hub: &WatchHub, source: &str) {
        loop {
            let next = {
                let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
                while q.0.is_empty() && !q.1 {
                    q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                match q.0.pop_front() {
                    Some(json) => json,
                    None => return, // closed and empty
                }
            };
            let mut attempt = 0;
            let outcome = loop {
                match url.post(&next) {
                    Ok(()) => break Ok(()),
                    Err(e) if attempt >= retries || hub.stop.is_cancelled() => break Err(e),
                    Err(_) => {
                        attempt += 1;
                        std::thread::sleep(emollama_commands::watch::backoff(attempt));
                    }
                }
            };
            let mut stats = hub.stats();
            let s = stats.entry(source.to_string()).or_default();
            match outcome {
                Ok(()) => s.webhook_sent += 1,
                Err(e) => {
                    s.webhook_failed += 1;
                    tracing::warn!(source, "webhook {}:{}{}: {e}", url.host, url.port, url.path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_and_watch_sections() {
        assert_eq!(
            WebhookUrl::parse("http://10.0.0.2:9000/hook").unwrap(),
            WebhookUrl { host: "10.0.0.2".into(), port: 9000, path: "/hook".into() }
        );
        assert_eq!(WebhookUrl::parse("http://h").unwrap().path, "/");
        assert!(WebhookUrl::parse("https://h/x").is_err());
        // IPv6 in brackets; no host that could forge a request line or a log line.
        assert_eq!(
            WebhookUrl::parse("http://[::1]:9000/hook").unwrap(),
            WebhookUrl { host: "::1".into(), port: 9000, path: "/hook".into() }
        );
        for bad in ["http://h\r\nX-Evil: 1/hook", "http://h%0d%0a/x", "http://a b/x", "http://[::1/x", "http:///x"] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad:?}");
        }
        for (key, value) in [("stall_timeout_s", "1e300"), ("stall_timeout_s", "1e-9"), ("webhook_retries", "1000")] {
            let c: WatchConfig = toml::from_str(&format!("name = \"a\"\nsource = \"x\"\n{key} = {value}\n")).unwrap();
            let e = c.check().unwrap_err();
            assert!(e.contains(key.split('_').next().unwrap()), "{key} = {value}: {e}");
        }
        let c: WatchConfig = toml::from_str("name = \"door\"\nsource = \"rtsp://cam/1\"\n").unwrap();
        assert_eq!((c.window_s, c.hop_s, c.preset), (DEFAULT_WINDOW_S, DEFAULT_HOP_S, Preset::Fast));
        c.check().unwrap();
        let bad: WatchConfig = toml::from_str("name = \"a b\"\nsource = \"x\"\n").unwrap();
        assert!(bad.check().is_err());
        let bad: WatchConfig = toml::from_str("name = \"a\"\nsource = \"x\"\nhop_s = 0.0\n").unwrap();
        assert!(bad.check().unwrap_err().contains("hop"));
        let q = WebhookQueue::new(2);
        assert!(!q.push("1".into()) && !q.push("2".into()) && q.push("3".into()), "the oldest goes when full");
    }
}
