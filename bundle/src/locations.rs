//! Where things live on a machine: the setup cache (`./scripts/setup` puts ONNX Runtime,
//! the synthetic bundle and the sample media there), the installed bundle, and which
//! bundle a command runs when none is given. One place, read by every crate.

use std::path::{Path, PathBuf};

/// Where packages install the real bundle.
pub const INSTALLED_BUNDLE: &str = "/usr/share/emollama/bundle";

/// `$XDG_CACHE_HOME/emollama` or `~/.cache/emollama`: what `scripts/setup` downloads and
/// builds (the same rule as `scripts/lib.sh`).
pub fn setup_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("emollama");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/emollama")
}

/// The synthetic bundle setup exports (random weights).
pub fn synthetic_bundle_dir() -> PathBuf {
    setup_cache_dir().join("synthetic/bundle")
}

/// The sample clips setup makes (`talking-face.mp4`, …).
pub fn sample_media_dir() -> PathBuf {
    setup_cache_dir().join("media")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleSource {
    Explicit,
    Installed,
    SyntheticFallback,
}

/// No bundle was given, none is installed, and setup has not made the synthetic one.
#[derive(Debug, thiserror::Error)]
#[error("no bundle found: pass --bundle DIR, install one under {installed}, or run ./scripts/setup to create the synthetic bundle at {synthetic}")]
pub struct NoBundle {
    pub installed: PathBuf,
    pub synthetic: PathBuf,
}

/// The bundle given, else the installed one, else the synthetic one from setup.
pub fn locate_bundle(explicit: Option<&Path>) -> Result<(PathBuf, BundleSource), NoBundle> {
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
    Err(NoBundle { installed, synthetic })
}
