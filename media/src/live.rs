//! Live sources: a V4L2 camera, an RTSP, HTTP or UDP (MPEG-TS, RTP) stream, or a file
//! played as if live. One demux reads video and audio together and decodes both as they
//! come, each frame tagged with the source's own timestamp; a [`Windower`] cuts them into
//! overlapping windows, so a window's frames and its audio are the same stretch of time
//! (opening the source once per stream, as a file request does, would give each stream a
//! different stretch of a live source).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emollama_engines::CancelToken;
use ff::format::context::Input;
use ff::media::Type;
use ff::software::resampling;
use ff::util::frame::audio::Audio;
use ff::util::frame::video::Video;
use ffmpeg_next as ff;
use serde::Serialize;

use super::audio::resample_into;
use super::error::MediaError;
use super::image::RgbImage;
use super::input::{
    check_resolution, is_camera, is_image_container, is_network, network_options, open_input, stream_info, MediaInfo,
    MediaLimits,
};
use super::video::{video_decoder, Converter};

/// How a live source is read.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Release a file's packets at their timestamps, as a camera would deliver them.
    pub realtime: bool,
    /// A source that delivers nothing for this long is lost (and reconnected by the caller).
    pub stall_timeout_s: f64,
    /// The audio rate the pipeline wants (the manifest's).
    pub sample_rate: u32,
    pub limits: MediaLimits,
}

/// What one packet decoded to, at the source's time in seconds.
#[derive(Debug)]
pub enum Decoded {
    Frame(f64, RgbImage),
    Audio(f64, Vec<f32>),
}

struct VideoTrack {
    index: usize,
    decoder: ff::decoder::Video,
    converter: Converter,
    time_base: f64,
}

struct AudioTrack {
    index: usize,
    decoder: ff::decoder::Audio,
    resampler: Option<resampling::Context>,
    time_base: f64,
}

/// An open live source.
pub struct LiveSource {
    name: String,
    input: Input,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    /// Milliseconds since `epoch` of the last packet: the interrupt callback's stall clock.
    last_packet_ms: Arc<AtomicU64>,
    epoch: Instant,
    stall: Duration,
    /// With `realtime`: the wall clock and source time of the first packet.
    pace: Option<(Instant, f64)>,
    realtime: bool,
    cancel: CancelToken,
    bad_packets: u32,
    pub info: MediaInfo,
}

impl LiveSource {
    /// Open `source` (a URL, `/dev/videoN`, or a file) and its decoders.
    pub fn open(source: &str, opts: &LiveOptions, cancel: &CancelToken) -> Result<Self, MediaError> {
        super::init();
        let name = source.to_string();
        let epoch = Instant::now();
        let last_packet_ms = Arc::new(AtomicU64::new(0));
        let stall = Duration::from_secs_f64(opts.stall_timeout_s.max(0.1));
        let input = if is_network(source) && !is_camera(source) {
            // FFmpeg's socket timeouts at the stall timeout: a live read has no total budget.
            let dict = network_options(source, opts.stall_timeout_s);
            let (stop, last) = (cancel.clone(), last_packet_ms.clone());
            let stalled = move || {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                stop.is_cancelled() || quiet > stall
            };
            ff::format::input_with_interrupt_and_dictionary(source, stalled, dict).map_err(|e| match e {
                _ if cancel.is_cancelled() => MediaError::Cancelled { source_name: name.clone() },
                // The interrupt callback stopped the open: nothing arrived within the stall timeout.
                ff::Error::Exit => MediaError::Timeout { source_name: name.clone(), seconds: opts.stall_timeout_s },
                e => MediaError::Open { source_name: name.clone(), reason: e.to_string() },
            })?
        } else {
            open_input(source, &opts.limits, cancel)?.0
        };
        if is_image_container(input.format().name()) {
            return Err(MediaError::StillImage { source_name: name });
        }
        let info = MediaInfo {
            source: name.clone(),
            container: input.format().name().to_string(),
            duration_s: 0.0,
            video: stream_info(&input, Type::Video),
            audio: stream_info(&input, Type::Audio),
        };
        let v = info.video.clone().ok_or_else(|| MediaError::NoVideo { source_name: name.clone() })?;
        check_resolution(source, &v, &opts.limits)?;
        let seconds = |tb: ff::Rational| f64::from(tb.numerator()) / f64::from(tb.denominator().max(1));
        let (index, decoder) = video_decoder(&input, &name)?;
        let time_base = seconds(input.stream(index).expect("the decoder's stream").time_base());
        let video = Some(VideoTrack { index, decoder, converter: Converter::new(v.rotation), time_base });
        let audio = match input.streams().best(Type::Audio) {
            Some(stream) => {
                let err = |e: ff::Error| MediaError::Decode { source_name: name.clone(), reason: e.to_string() };
                let ctx = ff::codec::Context::from_parameters(stream.parameters()).map_err(err)?;
                Some(AudioTrack {
                    index: stream.index(),
                    decoder: ctx.decoder().audio().map_err(err)?,
                    resampler: None,
                    time_base: seconds(stream.time_base()),
                })
            }
            None => None,
        };
        Ok(Self {
            name,
            input,
            video,
            audio,
            last_packet_ms,
            epoch,
            stall,
            pace: None,
            realtime: opts.realtime,
            cancel: cancel.clone(),
            bad_packets: 0,
            info,
        })
    }

    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// Read one packet and append what it decodes to `out`; false at the end of the
    /// stream (the decoders' last frames are flushed into `out` then).
    pub fn read(&mut self, out: &mut Vec<Decoded>, sample_rate: u32) -> Result<bool, MediaError> {
        let mut packet = ff::Packet::empty();
        match packet.read(&mut self.input) {
            Ok(()) => {
                self.last_packet_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            Err(ff::Error::Eof) => {
                self.flush(out, sample_rate)?;
                return Ok(false);
            }
            Err(ff::Error::InvalidData) if self.bad_packets < 1000 => {
                self.bad_packets += 1;
                return Ok(true);
            }
            Err(e) => {
                let name = self.name.clone();
                if self.cancel.is_cancelled() {
                    return Err(MediaError::Cancelled { source_name: name });
                }
                // The interrupt callback stops a read only on cancel or a stall.
                if matches!(e, ff::Error::Exit) {
                    return Err(MediaError::Timeout { source_name: name, seconds: self.stall.as_secs_f64() });
                }
                return Err(MediaError::Decode { source_name: name, reason: e.to_string() });
            }
        }
        let stream = packet.stream();
        if let (true, Some(ts)) = (self.realtime, packet.pts().or(packet.dts())) {
            let tb = match (&self.video, &self.audio) {
                (Some(v), _) if v.index == stream => v.time_base,
                (_, Some(a)) if a.index == stream => a.time_base,
                _ => return Ok(true),
            };
            self.wait_until(ts as f64 * tb)?;
        }
        if let Some(v) = self.video.as_mut().filter(|v| v.index == stream) {
            if v.decoder.send_packet(&packet).is_ok() {
                drain_video(v, &self.name, out)?;
            }
        } else if let Some(a) = self.audio.as_mut().filter(|a| a.index == stream) {
            if a.decoder.send_packet(&packet).is_ok() {
                drain_audio(a, &self.name, sample_rate, out)?;
            }
        }
        Ok(true)
    }

    fn flush(&mut self, out: &mut Vec<Decoded>, sample_rate: u32) -> Result<(), MediaError> {
        if let Some(v) = self.video.as_mut() {
            let _ = v.decoder.send_eof();
            drain_video(v, &self.name, out)?;
        }
        if let Some(a) = self.audio.as_mut() {
            let _ = a.decoder.send_eof();
            drain_audio(a, &self.name, sample_rate, out)?;
        }
        Ok(())
    }

    /// Sleep until source time `t` is due on the wall clock (realtime playback),
    /// waking to honour a cancel.
    fn wait_until(&mut self, t: f64) -> Result<(), MediaError> {
        let (wall0, t0) = *self.pace.get_or_insert((Instant::now(), t));
        let due = wall0 + Duration::from_secs_f64((t - t0).max(0.0));
        while Instant::now() < due {
            if self.cancel.is_cancelled() {
                return Err(MediaError::Cancelled { source_name: self.name.clone() });
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
            // Waiting on the clock is not a stall of the source.
            self.last_packet_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn drain_video(v: &mut VideoTrack, name: &str, out: &mut Vec<Decoded>) -> Result<(), MediaError> {
    let mut frame = Video::empty();
    while v.decoder.receive_frame(&mut frame).is_ok() {
        let Some(ts) = frame.timestamp().or(frame.pts()) else { continue };
        out.push(Decoded::Frame(ts as f64 * v.time_base, v.converter.convert(&frame, name)?));
    }
    Ok(())
}

fn drain_audio(a: &mut AudioTrack, name: &str, rate: u32, out: &mut Vec<Decoded>) -> Result<(), MediaError> {
    let mut frame = Audio::empty();
    while a.decoder.receive_frame(&mut frame).is_ok() {
        let Some(ts) = frame.timestamp().or(frame.pts()) else { continue };
        let mut samples = Vec::new();
        resample_into(&mut frame, &mut a.resampler, rate, &mut samples)
            .map_err(|e| MediaError::Decode { source_name: name.to_string(), reason: e.to_string() })?;
        out.push(Decoded::Audio(ts as f64 * a.time_base, samples));
    }
    Ok(())
}

/// What a window held, for the output and for checking that its frames and its audio
/// are the same stretch of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowStats {
    pub frames: usize,
    pub audio_s: f64,
    /// The brightest frame's mean luma (0-255).
    pub luma_peak: f64,
    /// The largest audio sample magnitude (0-1).
    pub audio_peak: f32,
}

/// `[start, end)` of the source's time, its frames in order and its audio.
#[derive(Debug, Clone)]
pub struct Window {
    pub start: f64,
    pub end: f64,
    pub frames: Vec<RgbImage>,
    /// None when the source has no audio stream.
    pub audio: Option<Vec<f32>>,
    pub stats: WindowStats,
}

/// Cuts decoded frames and audio into windows of `window` seconds every `hop` seconds of
/// the source's time. It keeps only what the next window still needs.
pub struct Windower {
    window: f64,
    hop: f64,
    rate: u32,
    has_audio: bool,
    next_start: Option<f64>,
    frames: VecDeque<(f64, RgbImage)>,
    /// Source time of `audio[0]`.
    audio_t0: Option<f64>,
    audio: VecDeque<f32>,
    /// The latest frame time seen.
    video_until: f64,
    /// The source ended: windows whose frames are complete go out with the audio there is.
    finished: bool,
}

/// A frame this much earlier than the latest one is a new timeline (a restarted sender);
/// B-frame reordering never goes back this far.
const JUMP_BACK_S: f64 = 0.5;

/// An audio frame this far off the running sample clock restarts it (a jump in the
/// stream), rather than being padded or overlapped.
const AUDIO_RESYNC_S: f64 = 0.25;

impl Windower {
    pub fn new(window_s: f64, hop_s: f64, sample_rate: u32, has_audio: bool) -> Self {
        Self {
            window: window_s,
            hop: hop_s,
            rate: sample_rate,
            has_audio,
            next_start: None,
            frames: VecDeque::new(),
            audio_t0: None,
            audio: VecDeque::new(),
            video_until: f64::NEG_INFINITY,
            finished: false,
        }
    }

    /// The source ended (no more audio will come for the last windows).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    fn audio_until(&self) -> f64 {
        self.audio_t0.map_or(f64::NEG_INFINITY, |t0| t0 + self.audio.len() as f64 / f64::from(self.rate))
    }

    pub fn push(&mut self, item: Decoded) {
        match item {
            Decoded::Frame(t, image) => {
                self.next_start.get_or_insert(t);
                let back = t < self.video_until - JUMP_BACK_S;
                let ahead = self.video_until.is_finite() && t > self.video_until + self.window * 4.0;
                if back || ahead {
                    // The timeline jumped (a restarted sender): start again from here.
                    self.frames.clear();
                    self.audio.clear();
                    self.audio_t0 = None;
                    self.next_start = Some(t);
                    self.video_until = f64::NEG_INFINITY;
                }
                self.video_until = self.video_until.max(t);
                self.frames.push_back((t, image));
            }
            Decoded::Audio(t, samples) => {
                let expected = self.audio_until();
                if self.audio_t0.is_none() || (t - expected).abs() > AUDIO_RESYNC_S {
                    self.audio.clear();
                    self.audio_t0 = Some(t);
                } else if t > expected {
                    // A small gap: silence keeps the sample clock on the source's time.
                    let gap = ((t - expected) * f64::from(self.rate)).round() as usize;
                    self.audio.extend(std::iter::repeat_n(0.0, gap));
                }
                self.audio.extend(samples);
            }
        }
    }

    /// The next complete window: its frames are complete once a frame at or after its end
    /// arrived, its audio once the samples reach its end.
    pub fn pop(&mut self) -> Option<Window> {
        loop {
            let start = self.next_start?;
            let end = start + self.window;
            let audio_done =
                !self.has_audio || self.finished || self.audio_until() >= end || self.video_until >= end + 1.0;
            if self.video_until < end || !audio_done {
                return None;
            }
            let frames: Vec<RgbImage> =
                self.frames.iter().filter(|(t, _)| *t >= start && *t < end).map(|(_, f)| f.clone()).collect();
            let audio = self.has_audio.then(|| self.audio_between(start, end));
            self.advance(start + self.hop);
            if frames.is_empty() {
                continue; // a gap in the stream: nothing to analyse in this stretch
            }
            let stats = WindowStats {
                frames: frames.len(),
                audio_s: audio.as_ref().map_or(0.0, |a| a.len() as f64 / f64::from(self.rate)),
                luma_peak: frames.iter().map(mean_luma).fold(0.0, f64::max),
                audio_peak: audio.as_ref().map_or(0.0, |a| a.iter().fold(0.0f32, |m, s| m.max(s.abs()))),
            };
            return Some(Window { start, end, frames, audio, stats });
        }
    }

    /// Samples of `[start, end)`, zeros where the audio did not reach.
    fn audio_between(&self, start: f64, end: f64) -> Vec<f32> {
        let n = ((end - start) * f64::from(self.rate)).round() as usize;
        let Some(t0) = self.audio_t0 else { return vec![0.0; n] };
        let first = ((start - t0) * f64::from(self.rate)).round() as i64;
        (0..n as i64)
            .map(|i| usize::try_from(first + i).ok().and_then(|j| self.audio.get(j)).copied().unwrap_or(0.0))
            .collect()
    }

    /// Drop what no window from `next` on needs.
    fn advance(&mut self, next: f64) {
        self.next_start = Some(next);
        while self.frames.front().is_some_and(|(t, _)| *t < next) {
            self.frames.pop_front();
        }
        if let Some(t0) = self.audio_t0 {
            let drop = (((next - t0) * f64::from(self.rate)).round().max(0.0) as usize).min(self.audio.len());
            self.audio.drain(..drop);
            self.audio_t0 = Some(t0 + drop as f64 / f64::from(self.rate));
        }
    }
}

/// Mean luma (BT.601) of a frame, sampled on a grid (a statistic, not a measurement).
fn mean_luma(f: &RgbImage) -> f64 {
    let step = ((f.width * f.height) as usize / 4096).max(1);
    let (mut sum, mut n) = (0.0, 0usize);
    for px in f.data.chunks_exact(3).step_by(step) {
        sum += 0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2]);
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: u8) -> RgbImage {
        RgbImage::new(4, 4, vec![v; 48])
    }

    #[test]
    fn windows_hold_the_same_stretch_of_frames_and_audio() {
        let mut w = Windower::new(2.0, 1.0, 100, true);
        // 10 fps video from t=10 (a source's own clock), audio in 0.1 s frames.
        for i in 0..60 {
            let t = 10.0 + f64::from(i) * 0.1;
            w.push(Decoded::Audio(t, vec![if (13.0..13.1).contains(&t) { 1.0 } else { 0.0 }; 10]));
            w.push(Decoded::Frame(t, frame(if (13.0..13.1).contains(&t) { 250 } else { 10 })));
        }
        let mut windows = Vec::new();
        while let Some(win) = w.pop() {
            windows.push(win);
        }
        let starts: Vec<f64> = windows.iter().map(|w| w.start).collect();
        assert_eq!(starts, vec![10.0, 11.0, 12.0, 13.0], "source time, every hop");
        for win in &windows {
            assert_eq!(win.frames.len(), 20);
            assert_eq!(win.audio.as_ref().unwrap().len(), 200);
            let flash = win.start <= 13.0 && 13.0 < win.end;
            assert_eq!(win.stats.luma_peak > 200.0, flash, "{win:?}");
            assert_eq!(win.stats.audio_peak > 0.5, flash, "window {} audio", win.start);
        }
        // Only what the next window needs is kept.
        assert!(w.frames.len() <= 21 && w.audio.len() <= 210);
    }

    #[test]
    fn a_jump_in_the_timeline_starts_the_windows_again() {
        let mut w = Windower::new(1.0, 1.0, 100, false);
        for i in 0..15 {
            w.push(Decoded::Frame(100.0 + f64::from(i) * 0.1, frame(0)));
        }
        assert_eq!(w.pop().map(|x| x.start), Some(100.0));
        for i in 0..15 {
            w.push(Decoded::Frame(1.0 + f64::from(i) * 0.1, frame(0))); // the sender restarted
        }
        assert_eq!(w.pop().map(|x| x.start), Some(1.0));
        // A restart only a little earlier (MPEG-TS senders all start near 1.4 s).
        for i in 0..10 {
            w.push(Decoded::Frame(2.5 + f64::from(i) * 0.1, frame(0)));
        }
        for i in 0..15 {
            w.push(Decoded::Frame(1.4 + f64::from(i) * 0.1, frame(0)));
        }
        let starts: Vec<f64> = std::iter::from_fn(|| w.pop()).map(|x| x.start).collect();
        assert_eq!(starts.first().copied(), Some(1.4), "{starts:?}");
    }
}
