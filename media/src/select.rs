//! Which frames each encoder sees (spec §1.1, §1.3, §1.4).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameSelection {
    /// The official choice for the global encoder: the first decoded frame.
    First,
    Middle,
    /// N frames at evenly spaced indices (first and last included).
    Uniform(usize),
    /// VideoMAE's test sampler over every frame of the clip: `segments` starts, each
    /// taking `frames_per_segment` consecutive frames (8 × 2 = 16 officially).
    VideoMae {
        segments: usize,
        frames_per_segment: usize,
    },
    /// Every frame, or a uniform subsample when there are more than the cap (faces).
    AllCapped(usize),
}

impl FrameSelection {
    /// Frame indices (0-based, presentation order) out of `total` frames.
    pub fn indices(self, total: usize) -> Vec<usize> {
        if total == 0 {
            return Vec::new();
        }
        match self {
            FrameSelection::First => vec![0],
            FrameSelection::Middle => vec![total / 2],
            FrameSelection::Uniform(n) => uniform(total, n),
            FrameSelection::VideoMae { segments, frames_per_segment } => {
                videomae_indices(total, segments, frames_per_segment)
            }
            FrameSelection::AllCapped(cap) if total <= cap => (0..total).collect(),
            FrameSelection::AllCapped(cap) => uniform(total, cap),
        }
    }
}

fn uniform(total: usize, n: usize) -> Vec<usize> {
    match n {
        0 => Vec::new(),
        1 => vec![0],
        _ => (0..n).map(|i| ((i as f64) * (total - 1) as f64 / (n - 1) as f64).round() as usize).collect(),
    }
}

/// `dataset_MER.py` test sampling: `tick = (n - new_length + 1) / segments`, segment
/// start `int(tick / 2 + tick * x)`, all starts 0 when `n <= segments + new_length - 1`;
/// each segment takes `new_length` consecutive frames, the index not advancing past the
/// last frame.
pub fn videomae_indices(total: usize, segments: usize, new_length: usize) -> Vec<usize> {
    let starts: Vec<usize> = if total > segments + new_length - 1 {
        let tick = (total - new_length + 1) as f64 / segments as f64;
        (0..segments).map(|x| (tick / 2.0 + tick * x as f64) as usize).collect()
    } else {
        vec![0; segments]
    };
    let mut out = Vec::with_capacity(segments * new_length);
    for s in starts {
        let mut p = s;
        for _ in 0..new_length {
            out.push(p.min(total - 1));
            if p + 1 < total {
                p += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn videomae_sampling_follows_the_official_loader() {
        // 125 frames (the spec's example row): tick = 124/8 = 15.5.
        let idx = videomae_indices(125, 8, 2);
        assert_eq!(idx, vec![7, 8, 23, 24, 38, 39, 54, 55, 69, 70, 85, 86, 100, 101, 116, 117]);
        // <= 9 frames: all segments start at 0.
        assert_eq!(videomae_indices(9, 8, 2), [0, 1].repeat(8));
        assert_eq!(videomae_indices(1, 8, 2), vec![0; 16]);
        assert_eq!(videomae_indices(10, 8, 2)[..4], [0, 1, 1, 2]);
    }

    #[test]
    fn policies() {
        assert_eq!(FrameSelection::First.indices(50), vec![0]);
        assert_eq!(FrameSelection::Middle.indices(50), vec![25]);
        assert_eq!(FrameSelection::Uniform(3).indices(11), vec![0, 5, 10]);
        assert_eq!(FrameSelection::AllCapped(64).indices(5), vec![0, 1, 2, 3, 4]);
        assert_eq!(FrameSelection::AllCapped(3).indices(100), vec![0, 50, 99]);
        assert!(FrameSelection::VideoMae { segments: 8, frames_per_segment: 2 }.indices(0).is_empty());
        assert_eq!(FrameSelection::VideoMae { segments: 8, frames_per_segment: 2 }.indices(125)[..4], [7, 8, 23, 24]);
    }
}
