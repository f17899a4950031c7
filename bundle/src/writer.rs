//! Deriving a bundle from another with one file replaced (the LLM requantized, say):
//! the other files copied, the manifest entry updated, the result verified, all under a
//! temporary name renamed at the end, so the new bundle never exists half-written.

use std::path::{Path, PathBuf};

use crate::error::BundleError;
use crate::manifest::{Manifest, Role};
use crate::types::Precision;
use crate::verify::{sha256_file, sha256_stream, Bundle, MANIFEST_FILE};

/// The hidden folder beside `dst` (`.NAME.SUFFIX`) a bundle is written into before it is
/// renamed into place.
fn beside(dst: &Path, suffix: &str) -> PathBuf {
    dst.with_file_name(format!(".{}.{suffix}", dst.file_name().map_or("bundle".into(), |n| n.to_string_lossy())))
}

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
    let staging = beside(dst, "partial");
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

/// Install a checked copy of the bundle at `src` as `dst` (`emollama install-bundle`):
/// the manifest and the files it lists, each hashed while it is copied and compared
/// with the manifest, into a hidden folder beside `dst` that replaces `dst` by renames
/// only once everything matched. A corrupt source or a full disk leaves the installed
/// bundle as it was.
pub fn install_bundle(src: &Path, dst: &Path) -> Result<Manifest, BundleError> {
    let bundle = Bundle::open(src)?;
    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    let staging = beside(dst, "partial");
    let previous = beside(dst, "old");
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_dir_all(&previous);
    std::fs::create_dir_all(&staging).map_err(write_err(&staging))?;
    let result = (|| {
        for entry in &bundle.manifest().files {
            let to = staging.join(&entry.path);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(write_err(dir))?;
            }
            copy_checked(&bundle.path_of(entry), &to, entry.size, &entry.sha256)?;
        }
        let manifest = staging.join(MANIFEST_FILE);
        std::fs::copy(src.join(MANIFEST_FILE), &manifest).map_err(write_err(&manifest))?;
        Bundle::open(&staging)?;
        readable_by_all(&staging)?;
        if dst.exists() {
            std::fs::rename(dst, &previous).map_err(write_err(dst))?;
        }
        std::fs::rename(&staging, dst).map_err(write_err(dst))?;
        let _ = std::fs::remove_dir_all(&previous);
        Ok(bundle.manifest().clone())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Copy `from` to `to`, hashing on the way; the copy is synced before it counts.
fn copy_checked(from: &Path, to: &Path, size: u64, sha256: &str) -> Result<(), BundleError> {
    use std::io::Write;
    let mut input = std::fs::File::open(from)
        .map_err(|_| BundleError::MissingFile { path: from.to_path_buf(), role: "listed in the manifest".into() })?;
    let mut output = std::fs::File::create(to).map_err(write_err(to))?;
    let (actual, copied) = sha256_stream(
        &mut input,
        |chunk| output.write_all(chunk).map_err(write_err(to)),
        |source| BundleError::FileUnreadable { path: from.to_path_buf(), source },
    )?;
    output.sync_all().map_err(write_err(to))?;
    if copied != size {
        return Err(BundleError::SizeMismatch { path: from.to_path_buf(), expected: size, actual: copied });
    }
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(BundleError::ChecksumMismatch { path: from.to_path_buf(), expected: sha256.into(), actual });
    }
    Ok(())
}

/// The service runs as its own user: the installed bundle is 0755/0644 whatever the
/// installing shell's umask.
fn readable_by_all(dir: &Path) -> Result<(), BundleError> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(write_err(p));
    set(dir, 0o755)?;
    for entry in std::fs::read_dir(dir).map_err(write_err(dir))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            readable_by_all(&path)?;
        } else {
            set(&path, 0o644)?;
        }
    }
    Ok(())
}
