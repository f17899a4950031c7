//! The MTCNN cascade around the bundle's three ONNX nets, ported step by step from
//! facenet-pytorch's `detect_face.py` so that boxes and landmarks match the reference:
//! P-Net over an image pyramid, R-Net on 24×24 crops, O-Net on 48×48 crops with the five
//! landmarks, NMS between the stages. Two pyramids: facenet's own (every frame size gives
//! its own level shapes; the reference checks use it) and the fixed-shape pyramid the
//! runtime uses (see [`Pyramid`]).

use emollama_bundle::contract::{IMAGE, LANDMARKS, PROB, REG};
use emollama_engines::onnx::{EncoderEngine, Outputs};
use emollama_engines::EngineError;
use ndarray::{Array4, ArrayD, Axis};

use super::Face;
use crate::image::RgbImage;

/// The most boxes one R-Net or O-Net run takes: more are run in several batches (the
/// TensorRT profiles' batch range ends here).
pub const MAX_BATCH: usize = 256;

/// facenet-pytorch's `MTCNN()` thresholds for P-Net, R-Net and O-Net, and its pyramid factor.
pub(crate) const THRESHOLDS: [f32; 3] = [0.6, 0.7, 0.7];
const FACTOR: f32 = 0.709;

/// A candidate box: x1, y1, x2, y2, score and the 4 regression offsets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub b: [f32; 4],
    pub score: f32,
    pub reg: [f32; 4],
}

impl Cand {
    pub(crate) fn square(b: [f32; 4]) -> Self {
        Self { b: rerec(b), score: 0.0, reg: [0.0; 4] }
    }

    /// The box moved by its regression and made square, as the next stage takes it.
    pub(crate) fn regressed(&self) -> Self {
        Self { b: rerec(bbreg(self.b, self.reg)), score: self.score, reg: [0.0; 4] }
    }
}

/// One pyramid level: the P-Net input is `height × width`; the frame, scaled by
/// (`scale_x`, `scale_y`), fills its top-left `content_w × content_h` and the rest is
/// padding (zero after normalisation, the value of mid-grey).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Level {
    pub height: usize,
    pub width: usize,
    pub content_h: usize,
    pub content_w: usize,
    pub scale_x: f32,
    pub scale_y: f32,
}

/// How the P-Net pyramid is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pyramid {
    /// facenet-pytorch's: the frame scaled by `12 / min_face_px × 0.709^k` while its
    /// short side stays ≥ 12 px. Level shapes follow the frame's size (the reference's).
    Facenet { min_face_px: f32 },
    /// Shapes from a fixed list: the smallest face searched is `min_face` of the frame's
    /// short side, so the first level's short side is `12 / min_face` px whatever the
    /// resolution; the frame is fitted (not stretched) into the nearest aspect of
    /// [`ASPECTS`] and the remainder padded. Every frame of every clip then runs P-Net on
    /// one of a few shapes, which a TensorRT engine can be built for ahead of time.
    Fixed { min_face: f32 },
}

/// The canvas aspects (width / height) of the fixed pyramid: landscape video, 4:3,
/// square, portrait phone video.
pub const ASPECTS: [(u32, u32); 4] = [(16, 9), (4, 3), (1, 1), (9, 16)];

impl Pyramid {
    /// The levels for a `w × h` frame.
    pub(crate) fn levels(&self, w: usize, h: usize) -> Vec<Level> {
        match *self {
            Pyramid::Facenet { min_face_px } => {
                let m = 12.0 / min_face_px;
                let mut minl = h.min(w) as f32 * m;
                let mut scale = m;
                let mut out = Vec::new();
                while minl >= 12.0 {
                    let hs = (h as f64 * f64::from(scale) + 1.0) as usize;
                    let ws = (w as f64 * f64::from(scale) + 1.0) as usize;
                    out.push(Level {
                        height: hs,
                        width: ws,
                        content_h: hs,
                        content_w: ws,
                        scale_x: scale,
                        scale_y: scale,
                    });
                    scale *= FACTOR;
                    minl *= FACTOR;
                }
                out
            }
            Pyramid::Fixed { min_face } => {
                fixed_shapes(min_face, nearest_aspect(w, h))
                    .into_iter()
                    .map(|[height, width]| {
                        // The frame fits inside the level: the tighter axis decides the scale.
                        let s = (width as f64 / w as f64).min(height as f64 / h as f64);
                        let content_w = ((w as f64 * s).round() as usize).clamp(1, width);
                        let content_h = ((h as f64 * s).round() as usize).clamp(1, height);
                        Level {
                            height,
                            width,
                            content_h,
                            content_w,
                            scale_x: content_w as f32 / w as f32,
                            scale_y: content_h as f32 / h as f32,
                        }
                    })
                    .collect()
            }
        }
    }

    /// Every P-Net input shape `[height, width]` this pyramid can ask for, whatever the
    /// frame (None: the shapes follow the frame, as facenet's do).
    pub fn all_shapes(&self) -> Option<Vec<[usize; 2]>> {
        match *self {
            Pyramid::Facenet { .. } => None,
            Pyramid::Fixed { min_face } => Some(ASPECTS.iter().flat_map(|a| fixed_shapes(min_face, *a)).collect()),
        }
    }
}

/// The aspect of [`ASPECTS`] closest to the frame's (on a log scale: 2:1 is as far from
/// 1:1 as 1:2).
fn nearest_aspect(w: usize, h: usize) -> (u32, u32) {
    let a = (w as f64 / h.max(1) as f64).ln();
    *ASPECTS
        .iter()
        .min_by(|x, y| {
            let d = |p: &(u32, u32)| (a - (f64::from(p.0) / f64::from(p.1)).ln()).abs();
            d(x).total_cmp(&d(y))
        })
        .expect("aspects")
}

/// The level shapes `[height, width]` of the fixed pyramid for one aspect: the short side
/// `12 / min_face × 0.709^k` px while it is at least 12.
fn fixed_shapes(min_face: f32, aspect: (u32, u32)) -> Vec<[usize; 2]> {
    let (aw, ah) = (f64::from(aspect.0), f64::from(aspect.1));
    let mut short = 12.0 / f64::from(min_face.clamp(0.01, 1.0));
    let mut out = Vec::new();
    while short.round() >= 12.0 {
        let s = short.round() as usize;
        let long = |r: f64| ((short * r).round() as usize).max(s);
        out.push(if aw >= ah { [s, long(aw / ah)] } else { [long(ah / aw), s] });
        short *= f64::from(FACTOR);
    }
    out
}

/// The three nets, and how much work the cascade does with them.
pub(crate) struct Nets<'a> {
    pub pnet: &'a EncoderEngine,
    pub rnet: &'a EncoderEngine,
    pub onet: &'a EncoderEngine,
    pub work: Work,
}

/// How much work the cascade does between the nets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Work {
    /// Samples per axis that [`area_resize`] averages for one output pixel at most.
    pub taps: usize,
    /// P-Net's boxes that R-Net sees at most (the best-scored).
    pub rnet_boxes: usize,
    /// The overlap above which NMS after R-Net drops a box.
    pub rnet_nms: f32,
}

impl Pyramid {
    /// facenet-pytorch's cascade exactly for its own pyramid (the reference checks); for
    /// the fixed one, the search's economies:
    /// - 4 × 4 samples of each output pixel's area, evenly spaced: a face crop of 300 px
    ///   to 48 px reads 37 thousand pixels instead of 270 thousand, a 1080p frame to the
    ///   first level 640 thousand instead of two million; the nets see the same picture
    ///   to within a few grey levels;
    /// - the 64 best-scored P-Net boxes go to R-Net: a cluttered frame (a kitchen's
    ///   shelves) gives P-Net 250-350 candidates at its 0.6 threshold, 120 ms of R-Net on
    ///   this project's machine, and the faces among them score highest;
    /// - NMS 0.5 after R-Net instead of 0.7: the near-duplicates around one face that 0.7
    ///   lets through each cost an O-Net run for the same face.
    pub(crate) fn work(&self) -> Work {
        match self {
            Pyramid::Facenet { .. } => Work { taps: usize::MAX, rnet_boxes: usize::MAX, rnet_nms: 0.7 },
            Pyramid::Fixed { .. } => Work { taps: 4, rnet_boxes: 64, rnet_nms: 0.5 },
        }
    }
}

impl Nets<'_> {
    /// Every face in the image: P-Net over the pyramid, NMS 0.5 per level then 0.7 over
    /// all, R-Net, O-Net with landmarks and the "Min" NMS; in facenet's order (unsorted).
    pub(crate) fn detect(&self, img: &RgbImage, pyramid: &Pyramid) -> Result<Vec<Face>, EngineError> {
        let (h, w) = (img.height as usize, img.width as usize);
        let levels = pyramid.levels(w, h);
        let mut cands = Vec::new();
        for level in &levels {
            let content = area_resize(img, [0, 0, w, h], level.content_w, level.content_h, self.work.taps);
            let input = normalise_padded(&content, level);
            let mut out = self.pnet.run(&[(IMAGE, input.view().into_dyn())])?;
            let (reg, prob) = (out.take(REG)?, out.take(PROB)?);
            let level_cands = generate_boxes(&reg, &prob, level, THRESHOLDS[0]);
            let keep = nms(&level_cands, 0.5, false);
            cands.extend(keep.into_iter().map(|i| level_cands[i]));
        }
        let keep = nms(&cands, 0.7, false);
        let boxes: Vec<Cand> = keep
            .into_iter()
            .map(|i| {
                let c = cands[i];
                let (rw, rh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b =
                    [c.b[0] + c.reg[0] * rw, c.b[1] + c.reg[1] * rh, c.b[2] + c.reg[2] * rw, c.b[3] + c.reg[3] * rh];
                Cand { b: rerec(b), score: c.score, reg: [0.0; 4] }
            })
            .collect();
        let boxes = self.rnet_stage(img, boxes)?;
        self.onet_stage(img, boxes)
    }

    /// R-Net on 24×24 crops of the best-scored boxes (`boxes` come in score order): the
    /// boxes it keeps, regressed, squared, after NMS.
    pub(crate) fn rnet_stage(&self, img: &RgbImage, mut boxes: Vec<Cand>) -> Result<Vec<Cand>, EngineError> {
        boxes.truncate(self.work.rnet_boxes);
        let (next, _) = self.rnet_scored(img, boxes)?;
        let keep = nms(&next, self.work.rnet_nms, false);
        Ok(keep.into_iter().map(|i| next[i].regressed()).collect())
    }

    /// R-Net on every box, [`MAX_BATCH`] boxes a run, without NMS: each box above the
    /// threshold with its score and regression, and the index of the box it came from.
    pub(crate) fn rnet_scored(&self, img: &RgbImage, boxes: Vec<Cand>) -> Result<(Vec<Cand>, Vec<usize>), EngineError> {
        let mut out = (Vec::new(), Vec::new());
        for (n, chunk) in boxes.chunks(MAX_BATCH).enumerate() {
            let Some((mut run, kept)) = refine(self.rnet, img, chunk, 24, self.work.taps)? else { continue };
            let (reg, prob) = (run.take(REG)?, run.take(PROB)?);
            for (i, &k) in kept.iter().enumerate() {
                if prob[[i, 1]] > THRESHOLDS[1] {
                    out.0.push(Cand { b: chunk[k].b, score: prob[[i, 1]], reg: row4(&reg, i) });
                    out.1.push(n * MAX_BATCH + k);
                }
            }
        }
        Ok(out)
    }

    /// O-Net on 48×48 crops of every box in one batch: faces with landmarks above the
    /// threshold, NMS 0.7 with the "Min" overlap.
    pub(crate) fn onet_stage(&self, img: &RgbImage, boxes: Vec<Cand>) -> Result<Vec<Face>, EngineError> {
        let (faces, _) = self.onet_scored(img, boxes)?;
        let finals: Vec<Cand> = faces.iter().map(|f| Cand { b: f.bbox, score: f.score, reg: [0.0; 4] }).collect();
        let keep = nms(&finals, 0.7, true);
        Ok(keep.into_iter().map(|i| faces[i].clone()).collect())
    }

    /// O-Net on every box, [`MAX_BATCH`] boxes a run, without NMS: each face above the
    /// threshold and the index of the box it came from, in the boxes' order.
    pub(crate) fn onet_scored(&self, img: &RgbImage, boxes: Vec<Cand>) -> Result<(Vec<Face>, Vec<usize>), EngineError> {
        let mut faces = Vec::new();
        let mut from = Vec::new();
        for (n, chunk) in boxes.chunks(MAX_BATCH).enumerate() {
            let Some((mut out, kept)) = refine(self.onet, img, chunk, 48, self.work.taps)? else { continue };
            let (reg, lm, prob) = (out.take(REG)?, out.take(LANDMARKS)?, out.take(PROB)?);
            for (i, &k) in kept.iter().enumerate() {
                let score = prob[[i, 1]];
                if score <= THRESHOLDS[2] {
                    continue;
                }
                let c = &chunk[k];
                let (wi, hi) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
                let mut landmarks = [[0.0f32; 2]; 5];
                for (j, l) in landmarks.iter_mut().enumerate() {
                    *l = [wi * lm[[i, j]] + c.b[0] - 1.0, hi * lm[[i, j + 5]] + c.b[1] - 1.0];
                }
                faces.push(Face { bbox: bbreg(c.b, row4(&reg, i)), score, landmarks });
                from.push(n * MAX_BATCH + k);
            }
        }
        Ok((faces, from))
    }
}

fn row4(a: &ArrayD<f32>, i: usize) -> [f32; 4] {
    [a[[i, 0]], a[[i, 1]], a[[i, 2]], a[[i, 3]]]
}

/// One refinement stage: crop every box (skipping those with an empty crop, as the
/// reference does) and run `net` on the batch; the outputs and which boxes they are
/// for, `None` when no box gave a crop.
fn refine(
    net: &EncoderEngine,
    img: &RgbImage,
    boxes: &[Cand],
    size: usize,
    taps: usize,
) -> Result<Option<(Outputs, Vec<usize>)>, EngineError> {
    let (batch, kept) = crops(img, boxes, size, taps);
    if kept.is_empty() {
        return Ok(None);
    }
    Ok(Some((net.run(&[(IMAGE, batch.view().into_dyn())])?, kept)))
}

/// `(v - 127.5) * 0.0078125` as [1, 3, height, width], the level's content top-left and
/// zeros (mid-grey) in the padding.
fn normalise_padded(rgb: &[f32], level: &Level) -> Array4<f32> {
    let (cw, ch) = (level.content_w, level.content_h);
    Array4::from_shape_fn((1, 3, level.height, level.width), |(_, c, y, x)| {
        if x < cw && y < ch {
            (rgb[(y * cw + x) * 3 + c] - 127.5) * 0.0078125
        } else {
            0.0
        }
    })
}

/// `F.interpolate(mode="area")` (adaptive average pooling) of the region `[x0, y0, x1,
/// y1)` of an image to out_w × out_h, interleaved RGB f32; over at most `taps` × `taps`
/// evenly spaced pixels of each output pixel's area (`usize::MAX`: all of them).
pub(crate) fn area_resize(img: &RgbImage, region: [usize; 4], out_w: usize, out_h: usize, taps: usize) -> Vec<f32> {
    let [x0, y0, x1, y1] = region;
    let (iw, ih) = (x1 - x0, y1 - y0);
    let stride = img.width as usize * 3;
    let mut out = vec![0f32; out_w * out_h * 3];
    let span = |i: usize, inn: usize, out: usize| (i * inn / out, ((i + 1) * inn).div_ceil(out));
    // The positions averaged in a span: all of it, or `taps` evenly spaced.
    let samples = |s: usize, e: usize| -> Vec<usize> {
        let n = e - s;
        if n <= taps {
            (s..e).collect()
        } else {
            (0..taps).map(|k| s + (2 * k + 1) * n / (2 * taps)).collect()
        }
    };
    let columns: Vec<Vec<usize>> = (0..out_w)
        .map(|ox| {
            let (xs, xe) = span(ox, iw, out_w);
            samples(xs, xe)
        })
        .collect();
    for oy in 0..out_h {
        let (ys, ye) = span(oy, ih, out_h);
        let rows = samples(ys, ye);
        for (ox, xs) in columns.iter().enumerate() {
            let mut sum = [0f32; 3];
            for y in &rows {
                let row = (y0 + y) * stride;
                for x in xs {
                    let p = row + (x0 + x) * 3;
                    for (c, s) in sum.iter_mut().enumerate() {
                        *s += f32::from(img.data[p + c]);
                    }
                }
            }
            let n = (rows.len() * xs.len()) as f32;
            for c in 0..3 {
                out[(oy * out_w + ox) * 3 + c] = sum[c] / n;
            }
        }
    }
    out
}

/// P-Net's output map to boxes in frame pixels: a cell (x, y) covers the 12×12 window at
/// (2x, 2y) of the level.
fn generate_boxes(reg: &ArrayD<f32>, prob: &ArrayD<f32>, level: &Level, thresh: f32) -> Vec<Cand> {
    let (oh, ow) = (prob.shape()[2], prob.shape()[3]);
    let mut out = Vec::new();
    for y in 0..oh {
        for x in 0..ow {
            let score = prob[[0, 1, y, x]];
            // Windows over the padding see no frame.
            if score >= thresh && 2 * x < level.content_w && 2 * y < level.content_h {
                let q = |v: usize, add: f32, s: f32| ((2.0 * v as f32 + add) / s).floor();
                let (sx, sy) = (level.scale_x, level.scale_y);
                out.push(Cand {
                    b: [q(x, 1.0, sx), q(y, 1.0, sy), q(x, 12.0, sx), q(y, 12.0, sy)],
                    score,
                    reg: [reg[[0, 0, y, x]], reg[[0, 1, y, x]], reg[[0, 2, y, x]], reg[[0, 3, y, x]]],
                });
            }
        }
    }
    out
}

/// Non-maximum suppression. `min_overlap = false`: torchvision's `nms` (areas without
/// +1, IoU > t suppressed, sorted by score); `true`: facenet's numpy "Min" variant.
pub(crate) fn nms(c: &[Cand], t: f32, min_overlap: bool) -> Vec<usize> {
    let one = if min_overlap { 1.0 } else { 0.0 };
    let area = |b: &[f32; 4]| (b[2] - b[0] + one) * (b[3] - b[1] + one);
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| c[b].score.total_cmp(&c[a].score).then(a.cmp(&b)));
    let mut keep = Vec::new();
    let mut suppressed = vec![false; c.len()];
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let (a, b) = (&c[i].b, &c[j].b);
            let iw = (a[2].min(b[2]) - a[0].max(b[0]) + one).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1]) + one).max(0.0);
            let inter = iw * ih;
            let o = if min_overlap { inter / area(a).min(area(b)) } else { inter / (area(a) + area(b) - inter) };
            if o > t {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// The box made square around its centre (side: the longer side).
pub(crate) fn rerec(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let (x1, y1) = (b[0] + w * 0.5 - l * 0.5, b[1] + h * 0.5 - l * 0.5);
    [x1, y1, x1 + l, y1 + l]
}

fn bbreg(b: [f32; 4], r: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + r[0] * w, b[1] + r[1] * h, b[2] + r[2] * w, b[3] + r[3] * h]
}

/// facenet `pad` + crop + area resize to size×size, normalised, as one batch; returns
/// which boxes produced a crop (empty crops are skipped, as the reference does).
fn crops(img: &RgbImage, boxes: &[Cand], size: usize, taps: usize) -> (Array4<f32>, Vec<usize>) {
    let (w, h) = (img.width as i64, img.height as i64);
    let mut batch = Array4::zeros((boxes.len(), 3, size, size));
    let mut kept = Vec::new();
    for (i, c) in boxes.iter().enumerate() {
        let x = (c.b[0].trunc() as i64).max(1);
        let y = (c.b[1].trunc() as i64).max(1);
        let ex = (c.b[2].trunc() as i64).min(w);
        let ey = (c.b[3].trunc() as i64).min(h);
        if ey > y - 1 && ex > x - 1 {
            let region = [(x - 1) as usize, (y - 1) as usize, ex as usize, ey as usize];
            let rgb = area_resize(img, region, size, size, taps);
            let n = kept.len();
            for ((c, yy, xx), v) in batch.index_axis_mut(Axis(0), n).indexed_iter_mut() {
                *v = (rgb[(yy * size + xx) * 3 + c] - 127.5) * 0.0078125;
            }
            kept.push(i);
        }
    }
    let batch = batch.slice_move(ndarray::s![..kept.len(), .., .., ..]);
    (batch, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_resize_averages_blocks() {
        let img = RgbImage::new(
            4,
            2,
            vec![0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40, 50, 50, 50, 60, 60, 60, 70, 70, 70],
        );
        let out = area_resize(&img, [0, 0, 4, 2], 2, 1, usize::MAX);
        assert_eq!(out, vec![25.0, 25.0, 25.0, 45.0, 45.0, 45.0]);
        // Sampled: one of each 2×2 block's columns... here 1 tap per axis takes the
        // middle sample of each span.
        let out = area_resize(&img, [0, 0, 4, 2], 2, 1, 1);
        assert_eq!(out, vec![50.0, 50.0, 50.0, 70.0, 70.0, 70.0]);
    }

    #[test]
    fn the_fixed_pyramid_has_the_same_shapes_at_every_resolution() {
        let p = Pyramid::Fixed { min_face: 0.08 };
        let hd = p.levels(1920, 1080);
        let small = p.levels(480, 272);
        let shapes = |l: &[Level]| l.iter().map(|l| [l.height, l.width]).collect::<Vec<_>>();
        assert_eq!(shapes(&hd), shapes(&small));
        assert_eq!(hd[0].height, 150, "12 / 0.08");
        assert_eq!(hd[0].width, 267);
        assert!(hd.last().unwrap().height >= 12);
        // A 2.4:1 film frame is fitted into the 16:9 levels, padded below.
        let film = p.levels(1920, 800);
        assert_eq!(shapes(&film), shapes(&hd));
        assert!(film[0].content_w == 267 && film[0].content_h < 150);
        // Portrait video gets the portrait shapes, and every shape is in the list.
        let portrait = p.levels(720, 1280);
        assert_eq!([portrait[0].height, portrait[0].width], [267, 150]);
        let all = p.all_shapes().unwrap();
        for l in hd.iter().chain(&film).chain(&portrait).chain(&p.levels(640, 480)).chain(&p.levels(100, 100)) {
            assert!(all.contains(&[l.height, l.width]), "{l:?}");
        }
        assert!(Pyramid::Facenet { min_face_px: 20.0 }.all_shapes().is_none());
    }

    #[test]
    fn the_facenet_pyramid_is_facenets() {
        // facenet-pytorch on a 100×60 image with min_face 20: scales 0.6 × 0.709^k while
        // 36 × 0.709^k ≥ 12 (k ≤ 3), shapes int(60s + 1) × int(100s + 1).
        let levels = Pyramid::Facenet { min_face_px: 20.0 }.levels(100, 60);
        let shapes: Vec<[usize; 2]> = levels.iter().map(|l| [l.height, l.width]).collect();
        assert_eq!(shapes, vec![[37, 61], [26, 43], [19, 31], [13, 22]]);
    }
}
