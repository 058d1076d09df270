//! f32 weights rounded to bf16 or f16 on every core, for a backend that holds half-precision
//! weights in host memory (flex under `--dtype bf16|f16`).
//!
//! Handed f32 data and asked for half precision, burn-flex converts on one thread through an
//! f64 copy of the tensor: most of a 20 s load of the 1.5B model. Here each f32 is rounded
//! straight to the half type, in parallel runs and without the f64 copy. For f16 that gives
//! flex's bits exactly; for bf16 it gives PyTorch's (round to nearest even on the f32's bits),
//! which flex's route through `bf16::from_f64` misses for about 1 in 19,000 random f32 bit
//! patterns.

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};

use super::decode::threads_for;

/// `data` (f32) rounded to `target` (bf16 or f16, to nearest, ties to even) on every core;
/// `None` for any other pair of types.
pub(crate) fn halve(data: &TensorData, target: DType) -> Option<TensorData> {
    if data.dtype != DType::F32 {
        return None;
    }
    let values = data.as_slice::<f32>().ok()?;
    let shape = data.shape.clone();
    match target {
        DType::BF16 => Some(TensorData::new(round(values, to_bf16), shape)),
        DType::F16 => Some(TensorData::new(round(values, f16::from_f32), shape)),
        _ => None,
    }
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

/// Each value through `to`, in one run per thread ([`threads_for`]).
fn round<H: Copy + Default + Send>(values: &[f32], to: impl Fn(f32) -> H + Copy + Send) -> Vec<H> {
    let mut out = vec![H::default(); values.len()];
    let per_thread = values.len().div_ceil(threads_for(values.len())).max(1);
    std::thread::scope(|scope| {
        for (o, v) in out.chunks_mut(per_thread).zip(values.chunks(per_thread)) {
            scope.spawn(move || {
                for (o, &v) in o.iter_mut().zip(v) {
                    *o = to(v);
                }
            });
        }
    });
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
