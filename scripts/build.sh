#!/usr/bin/env bash
# Configures and builds vqkv into ${BUILD_DIR:-build}. Extra arguments go to
# cmake's configure step, e.g. scripts/build.sh -DVQKV_SANITIZE=address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -G Ninja "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"
