//! Settling screened entries against each row's target: counted above it, left for an exact
//! value, or kept as a candidate for the highest.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU32, Ordering};

use super::bound::Row;

/// One row's running result within a task.
pub(super) struct Partial {
    /// Entries known to exceed the target's.
    pub(super) above: usize,
    /// Entries that may rank among the highest: column and upper bound.
    pub(super) candidates: Vec<(u32, f32)>,
    /// The highest lower bounds seen, descending (at most `top`).
    pub(super) lows: Vec<f32>,
    /// The `top`-th highest lower bound seen, −∞ until there are `top`.
    pub(super) bar: f32,
}

impl Partial {
    /// Nothing seen.
    pub(super) fn new() -> Self {
        Self {
            above: 0,
            candidates: Vec::new(),
            lows: Vec::new(),
            bar: f32::NEG_INFINITY,
        }
    }

    /// Keeps `low` if it is among the `top` highest lower bounds (a NaN bound is none).
    pub(super) fn offer(&mut self, low: f32, top: usize) {
        if !low.is_nan() && (self.lows.len() < top || low > self.bar) {
            let at = self.lows.partition_point(|&l| l >= low);
            self.lows.insert(at, low);
            self.lows.truncate(top);
            if self.lows.len() == top {
                self.bar = self.lows[top - 1];
            }
        }
    }
}

/// Settles one row of `x` against a block of columns starting at `j0`: entries above the
/// target are counted, undecided ones' columns queued in `pending` for exact values, and
/// candidates for the highest kept with their upper bounds. Sixteen columns at a time; the
/// candidates are tested against the bar as it stood before their sixteen, which can only
/// keep more of them. The bar is the higher of this task's `top`-th lower bound and the one
/// `shared` holds, which this task raises when it can: every task's is a lower bound on the
/// row's `top`-th highest entry.
///
/// # Safety
/// AVX-512 F is present; `screened`, `wn` and `dn` have the same length.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn classify(
    row: &Row,
    screened: &[f32],
    (wn, dn): (&[f32], &[f32]),
    j0: usize,
    (part, shared): (&mut Partial, &AtomicU32),
    pending: &mut Vec<u32>,
    top: usize,
) {
    let n = screened.len();
    let mut published = shared.load(Ordering::Relaxed);
    let (p, q, s) = (
        _mm512_set1_ps(row.p),
        _mm512_set1_ps(row.q),
        _mm512_set1_ps(row.s),
    );
    let target = _mm512_set1_ps(row.target);
    let mut lows = [0f32; 16];
    for t in (0..n).step_by(16) {
        let lanes: __mmask16 = match n - t {
            16.. => 0xffff,
            short => (1u16 << short) - 1,
        };
        let a = _mm512_maskz_loadu_ps(lanes, screened.as_ptr().add(t));
        let e = _mm512_fmadd_ps(
            p,
            _mm512_maskz_loadu_ps(lanes, wn.as_ptr().add(t)),
            _mm512_fmadd_ps(q, _mm512_maskz_loadu_ps(lanes, dn.as_ptr().add(t)), s),
        );
        let (low, high) = (_mm512_sub_ps(a, e), _mm512_add_ps(a, e));
        // Above: low > target; not above: high <= target; undecided otherwise (NaN too).
        let above = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(lanes, low, target);
        let below = _mm512_mask_cmp_ps_mask::<_CMP_LE_OQ>(lanes, high, target);
        part.above += above.count_ones() as usize;
        let mut undecided = lanes & !above & !below;
        while undecided != 0 {
            pending.push((j0 + t + undecided.trailing_zeros() as usize) as u32);
            undecided &= undecided - 1;
        }
        if top == 0 {
            continue;
        }
        // Candidates: all but those whose upper bound is below the bar, this task's or the
        // highest any task has published (NaN stays).
        let bar = _mm512_set1_ps(part.bar.max(from_ordered(published)));
        let mut keep = lanes & !_mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(lanes, high, bar);
        if keep != 0 {
            let mut highs = [0f32; 16];
            _mm512_storeu_ps(highs.as_mut_ptr(), high);
            while keep != 0 {
                let i = keep.trailing_zeros() as usize;
                part.candidates.push(((j0 + t + i) as u32, highs[i]));
                keep &= keep - 1;
            }
        }
        // Lower bounds at or below the bar cannot raise it (until this task has `top`, its
        // own bar is −∞ and the published one decides).
        let mut enter = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(lanes, low, bar);
        if enter != 0 {
            _mm512_storeu_ps(lows.as_mut_ptr(), low);
            while enter != 0 {
                part.offer(lows[enter.trailing_zeros() as usize], top);
                enter &= enter - 1;
            }
            let own = to_ordered(part.bar);
            if own > published {
                published = shared.fetch_max(own, Ordering::Relaxed).max(own);
            }
        }
    }
}

/// An f32 as a u32 that orders as the floats do (NaN aside).
pub(super) fn to_ordered(v: f32) -> u32 {
    let bits = v.to_bits();
    match bits >> 31 {
        0 => bits | 0x8000_0000,
        _ => !bits,
    }
}

/// The inverse of [`to_ordered`].
pub(super) fn from_ordered(u: u32) -> f32 {
    f32::from_bits(match u >> 31 {
        1 => u & 0x7fff_ffff,
        _ => !u,
    })
}
