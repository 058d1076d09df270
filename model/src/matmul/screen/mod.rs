//! Ranks in `x · Wᵀ` for a few dozen rows on CPUs with AVX-512 BF16: every entry screened
//! in bf16, exact f32 values only where the screen cannot decide.
//!
//! The logit lens needs, for each of its rows (56 for Qwen2.5-1.5B), the target's logit, how
//! many entries exceed it and the five highest: the whole LM head against every row, a
//! compute-bound product (27 GFLOP there). `vdpbf16ps` does twice the multiply-adds of an f32
//! FMA per instruction, so the screen costs about half the f32 product. CPUs with AMX (Intel
//! Xeon from Sapphire Rapids on) screen with its tiles instead ([`amx`]): on a 2-core such VM
//! the 1.5B model's lens took 0.10–0.14 s from an f32 table and 0.06–0.095 s from a bf16
//! one (the VM's speed varies from hour to hour), instead of about 0.17 s with `vdpbf16ps`
//! on a calm day (when AMX gave 0.085 and 0.05 s). There the table's reading from memory
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
//! A head decoded from a GGUF file's blocks is read as the file stores them ([`Table::Blocks`]:
//! Q6_K in a Q4_K_M file, 210 bytes per 256 values instead of 1,024) and decoded row by row
//! into a buffer of a group's rows that stays in L2, each row converted while it is in L1,
//! the exact values read from the buffer: the same values as the decoded table, so the same
//! results, with a fifth of the bytes from memory. On the 1.5B model's Q4_K_M file this took
//! the lens from 0.078–0.084 s to 0.066–0.074 s (7 tokens, alternating runs); the f32
//! table's stream had stalled a third of the lens's time (its prefetches waiting on memory),
//! the decoding now takes about a seventh.
//!
//! Most undecided entries come from a few rows of `x` (the early layers' residual stream,
//! where the target sits among tens of thousands of close entries), and their bound is mostly
//! `‖δx‖·‖w‖`. The products take `x` padded with zero rows to a multiple of their tile (56
//! rows to 64 on AMX); the padding slots carry instead, for the rows with most undecided
//! entries in a few first tasks ([`PILOT_TASKS`]), the bf16 rounding of `x − x̂`, screened
//! with the rest and added to the row's entries, which takes `‖δx‖` out of its bound
//! ([`bound`]). On the 1.5B model's lens this left 150k undecided entries of 210k (bf16
//! table) and 340k of 402k (f32 table).
//!
//! This file runs the screen; [`table`] holds the rows of `W` and their rounding,
//! [`bound`] each row of `x`'s target and bound, [`tile`](mod@tile) the AVX-512 product
//! (AMX's is in [`amx`]), [`classify`](mod@classify) the settling of entries against the
//! target. Every function here is `unsafe` or checks [`available`] itself.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::amx;
use super::avx2;
use super::Ranked;
use bound::{refined_rows, Setup, PILOT_TASKS};
use classify::{classify, to_ordered, Partial};
pub use table::Table;
use tile::{tile, TILE_ROWS, TILE_TOKENS};

mod bound;
mod classify;
mod table;
#[cfg(test)]
mod tests;
mod tile;

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

/// For each of the `m` rows of `x` (`m × k`): the entry at `target`, how many of the `n`
/// entries of `x · Wᵀ` exceed it, and the exact entries among which the `top` highest lie.
/// `None` without AVX-512 BF16, or when `k` is not a multiple of 32. `norms`: each row of a
/// bf16 table's `‖w‖` where they are known (noted by the forward pass, see `HeadNorms`),
/// else taken here.
#[allow(clippy::too_many_arguments)]
pub fn rank_rows(
    x: &[f32],
    m: usize,
    w: Table,
    norms: Option<&[f32]>,
    n: usize,
    k: usize,
    target: usize,
    top: usize,
) -> Option<Vec<Ranked>> {
    if !available() {
        return None;
    }
    rank_rows_by(Plan::best(), x, m, w, norms, n, k, target, top)
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
    /// `vdpbf16ps` on 512-bit registers, 3 × 6 entries per [`tile::tile`].
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
    norms: Option<&[f32]>,
    n: usize,
    k: usize,
    target: usize,
    top: usize,
) -> Option<Vec<Ranked>> {
    if !k.is_multiple_of(CHUNK) || k == 0 || m == 0 || target >= n {
        return None;
    }
    assert!(x.len() >= m * k && norms.is_none_or(|s| s.len() == n));
    if w.rows(k)? < n {
        return None;
    }
    // A table of blocks: each group's rows decoded into a buffer of the task's, which the
    // exact values read (`Table::F32` of it).
    let blocks_table = matches!(w, Table::Blocks(_));
    let engine = plan.engine;
    let padded = m.next_multiple_of(engine.x_rows());
    let targets = exact_column(x, 0..m, w, k, target);
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
    let plain = Setup::plain(engine, x, m, padded, k, &targets);
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
        let mut decoded = vec![0f32; if blocks_table { GROUP * block * k } else { 0 }];
        for b in first..last {
            let j0 = b * block;
            let nb = block.min(n - j0);
            // This block's place in its group's decoded rows, and the group's first row.
            let slot = (b - first) % GROUP;
            let group_j0 = (b - slot) * block;
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
            let lines = block.min(n - j0 - nb) * w.row_bytes(k) / 64;
            let mut ahead = Ahead::new(w.row_ptr(j0 + nb, k), lines, steps);
            // SAFETY: `available()`; rows `j0 .. j0 + nb` of `w` exist; `wb` holds
            // `block × k` halves (as do the block's rows where the products read them)
            // and `wnorm`, `dnorm` `block` floats; the products read `xb`'s (or `xt`'s)
            // `padded` rows and the block's (zero-padded) `block` rows; the prefetched
            // lines lie in the rows after the block, in the table; AMX's layout is
            // loaded on this thread (`_tiles`).
            unsafe {
                let given = norms.map(|s| &s[j0..j0 + nb]);
                let mine = match blocks_table {
                    true => &mut decoded[slot * block * k..][..block * k],
                    false => &mut decoded[..],
                };
                let norms = (&mut wnorm[..], &mut dnorm[..]);
                let wb = w.screen_rows(j0, nb, k, &mut wb, norms, given, mine);
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
                if blocks_table {
                    // The group's rows as decoded, counted from its first.
                    js.iter_mut().for_each(|j| *j -= group_j0 as u32);
                    let rows = Table::F32(&decoded);
                    // SAFETY: as below; the rows lie in the group's decoded blocks.
                    unsafe { rows.dots_rows(x[r * k..].as_ptr(), js, k, &mut values) };
                } else {
                    // SAFETY: `available()` implies AVX2, FMA and F16C; row `r` of x holds
                    // `k` floats and the rows `js` of `w` exist.
                    unsafe { w.dots_rows(x[r * k..].as_ptr(), js, k, &mut values) };
                }
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
    let refined = plain.refine(engine, x, k, &lo);
    let rest: Vec<usize> = (0..tasks).filter(|t| !first_tasks.contains(t)).collect();
    // Each task a job of its own, not a parallel iterator's halves: where the logit lens runs
    // beside the backward pass, a thread that takes up the screen's work while it waits on
    // one of the backward's products goes back to the backward after one task, where a
    // stolen half of an iterator's range held it until that half was done (6 tokens from the
    // 1.5B model's GGUF file: the backward 63.5 ms longer than node-only's with the lens
    // beside it, instead of 69.5; medians of 10 alternating pairs).
    let slots: Vec<OnceLock<Vec<Partial>>> = rest.iter().map(|_| OnceLock::new()).collect();
    rayon::scope(|scope| {
        for (slot, &task) in slots.iter().zip(&rest) {
            let (run_task, refined) = (&run_task, &refined);
            scope.spawn(move |_| {
                let _ = slot.set(run_task(refined, task, false));
            });
        }
    });
    partials.extend(
        slots
            .into_iter()
            .map(|slot| slot.into_inner().expect("every task ran")),
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
    exact_column(x, r..r + 1, w, k, j)[0]
}

/// The f32 entries `x[r] · w[j]` of the rows `rows` of `x` at column `j`, as the model's
/// one-row head computes them; a blocks table's row `j` decoded once for all of them.
fn exact_column(x: &[f32], rows: std::ops::Range<usize>, w: Table, k: usize, j: usize) -> Vec<f32> {
    let mut decoded = Vec::new();
    let (w, j) = match w {
        Table::Blocks(b) => {
            decoded.resize(k, 0.0);
            b.decode_row(j, &mut decoded);
            (Table::F32(&decoded), 0)
        }
        w => (w, j),
    };
    rows.map(|r| {
        let mut y = [0f32];
        // SAFETY: `available()` was checked by the caller (it implies AVX2, FMA and F16C);
        // row `r` of `x` holds `k` floats and row `j` of `w` exists (not blocks: decoded
        // above).
        unsafe { w.dots_rows(x[r * k..][..k].as_ptr(), &[j as u32], k, &mut y) };
        y[0]
    })
    .collect()
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
