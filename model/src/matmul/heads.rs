//! AVX2 + FMA kernel for the attention heads' contributions through o_proj, squared and
//! weighted by the output gradient, reading o_proj once, row by row.
//!
//! Head h's contribution at position p is `c_h[p] = z_h[p] · W_hᵀ` (`z_h` its slice of
//! o_proj's input, `W_h` its block of columns); its score needs `Σ_d (c_h[p][d] · g[p][d])²`.
//! Computed head by head as products, each reads a strided block of the weight (at a few
//! tokens, one pass over o_proj per head in all); here each row `d` of the weight, which holds
//! every head's columns, is read once and gives all heads' `c_h[p][d]` for every position.
//!
//! The kernel is `unsafe`: callers check that the CPU has AVX2 and FMA and that every pointer
//! covers the rows and columns it is given.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::lane_sum;

/// Floats per head dimension step (two vectors).
pub const STEP: usize = 16;

/// `out[h·seq + p] += Σ_{d < rows} (z[p][h·hd ..] · w[d][h·hd ..] · g[p·gs + d])²` over the
/// `hd` columns of each of the `heads` heads, for `p < seq`.
///
/// # Safety
/// AVX2 and FMA are present; `hd` is a multiple of [`STEP`]; `z` holds `seq` rows and `w`
/// `rows` rows of `heads·hd` floats; `g` is readable at `p·gs + d` for `p < seq`,
/// `d < rows`; `out` holds `heads·seq` floats.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn squares(
    z: *const f32,
    seq: usize,
    (heads, hd): (usize, usize),
    w: *const f32,
    rows: usize,
    g: *const f32,
    gs: usize,
    out: &mut [f32],
) {
    let width = heads * hd;
    for d in 0..rows {
        let wr = w.add(d * width);
        for p in 0..seq {
            let gd = *g.add(p * gs + d);
            let zr = z.add(p * width);
            for h in 0..heads {
                let (zh, wh) = (zr.add(h * hd), wr.add(h * hd));
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for i in (0..hd).step_by(STEP) {
                    a0 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(zh.add(i)), _mm256_loadu_ps(wh.add(i)), a0);
                    a1 = _mm256_fmadd_ps(
                        _mm256_loadu_ps(zh.add(i + 8)),
                        _mm256_loadu_ps(wh.add(i + 8)),
                        a1,
                    );
                }
                let c = lane_sum(_mm256_add_ps(a0, a1)) * gd;
                out[h * seq + p] += c * c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squares_equal_a_direct_sum() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let (seq, heads, hd, rows) = (3, 4, 32, 10);
        let width = heads * hd;
        let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        let z: Vec<f32> = (0..seq * width).map(value).collect();
        let w: Vec<f32> = (0..rows * width).map(|i| value(i + 7)).collect();
        // g with a row stride of 12 (> rows), as a slice of a wider gradient.
        let g: Vec<f32> = (0..seq * 12).map(|i| value(i + 3)).collect();
        let mut out = vec![0f32; heads * seq];
        // SAFETY: the features are checked; the buffers have the sizes above.
        unsafe {
            squares(
                z.as_ptr(),
                seq,
                (heads, hd),
                w.as_ptr(),
                rows,
                g.as_ptr(),
                12,
                &mut out,
            )
        };
        for h in 0..heads {
            for p in 0..seq {
                let mut want = 0f64;
                for d in 0..rows {
                    let c: f64 = (0..hd)
                        .map(|i| {
                            z[p * width + h * hd + i] as f64 * w[d * width + h * hd + i] as f64
                        })
                        .sum();
                    want += (c * g[p * 12 + d] as f64).powi(2);
                }
                let got = out[h * seq + p] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * want,
                    "h {h} p {p}: {got} vs {want}"
                );
            }
        }
    }
}
