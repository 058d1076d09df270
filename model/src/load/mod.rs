//! Loading weights: any [`WeightSource`] gives tensors by their Hugging Face name, and
//! [`Loader`] hands them to the model while checking shapes and which ones were used.

mod blocks;
mod decode;
pub mod gguf;
#[cfg(feature = "tch")]
mod libtorch;
mod pages;
pub mod safetensors;

use std::collections::BTreeSet;

use burn::module::{Param, ParamId};
use burn::nn::Embedding;

use crate::norm::RmsNorm;
use burn::tensor::{backend::Backend, get_device_settings, DType, Tensor, TensorData};

use crate::error::ModelError;
use crate::linear::Linear;

pub use self::blocks::{BlockDecoder, StoredBlocks};
pub use self::gguf::{qwen2_config, GgufFile, GgufSource};
pub use self::safetensors::SafetensorsSource;

/// A checkpoint's tensors, by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`, …),
/// in the row-major layout PyTorch uses (`Linear` weights are `[out, in]`).
pub trait WeightSource {
    /// The names of every tensor the source holds.
    fn names(&self) -> Vec<String>;
    /// The shape of a tensor, or `None` if the source has no such tensor.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The values of a tensor, converted to f32.
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, ModelError>;
    /// The tensor as f32 `TensorData` of its checkpoint shape. By default a copy made by
    /// [`read_f32`](Self::read_f32); a source may share memory it already holds instead.
    fn read_data(&self, name: &str) -> Result<TensorData, ModelError> {
        let shape = self
            .shape(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        Ok(TensorData::new(self.read_f32(name)?, shape))
    }
    /// A bf16 or f16 tensor as stored, shared with memory the source already holds (a file
    /// map), for a backend that computes with half-precision weights itself; `None` where the
    /// tensor is stored otherwise or the source would have to copy it.
    fn read_in_place_half(&self, name: &str) -> Option<TensorData> {
        let _ = name;
        None
    }
    /// A 2-D tensor as stored in blocks of a quantized format, shared with memory the source
    /// holds, with the decoder [`read_data`](Self::read_data) decodes it with (so the same
    /// values, bit for bit); `None` where it is stored otherwise or no such decoder runs here.
    fn read_blocks(&self, name: &str) -> Option<StoredBlocks> {
        let _ = name;
        None
    }
}

/// Names a checkpoint may carry that the model rebuilds itself (RoPE's frequencies in old
/// checkpoints), so they count as neither used nor unused.
fn is_derived_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// `data` as a tensor on `device` in the device's float precision (`--dtype`): made in the
/// checkpoint's precision and converted there, so that a GPU converts its own copy rather than
/// the CPU converting before the copy; on burn-tch, libtorch copies straight from the bytes.
fn on_device<B: Backend, const D: usize>(data: TensorData, device: &B::Device) -> Tensor<B, D> {
    let target: DType = get_device_settings::<B>(device).float_dtype.into();
    #[cfg(feature = "tch")]
    if let Some(tensor) = libtorch::from_data(&data, device, target) {
        return tensor;
    }
    // flex holds its weights in host memory: rounding there, on every core, spares it its
    // own one-thread conversion.
    #[cfg(feature = "flex")]
    if crate::flex_ops::recognised::<B>() {
        if let Some(halves) = crate::halves::halve(&data, target) {
            return Tensor::from_data(halves, (device, target));
        }
    }
    let source = data.dtype;
    let tensor = Tensor::<B, D>::from_data(data, (device, source));
    if source == target {
        tensor
    } else {
        tensor.cast(target)
    }
}

/// Takes tensors from a [`WeightSource`] into burn parameters on `device`.
///
/// Each `take_*` checks the shape the config implies; [`Loader::finish`] fails if the
/// checkpoint holds tensors that were never taken.
pub struct Loader<'a, B: Backend> {
    source: &'a dyn WeightSource,
    device: B::Device,
    used: BTreeSet<String>,
}

impl<'a, B: Backend> Loader<'a, B> {
    /// A loader reading from `source` onto `device`.
    pub fn new(source: &'a dyn WeightSource, device: &B::Device) -> Self {
        Self {
            source,
            device: device.clone(),
            used: BTreeSet::new(),
        }
    }

    /// Whether the source holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.source.shape(name).is_some()
    }

    /// `name` as stored in blocks, if the source keeps it so ([`WeightSource::read_blocks`]).
    pub fn blocks(&self, name: &str) -> Option<StoredBlocks> {
        self.source.read_blocks(name)
    }

    /// Marks a tensor as accounted for without loading it (a tied `lm_head.weight`).
    pub fn skip(&mut self, name: &str) {
        self.used.insert(name.to_string());
    }

    /// Reads `name` as f32 data after checking it has shape `expected`.
    fn read(&mut self, name: &str, expected: &[usize]) -> Result<TensorData, ModelError> {
        let found = self
            .source
            .shape(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        if found != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.into(),
                expected: expected.to_vec(),
                found,
            });
        }
        self.used.insert(name.to_string());
        self.source.read_data(name)
    }

    /// `name` as a parameter of shape `shape`, which never requires a gradient: attribution
    /// differentiates with respect to activations only, so weight gradients would be wasted.
    fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<B, D>>, ModelError> {
        // Held in place in the precision the model computes in: nothing to convert.
        if let Some(tensor) = self.in_place_half(name, &shape, false) {
            return Ok(Param::initialized(ParamId::new(), tensor));
        }
        let data = self.read(name, &shape)?;
        Ok(Param::initialized(
            ParamId::new(),
            on_device(data, &self.device),
        ))
    }

    /// A linear layer's weight or the embedding table: on flex, a bf16 or f16 tensor held in
    /// place stays in that precision when the model computes in f32 or in that same precision
    /// (the products widen it a block at a time, exactly, see `matmul`; the embeddings widen
    /// the rows they look up); anything else as [`Self::param`].
    fn matrix(&mut self, name: &str, shape: [usize; 2]) -> Result<Param<Tensor<B, 2>>, ModelError> {
        match self.in_place_half(name, &shape, true) {
            Some(tensor) => Ok(Param::initialized(ParamId::new(), tensor)),
            None => self.param(name, shape),
        }
    }

    /// On flex, `name` as the bf16 or f16 tensor the source holds in place, when the model
    /// computes in that precision (or, with `f32_too`, in f32); `None` otherwise.
    fn in_place_half<const D: usize>(
        &mut self,
        name: &str,
        shape: &[usize; D],
        f32_too: bool,
    ) -> Option<Tensor<B, D>> {
        #[cfg(feature = "flex")]
        if crate::flex_ops::recognised::<B>() && self.source.shape(name).as_deref() == Some(shape) {
            let target: DType = get_device_settings::<B>(&self.device).float_dtype.into();
            let data = self.source.read_in_place_half(name)?;
            if target == data.dtype || (f32_too && target == DType::F32) {
                self.used.insert(name.to_string());
                let dtype = data.dtype;
                return Some(Tensor::from_data(data, (&self.device, dtype)));
            }
        }
        #[cfg(not(feature = "flex"))]
        let _ = (name, shape, f32_too);
        None
    }

    /// A vector parameter of length `len`.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Param<Tensor<B, 1>>, ModelError> {
        self.param(name, [len])
    }

    /// A [`Linear`] from `{prefix}.weight` (`[d_out, d_in]`, kept in that layout) and, if
    /// `bias`, `{prefix}.bias`.
    pub fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, ModelError> {
        let weight = self.matrix(&format!("{prefix}.weight"), [d_out, d_in])?;
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), d_out)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// An `Embedding` from `{prefix}.weight`, `[rows, dim]`.
    pub fn embedding(
        &mut self,
        prefix: &str,
        rows: usize,
        dim: usize,
    ) -> Result<Embedding<B>, ModelError> {
        Ok(Embedding {
            weight: self.matrix(&format!("{prefix}.weight"), [rows, dim])?,
        })
    }

    /// An `RmsNorm` from `{prefix}.weight`.
    pub fn rms_norm(
        &mut self,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<RmsNorm<B>, ModelError> {
        Ok(RmsNorm {
            weight: self.vector(&format!("{prefix}.weight"), dim)?,
            eps,
        })
    }

    /// Fails if the source holds tensors nobody took.
    pub fn finish(self) -> Result<(), ModelError> {
        let unused: Vec<String> = self
            .source
            .names()
            .into_iter()
            .filter(|n| !self.used.contains(n) && !is_derived_buffer(n))
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(ModelError::UnusedTensors { names: unused })
        }
    }
}
