//! A small GGUF reader: metadata and tensor directory without loading the model, and
//! single rows of F32/F16 tensors (the embedding table, for splice checks). The format:
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::EngineError;

/// A metadata value; arrays are summarised by their length.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array { len: u64 },
}

impl GgufValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            GgufValue::UInt(v) => Some(*v),
            GgufValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensor>,
    data_start: u64,
    file_len: u64,
}

const GGML_TYPE_F32: u32 = 0;
const GGML_TYPE_F16: u32 = 1;

struct Cursor<R> {
    r: R,
    path: PathBuf,
}

impl<R: Read> Cursor<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], EngineError> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|_| EngineError::GgufInvalid {
            path: self.path.clone(),
            reason: "truncated header or metadata".into(),
        })?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, EngineError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, EngineError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, EngineError> {
        let len = self.u64()?;
        if len > 1 << 24 {
            return Err(EngineError::GgufInvalid { path: self.path.clone(), reason: format!("string of {len} bytes") });
        }
        let mut buf = vec![0u8; len as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|_| EngineError::GgufInvalid { path: self.path.clone(), reason: "truncated string".into() })?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
    fn value(&mut self, vtype: u32) -> Result<GgufValue, EngineError> {
        Ok(match vtype {
            0 => GgufValue::UInt(u64::from(self.bytes::<1>()?[0])),
            1 => GgufValue::Int(i64::from(self.bytes::<1>()?[0] as i8)),
            2 => GgufValue::UInt(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => GgufValue::Int(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => GgufValue::UInt(u64::from(self.u32()?)),
            5 => GgufValue::Int(i64::from(self.u32()? as i32)),
            6 => GgufValue::Float(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => GgufValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => GgufValue::Str(self.string()?),
            9 => {
                let etype = self.u32()?;
                // An array of arrays: llama.cpp's reader refuses them, and here each level
                // would be a frame of recursion (a file of nested arrays, a stack overflow).
                if etype == 9 {
                    return Err(EngineError::GgufInvalid {
                        path: self.path.clone(),
                        reason: "an array of arrays (GGUF readers take arrays of values only)".into(),
                    });
                }
                let len = self.u64()?;
                for _ in 0..len {
                    self.value(etype)?;
                }
                GgufValue::Array { len }
            }
            10 => GgufValue::UInt(self.u64()?),
            11 => GgufValue::Int(self.u64()? as i64),
            12 => GgufValue::Float(f64::from_le_bytes(self.bytes()?)),
            t => {
                return Err(EngineError::GgufInvalid {
                    path: self.path.clone(),
                    reason: format!("unknown value type {t}"),
                })
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        super::model::check_gguf_header(path)?;
        let file = File::open(path).map_err(|source| EngineError::Io { path: path.into(), source })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut c = Cursor { r: BufReader::new(file), path: path.into() };
        let _magic_version: [u8; 8] = c.bytes()?;
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let vtype = c.u32()?;
            metadata.insert(key, c.value(vtype)?);
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>, _>>()?;
            let ggml_type = c.u32()?;
            let offset = c.u64()?;
            tensors.push(GgufTensor { name, dims, ggml_type, offset });
        }
        let pos = c.r.stream_position().map_err(|source| EngineError::Io { path: path.into(), source })?;
        let align = metadata.get("general.alignment").and_then(GgufValue::as_u64).unwrap_or(32).max(1);
        let data_start = pos.div_ceil(align) * align;
        if data_start > file_len {
            return Err(EngineError::GgufInvalid { path: path.into(), reason: "no tensor data (truncated)".into() });
        }
        Ok(Self { path: path.into(), metadata, tensors, data_start, file_len })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// Where the tensor data starts in the file (tensor offsets count from here).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// `len` bytes at `offset` in the tensor data, when they lie inside the file (a damaged
    /// directory's sizes and offsets would otherwise overflow or size a buffer): the length
    /// and the absolute start.
    fn within_file(&self, len: Option<u64>, offset: Option<u64>) -> Option<(usize, u64)> {
        let start = self.data_start.checked_add(offset?)?;
        let end = start.checked_add(len?)?;
        (end <= self.file_len).then_some((usize::try_from(len?).ok()?, start))
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Row `row` of a 2-D F32 or F16 tensor, as f32 (F16 widened exactly, as ggml does).
    pub fn read_row(&self, name: &str, row: u64) -> Result<Vec<f32>, EngineError> {
        let invalid = |reason: String| EngineError::GgufInvalid { path: self.path.clone(), reason };
        let t = self.tensor(name).ok_or_else(|| invalid(format!("no tensor {name}")))?;
        let (width, rows) = match t.dims[..] {
            [w, r] => (w, r),
            _ => return Err(invalid(format!("{name} is not 2-D"))),
        };
        if row >= rows {
            return Err(invalid(format!("{name} has {rows} rows, asked for row {row}")));
        }
        let elem: u64 = match t.ggml_type {
            GGML_TYPE_F32 => 4,
            GGML_TYPE_F16 => 2,
            other => return Err(invalid(format!("{name} has ggml type {other}; only F32/F16 rows can be read"))),
        };
        let row_bytes = width.checked_mul(elem);
        let start = row_bytes.and_then(|b| b.checked_mul(row)).and_then(|b| b.checked_add(t.offset));
        let (row_bytes, start) = self.within_file(row_bytes, start).ok_or_else(|| {
            invalid(format!("{name}: row {row} of {width} values lies outside the file (damaged directory)"))
        })?;
        let mut file = File::open(&self.path).map_err(|source| EngineError::Io { path: self.path.clone(), source })?;
        let io = |source| EngineError::Io { path: self.path.clone(), source };
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut buf = vec![0u8; row_bytes];
        file.read_exact(&mut buf).map_err(io)?;
        Ok(match t.ggml_type {
            GGML_TYPE_F32 => buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            _ => buf.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        })
    }

    /// The raw bytes of an F32 or F16 tensor (to compare files whose tensor order differs).
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>, EngineError> {
        let invalid = |reason: String| EngineError::GgufInvalid { path: self.path.clone(), reason };
        let t = self.tensor(name).ok_or_else(|| invalid(format!("no tensor {name}")))?;
        let elem: u64 = match t.ggml_type {
            GGML_TYPE_F32 => 4,
            GGML_TYPE_F16 => 2,
            other => return Err(invalid(format!("{name} has ggml type {other}; only F32/F16 tensors can be read"))),
        };
        let bytes = t.dims.iter().try_fold(elem, |n, d| n.checked_mul(*d));
        let (bytes, start) = self
            .within_file(bytes, Some(t.offset))
            .ok_or_else(|| invalid(format!("{name}: {:?} values lie outside the file (damaged directory)", t.dims)))?;
        let io = |source| EngineError::Io { path: self.path.clone(), source };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut buf = vec![0u8; bytes];
        file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }
}

/// IEEE half → single, exact (subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 - shift + 1) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::{f16_to_f32, GgufFile};
    use crate::EngineError;

    /// A GGUF v3 header, then `kv` (key-value bytes) and `tensors` (directory bytes).
    fn gguf(n_tensors: u64, n_kv: u64, body: &[u8]) -> tempfile::NamedTempFile {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(n_tensors.to_le_bytes());
        bytes.extend(n_kv.to_le_bytes());
        bytes.extend(body);
        bytes.resize(bytes.len() + 64, 0);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    fn string(s: &str) -> Vec<u8> {
        [(s.len() as u64).to_le_bytes().to_vec(), s.as_bytes().to_vec()].concat()
    }

    /// Arrays nested 200,000 deep (2.4 MB) once overflowed the reader's stack: an array
    /// of arrays is refused at its first level.
    #[test]
    fn nested_arrays_are_refused_not_recursed() {
        let mut kv = string("deep");
        kv.extend(9u32.to_le_bytes());
        for _ in 0..200_000 {
            kv.extend(9u32.to_le_bytes());
            kv.extend(1u64.to_le_bytes());
        }
        let file = gguf(0, 1, &kv);
        let Err(err) = GgufFile::open(file.path()) else { panic!("nested arrays accepted") };
        assert!(matches!(&err, EngineError::GgufInvalid { reason, .. } if reason.contains("array of arrays")), "{err}");
    }

    /// A tensor directory whose dimensions and offset point past the file (or overflow
    /// u64): reading the tensor is an error, not a wrapped seek or a huge buffer.
    #[test]
    fn tensors_outside_the_file_are_refused() {
        let mut dir = string("token_embd.weight");
        dir.extend(2u32.to_le_bytes());
        dir.extend(u64::MAX.to_le_bytes());
        dir.extend(u64::MAX.to_le_bytes());
        dir.extend(0u32.to_le_bytes()); // F32
        dir.extend((u64::MAX - 8).to_le_bytes());
        let file = gguf(1, 0, &dir);
        let g = GgufFile::open(file.path()).unwrap();
        for err in [
            g.read_row("token_embd.weight", u64::MAX - 1).unwrap_err(),
            g.tensor_bytes("token_embd.weight").unwrap_err(),
        ] {
            assert!(
                matches!(&err, EngineError::GgufInvalid { reason, .. } if reason.contains("outside the file")),
                "{err}"
            );
        }
    }

    #[test]
    fn half_to_single_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }
}
