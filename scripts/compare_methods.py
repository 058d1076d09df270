#!/usr/bin/env python3
"""Grad×Activation against EAP-IG, checked by patching, on a few prompt pairs.

    compare_methods.py MODEL [--steps 5,20] [--attrib target/release/attrib]

For each clean/corrupted pair below (same token length) it runs `attrib --verify --corrupt`
(patching: every node's output replaced by its output on the corrupted prompt, one at a time,
and the pruned graph scored as a circuit with every other edge patched) once with the default
Grad×Activation scores and once per `--ig-steps` value. It prints a Markdown table: for each
pair and method, the Pearson and Spearman correlations and same-sign share of the predicted
vs actual change of the target logit over all nodes, the circuit's faithfulness, and the
seconds the attribution (forward, backward, EAP-IG path, scores) and the checks took.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PAIRS = [
    ("The capital of France is", "The capital of Italy is"),
    ("When Mary and John went to the store, John gave a drink to",
     "When Mary and John went to the store, Mary gave a drink to"),
    ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of"),
]


def attrib(binary, model, clean, corrupt, steps):
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, "--model", model, "--prompt", clean, "--corrupt", corrupt, "--verify",
               "--out", out, "--json"]
        if steps:
            cmd += ["--ig-steps", str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if proc.returncode != 0:
            sys.exit(f"attrib failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--steps", default="5,20")
    ap.add_argument("--attrib", default=os.path.join(ROOT, "target/release/attrib"))
    args = ap.parse_args()
    model = os.path.abspath(args.model) if os.path.exists(args.model) else args.model
    methods = [None] + [int(s) for s in args.steps.split(",")]
    print("| prompt (→ target) | corrupted | method | Pearson | Spearman | same sign | "
          "faithfulness (edges) | attribution s | checks s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for clean, corrupt in PAIRS:
        for steps in methods:
            r = attrib(args.attrib, model, clean, corrupt, steps)
            v = r["verification"]
            t = r["timings"]
            f = v.get("faithfulness") or {}
            attribution = t["forward_s"] + t["backward_s"] + t.get("ig_s", 0) + t["scores_s"]
            checks = sum(v["seconds"].values())
            method = "Grad×Activation" if steps is None else f"EAP-IG, M = {steps}"
            faith = (f"{f['faithfulness']:.3f} ({f['edges']})" if f else "—")
            print(f"| {clean!r} (→ {r['target_token']!r}) | {corrupt!r} | {method} | "
                  f"{v['pearson']:.3f} | {v['spearman']:.3f} | {100 * v['same_sign']:.0f}% | "
                  f"{faith} | {attribution:.2f} | {checks:.2f} |", flush=True)


if __name__ == "__main__":
    main()
