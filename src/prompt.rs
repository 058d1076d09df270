//! From text to token ids: the model's `tokenizer.json`, and its chat template rendered as
//! transformers' `apply_chat_template(..., add_generation_prompt=True)` does.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{Tokenizer, TokenizerImpl};

/// Why a prompt could not be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// `tokenizer.json` is missing or unreadable.
    #[error("{path}: cannot load the tokenizer ({message})")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the tokenizers crate said.
        message: String,
    },
    /// `tokenizer_config.json` or `chat_template.jinja` is unreadable.
    #[error("{path}: {message}")]
    ChatTemplateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `--chat` on a model without a chat template.
    #[error("--chat: {0} has no chat template (neither chat_template.jinja nor a chat_template in tokenizer_config.json)")]
    NoChatTemplate(PathBuf),
    /// The template failed to render.
    #[error("--chat: the model's chat template failed to render: {0}")]
    Template(String),
    /// The prompt is empty.
    #[error("--prompt is empty; give the text to run the model on")]
    Empty,
    /// Encoding failed.
    #[error("cannot tokenize the prompt: {0}")]
    Encode(String),
}

/// A prompt as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The text that was tokenized (the chat-wrapped prompt with `--chat`).
    pub text: String,
    /// Token ids.
    pub ids: Vec<u32>,
    /// The tokens as the vocabulary spells them (byte-level, `Ġ` for a space).
    pub tokens: Vec<String>,
}

/// A `tokenizer.json`'s tokenizer, read as a BPE tokenizer first (Qwen2's kind).
///
/// The same as `Tokenizer::from_str`, which is what a non-BPE file gets, and faster for BPE:
/// that reads the model section through a generic value (the 151k-entry vocabulary and merges
/// copied twice over) to learn its type, and took 0.25-0.30 s for Qwen2.5's file against
/// 0.18-0.19 s here, a fifth of a short attribution run.
fn parse_tokenizer(text: &str) -> tokenizers::Result<Tokenizer> {
    type Bpe = TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >;
    match serde_json::from_str::<Bpe>(text) {
        Ok(bpe) => Ok(bpe.into()),
        Err(_) => Tokenizer::from_str(text),
    }
}

/// A model's tokenizer and chat template.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    /// Values the template may use: `bos_token`, `eos_token`…
    special_tokens: SpecialTokens,
    folder: PathBuf,
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` and the chat template of a model folder.
    pub fn from_folder(folder: &Path) -> Result<Self, PromptError> {
        let path = folder.join("tokenizer.json");
        let bad = |message: String| PromptError::Tokenizer {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let tokenizer = parse_tokenizer(&text).map_err(|e| bad(e.to_string()))?;
        let (chat_template, special_tokens) = read_template(folder)?;
        Ok(Self {
            tokenizer,
            chat_template,
            special_tokens,
            folder: folder.to_path_buf(),
        })
    }

    /// A tokenizer built elsewhere (from GGUF metadata, say), with an optional chat template,
    /// the special tokens it may refer to (`("eos_token", "<|im_end|>")`), and the file it
    /// came from (for error messages).
    pub fn new(
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        special_tokens: SpecialTokens,
        origin: &Path,
    ) -> Self {
        Self {
            tokenizer,
            chat_template,
            special_tokens,
            folder: origin.to_path_buf(),
        }
    }

    /// Tokenizes `prompt`; with `chat`, wraps it as one user message first.
    ///
    /// Plain prompts are encoded as `tokenizer(prompt)` in transformers (Qwen2 adds no special
    /// tokens); the chat-wrapped text already holds its special tokens and is encoded without
    /// adding any, as `apply_chat_template(tokenize=True)` does.
    pub fn encode(&self, prompt: &str, chat: bool) -> Result<Encoded, PromptError> {
        if prompt.is_empty() {
            return Err(PromptError::Empty);
        }
        let text = if chat {
            self.apply_chat_template(prompt)?
        } else {
            prompt.to_string()
        };
        let encoding = self
            .tokenizer
            .encode(text.as_str(), !chat)
            .map_err(|e| PromptError::Encode(e.to_string()))?;
        Ok(Encoded {
            text,
            ids: encoding.get_ids().to_vec(),
            tokens: encoding.get_tokens().to_vec(),
        })
    }

    /// Renders the chat template for one user message with the generation prompt.
    pub fn apply_chat_template(&self, prompt: &str) -> Result<String, PromptError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| PromptError::NoChatTemplate(self.folder.clone()))?;
        render_chat(template, prompt, &self.special_tokens)
    }

    /// The text of one token, as decoding it alone gives.
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .decode(&[id], false)
            .unwrap_or_else(|_| self.tokenizer.id_to_token(id).unwrap_or_default())
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Special tokens a chat template may refer to, as `(name, text)`: `("eos_token", "<|im_end|>")`.
pub type SpecialTokens = Vec<(String, String)>;

/// The chat template (from `chat_template.jinja`, else `tokenizer_config.json`) and the special
/// tokens `tokenizer_config.json` names.
fn read_template(folder: &Path) -> Result<(Option<String>, SpecialTokens), PromptError> {
    let mut template = None;
    let mut specials = Vec::new();
    let config_path = folder.join("tokenizer_config.json");
    if config_path.is_file() {
        let bad = |message: String| PromptError::ChatTemplateFile {
            path: config_path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&config_path).map_err(|e| bad(e.to_string()))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        template = match config.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            // A list of named templates: transformers uses the one named "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            let value = match config.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(obj) => obj
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(String::from),
                None => None,
            };
            if let Some(value) = value {
                specials.push((key.to_string(), value));
            }
        }
    }
    // transformers prefers a separate chat_template.jinja over the one in tokenizer_config.json.
    let jinja = folder.join("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(|e| PromptError::ChatTemplateFile {
            path: jinja.clone(),
            message: e.to_string(),
        })?;
        template = Some(text);
    }
    Ok((template, specials))
}

/// Renders a Hugging Face chat template with minijinja, set up as transformers sets up jinja2
/// (`trim_blocks`, `lstrip_blocks`, `raise_exception`, `tojson`, Python string methods).
fn render_chat(
    template: &str,
    prompt: &str,
    specials: &[(String, String)],
) -> Result<String, PromptError> {
    use minijinja::{Environment, Error, ErrorKind, Value};

    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| PromptError::Template(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| PromptError::Template(e.to_string()))?;
    let mut ctx: std::collections::BTreeMap<String, Value> = specials
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    ctx.insert(
        "messages".into(),
        Value::from_serialize(vec![serde_json::json!({"role": "user", "content": prompt})]),
    );
    ctx.insert("add_generation_prompt".into(), Value::from(true));
    tmpl.render(Value::from_serialize(&ctx))
        .map_err(|e| PromptError::Template(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_minimal_chatml_template() {
        let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render_chat(template, "Hi", &[]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// The serialized form and the ids of a few texts: what tells two tokenizers apart.
    fn fingerprint(t: &Tokenizer) -> (String, Vec<Vec<u32>>) {
        let texts = [
            "The capital of France is",
            " héllo\n\tworld 123",
            "<|im_start|>x",
        ];
        let ids = texts
            .iter()
            .map(|s| t.encode(*s, false).unwrap().get_ids().to_vec())
            .collect();
        (serde_json::to_string(t).unwrap(), ids)
    }

    #[test]
    fn bpe_tokenizers_read_as_bpe_equal_the_generic_reading() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-tied/tokenizer.json");
        let text = std::fs::read_to_string(path).unwrap();
        let generic = Tokenizer::from_str(&text).unwrap();
        assert_eq!(
            fingerprint(&parse_tokenizer(&text).unwrap()),
            fingerprint(&generic)
        );
        // Merges written the legacy way ("a b") too.
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let merges = json["model"]["merges"].as_array_mut().unwrap();
        for m in merges.iter_mut() {
            *m = format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()).into();
        }
        let legacy = json.to_string();
        assert_eq!(
            fingerprint(&parse_tokenizer(&legacy).unwrap()),
            fingerprint(&generic)
        );
    }

    #[test]
    fn other_tokenizers_are_read_the_generic_way_and_bad_files_refused() {
        use tokenizers::models::wordlevel::WordLevel;
        let vocab = [("[UNK]", 0), ("hello", 1), ("world", 2)]
            .into_iter()
            .map(|(w, i)| (w.to_string(), i))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut words = Tokenizer::new(model);
        words.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
        let text = serde_json::to_string(&words).unwrap();
        let read = parse_tokenizer(&text).unwrap();
        assert_eq!(
            read.encode("hello there world", false).unwrap().get_ids(),
            [1, 0, 2]
        );
        assert_eq!(fingerprint(&read), fingerprint(&words));
        assert!(parse_tokenizer("{\"model\": ").is_err());
    }

    #[test]
    fn raise_exception_surfaces_as_an_error() {
        let err = render_chat("{{ raise_exception('no system role') }}", "x", &[]).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
