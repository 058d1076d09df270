#!/usr/bin/env python3
"""Build the fixture for `src/gguf_tokenizer.rs`: a Qwen2 GGUF's tokenizer metadata and the ids
transformers gives for a varied set of strings when it loads the tokenizer from that GGUF.

Writes (relative to the repository root):
  tests/fixtures/gguf-tokenizer/metadata.json   the `tokenizer.ggml.*` metadata of the GGUF, read
                                                with `gguf.GGUFReader` (the full vocabulary and
                                                merges, about 4 MB), with the field names of the
                                                Rust `GgufTokenizerMetadata`
  tests/fixtures/gguf-tokenizer/expected.json   per string: transformers' `input_ids` (default
                                                `add_special_tokens`), the tokens of those ids and
                                                the text decoded back

Run: /var/cache/attrib/venv/bin/python scripts/make_gguf_tokenizer_fixture.py [GGUF]
(default GGUF: /var/cache/attrib/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, Qwen2.5-Coder-0.5B-Instruct
Q4_K_M). Nothing is downloaded.
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gguf  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf-tokenizer")
DEFAULT_GGUF = "/var/cache/attrib/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

TEXTS = [
    # code, tabs and indentation
    "def add(a, b):\n\treturn a + b\n",
    "class Foo:\n    def __init__(self):\n        self.x = 1\n\n\n    def bar(self):\n        return [i ** 2 for i in range(10)]\n",
    "for (int i = 0; i < n; ++i) {\n\t\tsum += a[i];\n\t}\n",
    "fn main() {\n    println!(\"{:?}\", vec![1, 2, 3]);\n}",
    "if x != None and y >= 0:  # comment\n\t\t\tpass",
    "SELECT * FROM users WHERE id = 42;",
    # plain text, contractions, case
    "Hello, world!",
    "I'm don't you'll we've they're she'd it's",
    "I'M DON'T YOU'LL WE'VE THEY'RE SHE'D IT'S",
    "The capital of France is",
    # unicode: CJK, other scripts, emoji
    "你好，世界！这是一个测试。",
    "日本語のテキストと한국어 텍스트",
    "Ünïcödé ñ ß ΑΒΓ αβγ Привет мир",
    "مرحبا بالعالم",
    "emoji: 😀👍🏽 🇺🇸 👨\u200d👩\u200d👧 ❤️",
    "math: ∑_{i=1}^{n} x_i² ≤ ∞ → ∀ε>0",
    # combining accents and other strings NFC would change
    "Cafe\u0301",
    "Cafe\u0301 vs Caf\u00e9",
    "\u212b \u00c5 A\u030a ångström",
    "e\u0301\u0301 n\u0303",
    # whitespace
    "a  b   c    d\t\te",
    "\n\n\n",
    "   leading and trailing   ",
    "tabs\t\t\tand\t spaces \t",
    "mixed\r\nline\rendings\n",
    "a\u00a0b\u3000c\u2003d\x0be\x0cf\u0085g\u2028h",
    "\u200b zero\u200bwidth\u200djoiner",
    " ",
    "",
    "x",
    # numbers
    "12345678 3.14159",
    "1,000,000 0x1F -273.15 1e-9 2024-06-01",
    # special tokens written literally
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite quicksort in Python.<|im_end|>\n<|im_start|>assistant\n",
    "  <|im_end|>  <|endoftext|><|endoftext|>",
    "<|im_start|",
    "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n    return 1<|fim_middle|>",
    "<|repo_name|>attrib<|file_sep|>src/main.rs",
    "[PAD151665] [PAD151935]",
    # control characters and URLs
    "\x00\x01\x1f\x7f",
    "https://example.com/path?q=1&r=2#frag",
    # a long line
    "The quick brown fox jumps over the lazy dog. " * 20 + "Pack my box with five dozen liquor jugs!",
]


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", nargs="?", default=DEFAULT_GGUF)
    args = parser.parse_args()
    path = os.path.abspath(args.gguf)

    reader = gguf.GGUFReader(path)
    metadata = {
        "model": field(reader, "tokenizer.ggml.model"),
        "pre": field(reader, "tokenizer.ggml.pre"),
        "tokens": field(reader, "tokenizer.ggml.tokens"),
        "token_types": field(reader, "tokenizer.ggml.token_type", []),
        "merges": field(reader, "tokenizer.ggml.merges", []),
        "bos_token_id": field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(reader, "tokenizer.ggml.eos_token_id"),
        "padding_token_id": field(reader, "tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
    }

    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    backend = tokenizer.backend_tokenizer
    assert backend.get_vocab_size(with_added_tokens=True) == len(metadata["tokens"]), "vocabulary size"

    cases = []
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        decoded = tokenizer.decode(ids)
        # The Rust side decodes with the plain `tokenizers` decoder: make sure they agree here.
        assert decoded == backend.decode(ids, skip_special_tokens=False), text
        cases.append({"text": text, "ids": ids, "tokens": tokenizer.convert_ids_to_tokens(ids), "decoded": decoded})

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump(metadata, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    expected = {
        "gguf": os.path.basename(path),
        "tokenizer_class": type(tokenizer).__name__,
        "add_special_tokens": True,
        "cases": cases,
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases and {len(metadata['tokens'])} tokens to {OUT}")


if __name__ == "__main__":
    main()
