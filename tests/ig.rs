//! EAP-IG (`--ig-steps`) and circuit faithfulness: node and edge scores, the baseline's
//! objective and the circuits' objectives equal a PyTorch reference doing the same with hooks
//! (`scripts/reference_ig.py`); M = 1 equals plain EAP; and the integrated gradients at the
//! embeddings are complete: `Σ (x − x')·ḡ → m(x) − m(x')` as M grows.

mod common;

use std::collections::HashMap;

use attrib::attribution::{
    attribute_loaded_with, circuit, is_node, verify, Ablation, Objective, Options, Outcome, Taps,
};
use attrib::model::{Qwen2ForCausalLM, Site};
use attrib::predict::ids_tensor;
use attrib::prune::PruneOptions;
use burn::backend::Autodiff;
use common::{fixture, fixture_model, TestBackend};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    ig_cases: Vec<IgCase>,
    faithfulness_cases: Vec<FaithCase>,
}

#[derive(Deserialize)]
struct IgCase {
    prompt: String,
    steps: usize,
    input_ids: Vec<u32>,
    corrupt_ids: Option<Vec<u32>>,
    target_id: u32,
    m_clean: f64,
    m_baseline: f64,
    nodes: Vec<RefNode>,
    edges: Vec<RefEdge>,
    eap: Scores,
}

#[derive(Deserialize)]
struct Scores {
    nodes: Vec<RefNode>,
    edges: Vec<RefEdge>,
}

#[derive(Deserialize)]
struct RefNode {
    id: String,
    signed: f64,
    score: f64,
    per_position: Vec<f64>,
}

#[derive(Deserialize)]
struct RefEdge {
    source: String,
    target: String,
    score: f64,
    per_position: Vec<f64>,
}

#[derive(Deserialize)]
struct FaithCase {
    ablation: String,
    circuit: String,
    input_ids: Vec<u32>,
    corrupt_ids: Vec<u32>,
    target_id: u32,
    edges: Vec<(String, String)>,
    m_clean: f64,
    m_circuit: f64,
    m_empty: f64,
}

type Model = Qwen2ForCausalLM<Autodiff<TestBackend>>;

fn setup() -> (Reference, Model) {
    let path = fixture("reference/ig-tiny-tied.json");
    let reference: Reference = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    (reference, fixture_model("tiny-tied"))
}

fn run(model: &Model, ids: &[u32], options: Options) -> Outcome {
    attribute_loaded_with(model, ids, Objective::default(), options, &mut |_| {}).unwrap()
}

/// Within `rel` of `want`, or within `floor` (f32 cancellation noise on the case's scale).
fn assert_near(what: &str, got: f64, want: f64, floor: f64) {
    assert!(
        (got - want).abs() <= 1e-4 * want.abs() + floor,
        "{what}: {got} vs {want}"
    );
}

/// Every node and edge score of `out` against the reference's.
fn assert_scores(what: &str, out: &Outcome, nodes: &[RefNode], edges: &[RefEdge]) {
    let largest = nodes.iter().map(|n| n.score).fold(0.0, f64::max);
    let floor = 2e-5 * largest;
    assert_eq!(out.nodes.len(), nodes.len());
    for ((site, got), want) in out.nodes.iter().zip(nodes) {
        assert_eq!(site.to_string(), want.id);
        let what = format!("{what} {}", want.id);
        assert_near(&format!("{what} signed"), got.signed, want.signed, floor);
        assert_near(&format!("{what} score"), got.score, want.score, floor);
        for (p, (g, w)) in got.per_position.iter().zip(&want.per_position).enumerate() {
            assert_near(&format!("{what} position {p}"), *g, *w, floor);
        }
    }
    assert_eq!(out.edges.len(), edges.len());
    for (got, want) in out.edges.iter().zip(edges) {
        assert_eq!((&got.source, &got.target), (&want.source, &want.target));
        let what = format!("{what} {} → {}", want.source, want.target);
        assert_near(&what, got.score, want.score, floor);
        for (p, (g, w)) in got.per_position.iter().zip(&want.per_position).enumerate() {
            assert_near(&format!("{what} position {p}"), *g, *w, floor);
        }
    }
}

#[test]
fn integrated_gradients_equal_the_reference_and_one_step_is_eap() {
    let (reference, model) = setup();
    let mut one_step = 0;
    for case in &reference.ig_cases {
        let what = format!("{:?} M={}", case.prompt, case.steps);
        let out = run(
            &model,
            &case.input_ids,
            Options {
                ig_steps: Some(case.steps),
                corrupt: case.corrupt_ids.clone(),
                ..Options::default()
            },
        );
        assert_eq!(out.target_id, case.target_id, "{what}");
        assert_near(&what, out.value, case.m_clean, 1e-5);
        let baseline = out.baseline_value.expect("EAP-IG reports its baseline");
        assert_near(&format!("{what} baseline"), baseline, case.m_baseline, 1e-5);
        assert_scores(&what, &out, &case.nodes, &case.edges);
        if case.steps == 1 {
            // Plain EAP: the clean gradient times the difference from the baseline.
            assert_scores(
                &format!("{what} EAP"),
                &out,
                &case.eap.nodes,
                &case.eap.edges,
            );
            one_step += 1;
        }
    }
    assert!(one_step > 0, "the reference has an M = 1 case");
}

/// `|Σ (x − x')·ḡ − (m(x) − m(x'))| / |m(x) − m(x')|` at the embeddings.
fn completeness_gap(model: &Model, ids: &[u32], corrupt: &[u32], steps: usize) -> f64 {
    let out = run(
        model,
        ids,
        Options {
            ig_steps: Some(steps),
            corrupt: Some(corrupt.to_vec()),
            nodes_only: true,
            ..Options::default()
        },
    );
    let (site, embeddings) = &out.nodes[0];
    assert_eq!(*site, Site::Embed);
    let change = out.value - out.baseline_value.unwrap();
    assert!(change.abs() > 0.5, "a pair whose target really moves");
    (embeddings.signed - change).abs() / change.abs()
}

#[test]
fn integrated_gradients_are_complete_at_64_steps() {
    let (_, model) = setup();
    let folder = fixture("tiny-tied");
    let tokenizer = tokenizers::Tokenizer::from_file(folder.join("tokenizer.json")).unwrap();
    let ids = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    for (clean, corrupt) in [
        ("The capital of France is", "The capital of Italy is"),
        ("Hello world! You are", "Hello world? You are"),
    ] {
        let (x, x0) = (ids(clean), ids(corrupt));
        assert_eq!(x.len(), x0.len());
        let coarse = completeness_gap(&model, &x, &x0, 4);
        let fine = completeness_gap(&model, &x, &x0, 64);
        assert!(fine < 0.02, "{clean:?}: gap {fine} at M = 64");
        assert!(
            fine < coarse,
            "{clean:?}: gap {fine} at M = 64, {coarse} at M = 4"
        );
    }
}

/// Each node's clean output, `[seq, hidden]` row-major.
fn node_outputs(model: &Model, ids: &[u32]) -> HashMap<Site, Vec<f32>> {
    let mut taps = Taps::only(is_node);
    model.forward(
        ids_tensor(ids, &Default::default()),
        &[ids.len() - 1],
        &mut taps,
    );
    taps.taps
        .iter()
        .map(|t| {
            let values = t.activation.clone().into_data().into_vec::<f32>().unwrap();
            (t.site, values)
        })
        .collect()
}

#[test]
fn circuits_equal_the_reference() {
    let (reference, model) = setup();
    let all_edges: Vec<(Site, Site)> = run(
        &model,
        &reference.faithfulness_cases[0].input_ids,
        Options::default(),
    )
    .edges
    .iter()
    .map(|e| verify::edge_sites(&e.source, &e.target).unwrap())
    .collect();
    let nodes: Vec<Site> = Site::all(model.config.num_hidden_layers)
        .into_iter()
        .filter(|s| is_node(*s))
        .collect();
    for case in &reference.faithfulness_cases {
        let ablation: Ablation = case.ablation.parse().unwrap();
        let ids = &case.input_ids;
        let clean = node_outputs(&model, ids);
        let replaced = verify::replacements(
            &model,
            ids,
            &nodes,
            &clean,
            ablation,
            Some(&case.corrupt_ids),
        )
        .unwrap();
        let kept: Vec<(Site, Site)> = case
            .edges
            .iter()
            .map(|(u, v)| verify::edge_sites(u, v).unwrap())
            .collect();
        let clean = verify::Clean {
            model: &model,
            ids,
            objective: Objective::default(),
            target_id: case.target_id,
            per_pass: None,
        };
        let (m_clean, m_empty, m_circuit) =
            circuit::run_circuits(&clean, &replaced, &all_edges, &[kept]).unwrap();
        let what = format!("{} {}", case.ablation, case.circuit);
        // Zeroing every edge leaves f32 cancellation noise (~1e-5) where the reference has 0.
        let floor = 1e-4 * case.m_clean.abs();
        assert_near(&format!("{what} clean"), m_clean, case.m_clean, floor);
        assert_near(&format!("{what} empty"), m_empty, case.m_empty, floor);
        assert_near(
            &format!("{what} circuit"),
            m_circuit[0],
            case.m_circuit,
            floor,
        );
    }
}

#[test]
fn the_pruned_circuit_is_scored_and_patching_everything_is_the_corrupted_run() {
    let (reference, model) = setup();
    let case = &reference.faithfulness_cases[0];
    let verify = |top_edges: Option<usize>| {
        run(
            &model,
            &case.input_ids,
            Options {
                verify: Some(Ablation::Patch),
                corrupt: Some(case.corrupt_ids.clone()),
                verify_edges: 0,
                circuit: Some(PruneOptions {
                    top_edges,
                    ..PruneOptions::default()
                }),
                ..Options::default()
            },
        )
    };
    let corrupted = run(&model, &case.corrupt_ids, Options::default());
    for top_edges in [None, Some(4), Some(1000)] {
        let out = verify(top_edges);
        let f = out
            .faithfulness
            .expect("--verify scores the pruned circuit");
        assert_eq!(f.total_edges, out.edges.len());
        assert!(f.edges <= top_edges.unwrap_or(usize::MAX).min(f.total_edges));
        assert!((f.clean - out.value).abs() < 1e-5);
        assert!((f.empty - corrupted.value).abs() < 1e-4 * corrupted.value.abs() + 1e-5);
        let ratio = (f.circuit - f.empty) / (f.clean - f.empty);
        assert!((f.faithfulness - ratio).abs() < 1e-12);
        if top_edges == Some(1000) {
            // Every edge reaching the target kept: the clean run, up to edges that do not
            // reach it (which cannot change the target).
            assert!((f.faithfulness - 1.0).abs() < 1e-3, "{}", f.faithfulness);
        }
    }
}

#[test]
fn an_edge_check_is_the_circuit_without_that_edge() {
    let (reference, model) = setup();
    let case = &reference.faithfulness_cases[0];
    let ids = &case.input_ids;
    let options = Options {
        verify: Some(Ablation::Patch),
        corrupt: Some(case.corrupt_ids.clone()),
        verify_edges: 6,
        ..Options::default()
    };
    let out = run(&model, ids, options.clone());
    assert_eq!(out.edge_checks.len(), 6);
    // One intervention per pass gives the same numbers as the batched default.
    let single = run(
        &model,
        ids,
        Options {
            verify_batch: Some(1),
            ..options
        },
    );
    for (a, b) in out.checks.iter().zip(&single.checks) {
        assert_near(&a.site.to_string(), a.actual, b.actual, 1e-5);
    }
    for (a, b) in out.edge_checks.iter().zip(&single.edge_checks) {
        assert_near(&a.source, a.actual, b.actual, 1e-5);
    }
    let all: Vec<(Site, Site)> = out
        .edges
        .iter()
        .map(|e| verify::edge_sites(&e.source, &e.target).unwrap())
        .collect();
    let nodes: Vec<Site> = out.nodes.iter().map(|(s, _)| *s).collect();
    let replaced = verify::replacements(
        &model,
        ids,
        &nodes,
        &node_outputs(&model, ids),
        Ablation::Patch,
        Some(&case.corrupt_ids),
    )
    .unwrap();
    let circuits: Vec<Vec<(Site, Site)>> = out
        .edge_checks
        .iter()
        .map(|c| {
            let swapped = verify::edge_sites(&c.source, &c.target).unwrap();
            all.iter().copied().filter(|e| *e != swapped).collect()
        })
        .collect();
    let run = verify::Clean {
        model: &model,
        ids,
        objective: Objective::default(),
        target_id: out.target_id,
        per_pass: None,
    };
    let (clean, _, values) = circuit::run_circuits(&run, &replaced, &all, &circuits).unwrap();
    for (check, value) in out.edge_checks.iter().zip(values) {
        let what = format!("{} → {}", check.source, check.target);
        assert_near(&what, check.actual, value - clean, 1e-5);
    }
}

#[test]
fn the_cli_runs_eap_ig_and_refuses_a_stray_corrupt() {
    let folder = fixture("tiny-tied");
    let dir = tempfile::tempdir().unwrap();
    let attrib = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_attrib"))
            .args(["--model", folder.to_str().unwrap()])
            .args(["--prompt", "The capital of France is"])
            .args(["--out", dir.path().to_str().unwrap()])
            .args(extra)
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .unwrap()
    };
    let corrupt = ["--corrupt", "The capital of Italy is"];
    let ok = attrib(&[&corrupt[..], &["--ig-steps", "3", "--verify", "--json"]].concat());
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(json["method"], "eap_ig");
    let ig = &json["integrated_gradients"];
    assert_eq!(ig["steps"], 3);
    assert_eq!(ig["baseline_prompt"], "The capital of Italy is");
    let v = &json["verification"];
    // --corrupt makes patching the default ablation.
    assert_eq!(v["ablation"], "patch");
    let f = &v["faithfulness"];
    let (clean, circuit, empty) = (
        f["clean"].as_f64().unwrap(),
        f["circuit"].as_f64().unwrap(),
        f["empty"].as_f64().unwrap(),
    );
    assert!(
        (f["faithfulness"].as_f64().unwrap() - (circuit - empty) / (clean - empty)).abs() < 1e-9
    );
    assert!(stderr.contains("EAP-IG"), "{stderr}");
    let table = attrib(&[&corrupt[..], &["--ig-steps", "3", "--verify"]].concat());
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(stdout.contains("faithfulness"), "{stdout}");

    let bad = attrib(&corrupt);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("--corrupt"), "{stderr}");
    let zero = attrib(&["--ig-steps", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--ig-steps"));
}
