#!/usr/bin/env bash
# Quantized distillation (Polino et al. 2018; issue 26) on synthetic click logs of one hidden
# model: a teacher of the default size on TEACHER_ROWS rows the students never see, and a narrow
# student (--emb-dim 4 --mlp 32,16) on its own 1M rows, one pass each, the same steps in every arm:
#   int8/int4 student distilled from the teacher (--quantize, --teacher, the paper's form, lambda 1)
#   int8/int4 student on the labels only (--quantize)
#   f32 student on the labels, and distilled, each quantized after training (codistill quantize)
# Prints each arm's validation log-loss and AUC on a validation log of the same hidden model (with
# f32 products, then int8 products).
# SEED draws the students' initialisation and shuffling (the logs and the teacher are shared); the
# runs of a seed other than 1 are named with -sSEED (f32-kd-s2, ptq-int4-kd-s2.safetensors,
# summary-s2.txt), so the seeds share one OUT.
# Usage: [BIN=...] [SEED=1] [TEACHER_ROWS=4000000] scripts/quantized_distill.sh OUT
set -euo pipefail
OUT=${1:-runs/quantized-distill}
BIN=${BIN:-target/release/codistill}
SEED=${SEED:-1}
# shellcheck source=scripts/click_teacher.sh
source "$(dirname "$0")/click_teacher.sh"
STUDENT=("${COMMON[@]}" --train "$OUT/data/train.tsv" --emb-dim 4 --mlp 32,16 --seed "$SEED")
S=""
[ "$SEED" = 1 ] || S="-s$SEED"
run() { local r="$OUT/$1$S"; shift; [ -f "$r/result.json" ] || "$BIN" criteo train "${STUDENT[@]}" "$@" --out "$r" > "$r.log" 2>&1; }
run f32-labels
run f32-kd --teacher "$T" --burn-in 0
for Q in int8 int4; do
  run "$Q-kd" --quantize "$Q" --teacher "$T" --burn-in 0
  run "$Q-labels" --quantize "$Q"
  for A in labels kd; do
    "$BIN" quantize --checkpoint "$OUT/f32-$A$S/checkpoint.safetensors" --bits "${Q#int}" --out "$OUT/ptq-$Q-$A$S.safetensors" > /dev/null
  done
done
# Each model scored twice: its weights times their scales in f32, and with int8 products (each
# layer's input quantized per row to int8, i32 sums; an f32 model quantized to int8 first).
score() { echo "$("$BIN" criteo eval --checkpoint "$1" --file "$OUT/data/valid.tsv" --cache "$OUT/cache") int8-products $("$BIN" criteo eval --checkpoint "$1" --file "$OUT/data/valid.tsv" --cache "$OUT/cache" --products int8)"; }
{
  echo "teacher $(score "$T")"
  for A in f32-labels f32-kd int8-kd int8-labels int4-kd int4-labels; do
    # The quantized runs' checkpoint.safetensors holds the shadow weights; best.safetensors the
    # quantized model (validated once, at the end of the pass).
    f="$OUT/$A$S/checkpoint.safetensors"; [ -f "$OUT/$A$S/best.safetensors" ] && f="$OUT/$A$S/best.safetensors"
    echo "$A$S $(score "$f")"
  done
  for Q in int8 int4; do for A in labels kd; do echo "ptq-$Q-$A$S $(score "$OUT/ptq-$Q-$A$S.safetensors")"; done; done
} | tee "$OUT/summary$S.txt"
