#!/usr/bin/env python3
"""A model folder with a real model's shapes and tokenizer but random weights.

    random_model.py SOURCE_DIR OUT_DIR [--seed 0] [--device cpu|cuda]

reads config.json and the tokenizer files (tokenizer.json, tokenizer_config.json,
chat_template.jinja, whichever exist) from SOURCE_DIR, builds transformers'
Qwen2ForCausalLM from that config with its own random initialisation (normal, std
initializer_range; seeded), and writes OUT_DIR/model.safetensors (float32, one file) next to
copies of those files. Time and memory of an attribution depend on the shapes only, so such
a folder benchmarks a model wherever its weights cannot be copied (a machine with no network,
say); its predictions mean nothing.
"""
import argparse
import json
import os
import shutil
import time

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

COPIED = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "generation_config.json"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    start = time.perf_counter()
    config = AutoConfig.from_pretrained(args.source)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    os.makedirs(args.out, exist_ok=True)
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    for name in COPIED:
        if os.path.exists(os.path.join(args.source, name)):
            shutil.copy(os.path.join(args.source, name), os.path.join(args.out, name))
    count = sum(t.numel() for t in state.values())
    print(json.dumps({"out": args.out, "parameters": count, "seconds":
                      round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
