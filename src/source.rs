//! Where a model comes from: `--model` is a local folder, a GGUF file or a Hugging Face hub id.
//!
//! A folder (local or from the hub) holds `config.json`, `tokenizer.json`, optionally
//! `tokenizer_config.json` / `chat_template.jinja`, and the safetensors weights. Hub files land
//! in the same cache as Python's (`~/.cache/huggingface/hub`, or `$HF_HOME/hub`), and
//! `HF_ENDPOINT` points the download at a mirror.

use std::path::{Path, PathBuf};

use crate::gguf_tokenizer::{tokenizer_from_gguf, GgufTokenizerMetadata};
use crate::model::load::{qwen2_config, GgufFile, GgufSource, SafetensorsSource, WeightSource};
use crate::model::{ModelError, Qwen2Config};
use crate::progress::Progress;
use crate::prompt::{PromptError, PromptTokenizer};

/// The model attrib uses when `--model` is not given (the seed's).
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-1.5B-Instruct";

/// Why a model could not be found or fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A path that does not exist.
    #[error("--model {0}: no such file or folder")]
    NotFound(PathBuf),
    /// A folder without `config.json`.
    #[error("--model {0}: this folder has no config.json; point --model at a Hugging Face model folder (config.json, model.safetensors, tokenizer.json) or a .gguf file")]
    NotAModelFolder(PathBuf),
    /// A file that is not a GGUF file.
    #[error("--model {0}: a file, but not a .gguf file; point --model at a .gguf file or at the Hugging Face model folder (config.json, model.safetensors, tokenizer.json) that holds this file")]
    NotAModelFile(PathBuf),
    /// Neither a path nor a hub id.
    #[error(
        "--model {0:?} is neither an existing folder or .gguf file nor a hub id like Qwen/Qwen2.5-1.5B-Instruct"
    )]
    Unrecognised(String),
    /// The hub could not be reached or refused a required file.
    #[error("--model {id}: cannot fetch {file} from the hub at {endpoint} ({message}); check the network or HF_ENDPOINT, or pass --model a local folder")]
    Hub {
        /// The hub id.
        id: String,
        /// The file that failed.
        file: String,
        /// The endpoint used.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
}

/// How a model's files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A Hugging Face folder: `config.json`, safetensors, `tokenizer.json`.
    Folder,
    /// One GGUF file (llama.cpp, Ollama, LM Studio): config, tokenizer and chat template in its
    /// metadata, weights possibly quantized.
    Gguf,
}

/// Where a model's config, weights and tokenizer are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// What the user passed to `--model`.
    pub name: String,
    /// The folder (or file) holding them.
    pub path: PathBuf,
    /// Its layout.
    pub format: Format,
}

impl ModelFiles {
    /// A Hugging Face model folder.
    pub fn folder(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            format: Format::Folder,
        }
    }

    /// A GGUF file.
    pub fn gguf(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            format: Format::Gguf,
        }
    }

    /// The model's config.
    pub fn read_config(&self) -> Result<Qwen2Config, ModelError> {
        match self.format {
            Format::Folder => Qwen2Config::from_file(&self.path.join("config.json")),
            Format::Gguf => qwen2_config(&GgufFile::open(&self.path)?),
        }
    }

    /// The model's tokenizer and chat template.
    pub fn tokenizer(&self) -> Result<PromptTokenizer, PromptError> {
        match self.format {
            Format::Folder => PromptTokenizer::from_folder(&self.path),
            Format::Gguf => {
                let bad = |message: String| PromptError::Tokenizer {
                    path: self.path.clone(),
                    message,
                };
                let file = GgufFile::open(&self.path).map_err(|e| bad(e.to_string()))?;
                let meta =
                    GgufTokenizerMetadata::from_file(&file).map_err(|e| bad(e.to_string()))?;
                let tokenizer = tokenizer_from_gguf(&meta).map_err(|e| bad(e.to_string()))?;
                let template = match file.metadata("tokenizer.chat_template") {
                    Some(_) => Some(
                        file.get_str("tokenizer.chat_template")
                            .map_err(|e| bad(e.to_string()))?
                            .to_string(),
                    ),
                    None => None,
                };
                let token = |id: Option<u32>| id.and_then(|i| meta.tokens.get(i as usize).cloned());
                let specials = [
                    ("bos_token", token(meta.bos_token_id)),
                    ("eos_token", token(meta.eos_token_id)),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect();
                Ok(PromptTokenizer::new(
                    tokenizer, template, specials, &self.path,
                ))
            }
        }
    }

    /// The model's weights.
    ///
    /// With `in_place`, f32 safetensors are shared with the tensors rather than copied (see
    /// [`SafetensorsSource::in_place`]); ask for it only for a backend that keeps host data.
    pub fn weights(&self, in_place: bool) -> Result<Box<dyn WeightSource>, ModelError> {
        match self.format {
            Format::Folder => Ok(Box::new(
                SafetensorsSource::from_folder(&self.path)?.in_place(in_place),
            )),
            Format::Gguf => Ok(Box::new(GgufSource::open(&self.path)?)),
        }
    }
}

/// Finds the files for `--model`: an existing folder is used as it is; `owner/name` that is
/// not a path is fetched from the hub (or taken from its cache).
pub fn resolve(model: &str, progress: &mut dyn Progress) -> Result<ModelFiles, SourceError> {
    let path = Path::new(model);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(SourceError::NotAModelFolder(path.to_path_buf()));
        }
        return Ok(ModelFiles::folder(model, path));
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return if path.is_file() {
            Ok(ModelFiles::gguf(model, path))
        } else {
            Err(SourceError::NotFound(path.to_path_buf()))
        };
    }
    if path.exists() {
        return Err(SourceError::NotAModelFile(path.to_path_buf()));
    }
    if looks_like_hub_id(model) {
        return fetch_from_hub(model, progress);
    }
    if model.contains('/') || model.starts_with('.') || model.starts_with('~') {
        return Err(SourceError::NotFound(path.to_path_buf()));
    }
    Err(SourceError::Unrecognised(model.to_string()))
}

/// `owner/name` with the characters the hub allows, not starting like a path.
fn looks_like_hub_id(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((owner, name)) => ok(owner) && ok(name),
        None => false,
    }
}

/// Forwards hf-hub's download progress to ours.
struct HubProgress<'a> {
    inner: &'a mut dyn Progress,
    done: u64,
}

impl hf_hub::api::Progress for HubProgress<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        self.done = 0;
        self.inner
            .start(&format!("downloading {filename}"), Some(size as u64));
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        self.inner.set(self.done);
    }
    fn finish(&mut self) {
        self.inner.finish();
    }
}

/// Downloads (or finds in the cache) the files of hub model `id`.
fn fetch_from_hub(id: &str, progress: &mut dyn Progress) -> Result<ModelFiles, SourceError> {
    use hf_hub::api::sync::{ApiBuilder, ApiError};

    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let hub_error = |file: &str, message: String| SourceError::Hub {
        id: id.to_string(),
        file: file.to_string(),
        endpoint: endpoint.clone(),
        message,
    };
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| hub_error("config.json", e.to_string()))?;
    let repo = api.model(id.to_string());
    let cache = hf_hub::Cache::from_env().model(id.to_string());

    let mut get = |file: &str, required: bool| -> Result<Option<PathBuf>, SourceError> {
        if let Some(path) = cache.get(file) {
            return Ok(Some(path));
        }
        let hub = HubProgress {
            inner: &mut *progress,
            done: 0,
        };
        match repo.download_with_progress(file, hub) {
            Ok(path) => Ok(Some(path)),
            Err(ApiError::RequestError(e))
                if !required && matches!(*e, ureq::Error::Status(404, _)) =>
            {
                Ok(None)
            }
            Err(e) => Err(hub_error(file, e.to_string())),
        }
    };

    let config = get("config.json", true)?.expect("required files are Some");
    get("tokenizer.json", true)?;
    get("tokenizer_config.json", false)?;
    get("chat_template.jinja", false)?;
    match get("model.safetensors.index.json", false)? {
        Some(index) => {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| hub_error("model.safetensors.index.json", e.to_string()))?;
            for shard in shard_names(&text) {
                get(&shard, true)?;
            }
        }
        None => {
            get("model.safetensors", true)?;
        }
    }
    let folder = config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(ModelFiles::folder(id, folder))
}

/// The distinct shard names of a `model.safetensors.index.json`.
fn shard_names(index: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(index).unwrap_or_default();
    let mut names: Vec<String> = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert!(looks_like_hub_id("Qwen/Qwen2.5-1.5B-Instruct"));
        assert!(!looks_like_hub_id("./models/qwen"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("qwen"));
    }

    #[test]
    fn missing_paths_are_named() {
        let err = resolve("./no/such/folder", &mut crate::progress::Silent).unwrap_err();
        assert!(matches!(err, SourceError::NotFound(_)), "{err}");
        assert!(err.to_string().contains("./no/such/folder"));
    }
}
