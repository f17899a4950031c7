//! Observers of a session's stages. The one the project ships is [`InputDump`]: it
//! writes each engine's exact input and the prompt ids to a folder, which the Python
//! reference pipeline (`emollama_export.reference`) runs through PyTorch and
//! transformers to check the runtime token for token.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use crate::session::PromptTokens;
use crate::RuntimeError;

/// Sees what each stage feeds its engine.
pub trait Observer {
    /// An engine input (or the zero rows), by its manifest name.
    fn tensor(&mut self, name: &str, tensor: &ArrayD<f32>) -> Result<(), RuntimeError>;
    /// The tokenized prompt and the generation budget.
    fn prompt(&mut self, prompt: &PromptTokens, max_new_tokens: u32) -> Result<(), RuntimeError>;
}

/// Writes `NAME.f32` files and `index.json` (tensors, prompt ids, label ids) to a folder.
pub struct InputDump {
    dir: PathBuf,
    tensors: serde_json::Map<String, serde_json::Value>,
}

impl InputDump {
    pub fn new(dir: &Path) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(Self { dir: dir.to_path_buf(), tensors: Default::default() })
    }
}

fn io(path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::Io { path: path.to_path_buf(), source: e }
}

impl Observer for InputDump {
    fn tensor(&mut self, name: &str, a: &ArrayD<f32>) -> Result<(), RuntimeError> {
        let bytes: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        let path = self.dir.join(format!("{name}.f32"));
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        self.tensors.insert(name.into(), serde_json::json!({"file": format!("{name}.f32"), "shape": a.shape()}));
        Ok(())
    }

    fn prompt(&mut self, p: &PromptTokens, max_new_tokens: u32) -> Result<(), RuntimeError> {
        let labels: serde_json::Map<String, serde_json::Value> =
            p.labels.iter().zip(&p.label_ids).map(|(l, i)| (l.to_string(), serde_json::json!(i))).collect();
        let index = serde_json::json!({
            "tensors": self.tensors,
            "prompt": {"before_rows": p.before_rows, "after_rows": p.after_rows},
            "labels": labels,
            "max_new_tokens": max_new_tokens,
        });
        let path = self.dir.join("index.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&index).expect("json")).map_err(|e| io(&path, e))
    }
}
