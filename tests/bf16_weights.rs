//! A bf16 checkpoint (the fixtures, as hub checkpoints) on flex in f32: its linear weights and
//! embedding table stay bf16, read in place, and every product widens them exactly, so the
//! target value, node scores, edges, heads and logit lens equal those of the same checkpoint
//! converted to f32 at load.
#![cfg(feature = "flex")]

mod common;

use std::path::Path;

use attrib::attribution::{attribute_loaded, attribute_loaded_with, Objective, Options};
use attrib::model::load::SafetensorsSource;
use attrib::model::{Qwen2Config, Qwen2ForCausalLM};
use burn::backend::{Autodiff, Flex};
use burn::tensor::DType;
use common::{fixture, reference};

fn load(folder: &Path, in_place: bool) -> Qwen2ForCausalLM<Autodiff<Flex>> {
    let config = Qwen2Config::from_file(&folder.join("config.json")).unwrap();
    let source = SafetensorsSource::from_folder(folder)
        .unwrap()
        .in_place(in_place);
    Qwen2ForCausalLM::load(&config, &source, &Default::default()).unwrap()
}

#[test]
fn bf16_linear_weights_read_in_place_give_the_converted_models_numbers() {
    for name in ["tiny-tied", "tiny-untied"] {
        // The fixtures are stored in bf16, as hub checkpoints are.
        let kept = load(&fixture(name), true);
        let converted = load(&fixture(name), false);
        let layer = &kept.model.layers[0];
        assert_eq!(
            layer.self_attn.q_proj.weight.val().dtype(),
            DType::BF16,
            "{name}"
        );
        assert_eq!(
            layer.mlp.down_proj.weight.val().dtype(),
            DType::BF16,
            "{name}"
        );
        assert_eq!(
            kept.model.embed_tokens.weight.val().dtype(),
            DType::BF16,
            "{name}"
        );
        assert_eq!(kept.model.norm.weight.val().dtype(), DType::F32, "{name}");
        let reference_layer = &converted.model.layers[0];
        assert_eq!(
            reference_layer.self_attn.q_proj.weight.val().dtype(),
            DType::F32
        );
        for case in &reference(name).cases {
            let label = format!("{name} {:?}", case.prompt);
            let a = attribute_loaded(&kept, &case.input_ids, Objective::default(), &mut |_| {})
                .unwrap();
            let b = attribute_loaded(
                &converted,
                &case.input_ids,
                Objective::default(),
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(a.predicted_id, b.predicted_id, "{label}");
            let scale = b.nodes.iter().map(|n| n.1.score).fold(0.0, f64::max);
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * scale.max(1e-12);
            assert!(
                close(a.value, b.value),
                "{label}: {} vs {}",
                a.value,
                b.value
            );
            for ((site, x), (_, y)) in a.nodes.iter().zip(&b.nodes) {
                assert!(
                    close(x.score, y.score),
                    "{label} {site}: {} vs {}",
                    x.score,
                    y.score
                );
                assert!(close(x.signed, y.signed), "{label} {site}");
            }
            for (x, y) in a.edges.iter().zip(&b.edges) {
                assert!(close(x.score, y.score), "{label} {}→{}", x.source, x.target);
            }
            for (x, y) in a.heads.iter().zip(&b.heads) {
                assert!(close(x.score, y.score), "{label} {}", x.id());
            }
        }
    }
}

#[test]
fn the_lens_of_a_bf16_head_read_in_place_is_the_converted_models() {
    // The tied fixture's head is its bf16 embedding table, the untied one's a bf16 linear
    // weight: both are screened as stored, with exact values from their widened rows.
    let with_lens = Options {
        lens: true,
        ..Options::default()
    };
    for name in ["tiny-tied", "tiny-untied"] {
        let kept = load(&fixture(name), true);
        let converted = load(&fixture(name), false);
        let head = match &kept.lm_head {
            Some(head) => head.weight.val(),
            None => kept.model.embed_tokens.weight.val(),
        };
        assert_eq!(head.dtype(), DType::BF16, "{name}");
        for case in reference(name).cases.iter().take(4) {
            let label = format!("{name} {:?}", case.prompt);
            let lens = |model| {
                attribute_loaded_with(
                    model,
                    &case.input_ids,
                    Objective::default(),
                    with_lens.clone(),
                    &mut |_| {},
                )
                .unwrap()
                .lens
            };
            let read = kept.head_norms().times_read();
            let (a, b) = (lens(&kept), lens(&converted));
            // Where the screen runs, the forward pass noted the bf16 head's row norms and the
            // lens read them (the f32 table of the converted model takes its own).
            let noted = attrib::model::matmul::notes_head_norms();
            assert_eq!(kept.head_norms().is_noted(), noted, "{label}");
            assert_eq!(
                kept.head_norms().times_read(),
                read + usize::from(noted),
                "{label}"
            );
            assert_eq!(a.len(), kept.config.num_hidden_layers * 2 + 1, "{label}");
            assert_eq!(a, b, "{label}");
            // After the last sublayer: the model's own logits, bit for bit.
            let (_, top) = common::last_logits(&kept, &case.input_ids);
            assert_eq!(a.last().unwrap().top, top, "{label}");
        }
    }
}
