//! Ranks in `x · Wᵀ` for a few dozen rows on CPUs with AVX-512 BF16: every entry screened
//! in bf16, exact f32 values only where the screen cannot decide.
//!
//! The logit lens needs, for each of its rows (57 for Qwen2.5-1.5B), the target's logit, how
//! many entries exceed it and the five highest: the whole LM head against every row, a
//! compute-bound product (27 GFLOP there). `vdpbf16ps` does twice the multiply-adds of an f32
//! FMA per instruction, so the screen costs about half the f32 product. CPUs with AMX (Intel
//! Xeon from Sapphire Rapids on) screen with its tiles instead ([`amx`]): on a 2-core such VM
//! the 1.5B model's lens took 0.084–0.09 s from an f32 table and 0.048–0.055 s from a bf16
//! one, instead of about 0.17 s with `vdpbf16ps`. There the table's reading from memory
//! ([`Ahead`]), the products' tile loads and the exact values' reads all compete for L2.
//!
//! Each screened entry `A` (bf16 operands `x̂`, `ŵ`, f32 sums) comes with a bound on its
//! distance from `F`, the entry [`avx2::x_wt`] computes in f32 (the model's own one-row head):
//!
//! `|A − F| ≤ (‖δx‖ + γ_A‖x̂‖ + γ_F‖x‖)·‖w‖ + (1 + γ_A)·‖x̂‖·‖δw‖ + slack`
//!
//! where `δ` are the bf16 rounding errors (`x = x̂ + δx`), `γ_n = n·2⁻²⁴ / (1 − n·2⁻²⁴)` bounds
//! a chain of `n` f32 roundings (Cauchy–Schwarz turns `Σ|x̂ᵢŵᵢ|` into norms), and `slack`
//! covers flushed subnormals, the norms' own rounding and the screen's f32 comparisons. An
//! entry whose `A − e` exceeds the target's `F` is above it, one whose `A + e` does not reach
//! it is not; the rest get their `F`. Every entry whose `A + e` reaches the fifth-highest
//! lower bound seen so far also gets its `F`: the five highest are found among exact values.
//! The results are therefore those of the f32 product, entry for entry.
//!
//! A head stored in bf16 (a hub checkpoint read in place) is screened as it is: `δw = 0`, so
//! the bound narrows, the table streams half the bytes, and the exact values widen its rows.
//!
//! Most undecided entries come from a few rows of `x` (the early layers' residual stream,
//! where the target sits among tens of thousands of close entries), and their bound is mostly
//! `‖δx‖·‖w‖`. The products take `x` padded with zero rows to a multiple of their tile (57
//! rows to 64 on AMX); the padding slots carry instead, for the rows with most undecided
//! entries in a few first tasks ([`PILOT_TASKS`]), the bf16 rounding of `x − x̂`, screened
//! with the rest and added to the row's entries, which takes `‖δx‖` out of its bound
//! ([`bound`]). On the 1.5B model's lens this left 150k undecided entries of 210k (bf16
//! table) and 340k of 402k (f32 table).
//!
//! Every function here is `unsafe` or checks [`available`] itself.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use rayon::prelude::*;

use super::amx;
use super::avx2;
use super::Ranked;

/// Rows of `x` per register tile.
const TILE_ROWS: usize = 3;
/// Rows of `W` per register tile: 3 × 6 = 18 accumulators in zmm0-17, the operands in
/// zmm18-21.
const TILE_TOKENS: usize = 6;
/// Rows of `W` converted to bf16 at a time: 24 rows of 1,536 are 72 KiB, in L2 with their
/// f32 source (which the exact values read again), the next block being fetched, and `x`
/// (48 rows measured slower: the exact values then read from L3).
const BLOCK: usize = 24;
/// Blocks per parallel task.
const BLOCKS_PER_TASK: usize = 32;
/// Floats per `vdpbf16ps` operand (32 bf16).
const CHUNK: usize = 32;
/// Blocks whose undecided entries get their exact values together, row of `x` by row: a row
/// of `x` is read once per four rows of `W`, from L1 after the first time, where row by row
/// of `W` every undecided entry read its row of `x` from L2. On the 1.5B model with AMX this
/// took the lens from 0.091–0.097 s to 0.087–0.091 s (f32 table) and from 0.056–0.058 s to
/// 0.052–0.056 s (bf16); groups of 4 or 8 blocks were no faster.
const GROUP: usize = 2;
/// Steps of [`Ahead`] per row of `x` given exact values (one per row of `x` classified).
const EXACT_STEPS: usize = 2 * GROUP;

/// Whether this CPU runs the screen (AVX-512 F and BF16, and the f32 kernels).
pub fn available() -> bool {
    avx2::available()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bf16")
}

/// The rows of `W` (`n × k`, row-major) the screen reads.
#[derive(Debug, Clone, Copy)]
pub enum Table<'a> {
    /// f32 values, rounded to bf16 a block at a time.
    F32(&'a [f32]),
    /// bf16 values (their bits), screened as they are and widened for the exact values.
    Bf16(&'a [u16]),
}

impl<'a> Table<'a> {
    /// Values held.
    fn len(self) -> usize {
        match self {
            Self::F32(w) => w.len(),
            Self::Bf16(w) => w.len(),
        }
    }

    /// The address of row `j` of `k` values.
    fn row_ptr(self, j: usize, k: usize) -> *const u8 {
        match self {
            Self::F32(w) => w[j * k..].as_ptr() as *const u8,
            Self::Bf16(w) => w[j * k..].as_ptr() as *const u8,
        }
    }

    /// Bytes per value.
    fn width(self) -> usize {
        match self {
            Self::F32(_) => 4,
            Self::Bf16(_) => 2,
        }
    }

    /// `y[i] = x · w[js[i]]` for a row `x` of `k` floats, each as [`avx2::x_wt`] sums it (the
    /// model's one-row head); four rows of the table share each read of `x`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; `x` holds `k` floats, the rows `js` exist; `y` is as
    /// long as `js`.
    unsafe fn dots_rows(self, x: *const f32, js: &[u32], k: usize, y: &mut [f32]) {
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
            }
        }
    }

    /// Rows `j0 .. j0 + rows` in bf16, zero rows after them to fill `dst`'s length, with each
    /// row's `‖w‖` and `‖w − ŵ‖`: where the products read them (a whole block of a bf16
    /// table in place, else `dst`).
    ///
    /// # Safety
    /// AVX-512 F and BF16 are present; the rows exist, `dst` holds at least `rows × k` halves
    /// and the norms `rows` floats each; `k` is a multiple of 32.
    unsafe fn screen_rows(
        self,
        j0: usize,
        rows: usize,
        k: usize,
        dst: &mut [u16],
        norms: (&mut [f32], &mut [f32]),
    ) -> *const u16 {
        let at = match self {
            Self::F32(w) => {
                convert_rows(w[j0 * k..].as_ptr(), rows, k, dst.as_mut_ptr(), Some(norms));
                dst.as_ptr()
            }
            Self::Bf16(w) => {
                let block = &w[j0 * k..][..rows * k];
                bf16_norms(block.as_ptr(), rows, k, norms.0);
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

/// The next block of `W`'s cache lines, fetched into L2 an equal share at each step of this
/// block's work (products, rows classified, rows given exact values). All at once, before the
/// products, they stalled them on memory and the rest of the block's work read none; spread
/// over the block, reading the table overlaps more of it (the lens on the 1.5B model with
/// AMX: 0.10–0.11 s → 0.09 s from an f32 table, 0.065 s → 0.055 s from a bf16 one).
struct Ahead {
    /// The first line.
    next: *const u8,
    /// Lines to fetch.
    lines: usize,
    /// Lines fetched.
    done: usize,
    /// Lines per step.
    share: usize,
}

impl Ahead {
    /// `lines` cache lines from `next`, over `steps` steps.
    fn new(next: *const u8, lines: usize, steps: usize) -> Self {
        Self {
            next,
            lines,
            done: 0,
            share: lines.div_ceil(steps.max(1)),
        }
    }

    /// Fetches the next `steps` shares (all that are left for `usize::MAX`).
    ///
    /// # Safety
    /// The lines lie in one allocation.
    #[inline(always)]
    unsafe fn step(&mut self, steps: usize) {
        let end = self.done.saturating_add(self.share.saturating_mul(steps));
        for line in self.done..end.min(self.lines) {
            _mm_prefetch::<_MM_HINT_T1>(self.next.add(line * 64) as *const i8);
        }
        self.done = end.min(self.lines);
    }
}

/// `γ_n` for f32: the relative error bound of a chain of `n` roundings.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::powi(2.0, -24);
    nu / (1.0 - nu)
}

/// One row of `x`: its exact f32 values, and the constants of its bound
/// `e = p·‖w‖ + q·‖δw‖ + s`.
struct Row {
    /// The target's exact entry.
    target: f32,
    /// Coefficient of `‖w‖`.
    p: f32,
    /// Coefficient of `‖δw‖`.
    q: f32,
    /// Absolute slack.
    s: f32,
}

/// Tasks that screen every row of `x` plainly and count its undecided entries, spread over
/// the table, before the rest refine the rows that had most ([`refined_rows`]).
const PILOT_TASKS: usize = 4;

/// What every task reads of `x`: its rows in bf16 (`padded` of them, the padding zero or a
/// refined row's remainder), AMX's packing of them, and each row's target and bound.
struct Setup {
    /// `x̂`: the rows, rounded to bf16, then each refined row's `x − x̂` rounded to bf16 in
    /// its slot of the padding, then zeros.
    xb: Vec<u16>,
    /// `xb` as AMX `B` tiles ([`amx::pack`]; empty for the AVX-512 engine).
    xt: Vec<u16>,
    /// Each row's target and bound.
    rows: Vec<Row>,
    /// `(row, slot)`: rows screened with their remainder in a padding slot.
    lo: Vec<(usize, usize)>,
}

impl Setup {
    /// The rows of `x` (`m × k`) for `engine`, `padded` to its multiple, the rows `lo` names
    /// refined.
    fn new(
        engine: Engine,
        x: &[f32],
        m: usize,
        padded: usize,
        k: usize,
        targets: &[f32],
        lo: &[(usize, usize)],
    ) -> Self {
        let mut xb = vec![0u16; padded * k];
        // SAFETY: `available()`; `x` holds `m × k` floats, `xb` `padded × k ≥ m × k` halves.
        unsafe { convert_rows(x.as_ptr(), m, k, xb.as_mut_ptr(), None) };
        let widen = |h: u16| f32::from_bits((h as u32) << 16);
        for &(r, slot) in lo {
            // `x − x̂` is exact in f32 (x̂ is x rounded to fewer bits).
            let rest: Vec<f32> = (0..k)
                .map(|i| x[r * k + i] - widen(xb[r * k + i]))
                .collect();
            // SAFETY: as above; `rest` holds one row, the slot is a row of `xb`.
            unsafe { convert_rows(rest.as_ptr(), 1, k, xb[slot * k..].as_mut_ptr(), None) };
        }
        let rows = (0..m)
            .map(|r| {
                let slot = lo.iter().find(|l| l.0 == r).map(|l| &xb[l.1 * k..][..k]);
                bound(
                    engine,
                    &x[r * k..][..k],
                    &xb[r * k..][..k],
                    slot,
                    targets[r],
                )
            })
            .collect();
        let xt = match engine {
            Engine::Amx => amx::pack(&xb, padded, k),
            Engine::Avx512 => Vec::new(),
        };
        Self {
            xb,
            xt,
            rows,
            lo: lo.to_vec(),
        }
    }
}

/// Up to `spare` rows to refine, each with its padding slot: those with most undecided
/// entries (at least one).
fn refined_rows(undecided: &[AtomicUsize], spare: usize) -> Vec<(usize, usize)> {
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
    let widen = |h: u16| f32::from_bits((h as u32) << 16) as f64;
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

/// One row's running result within a task.
struct Partial {
    /// Entries known to exceed the target's.
    above: usize,
    /// Entries that may rank among the highest: column and upper bound.
    candidates: Vec<(u32, f32)>,
    /// The highest lower bounds seen, descending (at most `top`).
    lows: Vec<f32>,
    /// The `top`-th highest lower bound seen, −∞ until there are `top`.
    bar: f32,
}

impl Partial {
    /// Nothing seen.
    fn new() -> Self {
        Self {
            above: 0,
            candidates: Vec::new(),
            lows: Vec::new(),
            bar: f32::NEG_INFINITY,
        }
    }

    /// Keeps `low` if it is among the `top` highest lower bounds (a NaN bound is none).
    fn offer(&mut self, low: f32, top: usize) {
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

/// For each of the `m` rows of `x` (`m × k`): the entry at `target`, how many of the `n`
/// entries of `x · Wᵀ` exceed it, and the exact entries among which the `top` highest lie.
/// `None` without AVX-512 BF16, or when `k` is not a multiple of 32.
pub fn rank_rows(
    x: &[f32],
    m: usize,
    w: Table,
    n: usize,
    k: usize,
    target: usize,
    top: usize,
) -> Option<Vec<Ranked>> {
    if !available() {
        return None;
    }
    rank_rows_by(Plan::best(), x, m, w, n, k, target, top)
}

/// How the screen shares out its work.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The product that screens.
    engine: Engine,
    /// Blocks of `W` per parallel task.
    per_task: usize,
    /// Tasks that screen every row plainly first ([`PILOT_TASKS`]).
    pilot: usize,
}

impl Plan {
    /// The best engine, [`BLOCKS_PER_TASK`] and [`PILOT_TASKS`].
    fn best() -> Self {
        Self {
            engine: Engine::best(),
            per_task: BLOCKS_PER_TASK,
            pilot: PILOT_TASKS,
        }
    }
}

/// Which product screens the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// `vdpbf16ps` on 512-bit registers, 3 × 6 entries per [`tile`].
    Avx512,
    /// AMX tiles, 32 × 32 entries per [`amx::product`].
    Amx,
}

impl Engine {
    /// AMX where this CPU and OS allow it, else AVX-512.
    fn best() -> Self {
        if amx::available() {
            Self::Amx
        } else {
            Self::Avx512
        }
    }

    /// Rows of `W` per block.
    fn block(self) -> usize {
        match self {
            Self::Avx512 => BLOCK,
            Self::Amx => amx::W_ROWS,
        }
    }

    /// Rows of `x` per product: `x` is padded to a multiple (with zero rows, or refined rows'
    /// remainders: [`Setup`]).
    fn x_rows(self) -> usize {
        match self {
            Self::Avx512 => TILE_ROWS,
            Self::Amx => amx::X_ROWS,
        }
    }

    /// Steps of [`Ahead`] per product: an AMX product is about as long as eight rows
    /// classified.
    fn product_steps(self) -> usize {
        match self {
            Self::Avx512 => 1,
            Self::Amx => 8,
        }
    }

    /// The longest chain of f32 roundings in a screened entry of length `k`: each
    /// `vdpbf16ps` lane sums two products per chunk, then 16 lanes in four steps; an AMX
    /// entry is one chain of `k` multiply-adds.
    fn chain(self, k: usize) -> usize {
        match self {
            Self::Avx512 => k / 16 + 8,
            Self::Amx => k + 8,
        }
    }
}

/// [`rank_rows`] by the given plan (whose engine the caller has checked is available).
#[allow(clippy::too_many_arguments)]
fn rank_rows_by(
    plan: Plan,
    x: &[f32],
    m: usize,
    w: Table,
    n: usize,
    k: usize,
    target: usize,
    top: usize,
) -> Option<Vec<Ranked>> {
    if !k.is_multiple_of(CHUNK) || k == 0 || m == 0 || target >= n {
        return None;
    }
    assert!(x.len() >= m * k && w.len() >= n * k);
    let engine = plan.engine;
    let padded = m.next_multiple_of(engine.x_rows());
    let targets: Vec<f32> = (0..m).map(|r| exact(x, w, k, r, target)).collect();
    let block = engine.block();
    // Per row, the highest `top`-th lower bound any task has found: a bar for all of them.
    let bars: Vec<AtomicU32> = (0..m)
        .map(|_| AtomicU32::new(to_ordered(f32::NEG_INFINITY)))
        .collect();
    let blocks = n.div_ceil(block);
    let tasks = blocks.div_ceil(plan.per_task);
    // Undecided entries per row of x, counted in the first tasks (a few spread over the
    // table), which screen every row plainly; the rest refine the rows that had most.
    let undecided: Vec<AtomicUsize> = (0..m).map(|_| AtomicUsize::new(0)).collect();
    let pilot = plan.pilot.clamp(1, tasks);
    let first_tasks: Vec<usize> = (0..pilot).map(|i| i * tasks / pilot).collect();
    let plain = Setup::new(engine, x, m, padded, k, &targets, &[]);
    // One task: `count`s its rows' undecided entries into `undecided` when asked.
    let run_task = |setup: &Setup, task: usize, count: bool| -> Vec<Partial> {
        let (xb, xt, rows) = (&setup.xb, &setup.xt, &setup.rows);
        let screened_rows = m + setup.lo.len();
        let mut counts = vec![0; m];
        let first = task * plan.per_task;
        let last = (first + plan.per_task).min(blocks);
        let mut out: Vec<Partial> = (0..m).map(|_| Partial::new()).collect();
        let mut wb = vec![0u16; block * k];
        let (mut wnorm, mut dnorm) = (vec![0f32; block], vec![0f32; block]);
        let mut screened = vec![0f32; padded * block];
        // Per row of x, the rows of W (of the group's blocks) whose entries the screen
        // left undecided.
        let mut pending: Vec<Vec<u32>> = vec![Vec::new(); m];
        let mut values = Vec::with_capacity(m);
        // SAFETY: `Engine::Amx` is chosen only where `amx::available()`.
        let _tiles = (engine == Engine::Amx).then(|| unsafe { amx::Tiles::new() });
        let mut tiles_out = vec![0f32; 4 * amx::TILE];
        for b in first..last {
            let j0 = b * block;
            let nb = block.min(n - j0);
            // The next block's rows, fetched from memory while this one is
            // multiplied, classified and given its exact values.
            let products = match engine {
                Engine::Avx512 => nb.div_ceil(TILE_TOKENS) * (padded / TILE_ROWS),
                Engine::Amx => padded / amx::X_ROWS,
            };
            // The group's exact values after its last block.
            let exact = (b + 1 - first).is_multiple_of(GROUP) || b + 1 == last;
            let steps =
                products * engine.product_steps() + m + usize::from(exact) * m * EXACT_STEPS;
            let lines = block.min(n - j0 - nb) * k * w.width() / 64;
            let mut ahead = Ahead::new(w.row_ptr(j0 + nb, k), lines, steps);
            // SAFETY: `available()`; rows `j0 .. j0 + nb` of `w` exist; `wb` holds
            // `block × k` halves (as do the block's rows where the products read them)
            // and `wnorm`, `dnorm` `block` floats; the products read `xb`'s (or `xt`'s)
            // `padded` rows and the block's (zero-padded) `block` rows; the prefetched
            // lines lie in the rows after the block, in the table; AMX's layout is
            // loaded on this thread (`_tiles`).
            unsafe {
                let wb = w.screen_rows(j0, nb, k, &mut wb, (&mut wnorm, &mut dnorm));
                let mut fetch = || ahead.step(engine.product_steps());
                match engine {
                    Engine::Avx512 => {
                        for t0 in (0..nb).step_by(TILE_TOKENS) {
                            for r0 in (0..padded).step_by(TILE_ROWS) {
                                fetch();
                                tile(
                                    xb.as_ptr().add(r0 * k),
                                    wb.add(t0 * k),
                                    k,
                                    screened.as_mut_ptr().add(r0 * block + t0),
                                    block,
                                );
                            }
                        }
                    }
                    Engine::Amx => {
                        for r0 in (0..padded).step_by(amx::X_ROWS) {
                            fetch();
                            amx::product(wb, xt.as_ptr().add(r0 * k), k, tiles_out.as_mut_ptr());
                            untile(&tiles_out, r0, screened_rows, &mut screened);
                        }
                    }
                }
            }
            // A refined row's entries: the sum of its two products.
            for &(r, slot) in &setup.lo {
                let (head, tail) = screened.split_at_mut(slot * block);
                for (a, b) in head[r * block..][..nb].iter_mut().zip(&tail[..nb]) {
                    *a += *b;
                }
            }
            for (r, (row, part)) in rows.iter().zip(&mut out).enumerate() {
                // SAFETY: `available()`; the slices hold the block's `nb` columns; the
                // prefetched lines lie in the table.
                unsafe {
                    ahead.step(1);
                    classify(
                        row,
                        &screened[r * block..][..nb],
                        (&wnorm[..nb], &dnorm[..nb]),
                        j0,
                        (part, &bars[r]),
                        &mut pending[r],
                        top,
                    )
                };
            }
            // The undecided entries' exact values, row of x by row, several rows of W
            // per read of it.
            for (r, js) in pending.iter_mut().enumerate().filter(|_| exact) {
                // SAFETY: the prefetched lines lie in the table.
                unsafe { ahead.step(EXACT_STEPS) };
                if js.is_empty() {
                    continue;
                }
                values.resize(js.len(), 0.0);
                counts[r] += js.len();
                // SAFETY: `available()` implies AVX2, FMA and F16C; row `r` of x holds
                // `k` floats and the rows `js` of `w` exist.
                unsafe { w.dots_rows(x[r * k..].as_ptr(), js, k, &mut values) };
                out[r].above += values.iter().filter(|&&v| v > rows[r].target).count();
                js.clear();
            }
            // SAFETY: as above.
            unsafe { ahead.step(usize::MAX) };
        }
        if count {
            for (total, c) in undecided.iter().zip(counts) {
                total.fetch_add(c, Ordering::Relaxed);
            }
        }
        out
    };
    let mut partials: Vec<Vec<Partial>> = first_tasks
        .par_iter()
        .map(|&task| run_task(&plain, task, true))
        .collect();
    let lo = refined_rows(&undecided, padded - m);
    let refined = Setup::new(engine, x, m, padded, k, &targets, &lo);
    let rest: Vec<usize> = (0..tasks).filter(|t| !first_tasks.contains(t)).collect();
    partials.extend(
        rest.par_iter()
            .map(|&task| run_task(&refined, task, false))
            .collect::<Vec<_>>(),
    );

    // Merged: the tasks' counts add up, their lower bounds give the row's `top`-th highest
    // over all tasks, and a candidate stays if its upper bound reaches that bar (it then
    // gets its exact value).
    let mut merged: Vec<Partial> = (0..m).map(|_| Partial::new()).collect();
    for task in partials {
        for (into, part) in merged.iter_mut().zip(task) {
            into.above += part.above;
            into.candidates.extend(part.candidates);
            for low in part.lows {
                into.offer(low, top);
            }
        }
    }
    let ranked: Vec<Ranked> = merged
        .into_iter()
        .zip(&targets)
        .enumerate()
        .map(|(r, (part, &target_logit))| {
            let candidates = part
                .candidates
                .into_iter()
                .filter(|&(_, upper)| upper >= part.bar || upper.is_nan())
                .map(|(id, _)| (id, exact(x, w, k, r, id as usize)))
                .collect();
            Ranked {
                target_logit,
                above: part.above,
                candidates,
            }
        })
        .collect();
    Some(ranked)
}

/// The f32 entry `x[r] · w[j]`, as the model's one-row head computes it.
fn exact(x: &[f32], w: Table, k: usize, r: usize, j: usize) -> f32 {
    let mut y = [0f32];
    // SAFETY: `available()` was checked by the caller (it implies AVX2, FMA and F16C); row
    // `r` of `x` holds `k` floats and row `j` of `w` exists.
    unsafe { w.dots_rows(x[r * k..][..k].as_ptr(), &[j as u32], k, &mut y) };
    y[0]
}

/// [`amx::product`]'s four tiles for rows `r0 .. r0 + 32` of `x` into `screened` (row-major
/// by row of `x`, [`amx::W_ROWS`] columns), rows from `m` on (padding) left out.
///
/// # Safety
/// AVX-512 F is present; `tiles` holds four tiles and `screened` `m` rows.
#[target_feature(enable = "avx512f")]
unsafe fn untile(tiles: &[f32], r0: usize, m: usize, screened: &mut [f32]) {
    // A tile's column: its 16 rows' entries at one place.
    let column = _mm512_setr_epi32(
        0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
    );
    for (t, tile) in tiles.chunks_exact(amx::TILE).enumerate() {
        // Tile t: rows of W from 16·(t / 2), rows of x from r0 + 16·(t % 2).
        let (j0, x0) = (16 * (t / 2), r0 + 16 * (t % 2));
        for i in 0..16.min(m.saturating_sub(x0)) {
            let entries = _mm512_i32gather_ps::<4>(column, tile.as_ptr().add(i));
            let at = (x0 + i) * amx::W_ROWS + j0;
            _mm512_storeu_ps(screened[at..at + 16].as_mut_ptr(), entries);
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
unsafe fn classify(
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
fn to_ordered(v: f32) -> u32 {
    let bits = v.to_bits();
    match bits >> 31 {
        0 => bits | 0x8000_0000,
        _ => !bits,
    }
}

/// The inverse of [`to_ordered`].
fn from_ordered(u: u32) -> f32 {
    f32::from_bits(match u >> 31 {
        1 => u & 0x7fff_ffff,
        _ => !u,
    })
}

/// `rows` rows of `src` (`k` floats each, `k` a multiple of 32) rounded to bf16 (to nearest,
/// ties to even) into `dst`; with `norms`, each row's `‖w‖` and `‖w − ŵ‖`.
///
/// # Safety
/// AVX-512 F and BF16 are present; `src` holds `rows × k` floats, `dst` `rows × k` halves,
/// and `norms` (if any) two slices of `rows` floats.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_rows(
    src: *const f32,
    rows: usize,
    k: usize,
    dst: *mut u16,
    mut norms: Option<(&mut [f32], &mut [f32])>,
) {
    for t in 0..rows {
        let (mut sw, mut sd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
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
                sw = _mm512_fmadd_ps(lo, lo, _mm512_fmadd_ps(hi, hi, sw));
                sd = _mm512_fmadd_ps(dlo, dlo, _mm512_fmadd_ps(dhi, dhi, sd));
            }
        }
        if let Some((wn, dn)) = norms.as_mut() {
            wn[t] = _mm512_reduce_add_ps(sw).sqrt();
            dn[t] = _mm512_reduce_add_ps(sd).sqrt();
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
/// # Safety
/// AVX-512 F is present; `src` holds `rows × k` halves and `norms` `rows` floats.
#[target_feature(enable = "avx512f")]
unsafe fn bf16_norms(src: *const u16, rows: usize, k: usize, norms: &mut [f32]) {
    for t in 0..rows {
        let mut sum = _mm512_setzero_ps();
        for c in (0..k).step_by(16) {
            let h = _mm256_loadu_si256(src.add(t * k + c) as *const __m256i);
            let v = widen(h);
            sum = _mm512_fmadd_ps(v, v, sum);
        }
        norms[t] = _mm512_reduce_add_ps(sum).sqrt();
    }
}

/// `y[r·ys + t] = Σ_p x̂[r][p] · ŵ[t][p]` for `r < 3`, `t < 6`, in bf16 with f32 sums.
///
/// The loop is written out: the compiler's own allocation of the 18 accumulators moved
/// them between registers on every step (the instruction's accumulator is also its output).
///
/// # Safety
/// AVX-512 F and BF16 are present; `x` holds 3 rows and `w` 6 rows of `k` halves (`k` a
/// positive multiple of 32); `y` is writable at `r·ys + t`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(x: *const u16, w: *const u16, k: usize, y: *mut f32, ys: usize) {
    let mut acc = [_mm512_setzero_ps(); TILE_ROWS * TILE_TOKENS];
    std::arch::asm!(
            "vxorps zmm0, zmm0, zmm0",
            "vxorps zmm1, zmm1, zmm1",
            "vxorps zmm2, zmm2, zmm2",
            "vxorps zmm3, zmm3, zmm3",
            "vxorps zmm4, zmm4, zmm4",
            "vxorps zmm5, zmm5, zmm5",
            "vxorps zmm6, zmm6, zmm6",
            "vxorps zmm7, zmm7, zmm7",
            "vxorps zmm8, zmm8, zmm8",
            "vxorps zmm9, zmm9, zmm9",
            "vxorps zmm10, zmm10, zmm10",
            "vxorps zmm11, zmm11, zmm11",
            "vxorps zmm12, zmm12, zmm12",
            "vxorps zmm13, zmm13, zmm13",
            "vxorps zmm14, zmm14, zmm14",
            "vxorps zmm15, zmm15, zmm15",
            "vxorps zmm16, zmm16, zmm16",
            "vxorps zmm17, zmm17, zmm17",
            "2:",
            "vmovups zmm18, [{x0}]",
            "vmovups zmm19, [{x0} + {kb}]",
            "vmovups zmm20, [{x0} + {kb}*2]",
            "vmovups zmm21, [{w0}]",
            "vdpbf16ps zmm0, zmm18, zmm21",
            "vdpbf16ps zmm1, zmm19, zmm21",
            "vdpbf16ps zmm2, zmm20, zmm21",
            "vmovups zmm21, [{w0} + {kb}]",
            "vdpbf16ps zmm3, zmm18, zmm21",
            "vdpbf16ps zmm4, zmm19, zmm21",
            "vdpbf16ps zmm5, zmm20, zmm21",
            "vmovups zmm21, [{w0} + {kb}*2]",
            "vdpbf16ps zmm6, zmm18, zmm21",
            "vdpbf16ps zmm7, zmm19, zmm21",
            "vdpbf16ps zmm8, zmm20, zmm21",
            "vmovups zmm21, [{w3}]",
            "vdpbf16ps zmm9, zmm18, zmm21",
            "vdpbf16ps zmm10, zmm19, zmm21",
            "vdpbf16ps zmm11, zmm20, zmm21",
            "vmovups zmm21, [{w3} + {kb}]",
            "vdpbf16ps zmm12, zmm18, zmm21",
            "vdpbf16ps zmm13, zmm19, zmm21",
            "vdpbf16ps zmm14, zmm20, zmm21",
            "vmovups zmm21, [{w3} + {kb}*2]",
            "vdpbf16ps zmm15, zmm18, zmm21",
            "vdpbf16ps zmm16, zmm19, zmm21",
            "vdpbf16ps zmm17, zmm20, zmm21",
            "add {x0}, 64",
            "add {w0}, 64",
            "add {w3}, 64",
            "dec {n}",
            "jnz 2b",
        x0 = inout(reg) x => _,
        w0 = inout(reg) w => _,
        w3 = inout(reg) w.add(3 * k) => _,
        kb = in(reg) 2 * k,
        n = inout(reg) k / CHUNK => _,
            out("zmm0") acc[0],
            out("zmm1") acc[1],
            out("zmm2") acc[2],
            out("zmm3") acc[3],
            out("zmm4") acc[4],
            out("zmm5") acc[5],
            out("zmm6") acc[6],
            out("zmm7") acc[7],
            out("zmm8") acc[8],
            out("zmm9") acc[9],
            out("zmm10") acc[10],
            out("zmm11") acc[11],
            out("zmm12") acc[12],
            out("zmm13") acc[13],
            out("zmm14") acc[14],
            out("zmm15") acc[15],
            out("zmm16") acc[16],
            out("zmm17") acc[17],
        out("zmm18") _,
        out("zmm19") _,
        out("zmm20") _,
        out("zmm21") _,
        options(nostack, readonly),
    );
    for t in 0..TILE_TOKENS {
        for r in 0..TILE_ROWS {
            *y.add(r * ys + t) = _mm512_reduce_add_ps(acc[t * TILE_ROWS + r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row's rank and top entries by brute force, with the same exact entries.
    fn brute(
        x: &[f32],
        m: usize,
        w: Table,
        n: usize,
        k: usize,
        target: usize,
    ) -> Vec<(f32, usize, Vec<f32>)> {
        (0..m)
            .map(|r| {
                let all: Vec<f32> = (0..n).map(|j| exact(x, w, k, r, j)).collect();
                let t = all[target];
                let above = all.iter().filter(|&&v| v > t).count();
                let mut sorted = all.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                sorted.truncate(5);
                (t, above, sorted)
            })
            .collect()
    }

    /// The screen's results equal brute force, for `w` in f32 and for `w` rounded to bf16
    /// and screened as stored.
    fn check(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, target: usize) {
        check_table(x, m, Table::F32(w), n, k, target);
        let halves: Vec<u16> = w
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        check_table(x, m, Table::Bf16(&halves), n, k, target);
    }

    /// The engines this CPU has, each with the production split of the work and with one
    /// block per task and a single plain task (so that nearly every block is screened with
    /// the rows refined).
    fn plans() -> Vec<Plan> {
        let mut engines = vec![Engine::Avx512];
        if amx::available() {
            engines.push(Engine::Amx);
        }
        engines
            .into_iter()
            .flat_map(|engine| {
                [
                    Plan {
                        engine,
                        per_task: BLOCKS_PER_TASK,
                        pilot: PILOT_TASKS,
                    },
                    Plan {
                        engine,
                        per_task: 1,
                        pilot: 1,
                    },
                ]
            })
            .collect()
    }

    /// The screen's results equal brute force, by each engine this CPU has: the target's
    /// entry, the count above it, and the five highest entries found among the candidates.
    fn check_table(x: &[f32], m: usize, w: Table, n: usize, k: usize, target: usize) {
        let expected = brute(x, m, w, n, k, target);
        for plan in plans() {
            let ranked = rank_rows_by(plan, x, m, w, n, k, target, 5).expect("k, m, target");
            assert_eq!(ranked.len(), m);
            for (r, (got, (t, above, top))) in ranked.iter().zip(&expected).enumerate() {
                assert_eq!(got.target_logit, *t, "{plan:?} row {r}");
                assert_eq!(got.above, *above, "{plan:?} row {r}");
                let mut values: Vec<f32> = got.candidates.iter().map(|c| c.1).collect();
                for &(id, v) in &got.candidates {
                    assert_eq!(v, exact(x, w, k, r, id as usize), "row {r} id {id}");
                }
                values.sort_by(|a, b| b.total_cmp(a));
                values.truncate(5);
                assert_eq!(&values, top, "{plan:?} row {r}");
            }
        }
    }

    /// A deterministic pseudo-random stream in [-1, 1).
    fn noise(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn ordered_floats_keep_their_order_and_round_trip() {
        let values = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
        ];
        for pair in values.windows(2) {
            assert!(to_ordered(pair[0]) <= to_ordered(pair[1]), "{pair:?}");
        }
        for v in values {
            assert_eq!(from_ordered(to_ordered(v)).to_bits(), v.to_bits());
        }
    }

    #[test]
    fn the_conversion_rounds_to_nearest_even_in_order() {
        if !available() {
            return;
        }
        let src: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 0.001 + 1e-5).collect();
        let mut dst = vec![0u16; 64];
        let (mut wn, mut dn) = ([0f32; 2], [0f32; 2]);
        // SAFETY: `available()`; two rows of 32.
        unsafe {
            convert_rows(
                src.as_ptr(),
                2,
                32,
                dst.as_mut_ptr(),
                Some((&mut wn, &mut dn)),
            )
        };
        let norms: Vec<(f32, f32)> = wn.into_iter().zip(dn).collect();
        for (v, h) in src.iter().zip(&dst) {
            let bits = v.to_bits();
            let round = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
            assert_eq!(*h as u32, round, "{v}");
        }
        for (t, (wn, dn)) in norms.iter().enumerate() {
            let row = &src[t * 32..][..32];
            let want: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            let errs: f32 = row
                .iter()
                .zip(&dst[t * 32..])
                .map(|(v, h)| (v - f32::from_bits((*h as u32) << 16)).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!((wn - want).abs() <= 1e-5 * want && (dn - errs).abs() <= 1e-5 * errs);
        }
    }

    #[test]
    fn the_screen_equals_the_exact_product() {
        if !available() {
            return;
        }
        // Enough columns for several parallel tasks, which share their bars; 57 rows (the
        // 1.5B model's lens) take two passes of AMX's 32, the second part padding.
        for (m, n, k) in [(7, 5000, 96), (57, 3000, 64)] {
            let x = noise(1, m * k);
            let w = noise(2, n * k);
            for target in [0, 2517, n - 1] {
                check(&x, m, &w, n, k, target);
            }
        }
    }

    #[test]
    fn near_ties_are_settled_exactly() {
        if !available() {
            return;
        }
        // Every row of W is the target's row plus a perturbation far below bf16's
        // resolution, with an outlier column: the screen can rank almost none of them.
        let (m, n, k) = (4, 300, 64);
        let mut x = noise(3, m * k);
        x[5] = 40.0;
        let base = noise(4, k);
        let wiggle = noise(5, n * k);
        let w: Vec<f32> = (0..n * k)
            .map(|i| base[i % k] * (1.0 + 1e-5 * wiggle[i]))
            .collect();
        check(&x, m, &w, n, k, 150);
    }

    #[test]
    fn rounding_errors_aligned_with_a_row_reach_the_bound() {
        if !available() {
            return;
        }
        // Row a of W points along x's bf16 rounding error δx, so that the screen misses
        // x·a by nearly ‖δx‖·‖a‖ (Cauchy–Schwarz with equality); the target t is a with
        // one value moved so that x·t lies 30% of that gap below x·a. A bound any tighter
        // than the true error would call a "not above" the target. Every row of W is
        // exactly bf16.
        let k = 64;
        let bf = |v: f32| half::bf16::from_f32(v).to_f32();
        let x: Vec<f32> = noise(8, k).iter().map(|v| v * 3.0 + 0.1).collect();
        let dx: Vec<f32> = x.iter().map(|&v| v - bf(v)).collect();
        let a: Vec<f32> = dx.iter().map(|&d| bf(d * 4096.0)).collect();
        let gap: f64 = dx.iter().zip(&a).map(|(&d, &w)| d as f64 * w as f64).sum();
        let i0 = (0..k)
            .max_by(|&i, &j| x[i].abs().total_cmp(&x[j].abs()))
            .unwrap();
        let mut t = a.clone();
        t[i0] = bf(a[i0] - (0.3 * gap / x[i0] as f64) as f32);
        let filler = noise(9, 30 * k);
        let mut w: Vec<f32> = filler.iter().map(|&v| bf(v * 0.01)).collect();
        w.extend(&a);
        w.extend(&t);
        let n = w.len() / k;
        check(&x, 1, &w, n, k, n - 1);
    }

    #[test]
    fn outliers_in_shared_columns_stay_within_the_bound() {
        if !available() {
            return;
        }
        // Large values in the same few columns of x and W (as a residual stream's massive
        // activations meet the head): the rounding error concentrates there.
        let (m, n, k) = (5, 2000, 128);
        let mut x = noise(6, m * k);
        let mut w = noise(7, n * k);
        for r in 0..m {
            x[r * k + 3] *= 300.0;
            x[r * k + 77] *= -120.0;
        }
        for j in 0..n {
            w[j * k + 3] *= 0.05;
            w[j * k + 77] *= 0.2;
        }
        for target in [1, 1000, 1999] {
            check(&x, m, &w, n, k, target);
        }
    }
}
