use std::path::PathBuf;

/// What can be wrong with media, each case precise enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media file {0} does not exist")]
    NotFound(PathBuf),
    #[error("media file {0} is empty")]
    Empty(PathBuf),
    #[error("media {source_name} is {size} bytes, over the limit of {limit} bytes")]
    FileTooLarge { source_name: String, size: u64, limit: u64 },
    #[error("cannot open {source_name}: {reason}")]
    Open { source_name: String, reason: String },
    #[error("reading {source_name} was cancelled")]
    Cancelled { source_name: String },
    #[error("timed out after {seconds:.0} s reading {source_name}")]
    Timeout { source_name: String, seconds: f64 },
    #[error("{source_name} has no video stream")]
    NoVideo { source_name: String },
    #[error("{source_name} has no audio stream")]
    NoAudio { source_name: String },
    #[error("{source_name} is a still image, not a video")]
    StillImage { source_name: String },
    #[error("{source_name}: video {width}x{height} exceeds the limit of {max_width}x{max_height}")]
    ResolutionTooLarge { source_name: String, width: u32, height: u32, max_width: u32, max_height: u32 },
    #[error("{source_name}: duration {seconds:.1} s exceeds the limit of {limit:.1} s")]
    TooLong { source_name: String, seconds: f64, limit: f64 },
    #[error("{source_name}: the video stream holds no decodable frame")]
    NoFrames { source_name: String },
    #[error("{source_name}: the audio stream holds no decodable samples")]
    NoSamples { source_name: String },
    #[error("{source_name}: decoding failed: {reason}")]
    Decode { source_name: String, reason: String },
    #[error("{source_name}: unsupported pixel format {format}")]
    PixelFormat { source_name: String, format: String },
}
