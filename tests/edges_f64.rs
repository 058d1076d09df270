//! Edges and heads against the PyTorch reference in f64, where rounding cannot hide a wrong
//! formula: within 1e-4 of each value plus 1e-5 of the prompt's largest edge. (A binary of its
//! own: burn-ndarray's f32 and f64 backends share one device, whose default dtype the first
//! one used sets.)

mod common;

use burn::backend::NdArray;
use common::edges::check_edges_and_heads;

#[test]
fn edges_and_heads_equal_the_reference_in_f64() {
    check_edges_and_heads::<NdArray<f64>>("tiny-tied", 1e-5);
    check_edges_and_heads::<NdArray<f64>>("tiny-untied", 1e-5);
}
