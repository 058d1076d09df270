//! Gradient checkpointing (`--checkpoint`): attributing layer by layer, each layer recomputed
//! from its saved input in the backward, gives the same nodes, edges, heads, head edges and
//! lens as one autodiff graph over the whole model.

mod common;

use attrib::attribution::{attribute_loaded_with, Objective, Options, Outcome};
use common::fixture_model;

fn close(what: &str, got: f64, want: f64, scale: f64) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs() + 1e-6 * scale,
        "{what}: {got} vs {want}"
    );
}

fn same(a: &Outcome, b: &Outcome) {
    assert_eq!(
        (a.predicted_id, a.target_id, a.taps),
        (b.predicted_id, b.target_id, b.taps)
    );
    close("value", a.value, b.value, 0.0);
    let scale = b.nodes.iter().map(|(_, n)| n.score).fold(0.0, f64::max);
    assert_eq!(a.nodes.len(), b.nodes.len());
    for ((sa, na), (sb, nb)) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!(sa, sb);
        close(&format!("{sa} score"), na.score, nb.score, scale);
        close(&format!("{sa} signed"), na.signed, nb.signed, scale);
        for (x, y) in na.per_position.iter().zip(&nb.per_position) {
            close(&format!("{sa} per position"), *x, *y, scale);
        }
    }
    for (list_a, list_b) in [(&a.edges, &b.edges), (&a.head_edges, &b.head_edges)] {
        assert_eq!(list_a.len(), list_b.len());
        for (ea, eb) in list_a.iter().zip(list_b) {
            assert_eq!((&ea.source, &ea.target), (&eb.source, &eb.target));
            close(
                &format!("{} → {}", ea.source, ea.target),
                ea.score,
                eb.score,
                scale,
            );
        }
    }
    assert_eq!(a.heads.len(), b.heads.len());
    for (ha, hb) in a.heads.iter().zip(&b.heads) {
        close(&ha.id(), ha.signed, hb.signed, scale);
        close(&ha.id(), ha.score, hb.score, scale);
    }
    assert_eq!(a.lens.len(), b.lens.len());
    for (la, lb) in a.lens.iter().zip(&b.lens) {
        assert_eq!(
            (la.target_rank, &la.top.len()),
            (lb.target_rank, &lb.top.len())
        );
        close(
            &la.after,
            la.target_logit as f64,
            lb.target_logit as f64,
            1.0,
        );
    }
}

#[test]
fn layer_by_layer_equals_the_whole_graph() {
    for name in ["tiny-tied", "tiny-untied"] {
        let model = fixture_model(name);
        for (ids, nodes_only) in [
            (vec![301u32, 314, 279, 440, 339, 352, 283], false),
            (vec![72, 101, 108, 108, 111], false),
            (vec![72, 101, 108, 108, 111, 44, 32, 119], true),
        ] {
            let run = |checkpoint| {
                let options = Options {
                    head_edges: !nodes_only,
                    lens: !nodes_only,
                    nodes_only,
                    checkpoint: Some(checkpoint),
                    ..Options::default()
                };
                attribute_loaded_with(&model, &ids, Objective::default(), options, &mut |_| {})
                    .unwrap()
            };
            let (whole, layered) = (run(false), run(true));
            assert!(!whole.nodes.is_empty());
            same(&layered, &whole);
            // As the binary runs (a thread of rayon's pool), the lens runs beside the backward
            // pass over the whole graph; by layers, or on a thread outside a pool, after it.
            let pooled = common::in_a_pool(|| run(false));
            same(&pooled, &whole);
            let lens = |o: &Outcome| (o.timings.lens_s > 0.0, o.timings.lens_beside_backward);
            assert_eq!(lens(&pooled), (!nodes_only, !nodes_only), "{name}");
            assert_eq!(lens(&whole), (!nodes_only, false), "{name}");
            assert_eq!(lens(&layered), (!nodes_only, false), "{name}");
        }
    }
}

#[test]
fn eap_ig_by_layers_equals_the_whole_graph() {
    let model = fixture_model("tiny-untied");
    let ids = [301u32, 314, 279, 440, 339, 352, 283];
    let corrupt = vec![301u32, 314, 279, 442, 79, 380, 283];
    let run = |checkpoint| {
        let options = Options {
            ig_steps: Some(4),
            corrupt: Some(corrupt.clone()),
            checkpoint: Some(checkpoint),
            ..Options::default()
        };
        attribute_loaded_with(&model, &ids, Objective::default(), options, &mut |_| {}).unwrap()
    };
    let (whole, layered) = (run(false), run(true));
    assert_eq!(whole.baseline_value, layered.baseline_value);
    same(&layered, &whole);
}
