#!/usr/bin/env bash
# End-to-end CPU comparison against PyTorch (issue 7): installs CPU PyTorch into a git-ignored
# virtual environment (.venv-bench, once), builds codistill in release mode, and prints the table
# of scripts/e2e_compare.py. Run it on an otherwise idle machine: both sides use every core.
# Usage: scripts/cpu_compare.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/cpu-compare}
VENV=${VENV:-.venv-bench}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    # PyPI's torch wheel (it brings NVIDIA's CUDA libraries too, about 3 GB; only the CPU is used)
    "$VENV/bin/pip" install -q torch==2.9.1 numpy
fi
cargo build --release
mkdir -p "$OUT"
"$VENV/bin/python" scripts/e2e_compare.py target/release/codistill "$OUT" | tee "$OUT/table.txt"
