//! `attrib` (the attribution run) end to end: the JSON equals the reference, the files are
//! written, runs are reproducible, and bad targets or output folders fail cleanly.

mod common;

use std::path::Path;
use std::process::Output;

use common::{fixture, reference, run_attrib as attrib};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The JSON a successful run printed.
fn success_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn json_without_timings(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v.as_object_mut().unwrap().remove("timings");
    v
}

#[test]
fn json_equals_the_reference_and_files_are_written() {
    let case = &reference("tiny-tied").cases[3];
    let out_dir = tempfile::tempdir().unwrap();
    let folder = fixture("tiny-tied");
    let out = attrib(&[
        "--model",
        s(&folder),
        "--prompt",
        &case.prompt,
        "--out",
        s(out_dir.path()),
        "--json",
    ]);
    let json = success_json(&out);
    for key in [
        "model",
        "prompt",
        "input_ids",
        "tokens",
        "predicted_id",
        "predicted_token",
        "target_id",
        "target_logit",
        "backend",
        "dtype",
        "timings",
        "nodes",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["predicted_id"].as_u64(), Some(case.top5[0].id as u64));
    assert_eq!(json["target_id"], json["predicted_id"]);
    let logit = json["target_logit"].as_f64().unwrap();
    assert!((logit - case.top5[0].logit as f64).abs() < 1e-4);
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), case.nodes.len());
    for (got, want) in nodes.iter().zip(&case.nodes) {
        assert_eq!(got["id"].as_str(), Some(want.id.as_str()));
        let score = got["score"].as_f64().unwrap();
        assert!(
            (score - want.score).abs() <= 1e-4 * want.score,
            "{}: {score} vs {}",
            want.id,
            want.score
        );
        assert_eq!(
            got["per_position"].as_array().unwrap().len(),
            case.input_ids.len()
        );
    }

    // attribution.json is what --json printed; the pictures exist.
    let written = std::fs::read(out_dir.path().join("attribution.json")).unwrap();
    assert_eq!(
        json_without_timings(&written),
        json_without_timings(&out.stdout)
    );
    let svg = std::fs::read_to_string(out_dir.path().join("graph.svg")).unwrap();
    assert!(svg.contains("L2_MLP"));
    let png = std::fs::read(out_dir.path().join("graph.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn the_table_lists_every_node_and_a_second_run_is_identical() {
    let folder = fixture("tiny-untied");
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        attrib(&[
            "--model",
            s(&folder),
            "--prompt",
            "Hello world",
            "--out",
            s(dir.path()),
        ])
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let json1 = std::fs::read(dir.path().join("attribution.json")).unwrap();
    let stdout = String::from_utf8(first.stdout).unwrap();
    let stderr = String::from_utf8(first.stderr).unwrap();
    for id in ["embeddings", "L0_Attn", "L0_MLP", "L1_Attn", "L1_MLP"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(id)),
            "{id} missing from\n{stdout}"
        );
    }
    for step in [
        "Registered 12 taps",
        "Forward pass done",
        "Backward pass done",
        "Attribution calculation finished",
        "forward",
        "backward",
        "render",
    ] {
        assert!(stderr.contains(step), "{step:?} missing from\n{stderr}");
    }
    let second = run();
    assert!(second.status.success());
    let json2 = std::fs::read(dir.path().join("attribution.json")).unwrap();
    // Timings differ from run to run; everything else must not.
    assert_eq!(json_without_timings(&json1), json_without_timings(&json2));
    assert_eq!(stdout, String::from_utf8(second.stdout).unwrap());
}

#[test]
fn a_given_target_is_attributed() {
    let folder = fixture("tiny-tied");
    let dir = tempfile::tempdir().unwrap();
    let out = attrib(&[
        "--model",
        s(&folder),
        "--prompt",
        "Hello world",
        "--target",
        " the",
        "--out",
        s(dir.path()),
        "--json",
    ]);
    let json = success_json(&out);
    assert_eq!(json["target_token"].as_str(), Some(" the"));
    let by_id = attrib(&[
        "--model",
        s(&folder),
        "--prompt",
        "Hello world",
        "--target-id",
        &json["target_id"].to_string(),
        "--out",
        s(dir.path()),
        "--json",
    ]);
    assert_eq!(
        json_without_timings(&by_id.stdout),
        json_without_timings(&out.stdout)
    );
}

fn fails(args: &[&str]) -> String {
    let out = attrib(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(last.starts_with("error: "), "{stderr}");
    last
}

#[test]
fn a_target_of_several_tokens_lists_them_and_writes_nothing() {
    let folder = fixture("tiny-tied");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let err = fails(&[
        "--model",
        s(&folder),
        "--prompt",
        "Hello",
        "--target",
        " Parisian capital",
        "--out",
        s(&out_dir),
    ]);
    assert!(
        err.contains("--target") && err.contains("tokens, not one") && err.contains("id "),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&out_dir).map(|d| d.count()).unwrap_or(0),
        0
    );
}

#[test]
fn a_target_id_outside_the_vocabulary() {
    let folder = fixture("tiny-tied");
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&[
        "--model",
        s(&folder),
        "--prompt",
        "Hello",
        "--target-id",
        "512",
        "--out",
        s(dir.path()),
    ]);
    assert!(err.contains("--target-id 512"), "{err}");
}

#[test]
fn an_unwritable_output_folder_fails_before_any_model_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // The model does not exist either: the --out error must come first.
    let err = fails(&[
        "--model",
        "./no/such/model",
        "--prompt",
        "Hello",
        "--out",
        s(&file.join("out")),
    ]);
    assert!(err.contains("--out"), "{err}");
}
