#!/usr/bin/env python3
"""`attrib --verify` against the unbatched way of checking every node by ablation.

    bench_verify.py MODEL [--tokens 8,64] [--reps 3] [--attrib target/release/attrib]
                    [--threads N]

For each prompt length (a prefix of bench.py's text) the run alternates, `--reps` times:
- PyTorch + transformers: one forward pass per node with that node zeroed
  (`bench_torch.py --ablate-nodes`: 2L+1 passes, timed after a warm-up pass);
- attrib `--verify --ablate zero --verify-edges 0`: the node checks as attrib runs them, batched
  along the batch dimension (each pass carries the clean prompt and up to 63 interventions);
- the same with `--verify-batch 1`: one intervention per pass (beside the clean prompt).
attrib's time is `verification.seconds.nodes` from its JSON (model loading, the attribution
itself and the circuit check are not counted). It prints every measurement and a table of
medians with the ratios batched ÷ each unbatched way.

`scripts/bench.sh MODEL --verify` builds attrib and runs this.
"""
import os
import statistics
import sys
import tempfile

from bench import attrib_json, bench_args, cli, prompt_of, tokenizer_of, torch_json


def torch_ablations(model, prompt_file, threads):
    r, _, _ = torch_json("--ablate-nodes", model, prompt_file, threads)
    return r["seconds"], r["passes"], r["tokens"]


def attrib_verify(binary, model, prompt, threads, batch):
    flags = ["--verify", "--ablate", "zero", "--verify-edges", "0"]
    if batch is not None:
        flags += ["--verify-batch", str(batch)]
    r, _, _ = attrib_json(binary, model, prompt, threads, flags)
    v = r["verification"]
    return v["seconds"]["nodes"], len(v["nodes"]), len(r["input_ids"])


def main():
    args = bench_args(__doc__, "8,64", 3).parse_args()
    model = os.path.abspath(args.model)
    lengths = [int(x) for x in args.tokens.split(",")]

    tokenizer = tokenizer_of(model)
    print(f"model {model}\nthreads {args.threads} · {args.reps} reps each, medians", flush=True)
    systems = ["pytorch unbatched", "attrib unbatched", "attrib batched"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            prompt = prompt_of(tokenizer, n)
            prompt_file = os.path.join(tmp, f"{n}.txt")
            with open(prompt_file, "w", encoding="utf-8") as f:
                f.write(prompt)

            def measure(system):
                if system == "pytorch unbatched":
                    return torch_ablations(model, prompt_file, args.threads)
                batch = 1 if system == "attrib unbatched" else None
                return attrib_verify(args.attrib, model, prompt, args.threads, batch)

            if n == lengths[0]:
                for system in systems:  # warm-up: page cache
                    measure(system)
            for _ in range(args.reps):
                for system in systems:
                    seconds, nodes, tokens = measure(system)
                    if tokens != n:
                        sys.exit(f"{system} saw {tokens} tokens, not {n}")
                    results.setdefault((system, n), []).append(seconds)
                    print(f"  {n:4} tokens  {system:17}  {nodes} node ablations  {seconds:7.2f} s",
                          flush=True)

    print()
    print("| tokens | PyTorch, one pass per node s | attrib, one per pass s | "
          "attrib --verify (batched) s | batched ÷ PyTorch | batched ÷ attrib one per pass |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in lengths:
        t, one, batched = (statistics.median(results[(s, n)]) for s in systems)
        print(f"| {n} | {t:.2f} | {one:.2f} | {batched:.2f} | {batched / t:.2f} | "
              f"{batched / one:.2f} |")


if __name__ == "__main__":
    cli(main)
