//! The pruned graph in the attribution-graph JSON that Neuronpedia's and circuit-tracer's
//! graph viewers read (`graph.neuronpedia.json`).
//!
//! That format is per token position: a node is a component at one position (`ctx_idx`), a
//! link joins two such nodes. Ids follow circuit-tracer's conventions:
//!
//! | node | `node_id` | `layer` | `feature` | `feature_type` |
//! |---|---|---|---|---|
//! | embedding of token `t` at `p` | `E_{t}_{p}` | `"E"` | `p` | `embedding` |
//! | layer `l`'s attention at `p` | `{l}_0_{p}` | `"{l}"` | 0 | `attention` |
//! | layer `l`'s MLP at `p` | `{l}_1_{p}` | `"{l}"` | 1 | `mlp` |
//! | the target token `t` | `{L+1}_{t}_{p}` | `"{L+1}"` | `t` | `logit` |
//!
//! A residual edge `u → v` becomes one link per position `p`: `u@p → v@p`, weighted by the
//! edge's term at `p` (`Σ_d a_u[p] ⊙ g_in(v)[p]`), so a kept edge's links sum to its score.
//! Positions mix only inside attention, and one backward pass cannot split that mixing by
//! position: a link into an attention node at `p` is what reaches the target through what the
//! attention reads at `p` (its query, key and value there); a link out of it is its output at
//! `p`. Only the components and edges that [`prune`](crate::prune::prune) kept are exported;
//! every embedding position is, as circuit-tracer does.
//!
//! `influence` is circuit-tracer's cumulative influence: sort the components by influence on
//! the target, largest first; a component's value is the running share of the total reached
//! once it is included, so a viewer's `node_threshold` keeps those at or below it.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::graph::{Attribution, NodeKind};
use crate::prune::{Pruned, TARGET};

/// The schema version written to `metadata.schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeuronpediaGraph {
    /// What the graph is of and how it was made.
    pub metadata: Metadata,
    /// The viewer's saved state: nothing pinned, nothing clicked.
    #[serde(rename = "qParams")]
    pub q_params: QParams,
    /// Component-at-position nodes.
    pub nodes: Vec<GraphNode>,
    /// Links between them.
    pub links: Vec<Link>,
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The graph's id in a viewer.
    pub slug: String,
    /// The model id.
    pub scan: String,
    /// The prompt as given.
    pub prompt: String,
    /// The prompt's tokens as text.
    pub prompt_tokens: Vec<String>,
    /// The node threshold the viewer prunes with by default.
    pub node_threshold: f64,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// What made the graph and how to read it.
    pub info: Info,
    /// The pruning the export used.
    pub pruning_settings: PruningSettings,
}

/// `metadata.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// How the scores were computed and what a link means.
    pub description: String,
    /// This program.
    pub generator: Generator,
}

/// `metadata.info.generator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generator {
    /// `attrib`.
    pub name: String,
    /// The crate version.
    pub version: String,
}

/// `metadata.pruning_settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruningSettings {
    /// `--node-threshold`.
    pub node_threshold: f64,
    /// `--edge-threshold`.
    pub edge_threshold: f64,
    /// `--top-edges`, when it replaced both thresholds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_edges: Option<usize>,
}

/// `qParams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// Pinned node ids.
    #[serde(rename = "pinnedIds")]
    pub pinned_ids: Vec<String>,
    /// Groups of node ids shown as one.
    pub supernodes: Vec<Vec<String>>,
    /// Which links of a clicked node to show.
    #[serde(rename = "linkType")]
    pub link_type: String,
    /// The clicked node.
    #[serde(rename = "clickedId")]
    pub clicked_id: String,
    /// Subgraph positions.
    pub sg_pos: String,
}

/// One node: a component at one token position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    /// Unique id (see the module docs).
    pub node_id: String,
    /// Index within the layer (0 attention, 1 MLP), the position for embeddings, the token id
    /// for the logit.
    pub feature: i64,
    /// `"E"`, the layer index, or one past the last layer for the logit.
    pub layer: String,
    /// Token position.
    pub ctx_idx: usize,
    /// `embedding`, `attention`, `mlp` or `logit`.
    pub feature_type: String,
    /// The viewer's id for the node.
    #[serde(rename = "jsNodeId")]
    pub js_node_id: String,
    /// A readable label.
    pub clerp: String,
    /// Cumulative influence of the node's component (see the module docs); none for the logit.
    pub influence: Option<f64>,
    /// `‖g ⊙ a‖₂` of the component's output at this position; the target value for the logit.
    pub activation: Option<f64>,
    /// Whether this is the attributed logit.
    pub is_target_logit: bool,
}

/// One link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Source `node_id`.
    pub source: String,
    /// Target `node_id`.
    pub target: String,
    /// The edge's term at this position.
    pub weight: f64,
}

/// The viewer file for `a` pruned as `pruned` (which must come from
/// [`prune`](crate::prune::prune) on `a`). `slug` names the graph; `scan` is the model id.
pub fn neuronpedia_graph(a: &Attribution, pruned: &Pruned, slug: &str) -> NeuronpediaGraph {
    let layers = a
        .nodes
        .iter()
        .filter_map(|n| n.layer)
        .max()
        .map_or(0, |l| l + 1);
    let positions = a.tokens.len();
    let influence = cumulative_influence(pruned);
    let node_id = |id: &str, p: usize| slot(a, layers, id, p).map(|s| s.node_id);

    let mut links = Vec::new();
    let mut linked: HashSet<(usize, usize)> = HashSet::new();
    let index: HashMap<&str, usize> = a
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .chain([(TARGET, a.nodes.len())])
        .collect();
    for e in pruned.edges.iter().filter_map(|&i| a.edges.get(i)) {
        let (Some(&u), Some(&v)) = (index.get(e.source.as_str()), index.get(e.target.as_str()))
        else {
            continue;
        };
        for (p, &w) in e.per_position.iter().enumerate().take(positions) {
            if w == 0.0 || !w.is_finite() || (e.target == TARGET && p != a.target_position) {
                continue;
            }
            let (Some(source), Some(target)) = (node_id(&e.source, p), node_id(&e.target, p))
            else {
                continue;
            };
            links.push(Link {
                source,
                target,
                weight: w,
            });
            linked.insert((u, p));
            linked.insert((v, p));
        }
    }

    let mut nodes = Vec::new();
    for (i, n) in a.nodes.iter().enumerate() {
        if !pruned.keeps(&n.id) && n.kind != NodeKind::Embeddings {
            continue;
        }
        for p in 0..positions {
            let activation = n.per_position.get(p).copied().unwrap_or(0.0);
            let wanted = n.kind == NodeKind::Embeddings
                || linked.contains(&(i, p))
                || (activation != 0.0 && activation.is_finite());
            let Some(slot) = slot(a, layers, &n.id, p).filter(|_| wanted) else {
                continue;
            };
            nodes.push(GraphNode {
                clerp: clerp(a, &n.id, n.kind, n.layer, p),
                influence: influence.get(n.id.as_str()).copied(),
                activation: Some(activation).filter(|x| x.is_finite()),
                is_target_logit: false,
                ..slot.node(p)
            });
        }
    }
    if let Some(slot) = slot(a, layers, TARGET, a.target_position) {
        nodes.push(GraphNode {
            clerp: logit_label(a),
            influence: None,
            activation: Some(a.target_value).filter(|x| x.is_finite()),
            is_target_logit: true,
            ..slot.node(a.target_position)
        });
    }

    let o = &pruned.options;
    NeuronpediaGraph {
        metadata: Metadata {
            slug: slug.to_string(),
            scan: scan_of(&a.model),
            prompt: a.prompt.clone(),
            prompt_tokens: a.tokens.clone(),
            node_threshold: o.node_threshold,
            schema_version: SCHEMA_VERSION,
            info: Info {
                description: description(a),
                generator: Generator {
                    name: "attrib".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                },
            },
            pruning_settings: PruningSettings {
                node_threshold: o.node_threshold,
                edge_threshold: o.edge_threshold,
                top_edges: o.top_edges,
            },
        },
        q_params: QParams {
            pinned_ids: vec![],
            supernodes: vec![],
            link_type: "both".into(),
            clicked_id: String::new(),
            sg_pos: String::new(),
        },
        nodes,
        links,
    }
}

/// Where a component at one position sits in the viewer's format (see the module docs).
struct Slot {
    node_id: String,
    js_node_id: String,
    feature: i64,
    layer: String,
    feature_type: &'static str,
}

impl Slot {
    /// A node at position `p` with these ids and no label, influence or activation yet.
    fn node(self, p: usize) -> GraphNode {
        GraphNode {
            node_id: self.node_id,
            feature: self.feature,
            layer: self.layer,
            ctx_idx: p,
            feature_type: self.feature_type.into(),
            js_node_id: self.js_node_id,
            clerp: String::new(),
            influence: None,
            activation: None,
            is_target_logit: false,
        }
    }
}

/// The slot of node `id` (or [`TARGET`]) at position `p` in a model of `layers` layers.
fn slot(a: &Attribution, layers: usize, id: &str, p: usize) -> Option<Slot> {
    if id == TARGET {
        let (layer, t) = (layers + 1, a.target_id);
        return Some(Slot {
            node_id: format!("{layer}_{t}_{p}"),
            js_node_id: format!("L_{t}-{p}"),
            feature: i64::from(t),
            layer: layer.to_string(),
            feature_type: "logit",
        });
    }
    let n = a.node(id)?;
    Some(match (n.kind, n.layer) {
        (NodeKind::Embeddings, _) => {
            let t = a.input_ids.get(p)?;
            Slot {
                node_id: format!("E_{t}_{p}"),
                js_node_id: format!("E_{t}-{p}"),
                feature: p as i64,
                layer: "E".into(),
                feature_type: "embedding",
            }
        }
        (kind, Some(l)) => {
            let (k, feature_type) = if kind == NodeKind::Attn {
                (0, "attention")
            } else {
                (1, "mlp")
            };
            Slot {
                node_id: format!("{l}_{k}_{p}"),
                js_node_id: format!("{l}_{k}-{p}"),
                feature: k,
                layer: l.to_string(),
                feature_type,
            }
        }
        _ => return None,
    })
}

/// A slug for the graph: the model's short name and the prompt's first words, lowercase ASCII
/// letters, digits and dashes, at most 64 characters.
pub fn default_slug(a: &Attribution) -> String {
    let raw = format!("{} {}", scan_of(&a.model), a.prompt);
    let mut slug = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 64 {
            break;
        }
    }
    let slug = slug.trim_matches('-').to_string();
    if slug.is_empty() {
        "graph".into()
    } else {
        slug
    }
}

/// The model id a viewer knows: the last component of a hub id or path, lowercase, without a
/// `.gguf` extension.
fn scan_of(model: &str) -> String {
    let last = model
        .trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(model);
    let last = last.strip_suffix(".gguf").unwrap_or(last);
    last.to_lowercase()
}

/// Each kept component's cumulative influence (see the module docs).
fn cumulative_influence(pruned: &Pruned) -> HashMap<&str, f64> {
    let mut ranked: Vec<(&str, f64)> = pruned
        .influence
        .iter()
        .filter(|(id, _)| id != TARGET)
        .map(|(id, x)| (id.as_str(), if x.is_finite() { x.max(0.0) } else { 0.0 }))
        .collect();
    ranked.sort_by(|x, y| y.1.total_cmp(&x.1));
    let total: f64 = ranked.iter().map(|(_, x)| x).sum();
    let mut running = 0.0;
    ranked
        .into_iter()
        .map(|(id, x)| {
            running += x;
            let share = if total > 0.0 { running / total } else { 1.0 };
            (id, share.min(1.0))
        })
        .collect()
}

/// `L3 attention at " France"`, `Embedding " France"`.
fn clerp(a: &Attribution, id: &str, kind: NodeKind, layer: Option<usize>, p: usize) -> String {
    let token = a.tokens.get(p).map(String::as_str).unwrap_or("");
    match (kind, layer) {
        (NodeKind::Embeddings, _) => format!("Embedding {token:?}"),
        (NodeKind::Attn, Some(l)) => format!("L{l} attention at {token:?}"),
        (NodeKind::Mlp, Some(l)) => format!("L{l} MLP at {token:?}"),
        _ => format!("{id} at {token:?}"),
    }
}

/// `Output " Paris" (logit 14.591)`, or the difference with `--contrast`.
fn logit_label(a: &Attribution) -> String {
    let what = match &a.contrast_token {
        Some(c) => format!("{:?} − {c:?}", a.target_token),
        None => format!("{:?}", a.target_token),
    };
    let metric = match (&a.contrast_token, a.metric.as_str()) {
        (Some(_), m) => format!("{m} difference"),
        (None, m) => m.to_string(),
    };
    format!("Output {what} ({metric} {:.4})", a.target_value)
}

/// `metadata.info.description`.
fn description(a: &Attribution) -> String {
    format!(
        "Grad×Activation attribution of the {} of {:?} at position {} ({} on {}). Nodes are \
         the embeddings and each layer's attention and MLP outputs at each token position, \
         with activation ‖grad ⊙ output‖₂ there; links are residual-stream edges \
         Σ a_u ⊙ grad at v's input, split by position. Positions mix only inside attention: \
         a link into an attention node at a position is what reaches the target through what \
         it reads there.",
        a.metric, a.target_token, a.target_position, a.backend, a.dtype
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_are_the_models_short_lowercase_name() {
        assert_eq!(
            scan_of("Qwen/Qwen2.5-1.5B-Instruct"),
            "qwen2.5-1.5b-instruct"
        );
        assert_eq!(
            scan_of("/m/qwen2.5-coder-0.5b-q4_k_m.gguf"),
            "qwen2.5-coder-0.5b-q4_k_m"
        );
        assert_eq!(scan_of("models/tiny/"), "tiny");
    }

    #[test]
    fn cumulative_influence_runs_from_the_strongest() {
        let pruned = Pruned {
            nodes: vec![],
            edges: vec![],
            influence: vec![
                ("a".into(), 0.1),
                ("b".into(), 0.6),
                ("c".into(), 0.3),
                (TARGET.into(), 1.0),
            ],
            options: Default::default(),
        };
        let c = cumulative_influence(&pruned);
        assert!((c["b"] - 0.6).abs() < 1e-12);
        assert!((c["c"] - 0.9).abs() < 1e-12);
        assert!((c["a"] - 1.0).abs() < 1e-12);
        assert!(!c.contains_key(TARGET));
    }
}
