//! Admission and the run of one admitted request. A request holds an [`Admitted`]
//! ticket from before its body is read to the end of its run, so `max_concurrency +
//! max_queue` bounds the bodies in flight as well as the runs. A [`Job`] runs on a
//! blocking thread under its deadline: a timer cancels its token at the deadline, and
//! the token reaches media reads, every encoder and prefill as well as the token loop,
//! so the slot comes free promptly. Its [`RequestLog`] goes with it: the request is
//! counted when the run ends, whoever was still waiting for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::OwnedSemaphorePermit;

use emollama_engines::CancelToken;
use emollama_runtime::{AnalyzeRequest, AnalyzeResult, Pipeline};

use crate::error::{runtime_error, ApiError};
use crate::request_log::RequestLog;
use crate::uploads::Upload;
use crate::AppState;

/// A place among the requests admitted (reading, waiting or running).
pub struct Admitted(Arc<AppState>);

impl Admitted {
    pub fn try_new(state: &Arc<AppState>) -> Result<Self, ApiError> {
        let capacity = state.config.max_concurrency + state.config.max_queue;
        if state.admitted.fetch_add(1, Ordering::SeqCst) >= capacity {
            state.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("{capacity} requests already admitted"),
            )
            .retry(2));
        }
        Ok(Self(state.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A token in the service's list of running requests (cancelled together at the drain
/// deadline), removed when dropped.
struct Active(Arc<AppState>, u64);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active().remove(&self.1);
    }
}

/// Cancels the token at the deadline, marking why; stopped when dropped.
struct DeadlineTimer {
    task: tokio::task::JoinHandle<()>,
    expired: Arc<AtomicBool>,
}

impl DeadlineTimer {
    fn start(at: tokio::time::Instant, cancel: CancelToken) -> Self {
        let expired = Arc::new(AtomicBool::new(false));
        let flag = expired.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            flag.store(true, Ordering::SeqCst);
            cancel.cancel();
        });
        Self { task, expired }
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Job {
    state: Arc<AppState>,
    runtime: Arc<Pipeline>,
    request: AnalyzeRequest,
    cancel: CancelToken,
    log: RequestLog,
    timeout_s: f64,
    timer: DeadlineTimer,
    deadline: tokio::time::Instant,
    _active: Active,
    /// Released when the run ends: the queue place, the slot, the uploaded files.
    _held: (Admitted, OwnedSemaphorePermit, Vec<Upload>),
}

impl Job {
    /// Must be called inside the tokio runtime (it starts the deadline timer).
    pub fn new(
        state: Arc<AppState>,
        runtime: Arc<Pipeline>,
        request: AnalyzeRequest,
        log: RequestLog,
        deadline: tokio::time::Instant,
        held: (Admitted, OwnedSemaphorePermit, Vec<Upload>),
    ) -> Self {
        let cancel = CancelToken::new();
        let key = state.next_job.fetch_add(1, Ordering::Relaxed);
        state.active().insert(key, cancel.clone());
        Self {
            timer: DeadlineTimer::start(deadline, cancel.clone()),
            deadline,
            _active: Active(state.clone(), key),
            timeout_s: state.config.request_timeout_s,
            state,
            runtime,
            request,
            cancel,
            log,
            _held: held,
        }
    }

    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Run to the end (blocking). A run cut short answers `timeout` (the deadline) or
    /// `cancelled` (client gone, shutdown), with the tokens it generated counted.
    pub fn run(mut self, mut on_piece: impl FnMut(&str)) -> Result<AnalyzeResult, ApiError> {
        self.state.running.fetch_add(1, Ordering::SeqCst);
        let mut pieces = 0usize;
        let result = self.runtime.session(&self.request, self.cancel.clone()).and_then(|s| {
            s.run(|piece| {
                pieces += 1;
                on_piece(piece);
            })
        });
        self.state.running.fetch_sub(1, Ordering::SeqCst);
        self.state.work_done.fetch_add(1, Ordering::Relaxed);
        let expired = self.timer.expired.load(Ordering::SeqCst);
        let timeout = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than request_timeout_s = {}", self.timeout_s),
            )
            .retry(5)
        };
        let stopped = match result {
            Ok(r) if !self.cancel.is_cancelled() => {
                self.log.succeeded(&r);
                return Ok(r);
            }
            Ok(r) => (if expired { timeout() } else { ApiError::cancelled() }, r.tokens.generated),
            Err(e) if e.is_cancelled() => (if expired { timeout() } else { ApiError::cancelled() }, pieces),
            Err(e) => (runtime_error(e), pieces),
        };
        self.log.stopped(&stopped.0, stopped.1);
        Err(stopped.0)
    }
}
