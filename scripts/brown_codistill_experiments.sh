#!/usr/bin/env bash
# Codistillation experiments on the Brown corpus (issue 6), on the CPU, with the LM trainer's data
# rules (Bengio et al.'s split and vocabulary: words seen 3 times or fewer become <unk>):
#   exp/baseline   one model on the whole training stream          } one `lm experiment` (plot,
#   exp/codistill  two models on disjoint halves, exchange every 50 } curves, report)
#   co1000         the same two models exchanging every 1000 steps (staleness)
#   ls             one model on the whole stream with label smoothing 0.1 (the control)
# Every run takes the same number of steps per model. Prints one table; runs go under $OUT.
# Usage: scripts/brown_codistill_experiments.sh [OUT] [DATA] [STEPS]
# Environment: EMB (256), HIDDEN (256), BATCH (32), LR (0.002), DROPOUT (0.25), WEIGHT (0.5), BURN_IN (200), SHARD_BLOCK (0:
# contiguous halves; e.g. 2000 for interleaved halves that sample every genre). EXPERIMENTS.md's
# first Brown table is the defaults; its later runs set BATCH=16 LR=0.001 and the rest as stated.
# DEVICE (cpu; cuda on the GPU machine, scripts/gpu_remote.sh stage `brown`), EVAL_EVERY (100),
# RUNS (exp,co1000,ls: which of the three runs to make).
set -euo pipefail
OUT=${1:-runs/brown-experiments}
DATA=${2:-../shared/data/brown}
STEPS=${3:-1500}
BIN=${BIN:-target/release/codistill}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
RUNS=,${RUNS:-exp,co1000,ls},
COMMON=(--data "$DATA" --cache "$OUT/cache" --device "${DEVICE:-cpu}" --emb-dim "${EMB:-256}" --hidden "${HIDDEN:-256}" --layers 1 --dropout "${DROPOUT:-0.25}"
        --batch "${BATCH:-32}" --bptt 35 --optimizer adam --lr "${LR:-0.002}" --clip 5 --steps "$STEPS" --eval-every "${EVAL_EVERY:-100}"
        --eval-tokens 30000 --log-every 50 --checkpoint-every 500 --burn-in "${BURN_IN:-200}"
        --distill-weight "${WEIGHT:-0.5}" --temperature 1 --shard-block "${SHARD_BLOCK:-0}")
[[ $RUNS != *,exp,* ]] || [ -f "$OUT/exp/report.txt" ] || "$BIN" lm experiment "${COMMON[@]}" --models 2 --exchange-every 50 --out "$OUT/exp" > "$OUT/exp.log" 2>&1
[[ $RUNS != *,co1000,* ]] || [ -f "$OUT/co1000/result.json" ] || "$BIN" lm codistill "${COMMON[@]}" --models 2 --exchange-every 1000 --out "$OUT/co1000" > "$OUT/co1000.log" 2>&1
[[ $RUNS != *,ls,* ]] || [ -f "$OUT/ls/result.json" ] || "$BIN" lm train "${COMMON[@]}" --label-smoothing 0.1 --out "$OUT/ls" > "$OUT/ls.log" 2>&1
python3 - "$OUT" <<'PY'
import json, math, sys
out = sys.argv[1]
def curve(path):
    c = {}
    for line in open(path):
        e = json.loads(line)
        if e["event"] == "valid":
            c.setdefault(e.get("model", 0), []).append((e["step"], e["loss"]))
    return c
def tests(path):
    return {e.get("model", 0): e["loss"] for e in map(json.loads, open(path)) if e["event"] == "test"}
base = curve(f"{out}/exp/baseline/metrics.jsonl")[0]
best_step, best = min(base, key=lambda x: x[1])
print(f"baseline (1 model, whole stream): best validation {best:.4f} nats (ppl {math.exp(best):.1f}) at step {best_step} of {base[-1][0]}")
print(f"{'run':<22} {'model':>5} {'final':>8} {'best':>8} {'ppl':>7} {'test ppl':>9} {'reaches baseline best at':>25} {'ratio':>6}")
runs = [("baseline", "exp/baseline"), ("codistill every 50", "exp/codistill"), ("codistill every 1000", "co1000"), ("label smoothing 0.1", "ls")]
import os
for name, d in runs:
    if not os.path.exists(f"{out}/{d}/result.json"):
        continue
    t = tests(f"{out}/{d}/metrics.jsonl")
    for m, c in sorted(curve(f"{out}/{d}/metrics.jsonl").items()):
        hit = next((s for s, l in c if l <= best), None)
        lo = min(l for _, l in c)
        tp = f"{math.exp(t[m]):.1f}" if m in t else "-"
        print(f"{name:<22} {m:>5} {c[-1][1]:>8.4f} {lo:>8.4f} {math.exp(lo):>7.1f} {tp:>9} {str(hit) if hit else 'never':>25} {f'{hit / best_step:.2f}' if hit else '-':>6}")
    r = json.load(open(f"{out}/{d}/result.json"))
    e = r.get("ensemble_valid_loss")
    if isinstance(e, float) and not math.isnan(e):
        print(f"{name:<22} {'ens':>5} {e:>8.4f} {'':>8} {math.exp(e):>7.1f}")
    print(f"{name:<22} {'':>5} {r['tokens_per_s']:.0f} tokens/s per process, exchange wait {r['exchange_wait_s']:.2f} s, {r['seconds']:.0f} s in all")
PY
