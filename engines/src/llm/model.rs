use std::ffi::CString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

use super::backend::init_backend;
use crate::EngineError;

/// How to load a GGUF.
#[derive(Debug, Clone)]
pub struct ModelParams {
    /// Layers offloaded to the GPU (0 on a CPU-only build; 999 = all).
    pub n_gpu_layers: i32,
    /// Memory-map the file (default) instead of reading it into memory.
    pub use_mmap: bool,
}

impl Default for ModelParams {
    fn default() -> Self {
        Self { n_gpu_layers: 0, use_mmap: true }
    }
}

/// A loaded llama.cpp model: weights, vocabulary and metadata. Immutable after loading
/// and shared by every context (llama.cpp allows concurrent contexts on one model).
#[derive(Debug)]
pub struct LlmModel {
    ptr: NonNull<sys::llama_model>,
    vocab: NonNull<sys::llama_vocab>,
    path: PathBuf,
}

// SAFETY: a llama_model is read-only after loading; llama.cpp documents using one model
// from several contexts on several threads.
unsafe impl Send for LlmModel {}
unsafe impl Sync for LlmModel {}

/// Check the GGUF magic and version before handing a file to llama.cpp, so that a wrong
/// file gets a precise error.
pub fn check_gguf_header(path: &Path) -> Result<(), EngineError> {
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::GgufMissing { path: path.into() },
        _ => EngineError::Io { path: path.into(), source: e },
    })?;
    let mut head = [0u8; 8];
    let invalid = |reason: &str| EngineError::GgufInvalid { path: path.into(), reason: reason.into() };
    file.read_exact(&mut head).map_err(|_| invalid("shorter than a GGUF header (empty or truncated)"))?;
    if &head[..4] != b"GGUF" {
        return Err(invalid("no GGUF magic at the start of the file"));
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !(2..=3).contains(&version) {
        return Err(invalid(&format!("GGUF version {version} is not supported (2 or 3)")));
    }
    Ok(())
}

impl LlmModel {
    #[tracing::instrument(level = "info", skip(params), fields(path = %path.display()))]
    pub fn load(path: &Path, params: &ModelParams) -> Result<Self, EngineError> {
        check_gguf_header(path)?;
        init_backend();
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| EngineError::GgufInvalid { path: path.into(), reason: "path contains NUL".into() })?;
        // SAFETY: default params are plain data; we only change scalar fields.
        let mut mparams = unsafe { sys::llama_model_default_params() };
        mparams.n_gpu_layers = params.n_gpu_layers;
        mparams.load_mode = if params.use_mmap { sys::LLAMA_LOAD_MODE_MMAP } else { sys::LLAMA_LOAD_MODE_NONE };
        // SAFETY: cpath outlives the call; llama.cpp returns NULL on failure.
        let raw = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), mparams) };
        let ptr = NonNull::new(raw).ok_or_else(|| EngineError::ModelLoad { path: path.into() })?;
        // SAFETY: ptr is a live model; the vocab lives as long as the model.
        let vocab = NonNull::new(unsafe { sys::llama_model_get_vocab(ptr.as_ptr()) }.cast_mut())
            .ok_or_else(|| EngineError::ModelLoad { path: path.into() })?;
        let model = Self { ptr, vocab, path: path.into() };
        tracing::info!(
            n_embd = model.n_embd(),
            n_vocab = model.n_vocab(),
            params = model.n_params(),
            "llama.cpp model loaded"
        );
        Ok(model)
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Width of the input embedding rows the model accepts.
    pub fn n_embd(&self) -> usize {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_embd_inp(self.ptr.as_ptr()) as usize }
    }

    pub fn n_vocab(&self) -> i32 {
        // SAFETY: live vocab.
        unsafe { sys::llama_vocab_n_tokens(self.vocab.as_ptr()) }
    }

    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()).max(0) as u32 }
    }

    pub fn n_params(&self) -> u64 {
        // SAFETY: live model.
        unsafe { sys::llama_model_n_params(self.ptr.as_ptr()) }
    }

    /// Bytes of weights.
    pub fn size(&self) -> u64 {
        // SAFETY: live model.
        unsafe { sys::llama_model_size(self.ptr.as_ptr()) }
    }

    pub fn bos(&self) -> i32 {
        // SAFETY: live vocab.
        unsafe { sys::llama_vocab_bos(self.vocab.as_ptr()) }
    }

    pub fn eos(&self) -> i32 {
        // SAFETY: live vocab.
        unsafe { sys::llama_vocab_eos(self.vocab.as_ptr()) }
    }

    /// End of generation (EOS, EOT, ...).
    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: live vocab; llama.cpp range-checks the id.
        unsafe { sys::llama_vocab_is_eog(self.vocab.as_ptr(), token) }
    }

    pub fn description(&self) -> String {
        let mut buf = vec![0u8; 256];
        // SAFETY: buf is writable for its length; returns the length written.
        let n = unsafe { sys::llama_model_desc(self.ptr.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.max(0) as usize);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Tokenize with llama.cpp's rules: `add_special` adds BOS (and the leading space of
    /// SentencePiece); `parse_special` turns `<s>` and friends into their control ids.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<i32>, EngineError> {
        let len = i32::try_from(text.len()).map_err(|_| EngineError::Tokenize("text longer than 2 GiB".into()))?;
        let mut tokens = vec![0i32; text.len() + 2];
        for _ in 0..2 {
            // SAFETY: text and tokens are valid for the lengths given.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab.as_ptr(),
                    text.as_ptr().cast(),
                    len,
                    tokens.as_mut_ptr(),
                    tokens.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                tokens.truncate(n as usize);
                return Ok(tokens);
            }
            if n == i32::MIN {
                return Err(EngineError::Tokenize("token count overflows".into()));
            }
            tokens.resize((-n) as usize, 0);
        }
        Err(EngineError::Tokenize("llama_tokenize kept asking for a larger buffer".into()))
    }

    /// The bytes of one token's text (may be a partial UTF-8 sequence for byte tokens).
    /// `special`: render control tokens such as `</s>` as text.
    pub fn token_bytes(&self, token: i32, special: bool) -> Result<Vec<u8>, EngineError> {
        if token < 0 || token >= self.n_vocab() {
            return Err(EngineError::TokenOutOfRange { token, n_vocab: self.n_vocab() });
        }
        let mut buf = vec![0u8; 32];
        for _ in 0..2 {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab.as_ptr(),
                    token,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            buf.resize((-n) as usize, 0);
        }
        Err(EngineError::Tokenize(format!("token {token} has no printable piece")))
    }

    /// Decode a whole token sequence to text (lossy on invalid UTF-8).
    pub fn detokenize(&self, tokens: &[i32], special: bool) -> Result<String, EngineError> {
        let mut bytes = Vec::new();
        for &t in tokens {
            bytes.extend(self.token_bytes(t, special)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Drop for LlmModel {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts hold an Arc to it, so none outlives it.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}
