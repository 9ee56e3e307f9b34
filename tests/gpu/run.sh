#!/usr/bin/env bash
# The GPU check of the CUDA kernels, as one script for a machine with an
# NVIDIA GPU and the CUDA toolkit (written for an H200, sm_90; set
# CUDA_ARCHS for another). Needs only nvcc, CMake and ninja: it builds the
# CUDA-only project tests/gpu/CMakeLists.txt, not the repository's, so none
# of the Debian -dev packages are needed, and nothing is downloaded.
#
#   tests/gpu/run.sh               # build, test, benchmark
#   tests/gpu/run.sh --build-only  # build only (checked on machines without
#                                  # a GPU before any GPU time is spent)
#   tests/gpu/run.sh --sanitize    # build, then only compute-sanitizer on
#                                  # the kernel tests' small cases
#
# Every result goes under $OUT (else build-gpu/results): run.log (commit,
# device, driver, clocks, nvcc, each step's outcome), configure.log,
# build.log, <test>.log and .xml of rvq_cuda_test, rvq_encode_tc_test,
# code_attention_cuda_test, paged_copy_cuda_test, paged_decode_cuda_test and
# paged_encode_cuda_test (VQKV_REQUIRE_GPU=1: no device is a failure, not a
# skip),
# cuda_codec_bench.txt,
# cuda_attention_bench.txt, llama_encode_bench.txt; with a full-build
# bundle (tests/gpu/bundle.sh, carried as build-gpu-bundle/bundle.tar.xz)
# also <test>.log and .xml for each test in it. A failed step is logged and
# the later steps still run; the exit status is 0 only if every step passed.
# Budget: about a minute on an H200 with 16 cores (2026-12-04: configure
# 4 s, build 9 s, kernel tests 25 s, benchmarks 20 s); the step timeouts
# add up to 8 minutes (30 + 75 + 45 + 45 + 20 + 20 + 20 + 20 + 45 + 45 +
# 45 + 60 s), so a rerun fits in the device time.
set -uo pipefail
cd "$(dirname "$0")/../.."

BUILD_ONLY=0
SANITIZE=0
[[ "${1:-}" == "--build-only" ]] && BUILD_ONLY=1
[[ "${1:-}" == "--sanitize" ]] && SANITIZE=1
BUILD_DIR=${BUILD_DIR:-build-gpu}
CUDA_ARCHS=${CUDA_ARCHS:-90}
RESULTS=${OUT:-$BUILD_DIR/results}
BUNDLE=${BUNDLE:-build-gpu-bundle/bundle.tar.xz}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$RESULTS"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

status=0
log() { echo "[gpu/run.sh $(date +%T)] $*" | tee -a "$RESULTS/run.log"; }
# step NAME TIMEOUT_S LOGFILE CMD...: runs CMD, logs its outcome, never exits.
step() {
  local name=$1 limit=$2 out=$3
  shift 3
  log "$name"
  timeout "$limit" "$@" >"$out" 2>&1
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    status=1
    log "$name FAILED (exit $rc; last lines of $(basename "$out"):)"
    tail -25 "$out" | tee -a "$RESULTS/run.log"
  fi
  return $rc
}

log "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
  "mode $([[ $BUILD_ONLY == 1 ]] && echo build-only ||
    { [[ $SANITIZE == 1 ]] && echo sanitize || echo full; })"
if [[ $BUILD_ONLY == 0 ]]; then
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit \
      --format=csv || echo "nvidia-smi failed"; } 2>&1 | tee -a "$RESULTS/run.log"
fi
{ nvcc --version | tail -2; } 2>&1 | tee -a "$RESULTS/run.log"

built=0
if step "configure ($BUILD_DIR, CUDA archs $CUDA_ARCHS)" 30 \
  "$RESULTS/configure.log" cmake -S tests/gpu -B "$BUILD_DIR" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS"; then
  step "build the CUDA tests and benchmark" 75 "$RESULTS/build.log" \
    cmake --build "$BUILD_DIR" -j "$JOBS" && built=1
fi

if [[ $BUILD_ONLY == 1 ]]; then
  log "build only: done, status $status"
  exit $status
fi

# compute-sanitizer (from the toolkit) on the kernel tests' small cases:
# memcheck (out-of-bounds and misaligned accesses) on every kernel,
# racecheck and synccheck (shared-memory hazards, barriers) on those that
# use shared memory. Step timeouts add up to 7 minutes.
if [[ $SANITIZE == 1 ]]; then
  if [[ $built == 1 ]]; then
    export VQKV_REQUIRE_GPU=1
    sanitize() {  # NAME TIMEOUT TOOL TEST FILTER
      step "compute-sanitizer --tool $3: $4 $5" "$2" \
        "$RESULTS/sanitize-$1.log" compute-sanitizer --tool "$3" \
        --error-exitcode 86 "$BUILD_DIR/$4" "--filter=$5"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed, .* failed" \
        "$RESULTS/sanitize-$1.log" | tee -a "$RESULTS/run.log"
    }
    sanitize tc-odd-mem 60 memcheck rvq_encode_tc_test OddShapes
    sanitize tc-nan-mem 30 memcheck rvq_encode_tc_test NanInput
    sanitize tc-nan-race 60 racecheck rvq_encode_tc_test NanInput
    sanitize tc-nan-sync 30 synccheck rvq_encode_tc_test NanInput
    sanitize tc-batch-mem 45 memcheck rvq_encode_tc_test BatchGivesEachJob
    sanitize decode-mem 45 memcheck rvq_cuda_test RvqCudaDecodeTest
    sanitize paged-decode-mem 30 memcheck paged_decode_cuda_test PagedDecode
    sanitize paged-encode-mem 30 memcheck paged_encode_cuda_test PagedEncode
    sanitize attention-mem 45 memcheck code_attention_cuda_test OddShapes
    sanitize attention-race 60 racecheck code_attention_cuda_test OddShapes
    sanitize paged-copy-mem 20 memcheck paged_copy_cuda_test PagedCopy
  fi
  log "sanitize: done, status $status; results in $RESULTS"
  exit $status
fi

if [[ $built == 1 ]]; then
  export VQKV_REQUIRE_GPU=1
  step "CUDA kernels vs CPU reference" 45 \
    "$RESULTS/rvq_cuda_test.log" "$BUILD_DIR/rvq_cuda_test" \
    "--xml=$RESULTS/rvq_cuda_test.xml"
  grep -E "^\[  (FAILED|SKIPPED) |passed, .* failed" \
    "$RESULTS/rvq_cuda_test.log" | tee -a "$RESULTS/run.log"
  step "tensor-core encode vs CPU reference" 150 \
    "$RESULTS/rvq_encode_tc_test.log" "$BUILD_DIR/rvq_encode_tc_test" \
    "--xml=$RESULTS/rvq_encode_tc_test.xml"
  grep -E "^\[  (FAILED|SKIPPED) |passed, .* failed|identical to the" \
    "$RESULTS/rvq_encode_tc_test.log" | tee -a "$RESULTS/run.log"
  step "attention over codes vs reference" 20 \
    "$RESULTS/code_attention_cuda_test.log" \
    "$BUILD_DIR/code_attention_cuda_test" \
    "--xml=$RESULTS/code_attention_cuda_test.xml"
  grep -E "^\[  (FAILED|SKIPPED) |passed, .* failed" \
    "$RESULTS/code_attention_cuda_test.log" | tee -a "$RESULTS/run.log"
  step "paged KV gather/scatter vs reference" 20 \
    "$RESULTS/paged_copy_cuda_test.log" "$BUILD_DIR/paged_copy_cuda_test" \
    "--xml=$RESULTS/paged_copy_cuda_test.xml"
  grep -E "^\[  (FAILED|SKIPPED) |passed, .* failed" \
    "$RESULTS/paged_copy_cuda_test.log" | tee -a "$RESULTS/run.log"
  step "decode of codes into pages vs reference" 20 \
    "$RESULTS/paged_decode_cuda_test.log" "$BUILD_DIR/paged_decode_cuda_test" \
    "--xml=$RESULTS/paged_decode_cuda_test.xml"
  grep -E "^\[  (FAILED|SKIPPED) |passed, .* failed" \
    "$RESULTS/paged_decode_cuda_test.log" | tee -a "$RESULTS/run.log"
  step "encode inputs from pages and code packing vs reference" 20 \
    "$RESULTS/paged_encode_cuda_test.log" "$BUILD_DIR/paged_encode_cuda_test" \
    "--xml=$RESULTS/paged_encode_cuda_test.xml"
  grep -E "^\[  (FAILED|SKIPPED) |passed, .* failed" \
    "$RESULTS/paged_encode_cuda_test.log" | tee -a "$RESULTS/run.log"
  step "throughput at the paper configuration" 60 \
    "$RESULTS/cuda_codec_bench.txt" "$BUILD_DIR/cuda_codec_bench"
  cat "$RESULTS/cuda_codec_bench.txt" >>"$RESULTS/run.log"
  step "attention over codes against decode-then-attend" 45 \
    "$RESULTS/cuda_attention_bench.txt" "$BUILD_DIR/cuda_attention_bench"
  cat "$RESULTS/cuda_attention_bench.txt" >>"$RESULTS/run.log"
  step "a 128k-token LLaMA-3.1-8B cache on the tensor cores" 120 \
    "$RESULTS/llama_encode_bench.txt" "$BUILD_DIR/cuda_codec_bench" \
    --llama3-8b-128k
  cat "$RESULTS/llama_encode_bench.txt" >>"$RESULTS/run.log"
fi

# Tests of the full build (client/ on device pages), packed with their
# libraries and loader by tests/gpu/bundle.sh on a machine that has the
# Debian packages, and carried here.
if [[ -f $BUNDLE ]]; then
  export VQKV_REQUIRE_GPU=1
  if step "full-build tests from $BUNDLE" 60 "$RESULTS/bundle.log" \
    tests/gpu/run_bundle.sh "$BUNDLE" "$RESULTS"; then
    cat "$RESULTS/bundle.log" >>"$RESULTS/run.log"
  fi
else
  log "no full-build bundle at $BUNDLE (make one where the full build" \
    "works: tests/gpu/bundle.sh; carry it with this run)"
fi

log "done, status $status; results in $RESULTS"
exit $status
