//! MTCNN on ONNX Runtime with the ported cascade, against facenet-pytorch's detector;
//! tracking and alignment on the talking-face clip.

mod common;

use emollama_bundle::Bundle;
use emollama_engines::onnx::{init_runtime, EngineOptions, ProviderPolicy};
use emollama_media::faces::{align_face, track_largest, FaceDetector};
use emollama_media::{decode_frames, face_tensor, FrameSelection, MediaLimits, Resize, RgbImage};

fn detector() -> FaceDetector {
    let bundle = Bundle::open_verified(&common::bundle_dir()).unwrap();
    let rt = init_runtime(None).unwrap();
    let opts = EngineOptions { intra_threads: 2, policy: ProviderPolicy::cpu_only(), ..Default::default() };
    FaceDetector::from_bundle(rt, &bundle, &opts).unwrap().expect("the synthetic bundle ships MTCNN")
}

fn golden_image(name: &str) -> (RgbImage, serde_json::Value) {
    let dir = common::test_data().join("media-goldens");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let case = index["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
    (RgbImage::new(w, h, std::fs::read(dir.join(format!("{name}.input.rgb"))).unwrap()), case)
}

#[test]
fn astronaut_face_matches_the_reference_detector() {
    let det = detector();
    let (img, case) = golden_image("astronaut-full");
    let faces = det.detect(&img).unwrap();
    let want = &case["faces"];
    assert_eq!(faces.len(), want["boxes"].as_array().unwrap().len(), "{faces:?}");
    assert_eq!(faces.len(), 1);
    let f = &faces[0];
    let wb: Vec<f32> = want["boxes"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let box_err = f.bbox.iter().zip(&wb).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let mut lm_err = 0.0f32;
    for (k, p) in f.landmarks.iter().enumerate() {
        for c in 0..2 {
            lm_err = lm_err.max((p[c] - want["landmarks"][0][k][c].as_f64().unwrap() as f32).abs());
        }
    }
    println!(
        "astronaut: box {:?} (max err {box_err:.3} px), landmarks max err {lm_err:.3} px, score {}",
        f.bbox, f.score
    );
    assert!(box_err < 2.0 && lm_err < 2.0, "box {box_err} landmarks {lm_err}");
    assert!((f.score - want["probs"][0].as_f64().unwrap() as f32).abs() < 1e-3);
}

#[test]
fn the_cat_has_no_face() {
    let det = detector();
    let (img, case) = golden_image("chelsea-full");
    assert!(case["faces"]["boxes"].as_array().unwrap().is_empty());
    assert!(det.detect(&img).unwrap().is_empty());
    // A clip without any face is reported as such.
    let pattern = common::media_dir().join("test-pattern.mp4");
    let decoded = decode_frames(
        pattern.to_str().unwrap(),
        &MediaLimits::default(),
        &[FrameSelection::AllCapped(8)],
        &Default::default(),
    )
    .unwrap();
    let crops = det.face_crops(decoded.frames.iter().map(|(i, f)| (*i, f))).unwrap();
    assert!(crops.is_empty() && crops.frames_examined == 8);
}

#[test]
fn talking_face_crop_is_stable_across_frames() {
    let det = detector();
    let path = common::media_dir().join("talking-face.mp4");
    let decoded = decode_frames(
        path.to_str().unwrap(),
        &MediaLimits::default(),
        &[FrameSelection::AllCapped(24)],
        &Default::default(),
    )
    .unwrap();
    let idx = FrameSelection::AllCapped(24).indices(decoded.total);
    let detections: Vec<_> = idx.iter().map(|&i| (i, det.detect(&decoded.frames[&i]).unwrap())).collect();
    let tracked = track_largest(&detections);
    assert_eq!(tracked.len(), idx.len(), "a face in every frame");
    let crops: Vec<RgbImage> = tracked.iter().map(|(i, f)| align_face(&decoded.frames[i], f, [112, 112])).collect();
    // 1. The box follows the face smoothly.
    let centre = |f: &emollama_media::faces::Face| ((f.bbox[0] + f.bbox[2]) / 2.0, (f.bbox[1] + f.bbox[3]) / 2.0);
    let max_step = tracked
        .windows(2)
        .map(|p| {
            let (a, b) = (centre(&p[0].1), centre(&p[1].1));
            ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
        })
        .fold(0.0f32, f32::max);
    // 2. After alignment each landmark keeps its place in the 112x112 crop from frame to
    //    frame (a similarity cannot fit five points exactly, but the misfit is steady).
    let template =
        [[38.2946f32, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];
    let aligned: Vec<Vec<(f64, f64)>> = tracked
        .iter()
        .map(|(_, f)| {
            let [a, nb, tx, b, a2, ty] = emollama_media::faces::similarity(&f.landmarks, &template);
            f.landmarks
                .iter()
                .map(|p| {
                    let (x, y) = (f64::from(p[0]), f64::from(p[1]));
                    (a * x + nb * y + tx, b * x + a2 * y + ty)
                })
                .collect()
        })
        .collect();
    let max_drift = aligned
        .windows(2)
        .flat_map(|p| {
            p[0].iter().zip(&p[1]).map(|(u, v)| ((u.0 - v.0).powi(2) + (u.1 - v.1).powi(2)).sqrt()).collect::<Vec<_>>()
        })
        .fold(0.0f64, f64::max);
    // 3. The crops look alike at face scale (8x8 blocks: texture aliasing of sub-pixel
    //    shifts averaged out); a wrong or jumping crop differs by tens of levels.
    let blocks = |img: &RgbImage| -> Vec<f64> {
        (0..14 * 14 * 3)
            .map(|k| {
                let (by, bx, c) = (k / 42, (k / 3) % 14, k % 3);
                (0..8)
                    .flat_map(|y| (0..8).map(move |x| (y, x)))
                    .map(|(y, x)| f64::from(img.pixel((bx * 8 + x) as u32, (by * 8 + y) as u32)[c]))
                    .sum::<f64>()
                    / 64.0
            })
            .collect()
    };
    let worst = crops
        .windows(2)
        .map(|p| {
            let (a, b) = (blocks(&p[0]), blocks(&p[1]));
            a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
        })
        .fold(0.0, f64::max);
    let face_w = tracked[0].1.bbox[2] - tracked[0].1.bbox[0];
    println!("{} frames: box centre step <= {max_step:.2} px (face {face_w:.0} px wide), aligned landmark drift <= {max_drift:.2} px of 112, crop block mean |delta| <= {worst:.2}/255", crops.len());
    assert!(max_step < 0.08 * face_w, "box jumps {max_step}");
    assert!(max_drift < 3.0, "aligned landmarks drift {max_drift}");
    assert!(worst < 8.0, "crop jitter {worst}");
    let t = face_tensor(&crops, [224, 224], Resize::Bilinear, 1.0 / 255.0);
    assert_eq!(t.shape(), &[crops.len(), 3, 224, 224]);
    assert!(t.iter().all(|v| (0.0..=1.0).contains(v)));
}
