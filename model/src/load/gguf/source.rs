//! The [`WeightSource`] of a GGUF file (llama.cpp's tensor names mapped to Hugging Face's) and
//! the [`Qwen2Config`] a Qwen2 GGUF describes.

use std::collections::BTreeMap;
use std::path::Path;

use super::GgufFile;
use crate::config::Qwen2Config;
use crate::error::ModelError;
use crate::load::{StoredBlocks, WeightSource};

/// The Hugging Face name of a llama.cpp tensor name (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`). Names that are not Qwen2 weights come back
/// unchanged, so a loader reports them as unused.
pub fn hf_name(gguf_name: &str) -> String {
    match gguf_name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let layer = gguf_name.strip_prefix("blk.").and_then(|rest| {
        let (n, tail) = rest.split_once('.')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hf_tail = match tail {
            "attn_norm.weight" => "input_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_q.bias" => "self_attn.q_proj.bias",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_k.bias" => "self_attn.k_proj.bias",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_v.bias" => "self_attn.v_proj.bias",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            _ => return None,
        };
        Some(format!("model.layers.{n}.{hf_tail}"))
    });
    layer.unwrap_or_else(|| gguf_name.to_string())
}

/// The tensors of a GGUF file under their Hugging Face names (see [`hf_name`]), dequantized to
/// f32 when read.
///
/// Shapes are in PyTorch order (ggml's `ne` reversed) and the values row-major in that shape,
/// so a GGUF checkpoint loads exactly like the safetensors one it was converted from. Q and K
/// projections are not permuted: llama.cpp's Qwen2 converter stores them as Hugging Face does.
pub struct GgufSource {
    file: GgufFile,
    /// Hugging Face name → index in the file's tensor table.
    names: BTreeMap<String, usize>,
}

impl GgufSource {
    /// Opens the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::new(GgufFile::open(path)?)
    }

    /// Serves the tensors of an opened file; fails if two tensors map to one Hugging Face name.
    pub fn new(file: GgufFile) -> Result<Self, ModelError> {
        let mut names = BTreeMap::new();
        for (i, info) in file.tensors().iter().enumerate() {
            let hf = hf_name(&info.name);
            if let Some(j) = names.insert(hf.clone(), i) {
                return Err(file.error(format!(
                    "tensors {} and {} both stand for {hf}",
                    file.tensors[j].name, info.name
                )));
            }
        }
        Ok(Self { file, names })
    }

    /// The underlying file (metadata, GGUF names).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model's configuration, see [`qwen2_config`].
    pub fn config(&self) -> Result<Qwen2Config, ModelError> {
        qwen2_config(&self.file)
    }
}

impl WeightSource for GgufSource {
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.names.get(name).map(|&i| self.file.tensors[i].shape())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let &i = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        self.file.dequantize(&self.file.tensors[i].name)
    }

    fn read_blocks(&self, name: &str) -> Option<StoredBlocks> {
        let &i = self.names.get(name)?;
        self.file.stored_blocks(&self.file.tensors[i].name)
    }
}

/// The [`Qwen2Config`] a Qwen2 GGUF file describes, validated.
///
/// Reads `general.architecture` (must be `qwen2`) and the `qwen2.*` hyper-parameters;
/// `head_count_kv` defaults to `head_count` and `rope.freq_base` to 10000, as in llama.cpp. The
/// vocabulary size is the row count of `token_embd.weight`, and the embeddings are tied when
/// there is no `output.weight`. Float hyper-parameters are stored as f32 and widened exactly
/// (`rms_norm_eps` 1e-6 becomes 9.999999974752427e-7), as transformers' GGUF loader does.
pub fn qwen2_config(file: &GgufFile) -> Result<Qwen2Config, ModelError> {
    let arch = file.get_str("general.architecture")?;
    if arch != "qwen2" {
        return Err(file.error(format!(
            "general.architecture is {arch:?}, but only \"qwen2\" is supported"
        )));
    }
    if let Some(kind) = file.metadata("qwen2.rope.scaling.type") {
        if kind.as_str() != Some("none") {
            return Err(file.error(format!(
                "qwen2.rope.scaling.type is {kind:?}; only the default RoPE is supported"
            )));
        }
    }
    let size = |key: &str| -> Result<usize, ModelError> {
        let v = file.get_u64(key)?;
        usize::try_from(v).map_err(|_| file.error(format!("metadata key {key} is too large")))
    };
    let num_attention_heads = size("qwen2.attention.head_count")?;
    let num_key_value_heads = match file.metadata("qwen2.attention.head_count_kv") {
        Some(_) => size("qwen2.attention.head_count_kv")?,
        None => num_attention_heads,
    };
    let rope_theta = match file.metadata("qwen2.rope.freq_base") {
        Some(_) => f64::from(file.get_f32("qwen2.rope.freq_base")?),
        None => 10000.0,
    };
    let embeddings = file.tensor("token_embd.weight").ok_or_else(|| {
        file.error("no token_embd.weight tensor, so the vocabulary size is unknown".into())
    })?;
    let vocab_size = match embeddings.shape()[..] {
        [rows, _] => rows,
        _ => {
            return Err(file.error(format!(
                "token_embd.weight has shape {:?}; a matrix was expected",
                embeddings.shape()
            )))
        }
    };
    let config = Qwen2Config {
        vocab_size,
        hidden_size: size("qwen2.embedding_length")?,
        intermediate_size: size("qwen2.feed_forward_length")?,
        num_hidden_layers: size("qwen2.block_count")?,
        num_attention_heads,
        num_key_value_heads,
        max_position_embeddings: size("qwen2.context_length")?,
        rms_norm_eps: f64::from(file.get_f32("qwen2.attention.layer_norm_rms_epsilon")?),
        rope_theta,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
    };
    config
        .validate()
        .map_err(|e| file.error(format!("invalid config: {e}")))?;
    Ok(config)
}
