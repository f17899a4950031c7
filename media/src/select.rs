//! Which frames each encoder sees (spec §1.1, §1.3, §1.4; v2 spec §3.2).

use rand_mt::Mt19937GenRand32;
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
    /// Emotion-LLaMA-v2's temporal window: `frames` consecutive frames from a start
    /// drawn as numpy's `np.random.seed(seed); randint(frames, total)` draws it, reseeded
    /// for every clip (what the authors' feature tool does, so one clip always gets the
    /// same window); a clip of at most `frames` frames is spread over them.
    SeededWindow {
        frames: usize,
        seed: u32,
    },
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
            FrameSelection::SeededWindow { frames, seed } => seeded_window(total, frames, seed),
        }
    }
}

/// `extract_features.py` `sample_frame_indices(clip_len=frames, frame_sample_rate=1,
/// seg_len=total)` after `np.random.seed(seed)` (v2 spec §3.2): over `frames` frames,
/// `end = randint(frames, total)` and the `frames` frames before it; otherwise
/// `linspace(0, total - 1, frames)` truncated to integers, as numpy computes it.
pub fn seeded_window(total: usize, frames: usize, seed: u32) -> Vec<usize> {
    if total == 0 {
        return Vec::new();
    }
    if total > frames {
        let end = numpy_randint(&mut Mt19937GenRand32::new(seed), frames as u64, total as u64) as usize;
        return (end - frames..end).collect();
    }
    match frames {
        0 => Vec::new(),
        1 => vec![0],
        _ => {
            // numpy's linspace: `i * step + start`, the last one exactly `stop`.
            let stop = (total - 1) as f64;
            let step = stop / (frames - 1) as f64;
            (0..frames).map(|i| if i == frames - 1 { stop } else { i as f64 * step } as usize).collect()
        }
    }
}

/// numpy's legacy `RandomState.randint(low, high)` (high exclusive, a range under
/// 2^32): masked rejection, `next_u32() & mask` until it falls in the range.
fn numpy_randint(rng: &mut Mt19937GenRand32, low: u64, high: u64) -> u64 {
    let range = high - 1 - low;
    if range == 0 {
        return low;
    }
    let mask = u64::MAX >> range.leading_zeros();
    loop {
        let v = u64::from(rng.next_u32()) & mask;
        if v <= range {
            return low + v;
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
    fn the_v2_window_is_numpys_seeded_draw() {
        // The v2 spec's §3.2 golden table (seed 42, first draw after seeding).
        let window = |total| seeded_window(total, 16, 42);
        assert_eq!(window(1), vec![0; 16]);
        assert_eq!(window(5), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4]);
        assert_eq!(window(10), [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7, 8, 9]);
        for (total, start) in
            [(16, 0), (17, 0), (30, 6), (60, 38), (75, 38), (90, 51), (100, 51), (125, 102), (1000, 102), (12345, 7270)]
        {
            assert_eq!(window(total), (start..start + 16).collect::<Vec<_>>(), "{total} frames");
        }
        assert!(seeded_window(0, 16, 42).is_empty());
        assert_eq!(FrameSelection::SeededWindow { frames: 16, seed: 42 }.indices(90)[0], 51);
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
