//! The rows of `W` the screen reads ([`Table`]): rounded to bf16 a block at a time with the
//! norms its bound takes, and read again in f32 for the exact values.

use std::arch::x86_64::*;

use super::super::avx2;
use super::CHUNK;
use crate::load::StoredBlocks;

/// The rows of `W` (`n × k`, row-major) the screen reads.
#[derive(Debug, Clone, Copy)]
pub enum Table<'a> {
    /// f32 values, rounded to bf16 a block at a time.
    F32(&'a [f32]),
    /// bf16 values (their bits), screened as they are and widened for the exact values.
    Bf16(&'a [u16]),
    /// Rows stored in blocks of a quantized format, decoded to f32 row by row into a buffer
    /// of the block's rows, which is then read as a [`Table::F32`] is.
    Blocks(&'a StoredBlocks),
}

impl<'a> Table<'a> {
    /// Rows of `k` values held (`None` for blocks whose rows are not `k` long).
    pub(super) fn rows(self, k: usize) -> Option<usize> {
        match self {
            Self::F32(w) => Some(w.len() / k),
            Self::Bf16(w) => Some(w.len() / k),
            Self::Blocks(b) => (b.shape()[1] == k).then_some(b.shape()[0]),
        }
    }

    /// Bytes per row of `k` values.
    pub(super) fn row_bytes(self, k: usize) -> usize {
        match self {
            Self::F32(_) => 4 * k,
            Self::Bf16(_) => 2 * k,
            Self::Blocks(b) => b.row_bytes(),
        }
    }

    /// The address of row `j` of `k` values.
    pub(super) fn row_ptr(self, j: usize, k: usize) -> *const u8 {
        match self {
            Self::F32(w) => w[j * k..].as_ptr() as *const u8,
            Self::Bf16(w) => w[j * k..].as_ptr() as *const u8,
            Self::Blocks(b) => b.bytes()[j * self.row_bytes(k)..].as_ptr(),
        }
    }

    /// `y[i] = x · w[js[i]]` for a row `x` of `k` floats, each as [`avx2::x_wt`] sums it (the
    /// model's one-row head); four rows of the table share each read of `x`. A
    /// [`Table::Blocks`] is read by its decoded rows ([`Table::F32`] of them) instead.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; `x` holds `k` floats, the rows `js` exist; `y` is as
    /// long as `js`; the table is not [`Table::Blocks`].
    pub(super) unsafe fn dots_rows(self, x: *const f32, js: &[u32], k: usize, y: &mut [f32]) {
        for (js, y) in js.chunks(4).zip(y.chunks_mut(4)) {
            match self {
                Self::F32(w) => {
                    let ws = js.map_rows(|j| w[j * k..].as_ptr());
                    avx2::dots_rows(x, &ws[..js.len()], k, y)
                }
                Self::Bf16(w) => {
                    let ws = js.map_rows(|j| w[j * k..].as_ptr() as *const half::bf16);
                    avx2::dots_rows(x, &ws[..js.len()], k, y)
                }
                Self::Blocks(_) => unreachable!("blocks are read by their decoded rows"),
            }
        }
    }

    /// Rows `j0 .. j0 + rows` in bf16, zero rows after them to fill `dst`'s length, with each
    /// row's `‖w‖` and `‖w − ŵ‖`: where the products read them (a whole block of a bf16
    /// table in place, else `dst`). A bf16 table's `‖w‖` are copied from `given` where known
    /// (an upper bound as [`bf16_norms`] gives), else taken from the rows. Blocks are decoded
    /// into `decoded` row by row, each row converted as soon as it is decoded (the exact values
    /// then read `decoded`).
    ///
    /// # Safety
    /// AVX-512 F and BF16 are present; the rows exist, `dst` holds at least `rows × k` halves
    /// and the norms (and `given`, if any) `rows` floats each; `k` is a multiple of 32; for
    /// blocks, `decoded` holds `rows × k` floats.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn screen_rows(
        self,
        j0: usize,
        rows: usize,
        k: usize,
        dst: &mut [u16],
        norms: (&mut [f32], &mut [f32]),
        given: Option<&[f32]>,
        decoded: &mut [f32],
    ) -> *const u16 {
        let at = match self {
            Self::Blocks(b) => {
                // Row by row: each one converted while its decoded values are in L1 (the
                // block's, 192 KiB, are not). The 1.5B model's Q6_K head decoded and
                // converted from L2 on one core took 62–66 ms block by block, 54–60 ms row
                // by row (with the earlier Q6_K decoder).
                let (wn, dn) = norms;
                for r in 0..rows {
                    let row = &mut decoded[r * k..][..k];
                    b.decode_row(j0 + r, row);
                    let norms = (&mut wn[r..r + 1], &mut dn[r..r + 1]);
                    convert_rows(row.as_ptr(), 1, k, dst[r * k..].as_mut_ptr(), Some(norms));
                }
                dst.as_ptr()
            }
            Self::F32(w) => {
                convert_rows(w[j0 * k..].as_ptr(), rows, k, dst.as_mut_ptr(), Some(norms));
                dst.as_ptr()
            }
            Self::Bf16(w) => {
                let block = &w[j0 * k..][..rows * k];
                match given {
                    Some(given) => norms.0[..rows].copy_from_slice(given),
                    None => bf16_norms(block.as_ptr(), rows, k, norms.0),
                }
                norms.1[..rows].fill(0.0);
                if rows * k == dst.len() {
                    return block.as_ptr();
                }
                dst[..rows * k].copy_from_slice(block);
                dst.as_ptr()
            }
        };
        dst[rows * k..].fill(0);
        at
    }
}

/// Up to four row indices as pointers, without allocating.
trait MapRows {
    /// `f` of each index, in an array (entries past the indices repeat the last).
    fn map_rows<T: Copy>(&self, f: impl Fn(usize) -> T) -> [T; 4];
}

impl MapRows for [u32] {
    fn map_rows<T: Copy>(&self, f: impl Fn(usize) -> T) -> [T; 4] {
        std::array::from_fn(|i| f(self[i.min(self.len() - 1)] as usize))
    }
}

/// `rows` rows of `src` (`k` floats each, `k` a multiple of 32) rounded to bf16 (to nearest,
/// ties to even) into `dst`; with `norms`, each row's `‖w‖` and `‖w − ŵ‖`.
///
/// # Safety
/// AVX-512 F and BF16 are present; `src` holds `rows × k` floats, `dst` `rows × k` halves,
/// and `norms` (if any) two slices of `rows` floats.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn convert_rows(
    src: *const f32,
    rows: usize,
    k: usize,
    dst: *mut u16,
    mut norms: Option<(&mut [f32], &mut [f32])>,
) {
    for t in 0..rows {
        // Two sums each (the chunk's halves), so that no FMA waits on the one before it (the
        // lens from an f32 table: 110 → 104 ms, medians of 15 runs).
        let (mut sw, mut sd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let (mut sw2, mut sd2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for c in (0..k).step_by(CHUNK) {
            let lo = _mm512_loadu_ps(src.add(t * k + c));
            let hi = _mm512_loadu_ps(src.add(t * k + c + 16));
            // The second operand fills the lower half: elements c .. c + 32 in order.
            let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.add(t * k + c) as *mut __m512i, halves);
            if norms.is_some() {
                let blo = widen(_mm512_castsi512_si256(halves));
                let bhi = widen(_mm512_extracti64x4_epi64::<1>(halves));
                let (dlo, dhi) = (_mm512_sub_ps(lo, blo), _mm512_sub_ps(hi, bhi));
                sw = _mm512_fmadd_ps(lo, lo, sw);
                sw2 = _mm512_fmadd_ps(hi, hi, sw2);
                sd = _mm512_fmadd_ps(dlo, dlo, sd);
                sd2 = _mm512_fmadd_ps(dhi, dhi, sd2);
            }
        }
        if let Some((wn, dn)) = norms.as_mut() {
            wn[t] = _mm512_reduce_add_ps(_mm512_add_ps(sw, sw2)).sqrt();
            dn[t] = _mm512_reduce_add_ps(_mm512_add_ps(sd, sd2)).sqrt();
        }
    }
}

/// Sixteen bf16 values (their bits) as f32, exactly: the 16 bits become the high half.
///
/// # Safety
/// AVX-512 F is present.
#[inline(always)]
unsafe fn widen(h: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// Each of `rows` rows of bf16 values' `‖w‖` (`k` a multiple of 32), into `norms`.
///
/// `vdpbf16ps` squares and sums 32 values per instruction without widening them. Its
/// products are exact in f32 except where it flushes them (inputs and results below 2⁻¹²⁶
/// count as zero): at most 2⁻¹²⁶ lost per product, so `k·2⁻¹²⁶` is added back before the
/// square root and the norm stays an upper bound up to the rounding the screen's bound allows
/// for. Four sums, so that no instruction waits on the one before it (with one widening FMA
/// sum the norms took an eighth of the 1.5B model's lens; four such sums took it from 84 to
/// 79 ms, and `vdpbf16ps` instead of the widening FMAs 1–4% more, medians of 15 alternating
/// runs).
///
/// # Safety
/// AVX-512 F and BF16 are present; `src` holds `rows × k` halves and `norms` `rows` floats.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn bf16_norms(src: *const u16, rows: usize, k: usize, norms: &mut [f32]) {
    let flushed = k as f32 * f32::MIN_POSITIVE;
    for t in 0..rows {
        let mut sums = [_mm512_setzero_ps(); 4];
        for c in (0..k).step_by(4 * CHUNK) {
            // `k` is a multiple of 32: the last step may have fewer than four chunks.
            let chunks = (k - c).min(4 * CHUNK) / CHUNK;
            for (i, sum) in sums.iter_mut().enumerate().take(chunks) {
                let at = src.add(t * k + c + CHUNK * i) as *const __m512i;
                let h: __m512bh = std::mem::transmute(_mm512_loadu_si512(at));
                *sum = _mm512_dpbf16_ps(*sum, h, h);
            }
        }
        let sum = _mm512_add_ps(
            _mm512_add_ps(sums[0], sums[1]),
            _mm512_add_ps(sums[2], sums[3]),
        );
        norms[t] = (_mm512_reduce_add_ps(sum) + flushed).sqrt();
    }
}
