#!/usr/bin/env bash
# What edges, heads and the logit lens cost over node-only attribution, measured with
# attrib's own timings (forward + backward + scores; loading and rendering excluded).
#
#   scripts/extras_cost.sh MODEL [REPS] [TOKENS...]
#
# MODEL is a model folder or GGUF file; TOKENS are prompt lengths (default: 5 64). For each
# length the three modes (--nodes-only, the default output, --lens) run in turn, REPS times
# (default 9; best a multiple of 3, as each mode runs first in a third of the rounds), each
# in a fresh process, and the script prints each mode's median time, its phases and its cost
# over node-only: in total (from the medians, and "paired": the median of each round's
# difference from the same round's node-only run, which leaves out the VM's drift from one
# round to the next), and in the scores phase alone. Edges and heads run in the scores
# phase, and that column leaves out the forward and backward passes' run-to-run noise,
# several percent on a busy VM; but it also leaves out what the extras add to those passes
# (taps at every site instead of the nodes' alone, and o_proj keeping each head's
# contribution), and the lens, which runs beside the backward pass: only the total shows
# those. The lens column is the lens's own time (overlapping the backward). Set ATTRIB to
# the binary (default target/release/attrib).
set -euo pipefail

model=${1:?usage: scripts/extras_cost.sh MODEL [REPS] [TOKENS...]}
reps=${2:-9}
shift $(($# < 2 ? $# : 2))
lengths=("$@")
[ ${#lengths[@]} -eq 0 ] && lengths=(5 64)
attrib=${ATTRIB:-target/release/attrib}
[ -x "$attrib" ] || { echo "extras_cost.sh: $attrib is not an executable (cargo build --release, or set ATTRIB)" >&2; exit 1; }

# A prompt of about `n` tokens: "The capital of France is" for 5, else a sentence repeated
# and cut to n words (most are one token each in Qwen2.5's vocabulary).
prompt() {
    local n=$1
    if [ "$n" -le 5 ]; then
        echo "The capital of France is"
        return
    fi
    local sentence="The history of the city of Paris begins long before it became the capital of France, and the story of its streets, bridges and people"
    local words=()
    while [ ${#words[@]} -lt "$n" ]; do
        read -ra more <<<"$sentence"
        words+=("${more[@]}")
    done
    echo "${words[@]:0:$((n - 1))}"
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for n in "${lengths[@]}"; do
    text=$(prompt "$n")
    modes=(nodes-only default lens)
    for rep in $(seq "$reps"); do
        # Each mode first, second and third in turn: a run right after another is often
        # slower (by 2-5% in its forward pass on a 2-core VM), which a fixed order would
        # charge to the same mode every time.
        first=$((rep % 3))
        for mode in "${modes[@]:first}" "${modes[@]:0:first}"; do
            flag=()
            [ "$mode" = nodes-only ] && flag=(--nodes-only)
            [ "$mode" = lens ] && flag=(--lens)
            "$attrib" --model "$model" --prompt "$text" "${flag[@]}" --json --out "$out/run" \
                2>"$out/stderr" >"$out/$n-$mode-$rep.json" ||
                { cat "$out/stderr" >&2; exit 1; }
        done
    done
done
python3 - "$out" "$reps" "${lengths[@]}" <<'PY'
import json, statistics, sys

out, reps, lengths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
print("| tokens | mode | runs | forward s | backward s | scores s | lens s | total s "
      "| over node-only | paired | scores over node-only |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
phases = ("forward_s", "backward_s", "scores_s")
for n in lengths:
    runs = {mode: [json.load(open(f"{out}/{n}-{mode}-{rep}.json")) for rep in range(1, reps + 1)]
            for mode in ("nodes-only", "default", "lens")}
    totals = {mode: [sum(r["timings"][k] for k in phases) for r in rs] for mode, rs in runs.items()}
    base = statistics.median(totals["nodes-only"])
    base_scores = statistics.median(r["timings"]["scores_s"] for r in runs["nodes-only"])
    for mode, rs in runs.items():
        med = [statistics.median(r["timings"][k] for r in rs) for k in phases]
        lens = statistics.median(r["timings"].get("lens_s", 0.0) for r in rs)
        total = statistics.median(totals[mode])
        # Each round's difference from the node-only run of the same round.
        paired = statistics.median(t - b for t, b in zip(totals[mode], totals["nodes-only"]))
        tokens = len(rs[0]["input_ids"])
        print(f"| {tokens} | {mode} | {len(rs)} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} "
              f"| {lens:.3f} | {total:.3f} | {100 * (total / base - 1):+.1f}% "
              f"| {100 * paired / base:+.1f}% | {100 * (med[2] - base_scores) / base:+.1f}% |")
PY
