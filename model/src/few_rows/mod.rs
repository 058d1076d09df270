//! `x · Wᵀ` for inputs with few rows: the linear layers of short prompts.
//!
//! A general matmul kernel packs `W` into blocks before it multiplies, which for a handful
//! of rows costs more than the product itself: at 8 tokens the weights are read about three
//! times. On the flex backend, on x86-64 CPUs with AVX2 and FMA, products with
//! 2 ..= [`MAX_ROWS`] rows use [`avx2`]'s kernels instead, which read each weight once, in the
//! forward pass (`x · Wᵀ`) and in the backward pass (`g · W`, the input gradient; the weights
//! get none). Every other backend, CPU and shape takes the backend's own matmul.

#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod avx2;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod flex;

use burn::tensor::{backend::Backend, Tensor};

/// The most rows a product may have to take the streaming kernels: at 64 rows the packed
/// kernel is as fast (it is then bound by arithmetic, not by reading the weights).
pub const MAX_ROWS: usize = 32;

/// `x · Wᵀ` through the streaming kernels when the backend, the CPU and the shapes allow it;
/// otherwise `x` and `W` come back untouched.
///
/// # Shapes
/// - `x`: `[m, k]`, `weight`: `[n, k]` → `[m, n]`
#[allow(clippy::result_large_err)]
pub fn try_x_wt<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    #[cfg(all(feature = "flex", target_arch = "x86_64"))]
    {
        let m = x.dims()[0];
        if (2..=MAX_ROWS).contains(&m) && avx2::available() {
            return flex::try_x_wt(x, weight);
        }
    }
    Err((x, weight))
}

/// `x · Wᵀ`: [`try_x_wt`], else the backend's matmul with `Wᵀ` as a transposed view.
///
/// # Shapes
/// - `x`: `[m, k]`, `weight`: `[n, k]` → `[m, n]`
pub fn x_wt<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    try_x_wt(x, weight).unwrap_or_else(|(x, weight)| x.matmul(weight.transpose()))
}
