//! Edges, heads, per-position scores, the logit lens and the other targets, from the same
//! single forward and backward as the node scores: against the PyTorch reference
//! (`scripts/reference.py`) and against invariants.

mod common;

use attrib::attribution::{attribute_loaded, Metric, Objective, Outcome, Target};
use attrib::model::{NoProbe, Qwen2ForCausalLM};
use attrib::predict::ids_tensor;
use burn::backend::Autodiff;
use common::edges::check_edges_and_heads;
use common::{reference, TestBackend};

type Model = Qwen2ForCausalLM<Autodiff<TestBackend>>;

fn load(name: &str) -> Model {
    common::fixture_model(name)
}

fn run(model: &Model, ids: &[u32], objective: Objective) -> Outcome {
    attribute_loaded(model, ids, objective, &mut |_| {}).unwrap()
}

/// In f32, edges that are differences of large terms carry rounding noise up to about 1e-4 of
/// the prompt's largest edge (embeddings→L0_Attn is one: RMSNorm is scale-invariant, so it is
/// only the effect of the norm's epsilon). `tests/edges_f64.rs` checks the same numbers in f64
/// at 1e-5 of the largest edge.
const F32_PEERS: f64 = 2e-4;

#[test]
fn edges_and_heads_equal_the_reference_tied() {
    check_edges_and_heads::<TestBackend>("tiny-tied", F32_PEERS);
}

#[test]
fn edges_and_heads_equal_the_reference_untied() {
    check_edges_and_heads::<TestBackend>("tiny-untied", F32_PEERS);
}

#[test]
fn a_layers_heads_sum_to_its_attention_node_and_edges_out_of_a_node_to_its_signed_sum() {
    let model = load("tiny-tied");
    let case = &reference("tiny-tied").cases[3];
    let out = run(&model, &case.input_ids, Objective::default());
    for (site, node) in &out.nodes {
        let id = site.to_string();
        if let Some(layer) = id.strip_prefix('L').and_then(|r| r.strip_suffix("_Attn")) {
            let layer: usize = layer.parse().unwrap();
            let heads: f64 = out
                .heads
                .iter()
                .filter(|h| h.layer == layer)
                .map(|h| h.signed)
                .sum();
            assert!(
                (heads - node.signed).abs() <= 1e-4 * node.signed.abs().max(node.score),
                "{id}: heads {heads} vs {}",
                node.signed
            );
        }
        // The residual stream is linear: what leaves u through every reader is u's own effect.
        let out_of: f64 = out
            .edges
            .iter()
            .filter(|e| e.source == id)
            .map(|e| e.score)
            .sum();
        assert!(
            (out_of - node.signed).abs() <= 1e-4 * node.score.max(node.signed.abs()),
            "{id}: edges {out_of} vs {}",
            node.signed
        );
    }
}

/// The lens after the last sublayer is the model's own prediction: its top five and the
/// target's logit equal the forward pass's logits bit for bit, on backend `B`.
fn the_last_lens_row_is_the_prediction_on<B: burn::tensor::backend::Backend>() {
    let model = common::load_fixture::<Autodiff<B>>("tiny-untied");
    for case in reference("tiny-untied").cases.iter().take(4) {
        let out = common::run_with_lens(&model, &case.input_ids);
        let plain = attribute_loaded(&model, &case.input_ids, Objective::default(), &mut |_| {});
        assert!(plain.unwrap().lens.is_empty());
        assert_eq!(out.lens.len(), out.nodes.len());
        assert_eq!(out.lens[0].after, "embeddings");
        let last = out.lens.last().unwrap();
        let (logits, top) = common::last_logits(&model, &case.input_ids);
        assert_eq!(last.top, top, "{:?}", case.prompt);
        assert_eq!(last.target_logit, logits[out.target_id as usize]);
        assert_eq!(last.target_rank, 1);
    }
}

/// Every row of the logit lens equals the reference's (the final norm and LM head applied in
/// PyTorch to the residual stream after each node), on backend `B`, within 1e-5
/// ([`common::check_lens`]).
fn the_lens_equals_the_reference_on<B: burn::tensor::backend::Backend>(name: &str) {
    let model = common::load_fixture::<Autodiff<B>>(name);
    for case in &reference(name).cases {
        let out = common::run_with_lens(&model, &case.input_ids);
        common::check_lens(
            &format!("{name} {:?}", case.prompt),
            &out.lens,
            &case.lens,
            1e-5,
        );
    }
}

#[test]
fn the_lens_equals_the_reference() {
    the_lens_equals_the_reference_on::<TestBackend>("tiny-tied");
    the_lens_equals_the_reference_on::<TestBackend>("tiny-untied");
}

#[test]
fn the_last_lens_row_is_the_models_own_prediction() {
    the_last_lens_row_is_the_prediction_on::<TestBackend>();
}

/// flex ranks the lens with its own kernels (a bf16 screen on CPUs with AVX-512 BF16) and
/// computes heads from the contributions o_proj's product noted (with AVX-512, at a few
/// tokens) or in one pass over o_proj: the same checks as on the test backend.
#[cfg(feature = "flex")]
#[test]
fn lens_edges_and_heads_on_flex() {
    the_last_lens_row_is_the_prediction_on::<burn::backend::Flex>();
    the_lens_equals_the_reference_on::<burn::backend::Flex>("tiny-tied");
    the_lens_equals_the_reference_on::<burn::backend::Flex>("tiny-untied");
    for name in ["tiny-tied", "tiny-untied"] {
        // Where o_proj sums by head, the head scores come from what it noted.
        let (used, short) = check_edges_and_heads::<burn::backend::Flex>(name, F32_PEERS);
        let noting = attrib::model::matmul::notes_head_parts();
        assert_eq!(used, if noting { short } else { 0 }, "{name}");
        assert!(
            short > 0,
            "{name}: no prompt short enough to note the heads"
        );
    }
}

#[test]
fn a_logit_difference_is_the_difference_of_two_runs() {
    let model = load("tiny-tied");
    let ids = &reference("tiny-tied").cases[2].input_ids;
    let (t, c) = (17u32, 301u32);
    let single = |token| {
        run(
            &model,
            ids,
            Objective {
                token: Target::Id(token),
                ..Objective::default()
            },
        )
    };
    let (a, b) = (single(t), single(c));
    let diff = run(
        &model,
        ids,
        Objective {
            token: Target::Id(t),
            contrast: Some(c),
            ..Objective::default()
        },
    );
    assert!((diff.value - (a.value - b.value)).abs() < 1e-5);
    for (((_, d), (_, x)), (_, y)) in diff.nodes.iter().zip(&a.nodes).zip(&b.nodes) {
        assert!(
            (d.signed - (x.signed - y.signed)).abs() <= 1e-5 * (x.score + y.score),
            "{} vs {}",
            d.signed,
            x.signed - y.signed
        );
    }
    let largest = a
        .edges
        .iter()
        .chain(&b.edges)
        .map(|e| e.score.abs())
        .fold(0.0, f64::max);
    for ((d, x), y) in diff.edges.iter().zip(&a.edges).zip(&b.edges) {
        let want = x.score - y.score;
        assert!(
            (d.score - want).abs() <= 1e-5 * want.abs() + F32_PEERS * largest,
            "{}→{}",
            d.source,
            d.target
        );
    }
}

#[test]
fn an_earlier_position_equals_the_prompt_cut_there() {
    let model = load("tiny-untied");
    let ids = &reference("tiny-untied").cases[2].input_ids;
    let k = 4;
    let at_k = run(
        &model,
        ids,
        Objective {
            position: Some(k),
            ..Objective::default()
        },
    );
    let cut = run(&model, &ids[..=k], Objective::default());
    assert_eq!(at_k.position, k);
    assert_eq!(
        (at_k.predicted_id, at_k.target_id),
        (cut.predicted_id, cut.target_id)
    );
    for ((_, a), (_, b)) in at_k.nodes.iter().zip(&cut.nodes) {
        assert!(
            (a.score - b.score).abs() <= 1e-5 * b.score,
            "{} vs {}",
            a.score,
            b.score
        );
        // Later tokens cannot influence an earlier prediction.
        assert!(a.per_position[k + 1..].iter().all(|&p| p == 0.0));
    }
}

#[test]
fn probability_metrics_are_what_their_names_say() {
    let model = load("tiny-tied");
    let ids = &reference("tiny-tied").cases[1].input_ids;
    let logits = model.forward(
        ids_tensor(ids, &Default::default()),
        &[ids.len() - 1],
        &mut NoProbe,
    );
    let logits = logits.inner().into_data().to_vec::<f32>().unwrap();
    let max = logits.iter().copied().fold(f32::MIN, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    for metric in [Metric::Logprob, Metric::Prob] {
        let out = run(
            &model,
            ids,
            Objective {
                metric,
                ..Objective::default()
            },
        );
        let logprob = logits[out.target_id as usize] as f64 - max - z.ln();
        let want = if metric == Metric::Prob {
            logprob.exp()
        } else {
            logprob
        };
        assert!(
            (out.value - want).abs() < 1e-5,
            "{metric}: {} vs {want}",
            out.value
        );
    }
}

#[test]
fn head_edges_sum_to_their_attention_nodes_edges() {
    use attrib::attribution::{attribute_loaded_with, Options};

    let model = load("tiny-tied");
    let ids = &reference("tiny-tied").cases[3].input_ids;
    let with = Options {
        head_edges: true,
        ..Options::default()
    };
    let out = attribute_loaded_with(&model, ids, Objective::default(), with, &mut |_| {}).unwrap();
    let layers = model.config.num_hidden_layers;
    let heads = model.config.num_attention_heads;
    // Layer l's heads reach the MLP of layer l, both sublayers of each later layer, and logits.
    let expected: usize = (0..layers)
        .map(|l| heads * (1 + 2 * (layers - 1 - l) + 1))
        .sum();
    assert_eq!(out.head_edges.len(), expected);
    let largest = out.edges.iter().map(|e| e.score.abs()).fold(0.0, f64::max);
    for edge in out.edges.iter().filter(|e| e.source.ends_with("_Attn")) {
        let layer = edge
            .source
            .trim_start_matches('L')
            .trim_end_matches("_Attn");
        let prefix = format!("L{layer}_H");
        let from_heads: Vec<_> = out
            .head_edges
            .iter()
            .filter(|h| h.source.starts_with(&prefix) && h.target == edge.target)
            .collect();
        assert_eq!(from_heads.len(), heads, "{} → {}", edge.source, edge.target);
        let sum: f64 = from_heads.iter().map(|h| h.score).sum();
        assert!(
            (sum - edge.score).abs() <= 1e-5 * largest,
            "{} → {}: heads {sum} vs {}",
            edge.source,
            edge.target,
            edge.score
        );
        for p in 0..ids.len() {
            let sum: f64 = from_heads.iter().map(|h| h.per_position[p]).sum();
            assert!((sum - edge.per_position[p]).abs() <= 1e-5 * largest);
        }
    }
    // Without the option there are none.
    assert!(run(&model, ids, Objective::default()).head_edges.is_empty());
}

#[test]
fn nodes_only_taps_the_nodes_and_scores_them_alike() {
    use attrib::attribution::{attribute_loaded_with, Options};

    let model = load("tiny-untied");
    let ids = &reference("tiny-untied").cases[2].input_ids;
    let full = run(&model, ids, Objective::default());
    let only = Options {
        nodes_only: true,
        ..Options::default()
    };
    let out = attribute_loaded_with(&model, ids, Objective::default(), only, &mut |_| {}).unwrap();
    let layers = model.config.num_hidden_layers;
    assert_eq!(out.taps, 2 * layers + 1);
    assert!(full.taps > out.taps);
    assert!(out.edges.is_empty() && out.heads.is_empty() && out.lens.is_empty());
    assert_eq!(out.predicted_id, full.predicted_id);
    assert_eq!(out.value, full.value);
    assert_eq!(out.nodes.len(), full.nodes.len());
    for ((site, got), (want_site, want)) in out.nodes.iter().zip(&full.nodes) {
        assert_eq!(site, want_site);
        assert!(
            (got.score - want.score).abs() <= 1e-6 * want.score,
            "{site}: {} vs {}",
            got.score,
            want.score
        );
        for (g, w) in got.per_position.iter().zip(&want.per_position) {
            assert!((g - w).abs() <= 1e-6 * want.score, "{site}");
        }
    }
}
