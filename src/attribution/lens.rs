//! The logit lens: the final norm and LM head applied to the residual stream after the
//! embeddings and after every sublayer, at the target position.

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

/// Rank, logit and top five of `target` in one row of logits.
pub fn read(after: String, logits: &[f32], target: u32) -> LensEntry {
    let target_logit = logits[target as usize];
    let target_rank = 1 + logits.iter().filter(|&&l| l > target_logit).count();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let k = 5.min(order.len());
    order.select_nth_unstable_by(k - 1, |&a, &b| {
        logits[b].total_cmp(&logits[a]).then(a.cmp(&b))
    });
    let mut top: Vec<usize> = order[..k].to_vec();
    top.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    LensEntry {
        after,
        target_rank,
        target_logit,
        top: top.into_iter().map(|i| (i as u32, logits[i])).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
