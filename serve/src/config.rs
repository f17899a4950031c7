//! `emollama serve` configuration: a TOML file (default `/etc/emollama/config.toml`),
//! every key overridable by a command-line flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG: &str = "/etc/emollama/config.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on. Beyond loopback a `token` is required.
    pub listen: SocketAddr,
    /// Bundle folder (default: the installed bundle, else the synthetic one from setup).
    pub bundle: Option<PathBuf>,
    /// Device profile (default: detected).
    pub profile: Option<String>,
    /// Bearer token required on /v1/* and /metrics when set.
    pub token: Option<String>,
    /// Local folders whose media may be named by path in a request.
    pub allowed_dirs: Vec<PathBuf>,
    /// Whether a request may name an http(s)/rtsp URL.
    pub allow_urls: bool,
    pub max_upload_bytes: u64,
    /// Requests run at once (the LLM is one device: 1 is right on a Jetson).
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; beyond that: 503 with Retry-After.
    pub max_queue: usize,
    pub request_timeout_s: f64,
    /// On SIGTERM: how long in-flight requests may take to finish.
    pub drain_timeout_s: f64,
    /// Where uploads are written (a private folder is created inside).
    pub upload_dir: Option<PathBuf>,
    /// Upper bound on max_new_tokens a request may ask for.
    pub max_new_tokens_limit: usize,
    /// ONNX Runtime library (found automatically otherwise).
    pub ort_library: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8686".parse().expect("literal address"),
            bundle: None,
            profile: None,
            token: None,
            allowed_dirs: Vec::new(),
            allow_urls: false,
            max_upload_bytes: 256 << 20,
            max_concurrency: 1,
            max_queue: 4,
            request_timeout_s: 300.0,
            drain_timeout_s: 30.0,
            upload_dir: None,
            max_new_tokens_limit: 500,
            ort_library: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ServeConfig {
    /// Read `path` (the default path may be absent; an explicit one must exist).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| ConfigError::File { path, reason: e.to_string().replace('\n', " ") })
            }
            Err(_) if !required => Ok(Self::default()),
            Err(e) => Err(ConfigError::File { path, reason: e.to_string() }),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid(format!(
                "listening on {} (beyond loopback) requires a token",
                self.listen
            )));
        }
        if self.max_concurrency == 0 {
            return Err(ConfigError::Invalid("max_concurrency must be at least 1".into()));
        }
        if self.max_upload_bytes == 0 || self.request_timeout_s <= 0.0 || self.drain_timeout_s < 0.0 {
            return Err(ConfigError::Invalid("max_upload_bytes and request_timeout_s must be positive".into()));
        }
        for d in &self.allowed_dirs {
            if !d.is_dir() {
                return Err(ConfigError::Invalid(format!("allowed_dirs entry {} is not a folder", d.display())));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c: ServeConfig = toml::from_str("listen = \"0.0.0.0:9000\"\nmax_queue = 2\n").unwrap();
        assert_eq!(c.max_queue, 2);
        assert!(c.validate().is_err(), "public address without token");
        let c: ServeConfig = toml::from_str("listen = \"0.0.0.0:9000\"\ntoken = \"s3cret\"\n").unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<ServeConfig>("lisen = \"x\"").is_err(), "unknown keys are rejected");
    }
}
