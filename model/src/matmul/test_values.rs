//! Inputs and comparisons shared by the kernels' tests.

/// Values whose products and sums round: a spread of magnitudes and signs.
pub fn value(i: usize) -> f32 {
    let v = ((i * 7919 % 1013) as f32 - 506.0) / 97.0;
    v * (1.0 + (i % 7) as f32 * 0.37).powi((i % 5) as i32)
}

/// The bits of a slice.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
