//! Option groups shared by several commands (flattened into each), so a flag has one
//! name, one help text and one meaning everywhere.

use std::path::{Path, PathBuf};

use anyhow::Context;
use emollama_bundle::locations::{locate_bundle, BundleSource};
use emollama_devices::{detect, find_profile, load_profiles, profile_dirs, HostInfo, Profile};
use emollama_engines::onnx::{Provider, ProviderPolicy};
use emollama_media::faces::{FaceAlgorithm, FaceSearch};
use emollama_runtime::{LoadOptions, Pipeline};

#[derive(clap::Args, Debug, Clone)]
pub struct BundleArgs {
    /// Bundle folder; default: the installed bundle, else the synthetic one from setup.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
}

impl BundleArgs {
    /// The bundle folder, warning when it is the synthetic fallback.
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        let (dir, source) = locate_bundle(self.bundle.as_deref())?;
        if source == BundleSource::SyntheticFallback {
            eprintln!(
                "warning: no bundle given or installed; using the synthetic bundle at {} (random weights: its answers mean nothing)",
                dir.display()
            );
        }
        Ok(dir)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProfileArgs {
    /// Device profile (default: detected); its memory plan decides how the bundle loads.
    #[arg(long)]
    pub profile: Option<String>,
}

impl ProfileArgs {
    /// The named profile, else the detected one.
    pub fn resolve(&self) -> anyhow::Result<Profile> {
        let all = profiles()?;
        let name = match &self.profile {
            Some(n) => n.clone(),
            None => detect(Path::new("/"), &all).profile.unwrap_or_else(|| "x86-cpu".into()),
        };
        Ok(find_profile(&all, &name)?.clone())
    }
}

/// The encoders' execution provider.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderArg {
    /// TensorRT → CUDA → CPU, the first that works.
    Auto,
    Tensorrt,
    Cuda,
    Cpu,
}

impl ProviderArg {
    pub fn policy(self) -> ProviderPolicy {
        let one = |p: Provider| ProviderPolicy { order: vec![p], required: Some(p), ..ProviderPolicy::default() };
        match self {
            ProviderArg::Auto => ProviderPolicy::default(),
            ProviderArg::Cpu => ProviderPolicy::cpu_only(),
            ProviderArg::Cuda => one(Provider::Cuda),
            ProviderArg::Tensorrt => one(Provider::TensorRt),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Encoder execution provider.
    #[arg(long, value_enum, default_value = "auto")]
    pub provider: ProviderArg,
    /// CPU threads for the encoders and llama.cpp (default: the profile's, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn profiles() -> anyhow::Result<Vec<Profile>> {
    load_profiles(&profile_dirs()).context("reading the device profiles")
}

pub fn host() -> anyhow::Result<HostInfo> {
    Ok(detect(Path::new("/"), &profiles()?))
}

/// The option groups of a command that runs clips itself (`analyze`, `eval`, `watch`).
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub engines: EngineArgs,
    #[command(flatten)]
    pub faces: FaceArgs,
}

/// How the face stage (full mode) searches.
#[derive(clap::Args, Debug, Clone)]
pub struct FaceArgs {
    /// tracked: detect, then track, gated faces, the main subject's track; legacy: the
    /// first release's facenet pass on every examined frame (for comparison).
    #[arg(long, value_enum, default_value = "tracked")]
    pub face_search: FaceAlgorithm,
    /// The smallest face searched for, as a share of the frame's short side (default
    /// 0.08: 86 px on 1080p, 58 px on 720p).
    #[arg(long, value_name = "SHARE")]
    pub min_face: Option<f32>,
}

impl FaceArgs {
    pub fn search(&self) -> FaceSearch {
        let default = FaceSearch::default();
        FaceSearch { algorithm: self.face_search, min_face: self.min_face.unwrap_or(default.min_face), ..default }
    }
}

impl PipelineArgs {
    /// The bundle planned on the profile, the engine flags applied.
    pub fn load(&self, ort_library: Option<PathBuf>) -> anyhow::Result<Pipeline> {
        let dir = self.bundle.dir()?;
        let mut profile = self.profile.resolve()?;
        if let Some(t) = self.engines.threads {
            profile.defaults.threads = t.max(1);
        }
        let load = LoadOptions {
            providers: Some(self.engines.provider.policy()),
            ort_library,
            host: Some(host()?),
            scratch_dir: None,
            faces: Some(self.faces.search()),
        };
        Pipeline::planned(&dir, &profile, load).with_context(|| format!("bundle {}", dir.display()))
    }
}
