//! Grad×Activation node scores equal the PyTorch reference (`scripts/reference.py`: forward
//! hooks on `embed_tokens`, `self_attn` and `mlp`), and the tap gradients agree with finite
//! differences.

mod common;

use attrib::attribution::{attribute_loaded, is_node, Objective, Target};
use attrib::model::Qwen2ForCausalLM;
use burn::backend::Autodiff;
use common::{reference, RefNode, TestBackend};

const RELATIVE: f64 = 1e-4;

fn load(name: &str) -> Qwen2ForCausalLM<Autodiff<TestBackend>> {
    common::fixture_model(name)
}

/// |a - b| within `RELATIVE` of `scale` (the reference value, or a larger natural scale for
/// sums that cancel).
fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= RELATIVE * scale.abs().max(1e-12)
}

fn check(name: &str) {
    let model = load(name);
    for case in &reference(name).cases {
        let out =
            attribute_loaded(&model, &case.input_ids, Objective::default(), &mut |_| {}).unwrap();
        let label = format!("{name} {:?}", case.prompt);
        assert_eq!(out.predicted_id, case.top5[0].id, "{label}");
        assert_eq!(out.nodes.len(), 2 * model.config.num_hidden_layers + 1);
        assert_eq!(out.nodes.len(), case.nodes.len());
        for ((site, got), want) in out.nodes.iter().zip(&case.nodes) {
            let RefNode {
                id,
                score,
                signed,
                per_position,
            } = want;
            assert_eq!(&site.to_string(), id, "{label}");
            assert!(
                close(got.score, *score, *score),
                "{label} {id} score {} vs {score}",
                got.score
            );
            // The signed sum can cancel; its rounding error scales with the score.
            assert!(
                close(got.signed, *signed, signed.abs().max(*score)),
                "{label} {id} signed {} vs {signed}",
                got.signed
            );
            assert_eq!(got.per_position.len(), per_position.len());
            for (p, (a, b)) in got.per_position.iter().zip(per_position).enumerate() {
                assert!(
                    close(*a, *b, b.max(*score * 1e-3)),
                    "{label} {id} position {p}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn node_scores_equal_the_reference_tied() {
    check("tiny-tied");
}

#[test]
fn node_scores_equal_the_reference_untied() {
    check("tiny-untied");
}

#[test]
fn every_site_is_tapped() {
    let model = load("tiny-tied");
    let out = attribute_loaded(
        &model,
        &[1, 2, 3],
        Objective {
            token: Target::Id(7),
            ..Objective::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(out.taps, attrib::model::Site::all(3).len());
    assert_eq!(out.target_id, 7);
    assert!(out.nodes.iter().all(|(s, _)| is_node(*s)));
}
