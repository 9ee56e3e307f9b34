#!/usr/bin/env bash
# The GPU checks of the CUDA kernels, as one script for a machine with an
# NVIDIA GPU (written for an H200, sm_90; set CUDA_ARCHS for another).
#
#   tests/gpu/run.sh            # results in $OUT if set, else build-gpu/results
#
# Configures a CUDA build, builds only the CUDA tests and the kernel timing
# program, runs the CUDA-vs-CPU-reference tests (VQKV_REQUIRE_GPU=1: no
# device is a failure, not a skip) and prints encode/decode throughput at the
# paper configuration. Needs the packages of scripts/setup.sh and nvcc on the
# PATH (or in /usr/local/cuda/bin); no network. Takes ~2-3 minutes on 16
# cores, most of it compiling.
set -euo pipefail
cd "$(dirname "$0")/../.."

BUILD_DIR=${BUILD_DIR:-build-gpu}
CUDA_ARCHS=${CUDA_ARCHS:-90}
RESULTS=${OUT:-$BUILD_DIR/results}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$RESULTS"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

log() { echo "[gpu/run.sh $(date +%T)] $*" | tee -a "$RESULTS/run.log"; }

log "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; } \
  2>&1 | tee -a "$RESULTS/run.log"
nvcc --version | tail -2 | tee -a "$RESULTS/run.log"

log "configure ($BUILD_DIR, CUDA archs $CUDA_ARCHS)"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" -DVQKV_ENABLE_CUDA=ON \
  >"$RESULTS/configure.log" 2>&1 || { tail -30 "$RESULTS/configure.log"; exit 1; }
grep -q "CUDA kernels enabled" "$RESULTS/configure.log" ||
  { log "CMake did not enable CUDA (see configure.log)"; exit 1; }

log "build rvq_cuda_test cuda_codec_bench"
timeout 240 cmake --build "$BUILD_DIR" -j "$JOBS" \
  --target rvq_cuda_test cuda_codec_bench >"$RESULTS/build.log" 2>&1 ||
  { tail -40 "$RESULTS/build.log"; exit 1; }

status=0
log "CUDA kernels vs CPU reference"
VQKV_REQUIRE_GPU=1 timeout 120 "$BUILD_DIR/tests/unit/kernels/cuda/rvq_cuda_test" \
  --gtest_output="xml:$RESULTS/rvq_cuda_test.xml" \
  >"$RESULTS/rvq_cuda_test.log" 2>&1 || status=1
grep -E "^\[  (FAILED|PASSED|SKIPPED) |tests? ran" "$RESULTS/rvq_cuda_test.log" |
  tee -a "$RESULTS/run.log"

log "throughput at the paper configuration"
timeout 120 "$BUILD_DIR/bench/cuda_codec_bench" 2>&1 |
  tee "$RESULTS/cuda_codec_bench.txt" || status=1

log "done, status $status; results in $RESULTS"
exit $status
