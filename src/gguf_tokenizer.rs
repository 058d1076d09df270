//! A [`tokenizers::Tokenizer`] from the tokenizer metadata of a Qwen2 GGUF file.
//!
//! A GGUF has no `tokenizer.json`: it stores the vocabulary, merges, token types and special token
//! ids under llama.cpp's `tokenizer.ggml.*` keys. [`tokenizer_from_gguf`] rebuilds the tokenizer
//! from those the way transformers does when it loads a byte-level BPE vocabulary from a GGUF
//! (`AutoTokenizer.from_pretrained(folder, gguf_file=name)`, transformers 5,
//! `integrations/gguf/gguf_tokenizer_mapping.py`), so both give the same ids:
//!
//! - model: BPE over the vocabulary (a token not spelled in the byte-level alphabet is respelled
//!   byte by byte, as transformers does) and the file's merges; no unknown token, no dropout, no
//!   byte fallback, no prefix or suffix;
//! - normalizer: none. transformers builds this tokenizer from `GPT2Tokenizer` and only replaces
//!   its pre-tokenizer, so unlike Qwen2's own `tokenizer.json` there is no NFC normalizer:
//!   `"Cafe\u{301}"` keeps its combining accent as a separate token;
//! - pre-tokenizer: for `tokenizer.ggml.pre` `qwen2` (and the llama.cpp names transformers maps to
//!   the same split), Qwen2's split regex (isolated) then `ByteLevel` without a prefix space and
//!   without its own regex; without a `pre`, or with `default`, the GPT-2 `ByteLevel` pre-tokenizer
//!   transformers keeps in that case;
//! - added tokens: every control token (type 3) spelled in the byte-level alphabet is a special
//!   token; every user-defined token (type 4) in the vocabulary a plain added token; both match
//!   the raw text (not normalized). The bos, eos and padding tokens are special tokens too;
//! - post-processor: a template adding the bos token in front only when `add_bos_token` is set and
//!   there is a bos token; otherwise nothing is added;
//! - decoder: `ByteLevel`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::model::load::GgufFile;
use crate::model::ModelError;

impl GgufTokenizerMetadata {
    /// Reads the `tokenizer.ggml.*` keys of an open GGUF file.
    pub fn from_file(file: &GgufFile) -> Result<Self, ModelError> {
        let optional_id = |key: &str| -> Result<Option<u32>, ModelError> {
            match file.metadata(key) {
                Some(_) => file.get_u32(key).map(Some),
                None => Ok(None),
            }
        };
        Ok(Self {
            model: file.get_str("tokenizer.ggml.model")?.to_string(),
            pre: match file.metadata("tokenizer.ggml.pre") {
                Some(_) => Some(file.get_str("tokenizer.ggml.pre")?.to_string()),
                None => None,
            },
            tokens: strings(file.get_string_array("tokenizer.ggml.tokens")?),
            token_types: match file.metadata("tokenizer.ggml.token_type") {
                Some(_) => file.get_i32_array("tokenizer.ggml.token_type")?,
                None => Vec::new(),
            },
            merges: match file.metadata("tokenizer.ggml.merges") {
                Some(_) => strings(file.get_string_array("tokenizer.ggml.merges")?),
                None => Vec::new(),
            },
            bos_token_id: optional_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: optional_id("tokenizer.ggml.eos_token_id")?,
            padding_token_id: optional_id("tokenizer.ggml.padding_token_id")?,
            add_bos_token: match file.metadata("tokenizer.ggml.add_bos_token") {
                Some(_) => file.get_bool("tokenizer.ggml.add_bos_token")?,
                None => false,
            },
        })
    }
}

fn strings(values: Vec<&str>) -> Vec<String> {
    values.into_iter().map(String::from).collect()
}

/// `tokenizer.ggml.token_type` of a control token (`<|im_start|>`): a special token.
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// `tokenizer.ggml.token_type` of a user-defined token (`<tool_call>`): a plain added token.
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Qwen2's pre-tokenizer split, as in transformers' `Qwen2Tokenizer` (`PRETOKENIZE_REGEX`).
pub const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values transformers pre-tokenizes with [`QWEN2_SPLIT_REGEX`].
pub const QWEN2_PRE_TOKENIZERS: &[&str] =
    &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"];

/// The tokenizer metadata of a GGUF file, as read by a GGUF parser.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufTokenizerMetadata {
    /// `tokenizer.ggml.model`: the tokenizer kind; only `gpt2` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: llama.cpp's name of the pre-tokenizer, e.g. `qwen2`; absent in older
    /// files.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: the token of each id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: the type of each id (1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte). Empty when the file has no such key: then no token is
    /// added as a special or user-defined token.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: the BPE merges, best first, each two tokens separated by one space
    /// (`"Ġ t"`).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (false when absent): whether encoding with special tokens
    /// puts the bos token in front.
    #[serde(default)]
    pub add_bos_token: bool,
}

/// Why GGUF tokenizer metadata could not be turned into a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    /// `tokenizer.ggml.model` is not `gpt2`.
    #[error("tokenizer.ggml.model is {0:?}; only \"gpt2\" (byte-level BPE) is supported")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this code does not know.
    #[error(
        "tokenizer.ggml.pre is {0:?}; supported: {supported}, \"default\" or none",
        supported = QWEN2_PRE_TOKENIZERS.join(", ")
    )]
    UnsupportedPreTokenizer(String),
    /// `tokenizer.ggml.tokens` is empty.
    #[error("tokenizer.ggml.tokens is empty")]
    NoTokens,
    /// `tokenizer.ggml.token_type` and `tokenizer.ggml.tokens` differ in length.
    #[error("tokenizer.ggml.token_type has {token_types} entries but tokenizer.ggml.tokens has {tokens}")]
    LengthMismatch {
        /// Number of tokens.
        tokens: usize,
        /// Number of token types.
        token_types: usize,
    },
    /// A merge is not two non-empty tokens separated by one space.
    #[error("tokenizer.ggml.merges[{index}] is {merge:?}, not two tokens separated by one space")]
    MalformedMerge {
        /// Its position.
        index: usize,
        /// The merge.
        merge: String,
    },
    /// A special token id is past the end of the vocabulary.
    #[error("{key} is {id} but the vocabulary has {vocab_size} tokens")]
    TokenIdOutOfRange {
        /// The GGUF key.
        key: &'static str,
        /// The id.
        id: u32,
        /// Number of tokens.
        vocab_size: usize,
    },
    /// The tokenizers crate refused a part (a merge of tokens not in the vocabulary, say).
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
}

/// Builds the tokenizer GGUF metadata describes, giving the ids transformers gives when it loads
/// the tokenizer from the same GGUF (see the module documentation for what is built and why).
pub fn tokenizer_from_gguf(meta: &GgufTokenizerMetadata) -> Result<Tokenizer, GgufTokenizerError> {
    if meta.model != "gpt2" {
        return Err(GgufTokenizerError::UnsupportedModel(meta.model.clone()));
    }
    let pre_tokenizer = pre_tokenizer(meta.pre.as_deref())?;
    if meta.tokens.is_empty() {
        return Err(GgufTokenizerError::NoTokens);
    }
    if !meta.token_types.is_empty() && meta.token_types.len() != meta.tokens.len() {
        return Err(GgufTokenizerError::LengthMismatch {
            tokens: meta.tokens.len(),
            token_types: meta.token_types.len(),
        });
    }
    let special_ids = [
        ("tokenizer.ggml.bos_token_id", meta.bos_token_id),
        ("tokenizer.ggml.eos_token_id", meta.eos_token_id),
        ("tokenizer.ggml.padding_token_id", meta.padding_token_id),
    ];
    for (key, id) in special_ids {
        if let Some(id) = id {
            if usize::try_from(id).map_or(true, |i| i >= meta.tokens.len()) {
                return Err(GgufTokenizerError::TokenIdOutOfRange {
                    key,
                    id,
                    vocab_size: meta.tokens.len(),
                });
            }
        }
    }

    // As transformers' `byte_level_tokenizer`: a token outside the byte-level alphabet is
    // respelled from its UTF-8 bytes; a later duplicate wins.
    let vocab: Vocab = (0u32..)
        .zip(&meta.tokens)
        .map(|(id, token)| (byte_level_spelling(token), id))
        .collect();
    let merges = parse_merges(&meta.merges)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .byte_fallback(false)
        .build()
        .map_err(|e| GgufTokenizerError::Build(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));

    // transformers' `add_gguf_special_tokens`: control tokens become special tokens, unless not
    // spelled in the byte-level alphabet (a llama.cpp mislabel); user-defined tokens plain added
    // tokens, when in the vocabulary.
    let typed = |wanted: i32| {
        meta.tokens
            .iter()
            .zip(&meta.token_types)
            .filter(move |(_, &token_type)| token_type == wanted)
            .map(|(token, _)| token.as_str())
    };
    let control: Vec<AddedToken> = typed(TOKEN_TYPE_CONTROL)
        .filter(|token| token.chars().all(in_byte_level_alphabet))
        .map(|token| AddedToken::from(token, true).normalized(false))
        .collect();
    if !control.is_empty() {
        tokenizer.add_special_tokens(&control);
    }
    let user_defined: Vec<AddedToken> = typed(TOKEN_TYPE_USER_DEFINED)
        .filter(|token| tokenizer.token_to_id(token).is_some())
        .map(|token| AddedToken::from(token, false).normalized(false))
        .collect();
    if !user_defined.is_empty() {
        tokenizer.add_tokens(&user_defined);
    }
    // The named special tokens (`Qwen2Tokenizer` adds `all_special_tokens` as special tokens).
    let mut named = HashSet::new();
    let named_tokens: Vec<AddedToken> = special_ids
        .iter()
        .filter_map(|&(_, id)| id)
        .map(|id| meta.tokens[id as usize].as_str())
        .filter(|token| named.insert(*token))
        .map(|token| AddedToken::from(token, true).normalized(false))
        .collect();
    if !named_tokens.is_empty() {
        tokenizer.add_special_tokens(&named_tokens);
    }

    // transformers' `update_post_processor`, with `add_eos_token` false.
    let bos = match (meta.add_bos_token, meta.bos_token_id) {
        (true, Some(id)) => {
            let content = meta.tokens[id as usize].clone();
            // transformers looks the id up from the token, which may be an added token's.
            Some((tokenizer.token_to_id(&content).unwrap_or(id), content))
        }
        _ => None,
    };
    tokenizer.with_post_processor(Some(post_processor(bos)?));
    Ok(tokenizer)
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, GgufTokenizerError> {
    match pre {
        // transformers keeps `GPT2Tokenizer`'s pre-tokenizer: GPT-2's regex, no prefix space.
        None | Some("default") => Ok(ByteLevel::new(false, true, true).into()),
        Some(name) if QWEN2_PRE_TOKENIZERS.contains(&name) => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT_REGEX.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| GgufTokenizerError::Build(e.to_string()))?;
            Ok(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into())
        }
        Some(name) => Err(GgufTokenizerError::UnsupportedPreTokenizer(name.to_owned())),
    }
}

/// `"a b"` → `("a", "b")`.
fn parse_merges(merges: &[String]) -> Result<Merges, GgufTokenizerError> {
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                Ok((a.to_owned(), b.to_owned()))
            }
            _ => Err(GgufTokenizerError::MalformedMerge {
                index,
                merge: merge.clone(),
            }),
        })
        .collect()
}

/// The post-processor: the bos token `(id, token)` in front of each sequence, if any.
fn post_processor(bos: Option<(u32, String)>) -> Result<TemplateProcessing, GgufTokenizerError> {
    let build_error = |e: String| GgufTokenizerError::Build(e);
    let mut builder = TemplateProcessing::builder();
    match bos {
        None => {
            builder.try_single("$A:0").map_err(build_error)?;
            builder.try_pair("$A:0 $B:1").map_err(build_error)?;
        }
        Some((id, content)) => {
            // transformers names the template's special token after its text; a text the
            // template syntax cannot hold gets another name (the name is never output).
            let name =
                if content.is_empty() || content.starts_with('$') || content.contains([' ', ':']) {
                    "bos".to_owned()
                } else {
                    content.clone()
                };
            builder
                .try_single(format!("{name}:0 $A:0"))
                .map_err(build_error)?;
            builder
                .try_pair(format!("{name}:0 $A:0 {name}:1 $B:1"))
                .map_err(build_error)?;
            let token = SpecialToken::new(name, vec![id], vec![content])
                .map_err(|e| GgufTokenizerError::Build(e.to_string()))?;
            builder.special_tokens(vec![token]);
        }
    }
    builder
        .build()
        .map_err(|e| GgufTokenizerError::Build(e.to_string()))
}

/// GPT-2's byte-level alphabet (`bytes_to_unicode`): the char standing for each byte.
fn byte_to_char(byte: u8) -> char {
    // Printable bytes stand for themselves; the others, in order, for U+0100 onwards.
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(byte) {
        char::from(byte)
    } else {
        let rank = (0..byte).filter(|&b| !printable(b)).count();
        char::from_u32(0x100 + rank as u32).expect("below U+0144")
    }
}

/// Whether `c` is one of the 256 chars of the byte-level alphabet.
fn in_byte_level_alphabet(c: char) -> bool {
    matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}' | '\u{100}'..='\u{143}')
}

/// The token as the byte-level vocabulary spells it: unchanged if already spelled in the
/// byte-level alphabet, else its UTF-8 bytes through it.
fn byte_level_spelling(token: &str) -> String {
    if token.chars().all(in_byte_level_alphabet) {
        token.to_owned()
    } else {
        token.bytes().map(byte_to_char).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;
    use std::sync::OnceLock;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gguf-tokenizer")
            .join(name)
    }

    /// The tokenizer metadata of Qwen2.5-Coder-0.5B-Instruct's GGUF.
    fn qwen_metadata() -> &'static GgufTokenizerMetadata {
        static META: OnceLock<GgufTokenizerMetadata> = OnceLock::new();
        META.get_or_init(|| {
            let text = std::fs::read_to_string(fixture("metadata.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        })
    }

    #[derive(Deserialize)]
    struct Expected {
        add_special_tokens: bool,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        text: String,
        ids: Vec<u32>,
        tokens: Vec<String>,
        decoded: String,
    }

    /// A tiny byte-level vocabulary: `ab`, `Ġab`, two control tokens, one user-defined.
    fn tiny() -> GgufTokenizerMetadata {
        let tokens = [
            "a",
            "b",
            "Ġ",
            "ab",
            "Ġab",
            "<|endoftext|>",
            "<|im_end|>",
            "<think>",
            "[PAD8]",
        ];
        GgufTokenizerMetadata {
            model: "gpt2".into(),
            pre: Some("qwen2".into()),
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            token_types: vec![1, 1, 1, 1, 1, 3, 3, 4, 5],
            merges: vec!["a b".into(), "Ġ ab".into()],
            bos_token_id: Some(5),
            eos_token_id: Some(6),
            padding_token_id: Some(5),
            add_bos_token: false,
        }
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn qwen2_gguf_matches_transformers() {
        let expected: Expected =
            serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap())
                .unwrap();
        assert!(expected.add_special_tokens);
        let meta = qwen_metadata();
        assert_eq!(meta.pre.as_deref(), Some("qwen2"));
        let tokenizer = tokenizer_from_gguf(meta).unwrap();
        assert_eq!(tokenizer.get_vocab_size(true), meta.tokens.len());
        assert!(expected.cases.len() >= 40);
        for case in &expected.cases {
            let encoding = tokenizer
                .encode(case.text.as_str(), expected.add_special_tokens)
                .unwrap();
            assert_eq!(encoding.get_ids(), case.ids, "ids of {:?}", case.text);
            assert_eq!(
                encoding.get_tokens(),
                case.tokens,
                "tokens of {:?}",
                case.text
            );
            assert_eq!(
                tokenizer.decode(&case.ids, false).unwrap(),
                case.decoded,
                "decoding {:?}",
                case.text
            );
        }
    }

    #[test]
    fn qwen2_gguf_special_and_user_defined_tokens() {
        let tokenizer = tokenizer_from_gguf(qwen_metadata()).unwrap();
        let added = tokenizer.get_added_tokens_decoder();
        // 20 control tokens + <tool_call>, </tool_call>; the 271 unused [PAD…] are not added.
        assert_eq!(added.len(), 22);
        assert!(added[&151643].special && added[&151643].content == "<|endoftext|>");
        assert!(added[&151645].special && added[&151645].content == "<|im_end|>");
        assert!(!added[&151657].special && added[&151657].content == "<tool_call>");
        assert!(added.values().all(|t| !t.normalized));
        assert!(!added.contains_key(&151665));
        // Special tokens are dropped by a decode that skips them; user-defined ones are kept.
        let ids = ids(&tokenizer, "<|im_start|>x<tool_call><|im_end|>");
        assert_eq!(ids.len(), 4);
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "x<tool_call>");
    }

    #[test]
    fn qwen2_gguf_bos_only_with_add_bos_token() {
        let mut meta = qwen_metadata().clone();
        assert!(!meta.add_bos_token);
        meta.add_bos_token = true;
        let tokenizer = tokenizer_from_gguf(&meta).unwrap();
        assert_eq!(ids(&tokenizer, "hi"), [151643, 6023]);
        let plain = tokenizer.encode("hi", false).unwrap();
        assert_eq!(plain.get_ids(), [6023]);
    }

    #[test]
    fn tiny_encodes_and_adds_tokens() {
        let tokenizer = tokenizer_from_gguf(&tiny()).unwrap();
        assert_eq!(ids(&tokenizer, "ab ab<|im_end|><think>"), [3, 4, 6, 7]);
        assert!(!ids(&tokenizer, "[PAD8]").contains(&8));
        assert_eq!(
            tokenizer.decode(&[3, 4, 6, 7], true).unwrap(),
            "ab ab<think>"
        );
        assert_eq!(
            tokenizer.decode(&[3, 4, 6], false).unwrap(),
            "ab ab<|im_end|>"
        );
    }

    #[test]
    fn add_bos_token_puts_bos_first() {
        let mut meta = tiny();
        meta.add_bos_token = true;
        let tokenizer = tokenizer_from_gguf(&meta).unwrap();
        assert_eq!(ids(&tokenizer, "ab"), [5, 3]);
        let pair = tokenizer.encode(("ab", "ab"), true).unwrap();
        assert_eq!(pair.get_ids(), [5, 3, 5, 3]);
        assert_eq!(pair.get_type_ids(), [0, 0, 1, 1]);
        // Without a bos token there is nothing to add.
        meta.bos_token_id = None;
        let tokenizer = tokenizer_from_gguf(&meta).unwrap();
        assert_eq!(ids(&tokenizer, "ab"), [3]);
    }

    #[test]
    fn control_token_outside_byte_alphabet_is_not_special() {
        let mut meta = tiny();
        meta.tokens[8] = "<ctl x>".into();
        meta.token_types[8] = TOKEN_TYPE_CONTROL;
        let tokenizer = tokenizer_from_gguf(&meta).unwrap();
        assert!(tokenizer.get_added_tokens_decoder().get(&8).is_none());
        // It stays in the vocabulary, respelled byte by byte as transformers does.
        assert_eq!(tokenizer.token_to_id("<ctlĠx>"), Some(8));
    }

    #[test]
    fn qwen2_aliases_share_the_pre_tokenizer() {
        let qwen2 = tokenizer_from_gguf(&tiny()).unwrap();
        for name in QWEN2_PRE_TOKENIZERS {
            let meta = GgufTokenizerMetadata {
                pre: Some(name.to_string()),
                ..tiny()
            };
            let tokenizer = tokenizer_from_gguf(&meta).unwrap();
            assert_eq!(tokenizer.get_pre_tokenizer(), qwen2.get_pre_tokenizer());
        }
    }

    #[test]
    fn default_pre_tokenizer_is_gpt2_byte_level() {
        for pre in [None, Some("default".to_string())] {
            let meta = GgufTokenizerMetadata { pre, ..tiny() };
            let tokenizer = tokenizer_from_gguf(&meta).unwrap();
            assert_eq!(
                tokenizer.get_pre_tokenizer(),
                Some(&ByteLevel::new(false, true, true).into())
            );
            assert_eq!(ids(&tokenizer, "ab ab"), [3, 4]);
        }
    }

    #[test]
    fn rejects_models_other_than_gpt2() {
        let meta = GgufTokenizerMetadata {
            model: "llama".into(),
            ..tiny()
        };
        let err = tokenizer_from_gguf(&meta).unwrap_err();
        assert!(matches!(err, GgufTokenizerError::UnsupportedModel(ref m) if m == "llama"));
        assert!(err.to_string().contains("gpt2"));
    }

    #[test]
    fn rejects_unknown_pre_tokenizer() {
        let meta = GgufTokenizerMetadata {
            pre: Some("mystery".into()),
            ..tiny()
        };
        let err = tokenizer_from_gguf(&meta).unwrap_err();
        assert!(
            matches!(err, GgufTokenizerError::UnsupportedPreTokenizer(ref p) if p == "mystery")
        );
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let mut meta = tiny();
        meta.token_types.pop();
        let err = tokenizer_from_gguf(&meta).unwrap_err();
        assert!(matches!(
            err,
            GgufTokenizerError::LengthMismatch {
                tokens: 9,
                token_types: 8
            }
        ));
        // No token types at all (the key is optional): nothing is added, encoding still works.
        let meta = GgufTokenizerMetadata {
            token_types: Vec::new(),
            bos_token_id: None,
            eos_token_id: None,
            padding_token_id: None,
            ..tiny()
        };
        let tokenizer = tokenizer_from_gguf(&meta).unwrap();
        assert!(tokenizer.get_added_tokens_decoder().is_empty());
        let empty = GgufTokenizerMetadata {
            tokens: Vec::new(),
            token_types: Vec::new(),
            ..tiny()
        };
        assert!(matches!(
            tokenizer_from_gguf(&empty),
            Err(GgufTokenizerError::NoTokens)
        ));
    }

    #[test]
    fn rejects_malformed_merges() {
        for bad in ["ab", "a  b", "a b c", " b", "a ", ""] {
            let mut meta = tiny();
            meta.merges.push(bad.into());
            let err = tokenizer_from_gguf(&meta).unwrap_err();
            assert!(
                matches!(err, GgufTokenizerError::MalformedMerge { index: 2, ref merge } if merge == bad),
                "{bad:?}: {err}"
            );
        }
        // Well formed, but of tokens not in the vocabulary.
        let mut meta = tiny();
        meta.merges.push("b a".into());
        let err = tokenizer_from_gguf(&meta).unwrap_err();
        assert!(matches!(err, GgufTokenizerError::Build(_)), "{err}");
    }

    #[test]
    fn rejects_special_token_ids_out_of_range() {
        let meta = GgufTokenizerMetadata {
            eos_token_id: Some(9),
            ..tiny()
        };
        let err = tokenizer_from_gguf(&meta).unwrap_err();
        assert!(matches!(
            err,
            GgufTokenizerError::TokenIdOutOfRange {
                key: "tokenizer.ggml.eos_token_id",
                id: 9,
                vocab_size: 9
            }
        ));
    }

    #[test]
    fn byte_level_alphabet_is_gpt2s() {
        let chars: Vec<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'\t' as usize], 'ĉ');
        assert_eq!(chars[b'A' as usize], 'A');
        assert_eq!(chars[0xAD], 'Ń');
        assert_eq!(chars.iter().collect::<HashSet<_>>().len(), 256);
        assert!(chars.iter().all(|&c| in_byte_level_alphabet(c)));
        let outside = (0..0x200u32)
            .filter_map(char::from_u32)
            .filter(|&c| in_byte_level_alphabet(c))
            .count();
        assert_eq!(outside, 256);
        assert_eq!(byte_level_spelling("é x"), "Ã©Ġx");
        assert_eq!(byte_level_spelling("Ġab"), "Ġab");
    }
}
