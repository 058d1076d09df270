//! Command-line arguments (clap), validated before any slow work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::source::DEFAULT_MODEL;

/// Attribution graphs of Qwen2 language models.
///
/// Without a subcommand, attributes the next-token prediction (as `attrib attribute`).
#[derive(Debug, Parser)]
#[command(
    name = "attrib",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// What to do (default: attribute).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The arguments of `attribute`, when no subcommand is given.
    #[command(flatten)]
    pub attribute: AttributeArgs,
}

impl Cli {
    /// The command to run, `attribute` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Attribute(self.attribute))
    }
}

/// The subcommands.
// Parsed once per run, so the size of the attribute variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attribute the next-token logit to the embeddings and every attention and MLP sublayer
    /// (Grad×Activation); write attribution.json, the graphs (SVG, PNG, HTML) and
    /// graph.neuronpedia.json.
    Attribute(AttributeArgs),
    /// Print the most likely next tokens after a prompt.
    Predict(PredictArgs),
}

/// `attrib attribute` (and `attrib` alone).
#[derive(Debug, Args)]
pub struct AttributeArgs {
    /// Model, prompt and backend.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Attribute the logit of this token (text that is exactly one token, e.g. " Paris")
    /// instead of the predicted one.
    #[arg(long, conflicts_with = "target_id")]
    pub target: Option<String>,
    /// Attribute the logit of this token id instead of the predicted one.
    #[arg(long)]
    pub target_id: Option<u32>,
    /// Subtract this token's score (text that is exactly one token): with the default metric,
    /// the target is the logit difference target − contrast.
    #[arg(long, conflicts_with = "contrast_id")]
    pub contrast: Option<String>,
    /// Subtract the score of this token id.
    #[arg(long)]
    pub contrast_id: Option<u32>,
    /// How the target token is scored: logit, logprob (log-softmax) or prob (softmax).
    #[arg(long, default_value = "logit")]
    pub metric: crate::attribution::Metric,
    /// Attribute the prediction made at this prompt position (0-based) instead of the last.
    #[arg(long)]
    pub position: Option<usize>,
    /// Also compute the logit lens (what the residual stream predicts after each node), print
    /// it, and add it to the JSON and graph.html.
    #[arg(long)]
    pub lens: bool,
    /// Also print the strongest attention heads, and add head → node edges to the JSON.
    #[arg(long)]
    pub heads: bool,
    /// Gradient checkpointing: the backward recomputes each layer from its saved input instead
    /// of keeping every layer's activations (much less memory, one more forward pass of time).
    /// On by default above 1,024 tokens; `--checkpoint false` turns it off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub checkpoint: Option<bool>,
    /// Only the node scores: no edges, heads or logit lens (faster; the pruned views are
    /// then empty).
    #[arg(long, conflicts_with_all = ["heads", "lens"])]
    pub nodes_only: bool,
    /// Check every node's score by intervention: replace its output (see --ablate), rerun the
    /// model, and compare the objective's actual change with the first-order prediction.
    #[arg(long)]
    pub verify: bool,
    /// With --verify, what replaces a node's output: zero, mean (its mean over the prompt's
    /// positions) or patch (its output on --corrupt). Default: patch with --corrupt, else zero.
    #[arg(long, requires = "verify")]
    pub ablate: Option<crate::attribution::Ablation>,
    /// With --verify, also check the K strongest edges u → v by swapping u's output for its
    /// ablated value in v's input alone (0: none).
    #[arg(long, default_value_t = 20, requires = "verify")]
    pub verify_edges: usize,
    /// With --verify, at most N interventions per batched forward pass (default: as many as
    /// fit 4,096 token-rows, at most 63); 1 runs each on its own beside the clean prompt.
    #[arg(long, value_name = "N", requires = "verify", value_parser = clap::value_parser!(u32).range(1..))]
    pub verify_batch: Option<u32>,
    /// A corrupted prompt with as many tokens as --prompt: the source of --ablate patch and
    /// the baseline of --ig-steps.
    #[arg(long)]
    pub corrupt: Option<String>,
    /// EAP-IG instead of Grad×Activation: gradients averaged over M points on the straight
    /// line from the baseline input embeddings (--corrupt's, or zeros) to the prompt's, and
    /// every score taken on the activations' difference from the baseline run. M = 1 is EAP.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub ig_steps: Option<u32>,
    /// Pruned DAG: keep the fewest nodes whose cumulative influence on the target reaches
    /// this fraction.
    #[arg(long, default_value_t = 0.8, value_parser = fraction)]
    pub node_threshold: f64,
    /// Pruned DAG: then keep the edges that carry this fraction of the kept nodes' influence.
    #[arg(long, default_value_t = 0.98, value_parser = fraction)]
    pub edge_threshold: f64,
    /// Pruned DAG: keep the N strongest edges instead of the thresholds.
    #[arg(long)]
    pub top_edges: Option<usize>,
    /// The graph's id in graph.neuronpedia.json (default: from the model name and prompt).
    #[arg(long)]
    pub slug: Option<String>,
    /// Folder for attribution.json, graph.svg and graph.png (created if missing).
    #[arg(long, default_value = "attrib-out")]
    pub out: PathBuf,
    /// Print attribution.json on stdout instead of the score table.
    #[arg(long)]
    pub json: bool,
}

/// Which model, prompt and backend.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A local model folder (config.json, safetensors, tokenizer.json), a GGUF file, or a hub id.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// The text to run the model on.
    #[arg(long, required = true)]
    pub prompt: Option<String>,
    /// Wrap the prompt in the model's chat template as one user message.
    #[arg(long)]
    pub chat: bool,
    /// Backend to run on (default: the fastest compiled in).
    #[arg(long)]
    pub backend: Option<String>,
    /// Device of the backend (cpu, cuda:N, discrete:N…).
    #[arg(long)]
    pub device: Option<String>,
    /// Precision of weights and activations: f32 (default), or f16/bf16 where the backend
    /// supports them on the device (tch and cuda on a GPU).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// A number in [0, 1].
fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

impl AttributeArgs {
    /// The ablation `--verify` uses: `--ablate`, else patch with `--corrupt`, else zero.
    pub fn ablation(&self) -> crate::attribution::Ablation {
        use crate::attribution::Ablation;
        self.ablate.unwrap_or(if self.corrupt.is_some() {
            Ablation::Patch
        } else {
            Ablation::Zero
        })
    }
}

impl ModelArgs {
    /// The prompt (clap makes `--prompt` required wherever these arguments are used).
    pub fn prompt(&self) -> &str {
        self.prompt.as_deref().unwrap_or_default()
    }
}

/// `attrib predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model, prompt and backend.
    #[command(flatten)]
    pub model: ModelArgs,
    /// How many candidates to print.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}
