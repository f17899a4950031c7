//! Front-end time (decode + select + preprocess) against the ffmpeg CLI decoding and
//! scaling the same frames, side by side, alternating, medians. Not a test.
//!
//! usage: cargo bench -p emollama-media --bench frontend -- [RUNS]
//! It makes a 10 s 720p H.264 clip (testsrc2) in a temporary folder.

use std::process::Command;
use std::time::Instant;

use emollama_media::{
    global_tensor, read_clip, temporal_tensor, ClipRequest, FrameSelection, MediaLimits, Resize, SourceOptions,
};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ffmpeg(args: &[&str]) {
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success());
}

fn main() {
    let runs: usize = std::env::args().skip(1).find(|a| a != "--bench").map_or(7, |s| s.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("720p-10s.mp4");
    let clip_s = clip.to_str().unwrap();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1280x720:rate=25:duration=10",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        clip_s,
    ]);
    let limits = MediaLimits::default();
    let sels = [FrameSelection::First, FrameSelection::VideoMae { segments: 8, frames_per_segment: 2 }];
    let total = 250;
    let idx = FrameSelection::VideoMae { segments: 8, frames_per_segment: 2 }.indices(total);
    let mean = [0.48145466, 0.4578275, 0.40821073];
    let std = [0.26862954, 0.261_302_6, 0.275_777_1];

    // Ours: one demux (packets kept, counted), the selected frames decoded to RGB, 448
    // bicubic + CLIP norm for the first frame, 16 frames at 224 bilinear for the clip tensor.
    let opts = SourceOptions::request(limits, 16_000);
    let request = ClipRequest { frames: sels.to_vec(), audio: false };
    let ours = || {
        let t = Instant::now();
        let d = read_clip(clip_s, &opts, &request, &Default::default()).unwrap();
        let g = global_tensor(d.select(FrameSelection::First)[0], [448, 448], Resize::Bicubic, mean, std);
        let frames: Vec<_> =
            d.select(FrameSelection::VideoMae { segments: 8, frames_per_segment: 2 }).into_iter().cloned().collect();
        let c = temporal_tensor(&frames, [224, 224], Resize::Bilinear, 1.0 / 255.0);
        assert_eq!((g.len(), c.shape()[2]), (3 * 448 * 448, 16));
        t.elapsed().as_secs_f64()
    };
    // The CLI: decode everything, keep the same frames, scale them (swscale bicubic/bilinear), raw RGB out.
    let select: String = idx.iter().map(|i| format!("eq(n\\,{i})")).collect::<Vec<_>>().join("+");
    let cli = || {
        let t = Instant::now();
        let null = if cfg!(windows) { "NUL" } else { "/dev/null" };
        ffmpeg(&["-i", clip_s, "-filter_complex",
            &format!("[0:v]split=2[a][b];[a]select='eq(n\\,0)',scale=448:448:flags=bicubic[g];[b]select='{select}',scale=224:224:flags=bilinear[c]"),
            "-map", "[g]", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", null,
            "-map", "[c]", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", null]);
        t.elapsed().as_secs_f64()
    };
    ours();
    cli();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(ours());
        b.push(cli());
    }
    let (ma, mb) = (median(&mut a), median(&mut b));
    println!(
        "10 s 720p H.264 (250 frames), first frame -> 448 bicubic + 16 VideoMAE frames -> 224 bilinear, {runs} runs"
    );
    println!("emollama front end : median {:.0} ms", ma * 1e3);
    println!("ffmpeg CLI         : median {:.0} ms", mb * 1e3);
    println!("ratio ours/CLI     : {:.2}", ma / mb);
}
