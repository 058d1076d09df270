//! Synthetic attributions for the drawing tests (no model involved), and helpers to read the
//! drawings back.

use attrib::graph::{Attribution, Node, NodeKind, Timings};
use resvg::usvg::roxmltree;

/// A prompt with chat markup, a line break, quotes and an ampersand, which every drawing must
/// escape and show on one line.
pub const NASTY: &str = "<|im_start|>user\n\"a & b\"";

/// The `2·layers + 1` nodes of a model with `layers` layers, in pathway order (`embeddings`,
/// `L0_Attn`, `L0_MLP`, `L1_Attn`, …); `scores(k)` gives node `k`'s
/// `(score, signed, per_position)`.
pub fn nodes(layers: usize, mut scores: impl FnMut(usize) -> (f64, f64, Vec<f64>)) -> Vec<Node> {
    (0..2 * layers + 1)
        .map(|k| {
            let (id, kind, layer) = match k {
                0 => ("embeddings".to_owned(), NodeKind::Embeddings, None),
                k if k % 2 == 1 => (format!("L{}_Attn", k / 2), NodeKind::Attn, Some(k / 2)),
                k => (
                    format!("L{}_MLP", k / 2 - 1),
                    NodeKind::Mlp,
                    Some(k / 2 - 1),
                ),
            };
            let (score, signed, per_position) = scores(k);
            Node {
                id,
                kind,
                layer,
                score,
                signed,
                per_position,
            }
        })
        .collect()
}

/// Node `k`'s score among `n` nodes: over `k` in `0..n` a permutation of
/// `0, 0.25, …, 0.25·(n − 1)` (all distinct, one of them zero) for any `n` prime to 37.
pub fn permuted_score(k: usize, n: usize) -> f64 {
    ((k * 37) % n) as f64 * 0.25
}

/// An attribution of `nodes`, with no edges, heads or lens, for `prompt` split into `tokens`,
/// whose target ` Paris` (logit 14.5912, also the prediction) is read at `target_position`.
pub fn attribution(
    prompt: &str,
    tokens: Vec<String>,
    target_position: usize,
    nodes: Vec<Node>,
) -> Attribution {
    Attribution {
        model: "Qwen/Qwen2.5-0.5B-Instruct".into(),
        prompt: prompt.into(),
        chat: true,
        input_ids: (1..=tokens.len() as u32).collect(),
        tokens,
        predicted_id: 7,
        predicted_token: " Paris".into(),
        target_id: 7,
        target_token: " Paris".into(),
        target_logit: 14.5912,
        contrast_id: None,
        contrast_token: None,
        metric: "logit".into(),
        target_position,
        target_value: 14.5912,
        method: "grad_x_act".into(),
        backend: "ndarray".into(),
        device: "cpu".into(),
        dtype: "f32".into(),
        timings: Timings::default(),
        nodes,
        edges: vec![],
        heads: vec![],
        lens: vec![],
        head_edges: vec![],
        integrated_gradients: None,
        verification: None,
    }
}

/// The element whose `id` is `id`.
pub fn by_id<'a>(doc: &'a roxmltree::Document, id: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .find(|e| e.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no element with id {id}"))
}

/// The text of every `<text>` element.
pub fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|e| e.has_tag_name("text"))
        .map(|e| e.text().unwrap_or_default().to_owned())
        .collect()
}
