//! The forward and backward pass that give every tapped site its activation and gradient:
//! whole (one autodiff graph over the model) or by layers (gradient checkpointing).
//!
//! By layers, the forward runs without a graph and keeps only the residual stream entering each
//! layer. The backward then goes from the head down: each layer is run again from its saved
//! input, made a leaf, with the taps in place, and `Σ out ⊙ g_out` is differentiated, which
//! gives the taps' gradients and `g_in`, the next layer's `g_out`. Only one layer's graph is
//! alive at a time (about a gigabyte for 2,048 tokens on a 1.5B model instead of the whole
//! model's tens), for one more forward pass of work. The gradients are the same; only the
//! order of some f32 sums differs.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use super::{is_node, target, to_vec, Event, Objective, Taps};
use crate::model::{ModelError, NoProbe, Probe, Qwen2ForCausalLM, Site};
use crate::predict::ids_tensor;

/// One tapped site after the backward pass.
pub struct Tapped<B: Backend> {
    /// Where.
    pub site: Site,
    /// The activation, `[1, seq, width]`.
    pub activation: Tensor<B, 3>,
    /// d(objective)/d(activation), same shape.
    pub grad: Tensor<B, 3>,
}

/// What the pass gives the scores.
pub struct Pass<B: Backend> {
    /// The logits at the objective's position.
    pub logits: Vec<f32>,
    /// The argmax of `logits`.
    pub predicted_id: u32,
    /// The token the objective scores.
    pub target_id: u32,
    /// The objective's value.
    pub value: f64,
    /// Every tapped site in the order the forward visits them.
    pub tapped: Vec<Tapped<B>>,
    /// Seconds of the forward pass.
    pub forward_s: f64,
    /// Seconds of the backward pass (by layers: with the layers' second forward).
    pub backward_s: f64,
    /// The node sites' activations on the host, where they were copied for the work beside
    /// the backward pass ([`Forwarded::nodes`]); empty otherwise.
    pub node_activations: Vec<(Site, Vec<f32>)>,
}

/// What the forward pass gives work that needs nothing of the backward pass (the logit lens),
/// which [`attribute`] runs beside the backward pass.
pub struct Forwarded<'a> {
    /// The token the objective scores.
    pub target_id: u32,
    /// The logits at the objective's position.
    pub logits: &'a [f32],
    /// Each node site's activation ([`is_node`]; `[seq, width]`, row-major), in the order
    /// the forward visited them.
    pub nodes: &'a [(Site, Vec<f32>)],
}

/// The taps for the sites `tap` selects (all when `None`).
fn taps<B: Backend>(tap: Option<fn(Site) -> bool>) -> Taps<Autodiff<B>> {
    match tap {
        Some(keep) => Taps::only(keep),
        None => Taps::default(),
    }
}

/// The predicted and target tokens from the logits, checked against the vocabulary.
fn tokens(logits: &[f32], objective: Objective) -> Result<(u32, u32), ModelError> {
    let bad = logits.iter().filter(|l| !l.is_finite()).count();
    if bad > 0 {
        return Err(ModelError::Source(format!(
            "the forward pass gave {bad} of {} logits that are NaN or infinite: the activations \
             overflowed the precision (f16 holds at most 65504, which Qwen2.5's residual stream \
             exceeds; use --dtype bf16 or f32), or the weights hold NaN",
            logits.len()
        )));
    }
    let predicted_id = target::argmax(logits);
    let target_id = objective.token.resolve(logits);
    for id in std::iter::once(target_id).chain(objective.contrast) {
        if id as usize >= logits.len() {
            return Err(ModelError::Source(format!(
                "token id {id} is outside the vocabulary (size {})",
                logits.len()
            )));
        }
    }
    if objective.contrast == Some(target_id) {
        let which = match objective.token {
            target::Target::Predicted => "the predicted token",
            target::Target::Id(_) => "the target token",
        };
        return Err(ModelError::Source(format!(
            "the contrast token (id {target_id}) is {which} itself: target − contrast is zero \
             for every input and has no gradient; give --contrast another token"
        )));
    }
    Ok((predicted_id, target_id))
}

/// Reads taps' gradients from one backward's result (zero where the objective does not
/// depend on a site).
fn collect<B: Backend>(
    taps: Taps<Autodiff<B>>,
    grads: &<Autodiff<B> as AutodiffBackend>::Gradients,
) -> Vec<Tapped<B>> {
    taps.taps
        .into_iter()
        .map(|t| {
            let grad = t
                .zero
                .grad(grads)
                .unwrap_or_else(|| t.activation.zeros_like());
            Tapped {
                site: t.site,
                activation: t.activation,
                grad,
            }
        })
        .collect()
}

/// One forward and one backward of the objective: over the whole model, or `by_layers` (see
/// the module docs).
///
/// `beside`, if given, runs on what the forward pass gives ([`Forwarded`]) while the backward
/// pass runs, in rayon's pool with it (`rayon::join`): the backward leaves the cores idle
/// between its products, and work that waits for nothing of the backward fills those gaps.
/// Its result is returned, or `None` where it did not run: by layers, where the forward keeps
/// only each layer's input and the node activations exist only once the backward has
/// recomputed them, and where this thread is not one of a rayon pool's (the `attrib` binary's
/// main thread is; see the comment at `in_pool`). `beside` must take no lock that a backward
/// pass holds: it may run on this thread while the backward waits for its products.
pub fn attribute<B: Backend, R: Send>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    ids: &[u32],
    objective: Objective,
    tap: Option<fn(Site) -> bool>,
    by_layers: bool,
    on_event: &mut dyn FnMut(Event),
    beside: Option<&(dyn Fn(Forwarded<'_>) -> R + Sync)>,
) -> Result<(Pass<B>, Option<R>), ModelError> {
    let device = model.model.embed_tokens.weight.val().device();
    let vocab = model.config.vocab_size;
    let started = Instant::now();
    let (forward, logits) = Forward::run(model, ids, None, objective, tap, by_layers);
    let host = to_vec(logits.clone().inner())?;
    let (predicted_id, target_id) = tokens(&host, objective)?;
    sync::<B>(&device)?;
    let forward_s = started.elapsed().as_secs_f64();
    on_event(Event::Forward {
        predicted_id,
        seconds: forward_s,
    });

    let started = Instant::now();
    let value = objective.value(logits.reshape([vocab]), target_id);
    let value_host = to_vec(value.clone().inner())?[0] as f64;
    // Only on a thread of rayon's pool: the backward then stays on this thread, where a
    // thread outside the pool would hand it to the pool as a job, which a worker waiting
    // inside another attribution's backward could take up and block on that one's locks.
    let in_pool = rayon::current_thread_index().is_some();
    let beside = match (&forward, beside) {
        (Forward::Whole(taps), Some(work)) if in_pool => {
            let nodes = (taps.taps.iter())
                .filter(|t| is_node(t.site))
                .map(|t| Ok((t.site, to_vec(t.activation.clone())?)))
                .collect::<Result<Vec<_>, ModelError>>()?;
            Some((work, nodes))
        }
        _ => None,
    };
    let backward = || {
        let grads = value.backward();
        forward.tapped(model, &grads, tap)
    };
    let (tapped, beside, node_activations) = match beside {
        Some((work, nodes)) => {
            let beside = || {
                work(Forwarded {
                    target_id,
                    logits: &host,
                    nodes: &nodes,
                })
            };
            let (tapped, result) = rayon::join(backward, beside);
            (tapped, Some(result), nodes)
        }
        None => (backward(), None, Vec::new()),
    };
    sync::<B>(&device)?;
    let backward_s = started.elapsed().as_secs_f64();
    on_event(Event::Backward {
        seconds: backward_s,
    });
    let pass = Pass {
        logits: host,
        predicted_id,
        target_id,
        value: value_host,
        tapped,
        forward_s,
        backward_s,
        node_activations,
    };
    Ok((pass, beside))
}

/// The gradients of `Σ_rows objective(row)` at every tapped site when `embeds`
/// (`[rows, seq, hidden]`) replace the token embedding of `ids`: whole, or `by_layers`.
/// Each site's gradient is `[rows, seq, width]`.
#[allow(clippy::too_many_arguments)]
pub fn embedded_rows<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    ids: &[u32],
    embeds: Tensor<B, 3>,
    objective: Objective,
    target_id: u32,
    tap: Option<fn(Site) -> bool>,
    by_layers: bool,
) -> Result<Vec<Tapped<B>>, ModelError> {
    let (forward, logits) = Forward::run(model, ids, Some(embeds), objective, tap, by_layers);
    let grads = rows_objective(logits, objective, target_id).backward();
    Ok(forward.tapped(model, &grads, tap))
}

/// A forward pass whose backward gives every tap's gradient.
enum Forward<B: Backend> {
    /// One graph over the whole model, with the taps in it.
    Whole(Taps<Autodiff<B>>),
    /// The head's graph from the final residual stream (`last`, a leaf); each layer is
    /// recomputed from its saved input in [`Forward::tapped`].
    ByLayers {
        inputs: Vec<Tensor<B, 3>>,
        last: Tensor<Autodiff<B>, 3>,
        head: Taps<Autodiff<B>>,
    },
}

impl<B: Backend> Forward<B> {
    /// Runs the model on `ids`, or with `embeds` (`[rows, seq, hidden]`) in place of their
    /// token embedding, to the logits at the objective's position.
    fn run(
        model: &Qwen2ForCausalLM<Autodiff<B>>,
        ids: &[u32],
        embeds: Option<Tensor<B, 3>>,
        objective: Objective,
        tap: Option<fn(Site) -> bool>,
        by_layers: bool,
    ) -> (Self, Tensor<Autodiff<B>, 3>) {
        let device = model.model.embed_tokens.weight.val().device();
        let position = objective.position_in(ids.len());
        if !by_layers {
            let rows = embeds.as_ref().map_or(1, |e| e.dims()[0]);
            let mut taps = taps::<B>(tap);
            taps.prepare(&site_dims(model, rows, ids.len()), &device);
            let mut probe = Interpolated {
                embeds: embeds.map(Tensor::from_inner),
                taps,
            };
            let logits = model.forward(
                ids_tensor(ids, &device).repeat_dim(0, rows),
                &[position],
                &mut probe,
            );
            return (Forward::Whole(probe.taps), logits);
        }
        let embedded =
            embeds.unwrap_or_else(|| model.model.embed(ids_tensor(ids, &device)).inner());
        let inputs = layer_inputs(model, embedded);
        let last =
            Tensor::<Autodiff<B>, 3>::from_inner(inputs[inputs.len() - 1].clone()).require_grad();
        let mut head = taps::<B>(tap);
        let logits = model.head(last.clone(), &[position], &mut head);
        (Forward::ByLayers { inputs, last, head }, logits)
    }

    /// Every tapped site with its gradient, in forward order, from the backward of the
    /// objective computed on this pass's logits.
    fn tapped(
        self,
        model: &Qwen2ForCausalLM<Autodiff<B>>,
        grads: &<Autodiff<B> as AutodiffBackend>::Gradients,
        tap: Option<fn(Site) -> bool>,
    ) -> Vec<Tapped<B>> {
        match self {
            Forward::Whole(taps) => collect(taps, grads),
            Forward::ByLayers { inputs, last, head } => {
                let g_last = last
                    .grad(grads)
                    .unwrap_or_else(|| last.inner().zeros_like());
                let head = collect(head, grads);
                layers_backward(model, &inputs, g_last, head, tap)
            }
        }
    }
}

/// Every site of a forward pass over `rows` sequences of `seq` tokens, with its activation's
/// dims: `[rows, seq, hidden]`, or `[rows, seq, heads·head_dim]` at `HeadOut`.
fn site_dims<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    rows: usize,
    seq: usize,
) -> Vec<(Site, [usize; 3])> {
    let c = &model.config;
    Site::all(c.num_hidden_layers)
        .into_iter()
        .map(|site| {
            let width = match site {
                Site::HeadOut(_) => c.num_attention_heads * c.head_dim(),
                _ => c.hidden_size,
            };
            (site, [rows, seq, width])
        })
        .collect()
}

/// `Σ_rows objective(row)` of `[rows, 1, vocab]` logits.
fn rows_objective<B: Backend>(
    logits: Tensor<Autodiff<B>, 3>,
    objective: Objective,
    target_id: u32,
) -> Tensor<Autodiff<B>, 1> {
    let [rows, _, vocab] = logits.dims();
    let values: Vec<Tensor<Autodiff<B>, 1>> = (0..rows)
        .map(|r| {
            let row = logits
                .clone()
                .slice([r..r + 1, 0..1, 0..vocab])
                .reshape([vocab]);
            objective.value(row, target_id)
        })
        .collect();
    Tensor::cat(values, 0).sum()
}

/// Feeds given embeddings (if any) in place of the token embedding, then taps like [`Taps`].
struct Interpolated<B: AutodiffBackend> {
    embeds: Option<Tensor<B, 3>>,
    taps: Taps<B>,
}

impl<B: AutodiffBackend> Probe<B> for Interpolated<B> {
    fn at(&mut self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = match (site, self.embeds.take()) {
            (Site::Embed, Some(embeds)) => embeds,
            (_, embeds) => {
                self.embeds = embeds;
                x
            }
        };
        self.taps.at(site, x)
    }
}

/// The residual stream entering each layer and the final norm, `x_0 ..= x_L`, by a forward
/// without a graph from `embedded` (`x_0`).
fn layer_inputs<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    embedded: Tensor<B, 3>,
) -> Vec<Tensor<B, 3>> {
    let layers = model.config.num_hidden_layers;
    let mut inputs: Vec<Tensor<B, 3>> = Vec::with_capacity(layers + 1);
    inputs.push(embedded);
    for layer in 0..layers {
        let x = Tensor::<Autodiff<B>, 3>::from_inner(inputs[layer].clone());
        inputs.push(model.layer(layer, x, &mut NoProbe).inner());
    }
    inputs
}

/// From the gradient at the final residual stream down: each layer recomputed from its input
/// with the taps and differentiated against the gradient at its output. Returns every tapped
/// site in forward order, `head` (the final norm's taps) last and the embeddings first.
fn layers_backward<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    inputs: &[Tensor<B, 3>],
    g_last: Tensor<B, 3>,
    head: Vec<Tapped<B>>,
    tap: Option<fn(Site) -> bool>,
) -> Vec<Tapped<B>> {
    let mut g_out = g_last;
    let mut tapped_rev: Vec<Vec<Tapped<B>>> = vec![head];
    for layer in (0..inputs.len() - 1).rev() {
        let x = Tensor::<Autodiff<B>, 3>::from_inner(inputs[layer].clone()).require_grad();
        let mut layer_taps = taps::<B>(tap);
        let out = model.layer(layer, x.clone(), &mut layer_taps);
        let grads = (out * Tensor::from_inner(g_out.clone())).sum().backward();
        g_out = x.grad(&grads).unwrap_or_else(|| inputs[layer].zeros_like());
        tapped_rev.push(collect(layer_taps, &grads));
    }
    if tap.is_none_or(|keep| keep(Site::Embed)) {
        tapped_rev.push(vec![Tapped {
            site: Site::Embed,
            activation: inputs[0].clone(),
            grad: g_out,
        }]);
    }
    tapped_rev.into_iter().rev().flatten().collect()
}

/// Waits for the device's queued work, as an error if the backend failed.
fn sync<B: Backend>(device: &B::Device) -> Result<(), ModelError> {
    B::sync(device).map_err(|e| ModelError::Source(format!("backend failed: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_that_are_not_finite_are_an_error_naming_the_precision() {
        let objective = Objective::default();
        assert_eq!(tokens(&[0.5, 2.0, -1.0], objective).unwrap(), (1, 1));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = tokens(&[0.5, bad, -1.0], objective)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("1 of 3 logits") && err.contains("--dtype bf16"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_contrast_equal_to_the_target_is_an_error() {
        let logits = [0.5, 2.0, -1.0];
        for token in [target::Target::Predicted, target::Target::Id(1)] {
            let objective = Objective {
                token,
                contrast: Some(1),
                ..Objective::default()
            };
            let err = tokens(&logits, objective).unwrap_err().to_string();
            assert!(err.contains("contrast token (id 1)"), "{err}");
        }
        let objective = Objective {
            contrast: Some(0),
            ..Objective::default()
        };
        assert_eq!(tokens(&logits, objective).unwrap(), (1, 1));
    }
}
