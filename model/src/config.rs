//! `Qwen2Config`: the checkpoint's `config.json`, with Hugging Face's field names.

use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;

/// The hyper-parameters of a Qwen2 / Qwen2.5 model, as in its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2Config {
    /// Rows of the token embedding and of the LM head.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Base of the rotary position embedding.
    pub rope_theta: f64,
    /// Whether the LM head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
}

/// What `config.json` may hold; validated into [`Qwen2Config`].
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    /// transformers 5 moves `rope_theta` here.
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    use_sliding_window: bool,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

fn default_max_positions() -> usize {
    32768
}

fn default_eps() -> f64 {
    1e-6
}

impl Qwen2Config {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses and validates the text of a `config.json`; `path` is only used in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ModelError> {
        let config_error = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        // Check the model type first, so that another architecture's config gets that error
        // rather than a complaint about a missing field.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| config_error(e.to_string()))?;
        let model_type = value.get("model_type").and_then(|v| v.as_str());
        if let Some(found) = model_type {
            if found != "qwen2" {
                return Err(ModelError::UnsupportedModelType {
                    path: path.to_path_buf(),
                    found: found.to_string(),
                });
            }
        }
        let raw: RawConfig =
            serde_json::from_value(value).map_err(|e| config_error(e.to_string()))?;
        if raw.model_type.is_none() {
            return Err(config_error("no model_type (expected \"qwen2\")".into()));
        }
        if let Some(scaling) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type"));
            if kind.and_then(|k| k.as_str()) != Some("default") {
                return Err(config_error(format!(
                    "rope_scaling {scaling} is not supported (only the default RoPE)"
                )));
            }
        }
        if let Some(kind) = raw
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_type.as_deref())
        {
            if kind != "default" {
                return Err(config_error(format!(
                    "rope_parameters.rope_type {kind:?} is not supported (only \"default\")"
                )));
            }
        }
        if raw.use_sliding_window {
            return Err(config_error(
                "use_sliding_window is true; sliding-window attention is not supported".into(),
            ));
        }
        let rope_theta = raw
            .rope_theta
            .or(raw.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(10000.0);
        let config = Qwen2Config {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: raw.tie_word_embeddings,
        };
        config.validate().map_err(config_error)?;
        Ok(config)
    }

    /// Checks that the sizes fit together (heads divide the width, and so on).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Qwen2Config, ModelError> {
        Qwen2Config::from_json(text, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;

    #[test]
    fn rope_theta_at_top_level() {
        let c = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "rope_theta": 1000000.0}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.head_dim(), 16);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn rope_theta_in_rope_parameters() {
        let c = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "tie_word_embeddings": true,
                "rope_parameters": {{"rope_type": "default", "rope_theta": 5000.0}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn defaults_follow_transformers() {
        let c = parse(
            r#"{"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}"#,
        )
        .unwrap();
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rms_norm_eps, 1e-6);
    }

    #[test]
    fn other_model_types_are_refused() {
        let err = parse(&format!(r#"{{"model_type": "llama", {BASE}}}"#)).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedModelType { ref found, .. } if found == "llama")
        );
        assert!(err.to_string().contains("config.json"));
    }

    #[test]
    fn inconsistent_heads_are_refused() {
        let text = BASE.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
        let err = parse(&format!(r#"{{"model_type": "qwen2", {text}}}"#)).unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
    }

    #[test]
    fn scaled_rope_is_refused() {
        let err = parse(&format!(
            r#"{{"model_type": "qwen2", {BASE}, "rope_scaling": {{"type": "yarn", "factor": 4.0}}}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("rope_scaling"), "{err}");
    }

    #[test]
    fn invalid_json_names_the_file() {
        let err = parse("{not json").unwrap_err();
        assert!(err.to_string().starts_with("config.json"), "{err}");
    }
}
