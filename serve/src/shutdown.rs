//! Shutdown that an operator can trust. On the first SIGTERM or SIGINT the service
//! drains: `/readyz` answers 503 `draining` (the listener keeps serving health checks
//! and metrics for as long as the drain lasts), new and queued requests get 503 with
//! `Retry-After`, running ones finish. When they have, or at `drain_timeout_s` (the
//! running ones are then cancelled and given two seconds to answer), the process exits
//! 0. A second signal exits at once with 128 + its number, as a shell reports it.
//! Every way out removes the upload folder (the caller does, after this returns).

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

/// Wait for a signal, drain, and return the exit status.
pub async fn run(state: &Arc<AppState>, mut signals: Signals) -> i32 {
    let (name, _) = signals.next().await;
    state.draining.store(true, Ordering::SeqCst);
    // Queued requests (and those still sending their body) get 503 at their slot wait.
    state.slots.close();
    systemd::notify("STOPPING=1");
    let drain = ServeConfig::duration(state.config.drain_timeout_s);
    tracing::info!(
        running = state.running.load(Ordering::SeqCst),
        admitted = state.admitted(),
        "{name}: draining; running requests have {drain:?} to finish"
    );
    tokio::select! {
        _ = crate::until_zero(&state.admitted) => {
            tracing::info!("drained");
            0
        }
        _ = tokio::time::sleep(drain) => {
            let tokens: Vec<_> = state.active().values().cloned().collect();
            tracing::warn!("drain deadline reached: cancelling {} running requests", tokens.len());
            for t in tokens {
                t.cancel();
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), crate::until_zero(&state.admitted)).await;
            0
        }
        (second, number) = signals.next() => {
            tracing::warn!("{second} while draining: stopping now");
            128 + number
        }
    }
}
