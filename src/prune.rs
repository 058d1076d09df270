//! Pruning an attribution graph to the part that matters for the target, with circuit-tracer's
//! rule: node influence on the target through the normalised edge matrix, a cumulative
//! threshold on nodes, then one on edges, then only what still reaches the target.
//!
//! The graph's nodes are [`Attribution::nodes`] in pathway order followed by the target
//! [`TARGET`]. Let `A[v][u] = |score(u → v)|`, each row `v` normalised to sum 1 (a row of zeros
//! stays zero). A node's influence is its entry of `e_target·(A + A² + A³ + …)`; edges only run
//! forward in pathway order, so `A` is strictly lower-triangular and the series is finite. It
//! is computed by one backward sweep: `infl(target) = 1`, `infl(u) = Σ_v infl(v)·A[v][u]`.
//!
//! Edges whose ends are not graph nodes, or which do not run forward in pathway order, are
//! ignored throughout (never weighted, never kept).

use std::collections::HashMap;

use crate::graph::Attribution;

/// The id of the target node that every kept node must reach.
pub const TARGET: &str = "logits";

/// How much of the graph to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PruneOptions {
    /// Keep the most influential nodes until their influence reaches this fraction of the total
    /// influence of all non-target nodes.
    pub node_threshold: f64,
    /// Among edges between kept nodes, keep the highest-scoring ones until their score reaches
    /// this fraction of those edges' total score.
    pub edge_threshold: f64,
    /// Instead of both thresholds: keep the `n` edges with the largest `|Edge::score|`.
    pub top_edges: Option<usize>,
}

impl Default for PruneOptions {
    /// circuit-tracer's defaults: node threshold 0.8, edge threshold 0.98.
    fn default() -> Self {
        PruneOptions {
            node_threshold: 0.8,
            edge_threshold: 0.98,
            top_edges: None,
        }
    }
}

/// What [`prune`] kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    /// Kept node ids in pathway order, always ending with [`TARGET`].
    pub nodes: Vec<String>,
    /// Indices into [`Attribution::edges`] of the kept edges, ascending.
    pub edges: Vec<usize>,
    /// Every node's influence on the target in pathway order, the target last (influence 1).
    pub influence: Vec<(String, f64)>,
    /// The options the graph was pruned with.
    pub options: PruneOptions,
}

impl Pruned {
    /// Whether the node with this id was kept.
    pub fn keeps(&self, id: &str) -> bool {
        self.nodes.iter().any(|n| n == id)
    }

    /// The influence of the node with this id, if it is a node of the graph.
    pub fn influence_of(&self, id: &str) -> Option<f64> {
        self.influence
            .iter()
            .find(|(n, _)| n == id)
            .map(|&(_, x)| x)
    }
}

/// A usable edge: positions of its ends in pathway order, and its index in `a.edges`.
#[derive(Debug, Clone, Copy)]
struct Link {
    source: usize,
    target: usize,
    index: usize,
    /// `|score|` (0 when not finite).
    weight: f64,
    /// `|score|` over its target's row sum: `A[target][source]`.
    normalised: f64,
}

/// Prunes `a` with `options` (see the module docs for the rule).
pub fn prune(a: &Attribution, options: &PruneOptions) -> Pruned {
    let nodes: Vec<&str> = a.nodes.iter().map(|n| n.id.as_str()).collect();
    let edges: Vec<(&str, &str, f64)> = a
        .edges
        .iter()
        .map(|e| (e.source.as_str(), e.target.as_str(), e.score))
        .collect();
    prune_edges(&nodes, &edges, options)
}

/// [`prune`] on the bare graph: node ids in pathway order (without [`TARGET`]) and edges
/// `(source, target, score)`; [`Pruned::edges`] index `edges`.
pub fn prune_edges(nodes: &[&str], edges: &[(&str, &str, f64)], options: &PruneOptions) -> Pruned {
    let ids: Vec<&str> = nodes
        .iter()
        .copied()
        .chain(std::iter::once(TARGET))
        .collect();
    let n = ids.len();
    let target = n - 1;
    let position: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();

    let mut links: Vec<Link> = edges
        .iter()
        .enumerate()
        .filter_map(|(index, &(source, target, score))| {
            let source = *position.get(source)?;
            let target = *position.get(target)?;
            let weight = if score.is_finite() { score.abs() } else { 0.0 };
            (source < target).then_some(Link {
                source,
                target,
                index,
                weight,
                normalised: 0.0,
            })
        })
        .collect();
    let mut row_sum = vec![0.0; n];
    for l in &links {
        row_sum[l.target] += l.weight;
    }
    for l in &mut links {
        if row_sum[l.target] > 0.0 {
            l.normalised = l.weight / row_sum[l.target];
        }
    }

    // Backward sweep: every edge into v comes from an earlier node, so infl(v) is final by the
    // time v is reached in reverse order.
    let mut into: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (k, l) in links.iter().enumerate() {
        into[l.target].push(k);
    }
    let mut infl = vec![0.0; n];
    infl[target] = 1.0;
    for v in (0..n).rev() {
        for &k in &into[v] {
            let l = links[k];
            infl[l.source] += infl[v] * l.normalised;
        }
    }

    let kept_links: Vec<Link> = match options.top_edges {
        Some(count) => {
            let mut order: Vec<usize> = (0..links.len()).collect();
            // Largest |score| first; ties in edge order.
            order.sort_by(|&x, &y| links[y].weight.total_cmp(&links[x].weight));
            order.truncate(count);
            order.into_iter().map(|k| links[k]).collect()
        }
        None => {
            // Nodes by decreasing influence; ties go to the node nearer the target.
            let mut order: Vec<usize> = (0..target).collect();
            order.sort_by(|&x, &y| infl[y].total_cmp(&infl[x]).then(y.cmp(&x)));
            let scores: Vec<f64> = order.iter().map(|&i| infl[i]).collect();
            let mut keep = vec![false; n];
            keep[target] = true;
            for &i in &order[..reach(&scores, options.node_threshold)] {
                keep[i] = true;
            }

            let mut candidates: Vec<(Link, f64)> = links
                .iter()
                .filter(|l| keep[l.source] && keep[l.target])
                .map(|&l| (l, infl[l.target] * l.normalised))
                .collect();
            candidates.sort_by(|x, y| y.1.total_cmp(&x.1));
            let scores: Vec<f64> = candidates.iter().map(|c| c.1).collect();
            candidates.truncate(reach(&scores, options.edge_threshold));
            candidates.into_iter().map(|c| c.0).collect()
        }
    };

    // Only what reaches the target through kept edges (edges run forward, so one reverse sweep
    // finds the fixed point).
    let mut alive = vec![false; n];
    alive[target] = true;
    let mut from: Vec<Vec<usize>> = vec![Vec::new(); n];
    for l in &kept_links {
        from[l.source].push(l.target);
    }
    for u in (0..target).rev() {
        alive[u] = from[u].iter().any(|&v| alive[v]);
    }
    let mut edges: Vec<usize> = kept_links
        .iter()
        .filter(|l| alive[l.source] && alive[l.target])
        .map(|l| l.index)
        .collect();
    edges.sort_unstable();

    Pruned {
        nodes: (0..n)
            .filter(|&i| alive[i])
            .map(|i| ids[i].to_owned())
            .collect(),
        edges,
        influence: ids
            .iter()
            .zip(&infl)
            .map(|(&id, &x)| (id.to_owned(), x))
            .collect(),
        options: *options,
    }
}

/// How many of `sorted` (non-negative, decreasing) it takes for the running sum to reach
/// `threshold` × the total. A tiny relative slack absorbs rounding, so a threshold of 1 does not
/// demand more than the items that carry weight.
fn reach(sorted: &[f64], threshold: f64) -> usize {
    let total: f64 = sorted.iter().sum();
    let goal = threshold * total * (1.0 - 1e-12);
    if goal.is_nan() || goal <= 0.0 {
        return 0;
    }
    let mut sum = 0.0;
    for (k, &x) in sorted.iter().enumerate() {
        sum += x;
        if sum >= goal {
            return k + 1;
        }
    }
    sorted.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Edge, Node, NodeKind};

    const E: &str = "embeddings";
    const A0: &str = "L0_Attn";
    const M0: &str = "L0_MLP";

    /// An attribution with `layers` layers and the given edges `(source, target, score)`.
    fn graph(layers: usize, edges: &[(&str, &str, f64)]) -> Attribution {
        let mut nodes = vec![node(E.into(), NodeKind::Embeddings, None)];
        for i in 0..layers {
            nodes.push(node(format!("L{i}_Attn"), NodeKind::Attn, Some(i)));
            nodes.push(node(format!("L{i}_MLP"), NodeKind::Mlp, Some(i)));
        }
        let edges = edges
            .iter()
            .map(|&(s, t, score)| Edge {
                source: s.into(),
                target: t.into(),
                score,
                per_position: vec![score],
            })
            .collect();
        Attribution::from_graph(nodes, edges)
    }

    fn node(id: String, kind: NodeKind, layer: Option<usize>) -> Node {
        Node {
            id,
            kind,
            layer,
            score: 1.0,
            signed: 1.0,
            per_position: vec![1.0],
        }
    }

    fn close(x: f64, y: f64) -> bool {
        (x - y).abs() < 1e-12
    }

    fn influences(p: &Pruned) -> Vec<f64> {
        p.influence.iter().map(|x| x.1).collect()
    }

    fn thresholds(node: f64, edge: f64) -> PruneOptions {
        PruneOptions {
            node_threshold: node,
            edge_threshold: edge,
            top_edges: None,
        }
    }

    /// e → a, e → m, a → logits (9, strong), m → logits (1, weak).
    fn diamond() -> Attribution {
        graph(
            1,
            &[
                (E, A0, 1.0),
                (E, M0, -5.0),
                (A0, TARGET, 9.0),
                (M0, TARGET, -1.0),
            ],
        )
    }

    #[test]
    fn chain_has_unit_influence_and_drops_the_least_near_tie() {
        let a = graph(
            2,
            &[
                (E, A0, 2.0),
                (A0, M0, -3.0),
                (M0, "L1_Attn", 0.5),
                ("L1_Attn", "L1_MLP", 4.0),
                ("L1_MLP", TARGET, 1.0),
            ],
        );
        let p = prune(&a, &PruneOptions::default());
        // Every row has one entry, normalised to 1: every node has influence 1.
        assert_eq!(influences(&p), vec![1.0; 6]);
        // 0.8 × 5 = 4 nodes; ties go to the nodes nearer the target, so the embeddings go.
        assert_eq!(
            p.nodes,
            ["L0_Attn", "L0_MLP", "L1_Attn", "L1_MLP", "logits"]
        );
        // The four edges among them each score 1; 0.98 × 4 needs all four.
        assert_eq!(p.edges, [1, 2, 3, 4]);
    }

    #[test]
    fn diamond_drops_the_weak_branch() {
        let p = prune(&diamond(), &PruneOptions::default());
        // Row logits: a 0.9, m 0.1; rows a and m: e 1. So e = 0.9 + 0.1 = 1.
        let x = influences(&p);
        assert!(close(x[0], 1.0) && close(x[1], 0.9) && close(x[2], 0.1) && x[3] == 1.0);
        // Total 2, goal 1.6: e (1.0) + a (0.9) reach it.
        assert_eq!(p.nodes, [E, A0, TARGET]);
        // e → a and a → logits both score 0.9.
        assert_eq!(p.edges, [0, 2]);
        assert!(close(p.influence_of(A0).unwrap(), 0.9));
        assert!(p.keeps(E) && !p.keeps(M0));
    }

    #[test]
    fn thresholds_of_one_keep_everything() {
        let p = prune(&diamond(), &thresholds(1.0, 1.0));
        assert_eq!(p.nodes, [E, A0, M0, TARGET]);
        assert_eq!(p.edges, [0, 1, 2, 3]);
    }

    #[test]
    fn nodes_cut_off_from_the_target_are_dropped() {
        // All nodes kept, but edges: e→a 0.9, a→logits 0.9, e→m 0.1, m→logits 0.1; 0.85 × 2
        // = 1.7 is reached by the first two, so m keeps no edge and leaves.
        let p = prune(&diamond(), &thresholds(1.0, 0.85));
        assert_eq!(p.nodes, [E, A0, TARGET]);
        assert_eq!(p.edges, [0, 2]);
        // Node threshold 0.5 keeps only e (1.0 of 2), which has no edge to the target.
        let p = prune(&diamond(), &thresholds(0.5, 0.98));
        assert_eq!(p.nodes, [TARGET]);
        assert!(p.edges.is_empty());
    }

    #[test]
    fn top_edges_keeps_the_largest_scores_that_reach_the_target() {
        let options = PruneOptions {
            top_edges: Some(2),
            ..PruneOptions::default()
        };
        // |9| (a → logits) and |−5| (e → m); m does not reach the target, so e → m and both
        // its ends go.
        let p = prune(&diamond(), &options);
        assert_eq!(p.nodes, [A0, TARGET]);
        assert_eq!(p.edges, [2]);
        let all = PruneOptions {
            top_edges: Some(10),
            ..options
        };
        assert_eq!(prune(&diamond(), &all).edges, [0, 1, 2, 3]);
    }

    #[test]
    fn zero_rows_stay_zero() {
        // Nothing flows into a (row of zeros) and a → logits is 0 too.
        let a = graph(
            1,
            &[
                (E, A0, 0.0),
                (E, M0, 2.0),
                (A0, TARGET, 0.0),
                (M0, TARGET, 3.0),
            ],
        );
        let p = prune(&a, &PruneOptions::default());
        assert_eq!(influences(&p), [1.0, 0.0, 1.0, 1.0]);
        assert_eq!(p.nodes, [E, M0, TARGET]);
        assert_eq!(p.edges, [1, 3]);
    }

    #[test]
    fn no_edges_keeps_only_the_target() {
        let p = prune(&graph(2, &[]), &PruneOptions::default());
        assert_eq!(p.nodes, [TARGET]);
        assert!(p.edges.is_empty());
        assert_eq!(influences(&p), [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn backward_and_unknown_edges_are_ignored() {
        let a = graph(
            1,
            &[
                (M0, A0, 100.0),
                ("nowhere", TARGET, 100.0),
                (A0, TARGET, f64::NAN),
                (E, TARGET, 1.0),
            ],
        );
        let p = prune(&a, &thresholds(1.0, 1.0));
        assert_eq!(influences(&p), [1.0, 0.0, 0.0, 1.0]);
        assert_eq!(p.nodes, [E, TARGET]);
        assert_eq!(p.edges, [3]);
    }
}
