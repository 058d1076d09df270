//! Next-token prediction: load a model on the chosen backend and rank the vocabulary at the
//! last position.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use serde::Serialize;

use crate::backends::{self, BackendJob, BackendKind, Precision, Selection};
use crate::memory;
use crate::model::load::WeightSource;
use crate::model::{ModelError, Qwen2Config, Qwen2ForCausalLM};
use crate::progress::Progress;
use crate::source::{Format, ModelFiles};

/// Loads the model in `files` onto `device` for the backend `selection` names, reporting each
/// layer to `progress`.
pub fn load_model<B: Backend>(
    files: &ModelFiles,
    config: &Qwen2Config,
    selection: &Selection,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Qwen2ForCausalLM<B>, ModelError> {
    // burn-flex keeps the host bytes it is given, so it can read the weights in place; a GPU
    // backend copies them onto its device, from the map rather than from a copy of it.
    let in_place = selection.kind == BackendKind::Flex || selection.device != "cpu";
    let source = files.weights(in_place)?;
    // On the CPU a GGUF file's blocks are decoded into memory of the process's own, and so is
    // every tensor on a backend that does not read them in place: refused here, in one line,
    // rather than by the out-of-memory killer halfway through.
    if selection.device == "cpu" && (files.format == Format::Gguf || !in_place) {
        check_memory(files, source.as_ref(), selection)?;
    }
    progress.start("loading weights", Some(config.num_hidden_layers as u64 + 2));
    let model =
        Qwen2ForCausalLM::load_with_progress(config, source.as_ref(), device, &mut |done, _| {
            progress.set(done as u64)
        });
    progress.finish();
    model
}

/// Fails with one line if `source`'s tensors, held in `selection`'s precision, would not fit
/// in the memory this machine has available.
fn check_memory(
    files: &ModelFiles,
    source: &dyn WeightSource,
    selection: &Selection,
) -> Result<(), ModelError> {
    let bytes = if selection.dtype == Precision::F32 {
        4
    } else {
        2
    };
    let dtype = selection.dtype.name();
    let gguf = files.format == Format::Gguf;
    let how = match gguf {
        true => format!("once decoded to {dtype}"),
        false => format!("in {dtype} on {}", selection.kind),
    };
    let instead = match (gguf, selection.dtype) {
        (true, Precision::F32) if selection.kind == BackendKind::Flex => {
            "--dtype bf16 needs about half (with scores less exact than f32's)"
        }
        (false, _) if BackendKind::Flex.is_compiled() => {
            "the flex backend (--backend flex) reads the folder's tensors in place"
        }
        _ => "",
    };
    memory::check(
        &files.path,
        memory::weight_bytes(source, bytes),
        memory::available_bytes(),
        &how,
        instead,
    )
    .map_err(ModelError::Source)
}

/// Token ids as a `[1, seq]` tensor.
pub fn ids_tensor<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let values: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(values, [1, ids.len()]), device)
}

/// Runs the model on `ids` and returns the logits at the last position.
struct LastLogits<'a> {
    files: &'a ModelFiles,
    config: &'a Qwen2Config,
    ids: &'a [u32],
    progress: &'a mut dyn Progress,
}

impl BackendJob for LastLogits<'_> {
    type Output = Result<Vec<f32>, ModelError>;

    fn run<B: Backend>(self, device: B::Device, selection: &Selection) -> Self::Output {
        let model = load_model::<B>(self.files, self.config, selection, &device, self.progress)?;
        let logits = model.forward_last(ids_tensor::<B>(self.ids, &device));
        logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Source(format!("cannot read the logits back: {e:?}")))
    }
}

/// The logits at the last position of `ids`, on the selected backend.
pub fn last_logits(
    selection: &Selection,
    files: &ModelFiles,
    config: &Qwen2Config,
    ids: &[u32],
    progress: &mut dyn Progress,
) -> Result<Vec<f32>, ModelError> {
    backends::run(
        selection,
        LastLogits {
            files,
            config,
            ids,
            progress,
        },
    )
}

/// One candidate next token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopToken {
    /// Token id.
    pub id: u32,
    /// The token's text.
    pub token: String,
    /// Its logit.
    pub logit: f32,
    /// Its probability (softmax over the whole vocabulary).
    pub prob: f32,
}

/// The `k` highest logits, best first, with softmax probabilities (computed in f64).
/// Ties keep the lower id first, as `torch.topk` on CPU does.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let denom: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| {
            let prob = ((logits[i] as f64 - max).exp() / denom) as f32;
            (i as u32, logits[i], prob)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_normalises() {
        let logits = [0.0f32, 2.0, 1.0, 2.0];
        let top = top_k(&logits, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2]);
        let total: f64 = top_k(&logits, 4).iter().map(|t| t.2 as f64).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let e = std::f64::consts::E;
        let expected = e * e / (1.0 + 2.0 * e * e + e);
        assert!((top[0].2 as f64 - expected).abs() < 1e-6);
    }
}
