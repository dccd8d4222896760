#!/usr/bin/env bash
# Builds simclr_ext._C for the GPU machine on this (GPU-less) one, so that gpu_check.sh spends its
# time on the GPU instead of on the compiler (docs/architecture.md section 9).
#
#   benchmarks/prebuild_gpu.sh           # build into prebuilt/gpu/ (ignored by git)
#   benchmarks/prebuild_gpu.sh --check   # then import it and run the CPU tests with it, as the
#                                        # GPU machine would (CUDA cases skip)
#
# The GPU machine runs python3 3.12 with torch 2.11.0+cu130, so the build needs a Python 3.12
# virtualenv with exactly that torch (PY312, default /work/venv312; see benchmarks/NOTES.md for
# how to make one). The build is for ARCH (default 9.0, the H200) only, from a copy of the working
# tree in PREBUILD_WORK (kept between runs: ninja recompiles only the sources that changed).
# prebuilt/gpu/ receives:
#   simclr_ext/_C*.so (+ _build_config.py when setup.py writes one)
#   STAMP      torch, python, arch and source hash it was built for; gpu_check.sh reuses the
#              build only when all four match the machine and the tree it runs on
#   build.log  the build output with the ptxas register / spill report
#   pylib/     pytest and pytest-benchmark (pure Python), used only where the machine lacks them
# Ship it with the device tool's `carry: ["prebuilt/gpu"]` (must stay under 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY312=${PY312:-/work/venv312/bin/python}
ARCH=${ARCH:-9.0}
WANT_TORCH=${WANT_TORCH:-2.11.0+cu130}
WORK=${PREBUILD_WORK:-/tmp/simclr_ext-prebuild}
DEST=$ROOT/prebuilt/gpu
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1

have_torch=$("$PY312" -c "import torch; print(torch.__version__)")
if [ "$have_torch" != "$WANT_TORCH" ]; then
  echo "prebuild_gpu.sh: $PY312 has torch $have_torch, the GPU machine has $WANT_TORCH" >&2
  exit 1
fi
py_version=$("$PY312" -c "import sys; print('%d.%d' % sys.version_info[:2])")

src_hash() {  # the same digest gpu_check.sh computes on the GPU machine
  { find csrc -type f; echo setup.py; } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
}
hash=$(src_hash)

# DIR becomes a copy of the tree (tracked and untracked, not ignored files) next to its kept
# build/ folder: a file whose content changed is copied with a fresh modification time (so ninja
# recompiles what it feeds, and only that), a file gone from the tree is removed.
copy_tree() {  # copy_tree DIR
  local stage
  stage=$(mktemp -d)
  git ls-files -co --exclude-standard -z | xargs -0 tar -cf - | tar -xf - -C "$stage"
  mkdir -p "$1"
  (cd "$stage" && find . -type f) | while read -r f; do
    cmp -s "$stage/$f" "$1/$f" || { mkdir -p "$(dirname "$1/$f")"; cp "$stage/$f" "$1/$f"; }
  done
  (cd "$1" && find . -path ./build -prune -o -type f -print) | while read -r f; do
    [ -e "$stage/$f" ] || rm -f "$1/$f"
  done
  rm -rf "$stage"
}
copy_tree "$WORK"

echo "building _C for python $py_version, torch $have_torch, sm_${ARCH/./} in $WORK (MAX_JOBS=${MAX_JOBS:-1})"
start=$(date +%s)
(
  cd "$WORK"
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=$ARCH FORCE_CUDA=1 \
    MAX_JOBS=${MAX_JOBS:-1} NVCC_FLAGS="-Xptxas -v" "$PY312" setup.py build_ext --inplace
) > "$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"

rm -rf "$DEST/simclr_ext"
mkdir -p "$DEST/simclr_ext"
cp "$WORK"/simclr_ext/_C*.so "$DEST/simclr_ext/"
[ -f "$WORK/simclr_ext/_build_config.py" ] && cp "$WORK/simclr_ext/_build_config.py" "$DEST/simclr_ext/"
cp "$WORK/build.log" "$DEST/build.log"
if [ ! -d "$DEST/pylib" ]; then
  "$PY312" -m pip install --quiet --no-compile --target "$DEST/pylib" \
    pytest pytest-benchmark > /dev/null
  rm -rf "$DEST"/pylib/bin
fi
{
  echo "torch=$have_torch"
  echo "python=$py_version"
  echo "arch=$ARCH"
  echo "source=$hash"
  echo "built=$(date -u +%Y-%m-%dT%H:%MZ)"
} > "$DEST/STAMP"
cat "$DEST/STAMP"
echo "prebuilt/gpu: $(du -sm "$DEST" | cut -f1) MiB (carry limit 64 MiB)"

if [ "$CHECK" -eq 1 ]; then
  # As on the GPU machine: a copy of the tree, the prebuilt files copied in, the CPU tests.
  chk=${WORK}-check
  copy_tree "$chk"
  cp "$DEST"/simclr_ext/* "$chk/simclr_ext/"
  cd "$chk"
  "$PY312" -c "import simclr_ext; print(simclr_ext.build_info())"
  PYTHONPATH=$chk "$PY312" -m pytest tests -q -p no:cacheprovider
fi
