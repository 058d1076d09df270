//! Command-line arguments (clap), validated before any slow work starts.

use clap::{Args, Parser, Subcommand};

use crate::source::DEFAULT_MODEL;

/// Attribution graphs of Qwen2 language models.
#[derive(Debug, Parser)]
#[command(name = "attrib", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the most likely next tokens after a prompt.
    Predict(PredictArgs),
}

/// Which model, prompt and backend.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A local model folder (config.json, safetensors, tokenizer.json) or a hub id.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// The text to run the model on.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as one user message.
    #[arg(long)]
    pub chat: bool,
    /// Backend to run on (default: the fastest compiled in).
    #[arg(long)]
    pub backend: Option<String>,
    /// Device of the backend (cpu, cuda:N, discrete:N…).
    #[arg(long)]
    pub device: Option<String>,
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
