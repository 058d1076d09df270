//! Grad×Activation attribution: one forward with zero taps at every site, one backward of the
//! target logit, then `g ⊙ a` reduced per node.

pub mod circuit;
pub mod edges;
mod extras;
pub mod heads;
pub mod ig;
pub mod lens;
pub mod pass;
pub mod scores;
pub mod taps;
pub mod target;
pub mod verify;

use std::collections::HashMap;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::backends::{self, BackendJob, Selection};
use crate::graph::Timings;
use crate::model::{ModelError, Qwen2Config, Qwen2ForCausalLM, Site};
use crate::predict::load_model;
use crate::progress::Progress;
use crate::prune::{prune_edges, PruneOptions};
use crate::source::ModelFiles;

pub use circuit::Faithfulness;
pub use edges::{EdgeScore, LOGITS};
pub use heads::HeadScore;
pub use lens::LensEntry;
pub use pass::{Pass, Tapped};
pub use scores::{grad_times_activation, GradTimesActivation};
pub use taps::{Tap, Taps};
pub use target::{Metric, Objective, Target};
pub use verify::{agreement, Ablation, Agreement, EdgeCheck, NodeCheck};

/// What to attribute.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The model's files.
    pub files: &'a ModelFiles,
    /// Its config (already read, so that bad input fails before loading weights).
    pub config: &'a Qwen2Config,
    /// The prompt's token ids.
    pub ids: &'a [u32],
    /// What is attributed.
    pub objective: Objective,
    /// What is computed besides nodes, edges, heads and the lens.
    pub options: Options,
}

/// Optional, costlier parts of an attribution.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// Edges from every attention head to every node downstream of its layer's attention.
    pub head_edges: bool,
    /// Only the node scores: taps at the node sites alone, and no edges, heads or lens (the
    /// seed's attribution, and the baseline the rest is measured against).
    pub nodes_only: bool,
    /// The logit lens: one product of every residual-stream row with the whole LM head
    /// (`2L+1` × hidden × vocab), the costliest extra, so only on request.
    pub lens: bool,
    /// Replace every node's output in turn and record the objective's actual change.
    pub verify: Option<Ablation>,
    /// The corrupted prompt's ids: the source of [`Ablation::Patch`], and EAP-IG's baseline.
    pub corrupt: Option<Vec<u32>>,
    /// With `verify`: check this many of the strongest edges by the path-specific intervention.
    pub verify_edges: usize,
    /// With `verify`: interventions per batched forward pass (automatic when `None`).
    pub verify_batch: Option<usize>,
    /// With `verify`: the faithfulness of the graph pruned with these options (every edge
    /// outside it swapped as `verify` ablates).
    pub circuit: Option<PruneOptions>,
    /// Gradient checkpointing: the backward recomputes each layer from its input instead of
    /// keeping every layer's activations (far less memory for one more forward pass). `None`:
    /// only for prompts longer than [`CHECKPOINT_ABOVE`] tokens.
    pub checkpoint: Option<bool>,
    /// EAP-IG with this many points: gradients averaged from the baseline input (`corrupt`, or
    /// zero embeddings) to the clean one, and every score taken on `a − a_baseline`.
    pub ig_steps: Option<usize>,
}

/// Prompts longer than this are attributed layer by layer (gradient checkpointing) unless
/// `Options::checkpoint` says otherwise. One graph over the whole 1.5B model takes 8.6 GB at
/// 512 tokens and 11.7 GB at 1,024, and is a quarter faster than recomputing each layer; at
/// 2,048 tokens it would come near 24 GiB (the attention probabilities grow with the square).
pub const CHECKPOINT_ABOVE: usize = 1024;

/// The longest prompt (in tokens) for which o_proj's product in the forward pass keeps what
/// each attention head contributes, for the head scores. Kept, the contributions cost the
/// forward pass their memory (heads × tokens × hidden floats per layer, fresh pages each
/// run) and spare the scores a pass over every o_proj; on the 1.5B model on a 2-core VM
/// (GGUF file, alternating runs) keeping them saved ~4 ms at 5 tokens and ~10 at 8, broke
/// even at 10 and lost ~10 ms at 13 (forward +20-25 ms, heads −12).
pub const HEAD_PARTS_UP_TO: usize = 10;

/// Seconds spent on each kind of check of `--verify`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VerifySeconds {
    /// Every node replaced in turn.
    pub nodes_s: f64,
    /// The strongest edges swapped in turn.
    pub edges_s: f64,
    /// The pruned circuit's faithfulness.
    pub circuit_s: f64,
}

/// Milestones of a run, for the terminal.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The weights are loaded.
    Loaded {
        /// Seconds.
        seconds: f64,
    },
    /// The taps are in place: one per site, of which `nodes` are scored.
    TapsRegistered {
        /// Every site tapped.
        taps: usize,
        /// Sites that are nodes of the graph.
        nodes: usize,
    },
    /// The forward pass is done.
    Forward {
        /// The argmax next token.
        predicted_id: u32,
        /// Seconds.
        seconds: f64,
    },
    /// The backward pass is done.
    Backward {
        /// Seconds.
        seconds: f64,
    },
    /// EAP-IG's baseline run and interpolation points are done.
    Integrated {
        /// Points on the path.
        steps: usize,
        /// Seconds.
        seconds: f64,
    },
    /// The interventions of `--verify` are done.
    Verified {
        /// Forward rows run (clean baselines included).
        interventions: usize,
        /// Seconds.
        seconds: f64,
    },
}

/// The result of a run, before the token texts are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The argmax next token at the objective's position.
    pub predicted_id: u32,
    /// The token whose score was attributed.
    pub target_id: u32,
    /// Its logit.
    pub target_logit: f64,
    /// The token whose score was subtracted, if any.
    pub contrast_id: Option<u32>,
    /// The objective's position in the prompt.
    pub position: usize,
    /// The value of the objective (the target's metric, minus the contrast's).
    pub value: f64,
    /// The graph's nodes in pathway order (`Embed`, `AttnOut(0)`, `MlpOut(0)`, …) with scores.
    pub nodes: Vec<(Site, GradTimesActivation)>,
    /// Every residual-stream edge, by target then source in pathway order.
    pub edges: Vec<EdgeScore>,
    /// Every attention head, by layer then head.
    pub heads: Vec<HeadScore>,
    /// The logit lens after the embeddings and after every sublayer (with `Options::lens`).
    pub lens: Vec<LensEntry>,
    /// Head → node edges (with `Options::head_edges`), by layer, head, then target.
    pub head_edges: Vec<EdgeScore>,
    /// Node checks (with `Options::verify`), in pathway order.
    pub checks: Vec<NodeCheck>,
    /// Edge checks (with `Options::verify`), strongest `|score|` first.
    pub edge_checks: Vec<EdgeCheck>,
    /// The pruned graph's faithfulness (with `Options::verify` and `Options::circuit`).
    pub faithfulness: Option<Faithfulness>,
    /// How long each kind of check took (with `Options::verify`).
    pub verify_seconds: VerifySeconds,
    /// The objective on EAP-IG's baseline input (with `Options::ig_steps`).
    pub baseline_value: Option<f64>,
    /// How many sites were tapped.
    pub taps: usize,
    /// Load, forward, backward and score times (tokenize and render are the caller's).
    pub timings: Timings,
}

/// Whether a site is a node of the seed's graph (the outputs of the embedding and of each
/// sublayer); the other sites are tapped for edges.
pub fn is_node(site: Site) -> bool {
    matches!(site, Site::Embed | Site::AttnOut(_) | Site::MlpOut(_))
}

/// Loads the model on the selected backend, wrapped in `Autodiff`, and attributes.
pub fn attribute(
    selection: &Selection,
    request: &Request,
    progress: &mut dyn Progress,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, ModelError> {
    backends::run(
        selection,
        Job {
            request,
            progress,
            on_event,
        },
    )
}

struct Job<'a, 'b> {
    request: &'a Request<'a>,
    progress: &'b mut dyn Progress,
    on_event: &'b mut dyn FnMut(Event),
}

impl BackendJob for Job<'_, '_> {
    type Output = Result<Outcome, ModelError>;

    fn run<B: Backend>(self, device: B::Device, selection: &Selection) -> Self::Output {
        let Job {
            request,
            progress,
            on_event,
        } = self;
        let started = Instant::now();
        let model =
            load_model::<Autodiff<B>>(request.files, request.config, selection, &device, progress)?;
        let load_s = started.elapsed().as_secs_f64();
        on_event(Event::Loaded { seconds: load_s });
        let mut outcome = attribute_loaded_with(
            &model,
            request.ids,
            request.objective,
            request.options.clone(),
            on_event,
        )?;
        outcome.timings.load_s = load_s;
        Ok(outcome)
    }
}

/// Attributes with a model already loaded on an autodiff backend: one forward with taps at
/// every site, one backward of the objective, then nodes, edges, heads and the logit lens.
pub fn attribute_loaded<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    ids: &[u32],
    objective: Objective,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, ModelError> {
    attribute_loaded_with(model, ids, objective, Options::default(), on_event)
}

/// [`attribute_loaded`] with the optional parts `options` asks for.
pub fn attribute_loaded_with<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    ids: &[u32],
    objective: Objective,
    options: Options,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, ModelError> {
    let device = model.model.embed_tokens.weight.val().device();
    if options.lens {
        // The forward pass reads the whole LM head at the target position: there it also
        // takes the row norms the lens's screen needs, which would otherwise read it again.
        model.keep_head_norms();
    }
    if !options.nodes_only && ids.len() <= HEAD_PARTS_UP_TO {
        // o_proj's product at a few tokens sums head by head: it can keep what each head
        // contributes, which the head scores would otherwise compute from o_proj again.
        model.keep_head_parts();
    }
    let c = &model.config;
    let seq = ids.len();
    let position = objective.position_in(seq);
    if position >= seq {
        return Err(ModelError::Source(format!(
            "target position {position} is beyond the prompt's {seq} tokens"
        )));
    }
    let mut sites = Site::all(c.num_hidden_layers);
    if options.nodes_only {
        sites.retain(|s| is_node(*s));
    }
    on_event(Event::TapsRegistered {
        taps: sites.len(),
        nodes: sites.iter().filter(|s| is_node(**s)).count(),
    });

    let tap: Option<fn(Site) -> bool> = if options.nodes_only {
        Some(is_node)
    } else {
        None
    };
    let checkpoint = options.checkpoint.unwrap_or(seq > CHECKPOINT_ABOVE);
    // The lens, and how long it took.
    let timed_lens = |nodes: &[(Site, &[f32])], target_id: u32, logits: &[f32]| {
        let started = Instant::now();
        let lens = lens::logit_lens(model, nodes, position, seq, target_id, logits);
        (lens, started.elapsed().as_secs_f64())
    };
    // The lens needs only the forward pass: it runs beside the backward where it can.
    let lens_beside = |f: pass::Forwarded<'_>| {
        let nodes: Vec<(Site, &[f32])> = f.nodes.iter().map(|(s, a)| (*s, &a[..])).collect();
        timed_lens(&nodes, f.target_id, f.logits)
    };
    let lens_wanted = options.lens && !options.nodes_only;
    let (pass, lens_early) = pass::attribute(
        model,
        ids,
        objective,
        tap,
        checkpoint,
        on_event,
        lens_wanted.then_some(&lens_beside as _),
    )?;
    let lens_beside_backward = lens_early.is_some();
    let Pass {
        logits: host,
        predicted_id,
        target_id,
        value: value_host,
        tapped,
        forward_s,
        backward_s,
        node_activations,
    } = pass;

    let started = Instant::now();
    // Host copies of what the scores need: node activations (those the lens beside the
    // backward had are taken as they are) and every gradient.
    let mut activations: HashMap<Site, Vec<f32>> = node_activations.into_iter().collect();
    let mut gradients: HashMap<Site, Vec<f32>> = HashMap::new();
    let mut grad_tensors: HashMap<Site, Tensor<B, 3>> = HashMap::new();
    // On every core: each copy is small, and a fresh allocation the kernel must clear.
    let copies = tapped
        .par_iter()
        .map(|t| {
            let activation = match is_node(t.site) && !activations.contains_key(&t.site) {
                true => Some(to_vec(t.activation.clone())?),
                false => None,
            };
            Ok((activation, to_vec(t.grad.clone())?))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    for ((activation, gradient), t) in copies.into_iter().zip(&tapped) {
        if let Some(activation) = activation {
            activations.insert(t.site, activation);
        }
        gradients.insert(t.site, gradient);
        grad_tensors.insert(t.site, t.grad.clone());
    }
    let node_sites: Vec<Site> = sites.iter().copied().filter(|s| is_node(*s)).collect();
    let mut scores_s = started.elapsed().as_secs_f64();

    // EAP-IG: the gradients averaged along the path from the baseline input, and every score
    // on the difference from the baseline's activations.
    let mut ig_s = 0.0;
    let integrated = match options.ig_steps {
        Some(steps) => {
            let started = Instant::now();
            let ig = ig::integrate(
                model,
                ids,
                objective,
                target_id,
                steps,
                options.corrupt.as_deref(),
                &activations[&Site::Embed],
                &gradients,
                tap,
                checkpoint,
            )?;
            gradients = ig.mean_gradients;
            for t in &tapped {
                let mean = TensorData::new(gradients[&t.site].clone(), t.activation.dims());
                grad_tensors.insert(t.site, Tensor::from_data(mean, &device));
            }
            ig_s = started.elapsed().as_secs_f64();
            on_event(Event::Integrated {
                steps,
                seconds: ig_s,
            });
            Some((ig.baseline, ig.baseline_value))
        }
        None => None,
    };

    let started = Instant::now();
    let differences: HashMap<Site, Vec<f32>> = match &integrated {
        Some((baseline, _)) => node_sites
            .iter()
            .map(|s| {
                let d = activations[s]
                    .iter()
                    .zip(&baseline[s])
                    .map(|(a, b)| a - b)
                    .collect();
                (*s, d)
            })
            .collect(),
        None => HashMap::new(),
    };
    // What the scores multiply with the gradients: a, or a − a_baseline under EAP-IG.
    let scored = |s: &Site| differences.get(s).unwrap_or(&activations[s]).as_slice();
    let nodes = node_sites
        .iter()
        .map(|s| (*s, grad_times_activation(&gradients[s], scored(s), seq)))
        .collect();
    let node_data: Vec<(Site, &[f32])> = node_sites.iter().map(|s| (*s, scored(s))).collect();
    // Each layer's HeadOut activation (minus the baseline's under EAP-IG).
    let head_activation = |layer: usize| -> Tensor<B, 3> {
        let tap = tapped
            .iter()
            .find(|t| t.site == Site::HeadOut(layer))
            .expect("every layer has a HeadOut tap");
        match &integrated {
            Some((baseline, _)) => {
                let base = TensorData::new(
                    baseline[&Site::HeadOut(layer)].clone(),
                    tap.activation.dims(),
                );
                tap.activation.clone() - Tensor::from_data(base, &device)
            }
            None => tap.activation.clone(),
        }
    };
    // Everything beyond the node scores (none of it with `nodes_only`).
    let (edges, heads, head_edges, lens, lens_s) = if options.nodes_only {
        Default::default()
    } else {
        // Where the lens did not run beside the backward (by layers, or on a thread outside
        // rayon's pool), it runs beside the edges and heads, which leave a core idle most of
        // their time.
        let lens = || match lens_early {
            Some(done) => done,
            None if options.lens => {
                let clean: Vec<(Site, &[f32])> = node_sites
                    .iter()
                    .map(|s| (*s, activations[s].as_slice()))
                    .collect();
                timed_lens(&clean, target_id, &host)
            }
            None => (Ok(Vec::new()), 0.0),
        };
        let others = || {
            extras::edges_and_heads(
                model,
                &node_sites,
                &node_data,
                (&gradients, &grad_tensors),
                &head_activation,
                options.head_edges,
                seq,
            )
        };
        let ((lens, lens_s), others) = rayon::join(lens, others);
        let (edges, heads, head_edges) = others?;
        (edges, heads, head_edges, lens?, lens_s)
    };
    scores_s += started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (checks, edge_checks, faithfulness, verify_seconds) = match options.verify {
        Some(ablation) => {
            let replaced = verify::replacements(
                model,
                ids,
                &node_sites,
                &activations,
                ablation,
                options.corrupt.as_deref(),
            )?;
            let clean = verify::Clean {
                model,
                ids,
                objective,
                target_id,
                per_pass: options.verify_batch,
            };
            let mut seconds = VerifySeconds::default();
            let t = Instant::now();
            let checks =
                verify::check_nodes(&clean, &node_sites, &activations, &gradients, &replaced)?;
            seconds.nodes_s = t.elapsed().as_secs_f64();
            let mut strongest: Vec<&EdgeScore> =
                edges.iter().filter(|e| e.score.is_finite()).collect();
            strongest.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
            strongest.truncate(options.verify_edges);
            let list: Vec<(String, String)> = strongest
                .iter()
                .map(|e| (e.source.clone(), e.target.clone()))
                .collect();
            let t = Instant::now();
            let edge_checks =
                verify::check_edges(&clean, &list, &activations, &gradients, &replaced)?;
            seconds.edges_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let faithfulness = match options.circuit {
                Some(prune) if !edges.is_empty() => Some(pruned_faithfulness(
                    &clean,
                    &node_sites,
                    &edges,
                    &prune,
                    &replaced,
                )?),
                _ => None,
            };
            seconds.circuit_s = t.elapsed().as_secs_f64();
            on_event(Event::Verified {
                interventions: checks.len()
                    + edge_checks.len()
                    + faithfulness.as_ref().map_or(0, |_| 2),
                seconds: started.elapsed().as_secs_f64(),
            });
            (checks, edge_checks, faithfulness, seconds)
        }
        None => Default::default(),
    };
    let verify_s = if options.verify.is_some() {
        started.elapsed().as_secs_f64()
    } else {
        0.0
    };
    Ok(Outcome {
        predicted_id,
        target_id,
        target_logit: host[target_id as usize] as f64,
        contrast_id: objective.contrast,
        position,
        value: value_host,
        nodes,
        edges,
        heads,
        lens,
        head_edges,
        checks,
        edge_checks,
        faithfulness,
        verify_seconds,
        baseline_value: integrated.map(|(_, v)| v),
        taps: tapped.len(),
        timings: Timings {
            forward_s,
            backward_s,
            scores_s,
            ig_s,
            verify_s,
            lens_s,
            lens_beside_backward,
            ..Timings::default()
        },
    })
}

/// The faithfulness of the graph pruned with `options`, every other edge swapped for the
/// replacement of its source.
fn pruned_faithfulness<B: Backend>(
    clean: &verify::Clean<Autodiff<B>>,
    node_sites: &[Site],
    edges: &[EdgeScore],
    options: &PruneOptions,
    replaced: &HashMap<Site, Vec<f32>>,
) -> Result<Faithfulness, ModelError> {
    let names: Vec<String> = node_sites.iter().map(|s| s.to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let list: Vec<(&str, &str, f64)> = edges
        .iter()
        .map(|e| (e.source.as_str(), e.target.as_str(), e.score))
        .collect();
    let pruned = prune_edges(&names, &list, options);
    let all = edges
        .iter()
        .map(|e| verify::edge_sites(&e.source, &e.target))
        .collect::<Result<Vec<_>, _>>()?;
    let circuit: Vec<(Site, Site)> = pruned.edges.iter().map(|&i| all[i]).collect();
    circuit::faithfulness(clean, replaced, &all, &circuit)
}

/// Reads a tensor back as f32 values.
pub(crate) fn to_vec<B: Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ModelError::Source(format!("cannot read a tensor back: {e:?}")))
}
