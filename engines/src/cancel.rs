//! Cancelling one request's work from another thread: the token loop and prefill poll
//! the flag between llama.cpp calls, and an encoder run in progress is terminated
//! through ONNX Runtime's run options (`RunOptions::terminate`), so a cancelled request
//! releases its slot within one llama.cpp batch, not after its encoders finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ort::session::RunOptions;

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// Encoder runs in progress under this token.
    runs: Mutex<Vec<Weak<RunOptions>>>,
}

/// A cancellation flag shared by a request and whoever may cancel it (a disconnecting
/// client, a deadline, a shutdown). Cloning shares the flag.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<Inner>);

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel: set the flag and terminate the encoder runs in progress.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let runs = self.0.runs.lock().unwrap_or_else(|p| p.into_inner());
        for run in runs.iter().filter_map(Weak::upgrade) {
            let _ = run.terminate();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Register a run's options so that [`CancelToken::cancel`] terminates it. Returns
    /// false when the token is already cancelled (the run should not start). The
    /// registration ends when the options are dropped.
    pub(crate) fn register(&self, run: &Arc<RunOptions>) -> bool {
        let mut runs = self.0.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.retain(|w| w.strong_count() > 0);
        runs.push(Arc::downgrade(run));
        // Checked under the lock: a cancel that came first is seen here, one that comes
        // later finds this run in the list.
        !self.is_cancelled()
    }
}
