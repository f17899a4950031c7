//! What the face-frame cap costs: the MAE mean over at most `max_face_frames` frames
//! (default 64, uniformly spread) against the mean over every frame, on the sample
//! clips. VideoMAE's 8 pairs are chosen over the whole clip either way.

mod common;

use emollama_bundle::Bundle;
use emollama_media::MediaLimits;
use emollama_runtime::{AnalyzeRequest, Pipeline, RuntimeConfig};

fn local_row(cap: usize, media: &str) -> Vec<f32> {
    let limits = MediaLimits { max_face_frames: cap, ..MediaLimits::default() };
    let config = RuntimeConfig { threads: 2, limits, ..RuntimeConfig::default() };
    let p = Pipeline::load(Bundle::open(&common::bundle_dir()).unwrap(), config).unwrap();
    let mut s = p.session(&AnalyzeRequest::new(media), Default::default()).unwrap();
    s.encode().unwrap();
    let m = p.manifest();
    let d = m.llm.embedding_width as usize;
    let at = m.rows.global_patches as usize * d;
    s.rows().unwrap()[at..at + d].to_vec()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn the_face_frame_cap_barely_moves_the_local_row() {
    for clip in ["talking-face.mp4", "no-audio.mp4"] {
        let media = common::media_dir().join(clip).to_str().unwrap().to_string();
        let (capped, all) = (local_row(64, &media), local_row(100_000, &media));
        let (c16, c) = (local_row(16, &media), cosine(&capped, &all));
        println!(
            "{clip}: cosine(local row, 64-frame cap vs every frame) = {c:.6}; 16-frame cap: {:.6}",
            cosine(&c16, &all)
        );
        assert!(c > 0.999, "{clip}: {c}");
    }
}
