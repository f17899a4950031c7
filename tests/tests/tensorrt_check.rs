//! The static TensorRT check (no GPU): `emollama compile --check` on the exported
//! bundles, and the exporter's refusal to write a graph TensorRT would not build. Both
//! read the support list in `engines/data/`; the refused graphs here are made with the
//! `onnx` and `torch` packages, not with the checker's own reader.

mod common;

use std::process::{Command, Output};

use common::{bundle_dir, emollama_bin};

fn emollama(args: &[&str]) -> Output {
    Command::new(emollama_bin()).args(args).output().unwrap()
}

/// Every graph of the synthetic and the official-fixture exports passes the static
/// TensorRT check on the Orin profiles (P-Net with one profile per pyramid level); a
/// graph with an operator TensorRT lacks is refused with the operator named, and
/// `compile` refuses to start building it.
#[test]
fn compile_check_passes_the_exports_and_names_an_operator_tensorrt_lacks() {
    let official = common::official_dir().join("export/bundle");
    for bundle in [bundle_dir(), official] {
        let b = bundle.to_str().unwrap();
        let out = emollama(&["compile", "--check", "--bundle", b, "--profile", "orin-nano-8gb"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{b}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("checked against TensorRT 10.3 (onnx/onnx-tensorrt"), "{text}");
        let out = emollama(&["compile", "--check", "--json", "--bundle", b, "--profile", "orin-nx-16gb"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let checks = checks.as_array().unwrap();
        assert_eq!(checks.len(), emollama_bundle::Role::ROW_ENGINES.len() + emollama_bundle::Role::FACE_NETS.len());
        for c in checks {
            assert_eq!(c["refusals"], serde_json::json!([]), "{c}");
            assert_eq!(c["opset"], 17, "{c}");
            assert!(
                c["operators"].as_object().unwrap().contains_key("Conv")
                    || c["role"].as_str().unwrap().ends_with("projector"),
                "{c}"
            );
            let profiles = c["profiles"].as_u64().unwrap();
            let want = if c["role"] == "face_pnet" {
                emollama_media::faces::FaceSearch::default().pyramid().all_shapes().unwrap().len()
            } else {
                1
            };
            assert_eq!(profiles as usize, want, "{c}");
        }
    }

    // A projector replaced by a graph with `Unique` (not in TensorRT), made with the onnx
    // package and given its manifest entry, so that the bundle itself is consistent.
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&bundle_dir(), tmp.path());
    let script = r#"
import hashlib, json, sys
from pathlib import Path
import onnx
from onnx import TensorProto, helper
d = Path(sys.argv[1])
m = json.loads((d / "manifest.json").read_text())
f = next(f for f in m["files"] if f["role"] == "local_projector")
i, o = f["inputs"][0], f["outputs"][0]
graph = helper.make_graph(
    [helper.make_node("Unique", [i["name"]], ["u"], name="/dedupe/Unique"), helper.make_node("Identity", ["u"], [o["name"]])],
    "bad", [helper.make_tensor_value_info(i["name"], TensorProto.FLOAT, i["shape"])],
    [helper.make_tensor_value_info(o["name"], TensorProto.FLOAT, None)])
path = d / f["path"]
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
f["size"], f["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
(d / "manifest.json").write_text(json.dumps(m, indent=2))
"#;
    let made = Command::new(common::python()).arg("-c").arg(script).arg(tmp.path()).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let b = tmp.path().to_str().unwrap();
    let out = emollama(&["compile", "--check", "--bundle", b, "--profile", "orin-nano-8gb"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let refused = text.lines().find(|l| l.contains("refused:")).unwrap_or_else(|| panic!("{text}"));
    assert!(refused.contains("operator Unique is not supported by TensorRT 10.3 (node /dedupe/Unique)"), "{text}");
    assert!(text.lines().any(|l| l.contains("local_projector") && l.contains("REFUSED")), "{text}");
    assert_eq!(text.matches("REFUSED").count(), 1, "only the replaced engine: {text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TensorRT 10.3 would refuse 1 of 10 engines: local_projector"), "{err}");
}

/// The exporter refuses a module whose graph TensorRT cannot build (`torch.unique` →
/// ONNX `Unique`), names the operator and leaves no file, temporary or final.
#[test]
fn the_exporter_refuses_a_graph_tensorrt_would_not_build() {
    let tmp = tempfile::tempdir().unwrap();
    let script = r#"
import sys
from pathlib import Path
import torch
from emollama_export.synthetic import export_onnx
class Dedupe(torch.nn.Module):
    def forward(self, x):
        return torch.unique(x) * 2
out = Path(sys.argv[1])
export_onnx(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), out / "fine.onnx", ["x"], ["y"], {})
export_onnx(Dedupe(), (torch.tensor([1.0, 2.0, 2.0]),), out / "dedupe.onnx", ["x"], ["y"], {})
"#;
    let out = Command::new(common::python())
        .current_dir(common::export_python_dir())
        .arg("-c")
        .arg(script)
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("dedupe.onnx: TensorRT 10.3 would refuse this graph, not written: operator Unique is not supported by TensorRT 10.3"),
        "{err}"
    );
    let mut left: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["fine.onnx"], "the good graph is written, nothing of the refused one");
}
