//! `emollama serve`: the headless HTTP service (hyper/axum on tokio). The listener is
//! up first (so `/healthz` answers at once, `/readyz` only after warm-up); one
//! [`Pipeline`] is then built and shared by every request. Admission bounds the
//! requests that are reading, waiting or running; the limits of a reverse proxy
//! (connections, header/body/idle timeouts, body sizes) are applied here, since a
//! Jetson usually has none in front. SIGTERM drains (see [`shutdown`]).

mod body;
pub mod config;
mod console;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod job;
mod listener;
pub mod memory;
mod metrics;
mod openai;
mod preview;
mod request_log;
mod routes;
pub mod shutdown;
pub mod systemd;
pub mod uploads;
mod urls;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::Serialize;
use tokio::sync::Semaphore;

pub use config::{ConfigError, ServeConfig};

use emollama_engines::CancelToken;
use emollama_runtime::Pipeline;

/// What `/readyz` reports once ready.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyInfo {
    pub bundle: String,
    pub model: emollama_bundle::ModelFamily,
    pub synthetic: bool,
    pub profile: String,
    /// Each encoder's execution provider and the LLM's device (`llm`).
    pub providers: std::collections::BTreeMap<String, String>,
    /// Why a GPU provider or device was passed over (a GPU build on a host without one).
    pub fallbacks: Vec<String>,
    pub power_mode: Option<String>,
    pub warm_up_ms: f64,
    /// The memory plan the runtime loaded (`emollama plan --json`'s object).
    pub plan: Option<serde_json::Value>,
}

pub struct AppState {
    pub config: ServeConfig,
    runtime: OnceLock<Arc<Pipeline>>,
    ready: OnceLock<ReadyInfo>,
    startup_error: OnceLock<String>,
    /// Run slots; closed when draining, which answers the queue with 503.
    slots: Arc<Semaphore>,
    /// Requests admitted (reading their body, waiting for a slot, or running).
    admitted: AtomicUsize,
    running: AtomicUsize,
    /// Requests and watched windows finished (the allocator is trimmed after work).
    work_done: AtomicU64,
    connections: AtomicUsize,
    draining: AtomicBool,
    /// Turns true at the first signal: bodies still arriving are answered 503 at once.
    stopping: tokio::sync::watch::Sender<bool>,
    metrics: Mutex<metrics::Metrics>,
    model_bytes: AtomicUsize,
    /// Cancel tokens of the admitted runs, by job number.
    active: Mutex<HashMap<u64, CancelToken>>,
    next_job: AtomicU64,
    url_policy: urls::UrlPolicy,
    pub uploads: uploads::UploadDir,
    /// The `[[watch]]` sources, started once the pipeline is ready.
    pub watch: Arc<watch::WatchHub>,
}

impl AppState {
    /// `listen` is the bound address (the URL policy refuses the service's own port).
    pub fn new(config: ServeConfig, listen: std::net::SocketAddr) -> std::io::Result<Self> {
        let uploads = uploads::UploadDir::create(&config.upload_parent())?;
        Ok(Self {
            watch: Arc::new(watch::WatchHub::new(config.watch.clone())),
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            url_policy: urls::UrlPolicy::new(&config.allowed_url_hosts, listen),
            config,
            runtime: OnceLock::new(),
            ready: OnceLock::new(),
            startup_error: OnceLock::new(),
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            work_done: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            metrics: Mutex::new(metrics::Metrics::default()),
            model_bytes: AtomicUsize::new(0),
            active: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(0),
            uploads,
        })
    }

    fn metrics(&self) -> MutexGuard<'_, metrics::Metrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn active(&self) -> MutexGuard<'_, HashMap<u64, CancelToken>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests admitted and not finished.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

/// Resolves once `counter` (requests admitted, connections open) is zero; polled, since
/// it is read only while shutting down.
async fn until_zero(counter: &AtomicUsize) {
    while counter.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Serve until stopped; returns the process's exit status (see [`shutdown::run`]),
/// after removing the upload folder. `build` makes the pipeline (blocking; it runs on a
/// worker thread after the listener is up).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    build: impl FnOnce() -> Result<(Pipeline, ReadyInfo), String> + Send + 'static,
) -> std::io::Result<i32> {
    let addr = listener.local_addr()?;
    // Signals are caught from here on: a SIGTERM during warm-up drains as well.
    let signals = shutdown::Signals::install()?;
    // Tests and operators read this line to find the port when listening on :0.
    println!("emollama serve: listening on http://{addr}");
    systemd::notify(&format!("STATUS=loading bundle, listening on {addr}"));

    let loader = state.clone();
    tokio::task::spawn_blocking(move || match build() {
        Ok((runtime, info)) => {
            let bytes: u64 = runtime.bundle().manifest().files.iter().map(|f| f.size).sum();
            loader.model_bytes.store(bytes as usize, Ordering::Relaxed);
            let runtime = Arc::new(runtime);
            let _ = loader.runtime.set(runtime.clone());
            // A stop that came during warm-up starts no source.
            if !loader.draining.load(Ordering::SeqCst) {
                loader.watch.start(runtime);
            }
            let on = if info.providers.values().any(|p| p == "cuda" || p == "tensorrt") { "GPU" } else { "CPU" };
            let status = format!("STATUS=ready: bundle {} on {} ({on})", info.bundle, info.profile);
            let _ = loader.ready.set(info);
            systemd::notify("READY=1");
            systemd::notify(&status);
            tracing::info!("ready");
        }
        Err(e) => {
            tracing::error!("cannot start: {e}");
            systemd::notify(&format!("STATUS=failed: {e}"));
            let _ = loader.startup_error.set(e);
        }
    });
    if let Some(every) = systemd::watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                systemd::notify("WATCHDOG=1");
            }
        });
    }

    // After work, once no request runs, the allocator's free memory goes back to the
    // system (at most every two seconds): RSS follows what is in use.
    let trimmer = state.clone();
    tokio::spawn(async move {
        let mut seen = 0;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            let done = trimmer.work_done.load(Ordering::Relaxed) + trimmer.watch.windows();
            if done != seen && trimmer.running.load(Ordering::SeqCst) == 0 {
                seen = done;
                let _ = tokio::task::spawn_blocking(memory::release_free_memory).await;
            }
        }
    });

    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let app = routes::router(state.clone());
    let accept = tokio::spawn(listener::accept_loop(listener, app, state.clone(), closing_rx));
    let code = shutdown::run(&state, signals).await;
    // The watched sources have stopped (or been given up on): their event streams end.
    state.watch.stop.cancel();
    state.watch.close_subscribers();
    let _ = closing.send(true);
    if code == 0 {
        // After a drain, let each connection finish the response it is writing (briefly);
        // a second signal asked for an immediate stop.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), until_zero(&state.connections)).await;
    }
    accept.abort();
    state.uploads.remove();
    Ok(code)
}
