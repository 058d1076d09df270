//! ggml tensor types (ids, names, block sizes) and dequantization to f32.

use std::convert::Infallible;
use std::fmt;

use crate::load::decode::{decode_runs, floats, threads_for, Float, Unit};

#[cfg(doc)]
use super::GgufFile;

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

/// Converts `n` values of type `ty` stored in `bytes` (whose length the tensor table fixes),
/// on every core for large tensors ([`decode_runs`]).
///
/// The block types use `rlx-gguf`'s block decoders, or on CPUs with AVX2 for Q4_K, Q5_K, Q6_K,
/// Q5_0 and Q8_0 [`super::avx2_blocks`]'s (eight values per instruction), which compute each
/// value as gguf-py does (the f16 scales widened exactly, then `d * q` or `d * q - m` /
/// `d * q + m` in f32, unfused) and so match it bit for bit; the fixtures test this for every
/// type. Each block is decoded straight into its place in the tensor. The float types are read
/// from little-endian bytes by [`floats`], which needs no alignment of the mapped data.
pub(super) fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    dequantize_on(ty, bytes, n, threads_for(n))
}

/// [`dequantize`] on `threads` threads (the calling one included).
pub(super) fn dequantize_on(
    ty: GgmlType,
    bytes: &[u8],
    n: usize,
    threads: usize,
) -> Result<Vec<f32>, String> {
    let expected = n / ty.block_size() * ty.type_size();
    if !n.is_multiple_of(ty.block_size()) || bytes.len() != expected {
        return Err(format!(
            "{n} elements of {ty} do not take {} bytes",
            bytes.len()
        ));
    }
    let unit = Unit {
        values: ty.block_size(),
        bytes: ty.type_size(),
    };
    // One block's bytes (`unit.bytes`) into its `unit.values` values.
    let scalar: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => return Ok(floats(bytes, n, Float::F32, threads)),
        GgmlType::F16 => return Ok(floats(bytes, n, Float::F16, threads)),
        // gguf-py: the 16 bits become the top half of an f32.
        GgmlType::BF16 => return Ok(floats(bytes, n, Float::BF16, threads)),
        GgmlType::Q8_0 => rlx_gguf::dequant_q8_0_block,
        GgmlType::Q4_0 => rlx_gguf::dequant_q4_0_block,
        GgmlType::Q4_1 => rlx_gguf::dequant_q4_1_block,
        GgmlType::Q5_0 => rlx_gguf::dequant_q5_0_block,
        GgmlType::Q5_1 => rlx_gguf::dequant_q5_1_block,
        GgmlType::Q4_K => |b, v| rlx_gguf::dequant_q4_k_block(b, super_block(v)),
        GgmlType::Q5_K => |b, v| rlx_gguf::dequant_q5_k_block(b, super_block(v)),
        GgmlType::Q6_K => |b, v| rlx_gguf::dequant_q6_k_block(b, super_block(v)),
        other => {
            let supported: Vec<&str> = GgmlType::DEQUANTIZABLE.iter().map(|t| t.name()).collect();
            return Err(format!(
                "stored as {other}, which cannot be dequantized (supported: {})",
                supported.join(", ")
            ));
        }
    };
    #[cfg(target_arch = "x86_64")]
    let block = super::avx2_blocks::decoder(ty).unwrap_or(scalar);
    #[cfg(not(target_arch = "x86_64"))]
    let block = scalar;
    decode_runs(bytes, n, unit, threads, |bytes, values| {
        for (out, b) in values
            .chunks_exact_mut(unit.values)
            .zip(bytes.chunks_exact(unit.bytes))
        {
            block(b, out);
        }
        Ok::<(), Infallible>(())
    })
    .map_err(|never| match never {})
}

/// A K-quant super-block's values: `values` holds exactly [`rlx_gguf::QK_K`] (the unit
/// [`dequantize_on`] splits the tensor into).
fn super_block(values: &mut [f32]) -> &mut [f32; rlx_gguf::QK_K] {
    values
        .try_into()
        .expect("a K-quant unit is one super-block")
}
