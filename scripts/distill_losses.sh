#!/usr/bin/env bash
# Issue 26's response losses measured on synthetic click logs of one hidden model. On the default
# log (1M rows, one pass) every model size is data-limited (a student of 1-wide embeddings and 4
# hidden units comes within 0.002 of the default model), so the teacher is the default model
# trained on TEACHER_ROWS rows of the same hidden model that the student never sees, and the
# student a narrow model (--emb-dim 4 --mlp 32,16) on its own 1M rows: on labels only, and
# distilled from the teacher with each --distill-loss (the paper's form, lambda 1, from step 0),
# SEEDS each (the seed changes the student's initialisation and shuffling, not the data: the logs
# are written once by `criteo generate`). Prints each run's final validation log-loss and AUC on
# a validation log of the same hidden model (no test split is used). Runs go under OUT.
# Usage: [BIN=...] [SEEDS="1 2"] [TEACHER_ROWS=4000000] scripts/distill_losses.sh OUT
set -euo pipefail
OUT=${1:-runs/distill-losses}
BIN=${BIN:-target/release/codistill}
SEEDS=${SEEDS:-1 2}
# shellcheck source=scripts/click_teacher.sh
source "$(dirname "$0")/click_teacher.sh"
STUDENT=("${COMMON[@]}" --train "$OUT/data/train.tsv" --emb-dim 4 --mlp 32,16)
for S in $SEEDS; do
  r="$OUT/labels-s$S"; [ -f "$r/result.json" ] || "$BIN" criteo train "${STUDENT[@]}" --seed "$S" --out "$r" > "$r.log" 2>&1
  for L in kl reverse-kl js mse; do
    r="$OUT/$L-s$S"
    [ -f "$r/result.json" ] || "$BIN" criteo train "${STUDENT[@]}" --seed "$S" --teacher "$OUT/teacher/checkpoint.safetensors" \
      --burn-in 0 --distill-loss "$L" --out "$r" > "$r.log" 2>&1
  done
done
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
t = json.load(open(f"{out}/teacher/result.json"))
truth = dict(l.split(" = ") for l in open(f"{out}/data/valid.tsv.truth").read().split("\n") if " = " in l)
print(f"teacher (default size, {os.path.getsize(f'{out}/data/teacher.tsv') // 2**20} MiB of rows): validation log-loss {t['valid_log_loss']:.5f} AUC {t['valid_auc']:.4f}; the hidden model's {float(truth['bayes_log_loss']):.5f}")
rows = {}
for d in sorted(glob.glob(f"{out}/*-s*")):
    if not os.path.isdir(d):
        continue
    name, seed = os.path.basename(d).rsplit("-s", 1)
    r = json.load(open(f"{d}/result.json"))
    rows.setdefault(name, []).append((r["valid_log_loss"], r["valid_auc"]))
for name in ["labels", "kl", "reverse-kl", "js", "mse"]:
    if name in rows:
        v = rows[name]
        mean = sum(x for x, _ in v) / len(v)
        print(f"{name:<11} final validation log-loss per seed {' / '.join(f'{x:.5f}' for x, _ in v)} (mean {mean:.5f}), AUC {' / '.join(f'{a:.4f}' for _, a in v)}")
PY
