//! A network source fetched once into a local file, so that a request opens its URL one
//! time (probe, frame count, video and audio then read the local copy, all from the same
//! bytes). HTTP(S) is copied byte for byte (the container, rotation and all, exactly as
//! served); RTSP has no file to copy and is remuxed (stream copy, no re-encoding) into
//! Matroska for `live_capture_s` seconds of stream time. Both are bounded by the
//! network deadline, the file size limit and the request's cancel token.

use std::ffi::{c_int, c_void, CString};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use emollama_engines::CancelToken;
use ff::ffi;
use ff::media::Type;
use ffmpeg_next as ff;

use super::error::MediaError;
use super::input::{network_options, open_input, stopped, MediaLimits};

/// Fetch `url` into `dest` (created 0600; the caller removes it). Returns its size.
pub fn fetch_network(url: &str, dest: &Path, limits: &MediaLimits, cancel: &CancelToken) -> Result<u64, MediaError> {
    super::init();
    if url.starts_with("rtsp://") || url.starts_with("rtsps://") {
        remux_live(url, dest, limits, cancel)
    } else {
        download(url, dest, limits, cancel)
    }
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
        return Err(
            stopped(url, limits, cancel, deadline).unwrap_or_else(|| open_err(ff::Error::from(opened).to_string()))
        );
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

/// Stream-copy the audio and video streams of a live source into Matroska until
/// `live_capture_s` seconds of stream time (or its end).
fn remux_live(url: &str, dest: &Path, limits: &MediaLimits, cancel: &CancelToken) -> Result<u64, MediaError> {
    let name = url.to_string();
    let (mut input, deadline) = open_input(url, limits, cancel)?;
    let deadline = deadline.unwrap_or_else(Instant::now);
    let write_err =
        |e: ff::Error| MediaError::Open { source_name: name.clone(), reason: format!("{}: {e}", dest.display()) };
    drop(private_file(dest, url)?); // 0600 before FFmpeg opens it for writing
    let mut output = ff::format::output_as(dest, "matroska").map_err(write_err)?;
    let mut mapping = vec![None; input.nb_streams() as usize];
    for stream in input.streams() {
        let kind = stream.parameters().medium();
        if kind != Type::Video && kind != Type::Audio {
            continue;
        }
        let mut out = output.add_stream(ff::encoder::find(ff::codec::Id::None)).map_err(write_err)?;
        out.set_parameters(stream.parameters());
        // SAFETY: the codec tag of the source container means nothing to Matroska.
        unsafe { (*out.parameters().as_mut_ptr()).codec_tag = 0 };
        mapping[stream.index()] = Some((out.index(), stream.time_base()));
    }
    output.write_header().map_err(write_err)?;
    let mut packet = ff::Packet::empty();
    let mut first_seconds = None;
    loop {
        if let Some(e) = stopped(url, limits, cancel, deadline) {
            return Err(e);
        }
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(ff::Error::InvalidData) => continue,
            Err(e) => return Err(stopped(url, limits, cancel, deadline).unwrap_or_else(|| write_err(e))),
        }
        let Some((out_index, in_tb)) = mapping.get(packet.stream()).copied().flatten() else { continue };
        let seconds = packet.pts().map_or(0.0, |p| p as f64 * f64::from(in_tb));
        if seconds - *first_seconds.get_or_insert(seconds) >= limits.live_capture_s {
            break;
        }
        let out_tb = output.stream(out_index).map(|s| s.time_base()).unwrap_or(in_tb);
        packet.rescale_ts(in_tb, out_tb);
        packet.set_stream(out_index);
        packet.set_position(-1);
        packet.write_interleaved(&mut output).map_err(write_err)?;
    }
    output.write_trailer().map_err(write_err)?;
    let size = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    if size > limits.max_file_bytes {
        return Err(MediaError::FileTooLarge { source_name: name, size, limit: limits.max_file_bytes });
    }
    Ok(size)
}
