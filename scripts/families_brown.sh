#!/usr/bin/env bash
# The distillation families of issue 26 on Brown, at the student size used so far: a 256-wide
# teacher (the eleventh configuration's baseline: embedding and LSTM 256, one layer, no dropout,
# STEPS steps) and a 64-wide student (embedding and LSTM 64, no dropout, batch 32 x 35, Adam lr
# 0.002, clip 5, STEPS steps, validation every 100 steps on 30,000 tokens spread over the file),
# SEEDS each. Arms (every distilled arm in the paper's form, lambda 1, from step 0; no weight tuned,
# the weights are first guesses, the hint's 10 the one measured on 2026-11-27):
#   labels, kd (forward KL, T = 1), kd-t2 (T = 2), reverse-kl, js, mse (on logits),
#   fading (weight linearly to 0), hint (FitNets, weight 10), cosine-hint (weight 1),
#   sp (similarity-preserving, weight 10), rkd (RKD distance, weight 1), rkd-full (distance and
#   twice the angle, weight 1),
#   two-weighted (teacher and the labels-only student, 0.8/0.2), two-confidence,
#   born-again (distilled from the labels-only student, same size), init-from (KD from the
#   teacher's leading units), adversarial (discriminator on the logits, weight 0.1),
#   adversarial-probs (the same on the softmax rows),
#   int8-kd, int4-kd, int4-labels (quantized students), data-free (text sampled from the teacher).
# Prints one row per arm: best validation loss and test perplexity (the best checkpoint's, on the
# whole test file as one stream) per seed; for the quantized students and the labels-only one also
# the test perplexity with int8 products (`lm eval --products int8`); and the labels-only and KD
# students quantized after training (int8, int4). Runs go under OUT; a finished run is not run again.
# TEACHER_STEPS (default STEPS) trains the teacher longer than the students (a shortened table keeps
# the full teacher). THREADS (default 0: every core) is each student run's --threads: with PARALLEL
# runs at a time on a CPU, give each its share (the teacher, trained alone first, takes every core).
# Usage: [BIN=...] [DEVICE=cpu|cuda] [DATA=../shared/data/brown] [STEPS=3000] [TEACHER_STEPS=STEPS] [SEEDS="1 2"]
#        [THREADS=0]
#        [PARALLEL=1] [ARMS="labels kd ..."] scripts/families_brown.sh OUT
set -euo pipefail
OUT=${1:-runs/families-brown}
BIN=${BIN:-target/release/codistill}
DEVICE=${DEVICE:-cpu}
DATA=${DATA:-../shared/data/brown}
STEPS=${STEPS:-3000}
TEACHER_STEPS=${TEACHER_STEPS:-$STEPS}
SEEDS=${SEEDS:-1 2}
PARALLEL=${PARALLEL:-1}
THREADS=${THREADS:-0}
ALL="labels kd kd-t2 reverse-kl js mse fading hint cosine-hint sp rkd rkd-full two-weighted two-confidence born-again init-from adversarial adversarial-probs int8-kd int4-kd int4-labels data-free"
ARMS=${ARMS:-$ALL}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
SHAPE=(--data "$DATA" --device "$DEVICE" --layers 1 --dropout 0 --batch 32 --bptt 35 --lr 0.002 --clip 5
  --eval-every 100 --eval-tokens 30000 --cache "$OUT/cache")
COMMON=("${SHAPE[@]}" --steps "$STEPS" --checkpoint-every "$STEPS" --threads "$THREADS")
T="$OUT/teacher/best.safetensors"
[ -f "$OUT/teacher/result.json" ] || "$BIN" lm train "${SHAPE[@]}" --steps "$TEACHER_STEPS" --checkpoint-every "$TEACHER_STEPS" --emb-dim 256 --hidden 256 --seed 1 --out "$OUT/teacher" > "$OUT/teacher.log" 2>&1
# One arm of one seed: its options.
options() {
  local arm=$1 seed=$2 L="$OUT/labels-s$2/best.safetensors"
  case $arm in
    labels) ;;
    kd) echo "--teacher $T --burn-in 0" ;;
    kd-t2) echo "--teacher $T --burn-in 0 --temperature 2" ;;
    reverse-kl | js | mse) echo "--teacher $T --burn-in 0 --distill-loss $arm" ;;
    fading) echo "--teacher $T --burn-in 0 --distill-schedule linear --distill-final 0" ;;
    hint) echo "--teacher $T --burn-in 0 --hint-weight 10" ;;
    cosine-hint) echo "--teacher $T --burn-in 0 --hint-weight 1 --hint-loss cosine" ;;
    sp) echo "--teacher $T --burn-in 0 --relation-weight 10 --relation-loss sp" ;;
    rkd) echo "--teacher $T --burn-in 0 --relation-weight 1 --relation-loss rkd" ;;
    rkd-full) echo "--teacher $T --burn-in 0 --relation-weight 1 --relation-loss rkd-full" ;;
    two-weighted) echo "--teacher $T,$L --burn-in 0 --teacher-weights 0.8,0.2" ;;
    two-confidence) echo "--teacher $T,$L --burn-in 0 --teacher-confidence true" ;;
    born-again) echo "--teacher $L --burn-in 0" ;;
    init-from) echo "--teacher $T --burn-in 0 --init-from $T" ;;
    adversarial) echo "--teacher $T --burn-in 0 --adversarial-weight 0.1" ;;
    adversarial-probs) echo "--teacher $T --burn-in 0 --adversarial-weight 0.1 --adversarial-input probs" ;;
    int8-kd | int4-kd) echo "--teacher $T --burn-in 0 --quantize ${arm%-kd}" ;;
    int4-labels) echo "--quantize int4" ;;
    data-free) echo "--teacher $T --burn-in 0 --data-free true" ;;
    *) echo "families_brown.sh: unknown arm $arm (arms: $ALL)" >&2; return 1 ;;
  esac
}
run() {
  local arm=$1 seed=$2 r="$OUT/$1-s$2" opts
  opts=$(options "$arm" "$seed") || exit 1
  [ -f "$r/result.json" ] && return 0
  # shellcheck disable=SC2086 # the options are words
  "$BIN" lm train "${COMMON[@]}" --emb-dim 64 --hidden 64 --seed "$seed" $opts --out "$r" > "$r.log" 2>&1 || echo "FAILED $arm seed $seed: see $r.log" >&2
}
export -f run options
export OUT T BIN ALL
export COMMON_LINE="${COMMON[*]}"
# The labels-only students first (two arms distill from them), then every other arm.
for S in $SEEDS; do
  for A in $ARMS; do options "$A" "$S" > /dev/null; done # unknown arms fail before any run
done
for S in $SEEDS; do echo "labels $S"; done | xargs -P "$PARALLEL" -n 2 bash -c 'COMMON=($COMMON_LINE); run "$0" "$1"'
for S in $SEEDS; do for A in $ARMS; do [ "$A" = labels ] || echo "$A $S"; done; done \
  | xargs -P "$PARALLEL" -n 2 bash -c 'COMMON=($COMMON_LINE); run "$0" "$1"'
# The quantized students (and the labels-only one, quantized to int8 first) scored again with int8
# products (int8 activations, i32 sums; the host's CPU): the test perplexity of the integer model.
for S in $SEEDS; do
  for A in labels int8-kd int4-kd int4-labels; do
    f="$OUT/$A-s$S/best.safetensors"
    [ -f "$f" ] && [ ! -f "$OUT/$A-s$S/int8-products.json" ] && "$BIN" lm eval --checkpoint "$f" --cache "$OUT/cache" --products int8 > "$OUT/$A-s$S/int8-products.json"
  done
done
# The full-precision students (labels only, plain KD) quantized after training (`codistill
# quantize`, per output channel, int8 and int4) and scored on the test file: the post-training
# baseline of the quantized students above.
for S in $SEEDS; do
  for A in labels kd; do
    for Q in 8 4; do
      f="$OUT/$A-s$S/best.safetensors" q="$OUT/ptq-int$Q-$A-s$S"
      [ -f "$f" ] && [ ! -s "$q.json" ] && "$BIN" quantize --checkpoint "$f" --bits "$Q" --out "$q.safetensors" > /dev/null \
        && "$BIN" lm eval --checkpoint "$q.safetensors" --cache "$OUT/cache" > "$q.json"
    done
  done
done
python3 - "$OUT" "$ALL" <<'PY'
import json, os, sys
out, arms = sys.argv[1], sys.argv[2].split()
t = json.load(open(f"{out}/teacher/result.json"))
print(f"teacher (256 wide): best validation {t['best_valid_loss']:.4f}, test perplexity {t['test_ppl']:.1f}")
print(f"{'arm':16s} per seed: best validation / test perplexity")
for arm in arms:
    cells = []
    for d in sorted(p for p in os.listdir(out) if p.startswith(arm + "-s") and p[len(arm) + 2:].isdigit()):
        f = f"{out}/{d}/result.json"
        if os.path.exists(f):
            r = json.load(open(f))
            cell = f"{d[len(arm) + 1:]}: {r['best_valid_loss']:.4f} / {r['test_ppl']:.1f}"
            q = f"{out}/{d}/int8-products.json"
            if os.path.exists(q) and os.path.getsize(q) > 0:
                cell += f" (int8 products {json.load(open(q))['ppl']:.1f})"
            cells.append(cell)
    if cells:
        print(f"{arm:16s} " + "  ".join(cells))
for q in ("int8", "int4"):
    for a in ("labels", "kd"):
        cells = []
        for s in sorted(p[len(f"ptq-{q}-{a}-s"):-5] for p in os.listdir(out) if p.startswith(f"ptq-{q}-{a}-s") and p.endswith(".json")):
            f = f"{out}/ptq-{q}-{a}-s{s}.json"
            if os.path.getsize(f) > 0:
                cells.append(f"{s}: test perplexity {json.load(open(f))['ppl']:.1f}")
        if cells:
            print(f"{a} quantized to {q} after training: " + "  ".join(cells))
PY
