#!/usr/bin/env bash
# The overlap measurement of issue 6 on the CPU: what the checkpoint exchange adds to the compute
# path's time per step. Runs PAIRS interleaved pairs of the same codistillation on a synthetic
# Criteo-format log: "co50" exchanges every 50 steps; "frozen" publishes once (teachers frozen at
# step 50), so it makes the same teacher forward passes without the exchange. Each run's compute
# time per step is (time in the models' steps + time in exchange calls) / steps, evaluation
# excluded; the table gives each pair's ratio and the median over pairs (run-to-run noise on a
# shared machine is several percent, so one pair says little). Then the same pairs scored within
# each run (scripts/overlap_steps.py): the steps an exchange can touch against their neighbours in
# the same window, which does resolve a fraction of a percent.
# Usage: scripts/overlap_pairs.sh OUT [PAIRS] [ROWS]   (data is generated under OUT if absent)
# Environment: BIN (target/release/codistill), DEVICE (cpu; cuda on the GPU machine, where
# scripts/gpu_remote.sh runs it as its last stage).
set -euo pipefail
OUT=${1:?usage: scripts/overlap_pairs.sh OUT [PAIRS] [ROWS]}
PAIRS=${2:-8}
ROWS=${3:-1000000}
BIN=${BIN:-target/release/codistill}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
[ -f "$OUT/train.tsv" ] || "$BIN" criteo generate --rows "$ROWS" --out "$OUT/train.tsv" --seed 11
[ -f "$OUT/valid.tsv" ] || "$BIN" criteo generate --rows $((ROWS / 10)) --out "$OUT/valid.tsv" --seed 12
COMMON=(--train "$OUT/train.tsv" --valid "$OUT/valid.tsv" --cache "$OUT/cache" --device "${DEVICE:-cpu}" --eval-every 1000
        --burn-in 500 --lr 0.004 --models 2 --epochs 2 --exchange-every 50 --distill-weight 0.7 --step-times true)
for i in $(seq 1 "$PAIRS"); do
    # Alternate which of the two goes first, so a drift in machine speed does not favour one.
    if (( i % 2 )); then order="co50 frozen"; else order="frozen co50"; fi
    for kind in $order; do
        extra=(); [ "$kind" = frozen ] && extra=(--max-publishes 1)
        "$BIN" criteo train "${COMMON[@]}" "${extra[@]}" --out "$OUT/$kind-$i" > "$OUT/$kind-$i.log" 2>&1
    done
done
python3 - "$OUT" "$PAIRS" <<'PY'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def per_step(name):
    r = json.load(open(f"{out}/{name}/result.json"))
    return r["train_s"], r["exchange_wait_s"], (r["train_s"] + r["exchange_wait_s"]) / r["steps"]
print(f"{'pair':>4} {'co50 ms/step':>12} {'exchange s':>10} {'frozen ms/step':>14} {'exchange s':>10} {'co50/frozen':>11}")
ratios, shares = [], []
for i in range(1, pairs + 1):
    ct, ce, cp = per_step(f"co50-{i}")
    ft, fe, fp = per_step(f"frozen-{i}")
    ratios.append(cp / fp - 1)
    shares.append(ce / ct - fe / ft)
    print(f"{i:>4} {1e3 * cp:>12.3f} {ce:>10.3f} {1e3 * fp:>14.3f} {fe:>10.3f} {100 * ratios[-1]:>+10.2f}%")
print(f"median over {pairs} pairs: {100 * statistics.median(ratios):+.2f}% time per step "
      f"(mean {100 * statistics.mean(ratios):+.2f}%, min {100 * min(ratios):+.2f}%, max {100 * max(ratios):+.2f}%)")
print(f"exchange calls on the compute path, co50 minus frozen, share of compute: median {100 * statistics.median(shares):+.3f}%")
PY
dirs=()
for i in $(seq 1 "$PAIRS"); do dirs+=("$OUT/co50-$i" "$OUT/frozen-$i"); done
python3 "$(dirname "$0")/overlap_steps.py" 50 550 1000 "${dirs[@]}"
