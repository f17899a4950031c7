//! `emollama watch`: a camera, stream or file window by window, one JSON line per event
//! on stdout. SIGTERM or Ctrl-C stops after the window being analysed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use emollama_commands::watch::{watch, WatchEvent, WatchOptions};
use emollama_engines::CancelToken;
use emollama_runtime::prompt::Task;
use emollama_runtime::{AnalyzeRequest, Mode, Preset};

use crate::args::PipelineArgs;

/// `4s`, `500ms`, `2.5` (seconds).
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = t.strip_suffix('s') {
        (s, 1.0)
    } else {
        (t, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v * scale),
        _ => Err(format!("{text:?} is not a duration (4s, 500ms, 2.5)")),
    }
}

#[derive(clap::Args)]
pub struct WatchArgs {
    /// A camera (/dev/video0), a stream (rtsp://…, http://…, udp://@:5000 for MPEG-TS,
    /// rtp://…) or a file.
    source: String,
    /// Window length. 4s: MER2023's clips are single utterances of a few seconds (the
    /// official list's example line is 125 frames, 5 s), so a window holds about one.
    #[arg(long, default_value = "4s", value_parser = parse_seconds)]
    window: f64,
    /// Time from one window's start to the next's. 2s: a result every 2 s, and every
    /// moment is seen by two windows.
    #[arg(long, default_value = "2s", value_parser = parse_seconds)]
    hop: f64,
    /// fast: label probabilities from one prefill (no text); eval or demo: an answer too.
    #[arg(long, value_enum, default_value = "fast")]
    preset: Preset,
    #[arg(long, value_enum, default_value = "full")]
    mode: Mode,
    /// The MER2023/2024 six-label instruction instead of the nine-label one.
    #[arg(long)]
    six_labels: bool,
    /// What the person says, for the prompt's transcript line (the same for every window).
    #[arg(long)]
    transcript: Option<String>,
    /// Play a file at its own pace, as if live (windows are dropped when analysis is slower).
    #[arg(long)]
    realtime: bool,
    /// A source that delivers nothing for this long is lost (and reconnected).
    #[arg(long, default_value = "5s", value_parser = parse_seconds)]
    stall_timeout: f64,
    /// Reconnect a lost source, with backoff (default: yes for streams and cameras, no for files).
    #[arg(long, action = clap::ArgAction::Set)]
    reconnect: Option<bool>,
    /// Stop after this many windows.
    #[arg(long)]
    max_windows: Option<u64>,
    /// Make each window cost at least this long (tests of back-pressure).
    #[arg(long, hide = true, value_parser = parse_seconds)]
    min_window_cost: Option<f64>,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

impl WatchArgs {
    fn options(&self) -> WatchOptions {
        let request = AnalyzeRequest {
            task: Task::Emotion { six_labels: self.six_labels },
            preset: self.preset,
            mode: self.mode,
            transcript: self.transcript.clone(),
            ..AnalyzeRequest::new(self.source.clone())
        };
        let mut o = WatchOptions::new(self.source.clone(), request);
        o.window_s = self.window;
        o.hop_s = self.hop;
        o.realtime = self.realtime;
        o.stall_timeout_s = self.stall_timeout;
        o.reconnect = self.reconnect.unwrap_or(o.reconnect);
        o.max_windows = self.max_windows;
        o.min_window_cost = self.min_window_cost.map(Duration::from_secs_f64);
        o
    }
}

/// Cancel `stop` on SIGTERM or SIGINT, and `abort` (the window being analysed) on a
/// second one (a thread of its own with a small tokio runtime).
pub fn stop_on_signals(stop: CancelToken, abort: CancelToken) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stopping after the current window");
            stop.cancel();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stopping now");
            abort.cancel();
        });
    });
    Ok(())
}

pub fn run(args: WatchArgs, ort_library: Option<PathBuf>) -> anyhow::Result<()> {
    let opts = args.options();
    opts.check().map_err(anyhow::Error::msg)?;
    let pipeline = args.pipeline.load(ort_library)?;
    let (stop, abort) = (CancelToken::new(), CancelToken::new());
    stop_on_signals(stop.clone(), abort.clone())?;
    let mut out = std::io::stdout().lock();
    let mut ended = None;
    let (windows, _) = watch(&pipeline, &opts, &stop, &abort, |event| {
        if let WatchEvent::Ended { reason, .. } = event {
            ended = Some(reason.clone());
        }
        let _ = writeln!(out, "{}", serde_json::to_string(event).unwrap_or_default());
        let _ = out.flush();
    })?;
    match ended.as_deref() {
        Some("end of the source") if windows == 0 => {
            eprintln!("note: the source ended before a whole window ({} s) was read", opts.window_s)
        }
        Some(reason) if windows == 0 && reason != "stopped" && reason != "end of the source" => {
            anyhow::bail!("{}: {reason}", opts.source)
        }
        _ => {}
    }
    Ok(())
}
