//! The media front end (emollama-media): open and probe a file, URL or camera with FFmpeg, decode the
//! frames and the audio the encoders need, and turn them into their input tensors with
//! PIL/torchvision-exact resizing.

mod audio;
mod error;
pub mod faces;
mod fetch;
mod image;
mod input;
mod live;
mod preprocess;
mod select;
mod video;

pub use audio::decode_audio_16k_mono;
pub use error::MediaError;
pub use fetch::fetch_network;
pub use image::{resize_pil, Resize, RgbImage};
pub use input::{is_network, probe, MediaInfo, MediaLimits, StreamInfo};
pub use live::{Decoded, LiveOptions, LiveSource, Window, WindowStats, Windower};
pub use preprocess::{face_tensor, global_tensor, temporal_tensor};
pub use select::{videomae_indices, FrameSelection};
pub use video::{decode_frames, DecodedFrames};

/// FFmpeg's global state (network, devices, log level), once per process.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ffmpeg_next::init();
        ffmpeg_next::device::register_all();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
    });
}
