//! A live source window by window on the same pipeline (`emollama watch`, and the
//! service's `[[watch]]` sources). A reader thread demuxes the source once (video and
//! audio together), reconnects with backoff when it is lost, and cuts windows on the
//! source's clock; the caller's thread analyses them. A window that is ready while the
//! previous one is still being analysed replaces the one waiting and is counted as
//! dropped: latency stays bounded and memory flat, never a backlog. A file read as fast
//! as it decodes (not `realtime`) is the one source that waits instead: nothing is lost
//! by pausing a file.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use emollama_engines::CancelToken;
use emollama_media::{MediaError, RgbImage, Source, SourceKind, SourceOptions, Window, WindowStats, Windower};
use serde::Serialize;

use emollama_runtime::request::AnalyzeRequest;
use emollama_runtime::stage::Timings;
use emollama_runtime::{Pipeline, TranscriptReport};

use emollama_runtime::{RequestError, RuntimeError};

use crate::CommandError;

/// The defaults, from the MER datasets' clips: each is one utterance of a few seconds
/// (the official list's example line, 125 frames at 25 fps, is 5 s), so a 4 s window
/// holds about one utterance, and a 2 s hop puts every moment in two windows.
pub const DEFAULT_WINDOW_S: f64 = 4.0;
pub const DEFAULT_HOP_S: f64 = 2.0;

/// One watched source.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// What the output calls the source (the service's `[[watch]]` name; else the URL).
    pub name: String,
    pub source: String,
    pub window_s: f64,
    pub hop_s: f64,
    /// Play a file at its own pace, as a camera delivers frames (windows can be dropped).
    pub realtime: bool,
    /// A source silent for this long is lost.
    pub stall_timeout_s: f64,
    /// Reconnect a lost source (default for streams and cameras; a file ends at its end).
    pub reconnect: bool,
    /// Stop after this many windows.
    pub max_windows: Option<u64>,
    /// The request each window runs (task, preset, mode, transcript…); its media is the window.
    pub request: AnalyzeRequest,
    /// A pipeline at least this slow per window (testing back-pressure on a fast machine).
    pub min_window_cost: Option<Duration>,
}

impl WatchOptions {
    pub fn new(source: impl Into<String>, request: AnalyzeRequest) -> Self {
        let source = source.into();
        Self {
            name: source.clone(),
            reconnect: SourceKind::of(&source) != SourceKind::File,
            source,
            window_s: DEFAULT_WINDOW_S,
            hop_s: DEFAULT_HOP_S,
            realtime: false,
            stall_timeout_s: 5.0,
            max_windows: None,
            request,
            min_window_cost: None,
        }
    }

    /// Windows are dropped when analysis falls behind, except for a file read at full speed.
    fn drops_windows(&self) -> bool {
        self.reconnect || self.realtime || SourceKind::of(&self.source) != SourceKind::File
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.window_s.is_finite() && self.window_s >= 0.5 && self.window_s <= 60.0) {
            return Err(format!("window {} s: use 0.5-60 s", self.window_s));
        }
        if !(self.hop_s.is_finite() && self.hop_s >= 0.1 && self.hop_s <= self.window_s * 4.0) {
            return Err(format!("hop {} s: use 0.1 s up to four windows", self.hop_s));
        }
        if !(self.stall_timeout_s.is_finite() && (0.1..=3600.0).contains(&self.stall_timeout_s)) {
            return Err(format!("stall timeout {} s: use 0.1-3600 s", self.stall_timeout_s));
        }
        Ok(())
    }
}

/// One window's result (one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct WindowResult {
    pub source: String,
    pub index: u64,
    /// The window on the source's clock (seconds of its timestamps, not the wall clock).
    pub start: f64,
    pub end: f64,
    pub label: Option<String>,
    pub label_scores: Option<BTreeMap<String, f64>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// From the moment the window's last packet was read to this result: how far behind
    /// the source the output is.
    pub latency_ms: f64,
    /// Windows skipped so far because analysis was busy.
    pub dropped: u64,
    pub media: WindowStats,
    pub timings_ms: Timings,
    pub notes: Vec<String>,
    /// What speech recognition heard in the window (a bundle with it, speech present).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
    /// The face the local and temporal encoders saw: the mean box of its track
    /// (x1, y1, x2, y2, frame pixels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub face_box: Option<[f32; 4]>,
    /// The window's first frame, for a preview (the service's console); not in the JSON.
    #[serde(skip)]
    pub first_frame: Option<Arc<RgbImage>>,
}

/// What a watch reports, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    Connected {
        source: String,
        container: String,
        video: String,
        audio: Option<String>,
    },
    Window(WindowResult),
    /// A window that could not be analysed (the watch goes on).
    WindowFailed {
        source: String,
        start: f64,
        end: f64,
        error: String,
    },
    Reconnecting {
        source: String,
        error: String,
        attempt: u32,
        retry_in_s: f64,
    },
    Ended {
        source: String,
        windows: u64,
        dropped: u64,
        reason: String,
    },
}

/// What the reader hands the analysing thread.
#[derive(Default)]
struct Handoff {
    /// The newest complete window and when its last packet was read.
    window: Option<(Window, Instant)>,
    events: VecDeque<WatchEvent>,
    dropped: u64,
    /// The reader stopped, and why (empty: asked to stop); said once the last window is out.
    done: Option<String>,
}

struct Shared {
    state: Mutex<Handoff>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Handoff> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, e: WatchEvent) {
        self.lock().events.push_back(e);
        self.changed.notify_all();
    }
}

/// Backoff before reconnect attempt `n` (1, 2, …): 0.5 s doubling, at most 10 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs_f64((0.5 * 2f64.powi(attempt.saturating_sub(1).min(10) as i32)).min(10.0))
}

/// Watch `opts.source` until it ends, `stop` is cancelled (the window being analysed is
/// finished first) or `max_windows` are done; every event goes to `on_event` on this
/// thread. `abort` cancels the window being analysed (a shutdown that cannot wait for
/// it). Returns the windows analysed and dropped.
pub fn watch(
    pipeline: &Pipeline,
    opts: &WatchOptions,
    stop: &CancelToken,
    abort: &CancelToken,
    mut on_event: impl FnMut(&WatchEvent),
) -> Result<(u64, u64), CommandError> {
    opts.check().map_err(|reason| RuntimeError::from(RequestError { field: "watch", reason }))?;
    pipeline.check_request(&opts.request)?;
    let shared = Shared { state: Mutex::new(Handoff::default()), changed: Condvar::new() };
    // The reader's own token: cancelled by `stop` (seen within 100 ms) or by max_windows.
    let reader_stop = CancelToken::new();
    let live = SourceOptions {
        limits: pipeline.config().limits.clone(),
        sample_rate: pipeline.manifest().preprocess.audio.sample_rate,
        realtime: opts.realtime,
        stall_timeout_s: Some(opts.stall_timeout_s),
        still: false,
    };
    let mut windows = 0u64;
    std::thread::scope(|scope| {
        scope.spawn(|| read_windows(opts, &live, &reader_stop, &shared));
        loop {
            if stop.is_cancelled() {
                reader_stop.cancel();
            }
            let mut state = shared.lock();
            while state.window.is_none() && state.events.is_empty() && state.done.is_none() && !stop.is_cancelled() {
                state =
                    shared.changed.wait_timeout(state, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
            }
            let events: Vec<WatchEvent> = state.events.drain(..).collect();
            let next = if stop.is_cancelled() { None } else { state.window.take() };
            let (dropped, done) = (state.dropped, state.done.clone());
            drop(state);
            shared.changed.notify_all(); // a reader waiting for the slot may go on
            events.iter().for_each(&mut on_event);
            if let Some((window, ready)) = next {
                let started = Instant::now();
                let (start, end) = (window.start, window.end);
                let event = match analyse(pipeline, opts, window, abort) {
                    // Cancelled by a shutdown that could not wait: no event, and no more windows.
                    Err(e) if abort.is_cancelled() => {
                        tracing::info!(source = %opts.name, "window {start:.2}-{end:.2} s cancelled: {e}");
                        None
                    }
                    Err(e) => {
                        Some(WatchEvent::WindowFailed { source: opts.name.clone(), start, end, error: e.to_string() })
                    }
                    Ok((result, stats, first_frame)) => {
                        if let Some(min) = opts.min_window_cost {
                            std::thread::sleep(min.saturating_sub(started.elapsed()));
                        }
                        Some(WatchEvent::Window(WindowResult {
                            source: opts.name.clone(),
                            index: windows,
                            start,
                            end,
                            label: result.label,
                            label_scores: result.label_scores,
                            text: result.text,
                            latency_ms: ready.elapsed().as_secs_f64() * 1e3,
                            dropped,
                            media: stats,
                            timings_ms: result.timings_ms,
                            notes: result.notes,
                            transcript: match result.transcript {
                                Some(TranscriptReport::Asr { text, .. }) => Some(text),
                                _ => None,
                            },
                            face_box: result.faces.and_then(|f| f.chosen).map(|t| t.mean_box),
                            first_frame,
                        }))
                    }
                };
                match event {
                    Some(event) => {
                        windows += 1;
                        on_event(&event);
                        if opts.max_windows.is_some_and(|m| windows >= m) {
                            reader_stop.cancel();
                        }
                    }
                    None => reader_stop.cancel(),
                }
            } else if let Some(reason) = done {
                if !reason.is_empty() {
                    on_event(&WatchEvent::Ended { source: opts.name.clone(), windows, dropped, reason });
                }
                break;
            }
            if stop.is_cancelled() || reader_stop.is_cancelled() {
                reader_stop.cancel(); // stop after the window that was being analysed
                let mut state = shared.lock();
                while state.done.is_none() {
                    state = shared
                        .changed
                        .wait_timeout(state, Duration::from_millis(100))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let events: Vec<WatchEvent> = state.events.drain(..).collect();
                drop(state);
                events.iter().for_each(&mut on_event);
                break;
            }
        }
    });
    let dropped = shared.lock().dropped;
    let reason = if stop.is_cancelled() {
        "stopped"
    } else if reader_stop.is_cancelled() {
        "max windows"
    } else {
        ""
    };
    if !reason.is_empty() {
        on_event(&WatchEvent::Ended { source: opts.name.clone(), windows, dropped, reason: reason.into() });
    }
    Ok((windows, dropped))
}

fn analyse(
    pipeline: &Pipeline,
    opts: &WatchOptions,
    window: Window,
    abort: &CancelToken,
) -> Result<(emollama_runtime::AnalyzeResult, WindowStats, Option<Arc<RgbImage>>), CommandError> {
    let req = AnalyzeRequest { media: opts.name.clone(), ..opts.request.clone() };
    let first_frame = window.clip.frames.values().next().cloned().map(Arc::new);
    let result = pipeline.session(&req, abort.clone())?.run_clip(window.clip, |_| {})?;
    Ok((result, window.stats, first_frame))
}

/// The reader: open, read, cut windows and hand them over; reconnect when lost.
fn read_windows(opts: &WatchOptions, live: &SourceOptions, stop: &CancelToken, shared: &Shared) {
    let mut attempt = 0u32;
    let reason = loop {
        if stop.is_cancelled() {
            break String::new();
        }
        let error = match Source::open(&opts.source, live, stop) {
            Ok(mut source) => {
                shared.event(WatchEvent::Connected {
                    source: opts.name.clone(),
                    container: source.info.container.clone(),
                    video: source
                        .info
                        .video
                        .as_ref()
                        .map(|v| format!("{} {}x{}", v.codec, v.width, v.height))
                        .unwrap_or_default(),
                    audio: source.info.audio.as_ref().map(|a| format!("{} {} Hz", a.codec, a.rate)),
                });
                let mut windower = Windower::new(source.info.clone(), opts.window_s, opts.hop_s, live.sample_rate);
                let mut decoded = Vec::new();
                let end = loop {
                    let read = source.read(&mut decoded);
                    for d in decoded.drain(..) {
                        windower.push(d);
                    }
                    if !matches!(read, Ok(true)) {
                        // The end, or a lost stream: what arrived completes the windows
                        // whose frames are all there (their audio padded with silence).
                        windower.finish();
                    }
                    while let Some(w) = windower.pop() {
                        attempt = 0; // this connection delivers
                        hand_over(opts, shared, stop, w);
                    }
                    match read {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                    if stop.is_cancelled() {
                        break Ok(());
                    }
                };
                match end {
                    _ if stop.is_cancelled() => break String::new(),
                    Ok(()) if !opts.reconnect => break "end of the source".into(),
                    Ok(()) => "the stream ended".to_string(),
                    Err(MediaError::Cancelled { .. }) => break String::new(),
                    Err(e) => e.to_string(),
                }
            }
            Err(MediaError::Cancelled { .. }) => break String::new(),
            // What the source is cannot change by reconnecting (a still image, no video,
            // over the limits): it ends here, named.
            Err(e) if e.is_permanent() => break e.to_string(),
            Err(e) => e.to_string(),
        };
        if !opts.reconnect {
            break error;
        }
        attempt += 1;
        let wait = backoff(attempt);
        tracing::warn!(source = %opts.name, attempt, "{error}; reconnecting in {:.1} s", wait.as_secs_f64());
        shared.event(WatchEvent::Reconnecting {
            source: opts.name.clone(),
            error,
            attempt,
            retry_in_s: wait.as_secs_f64(),
        });
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.is_cancelled() {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut state = shared.lock();
    state.done = Some(reason);
    drop(state);
    shared.changed.notify_all();
}

/// Put `w` in the slot: replacing a waiting window (counted as dropped), or, for a file
/// read at full speed, waiting until the slot is free.
fn hand_over(opts: &WatchOptions, shared: &Shared, stop: &CancelToken, w: Window) {
    let mut state = shared.lock();
    if opts.drops_windows() {
        if state.window.is_some() {
            state.dropped += 1;
        }
    } else {
        while state.window.is_some() && !stop.is_cancelled() {
            state = shared.changed.wait_timeout(state, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
    state.window = Some((w, Instant::now()));
    drop(state);
    shared.changed.notify_all();
}
