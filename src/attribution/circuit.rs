//! Circuit faithfulness: the model run on the clean prompt with every edge outside a circuit
//! swapped for its ablated value, scored as EAP-IG's paper does:
//! `(m(circuit) − m(empty)) / (m(clean) − m(empty))`.
//!
//! An edge u → v is swapped in v's input branch alone (its `*In` site; `FinalIn` for the
//! logits): `in_v + Σ (r_u − a_u)` over the swapped sources, with `a_u` u's output in the same
//! intervened pass (recorded as the forward reaches it) and `r_u` its replacement (zero, mean or
//! the corrupted prompt's output). With every edge swapped ("empty") under patching this is the
//! corrupted run; with none it is the clean run. One batched pass does all: row 0 is clean,
//! row 1 empty, and each further row one circuit.

use std::collections::{HashMap, HashSet};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::is_node;
use super::verify::Clean;
use crate::model::{ModelError, Probe, Site};

/// The faithfulness of one circuit (the JSON's type: it names no sites).
pub use crate::graph::CircuitFaithfulness as Faithfulness;

/// The probe: records each node's output as the pass reaches it and, at each input site, adds
/// `r_u − a_u` of every source that this row swaps.
struct Swap<B: Backend> {
    rows: usize,
    replaced: HashMap<Site, Tensor<B, 3>>,
    /// `[rows, 1, 1]`: 1 in the rows that swap edge `(u, v's input site)`.
    masks: HashMap<(Site, Site), Tensor<B, 3>>,
    /// `r_u − a_u` of every node reached so far, `[rows, seq, hidden]`.
    deltas: Vec<(Site, Tensor<B, 3>)>,
}

impl<B: Backend> Probe<B> for Swap<B> {
    fn at(&mut self, site: Site, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        if is_node(site) {
            if let Some(r) = self.replaced.get(&site) {
                let delta = r.clone().repeat_dim(0, self.rows) - x.clone();
                self.deltas.push((site, delta));
            }
            return x;
        }
        for (u, delta) in &self.deltas {
            if let Some(mask) = self.masks.get(&(*u, site)) {
                x = x + delta.clone() * mask.clone();
            }
        }
        x
    }
}

/// `m(clean)`, `m(empty)` and `m(circuit)` for each circuit, in one batched pass.
///
/// Every `(u, v)` in `all_edges` is an edge as `(source node site, target's input site)`;
/// each circuit lists the edges it keeps; `replaced` holds each node's replacement
/// (`[seq, hidden]` row-major, as [`super::verify::replacements`] gives).
pub fn run_circuits<B: Backend>(
    clean: &Clean<B>,
    replaced: &HashMap<Site, Vec<f32>>,
    all_edges: &[(Site, Site)],
    circuits: &[Vec<(Site, Site)>],
) -> Result<(f64, f64, Vec<f64>), ModelError> {
    let device = clean.model.model.embed_tokens.weight.val().device();
    let seq = clean.ids.len();
    let hidden = clean.model.config.hidden_size;
    let rows = circuits.len() + 2;
    let kept: Vec<HashSet<(Site, Site)>> = circuits
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let mut masks = HashMap::new();
    for edge in all_edges {
        if !replaced.contains_key(&edge.0) {
            return Err(ModelError::Source(format!(
                "no replacement for {}, the source of an edge",
                edge.0
            )));
        }
        // Row 0 (clean) swaps nothing, row 1 (empty) everything.
        let mask: Vec<f32> = std::iter::once(0.0)
            .chain(std::iter::once(1.0))
            .chain(
                kept.iter()
                    .map(|k| if k.contains(edge) { 0.0 } else { 1.0 }),
            )
            .collect();
        masks.insert(
            *edge,
            Tensor::<B, 3>::from_data(TensorData::new(mask, [rows, 1, 1]), &device),
        );
    }
    let mut probe = Swap {
        rows,
        replaced: replaced
            .iter()
            .map(|(site, values)| {
                let t = Tensor::<B, 3>::from_data(
                    TensorData::new(values.clone(), [1, seq, hidden]),
                    &device,
                );
                (*site, t)
            })
            .collect(),
        masks,
        deltas: Vec::new(),
    };
    let values = clean.rows(rows, &mut probe);
    Ok((values[0], values[1], values[2..].to_vec()))
}

/// `(circuit − empty) / (clean − empty)` for one circuit.
pub fn faithfulness<B: Backend>(
    clean: &Clean<B>,
    replaced: &HashMap<Site, Vec<f32>>,
    all_edges: &[(Site, Site)],
    circuit: &[(Site, Site)],
) -> Result<Faithfulness, ModelError> {
    let (m_clean, empty, values) = run_circuits(clean, replaced, all_edges, &[circuit.to_vec()])?;
    Ok(Faithfulness {
        edges: circuit.len(),
        total_edges: all_edges.len(),
        clean: m_clean,
        circuit: values[0],
        empty,
        faithfulness: (values[0] - empty) / (m_clean - empty),
    })
}
