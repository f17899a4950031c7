use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::contract::engine_io;
use crate::error::BundleError;
use crate::manifest::{FileEntry, GenerationPreset, Manifest, Role, FORMAT, FORMAT_VERSION};
use crate::types::{FileFormat, ModelFamily, Precision};

pub const MANIFEST_FILE: &str = "manifest.json";

/// A bundle whose manifest has been read and checked for consistency.
#[derive(Debug, Clone)]
pub struct Bundle {
    root: PathBuf,
    manifest: Manifest,
}

impl Bundle {
    /// Read `DIR/manifest.json` and check format, version, file paths, roles and the
    /// embedding width shared by the engines and the LLM. Does not hash the files: see
    /// [`Bundle::verify_files`].
    #[tracing::instrument(level = "debug")]
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        if !dir.is_dir() {
            return Err(BundleError::NotAFolder(dir.to_path_buf()));
        }
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| BundleError::ManifestUnreadable { path: path.clone(), source })?;
        Self::from_manifest_text(dir, &text)
    }

    /// [`Bundle::open`] on a manifest's text already read (the bundle's files are not
    /// looked at): what the fuzz target `manifest` feeds.
    pub fn from_manifest_text(dir: &Path, text: &str) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST_FILE);
        // Check the format tag and version first, so that a bundle from a newer exporter
        // says "unsupported version" rather than failing on some unknown field.
        let head: serde_json::Value = serde_json::from_str(text)
            .map_err(|source| BundleError::ManifestMalformed { path: path.clone(), source })?;
        let format = head.get("format").and_then(|v| v.as_str()).unwrap_or_default();
        if format != FORMAT {
            return Err(BundleError::WrongFormat { path, found: format.into(), expected: FORMAT });
        }
        let version = head.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version < u64::from(FORMAT_VERSION) {
            return Err(BundleError::LegacyVersion { found: version as u32, supported: FORMAT_VERSION });
        }
        if version != u64::from(FORMAT_VERSION) {
            return Err(BundleError::UnsupportedVersion {
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest = serde_json::from_value(head)
            .map_err(|source| BundleError::ManifestMalformed { path: path.clone(), source })?;
        let bundle = Bundle { root: dir.to_path_buf(), manifest };
        bundle.check_consistency()?;
        Ok(bundle)
    }

    /// [`Bundle::open`] followed by [`Bundle::verify_files`].
    pub fn open_verified(dir: &Path) -> Result<Self, BundleError> {
        let bundle = Self::open(dir)?;
        bundle.verify_files()?;
        Ok(bundle)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The one file with `role`.
    pub fn file(&self, role: &Role) -> Option<&FileEntry> {
        self.manifest.files.iter().find(|f| &f.role == role)
    }

    /// The one file with `role`, which [`Bundle::open`] checked exists.
    pub fn required(&self, role: &Role) -> Result<&FileEntry, BundleError> {
        self.file(role).ok_or_else(|| BundleError::MissingRole(role.clone()))
    }

    pub fn path_of(&self, entry: &FileEntry) -> PathBuf {
        self.root.join(&entry.path)
    }

    /// Check every file's presence, size (cheap, first) and sha256.
    #[tracing::instrument(level = "debug", skip(self), fields(bundle = %self.root.display()))]
    pub fn verify_files(&self) -> Result<(), BundleError> {
        for entry in &self.manifest.files {
            let path = self.path_of(entry);
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => return Err(BundleError::MissingFile { path, role: entry.role.to_string() }),
            };
            if meta.len() != entry.size {
                return Err(BundleError::SizeMismatch { path, expected: entry.size, larger: meta.len() > entry.size });
            }
            let actual =
                sha256_file(&path).map_err(|source| BundleError::FileUnreadable { path: path.clone(), source })?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                return Err(BundleError::ChecksumMismatch { path, expected: entry.sha256.clone() });
            }
            tracing::debug!(file = %entry.path, "verified");
        }
        Ok(())
    }

    fn check_consistency(&self) -> Result<(), BundleError> {
        let m = &self.manifest;
        for entry in &m.files {
            let p = Path::new(&entry.path);
            let safe = p.components().all(|c| matches!(c, Component::Normal(_)));
            if !safe || entry.path.is_empty() {
                return Err(BundleError::UnsafePath(entry.path.clone()));
            }
        }
        let mut counts: HashMap<&Role, usize> = HashMap::new();
        for entry in &m.files {
            *counts.entry(&entry.role).or_default() += 1;
        }
        let count = |role: &Role| counts.get(role).copied().unwrap_or(0);
        let v1 = m.model == ModelFamily::EmotionLlama;
        // Emotion-LLaMA's local and temporal engines may be missing (their rows are then
        // the zero rows); every v2 engine is needed.
        let optional = |role: &Role| role.is_optional() && (v1 || !m.model.encoders().contains(role));
        let required = m.model.encoders().iter().chain([&Role::Llm, &Role::ZeroRows]);
        let faces_and_projectors = Role::FACE_NETS.iter().chain(Role::PROJECTORS.iter());
        for role in required.chain(faces_and_projectors.clone()).chain(Role::ASR.iter()) {
            match count(role) {
                0 if optional(role) => {}
                0 => return Err(BundleError::MissingRole(role.clone())),
                1 => {}
                count => return Err(BundleError::DuplicateRole { role: role.clone(), count }),
            }
        }
        // A model's bundle holds none of the other model's engines.
        let foreign = Role::ENGINES.iter().chain([&Role::FusionEngine]).chain(faces_and_projectors);
        let v1_only = |r: &Role| Role::FACE_NETS.contains(r) || Role::PROJECTORS.contains(r);
        let belongs = |r: &Role| m.model.encoders().contains(r) || (v1 && v1_only(r));
        if let Some(role) = foreign.filter(|r| count(r) > 0).find(|r| !belongs(r)) {
            return Err(BundleError::Inconsistent(format!("{role} is not an engine of {}", m.model)));
        }
        // Speech recognition is optional, but only as a whole, with its manifest section.
        let asr = Role::ASR.iter().filter(|r| count(r) == 1).count();
        if (asr != 0 || m.asr.is_some()) && (asr != Role::ASR.len() || m.asr.is_none()) {
            return Err(BundleError::Inconsistent(format!(
                "speech recognition needs all of asr_encoder, asr_cross_kv, asr_decoder, asr_tokenizer and the \
                 manifest's `asr` section; the bundle has {asr} of the files{}",
                if m.asr.is_some() { " and the section" } else { " and no section" }
            )));
        }
        // The face detector is optional, but only as a whole.
        let nets = Role::FACE_NETS.iter().filter(|r| count(r) == 1).count();
        if nets != 0 && nets != Role::FACE_NETS.len() {
            return Err(BundleError::Inconsistent(format!(
                "the face detector needs all of face_pnet, face_rnet, face_onet; the bundle has {nets} of them"
            )));
        }
        for entry in &m.files {
            self.check_file(entry)?;
        }
        let (mut order, mut blocks) = (m.prompt.row_order.clone(), m.model.row_blocks().to_vec());
        order.sort();
        blocks.sort();
        if order != blocks {
            return Err(BundleError::Inconsistent(format!(
                "prompt.row_order must name each of {} once ({}), it is {:?}",
                m.model.row_blocks().iter().map(|b| b.name()).collect::<Vec<_>>().join(", "),
                m.model,
                m.prompt.row_order.iter().map(|b| b.name()).collect::<Vec<_>>()
            )));
        }
        let mut absent = crate::RowBlock::ALL.iter().filter(|b| !blocks.contains(b));
        if let Some(b) = absent.find(|b| m.rows.of(**b) != 0) {
            return Err(BundleError::Inconsistent(format!("rows.{b}: {} has no such rows", m.model)));
        }
        // Every row is a position of the prompt: more than the trained context cannot run
        // (and a count this large would size the runtime's buffers from a manifest).
        if m.rows.total() > u64::from(m.llm.n_ctx_train) {
            return Err(BundleError::Inconsistent(format!(
                "rows: {} embedding rows do not fit the model's context of {} (llm.n_ctx_train)",
                m.rows.total(),
                m.llm.n_ctx_train
            )));
        }
        if m.prompt.placeholder.trim().is_empty() {
            return Err(BundleError::Inconsistent("prompt.placeholder is empty".into()));
        }
        let t = &m.preprocess.temporal;
        match (m.model, &t.window) {
            (ModelFamily::EmotionLlama, None)
                if t.frames != 0 && t.segments.checked_mul(t.frames_per_segment) == Some(t.frames) => {}
            (ModelFamily::EmotionLlama, _) => {
                return Err(BundleError::Inconsistent(format!(
                    "preprocess.temporal: frames {} is not segments {} x frames_per_segment {} (and no window)",
                    t.frames, t.segments, t.frames_per_segment
                )))
            }
            (ModelFamily::EmotionLlamaV2, Some(w)) if t.frames != 0 && w.std.iter().all(|s| *s > 0.0) => {}
            (ModelFamily::EmotionLlamaV2, _) => {
                return Err(BundleError::Inconsistent(
                    "preprocess.temporal: emotion-llama-v2 needs frames and a window (seed, resize, mean, std > 0)"
                        .into(),
                ))
            }
        }
        // v1 crops faces; v2 hears Whisper's log-mel.
        if v1 != m.preprocess.face.is_some() || v1 == m.preprocess.audio.log_mel.is_some() {
            return Err(BundleError::Inconsistent(format!(
                "preprocess: {} needs {}",
                m.model,
                if v1 { "a face section and the waveform (no log_mel)" } else { "audio.log_mel and no face section" }
            )));
        }
        let a = &m.preprocess.audio;
        if a.channels != 1 || !(1000..=192_000).contains(&a.sample_rate) {
            return Err(BundleError::Inconsistent(format!(
                "preprocess.audio: {} channels at {} Hz; the runtime decodes mono at 1-192 kHz",
                a.channels, a.sample_rate
            )));
        }
        let face = m.preprocess.face.iter().flat_map(|f| [f.image_size, f.aligned_size]);
        let sizes: Vec<[u32; 2]> = [m.preprocess.global.image_size, t.image_size].into_iter().chain(face).collect();
        if sizes.iter().flatten().any(|&s| s == 0 || s > 4096) {
            return Err(BundleError::Inconsistent("preprocess: an image size is 0 or over 4096".into()));
        }
        for (name, p) in [("eval", &m.generation.eval), ("demo", &m.generation.demo)] {
            check_preset(p).map_err(|e| BundleError::Inconsistent(format!("generation.{name}: {e}")))?;
        }
        Ok(())
    }

    /// One file's format, precision and the tensors the runtime feeds and reads.
    fn check_file(&self, entry: &FileEntry) -> Result<(), BundleError> {
        let m = &self.manifest;
        let expected_format = match entry.role {
            Role::Llm => Some(FileFormat::Gguf),
            Role::ZeroRows => Some(FileFormat::RawF32),
            Role::AsrTokenizer => Some(FileFormat::TokenizerJson),
            Role::Other(_) => None,
            _ => Some(FileFormat::Onnx),
        };
        if let Some(expected) = expected_format.filter(|f| *f != entry.format) {
            return Err(BundleError::WrongFileFormat {
                path: entry.path.clone(),
                role: entry.role.clone(),
                format: entry.format,
                expected,
            });
        }
        let precision_ok = match (&entry.role, entry.precision) {
            (Role::Llm, Precision::Gguf(_)) => true,
            (Role::Llm, _) => false,
            (Role::Other(_) | Role::AsrTokenizer, _) => true,
            (_, Precision::Engine(_)) => true,
            (_, Precision::Gguf(_)) => false,
        };
        if !precision_ok {
            return Err(BundleError::WrongPrecision {
                path: entry.path.clone(),
                role: entry.role.clone(),
                precision: entry.precision,
                expected: if entry.role == Role::Llm { "GGUF" } else { "engine" },
            });
        }
        let Some(io) = engine_io(m.model, &entry.role) else { return Ok(()) };
        let missing = |kind, name, verb| BundleError::MissingTensor {
            path: entry.path.clone(),
            role: entry.role.clone(),
            kind,
            name,
            verb,
        };
        for name in io.inputs {
            if !entry.inputs.iter().any(|i| i.name == *name) {
                return Err(missing("input", name, "feeds"));
            }
        }
        let width = m.llm.embedding_width;
        for (name, block) in io.outputs {
            let Some(out) = entry.outputs.iter().find(|o| o.name == *name) else {
                return Err(missing("output", name, "reads"));
            };
            // Rows and zero rows are in the LLM's embedding space; MTCNN's outputs are not.
            let last = out.shape.last().and_then(|d| d.fixed());
            if (block.is_some() || entry.role == Role::ZeroRows) && last != Some(width) {
                return Err(BundleError::EmbeddingWidthMismatch {
                    engine: entry.role.to_string(),
                    output: out.name.clone(),
                    found: last.unwrap_or(0),
                    expected: width,
                });
            }
            if let Some(block) = block {
                let rows = out.shape.len().checked_sub(2).and_then(|i| out.shape[i].fixed());
                if out.shape.len() != 3 || rows != Some(u64::from(m.rows.of(*block))) {
                    return Err(BundleError::RowCountMismatch {
                        path: entry.path.clone(),
                        output: out.name.clone(),
                        block: *block,
                        found: out.shape_string(),
                        expected: m.rows.of(*block),
                    });
                }
            }
        }
        if entry.role == Role::ZeroRows {
            let shape = &entry.outputs.iter().find(|o| o.name == crate::contract::ZERO_ROWS).expect("checked").shape;
            let blocks = m.model.zero_row_blocks();
            if shape.first().and_then(|d| d.fixed()) != Some(blocks.len() as u64) || shape.len() != 2 {
                return Err(BundleError::Inconsistent(format!(
                    "{}: zero_rows must be [{}, width] ({})",
                    entry.path,
                    blocks.len(),
                    blocks.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }
}

fn check_preset(p: &GenerationPreset) -> Result<(), String> {
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return Err(format!("temperature {} must be finite and >= 0", p.temperature));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(format!("top_p {} must be in (0, 1]", p.top_p));
    }
    if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0) {
        return Err(format!("repetition_penalty {} must be finite and > 0", p.repetition_penalty));
    }
    if p.max_new_tokens == 0 {
        return Err("max_new_tokens must be at least 1".into());
    }
    if p.stop_strings.iter().any(|s| s.is_empty()) {
        return Err("a stop string is empty".into());
    }
    Ok(())
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    Ok(sha256_stream(&mut file, |_| Ok(()), |e| e)?.0)
}

/// Read `input` to the end in 1 MiB chunks, handing each to `on_chunk` (a copy, say);
/// the sha256 (lower-case hex) and the byte count. Read errors go through `read_err`, so
/// a caller can tell them from its own.
pub(crate) fn sha256_stream<E>(
    input: &mut impl Read,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    read_err: impl Fn(std::io::Error) -> E,
) -> Result<(String, u64), E> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(&read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        on_chunk(&buf[..n])?;
        bytes += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}
