#!/usr/bin/env bash
# The whole GPU check in one call of at most 540 s (docs/architecture.md section 9). Stages, in
# priority order, each time-boxed:
#   build 180 s + cuda_tests 120 s + memcheck 80 s + racecheck 70 s + benchmarks 90 s = 540 s
# The sum is checked below (the script refuses to start above 540 s), and stage k is killed at
# start + (its box + the boxes before it): a stage that finishes early leaves its unspent time to
# the next ones, a stage that runs out is stopped at its own limit and never eats a later box.
#   build       reuse prebuilt/gpu/ (benchmarks/prebuild_gpu.sh) when its recorded torch, Python,
#               arch and source hash match this machine and tree; else build in place, 16 jobs
#   cuda_tests  the CUDA parity tests of the ops, of the pair losses and of the device JPEG
#               decode (pytest -m cuda; tests/test_pair_loss.py only where the tree has it)
#   memcheck,   compute-sanitizer on the `sanitize` cases; a probe of a few seconds first: a
#   racecheck   missing binary or "Device not supported" is recorded as "not available"
#   benchmarks  the CUDA benchmark suites (bench_augment.py first: the whole augmentation vs
#               torchvision per image and kornia, and the JPEG decoders), then README's tables
#               (report.py); -rs puts every skip and its reason (e.g. kornia missing) in the log
# Everything goes to $OUT/benchmarks/results/<device>/ when $OUT is set (the device tool's output
# folder, so the folder can be committed as it comes back), else benchmarks/results/<device>/:
# summary.md (per stage: status, seconds, limit), <stage>.log, env.txt, cuda_tests.xml,
# bench_cuda.json, table.md. Exit code: the number of stages that failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TOTAL=540
STAGES=(build cuda_tests memcheck racecheck benchmarks)
declare -A BOX=([build]=180 [cuda_tests]=120 [memcheck]=80 [racecheck]=70 [benchmarks]=90)
sum=0
for s in "${STAGES[@]}"; do sum=$((sum + BOX[$s])); done
if [ "$sum" -gt "$TOTAL" ]; then
  echo "gpu_check.sh: the stage boxes sum to $sum s, more than the $TOTAL s allowed" >&2
  exit 2
fi

start=$(date +%s)
stage_end=$start  # the latest time the current stage may end: start + its box + earlier boxes
failed=0
now() { date +%s; }
note() { echo "== [$(( $(now) - start )) s] $*"; }

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader \
  || { echo "no GPU visible"; exit 1; }
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' ')
slug=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; print(harness.device_slug('cuda'))" 2>/dev/null) \
  || slug=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
RES=${OUT:+$OUT/}benchmarks/results/$slug
mkdir -p "$RES"
printf '| stage | status | seconds | limit (s) |\n| --- | --- | ---: | ---: |\n' > "$RES/summary.md"

# record NAME STATUS SECONDS LIMIT
record() {
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >> "$RES/summary.md"
  echo "$1: $2 (${3} s of ${4} s)"
  case "$2" in failed*|timed*) failed=$((failed + 1)) ;; esac
}

# open_stage NAME: sets $limit, the seconds this stage may run (its box plus what earlier stages
# left unspent), and $t0.
open_stage() {
  stage_end=$((stage_end + BOX[$1]))
  t0=$(now)
  limit=$((stage_end - t0))
  note "$1 (up to $limit s)"
}

# run_boxed NAME CMD...: runs CMD with its output in $RES/NAME.log until the stage's limit
# (SIGINT first, so pytest still writes its summary and junit file; SIGKILL 5 s later).
run_boxed() {
  local name=$1; shift
  if [ "$limit" -le 6 ]; then record "$name" "skipped (no time left)" 0 "$limit"; return; fi
  timeout -s INT -k 5 $((limit - 5)) "$@" > "$RES/$name.log" 2>&1
  local rc=$? secs=$(( $(now) - t0 ))
  tail -n 12 "$RES/$name.log"
  if [ "$rc" -eq 0 ]; then record "$name" passed "$secs" "$limit"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then record "$name" "timed out" "$secs" "$limit"
  else record "$name" "failed (exit $rc)" "$secs" "$limit"
  fi
}

src_hash() {  # the same digest prebuild_gpu.sh records
  { find csrc -type f; echo setup.py; } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
}

# ---- environment -------------------------------------------------------------------------------
torch_version=$($PY -c "import torch; print(torch.__version__)")
py_version=$($PY -c "import sys; print('%d.%d' % sys.version_info[:2])")
{
  echo "python $($PY -V 2>&1), torch $torch_version, CUDA $($PY -c 'import torch; print(torch.version.cuda)')"
  echo "compute capability $cap, source hash $(src_hash)"
  for m in pytest pytest_benchmark numpy torchvision; do
    $PY -c "import $m" 2>/dev/null && echo "module $m: yes" || echo "module $m: missing"
  done
  [ -f prebuilt/gpu/STAMP ] && { echo "prebuilt/gpu/STAMP:"; cat prebuilt/gpu/STAMP; }
  nvidia-smi
} > "$RES/env.txt" 2>&1
head -n 7 "$RES/env.txt"
# pytest and pytest-benchmark (pure Python) travel in prebuilt/gpu/pylib for a machine without them.
if ! $PY -c "import pytest, pytest_benchmark" 2>/dev/null && [ -d prebuilt/gpu/pylib ]; then
  export PYTHONPATH="$PWD/prebuilt/gpu/pylib${PYTHONPATH:+:$PYTHONPATH}"
  echo "using the pytest / pytest-benchmark of prebuilt/gpu/pylib" | tee -a "$RES/env.txt"
fi

# ---- 1. build, or reuse the prebuilt extension ------------------------------------------------------
open_stage build
prebuilt_ok() {
  local f=prebuilt/gpu/STAMP
  [ -f "$f" ] || { echo "no prebuilt/gpu/STAMP"; return 1; }
  local want
  for want in "torch=$torch_version" "python=$py_version" "arch=$cap" "source=$(src_hash)"; do
    grep -qx "$want" "$f" || { echo "prebuilt does not match: need $want"; return 1; }
  done
}
imports() { timeout 60 $PY -c "import simclr_ext; print(simclr_ext.build_info())" >> "$RES/build.log" 2>&1; }
build_here() {
  # This card only; -Xptxas -v puts the register / spill report in the log.
  export TORCH_CUDA_ARCH_LIST="$cap" MAX_JOBS=${MAX_JOBS:-16} FORCE_CUDA=1
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} NVCC_FLAGS="${NVCC_FLAGS:-} -Xptxas -v"
  local left=$((stage_end - $(now) - 15))
  [ "$left" -gt 10 ] || { build_status="timed out"; return; }
  timeout -s INT -k 5 "$left" $PY setup.py build_ext --inplace >> "$RES/build.log" 2>&1
  local rc=$?
  tail -n 12 "$RES/build.log"
  if [ "$rc" -eq 0 ]; then build_status=built
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then build_status="timed out"
  else build_status="failed (exit $rc)"
  fi
}
if why=$(prebuilt_ok); then
  cp -f prebuilt/gpu/simclr_ext/* simclr_ext/
  echo "reusing prebuilt/gpu ($(grep '^built=' prebuilt/gpu/STAMP))" > "$RES/build.log"
  cp -f prebuilt/gpu/build.log "$RES/prebuild.log" 2>/dev/null  # its ptxas report
  build_status="reused prebuilt"
  if ! imports; then  # e.g. a C++ runtime older than the build machine's: build here instead
    echo "the prebuilt extension does not import here: building" | tee -a "$RES/build.log"
    for f in prebuilt/gpu/simclr_ext/*; do rm -f "simclr_ext/$(basename "$f")"; done
    build_here
  fi
else
  echo "$why: building here" | tee "$RES/build.log"
  build_here
fi
if [ "$build_status" = "reused prebuilt" ] || imports; then
  record build "$build_status" $(( $(now) - t0 )) "$limit"
  have_ext=1
else
  tail -n 5 "$RES/build.log"
  case "$build_status" in
    "timed out"*|failed*) record build "$build_status" $(( $(now) - t0 )) "$limit" ;;
    *) record build "failed (does not import)" $(( $(now) - t0 )) "$limit" ;;
  esac
  have_ext=0
fi

# Test files that may be absent from a tree (a suite added on another branch): passed to pytest
# only when present, since a missing path would fail the whole collection.
present() { local f; for f in "$@"; do [ -f "$f" ] && echo "$f"; done; }
PAIR_TESTS=$(present tests/test_pair_loss.py)

# ---- 2. CUDA parity tests of the three ops ---------------------------------------------------------
open_stage cuda_tests
if [ "$have_ext" -eq 1 ]; then
  # -v: every finished test is in the log even if the box runs out; a module that cannot be
  # imported here (e.g. numpy missing) does not stop the others.
  # Most telling first: the GPU-only suites, then the shared cpu/cuda suites of the three ops.
  # shellcheck disable=SC2086  # PAIR_TESTS: zero or more paths, split on purpose
  run_boxed cuda_tests $PY -m pytest tests/test_ntxent_cuda.py tests/test_lars_cuda.py \
    tests/test_ntxent.py $PAIR_TESTS tests/test_ntxent_precision.py tests/test_lars.py \
    tests/test_color.py tests/test_resized_crop.py tests/test_blur.py tests/test_simclr_augment.py \
    tests/test_jpeg_decode.py -m cuda -v -rfE -p no:cacheprovider --continue-on-collection-errors \
    --durations=15 \
    --junitxml="$RES/cuda_tests.xml"
else
  record cuda_tests "skipped (no extension)" 0 "$limit"
fi

# ---- 3. compute-sanitizer memcheck, then racecheck, on the `sanitize` cases ------------------------
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
SAN=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
san_available=""
for tool in memcheck racecheck; do
  open_stage "$tool"
  if [ "$have_ext" -ne 1 ]; then record "$tool" "skipped (no extension)" 0 "$limit"; continue; fi
  if [ -z "$san_available" ]; then
    # Probe: one allocation and one kernel under the sanitizer. Sandboxed machines answer
    # "Device not supported" here; that costs seconds, not the box.
    if [ ! -x "$SAN" ]; then
      san_available="no: no compute-sanitizer binary"
    else
      probe=$(timeout -k 5 45 "$SAN" --tool memcheck --error-exitcode 3 $PY -c \
        "import torch; x = torch.ones(4, device='cuda'); print('probe', float((x + 1).sum()))" 2>&1)
      prc=$?
      echo "$probe" > "$RES/sanitizer_probe.log"
      if echo "$probe" | grep -qi "device not supported\|not supported on this"; then
        san_available="no: Device not supported"
      elif [ "$prc" -ne 0 ] || ! echo "$probe" | grep -q "probe 8"; then
        san_available="no: probe exit $prc"
      else
        san_available=yes
      fi
    fi
  fi
  if [ "$san_available" != yes ]; then
    record "$tool" "not available (${san_available#no: })" $(( $(now) - t0 )) "$limit"
    continue
  fi
  # Without the caching allocator every tensor is its own allocation, so an out-of-bounds
  # access past a tensor's end is caught.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_boxed "$tool" "$SAN" --tool "$tool" --error-exitcode 3 \
    --target-processes all $PY -m pytest tests/test_ntxent_cuda.py $PAIR_TESTS tests/test_color.py \
    tests/test_resized_crop.py tests/test_blur.py tests/test_simclr_augment.py \
    -m "cuda and sanitize" -v -x -p no:cacheprovider --continue-on-collection-errors
done

# ---- 4. benchmarks, then README's tables ------------------------------------------------------------
open_stage benchmarks
if [ "$have_ext" -eq 1 ]; then
  # The table is made from whatever JSON the suites wrote, even after a failure or the box's end.
  run_boxed benchmarks bash -c "$PY benchmarks/run_benchmarks.py --device cuda --out '$RES' \
    --name bench_cuda.json -- -rs; rc=\$?; [ -s '$RES/bench_cuda.json' ] && \
    $PY benchmarks/report.py '$RES/bench_cuda.json' > '$RES/table.md'; exit \$rc"
else
  record benchmarks "skipped (no extension)" 0 "$limit"
fi

echo
cat "$RES/summary.md"
note "done: $failed stage(s) failed or timed out; results in $RES"
exit "$failed"
