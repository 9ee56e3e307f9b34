#!/usr/bin/env bash
# Builds vqkv with AddressSanitizer + UndefinedBehaviorSanitizer into
# build-asan/ and runs the test suite there (or the ctest label regex given as
# the first argument, e.g. scripts/sanitize.sh 'kernels|storage').
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build-asan} bash scripts/build.sh \
  -DVQKV_SANITIZE=address,undefined -DVQKV_BUILD_BENCH=OFF -DVQKV_ENABLE_CUDA=OFF
cd "${BUILD_DIR:-build-asan}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 1800 ${1:+-L "$1"}
