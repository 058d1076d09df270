//! Runs resumed part-way through the model: many interventions that each change one sublayer's
//! output (or one sublayer's input branch) share everything upstream with the clean run, so
//! each starts from the clean residual stream at its sublayer instead of from the embeddings.
//!
//! Sublayers are numbered in the order the forward runs them: `2l` is layer l's attention,
//! `2l + 1` its MLP, and `2L` the final norm and LM head. The batch grows as runs join: at
//! sublayer s it holds every run that started at or before s, so a run that starts at the last
//! layer costs one layer, and the weights are still read once per sublayer for all of them.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::model::{causal_mask, Qwen2ForCausalLM};

/// One run of [`Qwen2ForCausalLM::forward_resumed`].
#[derive(Debug, Clone)]
pub struct Resume<B: Backend> {
    /// The sublayer it starts at (`2l` attention, `2l + 1` MLP of layer l, `2L` the final norm).
    pub sublayer: usize,
    /// The residual stream entering that sublayer, `[1, seq, hidden]`.
    pub residual: Tensor<B, 3>,
    /// What that first sublayer's branch (its norm) reads instead of `residual`, if it differs:
    /// the residual skip keeps `residual`. `[1, seq, hidden]`.
    pub branch: Option<Tensor<B, 3>>,
}

impl<B: Backend> Qwen2ForCausalLM<B> {
    /// The logits at `positions` of every run, in the order given.
    ///
    /// Equal to [`forward`](Self::forward) with a probe that makes the same change, up to the
    /// rounding of a different batch size.
    ///
    /// # Shapes
    /// - every `residual` and `branch`: `[1, seq, hidden]`
    /// - output: `[runs.len(), positions.len(), vocab]`
    ///
    /// # Panics
    /// If `runs` is empty, not sorted by `sublayer`, or a sublayer is beyond `2L`.
    pub fn forward_resumed(&self, runs: Vec<Resume<B>>, positions: &[usize]) -> Tensor<B, 3> {
        assert!(!runs.is_empty(), "no runs to resume");
        assert!(
            runs.windows(2).all(|w| w[0].sublayer <= w[1].sublayer),
            "runs must be sorted by sublayer"
        );
        let layers = self.model.layers.len();
        assert!(
            runs.iter().all(|r| r.sublayer <= 2 * layers),
            "a run starts beyond the final norm"
        );
        let device = runs[0].residual.device();
        let seq = runs[0].residual.dims()[1];
        let mask = causal_mask::<B>(seq, &device);
        let mut runs = runs.into_iter().peekable();
        let mut x: Option<Tensor<B, 3>> = None;
        for s in 0..=2 * layers {
            let mut residuals = Vec::new();
            let mut branches = Vec::new();
            let mut any_branch = false;
            while let Some(run) = runs.next_if(|r| r.sublayer == s) {
                any_branch |= run.branch.is_some();
                branches.push(run.branch.unwrap_or_else(|| run.residual.clone()));
                residuals.push(run.residual);
            }
            let branch =
                any_branch.then(|| Tensor::cat(x.iter().cloned().chain(branches).collect(), 0));
            if !residuals.is_empty() {
                x = Some(Tensor::cat(x.into_iter().chain(residuals).collect(), 0));
            }
            let Some(h) = x.take() else { continue };
            if s == 2 * layers {
                // The final norm reads the branch; there is no skip after it.
                x = Some(branch.unwrap_or(h));
                break;
            }
            let input = branch.unwrap_or_else(|| h.clone());
            let block = &self.model.layers[s / 2];
            let out = if s % 2 == 0 {
                block.attention_branch(input, &self.rope, &mask, s / 2)
            } else {
                block.mlp_branch(input)
            };
            x = Some(h + out);
        }
        let x = x.expect("at least one run");
        let index: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let index =
            Tensor::<B, 1, Int>::from_data(TensorData::new(index, [positions.len()]), &device);
        self.unembed(x.select(1, index))
    }
}
