#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the modules where a silent bug costs most: the distillation
# loss, the metrics (log-loss, AUC, calibration, churn), the ensemble, checkpoints, the exchange and
# the codistillation schedule, the optimizers, the training loop's helpers. Each group names its files, a regex of the functions
# to mutate and the test binaries that should kill the mutants, so that a group finishes in minutes
# on a 2-core machine (a whole-crate run would take many hours: not in CI).
#
#   bash scripts/mutants.sh [OUT] [GROUP ...]     # default OUT mutants.out, every group
#
# Needs `cargo install cargo-mutants --version 27.1.0 --locked`. Mutants run in a copy of the tree
# (the first build of the copy takes a few minutes). Per group, OUT/GROUP/mutants.out/ holds
# cargo-mutants' results: missed.txt lists the surviving mutants (each either a test to write or an
# equivalent mutant to name in the note), caught.txt, unviable.txt, timeout.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-mutants.out}
shift || true
command -v cargo-mutants >/dev/null || { echo "cargo-mutants is not installed: cargo install cargo-mutants --version 27.1.0 --locked" >&2; exit 2; }

# name | file | function regex | cargo test arguments
GROUPS_ALL=(
  "checkpoint|src/checkpoint.rs|.*|--lib --test lm_trainer"
  "metrics|src/tasks/ctr/score.rs|log_loss|auc|calibration|churn|--lib --test criteo_trainer"
  "ensemble|src/tasks/lm/eval.rs|evaluate_ensemble|token_log_probs|--test distill_offline"
  "loop|src/train/run.rs|due|scaled|event|teacher_output|save|load_weights|--test one_batch --test codistill --test criteo_trainer --test lm_trainer"
  "softmax_kl|src/ops/softmax_kl/mod.rs|softmax_kl_cpu_on|row_loss|softmax_row|--lib --test ops --test one_batch"
  "softmax_kl_entry|src/ops/softmax_kl/mod.rs|softmax_kl|--lib --test ops --test one_batch"
  "optim|src/ops/optim/mod.rs|.*|--lib --test ops"
  "schedule|src/distill/mod.rs|distill_at|publish_after|observe|end_step|mix_at|from_options|mean_staleness|--lib"
  "exchange|src/distill/exchange.rs|latest|wait_for_peers|load_snapshot|new|--lib --test codistill"
)
want=("$@")
mkdir -p "$OUT"
for g in "${GROUPS_ALL[@]}"; do
  name=${g%%|*}; rest=${g#*|}; file=${rest%%|*}; rest=${rest#*|}
  args=${rest##*|}; re=${rest%|*}
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " =~ " $name " ]]; then continue; fi
  echo "== $name: $file ($re) with cargo test --profile mutants $args"
  # shellcheck disable=SC2086
  cargo mutants --no-shuffle --profile mutants -f "$file" --re "(in |::)($re)$" --output "$OUT/$name" --timeout-multiplier 3 \
    -- $args || true   # cargo-mutants exits 2 when mutants survive: they are the result
  for k in caught missed timeout unviable; do
    printf '%s %s: %s\n' "$name" "$k" "$(wc -l < "$OUT/$name/mutants.out/$k.txt" 2>/dev/null || echo 0)"
  done
done
