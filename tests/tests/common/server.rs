//! `emollama serve` as a real process on a free port, and a raw HTTP/1.1 client (the
//! tests need to send exactly the bytes a hostile client would).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(extra: &[&str], env: &[(&str, &str)]) -> Server {
    start_with(extra, env, Stdio::inherit())
}

/// `emollama serve` on a free port of loopback, with the synthetic bundle and the sample
/// media folder allowed; `stderr` where its log goes.
pub fn start_with(extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Server {
    start_binary(&super::emollama_bin(), "x86-cpu", extra, env, stderr)
}

/// [`start`] with another bundle.
pub fn start_on(bundle: &Path, extra: &[&str]) -> Server {
    start_process(&super::emollama_bin(), bundle, "x86-cpu", extra, &[], Stdio::inherit())
}

/// [`start_with`] for another build of emollama (the GPU build) on `profile`.
pub fn start_binary(bin: &Path, profile: &str, extra: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Server {
    start_process(bin, &super::bundle_dir(), profile, extra, env, stderr)
}

fn start_process(
    bin: &Path,
    bundle: &Path,
    profile: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> Server {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--bundle", bundle.to_str().unwrap(), "--profile", profile])
        .args(["--allowed-dir", super::media_dir().to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap_or_else(|_| panic!("no port in {line:?}"));
    Server { child, port }
}

pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    let _ = s.write_all(req.as_bytes());
    let _ = s.write_all(body);
    read_response(&mut s)
}

pub fn read_response(s: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Resp { status, headers: head.to_string(), body }
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn wait_ready(port: u16) {
    let started = Instant::now();
    loop {
        let r = http(port, "GET", "/readyz", &[], b"");
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 503, "readyz before warm-up: {}", r.body);
        assert!(started.elapsed() < Duration::from_secs(60), "not ready in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A JSON request naming a local file; `extra` adds fields (`, "preset": "fast"`).
pub fn json_path(path: &Path, max_new_tokens: usize, extra: &str) -> Vec<u8> {
    format!("{{\"path\": \"{}\", \"max_new_tokens\": {max_new_tokens}{extra}}}", path.display()).into_bytes()
}

pub const BOUNDARY: &str = "emollamaBoundary7MA4YWxk";

pub fn multipart_ct() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A multipart body with text `fields` and the `media` file.
pub fn multipart(file: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let boundary = BOUNDARY;
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes());
    }
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"clip.mp4\"\r\nContent-Type: video/mp4\r\n\r\n").as_bytes());
    body.extend(file);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

pub const JSON: (&str, &str) = ("Content-Type", "application/json");

/// `/metrics` as text (no token).
pub fn metrics(port: u16) -> String {
    http(port, "GET", "/metrics", &[], b"").body
}

/// One sample's value from `/metrics` (`name` with its labels, as printed).
pub fn metric(port: u16, name: &str) -> f64 {
    let m = metrics(port);
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in {m}"))
}

/// Poll until `what` holds (every 20 ms), or fail after `within`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// A connection for hand-written requests.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Whether the server has closed `s` (EOF or reset) within `within`; whatever it sends
/// before closing is read and dropped.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// The long request of the hardening tests: the talking face, all four encoders, then
/// [`LONG_TOKENS`] sampled tokens (about 2.5 s on a 2-core machine).
pub fn long_request() -> Vec<u8> {
    json_path(
        &super::media_dir().join("talking-face.mp4"),
        LONG_TOKENS,
        ", \"preset\": \"demo\", \"temperature\": 1.5, \"scores\": false",
    )
}

/// The tokens a long request asks for: 1.6 s of generation with the synthetic model on
/// this project's 2-core machine, whatever the media stages cost (a test server that takes
/// long requests raises `--max-new-tokens-limit` to this).
pub const LONG_TOKENS: usize = 1600;

/// A short request: first frame and audio, label scores only (about one prefill).
pub fn quick_request() -> Vec<u8> {
    json_path(&super::media_dir().join("test-pattern.mp4"), 4, ", \"preset\": \"fast\", \"mode\": \"official-demo\"")
}

/// The JSON error code of an answer.
pub fn error_code(r: &Resp) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("not the JSON error shape: {} {}", r.status, r.body));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code: {}", r.body)).to_string()
}

/// A process's resident memory, kB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// A JSON body to `path` that declares 5000 bytes and sends one every 250 ms (for 10 s at
/// most): the answer, and how long it took from the first body byte.
pub fn drip_json_body(port: u16, path: &str) -> (Resp, Duration) {
    let mut s = connect(port);
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{");
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let drip = std::thread::spawn({
        let mut s = s.try_clone().unwrap();
        move || {
            for _ in 0..40 {
                if s.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    });
    let r = read_response(&mut s);
    let took = started.elapsed();
    drop(s);
    drip.join().unwrap();
    (r, took)
}
