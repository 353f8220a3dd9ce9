#!/usr/bin/env bash
# Issue 24's regime map for language models on a stream that never repeats (the synthetic Markov
# source, or with FIT=FILE an n-gram source fitted on that text with its VOCAB most frequent words,
# e.g. Brown's train.txt: natural word statistics; TOKENS training tokens, by default 10% more than
# the model at 2B reads, so that no run, and no half of a pair, sees a token twice): per width and seed,
#   a   one model at batch B
#   b   one model at batch 2B (the same steps: twice the compute, as a pair has)
#   cF  a codistilled pair at B each on disjoint halves, burn-in F of the steps (the paper's form),
#       with the forward KL; cF-L the same with --distill-loss L for each L of DIVERGENCES but kl
#   d   the independent pair (the same halves and seeds, distill_lambda 0)
# then the steps each of b, c, d takes to reach a's best validation loss (as a fraction of a's),
# the ensembles, and the gradient noise scale of a at four points of its run (is B at or beyond
# the critical batch?). Prints one table; runs go under OUT.
# Usage: [BIN=...] [DEVICE=cpu|cuda] [WIDTHS="128"] [BATCH=128] [STEPS=600] [TOKENS=...] [FIT=FILE [VOCAB=2000] [ORDER=2]]
#        [SEEDS="1 2"] [BURNINS="0.1 0.4"] [DIVERGENCES="kl"] [LR=0.008] [EVERY=50] scripts/regime_map.sh OUT
set -euo pipefail
OUT=${1:-runs/regime}
BIN=${BIN:-target/release/codistill}
DEVICE=${DEVICE:-cpu}
WIDTHS=${WIDTHS:-128}
BATCH=${BATCH:-128}
STEPS=${STEPS:-600}
TOKENS=${TOKENS:-$((2 * BATCH * 35 * STEPS * 11 / 10))}
SOURCE=()
[ -z "${FIT:-}" ] || SOURCE=(--synthetic-source ngram --synthetic-fit "$FIT" --synthetic-vocab "${VOCAB:-2000}" --synthetic-order "${ORDER:-2}")
SEEDS=${SEEDS:-1 2}
BURNINS=${BURNINS:-0.1 0.4}
DIVERGENCES=${DIVERGENCES:-kl}
LR=${LR:-0.008}
EVERY=${EVERY:-50}
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
EVAL=$((STEPS / 20 > 0 ? STEPS / 20 : 1))
for W in $WIDTHS; do
  for S in $SEEDS; do
    D="$OUT/w$W-s$S"
    mkdir -p "$D"
    COMMON=(--device "$DEVICE" --emb-dim "$W" --hidden "$W" --layers 1 --dropout 0 --bptt 35 --steps "$STEPS" --lr "$LR"
      --eval-every "$EVAL" --eval-tokens 50000 --synthetic-tokens "$TOKENS" "${SOURCE[@]}" --seed "$S" --cache "$OUT/cache" --log-every "$EVAL")
    run() { local name=$1; shift; [ -f "$D/$name/result.json" ] || "$BIN" lm "$@" "${COMMON[@]}" --out "$D/$name" > "$D/$name.log" 2>&1; }
    run a train --batch "$BATCH" --checkpoint-every $((STEPS / 4)) --keep-checkpoints
    run b train --batch $((2 * BATCH))
    for F in $BURNINS; do
      for L in $DIVERGENCES; do
        name=c$F; [ "$L" = kl ] || name=c$F-$L
        run "$name" codistill --batch "$BATCH" --burn-in "$(python3 -c "print(int($F * $STEPS))")" --exchange-every "$EVERY" --distill-loss "$L"
      done
    done
    run d codistill --batch "$BATCH" --burn-in "$(python3 -c "print(int(${BURNINS%% *} * $STEPS))")" --exchange-every "$EVERY" --distill-lambda 0
    [ -f "$D/noise.jsonl" ] || "$BIN" lm noise-scale --checkpoint "$(ls "$D"/a/checkpoint-step*.safetensors | sort -V | paste -sd, -)" --batches 16 --device "$DEVICE" > "$D/noise.jsonl"
  done
done
python3 - "$OUT" "$BATCH" <<'PY'
import glob, json, os, sys
out, batch = sys.argv[1], int(sys.argv[2])
def curves(run):
    c = {}
    for line in open(f"{run}/metrics.jsonl"):
        e = json.loads(line)
        if e["event"] == "valid":
            c.setdefault(e.get("model", 0), []).append((e["step"], e["loss"]))
    return c
print(f"batch B = {batch} sequences; steps to reach a's best as a fraction of a's steps to its best ('-': never)")
print("width/seed   a's best  then per run: steps to it per model, final losses, ensemble")
for d in sorted(glob.glob(f"{out}/w*-s*")):
    a = curves(f"{d}/a")[0]
    best_step, best = min(a, key=lambda x: x[1])
    row = [f"{os.path.basename(d):<12}", f"{best:8.4f}"]
    for run in ["b"] + sorted(os.path.basename(p) for p in glob.glob(f"{d}/c*") if os.path.isdir(p)) + ["d"]:
        c = curves(f"{d}/{run}")
        hits = []
        for m, pts in sorted(c.items()):
            hit = next((s for s, l in pts if l <= best), None)
            hits.append(f"{hit / best_step:.2f}" if hit else "-")
        ens = json.load(open(f"{d}/{run}/result.json")).get("ensemble_valid_loss")
        finals = "/".join(f"{pts[-1][1]:.4f}" for _, pts in sorted(c.items()))
        row.append(f"{run}: {'/'.join(hits)} final {finals}" + (f" ens {ens:.4f}" if isinstance(ens, float) else ""))
    print("  ".join(row))
    noise = [json.loads(l) for l in open(f"{d}/noise.jsonl")]
    floor = json.load(open(f"{d}/a/result.json")).get("valid_entropy_floor")
    print(" " * 14 + "a's B_simple over training: " + ", ".join(f"step {n['step']}: {n['b_simple_batches']:.1f} batches" for n in noise)
          + (f"; the source's entropy on this validation split (the floor): {floor:.4f}" if isinstance(floor, float) else ""))
PY
