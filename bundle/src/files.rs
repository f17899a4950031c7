//! Opening a file that someone else named (a request's features file, a bundle being
//! installed, an eval dataset's inputs) without trusting what it is: only a regular file
//! is read, opened so that a FIFO cannot block the open, a symlink refused where the
//! caller says so, its size checked against a cap before any byte is read, and read in
//! chunks that a stop condition can interrupt.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a named file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path} is {size} bytes, over the {max} bytes it may hold")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("reading {path} was stopped")]
    Stopped { path: PathBuf },
}

/// What a file system entry is, in words.
pub fn describe_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Whether a symbolic link may stand for the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Follow,
    Refuse,
}

/// Open `path` for reading if it is a regular file of at most `max_bytes`; its size.
/// The open does not block (a FIFO is refused, not waited on), and the kind and size are
/// those of the file opened, not of a name that could change in between.
pub fn open_regular(path: &Path, max_bytes: u64, links: Links) -> Result<(File, u64), FileError> {
    let io = |source| FileError::Io { path: path.to_path_buf(), source };
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        // O_NOFOLLOW on a symlink fails with ELOOP: say what it is.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && links == Links::Refuse => {
            return Err(FileError::NotRegular { path: path.to_path_buf(), kind: "a symbolic link" })
        }
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular { path: path.to_path_buf(), kind: describe_kind(&meta) });
    }
    if meta.len() > max_bytes {
        return Err(FileError::TooLarge { path: path.to_path_buf(), size: meta.len(), max: max_bytes });
    }
    Ok((file, meta.len()))
}

/// Read `file` whole in chunks, at most `max_bytes` (a file that grew past its checked
/// size is refused), checking `stopped` between chunks.
pub fn read_capped(path: &Path, file: File, max_bytes: u64, stopped: &dyn Fn() -> bool) -> Result<Vec<u8>, FileError> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut limited = file.take(max_bytes + 1);
    loop {
        if stopped() {
            return Err(FileError::Stopped { path: path.to_path_buf() });
        }
        let n = limited.read(&mut chunk).map_err(|source| FileError::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
        if out.len() as u64 > max_bytes {
            return Err(FileError::TooLarge { path: path.to_path_buf(), size: out.len() as u64, max: max_bytes });
        }
    }
}

/// [`open_regular`] then [`read_capped`].
pub fn read_regular(
    path: &Path,
    max_bytes: u64,
    links: Links,
    stopped: &dyn Fn() -> bool,
) -> Result<Vec<u8>, FileError> {
    let (file, _) = open_regular(path, max_bytes, links)?;
    read_capped(path, file, max_bytes, stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.npy");
        std::fs::write(&file, b"0123456789").unwrap();
        let never = || false;
        assert_eq!(read_regular(&file, 10, Links::Refuse, &never).unwrap(), b"0123456789");
        assert!(matches!(read_regular(&file, 9, Links::Refuse, &never), Err(FileError::TooLarge { size: 10, .. })));
        assert!(matches!(read_regular(&file, 10, Links::Refuse, &|| true), Err(FileError::Stopped { .. })));
        let kind = |p: &Path, links| match open_regular(p, 1 << 20, links) {
            Err(FileError::NotRegular { kind, .. }) => kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(dir.path(), Links::Follow), "a folder");
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert_eq!(kind(&fifo, Links::Follow), "a FIFO (named pipe)");
        assert!(started.elapsed().as_secs() < 2, "the open did not wait for a writer");
        assert_eq!(kind(Path::new("/dev/null"), Links::Follow), "a character device");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(kind(&link, Links::Refuse), "a symbolic link");
        assert!(open_regular(&link, 10, Links::Follow).is_ok());
    }
}
