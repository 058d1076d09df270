//! The attribution graph as data: what the JSON holds and what every view draws from.

use serde::{Deserialize, Serialize};

/// What kind of component a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// The token embedding.
    Embeddings,
    /// A layer's self-attention output.
    Attn,
    /// A layer's MLP output.
    Mlp,
}

/// One component and its Grad×Activation scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Stable name: `embeddings`, `L{i}_Attn`, `L{i}_MLP`.
    pub id: String,
    /// What the node is.
    pub kind: NodeKind,
    /// Its layer (`None` for the embeddings).
    pub layer: Option<usize>,
    /// `‖g ⊙ a‖₂` over the node's whole output (all positions and dims).
    pub score: f64,
    /// `Σ g ⊙ a`: the first-order estimate of the target's change if the output were zeroed
    /// (with the sign flipped).
    pub signed: f64,
    /// `‖g ⊙ a‖₂` over the hidden dim at each token position.
    pub per_position: Vec<f64>,
}

/// An edge u → v: u's first-order contribution to the target through v's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// Source node id.
    pub source: String,
    /// Target node id (`logits` for the model's output).
    pub target: String,
    /// `Σ a_u ⊙ g_in(v)` over positions and dims.
    pub score: f64,
    /// The same sum at each position.
    pub per_position: Vec<f64>,
}

/// An attention head as a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// `L{layer}_H{head}`.
    pub id: String,
    /// Layer.
    pub layer: usize,
    /// Head within the layer.
    pub head: usize,
    /// `Σ z_h ⊙ g(z_h)`: the head's first-order effect; a layer's heads sum to its attention
    /// node's `signed`.
    pub signed: f64,
    /// `‖c_h ⊙ g(a)‖₂`, the seed's norm of the head's contribution through o_proj.
    pub score: f64,
    /// That norm at each position.
    pub per_position: Vec<f64>,
}

/// One candidate token of the logit lens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensToken {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub token: String,
    /// Its logit.
    pub logit: f32,
}

/// The logit lens after one node: the final norm and LM head applied to the residual stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensRow {
    /// The node after which the residual stream is read.
    pub after: String,
    /// The target token's rank there (1 = top).
    pub target_rank: usize,
    /// The target token's logit there.
    pub target_logit: f32,
    /// The five highest tokens.
    pub top: Vec<LensToken>,
}

/// One node's check by intervention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCheck {
    /// The node.
    pub id: String,
    /// `Σ (a_new − a) ⊙ g`: the first-order change of the target value.
    pub predicted: f64,
    /// The target value with the node's output replaced, minus the clean value.
    pub actual: f64,
}

impl NodeCheck {
    /// Whether the intervention moved the target the opposite way from the prediction.
    pub fn sign_differs(&self) -> bool {
        self.predicted.signum() != self.actual.signum()
    }
}

/// `--verify`: every node replaced in turn, and how well the gradients predicted the effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// `zero`, `mean` or `patch`.
    pub ablation: String,
    /// The corrupted prompt (`patch`).
    pub corrupt_prompt: Option<String>,
    /// Every node, in pathway order.
    pub nodes: Vec<NodeCheck>,
    /// Pearson correlation of predicted and actual over the nodes.
    pub pearson: f64,
    /// Spearman rank correlation.
    pub spearman: f64,
    /// Share of nodes whose predicted and actual changes have the same sign.
    pub same_sign: f64,
    /// The strongest edges, each swapped for its ablated value in its target's input alone
    /// (`--verify-edges`).
    #[serde(default)]
    pub edges: Vec<EdgeCheck>,
    /// How long each kind of check took.
    #[serde(default)]
    pub seconds: VerificationSeconds,
    /// The pruned graph (`graph-dag`) as a circuit: every edge outside it ablated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<CircuitFaithfulness>,
}

/// How much of the target value the pruned graph alone carries, as EAP-IG's paper defines it:
/// `(circuit − empty) / (clean − empty)`. Every edge outside the circuit is ablated in its
/// target's input alone (patched from the corrupted run, or mean or zero, as `--ablate` says).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitFaithfulness {
    /// Edges in the circuit.
    pub edges: usize,
    /// Edges in the whole graph.
    pub total_edges: usize,
    /// The target value on the clean prompt.
    pub clean: f64,
    /// The target value with every edge outside the circuit ablated.
    pub circuit: f64,
    /// The target value with every edge ablated (the corrupted run, under patching).
    pub empty: f64,
    /// `(circuit − empty) / (clean − empty)`: 1 when the circuit carries everything.
    pub faithfulness: f64,
}

/// Seconds spent on each kind of check of `--verify`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerificationSeconds {
    /// Every node replaced in turn (batched forward passes).
    pub nodes: f64,
    /// The strongest edges swapped in turn.
    pub edges: f64,
    /// The pruned circuit's faithfulness.
    pub circuit: f64,
}

/// EAP-IG (`--ig-steps`): how the gradients were integrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegratedGradients {
    /// Points on the straight line from the baseline to the prompt's input embeddings.
    pub steps: usize,
    /// The baseline's prompt (`--corrupt`), or none for zero embeddings.
    pub baseline_prompt: Option<String>,
    /// The target value on the baseline input.
    pub baseline_value: f64,
}

/// One edge's check: the source's output removed from the target's input branch only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeCheck {
    /// Source node id.
    pub source: String,
    /// Target node id.
    pub target: String,
    /// `−score`: the edge's first-order prediction of that removal.
    pub predicted: f64,
    /// The target value with the removal, minus the clean value.
    pub actual: f64,
}

/// Seconds spent in each phase of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Finding and loading the model (config, weights).
    pub load_s: f64,
    /// Tokenizing the prompt.
    pub tokenize_s: f64,
    /// The forward pass with the taps.
    pub forward_s: f64,
    /// The backward pass.
    pub backward_s: f64,
    /// Reducing gradients and activations to scores.
    pub scores_s: f64,
    /// The logit lens (`--lens`): part of `backward_s` where it ran beside the backward pass
    /// (`lens_beside_backward`), else part of `scores_s`.
    #[serde(default)]
    pub lens_s: f64,
    /// Whether the lens ran beside the backward pass, on the cores its products leave idle:
    /// not by layers (`--checkpoint` recomputes the activations it reads in the backward),
    /// nor where the caller's thread is not one of a rayon pool's (the binary's is).
    #[serde(default)]
    pub lens_beside_backward: bool,
    /// EAP-IG's baseline run and interpolation points (`--ig-steps`).
    #[serde(default)]
    pub ig_s: f64,
    /// The interventions of `--verify`.
    #[serde(default)]
    pub verify_s: f64,
    /// Writing the SVG and PNG.
    pub render_s: f64,
}

/// A whole attribution run: `attribution.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// The `--model` the run used.
    pub model: String,
    /// The prompt as given.
    pub prompt: String,
    /// Whether the chat template wrapped it.
    pub chat: bool,
    /// Token ids the model saw.
    pub input_ids: Vec<u32>,
    /// Those tokens' text.
    pub tokens: Vec<String>,
    /// The argmax next token at the last position.
    pub predicted_id: u32,
    /// Its text.
    pub predicted_token: String,
    /// The token whose logit is the target (the prediction unless `--target` chose another).
    pub target_id: u32,
    /// Its text.
    pub target_token: String,
    /// The target logit.
    pub target_logit: f64,
    /// The token subtracted from the target (`--contrast`), if any.
    pub contrast_id: Option<u32>,
    /// Its text.
    pub contrast_token: Option<String>,
    /// How tokens are scored: `logit`, `logprob` or `prob`.
    pub metric: String,
    /// The prompt position whose next-token prediction is the target (0-based).
    pub target_position: usize,
    /// The attributed value: metric(target) − metric(contrast).
    pub target_value: f64,
    /// The attribution method.
    pub method: String,
    /// Backend name.
    pub backend: String,
    /// Device.
    pub device: String,
    /// Compute dtype.
    pub dtype: String,
    /// How long each phase took.
    pub timings: Timings,
    /// Every node in pathway order: `embeddings`, `L0_Attn`, `L0_MLP`, `L1_Attn`, …
    pub nodes: Vec<Node>,
    /// Every residual-stream edge, by target then source in pathway order.
    pub edges: Vec<Edge>,
    /// Every attention head, by layer then head.
    pub heads: Vec<Head>,
    /// The logit lens after the embeddings and after each sublayer.
    pub lens: Vec<LensRow>,
    /// Head → node edges (`--heads`): from each `L{i}_H{h}` to every node downstream of layer
    /// i's attention; a layer's head edges into a node sum to its attention node's edge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub head_edges: Vec<Edge>,
    /// EAP-IG's path (`--ig-steps`; `method` is then `eap_ig` and every score is taken on the
    /// activations' difference from the baseline run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrated_gradients: Option<IntegratedGradients>,
    /// Node checks by intervention (`--verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

impl Attribution {
    /// The largest node score (the scale of colour and edge widths).
    pub fn max_score(&self) -> f64 {
        self.nodes.iter().map(|n| n.score).fold(0.0, f64::max)
    }

    /// The node with the given id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[cfg(test)]
impl Attribution {
    /// A one-token attribution with the given nodes and edges and placeholder metadata, for
    /// unit tests of code that reads only the graph.
    pub(crate) fn from_graph(nodes: Vec<Node>, edges: Vec<Edge>) -> Self {
        Attribution {
            model: "m".into(),
            prompt: "p".into(),
            chat: false,
            input_ids: vec![1],
            tokens: vec!["p".into()],
            predicted_id: 1,
            predicted_token: "x".into(),
            target_id: 1,
            target_token: "x".into(),
            target_logit: 1.0,
            contrast_id: None,
            contrast_token: None,
            metric: "logit".into(),
            target_position: 0,
            target_value: 1.0,
            method: "grad_x_activation".into(),
            backend: "ndarray".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            timings: Timings::default(),
            nodes,
            edges,
            heads: vec![],
            lens: vec![],
            head_edges: vec![],
            integrated_gradients: None,
            verification: None,
        }
    }
}
