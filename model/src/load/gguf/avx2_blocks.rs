//! The blocks of `Q4_K_M` and `Q5_K_M` files (Q4_K, Q5_K and Q6_K super-blocks, and Q5_0 and
//! Q8_0 blocks for the tensors whose rows are not a multiple of 256 values, as in the 0.5B
//! model) decoded eight values per instruction with AVX2, each value computed as gguf-py
//! computes it, so bit for bit the same:
//! - Q4_K, Q5_K: `(d · sc) · q − dmin · m` in f32, `q` a 4- or 5-bit value, `sc` and `m`
//!   6-bit;
//! - Q6_K: `(d · sc) · q` in f32, `q` a 6-bit value less 32, `sc` a signed byte;
//! - Q5_0: `d · q`, `q` a 5-bit value less 16; Q8_0: `d · q`, `q` a signed byte.
//!
//! Q6_K, the type of a Q4_K_M file's LM head, which the logit lens decodes again on every
//! read, has its values assembled 64 at a time in bytes where the CPU has AVX-512 (F, BW).
//!
//! Elsewhere (no AVX2, other architectures) `rlx-gguf`'s scalar decoders do it ([`decoder`]
//! is `None`). Decoding the 1.5B model's Q4_K_M file took about a quarter of its load's
//! processor time with those.

use std::arch::x86_64::*;

use rlx_gguf::QK_K;

use super::GgmlType;

/// Bytes of a Q4_K super-block: `d`, `dmin` (f16), 12 bytes of packed scales and mins, 128 of
/// 4-bit values.
const Q4_K_BYTES: usize = 144;
/// Bytes of a Q5_K super-block: as Q4_K's, with the values' fifth bits (32 bytes) before their
/// low four.
const Q5_K_BYTES: usize = 176;
/// Bytes of a Q6_K super-block: 128 of low 4 bits, 64 of high 2 bits, 16 signed scales, `d`.
const Q6_K_BYTES: usize = 210;

/// Bytes of a Q5_0 block: `d` (f16), the 32 values' fifth bits, their low four bits.
const Q5_0_BYTES: usize = 22;
/// Bytes of a Q8_0 block: `d` (f16) and 32 signed bytes.
const Q8_0_BYTES: usize = 34;
/// Values in a Q5_0 or Q8_0 block.
const QK: usize = 32;

/// One block's bytes into its values.
pub(super) type Decoder = fn(&[u8], &mut [f32]);

/// The AVX2 decoder of `ty`'s blocks; `None` where this CPU lacks AVX2 or `ty` is not one of
/// the five above. Chosen once per tensor, so no block asks for the CPU's features again.
pub(super) fn decoder(ty: GgmlType) -> Option<Decoder> {
    if !std::is_x86_feature_detected!("avx2") {
        return None;
    }
    // SAFETY (every arm): AVX2 is present (checked above, and these pointers are handed out
    // nowhere else); `array` and `array_mut` check the block's and values' lengths.
    Some(match ty {
        GgmlType::Q4_K => |b, v| unsafe { q4_k(array(b), array_mut(v)) },
        GgmlType::Q5_K => |b, v| unsafe { q5_k(array(b), array_mut(v)) },
        // SAFETY: AVX-512 F and BW and F16C are present where this arm is taken.
        GgmlType::Q6_K
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("f16c") =>
        {
            |b, v| unsafe { q6_k_wide(array(b), array_mut(v)) }
        }
        GgmlType::Q6_K => |b, v| unsafe { q6_k(array(b), array_mut(v)) },
        GgmlType::Q5_0 => |b, v| unsafe { q5_0(array(b), array_mut(v)) },
        GgmlType::Q8_0 => |b, v| unsafe { q8_0(array(b), array_mut(v)) },
        _ => return None,
    })
}

/// A block's bytes as an array (the unit [`super::ggml`] splits tensors into).
fn array<const N: usize>(bytes: &[u8]) -> &[u8; N] {
    bytes.try_into().expect("one block's bytes")
}

/// A block's values as an array.
fn array_mut<const N: usize>(values: &mut [f32]) -> &mut [f32; N] {
    values.try_into().expect("one block's values")
}

/// The f16 at `bytes[0..2]` (little-endian), widened exactly.
fn f16_at(bytes: &[u8]) -> f32 {
    half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// Sub-block `j`'s 6-bit scale and min in a Q4_K block's 12 packed bytes (ggml's layout: the
/// first four in the low 6 bits of bytes 0–7, the last four split between bytes 8–11 and the
/// top 2 bits of bytes 0–7).
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// A Q4_K block with AVX2 ([`k_quant`] without fifth bits).
///
/// # Safety
/// AVX2 is present.
#[target_feature(enable = "avx2")]
unsafe fn q4_k(block: &[u8; Q4_K_BYTES], out: &mut [f32; QK_K]) {
    k_quant(&block[..16], None, &block[16..], out);
}

/// A Q5_K block with AVX2 ([`k_quant`] with the 32 bytes of fifth bits).
///
/// # Safety
/// AVX2 is present.
#[target_feature(enable = "avx2")]
unsafe fn q5_k(block: &[u8; Q5_K_BYTES], out: &mut [f32; QK_K]) {
    k_quant(&block[..16], Some(&block[16..48]), &block[48..], out);
}

/// The values of a Q4_K or Q5_K block: `head` its `d`, `dmin` and 12 bytes of scales and mins,
/// `qs` its 128 bytes of low four bits, in which per pair of sub-blocks 32 bytes hold the first
/// one's values in their low nibbles and the second one's in their high nibbles, and for Q5_K
/// `qh` the 32 bytes whose byte `l` holds, in bit `j`, the fifth bit of value `l` of sub-block
/// `j`.
///
/// # Safety
/// AVX2 is present; `head` holds 16 bytes, `qh` 32, `qs` 128.
#[target_feature(enable = "avx2")]
unsafe fn k_quant(head: &[u8], qh: Option<&[u8]>, qs: &[u8], out: &mut [f32; QK_K]) {
    let (d, dmin) = (f16_at(&head[0..]), f16_at(&head[2..]));
    let scales = &head[4..16];
    let (nibble, one) = (_mm256_set1_epi32(0x0F), _mm256_set1_epi32(1));
    for pair in 0..4 {
        let (sc0, m0) = scale_min(2 * pair, scales);
        let (sc1, m1) = scale_min(2 * pair + 1, scales);
        let (d0, d1) = (
            _mm256_set1_ps(d * sc0 as f32),
            _mm256_set1_ps(d * sc1 as f32),
        );
        let (m0, m1) = (
            _mm256_set1_ps(dmin * m0 as f32),
            _mm256_set1_ps(dmin * m1 as f32),
        );
        let (shift0, shift1) = (
            _mm256_set1_epi32(2 * pair as i32),
            _mm256_set1_epi32(2 * pair as i32 + 1),
        );
        for l in (0..32).step_by(8) {
            // SAFETY: bytes `32·pair + l .. + 8` lie in `qs` (128 bytes), `l .. l + 8` in `qh`
            // (32), values `64·pair + l .. + 8` and `+ 32` in `out` (256).
            let q = widen8(&qs[32 * pair + l..]);
            let (mut lo, mut hi) = (_mm256_and_si256(q, nibble), _mm256_srli_epi32::<4>(q));
            if let Some(qh) = qh {
                let h = widen8(&qh[l..]);
                let fifth0 = _mm256_and_si256(_mm256_srlv_epi32(h, shift0), one);
                let fifth1 = _mm256_and_si256(_mm256_srlv_epi32(h, shift1), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi32::<4>(fifth0));
                hi = _mm256_or_si256(hi, _mm256_slli_epi32::<4>(fifth1));
            }
            let at = out.as_mut_ptr().add(64 * pair + l);
            let first = _mm256_mul_ps(d0, _mm256_cvtepi32_ps(lo));
            _mm256_storeu_ps(at, _mm256_sub_ps(first, m0));
            let second = _mm256_mul_ps(d1, _mm256_cvtepi32_ps(hi));
            _mm256_storeu_ps(at.add(32), _mm256_sub_ps(second, m1));
        }
    }
}

/// A Q6_K block with AVX2: in each half of the block, byte `l` of the low bits holds values `l`
/// and `l + 64` (low and high nibble), byte `l + 32` values `l + 32` and `l + 96`, and byte `l`
/// of the high bits the top two bits of all four; a scale serves 16 values.
///
/// # Safety
/// AVX2 is present.
#[target_feature(enable = "avx2")]
unsafe fn q6_k(block: &[u8; Q6_K_BYTES], out: &mut [f32; QK_K]) {
    let (ql, qh, sc) = (&block[0..128], &block[128..192], &block[192..208]);
    let d = f16_at(&block[208..]);
    let (nibble, two, bias) = (
        _mm256_set1_epi32(0x0F),
        _mm256_set1_epi32(3),
        _mm256_set1_epi32(32),
    );
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
        for l in (0..32).step_by(8) {
            // SAFETY: bytes `l .. l + 8` and `l + 32 .. + 8` lie in this half's 64 low-bit
            // bytes and `l .. l + 8` in its 32 high-bit bytes.
            let (a, b, h) = (widen8(&ql[l..]), widen8(&ql[l + 32..]), widen8(&qh[l..]));
            // Values `l`, `l + 32`, `l + 64`, `l + 96`: their low four bits, their top two.
            let quarters = [
                (_mm256_and_si256(a, nibble), _mm256_and_si256(h, two)),
                (
                    _mm256_and_si256(b, nibble),
                    _mm256_and_si256(_mm256_srli_epi32::<2>(h), two),
                ),
                (
                    _mm256_srli_epi32::<4>(a),
                    _mm256_and_si256(_mm256_srli_epi32::<4>(h), two),
                ),
                (_mm256_srli_epi32::<4>(b), _mm256_srli_epi32::<6>(h)),
            ];
            for (k, (bits, top)) in quarters.into_iter().enumerate() {
                let q = _mm256_or_si256(bits, _mm256_slli_epi32::<4>(top));
                let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, bias));
                let scale = _mm256_set1_ps(d * sc[l / 16 + 2 * k] as i8 as f32);
                // SAFETY: value `128·half + 32·k + l + 7` < 256.
                let at = out.as_mut_ptr().add(128 * half + 32 * k + l);
                _mm256_storeu_ps(at, _mm256_mul_ps(scale, q));
            }
        }
    }
}

/// [`q6_k`] with AVX-512: the 6-bit values assembled 64 at a time in bytes (their low four
/// bits, their top two moved into place by 16-bit shifts of each lane's own count, less 32),
/// then widened sixteen at a time and multiplied by their scale, as [`q6_k`] does. A Q6_K
/// head is decoded block by block each time the logit lens reads it; with the bits taken
/// apart sixteen values at a time in 32-bit lanes, decoding the 1.5B model's head from L2
/// took 24 ms of one core, 16.5 ms this way (the same bits).
///
/// # Safety
/// AVX-512 F and BW and F16C are present.
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn q6_k_wide(block: &[u8; Q6_K_BYTES], out: &mut [f32; QK_K]) {
    // The sixteen scales, `d · sc` (each one f32 product, as in `q6_k`).
    let bits = u16::from_le_bytes([block[208], block[209]]);
    let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
    let sc = _mm_loadu_si128(block[192..208].as_ptr() as *const __m128i);
    let mut scales = [0f32; 16];
    _mm512_storeu_ps(
        scales.as_mut_ptr(),
        _mm512_mul_ps(
            _mm512_set1_ps(d),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)),
        ),
    );
    let (low, top, bias) = (
        _mm512_set1_epi8(0x0F),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(32),
    );
    // The high bits of values `l` and `l + 32` (bits 0-1 and 2-3 of byte `l`) to bits 4-5:
    // words shifted left by 4 in the lower 256 bits, by 2 in the upper; of values `l + 64`
    // and `l + 96` (bits 4-5 and 6-7): by 0 and right by 2.
    let (by2, by4) = (0x0002_0002_0002_0002i64, 0x0004_0004_0004_0004i64);
    let up = _mm512_set_epi64(by2, by2, by2, by2, by4, by4, by4, by4);
    let down = _mm512_set_epi64(by2, by2, by2, by2, 0, 0, 0, 0);
    let mut q = [0i8; 128];
    for half in 0..2 {
        // Bytes `l` and `l + 32` of the low bits (64), byte `l` of the high bits in both
        // 256-bit halves.
        let a = _mm512_loadu_si512(block[64 * half..].as_ptr() as *const __m512i);
        let h = _mm256_loadu_si256(block[128 + 32 * half..].as_ptr() as *const __m256i);
        let h = _mm512_broadcast_i64x4(h);
        // Values 0-63 of the half (`l` then `l + 32`), then 64-127.
        let first = _mm512_or_si512(
            _mm512_and_si512(a, low),
            _mm512_and_si512(_mm512_sllv_epi16(h, up), top),
        );
        let second = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(a), low),
            _mm512_and_si512(_mm512_srlv_epi16(h, down), top),
        );
        _mm512_storeu_si512(q.as_mut_ptr() as *mut __m512i, _mm512_sub_epi8(first, bias));
        _mm512_storeu_si512(
            q[64..].as_mut_ptr() as *mut __m512i,
            _mm512_sub_epi8(second, bias),
        );
        for g in 0..8 {
            // Values `16g .. 16g + 16` of the half: quarter `g / 2`, from `l = 16 (g % 2)`,
            // whose scale is the half's `l / 16 + 2 · (g / 2) = g`-th.
            let values = _mm_loadu_si128(q[16 * g..].as_ptr() as *const __m128i);
            let values = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(values));
            let scale = _mm512_set1_ps(scales[8 * half + g]);
            // SAFETY: value `128·half + 16·g + 15` < 256.
            let at = out.as_mut_ptr().add(128 * half + 16 * g);
            _mm512_storeu_ps(at, _mm512_mul_ps(scale, values));
        }
    }
}

/// A Q5_0 block with AVX2: byte `j` holds value `j` in its low nibble and value `j + 16` in its
/// high one; bit `i` of the 32-bit word before them is value `i`'s fifth bit.
///
/// # Safety
/// AVX2 is present.
#[target_feature(enable = "avx2")]
unsafe fn q5_0(block: &[u8; Q5_0_BYTES], out: &mut [f32; QK]) {
    let d = _mm256_set1_ps(f16_at(&block[0..]));
    let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let (high, qs) = (_mm256_set1_epi32(high as i32), &block[6..]);
    let (nibble, one, bias) = (
        _mm256_set1_epi32(0x0F),
        _mm256_set1_epi32(1),
        _mm256_set1_epi32(16),
    );
    for g in 0..4 {
        // Values `8g .. 8g + 8`: low nibbles of bytes `8g ..` for g < 2, else high nibbles
        // of bytes `8(g − 2) ..`.
        let bytes = widen8(&qs[8 * (g % 2)..]);
        let bits = match g < 2 {
            true => _mm256_and_si256(bytes, nibble),
            false => _mm256_srli_epi32::<4>(bytes),
        };
        let shifts = _mm256_add_epi32(
            _mm256_set1_epi32(8 * g as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let fifth = _mm256_and_si256(_mm256_srlv_epi32(high, shifts), one);
        let q = _mm256_or_si256(bits, _mm256_slli_epi32::<4>(fifth));
        let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, bias));
        // SAFETY: values `8g .. 8g + 8` lie in `out` (32).
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * g), _mm256_mul_ps(d, q));
    }
}

/// A Q8_0 block with AVX2.
///
/// # Safety
/// AVX2 is present.
#[target_feature(enable = "avx2")]
unsafe fn q8_0(block: &[u8; Q8_0_BYTES], out: &mut [f32; QK]) {
    let d = _mm256_set1_ps(f16_at(&block[0..]));
    for g in 0..4 {
        // SAFETY: bytes `2 + 8g .. + 8` lie in the block, values `8g .. + 8` in `out`.
        let bytes = _mm_loadl_epi64(block[2 + 8 * g..].as_ptr() as *const __m128i);
        let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * g), _mm256_mul_ps(d, q));
    }
}

/// The first eight bytes of `bytes` as eight 32-bit integers.
///
/// # Safety
/// AVX2 is present; `bytes` holds at least eight bytes.
#[target_feature(enable = "avx2")]
unsafe fn widen8(bytes: &[u8]) -> __m256i {
    debug_assert!(bytes.len() >= 8);
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.as_ptr() as *const __m128i))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from a fixed xorshift sequence, with the f16 scales at `scales` set to finite
    /// values of either sign and a spread of magnitudes.
    fn blocks(count: usize, size: usize, scales: &[usize]) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut bytes: Vec<u8> = (0..count * size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        for (i, block) in bytes.chunks_exact_mut(size).enumerate() {
            for (k, &at) in scales.iter().enumerate() {
                let value = (1.0 + (i * 7 + k) as f32 % 13.0) * 10f32.powi((i % 9) as i32 - 6);
                let sign = if (i + k) % 3 == 0 { -1.0 } else { 1.0 };
                let bits = half::f16::from_f32(sign * value).to_le_bytes();
                block[at..at + 2].copy_from_slice(&bits);
            }
        }
        bytes
    }

    /// [`decoder`]'s and `scalar` decode every block of `ty` (of `size` bytes, `V` values) in
    /// `bytes` to the same bits (nothing to compare without AVX2).
    fn same_bits<const V: usize>(
        ty: GgmlType,
        bytes: &[u8],
        size: usize,
        scalar: impl Fn(&[u8], &mut [f32; V]),
    ) {
        if let Some(fast) = decoder(ty) {
            decode_the_same(|b, v: &mut [f32; V]| fast(b, v), bytes, size, scalar);
        }
    }

    /// `fast` and `scalar` decode every block (of `size` bytes, `V` values) in `bytes` to the
    /// same bits.
    fn decode_the_same<const V: usize>(
        fast: impl Fn(&[u8], &mut [f32; V]),
        bytes: &[u8],
        size: usize,
        scalar: impl Fn(&[u8], &mut [f32; V]),
    ) {
        for (i, block) in bytes.chunks_exact(size).enumerate() {
            let (mut got, mut want) = ([0f32; V], [0f32; V]);
            fast(block, &mut got);
            scalar(block, &mut want);
            for v in 0..V {
                assert_eq!(got[v].to_bits(), want[v].to_bits(), "block {i} value {v}");
            }
        }
    }

    #[test]
    fn q4_k_blocks_decode_to_the_scalar_decoders_bits() {
        let bytes = blocks(500, Q4_K_BYTES, &[0, 2]);
        same_bits(
            GgmlType::Q4_K,
            &bytes,
            Q4_K_BYTES,
            rlx_gguf::dequant_q4_k_block,
        );
    }

    #[test]
    fn q5_k_blocks_decode_to_the_scalar_decoders_bits() {
        let bytes = blocks(500, Q5_K_BYTES, &[0, 2]);
        same_bits(
            GgmlType::Q5_K,
            &bytes,
            Q5_K_BYTES,
            rlx_gguf::dequant_q5_k_block,
        );
    }

    #[test]
    fn q6_k_blocks_decode_to_the_scalar_decoders_bits() {
        let bytes = blocks(500, Q6_K_BYTES, &[208]);
        same_bits(
            GgmlType::Q6_K,
            &bytes,
            Q6_K_BYTES,
            rlx_gguf::dequant_q6_k_block,
        );
        // `decoder` gives the AVX-512 one where it can: the AVX2 one on its own too.
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            let avx2 = |b: &[u8], v: &mut [f32; QK_K]| unsafe { q6_k(array(b), v) };
            decode_the_same(avx2, &bytes, Q6_K_BYTES, rlx_gguf::dequant_q6_k_block);
        }
    }

    #[test]
    fn q5_0_blocks_decode_to_the_scalar_decoders_bits() {
        let bytes = blocks(2000, Q5_0_BYTES, &[0]);
        same_bits::<QK>(GgmlType::Q5_0, &bytes, Q5_0_BYTES, |b, v| {
            rlx_gguf::dequant_q5_0_block(b, v)
        });
    }

    #[test]
    fn q8_0_blocks_decode_to_the_scalar_decoders_bits() {
        let bytes = blocks(2000, Q8_0_BYTES, &[0]);
        same_bits::<QK>(GgmlType::Q8_0, &bytes, Q8_0_BYTES, |b, v| {
            rlx_gguf::dequant_q8_0_block(b, v)
        });
    }

    #[test]
    fn other_types_have_no_avx2_decoder() {
        assert!(decoder(GgmlType::Q4_0).is_none() && decoder(GgmlType::F32).is_none());
    }
}
