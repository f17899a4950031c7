//! The Rust side of the exporter: turning a bundle into another bundle with the LLM in a
//! different GGUF type (the change `emollama plan` proposes for small boards), using
//! llama.cpp's own quantizer. The PyTorch side (modules, ONNX, goldens) is in
//! `export/python`.

use std::path::{Path, PathBuf};

use emollama_bundle::{sha256_file, Bundle, BundleError, Manifest, Role};
use emollama_engines::llm::{quantize, QuantType};
use emollama_engines::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("output folder {0} already exists")]
    OutputExists(PathBuf),
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io { path: path.to_path_buf(), source }
}

/// The manifest's precision name of a GGUF type.
pub fn precision_name(q: QuantType) -> &'static str {
    match q {
        QuantType::F32 => "f32",
        QuantType::F16 => "f16",
        QuantType::Q8_0 => "q8_0",
        QuantType::Q4_0 => "q4_0",
        QuantType::Q4KM => "q4_k_m",
    }
}

/// Write a copy of the bundle at `src` to `dst` whose LLM is quantized to `qtype`, with
/// the manifest's entry (path, size, sha256, precision) updated. `dst` is assembled under
/// a temporary name and renamed when complete, so it never exists half-written.
pub fn requantize_bundle(src: &Path, dst: &Path, qtype: QuantType, threads: i32) -> Result<Manifest, ExportError> {
    if dst.exists() {
        return Err(ExportError::OutputExists(dst.into()));
    }
    let bundle = Bundle::open_verified(src)?;
    let staging =
        dst.with_file_name(format!(".{}.partial", dst.file_name().map_or("bundle".into(), |n| n.to_string_lossy())));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let mut manifest = bundle.manifest().clone();
    for entry in &mut manifest.files {
        let from = bundle.path_of(entry);
        if entry.role == Role::Llm {
            let name = format!("llm-{}.gguf", precision_name(qtype));
            let to = staging.join(&name);
            quantize(&from, &to, qtype, threads)?;
            entry.path = name;
            entry.precision = precision_name(qtype).into();
            entry.size = std::fs::metadata(&to).map_err(io(&to))?.len();
            entry.sha256 = sha256_file(&to).map_err(io(&to))?;
            if let Some(p) = entry.parity.as_mut() {
                p.reference = format!(
                    "{} (requantized from {} by llama.cpp; parity not re-measured)",
                    p.reference,
                    from.display()
                );
            }
        } else {
            let to = staging.join(&entry.path);
            std::fs::copy(&from, &to).map_err(io(&to))?;
        }
    }
    manifest.id = format!("{}-{}", manifest.id, precision_name(qtype));
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    let mpath = staging.join("manifest.json");
    std::fs::write(&mpath, text).map_err(io(&mpath))?;
    Bundle::open_verified(&staging)?;
    std::fs::rename(&staging, dst).map_err(io(dst))?;
    Ok(manifest)
}
