//! RMSNorm as Qwen2 computes it: `weight · x / sqrt(mean(x²) + eps)`.
//!
//! burn's own `RmsNorm` always takes the mean square in f32, which is right for half precision
//! but throws away digits of an f64 model (the finite-difference checks run in f64). This one
//! works in the input's precision, and in f32 for f16/bf16 inputs as transformers does.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Tensor};

use crate::fused;

/// Root-mean-square norm over the last dimension; field name as in the checkpoint.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale, `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// # Shapes
    /// - `x`: `[..., hidden]` → the same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let half = matches!(dtype, DType::F16 | DType::BF16);
        if !half {
            return fused::rms_norm(x, self.weight.val(), self.eps);
        }
        let wide = x.cast(DType::F32);
        let rms = (wide.clone().square().mean_dim(D - 1) + self.eps).sqrt();
        (wide / rms).cast(dtype) * self.weight.val().unsqueeze()
    }
}
