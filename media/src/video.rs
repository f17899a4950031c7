//! Video decoding to RGB, keeping only the frames a selection asks for.

use std::collections::{BTreeMap, BTreeSet};

use emollama_engines::CancelToken;
use ff::format::context::Input;
use ff::format::Pixel;
use ff::media::Type;
use ff::software::scaling::{self, Flags};
use ff::util::frame::video::Video;
use ffmpeg_next as ff;

use super::error::MediaError;
use super::image::RgbImage;
use super::input::{is_network, open_input, probe, MediaInfo, MediaLimits};
use super::select::FrameSelection;

/// Frames kept from one decode, by presentation index.
#[derive(Debug, Clone)]
pub struct DecodedFrames {
    pub info: MediaInfo,
    /// Frames in the stream (decoded count).
    pub total: usize,
    pub frames: BTreeMap<usize, RgbImage>,
}

impl DecodedFrames {
    /// The frames of one selection, in order (indices may repeat).
    pub fn select(&self, selection: FrameSelection) -> Vec<&RgbImage> {
        selection.indices(self.total).iter().filter_map(|i| self.frames.get(i)).collect()
    }
}

/// The scaler the ffmpeg CLI uses for its automatic conversion (`-pix_fmt rgb24`).
const SCALER_FLAGS: Flags = Flags::BICUBIC;

/// Count the video stream's packets (one per frame) without decoding.
fn count_frames(
    source: &str,
    limits: &MediaLimits,
    stream_index: usize,
    cancel: &CancelToken,
) -> Result<usize, MediaError> {
    let (mut input, _) = open_input(source, limits, cancel)?;
    let mut n = 0;
    let mut packet = ff::Packet::empty();
    loop {
        check(source, cancel)?;
        match packet.read(&mut input) {
            Ok(()) if packet.stream() == stream_index => n += 1,
            Ok(()) | Err(ff::Error::InvalidData) => {}
            Err(_) => break,
        }
    }
    Ok(n)
}

/// Decode the first video stream and keep the frames `selections` need, as RGB24 at the
/// stream's size after the display rotation. Decoders are flushed at the end (H.264 holds
/// back trailing frames until EOF).
pub fn decode_frames(
    source: &str,
    limits: &MediaLimits,
    selections: &[FrameSelection],
    cancel: &CancelToken,
) -> Result<DecodedFrames, MediaError> {
    let info = probe(source, limits, cancel)?;
    let name = source.to_string();
    let vinfo = info.video.clone().ok_or_else(|| MediaError::NoVideo { source_name: name.clone() })?;
    let first_only = selections.iter().all(|s| *s == FrameSelection::First);
    // A file is read twice (count, then decode what is needed); a stream is read once
    // and its frames are kept up to the face-frame cap.
    let total_known = if first_only || is_network(source) || source.starts_with("/dev/video") {
        None
    } else {
        Some(count_frames(source, limits, vinfo.index, cancel)?)
    };
    let wanted: Option<BTreeSet<usize>> = total_known.map(|t| selections.iter().flat_map(|s| s.indices(t)).collect());
    let (mut input, _) = open_input(source, limits, cancel)?;
    let (index, mut decoder) = video_decoder(&input, &name)?;
    let mut keeper = Keeper {
        wanted,
        // Without a known total (first frame only, or a stream): the first frames, up to the cap.
        cap: if first_only { 1 } else { limits.max_face_frames.max(16) },
        converter: Converter::new(vinfo.rotation),
        frames: BTreeMap::new(),
        n: 0,
    };
    let mut decoded = Video::empty();
    let mut packet = ff::Packet::empty();
    let mut bad_packets = 0;
    let mut done = false;
    while !done {
        check(source, cancel)?;
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(ff::Error::InvalidData) if bad_packets < 100 => {
                bad_packets += 1;
                continue;
            }
            Err(e) if keeper.frames.is_empty() && keeper.n == 0 => {
                return Err(MediaError::Decode { source_name: name.clone(), reason: e.to_string() })
            }
            Err(_) => break, // truncated tail: keep what decoded
        }
        if packet.stream() != index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            continue; // a corrupt packet; the decoder resyncs on the next keyframe
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            if !keeper.offer(&decoded, &name)? {
                done = true;
                break;
            }
        }
    }
    check(source, cancel)?; // an interrupted read ends the loop like a truncated tail
    if !done {
        let _ = decoder.send_eof();
        while decoder.receive_frame(&mut decoded).is_ok() {
            if !keeper.offer(&decoded, &name)? {
                break;
            }
        }
    }
    if keeper.frames.is_empty() {
        return Err(MediaError::NoFrames { source_name: name });
    }
    // A file's total is its packet count (the selections were computed on it); a stream's
    // is what was read, up to the cap.
    let total = total_known.unwrap_or(keeper.n);
    Ok(DecodedFrames { info, total, frames: keeper.frames })
}

/// The best video stream's index and its decoder, frame-threaded on all cores as the
/// CLI does (libavcodec's API default is one thread).
pub(crate) fn video_decoder(input: &Input, name: &str) -> Result<(usize, ff::decoder::Video), MediaError> {
    let stream =
        input.streams().best(Type::Video).ok_or_else(|| MediaError::NoVideo { source_name: name.to_string() })?;
    let decode_err = |e: ff::Error| MediaError::Decode { source_name: name.to_string(), reason: e.to_string() };
    let mut ctx = ff::codec::Context::from_parameters(stream.parameters()).map_err(decode_err)?;
    ctx.set_threading(ff::codec::threading::Config::kind(ff::codec::threading::Type::Frame));
    Ok((stream.index(), ctx.decoder().video().map_err(decode_err)?))
}

/// Which decoded frames to keep: those a known total's selections name, else the first
/// `cap`; converted to RGB as they come.
struct Keeper {
    wanted: Option<BTreeSet<usize>>,
    cap: usize,
    converter: Converter,
    frames: BTreeMap<usize, RgbImage>,
    /// Frames decoded so far.
    n: usize,
}

impl Keeper {
    /// Take the next decoded frame; false once no later frame is wanted.
    fn offer(&mut self, frame: &Video, name: &str) -> Result<bool, MediaError> {
        let n = self.n;
        let needed = match &self.wanted {
            Some(w) => w.contains(&n),
            None => n < self.cap,
        };
        if needed {
            self.frames.insert(n, self.converter.convert(frame, name)?);
        }
        self.n += 1;
        Ok(match &self.wanted {
            Some(w) => w.iter().next_back().is_some_and(|&last| n < last),
            None => n + 1 < self.cap,
        })
    }
}

/// Stop between packets once the request is cancelled.
pub(crate) fn check(source: &str, cancel: &CancelToken) -> Result<(), MediaError> {
    if cancel.is_cancelled() {
        return Err(MediaError::Cancelled { source_name: source.to_string() });
    }
    Ok(())
}

/// Frame → rotated → RGB24, with the scaler cached for the stream's format and size.
pub(crate) struct Converter {
    rotation: u32,
    scaler: Option<(Pixel, u32, u32, scaling::Context)>,
}

impl Converter {
    pub(crate) fn new(rotation: u32) -> Self {
        Self { rotation, scaler: None }
    }

    pub(crate) fn convert(&mut self, frame: &Video, name: &str) -> Result<RgbImage, MediaError> {
        let rotated;
        let src = if self.rotation != 0 {
            rotated = rotate_planes(frame, self.rotation).ok_or_else(|| MediaError::PixelFormat {
                source_name: name.into(),
                format: format!("{:?} (rotation)", frame.format()),
            })?;
            &rotated
        } else {
            frame
        };
        let (fmt, w, h) = (src.format(), src.width(), src.height());
        if !matches!(&self.scaler, Some((f, sw, sh, _)) if *f == fmt && *sw == w && *sh == h) {
            let ctx = scaling::Context::get(fmt, w, h, Pixel::RGB24, w, h, SCALER_FLAGS)
                .map_err(|_| MediaError::PixelFormat { source_name: name.into(), format: format!("{fmt:?}") })?;
            self.scaler = Some((fmt, w, h, ctx));
        }
        let (_, _, _, scaler) = self.scaler.as_mut().expect("set above");
        let mut rgb = Video::empty();
        scaler
            .run(src, &mut rgb)
            .map_err(|e| MediaError::Decode { source_name: name.into(), reason: e.to_string() })?;
        // Rows are padded to the stride (150 px → 480-byte rows): copy row by row.
        let stride = rgb.stride(0);
        let row = w as usize * 3;
        let plane = rgb.data(0);
        let mut data = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            data.extend_from_slice(&plane[y * stride..y * stride + row]);
        }
        Ok(RgbImage::new(w, h, data))
    }
}

/// Turn every plane of a planar frame for a stream whose `rotate` tag is 90/180/270,
/// exactly as the ffmpeg CLI's autorotate filters turn it before the conversion to RGB
/// (tests compare every frame with the CLI). Rotating the planes, not the RGB result,
/// keeps chroma siting identical. `None` for packed or unevenly subsampled formats.
fn rotate_planes(src: &Video, rotation: u32) -> Option<Video> {
    let fmt = src.format();
    let desc = fmt.descriptor()?;
    let name = desc.name();
    if !rotation.is_multiple_of(180) && desc.log2_chroma_w() != desc.log2_chroma_h() {
        return None;
    }
    let bytes = if ["10", "12", "14", "16"].iter().any(|d| name.contains(d)) { 2 } else { 1 };
    let (w, h) = (src.width(), src.height());
    let (dw, dh) = if rotation.is_multiple_of(180) { (w, h) } else { (h, w) };
    let mut dst = Video::new(fmt, dw, dh);
    for p in 0..src.planes() {
        let (pw, ph) = (src.plane_width(p) as usize, src.plane_height(p) as usize);
        let (ss, ds) = (src.stride(p), dst.stride(p));
        let s = src.data(p);
        let d = dst.data_mut(p);
        for y in 0..ph {
            for x in 0..pw {
                let (dx, dy) = match rotation {
                    90 => (y, pw - 1 - x),
                    180 => (pw - 1 - x, ph - 1 - y),
                    _ => (ph - 1 - y, x),
                };
                let so = y * ss + x * bytes;
                let doff = dy * ds + dx * bytes;
                d[doff..doff + bytes].copy_from_slice(&s[so..so + bytes]);
            }
        }
    }
    Some(dst)
}
