#!/usr/bin/env bash
# One GPU call (DESIGN 6): build for the visible card with its own torch, run every CUDA test,
# compute-sanitizer memcheck + racecheck on the small CUDA cases, the GPU benchmarks, and print a
# short table last. Results and logs go to $OUT when set (the device tool), else
# benchmarks/results/<device>/. Budget: under 8 minutes on one H100. Each stage is time-boxed and
# a failing stage does not stop the later ones; the exit code is the number of failed stages.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start )) s] $*"; }
failed=0
stage() {  # stage NAME SECONDS CMD...: run, log to $OUT/NAME.log, record the outcome
  local name=$1 secs=$2; shift 2
  stamp "$name"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/$name.log"
  echo "$name: exit $rc" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  return 0
}

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader \
  || { echo "no GPU visible"; exit 1; }
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' ')
if [ -z "${OUT:-}" ]; then
  OUT=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; print(harness.results_dir('cuda'))")
fi
mkdir -p "$OUT"
: > "$OUT/summary.txt"
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee "$OUT/env.txt"
nvidia-smi >> "$OUT/env.txt" 2>&1

# 1. Build in place for this card only; -Xptxas -v puts the register/spill report in the log.
export TORCH_CUDA_ARCH_LIST="$cap" MAX_JOBS=${MAX_JOBS:-16} FORCE_CUDA=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} NVCC_FLAGS="${NVCC_FLAGS:-} -Xptxas -v"
stage build 300 $PY setup.py build_ext --inplace
$PY -c "import simclr_ext; print(simclr_ext.build_info())" | tee -a "$OUT/env.txt" \
  || { echo "the extension does not import: stopping"; exit 1; }

# 2. Every CUDA test.
stage cuda_tests 240 $PY -m pytest tests -m cuda -q -rA -p no:cacheprovider \
  --junitxml="$OUT/cuda_tests.xml"

# 3. compute-sanitizer on the small CUDA cases (tests marked `sanitize`).
SAN=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
for tool in memcheck racecheck; do
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 stage "sanitizer_$tool" 150 "$SAN" --tool "$tool" \
    --error-exitcode 3 --target-processes all \
    $PY -m pytest tests -m "cuda and sanitize" -q -x -p no:cacheprovider
done

# 4. GPU benchmarks (JSON beside the logs).
stage benchmarks 300 $PY benchmarks/run_benchmarks.py --device cuda --out "$OUT" --name bench_cuda.json

# 5. The short table last.
stamp "table"
$PY benchmarks/report.py "$OUT/bench_cuda.json" | tee "$OUT/table.md"
echo; cat "$OUT/summary.txt"
stamp "done: $failed failed stage(s)"
exit "$failed"
