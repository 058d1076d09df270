//! The screen against brute force.

use super::classify::from_ordered;
use super::table::{bf16_norms, convert_rows};
use super::*;
use crate::load::StoredBlocks;

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
/// A bf16 table is screened with its norms taken by the screen and with those the forward
/// pass notes (`HeadNorms`, from `wide::x_wt_squares`).
fn check_table(x: &[f32], m: usize, w: Table, n: usize, k: usize, target: usize) {
    let expected = brute(x, m, w, n, k, target);
    let notes = match w {
        Table::Bf16(bits) => Some((noted_norms(bits, n, k), bits)),
        Table::F32(_) | Table::Blocks(_) => None,
    };
    let noted = notes
        .as_ref()
        .and_then(|(notes, bits)| notes.of(bits.as_ptr(), n, k));
    // Each plan with the screen's own norms, then with the noted ones if any.
    let runs = plans().into_iter().flat_map(|plan| {
        std::iter::once(None)
            .chain(noted.map(Some))
            .map(move |norms| (plan, norms))
    });
    for (plan, norms) in runs {
        let ranked = rank_rows_by(plan, x, m, w, norms, n, k, target, 5).expect("k, m, target");
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

/// The norms of a bf16 table (`n × k`) as the forward pass notes them: its one-row product's
/// sums of squares (`wide::x_wt_squares`) into `HeadNorms`.
fn noted_norms(table: &[u16], n: usize, k: usize) -> super::super::HeadNorms {
    let (mut y, mut squares) = (vec![0f32; n], vec![0f32; n]);
    let zeros = vec![0f32; k];
    // SAFETY: the callers checked `available()`, which implies AVX-512 F and the AVX2
    // kernels; the table is `n × k`, `zeros` holds `k` floats, `y` and `squares` `n`.
    unsafe {
        super::super::wide::x_wt_squares(
            zeros.as_ptr(),
            table.as_ptr() as *const half::bf16,
            n,
            k,
            y.as_mut_ptr(),
            squares.as_mut_ptr(),
        )
    };
    let notes = super::super::HeadNorms::default();
    notes.note(table.as_ptr(), n, k, &squares);
    notes
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
fn bf16_row_norms_bound_the_true_norms() {
    if !available() {
        return;
    }
    // Rows of 96 (three chunks: a step of four chunks left short): ordinary values; values
    // whose squares lie below f32's normal range, which the dot product flushes; and both.
    let k = 96;
    let bf = |v: f32| half::bf16::from_f32(v).to_bits();
    let ordinary: Vec<u16> = noise(10, k).iter().map(|&v| bf(v * 3.0)).collect();
    let tiny: Vec<u16> = noise(11, k).iter().map(|&v| bf(v * 1e-20)).collect();
    let mixed: Vec<u16> = ordinary[..k / 2]
        .iter()
        .chain(&tiny[k / 2..])
        .copied()
        .collect();
    let rows = [ordinary, tiny, mixed].concat();
    let mut norms = [0f32; 3];
    // SAFETY: `available()`; three rows of `k` halves and three norms.
    unsafe { bf16_norms(rows.as_ptr(), 3, k, &mut norms) };
    // The same norms as the forward pass notes them (`HeadNorms`), from its row squares.
    let notes = noted_norms(&rows, 3, k);
    let noted = notes.of(rows.as_ptr(), 3, k).expect("noted");
    for (t, &got) in norms.iter().chain(noted).enumerate() {
        let t = t % 3;
        let row = &rows[t * k..][..k];
        let want = row
            .iter()
            .map(|&h| (half::bf16::from_bits(h).to_f64()).powi(2))
            .sum::<f64>()
            .sqrt();
        // An upper bound, and a tight one above the flushed range.
        assert!(got as f64 >= want * (1.0 - 1e-6), "row {t}: {got} < {want}");
        let slack = (k as f64 * f64::powi(2.0, -126)).sqrt();
        assert!(
            got as f64 <= want * (1.0 + 1e-5) + slack,
            "row {t}: {got} ≫ {want}"
        );
    }
}

#[test]
fn the_screen_equals_the_exact_product() {
    if !available() {
        return;
    }
    // Enough columns for several parallel tasks, which share their bars; 57 rows (one per
    // node of the 1.5B model) take two passes of AMX's 32, the second part padding.
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

#[test]
fn a_table_of_blocks_is_screened_as_its_decoded_values() {
    if !available() {
        return;
    }
    // Q8_0 rows (an f16 scale and 32 signed bytes per block), more than a block of rows per
    // task and a last block part full: decoded a block of rows at a time, the exact values
    // read from the decoded rows, and the results those of brute force over the values.
    let (m, n, k) = (6, 3000, 64);
    let scales = noise(11, n * k / 32);
    let values = noise(12, n * k);
    let mut bytes = Vec::new();
    for (b, &scale) in scales.iter().enumerate() {
        let d = half::f16::from_f32(0.001 + 0.01 * scale.abs());
        bytes.extend(d.to_le_bytes());
        bytes.extend(
            values[b * 32..][..32]
                .iter()
                .map(|v| (v * 127.0) as i8 as u8),
        );
    }
    let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = std::sync::Arc::new(bytes);
    let range = 0..owner.as_ref().as_ref().len();
    let decode: crate::load::BlockDecoder = rlx_gguf::dequant_q8_0_block;
    let stored = StoredBlocks::new(owner, range, [n, k], (34, 32), decode).expect("whole rows");
    let mut w = vec![0f32; n * k];
    for (j, row) in w.chunks_exact_mut(k).enumerate() {
        stored.decode_row(j, row);
    }
    let x: Vec<f32> = noise(13, m * k).iter().map(|v| v * 2.0).collect();
    for target in [0, 1777, n - 1] {
        check_table(&x, m, Table::Blocks(&stored), n, k, target);
        // The same results as the decoded values' table gives.
        let table = rank_rows(&x, m, Table::F32(&w), None, n, k, target, 5);
        let blocks = rank_rows(&x, m, Table::Blocks(&stored), None, n, k, target, 5);
        assert_eq!(blocks, table, "target {target}");
    }
}
