//! `graph.neuronpedia.json`: valid against the viewers' JSON Schema (tests/fixtures/neuronpedia),
//! and a faithful per-position copy of the pruned graph in attribution.json.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use common::fixture;
use serde_json::{json, Value};

/// Runs `attrib` on a fixture model and returns (attribution.json, graph.neuronpedia.json).
fn run(model: &str, prompt: &str, extra: &[&str]) -> (Value, Value) {
    let dir = tempfile::tempdir().unwrap();
    let folder = fixture(model);
    let out = Command::new(env!("CARGO_BIN_EXE_attrib"))
        .args(["--model", folder.to_str().unwrap(), "--prompt", prompt])
        .args(["--out", dir.path().to_str().unwrap()])
        .args(extra)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run attrib");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(dir.path().join(name)).unwrap()).unwrap()
    };
    (read("attribution.json"), read("graph.neuronpedia.json"))
}

fn validator() -> jsonschema::Validator {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neuronpedia/graph-schema.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    jsonschema::draft7::new(&schema).expect("the schema compiles")
}

fn assert_valid(v: &jsonschema::Validator, doc: &Value) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "schema errors:\n{}", errors.join("\n"));
}

/// The component a viewer node stands for: `embeddings`, `L{l}_Attn`, `L{l}_MLP` or `logits`.
fn component(node: &Value, layers: usize) -> String {
    let layer = node["layer"].as_str().unwrap();
    match node["feature_type"].as_str().unwrap() {
        "embedding" => "embeddings".into(),
        "attention" => format!("L{layer}_Attn"),
        "mlp" => format!("L{layer}_MLP"),
        "logit" => {
            assert_eq!(layer, (layers + 1).to_string());
            "logits".into()
        }
        other => panic!("unexpected feature_type {other}"),
    }
}

/// Everything the export promises about its relation to attribution.json.
fn check_against_attribution(a: &Value, g: &Value) {
    let tokens: Vec<&str> = a["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let ids: Vec<u64> = a["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let layers = a["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["layer"].as_u64())
        .max()
        .unwrap() as usize
        + 1;
    let m = &g["metadata"];
    assert_eq!(m["prompt"], a["prompt"]);
    assert_eq!(m["prompt_tokens"], a["tokens"]);
    assert_eq!(m["schema_version"], 1);
    assert_eq!(m["info"]["generator"]["name"], "attrib");

    let nodes = g["nodes"].as_array().unwrap();
    let mut by_id = HashMap::new();
    for n in nodes {
        let id = n["node_id"].as_str().unwrap();
        assert!(by_id.insert(id, n).is_none(), "duplicate node {id}");
    }
    let js: HashSet<&str> = nodes
        .iter()
        .map(|n| n["jsNodeId"].as_str().unwrap())
        .collect();
    assert_eq!(js.len(), nodes.len(), "jsNodeIds are unique");

    // Every position has its embedding node; exactly one logit node, at the target position.
    for (p, id) in ids.iter().enumerate() {
        let n = by_id[format!("E_{id}_{p}").as_str()];
        assert_eq!(n["ctx_idx"], p);
        assert!(n["clerp"]
            .as_str()
            .unwrap()
            .contains(&format!("{:?}", tokens[p])));
    }
    let logits: Vec<&&Value> = by_id
        .values()
        .filter(|n| n["feature_type"] == "logit")
        .collect();
    assert_eq!(logits.len(), 1);
    assert_eq!(logits[0]["is_target_logit"], true);
    assert_eq!(logits[0]["ctx_idx"], a["target_position"]);
    assert_eq!(logits[0]["feature"], a["target_id"]);

    // A node's activation is its component's score at that position.
    let scores: HashMap<&str, &Value> = a["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    for n in nodes.iter().filter(|n| n["feature_type"] != "logit") {
        let c = component(n, layers);
        let p = n["ctx_idx"].as_u64().unwrap() as usize;
        let want = scores[c.as_str()]["per_position"][p].as_f64().unwrap();
        assert_eq!(n["activation"].as_f64().unwrap(), want, "{c} at {p}");
        let influence = n["influence"].as_f64().unwrap();
        assert!(influence > 0.0 && influence <= 1.0 + 1e-12, "{influence}");
    }

    // Links join existing nodes at one position, and a component pair's links sum to the
    // edge score in attribution.json.
    let edges: HashMap<(&str, &str), f64> = a["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                (e["source"].as_str().unwrap(), e["target"].as_str().unwrap()),
                e["score"].as_f64().unwrap(),
            )
        })
        .collect();
    let mut sums: HashMap<(String, String), (f64, f64)> = HashMap::new();
    for l in g["links"].as_array().unwrap() {
        let s = by_id[l["source"].as_str().unwrap()];
        let t = by_id[l["target"].as_str().unwrap()];
        assert_eq!(s["ctx_idx"], t["ctx_idx"]);
        let w = l["weight"].as_f64().unwrap();
        assert!(w != 0.0);
        let sum = sums
            .entry((component(s, layers), component(t, layers)))
            .or_default();
        sum.0 += w;
        sum.1 += w.abs();
    }
    assert!(!sums.is_empty());
    for ((s, t), &(sum, magnitude)) in &sums {
        let score = edges[&(s.as_str(), t.as_str())];
        assert!(
            (sum - score).abs() <= 1e-9 * magnitude,
            "{s} → {t}: links sum to {sum}, edge is {score}"
        );
    }
}

#[test]
fn the_export_is_valid_and_matches_the_attribution() {
    let v = validator();
    for (model, prompt, extra) in [
        ("tiny-tied", "The capital of France is", &[][..]),
        (
            "tiny-untied",
            "Hello world! You are",
            &["--top-edges", "6"][..],
        ),
        (
            "tiny-tied",
            "Café naïve — 東京 </script>\"&",
            &["--position", "3", "--slug", "my-graph"][..],
        ),
        (
            "tiny-untied",
            "a b c d e f",
            &["--contrast-id", "7", "--node-threshold", "1.0"][..],
        ),
    ] {
        let (a, g) = run(model, prompt, extra);
        assert_valid(&v, &g);
        check_against_attribution(&a, &g);
        assert_eq!(g["metadata"]["scan"], model);
        if extra.contains(&"--slug") {
            assert_eq!(g["metadata"]["slug"], "my-graph");
        } else {
            let slug = g["metadata"]["slug"].as_str().unwrap();
            assert!(slug.starts_with(model), "{slug}");
            assert!(slug
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c)));
        }
        if extra.contains(&"--contrast-id") {
            let logit = g["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["feature_type"] == "logit")
                .unwrap();
            assert!(logit["clerp"].as_str().unwrap().contains("difference"));
        }
    }
}

#[test]
fn the_validator_rejects_what_the_viewers_cannot_read() {
    let v = validator();
    let (_, g) = run("tiny-tied", "Hello world", &[]);
    assert_valid(&v, &g);
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut doc = g.clone();
        edit(&mut doc);
        assert!(!v.is_valid(&doc), "accepted a broken document");
    };
    broken(&|d| {
        d["nodes"][0].as_object_mut().unwrap().remove("jsNodeId");
    });
    broken(&|d| d["links"][0]["weight"] = json!("0.5"));
    broken(&|d| {
        d.as_object_mut().unwrap().remove("qParams");
    });
    broken(&|d| d["metadata"]["prompt_tokens"] = json!([1, 2]));
    broken(&|d| d["nodes"][0]["ctx_idx"] = json!("0"));
}
