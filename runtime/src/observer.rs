//! Observers of a session's stages. The one the project ships is [`InputDump`]: it
//! writes each engine's exact input and the prompt ids to a folder, which the Python
//! reference pipeline (`emollama_export.reference`) runs through PyTorch and
//! transformers to check the runtime token for token.

use std::path::{Path, PathBuf};

use emollama_media::faces::FaceCrops;
use emollama_media::Clip;
use ndarray::ArrayD;

use crate::session::PromptTokens;
use crate::RuntimeError;

/// Sees what each stage feeds its engine.
pub trait Observer {
    /// An engine input (or the zero rows), by its manifest name.
    fn tensor(&mut self, name: &str, tensor: &ArrayD<f32>) -> Result<(), RuntimeError>;
    /// The tokenized prompt and the generation budget.
    fn prompt(&mut self, prompt: &PromptTokens, max_new_tokens: u32) -> Result<(), RuntimeError>;
    /// The face stage's result: the chosen faces, their frames and aligned crops.
    fn faces(&mut self, _clip: &Clip, _faces: &FaceCrops) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// Writes `NAME.f32` files and `index.json` (tensors, prompt ids, label ids) to a folder;
/// with faces, `faces.json` (each crop's frame, box, landmarks, score and the frame's mean
/// luma, for checking a crop against its frame decoded elsewhere) and `face_crops.rgb`
/// (the aligned crops, raw RGB, in the same order).
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

    fn faces(&mut self, clip: &Clip, faces: &FaceCrops) -> Result<(), RuntimeError> {
        let first = clip.frames.values().next();
        let crops: Vec<serde_json::Value> = faces
            .crops
            .iter()
            .map(|(frame, face, _)| {
                serde_json::json!({
                    "frame": frame,
                    "bbox": face.bbox,
                    "score": face.score,
                    "landmarks": face.landmarks,
                    "frame_luma": clip.frames.get(frame).map_or(0.0, |f| f.mean_luma()),
                })
            })
            .collect();
        let aligned = faces.crops.first().map_or([0, 0], |(_, _, c)| [c.width, c.height]);
        let index = serde_json::json!({
            "frame_width": first.map_or(0, |f| f.width),
            "frame_height": first.map_or(0, |f| f.height),
            "aligned_size": aligned,
            "report": faces.report,
            "crops": crops,
        });
        let bytes: Vec<u8> = faces.crops.iter().flat_map(|(_, _, c)| c.data.iter().copied()).collect();
        let path = self.dir.join("face_crops.rgb");
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        let path = self.dir.join("faces.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&index).expect("json")).map_err(|e| io(&path, e))
    }
}
