#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with device-bin/ carried (scripts/gpu_build.sh).
# 1. every test binary with REQUIRE_GPU=1 (the GPU suite fails, not skips, without a GPU);
# 2. compute-sanitizer memcheck over the GPU suite;
# 3. the kernel benchmark, then cuBLAS/PyTorch on the same shapes, and the table of ratios.
# 4. end-to-end training steps on the GPU against the same models in PyTorch (scripts/e2e_compare.py;
#    SKIP_E2E=1 leaves it out);
# 5. with CRITERION=1, the criterion gpu_* groups of benches/kernels.rs (throughput per family);
# 6. with OVERLAP=1, the overlap measurement of issue 6 on the GPU (scripts/overlap_pairs.sh, 3
#    pairs of Criteo codistillation exchanging vs frozen, scored within runs; data under /tmp).
# Logs go to $OUT (or ./gpu-out when OUT is unset).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
status=0
# The wgmma matmuls (kernels/matmul_sm90a.cu) were written without a GPU: check each alone first,
# each in its own process (a trapped kernel ends its process's CUDA context). The default (`auto`)
# is the verified mma.sync kernel; later stages (tests, memcheck, e2e) run with a wgmma kernel for
# the large products where one passed (auto-wgmma, else auto-wgmma-tma), and the bench times those
# that passed, so that one broken kernel does not cost the session's other measurements.
echo "== matmul gate"
gate() {  # TEST [LABEL]
  local log="$OUT/gate-$1${2:+-$2}.log"
  if device-bin/tests/gpu --test-threads=1 --exact "$1" >"$log" 2>&1; then echo "PASS $1 ${2:-}"; return 0; fi
  echo "FAIL $1 ${2:-}"; grep -E 'panicked|rel err|error' "$log" | head -5; status=1; return 1
}
# mma.sync as verified (one grid of output tiles), then with split-K (written without a GPU): if
# split-K fails, CODISTILL_SPLIT_K=0 for everything after.
CODISTILL_SPLIT_K=0 gate gemm_bf16_mma_sync_matches_f64_reference no-split-k
if ! gate gemm_bf16_mma_sync_matches_f64_reference split-k; then export CODISTILL_SPLIT_K=0; fi
gate transposes_match_cpu; t_ok=$?
gate gemm_bf16_wgmma_matches_f64_reference; w_ok=$?
gate gemm_bf16_wgmma_tma_matches_f64_reference; tma_ok=$?
if [ $t_ok -eq 0 ] && [ $w_ok -eq 0 ]; then export CODISTILL_MATMUL_KERNEL=auto-wgmma
elif [ $t_ok -eq 0 ] && [ $tma_ok -eq 0 ]; then export CODISTILL_MATMUL_KERNEL=auto-wgmma-tma; fi
bench=mma; [ $t_ok -eq 0 ] && [ $w_ok -eq 0 ] && bench=$bench,wgmma; [ $t_ok -eq 0 ] && [ $tma_ok -eq 0 ] && bench=$bench,wgmma-tma
export CODISTILL_BENCH_MATMUL=$bench
echo "later stages: CODISTILL_MATMUL_KERNEL=${CODISTILL_MATMUL_KERNEL:-auto} CODISTILL_SPLIT_K=${CODISTILL_SPLIT_K:-1}; benchmarked matmul kernels: $bench"
echo "== tests"
for t in device-bin/tests/*; do
  name=$(basename "$t")
  if "$t" --test-threads=1 >"$OUT/test-$name.log" 2>&1; then
    echo "PASS $name: $(grep -E '^test result' "$OUT/test-$name.log" | tail -1)"
  else
    echo "FAIL $name"; tail -30 "$OUT/test-$name.log"; status=1
  fi
done
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  echo "== compute-sanitizer memcheck (GPU suite, and the GPU training suite but its trainer runs)"
  if compute-sanitizer --tool memcheck --error-exitcode 99 device-bin/tests/gpu --test-threads=1 >"$OUT/sanitizer.log" 2>&1 \
     && compute-sanitizer --tool memcheck --error-exitcode 99 device-bin/tests/gpu_training --test-threads=1 \
        every_tensor_op lstm_layer a_language_model a_click_model directory_exchange >>"$OUT/sanitizer.log" 2>&1; then
    echo "memcheck clean: $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer.log" | tail -1)"
  else
    echo "memcheck FAILED"; tail -40 "$OUT/sanitizer.log"; status=1
  fi
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  echo "== benchmark"
  device-bin/gpu-bench --json "$OUT/ours.jsonl" | tee "$OUT/bench.txt" || status=1
  PYTHONUNBUFFERED=1 python3 scripts/gpu_compare.py "$OUT/ours.jsonl" "$OUT/torch.json" | tee "$OUT/compare.txt" || status=1
fi
if [ "${SKIP_E2E:-0}" != 1 ]; then
  echo "== end-to-end training steps against PyTorch (GPU)"
  DEVICE=cuda PYTHONUNBUFFERED=1 python3 scripts/e2e_compare.py device-bin/codistill "$OUT/e2e" | tee "$OUT/e2e.txt" || status=1
fi
if [ "${CRITERION:-0}" = 1 ]; then
  echo "== criterion gpu_* groups"
  device-bin/kernels-bench --bench gpu_ --warm-up-time 1 --measurement-time 2 2>&1 | tee "$OUT/criterion-gpu.txt" | grep -E "^gpu_|thrpt" || status=1
fi
if [ "${NCU:-0}" = 1 ]; then
  echo "== Nsight Compute: one launch each of the 4096^3 bf16 matmuls (mma.sync, wgmma) and the 4096x32768 softmax-KL"
  for pair in "gemm:gemm_bf16_nn" "gemm:gemm_wgmma_b256" "gemm:gemm_wgmma_tma" "softmax:softmax_kl_k1"; do
    group=${pair%%:*}; kernel=${pair##*:}
    CODISTILL_BENCH_ONLY=$group ncu --clock-control none --section SpeedOfLight --section Occupancy \
      --section MemoryWorkloadAnalysis --section WarpStateStats --section ComputeWorkloadAnalysis \
      -k "regex:$kernel" -c 1 device-bin/gpu-bench >"$OUT/ncu-$kernel.txt" 2>&1 || status=1
    echo "-- $kernel"
    grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Stall|Issue Slots Busy|L2 Hit Rate|L1/TEX Hit" "$OUT/ncu-$kernel.txt" | head -30
  done
fi
if [ "${OVERLAP:-0}" = 1 ]; then
  echo "== overlap: exchange every 50 vs teachers frozen, on the GPU, scored within runs"
  BIN=device-bin/codistill DEVICE=cuda bash scripts/overlap_pairs.sh /tmp/overlap-gpu 3 2>&1 | tee "$OUT/overlap.txt" || status=1
fi
exit $status
