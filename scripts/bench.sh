#!/usr/bin/env bash
# attrib against PyTorch + transformers on this machine: builds attrib (release, with the
# ndarray and flex CPU backends) and runs scripts/bench.py with the reference venv's Python.
#
#   scripts/bench.sh MODEL [bench.py options: --tokens 8,64,512 --reps 3 ...]
#   scripts/bench.sh MODEL --verify [bench_verify.py options: --tokens 8,64 --reps 3 ...]
#
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
cargo build --release --features flex >&2
TARGET="${CARGO_TARGET_DIR:-target}"
SCRIPT=scripts/bench.py
ARGS=()
for a in "$@"; do
    if [ "$a" = "--verify" ]; then SCRIPT=scripts/bench_verify.py; else ARGS+=("$a"); fi
done
exec "$PYTHON" "$SCRIPT" "${ARGS[@]}" --attrib "$TARGET/release/attrib"
