//! Qwen2's SwiGLU MLP: `down(silu(gate(x)) · up(x))`.

use crate::linear::Linear;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::config::Qwen2Config;
use crate::error::ModelError;
use crate::fused;
use crate::load::Loader;

/// The feed-forward sublayer of one decoder layer; field names are the checkpoint's.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `hidden → intermediate`, passed through SiLU.
    pub gate_proj: Linear<B>,
    /// `hidden → intermediate`, the linear half of the gate.
    pub up_proj: Linear<B>,
    /// `intermediate → hidden`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// Loads `{prefix}.gate_proj`, `up_proj` and `down_proj` (no biases in Qwen2's MLP).
    pub fn load(loader: &mut Loader<B>, prefix: &str, c: &Qwen2Config) -> Result<Self, ModelError> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_proj: loader.linear(&format!("{prefix}.gate_proj"), h, i, false)?,
            up_proj: loader.linear(&format!("{prefix}.up_proj"), h, i, false)?,
            down_proj: loader.linear(&format!("{prefix}.down_proj"), i, h, false)?,
        })
    }

    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(fused::swiglu(gate, self.up_proj.forward(x)))
    }
}
