//! The bundle manifest: the synthetic bundle verifies; every kind of damage is rejected
//! with its specific error.

mod common;

use emollama_bundle::{Bundle, BundleError, Role};
use serde_json::Value;

fn damaged_copy(edit: impl FnOnce(&std::path::Path)) -> (tempfile::TempDir, Result<Bundle, BundleError>) {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&common::bundle_dir(), tmp.path());
    edit(tmp.path());
    let result = Bundle::open_verified(tmp.path());
    (tmp, result)
}

fn edit_manifest(dir: &std::path::Path, f: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn synthetic_bundle_verifies_and_describes_itself() {
    let bundle = Bundle::open_verified(&common::bundle_dir()).expect("synthetic bundle verifies");
    let m = bundle.manifest();
    assert!(m.synthetic);
    assert_eq!(m.rows.total(), 260, "256 global + local + temporal + audio + CLS");
    assert_eq!(m.rows.global_patches, 256);
    assert_eq!(m.llm.vocab_size, 32000);
    for role in Role::ENGINES.iter().chain([&Role::Llm]) {
        let f = bundle.file(role).unwrap_or_else(|| panic!("{role} present"));
        assert_eq!(f.sha256.len(), 64);
        if role != &Role::Llm {
            let parity = f.parity.as_ref().expect("engines record their export parity");
            assert!(parity.max_abs_diff.unwrap() <= 1e-4, "{role}: {parity:?}");
        }
    }
}

#[test]
fn tampered_file_fails_its_checksum() {
    let (_tmp, result) = damaged_copy(|dir| {
        let path = dir.join("global.onnx");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(path, bytes).unwrap();
    });
    assert!(matches!(result, Err(BundleError::ChecksumMismatch { .. })), "{result:?}");
}

#[test]
fn truncated_file_is_a_size_mismatch() {
    let (_tmp, result) = damaged_copy(|dir| {
        let path = dir.join("llm-f32.gguf");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() / 3]).unwrap();
    });
    assert!(matches!(result, Err(BundleError::SizeMismatch { .. })), "{result:?}");
}

#[test]
fn missing_file_is_named() {
    let (_tmp, result) = damaged_copy(|dir| std::fs::remove_file(dir.join("audio.onnx")).unwrap());
    match result {
        Err(BundleError::MissingFile { path, role }) => {
            assert!(path.ends_with("audio.onnx"));
            assert_eq!(role, "audio_engine");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_manifest_is_malformed() {
    let (_tmp, result) = damaged_copy(|dir| {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(path, &text[..text.len() / 2]).unwrap();
    });
    assert!(matches!(result, Err(BundleError::ManifestMalformed { .. })), "{result:?}");
}

#[test]
fn unknown_format_version_is_rejected() {
    let (_tmp, result) = damaged_copy(|dir| edit_manifest(dir, |v| v["format_version"] = 99.into()));
    assert!(matches!(result, Err(BundleError::UnsupportedVersion { found: 99, supported: 2 })), "{result:?}");
}

#[test]
fn other_json_is_not_a_bundle() {
    let (_tmp, result) = damaged_copy(|dir| std::fs::write(dir.join("manifest.json"), "{\"name\": \"x\"}").unwrap());
    assert!(matches!(result, Err(BundleError::WrongFormat { .. })), "{result:?}");
}

#[test]
fn embedding_width_mismatch_between_engine_and_llm() {
    let (_tmp, result) = damaged_copy(|dir| edit_manifest(dir, |v| v["llm"]["embedding_width"] = 4096.into()));
    match result {
        Err(BundleError::EmbeddingWidthMismatch { expected: 4096, found: 64, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn path_escaping_the_bundle_is_refused() {
    let (_tmp, result) = damaged_copy(|dir| edit_manifest(dir, |v| v["files"][0]["path"] = "../../etc/passwd".into()));
    assert!(matches!(result, Err(BundleError::UnsafePath(_))), "{result:?}");
}

#[test]
fn missing_folder_and_missing_manifest() {
    let missing = Bundle::open(std::path::Path::new("/nonexistent/emollama-bundle"));
    assert!(matches!(missing, Err(BundleError::NotAFolder(_))), "{missing:?}");
    let empty = tempfile::tempdir().unwrap();
    let result = Bundle::open(empty.path());
    assert!(matches!(result, Err(BundleError::ManifestUnreadable { .. })), "{result:?}");
}

#[test]
fn only_the_local_and_temporal_engines_may_be_absent() {
    // An official export without the MAE/VideoMAE checkpoints has no local/temporal engine.
    for (role, absent) in [("local_engine", Role::LocalEngine), ("temporal_engine", Role::TemporalEngine)] {
        let (_dir, opened) = damaged_copy(|d| {
            edit_manifest(d, |m| m["files"].as_array_mut().unwrap().retain(|f| f["role"] != role));
        });
        let bundle = opened.unwrap_or_else(|e| panic!("without {role}: {e}"));
        assert!(bundle.file(&absent).is_none() && bundle.file(&Role::GlobalEngine).is_some());
    }
    for (role, want) in [("global_engine", Role::GlobalEngine), ("audio_engine", Role::AudioEngine)] {
        let (_dir, opened) = damaged_copy(|d| {
            edit_manifest(d, |m| m["files"].as_array_mut().unwrap().retain(|f| f["role"] != role));
        });
        assert!(matches!(opened, Err(BundleError::MissingRole(ref r)) if *r == want), "{opened:?}");
    }
}

/// Counts whose sum or product overflows their type (found by reading the checks the
/// `manifest` fuzz target reaches; replayed from `fuzz/regressions/manifest/`): refused
/// as inconsistent, where a release build once wrapped them around to a small number.
#[test]
fn counts_that_overflow_are_refused() {
    let (_tmp, result) = damaged_copy(|dir| {
        edit_manifest(dir, |v| {
            let t = &mut v["preprocess"]["temporal"];
            (t["frames"], t["segments"], t["frames_per_segment"]) = (1.into(), 65536.into(), 65536.into());
        })
    });
    assert!(
        matches!(&result, Err(BundleError::Inconsistent(m)) if m.contains("frames 1 is not segments 65536")),
        "{result:?}"
    );
    // The global engine declaring as many rows as the manifest counts, the sum past u32.
    let (_tmp, result) = damaged_copy(|dir| {
        edit_manifest(dir, |v| {
            v["rows"]["global_patches"] = u32::MAX.into();
            let global = v["files"].as_array_mut().unwrap().iter_mut().find(|f| f["role"] == "global_engine").unwrap();
            global["outputs"][0]["shape"][1] = u32::MAX.into();
        })
    });
    assert!(
        matches!(&result, Err(BundleError::Inconsistent(m)) if m.contains("4294967299 embedding rows do not fit")),
        "{result:?}"
    );
}
