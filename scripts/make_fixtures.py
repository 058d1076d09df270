#!/usr/bin/env python3
"""Build the tiny random Qwen2 test fixtures and their reference values.

Writes (relative to the repository root):
  tests/fixtures/tiny-tied/     3 layers, tied embeddings, top-level rope_theta,
                                one model.safetensors, chat template inside
                                tokenizer_config.json
  tests/fixtures/tiny-untied/   2 layers, separate lm_head, transformers-5 style
                                rope_parameters, weights sharded in two files
                                with model.safetensors.index.json, chat template
                                in chat_template.jinja
  tests/fixtures/reference/tiny-tied.json, tiny-untied.json  (see reference.py)

Everything is deterministic: the tokenizer is trained on the fixed text below,
the weights come from seeded torch generators and are stored in bfloat16. The
references are computed from the saved folders loaded back in float32.

The chat template is the Qwen2.5-Instruct one, read from the
`tokenizer.chat_template` metadata of the Qwen2.5 GGUF when it is available
(path in $QWEN_GGUF, default below); otherwise the identical copy embedded in
this file is used.
"""
import argparse
import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402,E501

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = "/var/cache/attrib/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# Qwen2's pre-tokenizer regex (identical to the one in Qwen2.5's tokenizer.json).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BPE_VOCAB = 480  # 256 byte symbols + merges; the 3 special tokens come on top
HIDDEN = 64

# The Qwen2.5-Instruct chat template, exactly as in Qwen/Qwen2.5-*-Instruct's
# tokenizer_config.json (and in the GGUF metadata `tokenizer.chat_template`).
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

TRAINING_TEXT = r'''
The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.
The capital of Spain is Madrid, and the capital of Japan is Tokyo. London is the capital of England.
You are Qwen, created by Alibaba Cloud. You are a helpful assistant.
system
user
assistant
The quick brown fox jumps over the lazy dog. The cat sat on the mat and looked at the dog.
Once upon a time there was a little girl who lived in a village near the forest. Whenever she
went out, the little girl wore a red riding cloak, so everyone in the village called her Little
Red Riding Hood. One morning she asked her mother if she could go to visit her grandmother.
It was a bright cold day in April, and the clocks were striking thirteen. The weather was
cold, but the sun was shining and the people in the streets were walking quickly to work.
Language models read text as a sequence of tokens. Each token is mapped to a vector called an
embedding. The model then applies attention and a feed forward network in every layer, and the
last layer predicts the next token. Attribution graphs show which parts of the model were
important for a prediction: the embeddings, the attention heads and the MLP blocks.
What is the capital of France? Please answer in one word. Write a short poem about the sea.
Can you explain how a transformer works? Sure! A transformer is a neural network that uses
self-attention. It was introduced in the paper "Attention Is All You Need" in 2017.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 3.14159 2.71828 -1 +1 = 50% $20 #1 @home
I'm sure it's fine. You're right, we've done it and they'll see. She'd say that he's here.
Don't worry; isn't it nice? "Yes," she said. 'No', he replied... (maybe) [ok] {fine} <tag>

def add(a, b):
    """Return the sum of a and b."""
    return a + b


def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


for i in range(10):
    print(f"value {i}: {fibonacci(i)}")

import numpy as np
x = np.zeros((3, 4), dtype=np.float32)
result = [item * 2 for item in items if item is not None]

fn main() {
    let mut total: u64 = 0;
    for i in 0..10 {
        total += i * i;
    }
    println!("total = {}", total);
}

pub struct Point { pub x: f32, pub y: f32 }

impl Point {
    pub fn norm(&self) -> f32 {
        (self.x * self.x + self.y * self.y).sqrt()
    }
}

function greet(name) {
  return `Hello, ${name}!`;
}
const items = [1, 2, 3].map((x) => x * 2);
if (a === b && c !== d) { console.log("equal"); }

SELECT name, age FROM users WHERE age > 21 ORDER BY name;
{"name": "test", "values": [1, 2, 3], "ok": true, "none": null}
<html><body><p>Hello world</p></body></html>
Hello world! Hello there. Hi, how are you today? I am fine, thank you.
Café, naïve, résumé, über, señor, façade. Grüße aus München! Ça va très bien.
東京 is the capital of Japan. 北京 is the capital of China. Привет, мир! Γειά σου κόσμε.
Emoji: 🙂 😀 🚀 🎉 ❤️ 👍 — “quotes” and ‘single’ … ellipsis • bullet → arrow ✓ check
Tabs	and	spaces    and
multiple

blank lines    end.
The weather today is sunny with a chance of rain in the evening. Tomorrow will be cloudy.
Machine learning is a field of study that gives computers the ability to learn without being
explicitly programmed. Deep learning uses many layers of neurons to learn representations.
The history of the city goes back more than two thousand years, when it was a small village
on the river. Today it is one of the largest cities in the world, with millions of people.
Write a function that adds two numbers. Write a function that returns the largest value in a list.
'''


# --------------------------------------------------------------------------------------
# chat template


def load_chat_template(gguf_path):
    """The Qwen2.5 chat template from the GGUF metadata when possible."""
    if gguf_path and os.path.exists(gguf_path):
        try:
            import gguf

            field = gguf.GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
            if field is not None:
                template = field.contents()
                if template != QWEN25_CHAT_TEMPLATE:
                    raise SystemExit("chat template in the GGUF differs from the embedded copy")
                return template, f"GGUF metadata tokenizer.chat_template of {os.path.basename(gguf_path)}"
        except ImportError:
            pass
    return QWEN25_CHAT_TEMPLATE, "embedded copy in scripts/make_fixtures.py"


# --------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer():
    """A small byte-level BPE with the exact Qwen2 tokenizer.json structure."""
    tok = Tokenizer(
        models.BPE(
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = [line for line in TRAINING_TEXT.splitlines(keepends=True)]
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    base = tok.get_vocab_size(with_added_tokens=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])

    # Serialize in the same layout as Qwen2.5's tokenizer.json.
    data = json.loads(tok.to_str())
    data["truncation"] = None
    data["padding"] = None
    data["normalizer"] = {"type": "NFC"}
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }
    data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    model = data["model"]
    model["merges"] = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    ordered = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": base + i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(SPECIAL_TOKENS)
        ],
        "normalizer": data["normalizer"],
        "pre_tokenizer": data["pre_tokenizer"],
        "post_processor": data["post_processor"],
        "decoder": data["decoder"],
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": model["vocab"],
            "merges": model["merges"],
        },
    }
    assert ordered["added_tokens"][0]["id"] == tok.token_to_id(SPECIAL_TOKENS[0])
    # Round-trip through the tokenizers library to be sure the file is valid.
    Tokenizer.from_str(json.dumps(ordered))
    return ordered


def tokenizer_config(vocab_base, chat_template, max_len):
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(vocab_base + i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in enumerate(SPECIAL_TOKENS)
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
    }
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    cfg.update(
        {
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": max_len,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }
    )
    return cfg


# --------------------------------------------------------------------------------------
# weights


def random_weights(seed, vocab, hidden, inter, layers, heads, kv_heads, tied):
    g = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads

    def normal(shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def norm_weight():
        return 1.0 + normal((hidden,), 0.1)

    w = {"model.embed_tokens.weight": normal((vocab, hidden), 0.1)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_weight()
        w[p + "self_attn.q_proj.weight"] = normal((heads * head_dim, hidden), 0.1)
        w[p + "self_attn.q_proj.bias"] = normal((heads * head_dim,), 0.1)
        w[p + "self_attn.k_proj.weight"] = normal((kv_heads * head_dim, hidden), 0.1)
        w[p + "self_attn.k_proj.bias"] = normal((kv_heads * head_dim,), 0.1)
        w[p + "self_attn.v_proj.weight"] = normal((kv_heads * head_dim, hidden), 0.08)
        w[p + "self_attn.v_proj.bias"] = normal((kv_heads * head_dim,), 0.05)
        w[p + "self_attn.o_proj.weight"] = normal((hidden, heads * head_dim), 0.08)
        w[p + "post_attention_layernorm.weight"] = norm_weight()
        w[p + "mlp.gate_proj.weight"] = normal((inter, hidden), 0.08)
        w[p + "mlp.up_proj.weight"] = normal((inter, hidden), 0.08)
        w[p + "mlp.down_proj.weight"] = normal((hidden, inter), 0.06)
    w["model.norm.weight"] = norm_weight()
    if not tied:
        # larger than the embeddings: sharper next-token distributions, and a
        # head that is visibly not the embedding matrix
        w["lm_head.weight"] = normal((vocab, hidden), 0.2)
    # Stored in bfloat16, as on the hub.
    return {k: v.to(torch.bfloat16).contiguous() for k, v in w.items()}


def save_sharded(weights, out_dir, n_shards):
    names = list(weights)
    per = (len(names) + n_shards - 1) // n_shards
    weight_map = {}
    total = 0
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        chunk = {k: weights[k] for k in names[s * per:(s + 1) * per]}
        save_file(chunk, os.path.join(out_dir, fname), metadata={"format": "pt"})
        os.chmod(os.path.join(out_dir, fname), 0o644)
        for k, v in chunk.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(os.path.join(out_dir, "model.safetensors.index.json"), index)


def write_json(path, obj, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------------------
# fixtures

FIXTURES = {
    "tiny-tied": dict(seed=1234, layers=3, tied=True, rope="legacy", rope_theta=10000.0, shards=1, template_file=False),
    "tiny-untied": dict(seed=5678, layers=2, tied=False, rope="parameters", rope_theta=1000000.0, shards=2, template_file=True),
}

CASES = [
    ("Hello", False),
    ("Hello world! You are", False),
    ("The capital of Spain is Madrid, and the capital of Japan is", False),
    (
        "Language models read text as a sequence of tokens. Each token is mapped to an embedding, "
        "and the model predicts the next token.",
        False,
    ),
    ("def add(a, b):\n    return a + b\n\nprint(add(2, 3))", False),
    ("Cafe\u0301 na\u00efve \u2014 \u6771\u4eac \U0001F642\U0001F680\n\n\tTabs  and    spaces   \n end", False),
    ("Say <|im_start|>hello<|im_end|> and stop.", False),
    ("What is the capital of France?", True),
    ("Write a function that adds two numbers.", True),
]


def model_config(spec, vocab_size, bos_id, eos_id):
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 176,
        "max_position_embeddings": 128,
        "max_window_layers": spec["layers"],
        "model_type": "qwen2",
        "num_attention_heads": 4,
        "num_hidden_layers": spec["layers"],
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
    }
    if spec["rope"] == "legacy":
        cfg["rope_theta"] = spec["rope_theta"]
    else:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    cfg.update(
        {
            "sliding_window": 128,
            "tie_word_embeddings": spec["tied"],
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": vocab_size,
        }
    )
    return cfg


def make_fixture(name, spec, tok_json, chat_template, out_root):
    out_dir = os.path.join(out_root, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    base = len(tok_json["model"]["vocab"])
    n_tokens = base + len(tok_json["added_tokens"])
    vocab_size = (n_tokens + 63) // 64 * 64
    ids = {t["content"]: t["id"] for t in tok_json["added_tokens"]}

    cfg = model_config(spec, vocab_size, ids["<|endoftext|>"], ids["<|im_end|>"])
    write_json(os.path.join(out_dir, "config.json"), cfg)
    write_json(
        os.path.join(out_dir, "generation_config.json"),
        {
            "bos_token_id": ids["<|endoftext|>"],
            "do_sample": False,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )
    write_json(os.path.join(out_dir, "tokenizer.json"), tok_json, compact=True)
    write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        tokenizer_config(base, None if spec["template_file"] else chat_template, cfg["max_position_embeddings"]),
    )
    if spec["template_file"]:
        with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(chat_template)

    weights = random_weights(
        spec["seed"], vocab_size, HIDDEN, cfg["intermediate_size"], spec["layers"],
        cfg["num_attention_heads"], cfg["num_key_value_heads"], spec["tied"],
    )
    if spec["shards"] == 1:
        save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        os.chmod(os.path.join(out_dir, "model.safetensors"), 0o644)
    else:
        save_sharded(weights, out_dir, spec["shards"])
    return out_dir, cfg


def check_fixture(out_dir, spec, cfg, chat_template):
    """Load the folder back with transformers and check it reads as intended."""
    model, tok = reference.load_model(out_dir)
    mc = model.config
    assert mc.num_hidden_layers == spec["layers"] and mc.vocab_size == cfg["vocab_size"]
    theta = (getattr(mc, "rope_parameters", None) or {}).get("rope_theta", getattr(mc, "rope_theta", None))
    assert float(theta) == spec["rope_theta"], theta
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == spec["tied"], (tied, spec["tied"])
    assert tok.chat_template == chat_template
    assert tok.convert_tokens_to_ids("<|im_start|>") == len(tok) - 2
    # bf16 on disk, loaded exactly into float32
    sd = model.state_dict()
    for k, v in sd.items():
        assert v.dtype == torch.float32 and torch.equal(v, v.to(torch.bfloat16).to(torch.float32)), k
    # the standalone tokenizers library agrees with transformers on every case
    raw = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    for prompt, chat in CASES:
        text, ids = reference.encode(tok, prompt, chat)
        assert raw.encode(text, add_special_tokens=False).ids == ids, (prompt, chat)
    return theta, tied


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    p.add_argument("--gguf", default=os.environ.get("QWEN_GGUF", DEFAULT_GGUF))
    args = p.parse_args(argv)

    torch.manual_seed(0)
    chat_template, template_source = load_chat_template(args.gguf)
    print(f"chat template: {template_source}")
    tok_json = build_tokenizer()
    print(f"tokenizer: {len(tok_json['model']['vocab'])} BPE entries + {len(tok_json['added_tokens'])} special")

    for name, spec in FIXTURES.items():
        out_dir, cfg = make_fixture(name, spec, tok_json, chat_template, args.out)
        theta, tied = check_fixture(out_dir, spec, cfg, chat_template)
        ref = reference.build_reference(out_dir, name, CASES, logits="full", generated_by="scripts/make_fixtures.py")
        ref_path = os.path.join(args.out, "reference", f"{name}.json")
        reference.write_reference(ref, ref_path)
        size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        print(f"{name}: vocab_size={cfg['vocab_size']} layers={spec['layers']} tied={tied} "
              f"rope_theta={theta} folder={size} bytes")
        for c in ref["cases"]:
            t = c["top5"][0]
            print(f"  {len(c['input_ids']):3d} tokens chat={c['chat']!s:5} top1={t['id']}:{t['token']!r} "
                  f"logit={t['logit']:.4f}  {c['prompt'][:40]!r}")
        print(f"  wrote {ref_path} ({os.path.getsize(ref_path)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
