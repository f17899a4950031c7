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

impl MediaError {
    /// Whether the error is what the source is (a still image, no video, over the
    /// limits), which reading it again cannot change; a lost stream or a camera that is
    /// not there yet is not.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            MediaError::StillImage { .. }
                | MediaError::NoVideo { .. }
                | MediaError::ResolutionTooLarge { .. }
                | MediaError::FileTooLarge { .. }
                | MediaError::TooLong { .. }
                | MediaError::PixelFormat { .. }
        )
    }

    /// The same error told about `name` (a URL whose local copy was read): a client
    /// sees its own source, never the service's scratch path.
    pub fn about(self, name: &str) -> Self {
        use MediaError as E;
        let n = name.to_string();
        match self {
            E::NotFound(_) => E::NotFound(name.into()),
            E::Empty(_) => E::Empty(name.into()),
            E::FileTooLarge { size, limit, .. } => E::FileTooLarge { source_name: n, size, limit },
            E::Open { reason, .. } => E::Open { source_name: n, reason },
            E::Cancelled { .. } => E::Cancelled { source_name: n },
            E::Timeout { seconds, .. } => E::Timeout { source_name: n, seconds },
            E::NoVideo { .. } => E::NoVideo { source_name: n },
            E::NoAudio { .. } => E::NoAudio { source_name: n },
            E::StillImage { .. } => E::StillImage { source_name: n },
            E::ResolutionTooLarge { width, height, max_width, max_height, .. } => {
                E::ResolutionTooLarge { source_name: n, width, height, max_width, max_height }
            }
            E::TooLong { seconds, limit, .. } => E::TooLong { source_name: n, seconds, limit },
            E::NoFrames { .. } => E::NoFrames { source_name: n },
            E::NoSamples { .. } => E::NoSamples { source_name: n },
            E::Decode { reason, .. } => E::Decode { source_name: n, reason },
            E::PixelFormat { format, .. } => E::PixelFormat { source_name: n, format },
        }
    }
}
