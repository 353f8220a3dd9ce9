#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with device-bin/ carried (scripts/gpu_build.sh),
# as ONE device call under a time budget. A task drawn for a GPU gets 15 minutes of device time in
# all, the machine's start included, and a call brings back at most 8 files from $OUT; so this
# script runs its stages in order of what the open issues owe, gives each a cap, skips what no
# longer fits in BUDGET seconds, and keeps exactly two files in $OUT, rewritten after every stage
# (so a call cut off at its limit still returns everything done before):
#   $OUT/summary.txt  each stage's PASS / FAIL / TIMEOUT / SKIP with its seconds, the failures'
#                     key lines, and the tables (benchmark ratios, end-to-end, overlap);
#   $OUT/logs.tgz     every stage's whole log and the raw JSON.
# Stages (STAGES, comma-separated, in this order by default):
#   gate      the matmul kernels, each alone in its own process (a trapped kernel ends its
#             process's CUDA context): mma.sync with and without split-K, the transposes,
#             wgmma-tma (K-major, then MN-major operands), the persistent wgmma-tma (issue 28,
#             opt-in: benchmarked where it passed, never the later stages' kernel); later stages
#             use what passed (see below);
#   gpu       the GPU kernel suite (tests/gpu.rs, REQUIRE_GPU=1: fails rather than skips);
#   training  the op suites on the GPU (tests/ops.rs and tests/gradcheck.rs, their cuda legs required),
#             then the GPU training suite (tests/gpu_training.rs);
#   bench     the kernel table (gpu-bench), then cuBLAS/PyTorch on the same shapes and the ratios;
#   e2e       end-to-end LM and Criteo training steps against the same models in PyTorch: fp32/TF32,
#             bf16 autocast and bf16 autocast compiled (issue 28's peers; the compiles take part of
#             the 300 s cap, not sized on a GPU), and codistill with the persistent LSTM where its
#             gate passed in the same call;
#   memcheck  compute-sanitizer memcheck over the GPU suite, the ops' cuda legs and training steps;
#   ncu       Nsight Compute sections for one launch of each 4096^3 matmul and the softmax-KL;
#   criterion the criterion gpu_* groups of benches/kernels.rs;
#   persistent  issue 28's persistent LSTM layer (CODISTILL_LSTM=persistent, not the default): its
#             gate alone (tests/gpu.rs lstm_persistent_matches_the_step_layer: against the CPU layer
#             and the step layer, five shapes up to the 2 x 1024 LM's), and only if it passed, the
#             LSTM rows of gpu-bench (step and persistent layers, forward and forward+backward) beside
#             cuDNN bf16 (scripts/gpu_compare.py); not sized on a GPU (caps 90 s and 150 + 150 s);
#             STAGES=persistent (after gate: STAGES=gate,persistent).
#   lab       the kernel lab (dev/README.md): the cp.async wgmma matmul's layout probe, its f64
#             validation and its times beside the library's kernels (device-bin/lab-gemm-wgmma-cpasync);
#             not in the default order: STAGES=lab.
#   overlap   issue 6's overlap measurement on the GPU (scripts/overlap_pairs.sh, 3 pairs);
#   brown     issue 6's Brown bar on the GPU: `lm experiment` (baseline, and the pair on halves) for
#             BROWN_STEPS (10,000: 14 passes over the corpus, which a CPU session cannot afford;
#             dropout BROWN_DROPOUT, 0, so that the baseline overfits), then the table of
#             scripts/brown_codistill_experiments.sh; needs device-bin/brown (scripts/gpu_build.sh).
#             Last in the default order: on a session whose kernel stages are done, STAGES=brown.
#   regime    issue 24's regime map on the GPU (scripts/regime_map.sh): width REGIME_WIDTHS (512),
#             batch 256 sequences, 1,000 steps on a 20M-token never-repeating stream, seeds 1 and 2:
#             one model at B and 2B, codistilled pairs at burn-in 10% and 40%, the independent pair,
#             the noise scale over training. Sized (an estimate from the H100 LM rates, not measured
#             on an H200) to fit its 480 s cap; not in the default order: STAGES=regime.
#   regime_ngram  the same map on the n-gram stream fitted on Brown (FIT=device-bin/brown/train.txt,
#             its 2,000 most frequent words; scripts/regime_map.sh), width 512, batch 256, 1,000
#             steps, seeds 1 and 2; sized by estimate (as regime) to 480 s; STAGES=regime_ngram.
#   families  issue 26's Brown table (scripts/families_brown.sh): the 256-wide teacher, then 22 arms
#             x 2 seeds of the 64-wide student, 3,000 steps each, FAMILIES_PARALLEL (8) runs at a
#             time on the one GPU; not sized on a GPU (an estimate of 10-20 s a run from the H100's
#             LSTM rates; cap 480 s, and a rerun resumes where it stopped: finished runs are kept
#             only while the machine is warm); STAGES=families.
#   datafree  issue 27's data-free click distillation on the GPU (scripts/data_free_click.sh with
#             DEVICE=cuda, a teacher on TEACHER_ROWS 1M rows, arms marginals, fast at k = 2 and 5,
#             inversion at k = 5 and 20): the synthesis seconds per 1,000 rows and the students'
#             log-loss. The softmax, the straight-through rounding and the noise run on the host;
#             not sized on a GPU yet (cap 400 s); not in the default order: STAGES=datafree.
# Usage there: bash scripts/gpu_remote.sh   (device call: carry ["device-bin"], timeout_s 600;
# BUDGET defaults to 540 s, which leaves the call's limit room to pack and return).
set -uo pipefail
OUT=${OUT:-gpu-out}
BUDGET=${BUDGET:-540}
STAGES=,${STAGES:-gate,gpu,training,bench,e2e,memcheck,ncu,criterion,overlap,brown},
mkdir -p "$OUT"
LOGS=$(mktemp -d /tmp/gpu-logs.XXXXXX)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export REQUIRE_GPU=1
T0=$SECONDS
status=0

note() { echo "$*" | tee -a "$SUMMARY"; }
# Attaches a file to the summary (and to the call's output).
attach() { [ -f "$1" ] && tee -a "$SUMMARY" <"$1"; }
pack() { tar czf "$OUT/logs.tgz.part" -C "$LOGS" . && mv -f "$OUT/logs.tgz.part" "$OUT/logs.tgz"; }
want() { [[ $STAGES == *",$1,"* ]]; }
# step NAME CAP COMMAND: COMMAND (a shell string) with its output in $LOGS/NAME.log, for at most CAP
# seconds and never past the budget. Returns the command's status; 2 when skipped.
step() {
  local name=$1 cap=$2 cmd=$3
  local left=$((BUDGET - (SECONDS - T0) - 10))
  if [ "$left" -lt 20 ]; then note "SKIP    $name (budget: $((left + 10)) s left of $BUDGET)"; return 2; fi
  [ "$cap" -gt "$left" ] && cap=$left
  local t=$SECONDS rc
  timeout -k 5 "$cap" bash -c "$cmd" >"$LOGS/$name.log" 2>&1
  rc=$?
  local dt=$((SECONDS - t))
  if [ $rc -eq 0 ]; then
    note "PASS    $name (${dt} s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "TIMEOUT $name after ${dt} s (cap ${cap} s)"; status=1
  else
    note "FAIL    $name (exit $rc, ${dt} s)"; status=1
  fi
  pack
  return $rc
}
# show PATTERN NAME: the lines of NAME's log that match, into the summary.
show() { [ -f "$LOGS/$2.log" ] && grep -E "$1" "$LOGS/$2.log" | tee -a "$SUMMARY"; }
# The lines of a failed test log worth reading first.
why() { [ -f "$LOGS/$1.log" ] && grep -E 'panicked|rel err|probe|error|Error|FAILED|failures:' "$LOGS/$1.log" | head -${2:-8} | tee -a "$SUMMARY"; }

note "== $(date -u +%FT%TZ) budget ${BUDGET} s, stages ${STAGES:1:-1}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tee -a "$SUMMARY"

# The gate. The default kernel (`auto`) is wgmma-tma for large products on Hopper, mma.sync for the
# rest; the later stages keep it where wgmma-tma and the transposes passed, else run on mma
# (verified on an H100 since 2026-11-26); with split-K off if it failed, and with the TMA kernel's MN-major
# operands off (CODISTILL_WGMMA_MN=0: operands transposed first, as before) if their probe failed;
# the bench times each kernel that passed: one broken kernel does not cost the session's other
# measurements.
bench_kernels=mma
gate_tests=()
if want gate; then
  note "== gate"
  gate() {  # TEST LABEL [ENV]
    gate_tests+=(--skip "$1")
    step "gate-$2" 60 "${3:-} device-bin/tests/gpu --test-threads=1 --exact $1" || { why "gate-$2" 8; return 1; }
    # A filter that matches no test passes with 0 tests run: that is no pass.
    grep -q 'test result: ok. 1 passed' "$LOGS/gate-$2.log" || { note "FAIL    gate-$2: the test $1 did not run"; status=1; return 1; }
  }
  # Each kernel: the layout probe first (exact integer products that say which element went
  # where, the report to read if it fails), then random operands at every orientation and size.
  gate gemm_bf16_mma_sync_layout_probe mma-probe
  gate gemm_bf16_mma_sync_matches_f64_reference mma-no-split-k CODISTILL_SPLIT_K=0
  gate gemm_bf16_mma_sync_matches_f64_reference mma-split-k || export CODISTILL_SPLIT_K=0
  gate transposes_match_cpu transposes; t_ok=$?
  gate gemm_bf16_wgmma_tma_layout_probe wgmma-tma-probe \
    && { gate gemm_bf16_wgmma_tma_mn_major_layout_probe wgmma-tma-mn-probe || export CODISTILL_WGMMA_MN=0; } \
    && gate gemm_bf16_wgmma_tma_matches_f64_reference wgmma-tma; tma_ok=$?
  if [ $t_ok -eq 0 ] && [ $tma_ok -eq 0 ]; then bench_kernels=$bench_kernels,wgmma-tma; skip=
  else export CODISTILL_MATMUL_KERNEL=mma; skip=wgmma-tma; fi
  # The persistent TMA kernel (issue 28, opt-in; never the later stages' kernel): timed only where
  # its probes and reference test passed; a failure here is reported and leaves the rest as is.
  if [ $t_ok -eq 0 ] && gate gemm_bf16_wgmma_tma_persistent_layout_probe wgmma-tma-persistent-probe \
    && gate gemm_bf16_wgmma_tma_persistent_matches_f64_reference wgmma-tma-persistent; then
    bench_kernels=$bench_kernels,wgmma-tma-persistent
  else skip=${skip:+$skip,}wgmma-tma-persistent; fi
  # The GPU suite leaves out the kernel that failed here (tests/gpu.rs, skipped()).
  export CODISTILL_TEST_SKIP_KERNELS=$skip
fi
export CODISTILL_BENCH_MATMUL=$bench_kernels
note "later stages: CODISTILL_MATMUL_KERNEL=${CODISTILL_MATMUL_KERNEL:-auto} CODISTILL_SPLIT_K=${CODISTILL_SPLIT_K:-1} CODISTILL_WGMMA_MN=${CODISTILL_WGMMA_MN:-1}; benchmarked matmul kernels: $bench_kernels; left out of the suite: ${CODISTILL_TEST_SKIP_KERNELS:-none}"

persistent_ok=0
if want persistent; then
  note "== persistent LSTM layer (issue 28): gate, then the layer against the step layer and cuDNN"
  if step persistent-gate 90 "device-bin/tests/gpu --test-threads=1 --exact lstm_persistent_matches_the_step_layer --nocapture" \
    && grep -q 'test result: ok. 1 passed' "$LOGS/persistent-gate.log"; then
    grep -E "^T[0-9]+ B" "$LOGS/persistent-gate.log" | tee -a "$SUMMARY"
    step persistent-bench 150 "CODISTILL_BENCH_ONLY=lstm device-bin/gpu-bench --json $LOGS/persistent.jsonl" || why persistent-bench 10
    grep -E "^lstm layer|persistent lstm" "$LOGS/persistent-bench.log" | tee -a "$SUMMARY"
    [ -s "$LOGS/persistent.jsonl" ] && step persistent-compare 150 "PYTHONUNBUFFERED=1 python3 scripts/gpu_compare.py $LOGS/persistent.jsonl" \
      && grep -E "^lstm layer|^ +[0-9.]+ +[0-9.]+ TF/s" "$LOGS/persistent-compare.log" | tee -a "$SUMMARY"
  else
    note "FAIL    persistent-gate: the persistent layer is not timed"; why persistent-gate 20; status=1
  fi
  grep -q 'test result: ok. 1 passed' "$LOGS/persistent-gate.log" 2>/dev/null && persistent_ok=1
fi
# The suites below test the persistent layer only where its own gate passed in this call (a trap in
# it would end their process's CUDA context and fail every test after it).
[ "$persistent_ok" = 1 ] || export CODISTILL_TEST_SKIP_KERNELS=${CODISTILL_TEST_SKIP_KERNELS:+$CODISTILL_TEST_SKIP_KERNELS,}lstm-persistent
if want gpu; then
  note "== GPU kernel suite (but the tests the gate ran)"
  step gpu 120 "device-bin/tests/gpu --test-threads=1 ${gate_tests[*]}" || why gpu 20
  show '^test result' gpu
fi
if want training; then
  note "== op suites on the GPU (one body per device), gradient checks, GPU training suite"
  step ops 90 "REQUIRE_GPU=1 device-bin/tests/ops --test-threads=1" || why ops 20
  show '^test result' ops
  step gradcheck 60 "REQUIRE_GPU=1 device-bin/tests/gradcheck --test-threads=1" || why gradcheck 10
  step training 150 "device-bin/tests/gpu_training --test-threads=1" || why training 20
  show '^test result' training
fi
if want bench; then
  note "== kernels against cuBLAS and PyTorch"
  step bench 150 "device-bin/gpu-bench --json $LOGS/ours.jsonl" || why bench 10
  show MISMATCH bench
  if [ -s "$LOGS/ours.jsonl" ]; then
    step compare 150 "PYTHONUNBUFFERED=1 python3 scripts/gpu_compare.py $LOGS/ours.jsonl $LOGS/torch.json"
    attach "$LOGS/compare.log"
  fi
fi
if want e2e; then
  note "== end-to-end training steps against PyTorch (GPU)"
  # The runs' folders (checkpoints of the 2 x 1024 LM: hundreds of MB) stay out of the logs.
  step e2e 300 "DEVICE=cuda PERSISTENT=$persistent_ok PYTHONUNBUFFERED=1 python3 scripts/e2e_compare.py device-bin/codistill /tmp/e2e-runs"
  attach "$LOGS/e2e.log"
fi
if want memcheck; then
  note "== compute-sanitizer memcheck"
  # Products up to 2^22 multiply-adds (every odd and tile-edge size; the large ones would take
  # minutes under the sanitizer, and their indexing is the same).
  step memcheck-gpu 150 "CODISTILL_TEST_MAX_MNK=4194304 compute-sanitizer --tool memcheck --error-exitcode 99 device-bin/tests/gpu --test-threads=1" || why memcheck-gpu 20
  step memcheck-ops 120 "compute-sanitizer --tool memcheck --error-exitcode 99 device-bin/tests/ops --test-threads=1 cuda --skip trainer_shapes" || why memcheck-ops 20
  step memcheck-training 120 "compute-sanitizer --tool memcheck --error-exitcode 99 device-bin/tests/gpu_training \
    --test-threads=1 a_language_model a_click_model directory_exchange" || why memcheck-training 20
  cat "$LOGS"/memcheck-*.log 2>/dev/null | grep -E 'ERROR SUMMARY' | tee -a "$SUMMARY"
fi
if want ncu; then
  note "== Nsight Compute: one launch each of the 4096^3 bf16 matmuls and the 4096x32768 softmax-KL"
  for pair in "gemm:gemm_bf16_nn" "gemm:gemm_wgmma_tma" "softmax:softmax_kl_k1"; do
    group=${pair%%:*}; kernel=${pair##*:}
    case $kernel in gemm_wgmma_tma) [[ ,$bench_kernels, == *,wgmma-tma,* ]] || continue;; esac
    step "ncu-$kernel" 45 "CODISTILL_BENCH_ONLY=$group ncu --clock-control none --section SpeedOfLight --section Occupancy \
      --section MemoryWorkloadAnalysis --section WarpStateStats --section ComputeWorkloadAnalysis \
      -k regex:$kernel -c 1 device-bin/gpu-bench"
    grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Stall|Issue Slots Busy|L2 Hit Rate" \
      "$LOGS/ncu-$kernel.log" | head -14 | tee -a "$SUMMARY"
  done
fi
if want criterion; then
  note "== criterion gpu_* groups"
  step criterion 90 "device-bin/kernels-bench --bench gpu_ --warm-up-time 1 --measurement-time 2"
  grep -E "^gpu_|thrpt" "$LOGS/criterion.log" | tee -a "$SUMMARY"
fi
if want lab; then
  note "== kernel lab: the cp.async wgmma matmul (dev/gemm_wgmma_cpasync.rs)"
  step lab 120 "device-bin/lab-gemm-wgmma-cpasync" || why lab 20
  grep -E "^(probe|valid|gemm|PASS|FAIL)" "$LOGS/lab.log" | tee -a "$SUMMARY"
fi
if want overlap; then
  note "== overlap: exchange every 50 vs teachers frozen, on the GPU, scored within runs"
  step overlap 240 "BIN=device-bin/codistill DEVICE=cuda bash scripts/overlap_pairs.sh /tmp/overlap-gpu 3"
  tail -25 "$LOGS/overlap.log" | tee -a "$SUMMARY"
fi
if want brown; then
  note "== Brown: baseline against two-way codistillation on halves, on the GPU"
  if [ -f device-bin/brown/train.txt ]; then
    step brown 450 "BIN=device-bin/codistill DEVICE=cuda RUNS=exp DROPOUT=${BROWN_DROPOUT:-0} BURN_IN=300 SHARD_BLOCK=2000 \
      bash scripts/brown_codistill_experiments.sh /tmp/brown-gpu device-bin/brown ${BROWN_STEPS:-10000}" || why brown 10
    tail -12 "$LOGS/brown.log" | tee -a "$SUMMARY"
    # The curves (small) for EXPERIMENTS.md; the checkpoints stay behind.
    for d in baseline codistill; do cp /tmp/brown-gpu/exp/$d/metrics.jsonl "$LOGS/brown-$d-metrics.jsonl" 2>/dev/null; done
    cp /tmp/brown-gpu/exp/report.txt "$LOGS/brown-report.txt" 2>/dev/null
    pack
  else
    note "SKIP    brown (no device-bin/brown: scripts/gpu_build.sh copies ../shared/data/brown there)"
  fi
fi
if want regime; then
  note "== issue 24's regime map on the GPU"
  step regime 480 "BIN=device-bin/codistill DEVICE=cuda WIDTHS='${REGIME_WIDTHS:-512}' BATCH=256 STEPS=1000 TOKENS=20000000 SEEDS='1 2' LR=0.008 \
    bash scripts/regime_map.sh /tmp/regime-gpu" || why regime 20
  tail -12 "$LOGS/regime.log" | tee -a "$SUMMARY"
  for f in /tmp/regime-gpu/w*/*/metrics.jsonl /tmp/regime-gpu/w*/noise.jsonl; do
    [ -f "$f" ] && cp "$f" "$LOGS/regime-$(echo "${f#/tmp/regime-gpu/}" | tr / -)"
  done
  pack
fi
if want regime_ngram; then
  note "== issue 24's regime map on the GPU, the n-gram stream fitted on Brown"
  if [ -f device-bin/brown/train.txt ]; then
    step regime_ngram 480 "BIN=device-bin/codistill DEVICE=cuda WIDTHS='${REGIME_WIDTHS:-512}' BATCH=256 STEPS=1000 FIT=device-bin/brown/train.txt VOCAB=2000 \
      SEEDS='1 2' LR=0.008 bash scripts/regime_map.sh /tmp/regime-ngram-gpu" || why regime_ngram 20
    tail -12 "$LOGS/regime_ngram.log" | tee -a "$SUMMARY"
    for f in /tmp/regime-ngram-gpu/w*/*/metrics.jsonl /tmp/regime-ngram-gpu/w*/noise.jsonl; do
      [ -f "$f" ] && cp "$f" "$LOGS/regime-ngram-$(echo "${f#/tmp/regime-ngram-gpu/}" | tr / -)"
    done
    pack
  else
    note "SKIP    regime_ngram (no device-bin/brown: scripts/gpu_build.sh copies ../shared/data/brown there)"
  fi
fi
if want families; then
  note "== issue 26's distillation families on Brown"
  if [ -f device-bin/brown/train.txt ]; then
    step families 480 "BIN=device-bin/codistill DEVICE=cuda DATA=device-bin/brown PARALLEL=${FAMILIES_PARALLEL:-8} \
      bash scripts/families_brown.sh /tmp/families-gpu" || why families 20
    tail -25 "$LOGS/families.log" | tee -a "$SUMMARY"
    for f in /tmp/families-gpu/*/result.json; do
      [ -f "$f" ] && cp "$f" "$LOGS/families-$(basename "$(dirname "$f")")-result.json"
    done
    pack
  else
    note "SKIP    families (no device-bin/brown: scripts/gpu_build.sh copies ../shared/data/brown there)"
  fi
fi
if want datafree; then
  note "== issue 27's data-free click distillation on the GPU"
  step datafree 400 "BIN=device-bin/codistill DEVICE=cuda TEACHER_ROWS=1000000 ARMS='marginals fast2 fast5 inversion5 inversion20' \
    bash scripts/data_free_click.sh /tmp/datafree-gpu" || why datafree 20
  tail -8 "$LOGS/datafree.log" | tee -a "$SUMMARY"
  pack
fi
note "== done in $((SECONDS - T0)) s of $BUDGET, status $status"
pack
exit $status
