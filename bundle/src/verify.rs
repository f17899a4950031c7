use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::BundleError;
use crate::manifest::{FileEntry, Manifest, Role, FORMAT, FORMAT_VERSION};

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
        // Check the format tag and version first, so that a bundle from a newer exporter
        // says "unsupported version" rather than failing on some unknown field.
        let head: serde_json::Value = serde_json::from_str(&text)
            .map_err(|source| BundleError::ManifestMalformed { path: path.clone(), source })?;
        let format = head.get("format").and_then(|v| v.as_str()).unwrap_or_default();
        if format != FORMAT {
            return Err(BundleError::WrongFormat { path, found: format.into(), expected: FORMAT });
        }
        let version = head.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
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
                return Err(BundleError::SizeMismatch { path, expected: entry.size, actual: meta.len() });
            }
            let actual =
                sha256_file(&path).map_err(|source| BundleError::FileUnreadable { path: path.clone(), source })?;
            if !actual.eq_ignore_ascii_case(&entry.sha256) {
                return Err(BundleError::ChecksumMismatch { path, expected: entry.sha256.clone(), actual });
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
        let required = Role::ENGINES.iter().chain(std::iter::once(&Role::Llm));
        for role in required {
            match counts.get(role).copied().unwrap_or(0) {
                0 => return Err(BundleError::MissingRole(role.clone())),
                1 => {}
                count => return Err(BundleError::DuplicateRole { role: role.clone(), count }),
            }
        }
        let width = m.llm.embedding_width;
        for role in &Role::ENGINES {
            let entry = self.file(role).expect("checked above");
            if entry.outputs.is_empty() {
                return Err(BundleError::Inconsistent(format!("{role} declares no outputs")));
            }
            for out in &entry.outputs {
                let last = out.shape.last().and_then(|d| d.fixed());
                if last != Some(width) {
                    return Err(BundleError::EmbeddingWidthMismatch {
                        engine: role.to_string(),
                        output: out.name.clone(),
                        found: last.unwrap_or(0),
                        expected: width,
                    });
                }
            }
        }
        if m.prompt.row_order.len() != 5 {
            return Err(BundleError::Inconsistent(format!(
                "prompt.row_order has {} entries, expected 5",
                m.prompt.row_order.len()
            )));
        }
        Ok(())
    }
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
