#!/usr/bin/env bash
# Offline distillation of click models on the built-in synthetic log (EXPERIMENTS.md, "Offline
# distillation"): a wide teacher, a narrow student alone, the student distilled from the teacher
# (and with a feature hint, weight HINT, default 1), from the codistilled pair of the README's main
# job (two teachers), and from all three.
# Prints one table (validation log-loss against the hidden model's, AUC). Runs go under $OUT.
# Usage: scripts/criteo_offline_distill.sh [OUT]   (WEIGHT, default 0.5; STUDENT, default "--emb-dim 4 --mlp 32")
set -euo pipefail
OUT=${1:-runs/criteo-offline}
BIN=${BIN:-target/release/codistill}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
COMMON=(--device cpu --cache "$OUT/cache" --eval-every 0)
STUDENT=(${STUDENT:---emb-dim 4 --mlp 32})
run() { local name=$1; shift; [ -f "$OUT/$name/result.json" ] || "$BIN" criteo "$@" "${COMMON[@]}" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; }
run teacher train --emb-dim 16 --mlp 256,128
run pair codistill
run alone train "${STUDENT[@]}"
run from-teacher train "${STUDENT[@]}" --burn-in 0 --distill-weight "${WEIGHT:-0.5}" --teacher "$OUT/teacher/checkpoint.safetensors"
run from-teacher-hint train "${STUDENT[@]}" --burn-in 0 --distill-weight "${WEIGHT:-0.5}" --hint-weight "${HINT:-1}" --teacher "$OUT/teacher/checkpoint.safetensors"
run from-pair train "${STUDENT[@]}" --burn-in 0 --distill-weight "${WEIGHT:-0.5}" --teacher "$OUT/pair/checkpoint-0.safetensors,$OUT/pair/checkpoint-1.safetensors"
run from-all train "${STUDENT[@]}" --burn-in 0 --distill-weight "${WEIGHT:-0.5}" --teacher "$OUT/teacher/checkpoint.safetensors,$OUT/pair/checkpoint-0.safetensors,$OUT/pair/checkpoint-1.safetensors"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'run':<14} {'valid log-loss':>14} {'over hidden':>12} {'AUC':>7} {'rows/s':>9}")
for name in ["teacher", "pair", "alone", "from-teacher", "from-teacher-hint", "from-pair", "from-all"]:
    r = json.load(open(f"{out}/{name}/result.json"))
    ll, b = r["valid_log_loss"], r["bayes_log_loss"]
    print(f"{name:<14} {ll:>14.5f} {100 * (ll / b - 1):>11.2f}% {r['valid_auc']:>7.4f} {r['train_rows_per_s']:>9.0f}")
PY
