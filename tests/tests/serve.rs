//! `emollama serve` as a real process on a free port: analyze by upload and by path,
//! SSE, readiness, metrics, bad requests, load, SIGTERM drain and systemd notify.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::*;

#[test]
fn analyze_by_upload_and_path_with_sse_readiness_and_metrics() {
    let srv = start(&[], &[]);
    assert_eq!(http(srv.port, "GET", "/healthz", &[], b"").status, 200, "alive at once");
    wait_ready(srv.port);
    let ready: serde_json::Value = serde_json::from_str(&http(srv.port, "GET", "/readyz", &[], b"").body).unwrap();
    for key in ["bundle", "profile", "providers", "power_mode"] {
        assert!(ready["ready"].get(key).is_some(), "readyz {key}");
    }
    // By path.
    let clip = common::media_dir().join("talking-face.mp4");
    let r = http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 8, ""));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    for key in
        ["label", "label_scores", "text", "task", "mode", "timings_ms", "tokens", "providers", "bundle", "device"]
    {
        assert!(v.get(key).is_some(), "{key}");
    }
    // By upload.
    let body = multipart(
        &std::fs::read(common::media_dir().join("test-pattern.mp4")).unwrap(),
        &[("max_new_tokens", "6"), ("preset", "eval")],
    );
    let r = http(srv.port, "POST", "/v1/analyze", &[("Content-Type", &multipart_ct())], &body);
    assert_eq!(r.status, 200, "{}", r.body);
    // SSE: pieces, then the final result.
    let r = http(srv.port, "POST", "/v1/analyze?stream=true", &[JSON], &json_path(&clip, 12, ""));
    assert_eq!(r.status, 200);
    assert!(r.headers.to_ascii_lowercase().contains("text/event-stream"));
    let events: Vec<&str> = r.body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    let first_result = events.iter().position(|e| *e == "result").expect("a final result event");
    assert!(first_result > 0 && events[..first_result].iter().all(|e| *e == "piece"), "{events:?}");
    assert_eq!(first_result, events.len() - 1);
    // Metrics parse as Prometheus text.
    let m = http(srv.port, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    let mut samples = 0;
    for line in m.body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = name_labels.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        if let Some(labels) = name_labels.split_once('{').map(|x| x.1) {
            assert!(labels.ends_with('}'), "{line}");
        }
        samples += 1;
    }
    assert!(samples > 20 && m.body.contains("emollama_requests_total{outcome=\"ok\"} 3"), "{}", m.body);
    assert!(m.body.contains("emollama_stage_seconds_bucket{stage=\"prefill\",le=\"+Inf\"} 3"));
}

#[test]
fn bad_requests_get_the_right_status_and_the_server_keeps_serving() {
    let srv = start(&["--max-upload-bytes", "1000000", "--token", "s3cret"], &[]);
    wait_ready(srv.port);
    let auth = ("Authorization", "Bearer s3cret");
    let clip = common::media_dir().join("talking-face.mp4");
    // Missing token (and a wrong one): 401; health needs none.
    assert_eq!(http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 8, "")).status, 401);
    assert_eq!(
        http(srv.port, "POST", "/v1/analyze", &[JSON, ("Authorization", "Bearer nope")], &json_path(&clip, 8, ""))
            .status,
        401
    );
    assert_eq!(http(srv.port, "GET", "/healthz", &[], b"").status, 200);
    let json = || vec![("Content-Type", "application/json".to_string())];
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    /// (what, expected status, headers, body)
    type Case<'a> = (&'a str, u16, Vec<(&'a str, String)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        ("garbage media", 422, vec![("Content-Type", multipart_ct())], multipart(&garbage, &[])),
        ("empty upload", 400, vec![("Content-Type", multipart_ct())], multipart(b"", &[])),
        ("wrong content type", 415, vec![("Content-Type", "text/plain".into())], b"hello".to_vec()),
        ("malformed JSON", 400, json(), b"{\"path\": ".to_vec()),
        ("unknown field", 400, json(), b"{\"pth\": \"/x\"}".to_vec()),
        ("path outside the allowed dirs", 403, json(), b"{\"path\": \"/etc/passwd\"}".to_vec()),
        (
            "traversal out of an allowed dir",
            403,
            json(),
            format!("{{\"path\": \"{}/../../../../etc/passwd\"}}", common::media_dir().display()).into_bytes(),
        ),
        (
            "missing file in an allowed dir",
            404,
            json(),
            format!("{{\"path\": \"{}/nope.mp4\"}}", common::media_dir().display()).into_bytes(),
        ),
        ("URLs not allowed", 403, json(), b"{\"url\": \"http://127.0.0.1:9/x.mp4\"}".to_vec()),
        ("bad preset", 400, json(), json_path(&clip, 8, ", \"preset\": \"turbo\"")),
    ];
    for (what, status, headers, body) in cases {
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(auth);
        let r = http(srv.port, "POST", "/v1/analyze", &h, &body);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        let v: serde_json::Value =
            serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{what}: not JSON: {}", r.body));
        assert!(v["error"]["code"].is_string() && v["error"]["message"].is_string(), "{what}");
        println!("{what}: {status} {}", v["error"]["code"]);
        assert_eq!(http(srv.port, "GET", "/healthz", &[], b"").status, 200, "alive after {what}");
    }
    assert_eq!(http(srv.port, "GET", "/nowhere", &[], b"").status, 404);
    // An oversized upload is refused before it is fully sent.
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!("POST /v1/analyze HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer s3cret\r\nContent-Type: {}\r\nContent-Length: 100000000\r\n\r\n", multipart_ct());
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0usize;
    while sent < (3 << 20) {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let r = read_response(&mut s);
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(sent < 100_000_000);
    // Still serving.
    let r = http(srv.port, "POST", "/v1/analyze", &[JSON, auth], &json_path(&clip, 8, ""));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn load_gets_only_200_and_503_and_memory_stays_put() {
    let srv = start(&["--max-concurrency", "1", "--max-queue", "2"], &[]);
    wait_ready(srv.port);
    let clip = common::media_dir().join("test-pattern.mp4");
    let body = json_path(&clip, 8, "");
    assert_eq!(http(srv.port, "POST", "/v1/analyze", &[JSON], &body).status, 200, "warm-up");
    let before = rss_kb(srv.child.id());
    let port = srv.port;
    let (clients, rounds) = (8, 3);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                (0..rounds)
                    .map(|_| {
                        let t = Instant::now();
                        let r = http(port, "POST", "/v1/analyze", &[JSON], &body);
                        if r.status == 503 {
                            assert!(r.headers.to_ascii_lowercase().contains("retry-after"), "503 with Retry-After");
                        }
                        (r.status, t.elapsed().as_secs_f64() * 1e3)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u16, f64)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let wall = started.elapsed();
    let after = rss_kb(srv.child.id());
    let ok: Vec<f64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    let busy = results.iter().filter(|r| r.0 == 503).count();
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 503), "{results:?}");
    assert!(!ok.is_empty() && busy > 0, "{} ok, {busy} busy", ok.len());
    let mut sorted = ok.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |q: f64| sorted[((q * (sorted.len() - 1) as f64).round()) as usize];
    println!(
        "load: {} requests from {clients} clients in {:.1} s: {} x 200, {busy} x 503; latency of 200s p50 {:.0} ms p99 {:.0} ms; RSS {} MB before, {} MB after",
        results.len(), wall.as_secs_f64(), ok.len(), pct(0.5), pct(0.99), before / 1024, after / 1024
    );
    // Stated margin: 25 % + 32 MB (allocator caches), no growth per request beyond it.
    assert!(after <= before + before / 4 + 32 * 1024, "RSS {before} kB -> {after} kB");
    let m = http(port, "GET", "/metrics", &[], b"").body;
    assert!(m.contains(&format!("emollama_requests_total{{outcome=\"busy\"}} {busy}")), "{m}");
}

#[test]
fn sigterm_lets_the_running_request_finish_and_exits_zero() {
    let mut srv = start(&[], &[]);
    wait_ready(srv.port);
    let port = srv.port;
    let clip = common::media_dir().join("talking-face.mp4");
    let body = json_path(&clip, 64, "");
    let req = std::thread::spawn(move || http(port, "POST", "/v1/analyze", &[JSON], &body));
    // Signal once the request is running.
    let started = Instant::now();
    while !http(port, "GET", "/metrics", &[], b"").body.contains("emollama_in_flight 1") {
        assert!(started.elapsed() < Duration::from_secs(30), "the request never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = Command::new("kill").args(["-TERM", &srv.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let r = req.join().unwrap();
    assert_eq!(r.status, 200, "the in-flight request finishes: {}", r.body);
    let code = srv.child.wait().unwrap();
    assert!(code.success(), "exit status {code:?}");
    srv.port = 0;
}

#[test]
fn systemd_gets_ready_and_watchdog_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _srv = start(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")]);
    let mut seen = Vec::new();
    let started = Instant::now();
    while !(seen.iter().any(|m: &String| m == "READY=1") && seen.iter().any(|m| m == "WATCHDOG=1")) {
        assert!(started.elapsed() < Duration::from_secs(60), "got {seen:?}");
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    println!("notifications: {seen:?}");
    assert!(seen.iter().any(|m| m.starts_with("STATUS=")));
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let srv = start(&[], &[]);
    wait_ready(srv.port);
    let clip = common::media_dir().join("test-pattern.mp4");
    // A long sampled answer, streamed; the client leaves after the first piece.
    let body = json_path(&clip, 500, ", \"preset\": \"demo\", \"temperature\": 1.5, \"scores\": false");
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!("POST /v1/analyze?stream=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("event: piece") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended before a piece");
        seen.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let started = Instant::now();
    loop {
        let m = http(srv.port, "GET", "/metrics", &[], b"").body;
        if m.contains("emollama_requests_total{outcome=\"cancelled\"} 1") {
            let generated: f64 = m
                .lines()
                .find(|l| l.starts_with("emollama_generated_tokens_total "))
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            println!("cancelled after {generated} of 500 tokens");
            assert!(generated < 500.0);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no cancellation recorded: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A .npy file as numpy writes it: float32, C order, a version 1 header.
fn write_npy(path: &std::path::Path, shape: &[usize]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    let n: usize = shape.iter().product();
    bytes.extend((0..n).flat_map(|i| (0.01 * i as f32).to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn features_by_path_under_the_same_rules_as_media() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::bundle_dir().join("manifest.json")).unwrap()).unwrap();
    let projector = manifest["files"].as_array().unwrap().iter().find(|f| f["role"] == "audio_projector").unwrap();
    let width = projector["inputs"][0]["shape"][1].as_u64().unwrap() as usize;
    let (allowed, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_npy(&allowed.path().join("audio.npy"), &[width]);
    write_npy(&allowed.path().join("wrong.npy"), &[2, width]);
    write_npy(&outside.path().join("audio.npy"), &[1, width]);
    let srv = start(&["--allowed-dir", allowed.path().to_str().unwrap()], &[]);
    wait_ready(srv.port);
    // The sample media folder is allowed by `start`, the features folder by the flag.
    let clip = common::media_dir().join("talking-face.mp4");
    let with = |f: &std::path::Path| format!(", \"preset\": \"fast\", \"audio_features\": \"{}\"", f.display());
    let r =
        http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 4, &with(&allowed.path().join("audio.npy"))));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let notes = v["notes"].to_string();
    assert!(notes.contains("the audio row is from pre-extracted features"), "{notes}");
    assert!(v["media"]["audio_s"].is_null(), "HuBERT's input was not decoded: {}", v["media"]);
    assert!(v["media"]["frames_decoded"].as_u64().unwrap() >= 1, "{}", v["media"]);
    let r =
        http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 4, &with(&allowed.path().join("wrong.npy"))));
    assert_eq!((r.status, error_code(&r)), (422, "invalid_features".to_string()), "{}", r.body);
    assert!(r.body.contains("shape [2, "), "{}", r.body);
    let r =
        http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 4, &with(&outside.path().join("audio.npy"))));
    assert_eq!((r.status, error_code(&r)), (403, "path_not_allowed".to_string()), "{}", r.body);
}

/// N3, N4: a features file is a regular file of at most a `[width]` array's size. A FIFO
/// (whose open used to block for ever, holding the only slot while `/readyz` said ready),
/// a folder and a file hundreds of megabytes long are refused at once, and the service
/// goes on serving. (A device is refused alike: `emollama_bundle::files`' tests.)
#[test]
fn features_files_must_be_regular_and_small() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::bundle_dir().join("manifest.json")).unwrap()).unwrap();
    let projector = manifest["files"].as_array().unwrap().iter().find(|f| f["role"] == "local_projector").unwrap();
    let width = projector["inputs"][0]["shape"][1].as_u64().unwrap() as usize;
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("mkfifo").arg(dir.path().join("pipe.npy")).status().unwrap();
    assert!(st.success());
    std::fs::create_dir(dir.path().join("folder.npy")).unwrap();
    // A valid header, then 600 MB (sparse: nothing is written).
    let big = dir.path().join("big.npy");
    write_npy(&big, &[width]);
    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(600 << 20).unwrap();
    let srv = start(&["--allowed-dir", dir.path().to_str().unwrap(), "--request-timeout-s", "4"], &[]);
    wait_ready(srv.port);
    let clip = common::media_dir().join("talking-face.mp4");
    let before = rss_kb(srv.child.id());
    for (file, says) in [("pipe.npy", "FIFO"), ("folder.npy", "a folder"), ("big.npy", "over the")] {
        let extra = format!(", \"preset\": \"fast\", \"local_features\": \"{}\"", dir.path().join(file).display());
        let started = Instant::now();
        let r = http(srv.port, "POST", "/v1/analyze", &[JSON], &json_path(&clip, 4, &extra));
        assert_eq!((r.status, error_code(&r).as_str()), (422, "invalid_features"), "{file}: {}", r.body);
        assert!(r.body.contains(says), "{file}: {}", r.body);
        assert!(started.elapsed() < Duration::from_secs(2), "{file}: {:?}", started.elapsed());
    }
    let grown = rss_kb(srv.child.id()) as i64 - before as i64;
    assert!(grown < 20 * 1024, "the 600 MB file was read: RSS +{grown} kB");
    assert_eq!(http(srv.port, "POST", "/v1/analyze", &[JSON], &quick_request()).status, 200, "the slot is free");
    assert_eq!(metric(srv.port, "emollama_in_flight"), 0.0);
    assert_eq!(http(srv.port, "GET", "/readyz", &[], b"").status, 200);
}

/// Item 6 of the second hardening round: memory stays flat under repeated full-mode
/// uploads from 8 clients (faces, all four encoders). It used to grow with the requests
/// (699 → 988 MB over 800): per-thread malloc arenas kept what the face detectors and
/// encoders freed, and ONNX Runtime kept a memory pattern and arena growth per input
/// shape. RSS is read once the service has been idle for a few seconds (it hands free
/// memory back after work); after 30 requests of warm-up, 150 more may add at most 24 MB.
#[test]
fn memory_stays_flat_under_repeated_full_mode_uploads() {
    let _serial = common::serial();
    let srv = start(&[], &[]);
    wait_ready(srv.port);
    let port = srv.port;
    let clips: Vec<Vec<u8>> = ["talking-face.mp4", "test-pattern.mp4", "no-audio.mp4"]
        .iter()
        .map(|c| multipart(&std::fs::read(common::media_dir().join(c)).unwrap(), &[("preset", "fast")]))
        .collect();
    let clips = std::sync::Arc::new(clips);
    let settled_rss = |pid: u32| {
        std::thread::sleep(Duration::from_secs(5));
        rss_kb(pid)
    };
    let rest = rss_kb(srv.child.id());
    let run = |n: usize| {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|k| {
                let (clips, done) = (clips.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut i = k;
                    while done.load(std::sync::atomic::Ordering::SeqCst) < n {
                        let r = http(port, "POST", "/v1/analyze", &[("Content-Type", &multipart_ct())], &clips[i % 3]);
                        match r.status {
                            200 => {
                                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                i += 8;
                            }
                            503 => std::thread::sleep(Duration::from_millis(100)),
                            s => panic!("{s}: {}", r.body),
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
    };
    run(30);
    let warm = settled_rss(srv.child.id());
    run(150);
    let after = settled_rss(srv.child.id());
    println!(
        "memory: {} MB at rest, {} MB after 30 full-mode uploads, {} MB after 150 more ({:+} MB)",
        rest / 1024,
        warm / 1024,
        after / 1024,
        (after as i64 - warm as i64) / 1024
    );
    assert!(after <= warm + 24 * 1024, "RSS {warm} kB -> {after} kB");
}
