//! One source for every input: a file, an HTTP(S) URL, a V4L2 camera, an RTSP, UDP
//! (MPEG-TS) or RTP stream. [`Source::open`] demuxes it once with FFmpeg, video and audio
//! together, with its limits checked before any decoding; then either
//! - [`Source::read`] decodes packet by packet, each frame and audio buffer tagged with
//!   the source's own timestamp, for live windows ([`crate::Windower`]); or
//! - [`Source::read_clip`] reads the whole input (a live one for `live_capture_s`) as one
//!   stretch of time: the audio decoded as it comes, the video packets kept compressed
//!   and counted, then decoded once with only the frames the encoders select converted
//!   to RGB (the selections need the frame count, which only the end of the input gives).
//!
//! What a source name is (a file, a camera, a URL to fetch, a live stream) is decided in
//! [`SourceKind::of`], nowhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
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

use super::audio::{flush_resampler, resample_into};
use super::error::MediaError;
use super::image::RgbImage;
use super::input::{
    check_resolution, is_image_container, network_options, open_failure, stream_info, MediaInfo, MediaLimits,
};
use super::select::FrameSelection;
use super::video::{video_decoder, Converter};

/// What kind of input a source name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A local file (a path, or `file://`).
    File,
    /// A V4L2 camera (`/dev/videoN`).
    Camera,
    /// An `http(s)://` URL: a request fetches it once to a local file first; a watch
    /// reads it as a stream.
    Url,
    /// A live network stream: `rtsp://`, `rtsps://`, `udp://`, `rtp://`.
    Stream,
}

impl SourceKind {
    pub fn of(source: &str) -> Self {
        if source.starts_with("/dev/video") {
            return SourceKind::Camera;
        }
        match source.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()) {
            None => SourceKind::File,
            Some(s) if s == "file" => SourceKind::File,
            Some(s) if s == "http" || s == "https" => SourceKind::Url,
            Some(_) => SourceKind::Stream,
        }
    }

    /// Read over the network (FFmpeg's socket timeouts, the protocol whitelist of its scheme).
    pub fn is_network(self) -> bool {
        matches!(self, SourceKind::Url | SourceKind::Stream)
    }

    /// Delivers until stopped, not to an end: a request captures `live_capture_s` of it,
    /// a watch reconnects when it is lost.
    pub fn is_live(self) -> bool {
        matches!(self, SourceKind::Camera | SourceKind::Stream)
    }
}

/// How a source is read.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub limits: MediaLimits,
    /// The audio rate the pipeline wants (the manifest's).
    pub sample_rate: u32,
    /// Release a file's packets at their timestamps, as a camera would deliver them.
    pub realtime: bool,
    /// A watch: a network source silent this long is lost (no bound on the whole read).
    /// A request (None): the limits' `network_timeout_s` bounds the whole read.
    pub stall_timeout_s: Option<f64>,
    /// A still image is read as a one-frame video (a request that says it sends a still);
    /// otherwise it is refused as not a video.
    pub still: bool,
}

impl SourceOptions {
    /// A request's whole-input read.
    pub fn request(limits: MediaLimits, sample_rate: u32) -> Self {
        Self { limits, sample_rate, realtime: false, stall_timeout_s: None, still: false }
    }
}

/// What one packet decoded to, at the source's time in seconds.
#[derive(Debug)]
pub enum Decoded {
    Frame(f64, RgbImage),
    Audio(f64, Vec<f32>),
}

/// What a request reads of a source.
#[derive(Debug, Clone, Default)]
pub struct ClipRequest {
    /// The frames to convert, by selection over the stretch's frame count (none: video
    /// is not needed).
    pub frames: Vec<FrameSelection>,
    /// Decode the audio (false when pre-extracted features replace the audio encoder).
    pub audio: bool,
}

/// One stretch of a source: its selected frames and its audio.
#[derive(Debug, Clone)]
pub struct Clip {
    pub info: MediaInfo,
    /// Frames in the stretch (the video stream's packets, one per frame).
    pub total: usize,
    /// The selected frames, by presentation index.
    pub frames: BTreeMap<usize, RgbImage>,
    /// The audio at the requested rate, mono; None when the source has no audio stream,
    /// it holds no decodable sample, or it was not asked for.
    pub audio: Option<Vec<f32>>,
}

impl Clip {
    /// Every frame of a window, in order, as a clip (its total is its frame count).
    pub fn of_frames(info: MediaInfo, frames: Vec<RgbImage>, audio: Option<Vec<f32>>) -> Self {
        Self { info, total: frames.len(), frames: frames.into_iter().enumerate().collect(), audio }
    }

    /// The frames of one selection, in order (indices may repeat).
    pub fn select(&self, selection: FrameSelection) -> Vec<&RgbImage> {
        selection.indices(self.total).iter().filter_map(|i| self.frames.get(i)).collect()
    }
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

/// When FFmpeg's interrupt callback stops a read: cancelled, past the request's deadline,
/// or silent for the stall timeout.
#[derive(Clone)]
struct Interrupt {
    cancel: CancelToken,
    deadline: Option<Instant>,
    stall: Option<Duration>,
    /// Milliseconds since `epoch` of the last packet (the stall clock).
    last_packet_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Interrupt {
    /// Time since the last packet (or since the source was opened).
    fn quiet(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last_packet_ms.load(Ordering::Relaxed)))
    }

    fn fired(&self) -> bool {
        self.cancel.is_cancelled()
            || self.deadline.is_some_and(|d| Instant::now() > d)
            || self.stall.is_some_and(|s| self.quiet() > s)
    }

    fn packet_arrived(&self) {
        self.last_packet_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Why a read stopped early, when the interrupt stopped it.
    fn why(&self, source: &str, limits: &MediaLimits) -> Option<MediaError> {
        let source_name = source.to_string();
        if self.cancel.is_cancelled() {
            Some(MediaError::Cancelled { source_name })
        } else if self.deadline.is_some_and(|d| Instant::now() > d) {
            Some(MediaError::Timeout { source_name, seconds: limits.network_timeout_s })
        } else {
            let stall = self.stall.filter(|s| self.quiet() > *s)?;
            Some(MediaError::Timeout { source_name, seconds: stall.as_secs_f64() })
        }
    }
}

/// An open source.
pub struct Source {
    name: String,
    kind: SourceKind,
    input: Input,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    interrupt: Interrupt,
    opts: SourceOptions,
    /// With `realtime`: the wall clock and source time of the first packet.
    pace: Option<(Instant, f64)>,
    bad_packets: u32,
    pub info: MediaInfo,
}

/// Packets that fail to parse are skipped, up to this many (a damaged stretch of a file
/// or a stream); more is a broken input.
const MAX_BAD_PACKETS: u32 = 1000;

impl Source {
    /// Open `source`, check its limits (size, resolution, duration) and open its decoders.
    pub fn open(source: &str, opts: &SourceOptions, cancel: &CancelToken) -> Result<Self, MediaError> {
        super::init();
        let name = source.to_string();
        let kind = SourceKind::of(source);
        let limits = &opts.limits;
        let interrupt = Interrupt {
            cancel: cancel.clone(),
            deadline: (kind.is_network() && opts.stall_timeout_s.is_none())
                .then(|| Instant::now().checked_add(seconds(limits.network_timeout_s)))
                .flatten(),
            stall: opts.stall_timeout_s.filter(|_| kind.is_network()).map(|s| seconds(s.max(0.1))),
            last_packet_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        if cancel.is_cancelled() {
            return Err(MediaError::Cancelled { source_name: name });
        }
        let open_err = |e: ff::Error| MediaError::Open { source_name: name.clone(), reason: open_failure(source, e) };
        let input = match kind {
            SourceKind::Camera => {
                let fmt = ff::device::input::video()
                    .find(|f| f.name().split(',').any(|n| n == "video4linux2"))
                    .ok_or_else(|| MediaError::Open {
                        source_name: name.clone(),
                        reason: "FFmpeg has no video4linux2 input".into(),
                    })?;
                match ff::format::open_with(Path::new(source), &fmt, ff::Dictionary::new()).map_err(open_err)? {
                    ff::format::context::Context::Input(i) => i,
                    _ => return Err(MediaError::Open { source_name: name, reason: "not an input".into() }),
                }
            }
            SourceKind::Url | SourceKind::Stream => {
                let timeout = opts.stall_timeout_s.unwrap_or(limits.network_timeout_s);
                let stop = interrupt.clone();
                ff::format::input_with_interrupt_and_dictionary(
                    source,
                    move || stop.fired(),
                    network_options(source, timeout),
                )
                .map_err(|e| interrupt.why(source, limits).unwrap_or_else(|| open_err(e)))?
            }
            SourceKind::File => {
                let path = Path::new(source.strip_prefix("file://").unwrap_or(source));
                let meta = std::fs::metadata(path).map_err(|_| MediaError::NotFound(path.into()))?;
                if meta.len() == 0 {
                    return Err(MediaError::Empty(path.into()));
                }
                if meta.len() > limits.max_file_bytes {
                    return Err(MediaError::FileTooLarge {
                        source_name: name,
                        size: meta.len(),
                        limit: limits.max_file_bytes,
                    });
                }
                // A local input may name local files only: an uploaded playlist cannot
                // make FFmpeg fetch from the network.
                let mut dict = ff::Dictionary::new();
                dict.set("protocol_whitelist", "file");
                let stop = interrupt.clone();
                ff::format::input_with_interrupt_and_dictionary(path, move || stop.fired(), dict)
                    .map_err(|e| interrupt.why(source, limits).unwrap_or_else(|| open_err(e)))?
            }
        };
        let container = input.format().name().to_string();
        let duration_s =
            if input.duration() > 0 { input.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE) } else { 0.0 };
        let info = MediaInfo {
            source: name.clone(),
            container,
            duration_s,
            video: stream_info(&input, Type::Video),
            audio: stream_info(&input, Type::Audio),
        };
        if let Some(v) = &info.video {
            if is_image_container(&info.container) && !opts.still {
                return Err(MediaError::StillImage { source_name: name });
            }
            check_resolution(source, v, limits)?;
        }
        if duration_s > limits.max_duration_s {
            return Err(MediaError::TooLong { source_name: name, seconds: duration_s, limit: limits.max_duration_s });
        }
        if info.video.is_none() && info.audio.is_none() {
            return Err(MediaError::Open { source_name: name, reason: "no audio or video stream".into() });
        }
        let seconds = |tb: ff::Rational| f64::from(tb.numerator()) / f64::from(tb.denominator().max(1));
        let video = match &info.video {
            Some(v) => {
                let (index, decoder) = video_decoder(&input, &name)?;
                let time_base = seconds(input.stream(index).expect("the decoder's stream").time_base());
                Some(VideoTrack { index, decoder, converter: Converter::new(v.rotation), time_base })
            }
            None => None,
        };
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
        Ok(Self { name, kind, input, video, audio, interrupt, opts: opts.clone(), pace: None, bad_packets: 0, info })
    }

    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// The next packet, `None` at the end of the input. Damaged packets are skipped (up
    /// to [`MAX_BAD_PACKETS`]); a read the interrupt stopped says why.
    fn next_packet(&mut self) -> Result<Option<ff::Packet>, MediaError> {
        let mut packet = ff::Packet::empty();
        loop {
            match packet.read(&mut self.input) {
                Ok(()) => {
                    self.interrupt.packet_arrived();
                    return Ok(Some(packet));
                }
                Err(ff::Error::Eof) => return Ok(None),
                Err(ff::Error::InvalidData) if self.bad_packets < MAX_BAD_PACKETS => self.bad_packets += 1,
                Err(e) => {
                    if let Some(why) = self.interrupt.why(&self.name, &self.opts.limits) {
                        return Err(why);
                    }
                    return Err(MediaError::Decode { source_name: self.name.clone(), reason: e.to_string() });
                }
            }
        }
    }

    /// Read one packet and append what it decodes to `out`; false at the end of the
    /// input (the decoders' last frames are flushed into `out` then).
    pub fn read(&mut self, out: &mut Vec<Decoded>) -> Result<bool, MediaError> {
        let Some(packet) = self.next_packet()? else {
            self.flush(out)?;
            return Ok(false);
        };
        let stream = packet.stream();
        if let (true, Some(ts)) = (self.opts.realtime, packet.pts().or(packet.dts())) {
            let tb = match (&self.video, &self.audio) {
                (Some(v), _) if v.index == stream => v.time_base,
                (_, Some(a)) if a.index == stream => a.time_base,
                _ => return Ok(true),
            };
            self.wait_until(ts as f64 * tb)?;
        }
        let rate = self.opts.sample_rate;
        if let Some(v) = self.video.as_mut().filter(|v| v.index == stream) {
            if v.decoder.send_packet(&packet).is_ok() {
                drain_video(v, &self.name, out)?;
            }
        } else if let Some(a) = self.audio.as_mut().filter(|a| a.index == stream) {
            if a.decoder.send_packet(&packet).is_ok() {
                drain_audio(a, &self.name, rate, out)?;
            }
        }
        Ok(true)
    }

    fn flush(&mut self, out: &mut Vec<Decoded>) -> Result<(), MediaError> {
        if let Some(v) = self.video.as_mut() {
            let _ = v.decoder.send_eof();
            drain_video(v, &self.name, out)?;
        }
        if let Some(a) = self.audio.as_mut() {
            let _ = a.decoder.send_eof();
            drain_audio(a, &self.name, self.opts.sample_rate, out)?;
        }
        Ok(())
    }

    /// Sleep until source time `t` is due on the wall clock (realtime playback), waking
    /// to honour a cancel.
    fn wait_until(&mut self, t: f64) -> Result<(), MediaError> {
        let (wall0, t0) = *self.pace.get_or_insert((Instant::now(), t));
        let due = wall0.checked_add(seconds(t - t0)).unwrap_or(wall0);
        while Instant::now() < due {
            if self.interrupt.cancel.is_cancelled() {
                return Err(MediaError::Cancelled { source_name: self.name.clone() });
            }
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
            // Waiting on the clock is not a stall of the source.
            self.interrupt.packet_arrived();
        }
        Ok(())
    }

    /// The whole input as one stretch: a file to its end, a live source for the limits'
    /// `live_capture_s` of its own time.
    pub fn read_clip(mut self, request: &ClipRequest) -> Result<Clip, MediaError> {
        let name = self.name.clone();
        let video_wanted = !request.frames.is_empty();
        if video_wanted && self.video.is_none() {
            return Err(MediaError::NoVideo { source_name: name });
        }
        let limits = self.opts.limits.clone();
        let rate = self.opts.sample_rate;
        let max_samples = (limits.max_duration_s * f64::from(rate)) as usize + rate as usize;
        let capture = self.kind.is_live().then_some(limits.live_capture_s);
        let video_index = self.video.as_ref().map(|v| v.index);
        let mut audio = self.audio.take().filter(|_| request.audio);
        let mut samples = Vec::new();
        let mut packets: Vec<ff::Packet> = Vec::new();
        let mut bytes = 0u64;
        let mut first_seconds: Option<f64> = None;
        let mut frame = Audio::empty();
        loop {
            let packet = match self.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e @ MediaError::Cancelled { .. }) | Err(e @ MediaError::Timeout { .. }) => return Err(e),
                // A damaged tail: keep what was read (as the CLI does).
                Err(e) if packets.is_empty() && samples.is_empty() => return Err(e),
                Err(_) => break,
            };
            bytes += packet.size() as u64;
            if bytes > limits.max_file_bytes {
                return Err(MediaError::FileTooLarge { source_name: name, size: bytes, limit: limits.max_file_bytes });
            }
            if let Some(capture_s) = capture {
                let tb = self.input.stream(packet.stream()).map(|s| s.time_base());
                if let (Some(tb), Some(pts)) = (tb, packet.pts()) {
                    let t = pts as f64 * f64::from(tb);
                    if t - *first_seconds.get_or_insert(t) >= capture_s {
                        break;
                    }
                }
            }
            if Some(packet.stream()) == video_index {
                if video_wanted {
                    packets.push(packet);
                }
            } else if let Some(a) = audio.as_mut().filter(|a| a.index == packet.stream()) {
                if a.decoder.send_packet(&packet).is_ok() {
                    while a.decoder.receive_frame(&mut frame).is_ok() {
                        resample_into(&mut frame, &mut a.resampler, rate, &mut samples)
                            .map_err(|e| decode(&name, e))?;
                    }
                }
                if samples.len() > max_samples {
                    return Err(MediaError::TooLong {
                        source_name: name,
                        seconds: samples.len() as f64 / f64::from(rate),
                        limit: limits.max_duration_s,
                    });
                }
            }
        }
        if let Some(a) = audio.as_mut() {
            let _ = a.decoder.send_eof();
            while a.decoder.receive_frame(&mut frame).is_ok() {
                resample_into(&mut frame, &mut a.resampler, rate, &mut samples).map_err(|e| decode(&name, e))?;
            }
            if let Some(r) = a.resampler.as_mut() {
                flush_resampler(r, &mut samples);
            }
        }
        let total = packets.len();
        let frames = match (self.video.as_mut(), video_wanted) {
            (Some(v), true) => decode_selected(v, &name, &packets, &request.frames, &self.interrupt.cancel)?,
            _ => BTreeMap::new(),
        };
        if video_wanted && frames.is_empty() {
            return Err(MediaError::NoFrames { source_name: name });
        }
        let audio = (!samples.is_empty()).then_some(samples);
        Ok(Clip { info: self.info, total, frames, audio })
    }
}

/// A number of seconds as a Duration, whatever the number: negative or NaN is zero, huge
/// is a week (`from_secs_f64` panics outside its range).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.clamp(0.0, 7.0 * 86400.0)).unwrap_or(Duration::ZERO)
}

fn decode(name: &str, e: ff::Error) -> MediaError {
    MediaError::Decode { source_name: name.to_string(), reason: e.to_string() }
}

/// Decode the kept packets in order, converting to RGB only the frames the selections
/// name (over `packets.len()` frames), and stopping after the last one. The decoder is
/// flushed at the end (H.264 holds back trailing frames until EOF).
fn decode_selected(
    v: &mut VideoTrack,
    name: &str,
    packets: &[ff::Packet],
    selections: &[FrameSelection],
    cancel: &CancelToken,
) -> Result<BTreeMap<usize, RgbImage>, MediaError> {
    let wanted: BTreeSet<usize> = selections.iter().flat_map(|s| s.indices(packets.len())).collect();
    let Some(&last) = wanted.iter().next_back() else { return Ok(BTreeMap::new()) };
    let mut frames = BTreeMap::new();
    let mut n = 0usize;
    let mut decoded = Video::empty();
    let mut take =
        |decoded: &Video, n: &mut usize, frames: &mut BTreeMap<usize, RgbImage>| -> Result<bool, MediaError> {
            if wanted.contains(n) {
                frames.insert(*n, v.converter.convert(decoded, name)?);
            }
            *n += 1;
            Ok(*n <= last)
        };
    for packet in packets {
        if cancel.is_cancelled() {
            return Err(MediaError::Cancelled { source_name: name.to_string() });
        }
        if v.decoder.send_packet(packet).is_err() {
            continue; // a corrupt packet; the decoder resyncs on the next keyframe
        }
        while v.decoder.receive_frame(&mut decoded).is_ok() {
            if !take(&decoded, &mut n, &mut frames)? {
                return Ok(frames);
            }
        }
    }
    let _ = v.decoder.send_eof();
    while v.decoder.receive_frame(&mut decoded).is_ok() {
        if !take(&decoded, &mut n, &mut frames)? {
            break;
        }
    }
    Ok(frames)
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
        resample_into(&mut frame, &mut a.resampler, rate, &mut samples).map_err(|e| decode(name, e))?;
        out.push(Decoded::Audio(ts as f64 * a.time_base, samples));
    }
    Ok(())
}

/// Open `source` for a request and read it whole (see [`Source::read_clip`]).
pub fn read_clip(
    source: &str,
    opts: &SourceOptions,
    request: &ClipRequest,
    cancel: &CancelToken,
) -> Result<Clip, MediaError> {
    Source::open(source, opts, cancel)?.read_clip(request)
}

/// What `source` holds, without decoding; its limits checked.
pub fn probe(source: &str, limits: &MediaLimits, cancel: &CancelToken) -> Result<MediaInfo, MediaError> {
    Ok(Source::open(source, &SourceOptions::request(limits.clone(), 16_000), cancel)?.info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_source_is_named_in_one_place() {
        assert_eq!(SourceKind::of("/dev/video0"), SourceKind::Camera);
        assert_eq!(SourceKind::of("clip.mp4"), SourceKind::File);
        assert_eq!(SourceKind::of("file:///tmp/clip.mp4"), SourceKind::File);
        assert_eq!(SourceKind::of("https://example.org/clip.mp4"), SourceKind::Url);
        assert_eq!(SourceKind::of("HTTP://example.org/clip.mp4"), SourceKind::Url);
        for live in ["rtsp://cam/stream", "udp://@:5000", "rtp://239.0.0.1:5004", "rtsps://cam/s"] {
            assert_eq!(SourceKind::of(live), SourceKind::Stream, "{live}");
            assert!(SourceKind::of(live).is_live() && SourceKind::of(live).is_network());
        }
        assert!(SourceKind::Camera.is_live() && !SourceKind::Camera.is_network());
        assert!(!SourceKind::Url.is_live() && SourceKind::Url.is_network());
    }
}
