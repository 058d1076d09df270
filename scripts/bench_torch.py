#!/usr/bin/env python3
"""One PyTorch + transformers measurement for scripts/bench.py, in a process of its own so that
its peak memory is its own.

    bench_torch.py MODEL_DIR PROMPT_FILE THREADS

loads the model in float32 (weights frozen, default attention), then does what `attrib` does
for one prompt: a forward pass with a zero leaf added at every site attrib taps (the
embeddings, each attention and MLP input and output, each o_proj input, the final norm's
input), the logits of the last position only, one backward pass of the predicted token's
logit, and the Grad x Activation node scores. It prints one JSON line: load_s, forward_s,
backward_s, tokens, predicted_id, and the node scores' sum (a check that the work was done).

    bench_torch.py --ablate-nodes MODEL_DIR PROMPT_FILE THREADS

loads the model the same way and, after one untimed warm-up pass, runs one forward pass per
node (the embeddings, every attention output after o_proj, every MLP output) with that node's
output replaced by zeros (a forward hook; no gradients, logits of the last position only):
the unbatched way to check every node by ablation. It prints {"passes", "seconds", "tokens"}.

    bench_torch.py --matmul THREADS

prints this machine's f32 matmul rate in GFLOP/s (the best of several square and
MLP-shaped products) as {"matmul_gflops": ...}.
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


def matmul_peak(threads):
    torch.set_num_threads(threads)
    best = 0.0
    for m, k, n in [(2048, 2048, 2048), (512, 1536, 8960), (512, 8960, 1536)]:
        a = torch.randn(m, k)
        b = torch.randn(k, n)
        for _ in range(2):
            torch.mm(a, b)
        reps = 5
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        seconds = (time.perf_counter() - start) / reps
        best = max(best, 2.0 * m * k * n / seconds / 1e9)
    return best


def load(model_dir, prompt_file, threads):
    """The prompt, tokenizer and frozen f32 model, and the seconds the loading took."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    with open(prompt_file, encoding="utf-8") as f:
        prompt = f.read()

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return prompt, tokenizer, model, time.perf_counter() - start


def attribute(model_dir, prompt_file, threads):
    prompt, tokenizer, model, load_s = load(model_dir, prompt_file, threads)

    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    taps = []

    def tap_output(_module, _args, output):
        x = output[0] if isinstance(output, tuple) else output
        z = torch.zeros_like(x, requires_grad=True)
        taps.append((x.detach(), z))
        y = x + z
        return (y,) + tuple(output[1:]) if isinstance(output, tuple) else y

    def tap_input(_module, args):
        x = args[0]
        z = torch.zeros_like(x, requires_grad=True)
        taps.append((x.detach(), z))
        return (x + z,) + tuple(args[1:])

    inner = model.model
    hooks = [inner.embed_tokens.register_forward_hook(tap_output)]
    for layer in inner.layers:
        hooks.append(layer.input_layernorm.register_forward_pre_hook(tap_input))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(tap_input))
        hooks.append(layer.self_attn.register_forward_hook(tap_output))
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(tap_input))
        hooks.append(layer.mlp.register_forward_hook(tap_output))
    hooks.append(inner.norm.register_forward_pre_hook(tap_input))

    start = time.perf_counter()
    logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    predicted = int(torch.argmax(logits))
    forward_s = time.perf_counter() - start

    start = time.perf_counter()
    logits[predicted].backward()
    total = 0.0
    for x, z in taps:
        total += float(torch.linalg.vector_norm(z.grad * x))
    backward_s = time.perf_counter() - start
    for h in hooks:
        h.remove()
    return {
        "load_s": load_s,
        "forward_s": forward_s,
        "backward_s": backward_s,
        "tokens": ids.shape[1],
        "predicted_id": predicted,
        "score_sum": total,
    }


def ablate_nodes(model_dir, prompt_file, threads):
    prompt, tokenizer, model, _ = load(model_dir, prompt_file, threads)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    inner = model.model
    nodes = [inner.embed_tokens]
    for layer in inner.layers:
        nodes += [layer.self_attn, layer.mlp]

    def zero(_module, _args, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]),) + tuple(output[1:])
        return torch.zeros_like(output)

    with torch.no_grad():
        model(input_ids=ids, logits_to_keep=1)
        start = time.perf_counter()
        for module in nodes:
            handle = module.register_forward_hook(zero)
            try:
                model(input_ids=ids, logits_to_keep=1)
            finally:
                handle.remove()
        seconds = time.perf_counter() - start
    return {"passes": len(nodes), "seconds": seconds, "tokens": ids.shape[1]}


def main(argv):
    if len(argv) == 2 and argv[0] == "--matmul":
        print(json.dumps({"matmul_gflops": matmul_peak(int(argv[1]))}))
    elif len(argv) == 4 and argv[0] == "--ablate-nodes":
        print(json.dumps(ablate_nodes(argv[1], argv[2], int(argv[3]))))
    elif len(argv) == 3:
        print(json.dumps(attribute(argv[0], argv[1], int(argv[2]))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
