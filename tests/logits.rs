//! The model equals transformers: token ids (chat template included) and logits at every
//! position, on both fixtures (tied head with top-level rope_theta in one file; untied head,
//! transformers-5 `rope_parameters`, sharded weights and `chat_template.jinja` in the other).

mod common;

use attrib::model::NoProbe;
use attrib::predict::ids_tensor;
use attrib::prompt::PromptTokenizer;
use common::{fixture, load_fixture, reference, TestBackend};

/// Logits may differ from PyTorch's by float32 rounding in a different summation order.
const TOLERANCE: f32 = 1e-4;

fn check_fixture(name: &str) {
    let folder = fixture(name);
    let device = Default::default();
    let model = load_fixture::<TestBackend>(name);
    let tokenizer = PromptTokenizer::from_folder(&folder).unwrap();
    let reference = reference(name);
    assert!(
        reference.cases.len() >= 6,
        "{name}: too few reference cases"
    );
    assert!(
        reference.cases.iter().any(|c| c.chat),
        "{name}: no chat case"
    );

    for case in &reference.cases {
        let label = format!("{name} {:?} chat={}", case.prompt, case.chat);
        let encoded = tokenizer.encode(&case.prompt, case.chat).unwrap();
        assert_eq!(encoded.text, case.text, "{label}: text");
        assert_eq!(encoded.ids, case.input_ids, "{label}: ids");
        assert_eq!(encoded.tokens, case.tokens, "{label}: tokens");

        let seq = encoded.ids.len();
        let positions: Vec<usize> = (0..seq).collect();
        let ids = ids_tensor::<TestBackend>(&encoded.ids, &device);
        let logits = model.forward(ids.clone(), &positions, &mut NoProbe);
        assert_eq!(logits.dims(), [1, seq, model.config.vocab_size], "{label}");
        let logits = logits.into_data().to_vec::<f32>().unwrap();
        assert_eq!(case.logits.len(), seq, "{label}: reference rows");
        let mut worst = 0.0f32;
        for (pos, expected) in case.logits.iter().enumerate() {
            let row = &logits[pos * model.config.vocab_size..(pos + 1) * model.config.vocab_size];
            for (a, b) in row.iter().zip(expected) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(
            worst <= TOLERANCE,
            "{label}: max |logit difference| {worst}"
        );

        // Asking for the last position alone gives the same row.
        let last = model.forward_last(ids).into_data().to_vec::<f32>().unwrap();
        let full_last = &logits[(seq - 1) * model.config.vocab_size..];
        for (a, b) in last.iter().zip(full_last) {
            assert!((a - b).abs() <= 1e-5, "{label}: last-only {a} vs {b}");
        }
    }
}

#[test]
fn tiny_tied_equals_transformers() {
    check_fixture("tiny-tied");
}

#[test]
fn tiny_untied_equals_transformers() {
    check_fixture("tiny-untied");
}

#[test]
fn selected_positions_come_back_in_the_order_asked() {
    let device = Default::default();
    let model = load_fixture::<TestBackend>("tiny-tied");
    let case = &reference("tiny-tied").cases[2];
    let ids = ids_tensor::<TestBackend>(&case.input_ids, &device);
    let logits = model.forward(ids, &[4, 0], &mut NoProbe);
    let v = model.config.vocab_size;
    let got = logits.into_data().to_vec::<f32>().unwrap();
    for (row, pos) in [4usize, 0].iter().enumerate() {
        for (a, b) in got[row * v..(row + 1) * v].iter().zip(&case.logits[*pos]) {
            assert!((a - b).abs() <= TOLERANCE, "position {pos}: {a} vs {b}");
        }
    }
}
