//! MTCNN on ONNX Runtime with the ported cascade, against facenet-pytorch's detector;
//! the face stage (detect, then track; the gate; the main subject's track) on generated
//! clips: the talking face, two faces, a shot change, no face.

mod common;

use std::path::Path;

use emollama_bundle::Bundle;
use emollama_engines::onnx::{init_runtime, EngineOptions, ProviderPolicy};
use emollama_media::faces::{align_face, track_largest, FaceAlgorithm, FaceCrops, FaceDetector, FaceSearch, Pyramid};
use emollama_media::{
    face_tensor, read_clip, Clip, ClipRequest, FrameSelection, MediaLimits, Resize, RgbImage, SourceOptions,
};

fn detector() -> FaceDetector {
    let bundle = Bundle::open_verified(&common::bundle_dir()).unwrap();
    let rt = init_runtime(None).unwrap();
    let opts = EngineOptions { intra_threads: 2, policy: ProviderPolicy::cpu_only(), ..Default::default() };
    FaceDetector::from_bundle(rt, &bundle, &opts, &FaceSearch::default())
        .unwrap()
        .expect("the synthetic bundle ships MTCNN")
}

/// facenet-pytorch's own pyramid (`MTCNN()`'s 20 px smallest face): the reference's.
const FACENET: Pyramid = Pyramid::Facenet { min_face_px: 20.0 };

/// The first `n` frames of a clip (every frame when it has fewer).
fn frames(path: &Path, n: usize) -> Clip {
    let request = ClipRequest { frames: vec![FrameSelection::AllCapped(n)], audio: false };
    read_clip(
        path.to_str().unwrap(),
        &SourceOptions::request(MediaLimits::default(), 16_000),
        &request,
        &Default::default(),
    )
    .unwrap()
}

/// The face stage on every frame of `clip` with `search`.
fn find(det: &FaceDetector, clip: &Clip, search: &FaceSearch) -> FaceCrops {
    let frames: Vec<(usize, &RgbImage)> = clip.frames.iter().map(|(i, f)| (*i, f)).collect();
    FaceDetector::find(std::slice::from_ref(det), &frames, search, &Default::default()).unwrap()
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
    let faces = det.detect(&img, &FACENET).unwrap();
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
    assert!(det.detect(&img, &FACENET).unwrap().is_empty());
    assert!(det.detect(&img, &FaceSearch::default().pyramid()).unwrap().is_empty());
    // A clip without any face is reported as such, with the reason; each chunk of frames
    // costs one full detection and nothing more.
    let clip = frames(&common::media_dir().join("test-pattern.mp4"), 24);
    let search = FaceSearch::default();
    let found = find(&det, &clip, &search);
    assert!(found.is_empty() && found.report.frames_examined == 24, "{:?}", found.report);
    assert!(found.report.reason.as_deref().unwrap().contains("no face found in 24"), "{:?}", found.report);
    assert_eq!(found.report.full_detections, 24usize.div_ceil(search.detect_every));
}

#[test]
fn talking_face_crop_is_stable_across_frames() {
    let det = detector();
    let clip = frames(&common::media_dir().join("talking-face.mp4"), 24);
    let found = find(&det, &clip, &FaceSearch::default());
    let report = &found.report;
    assert_eq!(found.crops.len(), 24, "a face in every frame: {report:?}");
    assert_eq!((report.tracks, report.shot_changes), (1, 0), "{report:?}");
    assert!(report.full_detections <= 24 / 8 + 3, "detect, then track: {report:?}");
    let tracked: Vec<(usize, emollama_media::faces::Face)> =
        found.crops.iter().map(|(i, f, _)| (*i, f.clone())).collect();
    let crops: Vec<RgbImage> = found.crops.iter().map(|(_, _, c)| c.clone()).collect();
    // The followed faces are where a full detection on every frame puts them.
    let worst_iou = tracked
        .iter()
        .map(|(i, f)| {
            let full = det.detect(&clip.frames[i], &FaceSearch::default().pyramid()).unwrap();
            full.iter().map(|g| iou(&f.bbox, &g.bbox)).fold(0.0f32, f32::max)
        })
        .fold(1.0f32, f32::min);
    assert!(worst_iou > 0.8, "a followed box strays from the detected face: IoU {worst_iou}");
    // The legacy search (facenet's pass on every frame) finds the same face.
    let legacy = find(&det, &clip, &FaceSearch { algorithm: FaceAlgorithm::Legacy, ..Default::default() });
    assert_eq!(legacy.crops.len(), 24);
    assert_eq!(legacy.report.full_detections, 24);
    let legacy_track: Vec<_> = legacy.crops.iter().map(|(i, f, _)| (*i, f.clone())).collect();
    assert_eq!(
        legacy_track,
        track_largest(&legacy_track.iter().map(|(i, f)| (*i, vec![f.clone()])).collect::<Vec<_>>())
    );
    let aligned_again = align_face(&clip.frames[&tracked[0].0], &tracked[0].1, [112, 112]);
    assert_eq!(aligned_again, crops[0], "the crops are the aligned faces");
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
    println!("{} frames ({} full detections): box centre step <= {max_step:.2} px (face {face_w:.0} px wide), IoU with a full detection >= {worst_iou:.3}, aligned landmark drift <= {max_drift:.2} px of 112, crop block mean |delta| <= {worst:.2}/255", crops.len(), report.full_detections);
    assert!(max_step < 0.08 * face_w, "box jumps {max_step}");
    assert!(max_drift < 3.0, "aligned landmarks drift {max_drift}");
    assert!(worst < 8.0, "crop jitter {worst}");
    let t = face_tensor(&crops, [224, 224], Resize::Bilinear, 1.0 / 255.0);
    assert_eq!(t.shape(), &[crops.len(), 3, 224, 224]);
    assert!(t.iter().all(|v| (0.0..=1.0).contains(v)));
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// A clip of `seconds` made by the ffmpeg CLI with `filter`: the lavfi `sources` are its
/// first inputs, the astronaut photo (looped) the last.
fn composed(dir: &Path, name: &str, sources: &[&str], filter: &str, seconds: f64) -> std::path::PathBuf {
    let out = dir.join(name);
    let mut args: Vec<String> = ["-nostdin", "-hide_banner", "-loglevel", "error", "-y"].map(String::from).to_vec();
    for s in sources {
        args.extend(["-f", "lavfi", "-i", s].map(String::from));
    }
    args.extend(["-loop", "1", "-i"].map(String::from));
    args.push(common::media_dir().join("astronaut.png").to_str().unwrap().into());
    args.extend(["-filter_complex", filter, "-map", "[v]", "-c:v", "libx264", "-pix_fmt", "yuv420p"].map(String::from));
    // The looped photo never ends: the clip's length is given.
    args.extend(["-t".to_string(), seconds.to_string()]);
    args.push(out.to_str().unwrap().into());
    let st = std::process::Command::new("ffmpeg").args(&args).status().unwrap();
    assert!(st.success(), "ffmpeg {args:?}");
    out
}

fn centre_x(b: &[f32; 4]) -> f32 {
    (b[0] + b[2]) / 2.0
}

/// Two people: a large head at the frame's edge for the first three frames (the listener
/// turning away) and a smaller face in the middle for the whole clip (the speaker). The
/// first release followed the largest face of the first frame; the tracked search uses
/// the face seen longest.
#[test]
fn the_main_subject_is_followed_not_the_largest_face_of_the_first_frame() {
    let dir = tempfile::tempdir().unwrap();
    let clip = composed(
        dir.path(),
        "two-faces.mp4",
        &["color=c=0x808080:s=640x360:r=25:d=1.2"],
        "[1]scale=360:360,split[a][b];[b]scale=250:250[s];[0][a]overlay=x=-120:y=0:enable='lt(n,3)'[t];\
         [t][s]overlay=x=195:y=55:shortest=1,format=yuv420p[v]",
        1.2,
    );
    let det = detector();
    let clip = frames(&clip, 30);
    let found = find(&det, &clip, &FaceSearch::default());
    let chosen = found.report.chosen.clone().unwrap_or_else(|| panic!("{:?}", found.report));
    println!("tracked: {:?}", found.report);
    assert!(found.report.tracks >= 2, "both faces were followed: {:?}", found.report);
    assert!((centre_x(&chosen.mean_box) - 312.0).abs() < 40.0, "the speaker: {chosen:?}");
    assert!(found.crops.iter().all(|(_, f, _)| (centre_x(&f.bbox) - 312.0).abs() < 40.0), "only the speaker's crops");
    assert!(chosen.frames >= 27, "{chosen:?}");
    let legacy = find(&det, &clip, &FaceSearch { algorithm: FaceAlgorithm::Legacy, ..Default::default() });
    let first = &legacy.crops[0].1;
    assert!(centre_x(&first.bbox) < 150.0, "the first release began on the listener: {first:?}");
}

/// A cut to another shot ends every track, even where the next shot's face stands in the
/// same place; the frames after the cut are another person's.
#[test]
fn a_shot_change_ends_the_track() {
    let dir = tempfile::tempdir().unwrap();
    let clip = composed(
        dir.path(),
        "cut.mp4",
        &["color=c=0x202020:s=640x360:r=25:d=0.8", "color=c=0xd8d8d8:s=640x360:r=25:d=0.8"],
        "[2]scale=300:300,split[a][b];[0][a]overlay=x=170:y=30:shortest=1[s1];\
         [1][b]overlay=x=170:y=30:shortest=1[s2];[s1][s2]concat=n=2:v=1,format=yuv420p[v]",
        1.6,
    );
    let det = detector();
    let clip = frames(&clip, 40);
    let found = find(&det, &clip, &FaceSearch::default());
    println!("{:?}", found.report);
    assert_eq!(found.report.shot_changes, 1, "{:?}", found.report);
    assert_eq!(found.report.tracks, 2, "one track per shot: {:?}", found.report);
    let frames: Vec<usize> = found.crops.iter().map(|(i, _, _)| *i).collect();
    assert!(frames.iter().all(|&i| i < 20) || frames.iter().all(|&i| i >= 20), "crops from one shot: {frames:?}");
}
