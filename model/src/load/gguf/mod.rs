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

#[cfg(target_arch = "x86_64")]
mod avx2_blocks;
mod ggml;
mod header;
mod reader;
mod source;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

// Named by the documentation above and used by the tests.
use super::StoredBlocks;
#[cfg(any(test, doc))]
use super::WeightSource;
#[cfg(any(test, doc))]
use crate::config::Qwen2Config;
use crate::error::ModelError;

pub use self::ggml::GgmlType;
pub use self::source::{hf_name, qwen2_config, GgufSource};
pub use self::value::GgufValue;

use self::ggml::dequantize;
use self::header::Header;

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

impl AsRef<[u8]> for Data {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// A parsed GGUF file: metadata and tensor table, with the data memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    /// Shared with the tensors kept as stored ([`Self::stored_blocks`]).
    data: Arc<Data>,
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
                data: Arc::new(data),
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

    /// A 2-D tensor as stored, sharing this file's memory, with the block decoder
    /// [`Self::dequantize`] uses for it; `None` for other tensors and types, or without the
    /// AVX2 decoders (only the lens's screen reads these, and it needs more than AVX2).
    pub fn stored_blocks(&self, name: &str) -> Option<StoredBlocks> {
        let info = self.tensor(name)?;
        #[cfg(target_arch = "x86_64")]
        let decode = avx2_blocks::decoder(info.ggml_type)?;
        #[cfg(not(target_arch = "x86_64"))]
        let decode: super::BlockDecoder = return None;
        let [rows, cols] = info.shape()[..] else {
            return None;
        };
        let block = (info.ggml_type.type_size(), info.ggml_type.block_size());
        let data: Arc<dyn AsRef<[u8]> + Send + Sync> = self.data.clone();
        let range = info.start..info.start + info.n_bytes;
        StoredBlocks::new(data, range, [rows, cols], block, decode)
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

#[cfg(test)]
mod tests;
