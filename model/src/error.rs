//! Errors of the model crate: each names the file, tensor or field it concerns.

use std::path::PathBuf;

/// Everything that can go wrong while reading a configuration or loading weights.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or lacks a field.
    #[error("{path}: invalid config: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint is not a Qwen2 model.
    #[error("{path}: model_type is {found:?}, but only \"qwen2\" (Qwen2 / Qwen2.5) is supported")]
    UnsupportedModelType {
        /// The config file.
        path: PathBuf,
        /// The model type found.
        found: String,
    },
    /// A weight file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file ({message})")]
    Safetensors {
        /// The weight file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The model needs a tensor the checkpoint does not have.
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor {
        /// The tensor's name (Hugging Face naming).
        name: String,
    },
    /// The checkpoint has tensors the model does not use.
    #[error("the checkpoint has tensors this Qwen2 model does not use: {}", names.join(", "))]
    UnusedTensors {
        /// Their names.
        names: Vec<String>,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor {name} has shape {found:?}, but the config implies {expected:?}")]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape on disk.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype this loader does not read.
    #[error("tensor {name} is stored as {dtype}, which is not supported (use f32, f16 or bf16)")]
    UnsupportedDtype {
        /// The tensor's name.
        name: String,
        /// The dtype on disk.
        dtype: String,
    },
    /// A GGUF file is malformed, holds something this reader does not support, or is not a
    /// Qwen2 model.
    #[error("{}: {message}", path.display())]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong, naming the metadata key or tensor concerned.
        message: String,
    },
    /// Any other problem with a weight source, with its description.
    #[error("{0}")]
    Source(String),
}
