//! AVX2 + FMA kernels for `x · Wᵀ` and `g · W` at a few dozen rows, reading `W` where it lies.
//!
//! At 8 to 96 rows a general matmul spends up to a fifth of its time packing `W` into its
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
//! `W` may be f32, bf16 or f16 ([`Weight`]), widened exactly as it is read: the same sums in
//! the same order, so a half-precision weight gives the bits of its f32 conversion.
//!
//! The kernels are `unsafe`: callers check that the CPU has AVX2 and FMA and that every
//! pointer covers the rows and columns it is given.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;
use std::arch::x86_64::*;

use super::avx2::Weight;

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

/// `y[r·ys + c] += Σ_{p < kc} xp[p].0[r] · w[c·ws + p]` for `r < rows`, `c < NR`.
#[inline(always)]
unsafe fn x_wt_tile<W: Weight, const NR: usize>(
    xp: *const Line,
    w: *const W,
    ws: usize,
    kc: usize,
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; NR];
    let x = xp as *const f32;
    for p in 0..kc {
        let a0 = _mm256_load_ps(x.add(p * PANEL));
        let a1 = _mm256_load_ps(x.add(p * PANEL + 8));
        for c in 0..NR {
            let b = W::broadcast(w.add(c * ws + p));
            acc[c][0] = _mm256_fmadd_ps(a0, b, acc[c][0]);
            acc[c][1] = _mm256_fmadd_ps(a1, b, acc[c][1]);
        }
    }
    let mut column = [0f32; PANEL];
    for c in 0..NR {
        _mm256_storeu_ps(column.as_mut_ptr(), acc[c][0]);
        _mm256_storeu_ps(column.as_mut_ptr().add(8), acc[c][1]);
        for r in 0..rows {
            *y.add(r * ys + c) += column[r];
        }
    }
}

/// `y[r·ys + c] += Σ_p x[r][p] · w[c·k + p]` for `r < m`, `c < n`: a block of `W`'s rows
/// against all of `x`, given as [`panels`] of `k` lines each.
///
/// # Safety
/// AVX2, FMA and F16C are present; `xp` holds `⌈m/16⌉·k` lines, `w` holds `n·k` values, and `y`
/// is writable at `r·ys + c` for every `r < m`, `c < n`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn x_wt<W: Weight>(
    xp: *const Line,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    let kc = depth(m, k);
    let mut k0 = 0;
    while k0 < k {
        let kk = kc.min(k - k0);
        let mut c = 0;
        while c < n {
            let wc = w.add(c * k + k0);
            let mut r = 0;
            while r < m {
                let xr = xp.add(r / PANEL * k + k0);
                let yr = y.add(r * ys + c);
                let rows = PANEL.min(m - r);
                match n - c {
                    1 => x_wt_tile::<W, 1>(xr, wc, k, kk, yr, ys, rows),
                    2 => x_wt_tile::<W, 2>(xr, wc, k, kk, yr, ys, rows),
                    3 => x_wt_tile::<W, 3>(xr, wc, k, kk, yr, ys, rows),
                    4 => x_wt_tile::<W, 4>(xr, wc, k, kk, yr, ys, rows),
                    5 => x_wt_tile::<W, 5>(xr, wc, k, kk, yr, ys, rows),
                    _ => x_wt_tile::<W, W_ROWS>(xr, wc, k, kk, yr, ys, rows),
                }
                r += PANEL;
            }
            c += W_ROWS.min(n - c);
        }
        k0 += kk;
    }
}

/// `gx[a·k + j] += Σ_{p < pc} g[a·gs + p] · strip[p][j]` for `a < MR`, `j < 16`, where the
/// strip is `w[p·k + j]` and, with `FIRST`, is read from `w`, copied to `packed` and the
/// strip after next prefetched; without it, read from `packed`.
#[inline(always)]
unsafe fn g_w_tile<W: Weight, const MR: usize, const FIRST: bool>(
    g: *const f32,
    gs: usize,
    w: *const W,
    k: usize,
    packed: *mut Line,
    pc: usize,
    gx: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let packed = packed as *mut f32;
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
unsafe fn g_w_strip<W: Weight>(
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
                    1 => g_w_tile::<W, 1, $first>(ga, gs, w, k, packed, pc, gxa),
                    2 => g_w_tile::<W, 2, $first>(ga, gs, w, k, packed, pc, gxa),
                    3 => g_w_tile::<W, 3, $first>(ga, gs, w, k, packed, pc, gxa),
                    4 => g_w_tile::<W, 4, $first>(ga, gs, w, k, packed, pc, gxa),
                    5 => g_w_tile::<W, 5, $first>(ga, gs, w, k, packed, pc, gxa),
                    _ => g_w_tile::<W, G_ROWS, $first>(ga, gs, w, k, packed, pc, gxa),
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
/// `j0 ≤ j < j1` of `g · W`.
///
/// # Safety
/// AVX2, FMA and F16C are present; `g` holds `m·n` floats, `w` holds `n·k` values, `gx` holds
/// `m·k` floats, and `j0 ≤ j1 ≤ k`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn g_w<W: Weight>(
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
            g_w_strip((gp, n), m, wp.add(j), k, pc, gx.add(j), packed.as_mut_ptr());
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
