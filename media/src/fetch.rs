//! An HTTP(S) source fetched once into a local file, byte for byte (the container,
//! rotation and all, exactly as served), bounded by the network deadline, the file size
//! limit and the request's cancel token; the request then reads the local copy. (Live
//! streams are read directly: see [`crate::SourceKind`].)

use std::ffi::{c_int, c_void, CString};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use emollama_engines::CancelToken;
use ff::ffi;
use ffmpeg_next as ff;

use super::error::MediaError;
use super::input::{network_options, open_failure, MediaLimits};

/// Fetch an `http(s)://` `url` into `dest` (created 0600; the caller removes it).
/// Returns its size.
pub fn fetch_url(url: &str, dest: &Path, limits: &MediaLimits, cancel: &CancelToken) -> Result<u64, MediaError> {
    super::init();
    download(url, dest, limits, cancel)
}

fn private_file(dest: &Path, source: &str) -> Result<std::fs::File, MediaError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| MediaError::Open { source_name: source.to_string(), reason: format!("{}: {e}", dest.display()) })
}

/// What FFmpeg's interrupt callback reads: stop when cancelled or past the deadline.
struct StopWhen<'a> {
    cancel: &'a CancelToken,
    deadline: Instant,
}

unsafe extern "C" fn should_stop(opaque: *mut c_void) -> c_int {
    // SAFETY: `opaque` points at the `StopWhen` that outlives the AVIOContext (see download).
    let s = unsafe { &*(opaque as *const StopWhen<'_>) };
    c_int::from(s.cancel.is_cancelled() || Instant::now() > s.deadline)
}

/// An open AVIOContext, closed on every path out.
struct Avio(*mut ffi::AVIOContext);

impl Drop for Avio {
    fn drop(&mut self) {
        // SAFETY: opened by avio_open2; avio_closep tolerates and nulls the pointer.
        unsafe { ffi::avio_closep(&mut self.0) };
    }
}

/// Why the download stopped early, when it did: cancelled, or past its deadline.
fn stopped(url: &str, limits: &MediaLimits, cancel: &CancelToken, deadline: Instant) -> Option<MediaError> {
    let source_name = url.to_string();
    if cancel.is_cancelled() {
        Some(MediaError::Cancelled { source_name })
    } else if Instant::now() > deadline {
        Some(MediaError::Timeout { source_name, seconds: limits.network_timeout_s })
    } else {
        None
    }
}

fn download(url: &str, dest: &Path, limits: &MediaLimits, cancel: &CancelToken) -> Result<u64, MediaError> {
    let name = url.to_string();
    let deadline = Instant::now() + Duration::from_secs_f64(limits.network_timeout_s);
    let stop = StopWhen { cancel, deadline };
    let callback = ffi::AVIOInterruptCB { callback: Some(should_stop), opaque: &stop as *const _ as *mut c_void };
    let open_err = |reason: String| MediaError::Open { source_name: name.clone(), reason };
    let c_url = CString::new(url).map_err(|_| open_err("the URL contains a NUL byte".into()))?;
    let mut avio = Avio(std::ptr::null_mut());
    // SAFETY: valid pointers for the call; the dictionary is handed over and taken back
    // (what FFmpeg did not consume is freed with it).
    let opened = unsafe {
        let mut dict = network_options(url, limits.network_timeout_s).disown();
        let r = ffi::avio_open2(&mut avio.0, c_url.as_ptr(), ffi::AVIO_FLAG_READ, &callback, &mut dict);
        drop(ff::Dictionary::own(dict));
        r
    };
    if opened < 0 {
        return Err(stopped(url, limits, cancel, deadline)
            .unwrap_or_else(|| open_err(open_failure(url, ff::Error::from(opened)))));
    }
    let mut file = private_file(dest, url)?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total: u64 = 0;
    loop {
        // SAFETY: `avio.0` is open; `buf` has `buf.len()` writable bytes.
        let n = unsafe { ffi::avio_read(avio.0, buf.as_mut_ptr(), buf.len() as c_int) };
        if n == ffi::AVERROR_EOF || n == 0 {
            break;
        }
        if n < 0 {
            return Err(stopped(url, limits, cancel, deadline).unwrap_or_else(|| MediaError::Decode {
                source_name: name.clone(),
                reason: ff::Error::from(n).to_string(),
            }));
        }
        total += n as u64;
        if total > limits.max_file_bytes {
            return Err(MediaError::FileTooLarge { source_name: name, size: total, limit: limits.max_file_bytes });
        }
        file.write_all(&buf[..n as usize]).map_err(|e| open_err(format!("{}: {e}", dest.display())))?;
    }
    if total == 0 {
        return Err(MediaError::Empty(url.into()));
    }
    file.sync_all().map_err(|e| open_err(format!("{}: {e}", dest.display())))?;
    Ok(total)
}
