//! Qwen2 / Qwen2.5 as [burn] modules generic over the backend.
//!
//! The model knows nothing of attribution: it calls a [`Probe`] at every activation site
//! ([`Site`]) once per forward, and the no-op probe ([`NoProbe`]) makes inference pay nothing.
//! Weights come from any [`load::WeightSource`] (safetensors folders here; other formats plug in
//! behind the same trait).

pub mod attention;
pub mod block;
pub mod config;
pub mod error;
#[cfg(feature = "flex")]
pub(crate) mod flex_ops;
pub mod fused;
#[cfg(feature = "flex")]
pub(crate) mod halves;
pub mod linear;
pub mod load;
pub mod matmul;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod probe;
pub mod resume;
pub mod rope;
#[cfg(any(feature = "flex", feature = "tch"))]
mod same_type;

pub use config::Qwen2Config;
pub use error::ModelError;
pub use model::Qwen2ForCausalLM;
pub use probe::{NoProbe, Probe, Site};

#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray<f32>;
