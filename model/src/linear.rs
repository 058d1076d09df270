//! A linear layer that keeps PyTorch's weight layout.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

/// `y = x · Wᵀ + b` with `W` stored as PyTorch stores it, `[d_out, d_in]`.
///
/// The weight is read straight from the checkpoint (no transposed copy at load time), and the
/// product is taken as one 2-D matmul over all rows of `x` with `Wᵀ` as a transposed view:
/// backends with strided matmul kernels then never copy the weight, neither here nor for the
/// input gradient `g · W` in the backward pass. On flex, [`matmul`](crate::matmul) takes the
/// product and adds the bias in one operation.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_out, d_in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`, if the layer has one.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, d_in]` → `[batch, seq, d_out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_by(x, crate::matmul::linear)
    }

    /// [`Self::forward`] for an attention layer's o_proj, whose input holds `parts`' heads side
    /// by side ([`crate::matmul::linear_heads`]).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, heads·head_dim]` → `[batch, seq, d_out]`
    pub fn forward_heads(
        &self,
        x: Tensor<B, 3>,
        parts: &std::sync::Arc<crate::matmul::HeadParts>,
    ) -> Tensor<B, 3> {
        self.forward_by(x, |x, weight, bias| {
            crate::matmul::linear_heads(x, weight, bias, parts)
        })
    }

    /// `product(x, W, b)` over all rows of `x` as one 2-D product.
    fn forward_by(
        &self,
        x: Tensor<B, 3>,
        product: impl FnOnce(Tensor<B, 2>, Tensor<B, 2>, Option<Tensor<B, 1>>) -> Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        let weight = self.weight.val();
        let d_out = weight.dims()[0];
        let bias = self.bias.as_ref().map(Param::val);
        let y = product(x.reshape([batch * seq, d_in]), weight, bias);
        y.reshape([batch, seq, d_out])
    }
}
