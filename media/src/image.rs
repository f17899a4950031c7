//! RGB images and Pillow's resampling, reproduced exactly: torchvision's `Resize` on a
//! PIL image calls `Image.resize`, which (for 8-bit images) runs a separable convolution
//! with antialiasing support, 22-bit fixed-point coefficients, a horizontal pass rounded
//! to 8 bits, then a vertical pass (Pillow `libImaging/Resample.c`).

pub use emollama_bundle::Resize;

/// A tightly packed 8-bit RGB image (no row padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width as usize * height as usize * 3, "RGB buffer size");
        Self { width, height, data }
    }

    /// The RGB value at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Mean luma (BT.601, 0-255), sampled on a grid of about 4096 pixels (a statistic,
    /// not a measurement).
    pub fn mean_luma(&self) -> f64 {
        let step = ((self.width * self.height) as usize / 4096).max(1);
        let (mut sum, mut n) = (0.0, 0usize);
        for px in self.data.chunks_exact(3).step_by(step) {
            sum += 0.299 * f64::from(px[0]) + 0.587 * f64::from(px[1]) + 0.114 * f64::from(px[2]);
            n += 1;
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }
}

/// PIL's kernels for the manifest's resize filters.
trait Kernel {
    fn support(self) -> f64;
    fn weight(self, x: f64) -> f64;
}

impl Kernel for Resize {
    fn support(self) -> f64 {
        match self {
            Resize::Bilinear => 1.0,
            Resize::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Resize::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resize::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, tap count, and fixed-point taps.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    taps: Vec<i32>,
}

fn precompute(in_size: usize, out_size: usize, filter: Resize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut taps = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..ksize {
            let w = if x < xmax && ww != 0.0 { k[x] / ww } else { 0.0 };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            taps[xx * ksize + x] = if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, taps }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

fn horizontal(src: &[u8], w: usize, h: usize, out_w: usize, c: &Coeffs) -> Vec<u8> {
    let mut out = vec![0u8; out_w * h * 3];
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.taps[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = (xmin + x) * 3;
                for ch in 0..3 {
                    ss[ch] += i64::from(row[p + ch]) * i64::from(kx);
                }
            }
            let o = (y * out_w + xx) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

fn vertical(src: &[u8], w: usize, out_h: usize, c: &Coeffs) -> Vec<u8> {
    let mut out = vec![0u8; w * out_h * 3];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.taps[yy * c.ksize..yy * c.ksize + n];
        for x in 0..w {
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = ((ymin + y) * w + x) * 3;
                for ch in 0..3 {
                    ss[ch] += i64::from(src[p + ch]) * i64::from(ky);
                }
            }
            let o = (yy * w + x) * 3;
            for ch in 0..3 {
                out[o + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

/// `PIL.Image.resize((out_w, out_h), filter)` for an RGB image, bit-exact.
pub fn resize_pil(img: &RgbImage, out_w: u32, out_h: u32, filter: Resize) -> RgbImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let mut data = std::borrow::Cow::Borrowed(&img.data[..]);
    let mut cur_w = w;
    // Pillow skips a pass whose size does not change.
    if ow != w {
        data = horizontal(&data, w, h, ow, &precompute(w, ow, filter)).into();
        cur_w = ow;
    }
    if oh != h {
        data = vertical(&data, cur_w, oh, &precompute(h, oh, filter)).into();
    }
    RgbImage::new(out_w, out_h, data.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let img = RgbImage::new(5, 3, (0..45).map(|i| (i * 5) as u8).collect());
        assert_eq!(resize_pil(&img, 5, 3, Resize::Bicubic), img);
        let flat = RgbImage::new(37, 23, vec![77; 37 * 23 * 3]);
        for f in [Resize::Bicubic, Resize::Bilinear] {
            let out = resize_pil(&flat, 448, 448, f);
            assert!(out.data.iter().all(|&v| v == 77));
            let out = resize_pil(&flat, 7, 5, f);
            assert!(out.data.iter().all(|&v| v == 77));
        }
    }
}
