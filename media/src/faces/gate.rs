//! Which detections are faces worth feeding an emotion encoder. MTCNN's O-Net passes
//! some non-faces on cluttered frames (the back of a head, a hand, a patterned shirt),
//! and its landmarks on those are not a face's: the gate checks the confidence and that
//! the five points stand as a face's do, in the face's own upright frame (rotated by the
//! eye line's roll): eyes level enough, the nose below the eyes and between them, the
//! mouth below the nose, a plausible eye distance for the box. A detection that fails
//! is dropped, never aligned and fed to MAE or VideoMAE.

use serde::{Deserialize, Serialize};

use super::Face;

/// The gate's thresholds. The defaults come from the five-point template the crops are
/// aligned to (eye distance 0.31 of the 112 px crop, nose 0.18 and mouth 0.36 of the
/// crop below the eyes) with generous margins for expression and head turns, and from
/// the real clips of the benchmark (`scripts/bench-faces`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// O-Net's face probability, at least (the cascade itself stops at 0.7).
    pub min_score: f32,
    /// Roll of the eye line, at most (degrees).
    pub max_roll_deg: f32,
    /// Eye distance relative to the box width: a frontal face is about 0.4; much less is
    /// a profile (whose crop aligns badly) or not a face; much more is not a face.
    pub eye_distance: [f32; 2],
    /// The nose's horizontal place between the eyes (0 = left eye, 1 = right eye), in the
    /// face's upright frame: outside the range the head is turned past what a frontal
    /// alignment can fix.
    pub nose_between_eyes: [f32; 2],
    /// How far below the eye line the nose and the mouth must be, in eye distances.
    pub min_nose_drop: f32,
    pub min_mouth_below_nose: f32,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            min_score: 0.95,
            max_roll_deg: 40.0,
            eye_distance: [0.22, 0.65],
            nose_between_eyes: [0.0, 1.0],
            min_nose_drop: 0.2,
            min_mouth_below_nose: 0.15,
        }
    }
}

impl Gate {
    /// Why `face` is not usable, or `None` when it passes.
    pub fn check(&self, face: &Face) -> Option<&'static str> {
        if face.score < self.min_score {
            return Some("low confidence");
        }
        let [le, re, nose, ml, mr] = face.landmarks;
        let (ex, ey) = (re[0] - le[0], re[1] - le[1]);
        let iod = (ex * ex + ey * ey).sqrt();
        let width = face.bbox[2] - face.bbox[0];
        if !(iod > 0.0 && width > 0.0) {
            return Some("degenerate landmarks");
        }
        // The eye line points right in an upright face: a roll past ±90° is upside down.
        let roll = ey.atan2(ex).to_degrees();
        if roll.abs() > self.max_roll_deg {
            return Some("eye line rolled too far");
        }
        let rel = iod / width;
        if rel < self.eye_distance[0] || rel > self.eye_distance[1] {
            return Some("eye distance implausible for the box");
        }
        // Into the face's upright frame: origin at the left eye, x along the eye line,
        // y downwards, unit = eye distance.
        let (c, s) = (ex / iod, ey / iod);
        let upright = |p: [f32; 2]| {
            let (dx, dy) = (p[0] - le[0], p[1] - le[1]);
            ((dx * c + dy * s) / iod, (-dx * s + dy * c) / iod)
        };
        let (nx, ny) = upright(nose);
        let (mlx, mly) = upright(ml);
        let (mrx, mry) = upright(mr);
        if nx < self.nose_between_eyes[0] || nx > self.nose_between_eyes[1] {
            return Some("head turned too far (nose outside the eyes)");
        }
        if ny < self.min_nose_drop {
            return Some("nose not below the eyes");
        }
        if mlx >= mrx {
            return Some("mouth corners out of order");
        }
        if (mly + mry) / 2.0 < ny + self.min_mouth_below_nose {
            return Some("mouth not below the nose");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alignment template's five points as a face in a 112 px box.
    fn template_face() -> Face {
        Face {
            bbox: [0.0, 0.0, 112.0, 112.0],
            score: 0.999,
            landmarks: [[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]],
        }
    }

    fn rotated(f: &Face, deg: f32) -> Face {
        let (s, c) = deg.to_radians().sin_cos();
        let mut out = f.clone();
        for p in &mut out.landmarks {
            let (x, y) = (p[0] - 56.0, p[1] - 56.0);
            *p = [56.0 + x * c - y * s, 56.0 + x * s + y * c];
        }
        out
    }

    #[test]
    fn a_face_passes_and_broken_geometry_does_not() {
        let gate = Gate::default();
        let face = template_face();
        assert_eq!(gate.check(&face), None);
        assert_eq!(gate.check(&rotated(&face, 25.0)), None, "a tilted head is a face");
        assert_eq!(gate.check(&rotated(&face, -25.0)), None);
        assert!(gate.check(&rotated(&face, 70.0)).is_some());
        assert!(gate.check(&rotated(&face, 180.0)).is_some(), "upside down");
        let low = Face { score: 0.8, ..face.clone() };
        assert_eq!(gate.check(&low), Some("low confidence"));
        // Nose above the eyes (the back of a head gives such points).
        let mut f = face.clone();
        f.landmarks[2] = [56.0, 45.0];
        assert_eq!(gate.check(&f), Some("nose not below the eyes"));
        // Mouth above the nose.
        let mut f = face.clone();
        f.landmarks[3][1] = 60.0;
        f.landmarks[4][1] = 60.0;
        assert_eq!(gate.check(&f), Some("mouth not below the nose"));
        // A profile: the nose outside the eyes.
        let mut f = face.clone();
        f.landmarks[2][0] = 80.0;
        assert!(gate.check(&f).unwrap().contains("turned"));
        // Eyes far too close for the box (a blob, not a face).
        let mut f = face.clone();
        f.landmarks[1] = [45.0, 51.5];
        f.landmarks[2][0] = 41.0;
        assert!(gate.check(&f).is_some());
    }
}
