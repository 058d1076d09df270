//! GGUF files (llama.cpp's format, versions 2 and 3): a memory-mapped reader of the header,
//! metadata and tensor table, dequantization to f32, a [`WeightSource`] that renames llama.cpp's
//! tensors to Hugging Face's, and the [`Qwen2Config`] a Qwen2 GGUF describes.
//!
//! # Layout of a GGUF file
//!
//! All little-endian: the magic `GGUF`, a `u32` version, a `u64` tensor count and a `u64`
//! metadata count; the metadata entries (a string key, a `u32` value type, the value); one entry
//! per tensor (name, `u32` number of dimensions, that many `u64` sizes `ne`, `u32` ggml type,
//! `u64` offset); padding up to `general.alignment` (32 by default); then the tensor data, each
//! tensor at its offset from the start of that data section.
//!
//! # Dimension order
//!
//! ggml lists a tensor's sizes fastest-varying first: `ne[0]` is the length of a row. PyTorch
//! lists them slowest first. So the PyTorch shape of a GGUF tensor is `ne` reversed, and its data,
//! once dequantized, is already the row-major (C-order) array of that shape: a `Linear` weight
//! with `ne = [in, out]` is the PyTorch `[out, in]` matrix, exactly as Hugging Face stores it.
//! Quantization blocks run along rows (`ne[0]` is a multiple of the block size), so dequantizing
//! the blocks in file order gives the row-major values.
//!
//! # Robustness
//!
//! Every read is bounds-checked: a truncated or corrupt file gives [`ModelError::Gguf`] naming
//! the file and what is wrong, never a panic. The whole tensor table is checked when the file is
//! opened (known ggml type, sizes that fit whole blocks, data inside the file), so reading a
//! tensor later can only fail for a type that cannot be dequantized.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::WeightSource;
use crate::config::Qwen2Config;
use crate::error::ModelError;

const MAGIC: &[u8; 4] = b"GGUF";
/// `general.alignment` when a file does not set it.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted (bounds the parser's recursion).
const MAX_ARRAY_DEPTH: usize = 16;

/// One metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Value type 0.
    U8(u8),
    /// Value type 1.
    I8(i8),
    /// Value type 2.
    U16(u16),
    /// Value type 3.
    I16(i16),
    /// Value type 4.
    U32(u32),
    /// Value type 5.
    I32(i32),
    /// Value type 6.
    F32(f32),
    /// Value type 7 (any non-zero byte reads as `true`, as in llama.cpp).
    Bool(bool),
    /// Value type 8. Invalid UTF-8 is replaced by U+FFFD.
    String(String),
    /// Value type 9: values of one type, possibly arrays themselves.
    Array(Vec<GgufValue>),
    /// Value type 10.
    U64(u64),
    /// Value type 11.
    I64(i64),
    /// Value type 12.
    F64(f64),
}

impl GgufValue {
    /// The GGUF name of the value's type (`u32`, `string`, `array`, …), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// The value as an `i128` if it is an integer of any width (so every integer fits).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as an `f64` if it is an `f32` (converted exactly) or an `f64`.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(values) => Some(values),
            _ => None,
        }
    }
}

/// A ggml tensor type, as its id in the file. Only ids ggml defines exist as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(u32);

/// Every ggml type: id, name, elements per block, bytes per block (`GGML_QUANT_SIZES`).
const GGML_TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

impl GgmlType {
    /// 32-bit float.
    pub const F32: Self = Self(0);
    /// IEEE half.
    pub const F16: Self = Self(1);
    /// 32-element blocks: f16 scale, 4-bit quants offset by 8.
    pub const Q4_0: Self = Self(2);
    /// 32-element blocks: f16 scale and minimum, 4-bit quants.
    pub const Q4_1: Self = Self(3);
    /// 32-element blocks: f16 scale, 5-bit quants offset by 16.
    pub const Q5_0: Self = Self(6);
    /// 32-element blocks: f16 scale and minimum, 5-bit quants.
    pub const Q5_1: Self = Self(7);
    /// 32-element blocks: f16 scale, 8-bit quants.
    pub const Q8_0: Self = Self(8);
    /// 256-element super-blocks of eight 32-element blocks with 6-bit scales and minimums.
    pub const Q4_K: Self = Self(12);
    /// Like [`GgmlType::Q4_K`] with a fifth bit per quant.
    pub const Q5_K: Self = Self(13);
    /// 256-element super-blocks of sixteen 16-element blocks with 8-bit scales, 6-bit quants.
    pub const Q6_K: Self = Self(14);
    /// bfloat16.
    pub const BF16: Self = Self(30);

    /// The types [`GgufFile::dequantize`] converts to f32.
    pub const DEQUANTIZABLE: [Self; 11] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// The type with this id, if ggml defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        GGML_TYPES
            .iter()
            .any(|&(i, ..)| i == id)
            .then_some(Self(id))
    }

    fn entry(self) -> (u32, &'static str, usize, usize) {
        // Values only exist for ids in the table (see `from_id` and the constants).
        GGML_TYPES
            .iter()
            .copied()
            .find(|&(i, ..)| i == self.0)
            .unwrap_or((self.0, "?", 1, 1))
    }

    /// The id stored in the file.
    pub fn id(self) -> u32 {
        self.0
    }

    /// ggml's name for the type (`Q4_K`, `F32`, …).
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.entry().2
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.entry().3
    }

    /// Whether [`GgufFile::dequantize`] supports this type.
    pub fn is_dequantizable(self) -> bool {
        Self::DEQUANTIZABLE.contains(&self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (ggml type {})", self.name(), self.0)
    }
}

/// One entry of a GGUF file's tensor table, checked to lie inside the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    name: String,
    ne: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    /// Absolute byte range of the data in the file.
    start: usize,
    n_bytes: usize,
    n_elements: usize,
}

impl GgufTensorInfo {
    /// The tensor's GGUF name (`blk.0.attn_q.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sizes in ggml order: fastest-varying (row length) first.
    pub fn ne(&self) -> &[u64] {
        &self.ne
    }

    /// The shape in PyTorch order: `ne` reversed (see the module documentation).
    pub fn shape(&self) -> Vec<usize> {
        // Every size fits a usize: their product was checked when the file was opened.
        self.ne.iter().rev().map(|&n| n as usize).collect()
    }

    /// How the data is stored.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the data from the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.n_elements
    }

    /// Number of bytes of data.
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }
}

/// The bytes of a GGUF file: memory-mapped, or owned (files built in memory).
enum Data {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: metadata and tensor table, with the data memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    data: Data,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the GGUF file at `path`, checking the whole tensor table.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 24 {
            // Also keeps empty files away from mmap, which refuses zero-length maps.
            return Err(gguf_error(
                path,
                format!("{len} bytes is too short to be a GGUF file (the header alone is 24)"),
            ));
        }
        // SAFETY: the file is opened read-only and only read through this map; a file changed
        // on disk while attrib runs is outside what any loader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Data::Mapped(mmap))
    }

    /// Parses a GGUF file held in memory; `path` only names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<Self, ModelError> {
        Self::parse(path.into(), Data::Owned(bytes))
    }

    fn parse(path: PathBuf, data: Data) -> Result<Self, ModelError> {
        match Header::parse(data.bytes()) {
            Ok(h) => Ok(Self {
                path,
                data,
                version: h.version,
                alignment: h.alignment,
                data_start: h.data_start,
                metadata: h.metadata,
                by_name: h
                    .tensors
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.name.clone(), i))
                    .collect(),
                tensors: h.tensors,
            }),
            Err(message) => Err(ModelError::Gguf { path, message }),
        }
    }

    fn error(&self, message: String) -> ModelError {
        gguf_error(&self.path, message)
    }

    /// The file's path (as given to [`GgufFile::open`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data (`general.alignment`, 32 by default).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset in the file where tensor data starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The metadata value under `key`, if any.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// All metadata keys, sorted.
    pub fn metadata_keys(&self) -> impl Iterator<Item = &str> {
        self.metadata.keys().map(String::as_str)
    }

    fn require(&self, key: &str) -> Result<&GgufValue, ModelError> {
        self.metadata(key)
            .ok_or_else(|| self.error(format!("metadata key {key} is missing")))
    }

    fn wrong_type(&self, key: &str, value: &GgufValue, expected: &str) -> ModelError {
        self.error(format!(
            "metadata key {key} is a {}, but {expected} was expected",
            value.type_name()
        ))
    }

    /// The string under `key`; an error if it is missing or not a string.
    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, value, "a string"))
    }

    /// The integer under `key` as a `u64`, whatever its integer type, if it fits.
    pub fn get_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.get_integer(key, "an unsigned integer")
    }

    /// The integer under `key` as a `u32`, whatever its integer type, if it fits.
    pub fn get_u32(&self, key: &str) -> Result<u32, ModelError> {
        self.get_integer(key, "an unsigned 32-bit integer")
    }

    fn get_integer<T: TryFrom<i128>>(&self, key: &str, expected: &str) -> Result<T, ModelError> {
        let value = self.require(key)?;
        let n = value
            .as_integer()
            .ok_or_else(|| self.wrong_type(key, value, expected))?;
        T::try_from(n).map_err(|_| {
            self.error(format!(
                "metadata key {key} is {n}, but {expected} was expected"
            ))
        })
    }

    /// The float under `key` (an `f32`, or an `f64` rounded to `f32`).
    pub fn get_f32(&self, key: &str) -> Result<f32, ModelError> {
        let value = self.require(key)?;
        value
            .as_float()
            .map(|v| v as f32)
            .ok_or_else(|| self.wrong_type(key, value, "a float"))
    }

    /// The boolean under `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool, ModelError> {
        match self.require(key)? {
            GgufValue::Bool(b) => Ok(*b),
            other => Err(self.wrong_type(key, other, "a bool")),
        }
    }

    fn get_array<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Vec<T>, ModelError> {
        let value = self.require(key)?;
        let items = value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, value, expected))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                convert(item).ok_or_else(|| {
                    self.error(format!(
                        "metadata key {key}: element {i} is a {}, but {expected} was expected",
                        item.type_name()
                    ))
                })
            })
            .collect()
    }

    /// The array of strings under `key` (a tokenizer's `tokenizer.ggml.tokens`, say).
    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>, ModelError> {
        self.get_array(key, "an array of strings", GgufValue::as_str)
    }

    /// The array of integers under `key` as `i32`s (each element must fit).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, ModelError> {
        self.get_array(key, "an array of 32-bit integers", |v| {
            v.as_integer().and_then(|n| i32::try_from(n).ok())
        })
    }

    /// The array of floats under `key` as `f32`s.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, ModelError> {
        self.get_array(key, "an array of floats", |v| {
            v.as_float().map(|f| f as f32)
        })
    }

    /// The names of the tensors, in file order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|t| t.name.as_str())
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The tensor named `name` (GGUF naming), if any.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn tensor_or_error(&self, name: &str) -> Result<&GgufTensorInfo, ModelError> {
        self.tensor(name)
            .ok_or_else(|| self.error(format!("no tensor named {name}")))
    }

    /// The raw bytes of a tensor's data.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], ModelError> {
        let info = self.tensor_or_error(name)?;
        Ok(self.bytes_of(info))
    }

    fn bytes_of(&self, info: &GgufTensorInfo) -> &[u8] {
        // In range: checked against the file's length when it was opened.
        &self.data.bytes()[info.start..info.start + info.n_bytes]
    }

    /// A tensor's values as f32, row-major in its PyTorch shape, bit-exact with gguf-py's
    /// `gguf.quants.dequantize`. Fails for types outside [`GgmlType::DEQUANTIZABLE`].
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let info = self.tensor_or_error(name)?;
        dequantize(info.ggml_type, self.bytes_of(info), info.n_elements)
            .map_err(|message| self.error(format!("tensor {name}: {message}", name = info.name)))
    }
}

fn gguf_error(path: &Path, message: String) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        message,
    }
}

/// Converts `n` values of type `ty` stored in `bytes` (whose length the tensor table fixes).
///
/// The block types use `rlx-gguf`'s decoders, which compute each value as gguf-py does (the f16
/// scales widened exactly, then `d * q` or `d * q - m` / `d * q + m` in f32, unfused) and so
/// match it bit for bit; the fixtures test this for every type. The float types are decoded here
/// from little-endian bytes, which needs no alignment of the mapped data.
fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let expected = n / ty.block_size() * ty.type_size();
    if !n.is_multiple_of(ty.block_size()) || bytes.len() != expected {
        return Err(format!(
            "{n} elements of {ty} do not take {} bytes",
            bytes.len()
        ));
    }
    let blocks = match ty {
        GgmlType::F32 => {
            return Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        }
        GgmlType::F16 => {
            return Ok(bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect())
        }
        GgmlType::BF16 => {
            // gguf-py: the 16 bits become the top half of an f32.
            return Ok(bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect());
        }
        GgmlType::Q8_0 => rlx_gguf::dequant_q8_0(bytes, n),
        GgmlType::Q4_0 => rlx_gguf::dequant_q4_0(bytes, n),
        GgmlType::Q4_1 => rlx_gguf::dequant_q4_1(bytes, n),
        GgmlType::Q5_0 => rlx_gguf::dequant_q5_0(bytes, n),
        GgmlType::Q5_1 => rlx_gguf::dequant_q5_1(bytes, n),
        GgmlType::Q4_K => rlx_gguf::dequant_q4_k(bytes, n),
        GgmlType::Q5_K => rlx_gguf::dequant_q5_k(bytes, n),
        GgmlType::Q6_K => rlx_gguf::dequant_q6_k(bytes, n),
        other => {
            let supported: Vec<&str> = GgmlType::DEQUANTIZABLE.iter().map(|t| t.name()).collect();
            return Err(format!(
                "stored as {other}, which cannot be dequantized (supported: {})",
                supported.join(", ")
            ));
        }
    };
    let values = blocks.map_err(|e| format!("{ty}: {e}"))?;
    if values.len() != n {
        return Err(format!(
            "{ty}: the decoder gave {} values instead of {n}",
            values.len()
        ));
    }
    Ok(values)
}

/// What the parser extracts from the bytes before the tensor data.
struct Header {
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4).map_err(|_| {
            format!(
                "{} bytes is too short to be a GGUF file (the header alone is 24)",
                bytes.len()
            )
        })?;
        if magic != MAGIC {
            return Err(format!(
                "not a GGUF file: it starts with {:?} instead of \"GGUF\"",
                String::from_utf8_lossy(magic)
            ));
        }
        let version = r.u32().map_err(|e| format!("header: {e}"))?;
        match version {
            2 | 3 => {}
            1 => {
                return Err("GGUF version 1 is not supported (only versions 2 and 3)".into());
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err("big-endian GGUF files are not supported".into());
            }
            v => return Err(format!("unsupported GGUF version {v} (only 2 and 3)")),
        }
        let n_tensors = r.u64().map_err(|e| format!("header: {e}"))?;
        let n_kv = r.u64().map_err(|e| format!("header: {e}"))?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r
                .utf8()
                .map_err(|e| format!("metadata entry {i} of {n_kv}: key: {e}"))?;
            let value = r
                .u32()
                .and_then(|ty| r.value(ty, 0))
                .map_err(|e| format!("metadata entry {i} of {n_kv} ({key}): {e}"))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key {key} appears twice"));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(format!(
                    "general.alignment must be a power of two stored as u32, not {other:?}"
                ))
            }
        };

        let mut raw = Vec::new();
        for i in 0..n_tensors {
            let info = r
                .tensor_info()
                .map_err(|e| format!("tensor entry {i} of {n_tensors}: {e}"))?;
            raw.push(info);
        }
        // `pos` is at most the file length, so this cannot overflow.
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = HashSet::new();
        for (name, ne, type_id, offset) in raw {
            let info = check_tensor(
                name,
                ne,
                type_id,
                offset,
                alignment,
                data_start,
                bytes.len(),
            )?;
            if !seen.insert(info.name.clone()) {
                return Err(format!("tensor {} appears twice", info.name));
            }
            tensors.push(info);
        }
        Ok(Header {
            version,
            alignment,
            data_start,
            metadata,
            tensors,
        })
    }
}

/// Checks one tensor table entry: a known type, sizes that fit whole blocks, data in the file.
fn check_tensor(
    name: String,
    ne: Vec<u64>,
    type_id: u32,
    offset: u64,
    alignment: u64,
    data_start: u64,
    file_len: usize,
) -> Result<GgufTensorInfo, String> {
    let ggml_type = GgmlType::from_id(type_id)
        .ok_or_else(|| format!("tensor {name} has unknown ggml type {type_id}"))?;
    let n_elements = ne
        .iter()
        .try_fold(1usize, |acc, &n| {
            usize::try_from(n).ok().and_then(|n| acc.checked_mul(n))
        })
        .ok_or_else(|| format!("tensor {name} has sizes {ne:?} whose product overflows"))?;
    let row = ne.first().copied().unwrap_or(1);
    if !row.is_multiple_of(ggml_type.block_size() as u64) {
        return Err(format!(
            "tensor {name} ({ggml_type}) has rows of {row} elements, not a multiple of the \
             block size {}",
            ggml_type.block_size()
        ));
    }
    // n_elements / block_size blocks of type_size bytes: at most n_elements * 4 bytes.
    let n_bytes = (n_elements / ggml_type.block_size())
        .checked_mul(ggml_type.type_size())
        .ok_or_else(|| format!("tensor {name} is too large"))?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor {name} has offset {offset}, not a multiple of the alignment {alignment}"
        ));
    }
    let start = data_start.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(n_bytes as u64));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len as u64 => Ok(GgufTensorInfo {
            name,
            ne,
            ggml_type,
            offset,
            start: start as usize,
            n_bytes,
            n_elements,
        }),
        _ => Err(format!(
            "tensor {name} ({ggml_type}, {n_bytes} bytes at offset {offset} of the data \
             section, which starts at byte {data_start}) does not lie inside the file \
             ({file_len} bytes): truncated or corrupt"
        )),
    }
}

/// A bounds-checked little-endian cursor; errors say where the file ran out.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "the file ends at byte {}, but {n} bytes are needed at byte {}: truncated or corrupt",
                self.bytes.len(),
                self.pos
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// A length-prefixed string's bytes.
    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u64()?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "a string of {len} bytes at byte {} runs past the end of the file ({} bytes): \
                 truncated or corrupt",
                self.pos,
                self.bytes.len()
            ));
        }
        self.take(len as usize)
    }

    /// A string that must be UTF-8 (keys and tensor names).
    fn utf8(&mut self) -> Result<String, String> {
        let at = self.pos;
        let bytes = self.string()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("the string at byte {at} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array()?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array()?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => GgufValue::Bool(u8::from_le_bytes(self.array()?) != 0),
            8 => GgufValue::String(String::from_utf8_lossy(self.string()?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "arrays nested more than {MAX_ARRAY_DEPTH} deep at byte {}",
                        self.pos
                    ));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                let min_size = value_min_size(elem)
                    .ok_or_else(|| format!("unknown array element type {elem}"))?;
                if count > (self.remaining() / min_size) as u64 {
                    return Err(format!(
                        "an array of {count} elements of type {elem} at byte {} cannot fit in \
                         the {} bytes left in the file: truncated or corrupt",
                        self.pos,
                        self.remaining()
                    ));
                }
                let mut values = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let v = self
                        .value(elem, depth + 1)
                        .map_err(|e| format!("array element {i}: {e}"))?;
                    values.push(v);
                }
                GgufValue::Array(values)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array()?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }

    /// Name, sizes, type id and offset of one tensor, unchecked.
    fn tensor_info(&mut self) -> Result<(String, Vec<u64>, u32, u64), String> {
        let name = self.utf8().map_err(|e| format!("name: {e}"))?;
        let n_dims = self.u32().map_err(|e| format!("tensor {name}: {e}"))?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(self.u64().map_err(|e| format!("tensor {name}: {e}"))?);
        }
        let ty = self.u32().map_err(|e| format!("tensor {name}: {e}"))?;
        let offset = self.u64().map_err(|e| format!("tensor {name}: {e}"))?;
        Ok((name, ne, ty, offset))
    }
}

/// The fewest bytes a value of type `ty` takes (`None` for an unknown type).
fn value_min_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// The Hugging Face name of a llama.cpp tensor name (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`). Names that are not Qwen2 weights come back
/// unchanged, so a loader reports them as unused.
pub fn hf_name(gguf_name: &str) -> String {
    match gguf_name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let layer = gguf_name.strip_prefix("blk.").and_then(|rest| {
        let (n, tail) = rest.split_once('.')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hf_tail = match tail {
            "attn_norm.weight" => "input_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_q.bias" => "self_attn.q_proj.bias",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_k.bias" => "self_attn.k_proj.bias",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_v.bias" => "self_attn.v_proj.bias",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            _ => return None,
        };
        Some(format!("model.layers.{n}.{hf_tail}"))
    });
    layer.unwrap_or_else(|| gguf_name.to_string())
}

/// The tensors of a GGUF file under their Hugging Face names (see [`hf_name`]), dequantized to
/// f32 when read.
///
/// Shapes are in PyTorch order (ggml's `ne` reversed) and the values row-major in that shape,
/// so a GGUF checkpoint loads exactly like the safetensors one it was converted from. Q and K
/// projections are not permuted: llama.cpp's Qwen2 converter stores them as Hugging Face does.
pub struct GgufSource {
    file: GgufFile,
    /// Hugging Face name → index in the file's tensor table.
    names: BTreeMap<String, usize>,
}

impl GgufSource {
    /// Opens the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::new(GgufFile::open(path)?)
    }

    /// Serves the tensors of an opened file; fails if two tensors map to one Hugging Face name.
    pub fn new(file: GgufFile) -> Result<Self, ModelError> {
        let mut names = BTreeMap::new();
        for (i, info) in file.tensors().iter().enumerate() {
            let hf = hf_name(&info.name);
            if let Some(j) = names.insert(hf.clone(), i) {
                return Err(file.error(format!(
                    "tensors {} and {} both stand for {hf}",
                    file.tensors[j].name, info.name
                )));
            }
        }
        Ok(Self { file, names })
    }

    /// The underlying file (metadata, GGUF names).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model's configuration, see [`qwen2_config`].
    pub fn config(&self) -> Result<Qwen2Config, ModelError> {
        qwen2_config(&self.file)
    }
}

impl WeightSource for GgufSource {
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.names.get(name).map(|&i| self.file.tensors[i].shape())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let &i = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        self.file.dequantize(&self.file.tensors[i].name)
    }
}

/// The [`Qwen2Config`] a Qwen2 GGUF file describes, validated.
///
/// Reads `general.architecture` (must be `qwen2`) and the `qwen2.*` hyper-parameters;
/// `head_count_kv` defaults to `head_count` and `rope.freq_base` to 10000, as in llama.cpp. The
/// vocabulary size is the row count of `token_embd.weight`, and the embeddings are tied when
/// there is no `output.weight`. Float hyper-parameters are stored as f32 and widened exactly
/// (`rms_norm_eps` 1e-6 becomes 9.999999974752427e-7), as transformers' GGUF loader does.
pub fn qwen2_config(file: &GgufFile) -> Result<Qwen2Config, ModelError> {
    let arch = file.get_str("general.architecture")?;
    if arch != "qwen2" {
        return Err(file.error(format!(
            "general.architecture is {arch:?}, but only \"qwen2\" is supported"
        )));
    }
    if let Some(kind) = file.metadata("qwen2.rope.scaling.type") {
        if kind.as_str() != Some("none") {
            return Err(file.error(format!(
                "qwen2.rope.scaling.type is {kind:?}; only the default RoPE is supported"
            )));
        }
    }
    let size = |key: &str| -> Result<usize, ModelError> {
        let v = file.get_u64(key)?;
        usize::try_from(v).map_err(|_| file.error(format!("metadata key {key} is too large")))
    };
    let num_attention_heads = size("qwen2.attention.head_count")?;
    let num_key_value_heads = match file.metadata("qwen2.attention.head_count_kv") {
        Some(_) => size("qwen2.attention.head_count_kv")?,
        None => num_attention_heads,
    };
    let rope_theta = match file.metadata("qwen2.rope.freq_base") {
        Some(_) => f64::from(file.get_f32("qwen2.rope.freq_base")?),
        None => 10000.0,
    };
    let embeddings = file.tensor("token_embd.weight").ok_or_else(|| {
        file.error("no token_embd.weight tensor, so the vocabulary size is unknown".into())
    })?;
    let vocab_size = match embeddings.shape()[..] {
        [rows, _] => rows,
        _ => {
            return Err(file.error(format!(
                "token_embd.weight has shape {:?}; a matrix was expected",
                embeddings.shape()
            )))
        }
    };
    let config = Qwen2Config {
        vocab_size,
        hidden_size: size("qwen2.embedding_length")?,
        intermediate_size: size("qwen2.feed_forward_length")?,
        num_hidden_layers: size("qwen2.block_count")?,
        num_attention_heads,
        num_key_value_heads,
        max_position_embeddings: size("qwen2.context_length")?,
        rms_norm_eps: f64::from(file.get_f32("qwen2.attention.layer_norm_rms_epsilon")?),
        rope_theta,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
    };
    config
        .validate()
        .map_err(|e| file.error(format!("invalid config: {e}")))?;
    Ok(config)
}

#[cfg(test)]
mod tests;
