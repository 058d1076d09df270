#!/usr/bin/env python3
"""Reference values for a Qwen2 model folder, computed with PyTorch + transformers.

Everything runs in float32 on the CPU with eager attention. For each prompt the
output records the tokenization, the logits (all positions and the full
vocabulary with `--logits full`, or only the top 20 at the last position with
`--logits top20`), the top 5 next tokens, and a Grad x Activation attribution
of one logit at the last position (the argmax, or token N with `--target-id N`)
onto the embeddings and onto the output of every attention block (after
o_proj, before the residual add) and every MLP block. Each case records
`predicted_id` (the argmax at the last position), `target_id` (the attributed
token) and `target_logit`.

From the same forward and backward pass each case also gets `edges` (node u's
activation times the gradient of the target at the input of node v's norm, on
v's branch only: `input_layernorm` for `L{i}_Attn`, `post_attention_layernorm`
for `L{i}_MLP`, the final `model.norm` for `logits`) and `heads` (per attention
head: the signed Grad x Activation at the o_proj input, and the norm of the
head's o_proj contribution times the gradient at the attention output) and
`lens` (the logit lens at the last position: the final norm and the LM head
applied to the residual stream after each node, with the target's rank and
logit and the five highest logits).

Usable as a module (`load_model`, `compute_case`, `build_reference`,
`write_reference`) or from the command line:

    reference.py MODEL_DIR OUT_JSON --name NAME [--logits full|top20]
        [--prompt TEXT ...] [--chat-prompt TEXT ...] [--target-id N]
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def f32(x):
    """A Python float whose repr is the shortest decimal that round-trips as float32."""
    return float(str(np.float32(x)))


def f32_list(t):
    return [f32(v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def load_model(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def encode(tokenizer, prompt, chat):
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = prompt
        ids = tokenizer(text)["input_ids"]
    return text, list(ids)


def decode_token(tokenizer, token_id):
    if token_id >= len(tokenizer):
        return ""  # padding row of the embedding matrix, not a tokenizer entry
    return tokenizer.decode([token_id])


# relative |sum_h signed - node signed| of every layer of every case computed so far
HEAD_CHECK = []


def node_names(num_layers):
    names = ["embeddings"]
    for i in range(num_layers):
        names += [f"L{i}_Attn", f"L{i}_MLP"]
    return names


def pathway_targets(num_layers):
    """Edge targets in pathway order: L0_Attn, L0_MLP, ..., logits."""
    return node_names(num_layers)[1:] + ["logits"]


def edge_pairs(num_layers):
    """(source, target) pairs in output order: by target in pathway order, then
    every source upstream of it (embeddings first) in pathway order."""
    names = node_names(num_layers)
    pairs = []
    for k, v in enumerate(pathway_targets(num_layers)):
        # target k (0-based) has the k+1 nodes names[0..=k] upstream of it
        pairs += [(u, v) for u in names[: k + 1]]
    return pairs


def add_zero_leaf(store, key):
    """Forward pre-hook that feeds `x + z` (z a zero leaf kept in store[key]) to
    the module, so that z.grad is the gradient at the module's input on this
    branch only; store[(key, "x")] keeps x."""

    def hook(_module, args):
        x = args[0]
        z = torch.zeros_like(x, requires_grad=True)
        store[key] = z
        store[(key, "x")] = x
        return (x + z,) + tuple(args[1:])

    return hook


def norm_output_hook(store, key):
    """Forward hook on a norm: keeps its input x and output y (gradient retained)."""

    def hook(_module, args, output):
        output.retain_grad()
        store[key] = (args[0], output)

    return hook


def compute_case(model, tokenizer, prompt, chat=False, logits="full", target_id=None, norm_grads="local"):
    """target_id: token whose last-position logit is attributed (None: the argmax).

    norm_grads: how g_in(v), the gradient at the input of v's norm on v's branch
    only, is obtained from the one backward pass. "local" (default): the
    gradient at the norm's output is retained and pulled back through the same
    norm module (a VJP on a detached copy of its input) after the backward.
    "zero_leaf": forward pre-hooks feed `x + z` to the norm (z a zero leaf) and
    g_in = z.grad. Both give the same g_in, but "zero_leaf" regroups the float32
    sum of the three gradient contributions at x (residual, and pow and mul
    inside RMSNorm), so the node gradients change in their last bits; "local"
    leaves them bit-identical to a run without any of these hooks."""
    text, ids = encode(tokenizer, prompt, chat)
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
    input_ids = torch.tensor([ids], dtype=torch.long)

    acts = {}
    handles = []

    def embed_hook(_module, _inputs, output):
        # Weights are frozen, so make the embedding output the leaf that
        # carries gradients for everything downstream.
        out = output.detach().requires_grad_(True)
        acts["embeddings"] = out
        return out

    def make_hook(name):
        def hook(_module, _inputs, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            t.retain_grad()
            acts[name] = t

        return hook

    # norm inputs/outputs (edges) and zero leaves at the o_proj inputs (heads);
    # o_proj's input has o_proj as its only consumer, so x + z does not regroup
    # any gradient sum
    if norm_grads not in ("local", "zero_leaf"):
        raise ValueError(f"unknown norm_grads {norm_grads!r}")
    norm_in = {}
    oproj_in = {}

    def norm_hook(module, key):
        if norm_grads == "local":
            return module.register_forward_hook(norm_output_hook(norm_in, key))
        return module.register_forward_pre_hook(add_zero_leaf(norm_in, key))

    inner = model.model
    handles.append(inner.embed_tokens.register_forward_hook(embed_hook))
    for i, layer in enumerate(inner.layers):
        handles.append(layer.self_attn.register_forward_hook(make_hook(f"L{i}_Attn")))
        handles.append(layer.mlp.register_forward_hook(make_hook(f"L{i}_MLP")))
        handles.append(norm_hook(layer.input_layernorm, f"L{i}_Attn"))
        handles.append(norm_hook(layer.post_attention_layernorm, f"L{i}_MLP"))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(add_zero_leaf(oproj_in, i)))
    handles.append(norm_hook(inner.norm, "logits"))
    norm_modules = {"logits": inner.norm}
    for i, layer in enumerate(inner.layers):
        norm_modules[f"L{i}_Attn"] = layer.input_layernorm
        norm_modules[f"L{i}_MLP"] = layer.post_attention_layernorm
    try:
        out = model(input_ids=input_ids, use_cache=False)
        all_logits = out.logits[0].to(torch.float32)  # [seq, vocab]
        last = all_logits[-1]
        predicted = int(torch.argmax(last).item())
        if target_id is None:
            target = predicted
        else:
            target = int(target_id)
            if not 0 <= target < last.shape[0]:
                raise ValueError(f"target id {target} is outside the vocabulary (size {last.shape[0]})")
        model.zero_grad(set_to_none=True)
        last[target].backward()
    finally:
        for h in handles:
            h.remove()

    last = last.detach()
    probs = torch.softmax(last, dim=-1)
    top5_vals, top5_ids = torch.topk(last, 5)
    top5 = [
        {
            "id": int(i),
            "token": decode_token(tokenizer, int(i)),
            "logit": f32(v),
            "prob": f32(probs[int(i)]),
        }
        for v, i in zip(top5_vals.tolist(), top5_ids.tolist())
    ]

    nodes = []
    for name in node_names(len(inner.layers)):
        a = acts[name]
        g = a.grad
        if g is None:
            raise RuntimeError(f"no gradient reached {name}")
        ga = (g * a).detach()[0].to(torch.float32)  # [seq, hidden]
        nodes.append(
            {
                "id": name,
                "score": f32(torch.linalg.vector_norm(ga)),
                "signed": f32(ga.sum()),
                "per_position": f32_list(torch.linalg.vector_norm(ga, dim=-1)),
            }
        )

    num_layers = len(inner.layers)

    # edges: a_u . g_in(v), summed over hidden dims per position (float64 sums)
    acts64 = {n: acts[n].detach()[0].to(torch.float64) for n in node_names(num_layers)}
    g_in = {}
    for v in pathway_targets(num_layers):
        if norm_grads == "local":
            # hooks are removed by now, so calling the norm records nothing
            x, y = norm_in[v]
            if y.grad is None:
                raise RuntimeError(f"no gradient reached the output of the norm of {v}")
            xd = x.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(norm_modules[v](xd), xd, y.grad)
        else:
            g = norm_in[v].grad
            if g is None:
                raise RuntimeError(f"no gradient reached the input of the norm of {v}")
        g_in[v] = g.detach()[0].to(torch.float64)
    edges = []
    for u, v in edge_pairs(num_layers):
        pp = (acts64[u] * g_in[v]).sum(dim=-1)  # [seq]
        edges.append({"source": u, "target": v, "score": f32(pp.sum()), "per_position": f32_list(pp)})

    # heads: signed Grad x Activation at the o_proj input, and the norm of the
    # head's o_proj contribution times the gradient at the attention output
    cfg = model.config
    n_heads = cfg.num_attention_heads
    heads = []
    for l, layer in enumerate(inner.layers):
        z_leaf = oproj_in[l]
        if z_leaf.grad is None:
            raise RuntimeError(f"no gradient reached the o_proj input of layer {l}")
        assert layer.self_attn.o_proj.bias is None, "o_proj is expected to have no bias"
        z = oproj_in[(l, "x")].detach()[0].to(torch.float64)  # [seq, heads*hd]
        gz = z_leaf.grad.detach()[0].to(torch.float64)
        ga = acts[f"L{l}_Attn"].grad.detach()[0].to(torch.float64)  # [seq, hidden]
        w_o = layer.self_attn.o_proj.weight.detach().to(torch.float64)  # [hidden, heads*hd]
        hd = z.shape[-1] // n_heads
        assert hd * n_heads == z.shape[-1] == w_o.shape[1], (z.shape, w_o.shape, n_heads)
        total = 0.0
        for h in range(n_heads):
            cols = slice(h * hd, (h + 1) * hd)
            signed = float((z[:, cols] * gz[:, cols]).sum())
            total += signed
            c = z[:, cols] @ w_o[:, cols].T  # [seq, hidden]
            cg = c * ga
            heads.append(
                {
                    "id": f"L{l}_H{h}",
                    "layer": l,
                    "head": h,
                    "signed": f32(signed),
                    "score": f32(torch.linalg.vector_norm(cg)),
                    "per_position": f32_list(torch.linalg.vector_norm(cg, dim=-1)),
                }
            )
        node_signed = float((acts[f"L{l}_Attn"].detach()[0].to(torch.float64) * ga).sum())
        node_signed32 = next(n["signed"] for n in nodes if n["id"] == f"L{l}_Attn")
        for ref in (node_signed, node_signed32):
            rel = abs(total - ref) / max(abs(ref), 1e-30)
            assert rel <= 1e-4, f"layer {l}: sum of head signed {total} != node signed {ref} (rel {rel:.3g})"
        HEAD_CHECK.append(abs(total - node_signed32) / max(abs(node_signed32), 1e-30))

    # logit lens at the last position: the final norm and the LM head applied to the
    # residual stream after each node (embeddings + every sublayer output so far, summed in
    # the model's order), the target's rank (1 + entries above it), logit and the top five;
    # `target_near`, how many other logits lie within 1e-4 * (1 + |target logit|) of the
    # target's, bounds how far another summation order (whose logits err by less than half
    # that) can move the rank
    lens = []
    with torch.no_grad():
        resid = None
        for name in node_names(num_layers):
            a = acts[name].detach()[0, -1]
            resid = a.clone() if resid is None else resid + a
            row = model.lm_head(inner.norm(resid[None, None]))[0, 0].to(torch.float32)
            vals, idx = torch.topk(row, 5)
            lens.append(
                {
                    "after": name,
                    "target_rank": int((row > row[target]).sum()) + 1,
                    "target_logit": f32(row[target]),
                    "target_near": int(((row - row[target]).abs() <= 1e-4 * (1 + row[target].abs())).sum()) - 1,
                    "top": [{"id": int(i), "logit": f32(v)} for v, i in zip(vals.tolist(), idx.tolist())],
                }
            )

    case = {
        "prompt": prompt,
        "chat": bool(chat),
        "input_ids": ids,
        "tokens": tokenizer.convert_ids_to_tokens(ids),
        "text": text,
        "predicted_id": predicted,
        "target_id": target,
        "target_logit": f32(last[target]),
    }
    if logits == "full":
        case["logits"] = [f32_list(row) for row in all_logits.detach()]
    elif logits == "top20":
        vals, idx = torch.topk(last, 20)
        case["last_logits_top"] = [
            {"id": int(i), "logit": f32(v)} for v, i in zip(vals.tolist(), idx.tolist())
        ]
    else:
        raise ValueError(f"unknown logits mode {logits!r}")
    case["top5"] = top5
    case["nodes"] = nodes
    case["edges"] = edges
    case["heads"] = heads
    case["lens"] = lens
    return case


def build_reference(model_dir, name, cases, logits="full", generated_by="scripts/reference.py", target_id=None,
                    norm_grads="local"):
    """cases: list of (prompt, chat) pairs or (prompt, chat, target_id) triples;
    target_id (per case, else the argument, else None) picks the attributed
    token, None meaning the argmax at the last position."""
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir)
    with torch.enable_grad():
        results = []
        for case in cases:
            prompt, chat = case[0], case[1]
            tid = case[2] if len(case) > 2 and case[2] is not None else target_id
            results.append(compute_case(model, tokenizer, prompt, chat, logits, tid, norm_grads))
    return {
        "model": name,
        "generated_by": generated_by,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cases": results,
    }


def write_reference(ref, out_path):
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("out_json")
    p.add_argument("--name", help="value of the top-level 'model' key (default: folder name)")
    p.add_argument("--logits", choices=["full", "top20"], default="full")
    p.add_argument("--prompt", action="append", default=[], help="plain prompt (repeatable)")
    p.add_argument("--chat-prompt", action="append", default=[], help="prompt wrapped in the chat template (repeatable)")
    p.add_argument("--target-id", type=int, metavar="N",
                   help="attribute the logit of token N at the last position of every case (default: the argmax)")
    p.add_argument("--generated-by", default="scripts/reference.py")
    args = p.parse_args(argv)

    cases = [(x, False) for x in args.prompt] + [(x, True) for x in args.chat_prompt]
    if not cases:
        p.error("give at least one --prompt or --chat-prompt")
    name = args.name or os.path.basename(os.path.normpath(args.model_dir))
    ref = build_reference(args.model_dir, name, cases, args.logits, args.generated_by, args.target_id)
    write_reference(ref, args.out_json)
    for c in ref["cases"]:
        top = ", ".join(f"{t['id']}:{t['token']!r}:{t['logit']:.4f}" for t in c["top5"])
        print(f"{c['prompt']!r} chat={c['chat']} ({len(c['input_ids'])} tokens) top5: {top}")
        print(f"  predicted_id={c['predicted_id']} target_id={c['target_id']} target_logit={c['target_logit']:.4f}")
    if HEAD_CHECK:
        print(f"max relative |sum_h signed - L*_Attn signed|: {max(HEAD_CHECK):.3g}")
    print(f"wrote {args.out_json}")


if __name__ == "__main__":
    sys.exit(main())
