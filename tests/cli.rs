//! The `attrib` binary end to end on the fixtures: output equals the reference, and every bad
//! input gives one clear error line and exit code 2.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, reference};

fn attrib(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attrib"))
        .args(args)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HOME", std::env::temp_dir().join("attrib-test-no-hub"))
        .output()
        .expect("run attrib")
}

/// Runs `attrib predict` expecting failure; returns stderr after checking the exit code and
/// that the message is one `error:` line with no panic.
fn fails(args: &[&str]) -> String {
    let out = attrib(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "args {args:?}\nstderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "args {args:?} printed to stdout");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        !stderr.contains("RUST_BACKTRACE"),
        "backtrace hint: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// A copy of a fixture folder to break.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn predict_json_equals_the_reference_top5() {
    for name in ["tiny-tied", "tiny-untied"] {
        let reference = reference(name);
        for case in reference
            .cases
            .iter()
            .filter(|c| c.input_ids.len() > 3)
            .take(3)
        {
            let folder = fixture(name);
            let mut args = vec![
                "predict",
                "--model",
                path(&folder),
                "--prompt",
                &case.prompt,
                "--json",
            ];
            if case.chat {
                args.push("--chat");
            }
            let out = attrib(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let ids: Vec<u32> = serde_json::from_value(json["input_ids"].clone()).unwrap();
            assert_eq!(ids, case.input_ids);
            assert_eq!(json["tokens"].as_array().unwrap().len(), ids.len());
            let top = json["top_k"].as_array().unwrap();
            assert_eq!(top.len(), 5);
            for (got, want) in top.iter().zip(&case.top5) {
                assert_eq!(
                    got["id"].as_u64(),
                    Some(want.id as u64),
                    "{name} {:?}",
                    case.prompt
                );
                assert_eq!(got["token"].as_str(), Some(want.token.as_str()));
                let logit = got["logit"].as_f64().unwrap() as f32;
                let prob = got["prob"].as_f64().unwrap() as f32;
                assert!(
                    (logit - want.logit).abs() < 1e-4,
                    "{logit} vs {}",
                    want.logit
                );
                assert!((prob - want.prob).abs() < 1e-5, "{prob} vs {}", want.prob);
            }
        }
    }
}

#[test]
fn predict_table_lists_top_k() {
    let folder = fixture("tiny-tied");
    let out = attrib(&[
        "predict",
        "--model",
        path(&folder),
        "--prompt",
        "Hello world",
        "--top-k",
        "3",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(stdout.lines().next().unwrap().contains("logit"));
}

#[test]
fn missing_folder() {
    let err = fails(&["predict", "--model", "./no/such/model", "--prompt", "x"]);
    assert!(err.contains("./no/such/model"), "{err}");
}

#[test]
fn folder_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["predict", "--model", path(dir.path()), "--prompt", "x"]);
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn a_file_that_is_not_gguf() {
    let dir = copy_fixture("tiny-tied");
    let weights = dir.path().join("model.safetensors");
    let err = fails(&["predict", "--model", path(&weights), "--prompt", "x"]);
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("not a .gguf file"), "{err}");
    assert!(!err.contains("this folder"), "{err}");
}

#[test]
fn a_name_that_is_neither_a_path_nor_a_hub_id() {
    let err = fails(&["predict", "--model", "qwen2.5", "--prompt", "x"]);
    assert!(err.contains("\"qwen2.5\""), "{err}");
    assert!(err.contains(".gguf file nor a hub id"), "{err}");
}

#[test]
fn corrupt_safetensors() {
    let dir = copy_fixture("tiny-tied");
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&["predict", "--model", path(dir.path()), "--prompt", "x"]);
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unsupported_model_type() {
    let dir = copy_fixture("tiny-tied");
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"qwen2\"", "\"llama\"");
    std::fs::write(&config, text).unwrap();
    let err = fails(&["predict", "--model", path(dir.path()), "--prompt", "x"]);
    assert!(err.contains("llama") && err.contains("qwen2"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("tiny-untied");
    let index = dir.path().join("model.safetensors.index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    // Point the index at the first shard only: the second shard's tensors go missing.
    let map = json["weight_map"].as_object_mut().unwrap();
    let first = map.values().next().unwrap().clone();
    for v in map.values_mut() {
        *v = first.clone();
    }
    std::fs::write(&index, json.to_string()).unwrap();
    let err = fails(&["predict", "--model", path(dir.path()), "--prompt", "x"]);
    assert!(err.contains("tensor") && err.contains("missing"), "{err}");
}

#[test]
fn empty_prompt() {
    let folder = fixture("tiny-tied");
    let err = fails(&["predict", "--model", path(&folder), "--prompt", ""]);
    assert!(err.contains("--prompt"), "{err}");
}

#[test]
fn prompt_longer_than_the_model_takes() {
    let folder = fixture("tiny-tied");
    let long = "word ".repeat(300);
    let err = fails(&["predict", "--model", path(&folder), "--prompt", &long]);
    assert!(err.contains("max_position_embeddings"), "{err}");
}

#[test]
fn chat_without_template() {
    let dir = copy_fixture("tiny-untied");
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    let err = fails(&[
        "predict",
        "--model",
        path(dir.path()),
        "--prompt",
        "x",
        "--chat",
    ]);
    assert!(
        err.contains("--chat") && err.contains("chat template"),
        "{err}"
    );
}

#[test]
fn unreachable_hub() {
    let err = fails(&[
        "predict",
        "--model",
        "Qwen/Qwen2.5-1.5B-Instruct",
        "--prompt",
        "x",
    ]);
    assert!(
        err.contains("--model") && err.contains("local folder"),
        "{err}"
    );
}

#[test]
fn unknown_backend() {
    let folder = fixture("tiny-tied");
    let err = fails(&[
        "predict",
        "--model",
        path(&folder),
        "--prompt",
        "x",
        "--backend",
        "tpu",
    ]);
    assert!(err.contains("--backend"), "{err}");
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("model.gguf");
    let bytes = std::fs::read(fixture("gguf/tiny-qwen2.gguf")).unwrap();
    std::fs::write(&gguf, &bytes[..bytes.len() / 3]).unwrap();
    let err = fails(&["predict", "--model", path(&gguf), "--prompt", "x"]);
    assert!(err.contains("model.gguf"), "{err}");
}

#[test]
fn missing_gguf_file() {
    let err = fails(&[
        "predict",
        "--model",
        "./no/such/model.gguf",
        "--prompt",
        "x",
    ]);
    assert!(err.contains("no/such/model.gguf"), "{err}");
}
