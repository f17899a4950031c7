//! Device profiles: data files (`devices/profiles/*.toml`, compiled in) plus any the
//! user adds in `~/.config/emollama/profiles` or `/etc/emollama/profiles`.

use std::path::{Path, PathBuf};

use emollama_bundle::{EnginePrecision, GgufType, KvType};
use serde::{Deserialize, Serialize};

use crate::DeviceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// All encoders stay loaded.
    Resident,
    /// Encoders are loaded one after another, memory released in between.
    InTurn,
}

/// Where speech recognition's engines (a bundle's `asr_*` roles) live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AsrPlacement {
    /// Loaded at start on the encoders' provider and kept loaded.
    #[default]
    Resident,
    /// Loaded for each recognition and released before the encoders run (recognition is
    /// the first stage), so with the encoders in turn the peak is the larger of the two,
    /// not their sum; each request pays the loading.
    InTurn,
    /// On ONNX Runtime's CPU provider, kept loaded: in host memory, outside a discrete
    /// GPU's, at the CPU's cost (fp32 weights). On a Jetson's unified memory it saves
    /// nothing (it costs more than fp16 on the GPU); a profile may still choose it, to
    /// keep the GPU for the encoders and the LLM.
    Cpu,
}

impl std::fmt::Display for AsrPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AsrPlacement::Resident => "resident",
            AsrPlacement::InTurn => "loaded in turn",
            AsrPlacement::Cpu => "on the CPU",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDefaults {
    /// GGUF type the backbone should have on this device (the planner's proposal when
    /// the bundle's does not fit): f16, q8_0, q4_k_m, q3_k_m, iq4_xs, …
    pub llm_quant: GgufType,
    pub n_gpu_layers: i32,
    pub n_ctx: u32,
    /// Rows per llama.cpp decode call (prefill chunk; sizes the compute buffers).
    #[serde(default = "default_n_batch")]
    pub n_batch: u32,
    /// KV cache type: f16, q8_0, q4_0, f32.
    pub kv_cache: KvType,
    /// TensorRT precision of the encoders (GPU profiles; a CPU runs the file's own).
    pub encoder_precision: EnginePrecision,
    pub encoder_residency: Residency,
    /// Speech recognition's placement to start from (the planner moves it when the
    /// bundle does not fit otherwise).
    #[serde(default)]
    pub asr: AsrPlacement,
    /// 0: all cores.
    pub threads: usize,
}

fn default_n_batch() -> u32 {
    512
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub display: String,
    /// Substrings of `/proc/device-tree/model` that identify the board.
    pub model_match: Vec<String>,
    pub memory_total_gb: f64,
    /// MemTotal range (GB) of this SKU, to tell 8 GB from 16 GB boards of one family.
    pub sku_memory_gb: [f64; 2],
    pub usable_headless_gb: f64,
    pub bandwidth_gb_s: f64,
    /// `sm_87`, … or `none`.
    pub gpu_arch: String,
    pub cuda_cores: u32,
    pub dla_cores: u32,
    /// The nvpmodel mode that gives full speed ("" where nvpmodel does not exist).
    pub max_power_mode: String,
    pub unified_memory: bool,
    pub defaults: ProfileDefaults,
}

impl Profile {
    pub fn has_gpu(&self) -> bool {
        self.gpu_arch != "none"
    }

    /// The CPU threads this profile runs with (`threads = 0`: every core of this host).
    pub fn threads(&self) -> usize {
        match self.defaults.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        }
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Self, DeviceError> {
        toml::from_str(text).map_err(|e| DeviceError::BadProfile { path: path.into(), reason: e.to_string() })
    }
}

const BUILTIN: &[(&str, &str)] = &[
    ("orin-nano-8gb", include_str!("../profiles/orin-nano-8gb.toml")),
    ("orin-nano-8gb-super", include_str!("../profiles/orin-nano-8gb-super.toml")),
    ("orin-nx-8gb", include_str!("../profiles/orin-nx-8gb.toml")),
    ("orin-nx-16gb", include_str!("../profiles/orin-nx-16gb.toml")),
    ("agx-orin-32gb", include_str!("../profiles/agx-orin-32gb.toml")),
    ("agx-orin-64gb", include_str!("../profiles/agx-orin-64gb.toml")),
    ("agx-thor", include_str!("../profiles/agx-thor.toml")),
    ("x86-cpu", include_str!("../profiles/x86-cpu.toml")),
    ("x86-cuda", include_str!("../profiles/x86-cuda.toml")),
];

/// Where user profiles are read from, in order (a user file overrides a built-in one
/// of the same name).
pub fn profile_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("/etc/emollama/profiles")];
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(c) = config {
        dirs.push(c.join("emollama/profiles"));
    }
    dirs
}

/// Built-in profiles, then those in `extra_dirs` (later ones override by name).
pub fn load_profiles(extra_dirs: &[PathBuf]) -> Result<Vec<Profile>, DeviceError> {
    let mut out: Vec<Profile> = BUILTIN
        .iter()
        .map(|(name, text)| Profile::from_toml(text, Path::new(&format!("builtin:{name}.toml"))))
        .collect::<Result<_, _>>()?;
    for dir in extra_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| DeviceError::BadProfile { path: path.clone(), reason: e.to_string() })?;
            let p = Profile::from_toml(&text, &path)?;
            out.retain(|q| q.name != p.name);
            out.push(p);
        }
    }
    Ok(out)
}

pub fn find<'a>(profiles: &'a [Profile], name: &str) -> Result<&'a Profile, DeviceError> {
    profiles.iter().find(|p| p.name == name).ok_or_else(|| DeviceError::UnknownProfile {
        name: name.into(),
        known: profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_cover_the_family() {
        let p = load_profiles(&[]).unwrap();
        assert_eq!(p.len(), 9);
        let nano = find(&p, "orin-nano-8gb").unwrap();
        assert_eq!((nano.bandwidth_gb_s, nano.defaults.encoder_residency), (68.0, Residency::InTurn));
        assert!(find(&p, "nope").is_err());
    }

    #[test]
    fn a_user_profile_overrides_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            include_str!("../profiles/x86-cpu.toml").replace("usable_headless_gb = 14.0", "usable_headless_gb = 3.0");
        std::fs::write(dir.path().join("mine.toml"), text).unwrap();
        let p = load_profiles(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(find(&p, "x86-cpu").unwrap().usable_headless_gb, 3.0);
        std::fs::write(dir.path().join("bad.toml"), "name = 3").unwrap();
        assert!(matches!(load_profiles(&[dir.path().to_path_buf()]), Err(DeviceError::BadProfile { .. })));
    }

    #[test]
    fn an_unknown_value_in_a_user_profile_is_an_error_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let base = include_str!("../profiles/x86-cpu.toml").replace("name = \"x86-cpu\"", "name = \"mine\"");
        for (from, to) in [
            ("kv_cache = \"f16\"", "kv_cache = \"q5_1\""),
            ("llm_quant = \"q4_k_m\"", "llm_quant = \"q4_k_x\""),
            ("encoder_precision = \"fp32\"", "encoder_precision = \"fp8\""),
        ] {
            std::fs::write(dir.path().join("mine.toml"), base.replace(from, to)).unwrap();
            let err = load_profiles(&[dir.path().to_path_buf()]).unwrap_err().to_string();
            assert!(err.contains("mine.toml") && err.contains("unknown"), "{err}");
        }
    }
}
