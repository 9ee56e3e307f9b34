#!/usr/bin/env bash
# Builds vqkv with AddressSanitizer + UndefinedBehaviorSanitizer into
# build-asan/ and runs the test suite there (or the ctest label regex given as
# the first argument, e.g. scripts/sanitize.sh 'kernels|storage').
#
# VQKV_SANITIZE_TARGETS="a b ..." builds only those targets (a quicker pass;
# scripts/test.sh uses it for the client and storage tests), and
# VQKV_SANITIZE_EXCLUDE is a ctest -E regex of tests to leave out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build-asan}
CONFIG=(-DVQKV_SANITIZE=address,undefined -DVQKV_BUILD_BENCH=OFF
        -DVQKV_ENABLE_CUDA=OFF)
if [[ -n "${VQKV_SANITIZE_TARGETS:-}" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja "${CONFIG[@]}"
  # shellcheck disable=SC2086  # a list of target names
  cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target $VQKV_SANITIZE_TARGETS
else
  BUILD_DIR=$BUILD_DIR bash scripts/build.sh "${CONFIG[@]}"
fi
cd "$BUILD_DIR"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 1800 \
  ${1:+-L "$1"} ${VQKV_SANITIZE_EXCLUDE:+-E "$VQKV_SANITIZE_EXCLUDE"}
