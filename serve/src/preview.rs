//! A watched source's latest frame for the console: the window's first frame, scaled
//! down, the tracked face's box drawn on it, as a small JPEG.

use emollama_media::{resize_pil, Resize, RgbImage};

/// Previews are at most this wide (a phone's card, and about 10 kB a window).
pub const PREVIEW_WIDTH: u32 = 320;
const QUALITY: u8 = 80;
/// The box's colour and line width (in preview pixels).
const BOX_RGB: [u8; 3] = [255, 196, 0];
const BOX_LINE: u32 = 2;

#[derive(Debug, thiserror::Error)]
#[error("the preview could not be encoded: {0}")]
pub struct PreviewError(#[from] jpeg_encoder::EncodingError);

/// The JPEG of `frame` no wider than [`PREVIEW_WIDTH`], with `face_box` (x1, y1, x2, y2
/// in the frame's pixels) outlined.
pub fn preview_jpeg(frame: &RgbImage, face_box: Option<[f32; 4]>) -> Result<Vec<u8>, PreviewError> {
    let scale = (PREVIEW_WIDTH as f32 / frame.width.max(1) as f32).min(1.0);
    let (w, h) =
        (((frame.width as f32 * scale).round() as u32).max(1), ((frame.height as f32 * scale).round() as u32).max(1));
    let mut small = if scale < 1.0 { resize_pil(frame, w, h, Resize::Bilinear) } else { frame.clone() };
    if let Some(b) = face_box {
        draw_box(&mut small, b.map(|v| v * scale));
    }
    let mut out = Vec::new();
    let encoder = jpeg_encoder::Encoder::new(&mut out, QUALITY);
    // JPEG holds at most 65535 pixels a side; the preview is at most PREVIEW_WIDTH wide
    // and a frame's height is bounded by the media limits.
    encoder.encode(
        &small.data,
        small.width.min(65535) as u16,
        small.height.min(65535) as u16,
        jpeg_encoder::ColorType::Rgb,
    )?;
    Ok(out)
}

/// A rectangle outline, clipped to the image.
fn draw_box(img: &mut RgbImage, b: [f32; 4]) {
    let clamp = |v: f32, max: u32| (v.round().max(0.0) as u32).min(max.saturating_sub(1));
    let (x1, y1, x2, y2) =
        (clamp(b[0], img.width), clamp(b[1], img.height), clamp(b[2], img.width), clamp(b[3], img.height));
    if x2 <= x1 || y2 <= y1 {
        return;
    }
    let width = img.width as usize;
    let mut put = |x: u32, y: u32| {
        let i = (y as usize * width + x as usize) * 3;
        img.data[i..i + 3].copy_from_slice(&BOX_RGB);
    };
    for t in 0..BOX_LINE {
        for x in x1..=x2 {
            put(x, (y1 + t).min(y2));
            put(x, y2.saturating_sub(t).max(y1));
        }
        for y in y1..=y2 {
            put((x1 + t).min(x2), y);
            put(x2.saturating_sub(t).max(x1), y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_frame_becomes_a_small_jpeg_with_its_box() {
        let frame = RgbImage::new(1280, 720, vec![40; 1280 * 720 * 3]);
        let jpeg = preview_jpeg(&frame, Some([640.0, 200.0, 900.0, 500.0])).unwrap();
        assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF], "a JPEG's start of image");
        // The size in the JPEG's frame header (SOF0: FF C0, length, precision, height, width).
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline frame header");
        let (h, w) =
            (u16::from_be_bytes([jpeg[sof + 5], jpeg[sof + 6]]), u16::from_be_bytes([jpeg[sof + 7], jpeg[sof + 8]]));
        assert_eq!((w, h), (320, 180));
        // A box outside the frame or empty is no error.
        preview_jpeg(&frame, Some([5000.0, -3.0, 6000.0, 2.0])).unwrap();
        preview_jpeg(&RgbImage::new(1, 1, vec![0; 3]), Some([0.0, 0.0, 1.0, 1.0])).unwrap();
    }

    #[test]
    fn the_box_is_drawn_where_the_face_is() {
        let mut img = RgbImage::new(100, 80, vec![0; 100 * 80 * 3]);
        draw_box(&mut img, [10.0, 20.0, 50.0, 60.0]);
        assert_eq!(img.pixel(10, 40), BOX_RGB);
        assert_eq!(img.pixel(30, 20), BOX_RGB);
        assert_eq!(img.pixel(50, 60), BOX_RGB);
        assert_eq!(img.pixel(30, 40), [0, 0, 0], "inside stays as it was");
        assert_eq!(img.pixel(5, 5), [0, 0, 0]);
    }
}
