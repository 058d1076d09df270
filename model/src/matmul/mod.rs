//! `x · Wᵀ + b`: the linear layers and the tied head, with `W` in PyTorch's `[out, in]` layout.
//!
//! On the flex backend the product is this module's own operation, plain and under autodiff
//! (its backward step gives the input gradient `g · W`; weights and biases get none):
//! - 2 ..= [`MAX_FEW_ROWS`] rows, on x86-64 CPUs with AVX2 and FMA: [`avx2`]'s streaming
//!   kernels, which read each weight once. A general matmul packs `W` into blocks before it
//!   multiplies, which for a handful of rows costs more than the product: at 8 tokens the
//!   weights would be read about three times.
//! - any other count of two rows or more: gemm, into a buffer allocated here with the bias
//!   already in it (see `flex.rs` for why not flex's own matmul).
//!
//! One row, weights that need a gradient, and every other backend take the backend's matmul
//! with `Wᵀ` as a transposed view.

#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod avx2;
#[cfg(feature = "flex")]
mod flex;

use burn::tensor::{backend::Backend, Tensor};

/// The most rows a product may have to take the streaming kernels: at 64 rows gemm is as
/// fast (it is then bound by arithmetic, not by reading the weights).
pub const MAX_FEW_ROWS: usize = 32;

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
    return flex::try_linear(x, weight, bias);
    #[allow(unreachable_code)]
    Err((x, weight, bias))
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
