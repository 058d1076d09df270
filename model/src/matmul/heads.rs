//! AVX2 + FMA kernel for the attention heads' contributions through o_proj, squared and
//! weighted by the output gradient, reading o_proj once, row by row.
//!
//! Head h's contribution at position p is `c_h[p] = z_h[p] · W_hᵀ` (`z_h` its slice of
//! o_proj's input, `W_h` its block of columns); its score needs `Σ_d (c_h[p][d] · g[p][d])²`.
//! Computed head by head as products, each reads a strided block of the weight (at a few
//! tokens, one pass over o_proj per head in all); here each row `d` of the weight, which holds
//! every head's columns, is read once and gives all heads' `c_h[p][d]` for every position.
//!
//! The weight may be f32, bf16 or f16 ([`Weight`]): half-precision rows are widened in
//! registers as they are read (a bf16 checkpoint's o_proj is not widened into a copy first).
//!
//! The kernel is `unsafe`: callers check that the CPU has AVX2 and FMA and that every pointer
//! covers the rows and columns it is given.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::{lane_sum, Weight};
use super::wide;

/// Floats per head dimension step (one vector).
pub const STEP: usize = 8;
/// Floats per head dimension step of [`squares_wide`] (one 512-bit vector).
pub const WIDE_STEP: usize = 16;
/// Tiles of four rows of `w` between the one [`squares_wide`] computes and the one it fetches.
const AHEAD: usize = 2;

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

/// `out[h·seq + p] += Σ_{d < rows} (z[p][h·hd ..] · w[d][h·hd ..] · g[p·gs + d])²`, by
/// [`squares_wide`] where the CPU has AVX-512 and `hd` is a multiple of [`WIDE_STEP`], else
/// by [`squares_narrow`].
///
/// # Safety
/// As [`squares_narrow`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn squares<W: Weight>(
    z: *const f32,
    seq: usize,
    head: (usize, usize),
    w: *const W,
    rows: usize,
    g: *const f32,
    gs: usize,
    out: &mut [f32],
) {
    match wide::available() && head.1.is_multiple_of(WIDE_STEP) {
        true => squares_wide(z, seq, head, w, rows, g, gs, out),
        false => squares_narrow(z, seq, head, w, rows, g, gs, out),
    }
}

/// `out[h·seq + p] += Σ_{d < rows} (z[p][h·hd ..] · w[d][h·hd ..] · g[p·gs + d])²` over the
/// `hd` columns of each of the `heads` heads, for `p < seq`. Tiles of four rows of `w` and
/// two positions (eight sums, six loads per eight multiply-adds): a head's 4 × `hd` block
/// stays in L1 while every position passes over it.
///
/// # Safety
/// AVX2, FMA and F16C are present; `hd` is a multiple of [`STEP`]; `z` holds `seq` rows of
/// `heads·hd` floats and `w` `rows` rows of `heads·hd` values; `g` is readable at `p·gs + d`
/// for `p < seq`, `d < rows`; `out` holds `heads·seq` floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn squares_narrow<W: Weight>(
    z: *const f32,
    seq: usize,
    (heads, hd): (usize, usize),
    w: *const W,
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
                        let wv = W::load8(wh.add(r * width + i));
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
                        a0[r] = _mm256_fmadd_ps(x0, W::load8(wh.add(r * width + i)), a0[r]);
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
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(zh.add(i)), W::load8(wh.add(i)), a);
                }
                let c = lane_sum(a) * gd;
                out[h * seq + p] += c * c;
            }
        }
    }
}

/// [`squares_narrow`] in 512-bit registers: tiles of four rows of `w` and up to four positions
/// (sixteen sums, each loaded vector of `w` used by every position of the tile and each of
/// `z` by every row), for half the instructions, and each head's block of `w` fetched
/// [`AHEAD`] tiles ahead. On the 1.5B model at 5 tokens the heads' scores took 7 ms from a
/// bf16 o_proj instead of 10–10.5 ms (without the fetches, 10 ms), and 11 ms instead of 12–13
/// from f32, whose 264 MB take 10 ms to read on that machine.
///
/// # Safety
/// [`wide::available`]; `hd` is a multiple of [`WIDE_STEP`]; otherwise as [`squares_narrow`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn squares_wide<W: Weight>(
    z: *const f32,
    seq: usize,
    (heads, hd): (usize, usize),
    w: *const W,
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
            if d + 4 * (AHEAD + 1) <= rows {
                fetch(wh.add(4 * AHEAD * width), width, hd);
            }
            let mut p = 0;
            while p < seq {
                let (zp, gp) = (z.add(p * width + h * hd), g.add(p * gs + d));
                let at = out[h * seq + p..].as_mut_ptr();
                let tile = (width, hd);
                match seq - p {
                    1 => wide_tile::<W, 1>(zp, wh, tile, gp, gs, at),
                    2 => wide_tile::<W, 2>(zp, wh, tile, gp, gs, at),
                    3 => wide_tile::<W, 3>(zp, wh, tile, gp, gs, at),
                    _ => wide_tile::<W, 4>(zp, wh, tile, gp, gs, at),
                }
                p += (seq - p).min(4);
            }
        }
    }
    if blocked < rows {
        let w = w.add(blocked * width);
        squares_narrow(
            z,
            seq,
            (heads, hd),
            w,
            rows - blocked,
            g.add(blocked),
            gs,
            out,
        );
    }
}

/// Four rows' `hd` values at `w`, `width` apart, fetched into L1.
#[inline(always)]
unsafe fn fetch<W: Weight>(w: *const W, width: usize, hd: usize) {
    for r in 0..4 {
        let row = w.add(r * width) as *const i8;
        for byte in (0..hd * std::mem::size_of::<W>()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(row.add(byte));
        }
    }
}

/// `out[q] += Σ_{r < 4} (z[q] · w[r] · g[q·gs + r])²` over `hd` columns for `q < P`: `z`'s
/// rows and `w`'s four rows are `width` apart.
#[inline(always)]
unsafe fn wide_tile<W: Weight, const P: usize>(
    z: *const f32,
    w: *const W,
    (width, hd): (usize, usize),
    g: *const f32,
    gs: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 4]; P];
    for i in (0..hd).step_by(WIDE_STEP) {
        let wv: [__m512; 4] = std::array::from_fn(|r| W::load16(w.add(r * width + i)));
        for q in 0..P {
            let zv = _mm512_loadu_ps(z.add(q * width + i));
            for r in 0..4 {
                acc[q][r] = _mm512_fmadd_ps(zv, wv[r], acc[q][r]);
            }
        }
    }
    for q in 0..P {
        // Each sum's two halves added, then the four sums as `squares_narrow` takes them.
        let halves: [__m256; 4] = std::array::from_fn(|r| {
            let high = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[q][r]));
            _mm256_add_ps(_mm512_castps512_ps256(acc[q][r]), _mm256_castpd_ps(high))
        });
        *out.add(q) += weighted_squares(&halves, g.add(q * gs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels this CPU has.
    type Kernel<W> = unsafe fn(
        *const f32,
        usize,
        (usize, usize),
        *const W,
        usize,
        *const f32,
        usize,
        &mut [f32],
    );

    /// [`squares_narrow`] and [`squares_wide`] on a weight stored as `W` (`to` rounds an f32 to it,
    /// `back` widens it) against a direct f64 sum over the stored values.
    fn check<W: Weight>(to: impl Fn(f32) -> W, back: impl Fn(W) -> f32) {
        let mut kernels: Vec<(Kernel<W>, usize, usize)> = vec![(squares_narrow::<W>, 3, 24)];
        if wide::available() {
            // Positions as tiles of 4 + 1, 4 + 3 and 2; hd one or two 512-bit steps.
            kernels.extend([(5, 32), (7, 16), (2, 32)].map(|(seq, hd)| {
                let wide: Kernel<W> = squares_wide::<W>;
                (wide, seq, hd)
            }));
        }
        for (kernel, seq, hd) in kernels {
            check_kernel(kernel, seq, hd, &to, &back);
        }
    }

    /// One kernel against the direct sum: 19 rows of `w`, four heads of `hd` columns.
    fn check_kernel<W: Weight>(
        kernel: Kernel<W>,
        seq: usize,
        hd: usize,
        to: impl Fn(f32) -> W,
        back: impl Fn(W) -> f32,
    ) {
        let (heads, rows) = (4, 19);
        let width = heads * hd;
        let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
        let z: Vec<f32> = (0..seq * width).map(value).collect();
        let w: Vec<W> = (0..rows * width).map(|i| to(value(i + 7) * 1.01)).collect();
        // g with a row stride of 23 (> rows), as a slice of a wider gradient; 19 rows are
        // four blocks of four and three single rows.
        let gs = 23;
        let g: Vec<f32> = (0..seq * gs).map(|i| value(i + 3)).collect();
        let mut out = vec![0f32; heads * seq];
        // SAFETY: the features are checked; the buffers have the sizes above.
        unsafe {
            kernel(
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
                            let wv = back(w[d * width + h * hd + i]);
                            z[p * width + h * hd + i] as f64 * wv as f64
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

    #[test]
    fn squares_equal_a_direct_sum_for_every_weight_type() {
        if !super::super::avx2::available() {
            return;
        }
        check(|v| v, |v| v);
        check(half::bf16::from_f32, half::bf16::to_f32);
        check(half::f16::from_f32, half::f16::to_f32);
    }
}
