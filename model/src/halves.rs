//! f32 to and from bf16 and f16 on every core, for flex with half-precision weights: rounded
//! at load under `--dtype bf16|f16`, and widened for every product (see `matmul`).
//!
//! Handed f32 data and asked for half precision, burn-flex converts on one thread through an
//! f64 copy of the tensor: most of a 20 s load of the 1.5B model. Here each f32 is rounded
//! straight to the half type, in parallel runs and without the f64 copy. For f16 that gives
//! flex's bits exactly; for bf16 it gives PyTorch's (round to nearest even on the f32's bits),
//! which flex's route through `bf16::from_f64` misses for about 1 in 19,000 random f32 bit
//! patterns.

use burn::tensor::{DType, TensorData};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use rayon::prelude::*;

/// Values per parallel task (1 MiB of f32).
const VALUES_PER_TASK: usize = 1 << 18;

/// `data` (f32) rounded to `target` (bf16 or f16, to nearest, ties to even) on every core;
/// `None` for any other pair of types.
pub(crate) fn halve(data: &TensorData, target: DType) -> Option<TensorData> {
    if data.dtype != DType::F32 {
        return None;
    }
    let values = data.as_slice::<f32>().ok()?;
    let bytes = halve_values(values, target)?;
    Some(TensorData::from_bytes(bytes, data.shape.clone(), target))
}

/// `values` rounded to `target` (bf16 or f16) as little-endian bytes; `None` for another type.
pub(crate) fn halve_values(values: &[f32], target: DType) -> Option<burn::tensor::Bytes> {
    use burn::tensor::Bytes;
    match target {
        DType::BF16 => Some(Bytes::from_elems(round(values, to_bf16))),
        DType::F16 => Some(Bytes::from_elems(round_f16(values))),
        _ => None,
    }
}

/// bf16 (`BF16`) or f16 (`F16`) values, given as their bits, widened to f32 (exactly) into
/// `out`, on every core.
pub(crate) fn widen_into(bits: &[u16], dtype: DType, out: &mut [f32]) {
    assert_eq!(bits.len(), out.len());
    match dtype {
        DType::BF16 => each(bits, out, |b| f32::from_bits(u32::from(b) << 16)),
        // half converts f16 slices with the CPU's own instructions where it has them (F16C).
        DType::F16 => in_runs(bits, out, |bits, out| {
            bits.reinterpret_cast::<f16>().convert_to_f32_slice(out)
        }),
        other => panic!("widen_into: {other:?} is not a half type"),
    }
}

/// `run` on matching runs of [`VALUES_PER_TASK`] of `from` and `out`, in parallel (rayon's
/// pool: this runs on every product with half-precision weights).
fn in_runs<F: Sync, T: Send>(from: &[F], out: &mut [T], run: impl Fn(&[F], &mut [T]) + Sync) {
    out.par_chunks_mut(VALUES_PER_TASK)
        .zip(from.par_chunks(VALUES_PER_TASK))
        .for_each(|(out, from)| run(from, out));
}

/// `out[i] = to(from[i])`, in parallel runs ([`in_runs`]).
fn each<F: Copy + Sync, T: Send>(from: &[F], out: &mut [T], to: impl Fn(F) -> T + Sync) {
    in_runs(from, out, |from, out| {
        for (o, &f) in out.iter_mut().zip(from) {
            *o = to(f);
        }
    });
}

/// `v` rounded to bf16, to nearest, ties to even, as `bf16::from_f32` does, written on the
/// bits so that the loop over a tensor vectorises (a NaN stays a NaN, quieted).
#[inline(always)]
fn to_bf16(v: f32) -> bf16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x0040;
    bf16::from_bits(if v.is_nan() { nan } else { rounded } as u16)
}

/// Each value rounded to f16 (as `f16::from_f32`, with the CPU's F16C where it has it), on
/// every core.
fn round_f16(values: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; values.len()];
    in_runs(values, &mut out, |values, out| {
        out.convert_from_f32_slice(values)
    });
    out
}

/// Each value through `to`, on every core.
fn round<H: Copy + Default + Send>(values: &[f32], to: impl Fn(f32) -> H + Sync) -> Vec<H> {
    let mut out = vec![H::default(); values.len()];
    each(values, &mut out, to);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of f32: zeros, subnormals of both types, ties, the largest values, overflow,
    /// infinities, NaN, and a spread of ordinary bits.
    fn awkward() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            1e-45,
            -1e-40,
            5.96e-8,
            6.1e-5,
            65504.0,
            65520.0,
            1e6,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0 + f32::EPSILON,
            f32::from_bits(0x3f80_8000), // 1 + 2^-8: a bf16 tie, to even
            f32::from_bits(0x3f81_8000), // a bf16 tie, away from zero to even
            f32::from_bits(0x3f80_1000), // 1 + 2^-11: an f16 tie
        ];
        v.extend((0..(1u32 << 20) + 7).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        v
    }

    /// bf16 as PyTorch rounds an f32 (c10's `round_to_nearest_even`), for non-NaN values.
    fn bf16_bits_as_pytorch(v: f32) -> u16 {
        let bits = v.to_bits();
        ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
    }

    /// bf16 as PyTorch rounds; f16 as burn-flex's cast through f64 does (one rounding of an
    /// exact value).
    #[test]
    fn bf16_rounds_as_pytorch_and_f16_as_the_cast_through_f64() {
        let values = awkward();
        let data = TensorData::new(values.clone(), [values.len()]);
        let bits = |d: TensorData| -> Vec<u16> {
            d.as_bytes()
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        let b = bits(halve(&data, DType::BF16).unwrap());
        let h = bits(halve(&data, DType::F16).unwrap());
        for (i, &v) in values.iter().enumerate() {
            if v.is_nan() {
                assert!(bf16::from_bits(b[i]).is_nan() && f16::from_bits(h[i]).is_nan());
            } else {
                let want_h = f16::from_f64(v as f64).to_bits();
                assert_eq!(
                    b[i],
                    bf16_bits_as_pytorch(v),
                    "bf16 of {v:e} ({:#x})",
                    v.to_bits()
                );
                assert_eq!(h[i], want_h, "f16 of {v:e} ({:#x})", v.to_bits());
            }
        }
    }

    #[test]
    fn bit_rounding_equals_bf16_from_f32_nan_included() {
        for v in awkward()
            .into_iter()
            .chain([f32::from_bits(0x7f80_0001), -f32::NAN])
        {
            assert_eq!(
                to_bf16(v).to_bits(),
                bf16::from_f32(v).to_bits(),
                "{:#x}",
                v.to_bits()
            );
        }
    }

    #[test]
    fn widening_is_exact_and_undoes_rounding() {
        let values = awkward();
        for (dtype, to_f32) in [
            (
                DType::BF16,
                (|b| bf16::from_bits(b).to_f32()) as fn(u16) -> f32,
            ),
            (DType::F16, |b| f16::from_bits(b).to_f32()),
        ] {
            let bytes = halve_values(&values, dtype).unwrap();
            let bits: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            let mut wide = vec![0f32; bits.len()];
            widen_into(&bits, dtype, &mut wide);
            for (&w, &b) in wide.iter().zip(&bits) {
                assert_eq!(w.to_bits(), to_f32(b).to_bits(), "{dtype:?} {b:#x}");
            }
            // Widened values are exactly representable: rounding them again changes nothing.
            let again = halve_values(&wide, dtype).unwrap();
            assert_eq!(&again[..], &bytes[..], "{dtype:?}");
        }
    }

    #[test]
    fn only_f32_to_a_half_type_is_converted() {
        let data = TensorData::new(vec![1.5f32, -2.0], [2]);
        assert!(halve(&data, DType::F32).is_none());
        assert!(halve(&data, DType::F64).is_none());
        let halves = TensorData::new(vec![bf16::from_f32(1.5)], [1]);
        assert!(halve(&halves, DType::F16).is_none());
        let out = halve(&data, DType::BF16).unwrap();
        assert_eq!(out.dtype, DType::BF16);
        assert_eq!(out.shape.to_vec(), [2]);
        assert_eq!(
            out.to_vec::<bf16>().unwrap(),
            [bf16::from_f32(1.5), bf16::from_f32(-2.0)]
        );
    }
}
