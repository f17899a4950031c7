//! `emollama doctor`: this machine, its matching profile, the inference libraries and
//! providers that load, and every problem with its fix.

use std::path::{Path, PathBuf};

use emollama_bundle::Bundle;
use emollama_devices::{detect, plan, HostInfo, Outcome, Plan, Profile};
use emollama_engines::llm::{devices, gpu_compiled_in, no_gpu_reason, ComputeDevice};
use emollama_engines::onnx::providers::provider_problem;
use emollama_engines::onnx::{available_providers, init_runtime};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct OrtReport {
    pub version: Option<String>,
    pub library: Option<PathBuf>,
    pub providers_compiled: Vec<String>,
    /// Providers whose libraries load here (a session may still find no device).
    pub providers_available: Vec<String>,
    /// Providers the library lists that cannot start here, with the loader's reason.
    pub providers_unusable: std::collections::BTreeMap<String, String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DoctorReport {
    pub host: HostInfo,
    pub profile: Option<String>,
    pub onnxruntime: OrtReport,
    /// Where llama.cpp computes: `cuda` when a GPU device answered, else `cpu`.
    pub llama_cpp_backend: String,
    /// Whether this build has llama.cpp's CUDA backend, device or not.
    pub llama_cpp_cuda_compiled: bool,
    pub llama_cpp_devices: Vec<ComputeDevice>,
    pub llama_cpp_system: String,
    pub bundle: Option<PathBuf>,
    pub plan: Option<Plan>,
    pub problems: Vec<String>,
}

pub fn doctor(root: &Path, profiles: &[Profile], ort_library: Option<&Path>, bundle: Option<&Path>) -> DoctorReport {
    let host = detect(root, profiles);
    let mut problems = host.problems.clone();
    let compiled: Vec<String> = [
        emollama_engines::onnx::Provider::TensorRt,
        emollama_engines::onnx::Provider::Cuda,
        emollama_engines::onnx::Provider::Cpu,
    ]
    .into_iter()
    .filter(|p| p.compiled_in())
    .map(|p| p.to_string())
    .collect();
    let onnxruntime = match init_runtime(ort_library) {
        Ok(rt) => {
            let mut unusable = std::collections::BTreeMap::new();
            let mut usable = Vec::new();
            for p in available_providers() {
                match provider_problem(&rt.library, p) {
                    Some(reason) => {
                        problems.push(format!("ONNX Runtime's {p} provider cannot start: {reason}"));
                        unusable.insert(p.to_string(), reason);
                    }
                    None => usable.push(p.to_string()),
                }
            }
            OrtReport {
                version: Some(rt.version.clone()),
                library: Some(rt.library.clone()),
                providers_compiled: compiled,
                providers_available: usable,
                providers_unusable: unusable,
                error: None,
            }
        }
        Err(e) => {
            problems.push(format!("ONNX Runtime: {e}"));
            OrtReport {
                version: None,
                library: None,
                providers_compiled: compiled,
                providers_available: Vec::new(),
                providers_unusable: Default::default(),
                error: Some(e.to_string()),
            }
        }
    };
    let profile = host.profile.as_deref().and_then(|n| profiles.iter().find(|p| p.name == n));
    if let Some(p) = profile {
        if p.has_gpu()
            && host.nvidia_gpu
            && !onnxruntime.providers_available.iter().any(|x| x == "tensorrt" || x == "cuda")
        {
            problems.push("the encoders will run on the CPU: build with `--features tensorrt` and use the GPU build of ONNX Runtime for this JetPack (its CUDA/TensorRT provider libraries next to libonnxruntime.so)".into());
        }
    }
    let system = emollama_engines::llm::system_info();
    let llama_devices = devices();
    let backend = if llama_devices.iter().any(ComputeDevice::is_gpu) { "cuda" } else { "cpu" }.to_string();
    if gpu_compiled_in() && backend == "cpu" {
        problems
            .push(format!("llama.cpp was built with CUDA but sees no GPU, it runs on the CPU: {}", no_gpu_reason()));
    } else if host.nvidia_gpu && backend == "cpu" {
        problems.push(
            "llama.cpp runs on the CPU: build with `--features llama-cuda` (CMAKE_CUDA_ARCHITECTURES=87 on Orin)"
                .into(),
        );
    }
    let plan = match (bundle, profile) {
        (Some(b), Some(p)) => match Bundle::open(b) {
            Ok(bundle) => {
                let plan = plan(bundle.manifest(), p);
                if plan.outcome == Outcome::DoesNotFit {
                    problems.push(format!("too little memory for {}: {}", bundle.manifest().id, plan.message));
                }
                Some(plan)
            }
            Err(e) => {
                problems.push(format!("bundle {}: {e}", b.display()));
                None
            }
        },
        _ => None,
    };
    DoctorReport {
        profile: host.profile.clone(),
        host,
        onnxruntime,
        llama_cpp_backend: backend,
        llama_cpp_cuda_compiled: gpu_compiled_in(),
        llama_cpp_devices: llama_devices,
        llama_cpp_system: system,
        bundle: bundle.map(Path::to_path_buf),
        plan,
        problems,
    }
}

impl DoctorReport {
    pub fn render(&self) -> String {
        let h = &self.host;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut s = String::new();
        s += &format!("board      {} ({}), {:.1} GB\n", opt(&h.model), h.arch, h.mem_total_gb.unwrap_or(0.0));
        s += &format!("profile    {}\n", opt(&self.profile));
        s += &format!("L4T        {} (JetPack {})\n", opt(&h.l4t), opt(&h.jetpack));
        s += &format!("power      {}\n", opt(&h.power_mode));
        s += &format!(
            "clocks     CPU {} MHz × {} cores, GPU {} MHz\n",
            h.cpu_max_mhz.map_or("-".into(), |v| v.to_string()),
            h.cpu_cores,
            h.gpu_max_mhz.map_or("-".into(), |v| v.to_string())
        );
        s += &format!("CUDA       {}   TensorRT {}\n", opt(&h.cuda), opt(&h.tensorrt));
        let o = &self.onnxruntime;
        s += &format!(
            "ONNX RT    {} from {}; providers compiled [{}], available [{}]\n",
            opt(&o.version),
            o.library.as_ref().map_or("-".into(), |p| p.display().to_string()),
            o.providers_compiled.join(", "),
            o.providers_available.join(", ")
        );
        for (p, reason) in &o.providers_unusable {
            s += &format!("           {p} cannot start: {reason}\n");
        }
        let devices: Vec<String> =
            self.llama_cpp_devices.iter().map(|d| format!("{} ({})", d.name, d.description)).collect();
        s += &format!(
            "llama.cpp  {} backend{}; devices {}; {}\n",
            self.llama_cpp_backend,
            if self.llama_cpp_cuda_compiled { " (CUDA compiled in)" } else { "" },
            devices.join(", "),
            self.llama_cpp_system
        );
        s += &format!("CPU        {}\n", h.cpu_features.join(" "));
        if let Some(p) = &self.plan {
            s += &format!("plan       {}\n", p.message);
        }
        if self.problems.is_empty() {
            s += "problems   none\n";
        }
        for p in &self.problems {
            s += &format!("problem    {p}\n");
        }
        s
    }
}
