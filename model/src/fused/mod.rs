//! Fused forms of the model's elementwise and reshaping steps.
//!
//! Written with burn's ops, SwiGLU, the attention softmax, RMSNorm and RoPE are each several
//! passes over memory, and under autodiff each pass keeps its own copy for the backward step.
//! On the flex backend these functions take one pass, split across threads, and keep only
//! what the gradient needs (the softmax keeps its output; SwiGLU its two inputs; RMSNorm its
//! input and one number per row). The backward steps are written out by hand. Every other
//! backend and dtype takes the composition of burn ops shown in each function, which is also
//! the definition the fused form is tested against.

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
pub mod kernels;

use burn::tensor::{activation, backend::Backend, Tensor};

/// Whether the functions here take their fused form on `B` (flex, plain or under autodiff,
/// for f32 tensors).
pub fn fused_on<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    return crate::flex_ops::recognised::<B>();
    #[allow(unreachable_code)]
    false
}

/// `silu(gate) · up`.
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (gate, up) = match flex::swiglu(gate, up) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    activation::silu(gate) * up
}

/// `softmax(scale · scores + mask)` over the last axis, the mask's row `r % mask_rows` added to
/// row `r` of each `[rows, cols]` block.
///
/// # Shapes
/// - `scores`: `[batch, kv_heads, group · seq, seq]` (query heads folded into the rows)
/// - `mask`: `[seq, seq]`
/// - output: like `scores`
pub fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f64,
    mask: &Tensor<B, 2>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let scores = match flex::masked_softmax(scores, scale, mask) {
        Ok(p) => return p,
        Err(scores) => scores,
    };
    let [batch, kv, rows, cols] = scores.dims();
    let mask_rows = mask.dims()[0];
    let blocks = kv * rows / mask_rows;
    let scores = scores
        .mul_scalar(scale)
        .reshape([batch, blocks, mask_rows, cols])
        + mask.clone().unsqueeze::<4>();
    activation::softmax(scores, 3).reshape([batch, kv, rows, cols])
}

/// `weight · x / sqrt(mean(x²) + eps)` over the last axis, in the input's precision.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::rms_norm(x, weight.clone(), eps) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let rms = (x.clone().square().mean_dim(D - 1) + eps).sqrt();
    (x / rms) * weight.unsqueeze()
}

/// Splits `x` into heads and rotates each by its position (rotate-half RoPE):
/// `y = x ⊙ cos + rot(x) ⊙ sin` with `rot([x₁, x₂]) = [-x₂, x₁]`.
///
/// # Shapes
/// - `x`: `[batch, seq, heads · head_dim]`
/// - `cos`, `sin`: `[seq, head_dim]`
/// - output: `[batch, heads, seq, head_dim]`
pub fn rope_heads<B: Backend>(
    x: Tensor<B, 3>,
    heads: usize,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match flex::rope_heads(x, heads, cos.clone(), sin.clone()) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let [batch, seq, width] = x.dims();
    let d = width / heads;
    let half = d / 2;
    let x = x.reshape([batch, seq, heads, d]).swap_dims(1, 2);
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.unsqueeze::<4>() + rotated * sin.unsqueeze::<4>()
}

/// `[batch, heads, seq, head_dim]` → `[batch, seq, heads · head_dim]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let x = match flex::merge_heads(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let [batch, heads, seq, d] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * d])
}

/// `x + zero` for a `zero` that holds only zeros (a tap's leaf): on flex the result shares
/// `x`'s memory instead of computing the sum, and the gradient flows to both.
pub fn add_zero<B: Backend, const D: usize>(x: Tensor<B, D>, zero: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (x, zero) = match flex::add_zero(x, zero) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    x + zero
}
