use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("profile file {path} is invalid: {reason}")]
    BadProfile { path: PathBuf, reason: String },
    #[error("no device profile named {name:?}; known: {known}")]
    UnknownProfile { name: String, known: String },
    #[error("{0}")]
    DoesNotFit(String),
}
