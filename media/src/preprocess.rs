//! Encoder input tensors (spec §1): exactly what torchvision produces from PIL images.

use ndarray::{Array4, Array5};

use super::image::{resize_pil, Resize, RgbImage};

/// Global engine input [1, 3, S, S]: PIL resize to S×S (bicubic in the official model;
/// no aspect preservation, no crop), `ToTensor` (/255), `Normalize(mean, std)`, all in
/// f32 as torchvision does.
pub fn global_tensor(frame: &RgbImage, size: [u32; 2], filter: Resize, mean: [f32; 3], std: [f32; 3]) -> Array4<f32> {
    let img = resize_pil(frame, size[0], size[1], filter);
    let (w, h) = (size[0] as usize, size[1] as usize);
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| {
        let v = f32::from(img.data[(y * w + x) * 3 + c]) / 255.0;
        (v - mean[c]) / std[c]
    })
}

/// Emotion-LLaMA-v2's temporal input [T, 3, S, S] (v2 spec §3.2): each frame resized
/// and normalised as [`global_tensor`] does it (PIL bilinear and ImageNet statistics
/// officially), stacked along the first axis.
pub fn frames_tensor(
    frames: &[&RgbImage],
    size: [u32; 2],
    filter: Resize,
    mean: [f32; 3],
    std: [f32; 3],
) -> Array4<f32> {
    let (w, h) = (size[0] as usize, size[1] as usize);
    let mut out = Array4::zeros((frames.len(), 3, h, w));
    for (t, frame) in frames.iter().enumerate() {
        out.index_axis_mut(ndarray::Axis(0), t)
            .assign(&global_tensor(frame, size, filter, mean, std).index_axis(ndarray::Axis(0), 0));
    }
    out
}

fn fill_chw(img: &RgbImage, scale: f32, mut put: impl FnMut(usize, usize, usize, f32)) {
    let w = img.width as usize;
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        let (y, x) = (i / w, i % w);
        for (c, v) in px.iter().enumerate() {
            put(c, y, x, f32::from(*v) * scale);
        }
    }
}

/// Local engine input [N, 3, S, S]: each face PIL-resized to S×S (bilinear officially),
/// times `scale` (1/255), no mean/std.
pub fn face_tensor(faces: &[RgbImage], size: [u32; 2], filter: Resize, scale: f32) -> Array4<f32> {
    let (w, h) = (size[0] as usize, size[1] as usize);
    let mut out = Array4::zeros((faces.len(), 3, h, w));
    for (n, face) in faces.iter().enumerate() {
        let img = resize_pil(face, size[0], size[1], filter);
        fill_chw(&img, scale, |c, y, x, v| out[[n, c, y, x]] = v);
    }
    out
}

/// Temporal engine input [1, 3, T, S, S]: `GroupResize` (PIL bilinear officially) of
/// each frame, stacked along time, times `scale`, no mean/std.
pub fn temporal_tensor(frames: &[RgbImage], size: [u32; 2], filter: Resize, scale: f32) -> Array5<f32> {
    let (w, h) = (size[0] as usize, size[1] as usize);
    let mut out = Array5::zeros((1, 3, frames.len(), h, w));
    for (t, frame) in frames.iter().enumerate() {
        let img = resize_pil(frame, size[0], size[1], filter);
        fill_chw(&img, scale, |c, y, x, v| out[[0, c, t, y, x]] = v);
    }
    out
}
