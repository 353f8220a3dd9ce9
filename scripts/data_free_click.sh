#!/usr/bin/env bash
# Data-free distillation of a click model (issue 27): FastDFKD and the baselines of its ablation
# on the synthetic click log, against a student on the real rows. The data and teacher of
# scripts/click_teacher.sh (its checkpoint records the feature statistics the synthesis needs), a
# narrow student (--emb-dim 4 --mlp 32,16), the steps of one pass over the 1M training rows
# (1954), a synthesis of 512 rows every 20 student steps (98 batches, 50,176 rows), SEEDS each.
# Arms: labels (real rows, no teacher); kd (real rows, the teacher, lambda 1 from step 0);
# marginals (inversion with k = 1: rows drawn from the recorded marginals, not optimised); fast at
# k = 2, 5, 10; sequential and generator at k = 5; inversion at k = 5, 20 and 50. No weight was
# tuned on these rows. Prints each arm's validation log-loss, AUC, calibration and synthesis
# seconds per 1,000 rows. CLUSTERS=K (on a fresh OUT) draws the logs with correlated fields.
# Usage: [BIN=...] [SEEDS="1"] [ARMS="..."] [CLUSTERS=K] scripts/data_free_click.sh OUT
set -euo pipefail
OUT=${1:-runs/data-free-click}
BIN=${BIN:-target/release/codistill}
SEEDS=${SEEDS:-1}
ARMS=${ARMS:-labels kd marginals fast2 fast5 fast10 sequential5 generator5 inversion5 inversion20 inversion50}
# shellcheck source=scripts/click_teacher.sh
source "$(dirname "$0")/click_teacher.sh"
COMMON+=(--train "$OUT/data/train.tsv" --emb-dim 4 --mlp 32,16)
FREE=(--teacher "$T" --burn-in 0 --steps 1954 --dfkd-every 20)
for S in $SEEDS; do
  run() { local r="$OUT/df-$1-s$S"; shift; [ -f "$r/result.json" ] || "$BIN" criteo train "${COMMON[@]}" --seed "$S" "$@" --out "$r" > "$r.log" 2>&1; }
  for A in $ARMS; do
    case $A in
      labels) run labels ;;
      kd) run kd --teacher "$T" --burn-in 0 ;;
      marginals) run marginals "${FREE[@]}" --data-free inversion --dfkd-steps 1 ;;
      fast*) run "$A" "${FREE[@]}" --data-free fast --dfkd-steps "${A#fast}" ;;
      sequential*) run "$A" "${FREE[@]}" --data-free sequential --dfkd-steps "${A#sequential}" ;;
      generator*) run "$A" "${FREE[@]}" --data-free generator --dfkd-steps "${A#generator}" ;;
      inversion*) run "$A" "${FREE[@]}" --data-free inversion --dfkd-steps "${A#inversion}" ;;
      *) echo "unknown arm $A" >&2; exit 2 ;;
    esac
  done
done
python3 - "$OUT" <<'PY'
import glob, json, re, sys
out = sys.argv[1]
t = json.load(open(f"{out}/teacher/result.json"))
print(f"{'teacher':14s} {t['valid_log_loss']:.5f} / {t['valid_auc']:.4f} / {t['valid_calibration']:.3f}")
for d in sorted(glob.glob(f"{out}/df-*-s*")):
    m = re.match(r".*/df-(.*)-s(\d+)$", d)
    if not m or not glob.glob(f"{d}/result.json"):
        continue
    r = json.load(open(f"{d}/result.json"))
    synth = f"  {r['synthesis_s_per_1000_rows']:.3f} s/1000 rows, {r['synthesis_s']:.0f} s" if "synthesis_s" in r else ""
    print(f"{m.group(1):14s} s{m.group(2)}: {r['valid_log_loss']:.5f} / {r['valid_auc']:.4f} / {r['valid_calibration']:.3f}{synth}")
PY
