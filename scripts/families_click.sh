#!/usr/bin/env bash
# The distillation families of issue 26 on the synthetic click log, at one student size and one
# pass of its 1M rows each: the data and teacher of scripts/click_teacher.sh (shared with
# quantized_distill.sh and distill_losses.sh on the same OUT), a narrow student (--emb-dim 4 --mlp 32,16), SEEDS each.
# Arms: labels only; plain KD (the paper's form, lambda 1, from step 0); KD with a cosine hint
# (weight 1); KD with the similarity-preserving relation (weight 10) and the RKD distance (weight
# 1), and with RKD's distance plus twice its angle (weight 1); KD with the weight fading linearly to 0; two teachers (the teacher and the labels-only
# student) averaged, weighted 0.8/0.2, and weighted by confidence; a born-again second generation
# of the labels-only student (same size, distilled from it); KD started from the teacher's layers
# (--init-from); KD with a discriminator (adversarial weight 0.1) on the logit, and on the probability. No weight was tuned. Prints each arm's final validation log-loss and AUC.
# Usage: [BIN=...] [SEEDS="1 2"] scripts/families_click.sh OUT
set -euo pipefail
OUT=${1:-runs/quantized-distill}
BIN=${BIN:-target/release/codistill}
SEEDS=${SEEDS:-1 2}
# shellcheck source=scripts/click_teacher.sh
source "$(dirname "$0")/click_teacher.sh"
COMMON+=(--train "$OUT/data/train.tsv" --emb-dim 4 --mlp 32,16)
for S in $SEEDS; do
  run() { local r="$OUT/fam-$1-s$S"; shift; [ -f "$r/result.json" ] || "$BIN" criteo train "${COMMON[@]}" --seed "$S" "$@" --out "$r" > "$r.log" 2>&1; }
  run labels
  L="$OUT/fam-labels-s$S/checkpoint.safetensors"
  run kd --teacher "$T" --burn-in 0
  run cosine-hint --teacher "$T" --burn-in 0 --hint-weight 1 --hint-loss cosine
  run sp --teacher "$T" --burn-in 0 --relation-weight 10 --relation-loss sp
  run rkd --teacher "$T" --burn-in 0 --relation-weight 1 --relation-loss rkd
  run rkd-full --teacher "$T" --burn-in 0 --relation-weight 1 --relation-loss rkd-full
  run fading --teacher "$T" --burn-in 0 --distill-schedule linear --distill-final 0
  run two-weighted --teacher "$T,$L" --burn-in 0 --teacher-weights 0.8,0.2
  run two-confidence --teacher "$T,$L" --burn-in 0 --teacher-confidence true
  run born-again --teacher "$L" --burn-in 0
  run init-from --teacher "$T" --burn-in 0 --init-from "$T"
  run adversarial --teacher "$T" --burn-in 0 --adversarial-weight 0.1
  run adversarial-probs --teacher "$T" --burn-in 0 --adversarial-weight 0.1 --adversarial-input probs
done
python3 - "$OUT" <<'PY'
import glob, json, re, sys
out = sys.argv[1]
arms = {}
for d in sorted(glob.glob(f"{out}/fam-*-s*")):
    m = re.match(r".*/fam-(.*)-s(\d+)$", d)
    if not m or not glob.glob(f"{d}/result.json"):
        continue
    r = json.load(open(f"{d}/result.json"))
    arms.setdefault(m.group(1), []).append((int(m.group(2)), r["valid_log_loss"], r["valid_auc"]))
for arm, rows in arms.items():
    cells = "  ".join(f"s{s}: {l:.5f} / {a:.4f}" for s, l, a in sorted(rows))
    print(f"{arm:16s} {cells}")
PY
