//! Pre-extracted utterance features: one `.npy` file per clip and modality, float32 `[C]`
//! or `[1, C]`, as the official evaluation reads them (`mae_340_UTT`, `maeV_399_UTT`,
//! `HL-UTT`). Each is the encoder's output *before* its projector; the bundle's
//! projector-only engine makes the prompt row from it, and the encoder does not run.

use std::path::{Path, PathBuf};

use emollama_bundle::RowBlock;
use serde::{Deserialize, Serialize};

/// The features files of one request, by modality (none: the encoders run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureFiles {
    /// MAE over the face frames (`mae_340_UTT/<clip>.npy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<PathBuf>,
    /// VideoMAE over the face clip (`maeV_399_UTT/<clip>.npy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal: Option<PathBuf>,
    /// HuBERT over the audio (`HL-UTT/<clip>.npy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<PathBuf>,
}

impl FeatureFiles {
    /// The blocks (local, temporal, audio) that can come from features.
    pub const BLOCKS: [RowBlock; 3] = [RowBlock::Local, RowBlock::Temporal, RowBlock::Audio];

    pub fn get(&self, block: RowBlock) -> Option<&Path> {
        match block {
            RowBlock::Local => self.local.as_deref(),
            RowBlock::Temporal => self.temporal.as_deref(),
            RowBlock::Audio => self.audio.as_deref(),
            RowBlock::GlobalPatches | RowBlock::GlobalCls | RowBlock::Fusion => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        Self::BLOCKS.iter().all(|b| self.get(*b).is_none())
    }

    /// Both face modalities come from features: no face detection is needed.
    pub fn covers_faces(&self) -> bool {
        self.local.is_some() && self.temporal.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    /// Not a regular file (a FIFO, a device, a folder), over the size a `[width]` array
    /// takes, unreadable, or its read stopped by the request's cancel token.
    #[error("features file {0}")]
    File(emollama_bundle::files::FileError),
    #[error("features file {path} is not a .npy file: {reason}")]
    NotNpy { path: PathBuf, reason: String },
    #[error("features file {path} holds {dtype} ({descr:?}); features must be float32 (numpy '<f4')")]
    WrongDtype { path: PathBuf, descr: String, dtype: &'static str },
    #[error(
        "features file {path} has shape {found:?}; this bundle's {block} projector takes [{width}] or [1, {width}]"
    )]
    WrongShape { path: PathBuf, found: Vec<usize>, block: RowBlock, width: usize },
    #[error("features file {path} holds a NaN or infinite value at index {index}")]
    NotFinite { path: PathBuf, index: usize },
}

/// The largest `.npy` file of `width` float32 values: a version 1 header (at most 64 KiB)
/// and the values.
pub fn max_npy_bytes(width: usize) -> u64 {
    10 + 65_535 + 4 * width as u64
}

/// Features of `block` from `path`, checked against the projector's input `width`. Only
/// a regular file is read (a FIFO would block the open, a device never end), at most
/// [`max_npy_bytes`], and `stopped` (the request's cancel token) is checked while reading.
pub fn read_features(
    path: &Path,
    block: RowBlock,
    width: usize,
    stopped: &dyn Fn() -> bool,
) -> Result<Vec<f32>, FeaturesError> {
    use emollama_bundle::files::{read_regular, Links};
    let bytes = read_regular(path, max_npy_bytes(width), Links::Follow, stopped).map_err(FeaturesError::File)?;
    let (shape, values) = parse_npy_f32(&bytes).map_err(|e| e.at(path))?;
    let fits = match shape.as_slice() {
        [n] => *n == width,
        [1, n] => *n == width,
        _ => false,
    };
    if !fits {
        return Err(FeaturesError::WrongShape { path: path.into(), found: shape, block, width });
    }
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(FeaturesError::NotFinite { path: path.into(), index });
    }
    Ok(values)
}

/// What is wrong with a .npy file's bytes (named by the caller).
#[derive(Debug, PartialEq)]
pub enum NpyError {
    Format(String),
    Dtype { descr: String, dtype: &'static str },
}

impl NpyError {
    fn at(self, path: &Path) -> FeaturesError {
        match self {
            NpyError::Format(reason) => FeaturesError::NotNpy { path: path.into(), reason },
            NpyError::Dtype { descr, dtype } => FeaturesError::WrongDtype { path: path.into(), descr, dtype },
        }
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// A C-ordered little-endian float32 array of the NPY format (versions 1-3): its shape
/// and values. Anything else is refused with what it is.
pub fn parse_npy_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let bad = |why: &str| NpyError::Format(why.to_string());
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("no NUMPY magic at the start"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(NpyError::Format(format!("unknown format version {v}"))),
    };
    let header = start
        .checked_add(header_len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| bad("header runs past the end"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    if descr != "<f4" {
        return Err(NpyError::Dtype { dtype: dtype_name(&descr), descr });
    }
    match dict_value(header, "fortran_order") {
        Some("False") => {}
        Some("True") => return Err(bad("Fortran-ordered array (save it C-ordered)")),
        _ => return Err(bad("header has no 'fortran_order'")),
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'"))?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| NpyError::Format(format!("shape {shape_text} is not a tuple of sizes"))))
        .collect::<Result<_, _>>()?;
    // Checked: a shape whose size overflows would otherwise wrap to a small number and
    // pass for the data's length (found by the `npy` fuzz target).
    let needed = shape
        .iter()
        .try_fold(4usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| NpyError::Format(format!("shape {shape:?} is larger than any file")))?;
    let data = &bytes[start + header_len..];
    if data.len() != needed {
        return Err(NpyError::Format(format!(
            "shape {shape:?} needs {needed} bytes of data, the file has {}",
            data.len()
        )));
    }
    Ok((shape, data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
}

/// The text of `key`'s value in the header's Python dict literal (a tuple stays whole).
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

fn dtype_name(descr: &str) -> &'static str {
    match descr.trim_start_matches(['<', '>', '|', '=']) {
        "f8" => "float64",
        "f2" => "float16",
        "f4" => "big-endian float32",
        "i8" | "i4" | "i2" | "i1" | "u8" | "u4" | "u2" | "u1" => "integers",
        _ => "another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A .npy file as numpy 2 writes it (version 1 header padded to 64 bytes).
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([1, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_vectors_and_rows_and_refuses_the_rest() {
        let (shape, v) = parse_npy_f32(&npy("<f4", "(3,)", &floats(&[1.0, -2.5, 3.0]))).unwrap();
        assert_eq!((shape, v), (vec![3], vec![1.0, -2.5, 3.0]));
        let (shape, _) = parse_npy_f32(&npy("<f4", "(1, 3)", &floats(&[0.0; 3]))).unwrap();
        assert_eq!(shape, vec![1, 3]);
        let e = parse_npy_f32(&npy("<f8", "(3,)", &[0; 24])).unwrap_err();
        assert_eq!(e, NpyError::Dtype { descr: "<f8".into(), dtype: "float64" });
        assert!(
            matches!(parse_npy_f32(&npy("<f4", "(4,)", &floats(&[0.0; 3]))), Err(NpyError::Format(m)) if m.contains("needs 16 bytes"))
        );
        assert!(parse_npy_f32(b"PK\x03\x04 not numpy at all").is_err());
        // A shape whose size wraps around (2^62 × 4 × 4 bytes = 2^66) is not an empty array.
        let huge = parse_npy_f32(&npy("<f4", "(4611686018427387904, 4)", &[]));
        assert!(matches!(huge, Err(NpyError::Format(m)) if m.contains("larger than any file")));
    }

    #[test]
    fn checks_the_width_and_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        std::fs::write(&p, npy("<f4", "(2, 3)", &floats(&[0.0; 6]))).unwrap();
        let e = read_features(&p, RowBlock::Audio, 3, &|| false).unwrap_err().to_string();
        assert!(e.contains("shape [2, 3]") && e.contains("[3] or [1, 3]"), "{e}");
        std::fs::write(&p, npy("<f4", "(3,)", &floats(&[0.0, f32::NAN, 1.0]))).unwrap();
        assert!(matches!(
            read_features(&p, RowBlock::Audio, 3, &|| false),
            Err(FeaturesError::NotFinite { index: 1, .. })
        ));
        std::fs::write(&p, npy("<f4", "(1, 3)", &floats(&[0.5, 1.0, 1.5]))).unwrap();
        assert_eq!(read_features(&p, RowBlock::Local, 3, &|| false).unwrap(), vec![0.5, 1.0, 1.5]);
    }
}
