//! EAP-IG: the gradients at every tapped site averaged over `M` points on the straight line from
//! a baseline input to the clean one, so that `(a − a') ⊙ ḡ` scores a node, and
//! `(a_u − a'_u) ⊙ ḡ_in(v)` an edge, by how much of the change from baseline to clean passes
//! through it (Hanna, Pezzelle and Belinkov, 2024).
//!
//! The path runs through the embeddings: point k (k = 1..M) feeds `x' + (k/M)·(x − x')` in place
//! of the token embedding, with `x` the clean prompt's embeddings and `x'` the corrupted
//! prompt's (`--corrupt`) or zeros. Point M is the clean input, whose gradients the plain
//! attribution already has, so `M = 1` is plain EAP (attribution patching). The other points
//! run batched along the batch dimension, several per forward and backward.

use std::collections::HashMap;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::verify::Record;
use super::{pass, to_vec, Objective};
use crate::model::{ModelError, Qwen2ForCausalLM, Site};
use crate::predict::ids_tensor;

/// What the interpolation gives the scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Integrated {
    /// ḡ: the objective's gradient at every tapped site, averaged over the M points,
    /// `[seq, width]` row-major.
    pub mean_gradients: HashMap<Site, Vec<f32>>,
    /// Every site's activation on the baseline input, `[seq, width]` row-major.
    pub baseline: HashMap<Site, Vec<f32>>,
    /// The objective on the baseline input.
    pub baseline_value: f64,
}

/// Token-rows per batched forward and backward: enough to read the weights once for several
/// points, few enough to keep the saved activations small.
fn rows_per_batch(seq: usize) -> usize {
    (512 / seq.max(1)).clamp(1, 32)
}

/// The baseline run and the M − 1 interpolation points below the clean input.
///
/// `clean_embeddings` is the clean prompt's `Embed` activation and `clean_gradients` the plain
/// attribution's gradients at every tapped site (the point k = M); the taps of the other points
/// are those `tap` selects (every site when `None`), run layer by layer when `by_layers` (see
/// [`pass`]).
#[allow(clippy::too_many_arguments)]
pub fn integrate<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    ids: &[u32],
    objective: Objective,
    target_id: u32,
    steps: usize,
    corrupt: Option<&[u32]>,
    clean_embeddings: &[f32],
    clean_gradients: &HashMap<Site, Vec<f32>>,
    tap: Option<fn(Site) -> bool>,
    by_layers: bool,
) -> Result<Integrated, ModelError> {
    let device = model.model.embed_tokens.weight.val().device();
    let seq = ids.len();
    let position = objective.position_in(seq);
    let hidden = model.config.hidden_size;
    let vocab = model.config.vocab_size;
    if steps == 0 {
        return Err(ModelError::Source("--ig-steps must be at least 1".into()));
    }
    if corrupt.is_some_and(|c| c.len() != seq) {
        return Err(ModelError::Source(format!(
            "the corrupted prompt must have the prompt's {seq} tokens"
        )));
    }

    // The baseline: the corrupted prompt, or zero embeddings.
    let mut probe = Record {
        keep: |_| true,
        zero_embeddings: corrupt.is_none(),
        seen: HashMap::new(),
    };
    let logits = model.forward(
        ids_tensor(corrupt.unwrap_or(ids), &device),
        &[position],
        &mut probe,
    );
    let baseline_value =
        to_vec(objective.value(logits.reshape([vocab]), target_id).inner())?[0] as f64;
    let mut baseline = HashMap::with_capacity(probe.seen.len());
    for (site, t) in probe.seen {
        baseline.insert(site, to_vec(t.inner())?);
    }
    let base = &baseline[&Site::Embed];
    let difference: Vec<f32> = clean_embeddings
        .iter()
        .zip(base)
        .map(|(x, x0)| x - x0)
        .collect();

    // Sum of the gradients over k = 1..M, starting from the clean input's (k = M).
    let mut sums: HashMap<Site, Vec<f32>> = clean_gradients.clone();
    let points: Vec<usize> = (1..steps).collect();
    for chunk in points.chunks(rows_per_batch(seq)) {
        let rows = chunk.len();
        let mut embeds = Vec::with_capacity(rows * seq * hidden);
        for &k in chunk {
            let alpha = k as f32 / steps as f32;
            embeds.extend(base.iter().zip(&difference).map(|(x0, d)| x0 + alpha * d));
        }
        let embeds =
            Tensor::<B, 3>::from_data(TensorData::new(embeds, [rows, seq, hidden]), &device);
        let tapped = pass::embedded_rows(model, ids, embeds, objective, target_id, tap, by_layers)?;
        for t in tapped {
            let summed = to_vec(t.grad.sum_dim(0))?;
            let sum = sums.get_mut(&t.site).ok_or_else(|| {
                ModelError::Source(format!("no clean gradient at {} to integrate", t.site))
            })?;
            for (s, g) in sum.iter_mut().zip(summed) {
                *s += g;
            }
        }
    }
    let scale = 1.0 / steps as f32;
    for sum in sums.values_mut() {
        for s in sum.iter_mut() {
            *s *= scale;
        }
    }
    Ok(Integrated {
        mean_gradients: sums,
        baseline,
        baseline_value,
    })
}
