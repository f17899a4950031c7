use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

use llama_cpp_sys_2 as sys;

static BACKEND: OnceLock<()> = OnceLock::new();

/// Initialise llama.cpp once per process (it must not be initialised twice) and route
/// its log into `tracing` (target `llama.cpp`) instead of stderr.
pub fn init_backend() {
    BACKEND.get_or_init(|| unsafe {
        sys::llama_log_set(Some(log_to_tracing), std::ptr::null_mut());
        sys::llama_backend_init();
    });
}

/// llama.cpp's one-line description of the compiled backends and CPU features.
pub fn system_info() -> String {
    init_backend();
    // SAFETY: returns a pointer to a static, NUL-terminated string.
    unsafe { CStr::from_ptr(sys::llama_print_system_info()) }.to_string_lossy().trim().to_string()
}

unsafe extern "C" fn log_to_tracing(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let msg = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let msg = msg.trim_end();
    if msg.is_empty() {
        return;
    }
    // The eval layout starts with BOS and the tokenizer adds one more, exactly as the
    // official eval_emotion.py does: llama.cpp's warning about it is expected, once
    // per request, so it is demoted.
    let level = if msg.contains("starts with 2 BOS tokens") { sys::GGML_LOG_LEVEL_DEBUG } else { level };
    match level {
        sys::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "llama.cpp", "{msg}"),
        sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama.cpp", "{msg}"),
        sys::GGML_LOG_LEVEL_INFO => tracing::debug!(target: "llama.cpp", "{msg}"),
        _ => tracing::trace!(target: "llama.cpp", "{msg}"),
    }
}
