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

/// What is at an install's destination, and whether it may be replaced.
fn check_destination(dst: &Path, force: bool) -> Result<(), BundleError> {
    let meta = match std::fs::symlink_metadata(dst) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BundleError::Write { path: dst.into(), source: e }),
        Ok(m) => m,
    };
    if force {
        return Ok(());
    }
    let refuse = |what: String| BundleError::NotABundle { path: dst.into(), what };
    if !meta.is_dir() {
        return Err(refuse(crate::files::describe_kind(&meta).into()));
    }
    let empty = std::fs::read_dir(dst).map_err(write_err(dst))?.next().is_none();
    if empty || Bundle::open(dst).is_ok() {
        return Ok(());
    }
    Err(refuse("a folder that holds no bundle".into()))
}

/// Install a checked copy of the bundle at `src` as `dst` (`emollama install-bundle`).
/// `dst` must be absent, an empty folder or an installed bundle (`force`: anything). The
/// manifest and the files it lists are copied into a hidden folder beside `dst` (a name
/// of its own, removed on every failure): regular files only, never a symlink, a FIFO
/// or a device, never more bytes than the manifest says, each hashed while copied. That
/// folder replaces `dst` by renames only once everything matched: a corrupt source or a
/// full disk leaves the installed bundle as it was.
pub fn install_bundle(src: &Path, dst: &Path, force: bool) -> Result<Manifest, BundleError> {
    use crate::files::{open_regular, read_capped, Links};
    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    check_destination(dst, force)?;
    // The manifest is read once; the bytes checked are the bytes installed.
    let manifest_path = src.join(MANIFEST_FILE);
    let manifest_bytes = open_regular(&manifest_path, MAX_MANIFEST_BYTES, Links::Refuse)
        .and_then(|(f, _)| read_capped(&manifest_path, f, MAX_MANIFEST_BYTES, &|| false))
        .map_err(|e| BundleError::SourceFile(Box::new(e)))?;
    let bundle = Bundle::open(src)?;
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    let name = dst.file_name().map_or("bundle".into(), |n| n.to_string_lossy().into_owned());
    let staging =
        tempfile::Builder::new().prefix(&format!(".{name}.partial-")).tempdir_in(parent).map_err(write_err(parent))?;
    for entry in &bundle.manifest().files {
        let to = staging.path().join(&entry.path);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        }
        copy_checked(&bundle.path_of(entry), &to, entry.size, &entry.sha256)?;
    }
    let manifest = staging.path().join(MANIFEST_FILE);
    std::fs::write(&manifest, &manifest_bytes).map_err(write_err(&manifest))?;
    Bundle::open(staging.path())?;
    readable_by_all(staging.path())?;
    // The old destination is moved aside under a name of its own, then removed by kind.
    let previous =
        tempfile::Builder::new().prefix(&format!(".{name}.old-")).tempdir_in(parent).map_err(write_err(parent))?;
    let aside = previous.path().join("old");
    let had_previous = std::fs::symlink_metadata(dst).is_ok();
    if had_previous {
        std::fs::rename(dst, &aside).map_err(write_err(dst))?;
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, dst) {
        let _ = std::fs::remove_dir_all(&staged);
        if had_previous {
            let _ = std::fs::rename(&aside, dst); // put back what was there
        }
        return Err(write_err(dst)(e));
    }
    drop(previous); // removes the old destination, whatever it was
    Ok(bundle.manifest().clone())
}

/// The largest manifest an install reads.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Copy `from` (a regular file, not a link, of at most `size` bytes) to `to`, hashing on
/// the way; the copy is synced before it counts. A mismatch says which way it differs
/// without showing the file's own size or hash (it may not be the user's to read).
fn copy_checked(from: &Path, to: &Path, size: u64, sha256: &str) -> Result<(), BundleError> {
    use std::io::{Read, Write};
    let (input, _) = crate::files::open_regular(from, size, crate::files::Links::Refuse).map_err(|e| match e {
        crate::files::FileError::TooLarge { .. } => {
            BundleError::SizeMismatch { path: from.into(), expected: size, larger: true }
        }
        crate::files::FileError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            BundleError::MissingFile { path: from.to_path_buf(), role: "listed in the manifest".into() }
        }
        e => BundleError::SourceFile(Box::new(e)),
    })?;
    let mut output = std::fs::File::create(to).map_err(write_err(to))?;
    let (actual, copied) = sha256_stream(
        &mut input.take(size + 1),
        |chunk| output.write_all(chunk).map_err(write_err(to)),
        |source| BundleError::FileUnreadable { path: from.to_path_buf(), source },
    )?;
    output.sync_all().map_err(write_err(to))?;
    if copied != size {
        return Err(BundleError::SizeMismatch { path: from.to_path_buf(), expected: size, larger: copied > size });
    }
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(BundleError::ChecksumMismatch { path: from.to_path_buf(), expected: sha256.into() });
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
