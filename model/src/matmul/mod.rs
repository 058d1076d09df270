//! `x · Wᵀ + b`: the linear layers and the tied head, with `W` in PyTorch's `[out, in]` layout.
//!
//! On the flex backend the product is this module's own operation, plain and under autodiff
//! (its backward step gives the input gradient `g · W`; weights and biases get none). On
//! x86-64 CPUs with AVX2 and FMA:
//! - 1 ..= [`MAX_FEW_ROWS`] rows: `avx2`'s streaming kernels, which read each weight once
//!   and keep the few rows in registers and L1. Their input gradient skips the rows of `W`
//!   whose coefficients are all zero: the LM head at the target position (one row) under a
//!   logit target gets a one-hot gradient, so its backward step reads one row of the table
//!   instead of all of it. With AVX-512 they run as `wide`'s forms, which give the same
//!   bits from about half the instructions. An attention layer's o_proj ([`linear_heads`])
//!   takes `per_head`'s form instead, which sums each head's columns on their own and can keep
//!   those sums for the head scores.
//! - up to [`MAX_BLOCKED_ROWS`] rows: `blocked`'s kernels, which read `W` where it lies and
//!   multiply while they read it. A general matmul first packs `W` into its own layout, which
//!   at a few dozen rows costs a fifth of the product and keeps the memory traffic and the
//!   arithmetic apart: at 64 rows these kernels run the 1.5B model's products at 170-200
//!   GFLOP/s on a 2-core Zen 4, gemm at 115-170.
//!
//! Both read a bf16 or f16 weight (a checkpoint's, kept as stored) as it is, widening it in
//! registers: the same sums in the same order, so the bits of its f32 conversion.
//! - more rows, or two or more without AVX2: gemm, into a buffer allocated here with the bias
//!   already in it (see `flex.rs` for why not flex's own matmul).
//!
//! One row without AVX2, weights that need a gradient, and every other backend take the
//! backend's matmul with `Wᵀ` as a transposed view.
//!
//! Two reductions of such products have their own kernels on flex, where the product itself
//! is not needed: [`rank_rows`] (the logit lens's ranks: a bf16 screen of the LM head on CPUs
//! with AVX-512 BF16, by AMX tiles where the CPU has them, exact f32 values where it cannot
//! decide; see `screen/`) and
//! [`head_squares`] (each attention head's contribution through o_proj, squared against the
//! gradient: from the contributions o_proj's product noted, see `head_parts.rs`, or in one
//! pass over the weight, see `heads.rs`).

#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod amx;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod avx2;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod blocked;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod flex_half;
mod head_norms;
mod head_parts;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod heads;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod per_head;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod screen;
#[cfg(all(test, feature = "flex", target_arch = "x86_64"))]
mod test_values;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod wide;

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor};

use crate::load::StoredBlocks;

pub use head_norms::HeadNorms;
pub use head_parts::HeadParts;

/// The most rows a product may have to take the streaming kernels. On a 2-core AVX-512 VM
/// they made a 1.5B model's forward + backward faster than the blocked kernels at 10 tokens
/// (0.73 s instead of 1.12 from bf16 weights, 0.91 instead of 1.25 from f32) and at 14
/// (0.97 and 1.17 s instead of 1.34 and 1.36); on AVX2 alone faster at 10, the same at 14.
/// The same bound for every weight type, so that a half-precision weight gives its f32
/// conversion's bits.
pub const MAX_FEW_ROWS: usize = 16;

/// The most rows a product may have to take the blocked kernels: from 128 rows on gemm's
/// packing pays for itself and its backward is faster.
pub const MAX_BLOCKED_ROWS: usize = 96;

/// Whether a product with `m` rows takes the streaming kernels on this CPU (on flex).
pub fn streams(m: usize) -> bool {
    #[cfg(feature = "flex")]
    return flex::streams(m);
    #[allow(unreachable_code)]
    {
        let _ = m;
        false
    }
}

/// Whether a product with `m` rows takes the blocked kernels on this CPU (on flex).
pub fn blocks(m: usize) -> bool {
    #[cfg(feature = "flex")]
    return flex::blocks(m);
    #[allow(unreachable_code)]
    {
        let _ = m;
        false
    }
}

/// `weight` in `dtype`: itself if it is already, else converted (a half-precision weight the
/// products keep as it is, widened for code that multiplies it with burn's own ops). On flex
/// the widening runs on every core.
pub fn weight_as<B: Backend>(weight: Tensor<B, 2>, dtype: burn::tensor::DType) -> Tensor<B, 2> {
    if weight.dtype() == dtype {
        return weight;
    }
    #[cfg(feature = "flex")]
    if let Some(wide) = flex_half::widened_tensor(&weight, dtype) {
        return wide;
    }
    weight.cast(dtype)
}

/// Whether this build and CPU note an LM head's row norms in the forward pass
/// ([`try_linear_noting`]): flex on x86-64 with AVX-512 BF16, where the lens's screen runs
/// (its CPU features include the wide kernels').
pub fn notes_head_norms() -> bool {
    #[cfg(all(feature = "flex", target_arch = "x86_64"))]
    return screen::available();
    #[allow(unreachable_code)]
    false
}

/// Whether this build and CPU sum o_proj by head and can note the heads' contributions
/// ([`linear_heads`]): flex on x86-64 with AVX-512 (at the few rows the streaming kernels take,
/// for heads and hidden sizes in whole steps of eight).
pub fn notes_head_parts() -> bool {
    #[cfg(all(feature = "flex", target_arch = "x86_64"))]
    return wide::available();
    #[allow(unreachable_code)]
    false
}

/// The operands of [`try_linear`], handed back when it does not apply: `x`, `W`, `b`.
pub type LinearOperands<B> = (Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>);

/// `x · Wᵀ + b` through this module's own operation when the backend and shapes allow it;
/// otherwise the inputs come back untouched.
///
/// # Shapes
/// - `x`: `[m, k]`, `weight`: `[n, k]`, `bias`: `[n]` → `[m, n]`
#[allow(clippy::result_large_err)]
pub fn try_linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Result<Tensor<B, 2>, LinearOperands<B>> {
    #[cfg(feature = "flex")]
    return flex::try_linear(x, weight, bias, None, None);
    #[allow(unreachable_code)]
    Err((x, weight, bias))
}

/// [`try_linear`] without a bias, for an LM head whose row norms the logit lens may ask for:
/// where `notes` want them ([`HeadNorms::ask`]) and the product is one row against a bf16
/// head on flex (x86-64 with AVX-512 BF16), it notes them as it reads the rows.
///
/// # Shapes
/// - `x`: `[m, k]`, `weight`: `[n, k]` → `[m, n]`
#[allow(clippy::result_large_err)]
pub fn try_linear_noting<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    notes: Option<&Arc<HeadNorms>>,
) -> Result<Tensor<B, 2>, LinearOperands<B>> {
    #[cfg(feature = "flex")]
    return flex::try_linear(x, weight, None, notes, None);
    #[allow(unreachable_code)]
    {
        let _ = notes;
        Err((x, weight, None))
    }
}

/// `x · Wᵀ` for an attention layer's o_proj, whose input holds `parts`' heads side by side:
/// [`linear`], except that on flex, on x86-64 with AVX-512, at the few rows the streaming
/// kernels take, each output sums the heads' contributions (each a sum of its own) and, where
/// `parts` asks for them ([`HeadParts::ask`]), notes those contributions for the head scores
/// ([`head_squares`]). The same sums whether noted or not.
///
/// # Shapes
/// - `x`: `[m, heads·head_dim]`, `weight`: `[n, heads·head_dim]` → `[m, n]`
pub fn linear_heads<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    parts: &Arc<HeadParts>,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match flex::try_linear(x, weight, bias, None, Some(parts)) {
        Ok(y) => return y,
        Err(operands) => operands,
    };
    let _ = parts;
    linear(x, weight, bias)
}

/// `x · Wᵀ + b`: [`try_linear`], else the backend's matmul with `Wᵀ` as a transposed view.
///
/// # Shapes
/// - `x`: `[m, k]`, `weight`: `[n, k]`, `bias`: `[n]` → `[m, n]`
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    match try_linear(x, weight, bias) {
        Ok(y) => y,
        Err((x, weight, bias)) => {
            let y = x.matmul(weight.transpose());
            match bias {
                Some(b) => y + b.unsqueeze::<2>(),
                None => y,
            }
        }
    }
}

/// One row of `x · Wᵀ` ranked against a target column ([`rank_rows`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The row's entry at the target column.
    pub target_logit: f32,
    /// How many entries exceed it.
    pub above: usize,
    /// `(column, entry)` pairs among which the row's highest entries lie (the requested
    /// number of them, ties included), with their exact values; possibly more.
    pub candidates: Vec<(u32, f32)>,
}

/// For each row of `x`, its entry of `x · Wᵀ` at column `target`, how many entries exceed
/// it, and candidates for its `top` highest, each entry as the one-row product computes it,
/// without writing the `m × n` product. On flex with a CPU that has AVX-512 BF16, for an f32
/// `x` and an f32 or bf16 weight (a bf16 screen, exact values where it cannot decide); `None`
/// elsewhere (nothing read back). The norms of a bf16 weight's rows come from `notes` where a
/// forward pass noted them ([`try_linear_noting`]), else from the screen's own pass. An f32
/// weight decoded from `stored` (a GGUF file's blocks) is read as stored, a fifth of the
/// bytes for Q6_K, and decoded a block of rows at a time; `stored` is taken only if its
/// shape is the weight's and its first row and the target's decode to the weight's bits.
///
/// # Shapes
/// - `x`: `[m, k]`, `weight`: `[n, k]`
pub fn rank_rows<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    target: usize,
    top: usize,
    notes: Option<&HeadNorms>,
    stored: Option<&StoredBlocks>,
) -> Option<Vec<Ranked>> {
    #[cfg(feature = "flex")]
    return flex::rank_rows(x, weight, target, top, notes, stored);
    #[allow(unreachable_code)]
    {
        let _ = (x, weight, target, top, notes, stored);
        None
    }
}

/// Whether [`rank_rows`] can read a weight as its file stores it ([`StoredBlocks`]) on
/// backend `B`: worth keeping the stored bytes for.
pub fn reads_stored_blocks<B: Backend>() -> bool {
    #[cfg(all(feature = "flex", target_arch = "x86_64"))]
    return crate::flex_ops::recognised::<B>() && screen::available();
    #[allow(unreachable_code)]
    false
}

/// Each attention head's contribution through o_proj, weighted by the gradient there and
/// squared, summed over the hidden dims: `[heads × seq]` values `Σ_d (c_h[p][d] · g[p][d])²`
/// with `c_h[p] = z_h[p] · W_hᵀ`, `z_h` head h's slice of o_proj's input `z`, `W_h` its
/// columns of `weight`, `g` the gradient at o_proj's output. On flex with AVX2 and FMA: from
/// the contributions the forward pass noted in `parts` for this very `z` and weight
/// ([`linear_heads`]) where it did, else reading the weight once; `None` elsewhere (nothing
/// read back).
///
/// # Shapes
/// - `z`: `[seq, heads·head_dim]`, `g`: `[seq, hidden]`, `weight`: `[hidden, heads·head_dim]`
pub fn head_squares<B: Backend>(
    z: Tensor<B, 2>,
    g: Tensor<B, 2>,
    heads: usize,
    weight: Tensor<B, 2>,
    parts: Option<&HeadParts>,
) -> Option<Vec<f32>> {
    #[cfg(feature = "flex")]
    return flex::head_squares(z, g, heads, weight, parts);
    #[allow(unreachable_code)]
    {
        let _ = (z, g, heads, weight, parts);
        None
    }
}
