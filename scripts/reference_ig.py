#!/usr/bin/env python3
"""Reference EAP-IG edge scores and circuit faithfulness, with PyTorch + transformers.

Nodes, in pathway order: `embeddings` (embed_tokens output), `L{i}_Attn` (self_attn output
after o_proj) and `L{i}_MLP` (mlp output). Edge targets v: every `L{i}_Attn`, `L{i}_MLP` and
`logits`; the sources of v are the nodes upstream of it in pathway order, and v's input is the
input of its norm (`input_layernorm`, `post_attention_layernorm`, the final `model.norm`).
m(run) is the last-position logit of the target token, the argmax of the clean prompt's
last-position logits. float32 model, eager attention, CPU, plain prompts; sums in float64.

EAP-IG (`ig_cases`): x is the clean embed_tokens output, x' that of the corrupted prompt (same
length) or zeros. For alpha = k/M, k = 1..M, the clean prompt is run with embed_tokens' output
replaced by a leaf x' + alpha (x - x'); the gradients of m at every node output (g_out) and at
every target's norm input on that branch only (a zero leaf added by a forward pre-hook; g_in)
are averaged over the M steps. With a / a' the node outputs on the clean / baseline run (the
corrupted prompt, or the clean prompt with zero embeddings):
  node u:  signed = sum (a - a') * g_out,  score = ||(a - a') * g_out||_2 (all positions and
           dims), per_position = that norm per position;
  edge (u, v): score = sum (a_u - a'_u) * g_in(v), per_position = the sum per position.
`eap` holds the same with the single clean gradient (alpha = 1, its own forward and backward):
plain EAP, equal to the IG values for M = 1 (asserted). Completeness (sum of the embeddings
node's `signed` against m_clean - m_baseline) is printed, not asserted.

Faithfulness (`faithfulness_cases`): a circuit is a set of edges (u, v). The clean prompt is
run with every node's output recorded in that same run (a_u^cur) and a forward pre-hook on each
target's norm adding sum over the sources u with (u, v) outside the circuit of (a'_u - a_u^cur)
to its input (the residual stream untouched), with a'_u = u's output on the corrupted prompt
(`patch`), u's clean output averaged over positions (`mean`) or zeros (`zero`).
faithfulness = (m_circuit - m_empty) / (m_clean - m_empty), m_empty being the run with every
edge replaced. Circuits: `top8` / `top3` (the largest |score| of reference.compute_case's
Grad x Activation edges), `into_logits` (every edge into logits), `all` (asserted to give
m_clean). For `patch`, m_empty is asserted to equal m on the corrupted prompt.

    reference_ig.py MODEL_DIR OUT_JSON
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import torch  # noqa: E402
from reference_verify import first, modules, norm_of, record, replace_output, run  # noqa: E402

IG_CASES = [
    ("The capital of France is", "The capital of Spain is", 1),
    ("The capital of France is", "The capital of Spain is", 5),
    ("Hello world! You are", None, 5),
    ("Hello world! You are", None, 3),
]

FAITH_PROMPT = "The capital of France is"
FAITH_CORRUPT = "The capital of Spain is"
ABLATIONS = ["patch", "mean", "zero"]
CIRCUITS = ["top8", "into_logits", "all", "top3"]


def encode_pair(tokenizer, prompt, corrupt):
    _, ids = reference.encode(tokenizer, prompt, False)
    if corrupt is None:
        return ids, None
    _, corrupt_ids = reference.encode(tokenizer, corrupt, False)
    assert len(corrupt_ids) == len(ids), f"{corrupt!r} and {prompt!r} differ in token count"
    return ids, corrupt_ids


def embed_output(model, ids):
    with torch.no_grad():
        return model.model.embed_tokens(torch.tensor([ids])).detach()


def record_with(model, ids, embed):
    """Every node's output on ids with embed_tokens' output replaced by `embed` (detached),
    and m's logits."""
    seen = {}

    def keep(name):
        def hook(_module, _args, output):
            seen[name] = first(output).detach().clone()

        return hook

    hooks = [(model.model.embed_tokens, replace_output(embed))]  # runs before `keep`
    hooks += [(m, keep(n)) for n, m in modules(model)]
    with torch.no_grad():
        logits = run(model, ids, hooks)
    return seen, logits


def gradients(model, ids, target, embed):
    """One forward and backward of m on ids with embed_tokens' output replaced by a fresh leaf
    equal to `embed`: m, the gradient at every node's output, and the gradient at every edge
    target's norm input on that branch only (float64, [seq, hidden])."""
    leaf = embed.detach().clone().requires_grad_(True)
    outs = {"embeddings": leaf}

    def keep(name):
        def hook(_module, _args, output):
            t = first(output)
            t.retain_grad()
            outs[name] = t

        return hook

    hooks = [(model.model.embed_tokens, replace_output(leaf))]
    hooks += [(m, keep(n)) for n, m in modules(model)[1:]]
    zeros = {}
    targets = reference.pathway_targets(len(model.model.layers))
    handles = [norm_of(model, v).register_forward_pre_hook(reference.add_zero_leaf(zeros, v)) for v in targets]
    try:
        with torch.enable_grad():
            logits = run(model, ids, hooks)
            logits[target].backward()
    finally:
        for h in handles:
            h.remove()
    g_out = {n: t.grad.detach()[0].double() for n, t in outs.items()}
    g_in = {v: zeros[v].grad.detach()[0].double() for v in targets}
    return float(logits[target].detach()), g_out, g_in


def attributions(diff, g_out, g_in, num_layers):
    """Node and edge scores of the activation differences `diff` against the gradients."""
    nodes = []
    for name in reference.node_names(num_layers):
        p = diff[name] * g_out[name]
        nodes.append({
            "id": name,
            "signed": float(p.sum()),
            "score": float(torch.linalg.vector_norm(p)),
            "per_position": torch.linalg.vector_norm(p, dim=-1).tolist(),
        })
    edges = []
    for u, v in reference.edge_pairs(num_layers):
        pp = (diff[u] * g_in[v]).sum(dim=-1)
        edges.append({"source": u, "target": v, "score": float(pp.sum()), "per_position": pp.tolist()})
    return {"nodes": nodes, "edges": edges}


def assert_close(ig, eap, rel=1e-5):
    """Every value of ig within rel of eap, relative to the largest |value| of its field (so
    that values near zero are compared on the case's scale)."""
    for kind in ("nodes", "edges"):
        fields = ("signed", "score", "per_position") if kind == "nodes" else ("score", "per_position")
        for field in fields:
            a = torch.tensor([x[field] for x in ig[kind]], dtype=torch.float64)
            b = torch.tensor([x[field] for x in eap[kind]], dtype=torch.float64)
            gap = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            assert gap <= rel, f"IG (M=1) and EAP differ in {kind}.{field}: {gap:.3g}"


def ig_case(model, tokenizer, prompt, corrupt, steps):
    ids, corrupt_ids = encode_pair(tokenizer, prompt, corrupt)
    num_layers = len(model.model.layers)
    x = embed_output(model, ids)
    x_base = embed_output(model, corrupt_ids) if corrupt_ids else torch.zeros_like(x)
    clean, clean_logits = record_with(model, ids, x)
    target = int(torch.argmax(clean_logits))
    base, base_logits = record_with(model, ids, x_base)
    diff = {n: (clean[n] - base[n])[0].double() for n in clean}

    g_out, g_in = {}, {}
    for k in range(1, steps + 1):
        _, go, gi = gradients(model, ids, target, x_base + (k / steps) * (x - x_base))
        for store, grads in ((g_out, go), (g_in, gi)):
            for key, g in grads.items():
                store[key] = store[key] + g if key in store else g
    g_out = {n: g / steps for n, g in g_out.items()}
    g_in = {v: g / steps for v, g in g_in.items()}
    ig = attributions(diff, g_out, g_in, num_layers)

    _, eap_out, eap_in = gradients(model, ids, target, x)
    eap = attributions(diff, eap_out, eap_in, num_layers)
    if steps == 1:
        assert_close(ig, eap)

    m_clean, m_base = float(clean_logits[target]), float(base_logits[target])
    total = ig["nodes"][0]["signed"]
    delta = m_clean - m_base
    print(f"{prompt!r} vs {corrupt!r}, M={steps}: sum embeddings signed {total:.6f}, "
          f"m_clean - m_baseline {delta:.6f}, relative gap {abs(total - delta) / abs(delta):.3g}")
    return {
        "prompt": prompt,
        "corrupt": corrupt,
        "steps": steps,
        "input_ids": ids,
        "corrupt_ids": corrupt_ids,
        "target_id": target,
        "m_clean": m_clean,
        "m_baseline": m_base,
        "nodes": ig["nodes"],
        "edges": ig["edges"],
        "eap": eap,
    }


def circuit_logit(model, ids, target, replacement, circuit):
    """m on ids with the input of every target's norm shifted by (a'_u - a_u^cur) for each of its
    sources u with (u, v) outside the circuit, a_u^cur being u's output in this same run."""
    num_layers = len(model.model.layers)
    missing = {}
    for u, v in reference.edge_pairs(num_layers):
        if (u, v) not in circuit:
            missing.setdefault(v, []).append(u)
    current = {}

    def keep(name):
        def hook(_module, _args, output):
            current[name] = first(output)

        return hook

    def shift(sources):
        def hook(_module, args):
            delta = sum(replacement[u] - current[u] for u in sources)
            return (args[0] + delta,) + tuple(args[1:])

        return hook

    handles = [norm_of(model, v).register_forward_pre_hook(shift(us)) for v, us in missing.items()]
    try:
        with torch.no_grad():
            return float(run(model, ids, [(m, keep(n)) for n, m in modules(model)])[target])
    finally:
        for h in handles:
            h.remove()


def faithfulness_cases(model, tokenizer):
    ids, corrupt_ids = encode_pair(tokenizer, FAITH_PROMPT, FAITH_CORRUPT)
    num_layers = len(model.model.layers)
    with torch.no_grad():
        clean_logits = run(model, ids)
        corrupt_logits = run(model, corrupt_ids)
    target = int(torch.argmax(clean_logits))
    m_clean, m_corrupt = float(clean_logits[target]), float(corrupt_logits[target])

    scored = reference.compute_case(model, tokenizer, FAITH_PROMPT)["edges"]
    assert scored[0]["source"] == "embeddings"
    ranked = sorted(scored, key=lambda e: -abs(e["score"]))
    pairs = reference.edge_pairs(num_layers)

    def in_order(chosen):
        return [p for p in pairs if p in chosen]

    circuits = {
        "top8": in_order({(e["source"], e["target"]) for e in ranked[:8]}),
        "into_logits": [p for p in pairs if p[1] == "logits"],
        "all": list(pairs),
        "top3": in_order({(e["source"], e["target"]) for e in ranked[:3]}),
    }

    clean = record(model, ids)
    patched = record(model, corrupt_ids)
    cases = []
    for ablation in ABLATIONS:
        if ablation == "patch":
            replacement = patched
        elif ablation == "mean":
            replacement = {n: a.mean(dim=1, keepdim=True).expand_as(a).contiguous() for n, a in clean.items()}
        else:
            replacement = {n: torch.zeros_like(a) for n, a in clean.items()}
        m_empty = circuit_logit(model, ids, target, replacement, set())
        if ablation == "patch":
            gap = abs(m_empty - m_corrupt) / abs(m_corrupt)
            assert gap <= 1e-4, f"patch, empty circuit: {m_empty} != corrupted run {m_corrupt} ({gap:.3g})"
        for name in CIRCUITS:
            edges = circuits[name]
            m_circuit = circuit_logit(model, ids, target, replacement, set(edges))
            if name == "all":
                assert abs(m_circuit - m_clean) <= 1e-5 * abs(m_clean), (ablation, m_circuit, m_clean)
            faith = (m_circuit - m_empty) / (m_clean - m_empty)
            print(f"{ablation:5s} {name:11s} m_circuit {m_circuit:.6f} m_empty {m_empty:.6f} "
                  f"m_clean {m_clean:.6f} faithfulness {faith:.6f}")
            cases.append({
                "prompt": FAITH_PROMPT,
                "corrupt": FAITH_CORRUPT,
                "ablation": ablation,
                "input_ids": ids,
                "corrupt_ids": corrupt_ids,
                "target_id": target,
                "circuit": name,
                "edges": [list(p) for p in edges],
                "m_clean": m_clean,
                "m_circuit": m_circuit,
                "m_empty": m_empty,
                "faithfulness": faith,
            })
    return cases


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    model, tokenizer = reference.load_model(argv[0])
    out = {
        "model": os.path.basename(os.path.normpath(argv[0])),
        "generated_by": "scripts/reference_ig.py",
        "torch": torch.__version__,
        "ig_cases": [ig_case(model, tokenizer, p, c, m) for p, c, m in IG_CASES],
        "faithfulness_cases": faithfulness_cases(model, tokenizer),
    }
    with open(argv[1], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
