//! Faces: MTCNN detection on the bundle's three ONNX nets ([`cascade`]), faces followed
//! over the clip ([`track`]), a gate on what a face looks like ([`gate`]), and similarity
//! alignment of the five landmarks to the manifest's aligned size ([`align`]).
//!
//! [`FaceDetector::find`] is the face stage: on the frames the encoders need, it
//! detects, tracks, gates, picks the main subject's track and aligns its faces; or says
//! why no face is used (the pipeline then feeds the zero-feature rows).

mod align;
mod cascade;
mod gate;
mod track;

use std::collections::BTreeMap;

use emollama_bundle::contract::IMAGE;
use emollama_bundle::{Bundle, Role};
use emollama_engines::onnx::{EncoderEngine, EngineOptions, OrtRuntime};
use emollama_engines::{CancelToken, EngineError};
use serde::{Deserialize, Serialize};

pub use align::{align_face, similarity};
pub use cascade::{Pyramid, ASPECTS, MAX_BATCH};
pub use gate::Gate;
pub use track::{rank, Sighting, Track, TrackSummary};

use self::cascade::Nets;
use self::track::{is_cut, join_fragments, thumbnail, track_chunk, ChunkTracks, TrackOptions};
use crate::image::RgbImage;

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

/// How faces are searched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum FaceAlgorithm {
    /// Detect, then track: full detections on a fixed-shape pyramid every
    /// `detect_every` frames, O-Net refinement between, gated faces, the main subject's
    /// track.
    #[default]
    Tracked,
    /// The first release's: facenet-pytorch's detector on every examined frame (its
    /// pyramid down to 20 px faces), the largest face of the first frame followed by
    /// overlap, no gate. Kept as the reference the benchmark compares against.
    Legacy,
}

/// The face stage's settings (the runtime configuration's `faces`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FaceSearch {
    pub algorithm: FaceAlgorithm,
    /// The smallest face searched for, as a share of the frame's short side. 0.08 is
    /// 86 px on a 1080p frame, 58 px on 720p, 22 px on a 272p clip: a face smaller than
    /// that carries little expression once aligned to 112 px (the MER datasets' faces
    /// fill a third of the frame or more). It also fixes the pyramid's shapes (12 / 0.08
    /// = 150 px short side at the first level, whatever the resolution).
    pub min_face: f32,
    /// A full detection every this many examined frames (new faces are found then);
    /// O-Net follows the known faces in between. 16 of the 64-80 frames a clip examines
    /// is a new look about every second of a 5 s clip; a face lost in between is looked
    /// for at once (see the tracker).
    pub detect_every: usize,
    pub gate: Gate,
    /// A track needs this many usable faces to be used (fewer, on a clip with fewer
    /// examined frames): one or two detections are too likely a false one.
    pub min_track_frames: usize,
}

impl Default for FaceSearch {
    fn default() -> Self {
        Self {
            algorithm: FaceAlgorithm::Tracked,
            min_face: 0.08,
            detect_every: 16,
            gate: Gate::default(),
            min_track_frames: 3,
        }
    }
}

impl FaceSearch {
    /// The P-Net pyramid this search runs.
    pub fn pyramid(&self) -> Pyramid {
        match self.algorithm {
            FaceAlgorithm::Tracked => Pyramid::Fixed { min_face: self.min_face },
            FaceAlgorithm::Legacy => Pyramid::Facenet { min_face_px: LEGACY_MIN_FACE_PX },
        }
    }

    /// How one face net loads: P-Net's TensorRT profiles are the pyramid's level shapes
    /// (one engine built ahead of time serves every frame; facenet's own pyramid keeps the
    /// configured height and width ranges), R-Net's and O-Net's batch runs from one box to
    /// [`MAX_BATCH`].
    pub fn engine_options(&self, role: &Role, base: &EngineOptions) -> EngineOptions {
        let mut opts = base.clone();
        let trt = &mut opts.policy.tensorrt;
        match role {
            Role::FacePnet => {
                if let Some(shapes) = self.pyramid().all_shapes() {
                    let shapes = shapes.iter().map(|[h, w]| vec![1, 3, *h as u64, *w as u64]).collect();
                    trt.exact_shapes.insert(IMAGE.to_string(), shapes);
                }
            }
            Role::FaceRnet | Role::FaceOnet => {
                trt.dynamic_ranges.insert("batch".into(), [1, 16, MAX_BATCH as u64]);
            }
            _ => {}
        }
        opts
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.min_face.is_finite() && (0.01..=1.0).contains(&self.min_face)) {
            return Err(format!("min_face {}: use a share of the frame's short side, 0.01-1", self.min_face));
        }
        if self.detect_every == 0 {
            return Err("detect_every must be at least 1".into());
        }
        Ok(())
    }
}

/// facenet-pytorch's `MTCNN(min_face_size=20)`.
const LEGACY_MIN_FACE_PX: f32 = 20.0;

/// What the face stage did, for the result: which face was used, or why none.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaceReport {
    pub algorithm: FaceAlgorithm,
    pub frames_examined: usize,
    /// Frames that ran the whole cascade (the rest were followed with O-Net alone).
    pub full_detections: usize,
    pub shot_changes: usize,
    pub tracks: usize,
    /// Detections the gate refused, by reason.
    pub rejected: BTreeMap<String, usize>,
    pub chosen: Option<TrackSummary>,
    /// Why no face is used (None when one is).
    pub reason: Option<String>,
}

/// The faces of the chosen track, aligned.
#[derive(Debug, Clone)]
pub struct FaceCrops {
    pub report: FaceReport,
    /// (frame index, face, aligned crop), in frame order.
    pub crops: Vec<(usize, Face, RgbImage)>,
}

impl FaceCrops {
    /// No usable face: the pipeline then feeds the zero-feature rows, and says so.
    pub fn is_empty(&self) -> bool {
        self.crops.is_empty()
    }
}

/// The three MTCNN nets of a bundle and the aligned crop size.
pub struct FaceDetector {
    pnet: EncoderEngine,
    rnet: EncoderEngine,
    onet: EncoderEngine,
    /// The aligned crop's size (`preprocess.face.aligned_size`).
    aligned_size: [u32; 2],
}

impl FaceDetector {
    /// Load the three nets from a bundle (`face_pnet`, `face_rnet`, `face_onet`) for
    /// `search`; `Ok(None)` when the bundle ships no face detector.
    pub fn from_bundle(
        rt: &OrtRuntime,
        bundle: &Bundle,
        opts: &EngineOptions,
        search: &FaceSearch,
    ) -> Result<Option<Self>, EngineError> {
        let load = |role: Role| -> Result<Option<EncoderEngine>, EngineError> {
            let Some(e) = bundle.file(&role) else { return Ok(None) };
            let opts = EngineOptions { model_sha256: e.sha256.clone(), ..search.engine_options(&role, opts) };
            EncoderEngine::load(rt, role.as_str(), &bundle.path_of(e), e.inputs.clone(), e.outputs.clone(), &opts)
                .map(Some)
        };
        // Only a model that crops faces has the face section (and the nets, checked at open).
        let Some(face) = &bundle.manifest().preprocess.face else { return Ok(None) };
        match (load(Role::FacePnet)?, load(Role::FaceRnet)?, load(Role::FaceOnet)?) {
            (Some(pnet), Some(rnet), Some(onet)) => {
                Ok(Some(Self { pnet, rnet, onet, aligned_size: face.aligned_size }))
            }
            _ => Ok(None),
        }
    }

    /// The nets as `pyramid` uses them (see [`Pyramid::work`]).
    fn nets(&self, pyramid: &Pyramid) -> Nets<'_> {
        Nets { pnet: &self.pnet, rnet: &self.rnet, onet: &self.onet, work: pyramid.work() }
    }

    /// Every face in an image, largest first, with `pyramid` (facenet-pytorch's
    /// `detect` with `select_largest=True` for [`Pyramid::Facenet`]).
    pub fn detect(&self, img: &RgbImage, pyramid: &Pyramid) -> Result<Vec<Face>, EngineError> {
        let mut faces = self.nets(pyramid).detect(img, pyramid)?;
        faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
        Ok(faces)
    }

    /// The face stage on the examined `frames` (in frame order), with `detectors`
    /// working in parallel (one thread each; the result does not depend on how many).
    /// `cancel` is checked before each frame.
    pub fn find(
        detectors: &[FaceDetector],
        frames: &[(usize, &RgbImage)],
        search: &FaceSearch,
        cancel: &CancelToken,
    ) -> Result<FaceCrops, EngineError> {
        let first = detectors.first().expect("at least one detector");
        let (tracks, mut report) = match search.algorithm {
            FaceAlgorithm::Tracked => tracked(detectors, frames, search, cancel)?,
            FaceAlgorithm::Legacy => legacy(detectors, frames, cancel)?,
        };
        report.tracks = tracks.len();
        for s in tracks.iter().flat_map(|t| &t.sightings) {
            if let Some(r) = s.rejected {
                *report.rejected.entry(r.to_string()).or_default() += 1;
            }
        }
        let Some(&(_, img0)) = frames.first() else {
            report.reason = Some("no frame to examine".into());
            return Ok(FaceCrops { report, crops: Vec::new() });
        };
        let (w, h) = (img0.width as f32, img0.height as f32);
        let ranked: Vec<(usize, f32)> = tracks.iter().map(|t| rank(t, w, h)).enumerate().collect();
        let needed = search.min_track_frames.min(frames.len()).max(1);
        let best = ranked
            .iter()
            .filter(|(t, _)| tracks[*t].usable().count() >= needed)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some(&(number, rank_score)) = best else {
            report.reason = Some(no_face_reason(&tracks, needed, &report));
            return Ok(FaceCrops { report, crops: Vec::new() });
        };
        let track = &tracks[number];
        report.chosen = Some(TrackSummary::of(number, track, rank_score));
        let by_index: BTreeMap<usize, &RgbImage> = frames.iter().copied().collect();
        let crops = track
            .usable()
            .map(|s| (s.frame, s.face.clone(), align_face(by_index[&s.frame], &s.face, first.aligned_size)))
            .collect();
        Ok(FaceCrops { report, crops })
    }
}

/// Why no track is used, in words.
fn no_face_reason(tracks: &[Track], needed: usize, report: &FaceReport) -> String {
    let examined = report.frames_examined;
    let refused: usize = report.rejected.values().sum();
    let why = report.rejected.iter().map(|(w, n)| format!("{n} {w}")).collect::<Vec<_>>().join(", ");
    match (tracks.is_empty(), refused) {
        (true, 0) => format!("no face found in {examined} examined frames"),
        (true, _) => format!(
            "no usable face in {examined} examined frames: the face gate refused all {refused} detection(s) ({why})"
        ),
        (false, _) => {
            let best = tracks.iter().map(|t| t.usable().count()).max().unwrap_or(0);
            format!(
                "no reliable face in {examined} examined frames: {} candidate track(s), the best with {best} usable \
                 face(s) of the {needed} needed; the face gate refused {refused} detection(s) ({why})",
                tracks.len()
            )
        }
    }
}

fn empty_report(algorithm: FaceAlgorithm, frames: usize) -> FaceReport {
    FaceReport {
        algorithm,
        frames_examined: frames,
        full_detections: 0,
        shot_changes: 0,
        tracks: 0,
        rejected: BTreeMap::new(),
        chosen: None,
        reason: None,
    }
}

/// Run `work` on every item, `detectors.len()` threads at most, item i on detector
/// i mod n; results in item order.
fn parallel<I: Sync, T: Send>(
    detectors: &[FaceDetector],
    items: &[I],
    work: impl Fn(&FaceDetector, &I) -> Result<T, EngineError> + Sync,
) -> Result<Vec<T>, EngineError> {
    let workers = detectors.len().clamp(1, items.len().max(1));
    if workers <= 1 {
        return items.iter().map(|i| work(&detectors[0], i)).collect();
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let det = &detectors[w];
                scope.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(workers)
                        .map(|(i, it)| Ok((i, work(det, it)?)))
                        .collect::<Result<Vec<_>, EngineError>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(items.len());
        for h in handles {
            all.extend(h.join().expect("face detection thread panicked")?);
        }
        all.sort_by_key(|(i, _)| *i);
        Ok(all.into_iter().map(|(_, t)| t).collect())
    })
}

/// Detect, then track (see [`track`]).
fn tracked(
    detectors: &[FaceDetector],
    frames: &[(usize, &RgbImage)],
    search: &FaceSearch,
    cancel: &CancelToken,
) -> Result<(Vec<Track>, FaceReport), EngineError> {
    let thumbs: Vec<[f32; 256]> = frames.iter().map(|(_, img)| thumbnail(img)).collect();
    let cuts: Vec<bool> = (0..frames.len()).map(|i| i > 0 && is_cut(&thumbs[i - 1], &thumbs[i])).collect();
    let pyramid = search.pyramid();
    let opts = TrackOptions { pyramid: &pyramid, gate: &search.gate };
    let chunk_starts: Vec<usize> = (0..frames.len()).step_by(search.detect_every.max(1)).collect();
    let cancelled = || cancel.is_cancelled();
    let chunks: Vec<ChunkTracks> = parallel(detectors, &chunk_starts, |det, &start| {
        let end = (start + search.detect_every).min(frames.len());
        // A chunk's first frame always runs a full detection; its cut flag is for joining.
        let mut chunk_cuts = cuts[start..end].to_vec();
        chunk_cuts[0] = false;
        track_chunk(&det.nets(&pyramid), &frames[start..end], &chunk_cuts, &opts, &cancelled)
    })?;
    let mut report = empty_report(FaceAlgorithm::Tracked, frames.len());
    report.full_detections = chunks.iter().map(|c| c.full_detections).sum();
    for (why, n) in chunks.iter().flat_map(|c| &c.refused) {
        *report.rejected.entry(why.to_string()).or_default() += n;
    }
    report.shot_changes = cuts.iter().filter(|c| **c).count();
    let examined: Vec<usize> = frames.iter().map(|(i, _)| *i).collect();
    let tracks = chunks.into_iter().flat_map(|c| c.tracks).collect();
    Ok((join_fragments(tracks, &examined, &cuts, search.detect_every), report))
}

/// The first release's face stage: the full cascade with facenet's pyramid on every
/// frame, the largest face of the first frame with one followed by overlap (IoU ≥ 0.3),
/// else the largest; no gate.
fn legacy(
    detectors: &[FaceDetector],
    frames: &[(usize, &RgbImage)],
    cancel: &CancelToken,
) -> Result<(Vec<Track>, FaceReport), EngineError> {
    let pyramid = Pyramid::Facenet { min_face_px: LEGACY_MIN_FACE_PX };
    let detections = parallel(detectors, frames, |det, (i, img)| {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        Ok((*i, det.detect(img, &pyramid)?))
    })?;
    let mut report = empty_report(FaceAlgorithm::Legacy, frames.len());
    report.full_detections = frames.len();
    let followed = track_largest(&detections);
    let track = Track::from_sightings(
        followed.into_iter().map(|(frame, face)| Sighting { frame, face, rejected: None }).collect(),
    );
    Ok((track.into_iter().collect(), report))
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
                .map(|f| (track::iou(&f.bbox, &prev.bbox), f))
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
