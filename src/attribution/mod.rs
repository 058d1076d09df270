//! Grad×Activation attribution: one forward with zero taps at every site, one backward of the
//! target logit, then `g ⊙ a` reduced per node.

pub mod scores;
pub mod taps;
pub mod target;

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;

use crate::backends::{self, BackendJob, Selection};
use crate::graph::Timings;
use crate::model::{ModelError, Qwen2Config, Site};
use crate::predict::{ids_tensor, load_model};
use crate::progress::Progress;
use crate::source::ModelFiles;

pub use scores::{grad_times_activation, GradTimesActivation};
pub use taps::{Tap, Taps};
pub use target::Target;

/// What to attribute.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The model's files.
    pub files: &'a ModelFiles,
    /// Its config (already read, so that bad input fails before loading weights).
    pub config: &'a Qwen2Config,
    /// The prompt's token ids.
    pub ids: &'a [u32],
    /// Which logit at the last position.
    pub target: Target,
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
}

/// The result of a run, before the token texts are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The argmax next token.
    pub predicted_id: u32,
    /// The token whose logit was attributed.
    pub target_id: u32,
    /// That logit.
    pub target_logit: f64,
    /// The graph's nodes in pathway order (`Embed`, `AttnOut(0)`, `MlpOut(0)`, …) with scores.
    pub nodes: Vec<(Site, GradTimesActivation)>,
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

    fn run<B: Backend>(self, device: B::Device, _selection: &Selection) -> Self::Output {
        let Job {
            request,
            progress,
            on_event,
        } = self;
        let started = Instant::now();
        let model = load_model::<Autodiff<B>>(request.files, request.config, &device, progress)?;
        let load_s = started.elapsed().as_secs_f64();
        on_event(Event::Loaded { seconds: load_s });
        let mut outcome = attribute_loaded(&model, request.ids, request.target, on_event)?;
        outcome.timings.load_s = load_s;
        Ok(outcome)
    }
}

/// Attributes with a model already loaded on an autodiff backend.
pub fn attribute_loaded<B: Backend>(
    model: &crate::model::Qwen2ForCausalLM<Autodiff<B>>,
    ids: &[u32],
    target: Target,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, ModelError> {
    let device = model.model.embed_tokens.weight.val().device();
    let layers = model.config.num_hidden_layers;
    let vocab = model.config.vocab_size;
    let seq = ids.len();
    let sites = Site::all(layers);
    on_event(Event::TapsRegistered {
        taps: sites.len(),
        nodes: sites.iter().filter(|s| is_node(**s)).count(),
    });

    let started = Instant::now();
    let mut taps = Taps::default();
    let logits = model.forward(ids_tensor(ids, &device), &[seq - 1], &mut taps);
    let host = to_vec(logits.clone().inner())?;
    let predicted_id = target::argmax(&host);
    let target_id = target.resolve(&host);
    if target_id as usize >= vocab {
        return Err(ModelError::Source(format!(
            "target token id {target_id} is outside the vocabulary (size {vocab})"
        )));
    }
    let target_logit = host[target_id as usize] as f64;
    let forward_s = started.elapsed().as_secs_f64();
    on_event(Event::Forward {
        predicted_id,
        seconds: forward_s,
    });

    let started = Instant::now();
    let objective = logits.narrow(2, target_id as usize, 1).sum();
    let grads = objective.backward();
    B::sync(&device).map_err(|e| ModelError::Source(format!("backend failed: {e:?}")))?;
    let backward_s = started.elapsed().as_secs_f64();
    on_event(Event::Backward {
        seconds: backward_s,
    });

    let started = Instant::now();
    let mut nodes = Vec::new();
    for tap in taps.taps.iter().filter(|t| is_node(t.site)) {
        let activation = to_vec(tap.activation.clone())?;
        let grad = match tap.zero.grad(&grads) {
            Some(g) => to_vec(g)?,
            // A site the target does not depend on has a zero gradient.
            None => vec![0.0; activation.len()],
        };
        nodes.push((tap.site, grad_times_activation(&grad, &activation, seq)));
    }
    Ok(Outcome {
        predicted_id,
        target_id,
        target_logit,
        nodes,
        taps: taps.taps.len(),
        timings: Timings {
            forward_s,
            backward_s,
            scores_s: started.elapsed().as_secs_f64(),
            ..Timings::default()
        },
    })
}

/// Reads a tensor back as f32 values.
fn to_vec<B: Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ModelError::Source(format!("cannot read a tensor back: {e:?}")))
}
