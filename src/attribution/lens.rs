//! The logit lens: the final norm and LM head applied to the residual stream after the
//! embeddings and after every sublayer, at the target position.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::to_vec;
use crate::model::{ModelError, Qwen2ForCausalLM, Site};

/// What the unembedded residual stream predicts after one node.
#[derive(Debug, Clone, PartialEq)]
pub struct LensEntry {
    /// The node after which the residual stream is read (`embeddings`, `L{i}_Attn`, …).
    pub after: String,
    /// The target token's rank (1 = the top token).
    pub target_rank: usize,
    /// The target token's logit there.
    pub target_logit: f32,
    /// The five highest `(token id, logit)`.
    pub top: Vec<(u32, f32)>,
}

/// Residual-stream vectors at one position: the running sums of the node outputs (pathway
/// order), added in the model's own order so that the last equals the final residual stream
/// bit for bit.
pub fn running_sums(rows: &[&[f32]]) -> Vec<Vec<f32>> {
    let mut sums: Vec<Vec<f32>> = Vec::with_capacity(rows.len());
    for row in rows {
        let next = match sums.last() {
            Some(prev) => prev.iter().zip(row.iter()).map(|(a, b)| a + b).collect(),
            None => row.to_vec(),
        };
        sums.push(next);
    }
    sums
}

/// Rank, logit and top five of a target in one row of logits (ties: the lower id first), read
/// in slices of the vocabulary, in any order, once the target's own logit is known.
#[derive(Debug, Clone)]
pub struct LensRow {
    target_logit: f32,
    above: usize,
    top: Vec<(u32, f32)>,
}

/// The highest tokens each lens entry lists.
pub const TOP: usize = 5;

impl LensRow {
    /// The five highest kept.
    const K: usize = TOP;

    /// An empty row for a target whose logit is `target_logit`.
    pub fn new(target_logit: f32) -> Self {
        Self {
            target_logit,
            above: 0,
            top: Vec::with_capacity(Self::K + 1),
        }
    }

    /// A row already ranked: `above` logits exceed the target's, and the highest lie among
    /// `candidates` (id, logit), in any order.
    pub fn ranked(target_logit: f32, above: usize, candidates: &[(u32, f32)]) -> Self {
        let mut row = Self::new(target_logit);
        row.above = above;
        for &(id, l) in candidates {
            row.offer(id, l);
        }
        row
    }

    /// The logits of ids `first, first + 1, …`.
    pub fn add(&mut self, first: u32, logits: &[f32]) {
        // Two passes: the count above the target (vectorised), then one comparison per
        // entry that rarely passes, for the few that can reach the top five (at or above the
        // fifth's logit once five are kept; `offer` settles a tie by id).
        let target = self.target_logit;
        self.above += logits.iter().filter(|&&l| l > target).count();
        for (id, &l) in (first..).zip(logits) {
            if self.top.len() < Self::K || l >= self.top[Self::K - 1].1 {
                self.offer(id, l);
            }
        }
    }

    /// Keeps `(id, l)` if it ranks among the five highest so far.
    fn offer(&mut self, id: u32, l: f32) {
        let top = &mut self.top;
        // Whether (id, l) ranks before an entry: a higher logit, or a tie and a lower id.
        let before = |&(i, t): &(u32, f32)| t < l || (t == l && i > id);
        if top.len() < Self::K || before(&top[top.len() - 1]) {
            let at = top.iter().position(before).unwrap_or(top.len());
            top.insert(at, (id, l));
            top.truncate(Self::K);
        }
    }

    /// The entry for the node `after`.
    pub fn finish(self, after: String) -> LensEntry {
        LensEntry {
            after,
            target_rank: self.above + 1,
            target_logit: self.target_logit,
            top: self.top,
        }
    }
}

/// Vocabulary entries per slice of the logit lens's product: 56 rows of logits for 16,384
/// entries are 3.7 MB, reused from one slice to the next.
const LENS_SLICE: usize = 1 << 14;

/// The final norm and LM head on the residual stream after each node, at `position`.
///
/// `logits` are the model's own logits there (from the forward pass). After the last
/// sublayer the residual stream is the final one, so that row's lens is those logits,
/// taken as they are: the same bits on every backend and CPU, where a product of several
/// dozen rows may sum in another order than the model's head does for one.
pub(super) fn logit_lens<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    nodes: &[(Site, &[f32])],
    position: usize,
    seq: usize,
    target_id: u32,
    logits: &[f32],
) -> Result<Vec<LensEntry>, ModelError> {
    let hidden = model.config.hidden_size;
    let vocab = model.config.vocab_size;
    let layers = model.config.num_hidden_layers;
    let last_is_final = layers > 0
        && logits.len() == vocab
        && nodes
            .last()
            .is_some_and(|(site, _)| *site == Site::MlpOut(layers - 1));
    debug_assert!(nodes.iter().all(|(_, a)| a.len() == seq * hidden));
    // The rows the head multiplies: all but the final one where the logits stand for it.
    let rows: Vec<&[f32]> = nodes[..nodes.len() - usize::from(last_is_final)]
        .iter()
        .map(|(_, a)| &a[position * hidden..(position + 1) * hidden])
        .collect();
    let sums = running_sums(&rows);
    let mut read = if sums.is_empty() {
        Vec::new()
    } else {
        let flat: Vec<f32> = sums.concat();
        let device = model.model.embed_tokens.weight.val().device();
        let residual = Tensor::<Autodiff<B>, 3>::from_data(
            TensorData::new(flat, [1, sums.len(), hidden]),
            &device,
        );
        let normed = model
            .model
            .norm
            .forward(residual)
            .reshape([sums.len(), hidden]);
        // On CPUs with AVX-512 BF16 the ranks come from a bf16 screen of the product with
        // exact values where it cannot decide; elsewhere from the logits, a slice of the
        // vocabulary at a time.
        match model.head_ranks(normed.clone(), target_id, TOP) {
            Some(ranked) => ranked
                .into_iter()
                .map(|r| LensRow::ranked(r.target_logit, r.above, &r.candidates))
                .collect(),
            None => sliced_lens(model, normed, vocab, target_id)?,
        }
    };
    if last_is_final {
        let mut row = LensRow::new(logits[target_id as usize]);
        row.add(0, logits);
        read.push(row);
    }
    Ok(nodes
        .iter()
        .zip(read)
        .map(|((site, _), row)| row.finish(site.to_string()))
        .collect())
}

/// The lens's rows from the logits, a slice of the vocabulary at a time, the target's slice
/// first (its logit decides the ranks).
fn sliced_lens<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    normed: Tensor<Autodiff<B>, 2>,
    vocab: usize,
    target_id: u32,
) -> Result<Vec<LensRow>, ModelError> {
    let target = target_id as usize;
    let first = target / LENS_SLICE;
    let order =
        std::iter::once(first).chain((0..vocab.div_ceil(LENS_SLICE)).filter(|&s| s != first));
    let mut read: Vec<LensRow> = Vec::new();
    for slice in order {
        let ids = slice * LENS_SLICE..((slice + 1) * LENS_SLICE).min(vocab);
        let logits = to_vec(model.head_rows(normed.clone(), ids.clone()).inner())?;
        let logits = logits.chunks_exact(ids.len());
        if read.is_empty() {
            let at = target - ids.start;
            read = logits.clone().map(|row| LensRow::new(row[at])).collect();
        }
        for (row, logits) in read.iter_mut().zip(logits) {
            row.add(ids.start as u32, logits);
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole row in one slice.
    fn read(after: String, logits: &[f32], target: u32) -> LensEntry {
        let mut row = LensRow::new(logits[target as usize]);
        row.add(0, logits);
        row.finish(after)
    }

    #[test]
    fn running_sums_and_ranks() {
        let sums = running_sums(&[&[1.0, 2.0], &[0.5, 0.5], &[-1.0, 0.0]]);
        assert_eq!(sums, vec![vec![1.0, 2.0], vec![1.5, 2.5], vec![0.5, 2.5]]);
        let e = read("x".into(), &[0.1, 3.0, 2.0, -1.0, 5.0, 0.0, 2.5], 2);
        assert_eq!(e.target_rank, 4);
        assert_eq!(
            e.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            [4, 1, 6, 2, 0]
        );
        // Ties keep the lower id first; fewer than five tokens give them all.
        let e = read("x".into(), &[1.0, 2.0, 2.0, 1.0], 3);
        assert_eq!(e.target_rank, 3);
        assert_eq!(e.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0, 3]);
    }

    #[test]
    fn a_row_read_in_slices_in_any_order_equals_one_read() {
        let logits: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 - 3.0).collect();
        for target in [0, 13, 39] {
            let whole = read("x".into(), &logits, target);
            // Slices of 9, the target's first, then the rest backwards: ties (many here) must
            // still keep the lower id first.
            let slices: Vec<(usize, &[f32])> = logits.chunks(9).enumerate().collect();
            let first = target as usize / 9;
            let mut row = LensRow::new(logits[target as usize]);
            row.add((first * 9) as u32, slices[first].1);
            for &(i, slice) in slices.iter().rev().filter(|(i, _)| *i != first) {
                row.add((i * 9) as u32, slice);
            }
            assert_eq!(row.finish("x".into()), whole, "target {target}");
        }
    }
}
