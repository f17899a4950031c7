use std::path::PathBuf;

/// Everything that can be wrong with a bundle, each case with what a user needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle folder {0} does not exist or is not a folder")]
    NotAFolder(PathBuf),
    #[error("bundle manifest {path} cannot be read: {source}")]
    ManifestUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle manifest {path} is not valid JSON for this format (truncated or hand-edited?): {source}")]
    ManifestMalformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not an emollama bundle manifest (format is {found:?}, expected {expected:?})")]
    WrongFormat { path: PathBuf, found: String, expected: &'static str },
    #[error("bundle format version {found} is not supported by this emollama (it reads version {supported}); re-export the bundle or upgrade emollama")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("bundle format version {found} is too old for this emollama (it reads version {supported}: the prompt's row order, preprocessing filters and generation presets moved into the manifest); re-export the bundle with this emollama's exporter (./scripts/setup re-exports the synthetic one)")]
    LegacyVersion { found: u32, supported: u32 },
    #[error("bundle file {path} is missing (role {role})")]
    MissingFile { path: PathBuf, role: String },
    /// The file's own size is not shown: it may not be the user's to know (an install
    /// runs as root).
    #[error("bundle file {path} has {} bytes than the {expected} the manifest says (truncated or replaced)", if *larger { "more" } else { "fewer" })]
    SizeMismatch { path: PathBuf, expected: u64, larger: bool },
    #[error("bundle file {path} fails its checksum: the manifest says sha256 {expected} (corrupt or tampered)")]
    ChecksumMismatch { path: PathBuf, expected: String },
    #[error("{path} is {what}: install-bundle replaces only a bundle or an empty folder; use --force to replace it")]
    NotABundle { path: PathBuf, what: String },
    #[error("bundle file: {0}")]
    SourceFile(Box<crate::files::FileError>),
    #[error("bundle file {path} cannot be read: {source}")]
    FileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle manifest names the file path {0:?}, which leaves the bundle folder")]
    UnsafePath(String),
    #[error("bundle has no file with role {0}")]
    MissingRole(crate::Role),
    #[error("bundle has {count} files with role {role}, expected one")]
    DuplicateRole { role: crate::Role, count: usize },
    #[error("engine {engine} output {output} has width {found}, but the LLM's embedding width is {expected}")]
    EmbeddingWidthMismatch { engine: String, output: String, found: u64, expected: u64 },
    #[error("bundle file {path} (role {role}) does not declare the {kind} {name:?} the runtime {verb}")]
    MissingTensor { path: String, role: crate::Role, kind: &'static str, name: &'static str, verb: &'static str },
    #[error(
        "bundle file {path} output {output} holds {found} rows, but the manifest's rows say {expected} for {block}"
    )]
    RowCountMismatch { path: String, output: String, block: crate::RowBlock, found: String, expected: u32 },
    #[error("bundle file {path} (role {role}) has precision {precision}, which is not a {expected} precision")]
    WrongPrecision { path: String, role: crate::Role, precision: crate::Precision, expected: &'static str },
    #[error("bundle file {path} (role {role}) has format {format}, expected {expected}")]
    WrongFileFormat { path: String, role: crate::Role, format: crate::FileFormat, expected: crate::FileFormat },
    #[error("bundle manifest is inconsistent: {0}")]
    Inconsistent(String),
    #[error("output folder {0} already exists")]
    OutputExists(PathBuf),
    #[error("writing bundle file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
