//! `emollama info`: verify a bundle, load every engine for real and describe it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use emollama_bundle::{Bundle, Role};
use emollama_engines::llm::gguf::GgufFile;
use emollama_engines::llm::{LlmModel, ModelParams};
use emollama_engines::onnx::{init_runtime, EncoderEngine, EngineOptions, ProviderPolicy};
use serde::Serialize;

use crate::CommandError;

#[derive(Debug, Serialize)]
pub struct EngineReport {
    pub role: String,
    pub file: String,
    pub bytes: u64,
    pub precision: String,
    pub provider: String,
    pub fallbacks: Vec<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub export_parity_max_abs_diff: Option<f64>,
    /// How the engine was quantized, and the cosine it kept against its fp32 engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<emollama_bundle::Quantization>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantized_cosine_min: Option<f64>,
    pub load_ms: f64,
    pub warm_up_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct LlmReport {
    pub file: String,
    pub bytes: u64,
    pub description: String,
    pub parameters: u64,
    pub embedding_width: usize,
    pub vocab: i32,
    pub load_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct BundleReport {
    pub path: PathBuf,
    pub id: String,
    pub synthetic: bool,
    pub description: String,
    pub source: String,
    pub exporter_version: String,
    pub total_bytes: u64,
    pub rows: u64,
    pub embedding_width: u64,
    pub onnxruntime: String,
    pub onnxruntime_library: PathBuf,
    pub llama_cpp_system: String,
    pub engines: Vec<EngineReport>,
    /// Optional engines the export did not include: their rows are the zero-feature rows.
    pub absent_engines: Vec<String>,
    pub llm: LlmReport,
}

/// Verify checksums, load each encoder (running one warm-up) and the LLM.
pub fn inspect_bundle(
    dir: &Path,
    policy: &ProviderPolicy,
    ort_library: Option<&Path>,
) -> Result<BundleReport, CommandError> {
    let bundle = Bundle::open_verified(dir)?;
    let m = bundle.manifest();
    let rt = init_runtime(ort_library)?;
    let (mut engines, mut absent_engines) = (Vec::new(), Vec::new());
    for role in bundle.manifest().model.row_engines() {
        let Some(entry) = bundle.file(role) else {
            absent_engines.push(role.to_string()); // an optional engine the export did not include
            continue;
        };
        let opts = EngineOptions { intra_threads: 0, policy: policy.clone(), model_sha256: entry.sha256.clone() };
        let t = Instant::now();
        let engine = EncoderEngine::load(
            rt,
            role.as_str(),
            &bundle.path_of(entry),
            entry.inputs.clone(),
            entry.outputs.clone(),
            &opts,
        )?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        emollama_runtime::pipeline::warm_up(&engine, m.preprocess.audio.sample_rate)?;
        engines.push(EngineReport {
            role: role.to_string(),
            file: entry.path.clone(),
            bytes: entry.size,
            precision: entry.precision.to_string(),
            provider: engine.provider().to_string(),
            fallbacks: engine.fallbacks().to_vec(),
            inputs: entry.inputs.iter().map(|s| format!("{}{}", s.name, s.shape_string())).collect(),
            outputs: entry.outputs.iter().map(|s| format!("{}{}", s.name, s.shape_string())).collect(),
            export_parity_max_abs_diff: entry.parity.as_ref().and_then(|p| p.max_abs_diff),
            quantization: entry.quantization.clone(),
            quantized_cosine_min: entry
                .parity
                .as_ref()
                .and_then(|p| p.extra.get("cosine_min"))
                .and_then(|c| c.as_f64()),
            load_ms,
            warm_up_ms: t.elapsed().as_secs_f64() * 1e3,
        });
    }
    let entry = bundle.file(&Role::Llm).expect("open() checked the llm role");
    let path = bundle.path_of(entry);
    let gguf = GgufFile::open(&path)?;
    let gguf_width = gguf.get("llama.embedding_length").and_then(|v| v.as_u64()).unwrap_or(0);
    if gguf_width != m.llm.embedding_width {
        return Err(emollama_runtime::RuntimeError::LlmMismatch {
            what: "embedding width",
            gguf: gguf_width as i64,
            manifest: m.llm.embedding_width as i64,
        }
        .into());
    }
    let t = Instant::now();
    let model = Arc::new(LlmModel::load(&path, &ModelParams::default())?);
    let llm = LlmReport {
        file: entry.path.clone(),
        bytes: entry.size,
        description: model.description(),
        parameters: model.n_params(),
        embedding_width: model.n_embd(),
        vocab: model.n_vocab(),
        load_ms: t.elapsed().as_secs_f64() * 1e3,
    };
    Ok(BundleReport {
        path: dir.to_path_buf(),
        id: m.id.clone(),
        synthetic: m.synthetic,
        description: m.description.clone(),
        source: m.provenance.source.clone(),
        exporter_version: m.provenance.exporter_version.clone(),
        total_bytes: m.files.iter().map(|f| f.size).sum(),
        rows: m.rows.total(),
        embedding_width: m.llm.embedding_width,
        onnxruntime: rt.version.clone(),
        onnxruntime_library: rt.library.clone(),
        llama_cpp_system: emollama_engines::llm::system_info(),
        engines,
        absent_engines,
        llm,
    })
}

impl BundleReport {
    /// Human-readable description.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mb = |b: u64| b as f64 / 1e6;
        s += &format!("bundle   {} ({})\n", self.id, self.path.display());
        if self.synthetic {
            s += "         SYNTHETIC: exact architectures with RANDOM weights; its answers mean nothing\n";
        }
        s += &format!("source   {} (exporter {})\n", self.source, self.exporter_version);
        s += &format!(
            "size     {:.1} MB, {} embedding rows of width {} per video\n",
            mb(self.total_bytes),
            self.rows,
            self.embedding_width
        );
        s += &format!("onnx     ONNX Runtime {} from {}\n", self.onnxruntime, self.onnxruntime_library.display());
        s += "engines  (verified sha256, loaded, warmed up)\n";
        for e in &self.engines {
            s += &format!(
                "  {:<18} {:<22} {:>7.2} MB  {:<5} on {:<4}  {} -> {}  export parity {:.1e}  load {:.0} ms, warm-up {:.0} ms\n",
                e.role, e.file, mb(e.bytes), e.precision, e.provider, e.inputs.join(" "), e.outputs.join(" "),
                e.export_parity_max_abs_diff.unwrap_or(f64::NAN), e.load_ms, e.warm_up_ms
            );
            if let Some(q) = &e.quantization {
                let calibrated = q.calibration.as_ref().map_or(String::new(), |c| {
                    format!("; calibrated on {} clips of {} (sha256 {:.12})", c.clips, c.folder, c.sha256)
                });
                let cosine =
                    e.quantized_cosine_min.map_or(String::new(), |c| format!("; cosine {c:.6} on held-out inputs"));
                s += &format!("  {:<18} {}{calibrated}{cosine}\n", "", q.method);
            }
            for f in &e.fallbacks {
                s += &format!("  {:<18} note: {f}\n", "");
            }
        }
        for role in &self.absent_engines {
            let why = if role.ends_with("_projector") {
                "pre-extracted features for this row are refused"
            } else {
                "its row is always the zero-feature row"
            };
            s += &format!("  {role:<18} none in this bundle: {why}\n");
        }
        let l = &self.llm;
        s += &format!(
            "llm      {} ({:.1} MB): {}, {} parameters, width {}, vocabulary {}; loaded in {:.0} ms\n",
            l.file,
            mb(l.bytes),
            l.description,
            l.parameters,
            l.embedding_width,
            l.vocab,
            l.load_ms
        );
        s += &format!("llama.cpp {}\n", self.llama_cpp_system);
        s
    }
}
