//! What the screen knows of each row of `x`: its target's exact entry and the bound on how
//! far a screened entry can lie from the exact one, plainly or with the row refined (its
//! rounding remainder screened in a padding slot).

use std::sync::atomic::{AtomicUsize, Ordering};

use half::bf16;

use super::super::amx;
use super::table::convert_rows;
use super::Engine;

/// `γ_n` for f32: the relative error bound of a chain of `n` roundings.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::powi(2.0, -24);
    nu / (1.0 - nu)
}

/// One row of `x`: its exact f32 values, and the constants of its bound
/// `e = p·‖w‖ + q·‖δw‖ + s`.
pub(super) struct Row {
    /// The target's exact entry.
    pub(super) target: f32,
    /// Coefficient of `‖w‖`.
    pub(super) p: f32,
    /// Coefficient of `‖δw‖`.
    pub(super) q: f32,
    /// Absolute slack.
    pub(super) s: f32,
}

/// Tasks that screen every row of `x` plainly and count its undecided entries, spread over
/// the table, before the rest refine the rows that had most ([`refined_rows`]).
pub(super) const PILOT_TASKS: usize = 4;

/// What every task reads of `x`: its rows in bf16 (`padded` of them, the padding zero or a
/// refined row's remainder), AMX's packing of them, and each row's target and bound.
pub(super) struct Setup {
    /// `x̂`: the rows, rounded to bf16, then each refined row's `x − x̂` rounded to bf16 in
    /// its slot of the padding, then zeros.
    pub(super) xb: Vec<u16>,
    /// `xb` as AMX `B` tiles ([`amx::pack`]; empty for the AVX-512 engine).
    pub(super) xt: Vec<u16>,
    /// Each row's target and bound.
    pub(super) rows: Vec<Row>,
    /// `(row, slot)`: rows screened with their remainder in a padding slot.
    pub(super) lo: Vec<(usize, usize)>,
}

impl Setup {
    /// The rows of `x` (`m × k`) for `engine`, `padded` with zero rows to its multiple.
    pub(super) fn plain(
        engine: Engine,
        x: &[f32],
        m: usize,
        padded: usize,
        k: usize,
        targets: &[f32],
    ) -> Self {
        let mut xb = vec![0u16; padded * k];
        // SAFETY: `available()`; `x` holds `m × k` floats, `xb` `padded × k ≥ m × k` halves.
        unsafe { convert_rows(x.as_ptr(), m, k, xb.as_mut_ptr(), None) };
        let rows = (0..m)
            .map(|r| {
                bound(
                    engine,
                    &x[r * k..][..k],
                    &xb[r * k..][..k],
                    None,
                    targets[r],
                )
            })
            .collect();
        let xt = pack(engine, &xb, padded, k);
        Self {
            xb,
            xt,
            rows,
            lo: Vec::new(),
        }
    }

    /// These rows with the rows `lo` names refined: each one's `x − x̂` in its slot, and its
    /// bound narrowed.
    pub(super) fn refine(
        mut self,
        engine: Engine,
        x: &[f32],
        k: usize,
        lo: &[(usize, usize)],
    ) -> Self {
        for &(r, slot) in lo {
            // `x − x̂` is exact in f32 (x̂ is x rounded to fewer bits).
            let rest: Vec<f32> = (0..k)
                .map(|i| x[r * k + i] - bf16::from_bits(self.xb[r * k + i]).to_f32())
                .collect();
            // SAFETY: `available()`; `rest` holds one row, the slot is a row of `xb`.
            unsafe { convert_rows(rest.as_ptr(), 1, k, self.xb[slot * k..].as_mut_ptr(), None) };
            let (hi, lo) = (&self.xb[r * k..][..k], &self.xb[slot * k..][..k]);
            self.rows[r] = bound(engine, &x[r * k..][..k], hi, Some(lo), self.rows[r].target);
        }
        self.xt = pack(engine, &self.xb, self.xb.len() / k, k);
        self.lo = lo.to_vec();
        self
    }
}

/// `xb` (`rows × k` halves) as AMX's `B` tiles; nothing for the AVX-512 engine.
fn pack(engine: Engine, xb: &[u16], rows: usize, k: usize) -> Vec<u16> {
    match engine {
        Engine::Amx => amx::pack(xb, rows, k),
        Engine::Avx512 => Vec::new(),
    }
}

/// Up to `spare` rows to refine, each with its padding slot: those with most undecided
/// entries (at least one).
pub(super) fn refined_rows(undecided: &[AtomicUsize], spare: usize) -> Vec<(usize, usize)> {
    let m = undecided.len();
    let mut order: Vec<(usize, usize)> = undecided
        .iter()
        .map(|u| u.load(Ordering::Relaxed))
        .enumerate()
        .filter(|&(_, u)| u > 0)
        .collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    order
        .into_iter()
        .take(spare)
        .enumerate()
        .map(|(i, (r, _))| (r, m + i))
        .collect()
}

/// A row's target and the constants of its bound `|A − F| ≤ p·‖w‖ + q·‖δw‖ + s` (see the
/// module docs), from the row `x` (f32), its bf16 rounding `hi` and, for a refined row, the
/// bf16 rounding `lo` of `x − hi`, screened as a second product and added: `A = A_hi + A_lo`.
///
/// With `x̃ = hi + lo` (`hi` alone when plain), `δx = x − x̃`, `t = ‖hi‖ + ‖lo‖` and
/// `c = γ_A + u(1 + γ_A)` (`u = 2⁻²⁴`, the sum's rounding; 0 when plain): the products'
/// chains err by at most `c·t·‖ŵ‖ ≤ c·t·(‖w‖ + ‖δw‖)`, the operands by `‖δx‖·‖w‖ + ‖x̃‖·‖δw‖`,
/// and `F` by `γ_F·‖x‖·‖w‖`.
fn bound(engine: Engine, x: &[f32], hi: &[u16], lo: Option<&[u16]>, target: f32) -> Row {
    let k = x.len();
    let widen = |h: u16| bf16::from_bits(h).to_f64();
    let (mut x2, mut hi2, mut lo2, mut xt2, mut d2) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for i in 0..k {
        let (v, h) = (x[i] as f64, widen(hi[i]));
        let l = lo.map_or(0.0, |lo| widen(lo[i]));
        x2 += v * v;
        hi2 += h * h;
        lo2 += l * l;
        xt2 += (h + l) * (h + l);
        d2 += (v - h - l) * (v - h - l);
    }
    let (xn, t, xtn, dn) = (x2.sqrt(), hi2.sqrt() + lo2.sqrt(), xt2.sqrt(), d2.sqrt());
    // γ_A: the screen's longest chain; γ_F the longest any f32 dot product of length k can
    // have.
    let (ga, gf) = (gamma(engine.chain(k)), gamma(k));
    let c = match lo {
        Some(_) => ga + f64::powi(2.0, -24) * (1.0 + ga),
        None => ga,
    };
    // Flushed subnormals: at most 2⁻¹²⁶ per product and per sum of each chain, scaled by the
    // other operand's norm; the norms' rounding and the f32 comparisons: 0.1% and 2⁻¹⁸·t per
    // unit of ‖w‖.
    let chains = if lo.is_some() { 2.0 } else { 1.0 };
    let tiny = chains * k as f64 * f64::powi(2.0, -125);
    let safety = 1.001;
    let p = (dn + c * t + gf * xn + tiny + f64::powi(2.0, -18) * t) * safety;
    let q = (c * t + xtn + f64::powi(2.0, -18) * t) * safety;
    let s = tiny * (t + 1.0) * safety;
    Row {
        target,
        p: p as f32 * (1.0 + 1e-6),
        q: q as f32 * (1.0 + 1e-6),
        s: s as f32 * (1.0 + 1e-6),
    }
}
