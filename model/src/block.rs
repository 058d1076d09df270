//! One decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.

use crate::norm::RmsNorm;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::attention::Attention;
use crate::config::Qwen2Config;
use crate::error::ModelError;
use crate::load::Loader;
use crate::mlp::Mlp;
use crate::probe::{NoProbe, Probe, Site};
use crate::rope::Rope;

/// A pre-norm decoder layer; field names are the checkpoint's.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Norm on the attention branch.
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: Attention<B>,
    /// Norm on the MLP branch.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Feed-forward.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Loads `model.layers.{layer}.*`.
    pub fn load(loader: &mut Loader<B>, layer: usize, c: &Qwen2Config) -> Result<Self, ModelError> {
        let p = format!("model.layers.{layer}");
        Ok(Self {
            input_layernorm: loader.rms_norm(
                &format!("{p}.input_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
            self_attn: Attention::load(loader, &format!("{p}.self_attn"), c)?,
            post_attention_layernorm: loader.rms_norm(
                &format!("{p}.post_attention_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
            mlp: Mlp::load(loader, &format!("{p}.mlp"), c)?,
        })
    }

    /// The residual equation, with the probe at each site.
    ///
    /// The `*In` probes see a copy of the residual stream that feeds only the branch (the
    /// norm and the sublayer), never the skip connection: a change there reaches this sublayer
    /// alone. The `*Out` probes see the sublayer's output before it is added back.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &Tensor<B, 2>,
        layer: usize,
        probe: &mut dyn Probe<B>,
    ) -> Tensor<B, 3> {
        let branch = probe.at(Site::AttnIn(layer), x.clone());
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(branch),
            rope,
            mask,
            layer,
            probe,
        );
        let x = x + probe.at(Site::AttnOut(layer), attn);

        let branch = probe.at(Site::MlpIn(layer), x.clone());
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(branch));
        x + probe.at(Site::MlpOut(layer), mlp)
    }

    /// The attention branch alone, `attn(norm(x))`, without probes: what
    /// [`forward`](Self::forward) adds to the residual stream for its first sublayer.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn attention_branch(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: &Tensor<B, 2>,
        layer: usize,
    ) -> Tensor<B, 3> {
        self.self_attn.forward(
            self.input_layernorm.forward(x),
            rope,
            mask,
            layer,
            &mut NoProbe,
        )
    }

    /// The MLP branch alone, `mlp(norm(x))`: what [`forward`](Self::forward) adds for its second
    /// sublayer.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn mlp_branch(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}
