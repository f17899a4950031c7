//! The media front end (emollama-media): one [`Source`] for every input (file, URL,
//! camera, stream) demuxed once by FFmpeg, read whole as a [`Clip`] or cut into live
//! [`Window`]s; the frames and audio the encoders need, turned into their input tensors
//! with PIL/torchvision-exact resizing; faces (MTCNN, tracking, alignment).

mod audio;
mod error;
pub mod faces;
mod fetch;
mod image;
mod input;
mod mel;
mod preprocess;
mod select;
mod source;
mod video;
mod window;

pub use error::MediaError;
pub use fetch::fetch_url;
pub use image::{resize_pil, Resize, RgbImage};
pub use input::{MediaInfo, MediaLimits, StreamInfo};
pub use mel::{mel_filters, LogMel};
pub use preprocess::{face_tensor, frames_tensor, global_tensor, temporal_tensor};
pub use select::{videomae_indices, FrameSelection};
pub use source::{probe, read_clip, Clip, ClipRequest, Decoded, Source, SourceKind, SourceOptions};
pub use window::{Window, WindowStats, Windower};

/// FFmpeg's global state (network, devices, log level), once per process.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ffmpeg_next::init();
        ffmpeg_next::device::register_all();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
    });
}
