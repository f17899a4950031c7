//! The service's private upload folder: 0700, its files 0600, whatever the umask. It
//! holds an exclusive lock (`flock` on `.lock`) for the life of the process, so that a
//! starting service can tell the folders of killed processes (lock free) from those of
//! running ones, and remove them. The process removes its own folder on every way out
//! (drain, drain deadline, second signal), not only in a destructor.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const PREFIX: &str = "emollama-uploads-";
const LOCK: &str = ".lock";

#[derive(Debug)]
pub struct UploadDir {
    path: PathBuf,
    /// Held (locked) until the process ends.
    _lock: File,
    next: AtomicU64,
}

/// Whether `dir` is a folder this process can create files in.
pub fn check_writable(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such folder"));
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let probe = dir.join(format!(".emollama-probe-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe)?;
    std::fs::remove_file(&probe)
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Remove the upload folders in `parent` whose process is gone (their lock is free).
/// Returns how many were removed.
pub fn remove_stale(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) || !entry.path().is_dir() {
            continue;
        }
        let stale = match File::open(entry.path().join(LOCK)) {
            Ok(lock) => try_lock(&lock),
            // A folder without a lock file was left by an older version: nobody holds it.
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        if stale && std::fs::remove_dir_all(entry.path()).is_ok() {
            tracing::info!(folder = %entry.path().display(), "removed the upload folder of a stopped process");
            removed += 1;
        }
    }
    removed
}

impl UploadDir {
    /// Remove stale folders in `parent`, then make and lock a new private one.
    pub fn create(parent: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(parent)?;
        remove_stale(parent);
        let mut n = 0u32;
        let path = loop {
            let candidate = parent.join(format!("{PREFIX}{}-{n}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        };
        // The mode given at creation is masked by the umask: set it outright.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        let lock = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path.join(LOCK))?;
        if !try_lock(&lock) {
            return Err(io::Error::other("cannot lock the new upload folder"));
        }
        Ok(Self { path, _lock: lock, next: AtomicU64::new(0) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new file (0600) for one upload, removed when the returned guard drops.
    pub fn new_file(&self) -> io::Result<(Upload, File)> {
        let path = self.path.join(format!("upload-{}", self.next.fetch_add(1, Ordering::Relaxed)));
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok((Upload { path, client_name: None }, file))
    }

    /// Remove the folder and everything in it (the last step before the process exits).
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(folder = %self.path.display(), "cannot remove the upload folder: {e}");
            }
        }
    }
}

impl Drop for UploadDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// An uploaded file, removed when the request ends.
#[derive(Debug)]
pub struct Upload {
    path: PathBuf,
    /// The file name the client sent (shortened), for errors: never the private path.
    client_name: Option<String>,
}

impl Upload {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn set_client_name(&mut self, name: Option<&str>) {
        self.client_name = name.filter(|n| !n.is_empty()).map(crate::error::shown);
    }

    /// What errors call the upload.
    pub fn shown_name(&self) -> String {
        match &self.client_name {
            Some(n) => format!("the uploaded file {n}"),
            None => "the uploaded file".into(),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_locked_and_stale_folders_removed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = UploadDir::create(parent.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let (upload, _f) = dir.new_file().unwrap();
        assert_eq!(std::fs::metadata(upload.path()).unwrap().permissions().mode() & 0o777, 0o600);
        // A live folder (locked) survives a second start; a dead one does not.
        let stale = parent.path().join(format!("{PREFIX}999999-0"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("upload-0"), b"left behind").unwrap();
        let second = UploadDir::create(parent.path()).unwrap();
        assert!(dir.path().is_dir(), "a running process's folder is kept");
        assert!(!stale.exists(), "a stopped process's folder is removed");
        drop(upload);
        drop(dir);
        drop(second);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
