//! Finding and loading `libonnxruntime.so`, so that no user ever sets an environment
//! variable: an explicit path (config), `ORT_DYLIB_PATH` if set, next to the executable,
//! `../lib` beside it, the setup's cache, then the system library folders.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::EngineError;

/// The ONNX Runtime version the setup installs (PyPI `onnxruntime` wheel).
pub const SETUP_ORT_VERSION: &str = "1.31.1";

/// A process-wide ONNX Runtime: the loaded library and its environment.
#[derive(Debug)]
pub struct OrtRuntime {
    pub library: PathBuf,
    pub version: String,
    pub(crate) environment: ort::environment::Environment,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();

/// The places searched for the library, in order.
pub fn candidate_paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    let names = ["libonnxruntime.so", "libonnxruntime.so.1", &format!("libonnxruntime.so.{SETUP_ORT_VERSION}")];
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        // `/usr/bin` → `/usr/lib/emollama`, spelled without `..` (the path is reported).
        let prefix = dir.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.clone());
        for base in [dir.clone(), prefix.join("lib"), prefix.join("lib/emollama")] {
            out.extend(names.iter().map(|n| base.join(n)));
        }
    }
    out.push(
        emollama_bundle::locations::setup_cache_dir()
            .join(format!("onnxruntime/{SETUP_ORT_VERSION}/libonnxruntime.so.{SETUP_ORT_VERSION}")),
    );
    for base in
        ["/usr/lib/emollama", "/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
    {
        out.extend(names.iter().map(|n| Path::new(base).join(n)));
    }
    out
}

/// Load ONNX Runtime once per process. Later calls return the first runtime (the
/// library cannot be swapped inside a process).
pub fn init_runtime(explicit: Option<&Path>) -> Result<&'static OrtRuntime, EngineError> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // ONNX Runtime allows one environment per process: threads that arrive together
    // must not both build one.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let candidates = candidate_paths(explicit);
    let Some(path) = candidates.iter().find(|p| p.is_file()).cloned() else {
        return Err(EngineError::OrtLibraryNotFound { searched: candidates });
    };
    // Microsoft's builds (1.31 here) upload telemetry on Linux too and keep a persistent
    // device id and event cache in ~/.cache/Microsoft (seen in the service's home).
    // `ORT_DISABLE_TELEMETRY=1`, set before the library initialises, is their full
    // opt-out; a device service sends nothing anywhere. Set here, under the init lock,
    // before any other thread can have loaded ONNX Runtime; a value the user set wins.
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    }
    let builder = ort::init_from(&path)
        .map_err(|e| EngineError::OrtLibraryLoad { path: path.clone(), message: e.to_string() })?;
    // And the API's switch, for the events that API controls.
    let environment = builder
        .with_name("emollama")
        .with_telemetry(false)
        .with_logger(std::sync::Arc::new(log_to_tracing))
        .build()
        .map_err(|e| EngineError::OrtEnvironment(e.to_string()))?;
    let version =
        library_version(&path).or_else(|| version_from_build_info(ort::info())).unwrap_or_else(|| "unknown".into());
    tracing::info!(library = %path.display(), %version, "ONNX Runtime loaded");
    Ok(RUNTIME.get_or_init(|| OrtRuntime { library: path, version, environment }))
}

/// ONNX Runtime's log into `tracing` (target `onnxruntime`), as llama.cpp's: one log,
/// one format, no colour codes in the journal. A kernel's failure is logged by the
/// executor and also returned by the run (and reported with the request): the log line
/// is demoted to debug, since a run terminated by a cancel token fails that way too.
fn log_to_tracing(level: ort::logging::LogLevel, _category: &str, _id: &str, location: &str, message: &str) {
    use ort::logging::LogLevel as L;
    let returned_by_run = location.contains("sequential_executor") && message.starts_with("Non-zero status code");
    match level {
        L::Error | L::Fatal if !returned_by_run => tracing::error!(target: "onnxruntime", "{message}"),
        L::Warning => tracing::warn!(target: "onnxruntime", "{message}"),
        L::Error | L::Fatal | L::Info => tracing::debug!(target: "onnxruntime", "{message}"),
        L::Verbose => tracing::trace!(target: "onnxruntime", "{message}"),
    }
}

/// The library's own version string (`OrtGetApiBase()->GetVersionString()`). ort loads
/// the library privately; opening it again only bumps the loader's reference count.
fn library_version(path: &Path) -> Option<String> {
    // SAFETY: the library is already loaded by ort (same path); OrtGetApiBase is the
    // documented C entry point, and GetVersionString returns a static C string.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").ok()?;
        let base = get();
        if base.is_null() {
            return None;
        }
        let v = ((*base).GetVersionString)();
        (!v.is_null()).then(|| std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// `ORT Build Info: git-branch=rel-1.31.1, ...` → `1.31.1` (fallback; release builds only).
fn version_from_build_info(info: &str) -> Option<String> {
    let branch = info.split("git-branch=").nth(1)?;
    let tag = branch.split([',', ' ']).next()?;
    Some(tag.trim_start_matches("rel-").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_build_info() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(version_from_build_info(info).as_deref(), Some("1.31.1"));
        assert_eq!(version_from_build_info("garbage"), None);
    }

    #[test]
    fn explicit_path_is_searched_first() {
        let c = candidate_paths(Some(Path::new("/opt/x/libonnxruntime.so")));
        assert_eq!(c[0], Path::new("/opt/x/libonnxruntime.so"));
        assert!(c
            .iter()
            .any(|p| p.ends_with(format!("onnxruntime/{SETUP_ORT_VERSION}/libonnxruntime.so.{SETUP_ORT_VERSION}"))));
    }
}
