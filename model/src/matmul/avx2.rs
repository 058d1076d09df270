//! AVX2 + FMA kernels for `x · Wᵀ` and `g · W` when `x` and `g` have few rows.
//!
//! Both stream each row of `W` (`[n, k]`, PyTorch's layout, contiguous) from memory once and
//! keep the few rows of `x`, `g` and the output in cache: no packed copy of `W` is made.
//! Register tiles are fixed at compile time (const generics) so the accumulators stay in the
//! sixteen `ymm` registers.
//!
//! `W` may be f32, bf16 or f16 ([`Weight`]): half-precision rows are widened in registers as
//! they are read, exactly, and summed in the same order, so such a weight gives the bits its
//! f32 conversion would, from half the bytes.
//!
//! Every function here is `unsafe`: callers check that the CPU has AVX2 and FMA
//! ([`available`]) and that every pointer covers the rows and columns it is given.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::wide;

/// Whether this CPU runs the kernels (checked once by the standard library, then cached):
/// AVX2, FMA and F16C (f16 weights; every AVX2 CPU has it).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// The sum of a vector's eight lanes.
#[inline(always)]
pub(super) unsafe fn lane_sum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_hadd_ps(s, s);
    _mm_cvtss_f32(_mm_hadd_ps(s, s))
}

/// A weight element the kernels read: f32, or bf16 or f16 widened (exactly) on load.
pub trait Weight: Copy + Send + Sync {
    /// The eight values at `p`, as f32.
    ///
    /// # Safety
    /// AVX2 and F16C are present; `p` holds eight values.
    unsafe fn load8(p: *const Self) -> __m256;

    /// The value at `p`, as f32.
    ///
    /// # Safety
    /// `p` holds a value.
    unsafe fn get(p: *const Self) -> f32;

    /// The value at `p`, as f32, in all eight lanes.
    ///
    /// # Safety
    /// AVX2 and F16C are present; `p` holds a value.
    unsafe fn broadcast(p: *const Self) -> __m256;

    /// The value at `p`, as f32, in all sixteen lanes of a 512-bit register.
    ///
    /// # Safety
    /// AVX-512 F is present; `p` holds a value.
    unsafe fn broadcast16(p: *const Self) -> __m512;

    /// Eight values at `a` in the low half of a 512-bit register, eight at `b` in the high
    /// half, as f32.
    ///
    /// # Safety
    /// AVX-512 F is present; `a` and `b` hold eight values each.
    unsafe fn load_pair(a: *const Self, b: *const Self) -> __m512;

    /// The sixteen values at `p`, as f32, in a 512-bit register.
    ///
    /// # Safety
    /// AVX-512 F is present; `p` holds sixteen values.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Weight for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn get(p: *const f32) -> f32 {
        *p
    }

    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> __m256 {
        _mm256_broadcast_ss(&*p)
    }

    #[inline(always)]
    unsafe fn broadcast16(p: *const f32) -> __m512 {
        _mm512_set1_ps(*p)
    }

    #[inline(always)]
    unsafe fn load_pair(a: *const f32, b: *const f32) -> __m512 {
        let low = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(a)));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            low,
            _mm256_castps_pd(_mm256_loadu_ps(b)),
        ))
    }

    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

impl Weight for half::bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const half::bf16) -> __m256 {
        // The 16 bits become the high half of each f32.
        let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
    }

    #[inline(always)]
    unsafe fn get(p: *const half::bf16) -> f32 {
        f32::from_bits(u32::from((*p).to_bits()) << 16)
    }

    #[inline(always)]
    unsafe fn broadcast(p: *const half::bf16) -> __m256 {
        // The 16 bits in every half of every lane, then the low halves cleared.
        let halves = _mm256_set1_epi16((*p).to_bits() as i16);
        let high = _mm256_and_si256(halves, _mm256_set1_epi32(0xffff_0000u32 as i32));
        _mm256_castsi256_ps(high)
    }

    #[inline(always)]
    unsafe fn broadcast16(p: *const half::bf16) -> __m512 {
        // The 16 bits shifted into the high half of one lane, then copied to all.
        _mm512_castsi512_ps(_mm512_set1_epi32((u32::from((*p).to_bits()) << 16) as i32))
    }

    #[inline(always)]
    unsafe fn load_pair(a: *const half::bf16, b: *const half::bf16) -> __m512 {
        let bits = _mm512_cvtepu16_epi32(halves_pair(a as *const __m128i, b as *const __m128i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
    }

    #[inline(always)]
    unsafe fn load16(p: *const half::bf16) -> __m512 {
        let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
    }
}

impl Weight for half::f16 {
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[inline(always)]
    unsafe fn get(p: *const half::f16) -> f32 {
        (*p).to_f32()
    }

    #[inline(always)]
    unsafe fn broadcast(p: *const half::f16) -> __m256 {
        _mm256_cvtph_ps(_mm_set1_epi16((*p).to_bits() as i16))
    }

    #[inline(always)]
    unsafe fn broadcast16(p: *const half::f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_set1_epi16((*p).to_bits() as i16))
    }

    #[inline(always)]
    unsafe fn load_pair(a: *const half::f16, b: *const half::f16) -> __m512 {
        _mm512_cvtph_ps(halves_pair(a as *const __m128i, b as *const __m128i))
    }

    #[inline(always)]
    unsafe fn load16(p: *const half::f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// Eight 16-bit values at `a`, then eight at `b`.
#[inline(always)]
unsafe fn halves_pair(a: *const __m128i, b: *const __m128i) -> __m256i {
    _mm256_inserti128_si256::<1>(
        _mm256_castsi128_si256(_mm_loadu_si128(a)),
        _mm_loadu_si128(b),
    )
}

/// `w[c·k + p .. c·k + p + 8]` for `c < NR`: eight columns of `NR` weight rows.
#[inline(always)]
unsafe fn load_rows<W: Weight, const NR: usize>(w: *const W, k: usize, p: usize) -> [__m256; NR] {
    let mut rows = [_mm256_setzero_ps(); NR];
    for c in 0..NR {
        rows[c] = W::load8(w.add(c * k + p));
    }
    rows
}

/// `y[a·ys + c] = Σ_p x[a·k + p] · w[c·k + p]` for `a < MR`, `c < NR`.
#[inline(always)]
unsafe fn dot_tile<W: Weight, const MR: usize, const NR: usize>(
    x: *const f32,
    w: *const W,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    let k8 = k / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    let mut p = 0;
    while p < k8 {
        let wv = load_rows::<W, NR>(w, k, p);
        for a in 0..MR {
            let xv = _mm256_loadu_ps(x.add(a * k + p));
            for c in 0..NR {
                acc[a][c] = _mm256_fmadd_ps(xv, wv[c], acc[a][c]);
            }
        }
        p += 8;
    }
    for a in 0..MR {
        for c in 0..NR {
            *y.add(a * ys + c) = finish_dot(acc[a][c], x.add(a * k), w.add(c * k), k);
        }
    }
}

/// One entry of `x·Wᵀ` from its eight running sums over the whole steps of eight: the lanes
/// added ([`lane_sum`]), then the columns past them, a multiply and an add each (every form
/// of `x·Wᵀ` and [`dots_rows`] ends its entries with this).
///
/// # Safety
/// AVX2 and F16C are present; `x` and `w` hold `k` values.
#[inline(always)]
pub(super) unsafe fn finish_dot<W: Weight>(
    sums: __m256,
    x: *const f32,
    w: *const W,
    k: usize,
) -> f32 {
    let mut s = lane_sum(sums);
    for q in k / 8 * 8..k {
        s += *x.add(q) * W::get(w.add(q));
    }
    s
}

/// [`dot_tile`] over all `m` rows of `x` for `NR` rows of `w`, three rows of `x` at a time.
#[inline(always)]
unsafe fn dot_rows<W: Weight, const NR: usize>(
    x: *const f32,
    m: usize,
    w: *const W,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    let mut a = 0;
    while a < m {
        match m - a {
            1 => dot_tile::<W, 1, NR>(x.add(a * k), w, k, y.add(a * ys), ys),
            2 => dot_tile::<W, 2, NR>(x.add(a * k), w, k, y.add(a * ys), ys),
            _ => dot_tile::<W, 3, NR>(x.add(a * k), w, k, y.add(a * ys), ys),
        }
        a += (m - a).min(3);
    }
}

/// `y[a·ys + c] = Σ_p x[a·k + p] · w[c·k + p]` for `a < m`, `c < n`: a block of `x · Wᵀ`,
/// by [`wide::x_wt`] where the CPU has AVX-512 (the same bits).
///
/// # Safety
/// AVX2, FMA and F16C are present; `x` holds `m·k` floats, `w` holds `n·k` values, and `y` is
/// writable at `a·ys + c` for every `a < m`, `c < n`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn x_wt<W: Weight>(
    x: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    if wide::available() {
        wide::x_wt(x, m, w, n, k, y, ys)
    } else {
        x_wt_narrow(x, m, w, n, k, y, ys)
    }
}

/// [`x_wt`] on AVX2 registers.
///
/// # Safety
/// As [`x_wt`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn x_wt_narrow<W: Weight>(
    x: *const f32,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    y: *mut f32,
    ys: usize,
) {
    let mut c = 0;
    while c < n {
        match n - c {
            1 => dot_rows::<W, 1>(x, m, w.add(c * k), k, y.add(c), ys),
            2 => dot_rows::<W, 2>(x, m, w.add(c * k), k, y.add(c), ys),
            _ => dot_rows::<W, 3>(x, m, w.add(c * k), k, y.add(c), ys),
        }
        c += (n - c).min(3);
    }
}

/// `y[i] = Σ_p x[p] · ws[i][p]` for rows `ws[i]` of `k` values of any [`Weight`] anywhere in
/// memory, each summed in [`x_wt`]'s order, so with the same bits; four rows at a time share
/// each load of `x` (`k` floats).
///
/// # Safety
/// AVX2, FMA and F16C are present; `x` holds `k` floats and each `ws[i]` `k` values; `y` is
/// as long as `ws`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_rows<W: Weight>(x: *const f32, ws: &[*const W], k: usize, y: &mut [f32]) {
    for (ws, y) in ws.chunks(4).zip(y.chunks_mut(4)) {
        match ws.len() {
            1 => rows_n::<W, 1>(x, ws, k, y),
            2 => rows_n::<W, 2>(x, ws, k, y),
            3 => rows_n::<W, 3>(x, ws, k, y),
            _ => rows_n::<W, 4>(x, ws, k, y),
        }
    }
}

/// [`dots_rows`] for exactly `N` rows.
#[inline(always)]
unsafe fn rows_n<W: Weight, const N: usize>(
    x: *const f32,
    ws: &[*const W],
    k: usize,
    y: &mut [f32],
) {
    let k8 = k / 8 * 8;
    let mut acc = [_mm256_setzero_ps(); N];
    let mut p = 0;
    while p < k8 {
        let xv = _mm256_loadu_ps(x.add(p));
        for a in 0..N {
            acc[a] = _mm256_fmadd_ps(xv, W::load8(ws[a].add(p)), acc[a]);
        }
        p += 8;
    }
    for a in 0..N {
        y[a] = finish_dot(acc[a], x, ws[a], k);
    }
}

/// `gx[a·k + p] += Σ_c g[a·gs + c] · w[c·k + p]` for `a < MR`, `c < NR`.
#[inline(always)]
unsafe fn axpy_tile<W: Weight, const MR: usize, const NR: usize>(
    g: *const f32,
    gs: usize,
    w: *const W,
    k: usize,
    gx: *mut f32,
) {
    let k8 = k / 8 * 8;
    let mut coef = [[_mm256_setzero_ps(); NR]; MR];
    for a in 0..MR {
        for c in 0..NR {
            coef[a][c] = _mm256_set1_ps(*g.add(a * gs + c));
        }
    }
    let mut p = 0;
    while p < k8 {
        let wv = load_rows::<W, NR>(w, k, p);
        for a in 0..MR {
            let out = gx.add(a * k + p);
            let mut acc = _mm256_loadu_ps(out);
            for c in 0..NR {
                acc = _mm256_fmadd_ps(coef[a][c], wv[c], acc);
            }
            _mm256_storeu_ps(out, acc);
        }
        p += 8;
    }
    axpy_tail::<W, MR, NR>(g, gs, w, k, gx);
}

/// [`axpy_tile`]'s columns past the last whole step of eight: a multiply and an add each, in
/// the order of `c` (every form of `g·W` ends its rows with this).
#[inline(always)]
pub(super) unsafe fn axpy_tail<W: Weight, const MR: usize, const NR: usize>(
    g: *const f32,
    gs: usize,
    w: *const W,
    k: usize,
    gx: *mut f32,
) {
    for q in k / 8 * 8..k {
        for a in 0..MR {
            for c in 0..NR {
                *gx.add(a * k + q) += *g.add(a * gs + c) * W::get(w.add(c * k + q));
            }
        }
    }
}

/// [`axpy_tile`] over all `m` rows of `g` for `NR` rows of `w`, two rows of `g` at a time.
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
        match m - a {
            1 => axpy_tile::<W, 1, NR>(g.add(a * gs), gs, w, k, gx.add(a * k)),
            _ => axpy_tile::<W, 2, NR>(g.add(a * gs), gs, w, k, gx.add(a * k)),
        }
        a += (m - a).min(2);
    }
}

/// `gx[a·k + p] += Σ_c g[a·gs + c] · w[c·k + p]` for `a < m`, `c < n`: `g · W` over a block
/// of `W`'s rows, accumulated; by [`wide::g_w`] where the CPU has AVX-512 (the same bits).
///
/// # Safety
/// AVX2, FMA and F16C are present; `g` is readable at `a·gs + c` for every `a < m`, `c < n`; `w`
/// holds `n·k` values and `gx` holds `m·k` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn g_w<W: Weight>(
    g: *const f32,
    gs: usize,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    gx: *mut f32,
) {
    if wide::available() {
        wide::g_w(g, gs, m, w, n, k, gx)
    } else {
        g_w_narrow(g, gs, m, w, n, k, gx)
    }
}

/// [`g_w`] on AVX2 registers.
///
/// # Safety
/// As [`g_w`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn g_w_narrow<W: Weight>(
    g: *const f32,
    gs: usize,
    m: usize,
    w: *const W,
    n: usize,
    k: usize,
    gx: *mut f32,
) {
    nonzero_blocks(g, gs, m, n, |c, rows| match rows {
        1 => axpy_rows::<W, 1>(g.add(c), gs, m, w.add(c * k), k, gx),
        2 => axpy_rows::<W, 2>(g.add(c), gs, m, w.add(c * k), k, gx),
        3 => axpy_rows::<W, 3>(g.add(c), gs, m, w.add(c * k), k, gx),
        _ => axpy_rows::<W, 4>(g.add(c), gs, m, w.add(c * k), k, gx),
    });
}

/// Calls `block(c, rows)` for each block of up to four rows of `W` (`c, c + 1, …`, `n` in
/// all) whose coefficients in `g` (`m` rows, `gs` apart) are not all zero: the others add
/// nothing to `g · W`. Under a logit target the LM head's output gradient is one-hot, and its
/// input gradient one row of the table.
///
/// # Safety
/// `g` is readable at `a·gs + c` for every `a < m`, `c < n`.
#[inline(always)]
pub(super) unsafe fn nonzero_blocks(
    g: *const f32,
    gs: usize,
    m: usize,
    n: usize,
    mut block: impl FnMut(usize, usize),
) {
    for c in (0..n).step_by(4) {
        let rows = (n - c).min(4);
        if !(0..m).all(|a| (0..rows).all(|j| *g.add(a * gs + c + j) == 0.0)) {
            block(c, rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`dots_rows`] on scattered rows gives the bits [`x_wt`] gives, for every number of rows
    /// up to five and a length with a tail, on a weight stored as `W`.
    fn same_bits<W: Weight>(to: impl Fn(f32) -> W) {
        let (m, n, k) = (5, 5, 77);
        let value = |i: usize| ((i * 7919 % 1013) as f32 - 506.0) / 97.0;
        let x: Vec<f32> = (0..m * k).map(value).collect();
        let w: Vec<W> = (0..n * k).map(|i| to(value(i + 11))).collect();
        let mut want = vec![0f32; m * n];
        // SAFETY: `available()`; the buffers have the sizes above.
        unsafe { x_wt(x.as_ptr(), m, w.as_ptr(), n, k, want.as_mut_ptr(), n) };
        for rows in 1..=5 {
            let ws: Vec<*const W> = (0..rows).map(|c| w[c * k..].as_ptr()).collect();
            let mut y = vec![0f32; rows];
            // SAFETY: as above.
            unsafe { dots_rows(x[3 * k..].as_ptr(), &ws, k, &mut y) };
            for c in 0..rows {
                assert_eq!(
                    y[c].to_bits(),
                    want[3 * n + c].to_bits(),
                    "dots_rows, row {c}"
                );
            }
        }
    }

    #[test]
    fn dots_of_scattered_rows_have_the_bits_of_the_product() {
        if !available() {
            return;
        }
        same_bits(|v| v);
        same_bits(half::bf16::from_f32);
        same_bits(half::f16::from_f32);
    }
}
