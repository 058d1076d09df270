//! AVX2 + FMA kernels for `x · Wᵀ` and `g · W` at a few dozen rows, reading `W` where it lies.
//!
//! At a few dozen rows a general matmul spends up to a fifth of its time packing `W` into its
//! own layout, and packs before it multiplies, so reading the weights from memory and the
//! arithmetic do not overlap. These kernels read `W` (`[n, k]`, contiguous) in place and
//! keep the few rows of `x` or `g`, which are small, in cache:
//! - `x · Wᵀ`: `x` is copied once into panels of 16 rows laid out column by column; a
//!   16 × 6 tile of the output keeps its 12 accumulators in registers while six rows of `W`
//!   are broadcast one column at a time. Each block of six rows is read from memory for the
//!   first panel and from cache for the others (the six rows are six sequential streams,
//!   which the hardware prefetches; explicit prefetching measured no faster).
//! - `g · W`: a 6 × 16 tile of the input gradient broadcasts six rows of `g` against a strip
//!   of 16 columns of a block of 256 rows of `W`. Those rows lie `k` floats apart and share
//!   a handful of cache sets, so the first tile copies the strip onto consecutive lines (16
//!   KiB, in L1) for the others, and prefetches the strip after next (without both, about 20%
//!   slower at 64 rows).
//!
//! `W` may be f32, bf16 or f16 ([`Weight`]), widened exactly as it is read (`x · Wᵀ`: a block
//! of six rows at a time, into a buffer the tiles broadcast from): the same sums in the same
//! order, so a half-precision weight gives the bits of its f32 conversion.
//!
//! Where the CPU has AVX-512 both run on 512-bit registers: a panel's 16 rows, or a strip's 16
//! columns, in one register instead of two. Each lane still sums over the same values in the
//! same order, so the bits are the same. On one thread of a 2-core AVX-512 VM, against a
//! `[8960, 1536]` weight, that took `x · Wᵀ` at 10 rows from 5.9 to 4.6 ms (f32) and
//! `g · W` at 64 rows from 29.8 to 24.7 ms (f32), 25.1 to 20.3 (bf16).
//!
//! The kernels are `unsafe`: callers check that the CPU has AVX2 and FMA and that every
//! pointer covers the rows and columns it is given.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;
use std::arch::x86_64::*;

use super::avx2::Weight;
use super::wide;

/// Rows of `x` per panel in `x · Wᵀ` (two vectors).
pub const PANEL: usize = 16;
/// Rows of `W` per tile in `x · Wᵀ`.
pub const W_ROWS: usize = 6;
/// Rows of `g` per tile in `g · W`.
const G_ROWS: usize = 6;
/// Columns per tile in `g · W` (two vectors).
pub const STRIP: usize = 16;
/// Rows of `W` per block in `g · W`: one strip of the block is 16 KiB, half of L1.
const W_BLOCK: usize = 256;
/// Floats of one panel block in `x · Wᵀ` kept in L2 across a block of `W`'s rows.
const PANEL_FLOATS: usize = 1 << 17;

/// One panel column: 16 floats on one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Line(pub [f32; PANEL]);

/// `x` (`m × k`, row-major) as panels of 16 rows, each `k` lines of 16 floats (`x[r][p]` at
/// `panel[p].0[r]`), the last panel padded with zeros.
pub fn panels(x: &[f32], m: usize, k: usize) -> Vec<Line> {
    let count = m.div_ceil(PANEL);
    let mut out = vec![Line([0.0; PANEL]); count * k];
    out.par_chunks_mut(k)
        .enumerate()
        .for_each(|(index, panel)| {
            let rows = PANEL.min(m - index * PANEL);
            for r in 0..rows {
                let row = &x[(index * PANEL + r) * k..][..k];
                for (line, v) in panel.iter_mut().zip(row) {
                    line.0[r] = *v;
                }
            }
        });
    out
}

/// Columns of `k` per pass in `x · Wᵀ` for `m` rows: the panels' block fits L2.
pub fn depth(m: usize, k: usize) -> usize {
    let padded = m.div_ceil(PANEL) * PANEL;
    (PANEL_FLOATS / padded).max(256).min(k.max(1))
}

/// `y[r·ys + c] += Σ_{p < kc} xp[p].0[r] · w[c·ws + p]` for `r < rows`, `c < NR`: each
/// lane one row of the panel, summed over `p` in order, in two 256-bit registers or, `WIDE`,
/// one 512-bit register (the same bits).
#[inline(always)]
unsafe fn x_wt_tile<W: Weight, const NR: usize, const WIDE: bool>(
    xp: *const Line,
    w: *const W,
    ws: usize,
    kc: usize,
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    let x = xp as *const f32;
    let mut column = [0f32; PANEL];
    if WIDE {
        let mut acc = [_mm512_setzero_ps(); NR];
        for p in 0..kc {
            let a = _mm512_load_ps(x.add(p * PANEL));
            for c in 0..NR {
                acc[c] = _mm512_fmadd_ps(a, W::broadcast16(w.add(c * ws + p)), acc[c]);
            }
        }
        for c in 0..NR {
            _mm512_storeu_ps(column.as_mut_ptr(), acc[c]);
            for r in 0..rows {
                *y.add(r * ys + c) += column[r];
            }
        }
        return;
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; NR];
    for p in 0..kc {
        let a0 = _mm256_load_ps(x.add(p * PANEL));
        let a1 = _mm256_load_ps(x.add(p * PANEL + 8));
        for c in 0..NR {
            let b = W::broadcast(w.add(c * ws + p));
            acc[c][0] = _mm256_fmadd_ps(a0, b, acc[c][0]);
            acc[c][1] = _mm256_fmadd_ps(a1, b, acc[c][1]);
        }
    }
    for c in 0..NR {
        _mm256_storeu_ps(column.as_mut_ptr(), acc[c][0]);
        _mm256_storeu_ps(column.as_mut_ptr().add(8), acc[c][1]);
        for r in 0..rows {
            *y.add(r * ys + c) += column[r];
        }
    }
}

/// `y[r·ys + c] += Σ_p x[r][p] · w[c·k + p]` for `r < m`, `c < n`: a block of `W`'s rows
/// against all of `x`, given as [`panels`] of `k` lines each; with 512-bit registers where the
/// CPU has AVX-512 (the same bits).
///
/// # Safety
/// AVX2, FMA and F16C are present; `xp` holds `⌈m/16⌉·k` lines, `w` holds `n·k` values, and `y`
/// is writable at `r·ys + c` for every `r < m`, `c < n`.
pub unsafe fn x_wt<W: Weight>(
    xp: *const Line,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    if wide::available() {
        x_wt_wide(xp, m, w, n, k, y, ys)
    } else {
        x_wt_narrow(xp, m, w, n, k, y, ys)
    }
}

/// [`x_wt`] on AVX2 registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn x_wt_narrow<W: Weight>(
    xp: *const Line,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    x_wt_blocks::<W, false>(xp, m, w, n, k, y, ys)
}

/// [`x_wt`] on AVX-512 registers.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn x_wt_wide<W: Weight>(
    xp: *const Line,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    x_wt_blocks::<W, true>(xp, m, w, n, k, y, ys)
}

/// [`x_wt`]'s loops over `k`, `W`'s rows and `x`'s panels. A half-precision `W` is widened a
/// block of rows at a time into a small f32 buffer, which the tiles then broadcast from
/// memory: broadcasting its values one by one from 16 bits took an extra instruction or two
/// per value and panel (at 10 rows of `x` against a bf16 `[8960, 1536]`, 10.4 ms where f32
/// took 7.2 on one thread of a 2-core AVX-512 VM). Widening is exact: the same bits.
#[inline(always)]
unsafe fn x_wt_blocks<W: Weight, const WIDE: bool>(
    xp: *const Line,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    let kc = depth(m, k);
    let widen = std::mem::size_of::<W>() != std::mem::size_of::<f32>();
    let mut widened = vec![0f32; if widen { W_ROWS * kc } else { 0 }];
    let mut k0 = 0;
    while k0 < k {
        let kk = kc.min(k - k0);
        let mut c = 0;
        while c < n {
            let rows_w = W_ROWS.min(n - c);
            if widen {
                widen_rows(w.add(c * k + k0), k, rows_w, kk, widened.as_mut_ptr());
                panels_against::<f32, WIDE>(
                    xp,
                    m,
                    (widened.as_ptr(), kk),
                    rows_w,
                    (k, k0, kk),
                    y.add(c),
                    ys,
                );
            } else {
                panels_against::<W, WIDE>(
                    xp,
                    m,
                    (w.add(c * k + k0), k),
                    rows_w,
                    (k, k0, kk),
                    y.add(c),
                    ys,
                );
            }
            c += rows_w;
        }
        k0 += kk;
    }
}

/// `rows` rows of `kk` values of `w` (`ws` apart) as f32, `kk` apart in `out`.
#[inline(always)]
unsafe fn widen_rows<W: Weight>(w: *const W, ws: usize, rows: usize, kk: usize, out: *mut f32) {
    let k8 = kk / 8 * 8;
    for r in 0..rows {
        let (src, dst) = (w.add(r * ws), out.add(r * kk));
        for p in (0..k8).step_by(8) {
            _mm256_storeu_ps(dst.add(p), W::load8(src.add(p)));
        }
        for p in k8..kk {
            *dst.add(p) = W::get(src.add(p));
        }
    }
}

/// `rows_w` rows of `W` (`wc`, `ws` apart: the columns `k0 .. k0 + kk`) against every panel
/// of `x` (`k` lines each), added to `y`.
#[inline(always)]
unsafe fn panels_against<W: Weight, const WIDE: bool>(
    xp: *const Line,
    m: usize,
    (wc, ws): (*const W, usize),
    rows_w: usize,
    (k, k0, kk): (usize, usize, usize),
    y: *mut f32,
    ys: usize,
) {
    let mut r = 0;
    while r < m {
        let xr = xp.add(r / PANEL * k + k0);
        let yr = y.add(r * ys);
        let rows = PANEL.min(m - r);
        match rows_w {
            1 => x_wt_tile::<W, 1, WIDE>(xr, wc, ws, kk, yr, ys, rows),
            2 => x_wt_tile::<W, 2, WIDE>(xr, wc, ws, kk, yr, ys, rows),
            3 => x_wt_tile::<W, 3, WIDE>(xr, wc, ws, kk, yr, ys, rows),
            4 => x_wt_tile::<W, 4, WIDE>(xr, wc, ws, kk, yr, ys, rows),
            5 => x_wt_tile::<W, 5, WIDE>(xr, wc, ws, kk, yr, ys, rows),
            _ => x_wt_tile::<W, W_ROWS, WIDE>(xr, wc, ws, kk, yr, ys, rows),
        }
        r += PANEL;
    }
}

/// `gx[a·k + j] += Σ_{p < pc} g[a·gs + p] · strip[p][j]` for `a < MR`, `j < 16`, where the
/// strip is `w[p·k + j]` and, with `FIRST`, is read from `w`, copied to `packed` and the
/// strip after next prefetched; without it, read from `packed`. Each lane is one column,
/// summed over `p` in order, in two 256-bit registers or, `WIDE`, one 512-bit register (the
/// same bits).
#[inline(always)]
unsafe fn g_w_tile<W: Weight, const MR: usize, const FIRST: bool, const WIDE: bool>(
    g: *const f32,
    gs: usize,
    w: *const W,
    k: usize,
    packed: *mut Line,
    pc: usize,
    gx: *mut f32,
) {
    let packed = packed as *mut f32;
    if WIDE {
        let mut acc = [_mm512_setzero_ps(); MR];
        for p in 0..pc {
            let line = packed.add(p * STRIP);
            let wv = if FIRST {
                let row = w.add(p * k);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * STRIP) as *const i8);
                let wv = W::load16(row);
                _mm512_store_ps(line, wv);
                wv
            } else {
                _mm512_load_ps(line)
            };
            for a in 0..MR {
                let b = _mm512_set1_ps(*g.add(a * gs + p));
                acc[a] = _mm512_fmadd_ps(b, wv, acc[a]);
            }
        }
        for a in 0..MR {
            let out = gx.add(a * k);
            _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), acc[a]));
        }
        return;
    }
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..pc {
        let line = packed.add(p * STRIP);
        let (w0, w1) = if FIRST {
            let row = w.add(p * k);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(2 * STRIP) as *const i8);
            let (w0, w1) = (W::load8(row), W::load8(row.add(8)));
            _mm256_store_ps(line, w0);
            _mm256_store_ps(line.add(8), w1);
            (w0, w1)
        } else {
            (_mm256_load_ps(line), _mm256_load_ps(line.add(8)))
        };
        for a in 0..MR {
            let b = _mm256_broadcast_ss(&*g.add(a * gs + p));
            acc[a][0] = _mm256_fmadd_ps(b, w0, acc[a][0]);
            acc[a][1] = _mm256_fmadd_ps(b, w1, acc[a][1]);
        }
    }
    for a in 0..MR {
        let out = gx.add(a * k);
        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), acc[a][0]));
        let out = out.add(8);
        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), acc[a][1]));
    }
}

/// [`g_w_tile`] for all `m` rows of `g`, six at a time: the first tile reads the strip of
/// `W` (rows `k` floats apart, which share few cache sets) and packs it into `packed`, where
/// the others find it on consecutive lines.
#[inline(always)]
unsafe fn g_w_strip<W: Weight, const WIDE: bool>(
    (g, gs): (*const f32, usize),
    m: usize,
    w: *const W,
    k: usize,
    pc: usize,
    gx: *mut f32,
    packed: *mut Line,
) {
    let mut a = 0;
    while a < m {
        let (ga, gxa) = (g.add(a * gs), gx.add(a * k));
        let rows = G_ROWS.min(m - a);
        macro_rules! tile {
            ($first:literal) => {
                match rows {
                    1 => g_w_tile::<W, 1, $first, WIDE>(ga, gs, w, k, packed, pc, gxa),
                    2 => g_w_tile::<W, 2, $first, WIDE>(ga, gs, w, k, packed, pc, gxa),
                    3 => g_w_tile::<W, 3, $first, WIDE>(ga, gs, w, k, packed, pc, gxa),
                    4 => g_w_tile::<W, 4, $first, WIDE>(ga, gs, w, k, packed, pc, gxa),
                    5 => g_w_tile::<W, 5, $first, WIDE>(ga, gs, w, k, packed, pc, gxa),
                    _ => g_w_tile::<W, G_ROWS, $first, WIDE>(ga, gs, w, k, packed, pc, gxa),
                }
            };
        }
        if a == 0 {
            tile!(true)
        } else {
            tile!(false)
        }
        a += rows;
    }
}

/// `gx[a·k + j] += Σ_{p < n} g[a·n + p] · w[p·k + j]` for `a < m` and the columns
/// `j0 ≤ j < j1` of `g · W`; with 512-bit registers where the CPU has AVX-512 (the same bits).
///
/// # Safety
/// AVX2, FMA and F16C are present; `g` holds `m·n` floats, `w` holds `n·k` values, `gx` holds
/// `m·k` floats, and `j0 ≤ j1 ≤ k`.
pub unsafe fn g_w<W: Weight>(
    g: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    cols: (usize, usize),
    gx: *mut f32,
) {
    if wide::available() {
        g_w_wide(g, m, w, n, k, cols, gx)
    } else {
        g_w_narrow(g, m, w, n, k, cols, gx)
    }
}

/// [`g_w`] on AVX2 registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn g_w_narrow<W: Weight>(
    g: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    cols: (usize, usize),
    gx: *mut f32,
) {
    g_w_blocks::<W, false>(g, m, w, n, k, cols, gx)
}

/// [`g_w`] on AVX-512 registers.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn g_w_wide<W: Weight>(
    g: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    cols: (usize, usize),
    gx: *mut f32,
) {
    g_w_blocks::<W, true>(g, m, w, n, k, cols, gx)
}

/// [`g_w`]'s loops over blocks of `W`'s rows and strips of its columns.
#[inline(always)]
unsafe fn g_w_blocks<W: Weight, const WIDE: bool>(
    g: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    (j0, j1): (usize, usize),
    gx: *mut f32,
) {
    let full = j0 + (j1 - j0) / STRIP * STRIP;
    let mut packed = vec![Line([0.0; PANEL]); W_BLOCK];
    let mut p0 = 0;
    while p0 < n {
        let pc = W_BLOCK.min(n - p0);
        let (gp, wp) = (g.add(p0), w.add(p0 * k));
        let mut j = j0;
        while j < full {
            g_w_strip::<W, WIDE>((gp, n), m, wp.add(j), k, pc, gx.add(j), packed.as_mut_ptr());
            j += STRIP;
        }
        for a in 0..m {
            for p in 0..pc {
                let coef = *gp.add(a * n + p);
                for q in full..j1 {
                    *gx.add(a * k + q) += coef * W::get(wp.add(p * k + q));
                }
            }
        }
        p0 += pc;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values::{bits, value};
    use super::*;

    /// Both kernels' 512-bit forms against their 256-bit ones on a weight stored as `W` (`to`
    /// rounds an f32 to it, `back` widens it), and `x · Wᵀ` against the same weight widened to
    /// f32 first, for row counts around the panels and tiles, lengths split into several
    /// passes over `k` (and not a multiple of eight), and column ranges with partial strips.
    fn same_bits_wide_and_narrow<W: Weight>(to: impl Fn(f32) -> W, back: impl Fn(W) -> f32) {
        for k in [16, 40, 300, 1549] {
            for n in [1, 5, 6, 7, 13] {
                let w: Vec<W> = (0..n * k).map(|i| to(value(i + 3))).collect();
                let widened: Vec<f32> = w.iter().map(|&v| back(v)).collect();
                for m in [1, 8, 13, 16, 17, 40, 96] {
                    let x: Vec<f32> = (0..m * k).map(|i| value(5 * i + 1)).collect();
                    let xp = panels(&x, m, k);
                    let start: Vec<f32> = (0..m * n).map(|i| value(i + 17) * 0.01).collect();
                    let (mut want, mut got, mut f32s) = (start.clone(), start.clone(), start);
                    // SAFETY: `wide::available()` (which implies AVX2, FMA and F16C); the
                    // buffers have the sizes above.
                    unsafe {
                        x_wt_narrow(xp.as_ptr(), m, w.as_ptr(), n, k, want.as_mut_ptr(), n);
                        x_wt_wide(xp.as_ptr(), m, w.as_ptr(), n, k, got.as_mut_ptr(), n);
                        x_wt_narrow(xp.as_ptr(), m, widened.as_ptr(), n, k, f32s.as_mut_ptr(), n);
                    }
                    assert_eq!(bits(&got), bits(&want), "x_wt m {m} n {n} k {k}");
                    assert_eq!(bits(&got), bits(&f32s), "x_wt m {m} n {n} k {k}: widened");

                    let g: Vec<f32> = (0..m * n).map(|i| value(3 * i + 2)).collect();
                    for cols in [(0, k), (k / 3, k - 5), (k - 3, k)] {
                        let start: Vec<f32> = (0..m * k).map(|i| value(i + 29) * 0.01).collect();
                        let (mut want, mut got) = (start.clone(), start);
                        // SAFETY: as above; the columns lie within `k`.
                        unsafe {
                            g_w_narrow(g.as_ptr(), m, w.as_ptr(), n, k, cols, want.as_mut_ptr());
                            g_w_wide(g.as_ptr(), m, w.as_ptr(), n, k, cols, got.as_mut_ptr());
                        }
                        assert_eq!(bits(&got), bits(&want), "g_w m {m} n {n} k {k} {cols:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_wide_forms_give_the_avx2_bits() {
        if !wide::available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        same_bits_wide_and_narrow(|v| v, |v| v);
        same_bits_wide_and_narrow(half::bf16::from_f32, half::bf16::to_f32);
        same_bits_wide_and_narrow(half::f16::from_f32, half::f16::to_f32);
    }
}
