//! `emollama serve`: the headless HTTP service (axum on tokio). One [`Pipeline`] is
//! built after the listener is up (so `/healthz` answers at once and `/readyz` only
//! after warm-up), then shared by every request; a bounded queue in front of a
//! concurrency limit turns overload into 503s; SIGTERM drains in-flight work.

pub mod config;
mod http;
mod metrics;
pub mod systemd;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

pub use config::{ConfigError, ServeConfig};

use emollama_runtime::Pipeline;

/// What `/readyz` reports once ready.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyInfo {
    pub bundle: String,
    pub synthetic: bool,
    pub profile: String,
    pub providers: std::collections::BTreeMap<String, String>,
    pub power_mode: Option<String>,
    pub warm_up_ms: f64,
}

pub struct AppState {
    pub config: ServeConfig,
    runtime: OnceLock<Arc<Pipeline>>,
    ready: OnceLock<ReadyInfo>,
    startup_error: OnceLock<String>,
    slots: Arc<Semaphore>,
    /// Requests admitted (waiting or running).
    admitted: AtomicUsize,
    running: AtomicUsize,
    draining: AtomicBool,
    metrics: Mutex<metrics::Metrics>,
    model_bytes: AtomicUsize,
    upload_dir: tempfile::TempDir,
}

impl AppState {
    pub fn new(config: ServeConfig) -> std::io::Result<Self> {
        let parent = config.upload_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)?;
        // A private folder (0700) for uploads, removed with the process.
        let upload_dir = tempfile::Builder::new().prefix("emollama-uploads-").tempdir_in(parent)?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            config,
            runtime: OnceLock::new(),
            ready: OnceLock::new(),
            startup_error: OnceLock::new(),
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            metrics: Mutex::new(metrics::Metrics::default()),
            model_bytes: AtomicUsize::new(0),
            upload_dir,
        })
    }

    fn metrics(&self) -> std::sync::MutexGuard<'_, metrics::Metrics> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serve until SIGTERM/SIGINT, then drain. `build` makes the runtime (blocking; it
/// runs on a worker thread after the listener is up).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    build: impl FnOnce() -> Result<(Pipeline, ReadyInfo), String> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    // Tests and operators read this line to find the port when listening on :0.
    println!("emollama serve: listening on http://{addr}");
    systemd::notify(&format!("STATUS=loading bundle, listening on {addr}"));

    let loader = state.clone();
    tokio::task::spawn_blocking(move || match build() {
        Ok((runtime, info)) => {
            let bytes: u64 = runtime.bundle().manifest().files.iter().map(|f| f.size).sum();
            loader.model_bytes.store(bytes as usize, Ordering::Relaxed);
            let _ = loader.runtime.set(Arc::new(runtime));
            let status = format!("STATUS=ready: bundle {} on {}", info.bundle, info.profile);
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

    let app = http::router(state.clone());
    let drain = Duration::from_secs_f64(state.config.drain_timeout_s);
    let shutdown_state = state.clone();
    let shutdown = async move {
        wait_for_signal().await;
        shutdown_state.draining.store(true, Ordering::SeqCst);
        systemd::notify("STOPPING=1");
        tracing::info!("draining: no new connections, in-flight requests finish within {drain:?}");
        // Past the deadline, leave anyway (exit 0: this is the requested stop).
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            tracing::warn!("drain deadline reached; exiting with requests still running");
            std::process::exit(0);
        });
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
