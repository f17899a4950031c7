//! Deriving a bundle from another with one file replaced (the LLM requantized, say):
//! the other files copied, the manifest entry updated, the result verified, all under a
//! temporary name renamed at the end, so the new bundle never exists half-written.

use std::path::{Path, PathBuf};

use crate::error::BundleError;
use crate::manifest::{Manifest, Role};
use crate::types::Precision;
use crate::verify::{sha256_file, Bundle, MANIFEST_FILE};

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Write { path: path.to_path_buf(), source }
}

/// Write a copy of `src` at `dst` whose `role` file is `new_file` (a name inside the
/// bundle), made by `make(old_file, new_file_path)`, which returns its precision. The
/// manifest's id gets `-{id_suffix}`; the entry's parity says it was not re-measured.
pub fn derive_bundle<E: From<BundleError>>(
    src: &Bundle,
    dst: &Path,
    role: &Role,
    new_file: &str,
    id_suffix: &str,
    make: impl FnOnce(&Path, &Path) -> Result<Precision, E>,
) -> Result<Manifest, E> {
    if dst.exists() {
        return Err(BundleError::OutputExists(dst.into()).into());
    }
    src.verify_files()?;
    let staging: PathBuf =
        dst.with_file_name(format!(".{}.partial", dst.file_name().map_or("bundle".into(), |n| n.to_string_lossy())));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(write_err(&staging))?;
    let result = (|| {
        let mut manifest = src.manifest().clone();
        let mut make = Some(make);
        for entry in &mut manifest.files {
            let from = src.path_of(entry);
            if &entry.role == role {
                let to = staging.join(new_file);
                let make = make.take().ok_or_else(|| BundleError::DuplicateRole { role: role.clone(), count: 2 })?;
                entry.precision = make(&from, &to)?;
                entry.path = new_file.into();
                entry.size = std::fs::metadata(&to).map_err(write_err(&to))?.len();
                entry.sha256 = sha256_file(&to).map_err(write_err(&to))?;
                if let Some(p) = entry.parity.as_mut() {
                    p.reference = format!("{} (derived from {}; parity not re-measured)", p.reference, from.display());
                    p.max_abs_diff = None;
                }
            } else {
                let to = staging.join(&entry.path);
                std::fs::copy(&from, &to).map_err(write_err(&to))?;
            }
        }
        if make.is_some() {
            return Err(BundleError::MissingRole(role.clone()).into());
        }
        manifest.id = format!("{}-{id_suffix}", manifest.id);
        let text = serde_json::to_string_pretty(&manifest).expect("a manifest serialises");
        let path = staging.join(MANIFEST_FILE);
        std::fs::write(&path, text).map_err(write_err(&path))?;
        Bundle::open_verified(&staging)?;
        std::fs::rename(&staging, dst).map_err(write_err(dst))?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}
