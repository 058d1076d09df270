//! flex's linear-layer product (`qwen2_burn::matmul`) against products taken in f64 on the
//! host: the forward `x · Wᵀ + b`, and its input gradient `g · W` under autodiff, over shapes
//! that exercise every register tile of the few-row kernels, the tails of `k`, and gemm; and
//! o_proj's product summed by head (`linear_heads`), with the head scores from the
//! contributions it notes.
#![cfg(feature = "flex")]

use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use qwen2_burn::matmul::{blocks, linear, streams, try_linear, MAX_BLOCKED_ROWS, MAX_FEW_ROWS};
use qwen2_burn::matmul::{head_squares, linear_heads, notes_head_parts, HeadParts};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor<B: Backend>(data: &[f32], rows: usize, cols: usize) -> Tensor<B, 2> {
    Tensor::from_data(
        TensorData::new(data.to_vec(), [rows, cols]),
        &Default::default(),
    )
}

fn host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// `a · bᵀ` (`a`: `[m, k]`, `b`: `[n, k]`) and its scale `|a| · |b|ᵀ`, in f64.
fn a_bt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut scale = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let (x, y) = (a[i * k + p] as f64, b[j * k + p] as f64);
                out[i * n + j] += x * y;
                scale[i * n + j] += (x * y).abs();
            }
        }
    }
    (out, scale)
}

fn assert_close(got: &[f32], want: &[f64], scale: &[f64], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (*g as f64 - w).abs() / s.max(1e-30);
        assert!(
            err < 1e-5,
            "{label} [{i}]: {g} vs {w} (relative to Σ|x·w|: {err:.1e})"
        );
    }
}

/// (m, n, k): rows of x, rows of W, inner length. The streaming kernels' tiles of 3 × 3
/// (forward) and 2 × 4 (backward) with every remainder and `k` below, at and above a multiple
/// of 8; the blocked kernels' panels of 16 rows (full, partial, one row over), tiles of six
/// rows of W (forward) and of g (backward) with every remainder, strips of 16 columns with
/// and without a tail, more than one block of 256 rows of W (backward) and more than one
/// pass over `k` (96 rows, forward); and gemm on either side of them.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 9, 20),
    (2, 1, 8),
    (3, 5, 13),
    (4, 7, 16),
    (5, 97, 64),
    (MAX_FEW_ROWS, 50, 7),
    (MAX_FEW_ROWS + 1, 200, 1000),
    (17, 301, 40),
    (33, 16, 16),
    (40, 13, 45),
    (64, 7, 33),
    (MAX_BLOCKED_ROWS, 11, 1500),
    (MAX_BLOCKED_ROWS + 1, 10, 24),
    (200, 130, 70),
];

fn cpu_has_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[allow(unreachable_code)]
    false
}

#[test]
fn forward_equals_the_f64_product() {
    for (case, &(m, n, k)) in SHAPES.iter().enumerate() {
        let (x, w) = (values(m * k, case as u64), values(n * k, 100 + case as u64));
        let (want, scale) = a_bt(&x, &w, m, n, k);
        let label = format!("m={m} n={n} k={k}");
        let y = linear(tensor::<Flex>(&x, m, k), tensor::<Flex>(&w, n, k), None);
        assert_eq!(y.dims(), [m, n], "{label}");
        assert_close(&host(y), &want, &scale, &label);

        // The same product from a strided (transposed) view of x.
        let xt: Vec<f32> = (0..k * m).map(|i| x[(i % m) * k + i / m]).collect();
        let strided = tensor::<Flex>(&xt, k, m).transpose();
        let y = linear(strided, tensor::<Flex>(&w, n, k), None);
        assert_close(&host(y), &want, &scale, &format!("{label}, strided x"));
    }
}

#[test]
fn the_kernels_take_the_products_they_are_for() {
    for m in [1, 2, 5, MAX_FEW_ROWS] {
        assert_eq!(streams(m), cpu_has_kernels(), "{m} rows");
        assert!(!blocks(m), "{m} rows");
    }
    for m in [MAX_FEW_ROWS + 1, 64, MAX_BLOCKED_ROWS] {
        assert_eq!(blocks(m), cpu_has_kernels(), "{m} rows");
        assert!(!streams(m), "{m} rows");
    }
    // More than MAX_BLOCKED_ROWS rows take gemm; from two rows on flex takes its own product,
    // and one row too where the streaming kernels run (else flex's matrix-vector product).
    for m in [MAX_BLOCKED_ROWS + 1, 512] {
        assert!(!streams(m) && !blocks(m), "{m} rows");
    }
    let taken = |m: usize| {
        let (x, w) = (values(m * 16, 1), values(5 * 16, 2));
        try_linear(tensor::<Flex>(&x, m, 16), tensor::<Flex>(&w, 5, 16), None).is_ok()
    };
    assert_eq!(taken(1), cpu_has_kernels());
    for m in [2, MAX_FEW_ROWS, MAX_FEW_ROWS + 1, MAX_BLOCKED_ROWS + 1, 200] {
        assert!(taken(m), "{m} rows");
    }
}

#[test]
fn a_gradient_with_zero_columns_reads_only_the_other_rows_of_w() {
    // The LM head at one position under a logit target (one-hot), or a logit difference
    // (two entries); rows of g on the streaming kernels' 4-row blocks' edges and inside them.
    type B = Autodiff<Flex>;
    let (n, k) = (23, 40);
    let w = values(n * k, 9);
    for (m, hot) in [
        (1, vec![(0, 0)]),
        (1, vec![(0, 22)]),
        (3, vec![(0, 5), (2, 17)]),
    ] {
        let x = values(m * k, 10);
        let xa = tensor::<B>(&x, m, k).require_grad();
        let y = linear(xa.clone(), tensor::<B>(&w, n, k), None);
        let mut r = vec![0f32; m * n];
        for &(a, c) in &hot {
            r[a * n + c] = if c % 2 == 0 { 1.0 } else { -2.5 };
        }
        let got = host(
            xa.grad(&(y * tensor::<B>(&r, m, n)).sum().backward())
                .unwrap(),
        );
        for a in 0..m {
            for p in 0..k {
                let want: f32 = (0..n).map(|c| r[a * n + c] * w[c * k + p]).sum();
                assert_eq!(got[a * k + p], want, "m={m} row {a} column {p} ({hot:?})");
            }
        }
    }
}

#[test]
fn the_bias_is_added_on_every_path() {
    type B = Autodiff<Flex>;
    for m in [4, MAX_FEW_ROWS + 3, MAX_BLOCKED_ROWS + 3] {
        let (n, k) = (37, 24);
        let (x, w, b) = (values(m * k, 3), values(n * k, 4), values(n, 5));
        let (mut want, scale) = a_bt(&x, &w, m, n, k);
        want.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += b[i % n] as f64);
        let bias = Tensor::<B, 1>::from_data(TensorData::new(b.clone(), [n]), &Default::default());
        let xa = tensor::<B>(&x, m, k).require_grad();
        let y = linear(xa.clone(), tensor::<B>(&w, n, k), Some(bias));
        let scale: Vec<f64> = scale.iter().map(|s| s + 1.0).collect();
        assert_close(&host(y.clone()), &want, &scale, &format!("m={m}"));
        // The bias leaves the input gradient alone: d/dx Σ y = column sums of W.
        let got = host(xa.grad(&y.sum().backward()).unwrap());
        for p in 0..k {
            let want: f32 = (0..n).map(|j| w[j * k + p]).sum();
            assert!((got[p] - want).abs() < 1e-4, "m={m}: {} vs {want}", got[p]);
        }
    }
}

#[test]
fn input_gradient_under_autodiff_equals_the_f64_product() {
    type B = Autodiff<Flex>;
    for (case, &(m, n, k)) in SHAPES.iter().enumerate() {
        let (x, w) = (values(m * k, case as u64), values(n * k, 100 + case as u64));
        let r = values(m * n, 200 + case as u64);
        let label = format!("m={m} n={n} k={k}");
        let xa = tensor::<B>(&x, m, k).require_grad();
        let y = linear(xa.clone(), tensor::<B>(&w, n, k), None);
        let (want, scale) = a_bt(&x, &w, m, n, k);
        assert_close(&host(y.clone()), &want, &scale, &label);

        // d/dx Σ r ⊙ (x · Wᵀ) = r · W, i.e. r · (Wᵀ)ᵀ.
        let grads = (y * tensor::<B>(&r, m, n)).sum().backward();
        let got = host(xa.grad(&grads).unwrap());
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let (want, scale) = a_bt(&r, &wt, m, k, n);
        assert_close(&got, &want, &scale, &format!("{label}, gradient"));
    }
}

#[test]
fn a_weight_that_needs_a_gradient_goes_to_the_backend() {
    type B = Autodiff<Flex>;
    let (m, n, k) = (4, 6, 16);
    let (x, w) = (values(m * k, 7), values(n * k, 8));
    let wa = tensor::<B>(&w, n, k).require_grad();
    let result = try_linear(tensor::<B>(&x, m, k), wa.clone(), None);
    assert!(result.is_err());
    // and linear still gives the weight its gradient: d/dW Σ (x · Wᵀ) = column sums of x.
    let grads = linear(tensor::<B>(&x, m, k), wa.clone(), None)
        .sum()
        .backward();
    let got = host(wa.grad(&grads).unwrap());
    for j in 0..n {
        for p in 0..k {
            let want: f32 = (0..m).map(|i| x[i * k + p]).sum();
            assert!((got[j * k + p] - want).abs() < 1e-5);
        }
    }
}

/// `Σ_d (c_h[a][d] · g[a][d])²` in f64, `c_h[a] = z_h[a] · W_hᵀ`.
fn squares_f64(z: &[f32], g: &[f32], w: &[f32], (m, n, heads, hd): Shape) -> Vec<f64> {
    let k = heads * hd;
    let mut out = vec![0.0; heads * m];
    for h in 0..heads {
        for a in 0..m {
            for d in 0..n {
                let c: f64 = (h * hd..(h + 1) * hd)
                    .map(|p| z[a * k + p] as f64 * w[d * k + p] as f64)
                    .sum();
                out[h * m + a] += (c * g[a * n + d] as f64).powi(2);
            }
        }
    }
    out
}

/// Rows of input, hidden size, heads, head width.
type Shape = (usize, usize, usize, usize);

/// Rows 1..=16 (the streaming kernels'), hidden sizes in whole tiles of eight and not (the
/// latter sum as any product and note nothing), heads of 8 and 16 columns, and 17 rows (the
/// blocked kernels, nothing noted).
const HEAD_SHAPES: &[Shape] = &[
    (1, 8, 1, 8),
    (5, 64, 4, 16),
    (7, 24, 3, 8),
    (16, 40, 2, 16),
    (3, 12, 2, 8),
    (17, 16, 2, 8),
];

#[test]
fn outputs_gradients_and_head_scores_by_head() {
    type B = Autodiff<Flex>;
    for &(m, n, heads, hd) in HEAD_SHAPES {
        let k = heads * hd;
        let (x, w, g) = (values(m * k, 1), values(n * k, 2), values(m * n, 3));
        for dtype in [DType::F32, DType::BF16] {
            let label = format!("m {m} n {n} heads {heads}×{hd} {dtype:?}");
            let weight = tensor::<B>(&w, n, k).cast(dtype);
            let wide = host(weight.clone().cast(DType::F32));
            let parts = Arc::new(HeadParts::new(heads));
            parts.ask();
            let xt = tensor::<B>(&x, m, k).require_grad();
            let y = linear_heads(xt.clone(), weight.clone(), None, &parts);
            let plain = linear(tensor::<B>(&x, m, k), weight.clone(), None);

            // The output: the product within f32 rounding of the sums' lengths.
            let (got, want) = (host(y.clone()), host(plain));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let scale: f32 = (0..k)
                    .map(|p| (x[i / n * k + p] * wide[i % n * k + p]).abs())
                    .sum();
                assert!((a - b).abs() <= 1e-5 * scale, "{label} [{i}]: {a} vs {b}");
            }
            // Its input gradient: g · W.
            let grads = (y * tensor::<B>(&g, m, n)).sum().backward();
            let gx = host(xt.grad(&grads).unwrap());
            for a in 0..m {
                for p in 0..k {
                    let want: f64 = (0..n)
                        .map(|d| g[a * n + d] as f64 * wide[d * k + p] as f64)
                        .sum();
                    let got = gx[a * k + p] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * n as f64,
                        "{label} ∂x [{a}, {p}]"
                    );
                }
            }

            // The head scores: from the noted contributions where the kernel took the product,
            // else from o_proj again; equal to f64 sums either way.
            let noted = notes_head_parts() && m <= 16 && n % 8 == 0;
            let inner = |t: Tensor<B, 2>| t.inner();
            let scores = |parts: Option<&HeadParts>| {
                head_squares(
                    inner(tensor::<B>(&x, m, k)),
                    inner(tensor::<B>(&g, m, n)),
                    heads,
                    inner(weight.clone()),
                    parts,
                )
            };
            let want = squares_f64(&x, &g, &wide, (m, n, heads, hd));
            let from_parts = scores(Some(&parts));
            assert_eq!(parts.times_used(), usize::from(noted), "{label}");
            let again = scores(None);
            for got in [from_parts, again].into_iter().flatten() {
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() <= 1e-5 * b.max(1e-6),
                        "{label} [{i}]: {a} vs {b}"
                    );
                }
            }
            // Read once: the contributions are let go, and a second read computes anew.
            assert!(scores(Some(&parts)).is_none_or(|s| s.len() == heads * m));
            assert_eq!(parts.times_used(), usize::from(noted), "{label}");
        }
    }
}

#[test]
fn another_input_does_not_take_the_noted_contributions() {
    type B = Flex;
    let (m, n, heads, hd) = (4, 32, 2, 16);
    let k = heads * hd;
    let (x, w, g) = (values(m * k, 4), values(n * k, 5), values(m * n, 6));
    let weight = tensor::<B>(&w, n, k);
    let parts = Arc::new(HeadParts::new(heads));
    parts.ask();
    let _ = linear_heads(tensor::<B>(&x, m, k), weight.clone(), None, &parts);
    // Not asked again: the next product notes nothing.
    let mut other = x.clone();
    other[5] = 0.25;
    let _ = linear_heads(tensor::<B>(&other, m, k), weight.clone(), None, &parts);
    let got = head_squares(
        tensor::<B>(&other, m, k),
        tensor::<B>(&g, m, n),
        heads,
        weight,
        Some(&parts),
    );
    assert_eq!(parts.times_used(), 0);
    // Still the scores of `other`, computed from o_proj.
    let want = squares_f64(&other, &g, &w, (m, n, heads, hd));
    if let Some(got) = got {
        for (a, b) in got.iter().zip(&want) {
            assert!((*a as f64 - b).abs() <= 1e-5 * b.max(1e-6), "{a} vs {b}");
        }
    }
}

/// The LM head's ranks read from a GGUF file's blocks as stored (the logit lens's screen):
/// taken, and giving what the decoded weight gives, only for the weight they decode to.
#[test]
fn ranks_read_from_stored_blocks_equal_those_of_the_decoded_weight() {
    use qwen2_burn::load::GgufFile;
    use qwen2_burn::matmul::{rank_rows, reads_stored_blocks};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf/quant-samples.gguf"
    );
    let file = GgufFile::open(path).unwrap();
    for name in ["q8_0", "q6_k"] {
        let Some(stored) = file.stored_blocks(name) else {
            continue;
        };
        let [n, k] = stored.shape();
        let w = file.dequantize(name).unwrap();
        let x = values(3 * k, 41);
        let ranks = |weight: &[f32], stored| {
            let (x, w) = (tensor::<Flex>(&x, 3, k), tensor::<Flex>(weight, n, k));
            rank_rows(x, w, n - 1, 2, None, stored)
        };
        let plain = ranks(&w, None);
        assert_eq!(ranks(&w, Some(&stored)), plain, "{name}");
        // Taken (where the screen runs at all), and only for the weight they decode to.
        let taken = usize::from(reads_stored_blocks::<Flex>() && plain.is_some());
        assert_eq!(stored.times_read(), taken, "{name}");
        let other: Vec<f32> = w.iter().map(|v| v * 2.0).collect();
        assert_eq!(ranks(&other, Some(&stored)), ranks(&other, None), "{name}");
        assert_eq!(stored.times_read(), taken, "{name}");
        if let Some(plain) = plain {
            // Against the decoded weight's f32 product, taken on the host.
            for (r, row) in plain.iter().enumerate() {
                let dot = |j: usize| -> f64 {
                    (0..k)
                        .map(|p| x[r * k + p] as f64 * w[j * k + p] as f64)
                        .sum()
                };
                let t = dot(n - 1);
                assert!((row.target_logit as f64 - t).abs() <= 1e-4 * (1.0 + t.abs()));
                let above = (0..n).filter(|&j| dot(j) > t).count();
                assert_eq!(row.above, above, "{name} row {r}");
            }
        }
    }
}
