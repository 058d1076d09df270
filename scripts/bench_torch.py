#!/usr/bin/env python3
"""One PyTorch + transformers measurement for scripts/bench.py, in a process of its own so that
its peak memory is its own.

    bench_torch.py MODEL_DIR PROMPT_FILE THREADS [DEVICE [DTYPE]]

loads the model in float32 (or DTYPE: float16, bfloat16) on the CPU (or DEVICE, e.g. cuda;
weights frozen, default attention), then does what `attrib` does
for one prompt: a forward pass with a zero leaf added at every site attrib taps (the
embeddings, each attention and MLP input and output, each o_proj input, the final norm's
input), the logits of the last position only, one backward pass of the predicted token's
logit, and the Grad x Activation node scores. It prints one JSON line: load_s, forward_s,
backward_s, tokens, predicted_id, the node scores' sum (a check that the work was done), the
node scores (embeddings, then each layer's attention and MLP outputs), and on a GPU the peak
of memory its tensors took (cuda_peak_bytes). On a GPU each time ends with a synchronisation.

    bench_torch.py --extras MODEL_DIR PROMPT_FILE THREADS [DEVICE [DTYPE]]

does the same pass, then what attrib adds to it by default and with `--lens`, each timed on
its own: the residual edges (every node into every later node's norm input, per position),
the heads (signed effect and norm through o_proj, per position) and the logit lens (final
norm and LM head on the residual stream after every node at the last position: the target's
rank and the top five). It prints forward_s, backward_s, edges_s, heads_s, lens_s, the lens's
ranks and top tokens, and the number of edges.

    bench_torch.py --ablate-nodes MODEL_DIR PROMPT_FILE THREADS

loads the model the same way and, after one untimed warm-up pass, runs one forward pass per
node (the embeddings, every attention output after o_proj, every MLP output) with that node's
output replaced by zeros (a forward hook; no gradients, logits of the last position only):
the unbatched way to check every node by ablation. It prints {"passes", "seconds", "tokens"}.

    bench_torch.py --matmul THREADS [DEVICE [DTYPE]]

prints this machine's f32 (or DTYPE) matmul rate in GFLOP/s on the CPU (or DEVICE; the best of
several square and MLP-shaped products) as {"matmul_gflops": ...}.
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(threads, device="cpu", dtype="float32"):
    torch.set_num_threads(threads)
    device = torch.device(device)
    dtype = getattr(torch, dtype)
    best = 0.0
    shapes = [(2048, 2048, 2048), (512, 1536, 8960), (512, 8960, 1536)]
    if device.type != "cpu":
        shapes.append((8192, 8192, 8192))
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            torch.mm(a, b)
        reps = 5 if device.type == "cpu" else 20
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        synchronize(device)
        seconds = (time.perf_counter() - start) / reps
        best = max(best, 2.0 * m * k * n / seconds / 1e9)
    return best


def load(model_dir, prompt_file, threads, device="cpu", dtype="float32"):
    """The prompt, tokenizer and frozen model (f32 unless `dtype`, on `device`), and the
    seconds the loading took."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    with open(prompt_file, encoding="utf-8") as f:
        prompt = f.read()

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    synchronize(torch.device(device))
    return prompt, tokenizer, model, time.perf_counter() - start


def attribute(model_dir, prompt_file, threads, device="cpu", dtype="float32"):
    prompt, tokenizer, model, load_s = load(model_dir, prompt_file, threads, device, dtype)
    device = torch.device(device)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    p = tapped_pass(model, ids)
    out = {
        "load_s": load_s,
        "forward_s": p["forward_s"],
        "backward_s": p["backward_s"],
        "tokens": ids.shape[1],
        "predicted_id": p["predicted"],
        "score_sum": sum(p["scores"]),
        "nodes": [p["scores"][i] for i in p["nodes"]],
    }
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def tapped_pass(model, ids):
    """One forward with a zero leaf added at every site attrib taps, the logits of the last
    position, the backward of the predicted token's logit, and the node scores. Returns the
    taps `(activation, zero leaf)` in forward order (the embeddings; per layer the attention
    input, o_proj input, attention output, MLP input and MLP output; the final norm's input),
    which of them are nodes, every tap's Grad x Activation score, the prediction and the two
    passes' seconds (the scores in the backward's)."""
    device = ids.device
    taps = []
    nodes = []

    def tap_output(_module, _args, output):
        x = output[0] if isinstance(output, tuple) else output
        z = torch.zeros_like(x, requires_grad=True)
        taps.append((x.detach(), z))
        nodes.append(len(taps) - 1)
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
    synchronize(device)
    forward_s = time.perf_counter() - start

    start = time.perf_counter()
    logits[predicted].backward()
    scores = [float(torch.linalg.vector_norm(z.grad * x)) for x, z in taps]
    backward_s = time.perf_counter() - start
    for h in hooks:
        h.remove()
    return {"taps": taps, "nodes": nodes, "scores": scores, "predicted": predicted,
            "forward_s": forward_s, "backward_s": backward_s}


def extras(model_dir, prompt_file, threads, device="cpu", dtype="float32"):
    """attrib's default output and `--lens` on top of node-only attribution, each timed: the
    residual edges (per position and summed), the heads (signed effect and norm through
    o_proj, per position) and the logit lens (final norm and LM head on the residual stream
    after every node at the last position: the target's rank and logit, the top five)."""
    prompt, tokenizer, model, load_s = load(model_dir, prompt_file, threads, device, dtype)
    device = torch.device(device)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
    p = tapped_pass(model, ids)
    taps, nodes = p["taps"], p["nodes"]
    layers = len(model.model.layers)
    seq = ids.shape[1]

    def per_layer(layer, k):
        """Layer's tap k: 0 attention input, 1 o_proj input, 2 attention output, 3 MLP
        input, 4 MLP output."""
        return taps[1 + 5 * layer + k]

    with torch.no_grad():
        start = time.perf_counter()
        # Every node u upstream of every target v (each layer's attention and MLP, then the
        # logits): Σ_d a_u ⊙ g_in(v), v's norm input gradient.
        a = torch.cat([taps[i][0] for i in nodes])  # [2L+1, seq, hidden]
        g_in = torch.cat([per_layer(l, k)[1].grad for l in range(layers) for k in (0, 3)] +
                         [taps[-1][1].grad])
        per_position = torch.einsum("usd,vsd->vus", a, g_in)
        upstream = torch.ones(len(nodes), len(nodes), device=device).tril().bool()
        edges = per_position[upstream]  # [edges, seq]
        edge_scores = edges.sum(1).cpu()
        synchronize(device)
        edges_s = time.perf_counter() - start

        start = time.perf_counter()
        heads_signed, heads_norms = [], []
        for l, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            n_heads = model.config.num_attention_heads
            z, gz = per_layer(l, 1)[0][0], per_layer(l, 1)[1].grad[0]
            g_out = per_layer(l, 2)[1].grad[0]  # [seq, hidden]
            hd = z.shape[-1] // n_heads
            heads_signed.append((z * gz).reshape(seq, n_heads, hd).sum((0, 2)))
            w = attn.o_proj.weight.reshape(-1, n_heads, hd)  # [hidden, heads, hd]
            c = torch.einsum("shd,ohd->sho", z.reshape(seq, n_heads, hd), w)
            squares = (c * g_out[:, None, :]).square().sum(-1)  # [seq, heads]
            heads_norms.append((squares.sum(0).sqrt(), squares.sqrt()))
        heads_sum = float(sum(n.sum() for n, _ in heads_norms))
        synchronize(device)
        heads_s = time.perf_counter() - start

        start = time.perf_counter()
        rows = torch.cumsum(torch.stack([taps[i][0][0, -1] for i in nodes]), 0)
        lens_logits = model.lm_head(model.model.norm(rows[None]))[0]  # [2L+1, vocab]
        target = lens_logits[:, p["predicted"]]
        ranks = ((lens_logits > target[:, None]).sum(1) + 1).tolist()
        top = lens_logits.topk(5, dim=1).indices.tolist()
        synchronize(device)
        lens_s = time.perf_counter() - start

    return {
        "load_s": load_s,
        "forward_s": p["forward_s"],
        "backward_s": p["backward_s"],
        "tokens": seq,
        "predicted_id": p["predicted"],
        "edges_s": edges_s,
        "heads_s": heads_s,
        "lens_s": lens_s,
        "edges": len(edge_scores),
        "heads_score_sum": heads_sum,
        "heads_signed_sum": float(sum(s.sum() for s in heads_signed)),
        "lens_ranks": ranks,
        "lens_top": [t[0] for t in top],
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
    if 2 <= len(argv) <= 4 and argv[0] == "--matmul":
        print(json.dumps({"matmul_gflops": matmul_peak(int(argv[1]), *argv[2:])}))
    elif len(argv) == 4 and argv[0] == "--ablate-nodes":
        print(json.dumps(ablate_nodes(argv[1], argv[2], int(argv[3]))))
    elif 4 <= len(argv) <= 6 and argv[0] == "--extras":
        print(json.dumps(extras(argv[1], argv[2], int(argv[3]), *argv[4:])))
    elif 3 <= len(argv) <= 5 and not argv[0].startswith("--"):
        print(json.dumps(attribute(argv[0], argv[1], int(argv[2]), *argv[3:])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
