//! Execution-provider choice: TensorRT → CUDA → CPU, by configuration, never silent.
//!
//! The GPU providers exist only when this crate is built with the `tensorrt` / `cuda`
//! features *and* the loaded libonnxruntime is a GPU build. Each engine reports the
//! provider its session was actually created with.

use std::collections::BTreeMap;
use std::path::PathBuf;

use emollama_bundle::{Dim, TensorSpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }

    /// Whether this binary was compiled with support for the provider.
    pub fn compiled_in(self) -> bool {
        match self {
            Provider::TensorRt => cfg!(feature = "tensorrt"),
            Provider::Cuda => cfg!(feature = "cuda"),
            Provider::Cpu => true,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

/// Which providers to try, in order, and what to do when the preferred one is missing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderPolicy {
    /// Tried in this order; CPU is always the last resort unless `required` says otherwise.
    pub order: Vec<Provider>,
    /// When set, an engine that cannot run on this provider is an error, not a warning.
    pub required: Option<Provider>,
    pub tensorrt: TensorRtOptions,
}

impl Default for ProviderPolicy {
    /// TensorRT → CUDA → CPU, limited to the providers this binary was built with (a
    /// CPU-only build has nothing to fall back from; a GPU build that lands on CPU warns).
    fn default() -> Self {
        let order =
            [Provider::TensorRt, Provider::Cuda, Provider::Cpu].into_iter().filter(|p| p.compiled_in()).collect();
        Self { order, required: None, tensorrt: TensorRtOptions::default() }
    }
}

impl ProviderPolicy {
    /// Every provider in order, whether compiled in or not.
    pub fn all() -> Self {
        Self { order: vec![Provider::TensorRt, Provider::Cuda, Provider::Cpu], ..Self::default() }
    }

    pub fn cpu_only() -> Self {
        Self { order: vec![Provider::Cpu], ..Self::default() }
    }
}

/// One optimisation profile: each input's min, opt and max dims.
pub type OptimisationProfile = Vec<(String, [Vec<u64>; 3])>;

/// TensorRT settings. Engines are cached per (device, versions, precision, shapes, model)
/// so that an engine built for another JetPack or TensorRT is rebuilt, never loaded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TensorRtOptions {
    pub fp16: bool,
    pub int8: bool,
    /// Root of the engine and timing caches (a `CacheDirectory=` under systemd).
    pub cache_root: Option<PathBuf>,
    /// Identifies the device and its software: SoC, L4T/JetPack and TensorRT versions.
    pub device_key: String,
    /// min/opt/max for each named dynamic axis of the manifest (e.g. `samples`).
    pub dynamic_ranges: BTreeMap<String, [u64; 3]>,
    /// Inputs that only ever take shapes from a list (the face detector's pyramid
    /// levels): one optimisation profile per shape (min = opt = max), each the engine's
    /// best for that shape, instead of one profile over `dynamic_ranges`.
    pub exact_shapes: BTreeMap<String, Vec<Vec<u64>>>,
}

impl TensorRtOptions {
    pub fn precision(&self) -> &'static str {
        match (self.int8, self.fp16) {
            (true, _) => "int8",
            (false, true) => "fp16",
            _ => "fp32",
        }
    }

    /// The cache folder name for one model: every input that changes the engine is in it.
    pub fn cache_key(&self, ort_version: &str, model_sha256: &str, inputs: &[TensorSpec]) -> String {
        let shapes = self.profile_shapes(inputs).map(|[a, b, c]| format!("{a}|{b}|{c}")).unwrap_or_default();
        let shape_hash = fnv1a(shapes.as_bytes());
        let device = if self.device_key.is_empty() { "unknown-device" } else { &self.device_key };
        let sha = model_sha256.get(..16).unwrap_or(model_sha256);
        let device: String =
            device.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
        format!("{device}-ort{ort_version}-{}-shapes{shape_hash:016x}-{sha}", self.precision())
    }

    /// Where one model's engine and timing caches live (`None`: no cache configured).
    pub fn cache_dir(&self, ort_version: &str, model_sha256: &str, inputs: &[TensorSpec]) -> Option<PathBuf> {
        let root = self.cache_root.as_ref()?;
        Some(root.join("tensorrt").join(self.cache_key(ort_version, model_sha256, inputs)))
    }

    /// The optimisation profiles for `inputs`, from the manifest's dynamic axes; `None`
    /// when an axis has no range. An input with exact shapes gives one profile per shape
    /// (the other inputs repeat their range in each).
    pub fn profiles(&self, inputs: &[TensorSpec]) -> Option<Vec<OptimisationProfile>> {
        let count = inputs.iter().filter_map(|i| self.exact_shapes.get(&i.name)).map(Vec::len).max().unwrap_or(1);
        (0..count)
            .map(|p| {
                inputs
                    .iter()
                    .map(|spec| {
                        let bounds = match self.exact_shapes.get(&spec.name) {
                            Some(shapes) => {
                                let dims = shapes.get(p).or(shapes.last())?;
                                [dims.clone(), dims.clone(), dims.clone()]
                            }
                            None => {
                                let bound = |k: usize| {
                                    spec.shape
                                        .iter()
                                        .map(|d| match d {
                                            Dim::Fixed(n) => Some(*n),
                                            Dim::Dynamic(axis) => self.dynamic_ranges.get(axis).map(|r| r[k]),
                                        })
                                        .collect::<Option<Vec<u64>>>()
                                };
                                [bound(0)?, bound(1)?, bound(2)?]
                            }
                        };
                        Some((spec.name.clone(), bounds))
                    })
                    .collect()
            })
            .collect()
    }

    /// TensorRT optimization-profile strings (`name:1x3x448x448,...`) for min, opt and
    /// max: ONNX Runtime reads an input named again as the next profile.
    pub fn profile_shapes(&self, inputs: &[TensorSpec]) -> Option<[String; 3]> {
        let profiles = self.profiles(inputs)?;
        Some([0, 1, 2].map(|k| {
            profiles
                .iter()
                .flatten()
                .map(|(name, bounds)| {
                    let dims: Vec<String> = bounds[k].iter().map(u64::to_string).collect();
                    format!("{name}:{}", dims.join("x"))
                })
                .collect::<Vec<_>>()
                .join(",")
        }))
    }
}

/// Small stable hash for cache keys (not for security).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// Providers this binary can use with the loaded library: compiled in, and present in
/// the library (a CPU-only libonnxruntime has no CUDA/TensorRT even in a GPU build).
/// Call after `init_runtime`.
// Pushes behind features: without them the vector is only CPU, which clippy reads as
// an init-then-push.
#[allow(clippy::vec_init_then_push)]
pub fn available_providers() -> Vec<Provider> {
    let mut out = Vec::new();
    #[cfg(feature = "tensorrt")]
    {
        use ort::ep::ExecutionProvider;
        if ort::ep::TensorRT::is_available().unwrap_or(false) {
            out.push(Provider::TensorRt);
        }
    }
    #[cfg(feature = "cuda")]
    {
        use ort::ep::ExecutionProvider;
        if ort::ep::CUDA::is_available().unwrap_or(false) {
            out.push(Provider::Cuda);
        }
    }
    out.push(Provider::Cpu);
    out
}

/// Why a GPU provider the library lists cannot start here, found without creating a
/// session: its provider library (`libonnxruntime_providers_<name>.so`, next to
/// libonnxruntime) fails to load, and the loader names what it lacks (`libnvinfer.so.10`,
/// `libcublasLt.so.13`, the driver's `libcuda.so.1`). `None`: it loads (a session may
/// still find no device). The CPU provider is built into the library.
pub fn provider_problem(library: &std::path::Path, provider: Provider) -> Option<String> {
    let file = match provider {
        Provider::Cpu => return None,
        Provider::Cuda => "libonnxruntime_providers_cuda.so",
        Provider::TensorRt => "libonnxruntime_providers_tensorrt.so",
    };
    let dir = library.parent().unwrap_or(std::path::Path::new("."));
    let path = dir.join(file);
    if !path.is_file() {
        return Some(format!("{} is missing (ONNX Runtime's GPU build ships it next to the library)", path.display()));
    }
    // The provider libraries take their host interface from the shared one, loaded first
    // and globally, as ONNX Runtime itself does.
    // SAFETY: ONNX Runtime's own libraries, loaded as ONNX Runtime loads them; nothing of
    // them is called, and they stay loaded (ONNX Runtime reuses the handles).
    unsafe {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LAZY, RTLD_NOW};
        let shared = dir.join("libonnxruntime_providers_shared.so");
        if let Err(e) = Library::open(Some(&shared), RTLD_NOW | RTLD_GLOBAL) {
            return Some(e.to_string());
        }
        match Library::open(Some(&path), RTLD_LAZY) {
            Ok(lib) => {
                std::mem::forget(lib);
                None
            }
            Err(e) => Some(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype: emollama_bundle::DType::F32, shape }
    }

    #[test]
    fn profile_shapes_fill_dynamic_axes() {
        let mut opts = TensorRtOptions::default();
        opts.dynamic_ranges.insert("samples".into(), [16000, 80000, 480000]);
        let inputs = [spec("waveform", vec![Dim::Fixed(1), Dim::Dynamic("samples".into())])];
        let [min, opt, max] = opts.profile_shapes(&inputs).unwrap();
        assert_eq!(min, "waveform:1x16000");
        assert_eq!(opt, "waveform:1x80000");
        assert_eq!(max, "waveform:1x480000");
        let unknown = [spec("x", vec![Dim::Dynamic("batch".into())])];
        assert!(opts.profile_shapes(&unknown).is_none());
        // A list of exact shapes: one profile each, min = opt = max.
        let image = [spec(
            "image",
            vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Dynamic("height".into()), Dim::Dynamic("width".into())],
        )];
        opts.exact_shapes.insert("image".into(), vec![vec![1, 3, 150, 267], vec![1, 3, 106, 189]]);
        let [min, opt, max] = opts.profile_shapes(&image).unwrap();
        assert_eq!(min, "image:1x3x150x267,image:1x3x106x189");
        assert_eq!((opt.as_str(), max.as_str()), (min.as_str(), min.as_str()));
    }

    #[test]
    fn cache_key_changes_with_every_input() {
        let inputs = [spec("x", vec![Dim::Fixed(1)])];
        let mut a = TensorRtOptions { device_key: "orin-nano L4T 36.4.3 trt10.3".into(), ..Default::default() };
        let k1 = a.cache_key("1.31.1", "abcdef0123456789ffff", &inputs);
        assert!(k1.starts_with("orin-nano_L4T_36.4.3_trt10.3-ort1.31.1-fp32-"));
        assert_ne!(k1, a.cache_key("1.30.0", "abcdef0123456789ffff", &inputs));
        assert_ne!(k1, a.cache_key("1.31.1", "bbcdef0123456789ffff", &inputs));
        a.fp16 = true;
        assert_ne!(k1, a.cache_key("1.31.1", "abcdef0123456789ffff", &inputs));
    }
}
