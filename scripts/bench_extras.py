#!/usr/bin/env python3
"""Edges, heads and the logit lens: what each adds to node-only attribution, in attrib and in
PyTorch + transformers, side by side on this machine.

    bench_extras.py MODEL [--tokens 5,16] [--reps 5] [--attrib target/release/attrib]
                    [--threads N] [--torch-dtype f32|bf16]

MODEL is a model folder or a .gguf file, as for scripts/bench.py. For each prompt length the
run alternates attrib `--nodes-only`, attrib's default output (edges and heads), attrib
`--lens`, and PyTorch (`scripts/bench_torch.py --extras`: the same pass with the same taps,
then the edges, the heads and the lens, each timed on its own), `--reps` times each, every
measurement in a fresh process after one untimed warm-up of each. attrib's edges and heads
are read from its scores phase, where they run (its forward and backward passes are the same
in every mode, so their run-to-run noise is left out); its lens, which runs beside the
backward pass, by what it adds to the whole attribution (forward, backward and scores) over
the default output's. PyTorch runs in float32 (or `--torch-dtype`).

It prints the medians: each system's node-only attribution (forward, backward and node
scores), the seconds the edges and heads and then the lens add, each system's extras as a
share of its own node-only time, and attrib ÷ PyTorch for each.
"""
import os
import statistics
import sys
import tempfile

from bench import (TORCH_DTYPES, attrib_json, bench_args, cli, prompt_of, reread_from_disk,
                   tokenizer_of, torch_json, warm_page_cache)

MODES = {"nodes-only": ["--nodes-only"], "default": [], "lens": ["--lens"]}


def attrib_run(binary, model, prompt, mode, threads):
    """attrib's phase timings in one mode (`MODES`), and the tokens it saw."""
    r, _, _ = attrib_json(binary, model, prompt, threads, MODES[mode])
    t = r["timings"]
    return {"pass": t["forward_s"] + t["backward_s"], "scores": t["scores_s"],
            "total": t["forward_s"] + t["backward_s"] + t["scores_s"],
            "tokens": len(r["input_ids"])}


def torch_run(model, prompt_file, threads, dtype):
    """PyTorch's node-only attribution and each extra's seconds, and the tokens it saw."""
    r, _, _ = torch_json("--extras", model, prompt_file, threads, "cpu", TORCH_DTYPES[dtype])
    return {"pass": r["forward_s"] + r["backward_s"], "edges_heads": r["edges_s"] + r["heads_s"],
            "lens": r["lens_s"], "tokens": r["tokens"]}


def main():
    ap = bench_args(__doc__, "5,16", 5)
    ap.add_argument("--torch-dtype", default="f32", choices=["f32", "bf16"])
    args = ap.parse_args()
    model = os.path.abspath(args.model)
    lengths = [int(x) for x in args.tokens.split(",")]

    tokenizer = tokenizer_of(model)
    print(f"model {model}\nthreads {args.threads} · {args.reps} reps each, medians · "
          f"PyTorch in {args.torch_dtype}", flush=True)

    reread_from_disk(model)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        def measure(system, n):
            warm_page_cache(model)
            prompt_file = os.path.join(tmp, f"{n}.txt")
            if system == "pytorch":
                r = torch_run(model, prompt_file, args.threads, args.torch_dtype)
            else:
                with open(prompt_file, encoding="utf-8") as f:
                    r = attrib_run(args.attrib, model, f.read(), system, args.threads)
            if r["tokens"] != n:
                sys.exit(f"{system} saw {r['tokens']} tokens, not {n}")
            return r

        systems = list(MODES) + ["pytorch"]
        for n in lengths:
            with open(os.path.join(tmp, f"{n}.txt"), "w", encoding="utf-8") as f:
                f.write(prompt_of(tokenizer, n))
        for system in systems:  # warm-up: page cache, lazy initialisation
            measure(system, lengths[0])
        for n in lengths:
            for _ in range(args.reps):
                for system in systems:
                    runs.setdefault((system, n), []).append(measure(system, n))
            print(f"  {n} tokens measured", flush=True)

    def med(system, n, key):
        return statistics.median(r[key] for r in runs[(system, n)])

    print()
    print("| tokens | system | node-only s | edges + heads s | lens s | default over node-only "
          "| `--lens` over node-only |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in lengths:
        scores = {m: med(m, n, "scores") for m in MODES}
        ours = (med("nodes-only", n, "pass") + scores["nodes-only"],
                scores["default"] - scores["nodes-only"],
                med("lens", n, "total") - med("default", n, "total"))
        theirs = (med("pytorch", n, "pass"), med("pytorch", n, "edges_heads"),
                  med("pytorch", n, "lens"))
        for name, (base, edges_heads, lens) in (("attrib", ours), ("PyTorch", theirs)):
            print(f"| {n} | {name} | {base:.3f} | {edges_heads:.3f} | {lens:.3f} | "
                  f"+{100 * edges_heads / base:.1f}% | +{100 * (edges_heads + lens) / base:.1f}% |")
        ratio = " | ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs))
        print(f"| {n} | attrib ÷ PyTorch | {ratio} | | |")


if __name__ == "__main__":
    cli(main)
