use std::ffi::CString;
use std::path::Path;

use emollama_bundle::GgufType;
use llama_cpp_sys_2 as sys;

use super::backend::init_backend;
use super::model::check_gguf_header;
use crate::EngineError;

/// llama.cpp's file type for a GGUF type.
fn ftype(t: GgufType) -> sys::llama_ftype {
    match t {
        GgufType::F32 => sys::LLAMA_FTYPE_ALL_F32,
        GgufType::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
        GgufType::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
        GgufType::Q6K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
        GgufType::Q5KM => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
        GgufType::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
        GgufType::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
        GgufType::Iq4Xs => sys::LLAMA_FTYPE_MOSTLY_IQ4_XS,
        GgufType::Q3KM => sys::LLAMA_FTYPE_MOSTLY_Q3_K_M,
    }
}

/// Quantize `input` into `output` with llama.cpp (`llama_model_quantize`). The result is
/// written under a temporary name and renamed, so `output` is never half-written.
pub fn quantize(input: &Path, output: &Path, qtype: GgufType, threads: i32) -> Result<(), EngineError> {
    check_gguf_header(input)?;
    init_backend();
    let tmp = output.with_extension("gguf.partial");
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| EngineError::GgufInvalid { path: p.into(), reason: "path contains NUL".into() })
    };
    let (cin, ctmp) = (c(input)?, c(&tmp)?);
    // SAFETY: default params are plain data; we set scalar fields only.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.nthread = threads;
    params.ftype = ftype(qtype);
    // SAFETY: both paths are valid C strings for the call.
    let code = unsafe { sys::llama_model_quantize(cin.as_ptr(), ctmp.as_ptr(), &params) };
    if code != 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::Quantize { input: input.into(), output: output.into(), code });
    }
    std::fs::rename(&tmp, output).map_err(|source| EngineError::Io { path: output.into(), source })
}
