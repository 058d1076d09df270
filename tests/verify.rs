//! `--verify`: every node's output replaced (zero, mean, patch); the actual changes of the
//! objective and the first-order predictions equal a PyTorch reference doing the same
//! interventions with hooks (`scripts/reference_verify.py`).

mod common;

use std::process::Command;

use attrib::attribution::{attribute_loaded_with, Ablation, Objective, Options, Outcome};
use attrib::model::Qwen2ForCausalLM;
use burn::backend::Autodiff;
use common::{fixture, fixture_model, TestBackend};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
    edge_cases: Vec<EdgeCase>,
}

#[derive(Deserialize)]
struct EdgeCase {
    prompt: String,
    input_ids: Vec<u32>,
    target_id: u32,
    edges: Vec<RefEdgeCheck>,
}

#[derive(Deserialize)]
struct RefEdgeCheck {
    source: String,
    target: String,
    predicted: f64,
    actual: f64,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    ablation: String,
    input_ids: Vec<u32>,
    corrupt_ids: Option<Vec<u32>>,
    target_id: u32,
    nodes: Vec<RefCheck>,
}

#[derive(Deserialize)]
struct RefCheck {
    id: String,
    predicted: f64,
    actual: f64,
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-4 * want.abs() + 1e-5
}

type Model = Qwen2ForCausalLM<Autodiff<TestBackend>>;

fn setup() -> (Reference, Model) {
    let path = fixture("reference/verify-tiny-tied.json");
    let reference: Reference = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    (reference, fixture_model("tiny-tied"))
}

/// Attributes the prediction with `options`.
fn run(model: &Model, ids: &[u32], options: Options) -> Outcome {
    attribute_loaded_with(model, ids, Objective::default(), options, &mut |_| {}).unwrap()
}

#[test]
fn edge_removals_equal_the_reference() {
    let (reference, model) = setup();
    for case in &reference.edge_cases {
        let options = Options {
            verify: Some(Ablation::Zero),
            verify_edges: usize::MAX,
            ..Options::default()
        };
        let out = run(&model, &case.input_ids, options);
        assert_eq!(out.target_id, case.target_id);
        assert_eq!(out.edge_checks.len(), case.edges.len());
        let largest = case
            .edges
            .iter()
            .map(|e| e.predicted.abs())
            .fold(0.0, f64::max);
        // Strongest first.
        for w in out.edge_checks.windows(2) {
            assert!(w[0].predicted.abs() >= w[1].predicted.abs());
        }
        for want in &case.edges {
            let got = out
                .edge_checks
                .iter()
                .find(|c| c.source == want.source && c.target == want.target)
                .expect("every edge is checked");
            let what = format!("{} {} → {}", case.prompt, want.source, want.target);
            assert!(
                close(got.actual, want.actual),
                "{what}: actual {} vs {}",
                got.actual,
                want.actual
            );
            // Edge scores carry f32 cancellation noise relative to the largest edge.
            assert!(
                (got.predicted - want.predicted).abs()
                    <= 1e-4 * want.predicted.abs() + 2e-4 * largest,
                "{what}: predicted {} vs {}",
                got.predicted,
                want.predicted
            );
        }
    }
}

#[test]
fn interventions_equal_the_reference() {
    let (reference, model) = setup();
    let mut kinds = std::collections::BTreeSet::new();
    for case in &reference.cases {
        let ablation: Ablation = case.ablation.parse().unwrap();
        kinds.insert(case.ablation.clone());
        let options = Options {
            verify: Some(ablation),
            corrupt: case.corrupt_ids.clone(),
            ..Options::default()
        };
        let out = run(&model, &case.input_ids, options);
        assert_eq!(out.target_id, case.target_id, "{:?}", case.prompt);
        assert_eq!(out.checks.len(), case.nodes.len());
        for (got, want) in out.checks.iter().zip(&case.nodes) {
            assert_eq!(got.site.to_string(), want.id);
            assert!(
                close(got.actual, want.actual),
                "{} {} {}: actual {} vs {}",
                case.prompt,
                case.ablation,
                want.id,
                got.actual,
                want.actual
            );
            assert!(
                close(got.predicted, want.predicted),
                "{} {} {}: predicted {} vs {}",
                case.prompt,
                case.ablation,
                want.id,
                got.predicted,
                want.predicted
            );
        }
    }
    assert_eq!(kinds.len(), 3, "zero, mean and patch are all checked");
}

#[test]
fn the_cli_reports_and_refuses_bad_patches() {
    let folder = fixture("tiny-untied");
    let dir = tempfile::tempdir().unwrap();
    let attrib = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_attrib"))
            .args(["--model", folder.to_str().unwrap(), "--prompt", "a b c d"])
            .args(["--out", dir.path().to_str().unwrap()])
            .args(extra)
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .unwrap()
    };
    let ok = attrib(&["--verify", "--ablate", "mean", "--json"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    let v = &json["verification"];
    assert_eq!(v["ablation"], "mean");
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), json["nodes"].as_array().unwrap().len());
    let same = nodes
        .iter()
        .filter(|n| {
            n["predicted"].as_f64().unwrap().signum() == n["actual"].as_f64().unwrap().signum()
        })
        .count();
    assert!((v["same_sign"].as_f64().unwrap() - same as f64 / nodes.len() as f64).abs() < 1e-12);
    assert!(v["pearson"].as_f64().unwrap().abs() <= 1.0);
    // --verify-edges defaults to 20; this model has 15 edges.
    let edges = json["edges"].as_array().unwrap().len();
    assert_eq!(v["edges"].as_array().unwrap().len(), edges.min(20));

    for (extra, says) in [
        (&["--verify", "--ablate", "patch"][..], "--corrupt"),
        (
            &[
                "--verify",
                "--ablate",
                "patch",
                "--corrupt",
                "a b c d e f g",
            ][..],
            "--corrupt is",
        ),
    ] {
        let bad = attrib(extra);
        assert_eq!(bad.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&bad.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(says), "{stderr}");
        assert!(!stderr.contains("panicked"));
    }
}
