#!/usr/bin/env bash
# attrib against PyTorch + transformers on this machine: builds attrib (release, with the
# ndarray and flex CPU backends) and runs scripts/bench.py with the reference venv's Python.
#
#   scripts/bench.sh MODEL [bench.py options: --tokens 8,64,512 --reps 3 ...]
#   scripts/bench.sh MODEL --verify [bench_verify.py options: --tokens 8,64 --reps 3 ...]
#   scripts/bench.sh MODEL --device cuda --backends tch,cuda --dtypes f32,bf16 [...]
#
# With --device cuda attrib is built with the GPU backends (`--features tch,cuda`: libtorch as
# the README says, and CUDA's toolkit). ATTRIB=path/to/attrib skips the build and uses that
# binary.
# PYTHON (default /var/cache/attrib/venv/bin/python, else python3) must have torch and
# transformers (scripts/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: scripts/bench.sh MODEL [--tokens 8,64,512] [--reps 3] [--backends ndarray,flex]" >&2
    exit 2
fi
PYTHON="${PYTHON:-/var/cache/attrib/venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
FEATURES=flex
SCRIPT=scripts/bench.py
ARGS=()
PREV=
for a in "$@"; do
    if [ "$a" = "--verify" ]; then SCRIPT=scripts/bench_verify.py; else ARGS+=("$a"); fi
    if [ "$PREV $a" = "--device cuda" ] || [ "$a" = "--device=cuda" ]; then FEATURES=tch,cuda; fi
    PREV="$a"
done
if [ -z "${ATTRIB:-}" ]; then
    cargo build --release --features "$FEATURES" >&2
    ATTRIB="${CARGO_TARGET_DIR:-target}/release/attrib"
fi
exec "$PYTHON" "$SCRIPT" "${ARGS[@]}" --attrib "$ATTRIB"
