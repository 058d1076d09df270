//! attrib: attribution graphs of Qwen2 language models.
//!
//! The binary is glue over this library: [`source`] finds a model's files (folder or hub),
//! [`prompt`] turns text into token ids, [`predict`] runs the model on a backend chosen at run
//! time, [`attribution`] computes Grad×Activation scores into a [`graph::Attribution`], which
//! [`report`] and [`render`] present and [`app`] writes to files. The library never prints;
//! progress goes through [`progress::Progress`].

pub mod app;
pub mod attribution;
pub mod cli;
pub mod gguf_tokenizer;
pub mod graph;
pub mod memory;
pub mod neuronpedia;
pub mod output;
pub mod predict;
pub mod progress;
pub mod prompt;
pub mod prune;
pub mod render;
pub mod report;
pub mod source;

pub use attrib_backends as backends;
pub use qwen2_burn as model;
