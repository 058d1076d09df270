//! The whole model: `Qwen2Model` (embedding, layers, final norm) and `Qwen2ForCausalLM`,
//! which adds the LM head and evaluates it only at the positions asked for.

use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::block::DecoderLayer;
use crate::config::Qwen2Config;
use crate::error::ModelError;
use crate::load::{Loader, WeightSource};
use crate::probe::{Probe, Site};
use crate::rope::Rope;

/// The base model, from token ids to the normed residual stream.
#[derive(Module, Debug)]
pub struct Qwen2Model<B: Backend> {
    /// Token embedding, `[vocab, hidden]`.
    pub embed_tokens: Embedding<B>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// The final norm.
    pub norm: RmsNorm<B>,
}

/// Qwen2 with its language-model head, ready to run.
///
/// Holds the RoPE tables beside the parameters: they derive from the config and are shared by
/// every layer.
#[derive(Debug)]
pub struct Qwen2ForCausalLM<B: Backend> {
    /// The base model.
    pub model: Qwen2Model<B>,
    /// `hidden → vocab`; `None` when the head is tied to the token embedding.
    pub lm_head: Option<Linear<B>>,
    /// The config the model was built from.
    pub config: Qwen2Config,
    rope: Rope<B>,
}

impl<B: Backend> Qwen2ForCausalLM<B> {
    /// Builds the model from a checkpoint. Every tensor must be present with the shape the
    /// config implies, and every tensor of the checkpoint must be used.
    pub fn load(
        config: &Qwen2Config,
        source: &dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::load_with_progress(config, source, device, &mut |_, _| {})
    }

    /// As [`Self::load`], calling `progress(done, total)` after each layer.
    pub fn load_with_progress(
        config: &Qwen2Config,
        source: &dyn WeightSource,
        device: &B::Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let c = config;
        let mut loader = Loader::<B>::new(source, device);
        let total = c.num_hidden_layers + 2;
        let embed_tokens = loader.embedding("model.embed_tokens", c.vocab_size, c.hidden_size)?;
        progress(1, total);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for layer in 0..c.num_hidden_layers {
            layers.push(DecoderLayer::load(&mut loader, layer, c)?);
            progress(layer + 2, total);
        }
        let norm = loader.rms_norm("model.norm", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            // Some tied checkpoints still carry a copy of the embedding as the head; like
            // transformers, use the embedding and ignore it.
            loader.skip("lm_head.weight");
            None
        } else {
            Some(loader.linear("lm_head", c.hidden_size, c.vocab_size, false)?)
        };
        progress(total, total);
        loader.finish()?;
        Ok(Self {
            model: Qwen2Model {
                embed_tokens,
                layers,
                norm,
            },
            lm_head,
            config: c.clone(),
            rope: Rope::new(c.head_dim(), c.rope_theta, c.max_position_embeddings, device),
        })
    }

    /// Logits at the last position of every sequence, without a probe.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]` → `[batch, vocab]`
    pub fn forward_last(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let seq = ids.dims()[1];
        self.forward(ids, &[seq - 1], &mut crate::probe::NoProbe)
            .squeeze_dim(1)
    }

    /// Runs the model, calling `probe` at every [`Site`], and returns the logits at
    /// `positions` only: the LM head is the largest matmul (151,936 rows), so it is not applied
    /// to positions nobody asked for.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]`, `seq ≤ max_position_embeddings`
    /// - output: `[batch, positions.len(), vocab]`
    ///
    /// # Panics
    /// If a position is not below `seq`, or `seq` exceeds the RoPE tables; callers check both.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        positions: &[usize],
        probe: &mut dyn Probe<B>,
    ) -> Tensor<B, 3> {
        let device = ids.device();
        let seq = ids.dims()[1];
        assert!(seq <= self.rope.max_positions(), "sequence longer than the RoPE tables");
        assert!(positions.iter().all(|&p| p < seq), "position beyond the sequence");

        let mask = causal_mask::<B>(seq, &device);
        let mut x = probe.at(Site::Embed, self.model.embed_tokens.forward(ids));
        for (layer, block) in self.model.layers.iter().enumerate() {
            x = block.forward(x, &self.rope, &mask, layer, probe);
        }
        let x = probe.at(Site::FinalIn, x);

        let index: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [positions.len()]), &device);
        // [batch, positions, hidden]: the final norm acts per position, so selecting first is exact.
        let selected = self.model.norm.forward(x.select(1, index));
        match &self.lm_head {
            Some(head) => head.forward(selected),
            None => {
                // Tied head: logits = h · Eᵀ with E the `[vocab, hidden]` embedding.
                let weight = self.model.embed_tokens.weight.val().transpose();
                burn::tensor::module::linear(selected, weight, None)
            }
        }
    }
}

/// `[seq, seq]`: 0 on and below the diagonal, the most negative f32 above it (as transformers'
/// eager attention), so that `softmax` gives future positions exactly zero weight.
fn causal_mask<B: Backend>(seq: usize, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..seq * seq)
        .map(|i| if i % seq > i / seq { f32::MIN } else { 0.0 })
        .collect();
    Tensor::from_data(TensorData::new(values, [seq, seq]), device)
}
