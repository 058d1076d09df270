//! Rotary position embedding, rotate-half form (as Hugging Face's Qwen2).
//!
//! burn's `RotaryEncoding` rotates interleaved pairs `(x0, x1), (x2, x3)…`; Qwen2 checkpoints
//! are trained with rotate-half, pairing `x_i` with `x_{i + d/2}`. Writing rotate-half here is a
//! few lines and keeps the q/k weights exactly as on disk.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::fused;

/// Cosine and sine tables for every position up to the model's maximum.
///
/// Not a module: it holds no parameters, only tables derived from the config, and is passed to
/// the attention layers by the model.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[max_positions, head_dim]`, the angles repeated for both halves.
    cos: Tensor<B, 2>,
    /// `[max_positions, head_dim]`.
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// Builds the tables for `head_dim`-wide heads, base `theta`, positions `0..max_positions`.
    ///
    /// The frequencies and angles are computed in f32 the way transformers does
    /// (`1 / theta^(2i/d)`, then `position · inv_freq`), so that long prompts round alike.
    pub fn new(head_dim: usize, theta: f64, max_positions: usize, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0f32 / (theta as f32).powf(exponent)
            })
            .collect();
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        let mut half_cos = Vec::with_capacity(half);
        let mut half_sin = Vec::with_capacity(half);
        for pos in 0..max_positions {
            half_cos.clear();
            half_sin.clear();
            for f in &inv_freq {
                let (s, c) = ((pos as f32 * f) as f64).sin_cos();
                half_cos.push(c as f32);
                half_sin.push(s as f32);
            }
            // Both halves of a head share the angles: computed once, written twice.
            for _ in 0..2 {
                cos.extend_from_slice(&half_cos);
                sin.extend_from_slice(&half_sin);
            }
        }
        let shape = [max_positions, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Splits queries or keys into heads and rotates them by their positions `0..seq`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, heads · head_dim]` (a projection's output)
    /// - output: `[batch, heads, seq, head_dim]`
    pub fn apply(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
        let seq = x.dims()[1];
        let cos = self.cos.clone().narrow(0, 0, seq);
        let sin = self.sin.clone().narrow(0, 0, seq);
        fused::rope_heads(x, heads, cos, sin)
    }

    /// The longest sequence the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn position_zero_is_identity_and_norms_are_kept() {
        let device = Default::default();
        let rope = Rope::<TestBackend>::new(8, 10000.0, 16, &device);
        let values: Vec<f32> = (0..2 * 3 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
        // Three positions of two heads of 8.
        let x = Tensor::<TestBackend, 3>::from_data(TensorData::new(values, [1, 3, 16]), &device);
        let y = rope.apply(x.clone(), 2);
        let x = x.reshape([1, 3, 2, 8]).swap_dims(1, 2);
        let first =
            |t: Tensor<TestBackend, 4>| t.narrow(2, 0, 1).into_data().to_vec::<f32>().unwrap();
        assert_eq!(first(x.clone()), first(y.clone()));
        // Rotation keeps the norm of each (x_i, x_{i+d/2}) pair, hence of each vector.
        let norms =
            |t: Tensor<TestBackend, 4>| t.square().sum_dim(3).into_data().to_vec::<f32>().unwrap();
        for (a, b) in norms(x).iter().zip(norms(y)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn rotate_half_pairs_i_with_i_plus_half() {
        let device = Default::default();
        let rope = Rope::<TestBackend>::new(4, 1.0, 4, &device);
        // theta = 1: every frequency is 1, so position 1 rotates each pair by 1 radian.
        let x = Tensor::<TestBackend, 3>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1, 2, 4]),
            &device,
        );
        let y = rope.apply(x, 1).into_data().to_vec::<f32>().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        let expected = [c, 0.0, s, 0.0];
        for (a, b) in y[4..].iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
    }
}
