//! `scripts/soak` in its short form: one minute of the mixed load (valid, streamed, chat,
//! malformed, cancelled, cut and slow requests, event streams, bursts past admission, the
//! watch source's sender stopped and restarted), then the drain. The script's own checks
//! must hold (no 5xx but admission's 503s, nothing open or running at rest that was not
//! after the warm-up, the upload folder empty, the drain answering the running request),
//! and every kind of client must have met the answer it is owed. The two-hour run is the
//! same script with its default length (not CI).

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn a_minute_of_mixed_load_leaves_the_service_as_it_found_it() {
    let _serial = common::serial();
    let work = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(repo.join("scripts/soak")).arg("1").arg(work.path()).output().expect("scripts/soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_slice(&std::fs::read(work.path().join("summary.json")).unwrap())
        .unwrap_or_else(|e| panic!("summary.json: {e}\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    println!("{stdout}");
    for (check, ok) in summary["checks"].as_object().unwrap() {
        assert_eq!(ok, true, "soak check failed: {check}\n{stdout}");
    }
    assert!(out.status.success(), "scripts/soak failed although its checks passed: {stdout}");

    // Every kind of client got what it is owed (counts are the script's; a kind that never
    // came up in the minute would make this test prove less than it says).
    let kinds = summary["by_kind"].as_object().unwrap();
    let count = |kind: &str, outcome: &str| kinds.get(kind).and_then(|k| k[outcome].as_u64()).unwrap_or(0);
    for kind in ["analyze", "analyze-stream", "chat"] {
        assert!(count(kind, "200") > 0, "no successful {kind}: {kinds:?}");
    }
    assert!(count("burst", "503") > 0, "a burst past admission met no 503: {kinds:?}");
    assert!(count("cancelled-stream", "200-closed") > 0 && count("cut-upload", "cut") > 0, "{kinds:?}");
    for (kind, status) in
        [("malformed:bad-json", "400"), ("malformed:wrong-type", "415"), ("malformed:no-token", "401")]
    {
        if let Some(outcomes) = kinds.get(kind) {
            let seen: Vec<&String> = outcomes.as_object().unwrap().keys().collect();
            assert_eq!(seen, [status], "{kind}: {outcomes}");
        }
    }
    assert!(count("sender", "stopped") >= 2, "the watch source's sender was not cycled: {kinds:?}");
    let watched = summary["watch_at_rest"][1]["windows"].as_u64().unwrap();
    assert!(watched > 0, "the watch source produced no window");
    assert_eq!(summary["drain"]["exit_status"], 0);
    assert_eq!(summary["drain"]["request_status"], "200");

    let plot = std::fs::read(work.path().join("soak.png")).unwrap();
    assert!(plot.starts_with(b"\x89PNG\r\n\x1a\n") && plot.len() > 10_000, "soak.png is not a plot");
    let samples = std::fs::read_to_string(work.path().join("samples.csv")).unwrap();
    assert!(samples.lines().count() > 50, "too few samples: {}", samples.lines().count());
}
