//! Faces: MTCNN detection (the facenet-pytorch cascade around the bundle's three ONNX
//! nets, ported step by step from `detect_face.py` so that boxes and landmarks match the
//! reference), tracking of the largest face across frames, and similarity alignment of
//! the five landmarks to the manifest's aligned size (112×112 in the official model).

use emollama_bundle::contract::{IMAGE, LANDMARKS, PROB, REG};
use emollama_bundle::{Bundle, Role};
use emollama_engines::onnx::{EncoderEngine, EngineOptions, OrtRuntime, Outputs};
use emollama_engines::{CancelToken, EngineError};
use ndarray::{Array4, ArrayD, Axis};
use serde::Serialize;

use super::image::RgbImage;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Face {
    /// x1, y1, x2, y2 in pixels.
    pub bbox: [f32; 4],
    pub score: f32,
    /// Eyes (left, right), nose, mouth corners (left, right), as (x, y).
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    pub fn area(&self) -> f32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
}

/// MTCNN's defaults in facenet-pytorch (`MTCNN()`).
const MIN_FACE_SIZE: f32 = 20.0;
const THRESHOLDS: [f32; 3] = [0.6, 0.7, 0.7];
const FACTOR: f32 = 0.709;

pub struct FaceDetector {
    pnet: EncoderEngine,
    rnet: EncoderEngine,
    onet: EncoderEngine,
    /// The aligned crop's size (`preprocess.face.aligned_size`).
    aligned_size: [u32; 2],
}

/// A candidate box: x1, y1, x2, y2, score and the 4 regression offsets.
#[derive(Debug, Clone, Copy)]
struct Cand {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

impl FaceDetector {
    /// Load the three nets from a bundle (`face_pnet`, `face_rnet`, `face_onet`);
    /// `Ok(None)` when the bundle ships no face detector.
    pub fn from_bundle(rt: &OrtRuntime, bundle: &Bundle, opts: &EngineOptions) -> Result<Option<Self>, EngineError> {
        let load = |role: Role| -> Result<Option<EncoderEngine>, EngineError> {
            let Some(e) = bundle.file(&role) else { return Ok(None) };
            let opts = EngineOptions { model_sha256: e.sha256.clone(), ..opts.clone() };
            EncoderEngine::load(rt, role.as_str(), &bundle.path_of(e), e.inputs.clone(), e.outputs.clone(), &opts)
                .map(Some)
        };
        match (load(Role::FacePnet)?, load(Role::FaceRnet)?, load(Role::FaceOnet)?) {
            (Some(pnet), Some(rnet), Some(onet)) => {
                let aligned_size = bundle.manifest().preprocess.face.aligned_size;
                Ok(Some(Self { pnet, rnet, onet, aligned_size }))
            }
            _ => Ok(None),
        }
    }

    /// All faces in an image, largest first (facenet-pytorch `select_largest=True`).
    pub fn detect(&self, img: &RgbImage) -> Result<Vec<Face>, EngineError> {
        let (h, w) = (img.height as usize, img.width as usize);
        let m = 12.0 / MIN_FACE_SIZE;
        let mut minl = h.min(w) as f32 * m;
        let mut scales = Vec::new();
        let mut scale = m;
        while minl >= 12.0 {
            scales.push(scale);
            scale *= FACTOR;
            minl *= FACTOR;
        }
        // Stage 1: P-Net over the pyramid, NMS 0.5 per scale, then 0.7 over all.
        let mut cands = Vec::new();
        for &s in &scales {
            let hs = (h as f64 * f64::from(s) + 1.0) as usize;
            let ws = (w as f64 * f64::from(s) + 1.0) as usize;
            let input = normalise(area_resize(img, 0, 0, w, h, ws, hs), hs, ws);
            let mut out = self.pnet.run(&[(IMAGE, input.view().into_dyn())])?;
            let (reg, prob) = (out.take(REG)?, out.take(PROB)?);
            let mut scale_cands = generate_boxes(&reg, &prob, s, THRESHOLDS[0]);
            let keep = nms(&scale_cands, 0.5, false);
            scale_cands = keep.into_iter().map(|i| scale_cands[i]).collect();
            cands.extend(scale_cands);
        }
        let keep = nms(&cands, 0.7, false);
        let mut boxes: Vec<Cand> = keep
            .into_iter()
            .map(|i| {
                let c = cands[i];
                let (rw, rh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
                let b =
                    [c.b[0] + c.reg[0] * rw, c.b[1] + c.reg[1] * rh, c.b[2] + c.reg[2] * rw, c.b[3] + c.reg[3] * rh];
                Cand { b: rerec(b), score: c.score, reg: [0.0; 4] }
            })
            .collect();
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        // Stage 2: R-Net on 24×24 crops.
        let Some(mut out) = refine(&self.rnet, img, &mut boxes, 24)? else { return Ok(Vec::new()) };
        let (reg, prob) = (out.take(REG)?, out.take(PROB)?);
        let mut next = Vec::new();
        for (i, c) in boxes.iter().enumerate() {
            let score = prob[[i, 1]];
            if score > THRESHOLDS[1] {
                next.push(Cand { b: c.b, score, reg: [reg[[i, 0]], reg[[i, 1]], reg[[i, 2]], reg[[i, 3]]] });
            }
        }
        let keep = nms(&next, 0.7, false);
        boxes = keep
            .into_iter()
            .map(|i| {
                let c = next[i];
                Cand { b: rerec(bbreg(c.b, c.reg)), score: c.score, reg: [0.0; 4] }
            })
            .collect();
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        // Stage 3: O-Net on 48×48 crops, landmarks, NMS 0.7 with the "Min" overlap.
        let Some(mut out) = refine(&self.onet, img, &mut boxes, 48)? else { return Ok(Vec::new()) };
        let (reg, lm, prob) = (out.take(REG)?, out.take(LANDMARKS)?, out.take(PROB)?);
        let mut faces = Vec::new();
        let mut finals = Vec::new();
        for (i, c) in boxes.iter().enumerate() {
            let score = prob[[i, 1]];
            if score <= THRESHOLDS[2] {
                continue;
            }
            let (wi, hi) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let mut landmarks = [[0.0f32; 2]; 5];
            for (k, l) in landmarks.iter_mut().enumerate() {
                *l = [wi * lm[[i, k]] + c.b[0] - 1.0, hi * lm[[i, k + 5]] + c.b[1] - 1.0];
            }
            let b = bbreg(c.b, [reg[[i, 0]], reg[[i, 1]], reg[[i, 2]], reg[[i, 3]]]);
            finals.push(Cand { b, score, reg: [0.0; 4] });
            faces.push(Face { bbox: b, score, landmarks });
        }
        let keep = nms(&finals, 0.7, true);
        let mut faces: Vec<Face> = keep.into_iter().map(|i| faces[i].clone()).collect();
        faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        Ok(faces)
    }
}

/// One refinement stage: crop every box (dropping those with an empty crop, as the
/// reference does) and run `net` on the batch; `None` when no box is left.
fn refine(
    net: &EncoderEngine,
    img: &RgbImage,
    boxes: &mut Vec<Cand>,
    size: usize,
) -> Result<Option<Outputs>, EngineError> {
    let (batch, kept) = crops(img, boxes, size);
    *boxes = kept.iter().map(|&i| boxes[i]).collect();
    if boxes.is_empty() {
        return Ok(None);
    }
    net.run(&[(IMAGE, batch.view().into_dyn())]).map(Some)
}

/// `(img - 127.5) * 0.0078125` as [1, 3, H, W].
fn normalise(rgb: Vec<f32>, h: usize, w: usize) -> Array4<f32> {
    Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| (rgb[(y * w + x) * 3 + c] - 127.5) * 0.0078125)
}

/// `F.interpolate(mode="area")` (adaptive average pooling) of the region x0..x1, y0..y1
/// of an image to out_w × out_h, interleaved RGB f32.
fn area_resize(img: &RgbImage, x0: usize, y0: usize, x1: usize, y1: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let (iw, ih) = (x1 - x0, y1 - y0);
    let stride = img.width as usize * 3;
    let mut out = vec![0f32; out_w * out_h * 3];
    let span = |i: usize, inn: usize, out: usize| (i * inn / out, ((i + 1) * inn).div_ceil(out));
    for oy in 0..out_h {
        let (ys, ye) = span(oy, ih, out_h);
        for ox in 0..out_w {
            let (xs, xe) = span(ox, iw, out_w);
            let mut sum = [0f32; 3];
            for y in ys..ye {
                let row = (y0 + y) * stride;
                for x in xs..xe {
                    let p = row + (x0 + x) * 3;
                    for (c, s) in sum.iter_mut().enumerate() {
                        *s += f32::from(img.data[p + c]);
                    }
                }
            }
            let n = ((ye - ys) * (xe - xs)) as f32;
            for c in 0..3 {
                out[(oy * out_w + ox) * 3 + c] = sum[c] / n;
            }
        }
    }
    out
}

fn generate_boxes(reg: &ArrayD<f32>, prob: &ArrayD<f32>, scale: f32, thresh: f32) -> Vec<Cand> {
    let (oh, ow) = (prob.shape()[2], prob.shape()[3]);
    let mut out = Vec::new();
    for y in 0..oh {
        for x in 0..ow {
            let score = prob[[0, 1, y, x]];
            if score >= thresh {
                let q = |v: usize, add: f32| ((2.0 * v as f32 + add) / scale).floor();
                out.push(Cand {
                    b: [q(x, 1.0), q(y, 1.0), q(x, 12.0), q(y, 12.0)],
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
fn nms(c: &[Cand], t: f32, min_overlap: bool) -> Vec<usize> {
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

fn rerec(b: [f32; 4]) -> [f32; 4] {
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
fn crops(img: &RgbImage, boxes: &[Cand], size: usize) -> (Array4<f32>, Vec<usize>) {
    let (w, h) = (img.width as i64, img.height as i64);
    let mut batch = Vec::new();
    let mut kept = Vec::new();
    for (i, c) in boxes.iter().enumerate() {
        let x = (c.b[0].trunc() as i64).max(1);
        let y = (c.b[1].trunc() as i64).max(1);
        let ex = (c.b[2].trunc() as i64).min(w);
        let ey = (c.b[3].trunc() as i64).min(h);
        if ey > y - 1 && ex > x - 1 {
            batch.push(normalise(
                area_resize(img, (x - 1) as usize, (y - 1) as usize, ex as usize, ey as usize, size, size),
                size,
                size,
            ));
            kept.push(i);
        }
    }
    let views: Vec<_> = batch.iter().map(|a| a.view()).collect();
    let arr = if views.is_empty() {
        Array4::zeros((0, 3, size, size))
    } else {
        ndarray::concatenate(Axis(0), &views).expect("same shapes")
    };
    (arr, kept)
}

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
    for v in 0..out_h {
        for u in 0..out_w {
            let (du, dv) = (u as f64 - tx, v as f64 - ty);
            let x = (a * du + b * dv) / det;
            let y = (nb * du + a * dv) / det;
            let (x0, y0) = (x.floor() as i64, y.floor() as i64);
            let (fx, fy) = (x - x0 as f64, y - y0 as f64);
            for c in 0..3 {
                let px = |xx: i64, yy: i64| {
                    if xx < 0 || yy < 0 || xx >= w || yy >= h {
                        0.0
                    } else {
                        f64::from(img.data[((yy * w + xx) * 3) as usize + c])
                    }
                };
                let val = px(x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + px(x0 + 1, y0) * fx * (1.0 - fy)
                    + px(x0, y0 + 1) * (1.0 - fx) * fy
                    + px(x0 + 1, y0 + 1) * fx * fy;
                out[(v * out_w + u) * 3 + c] = val.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::new(size[0], size[1], out)
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |x: &[f32; 4]| (x[2] - x[0]) * (x[3] - x[1]);
    inter / (area(a) + area(b) - inter)
}

/// Follow one person: the largest face of the first frame that has one, then in each
/// later frame the face overlapping it most (IoU ≥ 0.3), else the largest. Frames
/// without a face are skipped.
pub fn track_largest(detections: &[(usize, Vec<Face>)]) -> Vec<(usize, Face)> {
    let mut out: Vec<(usize, Face)> = Vec::new();
    for (idx, faces) in detections {
        let chosen = match out.last() {
            None => faces.first().cloned(),
            Some((_, prev)) => faces
                .iter()
                .map(|f| (iou(&f.bbox, &prev.bbox), f))
                .filter(|(o, _)| *o >= 0.3)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, f)| f.clone())
                .or_else(|| faces.first().cloned()),
        };
        if let Some(f) = chosen {
            out.push((*idx, f));
        }
    }
    out
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

    #[test]
    fn area_resize_averages_blocks() {
        let img = RgbImage::new(
            4,
            2,
            vec![0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40, 50, 50, 50, 60, 60, 60, 70, 70, 70],
        );
        let out = area_resize(&img, 0, 0, 4, 2, 2, 1);
        assert_eq!(out, vec![25.0, 25.0, 25.0, 45.0, 45.0, 45.0]);
    }
}

/// The aligned face crops of a clip, or why there are none.
#[derive(Debug, Clone)]
pub struct FaceCrops {
    /// Frames examined, and the (frame index, aligned crop) of the tracked face.
    pub frames_examined: usize,
    pub crops: Vec<(usize, RgbImage)>,
}

impl FaceCrops {
    /// No face in any frame: the pipeline then uses the official demo's zero inputs for
    /// the local and temporal rows, and says so.
    pub fn is_empty(&self) -> bool {
        self.crops.is_empty()
    }
}

impl FaceDetector {
    /// Detect in every given frame, track the largest face, align each found face.
    pub fn face_crops<'a>(
        &self,
        frames: impl IntoIterator<Item = (usize, &'a RgbImage)>,
    ) -> Result<FaceCrops, EngineError> {
        face_crops(std::slice::from_ref(self), frames, &CancelToken::new())
    }
}

/// [`FaceDetector::face_crops`] with several detectors working on frames in parallel
/// (one thread each; every frame is detected independently, so the result is the same
/// as with one detector). `cancel` is checked before each frame.
pub fn face_crops<'a>(
    detectors: &[FaceDetector],
    frames: impl IntoIterator<Item = (usize, &'a RgbImage)>,
    cancel: &CancelToken,
) -> Result<FaceCrops, EngineError> {
    let detect = |det: &FaceDetector, i: usize, img: &RgbImage| {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        Ok((i, det.detect(img)?))
    };
    let frames: Vec<(usize, &RgbImage)> = frames.into_iter().collect();
    let workers = detectors.len().clamp(1, frames.len().max(1));
    let mut detections: Vec<(usize, Vec<Face>)> = if workers <= 1 {
        let det = detectors.first().expect("at least one detector");
        frames.iter().map(|(i, img)| detect(det, *i, img)).collect::<Result<_, EngineError>>()?
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = detectors[..workers]
                .iter()
                .enumerate()
                .map(|(w, det)| {
                    let mine: Vec<(usize, &RgbImage)> = frames.iter().skip(w).step_by(workers).copied().collect();
                    let detect = &detect;
                    scope.spawn(move || {
                        mine.into_iter().map(|(i, img)| detect(det, i, img)).collect::<Result<Vec<_>, EngineError>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(frames.len());
            for h in handles {
                all.extend(h.join().expect("face detection thread panicked")?);
            }
            Ok::<_, EngineError>(all)
        })?
    };
    detections.sort_by_key(|(i, _)| *i);
    let by_index: std::collections::HashMap<usize, &RgbImage> = frames.iter().copied().collect();
    let size = detectors.first().expect("at least one detector").aligned_size;
    let crops = track_largest(&detections).into_iter().map(|(i, f)| (i, align_face(by_index[&i], &f, size))).collect();
    Ok(FaceCrops { frames_examined: frames.len(), crops })
}
