//! Shutdown that an operator can trust. On the first SIGTERM or SIGINT the service
//! drains: `/readyz` answers 503 `draining` (the listener keeps serving health checks
//! and metrics for as long as the drain lasts), new and queued requests get 503 with
//! `Retry-After`, running ones finish, and each `[[watch]]` source finishes the window
//! it is analysing. When all of them have, or at `drain_timeout_s` (the running requests
//! and windows are then cancelled and given two seconds to stop), the process exits 0.
//! A second signal exits at once with 128 + its number, as a shell reports it. Every way
//! out removes the upload folder (the caller does, after this returns), and the process
//! leaves by [`exit_now`]: no C++ destructor of an engine library runs under a thread
//! that may still be inside it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{systemd, AppState, ServeConfig};

/// SIGTERM and SIGINT, caught (installed before the service starts, so that neither
/// kills it by default while it warms up).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// The next signal's name and number.
    async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.term.recv() => ("SIGTERM", 15),
            _ = self.int.recv() => ("SIGINT", 2),
        }
    }
}

/// Leave the process now with `code`: flush what was written, then `_exit`. No atexit
/// handler and no C++ static destructor runs: ggml's, OpenMP's and ONNX Runtime's would
/// otherwise run while a request or a watched window the drain gave up on is still
/// inside those libraries (a SIGSEGV at every other `systemctl stop`). The kernel frees
/// the memory and closes the files.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process; it has no memory-safety preconditions.
    unsafe { libc::_exit(code) }
}

/// Nothing the drain waits for is left: no request admitted, every watched source's
/// thread returned.
fn settled(state: &AppState) -> bool {
    state.admitted() == 0 && state.watch.finished()
}

async fn until_settled(state: &AppState) {
    while !settled(state) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait for a signal, drain, and return the exit status.
pub async fn run(state: &Arc<AppState>, mut signals: Signals) -> i32 {
    let (name, _) = signals.next().await;
    state.draining.store(true, Ordering::SeqCst);
    // Queued requests get 503 at their slot wait, those still sending their body at once.
    state.slots.close();
    state.stopping.send_replace(true);
    // The watched sources stop after the window each is analysing.
    state.watch.stop.cancel();
    systemd::notify("STOPPING=1");
    let drain = ServeConfig::duration(state.config.drain_timeout_s);
    tracing::info!(
        running = state.running.load(Ordering::SeqCst),
        admitted = state.admitted(),
        "{name}: draining; running requests have {drain:?} to finish"
    );
    tokio::select! {
        _ = until_settled(state) => {
            tracing::info!("drained");
            0
        }
        _ = tokio::time::sleep(drain) => {
            let tokens: Vec<_> = state.active().values().cloned().collect();
            tracing::warn!("drain deadline reached: cancelling {} running requests and the watched windows", tokens.len());
            for t in tokens {
                t.cancel();
            }
            state.watch.abort.cancel();
            if tokio::time::timeout(Duration::from_secs(2), until_settled(state)).await.is_err() {
                tracing::warn!(admitted = state.admitted(), "still running after the drain: stopping anyway");
            }
            0
        }
        (second, number) = signals.next() => {
            tracing::warn!("{second} while draining: stopping now");
            128 + number
        }
    }
}
