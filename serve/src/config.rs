//! `emollama serve` configuration: a TOML file (default `/etc/emollama/config.toml`),
//! every key overridable by a command-line flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG: &str = "/etc/emollama/config.toml";

/// Connections kept free beyond the admitted requests and event streams, for health
/// checks and metrics.
const HEALTH_CHECK_ROOM: usize = 4;

/// The shortest header, body and request timeout.
const MIN_TIMEOUT_S: f64 = 0.1;

/// The longest bearer token (a header line must carry it).
const MAX_TOKEN_BYTES: usize = 1024;

/// Folders whose files an `allowed_dirs` entry should not expose.
const SYSTEM_DIRS: [&str; 6] = ["/etc", "/proc", "/sys", "/dev", "/root", "/home"];

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
    /// Hosts a URL may name (`host`, `host:port` or `scheme://host[:port]`). Empty: any
    /// public host. Loopback, private and link-local addresses and this service's own
    /// port are refused unless listed here.
    pub allowed_url_hosts: Vec<String>,
    /// Largest multipart upload (the media file).
    pub max_upload_bytes: u64,
    /// Largest JSON body, and largest text field of a multipart upload.
    pub max_json_bytes: u64,
    /// Requests run at once (the LLM is one device: 1 is right on a Jetson).
    pub max_concurrency: usize,
    /// Requests that may wait for a slot (their bodies are read while they wait);
    /// beyond that: 503 with Retry-After, before the body is read.
    pub max_queue: usize,
    /// Open connections; beyond that a new one gets 503 and is closed.
    pub max_connections: usize,
    /// Time to receive a request's headers, from the connection's start or the end of
    /// the previous response (so it is also the idle keep-alive limit).
    pub header_timeout_s: f64,
    /// Body read: this long for the first bytes, plus one second per `body_min_rate`
    /// bytes received (a client slower than that on average is cut off).
    pub body_timeout_s: f64,
    /// Bytes per second a body must average, after `body_timeout_s`.
    pub body_min_rate: u64,
    /// From admission to the end of the answer, queue wait included, plain or streamed.
    pub request_timeout_s: f64,
    /// On SIGTERM: how long in-flight requests may take to finish.
    pub drain_timeout_s: f64,
    /// Where uploads are written (a private folder is created inside).
    pub upload_dir: Option<PathBuf>,
    /// Upper bound on max_new_tokens a request may ask for.
    pub max_new_tokens_limit: usize,
    /// ONNX Runtime library (found automatically otherwise).
    pub ort_library: Option<PathBuf>,
    /// The smallest face searched for (full mode), as a share of the frame's short side:
    /// 0.08 is 86 px on a 1080p camera. Lower it for people far from the camera (it
    /// costs face-detection time on every window and request).
    pub min_face: f32,
    /// Open connections from one address; beyond, its oldest idle one is closed (or the
    /// new one refused when all are busy).
    pub max_connections_per_peer: usize,
    /// Event streams (`/v1/watch/events`) open at once; beyond: 503.
    pub max_event_streams: usize,
    /// An event stream ends after this long (its client reconnects): none holds a
    /// connection for ever.
    pub event_stream_max_s: f64,
    /// The web console at `/` (a client of the API; off: `/` is 404).
    pub console: bool,
    /// Live sources followed window by window (`[[watch]]` sections).
    pub watch: Vec<crate::watch::WatchConfig>,
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
            allowed_url_hosts: Vec::new(),
            max_upload_bytes: 256 << 20,
            max_json_bytes: 1 << 20,
            max_concurrency: 1,
            max_queue: 4,
            max_connections: 64,
            header_timeout_s: 10.0,
            body_timeout_s: 30.0,
            body_min_rate: 64 << 10,
            request_timeout_s: 300.0,
            drain_timeout_s: 30.0,
            upload_dir: None,
            max_new_tokens_limit: 500,
            ort_library: None,
            min_face: emollama_media::faces::FaceSearch::default().min_face,
            max_connections_per_peer: 64,
            max_event_streams: 8,
            event_stream_max_s: 3600.0,
            console: true,
            watch: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {key} = {value}: {reason}")]
    Invalid { key: &'static str, value: String, reason: String },
}

fn invalid(key: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), reason: reason.into() }
}

/// A number of seconds: finite and within `[min, max]` (`min` excluded when `open`).
fn seconds(key: &'static str, v: f64, min: f64, open: bool, max: f64) -> Result<(), ConfigError> {
    let above = if open { v > min } else { v >= min };
    if v.is_finite() && above && v <= max {
        Ok(())
    } else {
        let lower = if open { "(" } else { "[" };
        // Debug formatting: 1e300 prints as 1e300, not as 301 digits.
        Err(invalid(key, format!("{v:?}"), format!("must be a finite number of seconds in {lower}{min}, {max}]")))
    }
}

fn count(key: &'static str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(invalid(key, v, format!("must be in {min}-{max}")))
    }
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

    /// Every value checked, so that nothing can fail later in a request or at shutdown.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.token.as_deref() {
            // A bearer token is sent in a header: visible ASCII only, and short enough
            // that a client can send it (a token that can never be presented locks
            // everyone out with 401).
            Some(t) if t.is_empty() || t.len() > MAX_TOKEN_BYTES || !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) => {
                return Err(invalid(
                    "token",
                    "(hidden)",
                    format!("must be 1-{MAX_TOKEN_BYTES} visible ASCII characters (no spaces, no accents)"),
                ));
            }
            None if !self.listen.ip().is_loopback() => {
                return Err(invalid("listen", self.listen, "listening beyond loopback requires a token"));
            }
            _ => {}
        }
        // A timeout under a tenth of a second refuses every request before it starts.
        seconds("header_timeout_s", self.header_timeout_s, MIN_TIMEOUT_S, false, 3600.0)?;
        seconds("body_timeout_s", self.body_timeout_s, MIN_TIMEOUT_S, false, 3600.0)?;
        seconds("request_timeout_s", self.request_timeout_s, MIN_TIMEOUT_S, false, 86400.0)?;
        seconds("drain_timeout_s", self.drain_timeout_s, 0.0, false, 3600.0)?;
        count("body_min_rate", self.body_min_rate, 1, 1 << 40)?;
        count("max_concurrency", self.max_concurrency as u64, 1, 64)?;
        count("max_queue", self.max_queue as u64, 0, 4096)?;
        count("max_upload_bytes", self.max_upload_bytes, 1, 1 << 40)?;
        count("max_json_bytes", self.max_json_bytes, 1 << 10, 64 << 20)?;
        count("max_new_tokens_limit", self.max_new_tokens_limit as u64, 1, 1 << 20)?;
        count("max_event_streams", self.max_event_streams as u64, 0, 4096)?;
        seconds("event_stream_max_s", self.event_stream_max_s, 1.0, false, 86400.0 * 7.0)?;
        // Room for every admitted request and event stream, and a few health checks.
        let needed = (self.max_concurrency + self.max_queue + self.max_event_streams + HEALTH_CHECK_ROOM) as u64;
        count("max_connections", self.max_connections as u64, needed, 1 << 16)?;
        count("max_connections_per_peer", self.max_connections_per_peer as u64, 1, 1 << 16)?;
        for d in &self.allowed_dirs {
            if !d.is_dir() {
                return Err(invalid("allowed_dirs", d.display(), "not a folder"));
            }
        }
        for h in &self.allowed_url_hosts {
            crate::urls::AllowedHost::parse(h).map_err(|reason| invalid("allowed_url_hosts", h, reason))?;
        }
        self.face_search().check().map_err(|reason| invalid("min_face", self.min_face, reason))?;
        let mut names = std::collections::BTreeSet::new();
        for w in &self.watch {
            w.check().map_err(|reason| invalid("watch", &w.name, reason))?;
            if !names.insert(&w.name) {
                return Err(invalid("watch", &w.name, "two [[watch]] sources have this name"));
            }
        }
        let upload_dir = self.upload_parent();
        crate::uploads::check_writable(&upload_dir)
            .map_err(|e| invalid("upload_dir", upload_dir.display(), format!("not a writable folder: {e}")))?;
        Ok(())
    }

    /// What the configuration allows that it probably should not (printed by
    /// `--check-config`, logged at start): an allowed folder that is or holds a system
    /// folder lets a request name any file the service can read there.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.allowed_dirs {
            let dir = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
            // A folder that is or holds a system folder, or one inside the system's own
            // trees (a user's media under /home is fine).
            let holds = SYSTEM_DIRS.iter().find(|s| Path::new(s).starts_with(&dir));
            let inside = ["/etc", "/proc", "/sys", "/dev"].into_iter().find(|s| dir.starts_with(s));
            if let Some(sys) = holds.copied().or(inside) {
                out.push(format!(
                    "allowed_dirs includes {} ({sys}): every file the service can read there may be named in a request",
                    d.display()
                ));
            }
        }
        out
    }

    /// The face stage's settings.
    pub fn face_search(&self) -> emollama_media::faces::FaceSearch {
        emollama_media::faces::FaceSearch { min_face: self.min_face, ..Default::default() }
    }

    /// The folder the private upload folder is made in.
    pub fn upload_parent(&self) -> PathBuf {
        self.upload_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    pub(crate) fn duration(seconds: f64) -> std::time::Duration {
        // Validated finite and bounded; the fallback only guards against misuse.
        std::time::Duration::try_from_secs_f64(seconds).unwrap_or(std::time::Duration::from_secs(1))
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

    /// The shipped configuration parses and validates (its folders exist on a device only).
    #[test]
    fn the_packaged_config_is_valid() {
        let mut c: ServeConfig = toml::from_str(include_str!("../../packaging/config.toml")).unwrap();
        assert_eq!(c.max_connections, ServeConfig::default().max_connections);
        c.upload_dir = None;
        c.allowed_dirs.clear();
        c.validate().unwrap();
    }

    /// D7: non-finite and huge numbers are refused here, not by a panic later.
    #[test]
    fn refuses_numbers_that_would_panic_or_mislead() {
        for text in [
            "request_timeout_s = nan",
            "request_timeout_s = inf",
            "request_timeout_s = 1e300",
            "drain_timeout_s = 1e300",
            "drain_timeout_s = -1.0",
            "header_timeout_s = 0.0",
            "body_timeout_s = nan",
            "max_concurrency = 0",
            "max_connections = 2",
            "token = \"   \"",
            "token = \"a b\"",
            "allowed_url_hosts = [\"http://\"]",
            "upload_dir = \"/nonexistent/emollama\"",
            "min_face = 0.0",
            "min_face = nan",
        ] {
            let c: ServeConfig = toml::from_str(text).unwrap();
            let e = c.validate().expect_err(text);
            println!("{text}: {e}");
        }
        let c: ServeConfig = toml::from_str("request_timeout_s = 2.5\ndrain_timeout_s = 0.0").unwrap();
        c.validate().unwrap();
    }
}
