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

/// One device llama.cpp can compute on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComputeDevice {
    /// `CPU`, `CUDA0`, …
    pub name: String,
    pub description: String,
    /// `cpu`, `gpu`, `igpu` (an integrated GPU sharing the host's memory, as on Jetson), `accel`.
    pub kind: &'static str,
    pub memory_free: u64,
    pub memory_total: u64,
}

impl ComputeDevice {
    pub fn is_gpu(&self) -> bool {
        matches!(self.kind, "gpu" | "igpu")
    }
}

/// The devices llama.cpp found: the CPU, and a GPU only when a GPU backend is compiled
/// in and its driver and device answered (a CUDA build on a host without a GPU lists
/// the CPU alone).
pub fn devices() -> Vec<ComputeDevice> {
    init_backend();
    let text = |p: *const c_char| {
        // SAFETY: ggml returns NUL-terminated strings owned by the device (static).
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // SAFETY: indices below ggml_backend_dev_count() are valid devices for the process.
    (0..unsafe { sys::ggml_backend_dev_count() })
        .map(|i| unsafe {
            let dev = sys::ggml_backend_dev_get(i);
            let (mut free, mut total) = (0usize, 0usize);
            sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
            ComputeDevice {
                name: text(sys::ggml_backend_dev_name(dev)),
                description: text(sys::ggml_backend_dev_description(dev)),
                kind: match sys::ggml_backend_dev_type(dev) {
                    sys::GGML_BACKEND_DEVICE_TYPE_CPU => "cpu",
                    sys::GGML_BACKEND_DEVICE_TYPE_GPU => "gpu",
                    sys::GGML_BACKEND_DEVICE_TYPE_IGPU => "igpu",
                    _ => "accel",
                },
                memory_free: free as u64,
                memory_total: total as u64,
            }
        })
        .collect()
}

/// Whether this build has a GPU backend (CUDA) compiled in, device or not.
pub fn gpu_compiled_in() -> bool {
    cfg!(feature = "llama-cuda")
}

/// Why a CUDA build finds no GPU: no driver library, or a driver with no device.
pub fn no_gpu_reason() -> String {
    // SAFETY: the NVIDIA driver's library, loaded to see whether it exists; nothing is called.
    match unsafe { libloading::Library::new("libcuda.so.1") } {
        Err(e) => format!("the NVIDIA driver is not installed ({e})"),
        Ok(_) => "the NVIDIA driver is installed but no CUDA device answered (see nvidia-smi)".into(),
    }
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
