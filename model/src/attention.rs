//! Grouped-query self-attention with q/k/v biases, rotate-half RoPE and a causal mask.

use std::sync::Arc;

use crate::linear::Linear;
use crate::matmul::HeadParts;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::config::Qwen2Config;
use crate::error::ModelError;
use crate::fused;
use crate::load::Loader;
use crate::probe::{Probe, Site};
use crate::rope::Rope;

/// The attention sublayer of one decoder layer; field names are the checkpoint's.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `hidden → heads·head_dim`, with bias.
    pub q_proj: Linear<B>,
    /// `hidden → kv_heads·head_dim`, with bias.
    pub k_proj: Linear<B>,
    /// `hidden → kv_heads·head_dim`, with bias.
    pub v_proj: Linear<B>,
    /// `heads·head_dim → hidden`, no bias.
    pub o_proj: Linear<B>,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads; each serves `num_heads / num_kv_heads` query heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The heads' contributions through o_proj, noted by the forward pass when asked
    /// ([`Self::head_parts`]).
    #[module(skip)]
    head_parts: Arc<HeadParts>,
}

impl<B: Backend> Attention<B> {
    /// Loads `{prefix}.{q,k,v,o}_proj`.
    pub fn load(loader: &mut Loader<B>, prefix: &str, c: &Qwen2Config) -> Result<Self, ModelError> {
        let (h, d) = (c.hidden_size, c.head_dim());
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        Ok(Self {
            q_proj: loader.linear(&format!("{prefix}.q_proj"), h, q, true)?,
            k_proj: loader.linear(&format!("{prefix}.k_proj"), h, kv, true)?,
            v_proj: loader.linear(&format!("{prefix}.v_proj"), h, kv, true)?,
            o_proj: loader.linear(&format!("{prefix}.o_proj"), q, h, false)?,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: d,
            head_parts: Arc::new(HeadParts::new(c.num_attention_heads)),
        })
    }

    /// The heads' contributions through o_proj: [`HeadParts::ask`] before a forward pass has
    /// its product note them where it can, for the head scores
    /// ([`crate::matmul::head_squares`]).
    pub fn head_parts(&self) -> &HeadParts {
        &self.head_parts
    }

    /// Causal self-attention over `x`; calls the probe at `HeadOut(layer)`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` (already normed)
    /// - `mask`: `[seq, seq]`, 0 where a query may attend and a large negative number above the
    ///   diagonal
    /// - output: `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &Tensor<B, 2>,
        layer: usize,
        probe: &mut dyn Probe<B>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let group = nh / nkv;
        // [batch, heads, seq, head_dim]
        let q = rope.apply(self.q_proj.forward(x.clone()), nh);
        let k = rope.apply(self.k_proj.forward(x.clone()), nkv);
        let v = self
            .v_proj
            .forward(x)
            .reshape([batch, seq, nkv, d])
            .swap_dims(1, 2);

        // Query heads h = kv·group + j share key/value head kv. Folding each group into the
        // sequence axis, [batch, kv_heads, group·seq, head_dim], lets one batched matmul serve
        // the whole group without copying K and V `group` times.
        let q = q.reshape([batch, nkv, group * seq, d]);
        // The causal mask is added to each query head's [seq, seq] block.
        let probs =
            fused::masked_softmax(q.matmul(k.swap_dims(2, 3)), 1.0 / (d as f64).sqrt(), mask);
        // [batch, kv_heads, group·seq, head_dim] → [batch, seq, heads·head_dim]
        let heads = fused::merge_heads(probs.matmul(v).reshape([batch, nh, seq, d]));
        let heads = probe.at(Site::HeadOut(layer), heads);
        self.o_proj.forward_heads(heads, &self.head_parts)
    }
}
