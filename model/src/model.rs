//! The whole model: `Qwen2Model` (embedding, layers, final norm) and `Qwen2ForCausalLM`,
//! which adds the LM head and evaluates it only at the positions asked for.

use crate::norm::RmsNorm;
use burn::module::Module;
use burn::nn::Embedding;

use crate::linear::Linear;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::block::DecoderLayer;
use crate::config::Qwen2Config;
use crate::error::ModelError;
use crate::load::{Loader, StoredBlocks, WeightSource};
use crate::matmul::HeadNorms;
use crate::probe::{Probe, Site};
use crate::rope::Rope;
use std::ops::Range;
use std::sync::Arc;

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

impl<B: Backend> Qwen2Model<B> {
    /// The embeddings of `ids` (`[batch, seq]` → `[batch, seq, hidden]`) in the precision the
    /// model computes in: on flex a bf16 table read in place stays bf16 (see `load`), and its
    /// rows are widened here, exactly.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.embed_tokens.forward(ids);
        let dtype = self.norm.weight.val().dtype();
        match x.dtype() == dtype {
            true => x,
            false => x.cast(dtype),
        }
    }
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
    pub(crate) rope: Rope<B>,
    /// The LM head's row norms, noted by a forward pass for the logit lens when asked
    /// ([`Self::keep_head_norms`]).
    head_norms: Arc<HeadNorms>,
    /// The LM head as its file stores it, where the logit lens can read it so
    /// ([`crate::matmul::rank_rows`]): a GGUF file's quantized blocks.
    head_blocks: Option<StoredBlocks>,
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
        let head_name = match c.tie_word_embeddings {
            true => "model.embed_tokens.weight",
            false => "lm_head.weight",
        };
        let head_blocks = crate::matmul::reads_stored_blocks::<B>()
            .then(|| loader.blocks(head_name))
            .flatten();
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
            rope: Rope::new(
                c.head_dim(),
                c.rope_theta,
                c.max_position_embeddings,
                device,
            ),
            head_norms: Arc::default(),
            head_blocks,
        })
    }

    /// Asks the next forward pass to note the LM head's row norms as it reads the head, for
    /// [`Self::head_ranks`] (which otherwise reads the table for them again). Only a bf16
    /// head on flex, on x86-64 with AVX-512 BF16, is noted; see [`HeadNorms`].
    pub fn keep_head_norms(&self) {
        self.head_norms.ask();
    }

    /// Asks the next forward pass to note every attention head's contribution through o_proj
    /// as o_proj computes it, for the head scores (which otherwise read o_proj again); see
    /// [`crate::matmul::HeadParts`] and each layer's [`Attention::head_parts`].
    ///
    /// [`Attention::head_parts`]: crate::attention::Attention::head_parts
    pub fn keep_head_parts(&self) {
        for layer in &self.model.layers {
            layer.self_attn.head_parts().ask();
        }
    }

    /// The LM head's row norms as far as noted and read ([`Self::keep_head_norms`]).
    pub fn head_norms(&self) -> &HeadNorms {
        &self.head_norms
    }

    /// The LM head as its file stores it, kept for the logit lens where that can read it
    /// (a GGUF file's blocks, on flex with AVX-512 BF16; see [`crate::matmul::rank_rows`]).
    pub fn head_blocks(&self) -> Option<&StoredBlocks> {
        self.head_blocks.as_ref()
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
        assert!(
            seq <= self.rope.max_positions(),
            "sequence longer than the RoPE tables"
        );
        assert!(
            positions.iter().all(|&p| p < seq),
            "position beyond the sequence"
        );

        let mask = causal_mask::<B>(seq, &device);
        let mut x = probe.at(Site::Embed, self.model.embed(ids));
        for (layer, block) in self.model.layers.iter().enumerate() {
            x = block.forward(x, &self.rope, &mask, layer, probe);
        }
        self.head(x, positions, probe)
    }

    /// Decoder layer `layer` alone, with the probe at its sites: what [`forward`](Self::forward)
    /// does to the residual stream there. For running the layers one at a time (gradient
    /// checkpointing); it builds the causal mask on each call.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`
    pub fn layer(&self, layer: usize, x: Tensor<B, 3>, probe: &mut dyn Probe<B>) -> Tensor<B, 3> {
        let seq = x.dims()[1];
        let mask = causal_mask::<B>(seq, &x.device());
        self.model.layers[layer].forward(x, &self.rope, &mask, layer, probe)
    }

    /// The end of [`forward`](Self::forward): the probe at `FinalIn`, then the final norm and
    /// LM head at `positions`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → `[batch, positions.len(), vocab]`
    pub fn head(
        &self,
        x: Tensor<B, 3>,
        positions: &[usize],
        probe: &mut dyn Probe<B>,
    ) -> Tensor<B, 3> {
        let device = x.device();
        let x = probe.at(Site::FinalIn, x);
        let index: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let index =
            Tensor::<B, 1, Int>::from_data(TensorData::new(index, [positions.len()]), &device);
        // [batch, positions, hidden]: the final norm acts per position, so selecting first is exact.
        self.unembed(x.select(1, index))
    }

    /// The final norm and the LM head: residual-stream vectors to logits. The forward ends
    /// with it; the logit lens applies it to the residual stream after every sublayer.
    ///
    /// # Shapes
    /// - `residual`: `[batch, n, hidden]` → `[batch, n, vocab]`
    pub fn unembed(&self, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let normed = self.model.norm.forward(residual);
        let [batch, seq, hidden] = normed.dims();
        let vocab = self.config.vocab_size;
        let logits = self.head_rows(normed.reshape([batch * seq, hidden]), 0..vocab);
        logits.reshape([batch, seq, vocab])
    }

    /// Rows of the LM head's output for the vocabulary entries `ids` only: the logit lens
    /// reads the whole vocabulary a slice at a time, so that no `[rows, vocab]` buffer (35 MB
    /// for 57 rows of Qwen2.5) is allocated and first touched at once.
    ///
    /// # Shapes
    /// - `normed`: `[n, hidden]` (after the final norm) → `[n, ids.len()]`
    pub fn head_rows(&self, normed: Tensor<B, 2>, ids: Range<usize>) -> Tensor<B, 2> {
        let slice = |weight: Tensor<B, 2>| match ids.len() == weight.dims()[0] {
            true => weight,
            false => weight.narrow(0, ids.start, ids.len()),
        };
        // The whole head, read by a forward pass, notes its row norms where they are asked
        // for.
        let notes = (ids.len() == self.config.vocab_size).then_some(&self.head_norms);
        let product = |x, weight| crate::matmul::try_linear_noting(x, weight, notes);
        match &self.lm_head {
            Some(head) => match product(normed, slice(head.weight.val())) {
                Ok(logits) => logits,
                Err((rows, weight, _)) => rows.matmul(weight.transpose()),
            },
            None => {
                // Tied head: logits = h · Eᵀ with E the `[vocab, hidden]` embedding, computed
                // as (E · hᵀ)ᵀ so that E is read in place: a transposed view of the whole table
                // would be copied (hundreds of MB) on every call by some backends.
                match product(normed, slice(self.model.embed_tokens.weight.val())) {
                    Ok(logits) => logits,
                    Err((rows, table, _)) => table.matmul(rows.transpose()).transpose(),
                }
            }
        }
    }

    /// For each row of `normed` (`[rows, hidden]`, after the final norm): the LM head's logit
    /// for `target`, how many logits exceed it, and candidates for the `top` highest, without
    /// the `[rows, vocab]` logits ([`crate::matmul::rank_rows`]: on flex with AVX-512 BF16;
    /// `None` elsewhere, where [`Self::head_rows`] gives the logits). It takes the head's row
    /// norms from the forward pass where that noted them ([`Self::keep_head_norms`]), and reads
    /// the head as its file stores it where that is a GGUF file's blocks.
    pub fn head_ranks(
        &self,
        normed: Tensor<B, 2>,
        target: u32,
        top: usize,
    ) -> Option<Vec<crate::matmul::Ranked>> {
        let weight = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.model.embed_tokens.weight.val(),
        };
        let (notes, stored) = (Some(&*self.head_norms), self.head_blocks.as_ref());
        crate::matmul::rank_rows(normed, weight, target as usize, top, notes, stored)
    }
}

/// `[seq, seq]`: 0 on and below the diagonal, the most negative f32 above it (as transformers'
/// eager attention), so that `softmax` gives future positions exactly zero weight.
pub(crate) fn causal_mask<B: Backend>(seq: usize, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = (0..seq * seq)
        .map(|i| if i % seq > i / seq { f32::MIN } else { 0.0 })
        .collect();
    Tensor::from_data(TensorData::new(values, [seq, seq]), device)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::probe::NoProbe;
    use crate::TestBackend;

    /// An in-memory checkpoint.
    struct MapSource(BTreeMap<String, (Vec<usize>, Vec<f32>)>);

    impl WeightSource for MapSource {
        fn names(&self) -> Vec<String> {
            self.0.keys().cloned().collect()
        }
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            self.0.get(name).map(|(s, _)| s.clone())
        }
        fn read_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
            Ok(self.0[name].1.clone())
        }
    }

    fn config(tied: bool) -> Qwen2Config {
        Qwen2Config {
            vocab_size: 11,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 16,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            tie_word_embeddings: tied,
        }
    }

    /// Every tensor a checkpoint of `c` has, filled with a deterministic pattern.
    fn checkpoint(c: &Qwen2Config) -> MapSource {
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let kv = c.num_key_value_heads * c.head_dim();
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![v, h]),
            ("model.norm.weight".into(), vec![h]),
        ];
        if !c.tie_word_embeddings {
            shapes.push(("lm_head.weight".into(), vec![v, h]));
        }
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            shapes.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
                (format!("{p}.self_attn.q_proj.bias"), vec![h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            ]);
        }
        let mut seed = 0u32;
        MapSource(
            shapes
                .into_iter()
                .map(|(name, shape)| {
                    let n: usize = shape.iter().product();
                    let values = (0..n)
                        .map(|_| {
                            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                        })
                        .collect();
                    (name, (shape, values))
                })
                .collect(),
        )
    }

    fn ids(values: &[i64]) -> Tensor<TestBackend, 2, Int> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [1, values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn loads_tied_and_untied() {
        for tied in [true, false] {
            let c = config(tied);
            let model =
                Qwen2ForCausalLM::<TestBackend>::load(&c, &checkpoint(&c), &Default::default())
                    .unwrap();
            assert_eq!(model.lm_head.is_none(), tied);
            assert_eq!(model.forward_last(ids(&[1, 2, 3])).dims(), [1, 11]);
        }
    }

    #[test]
    fn missing_unused_and_misshapen_tensors_are_named() {
        let c = config(false);
        let device = Default::default();
        let mut source = checkpoint(&c);
        source.0.remove("model.layers.1.mlp.up_proj.weight");
        let err = Qwen2ForCausalLM::<TestBackend>::load(&c, &source, &device).unwrap_err();
        assert!(
            err.to_string()
                .contains("model.layers.1.mlp.up_proj.weight"),
            "{err}"
        );

        let mut source = checkpoint(&c);
        source.0.insert(
            "model.layers.2.mlp.up_proj.weight".into(),
            (vec![1], vec![0.0]),
        );
        let err = Qwen2ForCausalLM::<TestBackend>::load(&c, &source, &device).unwrap_err();
        assert!(
            matches!(err, ModelError::UnusedTensors { ref names } if names == &["model.layers.2.mlp.up_proj.weight"])
        );

        let mut source = checkpoint(&c);
        source.0.get_mut("model.norm.weight").unwrap().0 = vec![7];
        let err = Qwen2ForCausalLM::<TestBackend>::load(&c, &source, &device).unwrap_err();
        assert!(
            matches!(err, ModelError::ShapeMismatch { ref name, .. } if name == "model.norm.weight"),
            "{err}"
        );
    }

    /// Records the sites visited and zeroes one of them.
    struct Recorder {
        seen: Vec<(Site, [usize; 3])>,
        zero: Option<Site>,
    }

    impl Probe<TestBackend> for Recorder {
        fn at(&mut self, site: Site, x: Tensor<TestBackend, 3>) -> Tensor<TestBackend, 3> {
            self.seen.push((site, x.dims()));
            if self.zero == Some(site) {
                x.zeros_like()
            } else {
                x
            }
        }
    }

    #[test]
    fn the_probe_sees_every_site_once_in_order_and_can_change_it() {
        let c = config(true);
        let model = Qwen2ForCausalLM::<TestBackend>::load(&c, &checkpoint(&c), &Default::default())
            .unwrap();
        let mut recorder = Recorder {
            seen: vec![],
            zero: None,
        };
        let plain = model.forward(ids(&[4, 5, 6]), &[2], &mut recorder);
        let sites: Vec<Site> = recorder.seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(sites, Site::all(2));
        assert!(recorder.seen.iter().all(|(_, dims)| *dims == [1, 3, 8]));

        let untouched = model.forward(ids(&[4, 5, 6]), &[2], &mut NoProbe);
        assert_eq!(plain.to_data(), untouched.to_data());

        // Zeroing the last MLP's output changes the logits; zeroing its input branch too.
        for site in [Site::MlpOut(1), Site::MlpIn(1)] {
            let mut ablate = Recorder {
                seen: vec![],
                zero: Some(site),
            };
            let changed = model.forward(ids(&[4, 5, 6]), &[2], &mut ablate);
            let diff: f32 = (changed - plain.clone()).abs().sum().into_scalar();
            assert!(diff > 1e-4, "{site}: no effect");
        }
    }

    #[test]
    fn causality_later_tokens_do_not_change_earlier_logits() {
        let c = config(false);
        let model = Qwen2ForCausalLM::<TestBackend>::load(&c, &checkpoint(&c), &Default::default())
            .unwrap();
        let short = model
            .forward(ids(&[1, 2]), &[1], &mut NoProbe)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let long = model
            .forward(ids(&[1, 2, 9, 3]), &[1], &mut NoProbe)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (a, b) in short.iter().zip(&long) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
