#!/usr/bin/env bash
# Builds, here, everything the GPU machine runs (it has no Rust toolchain), and copies it into the
# git-ignored device-bin/, which the device call carries. Then run there:
#   bash scripts/gpu_remote.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf device-bin && mkdir -p device-bin/tests
cargo build --release --bin codistill
cp target/release/codistill device-bin/
cargo test --release --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' \
  | while read -r name exe; do
      # The GPU suite, and the CPU suites whose subjects touch the device path; the rest run in CI.
      case "$name" in gpu|gpu_training|ops|gradcheck) cp "$exe" "device-bin/tests/$name";; esac
    done
# The table benchmark (gpu-bench) and the criterion groups (kernels-bench).
cargo bench --no-run --bench gpu --bench kernels --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gpu", "kernels"):
        print(m["target"]["name"], m["executable"])' | while read -r name exe; do cp "$exe" "device-bin/$name-bench"; done
# The kernel lab's harness (dev/README.md; the `lab` stage).
cargo build --release --example lab_gemm_wgmma_cpasync
cp target/release/examples/lab_gemm_wgmma_cpasync device-bin/lab-gemm-wgmma-cpasync
# The Brown corpus for the `brown` stage (6 MB; ../shared does not travel to the GPU machine).
if [ -f ../shared/data/brown/train.txt ]; then mkdir -p device-bin/brown && cp ../shared/data/brown/*.txt device-bin/brown/; fi
# The carry limit is 64 MiB: drop the debug line tables.
strip device-bin/codistill device-bin/gpu-bench device-bin/kernels-bench device-bin/lab-gemm-wgmma-cpasync device-bin/tests/*
ls -la device-bin device-bin/tests
du -sh device-bin
