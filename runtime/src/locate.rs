//! Which bundle to run: the one given, an installed one, or the synthetic bundle that
//! setup generates (with a warning: its weights are random).

use std::path::{Path, PathBuf};

use emollama_engines::onnx::library::setup_cache_dir;

use crate::RuntimeError;

/// Where packages install the real bundle.
pub const INSTALLED_BUNDLE: &str = "/usr/share/emollama/bundle";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleSource {
    Explicit,
    Installed,
    SyntheticFallback,
}

pub fn synthetic_bundle_dir() -> PathBuf {
    setup_cache_dir().join("synthetic/bundle")
}

pub fn locate_bundle(explicit: Option<&Path>) -> Result<(PathBuf, BundleSource), RuntimeError> {
    if let Some(p) = explicit {
        return Ok((p.to_path_buf(), BundleSource::Explicit));
    }
    let installed = PathBuf::from(INSTALLED_BUNDLE);
    if installed.join("manifest.json").is_file() {
        return Ok((installed, BundleSource::Installed));
    }
    let synthetic = synthetic_bundle_dir();
    if synthetic.join("manifest.json").is_file() {
        return Ok((synthetic, BundleSource::SyntheticFallback));
    }
    Err(RuntimeError::NoBundle { installed, synthetic })
}
