//! The fused operations (`qwen2_burn::fused`) on flex against their definitions: the same
//! functions on ndarray, which compose burn's own ops. Forward values and, under autodiff, the
//! gradient of `Σ r ⊙ f(x)` for a fixed random `r`.
#![cfg(feature = "flex")]

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::{backend::AutodiffBackend, Tensor, TensorData};
use qwen2_burn::fused;

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn t<B: burn::tensor::backend::Backend, const D: usize>(
    v: &[f32],
    dims: [usize; D],
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), dims), &Default::default())
}

fn host<B: burn::tensor::backend::Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().to_vec::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, label: &str) {
    assert_eq!(got.len(), want.len(), "{label}");
    let top = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * top,
            "{label} [{i}]: {g} vs {w} (largest |value| {top})"
        );
    }
}

/// `f`'s output and the gradients of `Σ r ⊙ f(inputs)` with respect to each input.
fn run<A: AutodiffBackend, const D: usize, const E: usize>(
    f: &dyn Fn(Vec<Tensor<A, D>>) -> Tensor<A, E>,
    inputs: &[(Vec<f32>, [usize; D])],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: Vec<Tensor<A, D>> = inputs
        .iter()
        .map(|(v, dims)| t::<A, D>(v, *dims).require_grad())
        .collect();
    let y = f(leaves.clone());
    let r = t::<A, E>(&values(y.dims().iter().product(), 99, 1.0), y.dims());
    let grads = (y.clone() * r).sum().backward();
    let grads = leaves
        .iter()
        .map(|l| host(l.grad(&grads).unwrap()))
        .collect();
    (host(y), grads)
}

/// Checks `f` on flex (fused) against `f` on ndarray (composed), forward and gradients.
fn check<const D: usize, const E: usize>(
    label: &str,
    tol: f32,
    inputs: &[(Vec<f32>, [usize; D])],
    f_flex: &dyn Fn(Vec<Tensor<Autodiff<Flex>, D>>) -> Tensor<Autodiff<Flex>, E>,
    f_ref: &dyn Fn(Vec<Tensor<Autodiff<NdArray>, D>>) -> Tensor<Autodiff<NdArray>, E>,
) {
    assert!(fused::fused_on::<Autodiff<Flex>>() && fused::fused_on::<Flex>());
    assert!(!fused::fused_on::<Autodiff<NdArray>>());
    let (y, grads) = run(f_flex, inputs);
    let (y_ref, grads_ref) = run(f_ref, inputs);
    assert_close(&y, &y_ref, tol, &format!("{label}: forward"));
    for (i, (g, g_ref)) in grads.iter().zip(&grads_ref).enumerate() {
        assert_close(g, g_ref, tol, &format!("{label}: gradient of input {i}"));
    }
}

#[test]
fn swiglu_equals_silu_times_up() {
    let dims = [2, 3, 70];
    let n = 2 * 3 * 70;
    let inputs = [(values(n, 1, 6.0), dims), (values(n, 2, 2.0), dims)];
    check(
        "swiglu",
        1e-5,
        &inputs,
        &|x| fused::swiglu(x[0].clone(), x[1].clone()),
        &|x| fused::swiglu(x[0].clone(), x[1].clone()),
    );
}

fn causal_mask<B: burn::tensor::backend::Backend>(seq: usize) -> Tensor<B, 2> {
    let v: Vec<f32> = (0..seq * seq)
        .map(|i| if i % seq > i / seq { f32::MIN } else { 0.0 })
        .collect();
    t(&v, [seq, seq])
}

#[test]
fn masked_softmax_equals_softmax_of_scaled_scores_plus_mask() {
    // Two kv heads, each serving a group of three query heads over five positions.
    let (seq, group, scale) = (5, 3, 0.35);
    let dims = [2, 2, group * seq, seq];
    let s = values(2 * 2 * group * seq * seq, 3, 4.0);
    let inputs = [(s.clone(), dims)];
    // Against the same computed in f64 on the host.
    let (p, grads) = run::<Autodiff<Flex>, 4, 4>(
        &|x| fused::masked_softmax(x[0].clone(), scale, &causal_mask(seq)),
        &inputs,
    );
    let r = values(s.len(), 99, 1.0);
    for (row, (s, r)) in s.chunks(seq).zip(r.chunks(seq)).enumerate() {
        let q = row % seq;
        let e: Vec<f64> = (0..seq)
            .map(|j| {
                if j > q {
                    0.0
                } else {
                    (s[j] as f64 * scale).exp()
                }
            })
            .collect();
        let sum: f64 = e.iter().sum();
        let want: Vec<f64> = e.iter().map(|e| e / sum).collect();
        let dot: f64 = want.iter().zip(r).map(|(p, r)| p * *r as f64).sum();
        for j in 0..seq {
            let got_p = p[row * seq + j] as f64;
            assert!(
                (got_p - want[j]).abs() < 1e-6,
                "p[{row}, {j}]: {got_p} vs {}",
                want[j]
            );
            let want_g = scale * want[j] * (r[j] as f64 - dot);
            let got_g = grads[0][row * seq + j] as f64;
            assert!(
                (got_g - want_g).abs() < 1e-6,
                "ds[{row}, {j}]: {got_g} vs {want_g}"
            );
        }
    }
    // The composed form differentiates through exp and a division and rounds more: its
    // gradient is up to 3e-5 of the largest value away from the f64 one (the fused, 1e-6).
    check(
        "masked softmax",
        1e-4,
        &inputs,
        &|x| fused::masked_softmax(x[0].clone(), scale, &causal_mask(seq)),
        &|x| fused::masked_softmax(x[0].clone(), scale, &causal_mask(seq)),
    );
}

#[test]
fn rms_norm_equals_its_definition() {
    let dims = [2, 3, 48];
    let w = values(48, 5, 1.5);
    let inputs = [(values(2 * 3 * 48, 4, 3.0), dims)];
    check(
        "rms norm",
        1e-5,
        &inputs,
        &|x| fused::rms_norm(x[0].clone(), t(&w, [48]), 1e-6),
        &|x| fused::rms_norm(x[0].clone(), t(&w, [48]), 1e-6),
    );
}

#[test]
fn rope_heads_equals_split_then_rotate_half() {
    let (batch, seq, heads, d) = (2, 5, 3, 8);
    let (cos, sin) = (values(seq * d, 6, 1.0), values(seq * d, 7, 1.0));
    let inputs = [(
        values(batch * seq * heads * d, 8, 2.0),
        [batch, seq, heads * d],
    )];
    check(
        "rope",
        1e-5,
        &inputs,
        &|x| fused::rope_heads(x[0].clone(), heads, t(&cos, [seq, d]), t(&sin, [seq, d])),
        &|x| fused::rope_heads(x[0].clone(), heads, t(&cos, [seq, d]), t(&sin, [seq, d])),
    );
}

#[test]
fn merge_heads_equals_swap_and_reshape() {
    let dims = [2, 3, 4, 6];
    let inputs = [(values(2 * 3 * 4 * 6, 9, 1.0), dims)];
    check(
        "merge heads",
        1e-5,
        &inputs,
        &|x| fused::merge_heads(x[0].clone()),
        &|x| fused::merge_heads(x[0].clone()),
    );
}

#[test]
fn add_zero_passes_values_and_gradients_through() {
    let dims = [2, 3, 10];
    let inputs = [(values(60, 10, 1.0), dims), (vec![0.0; 60], dims)];
    check(
        "add zero",
        1e-5,
        &inputs,
        &|x| fused::add_zero(x[0].clone() * 2.0, x[1].clone()),
        &|x| fused::add_zero(x[0].clone() * 2.0, x[1].clone()),
    );
}
