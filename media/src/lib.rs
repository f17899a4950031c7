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

/// The largest single allocation FFmpeg may make (its default is `INT_MAX`). A damaged
/// container's sizes otherwise become allocations: fuzzing `media` under AddressSanitizer
/// found a 5 kB MP4 whose demuxer asked for 1 GiB at once. The largest buffer a clip
/// within [`MediaLimits`] needs (a 4096×4096 frame) is a small part of this.
pub const MAX_FFMPEG_ALLOCATION: usize = 256 << 20;

/// FFmpeg's global state (allocation limit, network, devices, log level), once per process.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain setter of a global limit, called once before any other FFmpeg
        // call of this crate.
        unsafe { ffmpeg_next::ffi::av_max_alloc(MAX_FFMPEG_ALLOCATION) };
        let _ = ffmpeg_next::init();
        ffmpeg_next::device::register_all();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Error);
    });
}

#[cfg(test)]
mod tests {
    /// After `init`, FFmpeg refuses an allocation over the limit and grants one under it.
    #[test]
    fn ffmpeg_allocations_are_bounded() {
        super::init();
        // SAFETY: av_malloc/av_free pairs; a null pointer is the refusal being tested.
        unsafe {
            let refused = ffmpeg_next::ffi::av_malloc(super::MAX_FFMPEG_ALLOCATION + 1);
            assert!(refused.is_null(), "FFmpeg allocated past the limit");
            let granted = ffmpeg_next::ffi::av_malloc(64 << 20);
            assert!(!granted.is_null());
            ffmpeg_next::ffi::av_free(granted);
        }
    }
}
