//! `--dtype`: every compiled backend either runs the fixture in half precision close to the f32
//! reference, or refuses in one line before loading anything. One process per run, since a
//! device's precision is fixed once its first tensor exists.

mod common;

use attrib::backends::compiled;
use common::{fixture, reference, run_attrib as attrib};

#[test]
fn half_precision_follows_the_f32_reference_or_is_refused_in_one_line() {
    let name = "tiny-untied";
    let case = &reference(name).cases[0];
    let folder = fixture(name);
    for kind in compiled() {
        // Errors relative to the largest node. bf16 keeps 8 bits of mantissa, f16 11: the
        // bounds are a few of their roundings through two layers (flex measured 3e-3 and
        // 9e-4 on this case), and the lower bound shows the run was not in f32 (2e-7).
        for (dtype, bound) in [("f16", 5e-3), ("bf16", 2e-2)] {
            let out_dir = tempfile::tempdir().unwrap();
            let out = attrib(&[
                "--model",
                folder.to_str().unwrap(),
                "--prompt",
                &case.prompt,
                "--backend",
                kind.name(),
                "--dtype",
                dtype,
                "--out",
                out_dir.path().to_str().unwrap(),
                "--json",
            ]);
            let label = format!("{kind} {dtype}");
            if !out.status.success() {
                // The refusal is the last line (a GPU runtime may have printed its own notes
                // before it), with no panic.
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr.trim().lines().last().unwrap_or_default();
                assert!(
                    last.contains(&format!("--dtype {dtype} is not supported by the {kind}")),
                    "{label}: {stderr}"
                );
                assert!(!stderr.contains("panicked"), "{label}: {stderr}");
                assert!(out.stdout.is_empty(), "{label}");
                assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
                continue;
            }
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json["dtype"], dtype, "{label}");
            assert_eq!(
                json["predicted_id"].as_u64(),
                Some(case.top5[0].id as u64),
                "{label}"
            );
            let largest = case.nodes.iter().map(|n| n.score).fold(0.0, f64::max);
            let errors: Vec<f64> = json["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .zip(&case.nodes)
                .map(|(got, want)| {
                    assert_eq!(got["id"].as_str(), Some(want.id.as_str()), "{label}");
                    (got["score"].as_f64().unwrap() - want.score).abs() / largest
                })
                .collect();
            assert_eq!(errors.len(), case.nodes.len(), "{label}");
            let worst = errors.iter().cloned().fold(0.0, f64::max);
            assert!(worst <= bound, "{label}: worst error {worst:e}");
            assert!(
                worst > 1e-5,
                "{label}: {worst:e} is f32's agreement, not {dtype}'s"
            );
        }
    }
}

#[test]
fn an_unknown_dtype_is_named() {
    let out = attrib(&["--prompt", "x", "--dtype", "fp8"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--dtype \"fp8\""), "{stderr}");
}
