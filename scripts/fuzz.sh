#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan +
# libFuzzer) into build-fuzz/ and runs each for FUZZ_SECONDS seconds
# (default 20), starting from its seed corpus and regression inputs. Prints
# per target the executions, exec/s, coverage (cov = edges, ft = features)
# and corpus size libFuzzer reports, and exits non-zero if any target
# crashed, leaked, timed out or ran out of memory (the input that did it is
# left in $FUZZ_WORK/crash-<target>-*; add it to tests/fuzz/regressions/).
#
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh            # longer runs
#   FUZZ_TARGETS="block gguf" bash scripts/fuzz.sh   # some targets only
#   VQKV_FUZZ_TOKENIZER_GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf \
#     FUZZ_TARGETS=tokenizer bash scripts/fuzz.sh    # a real vocabulary
#
# New corpus entries go to $FUZZ_WORK/<target> (default
# build-fuzz/fuzz-work), not into the checked-in corpus; merge them by hand
# (`<target>_fuzzer -merge=1 tests/fuzz/corpus/<target> $FUZZ_WORK/<target>`)
# when they add coverage worth keeping. docs/RELIABILITY.md ("Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_TARGETS=${FUZZ_TARGETS:-block codebook_set gguf tokenizer config grpc_service peer_message}
FUZZ_WORK=${FUZZ_WORK:-$BUILD_DIR/fuzz-work}

CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DVQKV_FUZZ=ON \
  -DVQKV_BUILD_BENCH=OFF -DVQKV_ENABLE_CUDA=OFF >/dev/null
binaries=()
for t in $FUZZ_TARGETS; do binaries+=("${t}_fuzzer"); done
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target "${binaries[@]}"

mkdir -p "$FUZZ_WORK"
failed=()
printf '%-14s %10s %8s %7s %7s %7s  %s\n' target execs exec/s cov ft corpus result
for t in $FUZZ_TARGETS; do
  mkdir -p "$FUZZ_WORK/$t" "tests/fuzz/regressions/$t"
  log="$FUZZ_WORK/$t.log"
  rc=0
  # -rss_limit_mb: a parser that allocates what its input claims is a bug.
  # -timeout: one input taking 25 s is a hang.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    "$BUILD_DIR/tests/fuzz/${t}_fuzzer" "$FUZZ_WORK/$t" \
    "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t" \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=25 \
    -print_final_stats=1 -artifact_prefix="$FUZZ_WORK/crash-$t-" \
    >"$log" 2>&1 || rc=$?
  # The last status line: "#N <event> cov: C ft: F corp: U/S ... exec/s: E".
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" |
    grep -oE '[0-9]+$' || echo "${last%% *}")
  field() { grep -oE "$1: [0-9]+" <<<"$last" | grep -oE '[0-9]+$' || echo -; }
  if ((rc == 0)); then result=ok; else result="FAILED (rc $rc, $log)"; failed+=("$t"); fi
  printf '%-14s %10s %8s %7s %7s %7s  %s\n' "$t" "${execs#\#}" \
    "$(field exec/s)" "$(field cov)" "$(field ft)" "$(field corp)" "$result"
done
if ((${#failed[@]})); then
  echo "fuzz: ${failed[*]} failed; crash inputs: $FUZZ_WORK/crash-*" >&2
  for t in "${failed[@]}"; do
    echo "---- $t ----" >&2
    grep -E -A30 'ERROR|FUZZ_CHECK|==[0-9]+==' "$FUZZ_WORK/$t.log" | head -60 >&2
  done
  exit 1
fi
