//! Following faces over a clip: detect, then track. The examined frames are cut into
//! chunks of `detect_every` frames; each chunk starts with a full MTCNN detection and
//! follows every face it found through the chunk with O-Net alone on a few boxes around
//! the face's last place (one batch for all faces of a frame), running a full detection
//! again when a face is lost or the shot changes. Chunks are independent, so detectors
//! work on them in parallel and the result does not depend on how many there are; the
//! chunks' tracks are then joined where a face ends one chunk and starts the next in the
//! same place. A shot change ends every track: the face after a cut is another track even
//! where it stands in the same place.
//!
//! The face used is the track with the highest rank (see [`rank`]), not the largest face
//! of the first frame: on a two-person scene the listener's head is often the largest
//! thing in the first frame.

use serde::Serialize;

use super::cascade::{Cand, Nets, Pyramid};
use super::gate::Gate;
use super::Face;
use crate::image::RgbImage;
use emollama_engines::EngineError;

/// One detection in a track: the frame, the face, and why the gate refused it (None: usable).
#[derive(Debug, Clone)]
pub struct Sighting {
    pub frame: usize,
    pub face: Face,
    pub rejected: Option<&'static str>,
}

/// One face followed over consecutive examined frames.
#[derive(Debug, Clone, Default)]
pub struct Track {
    pub sightings: Vec<Sighting>,
    /// Examined frames in a row where the face was not found.
    misses: usize,
    /// Still followed (not ended by a cut or by too many misses).
    active: bool,
}

impl Track {
    /// A finished track of these sightings (None when there are none).
    pub fn from_sightings(sightings: Vec<Sighting>) -> Option<Self> {
        (!sightings.is_empty()).then_some(Self { sightings, misses: 0, active: false })
    }

    /// Not found in an examined frame: too many in a row end the track.
    fn miss(&mut self) {
        self.misses += 1;
        if self.misses > MAX_MISSES {
            self.active = false;
        }
    }

    /// Found again. A track whose last [`MAX_REFUSED`] faces the gate all refused is no
    /// longer followed (a profile, the back of a head, a false detection: following it
    /// costs an O-Net run per frame and it cannot be chosen); if it turns into a usable
    /// face, the next full detection starts it again.
    fn sighted(&mut self, sighting: Sighting) {
        self.sightings.push(sighting);
        self.misses = 0;
        let n = self.sightings.len();
        if n >= MAX_REFUSED && self.sightings[n - MAX_REFUSED..].iter().all(|s| s.rejected.is_some()) {
            self.active = false;
        }
    }

    fn last(&self) -> &Sighting {
        self.sightings.last().expect("a track has a sighting")
    }

    /// The sightings the gate accepted.
    pub fn usable(&self) -> impl Iterator<Item = &Sighting> {
        self.sightings.iter().filter(|s| s.rejected.is_none())
    }
}

/// How faces are followed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrackOptions<'a> {
    pub pyramid: &'a Pyramid,
    pub gate: &'a Gate,
}

/// Detections the gate refused, by reason.
pub(crate) type Refused = std::collections::BTreeMap<&'static str, usize>;

/// A face not found in this many examined frames in a row ends its track.
const MAX_MISSES: usize = 2;
/// A track whose faces the gate refused this many times in a row is no longer followed.
const MAX_REFUSED: usize = 3;
/// Boxes this much apart (IoU) are the same face.
const SAME_FACE_IOU: f32 = 0.3;

/// What one chunk found.
#[derive(Debug, Default)]
pub(crate) struct ChunkTracks {
    pub tracks: Vec<Track>,
    /// Refused detections that started no track (those of a track are its sightings').
    pub refused: Refused,
    pub full_detections: usize,
    pub refined: usize,
}

/// Follow the faces through one chunk of examined frames; `cuts[i]` says frame i starts
/// a new shot. A full detection runs on the chunk's first frame and after a cut; between
/// them O-Net follows the known faces. A face it loses counts a miss; the first loss in a
/// chunk also looks at the whole frame again (a face that moved fast is found there),
/// later ones wait for the next chunk: a chunk runs at most two full detections plus one
/// per cut, whatever the frames hold (a clip without any face costs one per chunk).
pub(crate) fn track_chunk(
    nets: &Nets<'_>,
    frames: &[(usize, &RgbImage)],
    cuts: &[bool],
    opts: &TrackOptions<'_>,
    cancelled: &dyn Fn() -> bool,
) -> Result<ChunkTracks, EngineError> {
    let mut out = ChunkTracks::default();
    let mut redetect_left = 1;
    for (n, &(index, img)) in frames.iter().enumerate() {
        if cancelled() {
            return Err(EngineError::Cancelled);
        }
        if cuts[n] {
            out.tracks.iter_mut().for_each(|t| t.active = false);
        }
        let mut full = n == 0 || cuts[n];
        let active: Vec<usize> = (0..out.tracks.len()).filter(|&t| out.tracks[t].active).collect();
        if !full && !active.is_empty() {
            let last: Vec<[f32; 4]> = active.iter().map(|&t| out.tracks[t].last().face.bbox).collect();
            let refined = refine(nets, img, &last)?;
            out.refined += 1;
            let lost = refined.iter().any(Option::is_none);
            if lost && redetect_left > 0 {
                redetect_left -= 1;
                full = true;
            } else {
                for (&t, face) in active.iter().zip(refined) {
                    let track = &mut out.tracks[t];
                    match face {
                        Some(face) => {
                            let rejected = opts.gate.check(&face);
                            track.sighted(Sighting { frame: index, face, rejected });
                        }
                        None => track.miss(),
                    }
                }
            }
        }
        if full {
            let faces = nets.detect(img, opts.pyramid)?;
            out.full_detections += 1;
            associate(&mut out.tracks, index, faces, opts.gate, &mut out.refused);
        }
    }
    Ok(out)
}

/// Join a frame's detections to the active tracks (greedy, by overlap); new faces start
/// tracks; a track without a detection counts a miss and ends after [`MAX_MISSES`].
fn associate(tracks: &mut Vec<Track>, frame: usize, faces: Vec<Face>, gate: &Gate, refused: &mut Refused) {
    let active: Vec<usize> = (0..tracks.len()).filter(|&t| tracks[t].active).collect();
    let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
    for &t in &active {
        for (f, face) in faces.iter().enumerate() {
            let o = iou(&tracks[t].last().face.bbox, &face.bbox);
            if o >= SAME_FACE_IOU {
                pairs.push((o, t, f));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut face_taken = vec![false; faces.len()];
    let mut track_fed = vec![false; tracks.len()];
    for (_, t, f) in pairs {
        if face_taken[f] || track_fed[t] {
            continue;
        }
        face_taken[f] = true;
        track_fed[t] = true;
        let rejected = gate.check(&faces[f]);
        tracks[t].sighted(Sighting { frame, face: faces[f].clone(), rejected });
    }
    for &t in &active {
        if !track_fed[t] {
            tracks[t].miss();
        }
    }
    // A new face starts a track only when the gate takes it: refused detections are
    // followed only as part of a face already being followed.
    for (f, face) in faces.into_iter().enumerate() {
        if face_taken[f] {
            continue;
        }
        match gate.check(&face) {
            None => tracks.push(Track {
                sightings: vec![Sighting { frame, face, rejected: None }],
                misses: 0,
                active: true,
            }),
            Some(why) => *refused.entry(why).or_default() += 1,
        }
    }
}

/// Where each face is now, from where it was, or None (lost). First O-Net on each face's
/// last box, all faces in one batch: its box regression follows a face that moved a
/// little. A face that O-Net does not find there is searched around it: R-Net on copies
/// of the box shifted by a tenth of its size and scaled, the best of them regressed and
/// given to O-Net (the cascade's own order, on seven boxes instead of a whole frame).
fn refine(nets: &Nets<'_>, img: &RgbImage, last: &[[f32; 4]]) -> Result<Vec<Option<Face>>, EngineError> {
    let mut found = best_per_owner(
        nets.onet_scored(img, last.iter().map(|b| Cand::square(*b)).collect())?,
        &(0..last.len()).collect::<Vec<_>>(),
        last,
    );
    let lost: Vec<usize> = (0..last.len()).filter(|&t| found[t].is_none()).collect();
    if !lost.is_empty() {
        const MOVES: [(f32, f32, f32); 7] = [
            (0.0, 0.0, 1.0),
            (-0.1, 0.0, 1.0),
            (0.1, 0.0, 1.0),
            (0.0, -0.1, 1.0),
            (0.0, 0.1, 1.0),
            (0.0, 0.0, 0.88),
            (0.0, 0.0, 1.15),
        ];
        let mut cands = Vec::with_capacity(lost.len() * MOVES.len());
        let mut owner = Vec::with_capacity(cands.capacity());
        for &t in &lost {
            let b = last[t];
            let (w, h) = (b[2] - b[0], b[3] - b[1]);
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            for (dx, dy, s) in MOVES {
                let (hw, hh) = (w * s / 2.0, h * s / 2.0);
                let (x, y) = (cx + dx * w, cy + dy * h);
                cands.push(Cand::square([x - hw, y - hh, x + hw, y + hh]));
                owner.push(t);
            }
        }
        // R-Net's best box per lost face, then O-Net on those.
        let (scored, from) = nets.rnet_scored(img, cands)?;
        let mut best: Vec<Option<Cand>> = vec![None; last.len()];
        for (c, k) in scored.into_iter().zip(from) {
            let t = owner[k];
            if best[t].is_none_or(|b| c.score > b.score) {
                best[t] = Some(c);
            }
        }
        let (second, second_owner): (Vec<Cand>, Vec<usize>) =
            lost.iter().filter_map(|&t| best[t].map(|c| (c.regressed(), t))).unzip();
        let again = best_per_owner(nets.onet_scored(img, second)?, &second_owner, last);
        for &t in &second_owner {
            found[t] = again[t].clone();
        }
    }
    // Two faces that converged on one are one face: the later track loses it.
    for a in 0..found.len() {
        for b in a + 1..found.len() {
            if let (Some(x), Some(y)) = (&found[a], &found[b]) {
                if iou(&x.bbox, &y.bbox) > 0.5 {
                    found[b] = None;
                }
            }
        }
    }
    Ok(found)
}

/// For each track, the best-scored O-Net face among its candidates (`owner[k]`: the
/// track of candidate k) that still overlaps its last box.
fn best_per_owner(scored: (Vec<Face>, Vec<usize>), owner: &[usize], last: &[[f32; 4]]) -> Vec<Option<Face>> {
    let mut best: Vec<Option<Face>> = vec![None; last.len()];
    for (face, k) in scored.0.into_iter().zip(scored.1) {
        let t = owner[k];
        if iou(&face.bbox, &last[t]) >= SAME_FACE_IOU && best[t].as_ref().is_none_or(|b| face.score > b.score) {
            best[t] = Some(face);
        }
    }
    best
}

/// Join the pieces of one face's track: a track that ends (a chunk's end, a face lost
/// for a few frames, one the gate refused a while) continues as the track that starts
/// within `max_gap` examined frames after it in the same place (overlap ≥ 0.3), unless a
/// shot change lies between. `examined` are the examined frames' indices in order and
/// `cuts[i]` says examined frame i starts a new shot.
pub(crate) fn join_fragments(mut tracks: Vec<Track>, examined: &[usize], cuts: &[bool], max_gap: usize) -> Vec<Track> {
    let position = |frame: usize| examined.binary_search(&frame).unwrap_or_else(|p| p);
    tracks.retain(|t| !t.sightings.is_empty());
    tracks.sort_by_key(|t| t.sightings[0].frame);
    let mut joined: Vec<Track> = Vec::new();
    for t in tracks {
        let start = position(t.sightings[0].frame);
        let earlier = joined
            .iter()
            .enumerate()
            .filter(|(_, a)| {
                let end = position(a.last().frame);
                end < start && start - end <= max_gap && !cuts[end + 1..=start].iter().any(|c| *c)
            })
            .map(|(i, a)| (iou(&a.last().face.bbox, &t.sightings[0].face.bbox), i))
            .filter(|(v, _)| *v >= SAME_FACE_IOU)
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        match earlier {
            Some((_, i)) => joined[i].sightings.extend(t.sightings),
            None => joined.push(t),
        }
    }
    joined
}

/// The rule that picks the face to use, stated: a track's rank is the sum over its usable
/// sightings of `score × size × centring`, where size is `sqrt(min(1, width / (0.25 ×
/// the frame's short side)))` (faces of a quarter of the frame or more count fully;
/// smaller ones less, gently) and centring is `1 − 0.5 × d` with d the distance of the
/// face from the frame's centre as a share of the half diagonal. Frames covered count
/// most: the main subject is the face seen longest.
pub fn rank(track: &Track, frame_w: f32, frame_h: f32) -> f32 {
    let short = frame_w.min(frame_h).max(1.0);
    let half_diag = 0.5 * (frame_w * frame_w + frame_h * frame_h).sqrt();
    track
        .usable()
        .map(|s| {
            let b = &s.face.bbox;
            let size = ((b[2] - b[0]) / (0.25 * short)).clamp(0.0, 1.0).sqrt();
            let (cx, cy) = ((b[0] + b[2]) / 2.0 - frame_w / 2.0, (b[1] + b[3]) / 2.0 - frame_h / 2.0);
            let d = ((cx * cx + cy * cy).sqrt() / half_diag).min(1.0);
            s.face.score * size * (1.0 - 0.5 * d)
        })
        .sum()
}

/// What the chosen track was, for the result (a user can see which face was used).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrackSummary {
    /// Its number among the clip's tracks (in order of first appearance).
    pub track: usize,
    /// Examined frames with a usable face of it.
    pub frames: usize,
    pub first_frame: usize,
    pub last_frame: usize,
    pub mean_score: f32,
    /// The mean of its boxes (x1, y1, x2, y2, frame pixels).
    pub mean_box: [f32; 4],
    pub median_width_px: f32,
    pub rank_score: f32,
}

impl TrackSummary {
    pub(crate) fn of(number: usize, track: &Track, rank_score: f32) -> Self {
        let usable: Vec<&Sighting> = track.usable().collect();
        let n = usable.len().max(1) as f32;
        let mut mean_box = [0f32; 4];
        for s in &usable {
            for (m, v) in mean_box.iter_mut().zip(s.face.bbox) {
                *m += v / n;
            }
        }
        let mut widths: Vec<f32> = usable.iter().map(|s| s.face.bbox[2] - s.face.bbox[0]).collect();
        widths.sort_by(f32::total_cmp);
        Self {
            track: number,
            frames: usable.len(),
            first_frame: usable.first().map_or(0, |s| s.frame),
            last_frame: usable.last().map_or(0, |s| s.frame),
            mean_score: usable.iter().map(|s| s.face.score).sum::<f32>() / n,
            mean_box,
            median_width_px: widths.get(widths.len() / 2).copied().unwrap_or(0.0),
            rank_score,
        }
    }
}

pub(crate) fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |x: &[f32; 4]| (x[2] - x[0]) * (x[3] - x[1]);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// A frame's luma on a 16×16 grid (sampled, for shot changes).
pub(crate) fn thumbnail(img: &RgbImage) -> [f32; 256] {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut sum = [0f32; 256];
    let mut count = [0u32; 256];
    let step = ((w * h) as f64 / (256.0 * 64.0)).sqrt().max(1.0) as usize;
    for y in (0..h).step_by(step) {
        let gy = y * 16 / h;
        for x in (0..w).step_by(step) {
            let p = (y * w + x) * 3;
            let luma = 0.299 * f32::from(img.data[p])
                + 0.587 * f32::from(img.data[p + 1])
                + 0.114 * f32::from(img.data[p + 2]);
            let g = gy * 16 + x * 16 / w;
            sum[g] += luma;
            count[g] += 1;
        }
    }
    let mut out = [0f32; 256];
    for g in 0..256 {
        out[g] = if count[g] > 0 { sum[g] / count[g] as f32 } else { 0.0 };
    }
    out
}

/// A shot change between two examined frames: their 16×16 luma grids differ by more than
/// this on average (0-255). Motion within a shot, even a few frames apart, stays well
/// below it on the benchmark's clips; a cut to another shot goes well above.
pub(crate) const CUT_MEAN_DIFFERENCE: f32 = 30.0;

pub(crate) fn is_cut(a: &[f32; 256], b: &[f32; 256]) -> bool {
    let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / 256.0;
    d > CUT_MEAN_DIFFERENCE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, y: f32, w: f32, score: f32) -> Face {
        let lm = |fx: f32, fy: f32| [x + fx * w, y + fy * w];
        Face {
            bbox: [x, y, x + w, y + w],
            score,
            landmarks: [lm(0.34, 0.46), lm(0.66, 0.46), lm(0.5, 0.64), lm(0.37, 0.82), lm(0.63, 0.82)],
        }
    }

    #[test]
    fn association_follows_faces_and_counts_misses() {
        let gate = Gate::default();
        let mut tracks = Vec::new();
        associate(
            &mut tracks,
            0,
            vec![face(10.0, 10.0, 100.0, 0.99), face(300.0, 10.0, 120.0, 0.99)],
            &gate,
            &mut Refused::new(),
        );
        assert_eq!(tracks.len(), 2);
        associate(
            &mut tracks,
            1,
            vec![face(305.0, 12.0, 120.0, 0.99), face(12.0, 11.0, 100.0, 0.99)],
            &gate,
            &mut Refused::new(),
        );
        assert_eq!(tracks.len(), 2, "the same two faces");
        assert_eq!(tracks[0].sightings[1].face.bbox[0], 12.0);
        assert_eq!(tracks[1].sightings[1].face.bbox[0], 305.0);
        for f in 2..2 + MAX_MISSES + 1 {
            associate(&mut tracks, f, vec![face(12.0, 11.0, 100.0, 0.99)], &gate, &mut Refused::new());
        }
        assert!(tracks[0].active && !tracks[1].active, "the second face was gone {} frames", MAX_MISSES + 1);
        associate(&mut tracks, 9, vec![face(305.0, 12.0, 120.0, 0.99)], &gate, &mut Refused::new());
        assert_eq!(tracks.len(), 3, "an ended track does not come back: a new one starts");
    }

    #[test]
    fn a_track_the_gate_keeps_refusing_is_no_longer_followed() {
        let gate = Gate::default();
        let mut tracks = Vec::new();
        let blob = |score| Face { score, ..face(10.0, 10.0, 100.0, score) };
        associate(&mut tracks, 0, vec![blob(0.99)], &gate, &mut Refused::new());
        for f in 1..=MAX_REFUSED {
            assert!(tracks[0].active, "frame {f}");
            associate(&mut tracks, f, vec![blob(0.8)], &gate, &mut Refused::new());
        }
        assert!(!tracks[0].active, "{} refused faces in a row end it", MAX_REFUSED);
        assert_eq!(tracks[0].usable().count(), 1);
    }

    #[test]
    fn the_face_seen_longest_outranks_the_largest() {
        let gate = Gate::default();
        let mut tracks = Vec::new();
        // A big head at the edge for 2 frames (the listener), a smaller centred face for 10.
        for f in 0..10 {
            let mut faces = vec![face(900.0, 300.0, 200.0, 0.99)];
            if f < 2 {
                faces.push(face(0.0, 100.0, 500.0, 0.99));
            }
            associate(&mut tracks, f, faces, &gate, &mut Refused::new());
        }
        let ranks: Vec<f32> = tracks.iter().map(|t| rank(t, 1920.0, 1080.0)).collect();
        assert!(ranks[0] > ranks[1] * 3.0, "{ranks:?}");
    }

    #[test]
    fn pieces_join_where_a_face_continues_but_not_across_a_cut_or_a_long_gap() {
        let track = |frames: std::ops::Range<usize>, x: f32| Track {
            sightings: frames
                .map(|frame| Sighting { frame, face: face(x, 10.0, 100.0, 0.99), rejected: None })
                .collect(),
            misses: 0,
            active: true,
        };
        let examined: Vec<usize> = (0..40).collect();
        let mut cuts = vec![false; 40];
        cuts[8] = true;
        let pieces = vec![
            track(0..4, 10.0),
            track(0..4, 500.0),
            track(4..8, 12.0),   // goes on at once: joined to the first
            track(8..12, 12.0),  // after the cut: another shot
            track(14..16, 14.0), // a gap of 2 frames after it: joined
            track(30..32, 14.0), // a gap of 14: another track
        ];
        let mut spans: Vec<(usize, usize, usize)> = join_fragments(pieces, &examined, &cuts, 4)
            .iter()
            .map(|t| (t.sightings[0].frame, t.sightings.last().unwrap().frame, t.sightings.len()))
            .collect();
        spans.sort();
        assert_eq!(spans, vec![(0, 3, 4), (0, 7, 8), (8, 15, 6), (30, 31, 2)]);
    }

    #[test]
    fn a_cut_is_seen_and_motion_is_not() {
        let flat = |v: u8| RgbImage::new(64, 36, vec![v; 64 * 36 * 3]);
        let (dark, light) = (thumbnail(&flat(30)), thumbnail(&flat(200)));
        assert!(is_cut(&dark, &light));
        assert!(!is_cut(&dark, &thumbnail(&flat(40))));
    }
}
