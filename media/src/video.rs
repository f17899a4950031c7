//! Video frames to RGB: the stream's decoder, the conversion the ffmpeg CLI makes, and
//! its display rotation.

use ff::format::context::Input;
use ff::format::Pixel;
use ff::media::Type;
use ff::software::scaling::{self, Flags};
use ff::util::frame::video::Video;
use ffmpeg_next as ff;

use super::error::MediaError;
use super::image::RgbImage;

/// The scaler the ffmpeg CLI uses for its automatic conversion (`-pix_fmt rgb24`).
const SCALER_FLAGS: Flags = Flags::BICUBIC;

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
