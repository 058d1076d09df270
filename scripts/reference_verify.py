#!/usr/bin/env python3
"""Reference node checks by intervention (attrib --verify), with PyTorch + transformers.

For each case (prompt, ablation, corrupted prompt) and each node (the embeddings, every
attention output after o_proj and every MLP output), the node's output is replaced by a forward
hook — with zeros (`zero`), with its mean over the prompt's positions (`mean`), or with its
output on the corrupted prompt (`patch`) — and the model is run again, one forward pass per
node. `actual` is the last-position logit of the clean prediction with the node replaced minus
the clean logit; `predicted` is sum((a_new - a) * g) with g the clean gradient of that logit
at the node's output. float32, eager attention, CPU.

    reference_verify.py MODEL_DIR OUT_JSON
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import torch  # noqa: E402

CASES = [
    ("The capital of France is", "zero", None),
    ("The capital of France is", "mean", None),
    ("The capital of France is", "patch", "The capital of Spain is"),
    ("Hello world! You are", "zero", None),
    ("def add(a, b):\n    return a + b", "mean", None),
]


def modules(model):
    """(node name, module whose output is the node) in pathway order."""
    inner = model.model
    out = [("embeddings", inner.embed_tokens)]
    for i, layer in enumerate(inner.layers):
        out += [(f"L{i}_Attn", layer.self_attn), (f"L{i}_MLP", layer.mlp)]
    return out


def first(output):
    return output[0] if isinstance(output, tuple) else output


def replace_output(with_):
    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (with_,) + tuple(output[1:])
        return with_

    return hook


def run(model, ids, hooks=()):
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    finally:
        for h in handles:
            h.remove()


def record(model, ids):
    """Every node's output on ids, detached."""
    seen = {}

    def keep(name):
        def hook(_module, _args, output):
            seen[name] = first(output).detach().clone()

        return hook

    run(model, ids, [(m, keep(n)) for n, m in modules(model)])
    return seen


def clean_gradients(model, ids, target):
    """Each node's output and the gradient of the target logit there."""
    # The embedding output (weights are frozen) becomes a leaf; the others keep their grads.
    outs = {}

    def keep(name):
        def hook(_module, _args, output):
            t = first(output)
            if not t.requires_grad:
                t = t.detach().requires_grad_(True)
                outs[name] = t
                return replace_output(t)(_module, _args, output)
            t.retain_grad()
            outs[name] = t
            return None

        return hook

    logits = run(model, ids, [(m, keep(n)) for n, m in modules(model)])
    logits[target].backward()
    return {n: (t.detach(), t.grad.detach()) for n, t in outs.items()}


def case(model, tokenizer, prompt, ablation, corrupt):
    _, ids = reference.encode(tokenizer, prompt, False)
    clean = run(model, ids).detach()
    target = int(torch.argmax(clean))
    base = float(clean[target])
    grads = clean_gradients(model, ids, target)
    corrupt_ids = None
    if ablation == "patch":
        _, corrupt_ids = reference.encode(tokenizer, corrupt, False)
        assert len(corrupt_ids) == len(ids), "the corrupted prompt must have the same length"
        patched = record(model, corrupt_ids)
    nodes = []
    for name, module in modules(model):
        a, g = grads[name]
        if ablation == "zero":
            new = torch.zeros_like(a)
        elif ablation == "mean":
            new = a.mean(dim=1, keepdim=True).expand_as(a).contiguous()
        else:
            new = patched[name]
        with torch.no_grad():
            value = float(run(model, ids, [(module, replace_output(new))])[target])
        predicted = float(((new - a).double() * g.double()).sum())
        nodes.append({"id": name, "predicted": predicted, "actual": value - base})
    return {
        "prompt": prompt,
        "ablation": ablation,
        "corrupt": corrupt,
        "input_ids": ids,
        "corrupt_ids": corrupt_ids,
        "target_id": target,
        "clean_logit": base,
        "nodes": nodes,
    }


def norm_of(model, target):
    """The norm whose input is node `target`'s input branch (`logits`: the final norm)."""
    inner = model.model
    if target == "logits":
        return inner.norm
    layer, kind = target[1:].split("_")
    layer = inner.layers[int(layer)]
    return layer.input_layernorm if kind == "Attn" else layer.post_attention_layernorm


def edge_case(model, tokenizer, prompt):
    """Every edge u -> v: u's clean output subtracted from the input of v's norm only (a
    forward pre-hook; the residual stream is untouched), the predicted logit's change, and the
    edge score from reference.compute_case (predicted change: -score)."""
    _, ids = reference.encode(tokenizer, prompt, False)
    clean = run(model, ids).detach()
    target = int(torch.argmax(clean))
    base = float(clean[target])
    outputs = record(model, ids)
    scores = {(e["source"], e["target"]): e["score"]
              for e in reference.compute_case(model, tokenizer, prompt)["edges"]}
    edges = []
    for (u, v), score in scores.items():
        def subtract(_module, args, a=outputs[u]):
            return (args[0] - a,) + tuple(args[1:])

        handle = norm_of(model, v).register_forward_pre_hook(subtract)
        try:
            with torch.no_grad():
                value = float(run(model, ids)[target])
        finally:
            handle.remove()
        edges.append({"source": u, "target": v, "predicted": -score, "actual": value - base})
    return {"prompt": prompt, "input_ids": ids, "target_id": target, "edges": edges}


EDGE_PROMPTS = ["The capital of France is", "Hello world! You are"]


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    model, tokenizer = reference.load_model(argv[0])
    cases = [case(model, tokenizer, p, a, c) for p, a, c in CASES]
    out = {
        "model": os.path.basename(os.path.normpath(argv[0])),
        "generated_by": "scripts/reference_verify.py",
        "torch": torch.__version__,
        "cases": cases,
    }
    out["edge_cases"] = [edge_case(model, tokenizer, p) for p in EDGE_PROMPTS]
    with open(argv[1], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
