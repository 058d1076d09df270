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

/// Rank, logit and top five of `target` in one row of logits, in one pass (ties: the lower id
/// first).
pub fn read(after: String, logits: &[f32], target: u32) -> LensEntry {
    const K: usize = 5;
    let target_logit = logits[target as usize];
    let mut target_rank = 1;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(K + 1);
    for (i, &l) in logits.iter().enumerate() {
        if l > target_logit {
            target_rank += 1;
        }
        if top.len() < K || l > top[top.len() - 1].1 {
            let at = top.iter().position(|&(_, t)| t < l).unwrap_or(top.len());
            top.insert(at, (i as u32, l));
            top.truncate(K);
        }
    }
    LensEntry {
        after,
        target_rank,
        target_logit,
        top,
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
        // Ties keep the lower id first; fewer than five tokens give them all.
        let e = read("x".into(), &[1.0, 2.0, 2.0, 1.0], 3);
        assert_eq!(e.target_rank, 3);
        assert_eq!(e.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0, 3]);
    }
}
