#!/usr/bin/env bash
# CI step: CPU-only CMake build of simclr_ext._C into build/cmake, then its CTest test (imports the
# built module and checks build_info()). Keeps CMakeLists.txt from rotting next to setup.py.
#   PYTHON        interpreter whose torch is built against (default: python on PATH)
#   BUILD_DIR     build directory (default: build/cmake)
#   JOBS          parallel compile jobs (default: 2)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python)}"
BUILD_DIR="${BUILD_DIR:-build/cmake}"
JOBS="${JOBS:-2}"

generator=()
if command -v ninja >/dev/null 2>&1 && [[ ! -f "$BUILD_DIR/CMakeCache.txt" || -f "$BUILD_DIR/build.ninja" ]]; then
  generator=(-G Ninja)
fi

step() {  # step <name> <command...>: run, then print how long it took
  local name="$1" start end
  shift
  echo "[cmake_build] $name: $*"
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  echo "[cmake_build] $name took $((end - start)) s"
}

step configure cmake -S . -B "$BUILD_DIR" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DSIMCLR_EXT_WITH_CUDA=OFF -DPython3_EXECUTABLE="$PYTHON"
step build cmake --build "$BUILD_DIR" -j "$JOBS"
step ctest ctest --test-dir "$BUILD_DIR" --output-on-failure
