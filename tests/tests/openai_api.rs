//! The OpenAI-compatible API (`/v1/chat/completions`, `/v1/models`) and the official
//! repository's endpoints, called by real clients: the `openai` Python SDK and
//! LangChain's `ChatOpenAI` (tests/clients/openai_client.py, in the test venv), and raw
//! HTTP for what a hostile client sends.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use common::server::*;

/// Run one scenario of the client script against the service; its JSON line.
fn client(port: u16, key: &str, scenario: &str, clip: &Path, options: Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/openai_client.py");
    let out = Command::new(common::python())
        .arg(&script)
        .args([&format!("http://127.0.0.1:{port}/v1"), key, scenario, clip.to_str().unwrap(), &options.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{scenario}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{scenario}: {e}: {stdout}"))
}

fn talking_face() -> std::path::PathBuf {
    common::media_dir().join("talking-face.mp4")
}

fn data_url(media_type: &str, bytes: &[u8]) -> String {
    format!("data:{media_type};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn chat(port: u16, body: &Value, headers: &[(&str, &str)]) -> Resp {
    let mut all = vec![JSON];
    all.extend_from_slice(headers);
    http(port, "POST", "/v1/chat/completions", &all, body.to_string().as_bytes())
}

/// A sample of `/metrics` on a service with a token.
fn metric_with_token(port: u16, name: &str) -> f64 {
    let m = http(port, "GET", "/metrics", &[("Authorization", "Bearer s3cret")], b"").body;
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in {m}"))
}

fn user(parts: Value) -> Value {
    json!({"messages": [{"role": "user", "content": parts}], "max_tokens": 4})
}

/// The SDK's answers, plain and streamed, and LangChain's, equal `/v1/analyze`'s on the
/// same clip, seed and options; the model list names the bundle.
#[test]
fn the_openai_sdk_and_langchain_get_what_analyze_gives() {
    let srv = start(&[], &[]);
    wait_ready(srv.port);
    let transcript = "I can't believe we made it";
    let analyze = http(
        srv.port,
        "POST",
        "/v1/analyze",
        &[JSON],
        &json_path(
            &talking_face(),
            12,
            &format!(", \"seed\": 5, \"preset\": \"demo\", \"transcript\": \"{transcript}\", \"task\": \"emotion\""),
        ),
    );
    assert_eq!(analyze.status, 200, "{}", analyze.body);
    let analyze: Value = serde_json::from_str(&analyze.body).unwrap();
    // The transcript line in the text, the preset through extra_body, as a user writes them.
    let options = json!({"seed": 5, "max_tokens": 12, "preset": "demo",
        "text": format!("The person in video says: {transcript}. [emotion]")});
    let plain = client(srv.port, "none", "plain", &talking_face(), options.clone());
    let streamed = client(srv.port, "none", "stream", &talking_face(), options.clone());
    for (name, got) in [("plain", &plain), ("streamed", &streamed)] {
        assert_eq!(got["content"], analyze["text"], "{name}: the answer");
        let e = &got["emollama"];
        for key in ["label", "label_scores", "answer_tokens", "transcript_used", "task", "preset"] {
            assert_eq!(e[key], analyze[key], "{name}: {key}");
        }
        assert!(e["timings_ms"]["total"].as_f64().unwrap() > 0.0, "{name}: stage timings");
        let usage = &got["usage"];
        assert_eq!(usage["completion_tokens"], analyze["tokens"]["generated"], "{name}: {usage}");
        assert_eq!(usage["prompt_tokens"], analyze["tokens"]["prompt"], "{name}: {usage}");
        let finish = if analyze["stop"] == "max_tokens" { "length" } else { "stop" };
        assert_eq!(got["finish_reason"], finish, "{name}");
    }
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["model"], analyze["bundle"]["id"]);
    assert!(streamed["chunks"].as_u64().unwrap() >= 3, "role, pieces, finish, usage: {streamed}");
    // LangChain's ChatOpenAI with the same content parts and options.
    let lc = client(srv.port, "none", "langchain", &talking_face(), options);
    assert_eq!(lc["content"], analyze["text"], "LangChain: {lc}");
    // The model list: the bundle's id, its LLM type and the device.
    let models = client(srv.port, "none", "models", &talking_face(), json!({}));
    let model = &models["models"][0];
    assert_eq!(model["id"], analyze["bundle"]["id"]);
    assert_eq!(model["object"], "model");
    assert!(model["emollama"]["llm_type"].is_string() && model["emollama"]["device"] == "x86-cpu", "{model}");
    // A bad clip: the SDK's UnprocessableEntityError with the service's message, asked once.
    let client_errors = || metric(srv.port, "emollama_requests_total{outcome=\"client_error\"}");
    let before = client_errors();
    let bad = client(srv.port, "none", "bad_clip", &talking_face(), json!({}));
    assert_eq!((bad["error"].as_str(), bad["status"].as_u64()), (Some("UnprocessableEntityError"), Some(422)));
    assert_eq!(bad["body"]["code"], "unreadable_media", "{bad}");
    assert!(bad["message"].as_str().unwrap().contains("cannot open the uploaded file"), "{bad}");
    assert_eq!(client_errors(), before + 1.0, "no retry of a request that cannot succeed");
    // Streamed, the same refusal comes as the status, before any chunk.
    let bad = client(srv.port, "none", "bad_clip_streamed", &talking_face(), json!({}));
    assert_eq!((bad["error"].as_str(), bad["status"].as_u64()), (Some("UnprocessableEntityError"), Some(422)));
}

/// A wrong token (401 through the SDK); a full service (503 with Retry-After, the SDK's
/// retries bounded); a run cut at its deadline mid-stream (an error event the SDK raises).
#[test]
fn the_sdk_sees_401_503_with_bounded_retries_and_a_stream_error() {
    let limit = LONG_TOKENS.to_string();
    let srv = start(
        &[
            "--token",
            "s3cret",
            "--max-concurrency",
            "1",
            "--max-queue",
            "0",
            "--max-new-tokens-limit",
            &limit,
            "--request-timeout-s",
            "2",
        ],
        &[],
    );
    wait_ready(srv.port);
    let wrong = client(srv.port, "wrong", "wrong_token", &talking_face(), json!({}));
    assert_eq!((wrong["error"].as_str(), wrong["status"].as_u64()), (Some("AuthenticationError"), Some(401)));
    // One admitted request holds the only place (its body on the way): the SDK gets 503
    // busy, waits the Retry-After (2 s) twice, and gives up after its 2 retries.
    let mut holder = connect(srv.port);
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
                Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"messages\": [";
    holder.write_all(head.as_bytes()).unwrap();
    wait_until(Duration::from_secs(5), "the holder admitted", || {
        metric_with_token(srv.port, "emollama_queue_depth") == 1.0
    });
    let busy_before = metric_with_token(srv.port, "emollama_requests_total{outcome=\"busy\"}");
    let busy = client(srv.port, "s3cret", "busy", &talking_face(), json!({}));
    assert_eq!((busy["error"].as_str(), busy["status"].as_u64()), (Some("InternalServerError"), Some(503)), "{busy}");
    assert_eq!(busy["body"]["code"], "busy");
    let seconds = busy["seconds"].as_f64().unwrap();
    assert!((3.9..20.0).contains(&seconds), "two waits of Retry-After 2 s: {seconds} s");
    let busy_after = metric_with_token(srv.port, "emollama_requests_total{outcome=\"busy\"}");
    assert_eq!(busy_after - busy_before, 3.0, "1 + 2 retries");
    drop(holder);
    // Streaming began, then the deadline: the SDK raises APIError with the service's message.
    let long = json!({"max_tokens": LONG_TOKENS, "preset": "demo", "temperature": 1.5, "scores": false});
    let cut = client(srv.port, "s3cret", "stream", &talking_face(), long);
    assert_eq!(cut["error"], "APIError", "{cut}");
    assert_eq!(cut["body"]["code"], "timeout", "{cut}");
    assert!(cut["pieces"].as_u64().unwrap() > 0, "the error came after text: {cut}");
}

/// What a hostile or careless client sends to the new route: refused from the headers
/// when it can be, with OpenAI's error shape, `x-should-retry: false` where a retry
/// cannot help, and no file left behind.
#[test]
fn the_chat_route_refuses_hostile_bodies_and_leaves_no_file() {
    let uploads = tempfile::tempdir().unwrap();
    let srv = start(
        &[
            "--max-upload-bytes",
            "2000000",
            "--body-timeout-s",
            "1",
            "--body-min-rate",
            "1000",
            "--upload-dir",
            uploads.path().to_str().unwrap(),
        ],
        &[],
    );
    wait_ready(srv.port);
    let clip = std::fs::read(common::media_dir().join("test-pattern.mp4")).unwrap();
    let video = |url: String| json!({"type": "video_url", "video_url": {"url": url}});
    let refused = |body: &Value, status: u16, code: &str| {
        let r = chat(srv.port, body, &[]);
        assert_eq!((r.status, error_code(&r).as_str()), (status, code), "{}", r.body);
        let e: Value = serde_json::from_str(&r.body).unwrap();
        for key in ["message", "type", "param", "code"] {
            assert!(e["error"].get(key).is_some(), "OpenAI's error shape: {key} in {}", r.body);
        }
        assert!(r.headers.to_ascii_lowercase().contains("x-should-retry: false"), "{}", r.headers);
        e
    };
    // A declared length over the limit (2 MB of clip as base64 + max_json_bytes): 413
    // before 100 Continue.
    let mut s = connect(srv.port);
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s);
    assert!(r.headers.starts_with("HTTP/1.1 413") && !r.headers.contains("100 Continue"), "{}", r.headers);
    // Oversized base64 without a declared length (chunked): cut at the limit.
    let big = user(json!([video(data_url("video/mp4", &vec![7u8; 3_000_000]))])).to_string();
    let mut s = connect(srv.port);
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
          Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    // Written up to just past the limit, then the answer read (no bytes left unread).
    for chunk in big.as_bytes()[..3_900_000].chunks(1 << 16) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if s.write_all(&framed).is_err() {
            break;
        }
    }
    let r = read_response(&mut s);
    assert_eq!((r.status, error_code(&r).as_str()), (413, "body_too_large"), "{}", r.body);
    // Invalid base64, a wrong media type, a URL scheme that is not taken, 10,000 parts.
    refused(&user(json!([video("data:video/mp4;base64,AAA*AAAA".into())])), 400, "invalid_base64");
    let e = refused(&user(json!([video(data_url("text/html", b"<p>"))])), 400, "invalid_media_type");
    assert_eq!(e["error"]["param"], "messages[0].content[0]");
    refused(&user(json!([video("ftp://example.org/a.mp4".into())])), 400, "unsupported_url");
    let parts = vec![json!({"type": "text", "text": "x"}); 10_000];
    let started = Instant::now();
    refused(&user(json!(parts)), 400, "too_many_parts");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // Earlier turns are refused, not dropped; options the service cannot honour too.
    let turns = json!({"messages": [
        {"role": "user", "content": [video(data_url("video/mp4", &clip))]},
        {"role": "assistant", "content": "happy"},
        {"role": "user", "content": "Why?"}]});
    refused(&turns, 400, "multi_turn_not_supported");
    let mut n2 = user(json!([video(data_url("video/mp4", &clip))]));
    n2["n"] = json!(2);
    assert_eq!(refused(&n2, 400, "invalid_field")["error"]["param"], "n");
    let mut tools = user(json!([video(data_url("video/mp4", &clip))]));
    tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
    refused(&tools, 400, "unsupported_parameter");
    // A path outside the allowed folders: 403, as for /v1/analyze.
    refused(&user(json!([video("file:///etc/passwd".into())])), 403, "path_not_allowed");
    // A slow body: 408 (a retry may help: no x-should-retry).
    let (r, _) = drip_json_body(srv.port, "/v1/chat/completions");
    assert_eq!((r.status, error_code(&r).as_str()), (408, "body_timeout"), "{}", r.body);
    assert!(!r.headers.to_ascii_lowercase().contains("x-should-retry"), "{}", r.headers);
    // A good request by data URL, with a system message (ignored, said in the notes), a
    // still image with a separate audio track, and a plain string question.
    let mut body = user(json!([{"type": "text", "text": "[emotion]"}, video(data_url("video/mp4", &clip))]));
    body["messages"].as_array_mut().unwrap().insert(0, json!({"role": "system", "content": "Be brief."}));
    let r = chat(srv.port, &body, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["emollama"]["notes"].to_string().contains("system message was ignored"), "{}", v["emollama"]["notes"]);
    let png = std::fs::read(common::media_dir().join("astronaut.png")).unwrap();
    let wav = std::fs::read(common::media_dir().join("speech.wav")).unwrap();
    let wav = base64::engine::general_purpose::STANDARD.encode(wav);
    let still = user(json!([
        {"type": "image_url", "image_url": {"url": data_url("image/png", &png)}},
        {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
        {"type": "text", "text": "What does the person feel?"}]));
    let r = chat(srv.port, &still, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let e = &v["emollama"];
    assert_eq!((e["task"].as_str(), e["media"]["frames"].as_u64()), (Some("question"), Some(1)), "{e}");
    assert!(e["media"]["audio_s"].as_f64().unwrap() > 1.0, "the separate track was heard: {e}");
    // The same still without audio: no audio row, said so.
    let r =
        chat(srv.port, &user(json!([{"type": "image_url", "image_url": {"url": data_url("image/png", &png)}}])), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("no audio track"), "{}", r.body);
    // A still sent as a video is refused before the run, as /v1/analyze refuses it.
    refused(&user(json!([video(data_url("video/mp4", &png))])), 422, "unreadable_media");
    wait_until(Duration::from_secs(5), "every upload removed", || {
        std::fs::read_dir(uploads.path())
            .unwrap()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .all(|f| f.file_name() == ".lock")
    });
}

/// The official repository's endpoints: its FastAPI `/process_video` and its Gradio
/// client's `/api/predict/`, with the official demo's prompt and sampling: the answers
/// equal `/v1/analyze` asked the same way.
#[test]
fn the_official_demos_endpoints_answer_as_analyze_does() {
    let srv = start(&[], &[]);
    wait_ready(srv.port);
    let clip = talking_face();
    let question = "The person in video says: Won't you? Impossible! Fan Xiaomei is not such a person.  [reason] \
                    What are the facial expressions and vocal tone used in the video? What is the intended meaning \
                    behind his words? Which emotion does this reflect?";
    let reference = json!({"path": clip, "layout": "demo", "preset": "demo", "task": "reason", "reason_index": 2,
        "transcript": "Won't you? Impossible! Fan Xiaomei is not such a person."});
    let r = http(srv.port, "POST", "/v1/analyze", &[JSON], reference.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let expected: Value = serde_json::from_str(&r.body).unwrap();
    let body = json!({"video_path": clip, "question": question});
    let r = http(srv.port, "POST", "/process_video", &[JSON], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["response"], expected["text"]);
    let body = json!({"data": [clip, question]});
    let r = http(srv.port, "POST", "/api/predict/", &[JSON], body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["data"][0], expected["text"]);
    assert!(v["duration"].as_f64().unwrap() > 0.0);
    // Under the same rules: a path outside the allowed folders is refused.
    let body = json!({"video_path": "/etc/passwd", "question": question});
    let r = http(srv.port, "POST", "/process_video", &[JSON], body.to_string().as_bytes());
    assert_eq!((r.status, error_code(&r).as_str()), (403, "path_not_allowed"));
}
