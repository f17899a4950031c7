//! What an input holds (its streams, as FFmpeg reports them) and the limits checked
//! before any decoding.

use ff::format::context::Input;
use ff::media::Type;
use ffmpeg_next as ff;
use serde::{Deserialize, Serialize};

use super::error::MediaError;

/// Limits checked before decoding, from configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MediaLimits {
    pub max_file_bytes: u64,
    pub max_duration_s: f64,
    pub max_width: u32,
    pub max_height: u32,
    /// Wall-clock budget for opening and reading a network input.
    pub network_timeout_s: f64,
    /// Face frames for the local encoder: all frames up to this many, else a uniform subsample.
    pub max_face_frames: usize,
    /// Seconds of a live (RTSP) source captured for one request.
    pub live_capture_s: f64,
}

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 2 << 30,
            max_duration_s: 600.0,
            max_width: 4096,
            max_height: 4096,
            network_timeout_s: 15.0,
            max_face_frames: 64,
            live_capture_s: 5.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamInfo {
    pub index: usize,
    pub codec: String,
    /// Video: frames per second (average); audio: sample rate.
    pub rate: f64,
    pub width: u32,
    pub height: u32,
    pub pixel_format: String,
    pub channels: u16,
    /// Display rotation in degrees as the stream's `rotate` tag states it (0, 90, 180,
    /// 270); frames are turned exactly as the ffmpeg CLI's autorotate turns them.
    pub rotation: u32,
    /// Frames or samples declared by the container (0 when unknown).
    pub declared_frames: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MediaInfo {
    pub source: String,
    pub container: String,
    pub duration_s: f64,
    pub video: Option<StreamInfo>,
    pub audio: Option<StreamInfo>,
}

/// FFmpeg's own socket timeouts for a network input (the interrupt callback is the
/// wall-clock bound), and the protocols it may use: the URL's own family, never `file`.
/// HTTP redirects are not followed: the service's URL policy checks the URL it is
/// given, and a redirect would take FFmpeg to a host the policy never saw.
pub(crate) fn network_options(source: &str, timeout_s: f64) -> ff::Dictionary<'static> {
    let mut opts = ff::Dictionary::new();
    // Microseconds, saturated: a huge configured timeout cannot wrap around.
    let us = (timeout_s * 1e6).clamp(1.0, i64::MAX as f64) as i64;
    opts.set("rw_timeout", &us.to_string());
    opts.set("timeout", &us.to_string());
    let protocols = match source.split("://").next().unwrap_or_default() {
        "rtsp" | "rtsps" => "rtsp,rtp,srtp,tcp,udp,tls",
        "udp" => "udp",
        "rtp" => "rtp,udp",
        _ => {
            opts.set("max_redirects", "0");
            "http,https,tcp,tls"
        }
    };
    opts.set("protocol_whitelist", protocols);
    opts
}

/// FFmpeg's reason for a failed open of `source`, saying that redirects are not
/// followed when an HTTP open failed as a refused redirect does (an I/O error).
pub(crate) fn open_failure(source: &str, e: ff::Error) -> String {
    let http = source.starts_with("http://") || source.starts_with("https://");
    if http && e == (ff::Error::Other { errno: ff::util::error::EIO }) {
        format!("{e} (a redirect is not followed: give the final URL)")
    } else {
        e.to_string()
    }
}

/// Refuse a video stream larger than the limits.
pub(crate) fn check_resolution(source: &str, v: &StreamInfo, limits: &MediaLimits) -> Result<(), MediaError> {
    if v.width > limits.max_width || v.height > limits.max_height {
        return Err(MediaError::ResolutionTooLarge {
            source_name: source.to_string(),
            width: v.width,
            height: v.height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    Ok(())
}

/// Rotation from the stream's display matrix, as the CLI's autorotate reads it.
fn rotation_of(stream: &ff::format::stream::Stream<'_>) -> u32 {
    for sd in stream.side_data() {
        if sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix {
            let data = sd.data();
            if data.len() >= 36 {
                let m: Vec<i32> =
                    data.chunks_exact(4).take(9).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                // The `rotate` tag is the negation of av_display_rotation_get(), which
                // is -atan2(m[1], m[0]) in degrees: the tag is atan2(m[1], m[0]).
                let (a, b) = (f64::from(m[0]) / 65536.0, f64::from(m[1]) / 65536.0);
                let tag = (-(b.atan2(a).to_degrees())).rem_euclid(360.0);
                return ((tag / 90.0).round() as u32 % 4) * 90;
            }
        }
    }
    0
}

pub(crate) fn stream_info(input: &Input, kind: Type) -> Option<StreamInfo> {
    let stream = input.streams().best(kind)?;
    let params = stream.parameters();
    let ctx = ff::codec::Context::from_parameters(params).ok()?;
    let codec = ctx.id().name().to_string();
    Some(match kind {
        Type::Video => {
            let dec = ctx.decoder().video().ok()?;
            let fr = stream.avg_frame_rate();
            StreamInfo {
                index: stream.index(),
                codec,
                rate: if fr.denominator() != 0 { f64::from(fr) } else { 0.0 },
                width: dec.width(),
                height: dec.height(),
                pixel_format: format!("{:?}", dec.format()).to_lowercase(),
                channels: 0,
                rotation: rotation_of(&stream),
                declared_frames: stream.frames(),
            }
        }
        _ => {
            let dec = ctx.decoder().audio().ok()?;
            StreamInfo {
                index: stream.index(),
                codec,
                rate: f64::from(dec.rate()),
                width: 0,
                height: 0,
                pixel_format: String::new(),
                channels: dec.channels(),
                rotation: 0,
                declared_frames: stream.frames(),
            }
        }
    })
}

/// Containers FFmpeg opens for single pictures.
pub(crate) fn is_image_container(name: &str) -> bool {
    name.contains("_pipe") || name == "image2" || name == "png" || name == "mjpeg_pipe"
}
