use std::ffi::CString;
use std::path::Path;

use llama_cpp_sys_2 as sys;
use serde::{Deserialize, Serialize};

use super::backend::init_backend;
use super::model::check_gguf_header;
use crate::EngineError;

/// Target GGUF types the exporter offers (llama.cpp `llama_ftype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuantType {
    F32,
    F16,
    Q8_0,
    Q4_0,
    Q4KM,
}

impl QuantType {
    fn ftype(self) -> sys::llama_ftype {
        match self {
            QuantType::F32 => sys::LLAMA_FTYPE_ALL_F32,
            QuantType::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            QuantType::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            QuantType::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            QuantType::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => QuantType::F32,
            "f16" => QuantType::F16,
            "q8_0" => QuantType::Q8_0,
            "q4_0" => QuantType::Q4_0,
            "q4_k_m" => QuantType::Q4KM,
            _ => return None,
        })
    }
}

/// Quantize `input` into `output` with llama.cpp (`llama_model_quantize`). The result is
/// written under a temporary name and renamed, so `output` is never half-written.
pub fn quantize(input: &Path, output: &Path, qtype: QuantType, threads: i32) -> Result<(), EngineError> {
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
    params.ftype = qtype.ftype();
    // SAFETY: both paths are valid C strings for the call.
    let code = unsafe { sys::llama_model_quantize(cin.as_ptr(), ctmp.as_ptr(), &params) };
    if code != 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::Quantize { input: input.into(), output: output.into(), code });
    }
    std::fs::rename(&tmp, output).map_err(|source| EngineError::Io { path: output.into(), source })
}
