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
use crate::model::resume::Resume;
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

/// One edge's check: u's output swapped for its replacement in v's input only.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeCheck {
    /// Source node id.
    pub source: String,
    /// Target node id (`logits` for the output).
    pub target: String,
    /// The first-order prediction `Σ (r_u − a_u) ⊙ g_in(v)` (`−score` for zero ablation).
    pub predicted: f64,
    /// The objective with the swap at v's input branch, minus the clean objective.
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

/// The clean run that interventions are measured against, and how they are batched.
#[derive(Debug, Clone, Copy)]
pub struct Clean<'a, B: Backend> {
    /// The model.
    pub model: &'a Qwen2ForCausalLM<B>,
    /// The prompt's ids.
    pub ids: &'a [u32],
    /// What is measured.
    pub objective: Objective,
    /// The token the objective scores.
    pub target_id: u32,
    /// Interventions per batched forward pass (each pass also carries the clean prompt); by
    /// default as many as fit 4,096 token-rows, at most 63.
    pub per_pass: Option<usize>,
}

impl<B: Backend> Clean<'_, B> {
    /// Interventions per batched forward pass: enough to read the weights once for many, few
    /// enough to keep activations small on long prompts.
    fn per_pass(&self) -> usize {
        self.per_pass
            .unwrap_or((4096 / self.ids.len().max(1)).clamp(2, 64) - 1)
            .max(1)
    }

    /// The objective of each run resumed from the clean residual stream (see
    /// [`Qwen2ForCausalLM::forward_resumed`]), in the order given: `(sublayer, residual,
    /// branch)`, `[seq, hidden]` row-major.
    fn resumed(&self, runs: Vec<(usize, Vec<f32>, Option<Vec<f32>>)>) -> Vec<f64> {
        let device = self.model.model.embed_tokens.weight.val().device();
        let seq = self.ids.len();
        let hidden = self.model.config.hidden_size;
        let tensor = |values: Vec<f32>| {
            Tensor::<B, 3>::from_data(TensorData::new(values, [1, seq, hidden]), &device)
        };
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by_key(|&i| runs[i].0);
        let mut runs: Vec<Option<_>> = runs.into_iter().map(Some).collect();
        let sorted: Vec<Resume<B>> = order
            .iter()
            .map(|&i| {
                let (sublayer, residual, branch) = runs[i].take().expect("each run once");
                Resume {
                    sublayer,
                    residual: tensor(residual),
                    branch: branch.map(tensor),
                }
            })
            .collect();
        let position = self.objective.position_in(seq);
        let logits = self.model.forward_resumed(sorted, &[position]);
        let values = row_values(logits, self.objective, self.target_id);
        let mut out = vec![0.0; values.len()];
        for (k, &i) in order.iter().enumerate() {
            out[i] = values[k];
        }
        out
    }

    /// The objective's change in each run against the clean run, which joins them at the final
    /// norm (`residuals` as [`clean_residuals`] gives them).
    fn changes(
        &self,
        mut runs: Vec<(usize, Vec<f32>, Option<Vec<f32>>)>,
        residuals: &[Vec<f32>],
    ) -> Vec<f64> {
        let last = residuals.len() - 1;
        runs.push((last, residuals[last].clone(), None));
        let mut values = self.resumed(runs);
        let base = values.pop().expect("the clean run");
        values.iter().map(|v| v - base).collect()
    }

    /// The objective in each of `rows` copies of the prompt run with `probe`.
    pub(super) fn rows(&self, rows: usize, probe: &mut dyn Probe<B>) -> Vec<f64> {
        let position = self.objective.position_in(self.ids.len());
        objective_rows(
            self.model,
            self.ids,
            rows,
            position,
            self.objective,
            self.target_id,
            probe,
        )
    }
}

/// The site whose input branch carries edge `source → target`: the target's `*In` site
/// (`FinalIn` for `logits`), with the source's node site.
pub fn edge_sites(source: &str, target: &str) -> Result<(Site, Site), ModelError> {
    let bad = |id: &str| ModelError::Source(format!("{id} is not a node of this model"));
    let u: Site = source.parse().map_err(|_| bad(source))?;
    if !super::is_node(u) {
        return Err(bad(source));
    }
    let v = if target == super::LOGITS {
        Site::FinalIn
    } else {
        let v: Site = target.parse().map_err(|_| bad(target))?;
        super::edges::input_site(v).ok_or_else(|| bad(target))?
    };
    Ok((u, v))
}

/// The path-specific intervention for each `(source, target)` edge: in the target's input
/// branch alone (its `*In` site; `FinalIn` for `logits`), the source's clean output is swapped
/// for its replacement (zero, mean or corrupted: see [`replacements`]); nothing else changes.
/// The prediction is `Σ (r_u − a_u) ⊙ g_in(v)`, which for zero ablation is `−score`.
/// `activations`, `gradients` and `replaced` are as in [`check_nodes`].
pub fn check_edges<B: Backend>(
    clean: &Clean<B>,
    edges: &[(String, String)],
    activations: &HashMap<Site, Vec<f32>>,
    gradients: &HashMap<Site, Vec<f32>>,
    replaced: &HashMap<Site, Vec<f32>>,
) -> Result<Vec<EdgeCheck>, ModelError> {
    let layers = clean.model.config.num_hidden_layers;
    let residuals = clean_residuals(layers, activations)?;
    let missing = |site: Site| ModelError::Source(format!("no activation recorded at {site}"));
    let mut checks = Vec::with_capacity(edges.len());
    for chunk in edges.chunks(clean.per_pass()) {
        let mut runs = Vec::with_capacity(chunk.len() + 1);
        let mut predicted = Vec::with_capacity(chunk.len());
        for (source, target) in chunk {
            let (u, v) = edge_sites(source, target)?;
            let a = activations.get(&u).ok_or_else(|| missing(u))?;
            let r = replaced.get(&u).ok_or_else(|| missing(u))?;
            let g = gradients.get(&v).ok_or_else(|| missing(v))?;
            predicted.push(first_order(r, a, g));
            let s = input_sublayer(v, layers).ok_or_else(|| missing(v))?;
            let x = &residuals[s];
            // x − (a − r), in the order the branch would see it.
            let branch = x
                .iter()
                .zip(a.iter().zip(r))
                .map(|(x, (a, r))| x - (a - r))
                .collect();
            runs.push((s, x.clone(), Some(branch)));
        }
        let actual = clean.changes(runs, &residuals);
        for ((source, target), (predicted, actual)) in
            chunk.iter().zip(predicted.into_iter().zip(actual))
        {
            checks.push(EdgeCheck {
                source: source.clone(),
                target: target.clone(),
                predicted,
                actual,
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
    row_values(logits, objective, target_id)
}

/// The objective of each row of `[rows, 1, vocab]` logits.
fn row_values<B: Backend>(logits: Tensor<B, 3>, objective: Objective, target_id: u32) -> Vec<f64> {
    let [rows, _, vocab] = logits.dims();
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

/// `Σ (r − a) ⊙ g` in f64: the first-order change of the objective when `a` becomes `r`.
fn first_order(r: &[f32], a: &[f32], g: &[f32]) -> f64 {
    r.iter()
        .zip(a)
        .zip(g)
        .map(|((r, a), g)| (*r as f64 - *a as f64) * *g as f64)
        .sum()
}

/// Where a node's output joins the residual stream: its index in pathway order (`Embed` 0,
/// `AttnOut(l)` `2l + 1`, `MlpOut(l)` `2l + 2`), which is also the sublayer after it.
fn pathway_index(site: Site) -> Option<usize> {
    match site {
        Site::Embed => Some(0),
        Site::AttnOut(l) => Some(2 * l + 1),
        Site::MlpOut(l) => Some(2 * l + 2),
        _ => None,
    }
}

/// The sublayer whose branch an input site feeds (`FinalIn`: `2L`, the final norm).
fn input_sublayer(site: Site, layers: usize) -> Option<usize> {
    match site {
        Site::AttnIn(l) => Some(2 * l),
        Site::MlpIn(l) => Some(2 * l + 1),
        Site::FinalIn => Some(2 * layers),
        _ => None,
    }
}

/// The clean residual stream entering every sublayer, `x_0 ..= x_{2L}` (`x_0` the embeddings,
/// `x_{s+1} = x_s +` sublayer s's output), summed in f32 in the forward's order so that each is
/// the forward's own, bit for bit.
fn clean_residuals(
    layers: usize,
    activations: &HashMap<Site, Vec<f32>>,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(2 * layers + 1);
    for site in Site::all(layers).into_iter().filter(|s| super::is_node(*s)) {
        let a = activations
            .get(&site)
            .ok_or_else(|| ModelError::Source(format!("no activation recorded at {site}")))?;
        let next = match out.last() {
            Some(x) => x.iter().zip(a).map(|(x, a)| x + a).collect(),
            None => a.clone(),
        };
        out.push(next);
    }
    Ok(out)
}

/// Records the activation at every site `keep` accepts, optionally with the token embedding
/// replaced by zeros (EAP-IG's zero baseline).
pub(super) struct Record<B: Backend> {
    /// Which sites to record.
    pub keep: fn(Site) -> bool,
    /// Whether the token embedding is replaced by zeros.
    pub zero_embeddings: bool,
    /// What was recorded.
    pub seen: HashMap<Site, Tensor<B, 3>>,
}

impl<B: Backend> Probe<B> for Record<B> {
    fn at(&mut self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = if site == Site::Embed && self.zero_embeddings {
            x.zeros_like()
        } else {
            x
        };
        if (self.keep)(site) {
            self.seen.insert(site, x.clone());
        }
        x
    }
}

/// What each node's output is replaced with under `ablation`, `[seq, width]` row-major:
/// zeros, its mean over the prompt's positions (`activations` are the clean outputs), or its
/// output on the corrupted prompt `corrupt` (same length as `ids`, needed for
/// [`Ablation::Patch`]).
pub fn replacements<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    ids: &[u32],
    nodes: &[Site],
    activations: &HashMap<Site, Vec<f32>>,
    ablation: Ablation,
    corrupt: Option<&[u32]>,
) -> Result<HashMap<Site, Vec<f32>>, ModelError> {
    let device = model.model.embed_tokens.weight.val().device();
    let seq = ids.len();
    let hidden = model.config.hidden_size;
    let patched = match (ablation, corrupt) {
        (Ablation::Patch, Some(c)) if c.len() == seq => {
            let mut record = Record {
                keep: super::is_node,
                zero_embeddings: false,
                seen: HashMap::new(),
            };
            model.forward(ids_tensor(c, &device), &[seq - 1], &mut record);
            Some(record.seen)
        }
        (Ablation::Patch, _) => {
            return Err(ModelError::Source(format!(
                "patching needs a corrupted prompt of the same length ({seq} tokens)"
            )))
        }
        _ => None,
    };
    let mut out = HashMap::with_capacity(nodes.len());
    for &site in nodes {
        let a = activations
            .get(&site)
            .ok_or_else(|| ModelError::Source(format!("no activation recorded at {site}")))?;
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
        out.insert(site, values);
    }
    Ok(out)
}

/// Replaces each node in `nodes` in turn and measures the objective.
///
/// `activations` and `gradients` are each node's clean output and the objective's gradient
/// there (ḡ under EAP-IG), `replaced` what each node is replaced with ([`replacements`]), all
/// `[seq, width]` row-major.
pub fn check_nodes<B: Backend>(
    clean: &Clean<B>,
    nodes: &[Site],
    activations: &HashMap<Site, Vec<f32>>,
    gradients: &HashMap<Site, Vec<f32>>,
    replaced: &HashMap<Site, Vec<f32>>,
) -> Result<Vec<NodeCheck>, ModelError> {
    let layers = clean.model.config.num_hidden_layers;
    let residuals = clean_residuals(layers, activations)?;
    let missing = |site: Site| ModelError::Source(format!("no activation recorded at {site}"));
    let mut checks = Vec::with_capacity(nodes.len());
    for chunk in nodes.chunks(clean.per_pass()) {
        let mut runs = Vec::with_capacity(chunk.len() + 1);
        for site in chunk {
            let r = replaced.get(site).ok_or_else(|| missing(*site))?;
            // The run starts right after the node, from the stream it would have written.
            let i = pathway_index(*site).ok_or_else(|| missing(*site))?;
            let residual = match i {
                0 => r.clone(),
                _ => residuals[i - 1].iter().zip(r).map(|(x, r)| x + r).collect(),
            };
            runs.push((i, residual, None));
        }
        let actual = clean.changes(runs, &residuals);
        for (site, actual) in chunk.iter().zip(actual) {
            let a = activations.get(site).ok_or_else(|| missing(*site))?;
            let g = gradients.get(site).ok_or_else(|| missing(*site))?;
            checks.push(NodeCheck {
                site: *site,
                predicted: first_order(&replaced[site], a, g),
                actual,
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
