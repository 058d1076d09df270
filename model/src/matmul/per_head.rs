//! AVX-512 kernel for o_proj's product at a few tokens with its sums split at the heads'
//! boundaries: `y = Σ_h c_h`, `c_h[a] = x_h[a] · W_hᵀ` (`x_h` head h's columns of the input,
//! `W_h` the weight's), each `c_h` a sum of its own, optionally kept ([`super::HeadParts`]).
//!
//! The multiply-adds are those of [`wide::x_wt`](super::wide::x_wt) (and as many instructions:
//! the same tiles of eight rows of `W` and up to five rows of `x`); only the reductions differ,
//! one per head instead of one per entry. o_proj takes this kernel wherever it applies, noted
//! or not, so that a run that keeps the heads' contributions and one that does not compute
//! the same outputs.
//!
//! Every function here is `unsafe`: callers check [`super::wide::available`] and that every
//! pointer covers the rows and columns it is given.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::Weight;
use super::wide::both_halves;

/// Rows of `W` per tile: row `i` beside row `i + 4` in each of four registers.
pub const TILE_ROWS: usize = 8;
/// Columns per step (the eight values of `x` in both halves of a register).
pub const STEP: usize = 8;

/// The sums of four registers' halves, in row order: register `i` holds row `i`'s eight lanes
/// in its low half and row `i + 4`'s in its high half; the result holds rows 0 ..= 7.
#[inline(always)]
unsafe fn row_sums(a: &[__m512; 4]) -> __m256 {
    // Within each 128-bit lane: [a0, a1] lanes 0+2 and 1+3, then [a0, a1, a2, a3] all four.
    let t01 = _mm512_add_ps(
        _mm512_unpacklo_ps(a[0], a[1]),
        _mm512_unpackhi_ps(a[0], a[1]),
    );
    let t23 = _mm512_add_ps(
        _mm512_unpacklo_ps(a[2], a[3]),
        _mm512_unpackhi_ps(a[2], a[3]),
    );
    let (t01, t23) = (_mm512_castps_pd(t01), _mm512_castps_pd(t23));
    let u = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(t01, t23)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(t01, t23)),
    );
    // 128-bit lanes 0 and 1 hold rows 0..3's halves of their sums, 2 and 3 rows 4..7's.
    let v = _mm512_add_ps(u, _mm512_shuffle_f32x4::<0b10_11_00_01>(u, u));
    _mm512_castps512_ps256(_mm512_shuffle_f32x4::<0b00_00_10_00>(v, v))
}

/// `y[a·ys + c] = Σ_h c_h[a][c]` for `a < MR`, `c < 8`, with `c_h[a][c] = Σ_{p in head h}
/// x[a·k + p] · w[c·k + p]` summed in eight lanes over the head's `hd` columns; each `c_h`
/// also into `parts[(h·pm + a)·pn + c]` unless `parts` is null.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn heads_tile<W: Weight, const MR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    hd: usize,
    y: *mut f32,
    ys: usize,
    parts: *mut f32,
    (pm, pn): (usize, usize),
) {
    let mut total = [_mm256_setzero_ps(); MR];
    for (h, h0) in (0..k).step_by(hd).enumerate() {
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        for p in (h0..h0 + hd).step_by(STEP) {
            let wv: [__m512; 4] =
                std::array::from_fn(|i| W::load_pair(w.add(i * k + p), w.add((i + 4) * k + p)));
            for a in 0..MR {
                let xv = both_halves(x.add(a * k + p));
                for i in 0..4 {
                    acc[a][i] = _mm512_fmadd_ps(xv, wv[i], acc[a][i]);
                }
            }
        }
        for a in 0..MR {
            let c = row_sums(&acc[a]);
            total[a] = _mm256_add_ps(total[a], c);
            if !parts.is_null() {
                _mm256_storeu_ps(parts.add((h * pm + a) * pn), c);
            }
        }
    }
    for a in 0..MR {
        _mm256_storeu_ps(y.add(a * ys), total[a]);
    }
}

/// `y[a·ys + c] = Σ_h c_h[a][c]` for the `m` rows of `x` (`m × k`) and the `n` rows of `w`
/// (`n × k`), `k = heads · hd`, each head's `c_h` a sum of its own added to the others in
/// head order; with `parts` non-null, each `c_h[a][c]` also into `parts[(h·pm + a)·pn + c]`.
///
/// # Safety
/// [`super::wide::available`]; `n` and `hd` are multiples of 8 and `hd` divides `k`; `x` holds
/// `m × k` floats, `w` `n × k` values, `y` is writable at `a·ys + c` for `a < m`, `c < n`, and
/// `parts` (if not null) at `(h·pm + a)·pn + c` for `h < k / hd` as well.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn x_wt_heads<W: Weight>(
    x: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    (k, hd): (usize, usize),
    y: *mut f32,
    ys: usize,
    parts: *mut f32,
    (pm, pn): (usize, usize),
) {
    debug_assert!(n.is_multiple_of(TILE_ROWS) && hd.is_multiple_of(STEP) && k.is_multiple_of(hd));
    for c in (0..n).step_by(TILE_ROWS) {
        let w = w.add(c * k);
        let mut a = 0;
        while a < m {
            let (x, y) = (x.add(a * k), y.add(a * ys + c));
            let parts = match parts.is_null() {
                true => parts,
                false => parts.add(a * pn + c),
            };
            let tile = (pm, pn);
            match m - a {
                1 => heads_tile::<W, 1>(x, w, k, hd, y, ys, parts, tile),
                2 => heads_tile::<W, 2>(x, w, k, hd, y, ys, parts, tile),
                3 => heads_tile::<W, 3>(x, w, k, hd, y, ys, parts, tile),
                4 => heads_tile::<W, 4>(x, w, k, hd, y, ys, parts, tile),
                _ => heads_tile::<W, 5>(x, w, k, hd, y, ys, parts, tile),
            }
            a += (m - a).min(5);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values::{bits, value};
    use super::super::wide;
    use super::*;

    /// Each head's part against f64 sums, and the outputs as the parts added in head order, for
    /// every number of rows the streaming kernels take, from f32 and bf16 weights (which give
    /// the same bits as their f32 conversion), with and without parts.
    #[test]
    fn parts_are_the_heads_sums_and_add_up_to_the_output() {
        if !wide::available() {
            eprintln!("skipped: no AVX-512");
            return;
        }
        for (heads, hd, n) in [(1, 8, 8), (3, 16, 24), (4, 16, 64), (12, 128, 40)] {
            let k = heads * hd;
            let w: Vec<f32> = (0..n * k).map(|i| value(i + 3)).collect();
            let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let wide_b: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
            for m in 1..=16 {
                let x: Vec<f32> = (0..m * k).map(|i| value(5 * i + 1)).collect();
                let run = |w: *const f32, keep: bool| {
                    let (mut y, mut parts) = (vec![0f32; m * n], vec![0f32; heads * m * n]);
                    let at = if keep {
                        parts.as_mut_ptr()
                    } else {
                        std::ptr::null_mut()
                    };
                    // SAFETY: `available()`; n and hd are multiples of 8, hd divides k, and
                    // the buffers have the sizes the kernel reads and writes.
                    unsafe {
                        x_wt_heads(x.as_ptr(), m, w, n, (k, hd), y.as_mut_ptr(), n, at, (m, n))
                    };
                    (y, parts)
                };
                let (y, parts) = run(w.as_ptr(), true);
                assert_eq!(bits(&run(w.as_ptr(), false).0), bits(&y), "m {m} k {k}");
                for a in 0..m {
                    for c in 0..n {
                        let mut sum = 0f32;
                        for h in 0..heads {
                            let got = parts[(h * m + a) * n + c];
                            let want: f64 = (h * hd..(h + 1) * hd)
                                .map(|p| x[a * k + p] as f64 * w[c * k + p] as f64)
                                .sum();
                            let scale: f64 = (h * hd..(h + 1) * hd)
                                .map(|p| (x[a * k + p] as f64 * w[c * k + p] as f64).abs())
                                .sum();
                            let err = (got as f64 - want).abs();
                            assert!(err <= 1e-6 * scale, "h {h} a {a} c {c}: {got} vs {want}");
                            sum += got;
                        }
                        assert_eq!(y[a * n + c].to_bits(), sum.to_bits(), "a {a} c {c}");
                    }
                }
                // A bf16 weight: its f32 conversion's bits.
                let mut yb = vec![0f32; m * n];
                // SAFETY: as above.
                unsafe {
                    x_wt_heads(
                        x.as_ptr(),
                        m,
                        wb.as_ptr(),
                        n,
                        (k, hd),
                        yb.as_mut_ptr(),
                        n,
                        std::ptr::null_mut(),
                        (m, n),
                    )
                };
                assert_eq!(
                    bits(&yb),
                    bits(&run(wide_b.as_ptr(), false).0),
                    "bf16 m {m}"
                );
            }
        }
    }
}
