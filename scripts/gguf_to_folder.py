#!/usr/bin/env python3
"""Convert a (quantized) Qwen2 GGUF file into a Hugging Face model folder.

Usage: gguf_to_folder.py GGUF_PATH OUT_DIR

The GGUF is loaded and dequantized by transformers into float32; the weights
are written unchanged in float32 to OUT_DIR/model.safetensors, so the folder is
numerically identical to the dequantized GGUF. The config, tokenizer and chat
template (from the GGUF metadata `tokenizer.chat_template`) are written too.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def gguf_chat_template(gguf_path):
    """Read `tokenizer.chat_template` straight from the GGUF metadata."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return field.contents()


def convert(gguf_path, out_dir):
    gguf_path = os.path.abspath(gguf_path)
    folder, name = os.path.split(gguf_path)
    os.makedirs(out_dir, exist_ok=True)

    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    state = model.state_dict()
    tied = False
    if "lm_head.weight" in state and "model.embed_tokens.weight" in state:
        a, b = state["lm_head.weight"], state["model.embed_tokens.weight"]
        if a.data_ptr() == b.data_ptr():
            tied = True
    if tied:
        # safetensors refuses tensors sharing memory; tied heads are implicit.
        del state["lm_head.weight"]
        model.config.tie_word_embeddings = True
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    model.config.dtype = torch.float32
    # The folder holds plain float32 weights: it is not a quantized checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["Qwen2ForCausalLM"]
    model.config.save_pretrained(out_dir)

    template = gguf_chat_template(gguf_path)
    if template is not None and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out_dir)
    # The GGUF tokenizer converter leaves out Qwen2's NFC normalizer, but the
    # Qwen2Tokenizer class that loads the folder back adds it. Reload and save
    # again so tokenizer.json describes what transformers actually runs.
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    if template is not None and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out_dir)

    # Make sure the chat template is present in the folder, whatever the
    # transformers version chose to do with it.
    has_template = os.path.exists(os.path.join(out_dir, "chat_template.jinja"))
    tc_path = os.path.join(out_dir, "tokenizer_config.json")
    if os.path.exists(tc_path):
        with open(tc_path, encoding="utf-8") as f:
            has_template = has_template or "chat_template" in json.load(f)
    if not has_template and template is not None:
        with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(template)

    print(
        f"wrote {out_dir}: {len(tensors)} tensors, tied={tied}, "
        f"tie_word_embeddings={model.config.tie_word_embeddings}, vocab={model.config.vocab_size}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf_path")
    p.add_argument("out_dir")
    args = p.parse_args(argv)
    convert(args.gguf_path, args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
