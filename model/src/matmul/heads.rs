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

/// Floats per head dimension step (one vector).
pub const STEP: usize = 8;

/// The four sums of four vectors' lanes, in order.
#[inline(always)]
unsafe fn sums4(a: &[__m256; 4]) -> __m128 {
    // [a0 a1 a2 a3] partial sums in each 128-bit half, then the halves added.
    let u = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps::<1>(u))
}

/// The sum of four lanes.
#[inline(always)]
unsafe fn sum4(v: __m128) -> f32 {
    let s = _mm_hadd_ps(v, v);
    _mm_cvtss_f32(_mm_hadd_ps(s, s))
}

/// `Σ_{r < 4} (c_r · g[r])²` for the four dot products `c` summed in `acc`.
#[inline(always)]
unsafe fn weighted_squares(acc: &[__m256; 4], g: *const f32) -> f32 {
    let c = _mm_mul_ps(sums4(acc), _mm_loadu_ps(g));
    sum4(_mm_mul_ps(c, c))
}

/// `out[h·seq + p] += Σ_{d < rows} (z[p][h·hd ..] · w[d][h·hd ..] · g[p·gs + d])²` over the
/// `hd` columns of each of the `heads` heads, for `p < seq`. Tiles of four rows of `w` and
/// two positions (eight sums, six loads per eight multiply-adds): a head's 4 × `hd` block
/// stays in L1 while every position passes over it.
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
    let blocked = rows / 4 * 4;
    for d in (0..blocked).step_by(4) {
        for h in 0..heads {
            let wh = w.add(d * width + h * hd);
            let mut p = 0;
            while p + 2 <= seq {
                let (z0, z1) = (z.add(p * width + h * hd), z.add((p + 1) * width + h * hd));
                let (mut a0, mut a1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
                for i in (0..hd).step_by(STEP) {
                    let (x0, x1) = (_mm256_loadu_ps(z0.add(i)), _mm256_loadu_ps(z1.add(i)));
                    for r in 0..4 {
                        let wv = _mm256_loadu_ps(wh.add(r * width + i));
                        a0[r] = _mm256_fmadd_ps(x0, wv, a0[r]);
                        a1[r] = _mm256_fmadd_ps(x1, wv, a1[r]);
                    }
                }
                out[h * seq + p] += weighted_squares(&a0, g.add(p * gs + d));
                out[h * seq + p + 1] += weighted_squares(&a1, g.add((p + 1) * gs + d));
                p += 2;
            }
            if p < seq {
                let z0 = z.add(p * width + h * hd);
                let mut a0 = [_mm256_setzero_ps(); 4];
                for i in (0..hd).step_by(STEP) {
                    let x0 = _mm256_loadu_ps(z0.add(i));
                    for r in 0..4 {
                        a0[r] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wh.add(r * width + i)), a0[r]);
                    }
                }
                out[h * seq + p] += weighted_squares(&a0, g.add(p * gs + d));
            }
        }
    }
    for d in blocked..rows {
        let wr = w.add(d * width);
        for p in 0..seq {
            let gd = *g.add(p * gs + d);
            let zr = z.add(p * width);
            for h in 0..heads {
                let (zh, wh) = (zr.add(h * hd), wr.add(h * hd));
                let mut a = _mm256_setzero_ps();
                for i in (0..hd).step_by(STEP) {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(zh.add(i)), _mm256_loadu_ps(wh.add(i)), a);
                }
                let c = lane_sum(a) * gd;
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
        let (seq, heads, hd, rows) = (3, 4, 24, 19);
        let width = heads * hd;
        let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        let z: Vec<f32> = (0..seq * width).map(value).collect();
        let w: Vec<f32> = (0..rows * width).map(|i| value(i + 7)).collect();
        // g with a row stride of 23 (> rows), as a slice of a wider gradient; 19 rows are
        // four blocks of four and three single rows, three positions a pair and one single.
        let gs = 23;
        let g: Vec<f32> = (0..seq * gs).map(|i| value(i + 3)).collect();
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
                gs,
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
                    want += (c * g[p * gs + d] as f64).powi(2);
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
