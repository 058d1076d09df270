//! AVX-512 forms of the streaming kernels [`avx2::x_wt`](super::avx2::x_wt) and
//! [`avx2::g_w`](super::avx2::g_w), giving their bits from fewer instructions.
//!
//! At a few tokens those kernels are bound by their instructions, not by memory: on a 2-core
//! AVX-512 VM, `x · Wᵀ` for five rows of `x` against a bf16 `[8960, 1536]` weight took 3.0 ms
//! on one thread where one row, which only streams the weight, took 1.75 ms. Here each 512-bit
//! register holds two of the AVX2 kernel's eight-lane sums (two rows of `W` side by side, the
//! same eight values of `x` in both halves), so every entry is summed lane for lane as before
//! and has the same bits, with half the multiply-adds and widenings: 1.8 ms for bf16, 2.45 ms
//! instead of 4.6 for f32. `g · W` needs no pairing: each lane is one output value whose sum
//! runs over the rows of `W` in the same order at any width, so sixteen lanes do what eight did
//! (and up to five rows of `g` share each widened row of `W`).
//!
//! Every function here is `unsafe`: callers check [`available`] and that every pointer covers
//! the rows and columns it is given.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::{self, Weight};

/// Whether this CPU runs the kernels: AVX-512 F, and what the AVX2 kernels need (which
/// finish the rows and columns these leave).
pub fn available() -> bool {
    avx2::available() && std::is_x86_feature_detected!("avx512f")
}

/// Rows of `W` per [`dot_tile`]: four pairs.
const PAIRED_ROWS: usize = 8;

/// The eight floats at `p` in both halves of a 512-bit register.
#[inline(always)]
pub(super) unsafe fn both_halves(p: *const f32) -> __m512 {
    _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))))
}

/// The high half of a 512-bit register.
#[inline(always)]
unsafe fn high_half(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// `y[a·ys + c] = Σ_p x[a·k + p] · w[c·k + p]` for `a < MR`, `c < 8`, each sum as
/// [`avx2::x_wt`] takes it: eight lanes over `p` in steps of eight, the lanes added, then the
/// columns past the last whole step one by one.
#[inline(always)]
unsafe fn dot_tile<W: Weight, const MR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    squared_dot_tile::<W, MR, false>(x, w, k, y, ys, std::ptr::null_mut());
}

/// [`dot_tile`], and with `SQUARES` each of the eight rows' sum of squares into `squares[c]`:
/// the widened values squared into eight lanes as the entries are summed, then the lanes
/// added in order and the squares past the last whole step one by one.
#[inline(always)]
unsafe fn squared_dot_tile<W: Weight, const MR: usize, const SQUARES: bool>(
    x: *const f32,
    w: *const W,
    k: usize,
    y: *mut f32,
    ys: usize,
    squares: *mut f32,
) {
    const PAIRS: usize = PAIRED_ROWS / 2;
    let k8 = k / 8 * 8;
    let mut acc = [[_mm512_setzero_ps(); PAIRS]; MR];
    let mut sq = [_mm512_setzero_ps(); PAIRS];
    let mut p = 0;
    while p < k8 {
        let wv: [__m512; PAIRS] =
            std::array::from_fn(|i| W::load_pair(w.add(2 * i * k + p), w.add((2 * i + 1) * k + p)));
        if SQUARES {
            for i in 0..PAIRS {
                sq[i] = _mm512_fmadd_ps(wv[i], wv[i], sq[i]);
            }
        }
        for a in 0..MR {
            let xv = both_halves(x.add(a * k + p));
            for i in 0..PAIRS {
                acc[a][i] = _mm512_fmadd_ps(xv, wv[i], acc[a][i]);
            }
        }
        p += 8;
    }
    for a in 0..MR {
        for i in 0..PAIRS {
            for (c, half) in [
                (2 * i, _mm512_castps512_ps256(acc[a][i])),
                (2 * i + 1, high_half(acc[a][i])),
            ] {
                *y.add(a * ys + c) = avx2::finish_dot(half, x.add(a * k), w.add(c * k), k);
            }
        }
    }
    if SQUARES {
        for i in 0..PAIRS {
            for (c, half) in [
                (2 * i, _mm512_castps512_ps256(sq[i])),
                (2 * i + 1, high_half(sq[i])),
            ] {
                *squares.add(c) = squares_tail(half, w.add(c * k), k);
            }
        }
    }
}

/// [`avx2::x_wt`]'s result and bits: whole tiles of [`PAIRED_ROWS`] rows of `w` here, up to
/// five rows of `x` at a time, the last rows of `w` by the AVX2 kernel.
///
/// # Safety
/// [`available`]; otherwise as [`avx2::x_wt`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn x_wt<W: Weight>(
    x: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    let paired = n / PAIRED_ROWS * PAIRED_ROWS;
    for c in (0..paired).step_by(PAIRED_ROWS) {
        let (w, y) = (w.add(c * k), y.add(c));
        let mut a = 0;
        while a < m {
            let (x, y) = (x.add(a * k), y.add(a * ys));
            match m - a {
                1 => dot_tile::<W, 1>(x, w, k, y, ys),
                2 => dot_tile::<W, 2>(x, w, k, y, ys),
                3 => dot_tile::<W, 3>(x, w, k, y, ys),
                4 => dot_tile::<W, 4>(x, w, k, y, ys),
                _ => dot_tile::<W, 5>(x, w, k, y, ys),
            }
            a += (m - a).min(5);
        }
    }
    if paired < n {
        avx2::x_wt_narrow(x, m, w.add(paired * k), n - paired, k, y.add(paired), ys);
    }
}

/// [`x_wt`] for one row of `x`, with each row of `w`'s sum of squares into `squares` (`n`
/// floats): the LM head's product in a forward pass that notes its row norms for the logit
/// lens ([`super::HeadNorms`]). The entries come from [`x_wt`]'s tiles, so with its bits
/// ([`squared_dot_tile`]); rows past the last whole tile are squared one value at a time.
///
/// # Safety
/// [`available`]; `x` holds `k` floats, `w` `n × k` values, `y` and `squares` `n` floats.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn x_wt_squares<W: Weight>(
    x: *const f32,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    squares: *mut f32,
) {
    let paired = n / PAIRED_ROWS * PAIRED_ROWS;
    for c in (0..paired).step_by(PAIRED_ROWS) {
        squared_dot_tile::<W, 1, true>(x, w.add(c * k), k, y.add(c), n, squares.add(c));
    }
    for r in paired..n {
        let row = w.add(r * k);
        avx2::x_wt_narrow(x, 1, row, 1, k, y.add(r), 1);
        *squares.add(r) = (0..k)
            .map(|p| {
                let v = W::get(row.add(p));
                v * v
            })
            .sum();
    }
}

/// The eight lanes of `lanes` added in order, then the squares of `row[k / 8 · 8 .. k]`.
#[inline(always)]
unsafe fn squares_tail<W: Weight>(lanes: __m256, row: *const W, k: usize) -> f32 {
    let mut sums = [0f32; 8];
    _mm256_storeu_ps(sums.as_mut_ptr(), lanes);
    let mut s: f32 = sums.iter().sum();
    for p in k / 8 * 8..k {
        let v = W::get(row.add(p));
        s += v * v;
    }
    s
}

/// `gx[a·k + p] += Σ_c g[a·gs + c] · w[c·k + p]` for `a < MR`, `c < NR`, each output value
/// summed as [`avx2::g_w`] sums it: fused multiply-adds in the order of `c` over the columns
/// in whole steps of eight, a multiply and an add each past them.
#[inline(always)]
unsafe fn axpy_tile<W: Weight, const MR: usize, const NR: usize>(
    g: *const f32,
    gs: usize,
    w: *const W,
    k: usize,
    gx: *mut f32,
) {
    let (k16, k8) = (k / 16 * 16, k / 8 * 8);
    let mut coef = [[_mm512_setzero_ps(); NR]; MR];
    for a in 0..MR {
        for c in 0..NR {
            coef[a][c] = _mm512_set1_ps(*g.add(a * gs + c));
        }
    }
    for p in (0..k16).step_by(16) {
        let wv: [__m512; NR] = std::array::from_fn(|c| W::load16(w.add(c * k + p)));
        for a in 0..MR {
            let out = gx.add(a * k + p);
            let mut acc = _mm512_loadu_ps(out);
            for c in 0..NR {
                acc = _mm512_fmadd_ps(coef[a][c], wv[c], acc);
            }
            _mm512_storeu_ps(out, acc);
        }
    }
    if k16 < k8 {
        let wv: [__m256; NR] = std::array::from_fn(|c| W::load8(w.add(c * k + k16)));
        for a in 0..MR {
            let out = gx.add(a * k + k16);
            let mut acc = _mm256_loadu_ps(out);
            for c in 0..NR {
                acc = _mm256_fmadd_ps(_mm512_castps512_ps256(coef[a][c]), wv[c], acc);
            }
            _mm256_storeu_ps(out, acc);
        }
    }
    avx2::axpy_tail::<W, MR, NR>(g, gs, w, k, gx);
}

/// [`axpy_tile`] over all `m` rows of `g` for `NR` rows of `w`, five rows of `g` at a time.
#[inline(always)]
unsafe fn axpy_rows<W: Weight, const NR: usize>(
    g: *const f32,
    gs: usize,
    m: usize,
    w: *const W,
    k: usize,
    gx: *mut f32,
) {
    let mut a = 0;
    while a < m {
        let (g, gx) = (g.add(a * gs), gx.add(a * k));
        match m - a {
            1 => axpy_tile::<W, 1, NR>(g, gs, w, k, gx),
            2 => axpy_tile::<W, 2, NR>(g, gs, w, k, gx),
            3 => axpy_tile::<W, 3, NR>(g, gs, w, k, gx),
            4 => axpy_tile::<W, 4, NR>(g, gs, w, k, gx),
            _ => axpy_tile::<W, 5, NR>(g, gs, w, k, gx),
        }
        a += (m - a).min(5);
    }
}

/// [`avx2::g_w`]'s result and bits (the same blocks of rows of `W` skipped:
/// [`avx2::nonzero_blocks`]).
///
/// # Safety
/// [`available`]; otherwise as [`avx2::g_w`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn g_w<W: Weight>(
    g: *const f32,
    gs: usize,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    gx: *mut f32,
) {
    avx2::nonzero_blocks(g, gs, m, n, |c, rows| {
        let (g, w) = (g.add(c), w.add(c * k));
        match rows {
            1 => axpy_rows::<W, 1>(g, gs, m, w, k, gx),
            2 => axpy_rows::<W, 2>(g, gs, m, w, k, gx),
            3 => axpy_rows::<W, 3>(g, gs, m, w, k, gx),
            _ => axpy_rows::<W, 4>(g, gs, m, w, k, gx),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::test_values::{bits, value};
    use super::*;

    /// Both kernels against the AVX2 ones on a weight stored as `W`, for every number of rows
    /// of `x` and `g` the streaming kernels take, numbers of rows of `W` around the pairing and
    /// lengths with tails of every kind (past whole steps of sixteen, of eight, and of one).
    fn same_bits_as_avx2<W: Weight>(to: impl Fn(f32) -> W) {
        for k in [8, 16, 40, 77, 1536, 1549] {
            for n in [1, 7, 8, 9, 16, 19] {
                let w: Vec<W> = (0..n * k).map(|i| to(value(i + 3))).collect();
                for m in 1..=7 {
                    let x: Vec<f32> = (0..m * k).map(|i| value(5 * i + 1)).collect();
                    let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
                    // SAFETY: `available()`; the buffers have the sizes above.
                    unsafe {
                        avx2::x_wt_narrow(x.as_ptr(), m, w.as_ptr(), n, k, want.as_mut_ptr(), n);
                        x_wt(x.as_ptr(), m, w.as_ptr(), n, k, got.as_mut_ptr(), n);
                    }
                    assert_eq!(bits(&got), bits(&want), "x_wt m {m} n {n} k {k}");

                    // g with a zero block of four columns (skipped) and a partly zero one.
                    let mut g: Vec<f32> = (0..m * n).map(|i| value(3 * i + 2)).collect();
                    for a in 0..m {
                        for c in (0..n).filter(|c| (4..8).contains(c) || *c == 9) {
                            g[a * n + c] = 0.0;
                        }
                    }
                    let start: Vec<f32> = (0..m * k).map(|i| value(i + 17) * 0.01).collect();
                    let (mut want, mut got) = (start.clone(), start);
                    // SAFETY: as above.
                    unsafe {
                        avx2::g_w_narrow(g.as_ptr(), n, m, w.as_ptr(), n, k, want.as_mut_ptr());
                        g_w(g.as_ptr(), n, m, w.as_ptr(), n, k, got.as_mut_ptr());
                    }
                    assert_eq!(bits(&got), bits(&want), "g_w m {m} n {n} k {k}");
                }
            }
        }
    }

    #[test]
    fn the_wide_kernels_give_the_avx2_kernels_bits() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        same_bits_as_avx2(|v| v);
        same_bits_as_avx2(half::bf16::from_f32);
        same_bits_as_avx2(half::f16::from_f32);
    }

    /// The one-row product that also squares the rows: [`x_wt`]'s bits, and each row's sum
    /// of squares within f32 rounding of the exact one.
    fn squares_beside_the_product<W: Weight>(to: impl Fn(f32) -> W) {
        for k in [8, 40, 77, 1536] {
            for n in [1, 7, 8, 9, 19] {
                let w: Vec<W> = (0..n * k).map(|i| to(value(i + 3))).collect();
                let x: Vec<f32> = (0..k).map(|i| value(5 * i + 1)).collect();
                let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
                let mut squares = vec![0f32; n];
                // SAFETY: `available()`; the buffers have the sizes above.
                unsafe {
                    x_wt(x.as_ptr(), 1, w.as_ptr(), n, k, want.as_mut_ptr(), n);
                    x_wt_squares(
                        x.as_ptr(),
                        w.as_ptr(),
                        n,
                        k,
                        got.as_mut_ptr(),
                        squares.as_mut_ptr(),
                    );
                }
                assert_eq!(bits(&got), bits(&want), "n {n} k {k}");
                for (j, &s) in squares.iter().enumerate() {
                    // SAFETY: row j has k values.
                    let exact: f64 = (0..k)
                        .map(|p| unsafe { W::get(w.as_ptr().add(j * k + p)) } as f64)
                        .map(|v| v * v)
                        .sum();
                    let error = (s as f64 - exact).abs() / exact;
                    assert!(error < 1e-5, "row {j} of n {n} k {k}: {s} against {exact}");
                }
            }
        }
    }

    #[test]
    fn rows_squared_beside_the_one_row_product() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        squares_beside_the_product(|v| v);
        squares_beside_the_product(half::bf16::from_f32);
    }
}
