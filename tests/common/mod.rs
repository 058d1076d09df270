//! Shared by the integration tests: fixture paths, the reference numbers written by
//! `scripts/make_fixtures.py`, and the backend the tests run on.

#![allow(dead_code)]

pub mod edges;
pub mod synthetic;

use std::path::PathBuf;

use serde::Deserialize;

/// The CPU backend every test runs on.
pub type TestBackend = burn::backend::NdArray<f32>;

/// The model's own logits at the last position of `ids`, and its five highest `(id, logit)`.
pub fn last_logits<B: burn::tensor::backend::Backend>(
    model: &attrib::model::Qwen2ForCausalLM<burn::backend::Autodiff<B>>,
    ids: &[u32],
) -> (Vec<f32>, Vec<(u32, f32)>) {
    let logits = model
        .forward_last(attrib::predict::ids_tensor(ids, &Default::default()))
        .inner()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let top = attrib::predict::top_k(&logits, 5)
        .into_iter()
        .map(|(id, l, _)| (id, l))
        .collect();
    (logits, top)
}

/// The fixture model `tests/fixtures/NAME` on backend `B`.
pub fn load_fixture<B: burn::tensor::backend::Backend>(
    name: &str,
) -> attrib::model::Qwen2ForCausalLM<B> {
    use attrib::model::{load::SafetensorsSource, Qwen2Config, Qwen2ForCausalLM};
    let folder = fixture(name);
    let config = Qwen2Config::from_file(&folder.join("config.json")).unwrap();
    let source = SafetensorsSource::from_folder(&folder).unwrap();
    Qwen2ForCausalLM::load(&config, &source, &Default::default()).unwrap()
}

/// The fixture model `tests/fixtures/NAME` on the autodiff test backend.
pub fn fixture_model(
    name: &str,
) -> attrib::model::Qwen2ForCausalLM<burn::backend::Autodiff<TestBackend>> {
    load_fixture(name)
}

/// Runs the `attrib` binary with `args`, the hub pointed at a closed port.
pub fn run_attrib(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_attrib"))
        .args(args)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run attrib")
}

/// `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One candidate of a reference top-5.
#[derive(Debug, Deserialize)]
pub struct RefTop {
    pub id: u32,
    pub token: String,
    pub logit: f32,
    pub prob: f32,
}

/// One `(id, logit)` pair.
#[derive(Debug, Deserialize)]
pub struct RefLogit {
    pub id: u32,
    pub logit: f32,
}

/// One Grad×Activation node of the reference.
#[derive(Debug, Deserialize)]
pub struct RefNode {
    pub id: String,
    pub score: f64,
    pub signed: f64,
    pub per_position: Vec<f64>,
}

/// One reference edge.
#[derive(Debug, Deserialize)]
pub struct RefEdge {
    pub source: String,
    pub target: String,
    pub score: f64,
    pub per_position: Vec<f64>,
}

/// One reference head.
#[derive(Debug, Deserialize)]
pub struct RefHead {
    pub id: String,
    pub layer: usize,
    pub head: usize,
    pub signed: f64,
    pub score: f64,
    pub per_position: Vec<f64>,
}

/// One row of the reference's logit lens (at the last position).
#[derive(Debug, Deserialize)]
pub struct RefLens {
    pub after: String,
    pub target_rank: usize,
    pub target_logit: f32,
    /// Other logits within `1e-4 · (1 + |target_logit|)` of the target's.
    pub target_near: usize,
    pub top: Vec<RefLogit>,
}

/// Runs `f` on a thread of a fresh two-thread rayon pool, as the `attrib` binary attributes
/// (its main thread is one of rayon's): there the logit lens runs beside the backward pass.
/// A pool of its own, so that tests running at the same time never share its threads.
pub fn in_a_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a thread pool")
        .install(f)
}

/// The default attribution of the predicted token with the logit lens, run as the binary
/// runs it ([`in_a_pool`]): the lens beside the backward pass.
pub fn run_with_lens<B: burn::tensor::backend::Backend>(
    model: &attrib::model::Qwen2ForCausalLM<burn::backend::Autodiff<B>>,
    ids: &[u32],
) -> attrib::attribution::Outcome {
    use attrib::attribution::{attribute_loaded_with, Objective, Options};

    let with_lens = Options {
        lens: true,
        ..Options::default()
    };
    let out = in_a_pool(|| {
        attribute_loaded_with(model, ids, Objective::default(), with_lens, &mut |_| {}).unwrap()
    });
    assert!(out.timings.lens_beside_backward && out.timings.lens_s > 0.0);
    out
}

/// A computed lens equals the reference's, row by row: the target's logit and the five
/// highest within `rel · (1 + |logit|)`; the rank apart by at most the reference's
/// `target_near` (logits that close to the target's may fall on either side of it in another
/// summation order: `rel` must be at most half of 1e-4 for that bound to hold); the five
/// highest ids equal except where two of them lie within twice the tolerance. `at` names the
/// case in failures.
pub fn check_lens(at: &str, lens: &[attrib::attribution::LensEntry], want: &[RefLens], rel: f32) {
    let tol = |v: f32| rel * (1.0 + v.abs());
    assert!(
        rel <= 0.5e-4,
        "{at}: a tolerance the reference's target_near does not cover"
    );
    assert_eq!(lens.len(), want.len(), "{at}");
    for (got, want) in lens.iter().zip(want) {
        let at = format!("{at} after {}", want.after);
        assert_eq!(got.after, want.after, "{at}");
        let (logit, t) = (got.target_logit, want.target_logit);
        assert!(
            (logit - t).abs() <= tol(t),
            "{at}: target logit {logit} vs {t}"
        );
        assert!(
            got.target_rank.abs_diff(want.target_rank) <= want.target_near,
            "{at}: rank {} vs {} ({} logits near the target's)",
            got.target_rank,
            want.target_rank,
            want.target_near
        );
        assert_eq!(got.top.len(), want.top.len(), "{at}");
        for (i, (&(id, l), w)) in got.top.iter().zip(&want.top).enumerate() {
            assert!(
                (l - w.logit).abs() <= tol(w.logit),
                "{at}: top {i}: {l} vs {}",
                w.logit
            );
            let tied = (want.top.iter().enumerate())
                .any(|(j, o)| j != i && (o.logit - w.logit).abs() <= 2.0 * tol(w.logit));
            if !tied {
                assert_eq!(id, w.id, "{at}: top {i}");
            }
        }
    }
}

/// One prompt of a reference file.
#[derive(Debug, Deserialize)]
pub struct RefCase {
    pub prompt: String,
    pub chat: bool,
    pub text: String,
    pub input_ids: Vec<u32>,
    pub tokens: Vec<String>,
    /// `[seq][vocab]`, present for the fixtures.
    #[serde(default)]
    pub logits: Vec<Vec<f32>>,
    /// Top-20 logits at the last position, for real models.
    #[serde(default)]
    pub last_logits_top: Vec<RefLogit>,
    pub top5: Vec<RefTop>,
    pub nodes: Vec<RefNode>,
    #[serde(default)]
    pub edges: Vec<RefEdge>,
    #[serde(default)]
    pub heads: Vec<RefHead>,
    /// The logit lens at the last position.
    #[serde(default)]
    pub lens: Vec<RefLens>,
}

/// A `tests/fixtures/reference/*.json` file.
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub model: String,
    pub cases: Vec<RefCase>,
}

/// Reads `tests/fixtures/reference/{name}.json`.
pub fn reference(name: &str) -> Reference {
    let path = fixture("reference").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
