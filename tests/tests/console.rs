//! The web console at `/`: its files and headers over raw HTTP, the API calls it makes,
//! and the page itself in a real browser (Debian's chromium, headless, driven by
//! Playwright: tests/clients/console_browser.py) against the service with a token and a
//! `[[watch]]` source fed over UDP by FFmpeg. Screenshots of each state go to
//! `test-data/console-screenshots/`.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::server::*;

const TOKEN: &str = "console-test-token";

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The service with a token and one `[[watch]]` source, `cam`, listening on `udp_port`.
fn serve_with_camera(dir: &Path, udp_port: u16, extra: &[&str]) -> Server {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "token = \"{TOKEN}\"\n[[watch]]\nname = \"cam\"\nsource = \"udp://127.0.0.1:{udp_port}\"\n\
             window_s = 1.0\nhop_s = 1.0\nstall_timeout_s = 1.0\n"
        ),
    )
    .unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = start(&args, &[]);
    wait_ready(server.port);
    server
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn the_console_is_served_embedded_with_a_strict_policy_and_its_api_needs_the_token() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with_camera(dir.path(), free_udp_port(), &[]);
    let port = server.port;

    let page = http(port, "GET", "/", &[], b"");
    assert_eq!(page.status, 200, "{}", page.headers);
    assert!(header(&page, "content-type").unwrap().starts_with("text/html"));
    let csp = header(&page, "content-security-policy").expect("a Content-Security-Policy");
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
    // Everything the page loads comes from this origin and is embedded in the binary.
    let html = page.body.clone();
    assert!(!html.contains("http://") && !html.contains("https://"), "no third-party request in {html}");
    assert!(!html.contains("<script>") && !html.contains(" style=") && !html.contains(" onclick="), "nothing inline");
    for path in
        ["/console/app.js", "/console/style.css", "/console/vendor/uPlot.iife.min.js", "/console/vendor/uPlot.min.css"]
    {
        let r = http(port, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}");
        assert!(html.contains(path), "index.html loads {path}");
        assert!(!r.body.is_empty(), "{path}");
    }
    for path in ["/console/../Cargo.toml", "/console/vendor/../../index.html", "/console/nothing.js"] {
        assert_eq!(http(port, "GET", path, &[], b"").status, 404, "{path}");
    }

    // The API the console calls: the token, then the answers it reads.
    let auth = format!("Bearer {TOKEN}");
    for path in ["/v1/status", "/v1/watch/frame?source=cam"] {
        let r = http(port, "GET", path, &[], b"");
        assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"), "{path}");
    }
    let status = http(port, "GET", "/v1/status", &[("Authorization", &auth)], b"");
    assert_eq!(status.status, 200);
    let v: Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["ready"]["model"], "emotion-llama");
    assert!(v["ready"]["plan"]["parts"]["encoders"].is_array(), "the plan: {v}");
    assert_eq!(v["sources"][0]["name"], "cam");
    assert_eq!(v["sources"][0]["frame_index"], Value::Null);
    let none = http(port, "GET", "/v1/watch/frame?source=cam", &[("Authorization", &auth)], b"");
    assert_eq!((none.status, error_code(&none).as_str()), (404, "no_frame_yet"));
    let unknown = http(port, "GET", "/v1/watch/frame?source=nope", &[("Authorization", &auth)], b"");
    assert_eq!((unknown.status, error_code(&unknown).as_str()), (404, "unknown_source"));
    // A failed request is listed among the recent errors.
    let bad = http(port, "POST", "/v1/analyze", &[("Authorization", &auth), JSON], b"{\"path\": 3}");
    assert_eq!(bad.status, 400);
    let v: Value =
        serde_json::from_str(&http(port, "GET", "/v1/status", &[("Authorization", &auth)], b"").body).unwrap();
    let errors = v["recent_errors"].as_array().unwrap();
    assert_eq!(errors.last().unwrap()["status"], 400, "{v}");
    drop(server);

    // Off by configuration: no page, the API as before.
    let server = serve_with_camera(dir.path(), free_udp_port(), &["--console", "false"]);
    assert_eq!(http(server.port, "GET", "/", &[], b"").status, 404);
    assert_eq!(http(server.port, "GET", "/console/app.js", &[], b"").status, 404);
    assert_eq!(http(server.port, "GET", "/v1/status", &[("Authorization", &auth)], b"").status, 200);
}

#[test]
fn the_console_in_a_real_browser_follows_a_camera_runs_a_clip_and_shows_a_lost_source() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let udp_port = free_udp_port();
    let server = serve_with_camera(dir.path(), udp_port, &[]);
    let shots = common::test_data().join("console-screenshots");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/console_browser.py");
    let clip = common::media_dir().join("talking-face.mp4");
    let out = Command::new(common::python())
        .arg(&script)
        .args([&format!("http://127.0.0.1:{}", server.port), TOKEN, &udp_port.to_string()])
        .args([clip.to_str().unwrap(), shots.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let found: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!("console in chromium: {found}");
    assert_eq!(found["page_errors"], serde_json::json!([]), "uncaught errors in the page");
    assert_eq!(found["console_errors"], serde_json::json!([]), "console errors or warnings");
    // The preview: a small JPEG of the camera's frame, refreshed per window.
    let px = &found["frame_px"];
    assert!(px[0].as_u64().unwrap() > 0 && px[0].as_u64().unwrap() <= 320, "{px}");
    assert_eq!(found["frame_refreshed"], true);
    // Each window appears on the page soon after it appears on the event stream.
    let lags: Vec<f64> = found["event_to_page_s"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(lags.len() >= 2, "{lags:?}");
    assert!(lags[lags.len() / 2] < 1.0, "median event-to-page delay {lags:?}");
    // The clip's answer: bars for the label set, the timings.
    assert!(found["bars"].as_u64().unwrap() >= 6, "{found}");
    assert!(!found["answer"].as_str().unwrap().trim().is_empty());
    assert!(found["phone_overflow_px"].as_i64().unwrap() <= 0, "wider than a phone: {found}");
    let bytes = found["first_load_bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < 1_000_000, "page weight {bytes}");
    for shot in ["login", "live", "health", "upload", "reconnecting", "phone"] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "{shot}.png");
    }
}
