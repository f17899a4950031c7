//! Similarity alignment of the five landmarks to the manifest's aligned size (112×112 in
//! the official model), as OpenFace-style aligned crops.

use super::Face;
use crate::image::RgbImage;

/// The 112×112 five-point template (ArcFace/InsightFace): eye centres, nose tip, mouth
/// corners. OpenFace's own alignment uses 68 landmarks to a mean shape; with MTCNN's five
/// points this is the standard equivalent (documented deviation).
const TEMPLATE_112: [[f32; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// Similarity transform (scale, rotation, translation; Umeyama, no reflection) that maps
/// `src` points onto `dst`, as [a, -b, tx; b, a, ty].
pub fn similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> [f64; 6] {
    let n = 5.0;
    let mean = |p: &[[f32; 2]; 5]| {
        let (sx, sy) = p.iter().fold((0.0, 0.0), |(x, y), q| (x + f64::from(q[0]), y + f64::from(q[1])));
        (sx / n, sy / n)
    };
    let (msx, msy) = mean(src);
    let (mdx, mdy) = mean(dst);
    let (mut sxx, mut sxy, mut var) = (0.0, 0.0, 0.0);
    for (s, d) in src.iter().zip(dst) {
        let (sx, sy) = (f64::from(s[0]) - msx, f64::from(s[1]) - msy);
        let (dx, dy) = (f64::from(d[0]) - mdx, f64::from(d[1]) - mdy);
        sxx += sx * dx + sy * dy; // Σ s·d
        sxy += sx * dy - sy * dx; // Σ s×d
        var += sx * sx + sy * sy;
    }
    let (a, b) = (sxx / var, sxy / var);
    let tx = mdx - (a * msx - b * msy);
    let ty = mdy - (b * msx + a * msy);
    [a, -b, tx, b, a, ty]
}

/// The five-point template scaled to a crop of `size` (the template is defined at 112).
fn template(size: [u32; 2]) -> [[f32; 2]; 5] {
    let (sx, sy) = (size[0] as f32 / 112.0, size[1] as f32 / 112.0);
    TEMPLATE_112.map(|[x, y]| [x * sx, y * sy])
}

/// Warp the face to `size` (bilinear, black outside), as `cv2.warpAffine`.
pub fn align_face(img: &RgbImage, face: &Face, size: [u32; 2]) -> RgbImage {
    let [a, nb, tx, b, _, ty] = similarity(&face.landmarks, &template(size));
    let (out_w, out_h) = (size[0] as usize, size[1] as usize);
    // Inverse of [a -b; b a]: 1/(a²+b²) [a b; -b a].
    let det = a * a + b * b;
    let (w, h) = (img.width as i64, img.height as i64);
    let mut out = vec![0u8; out_w * out_h * 3];
    // The four neighbours' offsets in the image (None: outside, black), once per pixel.
    let at = |xx: i64, yy: i64| (xx >= 0 && yy >= 0 && xx < w && yy < h).then(|| ((yy * w + xx) * 3) as usize);
    for v in 0..out_h {
        for u in 0..out_w {
            let (du, dv) = (u as f64 - tx, v as f64 - ty);
            let x = (a * du + b * dv) / det;
            let y = (nb * du + a * dv) / det;
            let (x0, y0) = (x.floor() as i64, y.floor() as i64);
            let (fx, fy) = (x - x0 as f64, y - y0 as f64);
            let corners = [at(x0, y0), at(x0 + 1, y0), at(x0, y0 + 1), at(x0 + 1, y0 + 1)];
            for c in 0..3 {
                let px = |corner: Option<usize>| corner.map_or(0.0, |i| f64::from(img.data[i + c]));
                let val = px(corners[0]) * (1.0 - fx) * (1.0 - fy)
                    + px(corners[1]) * fx * (1.0 - fy)
                    + px(corners[2]) * (1.0 - fx) * fy
                    + px(corners[3]) * fx * fy;
                out[(v * out_w + u) * 3 + c] = val.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::new(size[0], size[1], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        let (s, th, tx, ty) = (1.7f64, 0.3f64, 12.0, -5.0);
        let src = TEMPLATE_112;
        let mut dst = [[0f32; 2]; 5];
        for (d, p) in dst.iter_mut().zip(&src) {
            let (x, y) = (f64::from(p[0]), f64::from(p[1]));
            *d = [(s * (th.cos() * x - th.sin() * y) + tx) as f32, (s * (th.sin() * x + th.cos() * y) + ty) as f32];
        }
        let [a, nb, ttx, b, a2, tty] = similarity(&src, &dst);
        assert!((a - s * th.cos()).abs() < 1e-4 && (b - s * th.sin()).abs() < 1e-4, "{a} {b}");
        assert!((nb + b).abs() < 1e-12 && (a2 - a).abs() < 1e-12);
        assert!((ttx - tx).abs() < 1e-3 && (tty - ty).abs() < 1e-3);
    }
}
