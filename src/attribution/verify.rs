//! Checking what the gradients claim: every node's output replaced in turn, the objective's
//! actual change next to the first-order prediction `Σ (a_new − a) ⊙ g`.
//!
//! The interventions need no gradients, so they run as plain forward passes batched along the
//! batch dimension: row 0 of each batch is the clean prompt (the baseline, computed in the
//! same batched pass so that both sides see the same rounding) and each other row replaces one
//! node's output.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};

use super::Objective;
use crate::model::{ModelError, Probe, Qwen2ForCausalLM, Site};
use crate::predict::ids_tensor;

/// What a node's output is replaced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ablation {
    /// Zero.
    Zero,
    /// Its mean over the prompt's positions, at every position.
    Mean,
    /// Its output on the corrupted prompt (same token length).
    Patch,
}

impl Ablation {
    /// `zero`, `mean` or `patch`.
    pub fn name(self) -> &'static str {
        match self {
            Ablation::Zero => "zero",
            Ablation::Mean => "mean",
            Ablation::Patch => "patch",
        }
    }
}

impl fmt::Display for Ablation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Ablation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zero" => Ok(Ablation::Zero),
            "mean" => Ok(Ablation::Mean),
            "patch" => Ok(Ablation::Patch),
            other => Err(format!("{other:?} is not zero, mean or patch")),
        }
    }
}

/// One node's check.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCheck {
    /// The node.
    pub site: Site,
    /// `Σ (a_new − a) ⊙ g`: the first-order change of the objective.
    pub predicted: f64,
    /// The objective with the node replaced, minus the clean objective.
    pub actual: f64,
}

/// One edge's check: u's contribution removed from v's input only.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeCheck {
    /// Source node id.
    pub source: String,
    /// Target node id (`logits` for the output).
    pub target: String,
    /// The edge score's first-order prediction of the removal: `−Σ a_u ⊙ g_in(v)`.
    pub predicted: f64,
    /// The objective with `a_u` subtracted at v's input branch, minus the clean objective.
    pub actual: f64,
}

/// How well the predictions track the actual changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// Pearson correlation of predicted and actual.
    pub pearson: f64,
    /// Spearman rank correlation (ties share their mean rank).
    pub spearman: f64,
    /// Share of nodes whose predicted and actual changes have the same sign.
    pub same_sign: f64,
}

/// Rows per batched forward pass: enough to read the weights once for many interventions,
/// few enough to keep activations small on long prompts.
fn rows_per_batch(seq: usize) -> usize {
    (4096 / seq.max(1)).clamp(2, 64)
}

/// Replaces one site's output in one batch row.
struct Replace<B: Backend> {
    rows: HashMap<Site, (usize, Tensor<B, 3>)>,
}

impl<B: Backend> Probe<B> for Replace<B> {
    fn at(&mut self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.rows.get(&site) {
            Some((row, with)) => {
                let [_, seq, width] = x.dims();
                x.slice_assign([*row..*row + 1, 0..seq, 0..width], with.clone())
            }
            None => x,
        }
    }
}

/// Subtracts a tensor from one site's input in one batch row (several rows may share a site).
struct Subtract<B: Backend> {
    rows: HashMap<Site, Vec<(usize, Tensor<B, 3>)>>,
}

impl<B: Backend> Probe<B> for Subtract<B> {
    fn at(&mut self, site: Site, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        if let Some(rows) = self.rows.get(&site) {
            let [_, seq, width] = x.dims();
            for (row, delta) in rows {
                let range = [*row..*row + 1, 0..seq, 0..width];
                let new = x.clone().slice(range.clone()) - delta.clone();
                x = x.slice_assign(range, new);
            }
        }
        x
    }
}

/// The path-specific intervention for each `(source, target, score)` edge: the source's clean
/// output subtracted from the target's input branch (its `*In` site; `FinalIn` for
/// `logits`), nothing else changed. `activations` are the node outputs as in [`check_nodes`].
pub fn check_edges<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    ids: &[u32],
    objective: Objective,
    target_id: u32,
    edges: &[(String, String, f64)],
    activations: &HashMap<Site, Vec<f32>>,
) -> Result<Vec<EdgeCheck>, ModelError> {
    let device = model.model.embed_tokens.weight.val().device();
    let seq = ids.len();
    let position = objective.position_in(seq);
    let hidden = model.config.hidden_size;
    let bad = |id: &str| ModelError::Source(format!("{id} is not a node of this model"));
    let mut checks = Vec::with_capacity(edges.len());
    for chunk in edges.chunks(rows_per_batch(seq) - 1) {
        let mut probe = Subtract {
            rows: HashMap::new(),
        };
        for (k, (source, target, _)) in chunk.iter().enumerate() {
            let u: Site = source.parse().map_err(|_| bad(source))?;
            let v = if target == super::LOGITS {
                Site::FinalIn
            } else {
                let v: Site = target.parse().map_err(|_| bad(target))?;
                super::edges::input_site(v).ok_or_else(|| bad(target))?
            };
            let a = activations.get(&u).ok_or_else(|| bad(source))?;
            let delta =
                Tensor::<B, 3>::from_data(TensorData::new(a.clone(), [1, seq, hidden]), &device);
            probe.rows.entry(v).or_default().push((k + 1, delta));
        }
        let rows = chunk.len() + 1;
        let values = objective_rows(model, ids, rows, position, objective, target_id, &mut probe);
        for (k, (source, target, score)) in chunk.iter().enumerate() {
            checks.push(EdgeCheck {
                source: source.clone(),
                target: target.clone(),
                predicted: -score,
                actual: values[k + 1] - values[0],
            });
        }
    }
    Ok(checks)
}

/// The objective in each of `rows` copies of the prompt run with `probe`.
fn objective_rows<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    ids: &[u32],
    rows: usize,
    position: usize,
    objective: Objective,
    target_id: u32,
    probe: &mut dyn Probe<B>,
) -> Vec<f64> {
    let device = model.model.embed_tokens.weight.val().device();
    let logits = model.forward(
        ids_tensor(ids, &device).repeat_dim(0, rows),
        &[position],
        probe,
    );
    let vocab = logits.dims()[2];
    (0..rows)
        .map(|r| {
            let row = logits
                .clone()
                .slice([r..r + 1, 0..1, 0..vocab])
                .reshape([vocab]);
            objective.value(row, target_id).into_scalar().elem::<f64>()
        })
        .collect()
}

/// Records the outputs at the node sites (for patching).
struct Record<B: Backend> {
    sites: Vec<Site>,
    seen: HashMap<Site, Tensor<B, 3>>,
}

impl<B: Backend> Probe<B> for Record<B> {
    fn at(&mut self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.sites.contains(&site) {
            self.seen.insert(site, x.clone());
        }
        x
    }
}

/// Replaces each node in `nodes` in turn and measures the objective.
///
/// `activations` and `gradients` are each node's clean output and the objective's gradient
/// there, `[seq, width]` row-major; `corrupt` the corrupted prompt's ids for
/// [`Ablation::Patch`] (same length as `ids`).
#[allow(clippy::too_many_arguments)]
pub fn check_nodes<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    ids: &[u32],
    objective: Objective,
    target_id: u32,
    nodes: &[Site],
    activations: &HashMap<Site, Vec<f32>>,
    gradients: &HashMap<Site, Vec<f32>>,
    ablation: Ablation,
    corrupt: Option<&[u32]>,
) -> Result<Vec<NodeCheck>, ModelError> {
    let device = model.model.embed_tokens.weight.val().device();
    let seq = ids.len();
    let position = objective.position_in(seq);
    let hidden = model.config.hidden_size;

    // The replacement for each node, [1, seq, hidden] on the device and on the host.
    let patched = match (ablation, corrupt) {
        (Ablation::Patch, Some(c)) if c.len() == seq => {
            let mut record = Record {
                sites: nodes.to_vec(),
                seen: HashMap::new(),
            };
            model.forward(ids_tensor(c, &device), &[position], &mut record);
            Some(record.seen)
        }
        (Ablation::Patch, _) => {
            return Err(ModelError::Source(format!(
                "patching needs a corrupted prompt of the same length ({seq} tokens)"
            )))
        }
        _ => None,
    };
    let mut replacements: Vec<(Site, Vec<f32>)> = Vec::with_capacity(nodes.len());
    for &site in nodes {
        let a = &activations[&site];
        let values = match ablation {
            Ablation::Zero => vec![0.0; a.len()],
            Ablation::Mean => {
                let mut mean = vec![0.0f64; hidden];
                for row in a.chunks_exact(hidden) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += *v as f64;
                    }
                }
                let mean: Vec<f32> = mean.iter().map(|m| (m / seq as f64) as f32).collect();
                mean.iter().copied().cycle().take(a.len()).collect()
            }
            Ablation::Patch => {
                super::to_vec(patched.as_ref().expect("recorded above")[&site].clone())?
            }
        };
        replacements.push((site, values));
    }

    let mut checks = Vec::with_capacity(nodes.len());
    for chunk in replacements.chunks(rows_per_batch(seq) - 1) {
        let rows = chunk.len() + 1;
        let mut probe = Replace {
            rows: chunk
                .iter()
                .enumerate()
                .map(|(k, (site, values))| {
                    let t = Tensor::<B, 3>::from_data(
                        TensorData::new(values.clone(), [1, seq, hidden]),
                        &device,
                    );
                    (*site, (k + 1, t))
                })
                .collect(),
        };
        let values = objective_rows(model, ids, rows, position, objective, target_id, &mut probe);
        for (k, (site, values_new)) in chunk.iter().enumerate() {
            let a = &activations[site];
            let g = &gradients[site];
            let predicted: f64 = values_new
                .iter()
                .zip(a)
                .zip(g)
                .map(|((n, a), g)| (*n as f64 - *a as f64) * *g as f64)
                .sum();
            checks.push(NodeCheck {
                site: *site,
                predicted,
                actual: values[k + 1] - values[0],
            });
        }
    }
    Ok(checks)
}

/// Pearson and Spearman correlations and sign agreement of predicted vs actual.
pub fn agreement(checks: &[NodeCheck]) -> Agreement {
    let p: Vec<f64> = checks.iter().map(|c| c.predicted).collect();
    let a: Vec<f64> = checks.iter().map(|c| c.actual).collect();
    let same = checks
        .iter()
        .filter(|c| c.predicted.signum() == c.actual.signum())
        .count();
    Agreement {
        pearson: pearson(&p, &a),
        spearman: pearson(&ranks(&p), &ranks(&a)),
        same_sign: if checks.is_empty() {
            f64::NAN
        } else {
            same as f64 / checks.len() as f64
        },
    }
}

/// Pearson correlation (NaN when either side is constant or there are fewer than two).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    sxy / (sxx * syy).sqrt()
}

/// 1-based ranks, ties sharing their mean rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_share_ties_and_correlations_are_known_values() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[8.0, 6.0, 4.0, 2.0]) + 1.0).abs() < 1e-12);
        // x and y = (1, 3, 2, 4): cov 4/4·… computed by hand: r = 0.8.
        assert!((pearson(&x, &[1.0, 3.0, 2.0, 4.0]) - 0.8).abs() < 1e-12);
        assert!(pearson(&x, &[1.0; 4]).is_nan());
    }
}
