//! Grad×Activation scores, reduced on the host in f64 so that sums over millions of terms do
//! not lose the digits the comparison with the reference needs.

/// The three reductions of `g ⊙ a` that a node carries.
#[derive(Debug, Clone, PartialEq)]
pub struct GradTimesActivation {
    /// `‖g ⊙ a‖₂` over everything.
    pub score: f64,
    /// `Σ g ⊙ a`.
    pub signed: f64,
    /// `‖g ⊙ a‖₂` over the last (hidden) dim, per position.
    pub per_position: Vec<f64>,
}

/// Reduces `g ⊙ a` for `[seq, width]` row-major data (batch 1).
pub fn grad_times_activation(grad: &[f32], activation: &[f32], seq: usize) -> GradTimesActivation {
    assert_eq!(
        grad.len(),
        activation.len(),
        "gradient and activation differ in size"
    );
    assert!(
        seq > 0 && grad.len().is_multiple_of(seq),
        "data is not [seq, width]"
    );
    let width = grad.len() / seq;
    let mut signed = 0.0f64;
    let mut per_position = Vec::with_capacity(seq);
    for (g_row, a_row) in grad.chunks_exact(width).zip(activation.chunks_exact(width)) {
        let mut squares = 0.0f64;
        for (&g, &a) in g_row.iter().zip(a_row) {
            let p = g as f64 * a as f64;
            signed += p;
            squares += p * p;
        }
        per_position.push(squares);
    }
    let score = per_position.iter().sum::<f64>().sqrt();
    for s in &mut per_position {
        *s = s.sqrt();
    }
    GradTimesActivation {
        score,
        signed,
        per_position,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_by_hand() {
        // seq 2, width 2: g ⊙ a = [[1·3, 2·-1], [0·5, -2·2]] = [[3, -2], [0, -4]]
        let r = grad_times_activation(&[1.0, 2.0, 0.0, -2.0], &[3.0, -1.0, 5.0, 2.0], 2);
        assert_eq!(r.signed, -3.0);
        assert!((r.score - 29f64.sqrt()).abs() < 1e-12);
        assert!((r.per_position[0] - 13f64.sqrt()).abs() < 1e-12);
        assert!((r.per_position[1] - 4.0).abs() < 1e-12);
    }
}
