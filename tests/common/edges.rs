//! The edge and head check shared by the f32 and f64 test binaries.

use attrib::attribution::{attribute_loaded, Objective};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;

use super::reference;

/// Edges and head effects are signed sums over positions and dims that cancel: a tiny edge is
/// the difference of large terms, and float32 rounding (in PyTorch and here, in different
/// orders, through random models that amplify it over long prompts) leaves an absolute error
/// that scales with the largest edge of the prompt, not with the small edge itself. So they
/// are compared at 1e-4 of the value plus `tolerance` times the largest magnitude among their
/// peers.
fn close(got: f64, want: f64, peers: f64, tolerance: f64) -> bool {
    (got - want).abs() <= 1e-4 * want.abs() + tolerance * peers
}

/// Checks every case of fixture `name`; returns how many of its layers' head scores came
/// from the contributions o_proj's product noted, and how many cases × layers had prompts
/// short enough for it to note them (the streaming kernels' rows, at most
/// `HEAD_PARTS_UP_TO`).
pub fn check_edges_and_heads<B: Backend>(name: &str, tolerance: f64) -> (usize, usize) {
    let model = super::load_fixture::<Autodiff<B>>(name);
    let layers = &model.model.layers;
    let used = || -> usize {
        layers
            .iter()
            .map(|l| l.self_attn.head_parts().times_used())
            .sum()
    };
    let before = used();
    let mut short = 0;
    let noted_up_to =
        attrib::model::matmul::MAX_FEW_ROWS.min(attrib::attribution::HEAD_PARTS_UP_TO);
    for case in &reference(name).cases {
        if case.input_ids.len() <= noted_up_to {
            short += layers.len();
        }
        let out =
            attribute_loaded(&model, &case.input_ids, Objective::default(), &mut |_| {}).unwrap();
        let label = format!("{name} {:?}", case.prompt);
        assert_eq!(out.edges.len(), case.edges.len(), "{label}: edge count");
        let largest = case.edges.iter().map(|e| e.score.abs()).fold(0.0, f64::max);
        for (got, want) in out.edges.iter().zip(&case.edges) {
            assert_eq!(
                (&got.source, &got.target),
                (&want.source, &want.target),
                "{label}"
            );
            assert!(
                close(got.score, want.score, largest, tolerance),
                "{label} {}→{}: {} vs {}",
                want.source,
                want.target,
                got.score,
                want.score
            );
            for (a, b) in got.per_position.iter().zip(&want.per_position) {
                assert!(
                    close(*a, *b, largest, tolerance),
                    "{label} {}→{} per position: {a} vs {b}",
                    want.source,
                    want.target
                );
            }
        }
        assert_eq!(out.heads.len(), case.heads.len(), "{label}: head count");
        let largest = case
            .heads
            .iter()
            .map(|h| h.score.max(h.signed.abs()))
            .fold(0.0, f64::max);
        for (got, want) in out.heads.iter().zip(&case.heads) {
            assert_eq!(got.id(), want.id);
            assert_eq!((got.layer, got.head), (want.layer, want.head));
            assert!(
                close(got.signed, want.signed, largest, tolerance),
                "{label} {}: signed {} vs {}",
                want.id,
                got.signed,
                want.signed
            );
            assert!(
                close(got.score, want.score, largest, tolerance),
                "{label} {}: score {} vs {}",
                want.id,
                got.score,
                want.score
            );
            for (a, b) in got.per_position.iter().zip(&want.per_position) {
                assert!(
                    close(*a, *b, largest, tolerance),
                    "{label} {} per position: {a} vs {b}",
                    want.id
                );
            }
        }
    }
    (used() - before, short)
}
