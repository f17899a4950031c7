//! The media front end against the ffmpeg CLI (frames and 16 kHz audio), against
//! PIL/torchvision (resizing), and on bad input.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use emollama_engines::CancelToken;
use emollama_media::{
    global_tensor, probe, read_clip, resize_pil, Clip, ClipRequest, FrameSelection, MediaError, MediaLimits, Resize,
    RgbImage, SourceOptions,
};

/// The frames of `selections` (no audio), as a request reads them.
fn decode_frames(
    source: &str,
    limits: &MediaLimits,
    selections: &[FrameSelection],
    cancel: &CancelToken,
) -> Result<Clip, MediaError> {
    let request = ClipRequest { frames: selections.to_vec(), audio: false };
    read_clip(source, &SourceOptions::request(limits.clone(), 16_000), &request, cancel)
}

/// The audio alone at 16 kHz, as a request reads it: `NoAudio` when there is none.
fn decode_audio(source: &str, limits: &MediaLimits, cancel: &CancelToken) -> Result<Vec<f32>, MediaError> {
    let request = ClipRequest { frames: Vec::new(), audio: true };
    let clip = read_clip(source, &SourceOptions::request(limits.clone(), 16_000), &request, cancel)?;
    clip.audio.ok_or(MediaError::NoAudio { source_name: source.into() })
}

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Real clips made with the ffmpeg CLI once per test run: containers, codecs, odd
/// sizes, rotation metadata, variable frame rate, 10-bit, gray, stereo 48 kHz.
fn clips() -> &'static (tempfile::TempDir, Vec<(String, PathBuf)>) {
    static CLIPS: OnceLock<(tempfile::TempDir, Vec<(String, PathBuf)>)> = OnceLock::new();
    CLIPS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let src = "testsrc2=size=160x120:rate=25:duration=1.2";
        let tone = "sine=frequency=330:sample_rate=48000:duration=1.2";
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let mut made = Vec::new();
        let mut make = |name: &str, args: Vec<String>| {
            let path = p(name);
            let mut full: Vec<String> = args;
            full.push(s(&path));
            ffmpeg(&full.iter().map(String::as_str).collect::<Vec<_>>());
            made.push((name.to_string(), path));
        };
        let lavfi = |v: &str| vec!["-f".to_string(), "lavfi".into(), "-i".into(), v.into()];
        let with_audio = |v: &str, a: &str| [lavfi(v), lavfi(a)].concat();
        let sv = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        make(
            "h264-aac.mp4",
            [
                with_audio(src, tone),
                sv(&["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-shortest"]),
            ]
            .concat(),
        );
        make(
            "odd-151x97.mkv",
            [lavfi("testsrc=size=151x97:rate=25:duration=1"), sv(&["-c:v", "ffv1", "-pix_fmt", "yuv444p"])].concat(),
        );
        make(
            "odd-151x97-420.mkv",
            [lavfi("testsrc=size=151x97:rate=25:duration=1"), sv(&["-c:v", "ffv1", "-pix_fmt", "yuv420p"])].concat(),
        );
        make(
            "hevc.mkv",
            [
                with_audio(src, tone),
                sv(&[
                    "-c:v",
                    "libx265",
                    "-x265-params",
                    "log-level=none",
                    "-pix_fmt",
                    "yuv420p",
                    "-c:a",
                    "libopus",
                    "-shortest",
                ]),
            ]
            .concat(),
        );
        make(
            "vp9.webm",
            [
                with_audio(src, tone),
                sv(&["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus", "-shortest"]),
            ]
            .concat(),
        );
        make(
            "mpeg4-mp3.avi",
            [with_audio(src, tone), sv(&["-c:v", "mpeg4", "-c:a", "libmp3lame", "-shortest"])].concat(),
        );
        make(
            "pcm.mov",
            [with_audio(src, tone), sv(&["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", "-shortest"])]
                .concat(),
        );
        make(
            "10bit.mkv",
            [lavfi(src), sv(&["-c:v", "libx265", "-x265-params", "log-level=none", "-pix_fmt", "yuv420p10le"])]
                .concat(),
        );
        make("gray.mkv", [lavfi(src), sv(&["-c:v", "ffv1", "-pix_fmt", "gray"])].concat());
        // Variable frame rate: timestamps jitter, frames kept as they are.
        make(
            "vfr.mkv",
            [
                lavfi(src),
                sv(&[
                    "-vf",
                    "setpts='PTS+0.3*random(0)/TB'",
                    "-fps_mode",
                    "passthrough",
                    "-c:v",
                    "libx264",
                    "-pix_fmt",
                    "yuv420p",
                ]),
            ]
            .concat(),
        );
        // Rotation metadata (display matrix) on an H.264 stream.
        let base = p("rot-base.mp4");
        ffmpeg(
            &[
                lavfi("testsrc2=size=96x64:rate=25:duration=0.6"),
                sv(&["-c:v", "libx264", "-pix_fmt", "yuv420p", &s(&base)]),
            ]
            .concat()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        );
        for deg in [90, 180, 270] {
            make(
                &format!("rot{deg}.mp4"),
                sv(&["-i", &s(&base), "-c", "copy", "-metadata:s:v:0", &format!("rotate={deg}")]),
            );
        }
        (dir, made)
    })
}

fn cli_frames(path: &Path) -> Vec<u8> {
    ffmpeg(&["-i", path.to_str().unwrap(), "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
}

#[test]
fn frames_are_byte_identical_to_the_ffmpeg_cli() {
    let limits = MediaLimits::default();
    let mut clips = clips().1.clone();
    clips.push(("talking-face.mp4".into(), common::media_dir().join("talking-face.mp4")));
    clips.push(("test-pattern.mp4".into(), common::media_dir().join("test-pattern.mp4")));
    for (name, path) in &clips {
        let ours =
            decode_frames(path.to_str().unwrap(), &limits, &[FrameSelection::AllCapped(10_000)], &Default::default())
                .unwrap();
        let cli = cli_frames(path);
        let first = ours.frames.values().next().unwrap();
        let frame_bytes = first.data.len();
        assert_eq!(cli.len() % frame_bytes, 0, "{name}: CLI frame size");
        assert_eq!(ours.total, cli.len() / frame_bytes, "{name}: frame count");
        for (i, img) in &ours.frames {
            assert!(img.data == cli[i * frame_bytes..(i + 1) * frame_bytes], "{name}: frame {i} differs from the CLI");
        }
        println!(
            "{name}: {} frames {}x{} identical to the CLI (rotation {})",
            ours.total,
            first.width,
            first.height,
            ours.info.video.as_ref().unwrap().rotation
        );
    }
}

#[test]
fn rotation_metadata_is_honoured() {
    let limits = MediaLimits::default();
    let mut seen = Vec::new();
    for (name, path) in &clips().1 {
        if let Some(deg) =
            name.strip_prefix("rot").and_then(|s| s.strip_suffix(".mp4")).and_then(|d| d.parse::<u32>().ok())
        {
            seen.push(deg);
            let info = probe(path.to_str().unwrap(), &limits, &Default::default()).unwrap();
            assert_eq!(info.video.as_ref().unwrap().rotation, deg, "{name}");
            let frames =
                decode_frames(path.to_str().unwrap(), &limits, &[FrameSelection::First], &Default::default()).unwrap();
            let f = &frames.frames[&0];
            let expect = if deg == 180 { (96, 64) } else { (64, 96) };
            assert_eq!((f.width, f.height), expect, "{name}");
        }
    }
    assert_eq!(seen, vec![90, 180, 270], "every rotated clip was made and checked");
}

#[test]
fn selections_pick_the_cli_frames() {
    let limits = MediaLimits::default();
    let path = common::media_dir().join("talking-face.mp4");
    let cli = cli_frames(&path);
    let sels = [
        FrameSelection::First,
        FrameSelection::Middle,
        FrameSelection::VideoMae { segments: 8, frames_per_segment: 2 },
        FrameSelection::Uniform(5),
    ];
    let ours = decode_frames(path.to_str().unwrap(), &limits, &sels, &Default::default()).unwrap();
    let fb = ours.frames[&0].data.len();
    assert_eq!(ours.total, cli.len() / fb);
    for sel in sels {
        let idx = sel.indices(ours.total);
        let frames = ours.select(sel);
        assert_eq!(frames.len(), idx.len(), "{sel:?}");
        for (img, i) in frames.iter().zip(&idx) {
            assert!(img.data == cli[i * fb..(i + 1) * fb], "{sel:?} frame {i}");
        }
    }
    assert_eq!(ours.select(FrameSelection::VideoMae { segments: 8, frames_per_segment: 2 }).len(), 16);
    // Only the needed frames were converted.
    assert!(ours.frames.len() < ours.total);
}

fn cli_audio(path: &Path) -> Vec<f32> {
    let raw = ffmpeg(&["-i", path.to_str().unwrap(), "-vn", "-ac", "1", "-ar", "16000", "-f", "f32le", "-"]);
    raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

#[test]
fn audio_is_sample_exact_with_the_ffmpeg_cli() {
    let limits = MediaLimits::default();
    let mut clips: Vec<(String, PathBuf)> = clips()
        .1
        .iter()
        .filter(|(n, _)| ["h264-aac.mp4", "hevc.mkv", "vp9.webm", "mpeg4-mp3.avi", "pcm.mov"].contains(&n.as_str()))
        .cloned()
        .collect();
    assert_eq!(clips.len(), 5, "every clip with audio was made");
    clips.push(("talking-face.mp4".into(), common::media_dir().join("talking-face.mp4")));
    clips.push(("speech.wav".into(), common::media_dir().join("speech.wav")));
    for (name, path) in &clips {
        let ours = decode_audio(path.to_str().unwrap(), &limits, &Default::default()).unwrap();
        let cli = cli_audio(path);
        assert_eq!(ours.len(), cli.len(), "{name}: sample count");
        let same = ours.iter().zip(&cli).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: max diff {}", common::max_abs_diff(&ours, &cli));
        println!("{name}: {} samples at 16 kHz identical to the CLI", ours.len());
    }
}

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(common::test_data().join("media-goldens").join(name)).unwrap()
}

#[test]
fn resizing_matches_pil_and_torchvision() {
    let index: serde_json::Value = serde_json::from_slice(&golden("index.json")).unwrap();
    let mean = [0.48145466f32, 0.4578275, 0.40821073];
    let std = [0.26862954f32, 0.261_302_6, 0.275_777_1];
    for case in index["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (w, h) = (case["width"].as_u64().unwrap() as u32, case["height"].as_u64().unwrap() as u32);
        let input = RgbImage::new(w, h, golden(&format!("{name}.input.rgb")));
        for (filter, size, file) in [(Resize::Bicubic, 448, "bicubic448"), (Resize::Bilinear, 224, "bilinear224")] {
            let ours = resize_pil(&input, size, size, filter);
            let want = golden(&format!("{name}.{file}.rgb"));
            let diffs: Vec<i32> =
                ours.data.iter().zip(&want).map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs()).collect();
            let max = diffs.iter().copied().max().unwrap();
            let mean_abs = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
            println!("{name} {file}: max {max}/255, mean {mean_abs:.4}/255");
            // Bit-exact against the official environment's Pillow (10.1.0), portrait
            // downscales included (Pillow 13 orders its passes differently there).
            assert_eq!(max, 0, "{name} {file}: max {max}/255, mean {mean_abs}/255");
        }
        let t = global_tensor(&input, [448, 448], Resize::Bicubic, mean, std);
        let want: Vec<f32> = golden(&format!("{name}.global.f32"))
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert!(common::max_abs_diff(t.as_slice().unwrap(), &want) < 1e-5, "{name}: normalised tensor");
        // Emotion-LLaMA-v2's temporal frame: bilinear 224, ImageNet statistics.
        let v2 = global_tensor(&input, [224, 224], Resize::Bilinear, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let want: Vec<f32> = golden(&format!("{name}.temporal_v2.f32"))
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert!(common::max_abs_diff(v2.as_slice().unwrap(), &want) < 1e-5, "{name}: v2 temporal frame");
    }
}

#[test]
fn no_audio_is_reported_not_an_error_deep_inside() {
    let limits = MediaLimits::default();
    let path = common::media_dir().join("no-audio.mp4");
    let info = probe(path.to_str().unwrap(), &limits, &Default::default()).unwrap();
    assert!(info.audio.is_none() && info.video.is_some());
    assert!(matches!(
        decode_audio(path.to_str().unwrap(), &limits, &Default::default()),
        Err(MediaError::NoAudio { .. })
    ));
    let speech = common::media_dir().join("speech.wav");
    assert!(matches!(
        decode_frames(speech.to_str().unwrap(), &limits, &[FrameSelection::First], &Default::default()),
        Err(MediaError::NoVideo { .. })
    ));
}

#[test]
fn bad_media_gets_specific_errors() {
    let limits = MediaLimits::default();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let frames = |path: &Path, limits: &MediaLimits| {
        decode_frames(&s(path), limits, &[FrameSelection::First], &Default::default())
    };

    assert!(matches!(frames(&p("missing.mp4"), &limits), Err(MediaError::NotFound(_))));
    std::fs::write(p("empty.mp4"), b"").unwrap();
    assert!(matches!(frames(&p("empty.mp4"), &limits), Err(MediaError::Empty(_))));
    std::fs::write(
        p("random.mp4"),
        (0..20000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        matches!(frames(&p("random.mp4"), &limits), Err(MediaError::Open { .. })),
        "{:?}",
        frames(&p("random.mp4"), &limits)
    );
    let talking = std::fs::read(common::media_dir().join("talking-face.mp4")).unwrap();
    std::fs::write(p("truncated.mp4"), &talking[..talking.len() / 3]).unwrap();
    let t = frames(&p("truncated.mp4"), &limits);
    assert!(matches!(t, Err(MediaError::Open { .. }) | Err(MediaError::NoFrames { .. })), "{t:?}");
    let png = common::media_dir().join("astronaut.png");
    assert!(matches!(frames(&png, &limits), Err(MediaError::StillImage { .. })), "{:?}", frames(&png, &limits));
    // Over the limits, refused at probe time before decoding.
    let small = MediaLimits { max_width: 100, max_height: 100, ..MediaLimits::default() };
    let clip = common::media_dir().join("test-pattern.mp4");
    assert!(matches!(frames(&clip, &small), Err(MediaError::ResolutionTooLarge { width: 320, height: 240, .. })));
    let short = MediaLimits { max_duration_s: 0.5, ..MediaLimits::default() };
    assert!(matches!(frames(&clip, &short), Err(MediaError::TooLong { .. })));
    let tiny = MediaLimits { max_file_bytes: 1000, ..MediaLimits::default() };
    assert!(matches!(frames(&clip, &tiny), Err(MediaError::FileTooLarge { .. })));
    // A stream with zero frames.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=25",
        "-frames:v",
        "0",
        "-c:v",
        "libx264",
        &s(&p("zero.mp4")),
    ]);
    let z = frames(&p("zero.mp4"), &limits);
    assert!(
        matches!(z, Err(MediaError::NoFrames { .. }) | Err(MediaError::NoVideo { .. }) | Err(MediaError::Open { .. })),
        "{z:?}"
    );
}

#[test]
fn network_inputs_fail_fast_or_time_out() {
    // Nothing listens on this port: refused at once.
    let limits = MediaLimits { network_timeout_s: 2.0, ..MediaLimits::default() };
    let started = Instant::now();
    let r = probe("http://127.0.0.1:9/clip.mp4", &limits, &Default::default());
    assert!(matches!(r, Err(MediaError::Open { .. }) | Err(MediaError::Timeout { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A server that accepts and never answers: the deadline ends the wait.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        let _ = conn.write_all(b"");
    });
    let started = Instant::now();
    let r = probe(&format!("http://127.0.0.1:{port}/clip.mp4"), &limits, &Default::default());
    let waited = started.elapsed();
    assert!(matches!(r, Err(MediaError::Timeout { .. }) | Err(MediaError::Open { .. })), "{r:?}");
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    server.join().unwrap();
}

/// An HTTP/1.0 server answering every request with `data`, after `delay`.
fn serve_bytes(data: Vec<u8>, delay: Duration) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 4096];
                    let _ = std::io::Read::read(&mut conn, &mut buf);
                    std::thread::sleep(delay);
                    let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", data.len());
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&data);
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        served
    });
    (port, handle)
}

/// A URL is fetched once, byte for byte (the container, rotation included, exactly as
/// served); the limits and the cancel token apply while it downloads.
#[test]
fn a_url_is_fetched_byte_for_byte_under_its_limits() {
    let clip = common::media_dir().join("talking-face.mp4");
    let data = std::fs::read(&clip).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let limits = MediaLimits { network_timeout_s: 3.0, ..MediaLimits::default() };
    let (port, server) = serve_bytes(data.clone(), Duration::ZERO);
    let dest = dir.path().join("fetched");
    let url = format!("http://127.0.0.1:{port}/clip.mp4");
    let n = emollama_media::fetch_url(&url, &dest, &limits, &Default::default()).unwrap();
    assert_eq!(n as usize, data.len());
    assert_eq!(std::fs::read(&dest).unwrap(), data, "byte for byte");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
    let over = MediaLimits { max_file_bytes: 1000, ..limits.clone() };
    let r = emollama_media::fetch_url(&url, &dir.path().join("big"), &over, &Default::default());
    assert!(matches!(r, Err(MediaError::FileTooLarge { .. })), "{r:?}");
    assert_eq!(server.join().unwrap(), 2, "one connection per fetch");
    // Cancelled while the server is slow to answer: out at once, as Cancelled.
    let (port, server) = serve_bytes(data, Duration::from_secs(2));
    let cancel = emollama_engines::CancelToken::new();
    let c = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c.cancel();
    });
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/clip.mp4");
    let r = emollama_media::fetch_url(&url, &dir.path().join("cancelled"), &limits, &cancel);
    assert!(matches!(r, Err(MediaError::Cancelled { .. })), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    let _ = server.join();
}

/// A cancelled token stops decoding between packets, as `Cancelled`.
#[test]
fn a_cancelled_request_stops_decoding() {
    let clip = common::media_dir().join("talking-face.mp4");
    let cancel = emollama_engines::CancelToken::new();
    cancel.cancel();
    let limits = MediaLimits::default();
    let r = decode_frames(clip.to_str().unwrap(), &limits, &[FrameSelection::AllCapped(64)], &cancel);
    assert!(matches!(r, Err(MediaError::Cancelled { .. })), "{r:?}");
    let r = decode_audio(clip.to_str().unwrap(), &limits, &cancel);
    assert!(matches!(r, Err(MediaError::Cancelled { .. })), "{r:?}");
}

/// A local file may name local files only: an uploaded playlist whose segments are URLs
/// makes FFmpeg fetch nothing (the service's uploads cannot reach the network). FFmpeg
/// 5.1 already limits a local playlist's segments to `file,crypto,data`; the runtime's
/// `protocol_whitelist=file` keeps that true whatever FFmpeg's defaults become.
#[test]
fn a_local_playlist_cannot_reach_the_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let playlist = dir.path().join("upload-0");
    std::fs::write(
        &playlist,
        format!("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nhttp://127.0.0.1:{port}/seg0.ts\n#EXT-X-ENDLIST\n"),
    )
    .unwrap();
    let r = decode_frames(
        playlist.to_str().unwrap(),
        &MediaLimits::default(),
        &[FrameSelection::First],
        &Default::default(),
    );
    assert!(r.is_err(), "a playlist of URLs decoded: {:?}", r.map(|d| d.total));
    assert!(listener.accept().is_err(), "FFmpeg connected to the playlist's URL");
}
